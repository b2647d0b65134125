//! `eval mc` on SmolLM2 against Hugging Face transformers: per-choice log-likelihoods of the
//! first ARC-Easy questions (same request file, same GGUF, f32) from
//! `scripts/reference/hf_loglikelihood.py`, committed in tests/fixtures.
mod common;
use common::*;
use tch::{Device, Kind};
use uniattn::eval::{multiple_choice, tasks};
use uniattn::loader;

#[test]
fn arc_easy_loglikelihoods_match_transformers() {
    init();
    let fixture = std::fs::read_to_string(fixture("hf_loglikelihood_arc_easy.jsonl")).unwrap();
    let want: Vec<serde_json::Value> = fixture.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let dir = tasks_dir();
    let task = tasks::load(&dir, "arc_easy").unwrap().remove(0);
    let m = loader::load(&model(SMOLLM2).unwrap(), Kind::Float, Device::Cpu).unwrap();
    // Small batches: several padded rows a batch, several batches.
    let opts = multiple_choice::ScoringOptions { max_len: 2048, batch_tokens: 1024 };
    let (report, items) =
        multiple_choice::evaluate(&m.model, &m.tokenizer, &task, Some(want.len()), opts, None, |_, _| {})
            .unwrap();
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

/// The MedMCQA split is reproducible, disjoint and complete, `restrict` keeps exactly the
/// held-out questions for evaluation and `exclude` exactly the others.
#[test]
fn medmcqa_split_is_disjoint_and_reproducible() {
    let dir = tasks_dir();
    let a = uniattn::eval::medmcqa::split(&dir, 1000, 0).unwrap();
    let b = uniattn::eval::medmcqa::split(&dir, 1000, 0).unwrap();
    assert_eq!(a.heldout_ids, b.heldout_ids);
    assert_ne!(a.heldout_ids, uniattn::eval::medmcqa::split(&dir, 1000, 1).unwrap().heldout_ids);
    let mut task = tasks::load(&dir, "medmcqa").unwrap().remove(0);
    assert_eq!(a.train.len() + a.heldout_ids.len(), task.items.len());
    let held: std::collections::HashSet<String> = a.heldout_ids.iter().cloned().collect();
    let question = |i: &uniattn::eval::mc_task::McItem| {
        i.requests[0].context.rsplit("Question: ").next().unwrap().to_string()
    };
    let all: std::collections::HashSet<String> = task.items.iter().map(question).collect();
    let heldout_questions: std::collections::HashSet<String> =
        task.items.iter().filter(|i| held.contains(i.native_id.as_ref().unwrap())).map(question).collect();
    let train_questions: Vec<String> = a
        .train
        .iter()
        .map(|r| format!("{}\nAnswer:", r["input"].as_str().unwrap().split("\nA. ").next().unwrap()))
        .collect();
    // The check can see a question: nearly every training row is found among all questions.
    let found = train_questions.iter().filter(|q| all.contains(*q)).count();
    assert!(found * 100 >= train_questions.len() * 95, "{found} of {}", train_questions.len());
    let leaked = train_questions.iter().filter(|q| heldout_questions.contains(*q)).count();
    // MedMCQA repeats some question texts under different ids; count them rather than hide them.
    eprintln!("training rows whose question text also appears held out: {leaked}");
    assert!(leaked < 20, "{leaked}");
    let scratch = tmpdir("split");
    let f = scratch.path().join("split.json");
    std::fs::write(&f, serde_json::json!({"heldout_ids": a.heldout_ids}).to_string()).unwrap();
    let mut rest = task.clone();
    uniattn::eval::medmcqa::restrict(&mut task, &f).unwrap();
    assert_eq!(task.items.len(), 1000);
    // `exclude` keeps the complement: the training part, in the evaluation's format.
    uniattn::eval::medmcqa::exclude(&mut rest, &f).unwrap();
    assert_eq!(rest.items.len(), a.train.len());
    assert!(rest.items.iter().all(|i| !held.contains(i.native_id.as_ref().unwrap())));
}
