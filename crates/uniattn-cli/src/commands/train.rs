//! Post-training (dense, UniAttn two-stage, baselines).
use crate::args::*;
use crate::progress;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use uniattn::convert::{CalibData, PlanSpec};
use uniattn::train::job::TrainJob;
use uniattn::train::optim::AdamWConfig;
use uniattn::train::TrainConfig;

#[derive(Args)]
#[command(
    args_override_self = true,
    after_help = "Example:\n  uniattn train --model smollm2 --variant uniattn --plan-blocks 15-18,20-22 --data data/pmc_llama_instructions_1000.json --out runs/uniattn\n  uniattn train --config configs/smollm2_uniattn.toml --lr 1e-5   (flags override the file)"
)]
pub struct TrainArgs {
    /// A TOML file of these options without the leading --, e.g. `micro-batch = 8`, `bf16 = true`;
    /// flags given as well override it. The run folder keeps the resolved options in
    /// train_config.toml, which --config takes to repeat the run
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The model to start from: dense (GGUF, folder, short name) or a converted UniAttn folder
    #[arg(long)]
    pub model: PathBuf,
    /// Training data: JSON/JSONL rows (Alpaca, prompt/response, messages, ShareGPT) or a text file
    #[arg(long)]
    pub data: PathBuf,
    /// Validation data (default: --val-fraction of --data)
    #[arg(long)]
    pub val_data: Option<PathBuf>,
    /// Fraction of the training rows held out for validation when no --val-data is given
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// What to post-train: the dense model, UniAttn (two stages) or a baseline on the same plan
    #[arg(long, value_enum, default_value_t = VariantArg::Dense)]
    pub variant: VariantArg,
    /// SuperBlock plan g:begin:end (for converting on the fly)
    #[arg(long, conflicts_with = "plan_blocks")]
    pub plan: Option<String>,
    /// Explicit SuperBlocks, first-last inclusive, e.g. 16-19,20-23
    #[arg(long)]
    pub plan_blocks: Option<String>,
    /// Calibration file for the on-the-fly UniAttn conversion (default: --data)
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Rows of the calibration file for the closed-form W_c, e.g. 0..256
    #[arg(long)]
    pub calib_rows: Option<String>,
    /// Peak learning rate (cosine schedule with warm-up)
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    /// Learning rate of UniAttn's stage 1 (W_c only); default --lr
    #[arg(long)]
    pub stage1_lr: Option<f64>,
    /// AdamW weight decay (the reference recipe uses none)
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// AdamW beta1
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    /// AdamW beta2
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f64,
    /// AdamW epsilon
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f64,
    /// Sequences per forward/backward pass
    #[arg(long, default_value_t = 4, value_parser = at_least_one())]
    pub micro_batch: usize,
    /// Micro-batches per optimizer step
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    pub grad_accum: usize,
    /// Passes over the training data per stage
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    pub epochs: usize,
    /// Longest training sequence in tokens (longer rows are cut)
    #[arg(long, default_value_t = 1024)]
    pub max_len: usize,
    /// Fraction of each stage spent warming the learning rate up
    #[arg(long, default_value_t = 0.03)]
    pub warmup_ratio: f64,
    /// Clip the gradient norm to this (0 = off)
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Seed of the data order and the validation split
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Validation loss every N optimizer steps (and at the end of each stage)
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    /// Checkpoint every N optimizer steps (and at the end of each stage)
    #[arg(long, default_value_t = 200)]
    pub save_every: usize,
    /// Keep only the newest N checkpoints
    #[arg(long)]
    pub save_total_limit: Option<usize>,
    /// Precision of the final model's file (checkpoints stay f32)
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub save_dtype: Dtype,
    /// Stop after N optimizer steps (resume later with --resume)
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Skip malformed rows (they are counted and listed) instead of stopping
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// bf16 autocast with f32 master weights (GPU)
    #[arg(long)]
    pub bf16: bool,
    /// Activation checkpointing: recompute each layer (each SuperBlock) in the backward pass
    #[arg(long)]
    pub recompute_layers: bool,
    /// Pack short examples into --max-len sequences (no attention across examples)
    #[arg(long)]
    pub pack: bool,
    /// A checkpoint folder, or a run folder (its newest checkpoint)
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// The run folder: checkpoints/, metrics.jsonl, loss.png and the final model in final/
    #[arg(long)]
    pub out: PathBuf,
    /// Start over in an --out that holds an earlier run (removes its run files)
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Record optimizer steps 4-6 with libtorch's profiler (CUDA kernels and operators) and
    /// write them to FILE as a Chrome trace (open in https://ui.perfetto.dev); CUDA only
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    #[command(flatten)]
    pub ranks: RankArgs,
    /// ZeRO stage over the ranks: 1 keeps each rank's share of the optimizer's moments only
    /// (reduce-scatter, update, all-gather: the same updates, 1/N of the moments' memory)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub zero: u8,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

/// `config`: every option's final value, as a config file (saved in the run folder).
pub fn train(a: TrainArgs, config: String) -> Result<()> {
    let Some(world) = a.ranks.world()? else { return Ok(()) };
    if world.is_leader() {
        println!("configuration (saved as train_config.toml in {}):\n{config}", a.out.display());
    }
    let (device, kind) = setup(&a.dev)?;
    // Each rank trains on its machine's GPU `LOCAL_RANK`.
    let device =
        if world.size > 1 && device.is_cuda() { tch::Device::Cuda(world.local_rank) } else { device };
    let plan = match (a.plan, a.plan_blocks) {
        (Some(p), _) => Some(PlanSpec::Grouped(p)),
        (None, Some(b)) => Some(PlanSpec::Blocks(b)),
        _ => None,
    };
    let calib = a
        .calib
        .map(|path| -> uniattn::Result<CalibData> {
            Ok(CalibData {
                path,
                rows: a.calib_rows.as_deref().map(uniattn::data::parse_range).transpose()?,
                heldout_fraction: 0.2,
                max_len: a.max_len,
            })
        })
        .transpose()?;
    let job = TrainJob {
        model: a.model,
        data: a.data,
        val_data: a.val_data,
        val_fraction: a.val_fraction,
        variant: a.variant.variant(),
        plan,
        calib,
        max_len: a.max_len,
        skip_bad_rows: a.skip_bad_rows,
        overwrite: a.overwrite,
        config_file: Some(config),
        profile: a.profile,
        cfg: TrainConfig {
            stages: vec![],
            optim: AdamWConfig {
                lr: a.lr,
                beta1: a.beta1,
                beta2: a.beta2,
                eps: a.eps,
                weight_decay: a.weight_decay,
            },
            stage1_lr: a.stage1_lr,
            micro_batch: a.micro_batch,
            grad_accum: a.grad_accum,
            epochs: a.epochs,
            warmup_ratio: a.warmup_ratio,
            max_grad_norm: a.max_grad_norm,
            seed: a.seed,
            eval_every: a.eval_every,
            save_every: a.save_every,
            save_total_limit: a.save_total_limit,
            stop_after: a.max_steps,
            autocast: a.bf16,
            recompute_layers: a.recompute_layers,
            pack: a.pack,
            zero: a.zero,
        },
        resume: a.resume,
        out: a.out.clone(),
        kind,
        save_kind: a.save_dtype.kind(),
        device,
        world: world.clone(),
        hang_timeout: a.ranks.hang_timeout(),
    };
    let pb = progress::with_template(1, "stage {prefix} {bar:30} {pos}/{len} {msg} ETA {eta}");
    let mut last_stage = usize::MAX;
    let s = uniattn::train::job::run(job, |m, total| {
        if m.stage != last_stage {
            last_stage = m.stage;
            pb.set_length(total as u64);
            pb.set_prefix((m.stage + 1).to_string());
        }
        pb.set_position(m.step as u64);
        let val = m.val_loss.map_or(String::new(), |v| format!(" val {v:.4}"));
        pb.set_message(format!("loss {:.4}{val} lr {:.2e} {:.0} tok/s", m.loss, m.lr, m.tokens_per_second));
    })?;
    pb.finish_and_clear();
    if !world.is_leader() {
        return Ok(());
    }
    if !s.skipped_rows.is_empty() {
        eprintln!("not trained on: {}", s.skipped_rows.join("; "));
    }
    println!("examples     {} train, {} validation", s.train_examples, s.val_examples);
    for m in s.history.iter().filter(|m| m.val_loss.is_some()) {
        println!(
            "stage {} step {:>5}  loss {:.4}  val {:.4}",
            m.stage + 1,
            m.step,
            m.loss,
            m.val_loss.unwrap_or(f64::NAN)
        );
    }
    println!(
        "wrote        {} (metrics.jsonl, loss.png, checkpoints/ in {})",
        s.final_dir.display(),
        a.out.display()
    );
    Ok(())
}
