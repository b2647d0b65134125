//! The engine against the training graph: same logits at every position, whatever the
//! batch, chunking and plan.
use super::*;
use crate::config::{Family, ModelConfig};
use crate::cuda::kernels::{with_decode_attention, without};
use crate::plan::{ReuseKind, SuperBlockPlan};
use crate::savings::plan_savings;
use crate::testing::{tiny_config, tiny_model};

fn variants() -> Vec<Option<ReuseKind>> {
    std::iter::once(None).chain(ReuseKind::ALL.map(Some)).collect()
}

/// A tiny f64 model: dense, or the plan `{1..4}` of `kind` with random W_c.
fn model(fam: Family, kind: Option<ReuseKind>, seed: i64) -> Transformer {
    let cfg = tiny_config(fam);
    match kind {
        None => tiny_model(&cfg, SuperBlockPlan::dense(4), Kind::Double, seed),
        Some(k) => {
            let plan = SuperBlockPlan::from_blocks(vec![(1, 4)], 4).unwrap().with_reuse(k);
            tiny_model(&cfg, plan, Kind::Double, seed)
        }
    }
}

/// The GPU the CUDA-graph tests run on; `None` (the test is skipped, saying so) without one.
fn graph_device() -> Option<tch::Device> {
    crate::runtime::init().unwrap();
    if !tch::Cuda::is_available() || !crate::cuda::available() {
        eprintln!("skipped: no CUDA device or no CUDA-graph shim");
        return None;
    }
    Some(tch::Device::Cuda(0))
}

fn seq(seed: u64, len: usize) -> Vec<u32> {
    let mut r = crate::rng::SplitMix64(seed);
    (0..len).map(|_| (r.next_u64() % 31) as u32).collect()
}

fn full_logits(m: &Transformer, ids: &[u32]) -> Tensor {
    let t: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    m.forward(&Tensor::from_slice(&t).unsqueeze(0)).squeeze_dim(0)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Every plan of [`variants`] with the map counts from which its leads hand their map over in
/// decode, so that both forms run where there is a map: CUDA's threshold (the tests' small
/// batches hand queries and keys) and 0 (always the map).
fn variants_and_handovers() -> Vec<(Option<ReuseKind>, i64)> {
    let forms = |kind| match kind {
        Some(ReuseKind::Uniattn | ReuseKind::SoftmaxOnly) => vec![MAPS_FOR_PROBS, 0],
        _ => vec![MAPS_FOR_PROBS],
    };
    variants().into_iter().flat_map(|k| forms(k).into_iter().map(move |m| (k, m))).collect()
}

/// Three prompts of different lengths (one longer than the prefill chunk) prefilled into one
/// batch, then decoded together: every logit matches the full forward of its own sequence,
/// whichever form a lead hands its attention over in.
#[test]
fn batched_prefill_and_decode_match_the_full_forward() {
    for fam in [Family::Llama, Family::Qwen2, Family::Gemma2, Family::Gemma3] {
        for (kind, maps) in variants_and_handovers() {
            let reference = model(fam, kind, 11);
            let mut engine = Engine::new(
                model(fam, kind, 11),
                EngineOptions { max_batch: 3, max_len: 24, prefill_chunk: 4 },
            )
            .unwrap();
            engine.set_maps_for_probs(maps);
            let mut seqs = [seq(1, 6), seq(2, 3), seq(3, 9)];
            for (slot, s) in seqs.iter().enumerate() {
                let got = engine.prefill(slot, s, true).unwrap();
                let want = full_logits(&reference, s);
                assert!(max_diff(&got, &want) < 1e-10, "{fam:?} {kind:?} prefill slot {slot}");
            }
            for step in 0..7 {
                let next: Vec<u32> = (0..3).map(|i| ((7 * step + 5 * i + 1) % 31) as u32).collect();
                let got = engine.decode(&next).unwrap();
                for (i, s) in seqs.iter_mut().enumerate() {
                    s.push(next[i]);
                    let want = full_logits(&reference, s).get(-1);
                    let d = max_diff(&got.get(i as i64), &want);
                    assert!(d < 1e-10, "{fam:?} {kind:?} decode step {step} slot {i}: {d}");
                }
            }
        }
    }
}

/// Attention reads keys in buckets of `KEY_BUCKET` positions: what lies past a sequence's end
/// (stale entries of an earlier, longer sequence) is masked out, and a sequence that crosses a
/// bucket boundary still matches the full forward.
#[test]
fn key_buckets_mask_what_lies_past_the_end() {
    let max_len = KEY_BUCKET as usize + 40;
    for fam in [Family::Llama, Family::Gemma3] {
        for kind in variants() {
            let reference = model(fam, kind, 5);
            let mut engine =
                Engine::new(model(fam, kind, 5), EngineOptions { max_batch: 2, max_len, prefill_chunk: 64 })
                    .unwrap();
            let _ = engine.prefill(0, &seq(4, max_len - 8), false).unwrap();
            engine.reset(0);
            let mut short = seq(5, 7);
            let mut long = seq(6, KEY_BUCKET as usize - 1);
            let got = engine.prefill(0, &short, true).unwrap();
            assert!(max_diff(&got, &full_logits(&reference, &short)) < 1e-10, "{fam:?} {kind:?} prefill");
            let _ = engine.prefill(1, &long, false).unwrap();
            for step in 0..3 {
                let next = [(step * 3 + 1) as u32, (step * 5 + 2) as u32];
                let got = engine.decode(&next).unwrap();
                for (i, s) in [&mut short, &mut long].into_iter().enumerate() {
                    s.push(next[i]);
                    let d = max_diff(&got.get(i as i64), &full_logits(&reference, s).get(-1));
                    assert!(d < 1e-10, "{fam:?} {kind:?} decode step {step} slot {i}: {d}");
                }
            }
        }
    }
}

/// Moving a sequence to another slot (what the scheduler does when one finishes) keeps it.
#[test]
fn moved_slots_keep_their_sequence() {
    let reference = model(Family::Llama, Some(ReuseKind::Uniattn), 3);
    let mut engine = Engine::new(
        model(Family::Llama, Some(ReuseKind::Uniattn), 3),
        EngineOptions { max_batch: 2, max_len: 16, prefill_chunk: 8 },
    )
    .unwrap();
    let mut s = seq(9, 5);
    let _ = engine.prefill(1, &s, false).unwrap();
    engine.move_slot(1, 0);
    assert_eq!((engine.cache.len(0), engine.cache.len(1)), (5, 0));
    let got = engine.decode(&[4]).unwrap();
    s.push(4);
    assert!(max_diff(&got.get(0), &full_logits(&reference, &s).get(-1)) < 1e-10);
}

/// Each kind's cache is the dense one less exactly what the plan's savings predict: reuse
/// layers cache V only (UniAttn, softmax-only) or nothing (CLA, layer drop).
#[test]
fn kv_bytes_follow_the_plan_exactly() {
    let opts = EngineOptions { max_batch: 4, max_len: 32, prefill_chunk: 8 };
    let dense = Engine::new(model(Family::Llama, None, 1), opts).unwrap();
    // 32 positions are allocated as one whole key bucket.
    assert_eq!(dense.cache.capacity(), KEY_BUCKET as usize);
    // Four layers of K and V, 2 heads x 4 dims, f64.
    assert_eq!(dense.cache.bytes_per_token(), 4 * 2 * 8 * 8);
    for kind in ReuseKind::ALL {
        let mut planned = Engine::new(model(Family::Llama, Some(kind), 1), opts).unwrap();
        // On the CPU leads always hand their map over: one sequence reads what many do.
        assert_eq!(planned.cache_read_bytes_per_token(1, 1), planned.cache_read_bytes_per_token(64, 1));
        planned.set_maps_for_probs(MAPS_FOR_PROBS); // CUDA's threshold, for the rest
        let s = plan_savings(planned.config(), planned.plan(), 8);
        assert_eq!(dense.cache.bytes(), 4 * dense.cache.capacity() * s.kv_bytes_per_token_dense);
        assert_eq!(
            planned.cache.bytes(),
            4 * planned.cache.capacity() * s.kv_bytes_per_token_unified,
            "{kind:?}"
        );
        assert_eq!(planned.cache.bytes_per_token(), s.kv_bytes_per_token_unified, "{kind:?}");
        let ratio = planned.cache.bytes() as f64 / dense.cache.bytes() as f64;
        assert_eq!(ratio, 1.0 - s.kv_fraction_saved, "{kind:?}");
        // What a decode step of many sequences reads per past token: the cache itself, except
        // that CLA layers read their lead's keys and values again (as much as dense reads).
        let many = MAPS_FOR_PROBS as usize;
        let read = planned.cache_read_bytes_per_token(many, 1);
        let want =
            if kind == ReuseKind::Cla { dense.cache.bytes_per_token() } else { s.kv_bytes_per_token_unified };
        assert_eq!(read, want, "{kind:?}: cache bytes read per token");
        // One sequence: UniAttn's and softmax-only's reuse layers read their lead's keys too.
        let want_one = match kind {
            ReuseKind::Uniattn | ReuseKind::SoftmaxOnly => dense.cache.bytes_per_token(),
            _ => want,
        };
        assert_eq!(planned.cache_read_bytes_per_token(1, 1), want_one, "{kind:?}: read at batch 1");
    }
    assert_eq!(dense.cache_read_bytes_per_token(1, 1), dense.cache.bytes_per_token());
}

/// Greedy generation through the scheduler (continuous batching, requests of different
/// lengths finishing at different steps) equals greedy decoding by repeated full forwards.
#[test]
fn greedy_generation_equals_repeated_full_forwards() {
    for kind in [None, Some(ReuseKind::Uniattn)] {
        let reference = model(Family::Qwen2, kind, 5);
        let engine = Engine::new(
            model(Family::Qwen2, kind, 5),
            EngineOptions { max_batch: 2, max_len: 32, prefill_chunk: 4 },
        )
        .unwrap();
        let mut tok = crate::testing::tiny_tokenizer();
        tok.eos_ids.clear();
        let mut sched = Scheduler::new(engine, std::sync::Arc::new(tok));
        let prompts = [seq(21, 7), seq(22, 2), seq(23, 10)];
        let lengths = [6usize, 9, 4];
        let ids: Vec<u64> = prompts
            .iter()
            .zip(lengths)
            .map(|(p, n)| {
                let params = SamplingParams { max_new_tokens: n, ..Default::default() };
                sched.submit(Request { prompt: p.clone(), params, ..Default::default() }).unwrap()
            })
            .collect();
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); 3];
        let mut finished = 0;
        while sched.has_work() {
            for e in sched.step() {
                match e {
                    Event::Token { id, token, .. } => out[id as usize].push(token),
                    Event::Finished { id, completion_tokens, reason, .. } => {
                        assert_eq!(completion_tokens, lengths[id as usize]);
                        assert_eq!(reason, FinishReason::Length);
                        finished += 1;
                    }
                    Event::Failed { error, .. } => panic!("{error}"),
                }
            }
        }
        assert_eq!(finished, 3);
        for (i, p) in prompts.iter().enumerate() {
            let mut s = p.clone();
            for _ in 0..lengths[i] {
                let next = full_logits(&reference, &s).get(-1).argmax(-1, false).int64_value(&[]) as u32;
                s.push(next);
            }
            assert_eq!(out[ids[i] as usize], s[p.len()..], "{kind:?} request {i}");
        }
    }
}

/// Events by request of the scenario below, the decode steps queued ahead of the host and the
/// cancelled request's id.
type AheadRun = (std::collections::BTreeMap<u64, Vec<String>>, usize, u64);

/// Requests joining mid-run, one sampled (no step runs ahead while it is in the batch), one
/// stopped by a stop string, one cancelled, all finishing at different steps, on `engine`.
fn queued_ahead_scenario(engine: Engine, ahead: bool) -> AheadRun {
    let mut tok = crate::testing::tiny_tokenizer();
    tok.eos_ids.clear();
    let mut sched = Scheduler::new(engine, std::sync::Arc::new(tok));
    sched.set_decode_ahead(ahead);
    let greedy = |n: usize| SamplingParams { max_new_tokens: n, ..Default::default() };
    let submit = |sched: &mut Scheduler, prompt: Vec<u32>, params: SamplingParams| {
        sched.submit(Request { prompt, params, ..Default::default() }).unwrap()
    };
    submit(&mut sched, seq(31, 6), greedy(30));
    let cancelled = submit(&mut sched, seq(32, 3), greedy(40));
    submit(&mut sched, seq(33, 9), greedy(12));
    let mut events: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    for step in 0..200 {
        if !sched.has_work() {
            break;
        }
        match step {
            6 => {
                let sampled = SamplingParams { temperature: 0.9, seed: 5, ..greedy(5) };
                submit(&mut sched, seq(34, 4), sampled);
            }
            20 => sched.cancel(cancelled),
            22 => {
                submit(&mut sched, seq(35, 5), SamplingParams { stop: vec!["t3".into()], ..greedy(20) });
            }
            _ => {}
        }
        for e in sched.step() {
            let (id, what) = match e {
                Event::Token { id, token, text, .. } => (id, format!("token {token} {text:?}")),
                Event::Finished { id, reason, text, completion_tokens, .. } => {
                    (id, format!("finished {reason:?} {completion_tokens} {text:?}"))
                }
                Event::Failed { id, error } => panic!("{id}: {error}"),
            };
            events.entry(id).or_default().push(what);
        }
    }
    assert!(!sched.has_work());
    (events, sched.steps_ahead(), cancelled)
}

/// The scenario with steps queued ahead against one step at a time: every request gets the
/// same events. (Across requests the order may differ: a step already queued when a sequence
/// finishes is read before the next prompt joins; and a cancel, which comes between calls, may
/// find a token more or less done, so the cancelled request is checked up to the shorter.)
fn assert_same_events((mut with, ahead, cancelled): AheadRun, (mut without, none, _): AheadRun) {
    assert!(ahead >= 20 && none == 0, "{ahead} steps ran ahead with it on, {none} off");
    let finished = with.values().filter(|es| es.last().is_some_and(|e| e.starts_with("finished"))).count();
    assert_eq!((with.len(), finished), (5, 4), "{with:#?}");
    let (a, b) = (with.remove(&cancelled).unwrap(), without.remove(&cancelled).unwrap());
    let common = a.len().min(b.len());
    assert!(common >= 10 && a[..common] == b[..common], "the cancelled request: {a:?} vs {b:?}");
    assert_eq!(with, without);
}

/// Decode steps queued ahead of the host (greedy batches) give every request the events of
/// steps taken one at a time (eager, on the CPU).
#[test]
fn steps_queued_ahead_give_the_same_events() {
    let engine = || {
        let opts = EngineOptions { max_batch: 3, max_len: 64, prefill_chunk: 5 };
        Engine::new(model(Family::Llama, Some(ReuseKind::Uniattn), 8), opts).unwrap()
    };
    assert_same_events(queued_ahead_scenario(engine(), true), queued_ahead_scenario(engine(), false));
}

#[test]
fn requests_that_cannot_run_are_refused_with_the_reason() {
    let engine = Engine::new(
        model(Family::Llama, None, 1),
        EngineOptions { max_batch: 1, max_len: 8, prefill_chunk: 4 },
    )
    .unwrap();
    let mut sched = Scheduler::new(engine, std::sync::Arc::new(crate::testing::tiny_tokenizer()));
    let too_long = Request {
        prompt: seq(1, 6),
        params: SamplingParams { max_new_tokens: 5, ..Default::default() },
        ..Default::default()
    };
    let e = sched.submit(too_long).unwrap_err().to_string();
    assert!(e.contains("exceed the context of 8"), "{e}");
    let e = sched.submit(Request { prompt: vec![], ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("prompt"), "{e}");
    let e = sched
        .submit(Request {
            prompt: vec![40],
            params: SamplingParams { max_new_tokens: 1, ..Default::default() },
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    let e = Engine::new(
        model(Family::Llama, None, 1),
        EngineOptions { max_batch: 0, max_len: 8, prefill_chunk: 4 },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("at least 1"), "{e}");
    // Longer than the model's context (1,024 positions for the tiny model): refused up front.
    let e = Engine::new(
        model(Family::Llama, None, 1),
        EngineOptions { max_batch: 1, max_len: 20_000, prefill_chunk: 4 },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("exceeds the model's context of 1024"), "{e}");
}

/// A long prompt prefilled over several steps while a short request runs and finishes: its
/// half-filled cache moves down a slot and it still generates what full forwards generate.
#[test]
fn prefill_spread_over_steps_survives_compaction() {
    let reference = model(Family::Llama, Some(ReuseKind::Uniattn), 8);
    let engine = Engine::new(
        model(Family::Llama, Some(ReuseKind::Uniattn), 8),
        EngineOptions { max_batch: 2, max_len: 32, prefill_chunk: 2 },
    )
    .unwrap();
    let mut tok = crate::testing::tiny_tokenizer();
    tok.eos_ids.clear();
    let mut sched = Scheduler::new(engine, std::sync::Arc::new(tok));
    let (short, long) = (seq(31, 3), seq(32, 12));
    for (p, n) in [(&short, 2), (&long, 3)] {
        let params = SamplingParams { max_new_tokens: n, ..Default::default() };
        sched.submit(Request { prompt: p.clone(), params, ..Default::default() }).unwrap();
    }
    let mut out = vec![Vec::new(); 2];
    let mut order = Vec::new();
    while sched.has_work() {
        for e in sched.step() {
            match e {
                Event::Token { id, token, .. } => out[id as usize].push(token),
                Event::Finished { id, .. } => order.push(id),
                Event::Failed { error, .. } => panic!("{error}"),
            }
        }
    }
    assert_eq!(order, [0, 1], "the short request finishes while the long prompt is still prefilling");
    for (i, (p, n)) in [(&short, 2), (&long, 3)].into_iter().enumerate() {
        let mut s = p.clone();
        for _ in 0..n {
            s.push(full_logits(&reference, &s).get(-1).argmax(-1, false).int64_value(&[]) as u32);
        }
        assert_eq!(out[i], s[p.len()..], "request {i}");
    }
}

/// One family and plan decoded greedily through CUDA graphs and the fused kernels and by the
/// eager engine running libtorch's kernels only, on the GPU in `dtype`.
struct GraphsAgainstEager {
    case: String,
    /// The first decode step whose greedy tokens differ (both engines are fed the eager
    /// engine's tokens, so the comparison goes on past it); None when none does.
    first_divergence: Option<usize>,
    /// The largest logit difference over the prefills and all steps.
    max_logit_diff: f64,
    /// The largest logit magnitude seen, for scale.
    max_logit: f64,
}

/// [`GraphsAgainstEager`] for every family and reuse kind: 256 greedy steps across key buckets
/// and batch buckets (3 sequences padded to 4, then 2). None without a CUDA device.
fn graphs_against_eager(dtype: Kind) -> Option<Vec<GraphsAgainstEager>> {
    let device = graph_device()?;
    crate::cuda::kernels::available().expect("a CUDA machine compiles and loads the fused kernels");
    let on_gpu = |m: Transformer| {
        let w = crate::weights::WeightMap {
            source: "tiny".into(),
            tensors: m.named_tensors().into_iter().collect(),
        };
        Transformer::from_weights(w, m.stem.cfg.clone(), m.stem.plan.clone(), dtype, device, false).unwrap()
    };
    let opts = EngineOptions { max_batch: 4, max_len: 600, prefill_chunk: 64 };
    let greedy =
        |l: &Tensor| -> Vec<i64> { Vec::try_from(l.argmax(-1, false).to_device(tch::Device::Cpu)).unwrap() };
    let mut out = Vec::new();
    for fam in [Family::Llama, Family::Qwen2, Family::Gemma2, Family::Gemma3] {
        for (kind, maps) in variants_and_handovers() {
            let mut eager = Engine::new(on_gpu(model(fam, kind, 21)), opts).unwrap();
            eager.use_cuda_graphs(false).unwrap();
            eager.set_maps_for_probs(maps);
            let mut graphed = Engine::new(on_gpu(model(fam, kind, 21)), opts).unwrap();
            graphed.use_cuda_graphs(true).unwrap();
            graphed.set_maps_for_probs(maps);
            let form = if maps == 0 { ", map handed over" } else { "" };
            let mut r = GraphsAgainstEager {
                case: format!("{fam:?} {kind:?}{form}"),
                first_divergence: None,
                max_logit_diff: 0.0,
                max_logit: 0.0,
            };
            let compare = |r: &mut GraphsAgainstEager, a: &Tensor, b: &Tensor| {
                r.max_logit_diff = r.max_logit_diff.max(max_diff(a, b));
                r.max_logit = r.max_logit.max(a.abs().max().double_value(&[]));
            };
            let prompts = [seq(1, 5), seq(2, 9), seq(3, 250)];
            let mut next = Vec::new();
            for (slot, p) in prompts.iter().enumerate() {
                let a = without(|| eager.prefill(slot, p, false)).unwrap();
                let b = graphed.prefill(slot, p, false).unwrap();
                compare(&mut r, &a, &b);
                next.push(a.argmax(-1, false).int64_value(&[]) as u32);
            }
            // Three sequences (batch bucket 4), then two, then one: batch 1 runs the decode
            // matrix-vector kernels (the norm, RoPE and cache write, adds and gated activation
            // in their epilogues), the larger buckets cuBLAS and the other fused kernels.
            for step in 0..256 {
                if step == 96 {
                    next.truncate(2);
                }
                if step == 176 {
                    next.truncate(1);
                }
                let a = without(|| eager.decode(&next)).unwrap();
                let b = graphed.decode(&next).unwrap();
                compare(&mut r, &a, &b);
                let (ta, tb) = (greedy(&a), greedy(&b));
                if ta != tb && r.first_divergence.is_none() {
                    r.first_divergence = Some(step);
                }
                next = ta.iter().map(|&t| t as u32).collect();
            }
            assert!(graphed.cuda_graphs().unwrap() >= 3, "captured batch 4, 2 and 1");
            out.push(r);
        }
    }
    Some(out)
}

/// On a GPU (skipped elsewhere): in f32, decoding through CUDA graphs and the fused kernels
/// gives the eager engine's greedy tokens at every step and its logits within 1e-4, for every
/// family and reuse kind.
#[test]
fn cuda_graph_decode_equals_eager() {
    let Some(results) = graphs_against_eager(Kind::Float) else { return };
    let mut worst = 0.0f64;
    for r in &results {
        assert!(r.max_logit_diff < 1e-4, "{}: logits differ by {}", r.case, r.max_logit_diff);
        assert_eq!(r.first_divergence, None, "{}: greedy tokens differ", r.case);
        worst = worst.max(r.max_logit_diff);
    }
    eprintln!(
        "CUDA graphs + fused kernels vs eager libtorch kernels: max |logit diff| {worst:.3e} over {} cases \
         (4 families x 5 plans, UniAttn and softmax-only in both handover forms) x 256 steps",
        results.len()
    );
}

/// On a GPU (skipped elsewhere): through CUDA graphs, steps queued ahead (their ids and
/// positions handed over on the device, their picks copied to pinned memory behind them) give
/// every request the events of steps taken one at a time, f32.
#[test]
fn cuda_graph_steps_queued_ahead_give_the_same_events() {
    let Some(device) = graph_device() else { return };
    let engine = || {
        let m = model(Family::Llama, Some(ReuseKind::Uniattn), 8);
        let w = crate::weights::WeightMap {
            source: "tiny".into(),
            tensors: m.named_tensors().into_iter().collect(),
        };
        let m =
            Transformer::from_weights(w, m.stem.cfg.clone(), m.stem.plan.clone(), Kind::Float, device, false);
        let opts = EngineOptions { max_batch: 3, max_len: 64, prefill_chunk: 5 };
        let engine = Engine::new(m.unwrap(), opts).unwrap();
        assert!(engine.cuda_graphs().is_some(), "decoding through CUDA graphs");
        engine
    };
    assert_same_events(queued_ahead_scenario(engine(), true), queued_ahead_scenario(engine(), false));
}

/// On a GPU (skipped elsewhere): with the decode attention kernel on (32-wide heads, so that
/// its rows are 128 bytes in f32 and it applies), decoding through CUDA graphs equals
/// libtorch's eager composition for every variant: dense and CLA layers run its plain form,
/// UniAttn and softmax-only leads its lead form and their reuse layers the reuse form. One
/// sequence, then three, over 300 keys (two key buckets); tokens equal, logits within 1e-4.
#[test]
fn cuda_graph_decode_attention_kernel_equals_eager() {
    let Some(device) = graph_device() else { return };
    let cfg = ModelConfig { head_dim: 32, ..crate::testing::tiny_config(Family::Llama) };
    let on_gpu = |kind: Option<ReuseKind>| {
        let plan = match kind {
            None => SuperBlockPlan::dense(4),
            Some(k) => SuperBlockPlan::from_blocks(vec![(1, 4)], 4).unwrap().with_reuse(k),
        };
        crate::testing::tiny_model_on(&cfg, plan, Kind::Float, 5, device)
    };
    let opts = EngineOptions { max_batch: 4, max_len: 400, prefill_chunk: 64 };
    for kind in variants() {
        let mut eager = Engine::new(on_gpu(kind), opts).unwrap();
        eager.use_cuda_graphs(false).unwrap();
        let mut graphed = Engine::new(on_gpu(kind), opts).unwrap();
        graphed.use_cuda_graphs(true).unwrap();
        for prompts in [vec![seq(7, 200)], vec![seq(8, 150), seq(9, 9), seq(10, 230)]] {
            let mut next = Vec::new();
            for (slot, p) in prompts.iter().enumerate() {
                eager.reset(slot);
                graphed.reset(slot);
                let a = without(|| eager.prefill(slot, p, false)).unwrap();
                let _ = graphed.prefill(slot, p, false).unwrap();
                next.push(a.argmax(-1, false).int64_value(&[]) as u32);
            }
            let mut worst = 0.0f64;
            for step in 0..100 {
                let a = without(|| eager.decode(&next)).unwrap();
                let b = with_decode_attention(16, || graphed.decode(&next)).unwrap();
                worst = worst.max(max_diff(&a, &b));
                let picks: Vec<i64> = Vec::try_from(a.argmax(-1, false).to_device(tch::Device::Cpu)).unwrap();
                let other: Vec<i64> = Vec::try_from(b.argmax(-1, false).to_device(tch::Device::Cpu)).unwrap();
                assert_eq!(picks, other, "{kind:?}, {} sequences: step {step}", prompts.len());
                next = picks.into_iter().map(|t| t as u32).collect();
            }
            assert!(worst <= 1e-4, "{kind:?}, {} sequences: logits differ by {worst:.3e}", prompts.len());
            eprintln!("{kind:?}, {} sequences: max |logit diff| {worst:.3e}", prompts.len());
        }
    }
}

/// On a GPU (skipped elsewhere): the same in bf16, where the fused kernels round differently
/// from libtorch's (one rounding step, not bit for bit) and greedy decoding may part at a near
/// tie: reports, per family and plan, the first step whose greedy tokens differ and the largest
/// logit difference, and checks that the logits stay within bf16's reach of each other (5% of
/// the largest logit).
#[test]
fn cuda_graph_decode_in_bf16_report() {
    let Some(results) = graphs_against_eager(Kind::BFloat16) else { return };
    eprintln!("bf16, CUDA graphs + fused kernels vs eager libtorch kernels, 256 greedy steps:");
    eprintln!("| case | first step whose greedy tokens differ | max |logit diff| | max |logit| |");
    for r in &results {
        let first = r.first_divergence.map_or("none".to_string(), |s| s.to_string());
        eprintln!("| {} | {first} | {:.3e} | {:.2} |", r.case, r.max_logit_diff, r.max_logit);
        assert!(r.max_logit_diff.is_finite() && r.max_logit.is_finite(), "{}: not finite", r.case);
        assert!(r.max_logit_diff <= 0.05 * r.max_logit, "{}: logits differ by {}", r.case, r.max_logit_diff);
    }
}

/// A sequence that ends with the end-of-sequence token reports that token (empty text, its
/// log-prob, counted), as vLLM does: lm-evaluation-harness drops a completion's last token.
#[test]
fn the_end_of_sequence_token_is_reported() {
    let reference = model(Family::Llama, None, 4);
    let engine = Engine::new(
        model(Family::Llama, None, 4),
        EngineOptions { max_batch: 1, max_len: 32, prefill_chunk: 8 },
    )
    .unwrap();
    let prompt = seq(5, 6);
    let first = full_logits(&reference, &prompt).get(-1).argmax(-1, false).int64_value(&[]) as u32;
    let mut tok = crate::testing::tiny_tokenizer();
    tok.eos_ids = vec![first];
    let mut sched = Scheduler::new(engine, std::sync::Arc::new(tok));
    let params = SamplingParams { max_new_tokens: 8, ..Default::default() };
    sched.submit(Request { prompt, params, logprobs: Some(0), ..Default::default() }).unwrap();
    let mut events = Vec::new();
    while sched.has_work() {
        events.extend(sched.step());
    }
    match events.as_slice() {
        [Event::Token { token, text, logprob: Some(lp), .. }, Event::Finished { completion_tokens: 1, reason: FinishReason::Stop, text: all, .. }] =>
        {
            assert_eq!((*token, text.as_str(), all.as_str()), (first, "", ""));
            assert!(lp.logprob <= 0.0 && lp.logprob.is_finite());
        }
        other => panic!("expected the EOS token, then the end: {other:?}"),
    }
}
