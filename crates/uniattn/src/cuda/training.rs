//! What the trainer needs from libtorch beyond tch's bindings (cuda/train.cpp): PyTorch's
//! one-launch AdamW, gradients that accumulate into a caller's flat buffer, a backward pass
//! from a given output gradient, and libtorch's profiler. Only where the shim loads (a CUDA
//! machine); callers keep a libtorch composition for everywhere else.
use super::{call, call_for_tensor, shim};
use crate::error::Result;
use std::ffi::{c_int, c_void, CString};
use std::path::Path;
use tch::Tensor;

fn handle(t: &Tensor) -> *const c_void {
    t.as_ptr() as *const c_void
}

/// The hyper-parameters of one AdamW update.
#[derive(Debug, Clone, Copy)]
pub struct AdamwStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
}

/// `torch.optim.AdamW(fused=True)`'s update of `param` (one kernel over the whole buffer).
/// `step` is a 0-d f32 device tensor holding the update's number (1 first); the gradient is
/// divided by `grad_scale` (a 0-d f32 device tensor) when given. All tensors share a device
/// and a floating type.
pub fn fused_adamw(
    param: &Tensor,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    step: &Tensor,
    hp: AdamwStep,
    grad_scale: Option<&Tensor>,
) -> Result<()> {
    let s = shim()?;
    let scale = grad_scale.map_or(std::ptr::null(), handle);
    // SAFETY: each handle is a live tch tensor (an `at::Tensor*`) for the whole call.
    call("fused AdamW", |e, n| unsafe {
        (s.fused_adamw)(
            handle(param),
            handle(grad),
            handle(exp_avg),
            handle(exp_avg_sq),
            handle(step),
            hp.lr,
            hp.beta1,
            hp.beta2,
            hp.weight_decay,
            hp.eps,
            scale,
            e,
            n,
        )
    })
}

/// Makes `grad` (same shape, type and device) the gradient of `param`: backward passes then
/// add into it in place, so a view of one flat buffer per parameter gathers every gradient
/// in that buffer.
pub fn set_grad(param: &Tensor, grad: &Tensor) -> Result<()> {
    let s = shim()?;
    // SAFETY: both handles are live tch tensors for the call; the shim copies the handle.
    call("set gradient", |e, n| unsafe { (s.set_grad)(handle(param), handle(grad), e, n) })
}

/// `output.backward(grad)`: backpropagates from `output` with the given gradient.
pub fn backward(output: &Tensor, grad: &Tensor) -> Result<()> {
    let s = shim()?;
    // SAFETY: both handles are live tch tensors for the call.
    call("backward", |e, n| unsafe { (s.backward)(handle(output), handle(grad), e, n) })
}

/// Runs `f` under bf16 autocast on CUDA when `on` (matrix products in bf16, reductions and
/// weights in f32). tch's `autocast` turns on libtorch's CUDA default, which is f16; this sets
/// the type. Needs the shim (a CUDA machine).
pub fn autocast_bf16<T>(on: bool, f: impl FnOnce() -> T) -> Result<T> {
    if !on {
        return Ok(f());
    }
    let s = shim()?;
    let (mut enabled, mut dtype) = (0, 0);
    // SAFETY: valid out-pointers and error buffer.
    call("autocast", |e, n| unsafe { (s.autocast_enter)(&mut enabled, &mut dtype, e, n) })?;
    /// Leaves the region however `f` ends (a panic included).
    struct Leave(&'static super::Shim, c_int, c_int);
    impl Drop for Leave {
        fn drop(&mut self) {
            // SAFETY: restores the state ua_autocast_enter wrote out; valid error buffer.
            let _ = call("autocast", |e, n| unsafe { (self.0.autocast_leave)(self.1, self.2, e, n) });
        }
    }
    let _leave = Leave(s, enabled, dtype);
    let nested = AUTOCAST_BF16.with(|a| a.replace(true));
    let out = f();
    if !nested {
        AUTOCAST_BF16.with(|a| a.set(false));
        // The casts live as long as the outermost region, as autocast's own cache does.
        WEIGHT_CASTS.with(|c| c.borrow_mut().clear());
    }
    Ok(out)
}

thread_local! {
    /// Set inside [`autocast_bf16`] on this thread.
    static AUTOCAST_BF16: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// [`matmul_weight`]'s casts in the current autocast region, by the weight's data address.
    static WEIGHT_CASTS: std::cell::RefCell<Vec<(usize, Tensor)>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Frozen weights' bf16 copies while a [`FrozenCasts`] lives, by the weight's data address.
    static FROZEN_CASTS: std::cell::RefCell<Option<std::collections::HashMap<usize, Tensor>>> =
        const { std::cell::RefCell::new(None) };
}

/// While this lives (a training stage whose frozen weights do not change, such as UniAttn's
/// stage 1, where only W_c trains), [`matmul_weight`] casts each frozen f32 weight to bf16
/// once and reuses the copy in every step, where autocast would cast every weight again in
/// every step. Dropping it frees the copies.
pub struct FrozenCasts(());

impl FrozenCasts {
    pub fn keep() -> Self {
        FROZEN_CASTS.with(|f| *f.borrow_mut() = Some(Default::default()));
        FrozenCasts(())
    }
}

impl Drop for FrozenCasts {
    fn drop(&mut self) {
        FROZEN_CASTS.with(|f| *f.borrow_mut() = None);
    }
}

/// The weight a matrix product uses: under [`autocast_bf16`], a trained f32 weight whose
/// gradient lives in the optimizer's flat buffer is cast to bf16 once per autocast region by
/// the shim's WeightCast, whose backward pass adds the bf16 gradient into that buffer in one
/// kernel (autocast would cast the gradient to f32 and then accumulate it: two kernels over
/// every weight). None for anything else: the weight is used as it is, for autocast to handle
/// (also with the fused paths off: [`super::kernels::without`], `UNIATTN_FUSED_KERNELS=0`).
/// A frozen f32 weight gets its stage-long bf16 copy while a [`FrozenCasts`] lives.
pub fn matmul_weight(w: &Tensor) -> Option<Tensor> {
    if !autocast_active() || w.kind() != tch::Kind::Float || !super::kernels::enabled() {
        return None;
    }
    let key = w.data_ptr() as usize;
    if !w.requires_grad() {
        return FROZEN_CASTS.with(|f| {
            let mut f = f.borrow_mut();
            let copies = f.as_mut()?;
            Some(copies.entry(key).or_insert_with(|| w.to_kind(tch::Kind::BFloat16)).shallow_clone())
        });
    }
    if !w.grad().defined() {
        return None;
    }
    let cached =
        WEIGHT_CASTS.with(|c| c.borrow().iter().find(|(k, _)| *k == key).map(|(_, t)| t.shallow_clone()));
    if cached.is_some() {
        return cached;
    }
    let (Ok(s), tch::Device::Cuda(device)) = (shim(), w.device()) else { return None };
    let accumulate = super::kernels::accumulate_kernel(device).unwrap_or(0) as i64;
    // SAFETY: a live tensor handle, a kernel handle (or 0) and a valid out-pointer.
    let t = call_for_tensor("weight cast", |out, e, n| unsafe {
        (s.weight_cast)(handle(w), accumulate, out, e, n)
    })
    .ok()?;
    WEIGHT_CASTS.with(|c| c.borrow_mut().push((key, t.shallow_clone())));
    Some(t)
}

/// Whether this thread runs inside [`autocast_bf16`].
pub fn autocast_active() -> bool {
    AUTOCAST_BF16.with(std::cell::Cell::get)
}

/// The most GPU memory libtorch's allocator has handed out on `device` so far, in bytes
/// (`torch.cuda.max_memory_allocated`); None without the shim.
pub fn peak_memory_allocated(device: usize) -> Option<i64> {
    let s = shim().ok()?;
    let (mut allocated, mut reserved) = (0i64, 0i64);
    // SAFETY: valid out-pointers and error buffer.
    call("memory statistics", |e, n| unsafe {
        (s.memory_peaks)(device as std::ffi::c_int, &mut allocated, &mut reserved, e, n)
    })
    .ok()?;
    Some(allocated)
}

/// libtorch's profiler (CPU operators and CUDA kernels) while it lives; [`Profiler::save`]
/// writes what it recorded as a Chrome trace (open it in Perfetto or chrome://tracing).
pub struct Profiler {
    running: bool,
}

impl Profiler {
    pub fn start() -> Result<Self> {
        let s = shim()?;
        // SAFETY: only the error buffer is passed.
        call("profiler start", |e, n| unsafe { (s.profiler_start)(e, n) })?;
        Ok(Profiler { running: true })
    }

    pub fn save(mut self, path: &Path) -> Result<()> {
        self.running = false;
        let s = shim()?;
        let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            crate::error::Error::invalid(format!("{}: a path with a NUL byte", path.display()))
        })?;
        // SAFETY: a valid C string and error buffer.
        call("profiler stop", |e, n| unsafe { (s.profiler_stop)(c.as_ptr(), e, n) })
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        if let (true, Ok(s)) = (self.running, shim()) {
            // SAFETY: a null path (drop the recording) and a valid error buffer.
            let _ = call("profiler stop", |e, n| unsafe { (s.profiler_stop)(std::ptr::null(), e, n) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// On a GPU (skipped elsewhere): a weight's gradient through [`matmul_weight`] (added in one
    /// kernel into a flat buffer) equals autocast's (cast to f32, then accumulated), bit for bit,
    /// over two backward passes, for a weight of whole 16-byte pieces and a ragged one at an
    /// unaligned offset.
    #[test]
    fn weight_cast_gradients_equal_autocast() {
        let Some(dev) = crate::testing::cuda() else { return };
        let x = Tensor::randn([6, 40], (Kind::Float, dev));
        // Two weights in one flat buffer: [64, 40], then [7, 40] at an offset of 2,563 floats.
        let weights = Tensor::randn([64 * 40 + 3 + 7 * 40], (Kind::Float, dev));
        let grads = |fused: bool| {
            let flat = weights.copy();
            let gflat = flat.zeros_like();
            let mut out = vec![];
            for (off, rows) in [(0, 64), (64 * 40 + 3, 7)] {
                let w = flat.narrow(0, off, rows * 40).view([rows, 40]).detach().set_requires_grad(true);
                set_grad(&w, &gflat.narrow(0, off, rows * 40).view([rows, 40])).unwrap();
                for _ in 0..2 {
                    let y = autocast_bf16(true, || {
                        let cast = if fused { matmul_weight(&w) } else { None };
                        x.linear::<Tensor>(cast.as_ref().unwrap_or(&w), None)
                    })
                    .unwrap();
                    (y.to_kind(Kind::Float) * 0.37).sum(Kind::Float).backward();
                }
                out.push(w.grad().copy());
            }
            out
        };
        let (fused, plain) = (grads(true), grads(false));
        for (a, b) in fused.iter().zip(&plain) {
            assert!(a.equal(b), "the weight's gradient differs from autocast's");
        }
    }
}
