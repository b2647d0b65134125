//! Data parallelism with the gradient all-reduce overlapped with the backward pass: each
//! decoder layer's slice of the flat gradient is summed over the ranks by NCCL, on a stream of
//! its own, as soon as the backward pass has finished it (the shim's ReduceMarker in
//! cuda/train.cpp says when), while the backward pass goes on through the layers below. Summed
//! after the backward pass instead, 6 GB of f32 gradients of a 1.5B model cost 15 ms a step on
//! two H200s, a tenth of the step.
use super::{call, call_for_tensor, shim};
use crate::distributed::zero::NcclAllReduce;
use crate::error::Result;
use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::ops::Range;
use tch::Tensor;

/// Whether the all-reduce may overlap the backward pass: not with `UNIATTN_OVERLAP_REDUCE=0`
/// (it then runs after it, as a whole).
pub fn wanted() -> bool {
    std::env::var("UNIATTN_OVERLAP_REDUCE").map_or(true, |v| v != "0")
}

/// The shim's reducer set up for one flat gradient buffer (an optimizer's), cleared on drop.
/// One at a time per process.
pub struct LayerReducer {
    /// Each layer's elements of the flat gradient (None: nothing of the layer trains).
    layers: Vec<Option<Range<i64>>>,
}

impl LayerReducer {
    /// A reducer summing `layers[l]` of `flat_grad` (f32, on `device`) over `nccl`'s ranks.
    pub fn new(
        nccl: NcclAllReduce,
        device: usize,
        flat_grad: &Tensor,
        layers: Vec<Option<Range<i64>>>,
    ) -> Result<Self> {
        let s = shim()?;
        let base = flat_grad.data_ptr() as usize;
        let bytes = flat_grad.kind().elt_size_in_bytes();
        let slices: Vec<*mut c_void> = layers
            .iter()
            .map(|r| r.as_ref().map_or(0, |r| base + r.start as usize * bytes) as *mut c_void)
            .collect();
        let counts: Vec<i64> = layers.iter().map(|r| r.as_ref().map_or(0, |r| r.end - r.start)).collect();
        // SAFETY: the slices lie in `flat_grad`, which the optimizer keeps alive and in place
        // for as long as this reducer (dropped first); NCCL's entry point and communicator are
        // live; valid arrays of `layers.len()` entries.
        call("layer reducer", |e, n| unsafe {
            (s.reducer_set)(
                nccl.function,
                nccl.comm,
                device as c_int,
                slices.as_ptr(),
                counts.as_ptr(),
                layers.len() as i64,
                e,
                n,
            )
        })?;
        Ok(LayerReducer { layers })
    }

    /// Runs `f` (a micro-batch's forward and backward passes) with every layer input marked, the
    /// markers summing their layers when `live` (off in a graph's warm-up run, which adds zero
    /// gradients). Returns `f`'s output and the ranges of the flat gradient that the
    /// collectives it queued sum; the current stream waits for them (joined) before returning.
    pub fn reducing<T>(&self, live: bool, f: impl FnOnce() -> T) -> Result<(T, Vec<Range<i64>>)> {
        let s = shim()?;
        // SAFETY: a valid error buffer.
        call("layer reducer", |e, n| unsafe { (s.reducer_live)(live as c_int, e, n) })?;
        let previous =
            MARKING.with(|m| m.replace(Some(Marking { layers: self.has_slice(), marked: vec![] })));
        let out = f();
        let marking = MARKING.with(|m| m.replace(previous)).expect("set above");
        let mut nccl_error = 0;
        // SAFETY: valid out-pointer and error buffers.
        let joined = call("layer reducer", |e, n| unsafe { (s.reducer_join)(&mut nccl_error, e, n) });
        call("layer reducer", |e, n| unsafe { (s.reducer_live)(0, e, n) })?;
        joined?;
        crate::distributed::nccl::check("all-reduce during the backward pass", nccl_error)?;
        let summed = marking.marked.iter().filter_map(|&l| self.layers[l].clone()).collect();
        Ok((out, if live { summed } else { vec![] }))
    }

    fn has_slice(&self) -> Vec<bool> {
        self.layers.iter().map(Option::is_some).collect()
    }
}

impl Drop for LayerReducer {
    fn drop(&mut self) {
        if let Ok(s) = shim() {
            // SAFETY: zero layers: no arrays are read.
            let _ = call("layer reducer", |e, n| unsafe {
                (s.reducer_set)(
                    std::ptr::null(),
                    std::ptr::null_mut(),
                    0,
                    std::ptr::null(),
                    std::ptr::null(),
                    0,
                    e,
                    n,
                )
            });
        }
    }
}

/// Which layers' inputs to mark while a [`LayerReducer::reducing`] runs, and those marked.
struct Marking {
    layers: Vec<bool>,
    marked: Vec<usize>,
}

thread_local! {
    static MARKING: RefCell<Option<Marking>> = const { RefCell::new(None) };
}

/// `h`, the input of decoder layer `layer`, marked so that the layer's gradients are summed
/// once the backward pass has finished them, inside a [`LayerReducer::reducing`]; `h` itself
/// elsewhere, and where no gradient flows into `h` (the marker would never run).
pub fn mark_layer_input(h: Tensor, layer: usize) -> Tensor {
    let wanted = MARKING.with(|m| m.borrow().as_ref().is_some_and(|m| m.layers.get(layer) == Some(&true)));
    if !wanted || !h.requires_grad() {
        return h;
    }
    let Ok(s) = shim() else { return h };
    // SAFETY: a live tensor handle and a valid out-pointer.
    match call_for_tensor("layer marker", |out, e, n| unsafe {
        (s.reducer_mark)(h.as_ptr() as *const c_void, layer as i64, out, e, n)
    }) {
        Ok(marked) => {
            MARKING.with(|m| m.borrow_mut().as_mut().expect("checked above").marked.push(layer));
            marked
        }
        Err(_) => h,
    }
}
