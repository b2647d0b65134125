//! CUDA graphs: capture a run of libtorch kernels once and replay it with one launch
//! (`at::cuda::CUDAGraph` through the shim's cuda/graphs.cpp).
use super::{call, shim};
use crate::error::Result;
use std::ffi::{c_int, c_void};

/// Whether CUDA graphs are wanted: not with `UNIATTN_CUDA_GRAPHS=0` (the engine's decode steps
/// and the trainer's micro-batches then launch every kernel eagerly).
pub fn wanted() -> bool {
    std::env::var("UNIATTN_CUDA_GRAPHS").map_or(true, |v| v != "0")
}

/// A memory pool that graphs capture into; graphs of one pool must not replay concurrently
/// (the engine replays one step at a time), and so may share their temporaries.
#[derive(Debug, Clone, Copy)]
pub struct GraphPool(u64, u64);

impl GraphPool {
    pub fn new() -> Result<Self> {
        let s = shim()?;
        let (mut a, mut b) = (0u64, 0u64);
        // SAFETY: valid out-pointers and error buffer.
        call("graph pool", |e, n| unsafe { (s.pool_new)(&mut a, &mut b, e, n) })?;
        Ok(GraphPool(a, b))
    }
}

/// A captured run of kernels. Whatever the captured closure read or wrote (its inputs, the KV
/// cache, the output it returned) must stay alive and in place for every replay.
pub struct CudaGraph {
    ptr: *mut c_void,
}

// SAFETY: the graph is plain data owned by this value; replays are serialised by `&self`
// users (the engine holds its graphs behind `&mut`), and the shim sets the device's stream.
unsafe impl Send for CudaGraph {}

impl CudaGraph {
    /// Runs `f` `warm_up` times eagerly on the graph's side stream (cuBLAS and the attention
    /// kernels set up their workspaces on first use, which must not happen mid-capture), then
    /// captures one more run and returns its output. The captured work has not run yet: call
    /// [`CudaGraph::replay`] for the first result.
    pub fn capture<T>(
        device: usize,
        pool: GraphPool,
        warm_up: usize,
        mut f: impl FnMut() -> T,
    ) -> Result<(Self, T)> {
        let s = shim()?;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: valid out-pointer and error buffer.
        call("graph create", |e, n| unsafe { (s.graph_new)(device as c_int, &mut ptr, e, n) })?;
        let graph = CudaGraph { ptr };
        // SAFETY (each call below): `ptr` is a live graph owned by `graph`.
        call("graph enter", |e, n| unsafe { (s.enter)(ptr, e, n) })?;
        let captured = (|| -> Result<T> {
            for _ in 0..warm_up {
                drop(f());
            }
            call("graph capture", |e, n| unsafe { (s.capture_begin)(ptr, pool.0, pool.1, e, n) })?;
            let out = f();
            call("graph capture", |e, n| unsafe { (s.capture_end)(ptr, e, n) })?;
            Ok(out)
        })();
        let left = call("graph leave", |e, n| unsafe { (s.leave)(ptr, e, n) });
        let out = captured?;
        left?;
        Ok((graph, out))
    }

    /// Runs the captured kernels again, after the work already queued on the current stream.
    pub fn replay(&self) -> Result<()> {
        let s = shim()?;
        // SAFETY: `self.ptr` is a live graph.
        call("graph replay", |e, n| unsafe { (s.replay)(self.ptr, e, n) })
    }
}

impl CudaGraph {
    /// Nodes in the graph (kernels, copies, memsets): what one replay launches.
    pub fn nodes(&self) -> Result<usize> {
        let s = shim()?;
        let mut n = 0usize;
        // SAFETY: `self.ptr` is a live graph; valid out-pointer.
        call("graph nodes", |e, len| unsafe { (s.nodes)(self.ptr, &mut n, e, len) })?;
        Ok(n)
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        if let Ok(s) = shim() {
            // SAFETY: `ptr` came from graph_new and is freed once.
            unsafe { (s.graph_free)(self.ptr) }
        }
    }
}
