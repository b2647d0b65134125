//! One decoder-only transformer for every family, with UniAttn's SuperBlocks. Family
//! differences come from [`ModelConfig`] flags; the lead/reuse split comes from the
//! [`SuperBlockPlan`].
use super::attention::{Attention, FullAttention, Heads, ReuseAttention};
use super::kv_cache::KvCache;
use super::nn::{Linear, RmsNorm};
use super::rope::RopeAngles;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::plan::{LayerRole, SuperBlockPlan};
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
        let g = self.gate_proj.forward(x);
        let g = if self.gelu_tanh { g.gelu("tanh") } else { g.silu() };
        self.down_proj.forward(&(g * self.up_proj.forward(x)))
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
}

impl DecoderLayer {
    /// The attention block's contribution before it is added to the residual (`attn` in the
    /// brief, post-norm included), plus the lead's probabilities when `want_probs`.
    pub fn attention_branch(
        &self,
        x_normed: &Tensor,
        ctx: &LayerContext,
        lead_probs: Option<&Tensor>,
        cache: Option<&mut super::kv_cache::LayerCache>,
        want_probs: bool,
    ) -> (Tensor, Option<Tensor>) {
        let (a, p) = match &self.attn {
            Attention::Full(f) => f.forward(x_normed, ctx.rope, ctx.mask, cache, want_probs),
            Attention::Reuse(r) => {
                let p = lead_probs.expect("plan guarantees a lead runs before its reuse layers");
                (r.forward(x_normed, p, cache), None)
            }
        };
        let a = match &self.attn_post_norm {
            Some(n) => n.forward(&a),
            None => a,
        };
        (a, p)
    }

    pub fn mlp_branch(&self, h: &Tensor) -> Tensor {
        let m = self.mlp.forward(&self.mlp_norm.forward(h));
        match &self.mlp_post_norm {
            Some(n) => n.forward(&m),
            None => m,
        }
    }
}

pub struct Transformer {
    pub cfg: ModelConfig,
    pub plan: SuperBlockPlan,
    pub embed: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `None` when tied to the embedding.
    pub lm_head: Option<Tensor>,
    pub kind: Kind,
    pub device: Device,
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
            Ok(RmsNorm {
                weight: dev(w.take(name, &[dim])?),
                eps: cfg.rms_norm_eps,
                plus_one: cfg.family.is_gemma(),
            })
        };
        let linear = |w: &mut WeightMap, name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            let weight = dev(w.take(&format!("{name}.weight"), &[out, inp])?);
            let b = if bias {
                Some(dev(w.take(&format!("{name}.bias"), &[out])?))
            } else {
                w.take_opt(&format!("{name}.bias"), &[out])?.map(dev)
            };
            Ok(Linear::new(weight, b))
        };
        let embed = dev(w.take("model.embed_tokens.weight", &[cfg.vocab_size, hid])?);
        let heads = Heads { num_heads: h as i64, num_kv_heads: hkv as i64, head_dim: hd as i64 };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let gemma = cfg.family.is_gemma();
            let v_proj = linear(&mut w, &format!("{p}.self_attn.v_proj"), hkv * hd, hid, cfg.attention_bias)?;
            let o_proj = linear(&mut w, &format!("{p}.self_attn.o_proj"), hid, h * hd, false)?;
            let attn = match plan.role(l) {
                LayerRole::Reuse { .. } => {
                    for m in ["q_proj", "k_proj"] {
                        for s in ["weight", "bias"] {
                            w.tensors.remove(&format!("{p}.self_attn.{m}.{s}"));
                        }
                    }
                    for n in ["q_norm", "k_norm"] {
                        w.tensors.remove(&format!("{p}.self_attn.{n}.weight"));
                    }
                    let wc_name = format!("{p}.self_attn.v2_proj.weight");
                    let w_c = if zero_wc && !w.contains(&wc_name) {
                        Tensor::zeros([hid as i64, hid as i64], (kind, device))
                    } else {
                        dev(w.take(&wc_name, &[hid, hid])?)
                    };
                    Attention::Reuse(ReuseAttention { v_proj, o_proj, w_c: Linear::new(w_c, None), heads })
                }
                LayerRole::Lead | LayerRole::Ordinary => {
                    let qk = cfg.family.has_qk_norm();
                    Attention::Full(FullAttention {
                        q_proj: linear(
                            &mut w,
                            &format!("{p}.self_attn.q_proj"),
                            h * hd,
                            hid,
                            cfg.attention_bias,
                        )?,
                        k_proj: linear(
                            &mut w,
                            &format!("{p}.self_attn.k_proj"),
                            hkv * hd,
                            hid,
                            cfg.attention_bias,
                        )?,
                        v_proj,
                        o_proj,
                        q_norm: if qk {
                            Some(norm(&mut w, &format!("{p}.self_attn.q_norm.weight"), hd)?)
                        } else {
                            None
                        },
                        k_norm: if qk {
                            Some(norm(&mut w, &format!("{p}.self_attn.k_norm.weight"), hd)?)
                        } else {
                            None
                        },
                        heads,
                        scale: cfg.attn_scale(),
                        softcap: cfg.attn_logit_softcapping,
                    })
                }
            };
            let (attn_norm, attn_post_norm, mlp_norm, mlp_post_norm) = if gemma {
                (
                    norm(&mut w, &format!("{p}.input_layernorm.weight"), hid)?,
                    Some(norm(&mut w, &format!("{p}.post_attention_layernorm.weight"), hid)?),
                    norm(&mut w, &format!("{p}.pre_feedforward_layernorm.weight"), hid)?,
                    Some(norm(&mut w, &format!("{p}.post_feedforward_layernorm.weight"), hid)?),
                )
            } else {
                (
                    norm(&mut w, &format!("{p}.input_layernorm.weight"), hid)?,
                    None,
                    norm(&mut w, &format!("{p}.post_attention_layernorm.weight"), hid)?,
                    None,
                )
            };
            let inter = cfg.intermediate_size;
            let mlp = Mlp {
                gate_proj: linear(&mut w, &format!("{p}.mlp.gate_proj"), inter, hid, false)?,
                up_proj: linear(&mut w, &format!("{p}.mlp.up_proj"), inter, hid, false)?,
                down_proj: linear(&mut w, &format!("{p}.mlp.down_proj"), hid, inter, false)?,
                gelu_tanh: gemma,
            };
            layers.push(DecoderLayer { attn_norm, attn_post_norm, attn, mlp_norm, mlp_post_norm, mlp });
        }
        let final_norm = norm(&mut w, "model.norm.weight", hid)?;
        let lm_head = if cfg.tie_word_embeddings {
            w.tensors.remove("lm_head.weight");
            None
        } else {
            Some(dev(w.take("lm_head.weight", &[cfg.vocab_size, hid])?))
        };
        if let Some(extra) = w.tensors.keys().find(|k| !k.contains("rotary_emb")) {
            return Err(Error::format(
                &w.source,
                format!("unexpected tensor {extra}: the weights do not match config.json and the plan"),
            ));
        }
        Ok(Transformer { cfg, plan, embed, layers, norm: final_norm, lm_head, kind, device })
    }

    /// Token embeddings, scaled by sqrt(hidden) in Gemma (in the compute dtype, as HF does).
    pub fn embed(&self, ids: &Tensor) -> Tensor {
        let h = Tensor::embedding(&self.embed, ids, -1, false, false);
        if self.cfg.family.is_gemma() {
            let scale =
                Tensor::from((self.cfg.hidden_size as f64).sqrt()).to_kind(self.kind).to_device(self.device);
            h * scale
        } else {
            h
        }
    }

    /// Final norm, LM head and (Gemma 2) soft-capping. Returns f32 logits.
    pub fn head(&self, h: &Tensor) -> Tensor {
        let h = self.norm.forward(h);
        let logits =
            h.linear::<Tensor>(self.lm_head.as_ref().unwrap_or(&self.embed), None).to_kind(Kind::Float);
        match self.cfg.final_logit_softcapping {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    /// Additive causal mask `[b, 1, q, k]` for queries at `positions` over keys `0..k_len`,
    /// restricted to a sliding `window` when given.
    pub fn causal_mask(&self, positions: &Tensor, k_len: i64, window: Option<usize>) -> Tensor {
        let kp = Tensor::arange(k_len, (Kind::Int64, self.device)).view([1, 1, k_len]);
        let qp = positions.unsqueeze(-1);
        let mut allowed = kp.le_tensor(&qp);
        if let Some(w) = window {
            allowed = allowed.logical_and(&(&qp - &kp).lt(w as i64));
        }
        let zero = Tensor::zeros([1], (self.kind, self.device));
        let neg = Tensor::full([1], f64::NEG_INFINITY, (self.kind, self.device));
        zero.where_self(&allowed, &neg).unsqueeze(1)
    }

    /// Runs the whole stack on `ids` (`[b, q]`) following `cache` (positions continue from
    /// `cache.len`). Returns f32 logits `[b, q, vocab]`.
    pub fn forward(&self, ids: &Tensor, mut cache: Option<&mut KvCache>) -> Tensor {
        let (b, q) = (ids.size()[0], ids.size()[1]);
        let start = cache.as_ref().map_or(0, |c| c.len);
        let positions = Tensor::arange_start(start, start + q, (Kind::Int64, self.device))
            .unsqueeze(0)
            .expand([b, q], false);
        let mut h = self.embed(ids);
        let mut contexts: BTreeMap<(Option<usize>, u64), (RopeAngles, Tensor)> = BTreeMap::new();
        let mut lead_probs: Option<Tensor> = None;
        for (l, layer) in self.layers.iter().enumerate() {
            let window = self.cfg.layer_window(l);
            let theta = self.cfg.layer_rope_theta(l);
            let (rope, mask) = contexts.entry((window, theta.to_bits())).or_insert_with(|| {
                (
                    RopeAngles::new(&positions, self.cfg.head_dim, theta, self.kind),
                    self.causal_mask(&positions, start + q, window),
                )
            });
            let ctx = LayerContext { rope, mask };
            let role = self.plan.role(l);
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            let x = layer.attn_norm.forward(&h);
            let (a, p) =
                layer.attention_branch(&x, &ctx, lead_probs.as_ref(), layer_cache, role == LayerRole::Lead);
            if role == LayerRole::Lead {
                lead_probs = p;
            }
            // Out of place: autograd needs the residual that the norms saved.
            h = a + &h;
            h = layer.mlp_branch(&h) + &h;
        }
        if let Some(c) = cache {
            c.len += q;
        }
        self.head(&h)
    }

    /// Every tensor under its Hugging Face name (W_c as `v2_proj`), for saving.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.shallow_clone())];
        let lin = |out: &mut Vec<(String, Tensor)>, name: String, l: &Linear| {
            out.push((format!("{name}.weight"), l.weight.shallow_clone()));
            if let Some(b) = &l.bias {
                out.push((format!("{name}.bias"), b.shallow_clone()));
            }
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let gemma = self.cfg.family.is_gemma();
            out.push((format!("{p}.input_layernorm.weight"), layer.attn_norm.weight.shallow_clone()));
            let mlp_norm_name = if gemma { "pre_feedforward_layernorm" } else { "post_attention_layernorm" };
            out.push((format!("{p}.{mlp_norm_name}.weight"), layer.mlp_norm.weight.shallow_clone()));
            if let Some(n) = &layer.attn_post_norm {
                out.push((format!("{p}.post_attention_layernorm.weight"), n.weight.shallow_clone()));
            }
            if let Some(n) = &layer.mlp_post_norm {
                out.push((format!("{p}.post_feedforward_layernorm.weight"), n.weight.shallow_clone()));
            }
            match &layer.attn {
                Attention::Full(f) => {
                    lin(&mut out, format!("{p}.self_attn.q_proj"), &f.q_proj);
                    lin(&mut out, format!("{p}.self_attn.k_proj"), &f.k_proj);
                    lin(&mut out, format!("{p}.self_attn.v_proj"), &f.v_proj);
                    lin(&mut out, format!("{p}.self_attn.o_proj"), &f.o_proj);
                    if let (Some(qn), Some(kn)) = (&f.q_norm, &f.k_norm) {
                        out.push((format!("{p}.self_attn.q_norm.weight"), qn.weight.shallow_clone()));
                        out.push((format!("{p}.self_attn.k_norm.weight"), kn.weight.shallow_clone()));
                    }
                }
                Attention::Reuse(r) => {
                    lin(&mut out, format!("{p}.self_attn.v_proj"), &r.v_proj);
                    lin(&mut out, format!("{p}.self_attn.o_proj"), &r.o_proj);
                    lin(&mut out, format!("{p}.self_attn.v2_proj"), &r.w_c);
                }
            }
            lin(&mut out, format!("{p}.mlp.gate_proj"), &layer.mlp.gate_proj);
            lin(&mut out, format!("{p}.mlp.up_proj"), &layer.mlp.up_proj);
            lin(&mut out, format!("{p}.mlp.down_proj"), &layer.mlp.down_proj);
        }
        out.push(("model.norm.weight".to_string(), self.norm.weight.shallow_clone()));
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), head.shallow_clone()));
        }
        out
    }

    pub fn num_parameters(&self) -> usize {
        self.named_tensors().iter().map(|(_, t)| t.numel()).sum()
    }
}
