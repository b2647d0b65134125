//! Checkpoints: a loadable model folder plus optimizer moments and the run position, written
//! into `step-N.tmp/` and renamed to `step-N/` only once every file is on disk, so a kill at
//! any moment leaves the previous checkpoint intact. Data order is a function of the seed and
//! the stage (see `stage_order`), so position + weights + moments resume a run exactly.
use super::optim::AdamW;
use super::{Position, TrainConfig, Trainer};
use crate::error::{Error, Result};
use crate::formats::safetensors;
use crate::loader;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

pub struct OptimizerState {
    pub step: i64,
    pub moments: BTreeMap<String, Tensor>,
}

/// What `--resume` restores besides the weights (which load from the same folder).
pub struct Resume {
    pub position: Position,
    pub config: TrainConfig,
    pub optimizer: Option<OptimizerState>,
    pub dir: PathBuf,
    /// The ranks of the run that wrote it: its steps were that many times micro-batch x
    /// accumulation examples, so it resumes on as many.
    pub world_size: usize,
}

fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| Error::io(dir, e))
}

pub(super) fn save(t: &Trainer, opt: &AdamW, next: Position, stage_done: bool) -> Result<()> {
    let root = t.out.join("checkpoints");
    let dir = root.join(format!("step-{:06}", next.global_step));
    let tmp = root.join(format!("step-{:06}.tmp", next.global_step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let kind = t.model.stem.kind;
    loader::save_folder(t.model, t.tokenizer, &tmp, kind, None, &[])?;
    // A finished stage's moments are not carried into the next stage (fresh optimizer).
    if !stage_done {
        let mut tensors = Vec::with_capacity(opt.params.len() * 2);
        for (i, (name, _)) in opt.params.iter().enumerate() {
            tensors.push((format!("m.{name}"), opt.m[i].shallow_clone()));
            tensors.push((format!("v.{name}"), opt.v[i].shallow_clone()));
        }
        let meta = HashMap::from([("step".to_string(), opt.step.to_string())]);
        safetensors::write_file(&tmp.join(OPTIMIZER_FILE), &tensors, Some(meta))?;
    }
    let state = serde_json::json!({ "position": next, "config": t.cfg, "world_size": t.world.size });
    crate::fs::write_atomic(
        &tmp.join(STATE_FILE),
        serde_json::to_string_pretty(&state).expect("json").as_bytes(),
    )?;
    fsync_dir(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    fsync_dir(&root)?;
    if let Some(limit) = t.cfg.save_total_limit {
        let mut all = list(&root)?;
        while all.len() > limit.max(1) {
            let old = all.remove(0);
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
    }
    Ok(())
}

/// Complete checkpoints under `root`, oldest first (unfinished `.tmp` folders are ignored).
pub fn list(root: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(root) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() && p.extension().is_none() && p.join(STATE_FILE).exists())
            .collect(),
        Err(_) => vec![],
    };
    v.sort();
    Ok(v)
}

/// Reads a checkpoint folder, or the newest complete checkpoint of a run folder.
pub fn load(path: &Path) -> Result<Resume> {
    let dir = if path.join(STATE_FILE).exists() {
        path.to_path_buf()
    } else {
        list(&path.join("checkpoints"))?
            .pop()
            .ok_or_else(|| Error::format(path, "no complete checkpoint here (nor under checkpoints/)"))?
    };
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(&state_path, format!("invalid JSON: {e}")))?;
    let position: Position = serde_json::from_value(v["position"].clone())
        .map_err(|e| Error::format(&state_path, format!("position: {e}")))?;
    let config: TrainConfig = serde_json::from_value(v["config"].clone())
        .map_err(|e| Error::format(&state_path, format!("config: {e}")))?;
    // Checkpoints from before data parallelism were written by one process.
    let world_size = v.get("world_size").map_or(Some(1), |w| w.as_u64().map(|w| w as usize));
    let world_size = world_size.ok_or_else(|| Error::format(&state_path, "world_size: expected a count"))?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let optimizer = if opt_path.exists() {
        let bytes = std::fs::read(&opt_path).map_err(|e| Error::io(&opt_path, e))?;
        let (_, meta) = ::safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::format(&opt_path, format!("not a valid safetensors file: {e}")))?;
        let step = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("step"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::format(&opt_path, "metadata step: missing"))?;
        let mut moments = BTreeMap::new();
        safetensors::read_file(&opt_path, &mut moments)?;
        Some(OptimizerState { step, moments })
    } else {
        None
    };
    Ok(Resume { position, config, optimizer, dir, world_size })
}

pub(super) fn restore_optimizer(opt: &mut AdamW, state: OptimizerState) -> Result<()> {
    let mut moments = state.moments;
    for (i, (name, p)) in opt.params.iter().enumerate() {
        let mut take = |k: &str| {
            moments
                .remove(&format!("{k}.{name}"))
                .map(|t| t.to_device(p.device()))
                .ok_or_else(|| Error::invalid(format!("checkpoint optimizer state lacks {k}.{name}")))
        };
        // Into the views, so that the flat moment buffers see the restored values.
        let (m, v) = (take("m")?, take("v")?);
        opt.m[i].copy_(&m);
        opt.v[i].copy_(&v);
    }
    opt.step = state.step;
    Ok(())
}
