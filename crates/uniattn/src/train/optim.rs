//! AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW` update) and the cosine
//! schedule with linear warm-up that transformers' `get_cosine_schedule_with_warmup` computes.
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 2e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Elements updated per slice of the flat buffers (bounds the step's temporary memory).
const UPDATE_SLICE: i64 = 1 << 24;

/// Optimizer state for a list of parameters. The parameters are re-homed as views of one flat
/// buffer, and the moments live in flat buffers too, so an update is a handful of kernels over
/// all weights instead of several per tensor (tch exposes no foreach or fused AdamW kernels).
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub params: Vec<(String, Tensor)>,
    flat: Tensor,
    m_flat: Tensor,
    v_flat: Tensor,
    /// Per-parameter views of the moments (f32), for checkpoints.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub step: i64,
}

fn views(flat: &Tensor, params: &[(String, Tensor)]) -> Vec<Tensor> {
    let mut off = 0;
    params
        .iter()
        .map(|(_, p)| {
            let n = p.numel() as i64;
            let v = flat.narrow(0, off, n).view(p.size().as_slice());
            off += n;
            v
        })
        .collect()
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, mut params: Vec<(String, Tensor)>) -> Self {
        let (kind, device) =
            params.first().map_or((Kind::Float, tch::Device::Cpu), |(_, p)| (p.kind(), p.device()));
        let flat = if params.is_empty() {
            Tensor::zeros([0], (kind, device))
        } else {
            Tensor::cat(
                &params.iter().map(|(_, p)| p.detach().to_kind(kind).reshape([-1])).collect::<Vec<_>>(),
                0,
            )
        };
        let homes = views(&flat, &params);
        tch::no_grad(|| {
            for ((_, p), home) in params.iter_mut().zip(&homes) {
                p.set_data(home);
            }
        });
        let total = flat.numel() as i64;
        let m_flat = Tensor::zeros([total], (Kind::Float, device));
        let v_flat = Tensor::zeros([total], (Kind::Float, device));
        let (m, v) = (views(&m_flat, &params), views(&v_flat, &params));
        AdamW { cfg, params, flat, m_flat, v_flat, m, v, step: 0 }
    }

    /// All gradients as one f32 vector (zeros where a parameter got none).
    fn flat_grad(&self) -> Tensor {
        let parts: Vec<Tensor> = self
            .params
            .iter()
            .map(|(_, p)| {
                let g = p.grad();
                if g.defined() {
                    g.reshape([-1]).to_kind(Kind::Float)
                } else {
                    Tensor::zeros([p.numel() as i64], (Kind::Float, p.device()))
                }
            })
            .collect();
        if parts.is_empty() {
            return Tensor::zeros([0], (Kind::Float, self.flat.device()));
        }
        Tensor::cat(&parts, 0)
    }

    /// One update at learning rate `lr`, clipping the gradient norm to `max_norm` (if > 0).
    /// Returns the norm before clipping.
    pub fn step(&mut self, lr: f64, max_norm: f64) -> f64 {
        let c = self.cfg;
        self.step += 1;
        let (bc1, bc2) = (1.0 - c.beta1.powi(self.step as i32), 1.0 - c.beta2.powi(self.step as i32));
        tch::no_grad(|| {
            let mut g = self.flat_grad();
            let norm = g.norm().double_value(&[]);
            if max_norm > 0.0 && norm > max_norm {
                g *= max_norm / (norm + 1e-6);
            }
            // In slices, so that the temporaries stay small next to the weights.
            let total = self.flat.numel() as i64;
            let mut off = 0;
            while off < total {
                let n = (total - off).min(UPDATE_SLICE);
                let (g, mut m, mut v) =
                    (g.narrow(0, off, n), self.m_flat.narrow(0, off, n), self.v_flat.narrow(0, off, n));
                let _ = m.g_mul_scalar_(c.beta1).g_add_(&(&g * (1.0 - c.beta1)));
                let _ = v.g_mul_scalar_(c.beta2).g_add_(&(g.square() * (1.0 - c.beta2)));
                let update = (&m / bc1) / ((&v / bc2).sqrt() + c.eps) * lr;
                let mut p = self.flat.narrow(0, off, n);
                if p.kind() == Kind::Float {
                    if c.weight_decay > 0.0 {
                        let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
                    }
                    let _ = p.g_sub_(&update);
                } else {
                    let pf = p.to_kind(Kind::Float) * (1.0 - lr * c.weight_decay) - update;
                    p.copy_(&pf.to_kind(p.kind()));
                }
                off += n;
            }
            norm
        })
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }
}

/// Learning rate at optimizer step `step` (0-based) of `total`, warm-up over `warmup` steps.
pub fn cosine_lr(base: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    base * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_shape() {
        let lr: Vec<f64> = (0..100).map(|s| cosine_lr(1.0, s, 100, 3)).collect();
        assert!((lr[0] - 1.0 / 3.0).abs() < 1e-12 && lr[2] == 1.0);
        assert!(lr.windows(2).skip(3).all(|w| w[1] <= w[0]));
        assert!(lr[99] < 0.001);
    }

    /// One step against the closed form of Adam's first update: p - lr * sign(g) (bias-corrected).
    #[test]
    fn first_step_is_signed_lr() {
        let p = Tensor::from_slice(&[1.0f32, -2.0, 3.0]).set_requires_grad(true);
        let loss = (&p * Tensor::from_slice(&[0.5f32, -4.0, 0.0])).sum(Kind::Float);
        loss.backward();
        let mut opt = AdamW::new(
            AdamWConfig { lr: 0.1, eps: 1e-12, ..Default::default() },
            vec![("p".into(), p.shallow_clone())],
        );
        opt.step(0.1, 0.0);
        let got = Vec::<f32>::try_from(&p.detach()).unwrap();
        assert!(
            (got[0] - 0.9).abs() < 1e-6 && (got[1] + 1.9).abs() < 1e-6 && (got[2] - 3.0).abs() < 1e-6,
            "{got:?}"
        );
    }
}
