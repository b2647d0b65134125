//! Opening a model from disk, whatever its format: a GGUF file (dequantized on load) or a
//! Hugging Face folder (config.json, safetensors, tokenizer.json, and `uniattn.json` when it
//! carries a SuperBlock plan). Also writes the folder format back out.
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::Transformer;
use crate::plan::SuperBlockPlan;
use crate::tokenizer::Tokenizer;
use crate::weights::gguf::GgufFile;
use crate::weights::{safetensors_io, WeightMap};
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
        let weights = safetensors_io::read_folder(path)?;
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
    safetensors_io::write_file(&dir.join("model.safetensors"), &tensors, None)?;
    let mut cfg = model.cfg.to_hf_json();
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
    if model.plan.is_dense() && extra.is_none() {
        if plan_path.exists() {
            std::fs::remove_file(&plan_path).map_err(|e| Error::io(&plan_path, e))?;
        }
    } else {
        let v = serde_json::json!({"plan": model.plan, "describe": model.plan.describe(), "info": extra});
        crate::fs::write_atomic(&plan_path, serde_json::to_string_pretty(&v).expect("json").as_bytes())?;
    }
    Ok(())
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
    use super::model_label;
    use std::path::Path;

    #[test]
    fn labels_are_short_but_tell_runs_apart() {
        assert_eq!(model_label(Path::new("m/SmolLM2.Q4_1.gguf")), "SmolLM2.Q4_1");
        assert_eq!(model_label(Path::new("runs/smol-uni")), "smol-uni");
        assert_eq!(model_label(Path::new("runs/uniattn-s1/final")), "uniattn-s1/final");
    }
}
