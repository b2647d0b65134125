//! What a plan saves at inference, computed from the shapes alone (the brief, "What it saves").
use crate::config::ModelConfig;
use crate::plan::SuperBlockPlan;

#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanSavings {
    pub reuse_layers: usize,
    /// KV-cache bytes per token, dense and unified, at `bytes_per_value`.
    pub kv_bytes_per_token_dense: usize,
    pub kv_bytes_per_token_unified: usize,
    /// Fraction of KV-cache bytes saved: reuse layers keep V only.
    pub kv_fraction_saved: f64,
    /// Fraction of attention-score work (Q K^T and softmax) saved.
    pub score_flops_fraction_saved: f64,
    /// Q/K projection multiply-adds saved per token.
    pub qk_proj_macs_saved_per_token: usize,
    /// W_c multiply-adds added per token.
    pub wc_macs_added_per_token: usize,
    pub params_removed: usize,
    pub params_added: usize,
}

pub fn plan_savings(cfg: &ModelConfig, plan: &SuperBlockPlan, bytes_per_value: usize) -> PlanSavings {
    let r = plan.reuse_layers().len();
    let (l, hid, d) = (cfg.num_layers, cfg.hidden_size, cfg.head_dim);
    let (q_out, kv_out) = (cfg.num_heads * d, cfg.num_kv_heads * d);
    let kv_dense = 2 * l * kv_out * bytes_per_value;
    let kv_uni = kv_dense - r * kv_out * bytes_per_value;
    let qk_macs = (q_out + kv_out) * hid;
    let bias = if cfg.attention_bias { q_out + kv_out } else { 0 };
    let norms = if cfg.family.has_qk_norm() { 2 * d } else { 0 };
    PlanSavings {
        reuse_layers: r,
        kv_bytes_per_token_dense: kv_dense,
        kv_bytes_per_token_unified: kv_uni,
        kv_fraction_saved: r as f64 / (2 * l) as f64,
        score_flops_fraction_saved: r as f64 / l as f64,
        qk_proj_macs_saved_per_token: r * qk_macs,
        wc_macs_added_per_token: r * hid * hid,
        params_removed: r * (qk_macs + bias + norms),
        params_added: r * hid * hid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_plan() {
        let cfg = crate::model::transformer::tests::tiny_config(crate::config::Family::Llama);
        let plan = SuperBlockPlan::from_blocks(vec![(1, 4)], 4).unwrap();
        let s = plan_savings(&cfg, &plan, 2);
        // 4 layers x (K + V) of 2 heads x 4 dims x 2 bytes = 128; reuse layers 2 and 3 drop K: 32.
        assert_eq!((s.kv_bytes_per_token_dense, s.kv_bytes_per_token_unified), (128, 96));
        assert_eq!(s.kv_fraction_saved, 2.0 / 8.0);
        assert_eq!(s.params_removed, 2 * (16 + 8) * 16);
        assert_eq!(s.params_added, 2 * 16 * 16);
    }
}
