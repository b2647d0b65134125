//! Argument groups several commands share, and the helpers they use.
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use uniattn::convert::CalibData;
use uniattn::engine::{Engine, EngineOptions, SamplingParams, Scheduler};
use uniattn::loader;
use uniattn::runtime;
use uniattn::train::job::Variant;

/// How a command's report comes out as JSON, the same for every command that reports numbers:
/// `--json` prints it on stdout instead of the table (the same fields, on one line, so that
/// scripts can collect JSON lines), `--json-out FILE` writes it to FILE (indented) as well as
/// printing the table.
#[derive(Args, Debug, Clone, Default)]
pub struct JsonArgs {
    /// Print the report as JSON (the same fields as the table) instead of the table
    #[arg(long)]
    pub json: bool,
    /// Also write the report as JSON to FILE (the table is printed too)
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
}

impl JsonArgs {
    /// Writes `report` where asked, then prints it as JSON (`--json`) or through `table`.
    pub fn emit<T: serde::Serialize>(&self, report: &T, table: impl FnOnce() -> String) -> Result<()> {
        if let Some(path) = &self.json_out {
            uniattn::fs::write_atomic(path, serde_json::to_string_pretty(report)?.as_bytes())?;
        }
        if self.json {
            println!("{}", serde_json::to_string(report)?);
        } else {
            println!("{}", table());
        }
        Ok(())
    }
}

/// A tensor precision on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Dtype {
    #[value(alias = "float32")]
    F32,
    #[value(alias = "bfloat16")]
    Bf16,
    #[value(alias = "float16")]
    F16,
    /// Double precision: for reference checks against other implementations (slow)
    #[value(alias = "float64")]
    F64,
}

impl Dtype {
    pub fn kind(self) -> tch::Kind {
        match self {
            Dtype::F32 => tch::Kind::Float,
            Dtype::Bf16 => tch::Kind::BFloat16,
            Dtype::F16 => tch::Kind::Half,
            Dtype::F64 => tch::Kind::Double,
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
pub enum Fit {
    /// Streaming normal equations over every calibration token, f64, ridge chosen on held-out rows
    Ours,
    /// The authors' position-averaged pseudo-inverse
    Reference,
    /// W_c = 0: softmax unification without compensation
    None,
}

/// What `train` post-trains.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum VariantArg {
    Dense,
    Uniattn,
    SoftmaxOnly,
    Cla,
    Layerdrop,
    /// Each reuse layer's K/V heads mean-pooled to half (intra-layer KV sharing, GQA-style)
    KvHeads,
}

impl VariantArg {
    pub fn variant(self) -> Variant {
        use uniattn::plan::ReuseKind;
        match self {
            VariantArg::Dense => Variant::Dense,
            VariantArg::Uniattn => Variant::Reuse(ReuseKind::Uniattn),
            VariantArg::SoftmaxOnly => Variant::Reuse(ReuseKind::SoftmaxOnly),
            VariantArg::Cla => Variant::Reuse(ReuseKind::Cla),
            VariantArg::Layerdrop => Variant::Reuse(ReuseKind::Layerdrop),
            VariantArg::KvHeads => Variant::Reuse(ReuseKind::KvHeads),
        }
    }
}

/// A count that must be at least 1 (refused, not silently raised).
pub fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

#[derive(Args, Clone)]
pub struct DeviceArgs {
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Compute precision
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
}

#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Most tokens to generate per prompt
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass (1 = off)
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// 0 = off
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// 0 = off
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f64,
    /// 1 = off
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    /// Seed of each request's own sampler (the same text whatever else is in the batch)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop before this text; repeatable
    #[arg(long)]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
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
pub struct EngineArgs {
    /// Sequences decoded together
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Longest sequence (prompt + generated tokens)
    #[arg(long, default_value_t = 4096)]
    pub max_len: usize,
    /// Prompt tokens per prefill call
    #[arg(long, default_value_t = 512)]
    pub prefill_chunk: usize,
}

impl EngineArgs {
    pub fn scheduler(&self, m: loader::LoadedModel) -> Result<Scheduler> {
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
pub struct GenerationArgs {
    /// A GGUF file, a model folder or a fetched model's short name (smollm2, ...)
    #[arg(long)]
    pub model: PathBuf,
    /// A system message for the chat template
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

/// The plans analyze proposes and search-plan compares.
#[derive(Args, Clone)]
pub struct PlanShapeArgs {
    /// Reuse layers of the plan
    #[arg(long)]
    pub reuse_layers: usize,
    /// Lowest layer a SuperBlock may start at (default: half the layers)
    #[arg(long)]
    pub min_layer: Option<usize>,
    /// Largest SuperBlock
    #[arg(long, default_value_t = 4)]
    pub max_group: usize,
}

impl PlanShapeArgs {
    pub fn min_layer(&self, num_layers: usize) -> usize {
        self.min_layer.unwrap_or(num_layers / 2)
    }
}

/// The rows the closed-form W_c is fitted on (convert, search-plan).
#[derive(Args, Clone)]
pub struct CalibArgs {
    /// Calibration data for W_c's closed-form fit: JSON/JSONL instruction rows (Alpaca
    /// template) or a plain text file (needed wherever W_c is fitted)
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Rows of the calibration file to use, e.g. 0..256 (default: all)
    #[arg(long)]
    pub calib_rows: Option<String>,
    /// Fraction of those rows held out to choose the ridge strength
    #[arg(long, default_value_t = 0.2)]
    pub heldout_fraction: f64,
    /// Tokens per calibration sequence at most
    #[arg(long, default_value_t = 1024)]
    pub max_len: usize,
    /// Batch x length per calibration chunk
    #[arg(long, default_value_t = 4096)]
    pub chunk_tokens: usize,
}

impl CalibArgs {
    /// The rows to read; `heldout` says whether the fit uses held-out rows (only ours does).
    pub fn data(&self, heldout: bool) -> uniattn::Result<CalibData> {
        let path = self.calib.clone().ok_or_else(|| {
            uniattn::Error::invalid(
                "--calib FILE is needed: W_c is fitted in closed form on calibration rows",
            )
        })?;
        Ok(CalibData {
            path,
            rows: self.calib_rows.as_deref().map(uniattn::data::parse_range).transpose()?,
            heldout_fraction: if heldout { self.heldout_fraction } else { 0.0 },
            max_len: self.max_len,
        })
    }
}

pub fn setup(dev: &DeviceArgs) -> Result<(tch::Device, tch::Kind)> {
    let info = runtime::init()?;
    eprintln!("{info}");
    Ok((runtime::parse_device(&dev.device)?, dev.dtype.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--json-out` writes the report itself (indented JSON that reads back to the same value);
    /// the table is built only when it is printed.
    #[test]
    fn json_out_writes_the_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        let report = serde_json::json!({"tokens_per_second": 12.5, "rows": [1, 2]});
        let args = JsonArgs { json: false, json_out: Some(path.clone()) };
        let mut tabled = false;
        args.emit(&report, || {
            tabled = true;
            String::new()
        })
        .unwrap();
        assert!(tabled, "without --json the table is printed");
        let back: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, report);
        let quiet = JsonArgs { json: true, json_out: None };
        quiet.emit(&report, || panic!("with --json no table is built")).unwrap();
    }
}

/// Spreading a job over GPUs, one process each (torchrun's options and environment).
#[derive(Args, Clone)]
pub struct RankArgs {
    /// GPUs on this machine to use, one process each, data-parallel over NCCL (train: each
    /// optimizer step's micro-batches go round the ranks, N x --micro-batch x --grad-accum
    /// examples a step; convert: the calibration rows do; eval mc: the questions' choices;
    /// search-plan: both, and the held-out pieces).
    /// Under torchrun (RANK, WORLD_SIZE, ... set) each process is one rank
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    pub nproc_per_node: usize,
    /// Machines in the job (as torchrun's --nnodes); start the same command on each
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    pub nnodes: usize,
    /// This machine's place among them, 0-based (as torchrun's --node-rank)
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// Rank 0's machine, where the ranks meet before the job (as torchrun's --master-addr)
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// Rank 0's TCP port for that meeting
    #[arg(long, default_value_t = 29500)]
    pub master_port: u16,
    /// Seconds a rank may hold the others up without progress (stuck before its step's
    /// collectives) before every rank stops, naming it; evaluation, checkpoints and the first
    /// step get 10x, every rank waiting 5x the longest step. 0: never
    #[arg(long, default_value_t = 60)]
    pub hang_timeout: u64,
}

impl RankArgs {
    /// This process's place in the job; None when this process started the machine's ranks
    /// (this same command, told their place, one process per GPU) and they have finished.
    pub fn world(&self) -> anyhow::Result<Option<uniattn::distributed::World>> {
        use uniattn::distributed::{launcher, World};
        if let Some(w) = World::from_env()? {
            return Ok(Some(w));
        }
        if self.nproc_per_node * self.nnodes == 1 {
            return Ok(Some(World::single()));
        }
        let node = launcher::Node {
            nproc: self.nproc_per_node,
            nnodes: self.nnodes,
            node_rank: self.node_rank,
            master_addr: self.master_addr.clone(),
            master_port: self.master_port,
        };
        let first = self.node_rank * self.nproc_per_node;
        println!(
            "starting ranks {first}-{} of {} on this machine (rank 0 meets the others at {}:{})",
            first + self.nproc_per_node - 1,
            self.nproc_per_node * self.nnodes,
            self.master_addr,
            self.master_port
        );
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        launcher::run(&node, &std::env::current_exe()?, &args)?;
        Ok(None)
    }

    pub fn hang_timeout(&self) -> Option<std::time::Duration> {
        (self.hang_timeout > 0).then(|| std::time::Duration::from_secs(self.hang_timeout))
    }
}
