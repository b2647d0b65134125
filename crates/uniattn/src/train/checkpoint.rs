//! Checkpoints: a loadable model folder plus optimizer moments and the run position, written
//! into `step-N.tmp/` and renamed to `step-N/` only once every file is on disk, so a kill at
//! any moment leaves the previous checkpoint intact. Data order is a function of the seed and
//! the stage (see `stage_order`), so position + weights + moments resume a run exactly.
//! Under ZeRO-1 every rank writes its share of the moments (`optimizer-rank<r>.safetensors`)
//! into the same folder (shared by every machine of a multi-machine job) before rank 0 finishes
//! it; reading one consolidates the shares, so it resumes on any number of ranks.
use super::optim::AdamW;
use super::{Position, TrainConfig, Trainer};
use crate::distributed::zero::{self, Collective, MomentShard};
use crate::error::{Error, Result};
use crate::formats::safetensors;
use crate::loader;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Rank `r`'s share of the moments under ZeRO-1.
fn shard_file(rank: usize) -> String {
    format!("optimizer-rank{rank:05}.safetensors")
}

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
    /// accumulation examples (see [`super::accumulation_to_resume`]).
    pub world_size: usize,
}

fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| Error::io(dir, e))
}

/// Waits until every rank got here (a collective on one element, then its value read).
fn barrier(group: &dyn Collective, device: tch::Device) -> Result<()> {
    let t = Tensor::zeros([1], (tch::Kind::Float, device));
    group.all_reduce_sum(&t)?;
    let _ = t.double_value(&[0]);
    Ok(())
}

/// After every rank tried to write its share of a checkpoint into `dir` (`written`): every rank
/// learns which ranks could not (a collective on one flag a rank), so that all of them stop
/// with the same error, naming them, rather than some waiting for the others.
fn all_wrote(group: &dyn Collective, device: tch::Device, dir: &Path, written: Result<()>) -> Result<()> {
    let failed = Tensor::zeros([group.size() as i64], (tch::Kind::Float, device));
    if written.is_err() {
        let _ = failed.get(group.rank() as i64).fill_(1.0);
    }
    group.all_reduce_sum(&failed)?;
    let failed: Vec<f32> = Vec::try_from(failed.to_device(tch::Device::Cpu)).map_err(Error::from)?;
    let ranks: Vec<String> =
        failed.iter().enumerate().filter(|(_, &f)| f > 0.0).map(|(r, _)| r.to_string()).collect();
    if ranks.is_empty() {
        return Ok(());
    }
    let here = written.err().map_or(String::new(), |e| format!(" (here: {e})"));
    Err(Error::invalid(format!(
        "rank(s) {} could not write their share of the optimizer state into {}{here}: under --zero 1 \
         every rank writes its share into the checkpoint folder rank 0 makes, so on several machines \
         --out must be on a filesystem they all share",
        ranks.join(", "),
        dir.display()
    )))
}

/// Called on every rank: rank 0 writes the model and the run position, and the optimizer
/// state unless `stage_done`; under ZeRO-1 every rank writes its share of the moments first.
pub(super) fn save(
    t: &Trainer,
    opt: &AdamW,
    next: Position,
    stage_done: bool,
    group: Option<&dyn Collective>,
) -> Result<()> {
    let leader = t.world.is_leader();
    let shard = opt.moment_shard().filter(|_| !stage_done);
    if !leader && shard.is_none() {
        return Ok(());
    }
    let root = t.out.join("checkpoints");
    let dir = root.join(format!("step-{:06}", next.global_step));
    let tmp = root.join(format!("step-{:06}.tmp", next.global_step));
    if leader {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    if let Some(shard) = &shard {
        let group = group.ok_or_else(|| Error::invalid("a ZeRO-1 checkpoint is written by every rank"))?;
        let device = shard.m.device();
        barrier(group, device)?;
        // Rank 0 made the folder; a rank on a machine that does not see it cannot write there.
        let written = if tmp.is_dir() {
            write_shard(&tmp, opt, shard)
        } else {
            Err(Error::invalid(format!("{} does not exist on this machine", tmp.display())))
        };
        all_wrote(group, device, &tmp, written)?;
        if !leader {
            return Ok(());
        }
    }
    let kind = t.model.stem.kind;
    loader::save_folder(t.model, t.tokenizer, &tmp, kind, None, &[])?;
    // A finished stage's moments are not carried into the next stage (fresh optimizer).
    if !stage_done && shard.is_none() {
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
        let mut moments = BTreeMap::new();
        let meta = safetensors::read_file_with_metadata(&opt_path, &mut moments)?;
        let step = meta
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::format(&opt_path, "metadata step: missing"))?;
        Some(OptimizerState { step, moments })
    } else {
        read_shards(&dir)?
    };
    Ok(Resume { position, config, optimizer, dir, world_size })
}

/// This rank's share of the moments, with what consolidation needs: its place in the flat
/// buffer, the step, and every parameter's name and size in the buffer's order.
fn write_shard(dir: &Path, opt: &AdamW, shard: &MomentShard) -> Result<()> {
    let params: Vec<(&str, i64)> = opt.params.iter().map(|(n, p)| (n.as_str(), p.numel() as i64)).collect();
    let meta = HashMap::from([
        ("step".to_string(), opt.step.to_string()),
        ("rank".to_string(), shard.rank.to_string()),
        ("start".to_string(), shard.owned.start.to_string()),
        ("end".to_string(), shard.owned.end.to_string()),
        ("params".to_string(), serde_json::to_string(&params).expect("json")),
    ]);
    let tensors = [("m".to_string(), shard.m.shallow_clone()), ("v".to_string(), shard.v.shallow_clone())];
    safetensors::write_file(&dir.join(shard_file(shard.rank)), &tensors, Some(meta))
}

/// The moments of a ZeRO-1 checkpoint's shares, consolidated per parameter (`None` if it has
/// none).
fn read_shards(dir: &Path) -> Result<Option<OptimizerState>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("optimizer-rank")))
        .collect();
    if files.is_empty() {
        return Ok(None);
    }
    files.sort();
    let (mut shards, mut layout, mut step) = (Vec::new(), None, None);
    for path in &files {
        let mut tensors = BTreeMap::new();
        let meta = safetensors::read_file_with_metadata(path, &mut tensors)?;
        let field = |k: &str| -> Result<i64> {
            meta.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::format(path, format!("metadata {k}: expected an integer")))
        };
        let params: Vec<(String, i64)> = meta
            .get("params")
            .and_then(|p| serde_json::from_str(p).ok())
            .ok_or_else(|| Error::format(path, "metadata params: expected [[name, size], ...]"))?;
        let this_step = field("step")?;
        if layout.as_ref().is_some_and(|l| *l != params) || step.is_some_and(|s| s != this_step) {
            return Err(Error::format(path, "a share of another run or step than the other shares"));
        }
        step = Some(this_step);
        layout = Some(params);
        let mut take =
            |k: &str| tensors.remove(k).ok_or_else(|| Error::format(path, format!("tensor {k}: missing")));
        let (m, v) = (take("m")?, take("v")?);
        shards.push(MomentShard {
            rank: field("rank")? as usize,
            owned: field("start")?..field("end")?,
            m,
            v,
        });
    }
    let layout = layout.expect("at least one file");
    let total = layout.iter().map(|(_, n)| n).sum();
    let (m, v) = zero::consolidate(total, shards).map_err(|e| Error::format(dir, e.to_string()))?;
    let mut moments = BTreeMap::new();
    let mut at = 0;
    for (name, n) in &layout {
        moments.insert(format!("m.{name}"), m.narrow(0, at, *n));
        moments.insert(format!("v.{name}"), v.narrow(0, at, *n));
        at += n;
    }
    Ok(Some(OptimizerState { step: step.expect("at least one file"), moments }))
}

pub(super) fn restore_optimizer(opt: &mut AdamW, state: OptimizerState) -> Result<()> {
    let mut moments = state.moments;
    let (mut m, mut v) = (Vec::new(), Vec::new());
    for (name, p) in &opt.params {
        let mut take = |k: &str| {
            let t = moments
                .remove(&format!("{k}.{name}"))
                .ok_or_else(|| Error::invalid(format!("checkpoint optimizer state lacks {k}.{name}")))?;
            if t.numel() != p.numel() {
                return Err(Error::invalid(format!(
                    "checkpoint optimizer state {k}.{name}: {} values for a parameter of {}",
                    t.numel(),
                    p.numel()
                )));
            }
            Ok(t.view(p.size().as_slice()).to_device(p.device()))
        };
        m.push(take("m")?);
        v.push(take("v")?);
    }
    opt.set_moments(&m, &v, state.step);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optim::AdamWConfig;
    use tch::{Device, Kind};

    fn params() -> Vec<(String, Tensor)> {
        [vec![7i64, 5], vec![130], vec![3, 3, 3]]
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("p{i}"), Tensor::zeros(s.as_slice(), (Kind::Float, Device::Cpu))))
            .collect()
    }

    /// Per-parameter moments with distinct values everywhere.
    fn moments(offset: f64) -> Vec<Tensor> {
        params()
            .iter()
            .scan(0i64, |at, (_, p)| {
                let n = p.numel() as i64;
                let t = (Tensor::arange(n, (Kind::Float, Device::Cpu)) + (*at as f64 + offset))
                    .view(p.size().as_slice());
                *at += n;
                Some(t)
            })
            .collect()
    }

    /// ZeRO-1 shares written by two ranks read back as every parameter's moments, restore into
    /// an unsharded optimizer and into three ranks' chunks; a missing share is named.
    #[test]
    fn zero_shares_consolidate_for_any_number_of_ranks() {
        let dir = tempfile::tempdir().unwrap();
        let (m, v) = (moments(0.0), moments(0.5));
        for rank in 0..2 {
            let mut opt = AdamW::sharded(AdamWConfig::default(), params(), rank, 2);
            opt.set_moments(&m, &v, 7);
            write_shard(dir.path(), &opt, &opt.moment_shard().unwrap()).unwrap();
        }
        let state = read_shards(dir.path()).unwrap().expect("shares found");
        assert_eq!(state.step, 7);
        for (i, (name, _)) in params().iter().enumerate() {
            assert!(
                state.moments[&format!("m.{name}")].view(m[i].size().as_slice()).equal(&m[i]),
                "m.{name}"
            );
            assert!(
                state.moments[&format!("v.{name}")].view(v[i].size().as_slice()).equal(&v[i]),
                "v.{name}"
            );
        }
        let mut one = AdamW::new(AdamWConfig::default(), params());
        restore_optimizer(&mut one, read_shards(dir.path()).unwrap().unwrap()).unwrap();
        assert!(one.m.iter().zip(&m).all(|(a, b)| a.equal(b)) && one.step == 7);
        let flat_v = Tensor::cat(&v.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0);
        for rank in 0..3 {
            let mut opt = AdamW::sharded(AdamWConfig::default(), params(), rank, 3);
            restore_optimizer(&mut opt, read_shards(dir.path()).unwrap().unwrap()).unwrap();
            let s = opt.moment_shard().unwrap();
            let want = flat_v.narrow(0, s.owned.start, s.owned.end - s.owned.start);
            assert!(s.v.equal(&want), "rank {rank} of 3: its chunk of v");
        }
        std::fs::remove_file(dir.path().join(shard_file(1))).unwrap();
        let e = read_shards(dir.path()).err().unwrap().to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
