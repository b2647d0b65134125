//! CUDA graphs: capture a run of libtorch kernels once and replay it with one launch. tch 0.24
//! binds no graphs or streams, so a small C++ shim (`cuda/graph_shim.cpp`, compiled by
//! build.rs against libtorch's headers) exposes `at::cuda::CUDAGraph`. The binary carries the
//! shim and loads it only when CUDA is available: libtorch_cuda, which it links, cannot be
//! loaded on a machine without a GPU driver.
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::OnceLock;

#[cfg(uniattn_cuda_shim)]
static SHIM_LIBRARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libuniattn_cuda.so"));
#[cfg(not(uniattn_cuda_shim))]
static SHIM_LIBRARY: &[u8] = &[];

const ERR_LEN: usize = 1024;

type ErrOut = *mut c_char;

type PoolNew = unsafe extern "C" fn(*mut u64, *mut u64, ErrOut, usize) -> c_int;
type GraphNew = unsafe extern "C" fn(c_int, *mut *mut c_void, ErrOut, usize) -> c_int;
type GraphFree = unsafe extern "C" fn(*mut c_void);
/// enter, leave, capture_end, replay: a graph in, 0 or a message out.
type GraphCall = unsafe extern "C" fn(*mut c_void, ErrOut, usize) -> c_int;
type CaptureBegin = unsafe extern "C" fn(*mut c_void, u64, u64, ErrOut, usize) -> c_int;
type GraphNodes = unsafe extern "C" fn(*mut c_void, *mut usize, ErrOut, usize) -> c_int;

/// The shim's entry points (see graph_shim.cpp); each returns 0 or writes a message.
struct Shim {
    pool_new: PoolNew,
    graph_new: GraphNew,
    graph_free: GraphFree,
    enter: GraphCall,
    leave: GraphCall,
    capture_begin: CaptureBegin,
    capture_end: GraphCall,
    replay: GraphCall,
    nodes: GraphNodes,
}

/// Calls a shim function with an error buffer, turning its message into an error.
fn call(what: &str, f: impl FnOnce(ErrOut, usize) -> c_int) -> Result<()> {
    let mut buf = [0 as c_char; ERR_LEN];
    if f(buf.as_mut_ptr(), ERR_LEN) == 0 {
        return Ok(());
    }
    // SAFETY: the shim writes a NUL-terminated string of at most ERR_LEN bytes.
    let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
    Err(Error::invalid(format!("CUDA graph {what}: {msg}")))
}

/// The shim library written into the user cache (named by its content, so builds never mix).
fn shim_path() -> Result<PathBuf> {
    let hash = SHIM_LIBRARY
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x1000_0000_01b3));
    let dir = crate::cache::dir().join("lib");
    let path = dir.join(format!("libuniattn_cuda-{hash:016x}.so"));
    if !path.exists() {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        crate::fs::write_atomic(&path, SHIM_LIBRARY)?;
    }
    Ok(path)
}

fn load() -> std::result::Result<Shim, String> {
    if SHIM_LIBRARY.is_empty() {
        return Err("this build has no CUDA-graph shim (it was built without the CUDA headers; run scripts/setup.sh and rebuild)".into());
    }
    if !tch::Cuda::is_available() {
        return Err("CUDA is not available".into());
    }
    let path = shim_path().map_err(|e| e.to_string())?;
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: dlopen/dlsym with valid C strings; the handle stays open for the process, so the
    // function pointers taken from it stay valid.
    unsafe {
        let handle = libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            let e = libc::dlerror();
            let msg =
                if e.is_null() { "unknown".into() } else { CStr::from_ptr(e).to_string_lossy().into_owned() };
            return Err(format!("loading {}: {msg}", path.display()));
        }
        let sym = |name: &str| -> std::result::Result<*mut c_void, String> {
            let n = CString::new(name).expect("symbol name");
            let p = libc::dlsym(handle, n.as_ptr());
            if p.is_null() {
                Err(format!("{} lacks {name}", path.display()))
            } else {
                Ok(p)
            }
        };
        Ok(Shim {
            pool_new: std::mem::transmute::<*mut c_void, PoolNew>(sym("ua_pool_new")?),
            graph_new: std::mem::transmute::<*mut c_void, GraphNew>(sym("ua_graph_new")?),
            graph_free: std::mem::transmute::<*mut c_void, GraphFree>(sym("ua_graph_free")?),
            enter: std::mem::transmute::<*mut c_void, GraphCall>(sym("ua_graph_enter")?),
            leave: std::mem::transmute::<*mut c_void, GraphCall>(sym("ua_graph_leave")?),
            capture_begin: std::mem::transmute::<*mut c_void, CaptureBegin>(sym("ua_graph_capture_begin")?),
            capture_end: std::mem::transmute::<*mut c_void, GraphCall>(sym("ua_graph_capture_end")?),
            replay: std::mem::transmute::<*mut c_void, GraphCall>(sym("ua_graph_replay")?),
            nodes: std::mem::transmute::<*mut c_void, GraphNodes>(sym("ua_graph_nodes")?),
        })
    }
}

fn shim() -> Result<&'static Shim> {
    static SHIM: OnceLock<std::result::Result<Shim, String>> = OnceLock::new();
    SHIM.get_or_init(load).as_ref().map_err(|e| Error::invalid(format!("CUDA graphs unavailable: {e}")))
}

/// Whether graphs can be captured here (a CUDA device and the shim).
pub fn available() -> bool {
    shim().is_ok()
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
        call("pool", |e, n| unsafe { (s.pool_new)(&mut a, &mut b, e, n) })?;
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
        call("create", |e, n| unsafe { (s.graph_new)(device as c_int, &mut ptr, e, n) })?;
        let graph = CudaGraph { ptr };
        // SAFETY (each call below): `ptr` is a live graph owned by `graph`.
        call("enter", |e, n| unsafe { (s.enter)(ptr, e, n) })?;
        let captured = (|| -> Result<T> {
            for _ in 0..warm_up {
                drop(f());
            }
            call("capture", |e, n| unsafe { (s.capture_begin)(ptr, pool.0, pool.1, e, n) })?;
            let out = f();
            call("capture", |e, n| unsafe { (s.capture_end)(ptr, e, n) })?;
            Ok(out)
        })();
        let left = call("leave", |e, n| unsafe { (s.leave)(ptr, e, n) });
        let out = captured?;
        left?;
        Ok((graph, out))
    }

    /// Runs the captured kernels again, after the work already queued on the current stream.
    pub fn replay(&self) -> Result<()> {
        let s = shim()?;
        // SAFETY: `self.ptr` is a live graph.
        call("replay", |e, n| unsafe { (s.replay)(self.ptr, e, n) })
    }
}

impl CudaGraph {
    /// Nodes in the graph (kernels, copies, memsets): what one replay launches.
    pub fn nodes(&self) -> Result<usize> {
        let s = shim()?;
        let mut n = 0usize;
        // SAFETY: `self.ptr` is a live graph; valid out-pointer.
        call("nodes", |e, len| unsafe { (s.nodes)(self.ptr, &mut n, e, len) })?;
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
