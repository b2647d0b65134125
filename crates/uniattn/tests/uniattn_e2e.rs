//! UniAttn end to end on SmolLM2 (CPU): convert with each fit, the folder it writes, and the
//! analysis.
mod common;
use common::*;
use std::path::Path;
use tch::{Device, Kind};
use uniattn::calibrate::{CalibOptions, FitMethod};
use uniattn::convert::{self, CalibData, PlanSpec};
use uniattn::eval::perplexity::perplexity_docs;
use uniattn::loader;
use uniattn::plan::ReuseKind;

fn pmc() -> std::path::PathBuf {
    sample_data("pmc_llama_instructions_1000.json")
}

fn calib(rows: std::ops::Range<usize>, held: f64) -> CalibData {
    CalibData { path: pmc(), rows: Some(rows), heldout_fraction: held, max_len: 96 }
}

fn opts(method: FitMethod) -> CalibOptions {
    CalibOptions { method, chunk_tokens: 1024, state_device: Device::Cpu, pad_id: 0 }
}

/// `convert` with the streaming fit, on the CPU, in f32.
fn converted(gguf: &Path, blocks: &str, data: &CalibData) -> convert::ConvertOutput {
    let method = opts(FitMethod::Streaming { ridge: None });
    let spec = PlanSpec::Blocks(blocks.to_string());
    convert::convert(
        gguf,
        &spec,
        ReuseKind::Uniattn,
        Some(data),
        &method,
        Kind::Float,
        Device::Cpu,
        None,
        |_, _| {},
    )
    .unwrap()
    .0
}

fn nll_on(model: &Path, rows: std::ops::Range<usize>) -> f64 {
    let m = loader::load(model, Kind::Float, Device::Cpu).unwrap();
    nll_of(&m.model, &m.tokenizer, rows)
}

fn nll_of(
    model: &uniattn::model::Transformer,
    tok: &uniattn::tokenizer::Tokenizer,
    rows: std::ops::Range<usize>,
) -> f64 {
    let texts = uniattn::data::read_texts(&pmc()).unwrap();
    let docs: Vec<Vec<u32>> = texts[rows]
        .iter()
        .map(|t| {
            let mut ids = tok.encode(t, true).unwrap();
            ids.truncate(96);
            ids
        })
        .collect();
    perplexity_docs(model, &docs, 0, 96, 96, |_, _| {}).unwrap().mean_nll
}

#[test]
fn convert_fits_and_writes_a_loadable_unified_model() {
    init();
    let gguf = model(SMOLLM2).unwrap();
    let plan = PlanSpec::Blocks("24-26,27-29".into());
    let scratch = tmpdir("convert");
    let dir = scratch.path();
    let mut nll = Vec::new();
    for (name, method) in [("none", FitMethod::Zero), ("ours", FitMethod::Streaming { ridge: None })] {
        let (out, kept) = convert::convert(
            &gguf,
            &plan,
            ReuseKind::Uniattn,
            Some(&calib(0..16, 0.25)),
            &opts(method),
            Kind::Float,
            Device::Cpu,
            None,
            |_, _| {},
        )
        .unwrap();
        let path = dir.join(name);
        convert::save(&out, &path, Kind::Float, None).unwrap();
        if name == "ours" {
            let fits = &out.report.as_ref().expect("UniAttn's fit is reported").layers;
            assert_eq!(fits.len(), 4);
            assert!(fits.iter().all(|f| f.heldout_rel_err.unwrap() < 1.0), "{fits:?}");
            // The folder: W_c for reuse layers, no Q/K there, the plan beside it.
            let mut t = std::collections::BTreeMap::new();
            uniattn::formats::safetensors::read_file(&path.join("model.safetensors"), &mut t).unwrap();
            assert!(t.contains_key("model.layers.25.self_attn.v2_proj.weight"));
            assert!(!t.contains_key("model.layers.25.self_attn.q_proj.weight"));
            assert!(t.contains_key("model.layers.24.self_attn.q_proj.weight"));
            let plan = loader::read_plan(&path, 30).unwrap();
            assert_eq!(plan.reuse_layers(), vec![25, 26, 28, 29]);
            // Kept Q/K (reference-checkpoint layout) loads to the same model.
            let with_qk = dir.join("ours-qk");
            convert::save(&out, &with_qk, Kind::Float, Some(&kept)).unwrap();
            let mut t = std::collections::BTreeMap::new();
            uniattn::formats::safetensors::read_file(&with_qk.join("model.safetensors"), &mut t).unwrap();
            assert!(t.contains_key("model.layers.25.self_attn.q_proj.weight"));
            assert_eq!(nll_on(&with_qk, 0..4), nll_on(&path, 0..4));
        }
        nll.push(nll_on(&path, 0..12));
    }
    // On the rows it was fitted on, W_c must bring the unified model closer to the data.
    assert!(nll[1] < nll[0], "W_c fit {} vs no W_c {}", nll[1], nll[0]);
}

/// The baselines convert with nothing to fit and no calibration rows: each folder loads as its
/// reuse kind and scores what the dense model with the plan applied in memory scores (the
/// trainer's conversion). UniAttn without calibration rows is refused, naming them.
#[test]
fn baselines_convert_without_calibration_data() {
    init();
    let gguf = model(SMOLLM2).unwrap();
    let scratch = tmpdir("convert-variants");
    let plan = PlanSpec::Blocks("24-26,27-29".into());
    let none = opts(FitMethod::Zero);
    let dense = loader::load(&gguf, Kind::Float, Device::Cpu).unwrap();
    for kind in [ReuseKind::SoftmaxOnly, ReuseKind::Cla, ReuseKind::Layerdrop, ReuseKind::KvHeads] {
        let (out, _) =
            convert::convert(&gguf, &plan, kind, None, &none, Kind::Float, Device::Cpu, None, |_, _| {})
                .unwrap();
        assert!(out.report.is_none(), "{kind:?}: nothing was fitted");
        let path = scratch.path().join(kind.name());
        convert::save(&out, &path, Kind::Float, None).unwrap();
        let read = loader::read_plan(&path, 30).unwrap();
        assert_eq!((read.reuse, read.reuse_layers()), (kind, vec![25, 26, 28, 29]));
        let in_memory = dense
            .model
            .share()
            .unwrap()
            .apply_plan(plan.resolve(30).unwrap().with_reuse(kind), Default::default())
            .unwrap();
        let (saved, want) = (nll_on(&path, 0..4), nll_of(&in_memory, &dense.tokenizer, 0..4));
        assert!((saved - want).abs() < 1e-9, "{kind:?}: {saved} from the folder, {want} in memory");
    }
    let refused = convert::convert(
        &gguf,
        &plan,
        ReuseKind::Uniattn,
        None,
        &none,
        Kind::Float,
        Device::Cpu,
        None,
        |_, _| {},
    );
    let err = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("calibration rows"), "{err}");
}

#[test]
fn reference_fit_runs() {
    init();
    let gguf = model(SMOLLM2).unwrap();
    let plan = PlanSpec::Grouped("2:26:30".into());
    let (a, _) = convert::convert(
        &gguf,
        &plan,
        ReuseKind::Uniattn,
        Some(&calib(0..6, 0.0)),
        &opts(FitMethod::Reference { len: 64 }),
        Kind::Float,
        Device::Cpu,
        None,
        |_, _| {},
    )
    .unwrap();
    let fits = &a.report.as_ref().expect("UniAttn's fit is reported").layers;
    assert_eq!(fits.len(), 2);
    assert!(fits.iter().all(|f| f.alpha.is_none() && f.fit_rel_err.is_finite()));
}

#[test]
fn bad_plans_and_calibration_files_are_rejected() {
    init();
    let gguf = model(SMOLLM2).unwrap();
    let run = |plan: PlanSpec, data: CalibData| {
        convert::convert(
            &gguf,
            &plan,
            ReuseKind::Uniattn,
            Some(&data),
            &opts(FitMethod::Zero),
            Kind::Float,
            Device::Cpu,
            None,
            |_, _| {},
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
    };
    let err = run(PlanSpec::Blocks("28-31".into()), calib(0..4, 0.0));
    assert!(err.contains("out of range"), "{err}");
    let err = run(PlanSpec::Grouped("4:16".into()), calib(0..4, 0.0));
    assert!(err.contains("g:begin:end"), "{err}");
    let err = run(PlanSpec::Blocks("20-23".into()), calib(990..1010, 0.0));
    assert!(err.contains("has 1000"), "{err}");
    let scratch = tmpdir("badcalib");
    let bad = scratch.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"instruction\": \"x\", \"output\": \"y\"}\n{\"output\": 5}\n").unwrap();
    let err = run(
        PlanSpec::Blocks("20-23".into()),
        CalibData { path: bad, rows: None, heldout_fraction: 0.0, max_len: 64 },
    );
    assert!(err.contains("bad.jsonl") && err.contains("line 2"), "{err}");
}

#[test]
fn analysis_matrix_and_plan() {
    init();
    let m = loader::load(&model(SMOLLM2).unwrap(), Kind::Float, Device::Cpu).unwrap();
    let texts = uniattn::data::read_texts(&pmc()).unwrap();
    let seqs: Vec<Vec<u32>> = texts[..2]
        .iter()
        .map(|t| {
            let mut ids = m.tokenizer.encode(t, true).unwrap();
            ids.truncate(64);
            ids
        })
        .collect();
    let sim = uniattn::analyze::attention_similarity(&m.model, &seqs, |_, _| {}).unwrap();
    assert_eq!(sim.len(), 30);
    for (i, row) in sim.iter().enumerate() {
        assert!((row[i] - 1.0).abs() < 1e-4, "diagonal {i}: {}", row[i]);
        for (j, &v) in row.iter().enumerate() {
            assert_eq!(v, sim[j][i]);
            assert!(v > 0.0 && v <= 1.0 + 1e-4);
        }
    }
    let plan = uniattn::analyze::propose_plan(&sim, 10, 15, 4).unwrap();
    assert_eq!(plan.reuse_layers().len(), 10);
    assert!(plan.blocks.iter().all(|&(s, e)| s >= 15 && e - s <= 4));
    let scratch = tmpdir("analyze");
    let png = scratch.path().join("sim.png");
    uniattn::analyze::similarity_chart(&sim).save(&png).unwrap();
    assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
}

#[test]
fn plan_search_scores_match_an_independent_conversion() {
    init();
    let gguf = model(SMOLLM2).unwrap();
    let m = loader::load(&gguf, Kind::Float, Device::Cpu).unwrap();
    let data = calib(0..10, 0.2);
    let (fit, held) = convert::calibration_sequences(&m.tokenizer, &data).unwrap();
    let val = uniattn::eval::perplexity::documents(&m.tokenizer, &pmc(), Some(&(900..904))).unwrap();
    let search_opts = uniattn::plan_search::SearchOptions {
        reuse: uniattn::plan::ReuseKind::Uniattn,
        reuse_layers: 2,
        min_layer: 26,
        max_group: 3,
        verify: 2,
        candidates: vec![],
    };
    let sd = uniattn::plan_search::SearchData { fit: &fit, fit_heldout: &held, group: None };
    let calib_opts = opts(FitMethod::Streaming { ridge: None });
    let heldout = uniattn::plan_search::HeldOut::new(&m.model, &val, 4096, 26, None).unwrap();
    let r =
        uniattn::plan_search::search(&m.model, &sd, &heldout, &calib_opts, &search_opts, |_, _| {}).unwrap();
    // Blocks 26-27, 26-28, 27-28, 27-29, 28-29; plans of 2 reuse layers: 26-28, 27-29, 26-27,28-29.
    assert_eq!(r.blocks.len(), 5);
    assert_eq!(r.plans.len(), 2);
    let dense = perplexity_docs(&m.model, &val, 0, 4096, 4096, |_, _| {}).unwrap().mean_nll;
    assert!((r.dense_nll - dense).abs() < 1e-6, "{} vs {dense}", r.dense_nll);
    for p in &r.plans {
        let out = converted(&gguf, &p.plan, &data);
        let want = perplexity_docs(&out.model, &val, 0, 4096, 4096, |_, _| {}).unwrap().mean_nll;
        assert!((p.mean_nll - want).abs() < 1e-5, "{}: {} vs {want}", p.plan, p.mean_nll);
        assert!(p.mean_nll > r.dense_nll);
    }
    assert_eq!(r.best, r.plans[0].plan);
}

/// Plans scored on multiple-choice questions: each measured plan's score is the gold-choice
/// cross-entropy that `eval mc` gives an independently converted model.
#[test]
fn plan_search_on_choices_matches_eval_mc() {
    init();
    let gguf = model(SMOLLM2).unwrap();
    let m = loader::load(&gguf, Kind::Float, Device::Cpu).unwrap();
    let data = calib(0..8, 0.25);
    let (fit, held) = convert::calibration_sequences(&m.tokenizer, &data).unwrap();
    let dir = tasks_dir();
    // Two tasks: the score is the mean of each one's.
    let mut tasks = Vec::new();
    for (spec, n) in [("arc_easy", 6), ("mmlu_anatomy:mc_5shot:validation", 3)] {
        let mut task = uniattn::eval::tasks::load(&dir, spec).unwrap().remove(0);
        task.items.truncate(n);
        tasks.push(task);
    }
    let mc = uniattn::eval::multiple_choice::ScoringOptions { max_len: 2048, batch_tokens: 4096 };
    let score =
        uniattn::plan_search::ChoiceLoss { tok: &m.tokenizer, tasks: tasks.clone(), opts: mc, group: None };
    let search_opts = uniattn::plan_search::SearchOptions {
        reuse: uniattn::plan::ReuseKind::Uniattn,
        reuse_layers: 1,
        min_layer: 27,
        max_group: 2,
        verify: 2,
        candidates: vec![],
    };
    let sd = uniattn::plan_search::SearchData { fit: &fit, fit_heldout: &held, group: None };
    let calib_opts = opts(FitMethod::Streaming { ridge: None });
    let r =
        uniattn::plan_search::search(&m.model, &sd, &score, &calib_opts, &search_opts, |_, _| {}).unwrap();
    assert!(r.scored_on.contains("6 questions of arc_easy"), "{}", r.scored_on);
    assert!(r.scored_on.contains("3 questions of mmlu_anatomy:mc_5shot:validation"), "{}", r.scored_on);
    assert_eq!((r.blocks.len(), r.plans.len()), (2, 2));
    for p in &r.plans {
        let out = converted(&gguf, &p.plan, &data);
        let each: Vec<f64> = tasks
            .iter()
            .map(|task| {
                let (_, items) = uniattn::eval::multiple_choice::evaluate(
                    &out.model,
                    &out.tokenizer,
                    task,
                    None,
                    mc,
                    None,
                    |_, _| {},
                )
                .unwrap();
                uniattn::eval::multiple_choice::gold_cross_entropy(&items)
            })
            .collect();
        let want = each.iter().sum::<f64>() / each.len() as f64;
        assert!((p.mean_nll - want).abs() < 1e-6, "{}: {} vs {want} ({each:?})", p.plan, p.mean_nll);
    }
}
