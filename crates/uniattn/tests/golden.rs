//! The forward pass against golden numbers from an independent implementation (transformers,
//! CPU f32, same GGUF files; made by scripts/reference/make_golden.py), and perplexity against
//! the brief's reference values.
mod common;
use common::*;
use tch::{Device, Kind};
use uniattn::eval::perplexity::{perplexity, token_logprobs};
use uniattn::loader;

fn check_golden(name: &str, rel: &str) {
    init();
    let Some(path) = model(rel) else { return };
    let fixture = fixture(&format!("golden_{name}.json"));
    let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();
    let ids: Vec<u32> = g["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let want: Vec<f64> = g["logprobs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let m = loader::load(&path, Kind::Float, Device::Cpu).unwrap();
    let ours = m.tokenizer.encode(g["text"].as_str().unwrap(), true).unwrap();
    assert_eq!(ours, ids, "{name}: token ids differ from transformers'");
    let got = token_logprobs(&m.model, &ids);
    let max_diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    eprintln!("{name}: {} log-probs, max |diff| = {max_diff:.2e}", got.len());
    assert_eq!(got.len(), want.len());
    assert!(max_diff <= 2e-3, "{name}: max abs diff {max_diff} > 2e-3");
}

fn check_ppl(rel: &str, tiny: f64, wiki: f64) {
    init();
    let Some(path) = model(rel) else { return };
    let m = loader::load(&path, Kind::Float, Device::Cpu).unwrap();
    for (file, want) in [("tiny.utf8", tiny), ("wiki.utf8", wiki)] {
        let mut ids = m.tokenizer.encode(&text(file), true).unwrap();
        ids.truncate(256);
        let r = perplexity(&m.model, &ids, 0, 256, 256, |_, _| {}).unwrap();
        eprintln!("{rel} {file}: perplexity {:.4} (brief: {want})", r.perplexity);
        assert_eq!(r.predicted, 255);
        assert!((r.perplexity / want - 1.0).abs() < 0.01, "{file}: {} vs {want}", r.perplexity);
    }
}

#[test]
fn golden_smollm2() {
    check_golden("smollm2", SMOLLM2);
}

#[test]
fn golden_qwen05() {
    check_golden("qwen0.5b", QWEN05);
}

#[test]
fn golden_gemma3() {
    check_golden("gemma3", GEMMA3);
}

#[test]
fn perplexity_smollm2() {
    check_ppl(SMOLLM2, 9.30, 8.79);
}

#[test]
fn perplexity_gemma3() {
    check_ppl(GEMMA3, 8.42, 6.45);
}

#[test]
fn perplexity_qwen15() {
    check_ppl(QWEN15, 6.00, 5.92);
}

/// Sliding-window bookkeeping against transformers on the same tokens
/// (scripts/reference/sliding_ppl.py): 1.982499 (300/300), 2.287043 (200/100), 2.324462 (128/64).
#[test]
fn sliding_window_matches_transformers() {
    init();
    let m = loader::load(&model(SMOLLM2).unwrap(), Kind::Float, Device::Cpu).unwrap();
    let mut ids = m.tokenizer.encode(&text("wiki.utf8"), true).unwrap();
    ids.truncate(300);
    for (window, stride, want) in [(300, 300, 1.982499), (200, 100, 2.287043), (128, 64, 2.324462)] {
        let r = perplexity(&m.model, &ids, 0, window, stride, |_, _| {}).unwrap();
        assert_eq!(r.predicted, 299);
        assert!((r.mean_nll - want).abs() < 1e-3, "window {window}/{stride}: {} vs {want}", r.mean_nll);
    }
}
