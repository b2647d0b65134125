//! Engine benchmarks: several models over a grid of batch sizes and contexts.
use crate::args::*;
use crate::progress;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use uniattn::engine::{bench, Engine, EngineOptions};
use uniattn::loader;
use uniattn::runtime;

#[derive(Args)]
#[command(
    after_help = "Example:\n  uniattn bench --model smollm2 --model runs/smol-uni --batch 1,8 --context 512"
)]
pub struct BenchArgs {
    /// A model (GGUF or folder); repeat to compare, the first is the baseline
    #[arg(long, required = true)]
    pub model: Vec<PathBuf>,
    /// Batch sizes (comma-separated)
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    pub batch: Vec<usize>,
    /// Prompt lengths in tokens (comma-separated)
    #[arg(long, value_delimiter = ',', default_value = "512,2048,8192")]
    pub context: Vec<usize>,
    /// Timed decode steps per case
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Prompt tokens per prefill call
    #[arg(long, default_value_t = 512)]
    pub prefill_chunk: usize,
    /// Each case first runs untimed, repeated for at least this many seconds (new shapes
    /// and an idle GPU's low clocks would otherwise be timed)
    #[arg(long, default_value_t = 2.0)]
    pub warm_up: f64,
    /// Peak memory bandwidth in GB/s for the bound (known cards are recognised)
    #[arg(long)]
    pub bandwidth_gbs: Option<f64>,
    #[command(flatten)]
    pub json: JsonArgs,
    /// Also draw decode tokens/s against batch size (SVG)
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write a Chrome trace of three decode steps of each case into this folder (every
    /// kernel's time on a timeline; open in Perfetto, or summarise with
    /// scripts/device/trace_summary.py)
    #[arg(long)]
    pub trace: Option<PathBuf>,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn bench(
    BenchArgs {
        model,
        batch,
        context,
        new_tokens,
        prefill_chunk,
        warm_up,
        bandwidth_gbs,
        json,
        plot,
        trace,
        dev,
    }: BenchArgs,
) -> Result<()> {
    let warm_up = std::time::Duration::try_from_secs_f64(warm_up)
        .map_err(|e| anyhow::anyhow!("--warm-up {warm_up}: expected seconds >= 0 ({e})"))?;
    let (device, kind) = setup(&dev)?;
    if trace.is_some() && !device.is_cuda() {
        anyhow::bail!(
            "--trace records CUDA kernels (libtorch's profiler through the CUDA shim): give --device cuda"
        );
    }
    let card = runtime::device_name(device);
    let bandwidth = bandwidth_gbs.map(|g| g * 1e9).or_else(|| bench::card_bandwidth(&card));
    let settings = bench::BenchSettings { new_tokens, bandwidth, warm_up, trace_dir: trace };
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
            rows.push(bench::run_case(&mut engine, &label, b, c, &settings));
            pb.inc(1);
        }
        pb.finish_and_clear();
    }
    rows.sort_by_key(|r| (r.context, r.batch, labels.iter().position(|m| *m == r.model)));
    if let Some(p) = plot {
        bench::plot(&card, &rows, &p)?;
    }
    json.emit(&rows, || bench::table(&card, &rows))
}
