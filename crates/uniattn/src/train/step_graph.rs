//! A micro-batch's forward and backward passes captured as one CUDA graph and replayed for
//! every micro-batch of the same shape. Eager, a step of a 0.5B model launches ~3,000 kernels
//! and the host cannot issue them as fast as the GPU runs them (a third of the step idle in
//! the profile); a replay is one launch. Gradients land in the optimizer's flat buffer either
//! way, so replayed and eager micro-batches mix freely within a step.
use super::{checkpointed_backward, chunked_backward, loss_scale, Batch, HEAD_CHUNK_TOKENS};
use crate::cuda::graph::{CudaGraph, GraphPool};
use crate::cuda::layer_reduce::LayerReducer;
use crate::error::Result;
use crate::model::Transformer;
use std::ops::Range;
use tch::{Device, Tensor};

/// One micro-batch's passes over static input buffers, with the loss scale read from a device
/// scalar, so each replay takes new data and a new scale. A window's last micro-batch on a
/// data-parallel rank has its own graph, whose backward pass also sums the layers' gradients
/// over the ranks (`summed`: those ranges of the flat gradient).
struct Captured {
    graph: CudaGraph,
    inputs: Batch,
    scale: Tensor,
    loss: Tensor,
    reduces: bool,
    summed: Vec<Range<i64>>,
}

impl Captured {
    fn fits(&self, b: &Batch, reduces: bool) -> bool {
        b.ids.size() == self.inputs.ids.size() && b.causal == self.inputs.causal && reduces == self.reduces
    }
}

/// Graphs kept per stage: one per micro-batch shape seen (whole rows, a ragged last batch,
/// ...), up to this many; other shapes run eagerly. They share one memory pool.
const MAX_GRAPHS: usize = 4;

/// Runs micro-batches' forward and backward passes for one stage (its trained parameters fix
/// the autograd graph): through a CUDA graph where one applies (CUDA, the shim, fused paths
/// on, no layer recomputation), eagerly otherwise.
pub(super) struct MicroBatchRunner {
    graphs: Option<GraphPool>,
    captured: Vec<Captured>,
    recompute_layers: bool,
}

impl MicroBatchRunner {
    pub fn new(model: &Transformer, recompute_layers: bool) -> Result<Self> {
        let usable = model.stem.device.is_cuda()
            && !recompute_layers
            && crate::cuda::graph::wanted()
            && crate::cuda::kernels::enabled()
            && crate::cuda::available();
        let graphs = if usable { Some(GraphPool::new()?) } else { None };
        Ok(MicroBatchRunner { graphs, captured: vec![], recompute_layers })
    }

    /// Backpropagates `scale` x the summed loss of `b` into the parameters' gradients and
    /// returns that scaled loss (0-d f64, on the device). With `reducer` (a data-parallel
    /// window's last micro-batch) the layers' gradients are summed over the ranks during the
    /// backward pass; the ranges of the flat gradient it summed come back too.
    pub fn run(
        &mut self,
        model: &Transformer,
        b: &Batch,
        scale: f64,
        autocast: bool,
        reducer: Option<&LayerReducer>,
    ) -> Result<(Tensor, Vec<Range<i64>>)> {
        let reduces = reducer.is_some();
        if let (Some(pool), Device::Cuda(device)) = (self.graphs, model.stem.device) {
            if !self.captured.iter().any(|c| c.fits(b, reduces)) && self.captured.len() < MAX_GRAPHS {
                match capture(model, b, autocast, pool, device, reducer) {
                    Ok(c) => self.captured.push(c),
                    Err(e) => {
                        eprintln!("note: training without CUDA graphs ({e})");
                        self.graphs = None;
                        self.captured.clear();
                    }
                }
            }
            if let Some(c) = self.captured.iter_mut().find(|c| c.fits(b, reduces)) {
                c.inputs.ids.copy_(&b.ids);
                c.inputs.targets.copy_(&b.targets);
                c.inputs.positions.copy_(&b.positions);
                c.inputs.docs.copy_(&b.docs);
                let _ = c.scale.fill_(scale);
                c.graph.replay()?;
                // A copy: the next replay writes over the graph's own.
                return Ok((c.loss.copy(), c.summed.clone()));
            }
        }
        let scale = loss_scale(model, scale);
        let passes = || {
            if self.recompute_layers {
                checkpointed_backward(model, b, &scale, autocast, HEAD_CHUNK_TOKENS)
            } else {
                chunked_backward(model, b, &scale, autocast, HEAD_CHUNK_TOKENS)
            }
        };
        reduced(reducer, true, passes)
    }
}

/// `passes()` inside `reducer`'s [`LayerReducer::reducing`] (summing when `live`), if any.
fn reduced(
    reducer: Option<&LayerReducer>,
    live: bool,
    passes: impl FnOnce() -> Result<Tensor>,
) -> Result<(Tensor, Vec<Range<i64>>)> {
    match reducer {
        Some(r) => {
            let (loss, summed) = r.reducing(live, passes)?;
            Ok((loss?, summed))
        }
        None => Ok((passes()?, vec![])),
    }
}

/// Captures the passes for micro-batches shaped like `b`. The warm-up run (cuBLAS, attention
/// and autocast set up on first use, which must not happen mid-capture) runs with a zero
/// scale, so the gradients it adds are zeros, and sums nothing over the ranks (the gradients
/// of the window's earlier micro-batches are in the buffer).
fn capture(
    model: &Transformer,
    b: &Batch,
    autocast: bool,
    pool: GraphPool,
    device: usize,
    reducer: Option<&LayerReducer>,
) -> Result<Captured> {
    let inputs = Batch {
        ids: b.ids.copy(),
        targets: b.targets.copy(),
        positions: b.positions.copy(),
        docs: b.docs.copy(),
        causal: b.causal,
    };
    let scale = loss_scale(model, 0.0);
    let mut runs = 0;
    let (graph, out) = CudaGraph::capture(device, pool, 1, || {
        runs += 1;
        reduced(reducer, runs > 1, || chunked_backward(model, &inputs, &scale, autocast, HEAD_CHUNK_TOKENS))
    })?;
    let (loss, summed) = out?;
    Ok(Captured { graph, inputs, scale, loss, reduces: reducer.is_some(), summed })
}
