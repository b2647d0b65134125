//! The two building blocks every family shares.
use crate::cuda::kernels::{self, GemvNorm, GemvOut};
use std::cell::OnceCell;
use std::sync::OnceLock;
use tch::{Kind, Tensor};

/// `y = x W^T + b`. Weights are `[out, in]` as in PyTorch.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        crate::cuda::training::autocast_linear(x, &self.weight, self.bias.as_ref())
            .or_else(|| kernels::decode_gemv(x, None, &self.weight, self.bias.as_ref(), GemvOut::New))
            .unwrap_or_else(|| x.linear(&self.weight, self.bias.as_ref()))
    }

    pub fn out_features(&self) -> i64 {
        self.weight.size()[0]
    }
}

/// The precision for reductions and softmax: f32 as transformers uses, or f64 for f64 models
/// (gradient checks).
pub fn accumulate_kind(kind: Kind) -> Kind {
    if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// A normed input of a block's projections under bf16 autocast, cast once here: autocast would
/// cast the f32 tensor again for every projection it feeds (three times for Q/K/V, twice for
/// gate/up) and cast each gradient back. The values are the same casts.
pub fn autocast_input(x: Tensor) -> Tensor {
    if x.kind() == Kind::Float && crate::cuda::training::autocast_active() {
        x.to_kind(Kind::BFloat16)
    } else {
        x
    }
}

/// RMSNorm computed in f32 as Hugging Face does; Gemma scales by `1 + w`.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
    pub plus_one: bool,
    /// Gemma's `1 + w` in the weight's type, kept by [`RmsNorm::freeze`] where the weight no
    /// longer changes (the engine's): libtorch's fused kernel takes it as its scale, which cost
    /// three small kernels a call when computed each time.
    frozen_scale: Option<Tensor>,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64, plus_one: bool) -> Self {
        RmsNorm { weight, eps, plus_one, frozen_scale: None }
    }

    /// Keeps Gemma's `1 + w` from now on: for weights that no longer change (training updates
    /// them in place, so it never calls this).
    pub fn freeze(&mut self) {
        if self.plus_one {
            self.frozen_scale = Some(self.one_plus_weight());
        }
    }

    /// `1 + w` computed in f32 and stored in the weight's type.
    fn one_plus_weight(&self) -> Tensor {
        (self.weight.to_kind(Kind::Float) + 1.0).to_kind(self.weight.kind())
    }

    /// `(h + a, norm(h + a))` on the residual stream `h`: the sum, and its norm in the type the
    /// projections take ([`autocast_input`]). On CUDA one fused kernel forward and one backward
    /// (f32 residual, `a` already in that type); elsewhere the add, [`RmsNorm::forward`] and
    /// the cast.
    pub fn add_then_norm(&self, h: &Tensor, a: &Tensor) -> (Tensor, Tensor) {
        let wanted = if crate::cuda::training::autocast_active() { Kind::BFloat16 } else { Kind::Float };
        if a.kind() == wanted {
            if let Some(r) = crate::cuda::kernels::add_rms_norm(h, a, &self.weight, self.eps, self.plus_one) {
                return r;
            }
        }
        let mid = a + h;
        let x = autocast_input(self.forward(&mid));
        (mid, x)
    }

    /// `norm(h)`: in a decode step (one row a sequence, `[n, 1, hidden]`, no gradient) by the
    /// decode norm kernel, launched behind the kernel before it, where it applies; else as
    /// [`Self::forward`] computes it.
    pub fn forward_decode(&self, h: &Tensor) -> Tensor {
        let decode = h.dim() == 3 && h.size()[1] == 1 && !h.requires_grad();
        decode
            .then(|| crate::cuda::kernels::rms_norm_decode(h, &self.weight, self.eps, self.plus_one))
            .flatten()
            .unwrap_or_else(|| self.forward(h))
    }

    /// This norm as the decode matrix-vector kernel applies it.
    pub fn for_gemv(&self) -> GemvNorm<'_> {
        GemvNorm { weight: &self.weight, eps: self.eps, plus_one: self.plus_one }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        if x.device().is_cuda() && kind != Kind::Double && self.weight.kind() == kind {
            // libtorch's fused kernel (f32 inside): one launch instead of eight. It scales in
            // f32 before the cast back, where Llama casts first; the two differ by bf16 rounding.
            let dim = [*x.size().last().expect("a normed tensor has a last dim")];
            return if self.plus_one {
                let scale =
                    self.frozen_scale.as_ref().map_or_else(|| self.one_plus_weight(), Tensor::shallow_clone);
                x.rms_norm(dim, Some(&scale), self.eps)
            } else {
                x.rms_norm(dim, Some(&self.weight), self.eps)
            };
        }
        let acc = accumulate_kind(kind);
        let xf = x.to_kind(acc);
        let var = xf.square().mean_dim(-1, true, acc);
        let normed = xf * (var + self.eps).rsqrt();
        if self.plus_one {
            // Gemma multiplies in f32 before casting back.
            (normed * (self.weight.to_kind(acc) + 1.0)).to_kind(kind)
        } else {
            // Llama casts back first, then scales.
            normed.to_kind(kind) * &self.weight
        }
    }
}

/// A block's input: the residual stream `h` and the RMSNorm in front of the block's first
/// projection. At one row (a decode step at batch 1) the matrix-vector kernel applies the norm
/// as it reads `h`, so no norm kernel runs; otherwise the normed tensor is computed once, on
/// first use.
pub struct NormedInput<'a> {
    h: Tensor,
    norm: &'a RmsNorm,
    normed: OnceCell<Tensor>,
}

impl<'a> NormedInput<'a> {
    pub fn new(h: &Tensor, norm: &'a RmsNorm) -> Self {
        NormedInput { h: h.shallow_clone(), norm, normed: OnceCell::new() }
    }

    /// The residual stream and its norm, for a kernel that norms `h` as it reads it.
    pub fn input(&self) -> (&Tensor, GemvNorm<'_>) {
        (&self.h, self.norm.for_gemv())
    }

    /// `norm(h)`, as [`RmsNorm::forward_decode`] computes it.
    pub fn normed(&self) -> &Tensor {
        self.normed.get_or_init(|| self.norm.forward_decode(&self.h))
    }

    /// The product of `norm(h)` with `weight` through [`kernels::decode_gemv`], `out` saying
    /// where it goes, the norm applied inside that kernel (`UNIATTN_GEMV_NORM=0`: computed
    /// first, as [`Self::normed`]); `None` where that kernel does not apply.
    pub fn gemv(&self, weight: &Tensor, bias: Option<&Tensor>, out: GemvOut) -> Option<Tensor> {
        static APART: OnceLock<bool> = OnceLock::new();
        if *APART.get_or_init(|| std::env::var("UNIATTN_GEMV_NORM").is_ok_and(|v| v == "0")) {
            return kernels::decode_gemv(self.normed(), None, weight, bias, out);
        }
        kernels::decode_gemv(&self.h, Some(self.norm.for_gemv()), weight, bias, out)
    }

    /// `lin(norm(h))`.
    pub fn linear(&self, lin: &Linear) -> Tensor {
        self.gemv(&lin.weight, lin.bias.as_ref(), GemvOut::New).unwrap_or_else(|| lin.forward(self.normed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Freezing keeps Gemma's `1 + w` and changes no value: on CUDA, where libtorch's fused
    /// kernel takes the kept scale (the engine's GPU tests run it too), and elsewhere.
    #[test]
    fn a_frozen_norm_gives_the_same_values() {
        let device = tch::Device::cuda_if_available();
        for kind in [Kind::Float, Kind::BFloat16] {
            for plus_one in [false, true] {
                let weight = (Tensor::randn([64], (Kind::Float, device)) * 0.3).to_kind(kind);
                let x = Tensor::randn([3, 64], (Kind::Float, device)).to_kind(kind);
                let mut norm = RmsNorm::new(weight, 1e-6, plus_one);
                let before = norm.forward(&x);
                norm.freeze();
                assert_eq!(norm.frozen_scale.is_some(), plus_one, "{kind:?}: only Gemma's scale is kept");
                assert!(before.equal(&norm.forward(&x)), "{kind:?} plus_one {plus_one}: values changed");
            }
        }
    }
}
