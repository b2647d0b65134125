//! Fixtures the unit tests share: a tiny model of any family and plan, with seeded weights,
//! a word-level tokenizer to save and reload it with, and the GPU that GPU tests run on.
use crate::config::{Family, ModelConfig};
use crate::model::Transformer;
use crate::plan::{LayerRole, SuperBlockPlan};
use crate::tokenizer::Tokenizer;
use crate::weights::WeightMap;
use serde_json::{json, Value as Json};
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub fn tiny_config(family: Family) -> ModelConfig {
    ModelConfig {
        family,
        vocab_size: 32,
        hidden_size: 16,
        intermediate_size: 24,
        num_layers: 4,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 4,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        rope_local_theta: (family == Family::Gemma3).then_some(100.0),
        max_position_embeddings: 1024,
        tie_word_embeddings: family != Family::Qwen2,
        attention_bias: family == Family::Qwen2,
        sliding_window: family.is_gemma().then_some(3),
        sliding_window_pattern: match family {
            Family::Gemma3 => Some(2),
            Family::Gemma2 => Some(2),
            _ => None,
        },
        query_pre_attn_scalar: family.is_gemma().then_some(4.0),
        attn_logit_softcapping: (family == Family::Gemma2).then_some(50.0),
        final_logit_softcapping: (family == Family::Gemma2).then_some(30.0),
        bos_token_id: None,
        eos_token_ids: vec![],
    }
}

/// A dense model with random weights (and W_c for `plan`'s reuse layers).
pub fn tiny_model(cfg: &ModelConfig, plan: SuperBlockPlan, kind: Kind, seed: i64) -> Transformer {
    tiny_model_on(cfg, plan, kind, seed, Device::Cpu)
}

/// [`tiny_model`] on `device`.
pub fn tiny_model_on(
    cfg: &ModelConfig,
    plan: SuperBlockPlan,
    kind: Kind,
    seed: i64,
    device: Device,
) -> Transformer {
    // A private generator: tests run in parallel threads and libtorch's global RNG is shared,
    // so two models built from one seed must not depend on what other tests draw.
    let mut rng = crate::rng::SplitMix64(seed as u64);
    let (h, hd, hkv, hid, inter) =
        (cfg.num_heads, cfg.head_dim, cfg.num_kv_heads, cfg.hidden_size, cfg.intermediate_size);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![cfg.vocab_size, hid]),
        ("model.norm.weight".into(), vec![hid]),
    ];
    if !cfg.tie_word_embeddings {
        shapes.push(("lm_head.weight".into(), vec![cfg.vocab_size, hid]));
    }
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        let mut add = |n: &str, s: Vec<usize>| shapes.push((format!("{p}.{n}"), s));
        add("self_attn.q_proj.weight", vec![h * hd, hid]);
        add("self_attn.k_proj.weight", vec![hkv * hd, hid]);
        add("self_attn.v_proj.weight", vec![hkv * hd, hid]);
        add("self_attn.o_proj.weight", vec![hid, h * hd]);
        if cfg.attention_bias {
            add("self_attn.q_proj.bias", vec![h * hd]);
            add("self_attn.k_proj.bias", vec![hkv * hd]);
            add("self_attn.v_proj.bias", vec![hkv * hd]);
        }
        if cfg.family.has_qk_norm() {
            add("self_attn.q_norm.weight", vec![hd]);
            add("self_attn.k_norm.weight", vec![hd]);
        }
        if matches!(plan.role(l), LayerRole::Reuse { .. }) && plan.reuse.spec().compensation {
            add("self_attn.v2_proj.weight", vec![hid, hid]);
        }
        add("input_layernorm.weight", vec![hid]);
        add("post_attention_layernorm.weight", vec![hid]);
        if cfg.family.is_gemma() {
            add("pre_feedforward_layernorm.weight", vec![hid]);
            add("post_feedforward_layernorm.weight", vec![hid]);
        }
        add("mlp.gate_proj.weight", vec![inter, hid]);
        add("mlp.up_proj.weight", vec![inter, hid]);
        add("mlp.down_proj.weight", vec![hid, inter]);
    }
    let tensors = shapes
        .into_iter()
        .map(|(n, s)| {
            let dims: Vec<i64> = s.iter().map(|&d| d as i64).collect();
            let scale = if n.contains("norm") { 0.1 } else { 0.2 };
            let count: usize = s.iter().product();
            let normal: Vec<f64> = (0..count)
                .map(|_| {
                    // Box-Muller from two uniforms in (0, 1].
                    let (a, b) = (1.0 - rng.next_f64(), rng.next_f64());
                    (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
                })
                .collect();
            let mut t = Tensor::from_slice(&normal).view(dims.as_slice()) * scale;
            if n.contains("norm") && !cfg.family.is_gemma() {
                t += 1.0;
            }
            (n, t)
        })
        .collect();
    let w = WeightMap { source: "tiny".into(), tensors };
    Transformer::from_weights(w, cfg.clone(), plan, kind, device, false).unwrap()
}

/// A word-level tokenizer over `t0`..`t31`, enough to save and reload tiny test models.
pub fn tiny_tokenizer() -> Tokenizer {
    tiny_tokenizer_with_template(None)
}

/// [`tiny_tokenizer`] with a chat template.
pub fn tiny_tokenizer_with_template(template: Option<&str>) -> Tokenizer {
    let vocab: serde_json::Map<String, Json> = (0..32).map(|i| (format!("t{i}"), json!(i))).collect();
    let j = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}});
    Tokenizer::from_json_text(
        j.to_string(),
        Path::new("tiny"),
        false,
        None,
        vec![31],
        template.map(String::from),
    )
    .unwrap()
}

/// The CUDA device GPU tests run on, or None (after saying the test skipped) on a machine
/// without one.
pub fn cuda() -> Option<Device> {
    crate::runtime::init().unwrap();
    if !tch::Cuda::is_available() {
        eprintln!("skipped: no CUDA device");
        return None;
    }
    Some(Device::Cuda(0))
}
