//! `uniattn bench`: time-to-first-token, prefill and decode throughput of the engine for a
//! grid of batch sizes and contexts, with the KV-cache size, the memory bandwidth a decode step
//! achieves and the analytic bound (bytes read per step over the card's bandwidth).
use super::Engine;
use crate::cuda::kernels;
use crate::rng::SplitMix64;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    pub model: String,
    pub plan: String,
    /// How decode steps ran: "CUDA graphs" or "eager".
    pub decode: String,
    /// Kernels one decode step launches (counted in its CUDA graph; `None` when eager).
    pub kernels_per_step: Option<usize>,
    pub batch: usize,
    pub context: usize,
    pub new_tokens: usize,
    /// Prefill of the first sequence and its first token, milliseconds.
    pub ttft_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    /// GPU time of one decode step (its CUDA graph replayed back to back, no host work between
    /// steps), milliseconds; the rest of a step's time is the host's part (`None` when eager).
    pub gpu_ms_per_step: Option<f64>,
    /// Cache bytes allocated for the whole batch at full length.
    pub kv_bytes: usize,
    pub kv_bytes_per_token: usize,
    /// Weights plus live cache read (each layer's reads: a CLA layer reads its lead's keys and
    /// values again) and the new tokens' cache writes of one decode step (mean over the timed
    /// steps).
    pub bytes_per_step: f64,
    pub achieved_gb_per_s: f64,
    /// Decode tokens/s if every step only had to read `bytes_per_step` at the card's bandwidth.
    pub bound_tokens_per_s: Option<f64>,
    /// The GPU's SM clock right after the timed decode (MHz; `None` on the CPU).
    pub sm_clock_mhz: Option<u32>,
    /// The Chrome trace of [`TRACED_STEPS`] decode steps (`bench --trace`).
    pub trace: Option<PathBuf>,
    /// Why the trace could not be written (the case's timing stands).
    pub trace_error: Option<String>,
    /// Set when the case could not run (for example out of memory).
    pub error: Option<String>,
}

/// Decode steps a case's trace records: the replayed graph of the last timed step's shape
/// (its GPU work alone, as [`BenchRow::gpu_ms_per_step`] times it), or eager steps.
pub const TRACED_STEPS: usize = 3;

/// How every case of a run is measured.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// Timed decode steps a case.
    pub new_tokens: usize,
    /// Peak memory bandwidth in bytes/s, for the bound (`None`: no bound).
    pub bandwidth: Option<f64>,
    /// Each case first runs untimed, repeated until this has passed.
    pub warm_up: Duration,
    /// A folder for each case's trace of [`TRACED_STEPS`] decode steps (libtorch's profiler:
    /// every kernel's time on a timeline), written after the timed steps.
    pub trace_dir: Option<PathBuf>,
}

/// Peak memory bandwidth of known cards, bytes/s (vendor figures).
pub fn card_bandwidth(name: &str) -> Option<f64> {
    let n = name.to_ascii_uppercase();
    let tb = if n.contains("H200") {
        4.8
    } else if n.contains("H100") && n.contains("PCIE") {
        2.0
    } else if n.contains("H100") {
        3.35
    } else if n.contains("A100") {
        2.039
    } else if n.contains("L40S") {
        0.864
    } else {
        return None;
    };
    Some(tb * 1e12)
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Random token ids, different for each sequence, reproducible.
fn prompt(seed: u64, len: usize, vocab: usize) -> Vec<u32> {
    let mut r = SplitMix64(seed);
    (0..len).map(|_| (r.next_u64() % vocab as u64) as u32).collect()
}

/// `steps` greedy decode steps of the batch fed `first`, as the scheduler runs a greedy batch:
/// each step after the first queued before the last one's picks are read (one at a time with
/// `UNIATTN_DECODE_AHEAD=0`). `before_step` sees the engine before each step. Returns the
/// last picks.
fn decode_greedy(
    engine: &mut Engine,
    first: Vec<u32>,
    steps: usize,
    mut before_step: impl FnMut(&Engine),
) -> crate::error::Result<Vec<u32>> {
    let batch = first.len();
    let mut next = first;
    if !super::scheduler::decode_ahead_wanted() {
        for _ in 0..steps {
            before_step(engine);
            next = greedy(&engine.decode(&next)?);
        }
        return Ok(next);
    }
    if steps == 0 {
        return Ok(next);
    }
    before_step(engine);
    let _logits = engine.decode(&next)?;
    let mut picks = engine.picks(batch)?;
    for _ in 1..steps {
        before_step(engine);
        engine.decode_ahead(batch)?;
        let after = engine.picks(batch)?;
        let (_, buffer) = picks.wait()?;
        engine.recycle(buffer);
        picks = after;
    }
    let (last, buffer) = picks.wait()?;
    engine.recycle(buffer);
    Ok(last)
}

fn greedy(logits: &Tensor) -> Vec<u32> {
    Vec::<i64>::try_from(logits.argmax(-1, false).to_device(Device::Cpu))
        .expect("int64 argmax")
        .into_iter()
        .map(|t| t as u32)
        .collect()
}

/// The GPU's current SM clock, from `nvidia-smi`.
fn sm_clock_mhz(device: Device) -> Option<u32> {
    let Device::Cuda(i) = device else { return None };
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=clocks.sm", "--format=csv,noheader,nounits", &format!("--id={i}")])
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// Runs one (batch, context) case: prefill `batch` random prompts of `context` tokens, then
/// `new_tokens` greedy decode steps for the whole batch; the whole case runs untimed first,
/// repeated until the warm-up has passed.
pub fn run_case(
    engine: &mut Engine,
    label: &str,
    batch: usize,
    context: usize,
    settings: &BenchSettings,
) -> BenchRow {
    let plan = engine.plan().describe();
    let mut row = BenchRow {
        model: label.to_string(),
        plan,
        batch,
        context,
        new_tokens: settings.new_tokens,
        decode: match (
            engine.cuda_graphs().is_some(),
            engine.device().is_cuda() && kernels::available().is_ok(),
        ) {
            (true, true) => "graphs+fused",
            (true, false) => "graphs",
            (false, true) => "eager+fused",
            (false, false) => "eager",
        }
        .into(),
        kernels_per_step: None,
        ttft_ms: 0.0,
        prefill_tokens_per_s: 0.0,
        decode_tokens_per_s: 0.0,
        gpu_ms_per_step: None,
        kv_bytes: 0,
        kv_bytes_per_token: 0,
        bytes_per_step: 0.0,
        achieved_gb_per_s: 0.0,
        bound_tokens_per_s: None,
        sm_clock_mhz: None,
        trace: None,
        trace_error: None,
        error: None,
    };
    if let Err(e) = measure(engine, &mut row, settings) {
        row.error = Some(e.to_string());
    }
    // Give the memory back before the next case.
    let _ = engine.resize_cache(1, 1);
    row
}

fn measure(engine: &mut Engine, row: &mut BenchRow, settings: &BenchSettings) -> crate::Result<()> {
    let (batch, context, new_tokens) = (row.batch, row.context, row.new_tokens);
    let device = engine.device();
    let vocab = engine.config().vocab_size;
    // Room for the eager steps a trace records after the timed ones.
    let traced = if settings.trace_dir.is_some() { TRACED_STEPS } else { 0 };
    engine.resize_cache(batch, context + new_tokens + 1 + traced)?;
    row.kv_bytes = engine.cache.bytes();
    row.kv_bytes_per_token = engine.cache.bytes_per_token();
    let prompts: Vec<Vec<u32>> = (0..batch).map(|i| prompt(i as u64 + 1, context, vocab)).collect();
    // Warm-up: the whole case, untimed, until `warm_up` has passed. On the H100 machine every
    // shape a process runs for the first time was slow (a decode at a new batch size or key
    // bucket cost ~45 ms once, likely the attention backend planning for that shape) and an
    // idle card sat at 345 MHz; with a short warm-up the first model of a process decoded
    // 2-5x slower than the same case repeated (docs/benchmarks.md).
    let t = Instant::now();
    loop {
        let mut next = Vec::with_capacity(batch);
        for (slot, p) in prompts.iter().enumerate() {
            engine.reset(slot);
            next.push(greedy(&engine.prefill(slot, p, false)?.unsqueeze(0))[0]);
        }
        next = decode_greedy(engine, next, new_tokens, |_| {})?;
        if t.elapsed() >= settings.warm_up {
            break;
        }
    }
    (0..batch).for_each(|slot| engine.reset(slot));
    sync(device);

    let t0 = Instant::now();
    let mut next = Vec::with_capacity(batch);
    for (slot, p) in prompts.iter().enumerate() {
        let logits = engine.prefill(slot, p, false)?;
        next.push(greedy(&logits.unsqueeze(0))[0]);
        if slot == 0 {
            row.ttft_ms = t0.elapsed().as_secs_f64() * 1e3;
        }
    }
    sync(device);
    row.prefill_tokens_per_s = (batch * context) as f64 / t0.elapsed().as_secs_f64();

    let weights = engine.weight_bytes_per_step() as f64;
    let cache_read = engine.cache_read_bytes_per_token(batch, context) as f64;
    let mut read = 0.0;
    let t1 = Instant::now();
    let last = decode_greedy(engine, next, new_tokens, |engine| {
        let past = engine.cache.tokens_in_use(batch) as f64;
        read += weights + past * cache_read + (batch * row.kv_bytes_per_token) as f64;
    })?;
    let secs = t1.elapsed().as_secs_f64();
    row.sm_clock_mhz = sm_clock_mhz(device);
    row.kernels_per_step = engine.decode_kernels();
    row.gpu_ms_per_step = engine.decode_gpu_seconds(new_tokens)?.map(|s| s * 1e3);
    row.decode_tokens_per_s = (batch * new_tokens) as f64 / secs;
    row.bytes_per_step = read / new_tokens.max(1) as f64;
    row.achieved_gb_per_s = read / secs / 1e9;
    row.bound_tokens_per_s = settings.bandwidth.map(|bw| batch as f64 * bw / row.bytes_per_step);
    if let Some(dir) = &settings.trace_dir {
        let path = dir.join(format!("{}-batch{batch}-context{context}.json", file_stem(&row.model)));
        match trace(engine, last, &path) {
            Ok(()) => row.trace = Some(path),
            Err(e) => row.trace_error = Some(e.to_string()),
        }
    }
    Ok(())
}

/// Records [`TRACED_STEPS`] decode steps after the timed ones with libtorch's profiler and
/// writes them to `path`: the last step's graph replayed, or eager steps fed `next`.
fn trace(engine: &mut Engine, next: Vec<u32>, path: &Path) -> crate::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    }
    let profiler = crate::cuda::profiler::Profiler::start()?;
    if engine.decode_gpu_seconds(TRACED_STEPS)?.is_none() {
        decode_greedy(engine, next, TRACED_STEPS, |_| {})?;
    }
    sync(engine.device());
    profiler.save(path)
}

/// A model's label as a file name: anything but letters, digits, `.`, `-` and `_` becomes `_`.
fn file_stem(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || ".-_".contains(c) { c } else { '_' }).collect()
}

/// The rows as a Markdown table. Rows of the same batch and context are compared with the
/// first model's: decode speed-up, and the saving of bytes read per step that bounds it.
pub fn table(card: &str, rows: &[BenchRow]) -> String {
    let mut out = format!(
        "card: {card}\n\n| model | plan | decode | kernels/step | batch | context | TTFT ms | prefill tok/s | decode tok/s | \
         GPU ms/step | KV MiB | GB/s achieved | bound tok/s | decode vs first | bytes saved/step | SM MHz |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        if let Some(e) = &r.error {
            out += &format!(
                "| {} | {} | {} | - | {} | {} | {e} |||||||||\n",
                r.model, r.plan, r.decode, r.batch, r.context
            );
            continue;
        }
        let base = rows.iter().find(|b| b.batch == r.batch && b.context == r.context && b.error.is_none());
        let (ratio, saved) = match base {
            Some(b) if !std::ptr::eq(b, r) => (
                format!("{:.2}x", r.decode_tokens_per_s / b.decode_tokens_per_s),
                format!("{:.1}%", 100.0 * (1.0 - r.bytes_per_step / b.bytes_per_step)),
            ),
            _ => ("-".into(), "-".into()),
        };
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.0} | {:.1} | {} | {:.1} | {:.1} | {} | {ratio} | {saved} | {} |\n",
            r.model,
            r.plan,
            r.decode,
            r.kernels_per_step.map_or("-".into(), |k| k.to_string()),
            r.batch,
            r.context,
            r.ttft_ms,
            r.prefill_tokens_per_s,
            r.decode_tokens_per_s,
            r.gpu_ms_per_step.map_or("-".into(), |m| format!("{m:.3}")),
            r.kv_bytes as f64 / (1u64 << 20) as f64,
            r.achieved_gb_per_s,
            r.bound_tokens_per_s.map_or("-".into(), |b| format!("{b:.0}")),
            r.sm_clock_mhz.map_or("-".into(), |m| m.to_string()),
        );
    }
    for r in rows {
        if let Some(t) = &r.trace {
            out += &format!("\ntrace of {} decode steps: {}", TRACED_STEPS, t.display());
        }
        if let Some(e) = &r.trace_error {
            out += &format!("\nno trace of {} at batch {}, context {}: {e}", r.model, r.batch, r.context);
        }
    }
    out
}

/// Decode tokens/s against batch size, one line per model and context.
pub fn plot(card: &str, rows: &[BenchRow], path: &std::path::Path) -> crate::Result<()> {
    use crate::plot::{Chart, Series, XyChart};
    let mut series: Vec<Series> = Vec::new();
    for r in rows.iter().filter(|r| r.error.is_none()) {
        let name = format!("{} ctx {}", r.model, r.context);
        let point = [r.batch as f64, r.decode_tokens_per_s];
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push(point),
            None => series.push(Series { name, points: vec![point], y_ranges: None }),
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a[0].total_cmp(&b[0]));
    }
    let chart = XyChart {
        title: format!("decode throughput, {card}"),
        x_label: "batch (sequences decoded together)".into(),
        y_label: "decode tokens/s".into(),
        log2_x: true,
        series,
    };
    Chart::Lines(chart).save(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineOptions;
    use crate::plan::SuperBlockPlan;
    use crate::testing::{tiny_config, tiny_model};

    /// `bench --trace` on a tiny model: where libtorch's profiler runs (the CUDA shim loads)
    /// the trace is a Chrome trace with events; where it cannot (a CPU-only machine) the case
    /// keeps its timing and says why there is no trace. Either way nothing measured is lost.
    #[test]
    fn a_trace_is_written_or_says_why_and_keeps_the_timing() {
        crate::runtime::init().unwrap();
        let cfg = tiny_config(crate::config::Family::Llama);
        let model = tiny_model(&cfg, SuperBlockPlan::dense(4), tch::Kind::Float, 3);
        let mut engine =
            Engine::new(model, EngineOptions { max_batch: 1, max_len: 1, prefill_chunk: 8 }).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let settings = BenchSettings {
            new_tokens: 4,
            bandwidth: None,
            warm_up: Duration::ZERO,
            trace_dir: Some(dir.path().join("traces")),
        };
        let row = run_case(&mut engine, "tiny#2", 2, 10, &settings);
        assert_eq!(row.error, None);
        assert!(row.decode_tokens_per_s > 0.0 && row.prefill_tokens_per_s > 0.0);
        let note = table("cpu", std::slice::from_ref(&row));
        match (&row.trace, &row.trace_error) {
            (Some(path), None) => {
                assert_eq!(path, &dir.path().join("traces/tiny_2-batch2-context10.json"));
                let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
                assert!(trace["traceEvents"].as_array().is_some_and(|e| !e.is_empty()));
                assert!(note.contains("trace of 3 decode steps"), "{note}");
            }
            (None, Some(why)) => {
                assert!(why.contains("CUDA shim"), "{why}");
                assert!(note.contains("no trace of tiny#2 at batch 2, context 10"), "{note}");
            }
            other => panic!("a trace or its error, not {other:?}"),
        }
    }
}
