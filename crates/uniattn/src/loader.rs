//! Opening a model from disk, whatever its format: a GGUF file (dequantized on load) or a
//! Hugging Face folder (config.json, safetensors, tokenizer.json, and `uniattn.json` when it
//! carries a SuperBlock plan). Also writes the folder format back out.
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;
use crate::formats::safetensors;
use crate::model::Transformer;
use crate::plan::SuperBlockPlan;
use crate::tokenizer::Tokenizer;
use crate::weights::WeightMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

pub const PLAN_FILE: &str = "uniattn.json";

/// A model ready to run, with the files it came from.
pub struct LoadedModel {
    pub model: Transformer,
    pub tokenizer: Tokenizer,
    pub source: PathBuf,
}

/// The raw parts of a model before it is placed on a device.
pub struct ModelParts {
    pub cfg: ModelConfig,
    pub weights: WeightMap,
    pub tokenizer: Tokenizer,
    pub plan: SuperBlockPlan,
}

/// Reads config, weights, tokenizer and plan from a `.gguf` file, a model folder, or a fetched
/// model's short name (`smollm2`, see [`crate::cache`]).
pub fn read_parts(path: &Path) -> Result<ModelParts> {
    let path = &crate::cache::resolve_model(path)?;
    if path.is_dir() {
        let cfg_path = path.join("config.json");
        if !cfg_path.exists() {
            return Err(Error::format(path, "not a model folder: config.json is missing"));
        }
        let cfg = ModelConfig::from_hf_file(&cfg_path)?;
        let weights = safetensors::read_folder(path)?;
        let tok_path = path.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(Error::format(path, "tokenizer.json is missing from the model folder"));
        }
        let tokenizer = Tokenizer::from_hf_folder(path, cfg.bos_token_id, cfg.eos_token_ids.clone())?;
        let plan = read_plan(path, cfg.num_layers)?;
        Ok(ModelParts { cfg, weights, tokenizer, plan })
    } else {
        let g = GgufFile::open(path)?;
        let cfg = ModelConfig::from_gguf(&g)?;
        let tokenizer = Tokenizer::from_gguf(&g)?;
        let weights = WeightMap::from_gguf(&g, &cfg)?;
        Ok(ModelParts { plan: SuperBlockPlan::dense(cfg.num_layers), cfg, weights, tokenizer })
    }
}

/// The plan stored with a model folder, or the dense plan if there is none.
pub fn read_plan(dir: &Path, num_layers: usize) -> Result<SuperBlockPlan> {
    let p = dir.join(PLAN_FILE);
    if !p.exists() {
        return Ok(SuperBlockPlan::dense(num_layers));
    }
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(&p, format!("invalid JSON: {e}")))?;
    let plan: SuperBlockPlan =
        serde_json::from_value(v.get("plan").cloned().unwrap_or(serde_json::Value::Null))
            .map_err(|e| Error::format(&p, format!("plan: {e}")))?;
    plan.check_layers(num_layers, &p)?;
    Ok(plan)
}

pub fn load(path: &Path, kind: Kind, device: Device) -> Result<LoadedModel> {
    let parts = read_parts(path)?;
    let model = Transformer::from_weights(parts.weights, parts.cfg, parts.plan, kind, device, false)?;
    Ok(LoadedModel { model, tokenizer: parts.tokenizer, source: path.to_path_buf() })
}

/// Writes a Hugging Face folder: `config.json`, `model.safetensors` (in `kind`), the tokenizer,
/// and `uniattn.json` when the plan has SuperBlocks. `extra` goes into `uniattn.json`;
/// `extra_tensors` are written beside the model's own.
pub fn save_folder(
    model: &Transformer,
    tokenizer: &Tokenizer,
    dir: &Path,
    kind: Kind,
    extra: Option<serde_json::Value>,
    extra_tensors: &[(String, tch::Tensor)],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors: Vec<(String, tch::Tensor)> = model
        .named_tensors()
        .into_iter()
        .chain(extra_tensors.iter().map(|(n, t)| (n.clone(), t.shallow_clone())))
        .map(|(n, t)| (n, t.to_kind(kind)))
        .collect();
    safetensors::write_file(&dir.join("model.safetensors"), &tensors, None)?;
    let mut cfg = model.stem.cfg.to_hf_json();
    if !model.stem.plan.is_dense() {
        crate::config::ModelConfig::mark_planned(&mut cfg, &model.stem.plan);
    }
    for (name, text) in crate::config::REMOTE_CODE {
        let path = dir.join(name);
        if model.stem.plan.is_dense() {
            if path.exists() {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        } else {
            crate::fs::write_atomic(&path, text.as_bytes())?;
        }
    }
    cfg["torch_dtype"] = serde_json::json!(match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    });
    crate::fs::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&cfg).expect("json").as_bytes(),
    )?;
    tokenizer.save(dir)?;
    let plan_path = dir.join(PLAN_FILE);
    if model.stem.plan.is_dense() && extra.is_none() {
        if plan_path.exists() {
            std::fs::remove_file(&plan_path).map_err(|e| Error::io(&plan_path, e))?;
        }
    } else {
        let v = serde_json::json!({"plan": model.stem.plan, "describe": model.stem.plan.describe(), "info": extra});
        crate::fs::write_atomic(&plan_path, serde_json::to_string_pretty(&v).expect("json").as_bytes())?;
    }
    Ok(())
}

/// What `uniattn info` reports about a model: sizes, plan and what the plan saves.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelReport {
    pub model: String,
    pub family: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// KV heads of the reuse layers where they have fewer (KV-head merging).
    pub reuse_kv_heads: Option<usize>,
    pub head_dim: usize,
    pub vocab: usize,
    pub parameters: usize,
    pub plan: String,
    /// A [`crate::plan::ReuseKind::name`]; `None` for a dense model.
    pub reuse_kind: Option<&'static str>,
    pub reuse_layers: Vec<usize>,
    /// At inference, in bf16; `None` for a dense model.
    pub savings: Option<crate::savings::PlanSavings>,
}

impl ModelReport {
    /// Reads a model's files (weights included, to count parameters) and describes it.
    pub fn of(path: &Path) -> Result<Self> {
        let parts = read_parts(path)?;
        let c = &parts.cfg;
        let dense = parts.plan.is_dense();
        Ok(ModelReport {
            model: path.display().to_string(),
            family: format!("{:?}", c.family),
            layers: c.num_layers,
            hidden: c.hidden_size,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            reuse_kv_heads: parts
                .plan
                .reuse_layers()
                .first()
                .map(|&l| parts.plan.kv_heads(l, c.num_kv_heads))
                .filter(|&h| h != c.num_kv_heads),
            head_dim: c.head_dim,
            vocab: c.vocab_size,
            parameters: parts.weights.tensors.values().map(|t| t.numel()).sum(),
            plan: parts.plan.describe(),
            reuse_kind: (!dense).then(|| parts.plan.reuse.name()),
            reuse_layers: parts.plan.reuse_layers(),
            savings: (!dense).then(|| crate::savings::plan_savings(c, &parts.plan, 2)),
        })
    }

    /// The report as aligned lines.
    pub fn table(&self) -> String {
        let reuse_kv = self.reuse_kv_heads.map_or(String::new(), |h| format!(" ({h} in the reuse layers)"));
        let mut out = format!(
            "model        {}\nfamily       {}\nlayers       {}\nhidden       {}\n\
             heads        {} query, {} KV{reuse_kv}, head dim {}\nvocab        {}\nparameters   {}\nplan         {}",
            self.model,
            self.family,
            self.layers,
            self.hidden,
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.vocab,
            self.parameters,
            self.plan
        );
        if let (Some(kind), Some(s)) = (self.reuse_kind, &self.savings) {
            out += &format!("\nreuse kind   {kind}\nreuse layers {:?}\n{}", self.reuse_layers, s.table());
        }
        out
    }
}

/// A short name for a model in tables: the file or folder name, with its parent for the
/// generic names training runs use (`runs/uniattn/final` -> `uniattn/final`).
pub fn model_label(path: &Path) -> String {
    let stem = path.file_stem().map_or_else(|| "model".to_string(), |s| s.to_string_lossy().to_string());
    match path.parent().and_then(Path::file_name) {
        Some(parent) if ["final", "hf", "model"].contains(&stem.as_str()) => {
            format!("{}/{stem}", parent.to_string_lossy())
        }
        _ => stem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Family;
    use crate::plan::ReuseKind;
    use crate::testing::{tiny_config, tiny_model};

    /// A Python that has torch and transformers: `UNIATTN_TRANSFORMERS_PYTHON`, else `python3`
    /// if it has them.
    fn transformers_python() -> Option<String> {
        let py = std::env::var("UNIATTN_TRANSFORMERS_PYTHON").unwrap_or_else(|_| "python3".into());
        let ok = std::process::Command::new(&py)
            .args(["-c", "import torch, transformers"])
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then_some(py)
    }

    /// A planned folder of every reuse kind and family, loaded by transformers through the
    /// modeling code it carries: its logits over a sequence (longer than Gemma's sliding
    /// window, so windows and the lead's window for reuse layers count) equal ours within 1e-4
    /// in f32, over the whole sequence and step by step through its KV cache. Runs where
    /// Python has transformers (`UNIATTN_TRANSFORMERS_PYTHON=/path/to/python`); skipped with a
    /// message elsewhere.
    #[test]
    fn planned_folders_run_in_transformers() {
        let Some(py) = transformers_python() else {
            eprintln!("skipped: no Python with torch and transformers (set UNIATTN_TRANSFORMERS_PYTHON)");
            return;
        };
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/reference/hf_folder_logits.py");
        let tok = crate::testing::tiny_tokenizer();
        let ids: Vec<i64> = (0..12).map(|i| (i * 7 + 3) % 31).collect();
        let steps = 4;
        for family in [Family::Llama, Family::Qwen2, Family::Gemma2, Family::Gemma3] {
            for kind in ReuseKind::ALL {
                let plan = SuperBlockPlan::from_blocks(vec![(1, 4)], 4).unwrap().with_reuse(kind);
                let m = tiny_model(&tiny_config(family), plan, Kind::Float, 5);
                let dir = tempfile::tempdir().unwrap();
                save_folder(&m, &tok, dir.path(), Kind::Float, None, &[]).unwrap();
                let out = std::process::Command::new(&py)
                    .arg(&script)
                    .arg(dir.path())
                    .arg(serde_json::to_string(&ids).unwrap())
                    .arg(steps.to_string())
                    .output()
                    .unwrap();
                let case = format!("{family:?} {kind:?}");
                assert!(out.status.success(), "{case}: {}", String::from_utf8_lossy(&out.stderr));
                let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let want = m.forward(&tch::Tensor::from_slice(&ids).unsqueeze(0)).squeeze_dim(0);
                let rows =
                    |v: &serde_json::Value| -> Vec<Vec<f64>> { serde_json::from_value(v.clone()).unwrap() };
                let max_diff = |got: &[Vec<f64>], from: usize| {
                    let mut d = 0f64;
                    for (r, row) in got.iter().enumerate() {
                        for (c, x) in row.iter().enumerate() {
                            d = d.max((x - want.double_value(&[(from + r) as i64, c as i64])).abs());
                        }
                    }
                    d
                };
                let full = max_diff(&rows(&got["full"]), 0);
                let cached = max_diff(&rows(&got["cached"]), ids.len() - steps);
                assert!(
                    full < 1e-4 && cached < 1e-4,
                    "{case}: logits differ by {full} (whole) and {cached} (cached)"
                );
            }
        }
    }

    /// `info` on a saved folder of each reuse kind reports that kind and its own savings.
    #[test]
    fn info_reports_each_kind_and_its_savings() {
        let cfg = tiny_config(Family::Llama);
        let tok = crate::testing::tiny_tokenizer();
        for kind in ReuseKind::ALL {
            let plan = SuperBlockPlan::from_blocks(vec![(1, 4)], 4).unwrap().with_reuse(kind);
            let m = tiny_model(&cfg, plan.clone(), Kind::Float, 2);
            let dir = tempfile::tempdir().unwrap();
            save_folder(&m, &tok, dir.path(), Kind::Float, None, &[]).unwrap();
            // Foreign loaders see a model type of their own (they refuse it), ours the family.
            let hf: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                    .unwrap();
            assert_eq!(
                (hf["model_type"].as_str(), hf["uniattn_base_model_type"].as_str()),
                (Some("uniattn"), Some("llama"))
            );
            assert_eq!(hf["architectures"][0], "UniAttnForCausalLM");
            // ... and transformers finds the modeling code beside it.
            for (name, text) in crate::config::REMOTE_CODE {
                assert_eq!(std::fs::read_to_string(dir.path().join(name)).unwrap(), text);
                let module = name.trim_end_matches(".py");
                assert!(hf["auto_map"]
                    .as_object()
                    .unwrap()
                    .values()
                    .any(|v| v.as_str().unwrap().starts_with(module)));
            }
            let r = ModelReport::of(dir.path()).unwrap();
            let want = crate::savings::plan_savings(&cfg, &plan, 2);
            let got = r.savings.as_ref().unwrap();
            assert_eq!((r.reuse_kind, r.reuse_layers.as_slice()), (Some(kind.name()), &[2usize, 3][..]));
            assert_eq!(
                (got.kv_bytes_per_token_unified, got.params_added, got.params_removed),
                (want.kv_bytes_per_token_unified, want.params_added, want.params_removed),
                "{kind:?}"
            );
            assert_eq!(r.parameters, m.num_parameters(), "{kind:?}");
            // Only KV-head merging changes a reuse layer's KV heads (2 -> 1 here).
            assert_eq!(r.reuse_kv_heads, (kind == ReuseKind::KvHeads).then_some(1), "{kind:?}");
            assert!(r.table().contains(&format!("reuse kind   {}", kind.name())), "{}", r.table());
        }
        let dense = tiny_model(&cfg, SuperBlockPlan::dense(4), Kind::Float, 2);
        let dir = tempfile::tempdir().unwrap();
        save_folder(&dense, &tok, dir.path(), Kind::Float, None, &[]).unwrap();
        let hf: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(hf["model_type"], "llama", "a dense folder stays an ordinary one");
        let r = ModelReport::of(dir.path()).unwrap();
        assert!(r.savings.is_none() && r.reuse_kind.is_none() && !r.table().contains("KV cache"));
    }

    #[test]
    fn labels_are_short_but_tell_runs_apart() {
        assert_eq!(model_label(Path::new("m/SmolLM2.Q4_1.gguf")), "SmolLM2.Q4_1");
        assert_eq!(model_label(Path::new("runs/smol-uni")), "smol-uni");
        assert_eq!(model_label(Path::new("runs/uniattn-s1/final")), "uniattn-s1/final");
    }
}
