//! Model files end to end on SmolLM2: GGUF -> Hugging Face folder -> the same numbers, and every
//! kind of broken input gives an error that names the file and what was expected.
mod common;
use common::*;
use tch::{Device, Kind};
use uniattn::eval::perplexity::token_logprobs;
use uniattn::loader;

fn imported(name: &str) -> (std::path::PathBuf, tempfile::TempDir) {
    init();
    let gguf = model(SMOLLM2).unwrap();
    let dir = tmpdir(name);
    let m = loader::load(&gguf, Kind::Float, Device::Cpu).unwrap();
    loader::save_folder(&m.model, &m.tokenizer, dir.path(), Kind::Float, None, &[]).unwrap();
    (gguf, dir)
}

fn load_err(path: &std::path::Path) -> String {
    match loader::load(path, Kind::Float, Device::Cpu) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn imported_folder_computes_the_same_logprobs() {
    let (gguf, scratch) = imported("same");
    let dir = scratch.path();
    let a = loader::load(&gguf, Kind::Float, Device::Cpu).unwrap();
    let b = loader::load(dir, Kind::Float, Device::Cpu).unwrap();
    let text = "Paris is the capital of France, and Berlin is the capital of Germany.";
    let ids = a.tokenizer.encode(text, true).unwrap();
    assert_eq!(ids, b.tokenizer.encode(text, true).unwrap());
    assert_eq!(token_logprobs(&a.model, &ids), token_logprobs(&b.model, &ids));
    assert_eq!(a.tokenizer.chat_template, b.tokenizer.chat_template);
    assert_eq!(a.tokenizer.eos_ids[0], b.tokenizer.eos_ids[0]);
}

#[test]
fn broken_folders_say_what_is_wrong() {
    let (_, scratch) = imported("broken");
    let dir = scratch.path();
    // A config that does not match the weights.
    let cfg_path = dir.join("config.json");
    let good_cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&good_cfg).unwrap();
    cfg["intermediate_size"] = serde_json::json!(1024);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = load_err(dir);
    assert!(
        err.contains("model.safetensors") && err.contains("gate_proj") && err.contains("[1024, 576]"),
        "{err}"
    );
    std::fs::write(&cfg_path, &good_cfg).unwrap();

    // A missing tensor.
    let st = dir.join("model.safetensors");
    let good = std::fs::read(&st).unwrap();
    let mut tensors = std::collections::BTreeMap::new();
    uniattn::formats::safetensors::read_file(&st, &mut tensors).unwrap();
    tensors.remove("model.layers.7.self_attn.k_proj.weight");
    let list: Vec<(String, tch::Tensor)> = tensors.into_iter().collect();
    uniattn::formats::safetensors::write_file(&st, &list, None).unwrap();
    let err = load_err(dir);
    assert!(err.contains("missing tensor model.layers.7.self_attn.k_proj.weight"), "{err}");

    // A truncated weight file.
    std::fs::write(&st, &good[..good.len() / 2]).unwrap();
    let err = load_err(dir);
    assert!(err.contains("model.safetensors") && err.contains("not a valid safetensors"), "{err}");
    std::fs::write(&st, &good).unwrap();

    // A missing tokenizer.
    std::fs::rename(dir.join("tokenizer.json"), dir.join("t.json")).unwrap();
    let err = load_err(dir);
    assert!(err.contains("tokenizer.json is missing"), "{err}");
    std::fs::rename(dir.join("t.json"), dir.join("tokenizer.json")).unwrap();

    // Invalid JSON in config.json.
    std::fs::write(&cfg_path, "{\"model_type\": ").unwrap();
    let err = load_err(dir);
    assert!(err.contains("config.json") && err.contains("invalid JSON"), "{err}");
    std::fs::write(&cfg_path, &good_cfg).unwrap();
    loader::load(dir, Kind::Float, Device::Cpu).expect("restored folder loads again");
}

#[test]
fn truncated_real_gguf_is_named() {
    init();
    let gguf = model(SMOLLM2).unwrap();
    let scratch = tmpdir("trunc");
    let dir = scratch.path();
    let bytes = std::fs::read(&gguf).unwrap();
    for cut in [100usize, 2_000_000, bytes.len() - 1000] {
        let p = dir.join("cut.gguf");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let err = load_err(&p);
        assert!(err.contains("cut.gguf") && err.contains("truncated"), "cut at {cut}: {err}");
    }
    let err = load_err(&dir.join("absent.gguf"));
    assert!(err.contains("absent.gguf") && err.contains("no such file"), "{err}");
}

/// The engine on a real model: prefill in chunks for two prompts of different lengths gives
/// the full forward's logits, and greedy generation through the scheduler (both requests in
/// one batch) picks the same tokens as re-running the whole sequence each step.
#[test]
fn engine_equals_full_forward_on_a_real_model() {
    use uniattn::engine::{Engine, EngineOptions, Event, Request, SamplingParams, Scheduler};
    init();
    let path = model(SMOLLM2).unwrap();
    let reference = loader::load(&path, Kind::Float, Device::Cpu).unwrap();
    let m = loader::load(&path, Kind::Float, Device::Cpu).unwrap();
    let opts = EngineOptions { max_batch: 2, max_len: 64, prefill_chunk: 5 };
    let mut engine = Engine::new(m.model, opts).unwrap();
    let prompts = [
        m.tokenizer.encode("The three primary colours are", true).unwrap(),
        m.tokenizer.encode("def fibonacci(n):", true).unwrap(),
    ];
    let _guard = tch::no_grad_guard();
    let full = |ids: &[u32]| {
        let t = tch::Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()).unsqueeze(0);
        reference.model.forward(&t).squeeze_dim(0)
    };
    for (slot, p) in prompts.iter().enumerate() {
        let got = engine.prefill(slot, p, true).unwrap();
        let d = (&got - full(p)).abs().max().double_value(&[]);
        assert!(d < 1e-3, "prompt {slot}: max |logit diff| {d}");
        engine.reset(slot);
    }
    let mut sched = Scheduler::new(engine, std::sync::Arc::new(m.tokenizer));
    let params = SamplingParams { max_new_tokens: 12, ignore_eos: true, ..Default::default() };
    for p in &prompts {
        sched.submit(Request { prompt: p.clone(), params: params.clone(), ..Default::default() }).unwrap();
    }
    let mut out = vec![Vec::new(); 2];
    while sched.has_work() {
        for e in sched.step() {
            match e {
                Event::Token { id, token, .. } => out[id as usize].push(token),
                Event::Failed { error, .. } => panic!("{error}"),
                Event::Finished { .. } => {}
            }
        }
    }
    for (i, p) in prompts.iter().enumerate() {
        let mut seq = p.clone();
        for _ in 0..12 {
            seq.push(full(&seq).get(-1).argmax(-1, false).int64_value(&[]) as u32);
        }
        assert_eq!(out[i], seq[p.len()..], "prompt {i}");
    }
}

#[test]
fn chat_template_renders() {
    init();
    let m = loader::load(&model(SMOLLM2).unwrap(), Kind::Float, Device::Cpu).unwrap();
    let msgs = [uniattn::tokenizer::ChatMessage { role: "user".into(), content: "Hi".into() }];
    let s = m.tokenizer.apply_chat_template(&msgs, true).unwrap();
    assert!(s.contains("<|im_start|>user\nHi<|im_end|>") && s.ends_with("<|im_start|>assistant\n"), "{s}");
}

/// `eval ppl`'s documents: an instruction row with its Alpaca prompt, a ShareGPT conversation
/// through the chat template (as training reads it), `--rows` picking rows, plain text whole.
#[test]
fn perplexity_documents_render_rows_and_conversations() {
    use uniattn::eval::perplexity::documents;
    init();
    let m = loader::load(&model(SMOLLM2).unwrap(), Kind::Float, Device::Cpu).unwrap();
    let dir = tmpdir("ppl-docs");
    let rows = dir.path().join("rows.json");
    std::fs::write(
        &rows,
        r#"[{"instruction": "Name a colour.", "output": "Blue."},
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}]"#,
    )
    .unwrap();
    let docs = documents(&m.tokenizer, &rows, None).unwrap();
    assert_eq!(docs.len(), 2);
    let instruction = m.tokenizer.decode(&docs[0]).unwrap();
    assert!(
        instruction.contains("### Instruction:\nName a colour.") && instruction.ends_with("Blue."),
        "{instruction}"
    );
    // decode drops special tokens: the template's markers are checked as tokens.
    let chat = m.tokenizer.decode(&docs[1]).unwrap();
    assert!(chat.contains("user\nHi") && chat.contains("assistant\nHello!"), "{chat}");
    let turns =
        docs[1].iter().filter(|&&i| m.tokenizer.token_text(i).as_deref() == Some("<|im_start|>")).count();
    assert_eq!(turns, 3, "system, user and assistant turns: {chat}");
    assert_eq!(documents(&m.tokenizer, &rows, Some(&(1..2))).unwrap(), docs[1..].to_vec());
    assert!(documents(&m.tokenizer, &rows, Some(&(1..3))).is_err(), "rows past the end");
    let text = dir.path().join("doc.txt");
    std::fs::write(&text, "One.\n\nTwo.").unwrap();
    assert_eq!(documents(&m.tokenizer, &text, None).unwrap().len(), 1);
    assert!(documents(&m.tokenizer, &text, Some(&(0..1))).is_err(), "--rows on plain text");
}

/// `mmlu_SUBJECT:VARIANT:validation` asks the validation split's questions (which choosing a
/// plan may see and no evaluation asks) after the test task's worked examples; the six medical
/// subjects' validation questions number what pyarrow counts (tests/fixtures/mmlu_arrow.json:
/// 123); a split of a task that is not MMLU's is refused, naming it.
#[test]
fn mmlu_tasks_ask_the_validation_split_when_named() {
    use uniattn::eval::tasks::load;
    let dir = tasks_dir();
    let test = load(&dir, "mmlu_anatomy:mc_5shot").unwrap().remove(0);
    let val = load(&dir, "mmlu_anatomy:mc_5shot:validation").unwrap().remove(0);
    assert_eq!(
        (test.name.as_str(), val.name.as_str()),
        ("mmlu_anatomy:mc_5shot", "mmlu_anatomy:mc_5shot:validation")
    );
    let hf = dir.parent().unwrap().join("hf_datasets");
    let questions = uniattn::eval::mmlu::read_split(&hf, "anatomy", "validation").unwrap();
    assert_eq!(val.items.len(), questions.len());
    for (item, q) in val.items.iter().zip(&questions) {
        assert_eq!(item.gold, q.answer);
        let context = &item.requests[0].context;
        let asked = &context[context.rfind("Question:").unwrap()..];
        assert!(asked.starts_with(&format!("Question: {}\n A. {}\n", q.question, q.choices[0])), "{asked}");
    }
    let shots = |t: &uniattn::eval::mc_task::McTask| {
        let c = &t.items[0].requests[0].context;
        c[..c.rfind("Question:").unwrap()].to_string()
    };
    assert_eq!(shots(&val), shots(&test), "the same worked examples");
    assert_ne!(val.items[0].requests[0].context, test.items[0].requests[0].context);
    let group = load(&dir, "mmlu_medical:mc_5shot:validation").unwrap();
    assert_eq!(group.iter().map(|t| t.items.len()).sum::<usize>(), 123);
    let err = load(&dir, "arc_easy:rc_5shot:validation").err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("MMLU tasks only"), "{err}");
}

/// The Arrow reader on the eval package's MMLU data, against the counts, first and last rows
/// that pyarrow reads (tests/fixtures/mmlu_arrow.json, scripts/reference/arrow_rows.py).
#[test]
fn arrow_reader_matches_pyarrow_on_mmlu() {
    let hf = tasks_dir().parent().unwrap().join("hf_datasets");
    assert!(hf.exists(), "{} missing: run scripts/fetch-models.sh evals", hf.display());
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("mmlu_arrow.json")).unwrap()).unwrap();
    for f in fixture.as_array().unwrap() {
        let (subject, split) = (f["subject"].as_str().unwrap(), f["split"].as_str().unwrap());
        let rows = uniattn::eval::mmlu::read_split(&hf, subject, split).unwrap();
        assert_eq!(rows.len() as u64, f["rows"].as_u64().unwrap(), "{subject} {split}");
        for (row, want) in [(&rows[0], &f["first"]), (rows.last().unwrap(), &f["last"])] {
            assert_eq!(row.question, want["question"].as_str().unwrap().trim(), "{subject} {split}");
            let choices: Vec<String> = serde_json::from_value(want["choices"].clone()).unwrap();
            assert_eq!(row.choices, choices);
            assert_eq!(row.answer as u64, want["answer"].as_u64().unwrap());
        }
        let sum: usize = rows.iter().map(|r| r.answer).sum();
        assert_eq!(sum as u64, f["answer_sum"].as_u64().unwrap(), "{subject} {split}");
    }
}
