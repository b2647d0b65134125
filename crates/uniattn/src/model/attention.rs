//! Attention in its two UniAttn roles. [`FullAttention`] is the ordinary computation (also used
//! by SuperBlock leads, which additionally hand over their attention). [`ReuseAttention`] holds
//! no Q/K weights: it takes its lead's attention and adds the linear compensation `X W_c`.
use super::nn::{accumulate_kind, Linear, RmsNorm};
use super::rope::RopeAngles;
use crate::cuda::kernels;
use tch::Tensor;

/// Head layout shared by both variants.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
}

impl Heads {
    fn groups(&self) -> i64 {
        self.num_heads / self.num_kv_heads
    }

    /// `[b, q, n*d]` -> `[b, n, q, d]`
    pub fn split(&self, x: &Tensor, n: i64) -> Tensor {
        let s = x.size();
        x.view([s[0], s[1], n, self.head_dim]).transpose(1, 2)
    }

    /// `[b, n, q, d]` -> `[b, q, n*d]`
    pub fn merge(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        x.transpose(1, 2).reshape([s[0], s[2], s[1] * s[3]])
    }

    /// `Q K^T` without materialising repeated K: `Q [b, H, q, d]` viewed as `[b, Hkv, g*q, d]`
    /// (query head h reads KV head h / groups). Returns `[b, H, q, k]`.
    pub fn scores(&self, q: &Tensor, k: &Tensor) -> Tensor {
        let s = q.size();
        let (b, n) = (s[0], s[2]);
        q.reshape([b, self.num_kv_heads, self.groups() * n, self.head_dim])
            .matmul(&k.transpose(-2, -1))
            .view([b, self.num_heads, n, -1])
    }

    /// `P V` without materialising repeated V: `P [b, H, q, k]` viewed as `[b, Hkv, g*q, k]`.
    pub fn apply_probs(&self, p: &Tensor, v: &Tensor) -> Tensor {
        let s = p.size();
        let (b, q, k) = (s[0], s[2], s[3]);
        p.reshape([b, self.num_kv_heads, self.groups() * q, k]).matmul(v).view([
            b,
            self.num_heads,
            q,
            self.head_dim,
        ])
    }
}

#[derive(Debug)]
pub struct FullAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub heads: Heads,
    pub scale: f64,
    pub softcap: Option<f64>,
}

/// What a SuperBlock lead hands to the reuse layers of its block (UniAttn, softmax-only): its
/// post-softmax map `[b, H, q, k]`, or the queries and keys it comes from. A decode step keeps
/// the map (`[n, H, 1, k]`, small), so reuse layers read neither keys nor queries. Over a
/// sequence (training, prefill) the map is `q x k` per head: materialising it and multiplying
/// by it costs more memory traffic than the fused kernel spends recomputing it, so the lead
/// keeps its queries and keys and each reuse layer runs fused attention on its own values.
/// Both give `softmax(Q_lead K_lead^T) V`. A decode step of few sequences on CUDA keeps the
/// map in the pieces the decode attention kernel leaves ([`kernels::LeadMaps`]), so that there
/// too reuse layers read neither keys nor queries.
pub enum LeadAttention {
    Probs(Tensor),
    /// `mask`: the lead's own additive mask, or `None` where it is plain causal (a reuse
    /// layer's window may differ from its lead's, and the lead's is the one that applies).
    QueryKeys {
        queries: Tensor,
        keys: Tensor,
        scale: f64,
        mask: Option<Tensor>,
    },
    /// `queries_keys`: the same as [`LeadAttention::QueryKeys`], for where the kernel cannot
    /// run (the fused kernels turned off on this thread since the lead ran).
    DecodeMaps {
        maps: kernels::LeadMaps,
        queries_keys: Box<LeadAttention>,
    },
    /// A decode step's lead that attended for its reuse layers (`layers`, in the order of
    /// `sums`), which add the current key's term as they project their values and run no
    /// attention of their own; `queries_keys` as in [`LeadAttention::DecodeMaps`].
    Ahead {
        sums: kernels::AheadSums,
        layers: Vec<usize>,
        queries_keys: Box<LeadAttention>,
    },
}

impl LeadAttention {
    /// `P V` for a reuse layer's `values` (`[b, Hkv, k, d]`).
    pub fn apply(&self, h: &Heads, values: &Tensor) -> Tensor {
        match self {
            LeadAttention::Probs(p) => h.apply_probs(p, values),
            LeadAttention::QueryKeys { queries, keys, scale, mask } => {
                fused_attention(queries, keys, values, mask.as_ref(), mask.is_none(), *scale)
            }
            LeadAttention::DecodeMaps { maps, queries_keys } => {
                kernels::decode_attention_reuse(maps, values).unwrap_or_else(|| queries_keys.apply(h, values))
            }
            LeadAttention::Ahead { queries_keys, .. } => queries_keys.apply(h, values),
        }
    }

    /// Where the lead attended ahead for reuse layer `layer`: the sums it left and the layer's
    /// place among them.
    pub fn ahead_for(&self, layer: usize) -> Option<(&kernels::AheadSums, usize)> {
        match self {
            LeadAttention::Ahead { sums, layers, .. } => {
                layers.iter().position(|&l| l == layer).map(|r| (sums, r))
            }
            _ => None,
        }
    }
}

/// What the caller of [`FullAttention::forward`] needs besides the block's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Output,
    /// A lead's attention for its reuse layers, in the form that costs least.
    Attention,
    /// The post-softmax map itself (the similarity analysis reads it).
    Probs,
    /// Keys after RoPE and values (a CLA lead).
    KeysValues,
}

/// What a SuperBlock lead hands to the rest of its block.
pub struct LeadState {
    /// For UniAttn and softmax-only reuse layers, or the analysis ([`Want::Probs`]: the map).
    pub attn: Option<LeadAttention>,
    /// Keys after RoPE and values, `[b, Hkv, k, d]` (CLA).
    pub kv: Option<(Tensor, Tensor)>,
}

impl FullAttention {
    /// Intra-layer KV sharing, as the GQA paper converts multi-head attention: the K and V
    /// projections' heads mean-pooled in consecutive groups down to `kv_heads`. Query head `j`
    /// read KV head `j / g`; the merged head it now reads is the mean of that head's group.
    pub fn merge_kv_heads(self, kv_heads: i64) -> Self {
        let h = self.heads;
        let (group, d) = (h.num_kv_heads / kv_heads, h.head_dim);
        let pool = |t: Tensor| -> Tensor {
            let rest: Vec<i64> = t.size()[1..].to_vec();
            let grouped: Vec<i64> = [kv_heads, group, d].into_iter().chain(rest.iter().copied()).collect();
            let merged: Vec<i64> = [kv_heads * d].into_iter().chain(rest).collect();
            t.reshape(grouped.as_slice()).mean_dim(1, false, t.kind()).reshape(merged.as_slice())
        };
        let merge = |lin: Linear| Linear::new(pool(lin.weight), lin.bias.map(pool));
        FullAttention {
            k_proj: merge(self.k_proj),
            v_proj: merge(self.v_proj),
            heads: Heads { num_kv_heads: kv_heads, ..h },
            ..self
        }
    }

    /// `x`: normed input `[b, q, hidden]`; `mask`: additive `[b, 1, q, k]`, exactly the
    /// causal one when `causal` (then fused attention runs without it). Returns the block's
    /// output and what `want` asks a lead to hand over.
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &RopeAngles,
        mask: &Tensor,
        causal: bool,
        want: Want,
    ) -> (Tensor, LeadState) {
        let h = &self.heads;
        let (q, k) = self.queries_keys(x, rope);
        let v = h.split(&self.v_proj.forward(x), h.num_kv_heads);
        let (out, attn) = attend(h, &q, &k, &v, mask, causal, self.scale, self.softcap, want);
        let kv = (want == Want::KeysValues).then(|| (k.shallow_clone(), v.shallow_clone()));
        (self.o_proj.forward(&h.merge(&out)), LeadState { attn, kv })
    }

    /// The probabilities alone, as a lead hands them to its block (no V, no output).
    pub fn lead_probs(&self, x: &Tensor, rope: &RopeAngles, mask: &Tensor) -> Tensor {
        let (q, k) = self.queries_keys(x, rope);
        attention_probs(&self.heads, &q, &k, mask, self.scale, self.softcap)
    }

    /// Q and K after the per-head norms (Gemma 3) and RoPE.
    pub fn queries_keys(&self, x: &Tensor, rope: &RopeAngles) -> (Tensor, Tensor) {
        let h = &self.heads;
        let (q, k) = (self.q_proj.forward(x), self.k_proj.forward(x));
        if self.q_norm.is_none() {
            // One kernel each way from the projections (CUDA), where the composition splits,
            // rotates in four kernels and casts.
            let fused = |p: &Tensor, n| crate::cuda::kernels::rope_heads(p, n, &rope.cos, &rope.sin_signed);
            if let (Some(q), Some(k)) = (fused(&q, h.num_heads), fused(&k, h.num_kv_heads)) {
                return (q, k);
            }
        }
        let (mut q, mut k) = (h.split(&q, h.num_heads), h.split(&k, h.num_kv_heads));
        if let (Some(qn), Some(k_norm)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q);
            k = k_norm.forward(&k);
        }
        (rope.apply(&q), rope.apply(&k))
    }
}

/// libtorch's fused scaled-dot-product attention (flash / memory-efficient kernels on the GPU),
/// with grouped KV heads read in place; a decode step of few sequences runs
/// [`crate::cuda::kernels::decode_attention`] instead.
pub fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
    scale: f64,
) -> Tensor {
    // A decode step at small batches: one kernel where cuDNN's cost is fixed, not the bytes.
    if let (1, false, Some(m)) = (q.size()[2], causal, mask) {
        if let Some(out) = kernels::decode_attention(q, k, v, m, scale) {
            return out;
        }
    }
    Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, causal, scale, true)
}

/// softmax(Q K^T * scale [softcapped] + mask), in f32 then cast back, as transformers' eager
/// path. Shared by full attention, SuperBlock leads and CLA layers, in training and inference.
pub fn attention_probs(
    h: &Heads,
    q: &Tensor,
    k: &Tensor,
    mask: &Tensor,
    scale: f64,
    softcap: Option<f64>,
) -> Tensor {
    let scores = h.scores(q, k);
    if let Some(p) = crate::cuda::kernels::masked_softmax(&scores, mask, scale, softcap) {
        return p;
    }
    let mut scores = scores * scale;
    if let Some(cap) = softcap {
        scores = (scores / cap).tanh() * cap;
    }
    (scores + mask).softmax(-1, accumulate_kind(q.kind())).to_kind(q.kind())
}

/// A reuse layer: no Q, no K, no RoPE, no softmax.
#[derive(Debug)]
pub struct ReuseAttention {
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// The compensation `W_c` (`[hidden, hidden]`, applied as `X W_c^T` like any Linear);
    /// `None` for softmax unification without compensation.
    pub w_c: Option<Linear>,
    pub heads: Heads,
}

/// Cross-layer attention (CLA): its own queries against its lead's keys and values.
#[derive(Debug)]
pub struct ClaAttention {
    pub q_proj: Linear,
    pub o_proj: Linear,
    pub q_norm: Option<RmsNorm>,
    pub heads: Heads,
    pub scale: f64,
    pub softcap: Option<f64>,
}

impl ClaAttention {
    /// `mask`: additive, this layer's own (its window); exactly the causal one when `causal`.
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &RopeAngles,
        mask: &Tensor,
        causal: bool,
        lead_kv: &(Tensor, Tensor),
    ) -> Tensor {
        let h = &self.heads;
        let mut q = h.split(&self.q_proj.forward(x), h.num_heads);
        if let Some(qn) = &self.q_norm {
            q = qn.forward(&q);
        }
        let (k, v) = lead_kv;
        let (out, _) = attend(h, &rope.apply(&q), k, v, mask, causal, self.scale, self.softcap, Want::Output);
        self.o_proj.forward(&h.merge(&out))
    }
}

/// `softmax(Q K^T * scale [soft-capped] + mask) V`, plus what a SuperBlock lead hands its block
/// in the form `want` asks for: the map itself ([`Want::Probs`]), or for [`Want::Attention`] the
/// cheapest form (the queries and keys, unless the scores are soft-capped and the map is computed
/// anyway); nothing for [`Want::Output`] and [`Want::KeysValues`] (callers keep those). The fused
/// kernel runs where it applies (no soft-capping, no map wanted). `causal`: `mask` is exactly the
/// causal mask, so the fused kernel's flag stands in for it.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    h: &Heads,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    causal: bool,
    scale: f64,
    softcap: Option<f64>,
    want: Want,
) -> (Tensor, Option<LeadAttention>) {
    // Soft-capped scores (Gemma 2) have no fused kernel.
    if want == Want::Probs || softcap.is_some() {
        let p = attention_probs(h, q, k, mask, scale, softcap);
        let out = h.apply_probs(&p, v);
        return (out, matches!(want, Want::Probs | Want::Attention).then_some(LeadAttention::Probs(p)));
    }
    let queries_keys = || LeadAttention::QueryKeys {
        queries: q.shallow_clone(),
        keys: k.shallow_clone(),
        scale,
        mask: (!causal).then(|| mask.shallow_clone()),
    };
    // A decode step's lead (one query row, masked): its map in pieces, where the kernel runs.
    if want == Want::Attention && !causal && q.size()[2] == 1 {
        if let Some((out, maps)) = kernels::decode_attention_lead(q, k, v, mask, scale) {
            return (out, Some(LeadAttention::DecodeMaps { maps, queries_keys: Box::new(queries_keys()) }));
        }
    }
    let out = fused_attention(q, k, v, (!causal).then_some(mask), causal, scale);
    (out, (want == Want::Attention).then(queries_keys))
}

/// A decode step's lead (one query row, `mask` additive) that also attends for its reuse
/// layers `layers` (`inputs`: their caches over the lead's keys, in that order): where the
/// decode attention kernel's ahead form runs ([`kernels::decode_attention_ahead`]), the lead's
/// output and what its reuse layers take; else `None`, and the caller runs [`attend`].
pub fn attend_ahead(
    (q, k, v, mask): (&Tensor, &Tensor, &Tensor, &Tensor),
    scale: f64,
    layers: &[usize],
    inputs: kernels::AheadInputs,
) -> Option<(Tensor, LeadAttention)> {
    let (out, sums) = kernels::decode_attention_ahead(q, k, v, mask, scale, inputs)?;
    let queries_keys = LeadAttention::QueryKeys {
        queries: q.shallow_clone(),
        keys: k.shallow_clone(),
        scale,
        mask: Some(mask.shallow_clone()),
    };
    Some((out, LeadAttention::Ahead { sums, layers: layers.to_vec(), queries_keys: Box::new(queries_keys) }))
}

/// `o_proj(P V)` with this layer's own V and someone else's P: the part of a reuse layer that
/// does not depend on `W_c` (calibration computes it from a dense layer's projections).
pub fn reused_output(
    v_proj: &Linear,
    o_proj: &Linear,
    heads: &Heads,
    x: &Tensor,
    lead: &LeadAttention,
) -> Tensor {
    let v = heads.split(&v_proj.forward(x), heads.num_kv_heads);
    o_proj.forward(&heads.merge(&lead.apply(heads, &v)))
}

impl ReuseAttention {
    pub fn forward(&self, x: &Tensor, lead: &LeadAttention) -> Tensor {
        let out = reused_output(&self.v_proj, &self.o_proj, &self.heads, x, lead);
        match &self.w_c {
            Some(w) => out + w.forward(x),
            None => out,
        }
    }
}

/// The attention block of one decoder layer.
#[derive(Debug)]
pub enum Attention {
    Full(FullAttention),
    Reuse(ReuseAttention),
    Cla(ClaAttention),
    /// Removed (layer dropping): the block adds nothing to the residual stream.
    Dropped,
}
