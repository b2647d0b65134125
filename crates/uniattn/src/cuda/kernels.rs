//! Fused kernels for chains of small libtorch kernels: in a decode step RoPE with the KV-cache
//! write, the gated MLP activation, the attention softmax with its scale and mask, and at batch
//! 1 the projections as matrix-vector products with their adds or activation, and at small
//! batches the attention itself; in training the LM head's cross-entropy with its gradient, and
//! SwiGLU and RoPE with their backward passes (autograd functions in cuda/train.cpp). The CUDA C
//! source (`cuda/kernels.cu`) is compiled at first use through NVRTC (`cuda/nvrtc.cpp`) and kept
//! in the cache for later runs, so building needs no CUDA compiler and the kernels run wherever
//! libtorch's CUDA does. Each op returns `None` where it does not apply (not on CUDA, an
//! unsupported type or layout, NVRTC missing, `UNIATTN_FUSED_KERNELS=0`); the caller then runs
//! the libtorch composition the kernel replaces, which stays the reference (CPU, f64, tests).
mod decode_attention;

pub use decode_attention::{
    decode_attention, decode_attention_ahead, decode_attention_lead, decode_attention_reuse, lead_maps_apply,
    with_decode_attention, AheadInputs, AheadSums, LeadMaps,
};

use super::{call, call_for_tensor, shim};
use crate::error::{Error, Result};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{c_int, c_uint, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

const SOURCE: &str = include_str!("../../cuda/kernels.cu");
/// How `SOURCE` is compiled (NVRTC's options): part of what names a compiled cubin.
const COMPILER: &str = include_str!("../../cuda/nvrtc.cpp");

/// Every kernel `SOURCE` defines, each in f32, bf16 and f16 versions (`<name>_<suffix>`).
const KERNELS: &[&str] = &[
    "gated_act",
    "row_argmax",
    "rope_kv_write",
    "masked_softmax",
    "cross_entropy",
    "swiglu_forward",
    "swiglu_backward",
    "rope_forward",
    "rope_backward",
    "add_rms_norm_forward",
    "add_rms_norm_backward4",
    "add_rms_norm_backward8",
    "add_rms_norm_backward16",
    "rms_norm_decode",
    "adamw",
    "decode_gemv",
    "decode_gemv_gated",
    "decode_gemv_rope",
    "reuse_attention_decode",
    "decode_gemv_pairs",
    "decode_attention",
    "decode_attention_lead",
    "decode_attention_reuse",
    "decode_attention_ahead",
    "decode_attention_joint",
    "decode_attention_joint_all",
];
const SUFFIXES: &[(Kind, &str)] = &[(Kind::Float, "f32"), (Kind::BFloat16, "bf16"), (Kind::Half, "f16")];

const THREADS: u32 = 256;
/// Blocks of the grid-stride kernels: enough to fill any current GPU.
const MAX_BLOCKS: i64 = 4096;

struct Loaded {
    /// By (name, type suffix): looked up on every launch without building a string.
    kernels: HashMap<(&'static str, &'static str), usize>,
    /// The device's compute capability (90 for sm_90): some kernels have a form for sm_80 on,
    /// whose launch is cut differently.
    capability: i32,
}

/// Set after a launch failed: everything runs the libtorch composition from then on.
static BROKEN: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set while [`without`] runs on this thread.
    static OFF_HERE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the fused kernels off on this thread, so that it runs the libtorch
/// composition: the reference the fused path is checked against.
pub fn without<T>(f: impl FnOnce() -> T) -> T {
    let before = OFF_HERE.with(|o| o.replace(true));
    let out = f();
    OFF_HERE.with(|o| o.set(before));
    out
}

/// Whether fused paths may run here: not under [`without`] and not with
/// `UNIATTN_FUSED_KERNELS=0` (which also turns off the trainer's fused AdamW).
pub fn enabled() -> bool {
    !OFF_HERE.with(Cell::get) && !std::env::var("UNIATTN_FUSED_KERNELS").is_ok_and(|v| v == "0")
}

/// Where the compiled kernels are kept between runs, as a path prefix to which the shim adds the
/// architecture (`<prefix>-sm_90.cubin`): `<cache>/kernels/<hash of the source and of how it is
/// compiled>`, so that only the first run of a build pays NVRTC's seconds. `None` where the
/// folder cannot be made (then every run compiles).
fn compiled_prefix(cache: &std::path::Path) -> Option<std::path::PathBuf> {
    let dir = cache.join("kernels");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join(format!("{:016x}", fnv1a([SOURCE, COMPILER]))))
}

/// [`super::fnv1a`] over `parts`, each ended by a 0 byte (so that no two splits of the same
/// bytes collide).
fn fnv1a<'a>(parts: impl IntoIterator<Item = &'a str>) -> u64 {
    super::fnv1a(parts.into_iter().flat_map(|p| p.bytes().chain([0])))
}

fn load(device: usize) -> Result<Loaded> {
    let s = shim()?;
    let src = CString::new(SOURCE).expect("kernel source has no NUL");
    let prefix = compiled_prefix(&crate::cache::dir())
        .and_then(|p| CString::new(p.into_os_string().into_encoded_bytes()).ok());
    let (mut lib, mut capability) = (std::ptr::null_mut(), 0);
    // SAFETY: valid C strings (or null), out-pointers and error buffer.
    call("kernel compile", |e, n| unsafe {
        (s.kernels_load)(
            src.as_ptr(),
            prefix.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()),
            device as c_int,
            &mut lib,
            &mut capability,
            e,
            n,
        )
    })?;
    let mut kernels = HashMap::new();
    for base in KERNELS {
        for (_, suffix) in SUFFIXES {
            let c = CString::new(format!("{base}_{suffix}")).expect("kernel name");
            let mut k = std::ptr::null_mut();
            // SAFETY: `lib` is a loaded library; valid name, out-pointer and error buffer.
            call("kernel lookup", |e, n| unsafe { (s.kernel_get)(lib, c.as_ptr(), &mut k, e, n) })?;
            kernels.insert((*base, *suffix), k as usize);
        }
    }
    Ok(Loaded { kernels, capability })
}

/// The compiled kernels, or why there are none (reported once, on first use).
fn loaded(device: usize) -> Option<&'static Loaded> {
    static LOADED: OnceLock<std::result::Result<Loaded, String>> = OnceLock::new();
    let r = LOADED.get_or_init(|| {
        if std::env::var("UNIATTN_FUSED_KERNELS").is_ok_and(|v| v == "0") {
            return Err(String::new());
        }
        load(device).map_err(|e| {
            let msg = e.to_string();
            eprintln!("note: fused kernels unavailable, running libtorch's kernels instead: {msg}");
            msg
        })
    });
    r.as_ref().ok().filter(|_| !BROKEN.load(Ordering::Relaxed))
}

/// Whether the fused kernels compile and load on this machine (loading them if needed).
pub fn available() -> Result<()> {
    let device =
        if tch::Cuda::is_available() { 0 } else { return Err(Error::invalid("CUDA is not available")) };
    loaded(device).map(|_| ()).ok_or_else(|| {
        Error::invalid(
            "fused kernels unavailable (UNIATTN_FUSED_KERNELS=0, or NVRTC/the shim failed to load)",
        )
    })
}

/// The CUDA device of `t` when a fused kernel may take it (and the kernels are loaded). The
/// kernels have no backward pass: where autograd records, the composition runs.
fn usable(t: &Tensor) -> Option<(usize, &'static Loaded, &'static str)> {
    if t.requires_grad() {
        return None;
    }
    usable_with_grad(t)
}

/// Like [`usable`], for the ops that record their own backward pass (tensors that require
/// grad are fine).
fn usable_with_grad(t: &Tensor) -> Option<(usize, &'static Loaded, &'static str)> {
    let Device::Cuda(device) = t.device() else { return None };
    if OFF_HERE.with(Cell::get) {
        return None;
    }
    let suffix = SUFFIXES.iter().find(|(k, _)| *k == t.kind())?.1;
    Some((device, loaded(device)?, suffix))
}

/// A tensor the shim returned, or None after noting why (then the composition runs, from now
/// on).
fn returned<T>(what: &str, r: Result<T>) -> Option<T> {
    r.map_err(|e| {
        eprintln!("warning: {what} failed, running libtorch's kernels from now on: {e}");
        BROKEN.store(true, Ordering::Relaxed);
    })
    .ok()
}

/// `silu(gate) * up` for training: one kernel forward and one backward (an autograd
/// function), where libtorch runs silu, mul and three kernels back. `gate` and `up` share
/// shape, type and device.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Option<Tensor> {
    let (_, loaded, suffix) = usable_with_grad(gate)?;
    if up.kind() != gate.kind() || up.device() != gate.device() || up.size() != gate.size() {
        return None;
    }
    let s = shim().ok()?;
    let (fwd, bwd) =
        (loaded.kernels[&("swiglu_forward", suffix)], loaded.kernels[&("swiglu_backward", suffix)]);
    // SAFETY: live tensor handles, kernel handles of this type, a valid out-pointer.
    let r = call_for_tensor("SwiGLU", |out, e, n| unsafe {
        (s.swiglu)(gate.as_ptr() as _, up.as_ptr() as _, fwd as i64, bwd as i64, out, e, n)
    });
    returned("SwiGLU", r)
}

/// The residual add and the RMSNorm after it, for training, forward and backward one kernel
/// each (an autograd function): `(mid, x)` with `mid = h + a` (f32, `h` the f32 residual
/// stream, `a` a branch's output) and `x = RMSNorm(mid)` scaled by `weight` (f32; `plus_one`:
/// by `1 + weight`, Gemma) in `a`'s type: the add, libtorch's fused RMSNorm in f32 and
/// autocast's cast, in one pass. Rows up to 4,096 wide.
pub fn add_rms_norm(
    h: &Tensor,
    a: &Tensor,
    weight: &Tensor,
    eps: f64,
    plus_one: bool,
) -> Option<(Tensor, Tensor)> {
    let (_, loaded, suffix) = usable_with_grad(a)?;
    let dim = *h.size().last()?;
    let fits = h.kind() == Kind::Float
        && weight.kind() == Kind::Float
        && h.device() == a.device()
        && weight.device() == a.device()
        && h.size() == a.size()
        && weight.size() == [dim]
        && (1..=4096).contains(&dim);
    if !fits {
        return None;
    }
    let s = shim().ok()?;
    // The backward kernel keeping the fewest columns a thread (256 threads a row), and its
    // blocks: 1,024 for rows up to 2,048 wide (32-56 registers), so that the GPU holds them all.
    let (backward, grad_blocks) = match dim {
        ..=1024 => ("add_rms_norm_backward4", 1024),
        1025..=2048 => ("add_rms_norm_backward8", 1024),
        _ => ("add_rms_norm_backward16", 256),
    };
    let (fwd, bwd) = (loaded.kernels[&("add_rms_norm_forward", suffix)], loaded.kernels[&(backward, suffix)]);
    let (mut mid, mut x) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: live tensor handles, kernel handles of `a`'s type, valid out-pointers.
    let r = call("add + RMSNorm", |e, n| unsafe {
        (s.add_rms_norm)(
            h.as_ptr() as _,
            a.as_ptr() as _,
            weight.as_ptr() as _,
            eps,
            plus_one as i64,
            fwd as i64,
            bwd as i64,
            grad_blocks,
            &mut mid,
            &mut x,
            e,
            n,
        )
    });
    // SAFETY: on success the shim wrote two heap-allocated `at::Tensor*`s, which tch owns now.
    returned(
        "add + RMSNorm",
        r.map(|()| unsafe { (Tensor::from_ptr(mid.cast()), Tensor::from_ptr(x.cast())) }),
    )
}

/// RoPE for training straight from a projection's output `x` (`[b, t, heads * dim]`) to
/// rotated heads `[b, heads, t, dim]`, forward and backward one kernel each (an autograd
/// function). `cos` and `sin_signed` are [`crate::model::rope::RopeAngles`]'s in f32
/// (`[b or 1, 1, t, dim]`); the rotation runs in f32 and is stored in `x`'s type, as the
/// composition's f32 result is cast for attention under autocast.
pub fn rope_heads(x: &Tensor, heads: i64, cos: &Tensor, sin_signed: &Tensor) -> Option<Tensor> {
    let (_, loaded, suffix) = usable_with_grad(x)?;
    let &[b, t, width] = x.size().as_slice() else { return None };
    let dim = width / heads.max(1);
    let angles_ok = |a: &Tensor| {
        let s = a.size();
        a.kind() == Kind::Float
            && a.device() == x.device()
            && a.is_contiguous()
            && s.len() == 4
            && (s[0] == b || s[0] == 1)
            && s[1..] == [1, t, dim]
    };
    // Each kernel thread takes 16 bytes of a head and of its rotation partner half a head on.
    let piece = 16 / x.kind().elt_size_in_bytes() as i64;
    if heads < 1 || width % heads != 0 || dim % (2 * piece) != 0 || !angles_ok(cos) || !angles_ok(sin_signed)
    {
        return None;
    }
    let s = shim().ok()?;
    let (fwd, bwd) = (loaded.kernels[&("rope_forward", suffix)], loaded.kernels[&("rope_backward", suffix)]);
    // SAFETY: live tensor handles, kernel handles of this type, a valid out-pointer.
    let r = call_for_tensor("RoPE", |out, e, n| unsafe {
        (s.rope)(
            x.as_ptr() as _,
            cos.as_ptr() as _,
            sin_signed.as_ptr() as _,
            heads,
            fwd as i64,
            bwd as i64,
            out,
            e,
            n,
        )
    });
    returned("RoPE", r)
}

/// One AdamW update (torch.optim.AdamW(fused=True)'s arithmetic) over the trainer's flat f32
/// buffers in one kernel: parameters `p`, gradients `g`, moments `m` and `v`, at update number
/// `step` (1 first), with `hp`'s hyper-parameters (its `lr` the scheduled one). It also writes
/// the updated parameters into `copy` (their bf16 or f16 copy for autocast's matrix products)
/// in the same pass. `grad_scale` (a 0-d f32 device tensor)
/// divides the gradient first. False where the kernel does not apply (then the caller runs the
/// composition).
pub fn adamw(
    [p, g, m, v]: [&Tensor; 4],
    copy: Option<&Tensor>,
    hp: &crate::train::optim::AdamWConfig,
    step: i64,
    grad_scale: Option<&Tensor>,
) -> bool {
    let Some((device, loaded, _)) = usable_with_grad(p) else { return false };
    let n = p.numel();
    let flat_f32 = |t: &Tensor| {
        t.kind() == Kind::Float && t.device() == p.device() && t.is_contiguous() && t.numel() == n
    };
    let aligned = |t: &Tensor| (t.data_ptr() as usize).is_multiple_of(16);
    let copy_ok = copy.is_none_or(|c| c.device() == p.device() && c.is_contiguous() && c.numel() == n);
    let scale_ok =
        grad_scale.is_none_or(|s| s.kind() == Kind::Float && s.device() == p.device() && s.numel() == 1);
    let suffix = match copy.map(Tensor::kind) {
        None => "bf16",
        Some(kind) => match SUFFIXES.iter().find(|(k, _)| *k == kind) {
            Some((_, suffix)) => suffix,
            None => return false,
        },
    };
    if ![p, g, m, v].iter().all(|t| flat_f32(t) && aligned(t)) || !copy_ok || !scale_ok {
        return false;
    }
    let bias_correction1 = 1.0 - hp.beta1.powi(step as i32);
    let bias_correction2_sqrt = (1.0 - hp.beta2.powi(step as i32)).sqrt();
    let args = Args::default()
        .ptr(p)
        .ptr(g)
        .ptr(m)
        .ptr(v)
        .nullable(copy)
        .i64(n as i64)
        .f64(hp.lr)
        .f64(hp.beta1)
        .f64(hp.beta2)
        .f64(hp.weight_decay)
        .f64(hp.eps)
        .f32(bias_correction1)
        .f32(bias_correction2_sqrt)
        .nullable(grad_scale);
    let blocks = ((n as i64 / 4 + 1) / THREADS as i64 + 1).min(MAX_BLOCKS);
    args.launch(loaded, "adamw", suffix, device, blocks, THREADS)
}

/// One launch's arguments, each stored as the 8-byte words its pointer points at (4-byte values
/// occupy the first four, as a little-endian device reads them; a struct its words in order).
/// `starts`: where each argument's words begin.
#[derive(Default)]
struct Args {
    words: Vec<u64>,
    starts: Vec<usize>,
    /// See [`Args::programmatic`].
    programmatic: bool,
}

impl Args {
    fn word(self, w: u64) -> Self {
        self.words_of(&[w])
    }
    /// A struct argument of 8-byte fields, as the kernel declares them.
    fn words_of(mut self, words: &[u64]) -> Self {
        self.starts.push(self.words.len());
        self.words.extend_from_slice(words);
        self
    }
    fn ptr(self, t: &Tensor) -> Self {
        self.word(t.data_ptr() as u64)
    }
    fn i64(self, v: i64) -> Self {
        self.word(v as u64)
    }
    fn i32(self, v: i64) -> Self {
        self.word(i32::try_from(v).expect("a 32-bit kernel argument") as u32 as u64)
    }
    fn f32(self, v: f64) -> Self {
        self.word((v as f32).to_bits() as u64)
    }
    fn f64(self, v: f64) -> Self {
        self.word(v.to_bits())
    }
    fn nullable(self, t: Option<&Tensor>) -> Self {
        self.word(t.map_or(0, |t| t.data_ptr() as u64))
    }

    /// A programmatic dependent launch where [`overlapped_launches`] says: the kernel may start
    /// while the one before it finishes, so it must wait (`griddepcontrol.wait`) before it reads
    /// anything that kernel writes (the matrix-vector kernels, the joint decode attention, and
    /// the small kernels that begin with `start_chained` in kernels.cu).
    fn programmatic(mut self) -> Self {
        self.programmatic = true;
        self
    }

    /// Launches `name` for `suffix` on `device`'s current torch stream; false if it failed
    /// (then nothing runs fused again and the caller falls back).
    fn launch(
        self,
        loaded: &Loaded,
        name: &'static str,
        suffix: &'static str,
        device: usize,
        grid: i64,
        block: u32,
    ) -> bool {
        self.launch_with(loaded, (name, suffix), device, (grid, block, 0))
    }

    /// [`Args::launch`] with a shape of (grid, block, bytes of dynamic shared memory).
    fn launch_with(
        self,
        loaded: &Loaded,
        (name, suffix): (&'static str, &'static str),
        device: usize,
        (grid, block, shared_bytes): (i64, u32, i64),
    ) -> bool {
        let Ok(s) = shim() else { return false };
        let programmatic = self.programmatic && overlapped_launches();
        let kernel = loaded.kernels[&(name, suffix)] as *mut c_void;
        let mut words = self.words;
        let base = words.as_mut_ptr();
        // SAFETY: every start indexes into `words`, which outlives the launch below.
        let mut ptrs: Vec<*mut c_void> =
            self.starts.iter().map(|&i| unsafe { base.add(i) } as *mut c_void).collect();
        let grid = grid.clamp(1, u32::MAX as i64) as u32;
        // SAFETY: `kernel` is a loaded kernel whose parameters match `ptrs` (one per argument,
        // built in its declaration order by the op below), and every pointer argument is the
        // data of a live tensor that the op checked for device, type, shape and layout.
        let r = call("kernel launch", |e, n| unsafe {
            (s.kernel_launch)(
                kernel,
                device as c_int,
                grid,
                block,
                shared_bytes as c_uint,
                programmatic as c_int,
                ptrs.as_mut_ptr(),
                e,
                n,
            )
        });
        if let Err(e) = r {
            eprintln!("warning: {name} failed, running libtorch's kernels from now on: {e}");
            BROKEN.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Whether the decode matrix-vector kernels, the joint decode attention and the small kernels
/// behind projections ([`Args::programmatic`]) launch as programmatic dependent launches (on
/// Hopper and later; the shim launches plainly before; `UNIATTN_OVERLAP_LAUNCHES=0` turns it
/// off): each may start while the kernel before it finishes, and the first two stream their
/// first weights or keys (which no kernel still running writes) before they wait for that
/// kernel's results, so a step's chain of kernels overlaps launch and load latency instead of
/// paying it once per kernel.
fn overlapped_launches() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !std::env::var("UNIATTN_OVERLAP_LAUNCHES").is_ok_and(|v| v == "0"))
}

fn grid_for(elements: i64) -> i64 {
    ((elements + THREADS as i64 - 1) / THREADS as i64).min(MAX_BLOCKS)
}

/// `act(gu[..., :I]) * gu[..., I:]` for the fused gate|up projection `gu` (`[..., 2I]`):
/// SiLU, or GELU's tanh form with `gelu_tanh`.
pub fn gated_act(gu: &Tensor, gelu_tanh: bool) -> Option<Tensor> {
    let (device, loaded, suffix) = usable(gu)?;
    let mut shape = gu.size();
    let width = *shape.last()?;
    if !gu.is_contiguous() || width % 2 != 0 {
        return None;
    }
    let inter = width / 2;
    *shape.last_mut()? = inter;
    let out = Tensor::empty(shape.as_slice(), (gu.kind(), gu.device()));
    let rows = gu.numel() as i64 / width;
    let args = Args::default().ptr(gu).ptr(&out).i64(rows).i64(inter).i32(gelu_tanh as i64);
    args.programmatic()
        .launch(loaded, "gated_act", suffix, device, grid_for(rows * inter), THREADS)
        .then_some(out)
}

/// Blocks a launch of [`row_argmax`] aims at (about two an SM of an H100/H200), and a row's
/// blocks at most (the kernel combines them in one warp).
const ARGMAX_BLOCKS: i64 = 264;
const ARGMAX_MAX_PER_ROW: i64 = 32;

/// Greedy picks into `out` (int64 `[rows, 1]`, rows `out.stride()[0]` apart): for each row of
/// `logits` (`[rows, v]`, contiguous) the index of its largest value, the first of equal ones
/// and NaN above all, as `logits.argmax(-1, true)`. A row's blocks share it: over 152k bf16
/// values a row, 12 us at batch 32 and 6 at batch 1 on an H200, where torch's reduction (17-19
/// blocks a row) took 16 and 10 (kernels.cu's `row_argmax`).
pub fn row_argmax(logits: &Tensor, out: &Tensor) -> Option<()> {
    let (device, loaded, suffix) = usable(logits)?;
    let &[rows, v] = logits.size().as_slice() else { return None };
    let fits = logits.is_contiguous()
        && rows > 0
        && v > 0
        && out.kind() == Kind::Int64
        && out.device() == logits.device()
        && out.size() == [rows, 1];
    if !fits {
        return None;
    }
    let per_row = (ARGMAX_BLOCKS / rows).clamp(1, ARGMAX_MAX_PER_ROW);
    let dev = logits.device();
    let part_v = Tensor::empty([rows * per_row], (Kind::Float, dev));
    let part_i = Tensor::empty([rows * per_row], (Kind::Int64, dev));
    let tickets = tickets("row_argmax", device, rows)?;
    let args = Args::default()
        .ptr(logits)
        .i64(v)
        .i32(per_row)
        .ptr(&part_v)
        .ptr(&part_i)
        .ptr(&tickets)
        .ptr(out)
        .i64(out.stride()[0]);
    args.launch(loaded, "row_argmax", suffix, device, rows * per_row, THREADS).then_some(())
}

/// Counters a kernel counts its finished blocks with, one per unit of blocks, zero between
/// launches (the last block of a unit resets its own): kept, not made every launch, so that a
/// graph step holds no fill for them. One set per kernel, thread and device, so that engines
/// decoding on two threads never share one; never freed, because a captured CUDA graph keeps
/// their address. `None` past the set's size.
fn tickets(kernel: &'static str, device: usize, units: i64) -> Option<Tensor> {
    thread_local! {
        static TICKETS: RefCell<HashMap<(&'static str, usize), Tensor>> = Default::default();
    }
    const MAX_UNITS: i64 = 4096;
    if units > MAX_UNITS {
        return None;
    }
    TICKETS.with(|t| {
        let mut t = t.borrow_mut();
        let tickets = t.entry((kernel, device)).or_insert_with(|| {
            let tickets = Tensor::zeros([MAX_UNITS], (Kind::Int, Device::Cuda(device)));
            // Kept alive past the thread: graphs captured here may replay elsewhere.
            std::mem::forget(tickets.shallow_clone());
            tickets
        });
        Some(tickets.shallow_clone())
    })
}

/// `h`'s RMSNorm with `weight` (in `h`'s type; Gemma's `1 + w` with `plus_one`) as a new
/// tensor: a decode step's norms, one kernel launched behind the projection before it
/// (libtorch's fused RMSNorm is launched when that projection ends); each value as libtorch's
/// computes it (the sum in another order).
pub fn rms_norm_decode(h: &Tensor, weight: &Tensor, eps: f64, plus_one: bool) -> Option<Tensor> {
    let (device, loaded, suffix) = usable(h)?;
    let dim = *h.size().last()?;
    let rows = h.numel() as i64 / dim.max(1);
    let fits = h.is_contiguous()
        && weight.kind() == h.kind()
        && weight.device() == h.device()
        && weight.size() == [dim]
        && weight.is_contiguous();
    if !fits || rows == 0 {
        return None;
    }
    let x = Tensor::empty(h.size().as_slice(), (h.kind(), h.device()));
    let args = Args::default().ptr(h).ptr(weight).ptr(&x).i64(rows).i64(dim).f32(eps).i32(plus_one as i64);
    args.programmatic()
        .launch(loaded, "rms_norm_decode", suffix, device, rows.min(MAX_BLOCKS), THREADS)
        .then_some(x)
}

/// What [`decode_gemv`] does with the product `x W^T (+ bias)`.
#[derive(Clone, Copy)]
pub enum GemvOut<'a> {
    /// Returns it as a new tensor.
    New,
    /// Adds it to `h` in place (the residual stream); returns `h`.
    AddInto { h: &'a Tensor },
    /// `W` is the fused gate|up weight `[2I, in]`: returns `act(gate) * up` (`[.., I]`), SiLU
    /// or GELU's tanh form, what the projection and [`gated_act`] give.
    Gated { gelu_tanh: bool },
    /// `W` is a fused projection whose rows are `layout`'s heads: returns the product with its
    /// query and key heads rotated by the angles of `positions` (`[1, 1]`) and writes its keys
    /// and values into the cache slabs, what the projection and [`rope_kv_write`] give (same
    /// arguments as there).
    Rope {
        positions: &'a Tensor,
        cos: &'a Tensor,
        sin_signed: &'a Tensor,
        layout: HeadLayout,
        keys: Option<&'a Tensor>,
        values: Option<&'a Tensor>,
    },
}

/// The RMSNorm that [`decode_gemv`] applies to its input row as it reads it (see
/// [`crate::model::nn::RmsNorm`]): `weight` in the row's type, Gemma's `1 + w` with `plus_one`.
#[derive(Clone, Copy)]
pub struct GemvNorm<'a> {
    pub weight: &'a Tensor,
    pub eps: f64,
    pub plus_one: bool,
}

/// A decode step's projection at batch 1 in one matrix-vector kernel that streams `W`
/// (`[out, in]`) at close to the memory's bandwidth, where cuBLAS's kernels for one row reach a
/// fraction of it; with `norm`, of the RMSNorm of `x` (applied as the kernel reads `x`, no norm
/// kernel); `out` says where the product goes. `None` where it does not apply (more than one
/// row, gradients, layout, alignment, `UNIATTN_DECODE_GEMV=0`), and the caller runs the norm,
/// `linear`/`addmm` and the kernels this one stands in for.
pub fn decode_gemv(
    x: &Tensor,
    norm: Option<GemvNorm>,
    weight: &Tensor,
    bias: Option<&Tensor>,
    out: GemvOut,
) -> Option<Tensor> {
    static OFF: OnceLock<bool> = OnceLock::new();
    if *OFF.get_or_init(|| std::env::var("UNIATTN_DECODE_GEMV").is_ok_and(|v| v == "0")) {
        return None;
    }
    let (device, loaded, suffix) = usable(x)?;
    let (outs, inp) = match weight.size()[..] {
        [o, i] => (o, i),
        _ => return None,
    };
    let aligned = |t: &Tensor| t.is_contiguous() && (t.data_ptr() as usize).is_multiple_of(16);
    let same = |t: &Tensor| t.kind() == x.kind() && t.device() == x.device() && !t.requires_grad();
    let fits = x.numel() as i64 == inp
        && (inp as usize).is_multiple_of(16 / x.kind().elt_size_in_bytes())
        && aligned(x)
        && aligned(weight)
        && same(weight)
        && bias.is_none_or(|b| same(b) && b.is_contiguous() && b.size() == [outs])
        && norm.is_none_or(|n| same(n.weight) && aligned(n.weight) && n.weight.numel() as i64 == inp)
        && match &out {
            GemvOut::New => true,
            GemvOut::AddInto { h } => same(h) && h.is_contiguous() && h.numel() as i64 == outs,
            GemvOut::Gated { .. } => outs.rem_euclid(2) == 0,
            GemvOut::Rope { positions, cos, sin_signed, layout, .. } => {
                let HeadLayout { q, k, v, dim } = *layout;
                dim % 2 == 0
                    && (q + k + v) * dim == outs
                    && rope_inputs_fit(x, positions, cos, sin_signed, 1, 1, dim)
            }
        };
    let slabs = match out {
        GemvOut::Rope { layout, keys, values, .. } => Some(cache_slabs(x, 1, layout, keys, values)?),
        _ => None,
    };
    // Shared memory: the staged normed row, and each warp's sum of squares and partial sums.
    const WARPS: i64 = 4;
    let shared = norm.map_or(0, |_| inp * 4) + WARPS * 3 * 4;
    if !fits || shared > 48 * 1024 {
        return None;
    }
    let rows = match out {
        GemvOut::Gated { .. } => outs / 2,
        _ => outs,
    };
    let y = match out {
        GemvOut::AddInto { h } => h.shallow_clone(),
        _ => {
            let mut shape = x.size();
            *shape.last_mut()? = rows;
            Tensor::empty(shape.as_slice(), (x.kind(), x.device()))
        }
    };
    // Rows longer than one pass of a warp's loads take four warps each (see kernels.cu).
    let pieces = inp / (16 / x.kind().elt_size_in_bytes()) as i64;
    let split = if pieces > 32 * 8 { WARPS } else { 1 };
    let args = Args::default()
        .ptr(x)
        .nullable(norm.map(|n| n.weight))
        .f32(norm.map_or(0.0, |n| n.eps))
        .i32(norm.is_some_and(|n| n.plus_one) as i64)
        .ptr(weight)
        .nullable(bias);
    let (name, args, outputs) = match out {
        GemvOut::New if norm.is_none() && bias.is_none() && split == 1 && in_pairs(rows) => {
            ("decode_gemv_pairs", Args::default().ptr(x).ptr(weight).ptr(&y).i64(rows).i64(inp), rows / 2)
        }
        GemvOut::New => ("decode_gemv", args.nullable(None).ptr(&y).i64(rows).i64(inp).i32(split), rows),
        GemvOut::AddInto { h } => ("decode_gemv", args.ptr(h).ptr(&y).i64(rows).i64(inp).i32(split), rows),
        GemvOut::Gated { gelu_tanh } => {
            ("decode_gemv_gated", args.ptr(&y).i64(rows).i64(inp).i32(split).i32(gelu_tanh as i64), rows)
        }
        GemvOut::Rope { positions, cos, sin_signed, layout, keys, values } => {
            let slabs = slabs?;
            let args = args
                .ptr(&y)
                .i64(outs)
                .i64(inp)
                .i32(split)
                .ptr(positions)
                .ptr(cos)
                .ptr(sin_signed)
                .i32(layout.q)
                .i32(layout.k)
                .i32(layout.v)
                .i32(layout.dim)
                .nullable(keys)
                .nullable(values)
                .i64(slabs.strides[1])
                .i64(slabs.capacity);
            ("decode_gemv_rope", args, outs / 2)
        }
    };
    let block = 32 * WARPS as u32;
    let needed = (outputs * split + WARPS - 1) / WARPS;
    // As many blocks as fit at once, striding over the rest: grids cut to rounds of equal size
    // were 4% slower a step on the H200 (docs/benchmarks.md, 2026-12-01).
    let grid = resident_blocks(loaded, (name, suffix), device, block, shared)
        .map_or(needed, |r| needed.min(r.max(1)));
    args.programmatic().launch_with(loaded, (name, suffix), device, (grid, block, shared)).then_some(y)
}

/// Whether a product of `rows` rows, each summed by one warp alone (`split` 1), runs two rows a
/// warp (`decode_gemv_pairs` in kernels.cu): a long stream of rows, the LM head's shape
/// (`UNIATTN_GEMV_PAIRS=0`: never).
fn in_pairs(rows: i64) -> bool {
    static OFF: OnceLock<bool> = OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var("UNIATTN_GEMV_PAIRS").is_ok_and(|v| v == "0"));
    !off && rows >= 32_768 && rows % 2 == 0
}

/// Blocks of a kernel (`block` threads, `shared` bytes) that fit on `device` at once, from the
/// occupancy calculator, once per shape; `None` if it failed (then a grid covers every output).
fn resident_blocks(
    loaded: &Loaded,
    (name, suffix): (&'static str, &'static str),
    device: usize,
    block: u32,
    shared: i64,
) -> Option<i64> {
    type Key = (&'static str, &'static str, usize, u32, i64);
    static KNOWN: OnceLock<std::sync::Mutex<HashMap<Key, Option<i64>>>> = OnceLock::new();
    let known = KNOWN.get_or_init(Default::default);
    let key = (name, suffix, device, block, shared);
    if let Some(&blocks) = known.lock().ok()?.get(&key) {
        return blocks;
    }
    let s = shim().ok()?;
    let kernel = loaded.kernels[&(name, suffix)] as *mut c_void;
    let mut blocks: c_int = 0;
    // SAFETY: `kernel` is a loaded kernel; valid out-pointer and error buffer.
    let r = call("occupancy", |e, n| unsafe {
        (s.kernel_resident_blocks)(kernel, device as c_int, block, shared as c_uint, &mut blocks, e, n)
    });
    let blocks = r.ok().filter(|_| blocks > 0).map(|_| blocks as i64);
    known.lock().ok()?.insert(key, blocks);
    blocks
}

/// Heads of one row of a fused projection's output: `q` query heads, then `k` key heads, then
/// `v` value heads, `dim` wide each (a reuse layer has values only).
#[derive(Debug, Clone, Copy)]
pub struct HeadLayout {
    pub q: i64,
    pub k: i64,
    pub v: i64,
    pub dim: i64,
}

/// Whether `positions` (`[n, t]` int64) and RoPE's angles (`[n, 1, t, dim]` in `x`'s type) are
/// laid out as the RoPE kernels read them.
fn rope_inputs_fit(
    x: &Tensor,
    positions: &Tensor,
    cos: &Tensor,
    sin_signed: &Tensor,
    n: i64,
    t: i64,
    dim: i64,
) -> bool {
    let angles_ok = |a: &Tensor| {
        a.kind() == x.kind()
            && a.device() == x.device()
            && a.is_contiguous()
            && a.numel() as i64 == n * t * dim
    };
    positions.kind() == Kind::Int64
        && positions.device() == x.device()
        && positions.is_contiguous()
        && positions.size() == [n, t]
        && angles_ok(cos)
        && angles_ok(sin_signed)
}

/// Where a RoPE kernel writes `layout`'s keys and values: cache slabs `[slots, kv_heads,
/// capacity, dim]` (from the batch's first slot, contiguous) with `strides`.
struct CacheSlabs {
    strides: [i64; 4],
    capacity: i64,
}

/// The slabs `keys` and `values` when they fit `layout` and `n` sequences of `x` (with neither,
/// a layout of queries alone: nothing is written).
fn cache_slabs(
    x: &Tensor,
    n: i64,
    layout: HeadLayout,
    keys: Option<&Tensor>,
    values: Option<&Tensor>,
) -> Option<CacheSlabs> {
    let HeadLayout { k, v, dim, .. } = layout;
    // No cache: a stand-in shape that every check below passes.
    let cache = values.map_or(vec![n, v, 0, dim], Tensor::size);
    let &[slots, kv_heads, capacity, cache_dim] = cache.as_slice() else { return None };
    let strides = [kv_heads * capacity * dim, capacity * dim, dim, 1];
    let cache_ok = |c: &Tensor| {
        c.kind() == x.kind() && c.device() == x.device() && c.size() == cache && c.stride() == strides
    };
    let fits = cache_dim == dim
        && slots >= n
        && v == kv_heads
        && (k == 0 || k == kv_heads)
        && (k == 0) == keys.is_none()
        && values.is_none_or(cache_ok)
        && (values.is_some() || k == 0 && v == 0)
        && keys.is_none_or(cache_ok);
    fits.then_some(CacheSlabs { strides, capacity })
}

/// RoPE on the query and key heads of `x` (`[n, t, width]`, the fused projection's output)
/// and the cache write of keys and values at `positions` (`[n, t]`), in one kernel. `cos`
/// and `sin_signed` are [`crate::model::rope::RopeAngles`]'s (`[n, 1, t, dim]`); `keys` and
/// `values` are cache tensors `[slots, kv_heads, capacity, dim]` narrowed to the batch's
/// first slot; with neither (a layout of queries alone, as a CLA layer's) it is RoPE alone.
/// Returns the rotated queries `[n, q, t, dim]`.
pub fn rope_kv_write(
    x: &Tensor,
    positions: &Tensor,
    cos: &Tensor,
    sin_signed: &Tensor,
    heads: HeadLayout,
    keys: Option<&Tensor>,
    values: Option<&Tensor>,
) -> Option<Tensor> {
    let (device, loaded, suffix) = usable(x)?;
    let HeadLayout { q, k, v, dim } = heads;
    let &[n, t, width] = x.size().as_slice() else { return None };
    let fits = x.is_contiguous()
        && width >= (q + k + v) * dim
        && dim % 2 == 0
        && rope_inputs_fit(x, positions, cos, sin_signed, n, t, dim);
    let slabs = if fits { cache_slabs(x, n, heads, keys, values)? } else { return None };
    let q_out = Tensor::empty([n, q, t, dim], (x.kind(), x.device()));
    let args = Args::default()
        .ptr(x)
        .i64(width)
        .ptr(positions)
        .ptr(cos)
        .ptr(sin_signed)
        .i64(n * t)
        .i64(t)
        .i32(q)
        .i32(k)
        .i32(v)
        .i32(dim)
        .ptr(&q_out)
        .nullable(keys)
        .nullable(values)
        .i64(slabs.strides[0])
        .i64(slabs.strides[1])
        .i64(slabs.capacity);
    let grid = grid_for(n * t * (q + k + v) * dim);
    args.programmatic().launch(loaded, "rope_kv_write", suffix, device, grid, THREADS).then_some(q_out)
}

/// What a reuse layer whose lead attended for it ([`AheadSums`]) takes from its lead in a
/// decode step: the lead's sums over the keys before the current one (`sums`, f32 `[n, heads,
/// 1, d]`) and the current key's probability (`current`, f32 `[n, heads, 1, 1]`).
#[derive(Clone, Copy)]
pub struct LeadSums<'a> {
    pub sums: &'a Tensor,
    pub current: &'a Tensor,
}

/// A decode step's reuse layer (`h`: `[n, 1, hidden]`, one token a sequence) up to its output
/// projection, in one kernel: `x = norm(h)`, its values `v = x W_v^T (+ bias)` (`weight`:
/// `[kv_heads * d, hidden]`) written into the value cache slab `values` (`[slots, kv_heads,
/// capacity, d]` from the batch's first slot) at `positions` (`[n, 1]`), and the layer's
/// attention `sums + current * v` for each query head of a value head. Returns `[n, 1, heads *
/// d + hidden]`: the attention's merged heads, then `x` (the input of the output projection
/// fused with `W_c`). `None` where it does not apply; the caller then runs the norm, the
/// projection, the cache write and [`AheadSums::attention`].
pub fn reuse_attention_decode(
    h: &Tensor,
    norm: GemvNorm,
    (weight, bias): (&Tensor, Option<&Tensor>),
    positions: &Tensor,
    values: &Tensor,
    lead: LeadSums,
) -> Option<Tensor> {
    const ROWS: i64 = 8;
    const OUTS: i64 = 8;
    let (device, loaded, suffix) = usable(h)?;
    let &[n, 1, hidden] = h.size().as_slice() else { return None };
    let &[_, kv_heads, _, d] = values.size().as_slice() else { return None };
    let &[_, heads, 1, _] = lead.sums.size().as_slice() else { return None };
    let per = 16 / h.kind().elt_size_in_bytes() as i64;
    let aligned = |t: &Tensor| t.is_contiguous() && (t.data_ptr() as usize).is_multiple_of(16);
    let same = |t: &Tensor| t.kind() == h.kind() && t.device() == h.device() && !t.requires_grad();
    let f32_of = |t: &Tensor, numel: i64| {
        t.kind() == Kind::Float && t.device() == h.device() && t.is_contiguous() && t.numel() as i64 == numel
    };
    let group = if kv_heads > 0 && heads % kv_heads == 0 { heads / kv_heads } else { 0 };
    let layout = HeadLayout { q: 0, k: 0, v: kv_heads, dim: d };
    let slabs = cache_slabs(h, n, layout, None, Some(values))?;
    // x's rows and the norm's weights, then the values (kernels.cu).
    let shared = (ROWS + 1) * hidden * h.kind().elt_size_in_bytes() as i64 + ROWS * OUTS * 4;
    let fits = aligned(h)
        && hidden % per == 0
        && (heads * d) % per == 0
        && same(norm.weight)
        && aligned(norm.weight)
        && norm.weight.size() == [hidden]
        && same(weight)
        && aligned(weight)
        && weight.size() == [kv_heads * d, hidden]
        && bias.is_none_or(|b| same(b) && b.is_contiguous() && b.size() == [kv_heads * d])
        && d % OUTS == 0
        && (1..=decode_attention::MAX_GROUP).contains(&group)
        && f32_of(lead.sums, n * heads * d)
        && f32_of(lead.current, n * heads)
        && positions.kind() == Kind::Int64
        && positions.device() == h.device()
        && positions.is_contiguous()
        && positions.numel() as i64 == n
        && shared <= 96 * 1024;
    if !fits || n == 0 {
        return None;
    }
    let out = Tensor::empty([n, 1, heads * d + hidden], (h.kind(), h.device()));
    let args = Args::default()
        .ptr(h)
        .ptr(norm.weight)
        .f32(norm.eps)
        .i32(norm.plus_one as i64)
        .ptr(weight)
        .nullable(bias)
        .i64(n)
        .i32(hidden)
        .i32(kv_heads)
        .i32(d)
        .i32(group)
        .ptr(positions)
        .ptr(values)
        .i64(slabs.strides[0])
        .i64(slabs.strides[1])
        .i64(slabs.capacity)
        .ptr(lead.sums)
        .ptr(lead.current)
        .ptr(&out);
    let grid = (n + ROWS - 1) / ROWS * (kv_heads * d / OUTS);
    args.programmatic()
        .launch_with(loaded, ("reuse_attention_decode", suffix), device, (grid, THREADS, shared))
        .then_some(out)
}

/// `softmax(scores * scale [softcapped] + mask)` over the last axis in f32, stored in the
/// scores' type: [`crate::model::attention::attention_probs`] after its score GEMM. `scores`:
/// `[b, heads, q, k]`; `mask`: additive, `[b, 1, q, k]`.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64, softcap: Option<f64>) -> Option<Tensor> {
    let (device, loaded, suffix) = usable(scores)?;
    let &[b, heads, q, k] = scores.size().as_slice() else { return None };
    let fits = scores.is_contiguous()
        && mask.kind() == scores.kind()
        && mask.device() == scores.device()
        && mask.is_contiguous()
        && mask.size() == [b, 1, q, k];
    if !fits {
        return None;
    }
    let out = scores.empty_like();
    let args = Args::default()
        .ptr(scores)
        .ptr(mask)
        .ptr(&out)
        .i64(heads)
        .i64(q)
        .i64(k)
        .f32(scale)
        .f32(softcap.unwrap_or(0.0));
    args.launch(loaded, "masked_softmax", suffix, device, b * heads * q, softmax_block(scores, mask))
        .then_some(out)
}

/// Threads a row of [`masked_softmax`]: where kernels.cu holds the row in registers
/// (`SOFTMAX_PIECES` 16-byte pieces a thread, 16-byte aligned rows), just enough whole warps
/// for that, so that every row of a decode step's map is resident at once (a power of two
/// made 8,448 keys 512 threads, two blocks an SM: two waves); else 512 for long rows.
fn softmax_block(scores: &Tensor, mask: &Tensor) -> u32 {
    const SOFTMAX_PIECES: i64 = 4;
    let k = scores.size()[3];
    let per_piece = 16 / scores.kind().elt_size_in_bytes() as i64;
    let aligned =
        k % per_piece == 0 && (scores.data_ptr() as usize | mask.data_ptr() as usize).is_multiple_of(16);
    match k / per_piece {
        pieces if aligned && pieces <= 1024 * SOFTMAX_PIECES => {
            let threads = (pieces + SOFTMAX_PIECES - 1) / SOFTMAX_PIECES;
            ((threads + 31) / 32 * 32).clamp(64, 1024) as u32
        }
        _ if k >= 2048 => 512,
        _ => THREADS,
    }
}

/// The cross-entropy of `logits` (`[n, vocab]`, a chunk of the LM head's output before any
/// soft-capping, which `softcap` applies) against `targets` (`[n]`, -100 where there is none),
/// times `scale` (a one-element f32 tensor on the same device, read when the kernel runs), per
/// row (f32 `[n]`), and with `with_grad` its gradient with respect to `logits` (in their
/// type), all in one kernel: what `cross_entropy_loss` over the f32 logits and its backward
/// pass compute. `logits` must not require grad (pass them detached).
pub fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    scale: &Tensor,
    softcap: Option<f64>,
    with_grad: bool,
) -> Option<(Tensor, Option<Tensor>)> {
    let (device, loaded, suffix) = usable(logits)?;
    let &[n, vocab] = logits.size().as_slice() else { return None };
    let fits = logits.is_contiguous()
        && targets.kind() == Kind::Int64
        && targets.device() == logits.device()
        && targets.is_contiguous()
        && targets.size() == [n]
        && scale.kind() == Kind::Float
        && scale.device() == logits.device()
        && scale.numel() == 1;
    if !fits || n == 0 {
        return None;
    }
    let loss = Tensor::empty([n], (Kind::Float, logits.device()));
    let grad = with_grad.then(|| logits.empty_like());
    let mut args = Args::default().ptr(logits).ptr(targets).ptr(&loss);
    args = match &grad {
        Some(g) => args.ptr(g),
        None => args.i64(0),
    };
    let args = args.i64(vocab).ptr(scale).f32(softcap.unwrap_or(0.0));
    args.launch(loaded, "cross_entropy", suffix, device, n, 1024).then_some((loss, grad))
}

#[cfg(test)]
mod tests {
    //! On a GPU (skipped elsewhere): each kernel against the libtorch composition it replaces.
    //! On any machine with NVRTC: the source compiles. Anywhere: the launch arithmetic.
    use super::*;
    use crate::engine::kv_cache::{CacheKind, KvCache};
    use crate::model::attention::{attention_probs, Heads};
    use crate::model::rope::RopeAngles;
    use std::ffi::c_char;

    pub(super) const KINDS: [Kind; 3] = [Kind::Float, Kind::BFloat16, Kind::Half];

    /// `SOURCE` compiled by NVRTC for `arch` with the options `cuda/nvrtc.cpp` passes, plus
    /// ptxas's report: the cubin and the log. `nvrtc` is libnvrtc.so.13's path.
    fn nvrtc_compile(nvrtc: &str, arch: &str) -> std::result::Result<(Vec<u8>, String), String> {
        type Create = unsafe extern "C" fn(
            *mut *mut c_void,
            *const c_char,
            *const c_char,
            c_int,
            *const *const c_char,
            *const *const c_char,
        ) -> c_int;
        type Compile = unsafe extern "C" fn(*mut c_void, c_int, *const *const c_char) -> c_int;
        type Size = unsafe extern "C" fn(*mut c_void, *mut usize) -> c_int;
        type Get = unsafe extern "C" fn(*mut c_void, *mut c_char) -> c_int;
        type Destroy = unsafe extern "C" fn(*mut *mut c_void) -> c_int;
        let path = std::path::Path::new(nvrtc);
        // NVRTC opens its builtins library by name: loaded first from beside it.
        let builtins = path.with_file_name("libnvrtc-builtins.so.13.0");
        let open = |p: &std::path::Path, flags| {
            let c = CString::new(p.as_os_str().as_encoded_bytes()).expect("a path without NUL");
            // SAFETY: dlopen with a valid C string; the handle stays open for the process.
            unsafe { libc::dlopen(c.as_ptr(), flags) }
        };
        if builtins.exists() {
            open(&builtins, libc::RTLD_NOW | libc::RTLD_GLOBAL);
        }
        let handle = open(path, libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            return Err(format!("{nvrtc} does not load"));
        }
        let sym = |name: &str| crate::cuda::symbol(handle, name, nvrtc);
        // SAFETY: each symbol has the signature nvrtc.h declares for it.
        let (create, compile, log_size, log, cubin_size, cubin, destroy) = unsafe {
            use std::mem::transmute as t;
            (
                t::<*mut c_void, Create>(sym("nvrtcCreateProgram")?),
                t::<*mut c_void, Compile>(sym("nvrtcCompileProgram")?),
                t::<*mut c_void, Size>(sym("nvrtcGetProgramLogSize")?),
                t::<*mut c_void, Get>(sym("nvrtcGetProgramLog")?),
                t::<*mut c_void, Size>(sym("nvrtcGetCUBINSize")?),
                t::<*mut c_void, Get>(sym("nvrtcGetCUBIN")?),
                t::<*mut c_void, Destroy>(sym("nvrtcDestroyProgram")?),
            )
        };
        let src = CString::new(SOURCE).expect("kernel source has no NUL");
        let opts = [format!("--gpu-architecture={arch}"), "--std=c++17".into(), "--ptxas-options=-v".into()]
            .map(|o| CString::new(o).expect("an option"));
        let opt_ptrs = opts.each_ref().map(|o| o.as_ptr());
        let mut prog = std::ptr::null_mut();
        // SAFETY: NVRTC's API with valid C strings and out-pointers; buffers sized as it says.
        unsafe {
            if create(
                &mut prog,
                src.as_ptr(),
                c"uniattn_kernels.cu".as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            ) != 0
            {
                return Err("nvrtcCreateProgram failed".into());
            }
            let compiled = compile(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
            let mut n = 0usize;
            log_size(prog, &mut n);
            let mut text = vec![0u8; n];
            log(prog, text.as_mut_ptr().cast());
            let text = String::from_utf8_lossy(&text).trim_end_matches('\0').to_string();
            let mut bytes = Vec::new();
            if compiled == 0 && cubin_size(prog, &mut n) == 0 {
                bytes = vec![0u8; n];
                cubin(prog, bytes.as_mut_ptr().cast());
            }
            destroy(&mut prog);
            if compiled != 0 {
                return Err(format!("compiling for {arch} failed: {text}"));
            }
            Ok((bytes, text))
        }
    }

    /// kernels.cu compiles under NVRTC as `load` compiles it on a GPU machine, for Turing and
    /// Hopper (each side of the source's architecture switches), spills no registers, and
    /// defines every kernel `KERNELS` names in every type: a broken kernel source fails here,
    /// not on the GPU (where it would turn every fused kernel off). Needs no GPU:
    /// scripts/test.sh points `UNIATTN_NVRTC` at the NVRTC it fetches; without it the test
    /// tries libnvrtc.so.13 and is skipped, saying so, where there is none.
    #[test]
    fn kernels_compile_under_nvrtc() {
        let given = std::env::var("UNIATTN_NVRTC").ok();
        let nvrtc = given.clone().unwrap_or_else(|| "libnvrtc.so.13".into());
        for arch in ["sm_75", "sm_90"] {
            let (cubin, log) = match nvrtc_compile(&nvrtc, arch) {
                Err(e) if given.is_none() && e.ends_with("does not load") => {
                    eprintln!("skipped: {e} (scripts/setup.sh --with-nvrtc fetches it; set UNIATTN_NVRTC)");
                    return;
                }
                r => r.unwrap_or_else(|e| panic!("{e}")),
            };
            let spills: Vec<_> =
                log.lines().filter(|l| l.contains("spill") && !l.contains(" 0 bytes spill stores")).collect();
            assert!(spills.is_empty(), "{arch}: registers spill:\n{}", spills.join("\n"));
            for name in KERNELS {
                for (_, suffix) in SUFFIXES {
                    let symbol = format!("{name}_{suffix}");
                    let defined =
                        cubin.windows(symbol.len() + 1).any(|w| w == format!("{symbol}\0").as_bytes());
                    assert!(defined, "{arch}: {symbol} is not in the compiled kernels");
                }
            }
        }
    }

    /// Every entry point kernels.cu defines (`<name>_##SUFFIX(`, or a `*_ENTRY(T, SUFFIX,
    /// <name>, ...)` line) is in `KERNELS`, which `load` looks kernels up by: one left out
    /// compiled and then panicked at its first launch (decode_attention_joint, 2026-12-03).
    #[test]
    fn every_entry_point_is_loaded() {
        let mut names = Vec::new();
        // Past the macros' own definitions, whose names are parameters.
        for line in SOURCE.lines().filter(|l| !l.starts_with("#define")) {
            if let Some(at) = line.find("_##SUFFIX(").filter(|_| !line.contains("NAME##")) {
                let start =
                    line[..at].rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
                names.push(&line[start..at]);
            } else if let Some(rest) = line.split("_ENTRY(T, SUFFIX, ").nth(1) {
                names.push(rest.split(',').next().unwrap_or_default().trim());
            }
        }
        assert!(names.contains(&"decode_attention_joint") && names.contains(&"gated_act"), "{names:?}");
        for name in names {
            assert!(KERNELS.contains(&name), "kernels.cu's {name} is not in KERNELS");
        }
    }

    /// The softmax's block holds its row in registers where kernels.cu can (four 16-byte pieces
    /// a thread) with as few whole warps as that takes: a decode step's lead map of 8k bf16
    /// keys is 256 threads; rows it cannot hold get 512 (long) or 256 threads.
    #[test]
    fn softmax_blocks_hold_their_rows() {
        let rows = |k: i64, kind: Kind| Tensor::zeros([2, 3, 1, k], (kind, Device::Cpu));
        let mask = |k: i64, kind: Kind| Tensor::zeros([2, 1, 1, k], (kind, Device::Cpu));
        let block = |k: i64, kind: Kind| softmax_block(&rows(k, kind), &mask(k, kind));
        assert_eq!(block(8192, Kind::BFloat16), 256);
        assert_eq!(block(2048, Kind::BFloat16), 64);
        assert_eq!(block(8448, Kind::BFloat16), 288, "whole warps, not a power of two");
        assert_eq!(block(8192, Kind::Float), 512);
        assert_eq!(block(32768, Kind::BFloat16), 1024);
        assert_eq!(block(32776, Kind::BFloat16), 512, "past what 1024 threads hold");
        assert_eq!(block(4100, Kind::BFloat16), 512, "not whole pieces");
        assert_eq!(block(37, Kind::Float), THREADS);
        let offset = rows(8200, Kind::BFloat16).view([-1]).narrow(0, 1, 2 * 3 * 8192).view([2, 3, 1, 8192]);
        assert_eq!(softmax_block(&offset, &mask(8192, Kind::BFloat16)), 512, "an unaligned row");
    }

    /// Compiled kernels are named by what they were compiled from: the same source and compiler
    /// name one file in the cache's `kernels` folder, a change to either another; where the
    /// folder cannot be made there is no cache. The hash is FNV-1a's (known answers from an
    /// independent implementation: Python over the same bytes).
    #[test]
    fn compiled_kernels_are_named_by_their_source() {
        assert_eq!(fnv1a(["a"]), 0x089b_e207_b544_f1e4);
        assert_eq!(fnv1a(["uniattn", "kernels"]), 0xc1fb_1eb0_d958_1bd4);
        assert_ne!(fnv1a(["ab", "c"]), fnv1a(["a", "bc"]));
        assert_ne!(fnv1a([SOURCE, COMPILER]), fnv1a([&SOURCE[1..], COMPILER]));
        let dir = tempfile::tempdir().expect("a temporary folder");
        let prefix = compiled_prefix(dir.path()).expect("the folder is made");
        assert_eq!(prefix, dir.path().join("kernels").join(format!("{:016x}", fnv1a([SOURCE, COMPILER]))));
        assert_eq!(compiled_prefix(dir.path()), Some(prefix));
        let file = dir.path().join("not-a-folder");
        std::fs::write(&file, b"").expect("a file");
        assert_eq!(compiled_prefix(&file), None);
    }

    pub(super) fn gpu() -> Option<Device> {
        let dev = crate::testing::cuda()?;
        available().expect("a CUDA machine compiles and loads the fused kernels");
        Some(dev)
    }

    /// Largest difference in units of the type's rounding step at the reference's magnitude
    /// (0 = bit for bit).
    pub(super) fn ulps_of(kind: Kind) -> f64 {
        match kind {
            Kind::BFloat16 => 2f64.powi(-8),
            Kind::Half => 2f64.powi(-11),
            _ => 2f64.powi(-24),
        }
    }

    fn ulps(got: &Tensor, want: &Tensor) -> f64 {
        let eps = ulps_of(want.kind());
        let (g, w) = (got.to_kind(Kind::Double), want.to_kind(Kind::Double));
        let scale = w.abs().clamp_min(1e-30) * eps;
        ((g - &w).abs() / scale).max().double_value(&[])
    }

    /// Every row's pick against torch's argmax: rows of one value to the LM head's 152k, ties
    /// (the first wins), rows of -inf, NaN (above all), in each type, rows read in 16-byte pieces
    /// and one element at a time, and a strided output.
    #[test]
    fn row_argmax_equals_argmax() {
        let Some(dev) = gpu() else { return };
        for kind in KINDS {
            for (rows, v) in [(1, 1), (1, 151_936), (3, 33), (5, 1000), (32, 151_936), (40, 4099)] {
                let x = Tensor::randn([rows, v], (Kind::Float, dev));
                if v > 3 {
                    // Row 0: its largest value again, earlier and later (the first must win).
                    let top = x.get(0).max().double_value(&[]);
                    let _ = x.get(0).narrow(0, 1, 1).fill_(top);
                    let _ = x.get(0).narrow(0, v - 1, 1).fill_(top);
                }
                if rows > 2 {
                    let _ = x.get(1).fill_(f64::NEG_INFINITY);
                    let _ = x.get(2).narrow(0, v / 2, 1).fill_(f64::NAN);
                }
                let x = x.to_kind(kind);
                let want = x.argmax(-1, true);
                let slots = Tensor::full([2, rows, 1], -1, (Kind::Int64, dev));
                let out = slots.get(0);
                row_argmax(&x, &out).unwrap_or_else(|| panic!("{kind:?} {rows}x{v}: applies"));
                assert!(out.equal(&want), "{kind:?} {rows}x{v}: {out} against {want}");
                assert!(slots.get(1).eq(-1).all().int64_value(&[]) == 1, "{kind:?}: wrote past its rows");
            }
        }
        // Rows that do not start on 16 bytes are read an element at a time.
        let flat = Tensor::randn([3 * 4096 + 1], (Kind::Float, dev)).to_kind(Kind::BFloat16);
        let x = flat.narrow(0, 1, 3 * 4096).view([3, 4096]);
        let out = Tensor::full([3, 1], -1, (Kind::Int64, dev));
        row_argmax(&x, &out).expect("a contiguous row off 16 bytes applies");
        assert!(out.equal(&x.argmax(-1, true)), "rows off 16 bytes: {out}");
        let x = Tensor::randn([4, 64], (Kind::Float, dev));
        assert!(row_argmax(&x.transpose(0, 1), &Tensor::zeros([64, 1], (Kind::Int64, dev))).is_none());
    }

    #[test]
    fn gated_act_equals_composition() {
        let Some(dev) = gpu() else { return };
        for kind in KINDS {
            for gelu in [false, true] {
                let gu = (Tensor::randn([3, 5, 2 * 300], (Kind::Float, dev)) * 3.0).to_kind(kind);
                let got = gated_act(&gu, gelu).expect("the kernel applies");
                let (g, u) = (gu.narrow(-1, 0, 300), gu.narrow(-1, 300, 300));
                let want = if gelu { g.gelu("tanh") } else { g.silu() } * u;
                if gelu {
                    // GELU's `1 + tanh(..)` cancels for negative inputs, where torch's and
                    // this kernel's tanh differ in the last f32 bits: compare against the
                    // largest value instead of each value.
                    let scale = want.abs().max().double_value(&[]) * ulps_of(kind);
                    let d = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double))
                        .abs()
                        .max()
                        .double_value(&[]);
                    assert!(d <= 2.0 * scale, "{kind:?} gelu: differs by {d} (scale {scale})");
                } else {
                    // SiLU repeats torch's arithmetic: at most one rounding step apart.
                    let d = ulps(&got, &want);
                    assert!(d <= 1.0, "{kind:?} silu: {d} ulps");
                }
            }
        }
    }

    /// The norm within a rounding of the type of libtorch's (f32 arithmetic, its sum of squares
    /// in another order).
    fn within_norm_rounding(got: &Tensor, want: &Tensor, kind: Kind, case: &str) {
        let d = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double)).abs().max().double_value(&[])
            / want.abs().max().double_value(&[]);
        let tol = if kind == Kind::Float { 1e-6 } else { 2.0 * ulps_of(kind) };
        assert!(d <= tol, "{case}: the norm differs by {d} (of the largest)");
    }

    #[test]
    fn rms_norm_decode_equals_composition() {
        let Some(dev) = gpu() else { return };
        for kind in KINDS {
            // Rows a block holds in 16-byte pieces (two a thread: Qwen2.5-7B's 3,584), rows it
            // holds as elements (not whole pieces: to 2,048 at 256 threads) and one it loops over.
            for (rows, dim) in [(2, 896), (32, 896), (3, 1536), (2, 3584), (5, 100), (2, 3586)] {
                for plus_one in [false, true] {
                    let h = (Tensor::randn([rows, 1, dim], (Kind::Float, dev)) * 2.0).to_kind(kind);
                    let weight = (Tensor::randn([dim], (Kind::Float, dev)) * 0.5 + 1.0).to_kind(kind);
                    let norm = crate::model::nn::RmsNorm::new(weight.copy(), 1e-6, plus_one);
                    let case = format!("{kind:?} rows={rows} dim={dim} plus_one={plus_one}");
                    let before = h.copy();
                    let got = rms_norm_decode(&h, &weight, 1e-6, plus_one).expect("the norm kernel applies");
                    assert!(h.equal(&before), "{case}: the norm wrote h");
                    within_norm_rounding(&got, &norm.forward(&h), kind, &case);
                }
            }
        }
    }

    #[test]
    fn rope_kv_write_equals_composition() {
        let Some(dev) = gpu() else { return };
        let heads = Heads { num_heads: 4, num_kv_heads: 2, head_dim: 16 };
        for kind in KINDS {
            for (n, t, slot0) in [(1, 1, 0), (3, 1, 1), (2, 5, 0)] {
                let (qd, kvd) = (4 * 16, 2 * 16);
                // Columns after V, which the kernel leaves alone.
                let x = Tensor::randn([n, t, qd + 2 * kvd + 7], (Kind::Float, dev)).to_kind(kind);
                let positions = (Tensor::randperm(40, (Kind::Int64, dev)).narrow(0, 0, n * t)).view([n, t]);
                let rope = RopeAngles::new(&positions, 16, 10_000.0, kind);
                let kinds = [CacheKind::KeysValues, CacheKind::ValuesOnly];
                let new_cache = || KvCache::new(&kinds, &[2; 2], 4, 48, 16, kind, dev).unwrap();
                let (mut want, got) = (new_cache(), new_cache());
                // The composition, as the engine runs it without the kernel.
                let qk = heads.split(&x.narrow(-1, 0, qd + kvd), 6);
                let qk = rope.apply(&qk);
                let (q, k) = (qk.narrow(1, 0, 4), qk.narrow(1, 4, 2));
                let v = heads.split(&x.narrow(-1, qd + kvd, kvd), 2);
                want.write(0, slot0, &positions, Some(&k), &v);
                want.write(1, slot0, &positions, None, &heads.split(&x.narrow(-1, 0, kvd), 2));
                // The kernel, for a full layer and for a values-only reuse layer.
                let (keys, values) = got.slabs(0, slot0);
                let layout = HeadLayout { q: 4, k: 2, v: 2, dim: 16 };
                let q_got = rope_kv_write(
                    &x,
                    &positions,
                    &rope.cos,
                    &rope.sin_signed,
                    layout,
                    keys.as_ref(),
                    values.as_ref(),
                )
                .expect("the kernel applies");
                let (_, values) = got.slabs(1, slot0);
                let x_v = x.narrow(-1, 0, kvd + 7).contiguous();
                let v_only = HeadLayout { q: 0, k: 0, v: 2, dim: 16 };
                let none = rope_kv_write(
                    &x_v,
                    &positions,
                    &rope.cos,
                    &rope.sin_signed,
                    v_only,
                    None,
                    values.as_ref(),
                )
                .expect("the kernel applies");
                assert_eq!(none.size(), [n, 0, t, 16], "no query heads");
                // Queries alone, with no cache (a CLA layer's).
                let x_q = x.narrow(-1, 0, qd).contiguous();
                let q_only = HeadLayout { q: 4, k: 0, v: 0, dim: 16 };
                let q_alone =
                    rope_kv_write(&x_q, &positions, &rope.cos, &rope.sin_signed, q_only, None, None)
                        .expect("the kernel applies");
                let case = format!("{kind:?} n={n} t={t} slot0={slot0}");
                assert_eq!(ulps(&q_got, &q.contiguous()), 0.0, "{case}: queries");
                assert_eq!(ulps(&q_alone, &q.contiguous()), 0.0, "{case}: queries without a cache");
                let all = |c: &KvCache, l: usize| {
                    let (k, v) = c.slabs(l, 0);
                    [k, v].into_iter().flatten().collect::<Vec<_>>()
                };
                for (l, what) in [(0, "keys and values"), (1, "values only")] {
                    for (a, b) in all(&got, l).iter().zip(all(&want, l)) {
                        assert!(a.equal(&b), "{case}: the cache ({what}) differs");
                    }
                }
            }
        }
    }

    #[test]
    fn masked_softmax_equals_composition() {
        let Some(dev) = gpu() else { return };
        let heads = Heads { num_heads: 4, num_kv_heads: 2, head_dim: 16 };
        for kind in KINDS {
            // Rows held in registers (600; 8192: several pieces a thread), read element by element
            // (37, unaligned; 20000, longer than the registers hold) and both by type (4100).
            for (q_len, k_len) in [(1, 600), (3, 37), (1, 4100), (1, 8192), (2, 20000)] {
                for softcap in [None, Some(5.0)] {
                    let q = Tensor::randn([2, 4, q_len, 16], (Kind::Float, dev)).to_kind(kind);
                    let k = Tensor::randn([2, 2, k_len, 16], (Kind::Float, dev)).to_kind(kind);
                    // Causal at positions k_len - q_len.., plus keys masked at random.
                    let qp =
                        Tensor::arange_start(k_len - q_len, k_len, (Kind::Int64, dev)).view([1, q_len, 1]);
                    let kp = Tensor::arange(k_len, (Kind::Int64, dev)).view([1, 1, k_len]);
                    let holes = Tensor::rand([2, 1, k_len], (Kind::Float, dev)).ge(0.2);
                    let allowed = kp.le_tensor(&qp).logical_and(&holes).logical_or(&kp.eq(0));
                    let zero = Tensor::zeros([1], (kind, dev));
                    let mask = zero.where_self(&allowed, &zero.full_like(f64::NEG_INFINITY)).unsqueeze(1);
                    let got = attention_probs(&heads, &q, &k, &mask, 0.25, softcap);
                    let want = without(|| attention_probs(&heads, &q, &k, &mask, 0.25, softcap));
                    let d = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double))
                        .abs()
                        .max()
                        .double_value(&[]);
                    let tol = match kind {
                        Kind::Float => 1e-6,
                        // One rounding step of the type at probabilities up to 1.
                        Kind::BFloat16 => 2f64.powi(-8),
                        _ => 2f64.powi(-11),
                    };
                    assert!(d <= tol, "{kind:?} q={q_len} k={k_len} softcap={softcap:?}: differs by {d}");
                }
            }
        }
    }

    #[test]
    fn cross_entropy_equals_composition() {
        let Some(dev) = gpu() else { return };
        // A vocabulary of whole 16-byte pieces (the wide path) and one with a ragged end.
        for (n, vocab) in [(37i64, 50_000i64), (5, 50_001)] {
            // Targets spread over the vocabulary, every fifth row without one.
            let t: Vec<i64> = (0..n).map(|i| if i % 5 == 3 { -100 } else { (i * 7919) % vocab }).collect();
            let targets = Tensor::from_slice(&t).to_device(dev);
            for kind in KINDS {
                for softcap in [None, Some(30.0)] {
                    let logits = (Tensor::randn([n, vocab], (Kind::Float, dev)) * 4.0).to_kind(kind);
                    let scale = Tensor::full([] as [i64; 0], 0.25, (Kind::Float, dev));
                    let (loss, grad) =
                        cross_entropy(&logits, &targets, &scale, softcap, true).expect("the kernel applies");
                    // The trainer's composition: f32 logits, soft-capping, cross-entropy, backward.
                    let x = logits.detach().set_requires_grad(true);
                    let mut z = x.to_kind(Kind::Float);
                    if let Some(cap) = softcap {
                        z = (z / cap).tanh() * cap;
                    }
                    let want =
                        z.cross_entropy_loss::<Tensor>(&targets, None, tch::Reduction::None, -100, 0.0)
                            * 0.25;
                    want.sum(Kind::Float).backward();
                    let case = format!("{kind:?} vocab={vocab} softcap={softcap:?}");
                    let d = (&loss - &want).abs().max().double_value(&[]);
                    assert!(
                        d <= 1e-5 * (1.0 + want.abs().max().double_value(&[])),
                        "{case}: loss differs by {d}"
                    );
                    // Gradients: the same f32 arithmetic up to summation order and `expf` (1e-5
                    // relative), then one rounding to the logits' type.
                    let (g, w) = (grad.unwrap().to_kind(Kind::Double), x.grad().to_kind(Kind::Double));
                    let rel = if kind == Kind::Float { 1e-5 } else { 2.0 * ulps_of(kind) };
                    // f16 stores gradients this small (~scale / vocab) as subnormals, 2^-24 apart.
                    let floor = if kind == Kind::Half { 2f64.powi(-24) } else { 1e-9 };
                    let bound = w.abs() * rel + floor;
                    let worst = ((g - &w).abs() - bound).max().double_value(&[]);
                    assert!(worst <= 0.0, "{case}: gradient off by {worst} past its bound");
                    let ignored = x.grad().narrow(0, 3, 1).abs().max().double_value(&[]);
                    assert_eq!(ignored, 0.0, "{case}: a row without a target has no gradient");
                    let (loss_only, none) = cross_entropy(&logits, &targets, &scale, softcap, false).unwrap();
                    assert!(
                        none.is_none() && loss_only.equal(&loss),
                        "{case}: the loss alone is the same loss"
                    );
                }
            }
        }
    }

    /// Values and gradients of `f` (inputs made leaves that require grad) against a random
    /// output gradient: `(output, [input grads])`.
    fn with_grads(
        inputs: &[Tensor],
        dy_seed: &Tensor,
        f: impl Fn(&[Tensor]) -> Tensor,
    ) -> (Tensor, Vec<Tensor>) {
        let leaves: Vec<Tensor> = inputs.iter().map(|t| t.detach().set_requires_grad(true)).collect();
        let y = f(&leaves);
        let dy = dy_seed.to_kind(y.kind());
        (y * &dy).sum(Kind::Float).backward();
        let y = f(&leaves.iter().map(|t| t.detach()).collect::<Vec<_>>());
        (y, leaves.iter().map(Tensor::grad).collect())
    }

    #[test]
    fn swiglu_and_its_gradient_equal_composition() {
        let Some(dev) = gpu() else { return };
        for kind in [Kind::Float, Kind::BFloat16] {
            let gate = (Tensor::randn([3, 7, 300], (Kind::Float, dev)) * 3.0).to_kind(kind);
            let up = Tensor::randn([3, 7, 300], (Kind::Float, dev)).to_kind(kind);
            let dy = Tensor::randn([3, 7, 300], (Kind::Float, dev));
            let (got, got_g) = with_grads(&[gate.shallow_clone(), up.shallow_clone()], &dy, |x| {
                swiglu(&x[0], &x[1]).unwrap()
            });
            let (want, want_g) = with_grads(&[gate, up], &dy, |x| x[0].silu() * &x[1]);
            // Each value at most one rounding step of the type from the composition's (SiLU's
            // `expf` against torch's).
            let tol = if kind == Kind::Float { 4.0 } else { 1.0 };
            assert!(ulps(&got, &want) <= tol, "{kind:?}: values {} ulps", ulps(&got, &want));
            for (what, g, w) in [("gate", &got_g[0], &want_g[0]), ("up", &got_g[1], &want_g[1])] {
                let scale = w.abs().max().double_value(&[]) * ulps_of(kind) * 4.0;
                let d = (g.to_kind(Kind::Double) - w.to_kind(Kind::Double)).abs().max().double_value(&[]);
                assert!(d <= scale, "{kind:?}: d{what} differs by {d} (bound {scale})");
            }
        }
    }

    #[test]
    fn rope_heads_and_its_gradient_equal_composition() {
        let Some(dev) = gpu() else { return };
        let heads = Heads { num_heads: 4, num_kv_heads: 2, head_dim: 16 };
        for kind in [Kind::Float, Kind::BFloat16] {
            for (b, t, per_row) in [(2, 9, true), (3, 5, false)] {
                let positions = if per_row {
                    Tensor::randint(500, [b, t], (Kind::Int64, dev))
                } else {
                    Tensor::arange(t, (Kind::Int64, dev)).unsqueeze(0)
                };
                // Angles in f32, as a model with f32 master weights makes them.
                let rope = RopeAngles::new(&positions, 16, 10_000.0, Kind::Float);
                let x = Tensor::randn([b, t, 4 * 16], (Kind::Float, dev)).to_kind(kind);
                let dy = Tensor::randn([b, 4, t, 16], (Kind::Float, dev));
                let (got, got_g) = with_grads(&[x.shallow_clone()], &dy, |x| {
                    rope_heads(&x[0], 4, &rope.cos, &rope.sin_signed).expect("the kernel applies")
                });
                // The composition: split, rotate (in f32 against the f32 angles), cast back
                // as autocast does before attention.
                let (want, want_g) =
                    with_grads(&[x], &dy, |x| rope.apply(&heads.split(&x[0], 4)).to_kind(kind));
                let case = format!("{kind:?} b={b} t={t}");
                assert_eq!(ulps(&got, &want), 0.0, "{case}: values differ");
                let scale = want_g[0].abs().max().double_value(&[]) * ulps_of(kind) * 2.0;
                let d = (got_g[0].to_kind(Kind::Double) - want_g[0].to_kind(Kind::Double))
                    .abs()
                    .max()
                    .double_value(&[]);
                assert!(d <= scale, "{case}: dx differs by {d} (bound {scale})");
            }
        }
    }

    #[test]
    fn add_rms_norm_and_its_gradients_equal_composition() {
        let Some(dev) = gpu() else { return };
        for kind in [Kind::Float, Kind::BFloat16] {
            for (rows, dim) in [(37, 896), (5, 100), (9, 1536), (300, 4096), (1, 64), (2100, 640)] {
                for plus_one in [false, true] {
                    let h = Tensor::randn([rows, dim], (Kind::Float, dev)) * 2.0;
                    let a = Tensor::randn([rows, dim], (Kind::Float, dev)).to_kind(kind);
                    let w = Tensor::randn([dim], (Kind::Float, dev)) * 0.5 + 1.0;
                    let seed = Tensor::randn([2 * rows * dim], (Kind::Float, dev));
                    // Both outputs flattened into one, so that one seed reaches both gradients.
                    let both = |mid: Tensor, x: Tensor| {
                        Tensor::cat(&[mid.flatten(0, -1), x.to_kind(Kind::Float).flatten(0, -1)], 0)
                    };
                    let inputs = [h.shallow_clone(), a.shallow_clone(), w.shallow_clone()];
                    let (got, got_g) = with_grads(&inputs, &seed, |x| {
                        let (mid, normed) =
                            add_rms_norm(&x[0], &x[1], &x[2], 1e-6, plus_one).expect("the kernel applies");
                        both(mid, normed)
                    });
                    // The composition: the add in f32, libtorch's fused RMSNorm, the cast.
                    let (want, want_g) = with_grads(&inputs, &seed, |x| {
                        let mid = &x[1] + &x[0];
                        let scale = if plus_one { &x[2] + 1.0 } else { x[2].shallow_clone() };
                        let normed = mid.rms_norm([dim], Some(&scale), 1e-6).to_kind(kind);
                        both(mid, normed)
                    });
                    let case = format!("{kind:?} rows={rows} dim={dim} plus_one={plus_one}");
                    let n = rows * dim;
                    assert_eq!(
                        ulps(&got.narrow(0, 0, n), &want.narrow(0, 0, n)),
                        0.0,
                        "{case}: h + a differs"
                    );
                    let rel = |g: &Tensor, w: &Tensor| {
                        let d =
                            (g.to_kind(Kind::Double) - w.to_kind(Kind::Double)).abs().max().double_value(&[]);
                        d / w.abs().max().double_value(&[])
                    };
                    // The norm: the same f32 arithmetic up to the order of the sum of squares.
                    let tol = if kind == Kind::Float { 1e-5 } else { 2.0 * ulps_of(kind) };
                    let d = rel(&got.narrow(0, n, n), &want.narrow(0, n, n));
                    assert!(d <= tol, "{case}: normed differs by {d} (of the largest)");
                    for (i, name) in ["h", "a", "w"].iter().enumerate() {
                        let tol = if got_g[i].kind() == Kind::Float { 1e-5 } else { 2.0 * ulps_of(kind) };
                        let d = rel(&got_g[i], &want_g[i]);
                        assert!(d <= tol, "{case}: gradient of {name} differs by {d} (of the largest)");
                    }
                }
            }
        }
    }

    #[test]
    fn decode_gemv_equals_the_composition() {
        let Some(dev) = gpu() else { return };
        let f64_of = |t: &Tensor| t.to_kind(Kind::Double);
        for kind in KINDS {
            // Decode's shapes (Q|K|V, the down projection, gate|up, a head's long stream of
            // short rows), a row narrower than a warp's loads and a weight with fewer rows than
            // a block has warps.
            for (outs, inp) in
                [(1152, 896), (896, 4864), (9728, 896), (32768, 896), (32768, 1536), (6, 64), (40, 520)]
            {
                let case = format!("{kind:?} {inp} -> {outs}");
                let x = Tensor::randn([1, 1, inp], (Kind::Float, dev)).to_kind(kind);
                let w = (Tensor::randn([outs, inp], (Kind::Float, dev)) * 0.05).to_kind(kind);
                let b = Tensor::randn([outs], (Kind::Float, dev)).to_kind(kind);
                let h = Tensor::randn([1, 1, outs], (Kind::Float, dev)).to_kind(kind);
                let g = (Tensor::rand([inp], (Kind::Float, dev)) + 0.5).to_kind(kind);
                // Against the product in f64 of the inputs the kernel multiplies (`a`, in f64
                // where it is the normed row): f32 sums of `inp` products, then one rounding to
                // the type after the product or after each add (`adds`, in order), at the
                // magnitude of the partial result there.
                let check = |got: &Tensor, a: &Tensor, adds: &[Tensor], what: &str| {
                    let mut want = f64_of(a).linear::<Tensor>(&f64_of(&w), None);
                    let abs_sum = f64_of(a).abs().linear::<Tensor>(&f64_of(&w).abs(), None);
                    let mut bound = abs_sum * 1e-5;
                    if adds.is_empty() {
                        bound += want.abs() * ulps_of(kind);
                    }
                    for t in adds {
                        want += t;
                        bound += want.abs() * ulps_of(kind);
                    }
                    let worst = ((f64_of(got) - &want).abs() - bound).max().double_value(&[]);
                    assert!(worst <= 0.0, "{case} {what}: {worst} past the bound");
                };
                let plain = decode_gemv(&x, None, &w, None, GemvOut::New).expect("the kernel applies");
                check(&plain, &x, &[], "x W^T");
                // Two rows a warp (the heads' shapes: 32,768 rows or more) gives the one-row form's
                // values, which adding to zeros runs.
                let zeros = h.zeros_like();
                let one_row = decode_gemv(&x, None, &w, None, GemvOut::AddInto { h: &zeros })
                    .expect("the kernel applies");
                assert!(
                    one_row.equal(&plain),
                    "{case}: two rows a warp against one: {} ulps",
                    ulps(&one_row, &plain)
                );
                let got = decode_gemv(&x, None, &w, Some(&b), GemvOut::New).expect("the kernel applies");
                check(&got, &x, &[f64_of(&b)], "x W^T + b");
                // With the RMSNorm of x (Gemma's 1 + w too): the normed row in f64.
                for plus_one in [false, true] {
                    let norm = GemvNorm { weight: &g, eps: 1e-6, plus_one };
                    let xf = f64_of(&x);
                    let scale = if plus_one {
                        f64_of(&(g.to_kind(Kind::Float) + 1.0).to_kind(kind))
                    } else {
                        f64_of(&g)
                    };
                    let normed = &xf * (xf.square().mean_dim(-1, true, Kind::Double) + 1e-6).rsqrt() * scale;
                    let got =
                        decode_gemv(&x, Some(norm), &w, Some(&b), GemvOut::New).expect("the kernel applies");
                    check(&got, &normed, &[f64_of(&b)], &format!("norm(x) W^T + b (1 + w: {plus_one})"));
                }
                // In place: the result is `h` itself.
                let sum = h.copy();
                let got = decode_gemv(&x, None, &w, None, GemvOut::AddInto { h: &sum })
                    .expect("the kernel applies");
                assert_eq!(got.data_ptr(), sum.data_ptr(), "{case}: h += x W^T in place");
                check(&sum, &x, &[f64_of(&h)], "h += x W^T");
                // Gated: what the plain product and the gated-activation kernel give, bit for
                // bit (the same sums, then the same roundings), with or without the norm.
                if outs % 2 == 0 {
                    let norm = GemvNorm { weight: &g, eps: 1e-6, plus_one: false };
                    let normed =
                        decode_gemv(&x, Some(norm), &w, None, GemvOut::New).expect("the kernel applies");
                    for gelu_tanh in [false, true] {
                        let gated = GemvOut::Gated { gelu_tanh };
                        let got = decode_gemv(&x, None, &w, None, gated).expect("the kernel applies");
                        let want = gated_act(&plain, gelu_tanh).expect("the kernel applies");
                        assert_eq!(ulps(&got, &want), 0.0, "{case} gated (gelu {gelu_tanh})");
                        let got = decode_gemv(&x, Some(norm), &w, None, gated).expect("the kernel applies");
                        let want = gated_act(&normed, gelu_tanh).expect("the kernel applies");
                        assert_eq!(ulps(&got, &want), 0.0, "{case} normed, gated (gelu {gelu_tanh})");
                    }
                }
            }
            // Two rows and more go to cuBLAS.
            let x = Tensor::randn([2, 64], (kind, dev));
            assert!(decode_gemv(&x, None, &Tensor::randn([8, 64], (kind, dev)), None, GemvOut::New).is_none());
        }
    }

    /// The projection with RoPE and the cache write in its epilogue equals the projection and
    /// [`rope_kv_write`] bit for bit: the same sums, then the same roundings.
    #[test]
    fn decode_gemv_rope_equals_projection_then_rope_kv_write() {
        let Some(dev) = gpu() else { return };
        for kind in KINDS {
            // Qwen2.5-0.5B's Q|K|V; a reuse layer's V; a CLA layer's queries; 128-wide heads
            // with a bias and rows long enough for four warps each; a small odd-headed case.
            let cases = [
                (HeadLayout { q: 14, k: 2, v: 2, dim: 64 }, 896, false),
                (HeadLayout { q: 0, k: 0, v: 2, dim: 64 }, 896, false),
                (HeadLayout { q: 14, k: 0, v: 0, dim: 64 }, 896, false),
                (HeadLayout { q: 8, k: 2, v: 2, dim: 128 }, 4096, true),
                (HeadLayout { q: 3, k: 1, v: 1, dim: 16 }, 40, true),
            ];
            for (layout, inp, with_bias) in cases {
                let HeadLayout { q, k, v, dim } = layout;
                let outs = (q + k + v) * dim;
                let case = format!("{kind:?} {layout:?}");
                let x = Tensor::randn([1, 1, inp], (Kind::Float, dev)).to_kind(kind);
                let w = (Tensor::randn([outs, inp], (Kind::Float, dev)) * 0.05).to_kind(kind);
                let b = with_bias.then(|| Tensor::randn([outs], (Kind::Float, dev)).to_kind(kind));
                let g = (Tensor::rand([inp], (Kind::Float, dev)) + 0.5).to_kind(kind);
                let norm = GemvNorm { weight: &g, eps: 1e-6, plus_one: false };
                let positions = Tensor::from_slice(&[37i64]).to_device(dev).view([1, 1]);
                let rope = RopeAngles::new(&positions, dim as usize, 10_000.0, kind);
                // Caches with two slots, written from the second.
                let new_cache = || Tensor::zeros([2, v.max(1), 48, dim], (kind, dev));
                let (want_k, want_v, got_k, got_v) = (new_cache(), new_cache(), new_cache(), new_cache());
                let slab = |c: &Tensor| (v > 0).then(|| c.narrow(0, 1, 1));
                let keys = |c: &Tensor| (k > 0).then(|| c.narrow(0, 1, 1));
                let y =
                    decode_gemv(&x, Some(norm), &w, b.as_ref(), GemvOut::New).expect("the kernel applies");
                let (cos, sin_signed) = (&rope.cos, &rope.sin_signed);
                let q_want = rope_kv_write(
                    &y,
                    &positions,
                    cos,
                    sin_signed,
                    layout,
                    keys(&want_k).as_ref(),
                    slab(&want_v).as_ref(),
                )
                .expect("the kernel applies");
                let (kk, vv) = (keys(&got_k), slab(&got_v));
                let out = GemvOut::Rope {
                    positions: &positions,
                    cos,
                    sin_signed,
                    layout,
                    keys: kk.as_ref(),
                    values: vv.as_ref(),
                };
                let got = decode_gemv(&x, Some(norm), &w, b.as_ref(), out).expect("the kernel applies");
                assert_eq!(got.size(), [1, 1, outs], "{case}: the whole projection");
                let q_got = got.narrow(-1, 0, q * dim).reshape([1, q, 1, dim]);
                assert!(q_got.equal(&q_want), "{case}: rotated queries");
                let rest = (q + k) * dim;
                assert!(
                    got.narrow(-1, rest, outs - rest).equal(&y.narrow(-1, rest, outs - rest)),
                    "{case}: values"
                );
                assert!(got_k.equal(&want_k), "{case}: key cache");
                assert!(got_v.equal(&want_v), "{case}: value cache");
                if k > 0 {
                    let cached = got_k.narrow(0, 1, 1).select(2, 37).reshape([1, 1, k * dim]);
                    assert!(
                        cached.equal(&got.narrow(-1, q * dim, k * dim)),
                        "{case}: rotated keys in the output"
                    );
                }
            }
        }
    }

    /// A reuse layer up to its output projection in one kernel, against the composition in
    /// f64: its `x` within a rounding of libtorch's norm, its values (in the cache, at each
    /// sequence's position, nothing else written) the f32 sums of `x W^T + b` rounded once, and
    /// its attention `sums + p v` rounded once.
    #[test]
    fn reuse_attention_decode_equals_composition() {
        let Some(dev) = gpu() else { return };
        let f64_of = |t: &Tensor| t.to_kind(Kind::Double);
        for kind in KINDS {
            // Qwen2.5-Coder-0.5B's shapes at batch 32 and 1 (with a bias and Gemma's 1 + w);
            // 1.5B's (128-wide heads, rows longer than a lane's held weights) at a batch that
            // leaves a block part empty, from the second slot; rows whose f32 x takes more than
            // 48 KiB of shared memory a block.
            let cases = [
                (Heads { num_heads: 14, num_kv_heads: 2, head_dim: 64 }, 896, 32, 0, false),
                (Heads { num_heads: 14, num_kv_heads: 2, head_dim: 64 }, 896, 1, 0, true),
                (Heads { num_heads: 12, num_kv_heads: 2, head_dim: 128 }, 1536, 11, 1, true),
                (Heads { num_heads: 8, num_kv_heads: 4, head_dim: 32 }, 2576, 3, 1, false),
            ];
            for (heads, hidden, n, slot0, with_bias) in cases {
                let Heads { num_heads, num_kv_heads: kv, head_dim: d } = heads;
                let (width, kvd) = (num_heads * d, kv * d);
                let plus_one = with_bias;
                let case = format!("{kind:?} heads {num_heads}/{kv}x{d} hidden {hidden} n {n} slot0 {slot0}");
                let h = (Tensor::randn([n, 1, hidden], (Kind::Float, dev)) * 2.0).to_kind(kind);
                let g = (Tensor::randn([hidden], (Kind::Float, dev)) * 0.5 + 1.0).to_kind(kind);
                let w = (Tensor::randn([kvd, hidden], (Kind::Float, dev)) * 0.05).to_kind(kind);
                let b = with_bias.then(|| Tensor::randn([kvd], (Kind::Float, dev)).to_kind(kind));
                let positions = Tensor::randperm(40, (Kind::Int64, dev)).narrow(0, 0, n).view([n, 1]);
                let cache = Tensor::zeros([slot0 + n, kv, 48, d], (kind, dev));
                let values = cache.narrow(0, slot0, n);
                let sums = Tensor::randn([n, num_heads, 1, d], (Kind::Float, dev));
                let current = Tensor::rand([n, num_heads, 1, 1], (Kind::Float, dev));
                let norm = GemvNorm { weight: &g, eps: 1e-6, plus_one };
                let lead = LeadSums { sums: &sums, current: &current };
                let got = reuse_attention_decode(&h, norm, (&w, b.as_ref()), &positions, &values, lead)
                    .expect("the kernel applies");
                assert_eq!(got.size(), [n, 1, width + hidden], "{case}: attention, then x");
                let x = got.narrow(-1, width, hidden);
                let rms = crate::model::nn::RmsNorm::new(g.copy(), 1e-6, plus_one);
                within_norm_rounding(&x, &rms.forward(&h), kind, &case);
                // The values, from the kernel's own x.
                let (xf, wf) = (f64_of(&x), f64_of(&w));
                let mut want_v = xf.linear::<Tensor>(&wf, None);
                if let Some(b) = &b {
                    want_v += f64_of(b);
                }
                let sums_bound =
                    xf.abs().linear::<Tensor>(&wf.abs(), None) * (hidden as f64 * 2f64.powi(-24));
                let bound = want_v.abs() * ulps_of(kind) + sums_bound;
                let v_got =
                    values.gather(2, &positions.view([n, 1, 1, 1]).expand([n, kv, 1, d], false), false);
                let v_got = v_got.reshape([n, 1, kvd]);
                let worst = ((f64_of(&v_got) - &want_v).abs() - bound).max().double_value(&[]);
                assert!(worst <= 0.0, "{case}: values {worst} past the bound");
                let written = Tensor::zeros_like(&cache);
                let index = positions.view([n, 1, 1, 1]).expand([n, kv, 1, d], false);
                let _ = written.narrow(0, slot0, n).scatter_(2, &index, &v_got.reshape([n, kv, 1, d]));
                assert!(cache.equal(&written), "{case}: the cache holds the values at the positions alone");
                // The attention from the values the kernel cached: one fused multiply-add in f32,
                // rounded once.
                let group = num_heads / kv;
                let v_heads =
                    f64_of(&v_got.reshape([n, kv, 1, d])).repeat_interleave_self_int(group, 1, None);
                let (sums, product) = (f64_of(&sums), f64_of(&current) * v_heads);
                let want = (&sums + &product).reshape([n, 1, width]);
                let bound = want.abs() * ulps_of(kind)
                    + (sums.abs() + product.abs()).reshape([n, 1, width]) * 2f64.powi(-23);
                let worst =
                    ((f64_of(&got.narrow(-1, 0, width)) - &want).abs() - bound).max().double_value(&[]);
                assert!(worst <= 0.0, "{case}: the attention, {worst} past the bound");
            }
            // Heads narrower than a block's outputs: not this kernel.
            let h = Tensor::randn([2, 1, 64], (kind, dev));
            let g = Tensor::ones([64], (kind, dev));
            let norm = GemvNorm { weight: &g, eps: 1e-6, plus_one: false };
            let w = Tensor::randn([8, 64], (kind, dev));
            let values = Tensor::zeros([2, 2, 8, 4], (kind, dev));
            let sums = Tensor::zeros([2, 4, 1, 4], (Kind::Float, dev));
            let current = Tensor::zeros([2, 4, 1, 1], (Kind::Float, dev));
            let positions = Tensor::zeros([2, 1], (Kind::Int64, dev));
            let lead = LeadSums { sums: &sums, current: &current };
            assert!(reuse_attention_decode(&h, norm, (&w, None), &positions, &values, lead).is_none());
        }
    }
}
