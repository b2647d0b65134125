//! The decoder layers as the engine runs them. Built by taking the training graph's layers
//! apart: projections that read the same input become one GEMM (Q|K|V in full layers, gate|up
//! in the MLP), and so do those whose sums add up (a reuse layer's output projection and its
//! compensation, `[W_o | W_c]` over `[attention | x]`), so a decode step launches fewer, larger
//! kernels. Reuse layers hold no Q/K weights, cache V only, and compute no scores or softmax;
//! in a decode step of up to 32 sequences on CUDA their lead attends for them
//! ([`attend_ahead`]), and one kernel norms their input, projects their values and adds the
//! current key's term ([`kernels::reuse_attention_decode`]).
use super::kv_cache::{CacheKind, KvCache};
use crate::cuda::kernels::{self, AheadInputs, GemvOut, HeadLayout, LeadSums};
use crate::model::attention::{attend, attend_ahead, Attention, Heads, LeadAttention, Want};
use crate::model::nn::{Linear, NormedInput, RmsNorm};
use crate::model::rope::RopeAngles;
use crate::model::transformer::{DecoderLayer, Mlp};
use tch::Tensor;

/// The first `width` features of the fused projection that `first` (its first part) is a view
/// of: Q and K side by side, without a copy.
fn qkv_prefix(first: &Tensor, width: i64) -> Tensor {
    let s = first.size();
    let stride = first.stride();
    first.as_strided([s[0], s[1], width], stride, None)
}

/// `lin(norm(h))`, a fused projection whose rows are `layout`'s heads, with RoPE on its query
/// and key heads and its keys and values written into the cache `slabs` (`(keys, values)` from
/// the batch's first slot; none for a CLA layer's queries): at one row all in the
/// matrix-vector kernel, else the projection and one fused RoPE kernel. Returns the projection
/// and the rotated queries (`[n, q, t, dim]`), or no queries where neither kernel applies and
/// the caller composes.
fn project_rotated(
    x: &NormedInput,
    lin: &Linear,
    step: &Step,
    layout: HeadLayout,
    slabs: (Option<Tensor>, Option<Tensor>),
) -> (Tensor, Option<Tensor>) {
    let (keys, values) = (slabs.0.as_ref(), slabs.1.as_ref());
    let (positions, cos, sin_signed) = (step.positions, &step.rope.cos, &step.rope.sin_signed);
    let out = GemvOut::Rope { positions, cos, sin_signed, layout, keys, values };
    if let Some(y) = x.gemv(&lin.weight, lin.bias.as_ref(), out) {
        // One row: the rotated queries lead the output, in the order `[1, q, 1, dim]` reads.
        let q = y.narrow(-1, 0, layout.q * layout.dim).reshape([1, layout.q, 1, layout.dim]);
        return (y, Some(q));
    }
    let y = x.linear(lin);
    let q = kernels::rope_kv_write(&y, positions, cos, sin_signed, layout, keys, values);
    (y, q)
}

/// Projections whose sums add up, as one over their inputs side by side: `[W_a | W_b]` over
/// `[a | b]`, the biases added.
fn fuse_inputs(parts: &[&Linear]) -> Linear {
    let weight = Tensor::cat(&parts.iter().map(|l| &l.weight).collect::<Vec<_>>(), 1);
    let bias = parts.iter().filter_map(|l| l.bias.as_ref()).fold(None, |sum: Option<Tensor>, b| match sum {
        Some(s) => Some(s + b),
        None => Some(b.shallow_clone()),
    });
    Linear::new(weight, bias)
}

/// Concatenates projections along their outputs; a missing bias becomes zeros.
fn fuse(parts: &[&Linear]) -> Linear {
    let weight = Tensor::cat(&parts.iter().map(|l| &l.weight).collect::<Vec<_>>(), 0);
    let bias = parts.iter().any(|l| l.bias.is_some()).then(|| {
        let b: Vec<Tensor> = parts
            .iter()
            .map(|l| match &l.bias {
                Some(b) => b.shallow_clone(),
                None => l.weight.new_zeros([l.out_features()], (l.weight.kind(), l.weight.device())),
            })
            .collect();
        Tensor::cat(&b, 0)
    });
    Linear::new(weight, bias)
}

pub enum InferenceAttention {
    Full {
        qkv: Linear,
        o_proj: Linear,
        q_norm: Option<RmsNorm>,
        k_norm: Option<RmsNorm>,
        heads: Heads,
        scale: f64,
        softcap: Option<f64>,
    },
    /// `o_proj` is `[W_o | W_c]` where `compensated`: one GEMM over `[attention | x]` adds
    /// the attention's projection and the compensation `x W_c`.
    Reuse {
        v_proj: Linear,
        o_proj: Linear,
        heads: Heads,
        compensated: bool,
    },
    Cla {
        q_proj: Linear,
        o_proj: Linear,
        q_norm: Option<RmsNorm>,
        heads: Heads,
        scale: f64,
        softcap: Option<f64>,
        lead: usize,
    },
    Dropped,
}

/// An attention block's result before its output projection: the projection's input (the
/// merged heads; a compensated reuse layer's followed by its normed input `x`) and the
/// projection.
struct AttnOut<'a> {
    input: Tensor,
    o_proj: &'a Linear,
}

/// `h += x W^T` in place: at one row the decode matrix-vector kernel with the add in its
/// epilogue; else one GEMM that accumulates into `h` (cuBLAS's beta = 1), where a separate
/// projection and add would be two kernels and a temporary.
fn add_projection(h: &mut Tensor, x: &Tensor, lin: &Linear) {
    if lin.bias.is_none()
        && kernels::decode_gemv(x, None, &lin.weight, None, GemvOut::AddInto { h }).is_some()
    {
        return;
    }
    match &lin.bias {
        None => {
            let (out, inp) = (lin.out_features(), x.size()[x.dim() - 1]);
            let mut flat = h.view([-1, out]);
            let _ = flat.addmm_(&x.reshape([-1, inp]), &lin.weight.tr());
        }
        Some(_) => *h += lin.forward(x),
    }
}

pub struct InferenceMlp {
    gate_up: Linear,
    down: Linear,
    gelu_tanh: bool,
}

impl InferenceMlp {
    fn new(m: Mlp) -> Self {
        InferenceMlp { gate_up: fuse(&[&m.gate_proj, &m.up_proj]), down: m.down_proj, gelu_tanh: m.gelu_tanh }
    }

    /// The activations the down projection reads: `act(x W_gate) * (x W_up)`; at one row one
    /// matrix-vector kernel does the norm, both products and the activation.
    fn hidden(&self, x: &NormedInput) -> Tensor {
        let gated = GemvOut::Gated { gelu_tanh: self.gelu_tanh };
        if let Some(out) = x.gemv(&self.gate_up.weight, self.gate_up.bias.as_ref(), gated) {
            return out;
        }
        let gu = x.linear(&self.gate_up);
        if let Some(out) = kernels::gated_act(&gu, self.gelu_tanh) {
            return out;
        }
        let half = gu.size()[2] / 2;
        let g = gu.narrow(-1, 0, half);
        let g = if self.gelu_tanh { g.gelu("tanh") } else { g.silu() };
        g * gu.narrow(-1, half, half)
    }

    fn forward(&self, x: &NormedInput) -> Tensor {
        self.down.forward(&self.hidden(x))
    }
}

pub struct InferenceLayer {
    attn_norm: RmsNorm,
    attn_post_norm: Option<RmsNorm>,
    pub attn: InferenceAttention,
    mlp_norm: RmsNorm,
    mlp_post_norm: Option<RmsNorm>,
    mlp: InferenceMlp,
}

/// Where a forward call reads and writes: rows `slot0..slot0 + n` of the cache, queries at
/// `positions` (`[n, q]`), keys `0..k_len`.
pub struct Step<'a> {
    pub slot0: usize,
    pub positions: &'a Tensor,
    pub k_len: i64,
    /// A decode step's SuperBlock lead: its reuse layers, for which it may attend ahead
    /// ([`attend_ahead`]); empty elsewhere.
    pub reuse_layers: &'a [usize],
    pub rope: &'a RopeAngles,
    /// Additive mask `[n, 1, q, k_len]`.
    pub mask: &'a Tensor,
    /// The mask is plain causal from position 0, so the fused kernel's own causal flag serves.
    pub causal_from_zero: bool,
}

impl InferenceLayer {
    /// `lead` is the layer whose cache a CLA layer reads.
    pub fn new(mut layer: DecoderLayer, lead: Option<usize>) -> Self {
        layer.freeze_norms();
        let attn = match layer.attn {
            Attention::Full(f) => InferenceAttention::Full {
                qkv: fuse(&[&f.q_proj, &f.k_proj, &f.v_proj]),
                o_proj: f.o_proj,
                q_norm: f.q_norm,
                k_norm: f.k_norm,
                heads: f.heads,
                scale: f.scale,
                softcap: f.softcap,
            },
            Attention::Reuse(r) => {
                let compensated = r.w_c.is_some();
                let o_proj = match &r.w_c {
                    Some(w) => fuse_inputs(&[&r.o_proj, w]),
                    None => r.o_proj,
                };
                InferenceAttention::Reuse { v_proj: r.v_proj, o_proj, heads: r.heads, compensated }
            }
            Attention::Cla(c) => InferenceAttention::Cla {
                q_proj: c.q_proj,
                o_proj: c.o_proj,
                q_norm: c.q_norm,
                heads: c.heads,
                scale: c.scale,
                softcap: c.softcap,
                lead: lead.expect("a CLA layer has a lead"),
            },
            Attention::Dropped => InferenceAttention::Dropped,
        };
        InferenceLayer {
            attn_norm: layer.attn_norm,
            attn_post_norm: layer.attn_post_norm,
            attn,
            mlp_norm: layer.mlp_norm,
            mlp_post_norm: layer.mlp_post_norm,
            mlp: InferenceMlp::new(layer.mlp),
        }
    }

    pub fn cache_kind(&self) -> CacheKind {
        match self.attn {
            InferenceAttention::Full { .. } => CacheKind::KeysValues,
            InferenceAttention::Reuse { .. } => CacheKind::ValuesOnly,
            InferenceAttention::Cla { .. } | InferenceAttention::Dropped => CacheKind::Nothing,
        }
    }

    /// The cache entries this layer reads for each past token in a decode step: its own, its
    /// lead's keys as well (a reuse layer whose lead hands over queries and keys, not its map),
    /// or (CLA) its lead's keys and values, which it reads again after the lead.
    pub fn cache_read(&self, lead_hands_map: bool) -> CacheKind {
        match self.attn {
            InferenceAttention::Full { .. } | InferenceAttention::Cla { .. } => CacheKind::KeysValues,
            InferenceAttention::Reuse { .. } if lead_hands_map => CacheKind::ValuesOnly,
            InferenceAttention::Reuse { .. } => CacheKind::KeysValues,
            InferenceAttention::Dropped => CacheKind::Nothing,
        }
    }

    /// Bytes of the weights a forward call reads.
    pub fn weight_bytes(&self) -> usize {
        let t = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
        let lin = |l: &Linear| t(&l.weight) + l.bias.as_ref().map_or(0, t);
        let norm = |n: &RmsNorm| t(&n.weight);
        let opt = |n: &Option<RmsNorm>| n.as_ref().map_or(0, norm);
        let attn = match &self.attn {
            InferenceAttention::Full { qkv, o_proj, q_norm, k_norm, .. } => {
                lin(qkv) + lin(o_proj) + opt(q_norm) + opt(k_norm)
            }
            InferenceAttention::Reuse { v_proj, o_proj, .. } => lin(v_proj) + lin(o_proj),
            InferenceAttention::Cla { q_proj, o_proj, q_norm, .. } => lin(q_proj) + lin(o_proj) + opt(q_norm),
            InferenceAttention::Dropped => 0,
        };
        attn + norm(&self.attn_norm)
            + opt(&self.attn_post_norm)
            + norm(&self.mlp_norm)
            + opt(&self.mlp_post_norm)
            + lin(&self.mlp.gate_up)
            + lin(&self.mlp.down)
    }

    /// One layer on the residual stream `h` (`[n, q, hidden]`), in place. A lead whose reuse
    /// layers take its attention (`hands`: in the form [`Want::Probs`] or
    /// [`Want::Attention`] names) leaves it in `lead` for its block; reuse layers read it.
    pub fn forward(
        &self,
        l: usize,
        h: &mut Tensor,
        step: &Step,
        cache: &mut KvCache,
        hands: Option<Want>,
        lead: &mut Option<LeadAttention>,
    ) {
        let x = NormedInput::new(h, &self.attn_norm);
        if let Some(AttnOut { input, o_proj }) = self.attention(l, &x, step, cache, hands, lead) {
            match &self.attn_post_norm {
                // The residual add rides in the output GEMM (one kernel instead of two).
                None => add_projection(h, &input, o_proj),
                Some(n) => *h += n.forward(&o_proj.forward(&input)),
            }
        }
        let x = NormedInput::new(h, &self.mlp_norm);
        match &self.mlp_post_norm {
            None => add_projection(h, &self.mlp.hidden(&x), &self.mlp.down),
            Some(n) => *h += n.forward(&self.mlp.forward(&x)),
        }
    }

    fn attention(
        &self,
        l: usize,
        x: &NormedInput,
        step: &Step,
        cache: &mut KvCache,
        hands: Option<Want>,
        lead: &mut Option<LeadAttention>,
    ) -> Option<AttnOut<'_>> {
        let n = step.positions.size()[0];
        match &self.attn {
            InferenceAttention::Full { qkv, o_proj, q_norm, k_norm, heads: h, scale, softcap } => {
                let layout =
                    HeadLayout { q: h.num_heads, k: h.num_kv_heads, v: h.num_kv_heads, dim: h.head_dim };
                let (y, fused) = if q_norm.is_none() && k_norm.is_none() {
                    project_rotated(x, qkv, step, layout, cache.slabs(l, step.slot0))
                } else {
                    (x.linear(qkv), None)
                };
                let q = match fused {
                    Some(q) => q,
                    None => {
                        let (qd, kvd) = (h.num_heads * h.head_dim, h.num_kv_heads * h.head_dim);
                        let parts = y.split_with_sizes([qd, kvd, kvd], -1);
                        let (q, k) = if let (Some(qn), Some(kn)) = (q_norm, k_norm) {
                            let q = qn.forward(&h.split(&parts[0], h.num_heads));
                            let k = kn.forward(&h.split(&parts[1], h.num_kv_heads));
                            (step.rope.apply(&q), step.rope.apply(&k))
                        } else {
                            // Q and K rotated together: one set of RoPE kernels instead of two.
                            let qk = h.split(&qkv_prefix(&parts[0], qd + kvd), h.num_heads + h.num_kv_heads);
                            let qk = step.rope.apply(&qk);
                            (qk.narrow(1, 0, h.num_heads), qk.narrow(1, h.num_heads, h.num_kv_heads))
                        };
                        let v = h.split(&parts[2], h.num_kv_heads);
                        cache.write(l, step.slot0, step.positions, Some(&k), &v);
                        q
                    }
                };
                let keys = cache.keys(l, step.slot0, n, step.k_len);
                let values = cache.values(l, step.slot0, n, step.k_len);
                let want = hands.unwrap_or(Want::Output);
                let ahead_fits = softcap.is_none() && !step.causal_from_zero && !step.reuse_layers.is_empty();
                if want == Want::Attention && ahead_fits {
                    let reuse_values: Vec<Tensor> = step
                        .reuse_layers
                        .iter()
                        .map(|&r| cache.values(r, step.slot0, n, step.k_len))
                        .collect();
                    let inputs = AheadInputs { current_key: step.positions, reuse_values: &reuse_values };
                    let attending = (&q, &keys, &values, step.mask);
                    if let Some((out, attn)) = attend_ahead(attending, *scale, step.reuse_layers, inputs) {
                        *lead = Some(attn);
                        return Some(AttnOut { input: h.merge(&out), o_proj });
                    }
                }
                let (out, attn) =
                    attend(h, &q, &keys, &values, step.mask, step.causal_from_zero, *scale, *softcap, want);
                if hands.is_some() {
                    *lead = attn;
                }
                Some(AttnOut { input: h.merge(&out), o_proj })
            }
            InferenceAttention::Reuse { v_proj, o_proj, heads: h, compensated } => {
                let layout = HeadLayout { q: 0, k: 0, v: h.num_kv_heads, dim: h.head_dim };
                let lead = lead.as_ref().expect("the plan runs a lead before its reuse layers");
                let ahead = lead.ahead_for(l);
                // Where the lead attended for this layer: one kernel up to the output projection,
                // whose input is [attention | x] (the attention alone where not compensated).
                if let (Some((a, r)), (_, Some(values))) = (ahead, cache.slabs(l, step.slot0)) {
                    let (stream, norm) = x.input();
                    let sums = a.sums.get(r as i64);
                    let lead_sums = LeadSums { sums: &sums, current: &a.current };
                    let v = (&v_proj.weight, v_proj.bias.as_ref());
                    if let Some(both) =
                        kernels::reuse_attention_decode(stream, norm, v, step.positions, &values, lead_sums)
                    {
                        let input =
                            if *compensated { both } else { both.narrow(-1, 0, h.num_heads * h.head_dim) };
                        return Some(AttnOut { input, o_proj });
                    }
                }
                let (y, written) = project_rotated(x, v_proj, step, layout, cache.slabs(l, step.slot0));
                let v_now = h.split(&y, h.num_kv_heads);
                if written.is_none() {
                    cache.write(l, step.slot0, step.positions, None, &v_now);
                }
                let out = match ahead {
                    Some((a, r)) => a.attention(r, &v_now),
                    None => lead.apply(h, &cache.values(l, step.slot0, n, step.k_len)),
                };
                let merged = h.merge(&out);
                let input = if *compensated { Tensor::cat(&[&merged, x.normed()], -1) } else { merged };
                Some(AttnOut { input, o_proj })
            }
            InferenceAttention::Cla { q_proj, o_proj, q_norm, heads: h, scale, softcap, lead } => {
                let layout = HeadLayout { q: h.num_heads, k: 0, v: 0, dim: h.head_dim };
                let (y, fused) = match q_norm {
                    None => project_rotated(x, q_proj, step, layout, (None, None)),
                    Some(_) => (x.linear(q_proj), None),
                };
                let q = fused.unwrap_or_else(|| {
                    let q = h.split(&y, h.num_heads);
                    step.rope.apply(&q_norm.as_ref().map_or(q.shallow_clone(), |qn| qn.forward(&q)))
                });
                let keys = cache.keys(*lead, step.slot0, n, step.k_len);
                let values = cache.values(*lead, step.slot0, n, step.k_len);
                let (out, _) = attend(
                    h,
                    &q,
                    &keys,
                    &values,
                    step.mask,
                    step.causal_from_zero,
                    *scale,
                    *softcap,
                    Want::Output,
                );
                Some(AttnOut { input: h.merge(&out), o_proj })
            }
            InferenceAttention::Dropped => None,
        }
    }
}
