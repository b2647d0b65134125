//! Property tests over mutated real files: whatever the bytes, the loaders and data readers
//! return a result or an error naming the file, never a panic (a panic would reach the user as
//! an internal index error or a libtorch backtrace), and never a silently shortened data set.
//! Each target runs for a bounded time (`UNIATTN_FUZZ_SECONDS`, default 20 per target) from a
//! fixed seed (`UNIATTN_FUZZ_SEED`), so CI is deterministic in what it tries first.
mod common;

use common::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};
use uniattn::rng::SplitMix64;

fn budget() -> Duration {
    let s = std::env::var("UNIATTN_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20.0);
    Duration::from_secs_f64(s)
}

fn seed() -> u64 {
    std::env::var("UNIATTN_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1)
}

/// One random change to `bytes[range]`, described for the failure report.
fn mutate(bytes: &mut Vec<u8>, range: std::ops::Range<usize>, rng: &mut SplitMix64) -> String {
    let at = range.start + (rng.next_u64() as usize) % range.len().max(1);
    match rng.next_u64() % 6 {
        0 => {
            let bit = rng.next_u64() % 8;
            bytes[at] ^= 1 << bit;
            format!("flip bit {bit} at {at}")
        }
        1 => {
            bytes[at] = rng.next_u64() as u8;
            format!("random byte at {at}")
        }
        2 | 3 if bytes.len() >= 8 => {
            // A length, count, offset or dimension field set to an extreme value.
            let values = [0u64, 1, 2, 0xFF, u32::MAX as u64, 1 << 40, u64::MAX, rng.next_u64()];
            let v = values[(rng.next_u64() % values.len() as u64) as usize];
            let at = at.min(bytes.len().saturating_sub(8));
            bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
            format!("u64 {v} at {at}")
        }
        4 => {
            bytes.truncate(at);
            format!("truncate at {at}")
        }
        _ => {
            let n = 1 + (rng.next_u64() % 64) as usize;
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
            format!("remove {n} bytes at {at}")
        }
    }
}

/// Runs `check` on mutations of `original` until the budget is spent; panics are collected and
/// reported together with the mutation that caused each.
fn fuzz(
    name: &str,
    original: &[u8],
    range: std::ops::Range<usize>,
    budget: Duration,
    check: impl Fn(&Path, &[u8]) -> Result<(), String>,
) {
    let dir = tmpdir(&format!("fuzz-{name}"));
    let path = dir.path().join(name);
    let mut rng = SplitMix64(seed());
    let (start, mut tries, mut failures) = (Instant::now(), 0, Vec::new());
    while start.elapsed() < budget || tries < 3 {
        let mut bytes = original.to_vec();
        let mut what = Vec::new();
        for _ in 0..1 + rng.next_u64() % 3 {
            if bytes.len() <= range.start {
                break;
            }
            let r = range.start..range.end.min(bytes.len());
            what.push(mutate(&mut bytes, r, &mut rng));
        }
        std::fs::write(&path, &bytes).unwrap();
        match catch_unwind(AssertUnwindSafe(|| check(&path, &bytes))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{}: {e}", what.join(", "))),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                failures.push(format!("{}: panic: {:.300}", what.join(", "), msg.unwrap_or_default()))
            }
        }
        tries += 1;
    }
    eprintln!(
        "fuzz {name}: {tries} mutations in {:.1}s, {} failures",
        start.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{name}: {} of {tries} mutations failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// An error must name the file it is about.
fn names_file(path: &Path, e: impl std::fmt::Display) -> Result<(), String> {
    let msg = e.to_string();
    let file = path.file_name().unwrap().to_string_lossy().to_string();
    if msg.contains(&file) || msg.starts_with("libtorch") {
        Ok(())
    } else {
        Err(format!("error does not name the file: {msg:.300}"))
    }
}

#[test]
fn mutated_gguf_headers_never_panic() {
    init();
    let path = model(SMOLLM2).unwrap();
    let original = std::fs::read(&path).unwrap();
    let header = uniattn::formats::gguf::GgufFile::open(&path).unwrap().header_len();
    // Most mutations stop early at the header; the rest go on to dequantize every tensor.
    fuzz("smollm2.gguf", &original, 0..header, budget(), |p, _| match uniattn::loader::read_parts(p) {
        Ok(parts) => {
            // Whatever loaded must be usable: the model builds from it without a panic.
            let built = uniattn::model::Transformer::from_weights(
                parts.weights,
                parts.cfg,
                parts.plan,
                tch::Kind::Float,
                tch::Device::Cpu,
                false,
            );
            match built {
                Ok(_) => Ok(()),
                Err(e) => names_file(p, e).or(Ok(())),
            }
        }
        Err(e) => names_file(p, e),
    });
}

#[test]
fn mutated_json_data_is_read_whole_or_refused() {
    let text = std::fs::read_to_string(sample_data("pmc_llama_instructions_1000.json")).unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let original = serde_json::to_string_pretty(&rows[..40]).unwrap().into_bytes();
    let len = original.len();
    fuzz("rows.json", &original, 0..len, budget(), |p, bytes| {
        match uniattn::data::read_records(p, false) {
            Ok((records, _)) => {
                // Accepted without --skip-bad-rows: the file must be a whole array of that many rows.
                let parsed: Result<Vec<serde_json::Value>, _> = serde_json::from_slice(bytes);
                match parsed {
                    Ok(v) if v.len() == records.len() => Ok(()),
                    Ok(v) => Err(format!("{} rows read from an array of {}", records.len(), v.len())),
                    Err(e) => Err(format!("accepted {} rows from invalid JSON ({e})", records.len())),
                }
            }
            Err(e) => names_file(p, e),
        }?;
        // With bad rows skipped, it may read less but must still not panic.
        let _ = uniattn::data::read_records(p, true);
        Ok(())
    });
}

#[test]
fn mutated_safetensors_and_configs_never_panic() {
    init();
    let dir = tmpdir("fuzz-st-src");
    let a = tch::Tensor::arange(24, (tch::Kind::Float, tch::Device::Cpu)).view([4, 6]);
    let b = tch::Tensor::ones([3], (tch::Kind::BFloat16, tch::Device::Cpu));
    let st = dir.path().join("model.safetensors");
    uniattn::formats::safetensors::write_file(&st, &[("a".into(), a), ("b".into(), b)], None).unwrap();
    let original = std::fs::read(&st).unwrap();
    let header = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    fuzz("model.safetensors", &original, 0..header, budget() / 2, |p, _| {
        // read_folder reads every *.safetensors beside the file; the file is alone in its folder.
        match uniattn::formats::safetensors::read_folder(p.parent().unwrap()) {
            Ok(_) => Ok(()),
            Err(e) => names_file(p, e),
        }
    });
    let gguf = model(SMOLLM2).unwrap();
    let g = uniattn::formats::gguf::GgufFile::open(&gguf).unwrap();
    let cfg = uniattn::config::ModelConfig::from_gguf(&g).unwrap().to_hf_json();
    let original = serde_json::to_string_pretty(&cfg).unwrap().into_bytes();
    let len = original.len();
    fuzz("config.json", &original, 0..len, budget() / 2, |p, _| {
        match uniattn::config::ModelConfig::from_hf_file(p) {
            Ok(_) => Ok(()),
            Err(e) => names_file(p, e),
        }
    });
}
