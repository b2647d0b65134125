//! The parts of CUDA and libtorch that tch 0.24 does not bind: graphs ([`graph`]), copies to
//! the host that do not block it ([`host_copy`]), custom kernels ([`kernels`]), the trainer's
//! gradient buffers and fused layers ([`training`]), libtorch's profiler ([`profiler`]) and
//! the data-parallel all-reduce inside the backward pass ([`layer_reduce`]).
//! All go through a small C++ shim (`cuda/*.cpp`, compiled by build.rs against libtorch's
//! headers) that the binary carries and loads only when CUDA is available:
//! libtorch_cuda, which it links, cannot be loaded on a machine without a GPU driver.
pub mod graph;
pub mod host_copy;
pub mod kernels;
pub mod layer_reduce;
pub mod profiler;
pub mod training;

use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::OnceLock;

#[cfg(uniattn_cuda_shim)]
static SHIM_LIBRARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libuniattn_cuda.so"));
#[cfg(not(uniattn_cuda_shim))]
static SHIM_LIBRARY: &[u8] = &[];

const ERR_LEN: usize = 4096;

type ErrOut = *mut c_char;

type PoolNew = unsafe extern "C" fn(*mut u64, *mut u64, ErrOut, usize) -> c_int;
type GraphNew = unsafe extern "C" fn(c_int, *mut *mut c_void, ErrOut, usize) -> c_int;
type GraphFree = unsafe extern "C" fn(*mut c_void);
/// enter, leave, capture_end, replay: a graph in, 0 or a message out.
type GraphCall = unsafe extern "C" fn(*mut c_void, ErrOut, usize) -> c_int;
type CaptureBegin = unsafe extern "C" fn(*mut c_void, u64, u64, ErrOut, usize) -> c_int;
type GraphNodes = unsafe extern "C" fn(*mut c_void, *mut usize, ErrOut, usize) -> c_int;
type KernelsLoad = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    c_int,
    *mut *mut c_void,
    *mut c_int,
    ErrOut,
    usize,
) -> c_int;
type KernelGet = unsafe extern "C" fn(*mut c_void, *const c_char, *mut *mut c_void, ErrOut, usize) -> c_int;
type ResidentBlocks =
    unsafe extern "C" fn(*mut c_void, c_int, c_uint, c_uint, *mut c_int, ErrOut, usize) -> c_int;
type KernelLaunch = unsafe extern "C" fn(
    *mut c_void,
    c_int,
    c_uint,
    c_uint,
    c_uint,
    c_int,
    *mut *mut c_void,
    ErrOut,
    usize,
) -> c_int;
/// set_grad(param, grad), backward(output, grad): two tensors in, 0 or a message out.
type TensorPair = unsafe extern "C" fn(*const c_void, *const c_void, ErrOut, usize) -> c_int;
type ProfilerStop = unsafe extern "C" fn(*const c_char, ErrOut, usize) -> c_int;
type AutocastEnter = unsafe extern "C" fn(*mut c_int, *mut c_int, ErrOut, usize) -> c_int;
type AutocastLeave = unsafe extern "C" fn(c_int, c_int, ErrOut, usize) -> c_int;
type Swiglu =
    unsafe extern "C" fn(*const c_void, *const c_void, i64, i64, *mut *mut c_void, ErrOut, usize) -> c_int;
type Rope = unsafe extern "C" fn(
    *const c_void,
    *const c_void,
    *const c_void,
    i64,
    i64,
    i64,
    *mut *mut c_void,
    ErrOut,
    usize,
) -> c_int;
type TrainedLinear = unsafe extern "C" fn(
    *const c_void,
    *const c_void,
    *const c_void,
    *const c_void,
    *mut *mut c_void,
    ErrOut,
    usize,
) -> c_int;
type AddRmsNorm = unsafe extern "C" fn(
    *const c_void,
    *const c_void,
    *const c_void,
    f64,
    i64,
    i64,
    i64,
    i64,
    *mut *mut c_void,
    *mut *mut c_void,
    ErrOut,
    usize,
) -> c_int;
type ErrOnly = unsafe extern "C" fn(ErrOut, usize) -> c_int;
type MemoryPeaks = unsafe extern "C" fn(c_int, *mut i64, *mut i64, ErrOut, usize) -> c_int;
type CurrentStream = unsafe extern "C" fn(c_int, *mut *mut c_void, ErrOut, usize) -> c_int;
type ReducerSet = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    c_int,
    *const *mut c_void,
    *const i64,
    i64,
    ErrOut,
    usize,
) -> c_int;
type ReducerLive = unsafe extern "C" fn(c_int, ErrOut, usize) -> c_int;
type ReducerMark = unsafe extern "C" fn(*const c_void, i64, *mut *mut c_void, ErrOut, usize) -> c_int;
type ReducerJoin = unsafe extern "C" fn(*mut c_int, ErrOut, usize) -> c_int;
type HostAlloc = unsafe extern "C" fn(usize, *mut *mut c_void, ErrOut, usize) -> c_int;
type HostFree = unsafe extern "C" fn(*mut c_void);
type CopyToHostAsync =
    unsafe extern "C" fn(c_int, *const c_void, *mut c_void, usize, *mut *mut c_void, ErrOut, usize) -> c_int;
type EventWait = unsafe extern "C" fn(*mut c_void, ErrOut, usize) -> c_int;

/// The shim's entry points (see cuda/graphs.cpp and cuda/nvrtc.cpp); each returns 0 or
/// writes a message.
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
    kernels_load: KernelsLoad,
    kernel_get: KernelGet,
    kernel_resident_blocks: ResidentBlocks,
    kernel_launch: KernelLaunch,
    set_grad: TensorPair,
    backward: TensorPair,
    profiler_start: ErrOnly,
    current_stream: CurrentStream,
    profiler_stop: ProfilerStop,
    memory_peaks: MemoryPeaks,
    autocast_enter: AutocastEnter,
    autocast_leave: AutocastLeave,
    swiglu: Swiglu,
    rope: Rope,
    add_rms_norm: AddRmsNorm,
    trained_linear: TrainedLinear,
    reducer_set: ReducerSet,
    reducer_live: ReducerLive,
    reducer_mark: ReducerMark,
    reducer_join: ReducerJoin,
    host_alloc: HostAlloc,
    host_free: HostFree,
    copy_to_host_async: CopyToHostAsync,
    event_wait: EventWait,
}

/// Calls a shim function with an error buffer, turning its message into an error.
fn call(what: &str, f: impl FnOnce(ErrOut, usize) -> c_int) -> Result<()> {
    let mut buf = [0 as c_char; ERR_LEN];
    if f(buf.as_mut_ptr(), ERR_LEN) == 0 {
        return Ok(());
    }
    // SAFETY: the shim writes a NUL-terminated string of at most ERR_LEN bytes.
    let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
    Err(Error::invalid(format!("CUDA {what}: {msg}")))
}

/// Calls a shim function that writes a new `at::Tensor*` to its out-pointer, and takes
/// ownership of that tensor.
fn call_for_tensor(
    what: &str,
    f: impl FnOnce(*mut *mut c_void, ErrOut, usize) -> c_int,
) -> Result<tch::Tensor> {
    let mut out = std::ptr::null_mut();
    call(what, |e, n| f(&mut out, e, n))?;
    // SAFETY: on success the shim wrote a heap-allocated `at::Tensor*`, which tch owns now.
    Ok(unsafe { tch::Tensor::from_ptr(out.cast()) })
}

/// FNV-1a (64-bit) over `bytes`: names files by their content, stable across builds and
/// platforms, which std's hasher does not promise.
pub(crate) fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The shim library written into the user cache (named by its content, so builds never mix).
fn shim_path() -> Result<PathBuf> {
    let hash = fnv1a(SHIM_LIBRARY.iter().copied());
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
        return Err("this build has no CUDA shim (it was built without the CUDA headers; run scripts/setup.sh and rebuild)".into());
    }
    if !tch::Cuda::is_available() {
        return Err("CUDA is not available".into());
    }
    let path = shim_path().map_err(|e| e.to_string())?;
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: dlopen/dlsym with valid C strings; the handle stays open for the process, so the
    // function pointers taken from it stay valid. Each transmute gives a symbol the signature
    // its definition in cuda/*.cpp has.
    unsafe {
        let handle = libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            let e = libc::dlerror();
            let msg =
                if e.is_null() { "unknown".into() } else { CStr::from_ptr(e).to_string_lossy().into_owned() };
            return Err(format!("loading {}: {msg}", path.display()));
        }
        let library = path.display().to_string();
        let sym = |name: &str| symbol(handle, name, &library);
        use std::mem::transmute as t;
        Ok(Shim {
            pool_new: t::<*mut c_void, PoolNew>(sym("ua_pool_new")?),
            graph_new: t::<*mut c_void, GraphNew>(sym("ua_graph_new")?),
            graph_free: t::<*mut c_void, GraphFree>(sym("ua_graph_free")?),
            enter: t::<*mut c_void, GraphCall>(sym("ua_graph_enter")?),
            leave: t::<*mut c_void, GraphCall>(sym("ua_graph_leave")?),
            capture_begin: t::<*mut c_void, CaptureBegin>(sym("ua_graph_capture_begin")?),
            capture_end: t::<*mut c_void, GraphCall>(sym("ua_graph_capture_end")?),
            replay: t::<*mut c_void, GraphCall>(sym("ua_graph_replay")?),
            nodes: t::<*mut c_void, GraphNodes>(sym("ua_graph_nodes")?),
            kernels_load: t::<*mut c_void, KernelsLoad>(sym("ua_kernels_load")?),
            kernel_get: t::<*mut c_void, KernelGet>(sym("ua_kernel_get")?),
            kernel_resident_blocks: t::<*mut c_void, ResidentBlocks>(sym("ua_kernel_resident_blocks")?),
            kernel_launch: t::<*mut c_void, KernelLaunch>(sym("ua_kernel_launch")?),
            set_grad: t::<*mut c_void, TensorPair>(sym("ua_set_grad")?),
            backward: t::<*mut c_void, TensorPair>(sym("ua_backward")?),
            profiler_start: t::<*mut c_void, ErrOnly>(sym("ua_profiler_start")?),
            current_stream: t::<*mut c_void, CurrentStream>(sym("ua_current_stream")?),
            profiler_stop: t::<*mut c_void, ProfilerStop>(sym("ua_profiler_stop")?),
            memory_peaks: t::<*mut c_void, MemoryPeaks>(sym("ua_memory_peaks")?),
            autocast_enter: t::<*mut c_void, AutocastEnter>(sym("ua_autocast_enter")?),
            autocast_leave: t::<*mut c_void, AutocastLeave>(sym("ua_autocast_leave")?),
            swiglu: t::<*mut c_void, Swiglu>(sym("ua_swiglu")?),
            rope: t::<*mut c_void, Rope>(sym("ua_rope")?),
            add_rms_norm: t::<*mut c_void, AddRmsNorm>(sym("ua_add_rms_norm")?),
            trained_linear: t::<*mut c_void, TrainedLinear>(sym("ua_trained_linear")?),
            reducer_set: t::<*mut c_void, ReducerSet>(sym("ua_reducer_set")?),
            reducer_live: t::<*mut c_void, ReducerLive>(sym("ua_reducer_live")?),
            reducer_mark: t::<*mut c_void, ReducerMark>(sym("ua_reducer_mark")?),
            reducer_join: t::<*mut c_void, ReducerJoin>(sym("ua_reducer_join")?),
            host_alloc: t::<*mut c_void, HostAlloc>(sym("ua_host_alloc")?),
            host_free: t::<*mut c_void, HostFree>(sym("ua_host_free")?),
            copy_to_host_async: t::<*mut c_void, CopyToHostAsync>(sym("ua_copy_to_host_async")?),
            event_wait: t::<*mut c_void, EventWait>(sym("ua_event_wait")?),
        })
    }
}

/// Symbol `name` of the library `handle` (from dlopen; `library` names it in the error).
pub(crate) fn symbol(
    handle: *mut c_void,
    name: &str,
    library: &str,
) -> std::result::Result<*mut c_void, String> {
    let n = CString::new(name).expect("symbol name");
    // SAFETY: a handle dlopen returned and a valid C string.
    let p = unsafe { libc::dlsym(handle, n.as_ptr()) };
    if p.is_null() {
        Err(format!("{library} lacks {name}"))
    } else {
        Ok(p)
    }
}

fn shim() -> Result<&'static Shim> {
    static SHIM: OnceLock<std::result::Result<Shim, String>> = OnceLock::new();
    SHIM.get_or_init(load).as_ref().map_err(|e| Error::invalid(format!("the CUDA shim is unavailable: {e}")))
}

/// Makes `device` the current CUDA device and returns torch's current stream on it (a
/// `cudaStream_t`), where NCCL's collectives run in order with libtorch's kernels.
pub fn current_stream(device: usize) -> Result<*mut c_void> {
    let s = shim()?;
    let mut stream = std::ptr::null_mut();
    // SAFETY: valid out-pointer and error buffer.
    call("current CUDA stream", |e, n| unsafe { (s.current_stream)(device as c_int, &mut stream, e, n) })?;
    Ok(stream)
}

/// Whether the shim loads here (a CUDA device and a build that carries it).
pub fn available() -> bool {
    shim().is_ok()
}
