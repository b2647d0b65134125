//! Closed-form initialisation of the compensation `W_c` (the brief, "The method, exactly", 4).
//!
//! **Streaming fit (default).** The dense and the unified stacks run side by side, one layer at
//! a time over the whole calibration set: each chunk's residual streams (dense, unified, and the
//! unified input of the current block's lead) are kept between layers — tokens x hidden floats
//! each, never attention maps — on the model's device or in host memory (`state_device`). At a
//! reuse layer every real (non-padding) token adds to the normal equations `X^T X` and
//! `X^T (h_base - h_uni)` in f64; after the layer's pass the ridge-regularised system is solved,
//! `W_c` goes in place and the unified stream moves on with it, so every later fit sees the
//! earlier ones (sequential semantics) at the cost of one pass per layer, not one per reuse layer.
//!
//! **Ridge.** `lambda = alpha * mean(diag(X^T X))`, so `alpha` is scale-free. With held-out rows,
//! each layer picks `alpha` from a grid by held-out squared error (computed from held-out normal
//! equations, no extra pass); without, `alpha` is fixed.
//!
//! **Reference fit.** What the authors' code does: every sample padded to a fixed length, the
//! regressor and target averaged over samples position by position (padding included), then a
//! minimum-norm pseudo-inverse solve; one reuse layer at a time, each with a fresh forward pass of
//! both models up to that layer.
use crate::distributed::zero::Collective;
use crate::error::{Error, Result};
use crate::model::attention::{reused_output, LeadAttention, Want};
use crate::model::transformer::{DecoderLayer, LayerContext, PositionContext};
use crate::model::{Attention, Transformer};
use crate::plan::{LayerRole, SuperBlockPlan};
use std::collections::BTreeMap;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Grid of relative ridge strengths tried when choosing on held-out rows.
pub const RIDGE_GRID: [f64; 9] = [1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 1.0];
/// Used when there are no held-out rows and no `--ridge`.
pub const DEFAULT_RIDGE: f64 = 1e-4;

#[derive(Debug, Clone, PartialEq)]
pub enum FitMethod {
    Streaming {
        ridge: Option<f64>,
    },
    Reference {
        len: usize,
    },
    /// `W_c = 0`: softmax unification without compensation, for comparison.
    Zero,
}

#[derive(Debug, Clone)]
pub struct CalibOptions {
    pub method: FitMethod,
    /// Upper bound on batch x padded length per chunk.
    pub chunk_tokens: usize,
    /// Where the residual streams wait between layers.
    pub state_device: Device,
    /// Token used for padding (only the reference fit looks at padded positions).
    pub pad_id: u32,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerFit {
    pub layer: usize,
    pub lead: usize,
    /// Relative ridge strength used (`None` for the pseudo-inverse).
    pub alpha: Option<f64>,
    /// Held-out `||Y - X W||^2 / ||Y||^2` (W = 0 gives 1); `None` without held-out rows.
    pub heldout_rel_err: Option<f64>,
    pub fit_rel_err: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CalibReport {
    pub method: String,
    pub fit_tokens: usize,
    pub heldout_tokens: usize,
    pub seconds: f64,
    pub layers: Vec<LayerFit>,
}

/// Right-padded batch of sequences with a validity mask.
struct Chunk {
    ids: Tensor,
    valid: Tensor,
    heldout: bool,
}

fn make_chunks(
    seqs: &[Vec<u32>],
    heldout: bool,
    max_tokens: usize,
    pad: u32,
    fixed_len: Option<usize>,
) -> Vec<Chunk> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].len());
    let mut chunks = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        let len_of = |k: usize| fixed_len.unwrap_or(seqs[order[k]].len());
        while j < order.len() && (j - i + 1) * len_of(j) <= max_tokens {
            j += 1;
        }
        let t = len_of(j - 1);
        let mut ids = Vec::with_capacity((j - i) * t);
        let mut valid = Vec::with_capacity((j - i) * t);
        for &k in &order[i..j] {
            let s = &seqs[k][..seqs[k].len().min(t)];
            ids.extend(s.iter().map(|&x| x as i64));
            valid.extend(std::iter::repeat_n(true, s.len()));
            ids.extend(std::iter::repeat_n(pad as i64, t - s.len()));
            valid.extend(std::iter::repeat_n(false, t - s.len()));
        }
        let b = (j - i) as i64;
        chunks.push(Chunk {
            ids: Tensor::from_slice(&ids).view([b, t as i64]),
            valid: Tensor::from_slice(&valid).view([b, t as i64]),
            heldout,
        });
        i = j;
    }
    chunks
}

fn full_attention(layer: &DecoderLayer) -> &crate::model::FullAttention {
    match &layer.attn {
        Attention::Full(f) => f,
        _ => unreachable!("calibration runs on the dense model"),
    }
}

/// The pieces of a reuse layer's attention branch before `W_c`: its input `x`, the output
/// `z0 = o_proj(P_lead V)` and the regression target that `x W_c^T` should add.
struct ReuseStep {
    x: Tensor,
    z0: Tensor,
}

/// The lead's map is recomputed from the stored lead input for every reuse layer: keeping it
/// would cost `batch x heads x t x t` per chunk for the whole set.
fn reuse_step(
    model: &Transformer,
    sc: &PositionContext,
    l: usize,
    lead: usize,
    hu: &Tensor,
    lead_in: &Tensor,
) -> ReuseStep {
    let lead_layer = &model.layers[lead];
    let p = full_attention(lead_layer).lead_probs(
        &lead_layer.attn_norm.forward(lead_in),
        sc.layer(&model.stem, lead).rope,
        sc.layer(&model.stem, lead).mask,
    );
    let layer = &model.layers[l];
    let f = full_attention(layer);
    let x = layer.attn_norm.forward(hu);
    let z0 = reused_output(&f.v_proj, &f.o_proj, &f.heads, &x, &LeadAttention::Probs(p));
    ReuseStep { x, z0 }
}

/// What `x W_c^T` should add to `z0` so that the unified residual after attention equals the
/// dense one. With a post-attention norm (Gemma) the target lives before the norm: the dense
/// residual change, un-scaled by the norm weight and brought to `z0`'s per-token RMS.
fn target(layer: &DecoderLayer, hd_mid: &Tensor, hu: &Tensor, z0: &Tensor) -> Tensor {
    let delta = (hd_mid - hu).to_kind(Kind::Float);
    let z0f = z0.to_kind(Kind::Float);
    match &layer.attn_post_norm {
        None => delta - z0f,
        Some(n) => {
            let scale =
                if n.plus_one { n.weight.to_kind(Kind::Float) + 1.0 } else { n.weight.to_kind(Kind::Float) };
            let pre = delta / scale;
            let rms = |t: &Tensor| (t.square().mean_dim(-1, true, Kind::Float) + n.eps).sqrt();
            &pre * (rms(&z0f) / rms(&pre)) - z0f
        }
    }
}

/// Completes a unified reuse layer given `W_c^T` (as a `[hidden, hidden]` matrix `W`, x -> x W).
fn finish_reuse(layer: &DecoderLayer, hu: &Tensor, step: &ReuseStep, w: &Tensor) -> Tensor {
    let a = &step.z0 + step.x.matmul(w);
    let a = match &layer.attn_post_norm {
        Some(n) => n.forward(&a),
        None => a,
    };
    layer.add_and_finish(hu, &a).1
}

fn ordinary_layer(layer: &DecoderLayer, ctx: &LayerContext, h: &Tensor) -> (Tensor, Tensor) {
    let o = layer.forward(h, ctx, None, Want::Output);
    (o.mid, o.out)
}

/// f64 normal-equation sums over real tokens, accumulated where the activations are (no
/// host round trip per chunk); padding rows are zeroed so they add nothing.
struct Normal {
    xtx: Tensor,
    xty: Tensor,
    yty: Tensor,
    n: Tensor,
}

impl Normal {
    fn new(hid: i64, device: Device) -> Self {
        let z = || Tensor::zeros([hid, hid], (Kind::Double, device));
        Normal {
            xtx: z(),
            xty: z(),
            yty: Tensor::zeros([], (Kind::Double, device)),
            n: Tensor::zeros([], (Kind::Int64, device)),
        }
    }

    fn add(&mut self, x: &Tensor, y: &Tensor, valid: &Tensor) {
        let hid = x.size()[2];
        let m = valid.to_device(x.device()).view([-1, 1]);
        let x = x.to_kind(Kind::Double).view([-1, hid]) * &m;
        let y = y.to_kind(Kind::Double).view([-1, hid]) * &m;
        self.n += m.sum(Kind::Int64);
        self.xtx += x.tr().matmul(&x);
        self.xty += x.tr().matmul(&y);
        self.yty += y.square().sum(Kind::Double);
    }

    /// The sums over every rank of `group`, in place.
    fn sum_over(&mut self, group: &dyn Collective) -> Result<()> {
        for t in [&self.xtx, &self.xty, &self.yty, &self.n] {
            group.all_reduce_sum(t)?;
        }
        Ok(())
    }

    fn count(&self) -> i64 {
        self.n.int64_value(&[])
    }

    /// Solved where the sums are. On the host, the ridge grid's ten f64 solves a reuse layer
    /// kept `search-plan --variant uniattn` on Qwen2.5-Coder-1.5B at 16-20 s a plan, every core
    /// of the H200 machine busy and its GPU idle; on the GPU 7-8 s with ten searches sharing it
    /// (docs/results.md, 2026-12-02).
    fn solve(&self, alpha: f64) -> Tensor {
        let hid = self.xtx.size()[0];
        let lambda = alpha * self.xtx.diagonal(0, 0, 1).mean(Kind::Double).double_value(&[]).max(1e-30);
        let a = &self.xtx + Tensor::eye(hid, (Kind::Double, self.xtx.device())) * lambda;
        Tensor::linalg_solve(&a, &self.xty, true)
    }

    /// `||Y - X W||^2 / ||Y||^2` from the sums alone.
    fn rel_err(&self, w: &Tensor) -> f64 {
        let cross = (w * &self.xty).sum(Kind::Double).double_value(&[]);
        let quad = (w * self.xtx.matmul(w)).sum(Kind::Double).double_value(&[]);
        let yty = self.yty.double_value(&[]);
        (yty - 2.0 * cross + quad) / yty.max(1e-30)
    }
}

/// Fits `W_c` for every reuse layer of `plan` on `fit` (and picks the ridge on `heldout`).
/// Returns `W_c` in Linear layout (`[out, in]`) by layer, and a report. Over a `group` of
/// ranks (data parallelism, one GPU each) the streaming fit runs each rank on its share of the
/// chunks and sums the normal equations over the ranks before each solve, so every rank gets
/// the one-process fit up to the order of the sums; `progress` counts this rank's chunks.
pub fn calibrate(
    model: &Transformer,
    plan: &SuperBlockPlan,
    fit: &[Vec<u32>],
    heldout: &[Vec<u32>],
    opts: &CalibOptions,
    group: Option<&dyn Collective>,
    mut progress: impl FnMut(usize, usize),
) -> Result<(BTreeMap<usize, Tensor>, CalibReport)> {
    if !model.stem.plan.is_dense() {
        return Err(Error::invalid("calibration needs the dense model (it has a plan already)"));
    }
    plan.check_layers(model.stem.cfg.num_layers, std::path::Path::new("--plan"))?;
    if fit.is_empty() {
        return Err(Error::invalid("no calibration rows"));
    }
    let _guard = tch::no_grad_guard();
    let start = Instant::now();
    let (wc, layers) = match opts.method {
        FitMethod::Streaming { ridge } => {
            streaming(model, plan, fit, heldout, opts, ridge, group, &mut progress)?
        }
        FitMethod::Reference { len } => reference(model, plan, fit, opts, len, &mut progress)?,
        FitMethod::Zero => (BTreeMap::new(), vec![]),
    };
    let count = |s: &[Vec<u32>]| s.iter().map(Vec::len).sum();
    Ok((
        wc,
        CalibReport {
            method: match opts.method {
                FitMethod::Streaming { .. } => "streaming normal equations (ours)".into(),
                FitMethod::Reference { len } => format!("reference (position-averaged, pinv, length {len})"),
                FitMethod::Zero => "none (W_c = 0)".into(),
            },
            fit_tokens: count(fit),
            heldout_tokens: if matches!(opts.method, FitMethod::Streaming { .. }) {
                count(heldout)
            } else {
                0
            },
            seconds: start.elapsed().as_secs_f64(),
            layers,
        },
    ))
}

type Fitted = (BTreeMap<usize, Tensor>, Vec<LayerFit>);

#[allow(clippy::too_many_arguments)]
fn streaming(
    model: &Transformer,
    plan: &SuperBlockPlan,
    fit: &[Vec<u32>],
    heldout: &[Vec<u32>],
    opts: &CalibOptions,
    ridge: Option<f64>,
    group: Option<&dyn Collective>,
    progress: &mut impl FnMut(usize, usize),
) -> Result<Fitted> {
    let dev = model.stem.device;
    let sd = opts.state_device;
    let mut chunks = make_chunks(fit, false, opts.chunk_tokens, opts.pad_id, None);
    chunks.extend(make_chunks(heldout, true, opts.chunk_tokens, opts.pad_id, None));
    // Over several ranks, the chunks go round them.
    if let Some(g) = group {
        chunks = chunks
            .into_iter()
            .enumerate()
            .filter(|(c, _)| c % g.size() == g.rank())
            .map(|(_, c)| c)
            .collect();
    }
    let contexts: Vec<PositionContext> =
        chunks.iter().map(|c| PositionContext::full(&model.stem, c.ids.size()[1])).collect();
    let mut hd: Vec<Tensor> =
        chunks.iter().map(|c| model.stem.embed(&c.ids.to_device(dev)).to_device(sd)).collect();
    let mut hu: Vec<Tensor> = hd.iter().map(Tensor::shallow_clone).collect();
    let mut lead_in: Vec<Option<Tensor>> = chunks.iter().map(|_| None).collect();
    let hid = model.stem.cfg.hidden_size as i64;
    // Up to the first lead (inclusive) both stacks are the same computation, so the unified
    // stream is the dense one; after the last reuse layer nothing is left to fit.
    let shared_until = plan.blocks.first().map_or(0, |b| b.0);
    let last = plan.blocks.last().map_or(0, |b| b.1);
    let total = last * chunks.len();
    let mut wc = BTreeMap::new();
    let mut fits = Vec::new();
    for (l, layer) in model.layers.iter().enumerate().take(last) {
        let role = plan.role(l);
        let mut fit_eq = Normal::new(hid, dev);
        let mut held_eq = Normal::new(hid, dev);
        let mut z0s: Vec<Option<Tensor>> = chunks.iter().map(|_| None).collect();
        for (c, chunk) in chunks.iter().enumerate() {
            let ctx = contexts[c].layer(&model.stem, l);
            let d = hd[c].to_device(dev);
            let (d_mid, d_out) = ordinary_layer(layer, &ctx, &d);
            let d_out = d_out.to_device(sd);
            match role {
                LayerRole::Ordinary | LayerRole::Lead => {
                    if role == LayerRole::Lead {
                        lead_in[c] = Some(hu[c].shallow_clone());
                    }
                    hu[c] = if l <= shared_until {
                        d_out.shallow_clone()
                    } else {
                        ordinary_layer(layer, &ctx, &hu[c].to_device(dev)).1.to_device(sd)
                    };
                }
                LayerRole::Reuse { lead } => {
                    let u = hu[c].to_device(dev);
                    let li = lead_in[c].as_ref().expect("lead precedes reuse").to_device(dev);
                    let step = reuse_step(model, &contexts[c], l, lead, &u, &li);
                    let y = target(layer, &d_mid, &u, &step.z0);
                    let eq = if chunk.heldout { &mut held_eq } else { &mut fit_eq };
                    eq.add(&step.x, &y, &chunk.valid);
                    z0s[c] = Some(step.z0.to_device(sd));
                }
            }
            hd[c] = d_out;
            progress(l * chunks.len() + c + 1, total);
        }
        if let LayerRole::Reuse { lead } = role {
            if let Some(g) = group {
                fit_eq.sum_over(g)?;
                held_eq.sum_over(g)?;
            }
            let has_held = held_eq.count() > 0;
            let (alpha, held_err) = match ridge {
                Some(a) => (a, has_held.then(|| held_eq.rel_err(&fit_eq.solve(a)))),
                None if has_held => {
                    let (a, e) = RIDGE_GRID
                        .iter()
                        .map(|&a| (a, held_eq.rel_err(&fit_eq.solve(a))))
                        .min_by(|x, y| x.1.total_cmp(&y.1))
                        .expect("grid is not empty");
                    (a, Some(e))
                }
                None => (DEFAULT_RIDGE, None),
            };
            let w = fit_eq.solve(alpha);
            fits.push(LayerFit {
                layer: l,
                lead,
                alpha: Some(alpha),
                heldout_rel_err: held_err,
                fit_rel_err: fit_eq.rel_err(&w),
            });
            let w_dev = w.to_kind(model.stem.kind).to_device(dev);
            for c in 0..chunks.len() {
                let u = hu[c].to_device(dev);
                let step = ReuseStep {
                    x: layer.attn_norm.forward(&u),
                    z0: z0s[c].take().expect("computed above").to_device(dev),
                };
                hu[c] = finish_reuse(layer, &u, &step, &w_dev).to_device(sd);
            }
            wc.insert(l, w.tr().to_kind(Kind::Float).to_device(Device::Cpu).contiguous());
        }
    }
    Ok((wc, fits))
}

fn reference(
    model: &Transformer,
    plan: &SuperBlockPlan,
    fit: &[Vec<u32>],
    opts: &CalibOptions,
    len: usize,
    progress: &mut impl FnMut(usize, usize),
) -> Result<Fitted> {
    let dev = model.stem.device;
    let chunks = make_chunks(fit, false, opts.chunk_tokens.max(len), opts.pad_id, Some(len));
    let sc = PositionContext::full(&model.stem, len as i64);
    let reuse = plan.reuse_layers();
    let total = reuse.len() * chunks.len();
    let hid = model.stem.cfg.hidden_size as i64;
    let mut wc: BTreeMap<usize, Tensor> = BTreeMap::new();
    let mut fits = Vec::new();
    for (i, &r) in reuse.iter().enumerate() {
        let LayerRole::Reuse { lead } = plan.role(r) else { unreachable!() };
        let mut sum_x = Tensor::zeros([len as i64, hid], (Kind::Double, dev));
        let mut sum_y = Tensor::zeros([len as i64, hid], (Kind::Double, dev));
        let mut n = 0i64;
        for (c, chunk) in chunks.iter().enumerate() {
            // A fresh forward of both models up to layer r, as the reference code does.
            let mut d = model.stem.embed(&chunk.ids.to_device(dev));
            let mut u = d.shallow_clone();
            let mut li = u.shallow_clone();
            for l in 0..r {
                let layer = &model.layers[l];
                let ctx = sc.layer(&model.stem, l);
                d = ordinary_layer(layer, &ctx, &d).1;
                u = match plan.role(l) {
                    LayerRole::Reuse { lead } => {
                        let step = reuse_step(model, &sc, l, lead, &u, &li);
                        finish_reuse(layer, &u, &step, &wc[&l].tr().to_kind(model.stem.kind).to_device(dev))
                    }
                    role => {
                        if role == LayerRole::Lead {
                            li = u.shallow_clone();
                        }
                        ordinary_layer(layer, &ctx, &u).1
                    }
                };
            }
            let layer = &model.layers[r];
            let (d_mid, _) = ordinary_layer(layer, &sc.layer(&model.stem, r), &d);
            let step = reuse_step(model, &sc, r, lead, &u, &li);
            let y = target(layer, &d_mid, &u, &step.z0);
            sum_x += step.x.to_kind(Kind::Double).sum_dim_intlist(0, false, Kind::Double);
            sum_y += y.to_kind(Kind::Double).sum_dim_intlist(0, false, Kind::Double);
            n += chunk.ids.size()[0];
            progress(i * chunks.len() + c + 1, total);
        }
        let mx = (sum_x / n as f64).to_device(Device::Cpu);
        let my = (sum_y / n as f64).to_device(Device::Cpu);
        // torch.linalg.pinv's default cut-off for the float32 activations the reference code
        // uses: singular values below max(m, n) * eps(f32) of the largest are dropped.
        let rcond = mx.size().iter().copied().max().unwrap_or(1) as f64 * f32::EPSILON as f64;
        let w = mx.linalg_pinv(rcond, false).matmul(&my);
        let resid = (&my - mx.matmul(&w)).square().sum(Kind::Double).double_value(&[]);
        let norm = my.square().sum(Kind::Double).double_value(&[]).max(1e-30);
        fits.push(LayerFit { layer: r, lead, alpha: None, heldout_rel_err: None, fit_rel_err: resid / norm });
        wc.insert(r, w.tr().to_kind(Kind::Float).contiguous());
    }
    Ok((wc, fits))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reuse layer gets its own fit, past the shared prefix and up to the last block, and
    /// nothing else does.
    #[test]
    fn streaming_fits_exactly_the_reuse_layers() {
        use crate::testing::{tiny_config, tiny_model};
        let mut cfg = tiny_config(crate::config::Family::Qwen2);
        cfg.num_layers = 8;
        let model = tiny_model(&cfg, SuperBlockPlan::dense(8), Kind::Double, 3);
        let plan = SuperBlockPlan::from_blocks(vec![(2, 4), (5, 7)], 8).unwrap();
        let seqs: Vec<Vec<u32>> =
            (0..4u32).map(|i| (0..12).map(|t| (i * 7 + t * 3) % 32).collect()).collect();
        let opts = CalibOptions {
            method: FitMethod::Streaming { ridge: Some(1e-6) },
            chunk_tokens: 24,
            state_device: Device::Cpu,
            pad_id: 0,
        };
        let (wc, report) = calibrate(&model, &plan, &seqs, &[], &opts, None, |_, _| {}).unwrap();
        assert_eq!(wc.keys().copied().collect::<Vec<_>>(), vec![3, 6]);
        let fitted: Vec<(usize, usize)> = report.layers.iter().map(|f| (f.layer, f.lead)).collect();
        assert_eq!(fitted, vec![(3, 2), (6, 5)]);
        for (l, w) in &wc {
            assert_eq!(w.size(), vec![16, 16]);
            assert!(w.norm().double_value(&[]) > 1e-3, "W_c of layer {l} is zero");
        }
        assert!(report.layers.iter().all(|f| f.fit_rel_err < 1.0), "{:?}", report.layers);
    }

    /// Over 2 and 3 ranks (threads, each with its share of the chunks, the sums reduced over
    /// them) the fit is the one process's, to the order of the sums.
    #[test]
    fn ranks_share_the_chunks_and_fit_what_one_process_fits() {
        use crate::distributed::zero::threads::ThreadGroup;
        use crate::testing::{tiny_config, tiny_model};
        let mut cfg = tiny_config(crate::config::Family::Llama);
        cfg.num_layers = 6;
        let plan = SuperBlockPlan::from_blocks(vec![(1, 4)], 6).unwrap();
        let seqs = |n: u32, salt: u32| -> Vec<Vec<u32>> {
            (0..n).map(|i| (0..8 + i % 5).map(|t| (i * 11 + t * 5 + salt) % 32).collect()).collect()
        };
        let (fit, held) = (seqs(9, 0), seqs(4, 3));
        let opts = CalibOptions {
            method: FitMethod::Streaming { ridge: None },
            chunk_tokens: 20,
            state_device: Device::Cpu,
            pad_id: 0,
        };
        let model = tiny_model(&cfg, SuperBlockPlan::dense(6), Kind::Double, 5);
        let (want, want_report) = calibrate(&model, &plan, &fit, &held, &opts, None, |_, _| {}).unwrap();
        assert!(make_chunks(&fit, false, 20, 0, None).len() >= 3, "every rank gets a chunk");
        for ranks in [2, 3] {
            let handles: Vec<_> = ThreadGroup::new(ranks)
                .into_iter()
                .map(|group| {
                    let (cfg, plan, fit, held, opts) =
                        (cfg.clone(), plan.clone(), fit.clone(), held.clone(), opts.clone());
                    std::thread::spawn(move || {
                        let model = tiny_model(&cfg, SuperBlockPlan::dense(6), Kind::Double, 5);
                        let (wc, report) =
                            calibrate(&model, &plan, &fit, &held, &opts, Some(&group), |_, _| {}).unwrap();
                        let alphas: Vec<Option<f64>> = report.layers.iter().map(|f| f.alpha).collect();
                        (wc, alphas)
                    })
                })
                .collect();
            for (rank, h) in handles.into_iter().enumerate() {
                let (got, alphas) = h.join().unwrap();
                assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
                let want_alphas: Vec<Option<f64>> = want_report.layers.iter().map(|f| f.alpha).collect();
                assert_eq!(alphas, want_alphas, "{ranks} ranks, rank {rank}: the same ridge chosen");
                for (l, w) in &want {
                    let d = (&got[l] - w).abs().max().double_value(&[]) / w.abs().max().double_value(&[]);
                    assert!(d < 1e-9, "{ranks} ranks, rank {rank}: W_c of layer {l} differs by {d}");
                }
            }
        }
    }

    /// The solver recovers a known map from `Y = X W` (+ noise), through the same sums the
    /// calibration accumulates.
    #[test]
    fn normal_equations_recover_known_map() {
        tch::manual_seed(0);
        let (n, hid) = (2000i64, 48i64);
        let x = Tensor::randn([1, n, hid], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([hid, hid], (Kind::Float, Device::Cpu)) * 0.3;
        let valid = Tensor::ones([1, n], (Kind::Bool, Device::Cpu));
        for (noise, tol) in [(0.0, 1e-3), (0.01, 1e-2)] {
            let y = x.matmul(&w) + Tensor::randn([1, n, hid], (Kind::Float, Device::Cpu)) * noise;
            let mut eq = Normal::new(hid, Device::Cpu);
            // Two halves, to exercise accumulation across chunks.
            eq.add(&x.narrow(1, 0, n / 2), &y.narrow(1, 0, n / 2), &valid.narrow(1, 0, n / 2));
            eq.add(&x.narrow(1, n / 2, n / 2), &y.narrow(1, n / 2, n / 2), &valid.narrow(1, 0, n / 2));
            let got = eq.solve(1e-9).to_kind(Kind::Float);
            let rel = ((&got - &w).norm().double_value(&[])) / w.norm().double_value(&[]);
            assert!(rel < tol, "noise {noise}: relative error {rel}");
        }
    }

    #[test]
    fn padding_is_excluded() {
        let (hid, n) = (8i64, 64i64);
        let x = Tensor::randn([2, n, hid], (Kind::Double, Device::Cpu));
        let w = Tensor::randn([hid, hid], (Kind::Double, Device::Cpu));
        let mut y = x.matmul(&w);
        // Garbage in the padded half of the second row.
        let valid = Tensor::cat(
            &[
                Tensor::ones([1, n], (Kind::Bool, Device::Cpu)),
                Tensor::cat(
                    &[
                        Tensor::ones([1, n / 2], (Kind::Bool, Device::Cpu)),
                        Tensor::zeros([1, n / 2], (Kind::Bool, Device::Cpu)),
                    ],
                    1,
                ),
            ],
            0,
        );
        let _ = y.narrow(0, 1, 1).narrow(1, n / 2, n / 2).fill_(1e6);
        let mut eq = Normal::new(hid, Device::Cpu);
        eq.add(&x, &y, &valid);
        assert_eq!(eq.count(), n + n / 2);
        let rel = (eq.solve(1e-12) - &w).norm().double_value(&[]) / w.norm().double_value(&[]);
        assert!(rel < 1e-6, "{rel}");
        let _ = &mut y;
    }

    #[test]
    fn chunks_pad_on_the_right_and_mark_padding() {
        let seqs = vec![vec![1, 2, 3], vec![4], vec![5, 6]];
        let ch = make_chunks(&seqs, false, 100, 0, None);
        assert_eq!(ch.len(), 1);
        assert_eq!(Vec::<i64>::try_from(ch[0].ids.view([-1])).unwrap(), vec![4, 0, 0, 5, 6, 0, 1, 2, 3]);
        assert_eq!(ch[0].valid.sum(Kind::Int64).int64_value(&[]), 6);
        let ch = make_chunks(&seqs, false, 4, 9, None);
        assert!(ch.iter().all(|c| c.ids.numel() <= 4 || c.ids.size()[0] == 1));
    }
}
