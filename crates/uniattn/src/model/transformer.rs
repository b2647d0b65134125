//! One decoder-only transformer for every family, with UniAttn's SuperBlocks. Family
//! differences come from [`ModelConfig`] flags; the lead/reuse split comes from the
//! [`SuperBlockPlan`].
use super::attention::{Attention, ClaAttention, FullAttention, Heads, LeadState, ReuseAttention, Want};
use super::names::{self, Module};
use super::nn::{accumulate_kind, autocast_input, Linear, RmsNorm};
use super::rope::{RopeAngles, RopeTable};
use crate::config::ModelConfig;
use crate::cuda::kernels::GemvOut;
use crate::error::{Error, Result};
use crate::plan::{LayerRole, LeadHandover, ReuseKind, SuperBlockPlan};
use crate::weights::{to_device, WeightMap};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    /// tanh-approximated GELU (Gemma) instead of SiLU.
    pub gelu_tanh: bool,
}

impl Mlp {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (g, u) = (self.gate_proj.forward(x), self.up_proj.forward(x));
        if !self.gelu_tanh {
            if let Some(a) = crate::cuda::kernels::swiglu(&g, &u) {
                return self.down_proj.forward(&a);
            }
        }
        let g = if self.gelu_tanh { g.gelu("tanh") } else { g.silu() };
        self.down_proj.forward(&(g * u))
    }
}

#[derive(Debug)]
pub struct DecoderLayer {
    pub attn_norm: RmsNorm,
    /// Gemma's norm on the attention output, inside the residual branch.
    pub attn_post_norm: Option<RmsNorm>,
    pub attn: Attention,
    pub mlp_norm: RmsNorm,
    pub mlp_post_norm: Option<RmsNorm>,
    pub mlp: Mlp,
}

/// Everything a layer needs besides its input, shared across the stack for one forward call.
pub struct LayerContext<'a> {
    pub rope: &'a RopeAngles,
    pub mask: &'a Tensor,
    /// `mask` is exactly the causal mask of queries and keys aligned from position 0: fused
    /// attention may use its causal flag instead (flash attention takes no mask).
    pub causal: bool,
}

/// What a decode step's positions are looked up in rather than computed from, for positions
/// `0..len` (an engine's cache, whole key buckets): a [`RopeTable`] for each RoPE base the
/// model's layers use (keyed by its bits), and the key positions and a zero of the compute type
/// its masks are made from (two kernels a mask, where computing them took five).
pub struct PositionTables {
    ropes: BTreeMap<u64, RopeTable>,
    /// `0..len`, int64.
    keys: Tensor,
    /// A 0-dim zero in the compute type.
    zero: Tensor,
}

impl PositionTables {
    /// Tables of positions `0..len` for `stem`'s layers.
    pub fn new(stem: &Stem, len: i64) -> Self {
        let mut ropes = BTreeMap::new();
        for l in 0..stem.cfg.num_layers {
            let theta = stem.cfg.layer_rope_theta(l);
            ropes
                .entry(theta.to_bits())
                .or_insert_with(|| RopeTable::new(len, stem.cfg.head_dim, theta, stem.kind, stem.device));
        }
        let keys = Tensor::arange(len, (Kind::Int64, stem.device));
        PositionTables { ropes, keys, zero: stem.mask_zero() }
    }
}

/// RoPE angles and masks for one set of query positions, shared by every layer that has the
/// same RoPE base and window.
pub struct PositionContext {
    ropes: BTreeMap<u64, RopeAngles>,
    masks: BTreeMap<Option<usize>, Tensor>,
    /// Whole sequences of this length from position 0, one document each (see
    /// [`LayerContext::causal`]).
    causal_len: Option<i64>,
}

impl PositionContext {
    /// Queries at `positions` (`[b, q]`) over keys `0..k_len`.
    pub fn new(stem: &Stem, positions: &Tensor, k_len: i64) -> Self {
        let (keys, zero) = (Tensor::arange(k_len, (Kind::Int64, stem.device)), stem.mask_zero());
        Self::with(
            stem,
            |theta| RopeAngles::new(positions, stem.cfg.head_dim, theta, stem.kind),
            |w| causal_mask(&keys, &zero, positions, w),
        )
    }

    /// [`PositionContext::new`] with the angles gathered from `tables` and the masks made from
    /// them (positions and `k_len` below their length).
    pub fn from_tables(stem: &Stem, tables: &PositionTables, positions: &Tensor, k_len: i64) -> Self {
        let keys = tables.keys.narrow(0, 0, k_len);
        Self::with(
            stem,
            |theta| tables.ropes[&theta.to_bits()].angles(positions),
            |w| causal_mask(&keys, &tables.zero, positions, w),
        )
    }

    /// The angles of each RoPE base and the mask of each window the layers use.
    fn with(stem: &Stem, angles: impl Fn(f64) -> RopeAngles, mask: impl Fn(Option<usize>) -> Tensor) -> Self {
        let mut ropes = BTreeMap::new();
        let mut masks = BTreeMap::new();
        for l in 0..stem.cfg.num_layers {
            let theta = stem.cfg.layer_rope_theta(l);
            ropes.entry(theta.to_bits()).or_insert_with(|| angles(theta));
            let w = stem.cfg.layer_window(l);
            masks.entry(w).or_insert_with(|| mask(w));
        }
        PositionContext { ropes, masks, causal_len: None }
    }

    /// Packed sequences: `docs` (`[b, t]`) numbers the document of each token, `positions`
    /// restart at 0 in each document, and no token attends across documents.
    pub fn packed(stem: &Stem, positions: &Tensor, docs: &Tensor) -> Self {
        let mut pc = Self::new(stem, positions, positions.size()[1]);
        for (w, m) in pc.masks.iter_mut() {
            *m = stem.packed_mask(positions, docs, *w);
        }
        pc
    }

    /// Whole sequences of length `t` from position 0 (any batch size: the angles and masks
    /// broadcast over it).
    pub fn full(stem: &Stem, t: i64) -> Self {
        let mut pc = Self::new(stem, &Tensor::arange(t, (Kind::Int64, stem.device)).unsqueeze(0), t);
        pc.causal_len = Some(t);
        pc
    }

    pub fn layer(&self, stem: &Stem, l: usize) -> LayerContext<'_> {
        let window = stem.cfg.layer_window(l);
        LayerContext {
            rope: &self.ropes[&stem.cfg.layer_rope_theta(l).to_bits()],
            mask: &self.masks[&window],
            causal: self.causal_len.is_some_and(|t| window.is_none_or(|w| w as i64 >= t)),
        }
    }
}

/// What one decoder layer computed: the residual stream after its attention block (`mid`) and
/// after the whole layer (`out`), and what a lead hands to its SuperBlock.
pub struct LayerOutput {
    pub mid: Tensor,
    pub out: Tensor,
    pub lead: Option<LeadState>,
}

impl DecoderLayer {
    /// Freezes every norm of the layer ([`RmsNorm::freeze`]): for the engine, whose weights
    /// no longer change.
    pub fn freeze_norms(&mut self) {
        let (q_norm, k_norm) = match &mut self.attn {
            Attention::Full(f) => (f.q_norm.as_mut(), f.k_norm.as_mut()),
            Attention::Cla(c) => (c.q_norm.as_mut(), None),
            Attention::Reuse(_) | Attention::Dropped => (None, None),
        };
        let optional = [q_norm, k_norm, self.attn_post_norm.as_mut(), self.mlp_post_norm.as_mut()];
        for norm in
            [Some(&mut self.attn_norm), Some(&mut self.mlp_norm)].into_iter().chain(optional).flatten()
        {
            norm.freeze();
        }
    }

    /// The layer on the residual stream `h`: `mid = h + attn(norm(h))`, then
    /// `out = mid + mlp(norm(mid))` (Gemma's post-norms inside the branches). The one layer
    /// body of the training graph, the similarity analysis and calibration; the engine runs
    /// its own (fused projections, an in-place residual and the KV cache).
    pub fn forward(
        &self,
        h: &Tensor,
        ctx: &LayerContext,
        lead: Option<&LeadState>,
        want: Want,
    ) -> LayerOutput {
        let x = autocast_input(self.attn_norm.forward(h));
        let (a, st) = self.attention_branch(&x, ctx, lead, want);
        let (mid, out) = self.add_and_finish(h, &a);
        LayerOutput { out, mid, lead: st }
    }

    /// The layer's MLP half, from the residual `h` before attention and the attention block's
    /// contribution `a`: `(mid, mid + mlp(norm(mid)))` with `mid = h + a`. Out of place:
    /// autograd needs the residual that the norms saved.
    pub fn add_and_finish(&self, h: &Tensor, a: &Tensor) -> (Tensor, Tensor) {
        let (mid, x) = self.mlp_norm.add_then_norm(h, a);
        let m = self.mlp.forward(&x);
        let m = match &self.mlp_post_norm {
            Some(n) => n.forward(&m),
            None => m,
        };
        let out = m + &mid;
        (mid, out)
    }

    /// The attention block's contribution before it is added to the residual (`attn` in the
    /// brief, post-norm included), plus what a lead hands its block when `want` asks for it.
    fn attention_branch(
        &self,
        x_normed: &Tensor,
        ctx: &LayerContext,
        lead: Option<&LeadState>,
        want: Want,
    ) -> (Tensor, Option<LeadState>) {
        let lead_state = || lead.expect("the plan runs a lead before its reuse layers");
        let (a, state) = match &self.attn {
            Attention::Full(f) => {
                let (a, st) = f.forward(x_normed, ctx.rope, ctx.mask, ctx.causal, want);
                (a, Some(st))
            }
            Attention::Reuse(r) => {
                let attn = lead_state().attn.as_ref().expect("UniAttn leads hand over their attention");
                (r.forward(x_normed, attn), None)
            }
            Attention::Cla(c) => {
                let kv = lead_state().kv.as_ref().expect("CLA leads hand over their keys and values");
                (c.forward(x_normed, ctx.rope, ctx.mask, ctx.causal, kv), None)
            }
            Attention::Dropped => return (x_normed.zeros_like(), None),
        };
        let a = match &self.attn_post_norm {
            Some(n) => n.forward(&a),
            None => a,
        };
        (a, state)
    }
}

/// Everything of a model outside its decoder layers: the configuration and plan, the token
/// embedding, the final norm and the LM head, the compute type and device. The training graph
/// ([`Transformer`]) owns one beside its layers; the engine owns one beside its own.
pub struct Stem {
    pub cfg: ModelConfig,
    pub plan: SuperBlockPlan,
    pub embed: Tensor,
    pub norm: RmsNorm,
    /// `None` when tied to the embedding.
    pub lm_head: Option<Tensor>,
    pub kind: Kind,
    pub device: Device,
}

pub struct Transformer {
    pub stem: Stem,
    pub layers: Vec<DecoderLayer>,
}

impl Stem {
    /// Token embeddings, scaled by sqrt(hidden) in Gemma (in the compute dtype, as HF does).
    pub fn embed(&self, ids: &Tensor) -> Tensor {
        let h = Tensor::embedding(&self.embed, ids, -1, false, false);
        if self.cfg.family.is_gemma() {
            // Filled on the device (no host-to-device copy, so a CUDA graph can capture this).
            let scale =
                Tensor::full([] as [i64; 0], (self.cfg.hidden_size as f64).sqrt(), (self.kind, self.device));
            h * scale
        } else {
            h
        }
    }

    /// Final norm and LM head, in the compute type (bf16 under autocast): [`Self::head`]
    /// before its cast and soft-capping, which the trainer's fused cross-entropy applies itself.
    pub fn head_logits(&self, h: &Tensor) -> Tensor {
        let w = self.lm_head.as_ref().unwrap_or(&self.embed);
        // The norm runs on its own here: inside the matrix-vector kernel every block of the
        // head's vocabulary-wide output would stage it again (the head took 124 us a step that
        // way on an H200, docs/benchmarks.md).
        let h = self.norm.forward_decode(h);
        crate::cuda::training::autocast_linear(&h, w, None)
            .or_else(|| crate::cuda::kernels::decode_gemv(&h, None, w, None, GemvOut::New))
            .unwrap_or_else(|| h.linear::<Tensor>(w, None))
    }

    /// [`Self::head_logits`]'s output cast to f32 (f64 for f64 models) and soft-capped (Gemma 2).
    pub fn finish_logits(&self, logits: Tensor) -> Tensor {
        let logits = logits.to_kind(accumulate_kind(self.kind));
        match self.cfg.final_logit_softcapping {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    /// Final norm, LM head and (Gemma 2) soft-capping. Returns f32 logits (f64 for f64 models).
    pub fn head(&self, h: &Tensor) -> Tensor {
        self.finish_logits(self.head_logits(h))
    }

    /// The logits a greedy pick is taken from: the head's output as it is, whose cast to f32
    /// changes no value (so neither the argmax), or the finished logits where soft-capping
    /// can merge nearby values. Finish them with [`Self::finish_picked`].
    pub fn pick_logits(&self, h: &Tensor) -> Tensor {
        let logits = self.head_logits(h);
        if self.cfg.final_logit_softcapping.is_some() {
            self.finish_logits(logits)
        } else {
            logits
        }
    }

    /// [`Self::pick_logits`]'s output as [`Self::head`] returns it; with `own`, in a tensor of
    /// its own even where nothing changes (a CUDA graph's output buffer is overwritten by the
    /// next replay).
    pub fn finish_picked(&self, picked: &Tensor, own: bool) -> Tensor {
        let kind = accumulate_kind(self.kind);
        if own && picked.kind() == kind {
            picked.copy()
        } else {
            picked.to_kind(kind)
        }
    }

    /// A 0-dim zero in the compute type, which additive masks are made from.
    fn mask_zero(&self) -> Tensor {
        Tensor::zeros([], (self.kind, self.device))
    }

    /// Additive mask `[b, 1, t, t]` for packed documents: causal by index, within a document,
    /// and within `window` positions when given.
    pub fn packed_mask(&self, positions: &Tensor, docs: &Tensor, window: Option<usize>) -> Tensor {
        let t = positions.size()[1];
        let idx = Tensor::arange(t, (Kind::Int64, self.device));
        let mut allowed = idx
            .view([1, 1, t])
            .le_tensor(&idx.view([1, t, 1]))
            .logical_and(&docs.unsqueeze(2).eq_tensor(&docs.unsqueeze(1)));
        if let Some(w) = window {
            allowed = allowed.logical_and(&(positions.unsqueeze(2) - positions.unsqueeze(1)).lt(w as i64));
        }
        additive_mask(&allowed, &self.mask_zero())
    }
}

/// Additive causal mask `[b, 1, q, k]` for queries at `positions` (`[b, q]`) over key
/// positions `keys` (`[k]`), restricted to a sliding `window` when given; `zero` is a 0-dim
/// zero of the compute type.
fn causal_mask(keys: &Tensor, zero: &Tensor, positions: &Tensor, window: Option<usize>) -> Tensor {
    let kp = keys.view([1, 1, -1]);
    let qp = positions.unsqueeze(-1);
    let mut allowed = kp.le_tensor(&qp);
    if let Some(w) = window {
        allowed = allowed.logical_and(&(&qp - &kp).lt(w as i64));
    }
    additive_mask(&allowed, zero)
}

/// 0 where `allowed`, -inf elsewhere, in `zero`'s type (0-dim), with a head axis: `[b, q, k]`
/// -> `[b, 1, q, k]`. One kernel: `where` over the zero and a scalar.
fn additive_mask(allowed: &Tensor, zero: &Tensor) -> Tensor {
    zero.where_scalarother(allowed, f64::NEG_INFINITY).unsqueeze(1)
}

impl Transformer {
    /// Builds the model from Hugging Face-named weights, checking every shape against `cfg`.
    /// Reuse layers need `v2_proj` (W_c) unless `zero_wc`, which starts it at zero (before
    /// calibration); their Q/K weights, if the file has them, are dropped.
    pub fn from_weights(
        mut w: WeightMap,
        cfg: ModelConfig,
        plan: SuperBlockPlan,
        kind: Kind,
        device: Device,
        zero_wc: bool,
    ) -> Result<Self> {
        plan.check_layers(cfg.num_layers, &w.source)?;
        let dev = |t: Tensor| to_device(t, kind, device);
        let (hd, h, hkv, hid) = (cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.hidden_size);
        let norm = |w: &mut WeightMap, name: &str, dim: usize| -> Result<RmsNorm> {
            Ok(RmsNorm::new(dev(w.take(name, &[dim])?), cfg.rms_norm_eps, cfg.family.is_gemma()))
        };
        let gemma = cfg.family.is_gemma();
        let linear =
            |w: &mut WeightMap, l: usize, m: Module, out: usize, inp: usize, bias: bool| -> Result<Linear> {
                let weight = dev(w.take(&names::weight(l, m, gemma), &[out, inp])?);
                let bias_name = names::bias(l, m, gemma);
                let b = if bias {
                    Some(dev(w.take(&bias_name, &[out])?))
                } else {
                    w.take_opt(&bias_name, &[out])?.map(dev)
                };
                Ok(Linear::new(weight, b))
            };
        let layer_norm =
            |w: &mut WeightMap, l: usize, m: Module, dim: usize| norm(w, &names::weight(l, m, gemma), dim);
        let embed = dev(w.take(names::EMBED, &[cfg.vocab_size, hid])?);
        let heads = Heads { num_heads: h as i64, num_kv_heads: hkv as i64, head_dim: hd as i64 };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let qk = cfg.family.has_qk_norm();
            let bias = cfg.attention_bias;
            // Weights a reuse layer of this kind does not have are dropped if the file has them.
            let discard = |w: &mut WeightMap, modules: &[Module]| {
                for &m in modules {
                    w.tensors.remove(&names::weight(l, m, gemma));
                    w.tensors.remove(&names::bias(l, m, gemma));
                }
            };
            let spec = plan.reuse.spec();
            if matches!(plan.role(l), LayerRole::Reuse { .. }) {
                discard(&mut w, spec.drops);
            }
            let attn = match (plan.role(l), plan.reuse) {
                (LayerRole::Reuse { .. }, ReuseKind::Uniattn | ReuseKind::SoftmaxOnly) => {
                    let v_proj = linear(&mut w, l, Module::V, hkv * hd, hid, bias)?;
                    let o_proj = linear(&mut w, l, Module::O, hid, h * hd, false)?;
                    let wc_name = names::weight(l, Module::Wc, gemma);
                    let w_c = match plan.reuse {
                        _ if !spec.compensation => None,
                        _ if zero_wc && !w.contains(&wc_name) => {
                            Some(Tensor::zeros([hid as i64, hid as i64], (kind, device)))
                        }
                        _ => Some(dev(w.take(&wc_name, &[hid, hid])?)),
                    };
                    Attention::Reuse(ReuseAttention {
                        v_proj,
                        o_proj,
                        w_c: w_c.map(|t| Linear::new(t, None)),
                        heads,
                    })
                }
                (LayerRole::Reuse { .. }, ReuseKind::Cla) => Attention::Cla(ClaAttention {
                    q_proj: linear(&mut w, l, Module::Q, h * hd, hid, bias)?,
                    o_proj: linear(&mut w, l, Module::O, hid, h * hd, false)?,
                    q_norm: if qk { Some(layer_norm(&mut w, l, Module::QNorm, hd)?) } else { None },
                    heads,
                    scale: cfg.attn_scale(),
                    softcap: cfg.attn_logit_softcapping,
                }),
                (LayerRole::Reuse { .. }, ReuseKind::Layerdrop) => Attention::Dropped,
                (LayerRole::Reuse { .. }, ReuseKind::KvHeads)
                | (LayerRole::Lead | LayerRole::Ordinary, _) => {
                    // A KV-head-merged layer's K/V come merged (a planned folder) or as the
                    // dense model has them (then merged here: the conversion is this mean).
                    let merged = plan.kv_heads(l, hkv);
                    let k_rows = w.tensors.get(&names::weight(l, Module::K, gemma)).map(|t| t.size()[0]);
                    let kv = if k_rows == Some((merged * hd) as i64) { merged } else { hkv };
                    let full = FullAttention {
                        q_proj: linear(&mut w, l, Module::Q, h * hd, hid, bias)?,
                        k_proj: linear(&mut w, l, Module::K, kv * hd, hid, bias)?,
                        v_proj: linear(&mut w, l, Module::V, kv * hd, hid, bias)?,
                        o_proj: linear(&mut w, l, Module::O, hid, h * hd, false)?,
                        q_norm: if qk { Some(layer_norm(&mut w, l, Module::QNorm, hd)?) } else { None },
                        k_norm: if qk { Some(layer_norm(&mut w, l, Module::KNorm, hd)?) } else { None },
                        heads: Heads { num_kv_heads: kv as i64, ..heads },
                        scale: cfg.attn_scale(),
                        softcap: cfg.attn_logit_softcapping,
                    };
                    Attention::Full(if kv == merged { full } else { full.merge_kv_heads(merged as i64) })
                }
            };
            let post_norm = |w: &mut WeightMap, m: Module| -> Result<Option<RmsNorm>> {
                gemma.then(|| layer_norm(w, l, m, hid)).transpose()
            };
            let (attn_norm, attn_post_norm, mlp_norm, mlp_post_norm) = (
                layer_norm(&mut w, l, Module::AttnNorm, hid)?,
                post_norm(&mut w, Module::AttnPostNorm)?,
                layer_norm(&mut w, l, Module::MlpNorm, hid)?,
                post_norm(&mut w, Module::MlpPostNorm)?,
            );
            let inter = cfg.intermediate_size;
            let mlp = Mlp {
                gate_proj: linear(&mut w, l, Module::Gate, inter, hid, false)?,
                up_proj: linear(&mut w, l, Module::Up, inter, hid, false)?,
                down_proj: linear(&mut w, l, Module::Down, hid, inter, false)?,
                gelu_tanh: gemma,
            };
            layers.push(DecoderLayer { attn_norm, attn_post_norm, attn, mlp_norm, mlp_post_norm, mlp });
        }
        let final_norm = norm(&mut w, names::FINAL_NORM, hid)?;
        let lm_head = if cfg.tie_word_embeddings {
            w.tensors.remove(names::LM_HEAD);
            None
        } else {
            Some(dev(w.take(names::LM_HEAD, &[cfg.vocab_size, hid])?))
        };
        if let Some(extra) = w.tensors.keys().find(|k| !k.contains("rotary_emb")) {
            return Err(Error::format(
                &w.source,
                format!("unexpected tensor {extra}: the weights do not match config.json and the plan"),
            ));
        }
        let stem = Stem { cfg, plan, embed, norm: final_norm, lm_head, kind, device };
        Ok(Transformer { stem, layers })
    }

    /// Turns a dense model into the planned one: each reuse layer of `plan` becomes the
    /// plan's reuse kind, dropping the weights it no longer uses; UniAttn layers take their
    /// `W_c` from `w_c` (by layer; zero where absent).
    pub fn apply_plan(mut self, plan: SuperBlockPlan, mut w_c: BTreeMap<usize, Tensor>) -> Result<Self> {
        if !self.stem.plan.is_dense() {
            return Err(Error::invalid(format!(
                "the model already has a plan ({})",
                self.stem.plan.describe()
            )));
        }
        plan.check_layers(self.stem.cfg.num_layers, std::path::Path::new("plan"))?;
        let (hid, kind, device) = (self.stem.cfg.hidden_size as i64, self.stem.kind, self.stem.device);
        let reuse = plan.reuse_layers();
        let layers = std::mem::take(&mut self.layers);
        self.layers = layers
            .into_iter()
            .enumerate()
            .map(|(l, mut layer)| {
                if reuse.contains(&l) {
                    layer.attn = match (layer.attn, plan.reuse) {
                        (Attention::Full(f), ReuseKind::Uniattn | ReuseKind::SoftmaxOnly) => {
                            let wc = (plan.reuse == ReuseKind::Uniattn).then(|| match w_c.remove(&l) {
                                Some(w) => Linear::new(w.to_kind(kind).to_device(device), None),
                                None => Linear::new(Tensor::zeros([hid, hid], (kind, device)), None),
                            });
                            Attention::Reuse(ReuseAttention {
                                v_proj: f.v_proj,
                                o_proj: f.o_proj,
                                w_c: wc,
                                heads: f.heads,
                            })
                        }
                        (Attention::Full(f), ReuseKind::Cla) => Attention::Cla(ClaAttention {
                            q_proj: f.q_proj,
                            o_proj: f.o_proj,
                            q_norm: f.q_norm,
                            heads: f.heads,
                            scale: f.scale,
                            softcap: f.softcap,
                        }),
                        (Attention::Full(_), ReuseKind::Layerdrop) => Attention::Dropped,
                        (Attention::Full(f), ReuseKind::KvHeads) => {
                            let merged = plan.kv_heads(l, f.heads.num_kv_heads as usize);
                            Attention::Full(f.merge_kv_heads(merged as i64))
                        }
                        (other, _) => other,
                    };
                }
                layer
            })
            .collect();
        self.stem.plan = plan;
        Ok(self)
    }

    /// The layer stack over packed documents (see [`PositionContext::packed`]), before the
    /// final norm and head (callers run [`Stem::head`] in chunks: a whole micro-batch's
    /// logits of a large vocabulary are gigabytes).
    pub fn hidden_packed(&self, ids: &Tensor, positions: &Tensor, docs: &Tensor) -> Tensor {
        let pc = PositionContext::packed(&self.stem, positions, docs);
        self.run_layers(self.stem.embed(ids), 0..self.layers.len(), &pc)
    }

    /// The training graph's full-sequence forward of `ids` (`[b, t]`) from position 0: f32
    /// logits `[b, t, vocab]` (f64 for f64 models). Incremental decoding lives in
    /// [`crate::engine`], which is tested against this.
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        self.stem.head(&self.hidden_states(ids))
    }

    /// The residual stream after the last layer (before the final norm) for `ids` (`[b, t]`)
    /// from position 0: callers that need the logits of a few positions run [`Stem::head`] on
    /// those alone.
    pub fn hidden_states(&self, ids: &Tensor) -> Tensor {
        let pc = PositionContext::full(&self.stem, ids.size()[1]);
        self.run_layers(self.stem.embed(ids), 0..self.layers.len(), &pc)
    }

    /// Runs layers `range` on the residual stream `h`. A range must not start inside a
    /// SuperBlock (its reuse layers need the lead's state), see [`Self::recompute_units`].
    pub fn run_layers(&self, mut h: Tensor, range: std::ops::Range<usize>, pc: &PositionContext) -> Tensor {
        let mut lead: Option<LeadState> = None;
        let want = match self.stem.plan.reuse.spec().lead_hands {
            LeadHandover::Probs => Want::Attention,
            LeadHandover::KeysValues => Want::KeysValues,
            LeadHandover::Nothing => Want::Output,
        };
        for l in range {
            // Data-parallel training sums the layer's gradients as soon as they are complete.
            h = crate::cuda::layer_reduce::mark_layer_input(h, l);
            let is_lead = self.stem.plan.role(l) == LayerRole::Lead;
            let want = if is_lead { want } else { Want::Output };
            let o = self.layers[l].forward(&h, &pc.layer(&self.stem, l), lead.as_ref(), want);
            if is_lead {
                lead = o.lead;
            }
            h = o.out;
        }
        h
    }

    /// The smallest layer ranges that can be recomputed on their own: ordinary layers one by
    /// one, each SuperBlock whole (its reuse layers read its lead's state).
    pub fn recompute_units(&self) -> Vec<std::ops::Range<usize>> {
        let mut units = Vec::new();
        let mut l = 0;
        while l < self.layers.len() {
            let end = self.stem.plan.blocks.iter().find(|&&(s, _)| s == l).map_or(l + 1, |&(_, e)| e);
            units.push(l..end);
            l = end;
        }
        units
    }

    /// Another model over the same tensors (nothing is copied), so that one loaded model can be
    /// converted to plan after plan without reloading or touching it.
    pub fn share(&self) -> Result<Self> {
        let tensors = self.named_tensors().into_iter().collect();
        let w = WeightMap { source: "(model in memory)".into(), tensors };
        Transformer::from_weights(
            w,
            self.stem.cfg.clone(),
            self.stem.plan.clone(),
            self.stem.kind,
            self.stem.device,
            false,
        )
    }

    /// Every tensor under its Hugging Face name (W_c as `v2_proj`), for saving.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.tensors_by_role().into_iter().map(|(n, _, t)| (n, t)).collect()
    }

    /// The names of the tensors that belong to `modules` (in any layer).
    pub fn names_of(&self, modules: &[Module]) -> Vec<String> {
        self.tensors_by_role()
            .into_iter()
            .filter(|(_, m, _)| m.is_some_and(|m| modules.contains(&m)))
            .map(|(n, ..)| n)
            .collect()
    }

    /// Every tensor with its name and the layer module it belongs to (`None`: the embedding,
    /// the final norm, the head).
    fn tensors_by_role(&self) -> Vec<(String, Option<Module>, Tensor)> {
        fn lin(m: Module, l: &Linear) -> (Module, &Tensor, Option<&Tensor>) {
            (m, &l.weight, l.bias.as_ref())
        }
        let gemma = self.stem.cfg.family.is_gemma();
        let mut out = vec![(names::EMBED.to_string(), None, self.stem.embed.shallow_clone())];
        for (l, layer) in self.layers.iter().enumerate() {
            let mut tensors: Vec<(Module, &Tensor, Option<&Tensor>)> = vec![
                (Module::AttnNorm, &layer.attn_norm.weight, None),
                (Module::MlpNorm, &layer.mlp_norm.weight, None),
            ];
            tensors.extend(layer.attn_post_norm.as_ref().map(|n| (Module::AttnPostNorm, &n.weight, None)));
            tensors.extend(layer.mlp_post_norm.as_ref().map(|n| (Module::MlpPostNorm, &n.weight, None)));
            match &layer.attn {
                Attention::Full(f) => {
                    tensors.extend([lin(Module::Q, &f.q_proj), lin(Module::K, &f.k_proj)]);
                    tensors.extend([lin(Module::V, &f.v_proj), lin(Module::O, &f.o_proj)]);
                    if let (Some(qn), Some(kn)) = (&f.q_norm, &f.k_norm) {
                        tensors
                            .extend([(Module::QNorm, &qn.weight, None), (Module::KNorm, &kn.weight, None)]);
                    }
                }
                Attention::Reuse(r) => {
                    tensors.extend([lin(Module::V, &r.v_proj), lin(Module::O, &r.o_proj)]);
                    tensors.extend(r.w_c.as_ref().map(|w| lin(Module::Wc, w)));
                }
                Attention::Cla(c) => {
                    tensors.extend([lin(Module::Q, &c.q_proj), lin(Module::O, &c.o_proj)]);
                    tensors.extend(c.q_norm.as_ref().map(|n| (Module::QNorm, &n.weight, None)));
                }
                Attention::Dropped => {}
            }
            let mlp = &layer.mlp;
            tensors.extend([
                lin(Module::Gate, &mlp.gate_proj),
                lin(Module::Up, &mlp.up_proj),
                lin(Module::Down, &mlp.down_proj),
            ]);
            for (m, w, b) in tensors {
                out.push((names::weight(l, m, gemma), Some(m), w.shallow_clone()));
                if let Some(b) = b {
                    out.push((names::bias(l, m, gemma), Some(m), b.shallow_clone()));
                }
            }
        }
        out.push((names::FINAL_NORM.to_string(), None, self.stem.norm.weight.shallow_clone()));
        if let Some(head) = &self.stem.lm_head {
            out.push((names::LM_HEAD.to_string(), None, head.shallow_clone()));
        }
        out
    }

    pub fn num_parameters(&self) -> usize {
        self.named_tensors().iter().map(|(_, t)| t.numel()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Family;
    use crate::testing::{tiny_config, tiny_model};

    fn ids() -> Tensor {
        Tensor::from_slice(&[3i64, 7, 1, 30, 12, 5, 9, 9, 2, 17, 4, 22, 8, 0, 11]).view([1, 15])
    }

    /// A step's masks, computed and looked up in an engine's tables, against the rule written
    /// out element by element: 0 where key j <= the query's position (and within the layer's
    /// window), -inf elsewhere, in the compute type; sliding-window layers (Gemma 3) included.
    #[test]
    fn masks_from_tables_follow_the_causal_rule() {
        for fam in [Family::Llama, Family::Gemma3] {
            for kind in [Kind::Float, Kind::BFloat16] {
                let cfg = tiny_config(fam);
                let model = tiny_model(&cfg, SuperBlockPlan::dense(4), kind, 1);
                let stem = &model.stem;
                let tables = PositionTables::new(stem, 64);
                let decode = Tensor::from_slice(&[0i64, 5, 17, 31]).view([4, 1]);
                let chunk = Tensor::arange_start(9, 14, (Kind::Int64, Device::Cpu)).view([1, 5]);
                for (positions, k_len) in [(decode, 32), (chunk, 16)] {
                    let computed = PositionContext::new(stem, &positions, k_len);
                    let looked_up = PositionContext::from_tables(stem, &tables, &positions, k_len);
                    let pos = Vec::<i64>::try_from(positions.reshape([-1])).unwrap();
                    let (b, q) = (positions.size()[0], positions.size()[1]);
                    for l in 0..cfg.num_layers {
                        let w = cfg.layer_window(l);
                        let want: Vec<f64> = pos
                            .iter()
                            .flat_map(|&p| {
                                (0..k_len).map(move |j| {
                                    let seen = j <= p && w.is_none_or(|w| p - j < w as i64);
                                    if seen {
                                        0.0
                                    } else {
                                        f64::NEG_INFINITY
                                    }
                                })
                            })
                            .collect();
                        let want = Tensor::from_slice(&want).view([b, 1, q, k_len]);
                        for (how, pc) in [("computed", &computed), ("from tables", &looked_up)] {
                            let got = pc.layer(stem, l).mask;
                            assert_eq!(got.kind(), kind, "{fam:?} layer {l} {how}");
                            assert!(
                                got.to_kind(Kind::Double).equal(&want),
                                "{fam:?} {kind:?} layer {l} {how}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn empty_plan_is_exactly_dense() {
        for fam in [Family::Llama, Family::Qwen2, Family::Gemma3, Family::Gemma2] {
            let cfg = tiny_config(fam);
            let dense = tiny_model(&cfg, SuperBlockPlan::dense(4), Kind::Double, 1);
            let a = dense.forward(&ids());
            let same = dense.apply_plan(SuperBlockPlan::dense(4), BTreeMap::new()).unwrap();
            assert!(a.equal(&same.forward(&ids())), "{fam:?}");
        }
    }

    /// Layer 1 gets layer 0's Q/K weights and norm, and layer 0 leaves the residual unchanged
    /// (zero o_proj and down_proj), so both compute the same P: reusing it changes nothing.
    #[test]
    fn reuse_of_identical_probabilities_is_exact() {
        for fam in [Family::Llama, Family::Qwen2, Family::Gemma3] {
            let mut cfg = tiny_config(fam);
            // Same RoPE and window for both layers of the block.
            cfg.sliding_window = None;
            cfg.rope_local_theta = None;
            let mut dense = tiny_model(&cfg, SuperBlockPlan::dense(4), Kind::Double, 2);
            let copy = |t: &Tensor| t.copy();
            let (first, rest) = dense.layers.split_at_mut(1);
            let (l0, l1) = (&mut first[0], &mut rest[0]);
            l1.attn_norm.weight = copy(&l0.attn_norm.weight);
            let (Attention::Full(a0), Attention::Full(a1)) = (&mut l0.attn, &mut l1.attn) else {
                unreachable!()
            };
            a1.q_proj = Linear::new(copy(&a0.q_proj.weight), a0.q_proj.bias.as_ref().map(copy));
            a1.k_proj = Linear::new(copy(&a0.k_proj.weight), a0.k_proj.bias.as_ref().map(copy));
            if let (Some(q0), Some(k0)) = (&a0.q_norm, &a0.k_norm) {
                a1.q_norm.as_mut().unwrap().weight = copy(&q0.weight);
                a1.k_norm.as_mut().unwrap().weight = copy(&k0.weight);
            }
            let _ = a0.o_proj.weight.zero_();
            let _ = l0.mlp.down_proj.weight.zero_();
            let want = dense.forward(&ids());
            let plan = SuperBlockPlan::from_blocks(vec![(0, 2)], 4).unwrap();
            let uni = dense.apply_plan(plan, BTreeMap::new()).unwrap();
            let got = uni.forward(&ids());
            let diff = (&got - &want).abs().max().double_value(&[]);
            assert!(diff < 1e-10, "{fam:?}: {diff}");
        }
    }

    /// Each baseline builds the architecture it claims, runs, and round-trips through its
    /// tensor names.
    #[test]
    fn baseline_variants_hold_only_their_weights() {
        let cfg = tiny_config(Family::Llama);
        for kind in ReuseKind::ALL {
            let plan = SuperBlockPlan::from_blocks(vec![(1, 4)], 4).unwrap().with_reuse(kind);
            let dense = tiny_model(&cfg, SuperBlockPlan::dense(4), Kind::Double, 4);
            let m = dense.apply_plan(plan.clone(), BTreeMap::new()).unwrap();
            let names: Vec<String> = m.named_tensors().into_iter().map(|(n, _)| n).collect();
            let has = |l: usize, t: &str| names.contains(&format!("model.layers.{l}.self_attn.{t}.weight"));
            let want: &[(&str, bool)] = match kind {
                ReuseKind::Uniattn => &[
                    ("q_proj", false),
                    ("k_proj", false),
                    ("v_proj", true),
                    ("o_proj", true),
                    ("v2_proj", true),
                ],
                ReuseKind::SoftmaxOnly => &[
                    ("q_proj", false),
                    ("k_proj", false),
                    ("v_proj", true),
                    ("o_proj", true),
                    ("v2_proj", false),
                ],
                ReuseKind::Cla => &[
                    ("q_proj", true),
                    ("k_proj", false),
                    ("v_proj", false),
                    ("o_proj", true),
                    ("v2_proj", false),
                ],
                ReuseKind::Layerdrop => &[
                    ("q_proj", false),
                    ("k_proj", false),
                    ("v_proj", false),
                    ("o_proj", false),
                    ("v2_proj", false),
                ],
                ReuseKind::KvHeads => &[
                    ("q_proj", true),
                    ("k_proj", true),
                    ("v_proj", true),
                    ("o_proj", true),
                    ("v2_proj", false),
                ],
            };
            for &(t, present) in want {
                assert_eq!(has(2, t), present, "{kind:?} layer 2 {t}");
                assert!(has(1, t) || t == "v2_proj", "{kind:?}: the lead keeps {t}");
            }
            let out = m.forward(&ids());
            assert!(out.isfinite().all().int64_value(&[]) == 1);
            // Rebuild from the tensors under the same plan.
            let w = WeightMap { source: "tiny".into(), tensors: m.named_tensors().into_iter().collect() };
            let again =
                Transformer::from_weights(w, cfg.clone(), plan, Kind::Double, Device::Cpu, false).unwrap();
            assert!(again.forward(&ids()).equal(&out), "{kind:?}");
        }
    }

    /// KV-head merging against its definition, computed another way: a dense model whose K/V
    /// heads in each group are replaced by the group's mean (so the merged heads are repeated,
    /// not shared) gives the same logits, in every family; and a merged model rebuilt from the
    /// dense file under the plan (the conversion at load) equals the one `apply_plan` made.
    #[test]
    fn kv_head_merging_is_the_mean_of_each_group() {
        for fam in [Family::Llama, Family::Qwen2, Family::Gemma3, Family::Gemma2] {
            let cfg = tiny_config(fam);
            let plan =
                SuperBlockPlan::from_blocks(vec![(0, 2), (2, 4)], 4).unwrap().with_reuse(ReuseKind::KvHeads);
            let dense = tiny_model(&cfg, SuperBlockPlan::dense(4), Kind::Double, 5);
            let tensors: BTreeMap<String, Tensor> = dense.named_tensors().into_iter().collect();
            // The reference: in layers 1 and 3, both KV heads (4 rows each) become their mean.
            let mut repeated = tensors.iter().map(|(n, t)| (n.clone(), t.copy())).collect::<BTreeMap<_, _>>();
            for l in [1, 3] {
                for m in ["k_proj", "v_proj"] {
                    for part in ["weight", "bias"] {
                        if let Some(t) = repeated.get_mut(&format!("model.layers.{l}.self_attn.{m}.{part}")) {
                            let mean = (t.narrow(0, 0, 4) + t.narrow(0, 4, 4)) / 2.0;
                            *t = Tensor::cat(&[&mean, &mean], 0);
                        }
                    }
                }
            }
            let w = |tensors: BTreeMap<String, Tensor>| WeightMap { source: "tiny".into(), tensors };
            let reference = Transformer::from_weights(
                w(repeated),
                cfg.clone(),
                SuperBlockPlan::dense(4),
                Kind::Double,
                Device::Cpu,
                false,
            )
            .unwrap()
            .forward(&ids());
            let before = dense.forward(&ids());
            let got = dense.apply_plan(plan.clone(), BTreeMap::new()).unwrap().forward(&ids());
            let diff = (&got - &reference).abs().max().double_value(&[]);
            assert!(diff < 1e-10, "{fam:?}: merged heads differ from repeated means by {diff}");
            assert!((&got - before).abs().max().double_value(&[]) > 1e-6, "{fam:?}: merging changed nothing");
            let loaded =
                Transformer::from_weights(w(tensors), cfg.clone(), plan, Kind::Double, Device::Cpu, false)
                    .unwrap()
                    .forward(&ids());
            assert!(loaded.equal(&got), "{fam:?}: merging at load differs from apply_plan");
        }
    }

    /// Autograd through lead and reuse layers (W_c included) against central differences, f64.
    #[test]
    fn gradients_match_finite_differences() {
        let cfg = tiny_config(Family::Llama);
        let plan = SuperBlockPlan::from_blocks(vec![(1, 4)], 4).unwrap();
        let model = tiny_model(&cfg, plan, Kind::Double, 3);
        let probe = Tensor::randn([1, 15, 32], (Kind::Double, Device::Cpu));
        let loss =
            |m: &Transformer| (m.forward(&ids()).log_softmax(-1, Kind::Double) * &probe).sum(Kind::Double);
        let params: Vec<(&str, Tensor)> = {
            let Attention::Full(lead) = &model.layers[1].attn else { unreachable!() };
            let Attention::Reuse(r2) = &model.layers[2].attn else { unreachable!() };
            let Attention::Reuse(r3) = &model.layers[3].attn else { unreachable!() };
            vec![
                ("lead q_proj", lead.q_proj.weight.shallow_clone()),
                ("lead k_proj", lead.k_proj.weight.shallow_clone()),
                ("reuse v_proj", r2.v_proj.weight.shallow_clone()),
                ("reuse W_c", r2.w_c.as_ref().unwrap().weight.shallow_clone()),
                ("last W_c", r3.w_c.as_ref().unwrap().weight.shallow_clone()),
                ("embedding", model.stem.embed.shallow_clone()),
            ]
        };
        for (_, p) in &params {
            let _ = p.set_requires_grad(true);
        }
        let l = loss(&model);
        l.backward();
        for (name, p) in &params {
            let grad = p.grad();
            let flat = p.view([-1]);
            for &i in &[0i64, 7, 19] {
                let orig = tch::no_grad(|| flat.double_value(&[i]));
                let at = |v: f64| {
                    tch::no_grad(|| {
                        let _ = flat.get(i).fill_(v);
                        loss(&model).double_value(&[])
                    })
                };
                // Central differences in f64: truncation error ~h^2, rounding ~1e-16/h.
                let h = 1e-5;
                let fd = (at(orig + h) - at(orig - h)) / (2.0 * h);
                at(orig);
                let ad = grad.view([-1]).double_value(&[i]);
                assert!(
                    (fd - ad).abs() <= 1e-8 + 1e-6 * fd.abs(),
                    "{name}[{i}]: autograd {ad} vs finite difference {fd}"
                );
            }
        }
    }
}
