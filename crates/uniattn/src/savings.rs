//! What a plan saves at inference, computed from the shapes and the reuse kind's spec alone
//! (the brief, "What it saves"): the same numbers `info`, `convert` and `bench` report.
use crate::config::ModelConfig;
use crate::model::names::Module;
use crate::plan::{merged_kv_heads, ReuseCache, SuperBlockPlan};

#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanSavings {
    pub reuse_layers: usize,
    /// KV-cache bytes per token, dense and under the plan, at `bytes_per_value`.
    pub kv_bytes_per_token_dense: usize,
    pub kv_bytes_per_token_unified: usize,
    /// Fraction of KV-cache bytes saved: K only (UniAttn, softmax-only), K and V (CLA, layer
    /// drop), or the merged-away heads' K and V (KV-head merging) in each reuse layer.
    pub kv_fraction_saved: f64,
    /// Fraction of attention-score work (Q K^T and softmax) saved (none for CLA, whose layers
    /// score their own queries).
    pub score_flops_fraction_saved: f64,
    /// Projection multiply-adds saved per token (the Q/K/V/O projections the reuse layers drop).
    pub proj_macs_saved_per_token: usize,
    /// W_c multiply-adds added per token.
    pub wc_macs_added_per_token: usize,
    pub params_removed: usize,
    pub params_added: usize,
    /// The projections each reuse layer drops (`q_proj`, `k_proj`, ...).
    pub dropped_projections: Vec<&'static str>,
}

impl PlanSavings {
    /// The savings as the aligned lines `info` and `convert` print.
    pub fn table(&self) -> String {
        format!(
            "KV cache     {} -> {} bytes/token in bf16 ({:.1}% saved)\n\
             score FLOPs  {:.1}% of Q K^T + softmax saved\n\
             per token    {} projection MACs saved ({}), {} W_c MACs added\n\
             parameters   {} removed, {} added",
            self.kv_bytes_per_token_dense,
            self.kv_bytes_per_token_unified,
            100.0 * self.kv_fraction_saved,
            100.0 * self.score_flops_fraction_saved,
            self.proj_macs_saved_per_token,
            self.dropped_projections.join(", "),
            self.wc_macs_added_per_token,
            self.params_removed,
            self.params_added
        )
    }
}

pub fn plan_savings(cfg: &ModelConfig, plan: &SuperBlockPlan, bytes_per_value: usize) -> PlanSavings {
    let spec = plan.reuse.spec();
    let r = plan.reuse_layers().len();
    let (l, hid, d) = (cfg.num_layers, cfg.hidden_size, cfg.head_dim);
    let (q_out, kv_out) = (cfg.num_heads * d, cfg.num_kv_heads * d);
    let bias = |out: usize| if cfg.attention_bias { out } else { 0 };
    let norm = if cfg.family.has_qk_norm() { d } else { 0 };
    // (weights, biases and norms) of each module a reuse layer can drop.
    let module = |m: Module| -> (usize, usize) {
        match m {
            Module::Q => (q_out * hid, bias(q_out)),
            Module::K | Module::V => (kv_out * hid, bias(kv_out)),
            Module::O => (hid * q_out, 0),
            Module::QNorm | Module::KNorm => (0, norm),
            _ => (0, 0), // W_c: not in the dense model
        }
    };
    // KV-head merging keeps K and V but fewer heads: those rows of both projections go.
    let merged_away = match spec.cache {
        ReuseCache::MergedHeads => (cfg.num_kv_heads - merged_kv_heads(cfg.num_kv_heads)) * d,
        _ => 0,
    };
    let (macs, extra) = spec
        .drops
        .iter()
        .map(|&m| module(m))
        .fold((2 * merged_away * hid, 2 * bias(merged_away)), |a, b| (a.0 + b.0, a.1 + b.1));
    let kv_per_layer = 2 * kv_out * bytes_per_value;
    let dropped_per_layer = match spec.cache {
        ReuseCache::ValuesOnly => kv_out * bytes_per_value,
        ReuseCache::Nothing => kv_per_layer,
        ReuseCache::MergedHeads => 2 * merged_away * bytes_per_value,
    };
    let wc = if spec.compensation { hid * hid } else { 0 };
    PlanSavings {
        reuse_layers: r,
        kv_bytes_per_token_dense: l * kv_per_layer,
        kv_bytes_per_token_unified: l * kv_per_layer - r * dropped_per_layer,
        kv_fraction_saved: (r * dropped_per_layer) as f64 / (l * kv_per_layer) as f64,
        score_flops_fraction_saved: if spec.own_scores { 0.0 } else { r as f64 / l as f64 },
        proj_macs_saved_per_token: r * macs,
        wc_macs_added_per_token: r * wc,
        params_removed: r * (macs + extra),
        params_added: r * wc,
        dropped_projections: match spec.cache {
            ReuseCache::MergedHeads => vec!["k_proj and v_proj heads (merged)"],
            _ => spec.drops.iter().filter(|&&m| module(m).0 > 0).map(|m| m.short()).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ReuseKind;

    /// Tiny Llama: 4 layers, hidden 16, 4 heads and 2 KV heads of 4 dims; reuse layers 2 and 3.
    #[test]
    fn every_kind_saves_what_its_layers_drop() {
        let cfg = crate::testing::tiny_config(crate::config::Family::Llama);
        let (q, kv, hid) = (16, 8, 16);
        for kind in ReuseKind::ALL {
            let plan = SuperBlockPlan::from_blocks(vec![(1, 4)], 4).unwrap().with_reuse(kind);
            let s = plan_savings(&cfg, &plan, 2);
            // 4 layers x (K + V) of 8 values x 2 bytes = 128 bytes per token.
            assert_eq!(s.kv_bytes_per_token_dense, 128, "{kind:?}");
            let (kv_unified, kv_frac, scores, macs, added) = match kind {
                // K dropped (2 x 16 bytes); no Q, no K projection; W_c added.
                ReuseKind::Uniattn => (96, 0.25, 0.5, 2 * (q + kv) * hid, 2 * hid * hid),
                ReuseKind::SoftmaxOnly => (96, 0.25, 0.5, 2 * (q + kv) * hid, 0),
                // K and V dropped; own queries and scores; no K, V projection.
                ReuseKind::Cla => (64, 0.5, 0.0, 2 * (kv + kv) * hid, 0),
                // The whole attention block: Q, K, V and O.
                ReuseKind::Layerdrop => (64, 0.5, 0.5, 2 * (q + kv + kv + q) * hid, 0),
                // 2 KV heads merged to 1: half of each layer's K and V (2 x 16 bytes), half
                // of the K and V projections' rows; own scores.
                ReuseKind::KvHeads => (96, 0.25, 0.0, 2 * (kv / 2 + kv / 2) * hid, 0),
            };
            assert_eq!(s.kv_bytes_per_token_unified, kv_unified, "{kind:?}");
            assert_eq!(s.kv_fraction_saved, kv_frac, "{kind:?}");
            assert_eq!(s.score_flops_fraction_saved, scores, "{kind:?}");
            assert_eq!(s.proj_macs_saved_per_token, macs, "{kind:?}");
            assert_eq!((s.params_removed, s.params_added), (macs, added), "{kind:?}");
        }
    }
}
