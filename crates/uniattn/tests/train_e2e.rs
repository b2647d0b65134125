//! Post-training end to end on SmolLM2 (CPU, a few steps): label masking on a real row, a
//! UniAttn run converted on the fly, stopped and resumed, whose result every command loads.
mod common;
use common::*;
use tch::{Device, Kind};
use uniattn::convert::PlanSpec;
use uniattn::data::{read_records, Record};
use uniattn::loader;
use uniattn::train::dataset::tokenize;
use uniattn::train::job::{run, TrainJob, Variant};
use uniattn::train::optim::AdamWConfig;
use uniattn::train::TrainConfig;

#[test]
fn prompt_tokens_carry_no_loss() {
    init();
    let m = loader::load(&model(SMOLLM2).unwrap(), Kind::Float, Device::Cpu).unwrap();
    let (recs, _) = read_records(&sample_data("pmc_llama_instructions_1000.json"), false).unwrap();
    let Record::Instruction(ex) = &recs[0] else { panic!("PMC rows are instructions") };
    let t = &tokenize(&m.tokenizer, &recs[..1], 4096).unwrap()[0];
    let n_prompt = m.tokenizer.encode(&ex.prompt, true).unwrap().len();
    assert!(t.mask[..n_prompt].iter().all(|&x| !x), "prompt tokens must be masked");
    assert!(t.mask[n_prompt..].iter().all(|&x| x), "response tokens carry loss");
    assert_eq!(*t.ids.last().unwrap(), m.tokenizer.eos_ids[0], "the target ends with EOS");
    let response = m.tokenizer.decode(&t.ids[n_prompt..t.ids.len() - 1]).unwrap();
    assert_eq!(response.trim(), ex.response.trim());
}

fn job(out: &std::path::Path, resume: Option<std::path::PathBuf>, stop: Option<usize>) -> TrainJob {
    let data = out.with_file_name("pmc12.json");
    let rows: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(sample_data("pmc_llama_instructions_1000.json")).unwrap(),
    )
    .unwrap();
    // Short rows only, so that responses fit in 160 tokens.
    let short: Vec<&serde_json::Value> = rows.iter().filter(|r| r.to_string().len() < 700).take(12).collect();
    std::fs::write(&data, serde_json::to_string(&short).unwrap()).unwrap();
    TrainJob {
        model: model(SMOLLM2).unwrap(),
        data,
        val_data: None,
        val_fraction: 0.2,
        variant: Variant::parse("uniattn").unwrap(),
        plan: Some(PlanSpec::Blocks("26-27,28-29".into())),
        calib: None,
        max_len: 160,
        skip_bad_rows: false,
        cfg: TrainConfig {
            optim: AdamWConfig { lr: 5e-5, ..Default::default() },
            stage1_lr: Some(1e-3),
            micro_batch: 2,
            grad_accum: 2,
            seed: 1,
            eval_every: 1,
            save_every: 1,
            save_total_limit: Some(2),
            stop_after: stop,
            recompute_layers: true,
            ..Default::default()
        },
        resume,
        out: out.to_path_buf(),
        overwrite: false,
        config_file: Some(format!("# how this run was started\nmax-steps = {stop:?}\n")),
        profile: None,
        kind: Kind::Float,
        save_kind: Kind::Float,
        device: Device::Cpu,
        world: uniattn::distributed::World::single(),
        hang_timeout: None,
    }
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn uniattn_two_stage_run_stops_resumes_and_loads() {
    init();
    let scratch = tmpdir("train");
    let out = scratch.path().join("run");
    let first = run(job(&out, None, Some(4)), |_, _| {}).unwrap();
    assert_eq!(first.history.len(), 4);
    assert!(first.history.iter().all(|m| m.loss.is_finite() && m.val_loss.is_some()));
    let ckpts = uniattn::train::checkpoint::list(&out.join("checkpoints")).unwrap();
    assert_eq!(ckpts.len(), 2, "save_total_limit keeps two");
    // A new run may not take over the stopped run's folder.
    let err = run(job(&out, None, None), |_, _| {}).err().expect("refused").to_string();
    assert!(err.contains("holds an earlier run"), "{err}");
    assert_eq!(uniattn::train::checkpoint::list(&out.join("checkpoints")).unwrap().len(), 2);
    let config = || std::fs::read_to_string(out.join(uniattn::train::job::CONFIG_FILE)).unwrap();
    assert!(
        config().contains("max-steps = Some(4)"),
        "the refused run left the first run's options: {}",
        config()
    );
    // A checkpoint written by two ranks resumes here on one with twice the accumulation, so
    // that a step takes as many examples as it did there: stage 2's 10 rows in windows of 8
    // leave one more step after the checkpoint's (stage 2, step 1), not two.
    let state = ckpts.last().unwrap().join(uniattn::train::checkpoint::STATE_FILE);
    let original = std::fs::read_to_string(&state).unwrap();
    let mut two: serde_json::Value = serde_json::from_str(&original).unwrap();
    assert_eq!(two["world_size"], 1);
    two["world_size"] = 2.into();
    let elsewhere = scratch.path().join("from_two");
    copy_tree(&out, &elsewhere);
    let copied = elsewhere.join(ckpts.last().unwrap().strip_prefix(&out).unwrap());
    std::fs::write(copied.join(uniattn::train::checkpoint::STATE_FILE), two.to_string()).unwrap();
    let from_two = run(job(&elsewhere, Some(elsewhere.clone()), None), |_, _| {}).unwrap();
    assert_eq!(from_two.history.len(), 1, "one step of 8 examples left in stage 2");
    assert_eq!(from_two.history[0].global_step, 5);
    // Cut off as if after step 4 was logged but before its checkpoint was written: the run goes
    // on from step 3's, and step 4 is logged once, by the run that trains it again.
    std::fs::remove_dir_all(ckpts.last().unwrap()).unwrap();
    // The resumed run writes its final model in bf16; checkpoints stay f32.
    let rest =
        run(TrainJob { save_kind: Kind::BFloat16, ..job(&out, Some(out.clone()), None) }, |_, _| {}).unwrap();
    assert_eq!(rest.history.first().unwrap().global_step, 4, "resumed from step 3's checkpoint");
    let logged: Vec<usize> = uniattn::train::run_steps(&out).unwrap().iter().map(|m| m.global_step).collect();
    assert_eq!(logged, (1..=6).collect::<Vec<_>>(), "every step of the run logged once, for its loss plot");
    // 10 training rows in windows of 4: 3 steps per stage, 6 in all.
    assert_eq!(rest.history.last().unwrap().global_step, 6);
    assert!(rest.history.iter().any(|m| m.stage == 1));
    let file = std::fs::read(rest.final_dir.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&file[8..8 + header_len]).unwrap();
    assert!(header.contains("\"BF16\"") && !header.contains("\"F32\""), "final model in bf16: {header:.200}");
    let m = loader::load(&rest.final_dir, Kind::Float, Device::Cpu).unwrap();
    assert_eq!(m.model.stem.plan.reuse_layers(), vec![27, 29]);
    assert!(out.join("loss.png").exists() && out.join("metrics.jsonl").exists());
    assert!(config().contains("max-steps = None"), "the resumed run's options: {}", config());
    let event_files = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            e.as_ref().unwrap().file_name().to_string_lossy().starts_with(uniattn::train::events::FILE_PREFIX)
        })
        .count();
    assert_eq!(event_files, 2, "one TensorBoard event file for the first run, one for the resumed");
}
