//! Decode steps replayed as CUDA graphs. A step is ~1,000 small kernels whose launches, not the
//! GPU, set the pace; captured once per shape it is one launch. Shapes are a batch bucket
//! (powers of two up to the cache's slots; rows past the real batch are padding) and a
//! key-length bucket (`KEY_BUCKET` positions), so a graph serves every step of that shape.
//! Everything a captured step reads or writes lives at fixed addresses: the engine's token and
//! position buffer (which the step also writes its picks and next positions into), the KV
//! cache, the weights and the graph's output.
use crate::cuda::graph::{CudaGraph, GraphPool};
use crate::error::Result;
use std::collections::HashMap;
use tch::Tensor;

pub struct DecodeGraphs {
    pub pool: GraphPool,
    device: usize,
    /// By (padded batch, key length): the graph and the logits `[batch, vocab]` it writes.
    steps: HashMap<(usize, i64), (CudaGraph, Tensor)>,
    /// The shape of the last replayed step.
    last: Option<(usize, i64)>,
}

impl DecodeGraphs {
    pub fn new(device: usize) -> Result<Self> {
        Ok(DecodeGraphs { pool: GraphPool::new()?, device, steps: HashMap::new(), last: None })
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
    /// `inputs` buffer, write its picks and next positions back into it, and return the
    /// logits) if it is new. Returns the graph's output buffer, which the next replay
    /// overwrites.
    pub fn run(
        &mut self,
        batch: usize,
        k_len: i64,
        inputs: &Tensor,
        step: impl FnMut() -> Tensor,
    ) -> Result<&Tensor> {
        if !self.steps.contains_key(&(batch, k_len)) {
            // Two eager runs on the capture stream first. Each writes its picks and next
            // positions over the inputs, which the replay needs as they are now: kept aside.
            // Their K/V writes land at the sequences' next positions, which the replayed step
            // (or a later one) writes again before anything reads them.
            let given = inputs.copy();
            let captured = CudaGraph::capture(self.device, self.pool, 2, step)?;
            inputs.shallow_clone().copy_(&given);
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
    /// back, no host work between them (what a step costs without the host's part). Each
    /// replay feeds the next its picks, writing keys and values past the sequences' lengths,
    /// where a real step writes again before anything reads them; `inputs` are put back.
    pub fn replay_seconds(&self, n: usize, inputs: &Tensor) -> Result<Option<f64>> {
        let Some(key) = self.last else { return Ok(None) };
        let (graph, _) = &self.steps[&key];
        let given = inputs.copy();
        tch::Cuda::synchronize(self.device as i64);
        let t = std::time::Instant::now();
        for _ in 0..n {
            graph.replay()?;
        }
        tch::Cuda::synchronize(self.device as i64);
        let seconds = t.elapsed().as_secs_f64() / n.max(1) as f64;
        inputs.shallow_clone().copy_(&given);
        Ok(Some(seconds))
    }
}
