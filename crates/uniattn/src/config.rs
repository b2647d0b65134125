//! Model configuration: one struct for every family, read from a Hugging Face `config.json` or
//! from GGUF metadata, and written back as `config.json`. Family differences are explicit flags
//! derived from [`Family`], so the transformer has one code path.
use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::path::Path;

/// `model_type` of a planned model's `config.json` (see [`ModelConfig::mark_planned`]).
pub const UNIATTN_MODEL_TYPE: &str = "uniattn";
/// `architectures` of a planned model's `config.json`.
pub const UNIATTN_ARCHITECTURE: &str = "UniAttnForCausalLM";
/// The transformers code a planned folder carries (file name, text): `auto_map` names them.
pub const REMOTE_CODE: [(&str, &str); 2] = [
    ("configuration_uniattn.py", include_str!("../python/configuration_uniattn.py")),
    ("modeling_uniattn.py", include_str!("../python/modeling_uniattn.py")),
];
/// Where a planned model's `config.json` keeps its family's `model_type`.
pub const BASE_MODEL_TYPE: &str = "uniattn_base_model_type";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Gemma2,
    Gemma3,
}

impl Family {
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3_text",
        }
    }

    fn from_model_type(s: &str) -> Option<Self> {
        Some(match s {
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            "gemma2" => Family::Gemma2,
            "gemma3_text" | "gemma3" => Family::Gemma3,
            _ => return None,
        })
    }

    fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Gemma2 => "Gemma2ForCausalLM",
            Family::Gemma3 => "Gemma3ForCausalLM",
        }
    }

    /// Gemma: RMSNorm multiplies by `1 + w`, embeddings are scaled by sqrt(hidden), the MLP uses
    /// tanh-GELU, and the residual branches are wrapped in pre and post norms.
    pub fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma2 | Family::Gemma3)
    }

    /// Gemma 3 normalises queries and keys per head before RoPE.
    pub fn has_qk_norm(self) -> bool {
        self == Family::Gemma3
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// RoPE base of sliding-window layers where it differs (Gemma 3: 10,000).
    pub rope_local_theta: Option<f64>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on the Q, K and V projections (Qwen2).
    pub attention_bias: bool,
    pub sliding_window: Option<usize>,
    /// Every `n`-th layer is global, the others slide (Gemma 2: 2, Gemma 3: 6). `None` with a
    /// window means every layer slides (Mistral).
    pub sliding_window_pattern: Option<usize>,
    /// Scores are scaled by `query_pre_attn_scalar^-1/2` instead of `head_dim^-1/2` (Gemma).
    pub query_pre_attn_scalar: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    pub fn kv_groups(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    pub fn attn_scale(&self) -> f64 {
        self.query_pre_attn_scalar.unwrap_or(self.head_dim as f64).powf(-0.5)
    }

    /// The sliding window of layer `l`, if it slides.
    pub fn layer_window(&self, l: usize) -> Option<usize> {
        let w = self.sliding_window?;
        match self.sliding_window_pattern {
            Some(p) if (l + 1).is_multiple_of(p) => None,
            _ => Some(w),
        }
    }

    pub fn layer_rope_theta(&self, l: usize) -> f64 {
        match (self.layer_window(l), self.rope_local_theta) {
            (Some(_), Some(local)) => local,
            _ => self.rope_theta,
        }
    }

    pub(crate) fn validate(self, path: &Path) -> Result<Self> {
        let bad = |field: &str, msg: String| Err(Error::format(path, format!("{field}: {msg}")));
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return bad(field, "must be positive".into());
            }
        }
        // Upper bounds far above any real model, so that a corrupt value gives an error here
        // instead of an allocation of terabytes later.
        for (field, v, max) in [
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 17),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_layers, 1 << 12),
            ("num_attention_heads", self.num_heads, 1 << 12),
            ("num_key_value_heads", self.num_kv_heads, 1 << 12),
            ("head_dim", self.head_dim, 1 << 12),
            ("max_position_embeddings", self.max_position_embeddings, 1 << 24),
        ] {
            if v > max {
                return bad(field, format!("{v} is implausibly large (at most {max} expected)"));
            }
        }
        for (field, v) in [("rms_norm_eps", self.rms_norm_eps), ("rope_theta", self.rope_theta)] {
            if !(v.is_finite() && v > 0.0) {
                return bad(field, format!("{v} must be a positive finite number"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(
                "num_key_value_heads",
                format!("{} does not divide num_attention_heads {}", self.num_kv_heads, self.num_heads),
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad("head_dim", format!("{} must be even for RoPE", self.head_dim));
        }
        Ok(self)
    }

    /// Marks a Hugging Face `config.json` written for a planned (UniAttn, softmax-only, CLA,
    /// layer-drop) model: its own `model_type` and `architectures`, so that loaders that do not
    /// know the plan refuse the folder instead of filling the removed Q/K weights with random
    /// ones; the family moves to [`BASE_MODEL_TYPE`] and the plan to `uniattn_plan`, and
    /// `auto_map` names the modeling code written beside it ([`REMOTE_CODE`]), which
    /// transformers runs with `trust_remote_code=True`.
    pub fn mark_planned(hf: &mut Value, plan: &crate::plan::SuperBlockPlan) {
        let o = hf.as_object_mut().expect("config.json is an object");
        let base = o.insert("model_type".into(), json!(UNIATTN_MODEL_TYPE));
        o.insert(BASE_MODEL_TYPE.into(), base.unwrap_or(Value::Null));
        o.insert("architectures".into(), json!([UNIATTN_ARCHITECTURE]));
        o.insert("uniattn_plan".into(), json!(plan));
        o.insert(
            "auto_map".into(),
            json!({
                "AutoConfig": "configuration_uniattn.UniAttnConfig",
                "AutoModelForCausalLM": "modeling_uniattn.UniAttnForCausalLM",
            }),
        );
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
        // Multimodal Gemma 3 configs nest the language model.
        let v = v.get("text_config").cloned().unwrap_or(v);
        let field = |k: &str| v.get(k).filter(|x| !x.is_null());
        let usize_of = |k: &str| -> Result<usize> {
            field(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| Error::format(path, format!("{k}: missing or not a non-negative integer")))
        };
        let f64_of = |k: &str| field(k).and_then(Value::as_f64);
        let mt = field("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::format(path, "model_type: missing"))?;
        // A planned folder (see `loader::save_folder`) names its family apart.
        let mt = if mt == UNIATTN_MODEL_TYPE {
            field(BASE_MODEL_TYPE).and_then(Value::as_str).ok_or_else(|| {
                Error::format(path, format!("{BASE_MODEL_TYPE}: missing (model_type is uniattn)"))
            })?
        } else {
            mt
        };
        let family = Family::from_model_type(mt).ok_or_else(|| {
            Error::format(
                path,
                format!("model_type: '{mt}' is not supported (llama, mistral, qwen2, gemma2, gemma3_text)"),
            )
        })?;
        if let Some(rs) = field("rope_scaling") {
            let ty = rs.get("rope_type").or(rs.get("type")).and_then(Value::as_str).unwrap_or("?");
            if ty != "default" {
                return Err(Error::format(path, format!("rope_scaling: type '{ty}' is not supported yet")));
            }
        }
        // transformers 5 writes RoPE as `rope_parameters`: one set, or one per layer type
        // (Gemma 3: `full_attention` and `sliding_attention`) instead of `rope_theta` and
        // `rope_local_base_freq`.
        let rope_params = field("rope_parameters");
        let rope_set = |layer_type: &str| -> Result<Option<f64>> {
            let Some(rp) = rope_params else { return Ok(None) };
            let set = rp.get(layer_type).unwrap_or(rp);
            if let Some(ty) = set.get("rope_type").and_then(Value::as_str) {
                if ty != "default" {
                    return Err(Error::format(
                        path,
                        format!("rope_parameters: type '{ty}' is not supported yet"),
                    ));
                }
            }
            Ok(set.get("rope_theta").and_then(Value::as_f64))
        };
        let rope_theta = f64_of("rope_theta").or(rope_set("full_attention")?).unwrap_or(10_000.0);
        let rope_local = f64_of("rope_local_base_freq").or(rope_set("sliding_attention")?);
        let hidden = usize_of("hidden_size")?;
        let heads = usize_of("num_attention_heads")?;
        let ids = |k: &str| -> Vec<u32> {
            match field(k) {
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
                Some(x) => x.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
                None => vec![],
            }
        };
        let (window, pattern) = match family {
            Family::Gemma3 => (
                field("sliding_window").and_then(Value::as_u64).map(|w| w as usize),
                Some(field("sliding_window_pattern").and_then(Value::as_u64).unwrap_or(6) as usize),
            ),
            Family::Gemma2 => (field("sliding_window").and_then(Value::as_u64).map(|w| w as usize), Some(2)),
            Family::Mistral => (field("sliding_window").and_then(Value::as_u64).map(|w| w as usize), None),
            _ => (None, None),
        };
        if let Some(lt) = field("layer_types").and_then(Value::as_array) {
            // Check the explicit layer types against the pattern we derive.
            let cfg_pattern = pattern.unwrap_or(usize::MAX);
            for (i, t) in lt.iter().enumerate() {
                let sliding = t.as_str() == Some("sliding_attention");
                let ours = window.is_some() && (i + 1) % cfg_pattern != 0;
                if sliding != ours {
                    return Err(Error::format(
                        path,
                        format!(
                            "layer_types[{i}]: '{t}' does not follow the family's sliding-window pattern"
                        ),
                    ));
                }
            }
        }
        let cfg = ModelConfig {
            family,
            vocab_size: usize_of("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: usize_of("intermediate_size")?,
            num_layers: usize_of("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: field("num_key_value_heads")
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .unwrap_or(heads),
            head_dim: match field("head_dim").and_then(Value::as_u64) {
                Some(d) => d as usize,
                None => hidden / heads.max(1),
            },
            rms_norm_eps: f64_of("rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            rope_local_theta: if family == Family::Gemma3 {
                Some(rope_local.unwrap_or(10_000.0))
            } else {
                None
            },
            max_position_embeddings: usize_of("max_position_embeddings").unwrap_or(4096),
            tie_word_embeddings: field("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(family.is_gemma()),
            attention_bias: field("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(family == Family::Qwen2),
            sliding_window: window,
            sliding_window_pattern: pattern,
            query_pre_attn_scalar: if family.is_gemma() { f64_of("query_pre_attn_scalar") } else { None },
            attn_logit_softcapping: f64_of("attn_logit_softcapping"),
            final_logit_softcapping: f64_of("final_logit_softcapping"),
            bos_token_id: ids("bos_token_id").first().copied(),
            eos_token_ids: ids("eos_token_id"),
        };
        cfg.validate(path)
    }

    /// A Hugging Face `config.json` that transformers and our loader both read.
    pub fn to_hf_json(&self) -> Value {
        let mut v = json!({
            "architectures": [self.family.architecture()],
            "model_type": self.family.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "hidden_act": if self.family.is_gemma() { "gelu_pytorch_tanh" } else { "silu" },
            "torch_dtype": "float32",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": if self.eos_token_ids.len() == 1 { json!(self.eos_token_ids[0]) } else { json!(self.eos_token_ids) },
        });
        let o = v.as_object_mut().expect("object literal");
        if let Some(w) = self.sliding_window {
            o.insert("sliding_window".into(), json!(w));
            if let Some(p) = self.sliding_window_pattern {
                o.insert("sliding_window_pattern".into(), json!(p));
                let types: Vec<&str> =
                    (0..self.num_layers)
                        .map(|l| {
                            if self.layer_window(l).is_some() {
                                "sliding_attention"
                            } else {
                                "full_attention"
                            }
                        })
                        .collect();
                o.insert("layer_types".into(), json!(types));
            }
        }
        if let Some(t) = self.rope_local_theta {
            o.insert("rope_local_base_freq".into(), json!(t));
        }
        if let Some(q) = self.query_pre_attn_scalar {
            // An integer, as Gemma's configs have it (transformers 5 validates the type).
            let q = if q.fract() == 0.0 && q.abs() < 1e15 { json!(q as i64) } else { json!(q) };
            o.insert("query_pre_attn_scalar".into(), q);
        }
        o.insert("attn_logit_softcapping".into(), json!(self.attn_logit_softcapping));
        o.insert("final_logit_softcapping".into(), json!(self.final_logit_softcapping));
        if self.family == Family::Gemma3 {
            o.insert("rope_scaling".into(), Value::Null);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `v` in a file named `*-{name}.json`, removed when the returned path drops.
    fn write(name: &str, v: &Value) -> tempfile::TempPath {
        let p =
            tempfile::Builder::new().suffix(&format!("-{name}.json")).tempfile().unwrap().into_temp_path();
        std::fs::write(&p, v.to_string()).unwrap();
        p
    }

    fn smol() -> Value {
        json!({"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
               "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
               "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": true,
               "max_position_embeddings": 8192, "bos_token_id": 1, "eos_token_id": 2})
    }

    #[test]
    fn reads_and_roundtrips_hf_config() {
        let c = ModelConfig::from_hf_file(&write("smol", &smol())).unwrap();
        assert_eq!((c.head_dim, c.kv_groups(), c.family), (64, 3, Family::Llama));
        let again = ModelConfig::from_hf_file(&write("smol2", &c.to_hf_json())).unwrap();
        assert_eq!(c, again);
    }

    /// transformers 5's `rope_parameters`, flat (Llama, Qwen) and per layer type (Gemma 3).
    #[test]
    fn rope_parameters_of_transformers_5() {
        let mut v = smol();
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = json!({"rope_theta": 1_000_000.0, "rope_type": "default"});
        assert_eq!(ModelConfig::from_hf_file(&write("rp", &v)).unwrap().rope_theta, 1_000_000.0);
        v["rope_parameters"] = json!({"rope_theta": 8.0, "rope_type": "yarn"});
        let e = ModelConfig::from_hf_file(&write("rp2", &v)).unwrap_err().to_string();
        assert!(e.contains("rope_parameters: type 'yarn'"), "{e}");
        v["model_type"] = json!("gemma3_text");
        v["num_hidden_layers"] = json!(12);
        v["sliding_window"] = json!(512);
        v["rope_parameters"] = json!({"full_attention": {"rope_theta": 1_000_000.0, "rope_type": "default"},
            "sliding_attention": {"rope_theta": 10_000.0, "rope_type": "default"}});
        let c = ModelConfig::from_hf_file(&write("rp3", &v)).unwrap();
        assert_eq!((c.layer_rope_theta(0), c.layer_rope_theta(5)), (10_000.0, 1_000_000.0));
    }

    #[test]
    fn gemma3_layer_pattern() {
        let mut v = smol();
        v["model_type"] = json!("gemma3_text");
        v["num_hidden_layers"] = json!(18);
        v["sliding_window"] = json!(512);
        v["query_pre_attn_scalar"] = json!(256);
        let c = ModelConfig::from_hf_file(&write("g3", &v)).unwrap();
        let global: Vec<usize> = (0..18).filter(|&l| c.layer_window(l).is_none()).collect();
        assert_eq!(global, vec![5, 11, 17]);
        assert_eq!(c.layer_rope_theta(0), 10_000.0);
        assert_eq!(c.layer_rope_theta(5), 100_000.0);
        let written = c.to_hf_json();
        // An integer, as transformers 5 validates it (256.0 makes it refuse the config).
        assert!(written["query_pre_attn_scalar"].is_i64(), "{}", written["query_pre_attn_scalar"]);
        let again = ModelConfig::from_hf_file(&write("g3b", &written)).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut v = smol();
        v["num_key_value_heads"] = json!(4);
        let err = ModelConfig::from_hf_file(&write("badkv", &v)).unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads") && err.contains("badkv"), "{err}");
        let mut v = smol();
        v.as_object_mut().unwrap().remove("hidden_size");
        let err = ModelConfig::from_hf_file(&write("nohidden", &v)).unwrap_err().to_string();
        assert!(err.contains("hidden_size: missing"), "{err}");
        let mut v = smol();
        v["model_type"] = json!("gpt2");
        let err = ModelConfig::from_hf_file(&write("gpt2", &v)).unwrap_err().to_string();
        assert!(err.contains("'gpt2' is not supported"), "{err}");
    }
}
