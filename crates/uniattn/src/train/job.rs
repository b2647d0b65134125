//! A whole training run as the CLI starts it: load the model, build the variant's
//! architecture, read and split the data, train, and write the final model with its metrics
//! and loss curve.
use super::checkpoint::{self, Resume};
use super::dataset::{self, TokenizedExample};
use super::{StageKind, StepMetrics, TrainConfig, Trainer};
use crate::calibrate::{calibrate, CalibOptions, FitMethod};
use crate::convert::{calibration_sequences, CalibData, PlanSpec};
use crate::data::{self, Record};
use crate::distributed::nccl::Communicator;
use crate::distributed::rendezvous::Watch;
use crate::distributed::World;
use crate::error::{Error, Result};
use crate::loader::{self, read_parts};
use crate::model::Transformer;
use crate::plan::ReuseKind;
use crate::rng::SplitMix64;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Dense,
    Reuse(ReuseKind),
}

impl Variant {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "dense" => Ok(Variant::Dense),
            s => ReuseKind::parse(s).map(Variant::Reuse).ok_or_else(|| {
                let names: Vec<&str> = ReuseKind::ALL.iter().map(|k| k.name()).collect();
                Error::invalid(format!("variant {s}: expected dense or one of {}", names.join(", ")))
            }),
        }
    }
}

pub struct TrainJob {
    pub model: PathBuf,
    pub data: PathBuf,
    pub val_data: Option<PathBuf>,
    pub val_fraction: f64,
    pub variant: Variant,
    pub plan: Option<PlanSpec>,
    /// Calibration rows for an on-the-fly UniAttn conversion (default: the training file).
    pub calib: Option<CalibData>,
    pub max_len: usize,
    pub skip_bad_rows: bool,
    pub cfg: TrainConfig,
    pub resume: Option<PathBuf>,
    pub out: PathBuf,
    /// Start over in an `out` that holds an earlier run (its run files are removed first).
    pub overwrite: bool,
    /// How the run was asked for, as a config file (the command line's resolved options):
    /// written into `out` as [`CONFIG_FILE`].
    pub config_file: Option<String>,
    /// Where to write a profile of optimizer steps 4-6 (see [`Trainer::profile`]).
    pub profile: Option<PathBuf>,
    pub kind: Kind,
    /// Precision of the final model's file (checkpoints stay f32 so that a resume is exact):
    /// bf16 halves what a run leaves on disk and is what inference loads anyway.
    pub save_kind: Kind,
    pub device: Device,
    /// This process's rank (one GPU each, `device` being its GPU); [`World::single`] alone.
    pub world: World,
    /// Over several ranks: how long a rank may hold the others up, silent, before every rank
    /// stops naming it (see [`crate::distributed::progress`]); None: never.
    pub hang_timeout: Option<std::time::Duration>,
}

pub struct TrainSummary {
    pub history: Vec<StepMetrics>,
    pub final_dir: PathBuf,
    pub train_examples: usize,
    pub val_examples: usize,
    /// Rows not trained on, and why.
    pub skipped_rows: Vec<String>,
}

fn tokenize_file(
    path: &Path,
    tok: &crate::tokenizer::Tokenizer,
    max_len: usize,
    skip_bad: bool,
) -> Result<(Vec<TokenizedExample>, Vec<String>)> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "json" || ext == "jsonl" {
        let (records, mut bad): (Vec<Record>, Vec<String>) = data::read_records(path, skip_bad)?;
        let examples = dataset::tokenize(tok, &records, max_len)?;
        let dropped = records.len() - examples.len();
        if dropped > 0 {
            bad.push(format!("{dropped} rows have no response token within --max-len {max_len}"));
        }
        Ok((examples, bad))
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Ok((dataset::text_chunks(tok, &text, max_len)?, vec![]))
    }
}

/// The model with the variant's architecture, and the stages that train it. Over several
/// ranks (`group`) an on-the-fly conversion's calibration splits its chunks over them.
fn build(
    job: &TrainJob,
    group: Option<&dyn crate::distributed::zero::Collective>,
) -> Result<(Transformer, crate::tokenizer::Tokenizer, Vec<StageKind>)> {
    let parts = read_parts(&job.model)?;
    let has_plan = !parts.plan.is_dense();
    let tokenizer = parts.tokenizer;
    match job.variant {
        Variant::Dense => {
            if has_plan {
                return Err(Error::invalid(format!(
                    "{}: dense training needs a dense model, this one has a plan",
                    job.model.display()
                )));
            }
            let m =
                Transformer::from_weights(parts.weights, parts.cfg, parts.plan, job.kind, job.device, false)?;
            Ok((m, tokenizer, vec![StageKind::All]))
        }
        Variant::Reuse(kind) if has_plan => {
            if parts.plan.reuse != kind || job.plan.is_some() {
                return Err(Error::invalid(format!(
                    "{}: already converted ({:?}, {}); train it without --plan or start from the dense model",
                    job.model.display(),
                    parts.plan.reuse,
                    parts.plan.describe()
                )));
            }
            let m =
                Transformer::from_weights(parts.weights, parts.cfg, parts.plan, job.kind, job.device, false)?;
            Ok((m, tokenizer, stages_of(kind)))
        }
        Variant::Reuse(kind) => {
            let spec = job.plan.as_ref().ok_or_else(|| {
                Error::invalid("--variant needs --plan or --plan-blocks (or a converted model)")
            })?;
            let plan = spec.resolve(parts.cfg.num_layers)?.with_reuse(kind);
            let dense =
                Transformer::from_weights(parts.weights, parts.cfg, parts.plan, job.kind, job.device, false)?;
            let wc = if kind.spec().compensation {
                let calib = job.calib.clone().unwrap_or(CalibData {
                    path: job.data.clone(),
                    rows: None,
                    heldout_fraction: 0.2,
                    max_len: job.max_len,
                });
                let (fit, held) = calibration_sequences(&tokenizer, &calib)?;
                let opts = CalibOptions {
                    method: FitMethod::Streaming { ridge: None },
                    chunk_tokens: 4096,
                    state_device: job.device,
                    pad_id: 0,
                };
                calibrate(&dense, &plan, &fit, &held, &opts, group, |_, _| {})?.0
            } else {
                Default::default()
            };
            Ok((dense.apply_plan(plan, wc)?, tokenizer, stages_of(kind)))
        }
    }
}

/// The post-training stages of a reuse kind: W_c alone first where the kind has it.
fn stages_of(kind: ReuseKind) -> Vec<StageKind> {
    if kind.spec().two_stage {
        vec![StageKind::CompensationOnly, StageKind::All]
    } else {
        vec![StageKind::All]
    }
}

/// The file in the run folder that records the options the run was started with.
pub const CONFIG_FILE: &str = "train_config.toml";

/// What a run leaves in its folder (and TensorBoard event files); a folder holding any of them
/// belongs to a run already.
const RUN_FILES: [&str; 4] = [super::METRICS_FILE, "checkpoints", "final", "loss.png"];

/// A new run may not mix with an earlier one in the same folder (its checkpoints would be
/// pruned and resumed, its metrics interleaved): refused unless resuming, or cleared with
/// `overwrite`.
fn claim_run_folder(out: &Path, resuming: bool, overwrite: bool) -> Result<()> {
    let mut used: Vec<String> =
        RUN_FILES.iter().filter(|f| out.join(f).exists()).map(|f| f.to_string()).collect();
    if let Ok(entries) = std::fs::read_dir(out) {
        let events = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned());
        used.extend(events.filter(|n| n.starts_with(super::events::FILE_PREFIX)));
    }
    if used.is_empty() || resuming {
        return Ok(());
    }
    if !overwrite {
        return Err(Error::invalid(format!(
            "{} holds an earlier run ({}): resume it with --resume {}, choose another --out, or pass --overwrite to start over",
            out.display(),
            used.join(", "),
            out.display()
        )));
    }
    for f in &used {
        let p = out.join(f);
        let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        r.map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

/// The communicator of a job of several ranks (see [`crate::distributed::join_ranks`]); the
/// job that must match on every rank is `config_file`, the resolved options, without the
/// machine's own place.
fn communicator(job: &TrainJob) -> Result<Option<(Communicator, Watch)>> {
    let same: String = job
        .config_file
        .as_deref()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with("node-rank"))
        .collect::<Vec<_>>()
        .join("\n");
    crate::distributed::join_ranks(&job.world, job.device, &same, job.hang_timeout)
}

pub fn run(job: TrainJob, on_step: impl FnMut(&StepMetrics, usize)) -> Result<TrainSummary> {
    let leader = job.world.is_leader();
    if leader {
        claim_run_folder(&job.out, job.resume.is_some(), job.overwrite)?;
    }
    let resume: Option<Resume> = job.resume.as_deref().map(checkpoint::load).transpose()?;
    let (comm, watch) = communicator(&job)?.unzip();
    if let (true, Some(text)) = (leader, &job.config_file) {
        std::fs::create_dir_all(&job.out).map_err(|e| Error::io(&job.out, e))?;
        crate::fs::write_atomic(&job.out.join(CONFIG_FILE), text.as_bytes())?;
    }
    let (model, tokenizer, stages, cfg) = match &resume {
        Some(r) => {
            let m = loader::load(&r.dir, job.kind, job.device)?;
            let stages = r.config.stages.clone();
            (m.model, m.tokenizer, stages, r.config.clone())
        }
        None => {
            let group = comm.as_ref().map(|c| c as &dyn crate::distributed::zero::Collective);
            let (m, t, s) = build(&job, group)?;
            (m, t, s, job.cfg.clone())
        }
    };
    let mut cfg = TrainConfig { stages, stop_after: job.cfg.stop_after, ..cfg };
    if let Some(r) = resume.as_ref().filter(|r| r.world_size != job.world.size) {
        let accum = super::accumulation_to_resume(&cfg, r.world_size, job.world.size)
            .map_err(|e| Error::format(&r.dir, e))?;
        if leader {
            eprintln!(
                "note: written on {} GPU(s), resumed on {}: --grad-accum {} -> {accum}, so that each step still \
                 takes {} examples",
                r.world_size,
                job.world.size,
                cfg.grad_accum,
                cfg.micro_batch * cfg.grad_accum * r.world_size
            );
        }
        cfg.grad_accum = accum;
    }
    let (mut train, skipped) = tokenize_file(&job.data, &tokenizer, job.max_len, job.skip_bad_rows)?;
    let val = match &job.val_data {
        Some(p) => tokenize_file(p, &tokenizer, job.max_len, job.skip_bad_rows)?.0,
        None => {
            // A fixed held-out split, drawn from the seed before any training order.
            SplitMix64(cfg.seed).shuffle(&mut train);
            let n_val = ((train.len() as f64) * job.val_fraction).round() as usize;
            train.split_off(train.len() - n_val.min(train.len().saturating_sub(1)))
        }
    };
    let train = if cfg.pack { dataset::pack(train, job.max_len) } else { train };
    let mut trainer = Trainer {
        model: &model,
        tokenizer: &tokenizer,
        cfg,
        train,
        val,
        out: job.out.clone(),
        profile: job.profile.clone(),
        world: job.world.clone(),
        comm: comm.map(|c| Box::new(c) as Box<dyn crate::distributed::zero::Collective>),
        watch: watch.as_ref(),
    };
    let history = trainer.run(resume, on_step);
    if let (Err(_), Some(comm)) = (&history, trainer.comm.take()) {
        // Leave at once: the other ranks then fail in NCCL instead of waiting for this one.
        comm.abort();
    }
    let history = history?;
    let final_dir = job.out.join("final");
    if leader {
        let staged = crate::fs::OutputDir::prepare(&final_dir, true, &[])?;
        loader::save_folder(&model, &tokenizer, staged.path(), job.save_kind, None, &[])?;
        staged.commit()?;
        // The whole run's curve, also where this invocation resumed it.
        plot_losses(&super::run_steps(&job.out)?, &job.out.join("loss.png"))?;
    }
    if let Some(w) = &watch {
        w.finish();
    }
    Ok(TrainSummary {
        history,
        final_dir,
        train_examples: trainer.train.len(),
        val_examples: trainer.val.len(),
        skipped_rows: skipped,
    })
}

/// Training and validation loss against the optimizer step (over all stages).
fn plot_losses(history: &[StepMetrics], path: &Path) -> Result<()> {
    use crate::plot::{Chart, Series, XyChart};
    let train: Vec<[f64; 2]> = history.iter().map(|m| [m.global_step as f64, m.loss]).collect();
    let val: Vec<[f64; 2]> =
        history.iter().filter_map(|m| m.val_loss.map(|v| [m.global_step as f64, v])).collect();
    if train.len() < 2 {
        return Ok(());
    }
    let mut series = vec![Series { name: "training loss (per step)".into(), points: train, y_ranges: None }];
    if !val.is_empty() {
        series.push(Series { name: "validation loss".into(), points: val, y_ranges: None });
    }
    let stages = history.iter().map(|m| m.stage).max().unwrap_or(0) + 1;
    let chart = XyChart {
        title: format!("loss, {stages} stage{}", if stages > 1 { "s" } else { "" }),
        x_label: "optimizer step".into(),
        y_label: "cross-entropy (nats per target token)".into(),
        log2_x: false,
        series,
    };
    Chart::Lines(chart).save(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_used_run_folder_is_refused_unless_resumed_or_overwritten() {
        let out = tempfile::tempdir().unwrap();
        let dir = out.path();
        super::claim_run_folder(dir, false, false).unwrap();
        std::fs::create_dir(dir.join("checkpoints")).unwrap();
        std::fs::write(dir.join("metrics.jsonl"), "{}\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        let events = dir.join("events.out.tfevents.1.host.2");
        std::fs::write(&events, "").unwrap();
        let err = super::claim_run_folder(dir, false, false).unwrap_err().to_string();
        assert!(
            err.contains("metrics.jsonl, checkpoints")
                && err.contains("events.out")
                && err.contains("--resume"),
            "{err}"
        );
        super::claim_run_folder(dir, true, false).unwrap();
        assert!(dir.join("checkpoints").exists(), "a resume keeps the run");
        super::claim_run_folder(dir, false, true).unwrap();
        assert!(!dir.join("checkpoints").exists() && !dir.join("metrics.jsonl").exists() && !events.exists());
        assert!(dir.join("notes.txt").exists(), "only run files are removed");
    }
}
