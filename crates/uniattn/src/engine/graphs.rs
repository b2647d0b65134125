//! Decode steps replayed as CUDA graphs. A step is ~1,000 small kernels whose launches, not the
//! GPU, set the pace; captured once per shape it is one launch. Shapes are a batch bucket
//! (powers of two up to the cache's slots; rows past the real batch are padding) and a
//! key-length bucket (`KEY_BUCKET` positions), so a graph serves every step of that shape.
//! Everything a captured step reads or writes lives at fixed addresses: the token and position
//! buffers here, the KV cache, the weights and the graph's output.
use crate::cuda::graph::{CudaGraph, GraphPool};
use crate::error::Result;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

pub struct DecodeGraphs {
    pub pool: GraphPool,
    /// The buffer `[2, slots, 1]` (int64) of token ids, then positions, that a replay reads:
    /// one host-to-device copy a step fills both.
    pub inputs: Tensor,
    /// By (padded batch, key length): the graph and the logits `[batch, vocab]` it writes.
    steps: HashMap<(usize, i64), (CudaGraph, Tensor)>,
    /// The shape of the last replayed step.
    last: Option<(usize, i64)>,
}

impl DecodeGraphs {
    pub fn new(slots: usize, device: Device) -> Result<Self> {
        Ok(DecodeGraphs {
            pool: GraphPool::new()?,
            inputs: Tensor::zeros([2, slots as i64, 1], (Kind::Int64, device)),
            steps: HashMap::new(),
            last: None,
        })
    }

    /// The padded batch a step of `n` sequences runs at.
    pub fn batch_bucket(n: usize, slots: usize) -> usize {
        n.next_power_of_two().min(slots)
    }

    /// Number of captured steps (for reports).
    pub fn captured(&self) -> usize {
        self.steps.len()
    }

    /// Replays the step of this shape, capturing it first with `step` (which must read the
    /// input buffers and return the logits) if it is new. Returns the graph's output buffer,
    /// which the next replay overwrites.
    pub fn run(&mut self, batch: usize, k_len: i64, step: impl FnMut() -> Tensor) -> Result<&Tensor> {
        let device = match self.inputs.device() {
            Device::Cuda(i) => i,
            _ => 0,
        };
        if !self.steps.contains_key(&(batch, k_len)) {
            // Two eager runs on the capture stream first: a decode step only writes the new
            // tokens' K/V at their own positions, so repeating it changes nothing.
            let captured = CudaGraph::capture(device, self.pool, 2, step)?;
            self.steps.insert((batch, k_len), captured);
        }
        let (graph, out) = &self.steps[&(batch, k_len)];
        graph.replay()?;
        self.last = Some((batch, k_len));
        Ok(out)
    }

    /// Kernels (graph nodes) the last replayed step launched.
    pub fn last_nodes(&self) -> Option<usize> {
        self.steps.get(&self.last?)?.0.nodes().ok()
    }

    /// Seconds one step of the last replayed shape keeps the GPU busy: `n` replays back to
    /// back, no host work between them (what a step costs without the host's part). A replay
    /// writes the same keys and values at the same positions again, so the cache is unchanged.
    pub fn replay_seconds(&self, n: usize) -> Result<Option<f64>> {
        let Some(key) = self.last else { return Ok(None) };
        let Device::Cuda(device) = self.inputs.device() else { return Ok(None) };
        let (graph, _) = &self.steps[&key];
        tch::Cuda::synchronize(device as i64);
        let t = std::time::Instant::now();
        for _ in 0..n {
            graph.replay()?;
        }
        tch::Cuda::synchronize(device as i64);
        Ok(Some(t.elapsed().as_secs_f64() / n.max(1) as f64))
    }
}
