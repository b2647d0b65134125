//! NCCL, the collective library every distributed PyTorch job stands on, opened at run time
//! (`libnccl.so.2`, the one torch ships in `nvidia/nccl/lib`, or `$UNIATTN_NCCL`): building
//! needs nothing of it, and a machine without it runs everything but multi-GPU training. One
//! communicator per process (one GPU each); collectives run on torch's current stream, so they
//! order with the trainer's kernels without a host synchronisation.
use super::World;
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::OnceLock;
use tch::{Kind, Tensor};

/// `ncclUniqueId`: what rank 0 makes and every rank needs to join the communicator.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId {
    internal: [c_char; 128],
}

type Comm = *mut c_void;

type GetUniqueId = unsafe extern "C" fn(*mut UniqueId) -> c_int;
type CommInitRank = unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> c_int;
type AllReduce =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, *mut c_void) -> c_int;
type ReduceScatter =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, *mut c_void) -> c_int;
type AllGather = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, Comm, *mut c_void) -> c_int;
type CommCall = unsafe extern "C" fn(Comm) -> c_int;
type ErrorString = unsafe extern "C" fn(c_int) -> *const c_char;

/// The entry points used (nccl.h's signatures; results are `ncclResult_t`, 0 = success).
struct Library {
    get_unique_id: GetUniqueId,
    comm_init_rank: CommInitRank,
    all_reduce: AllReduce,
    reduce_scatter: ReduceScatter,
    all_gather: AllGather,
    comm_destroy: CommCall,
    comm_abort: CommCall,
    error_string: ErrorString,
}

/// Folders of the libraries this process loaded whose names start with `prefix`.
fn loaded_dirs(prefix: &str) -> Vec<String> {
    unsafe extern "C" fn visit(info: *mut libc::dl_phdr_info, _: usize, data: *mut c_void) -> c_int {
        // SAFETY: the loader hands a valid info; `data` is the Vec passed below.
        let (info, found) = unsafe { (&*info, &mut *(data as *mut Vec<String>)) };
        if !info.dlpi_name.is_null() {
            // SAFETY: a NUL-terminated path the loader owns.
            found.push(unsafe { CStr::from_ptr(info.dlpi_name) }.to_string_lossy().into_owned());
        }
        0
    }
    let mut paths: Vec<String> = Vec::new();
    // SAFETY: the callback matches dl_iterate_phdr's and only reads what it is given.
    unsafe { libc::dl_iterate_phdr(Some(visit), &mut paths as *mut Vec<String> as *mut c_void) };
    paths
        .into_iter()
        .filter_map(|p| {
            let (dir, name) = p.rsplit_once('/')?;
            name.starts_with(prefix).then(|| dir.to_string())
        })
        .collect()
}

fn open() -> std::result::Result<Library, String> {
    let mut names: Vec<String> = std::env::var("UNIATTN_NCCL").into_iter().collect();
    names.push("libnccl.so.2".into());
    // pip's torch keeps NCCL in site-packages/nvidia/nccl/lib, beside torch/lib.
    names.extend(
        loaded_dirs("libtorch_cuda").into_iter().map(|d| format!("{d}/../../nvidia/nccl/lib/libnccl.so.2")),
    );
    let handle = names.iter().find_map(|n| {
        let c = CString::new(n.as_str()).ok()?;
        // SAFETY: a valid C string; the handle stays open for the process.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        (!h.is_null()).then_some(h)
    });
    let Some(handle) = handle else {
        return Err(format!("NCCL not found (tried {}); set UNIATTN_NCCL to libnccl.so.2", names.join(", ")));
    };
    let sym = |name: &str| crate::cuda::symbol(handle, name, "the NCCL library");
    // SAFETY: each symbol gets the signature nccl.h declares for it.
    unsafe {
        use std::mem::transmute as t;
        Ok(Library {
            get_unique_id: t::<*mut c_void, GetUniqueId>(sym("ncclGetUniqueId")?),
            comm_init_rank: t::<*mut c_void, CommInitRank>(sym("ncclCommInitRank")?),
            all_reduce: t::<*mut c_void, AllReduce>(sym("ncclAllReduce")?),
            reduce_scatter: t::<*mut c_void, ReduceScatter>(sym("ncclReduceScatter")?),
            all_gather: t::<*mut c_void, AllGather>(sym("ncclAllGather")?),
            comm_destroy: t::<*mut c_void, CommCall>(sym("ncclCommDestroy")?),
            comm_abort: t::<*mut c_void, CommCall>(sym("ncclCommAbort")?),
            error_string: t::<*mut c_void, ErrorString>(sym("ncclGetErrorString")?),
        })
    }
}

fn library() -> Result<&'static Library> {
    static LIB: OnceLock<std::result::Result<Library, String>> = OnceLock::new();
    LIB.get_or_init(open).as_ref().map_err(|e| Error::invalid(format!("multi-GPU training needs NCCL: {e}")))
}

fn checked(lib: &Library, what: &str, r: c_int) -> Result<()> {
    if r == 0 {
        return Ok(());
    }
    // SAFETY: NCCL returns a static string for any result code.
    let msg = unsafe { CStr::from_ptr((lib.error_string)(r)) }.to_string_lossy();
    Err(Error::invalid(format!("NCCL {what}: {msg} (error {r})")))
}

/// The id rank 0 hands the others through the rendezvous.
pub fn unique_id() -> Result<Vec<u8>> {
    let lib = library()?;
    let mut id = UniqueId { internal: [0; 128] };
    // SAFETY: a valid out-pointer.
    checked(lib, "ncclGetUniqueId", unsafe { (lib.get_unique_id)(&mut id) })?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

/// One process's member of the job's communicator, on GPU `world.local_rank`.
pub struct Communicator {
    lib: &'static Library,
    comm: Comm,
    stream: *mut c_void,
    rank: usize,
    size: usize,
}

impl Communicator {
    /// Joins the communicator `id` names (from [`unique_id`] on rank 0); blocks until every
    /// rank has.
    pub fn new(world: &World, id: &[u8]) -> Result<Self> {
        let lib = library()?;
        let bytes: [u8; 128] = id
            .try_into()
            .map_err(|_| Error::invalid(format!("an NCCL id is 128 bytes; rank 0 sent {}", id.len())))?;
        let id = UniqueId { internal: bytes.map(|b| b as c_char) };
        let stream = crate::cuda::current_stream(world.local_rank)?;
        let mut comm = std::ptr::null_mut();
        // SAFETY: a valid out-pointer; the current device is this rank's (set just above).
        checked(lib, "ncclCommInitRank", unsafe {
            (lib.comm_init_rank)(&mut comm, world.size as c_int, id, world.rank as c_int)
        })?;
        Ok(Communicator { lib, comm, stream, rank: world.rank, size: world.size })
    }

    /// Sums `t` over the ranks, in place (every rank ends with the sum).
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<()> {
        let (p, n, dtype) = buffer(t, "all-reduce")?;
        // SAFETY: `p` holds `n` elements of `dtype` on this rank's GPU; the stream is torch's.
        checked(self.lib, "ncclAllReduce", unsafe {
            (self.lib.all_reduce)(p, p, n, dtype, 0, self.comm, self.stream)
        })
    }

    /// A handle that aborts this communicator from another thread (a watchdog's): the
    /// collective this rank waits in then returns.
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle { lib: self.lib, comm: self.comm as usize }
    }

    /// Leaves the communicator at once, without waiting for the other ranks (after an error,
    /// so that no rank waits for one that has stopped).
    pub fn abort(mut self) {
        // SAFETY: a live communicator, not used after this.
        unsafe { (self.lib.comm_abort)(self.comm) };
        self.comm = std::ptr::null_mut();
    }
}

/// `t`'s data, element count and NCCL type, where NCCL can take it (contiguous, on the GPU).
fn buffer(t: &Tensor, what: &str) -> Result<(*mut c_void, usize, c_int)> {
    let dtype = match t.kind() {
        Kind::Float => 7,
        Kind::Double => 8,
        Kind::BFloat16 => 9,
        Kind::Half => 6,
        Kind::Int64 => 4,
        k => return Err(Error::invalid(format!("NCCL {what} of a {k:?} tensor"))),
    };
    if !t.is_contiguous() || !t.device().is_cuda() {
        return Err(Error::invalid(format!("NCCL {what} needs a contiguous CUDA tensor")));
    }
    Ok((t.data_ptr(), t.numel(), dtype))
}

impl super::zero::Collective for Communicator {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<()> {
        Communicator::all_reduce_sum(self, t)
    }
    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<()> {
        let (p, n, dtype) = buffer(t, "reduce-scatter")?;
        let chunk = n / self.size;
        // In place: rank r's result lands in chunk r of the buffer it sends from.
        let own = (p as usize + self.rank * chunk * t.kind().elt_size_in_bytes()) as *mut c_void;
        // SAFETY: `p` holds `n` = size x chunk elements of `dtype` on this rank's GPU, `own`
        // is chunk `rank` of it; the stream is torch's.
        checked(self.lib, "ncclReduceScatter", unsafe {
            (self.lib.reduce_scatter)(p, own, chunk, dtype, 0, self.comm, self.stream)
        })
    }
    fn all_gather(&self, t: &Tensor) -> Result<()> {
        let (p, n, dtype) = buffer(t, "all-gather")?;
        let chunk = n / self.size;
        // In place: this rank sends chunk `rank` of the buffer it receives into.
        let own = (p as usize + self.rank * chunk * t.kind().elt_size_in_bytes()) as *mut c_void;
        // SAFETY: as in reduce_scatter_sum.
        checked(self.lib, "ncclAllGather", unsafe {
            (self.lib.all_gather)(own, p, chunk, dtype, self.comm, self.stream)
        })
    }
    fn abort(self: Box<Self>) {
        Communicator::abort(*self)
    }
    fn nccl(&self) -> Option<super::zero::NcclAllReduce> {
        Some(super::zero::NcclAllReduce { function: self.lib.all_reduce as *const c_void, comm: self.comm })
    }
}

/// Ok for NCCL result `code` (an `ncclResult_t` of a call made elsewhere: the shim's), else
/// NCCL's message for it.
pub fn check(what: &str, code: c_int) -> Result<()> {
    checked(library()?, what, code)
}

/// See [`Communicator::abort_handle`].
pub struct AbortHandle {
    lib: &'static Library,
    comm: usize,
}

impl AbortHandle {
    pub fn abort(&self) {
        // SAFETY: the communicator lives until the process exits, which follows the abort.
        unsafe { (self.lib.comm_abort)(self.comm as Comm) };
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        if !self.comm.is_null() {
            // SAFETY: a live communicator, not used after this.
            unsafe { (self.lib.comm_destroy)(self.comm) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where there is no NCCL (this CPU machine, or UNIATTN_NCCL pointing nowhere) the error
    /// says so and where it looked.
    #[test]
    fn a_missing_nccl_is_a_clear_error() {
        if tch::Cuda::is_available() {
            return; // a GPU machine has torch's NCCL
        }
        let e = unique_id().unwrap_err().to_string();
        assert!(e.contains("multi-GPU training needs NCCL") && e.contains("libnccl.so.2"), "{e}");
    }
}
