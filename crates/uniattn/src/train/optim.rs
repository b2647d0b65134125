//! AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW` update) and the cosine
//! schedule with linear warm-up that transformers' `get_cosine_schedule_with_warmup` computes.
use crate::cuda::training::Bf16Copies;
use crate::distributed::zero::{Collective, MomentShard, Sharding};
use crate::error::{Error, Result};
use crate::model::names;
use std::ops::Range;
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
/// buffer, and the moments live in flat buffers too. On a CUDA machine the gradients are views
/// of one flat buffer as well (backward passes add into it in place) and the update is one
/// kernel over all weights ([`crate::cuda::kernels::adamw`]: PyTorch's fused AdamW arithmetic,
/// clipping included, writing the bf16 copies too). Elsewhere (CPU, f64, bf16 weights, no
/// kernels) the update is the libtorch composition below, a handful of kernels over the flat
/// buffers. Over several ranks ([`AdamW::step`]'s `group`) the gradient is summed over them
/// first; with ZeRO-1 ([`AdamW::sharded`]) each rank keeps the moments of its chunk only.
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub params: Vec<(String, Tensor)>,
    flat: Tensor,
    m_flat: Tensor,
    v_flat: Tensor,
    /// Per-parameter views of the moments (f32), for checkpoints (empty under ZeRO-1, whose
    /// moments are one chunk: [`AdamW::moment_shard`]).
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub step: i64,
    /// The gradients' flat buffer, where the parameters' gradients are views of it.
    flat_grad: Option<Tensor>,
    /// Whether updates may run the fused kernel (f32 parameters with a flat gradient buffer).
    fused: bool,
    /// bf16 copies of the parameters for bf16 autocast, refreshed after each update.
    bf16: Option<Bf16Copies>,
    /// ZeRO-1: how the flat buffers split over the ranks, and this rank.
    shard: Option<(Sharding, usize)>,
}

/// The parts of `0..total` outside the (disjoint) `summed` ranges, in order.
fn unsummed(total: i64, summed: &[Range<i64>]) -> Vec<Range<i64>> {
    let mut ranges: Vec<&Range<i64>> = summed.iter().collect();
    ranges.sort_by_key(|r| r.start);
    let mut out = Vec::new();
    let mut at = 0;
    for r in ranges {
        if r.start > at {
            out.push(at..r.start);
        }
        at = at.max(r.end);
    }
    if at < total {
        out.push(at..total);
    }
    out
}

/// Where each parameter starts in the flat buffers (elements).
fn offsets(params: &[(String, Tensor)]) -> Vec<i64> {
    params
        .iter()
        .scan(0, |off, (_, p)| {
            let start = *off;
            *off += p.numel() as i64;
            Some(start)
        })
        .collect()
}

fn views(flat: &Tensor, params: &[(String, Tensor)]) -> Vec<Tensor> {
    params
        .iter()
        .zip(offsets(params))
        .map(|((_, p), off)| flat.narrow(0, off, p.numel() as i64).view(p.size().as_slice()))
        .collect()
}

/// A flat gradient buffer whose views become the parameters' gradients, where the CUDA shim
/// can set them (None elsewhere: gradients stay per parameter).
fn bind_flat_grad(flat: &Tensor, params: &[(String, Tensor)]) -> Option<Tensor> {
    if !flat.device().is_cuda() || params.is_empty() || !crate::cuda::available() {
        return None;
    }
    let grad = flat.zeros_like();
    for ((_, p), g) in params.iter().zip(views(&grad, params)) {
        if let Err(e) = crate::cuda::training::set_grad(p, &g) {
            eprintln!("note: per-parameter gradients ({e})");
            for (_, p) in params {
                // Undo the bindings made so far: libtorch allocates gradients again.
                let _ = crate::cuda::training::set_grad(p, &Tensor::new());
            }
            return None;
        }
    }
    Some(grad)
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, params: Vec<(String, Tensor)>) -> Self {
        Self::build(cfg, params, None)
    }

    /// ZeRO-1 on rank `rank` of `ranks`: the flat buffers are padded to `ranks` chunks
    /// ([`Sharding`]) and the moments hold chunk `rank` only; [`AdamW::step`] then needs the
    /// ranks' [`Collective`].
    pub fn sharded(cfg: AdamWConfig, params: Vec<(String, Tensor)>, rank: usize, ranks: usize) -> Self {
        Self::build(cfg, params, Some((rank, ranks)))
    }

    /// `ranks`: this rank and how many there are, under ZeRO-1.
    fn build(cfg: AdamWConfig, mut params: Vec<(String, Tensor)>, ranks: Option<(usize, usize)>) -> Self {
        let (kind, device) =
            params.first().map_or((Kind::Float, tch::Device::Cpu), |(_, p)| (p.kind(), p.device()));
        let total: i64 = params.iter().map(|(_, p)| p.numel() as i64).sum();
        let shard = ranks.map(|(rank, ranks)| (Sharding::new(total, ranks), rank));
        let padding = shard.map_or(0, |(s, _)| s.padded() - total);
        let mut parts: Vec<Tensor> =
            params.iter().map(|(_, p)| p.detach().to_kind(kind).reshape([-1])).collect();
        parts.push(Tensor::zeros([padding], (kind, device)));
        let flat = Tensor::cat(&parts, 0);
        let homes = views(&flat, &params);
        tch::no_grad(|| {
            for ((_, p), home) in params.iter_mut().zip(&homes) {
                p.set_data(home);
            }
        });
        let moments = shard.map_or(total, |(s, _)| s.chunk());
        let m_flat = Tensor::zeros([moments], (Kind::Float, device));
        let v_flat = Tensor::zeros([moments], (Kind::Float, device));
        let (m, v) = match shard {
            None => (views(&m_flat, &params), views(&v_flat, &params)),
            Some(_) => (Vec::new(), Vec::new()),
        };
        let flat_grad = bind_flat_grad(&flat, &params);
        let fused = flat_grad.is_some() && kind == Kind::Float && crate::cuda::kernels::enabled();
        AdamW { cfg, params, flat, m_flat, v_flat, m, v, step: 0, flat_grad, fused, bf16: None, shard }
    }

    /// Under ZeRO-1, this rank's chunk of the moments (for a checkpoint).
    pub fn moment_shard(&self) -> Option<MomentShard> {
        let (s, rank) = self.shard?;
        let owned = s.owned(rank);
        let len = owned.end - owned.start;
        let (m, v) = (self.m_flat.narrow(0, 0, len), self.v_flat.narrow(0, 0, len));
        Some(MomentShard { rank, owned, m, v })
    }

    /// Bytes of optimizer state (the two moments) this process holds.
    pub fn state_bytes(&self) -> usize {
        2 * self.m_flat.numel() * 4
    }

    /// Sets the moments from full per-parameter moments (in `params` order, each shaped like
    /// its parameter); under ZeRO-1 this rank takes its chunk of them.
    pub fn set_moments(&mut self, m: &[Tensor], v: &[Tensor], step: i64) {
        let _guard = tch::no_grad_guard();
        match self.shard {
            None => {
                for i in 0..self.params.len() {
                    self.m[i].copy_(&m[i]);
                    self.v[i].copy_(&v[i]);
                }
            }
            Some((s, rank)) => {
                let owned = s.owned(rank);
                let len = owned.end - owned.start;
                let flat = |parts: &[Tensor]| {
                    let all: Vec<Tensor> =
                        parts.iter().map(|t| t.reshape([-1]).to_kind(Kind::Float)).collect();
                    Tensor::cat(&all, 0).narrow(0, owned.start, len).to_device(self.m_flat.device())
                };
                self.m_flat.narrow(0, 0, len).copy_(&flat(m));
                self.v_flat.narrow(0, 0, len).copy_(&flat(v));
            }
        }
        self.step = step;
    }

    /// Whether updates run the fused AdamW kernel (where it loads).
    pub fn is_fused(&self) -> bool {
        self.fused
    }

    /// For training under bf16 autocast: keeps a bf16 copy of the parameters, refreshed after
    /// each update, for the matrix products to read (see [`Bf16Copies`]). Only with the fused
    /// update (a CUDA machine, f32 parameters); a no-op elsewhere.
    pub fn keep_bf16_copies(&mut self) {
        if self.is_fused() && self.bf16.is_none() {
            self.bf16 = Some(Bf16Copies::new(&self.flat, &self.params, &offsets(&self.params)));
        }
    }

    /// The flat gradient buffer that the parameters' gradients are views of (CUDA), if any.
    pub fn flat_grad_buffer(&self) -> Option<&Tensor> {
        self.flat_grad.as_ref()
    }

    /// Each of the `layers` decoder layers' elements of the flat buffers: None where nothing of
    /// the layer trains (or, never in practice, its parameters are not next to each other).
    pub fn layer_ranges(&self, layers: usize) -> Vec<Option<Range<i64>>> {
        let mut spans: Vec<Option<(Range<i64>, bool)>> = vec![None; layers];
        for ((name, p), start) in self.params.iter().zip(offsets(&self.params)) {
            let Some(span) = names::layer_of(name).and_then(|l| spans.get_mut(l)) else { continue };
            let end = start + p.numel() as i64;
            *span = Some(match span.take() {
                None => (start..end, true),
                Some((r, next_to)) => (r.start..end, next_to && r.end == start),
            });
        }
        spans.into_iter().map(|s| s.filter(|(_, next_to)| *next_to).map(|(r, _)| r)).collect()
    }

    /// All gradients as one f32 vector (zeros where a parameter got none): the flat buffer
    /// itself where there is one.
    fn flat_grad(&self) -> Tensor {
        if let Some(g) = &self.flat_grad {
            return g.shallow_clone();
        }
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
    /// With `group` (data parallelism over its ranks) the gradient is first summed over them:
    /// all-reduced, or under ZeRO-1 reduce-scattered, this rank's chunk updated and the weights
    /// all-gathered. `summed`: ranges of the flat gradient already summed over the ranks during
    /// the backward pass ([`crate::cuda::layer_reduce`]); the rest is all-reduced here (then
    /// ZeRO-1 takes its chunk of the whole sum). Returns the norm before clipping.
    pub fn step(
        &mut self,
        lr: f64,
        max_norm: f64,
        group: Option<&dyn Collective>,
        summed: &[Range<i64>],
    ) -> Result<f64> {
        self.step += 1;
        let _guard = tch::no_grad_guard();
        let g = self.flat_grad();
        if let (Some(group), false) = (group, summed.is_empty()) {
            for r in unsummed(g.numel() as i64, summed) {
                group.all_reduce_sum(&g.narrow(0, r.start, r.end - r.start))?;
            }
        }
        let Some((sharding, rank)) = self.shard else {
            if let (Some(group), true) = (group, summed.is_empty()) {
                group.all_reduce_sum(&g)?;
            }
            let norm = g.norm();
            // Unsharded, the flat buffer holds the parameters and nothing else.
            return self.update(&g, 0..self.flat.numel() as i64, &norm, lr, max_norm);
        };
        let group =
            group.ok_or_else(|| Error::invalid("a ZeRO-1 optimizer steps with its ranks' collective"))?;
        if !summed.is_empty() {
            // Every rank holds the whole sum: the norm is the plain one.
            let norm = g.norm();
            let norm = self.update(&g, sharding.owned(rank), &norm, lr, max_norm)?;
            return self.gather_weights(group).map(|()| norm);
        }
        let g = if g.numel() as i64 == sharding.padded() {
            g
        } else {
            Tensor::cat(
                &[&g, &g.new_zeros([sharding.padded() - g.numel() as i64], (Kind::Float, g.device()))],
                0,
            )
        };
        group.reduce_scatter_sum(&g)?;
        let owned = sharding.owned(rank);
        // The norm over all ranks' chunks: each rank's sum of squares, summed.
        let squares =
            g.narrow(0, owned.start, owned.end - owned.start).to_kind(Kind::Float).square().sum(Kind::Float);
        let squares = squares.reshape([1]);
        group.all_reduce_sum(&squares)?;
        let norm = squares.sqrt().reshape([]);
        let norm = self.update(&g, owned, &norm, lr, max_norm)?;
        self.gather_weights(group)?;
        Ok(norm)
    }

    /// ZeRO-1: every rank's updated chunk of the f32 weights to every rank, and the bf16
    /// copies refreshed.
    fn gather_weights(&mut self, group: &dyn Collective) -> Result<()> {
        group.all_gather(&self.flat)?;
        if let Some(copies) = &mut self.bf16 {
            copies.refresh();
        }
        Ok(())
    }

    /// AdamW on elements `range` of the flat buffers with gradient `g` (flat) whose norm is
    /// `norm`; the moments of `range` start at element 0 of theirs under ZeRO-1, at
    /// `range.start` otherwise.
    fn update(
        &mut self,
        g: &Tensor,
        range: std::ops::Range<i64>,
        norm: &Tensor,
        lr: f64,
        max_norm: f64,
    ) -> Result<f64> {
        let c = self.cfg;
        let len = range.end - range.start;
        let base = if self.shard.is_some() { 0 } else { range.start };
        if self.fused {
            // Clipping as a divisor the kernel applies: (norm + 1e-6) / max_norm past the limit.
            let scale = (max_norm > 0.0).then(|| {
                let over = norm.gt(max_norm);
                ((norm + 1e-6) / max_norm).where_self(&over, &norm.ones_like())
            });
            let hp = AdamWConfig { lr, ..c };
            let part = |t: &Tensor, at: i64| t.narrow(0, at, len);
            let buffers = [
                &part(&self.flat, range.start),
                &part(g, range.start),
                &part(&self.m_flat, base),
                &part(&self.v_flat, base),
            ];
            let copy = self.bf16.as_ref().map(|b| part(b.flat(), range.start));
            if crate::cuda::kernels::adamw(buffers, copy.as_ref(), &hp, self.step, scale.as_ref()) {
                return Ok(norm.double_value(&[]));
            }
        }
        let norm = norm.double_value(&[]);
        let (bc1, bc2) = (1.0 - c.beta1.powi(self.step as i32), 1.0 - c.beta2.powi(self.step as i32));
        let clip = if max_norm > 0.0 && norm > max_norm { max_norm / (norm + 1e-6) } else { 1.0 };
        // In slices, so that the temporaries stay small next to the weights.
        let mut off = 0;
        while off < len {
            let n = (len - off).min(UPDATE_SLICE);
            let (g, mut m, mut v) = (
                g.narrow(0, range.start + off, n),
                self.m_flat.narrow(0, base + off, n),
                self.v_flat.narrow(0, base + off, n),
            );
            let mut g = g.to_kind(Kind::Float);
            if clip != 1.0 {
                g *= clip;
            }
            let _ = m.g_mul_scalar_(c.beta1).g_add_(&(&g * (1.0 - c.beta1)));
            let _ = v.g_mul_scalar_(c.beta2).g_add_(&(g.square() * (1.0 - c.beta2)));
            let update = (&m / bc1) / ((&v / bc2).sqrt() + c.eps) * lr;
            let mut p = self.flat.narrow(0, range.start + off, n);
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
        if self.shard.is_none() {
            if let Some(copies) = &mut self.bf16 {
                copies.refresh();
            }
        }
        Ok(norm)
    }

    pub fn zero_grad(&mut self) {
        if let Some(g) = &mut self.flat_grad {
            let _ = g.zero_();
            return;
        }
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
        opt.step(0.1, 0.0, None, &[]).unwrap();
        let got = Vec::<f32>::try_from(&p.detach()).unwrap();
        assert!(
            (got[0] - 0.9).abs() < 1e-6 && (got[1] + 1.9).abs() < 1e-6 && (got[2] - 3.0).abs() < 1e-6,
            "{got:?}"
        );
    }

    /// On a GPU (skipped elsewhere): the fused AdamW kernel over the flat buffers makes the
    /// composition's updates, with and without clipping and weight decay, and leaves the bf16
    /// copies equal to the updated parameters' casts.
    #[test]
    fn fused_update_equals_composition() {
        let Some(dev) = crate::testing::cuda() else { return };
        let mut rng = crate::rng::SplitMix64(3);
        let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect() };
        let (a0, b0, wa, wb) = (draw(300 * 7), draw(1000), draw(300 * 7), draw(1000));
        for (max_norm, weight_decay) in [(0.0, 0.0), (0.5, 0.1), (1e6, 0.0)] {
            let run = |fused: bool| {
                let go = || {
                    let t = |v: &[f32]| Tensor::from_slice(v).to_device(dev);
                    let a = t(&a0).view([300, 7]).set_requires_grad(true);
                    let b = t(&b0).set_requires_grad(true);
                    let cfg = AdamWConfig { lr: 1e-2, weight_decay, ..Default::default() };
                    let mut opt = AdamW::new(
                        cfg,
                        vec![("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())],
                    );
                    assert_eq!(opt.is_fused(), fused, "the fused kernel runs where asked for");
                    opt.keep_bf16_copies();
                    let mut norms = vec![];
                    for step in 0..4 {
                        // Gradients that change from step to step (and accumulate over two passes).
                        for _ in 0..2 {
                            let loss = (&a * t(&wa).view([300, 7]) * (step + 1) as f64).sum(Kind::Float)
                                + (&b * &b * t(&wb)).sum(Kind::Float);
                            loss.backward();
                        }
                        norms.push(opt.step(1e-2, max_norm, None, &[]).unwrap());
                        opt.zero_grad();
                        if let Some(copies) = &opt.bf16 {
                            let cast = opt.flat.to_kind(Kind::BFloat16);
                            assert!(copies.flat().equal(&cast), "step {step}: the bf16 copies are stale");
                        }
                    }
                    assert_eq!(opt.bf16.is_some(), fused, "copies are kept with the fused update");
                    (a.detach().copy(), b.detach().copy(), norms)
                };
                if fused {
                    go()
                } else {
                    crate::cuda::kernels::without(go)
                }
            };
            let ((a1, b1, n1), (a2, b2, n2)) = (run(true), run(false));
            for (x, y) in n1.iter().zip(&n2) {
                assert!((x - y).abs() <= 1e-5 * y, "norms {n1:?} vs {n2:?}");
            }
            for (x, y, what) in [(&a1, &a2, "a"), (&b1, &b2, "b")] {
                let d = (x - y).abs().max().double_value(&[]);
                assert!(d < 1e-6, "max_norm {max_norm} weight_decay {weight_decay}: {what} differs by {d}");
            }
        }
    }

    /// Each layer's span of the flat buffers, which the layer reducer sums on its own: none for
    /// a layer with nothing trained or whose parameters lie apart; and what the step sums.
    #[test]
    fn layers_span_their_parameters_and_the_step_sums_the_rest() {
        let p = |name: &str, n: i64| (name.to_string(), Tensor::zeros([n], (Kind::Float, tch::Device::Cpu)));
        let opt = AdamW::new(
            AdamWConfig::default(),
            vec![
                p("model.embed_tokens.weight", 10),
                p("model.layers.0.input_layernorm.weight", 4),
                p("model.layers.0.mlp.up_proj.weight", 6),
                p("model.layers.2.mlp.up_proj.weight", 5),
                p("model.layers.3.mlp.up_proj.weight", 1),
                p("model.layers.2.mlp.down_proj.weight", 2),
                p("model.norm.weight", 3),
            ],
        );
        assert_eq!(opt.layer_ranges(4), vec![Some(10..20), None, None, Some(25..26)]);
        assert_eq!(unsummed(31, &[25..26, 10..20]), vec![0..10, 20..25, 26..31]);
        assert_eq!(unsummed(31, &[10..31, 0..10]), vec![]);
        assert_eq!(unsummed(31, &[]).first(), Some(&(0..31)));
    }

    /// Parameters of sizes that leave the last ranks' chunks short or empty, and the gradient
    /// rank `rank` computes at `step` (scaled so that clipping acts on the larger steps).
    fn zero_case(rank: usize, step: usize) -> (Vec<(String, Tensor)>, Vec<Tensor>) {
        let shapes: [&[i64]; 3] = [&[7, 5], &[130], &[3, 3, 3]];
        let params = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let n: i64 = s.iter().product();
                let p = (Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * 0.01 - i as f64).view(*s);
                (format!("p{i}"), p.set_requires_grad(true))
            })
            .collect();
        let mut rng = crate::rng::SplitMix64(1 + rank as u64 * 1000 + step as u64);
        let coefs = shapes
            .iter()
            .map(|s| {
                let n: i64 = s.iter().product();
                let v: Vec<f32> = (0..n).map(|_| (rng.next_f64() as f32 - 0.5) * (1 + step) as f32).collect();
                Tensor::from_slice(&v).view(*s)
            })
            .collect();
        (params, coefs)
    }

    /// ZeRO-1 over 1-3 ranks (threads, on the CPU) makes the same updates as one optimizer
    /// given the sum of the ranks' gradients: every rank ends with the same weights, those of
    /// the unsharded run, with clipping and weight decay acting. So do ZeRO-1 and plain data
    /// parallelism where a parameter's gradient was already summed during the backward pass
    /// (as the layer reducer does on GPUs) and the step sums the rest.
    #[test]
    fn zero_one_over_threads_equals_one_optimizer() {
        use crate::distributed::zero::threads::ThreadGroup;
        let cfg = AdamWConfig { lr: 1e-2, weight_decay: 0.1, ..Default::default() };
        const STEPS: usize = 5;
        // (ZeRO-1, p1's gradient summed during the backward pass: elements 35..165.)
        for (ranks, zero, presummed) in
            (1..=3usize).flat_map(|r| [(r, true, false), (r, true, true), (r, false, true)])
        {
            let summed: Vec<Range<i64>> = presummed.then_some(35..165).into_iter().collect();
            // The reference: one optimizer, the gradient summed over the ranks.
            let (params, _) = zero_case(0, 0);
            let mut one =
                AdamW::new(cfg, params.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect());
            let mut want_norms = vec![];
            for step in 0..STEPS {
                for rank in 0..ranks {
                    let (_, coefs) = zero_case(rank, step);
                    let loss: Tensor =
                        params.iter().zip(&coefs).map(|((_, p), c)| (p * c).sum(Kind::Float)).sum();
                    loss.backward();
                }
                want_norms.push(one.step(cfg.lr, 2.0, None, &[]).unwrap());
                one.zero_grad();
            }
            let want: Vec<Tensor> = params.iter().map(|(_, p)| p.detach().copy()).collect();
            let handles: Vec<_> = ThreadGroup::new(ranks)
                .into_iter()
                .map(|group| {
                    let summed = summed.clone();
                    std::thread::spawn(move || {
                        let rank = group.rank();
                        let (params, _) = zero_case(0, 0);
                        let list = params.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect();
                        let mut opt =
                            if zero { AdamW::sharded(cfg, list, rank, ranks) } else { AdamW::new(cfg, list) };
                        let total = params.iter().map(|(_, p)| p.numel() as i64).sum();
                        let chunk = if zero { Sharding::new(total, ranks).chunk() } else { total };
                        assert_eq!(opt.state_bytes(), 2 * 4 * chunk as usize, "one chunk of moments");
                        let mut norms = vec![];
                        for step in 0..STEPS {
                            let (_, coefs) = zero_case(rank, step);
                            let loss: Tensor =
                                params.iter().zip(&coefs).map(|((_, p), c)| (p * c).sum(Kind::Float)).sum();
                            loss.backward();
                            if presummed {
                                group.all_reduce_sum(&params[1].1.grad()).unwrap();
                            }
                            norms.push(opt.step(cfg.lr, 2.0, Some(&group), &summed).unwrap());
                            opt.zero_grad();
                        }
                        let got: Vec<Tensor> = params.iter().map(|(_, p)| p.detach().copy()).collect();
                        (got, norms)
                    })
                })
                .collect();
            for (rank, h) in handles.into_iter().enumerate() {
                let (got, norms) = h.join().unwrap();
                for (a, b) in norms.iter().zip(&want_norms) {
                    assert!(
                        (a - b).abs() <= 1e-5 * b,
                        "{ranks} ranks (ZeRO-1 {zero}, p1 summed before {presummed}), rank {rank}: \
                         norms {norms:?} vs {want_norms:?}"
                    );
                }
                assert!(want_norms.iter().any(|&n| n > 2.0), "clipping acts in some step");
                for ((name, _), (g, w)) in params.iter().zip(got.iter().zip(&want)) {
                    let d = (g - w).abs().max().double_value(&[]);
                    assert!(d < 1e-6, "{ranks} ranks (ZeRO-1 {zero}, p1 summed before {presummed}), rank {rank}: {name} differs by {d}");
                }
            }
        }
    }
}
