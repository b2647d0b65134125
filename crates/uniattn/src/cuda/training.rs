//! What the trainer needs from libtorch beyond tch's bindings (cuda/train.cpp): gradients that
//! accumulate into a caller's flat buffer (the weight-gradient GEMM adds into it) and a backward
//! pass from a given output gradient. Only where the shim loads (a CUDA machine); callers keep a
//! libtorch composition for everywhere else.
use super::{call, call_for_tensor, shim};
use crate::error::Result;
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use tch::{Kind, Tensor};

fn handle(t: &Tensor) -> *const c_void {
    t.as_ptr() as *const c_void
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
    AUTOCAST_BF16.with(|a| a.set(nested));
    Ok(out)
}

thread_local! {
    /// Set inside [`autocast_bf16`] on this thread.
    static AUTOCAST_BF16: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Trained weights' bf16 copies while their [`Bf16Copies`] lives, by the f32 weight's data
    /// address.
    static TRAINED_COPIES: std::cell::RefCell<HashMap<usize, Tensor>> = std::cell::RefCell::new(HashMap::new());
    /// Frozen weights' bf16 copies while a [`FrozenCasts`] lives, by the weight's data address.
    static FROZEN_CASTS: std::cell::RefCell<Option<HashMap<usize, Tensor>>> =
        const { std::cell::RefCell::new(None) };
}

/// bf16 copies of an optimizer's f32 parameters (one flat buffer beside the f32 one), which
/// the matrix products under autocast read while this lives, refreshed by one cast after each
/// update: autocast would cast every weight again in every step (one kernel per weight).
pub struct Bf16Copies {
    master: Tensor,
    copy: Tensor,
    keys: Vec<usize>,
}

impl Bf16Copies {
    /// Copies of `params`, which are views of `master` at `offsets` (elements).
    pub fn new(master: &Tensor, params: &[(String, Tensor)], offsets: &[i64]) -> Self {
        let copy = tch::no_grad(|| master.to_kind(Kind::BFloat16));
        let keys = params
            .iter()
            .zip(offsets)
            .map(|((_, p), &off)| {
                let key = p.data_ptr() as usize;
                let view = copy.narrow(0, off, p.numel() as i64).view(p.size().as_slice());
                TRAINED_COPIES.with(|c| c.borrow_mut().insert(key, view));
                key
            })
            .collect();
        Bf16Copies { master: master.shallow_clone(), copy, keys }
    }

    /// The copies' flat buffer.
    pub fn flat(&self) -> &Tensor {
        &self.copy
    }

    /// Casts the f32 parameters into their copies again (after an update).
    pub fn refresh(&mut self) {
        tch::no_grad(|| self.copy.copy_(&self.master));
    }
}

impl Drop for Bf16Copies {
    fn drop(&mut self) {
        TRAINED_COPIES.with(|c| {
            let mut c = c.borrow_mut();
            for k in &self.keys {
                c.remove(k);
            }
        });
    }
}

/// While this lives (a training stage whose frozen weights do not change, such as UniAttn's
/// stage 1, where only W_c trains), [`autocast_linear`] casts each frozen f32 weight to bf16
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

/// `x W^T + b` under [`autocast_bf16`] for an f32 weight `w`, or None where autocast should
/// handle it (outside autocast, other types, fused paths off: [`super::kernels::without`],
/// `UNIATTN_FUSED_KERNELS=0`). A trained weight whose gradient lives in the optimizer's flat
/// buffer goes through the shim's TrainedLinear: the product reads its [`Bf16Copies`] copy
/// (or a cast), and the backward adds the weight gradient into the flat f32 buffer inside the
/// GEMM. A frozen weight uses its stage-long bf16 copy while a [`FrozenCasts`] lives.
pub fn autocast_linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Option<Tensor> {
    if !autocast_active() || w.kind() != Kind::Float || !super::kernels::enabled() {
        return None;
    }
    let key = w.data_ptr() as usize;
    if !w.requires_grad() {
        let copy = FROZEN_CASTS.with(|f| {
            let mut f = f.borrow_mut();
            let copies = f.as_mut()?;
            Some(copies.entry(key).or_insert_with(|| w.to_kind(Kind::BFloat16)).shallow_clone())
        })?;
        return Some(x.linear(&copy, bias));
    }
    /// Set after the shim's product failed once (said once): autocast's from then on.
    static BROKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !w.device().is_cuda() || !w.grad().defined() || BROKEN.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let s = shim().ok()?;
    let copy = TRAINED_COPIES.with(|c| c.borrow().get(&key).map(Tensor::shallow_clone));
    let nullable = |t: Option<&Tensor>| t.map_or(std::ptr::null(), handle);
    // SAFETY: live tensor handles (or null where the shim allows it) and a valid out-pointer.
    call_for_tensor("trained linear", |out, e, n| unsafe {
        (s.trained_linear)(handle(x), handle(w), nullable(copy.as_ref()), nullable(bias), out, e, n)
    })
    .map_err(|e| {
        if !BROKEN.swap(true, std::sync::atomic::Ordering::Relaxed) {
            eprintln!("note: {e}; autocast's matrix products from here on");
        }
    })
    .ok()
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// On a GPU (skipped elsewhere): a product through [`autocast_linear`] (the shim's
    /// TrainedLinear, with and without the optimizer's bf16 copy, with and without a bias)
    /// against autocast's `linear`, over two backward passes into a flat gradient buffer, for a
    /// weight at an aligned and at a ragged offset: the output and the input's gradient equal
    /// autocast's; the weight's and the bias's gradients are at least as close to the exact ones
    /// (f64 from the same bf16 operands) as autocast's, which round them to bf16 first.
    #[test]
    fn trained_linear_matches_autocast() {
        let Some(dev) = crate::testing::cuda() else { return };
        let x0 = Tensor::randn([3, 4, 40], (Kind::Float, dev));
        let r = Tensor::randn([3, 4, 64], (Kind::Float, dev));
        let weights = Tensor::randn([64 * 40 + 3 + 7 * 40], (Kind::Float, dev));
        let bias0 = Tensor::randn([64], (Kind::Float, dev));
        for (with_bias, with_copy) in [(false, false), (true, false), (false, true), (true, true)] {
            let run = |fused: bool| {
                let flat = weights.copy();
                let gflat = flat.zeros_like();
                let mut out = vec![];
                for (off, rows) in [(0, 64), (64 * 40 + 3, 7)] {
                    let w = flat.narrow(0, off, rows * 40).view([rows, 40]).detach().set_requires_grad(true);
                    set_grad(&w, &gflat.narrow(0, off, rows * 40).view([rows, 40])).unwrap();
                    let b = with_bias.then(|| bias0.narrow(0, 0, rows).copy().set_requires_grad(true));
                    let params = [("w".to_string(), w.shallow_clone())];
                    let _copies = (fused && with_copy).then(|| Bf16Copies::new(&flat, &params, &[off]));
                    let x = x0.copy().set_requires_grad(true);
                    let mut ys = vec![];
                    for _ in 0..2 {
                        let y = autocast_bf16(true, || {
                            let fast = if fused { autocast_linear(&x, &w, b.as_ref()) } else { None };
                            assert_eq!(fast.is_some(), fused, "the fused product runs where asked for");
                            fast.unwrap_or_else(|| x.linear(&w, b.as_ref()))
                        })
                        .unwrap();
                        (y.to_kind(Kind::Float) * r.narrow(2, 0, rows)).sum(Kind::Float).backward();
                        ys.push(y);
                    }
                    out.push((ys, x.grad(), w.grad().copy(), b.map(|b| b.grad())));
                }
                out
            };
            let (fused, plain) = (run(true), run(false));
            for ((ys, dx, dw, db), (ys2, dx2, dw2, db2)) in fused.iter().zip(&plain) {
                for (y, y2) in ys.iter().zip(ys2) {
                    assert!(y.equal(y2), "the output differs from autocast's");
                }
                let d = (dx - dx2).abs().max().double_value(&[]);
                assert!(d <= 1e-2 * dx2.abs().max().double_value(&[]), "input gradients differ by {d}");
                // The exact gradient from the bf16 operands: 2 x sum over rows of dy^T x.
                let rows = dw.size()[0];
                let dy =
                    r.narrow(2, 0, rows).to_kind(Kind::BFloat16).to_kind(Kind::Double).reshape([-1, rows]);
                let xb = x0.to_kind(Kind::BFloat16).to_kind(Kind::Double).reshape([-1, 40]);
                let exact = dy.tr().mm(&xb) * 2.0;
                let err = |g: &Tensor| (g.to_kind(Kind::Double) - &exact).abs().max().double_value(&[]);
                let scale = exact.abs().max().double_value(&[]);
                assert!(
                    err(dw) <= err(dw2) + 1e-6 * scale,
                    "weight gradient: {} vs autocast's {}",
                    err(dw),
                    err(dw2)
                );
                assert!(err(dw) <= 1e-5 * scale, "weight gradient off by {} (scale {scale})", err(dw));
                if let (Some(db), Some(db2)) = (db, db2) {
                    let exact = dy.sum_dim_intlist(0, false, Kind::Double) * 2.0;
                    let e = |g: &Tensor| (g.to_kind(Kind::Double) - &exact).abs().max().double_value(&[]);
                    assert!(e(db) <= e(db2) + 1e-6, "bias gradient: {} vs autocast's {}", e(db), e(db2));
                }
            }
        }
    }
}
