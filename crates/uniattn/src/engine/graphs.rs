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
    /// Input buffers `[slots, 1]` (int64) that a replay reads.
    pub ids: Tensor,
    pub positions: Tensor,
    /// By (padded batch, key length): the graph and the logits `[batch, vocab]` it writes.
    steps: HashMap<(usize, i64), (CudaGraph, Tensor)>,
    /// Kernels (graph nodes) the last replayed step launched.
    pub last_nodes: Option<usize>,
}

impl DecodeGraphs {
    pub fn new(slots: usize, device: Device) -> Result<Self> {
        Ok(DecodeGraphs {
            pool: GraphPool::new()?,
            ids: Tensor::zeros([slots as i64, 1], (Kind::Int64, device)),
            positions: Tensor::zeros([slots as i64, 1], (Kind::Int64, device)),
            steps: HashMap::new(),
            last_nodes: None,
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
        let device = match self.ids.device() {
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
        self.last_nodes = graph.nodes().ok();
        Ok(out)
    }
}
