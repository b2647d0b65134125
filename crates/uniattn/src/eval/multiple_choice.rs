//! Multiple-choice accuracy from log-likelihoods, with lm-evaluation-harness's metrics:
//! `acc` (highest summed log-probability), `acc_norm` (divided by the continuation's length in
//! characters), plus OLMES's `acc_per_token` and the gold continuation's bits per byte.
use super::loglikelihood::{score, LlResult};
use super::mc_task::McTask;
use crate::distributed::zero::Collective;
use crate::error::Result;
use crate::model::Transformer;
use crate::tokenizer::Tokenizer;
use std::time::Instant;
use tch::{Device, Tensor};

#[derive(Debug, Clone, serde::Serialize)]
pub struct ItemScore {
    pub doc_id: u64,
    pub gold: usize,
    pub results: Vec<LlResult>,
    pub pred: usize,
    pub pred_norm: usize,
}

/// A metric's mean and its standard error (sample standard deviation over sqrt(n)).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Metric {
    pub value: f64,
    pub stderr: f64,
}

impl Metric {
    pub fn of(xs: &[f64]) -> Self {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n.max(1.0);
        let var = if n > 1.0 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        Metric { value: mean, stderr: (var / n.max(1.0)).sqrt() }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskReport {
    pub task: String,
    pub items: usize,
    pub requests: usize,
    pub acc: Metric,
    pub acc_norm: Metric,
    pub acc_per_token: Metric,
    pub gold_bits_per_byte: f64,
    pub seconds: f64,
}

/// Index of the largest value; the first one on ties (numpy's argmax).
fn argmax(xs: impl Iterator<Item = f64>) -> usize {
    xs.enumerate().fold((0, f64::NEG_INFINITY), |best, (i, x)| if x > best.1 { (i, x) } else { best }).0
}

/// How requests are scored: longest context + continuation (longer contexts lose their oldest
/// tokens) and padded tokens per forward batch.
#[derive(Debug, Clone, Copy)]
pub struct ScoringOptions {
    pub max_len: usize,
    pub batch_tokens: usize,
}

/// Scores the first `limit` items of `task`. Over a `group` of ranks (one GPU each) the
/// requests go round the ranks and the results are summed over them, so every rank returns
/// the one-process scores; `progress` counts this rank's requests.
pub fn evaluate(
    model: &Transformer,
    tok: &Tokenizer,
    task: &McTask,
    limit: Option<usize>,
    opts: ScoringOptions,
    group: Option<&dyn Collective>,
    mut progress: impl FnMut(usize, usize),
) -> Result<(TaskReport, Vec<ItemScore>)> {
    let start = Instant::now();
    let items = &task.items[..limit.unwrap_or(usize::MAX).min(task.items.len())];
    let requests: Vec<_> = items.iter().flat_map(|i| i.requests.iter().cloned()).collect();
    let (rank, ranks) = group.map_or((0, 1), |g| (g.rank(), g.size()));
    let mine: Vec<_> = requests.iter().skip(rank).step_by(ranks).cloned().collect();
    let scored =
        score(model, tok, &mine, opts.max_len, opts.batch_tokens, |done| progress(done, mine.len()))?;
    let results = match group {
        None => scored,
        Some(g) => gather(g, &scored, requests.len(), model.stem.device)?,
    };
    let mut at = 0;
    let mut scores = Vec::with_capacity(items.len());
    for item in items {
        let r = results[at..at + item.requests.len()].to_vec();
        at += item.requests.len();
        let chars = |k: usize| item.requests[k].continuation.chars().count().max(1) as f64;
        scores.push(ItemScore {
            doc_id: item.doc_id,
            gold: item.gold,
            pred: argmax(r.iter().map(|x| x.logprob)),
            pred_norm: argmax(r.iter().enumerate().map(|(k, x)| x.logprob / chars(k))),
            results: r,
        });
    }
    let hit = |f: &dyn Fn(&ItemScore) -> usize| -> Vec<f64> {
        scores.iter().map(|s| f64::from(u8::from(f(s) == s.gold))).collect()
    };
    let per_token = |s: &ItemScore| argmax(s.results.iter().map(|x| x.logprob / x.tokens as f64));
    let (gold_nll, gold_bytes) = items.iter().zip(&scores).fold((0.0, 0usize), |(n, b), (item, s)| {
        (n - s.results[s.gold].logprob, b + item.requests[s.gold].continuation.len())
    });
    let report = TaskReport {
        task: task.name.clone(),
        items: scores.len(),
        requests: requests.len(),
        acc: Metric::of(&hit(&|s| s.pred)),
        acc_norm: Metric::of(&hit(&|s| s.pred_norm)),
        acc_per_token: Metric::of(&hit(&per_token)),
        gold_bits_per_byte: gold_nll / std::f64::consts::LN_2 / gold_bytes.max(1) as f64,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((report, scores))
}

/// Every rank's `mine` (requests `rank`, `rank + ranks`, ... of `total`) in request order, on
/// every rank: a `[total, 3]` f64 table (log-probability, greedy, tokens) summed over the ranks.
fn gather(group: &dyn Collective, mine: &[LlResult], total: usize, device: Device) -> Result<Vec<LlResult>> {
    let (rank, ranks) = (group.rank(), group.size());
    let mut table = vec![0f64; total * 3];
    for (k, r) in mine.iter().enumerate() {
        let at = (rank + k * ranks) * 3;
        table[at..at + 3].copy_from_slice(&[r.logprob, f64::from(u8::from(r.is_greedy)), r.tokens as f64]);
    }
    let t = Tensor::from_slice(&table).to_device(device);
    group.all_reduce_sum(&t)?;
    let table = Vec::<f64>::try_from(t.to_device(Device::Cpu)).expect("an f64 table");
    Ok(table
        .chunks(3)
        .map(|r| LlResult { logprob: r[0], is_greedy: r[1] > 0.5, tokens: r[2] as usize })
        .collect())
}

/// Mean cross-entropy of the gold choice over each question's choices (softmax of their summed
/// log-likelihoods): the smooth counterpart of `acc`, which a plan can be chosen by.
pub fn gold_cross_entropy(scores: &[ItemScore]) -> f64 {
    let per_item = scores.iter().map(|s| {
        let max = s.results.iter().map(|r| r.logprob).fold(f64::NEG_INFINITY, f64::max);
        let lse = max + s.results.iter().map(|r| (r.logprob - max).exp()).sum::<f64>().ln();
        lse - s.results[s.gold].logprob
    });
    per_item.sum::<f64>() / scores.len().max(1) as f64
}

/// The reports as a Markdown table.
pub fn table(reports: &[TaskReport]) -> String {
    let mut out = String::from(
        "| task | items | acc | ± | acc_norm | ± | acc_per_token | gold bpb | seconds |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        out += &format!(
            "| {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.1} |\n",
            r.task,
            r.items,
            r.acc.value,
            r.acc.stderr,
            r.acc_norm.value,
            r.acc_norm.stderr,
            r.acc_per_token.value,
            r.gold_bits_per_byte,
            r.seconds
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_the_sample_standard_error() {
        let m = Metric::of(&[1.0, 0.0, 1.0, 1.0]);
        assert_eq!(m.value, 0.75);
        // Squared deviations sum to 0.75; sample variance 0.25; over n = 4: 0.0625.
        assert!((m.stderr - 0.25).abs() < 1e-12);
        assert_eq!(argmax([1.0, 3.0, 3.0].into_iter()), 1);
    }

    /// Over 2 and 3 ranks (threads), each scoring its share of the requests, every rank
    /// returns the one process's scores and report.
    #[test]
    fn ranks_share_the_requests_and_score_what_one_process_scores() {
        use super::super::loglikelihood::LlRequest;
        use super::super::mc_task::McItem;
        use crate::distributed::zero::threads::ThreadGroup;
        use crate::testing::{tiny_config, tiny_model, tiny_tokenizer};
        let words = |seed: usize, n: usize| -> String {
            (0..n).map(|k| format!("t{}", (seed * 7 + k * 3) % 32)).collect::<Vec<_>>().join(" ")
        };
        let items: Vec<McItem> = (0..7)
            .map(|q| McItem {
                doc_id: q as u64,
                native_id: None,
                gold: q % 3,
                requests: (0..3)
                    .map(|c| LlRequest {
                        context: words(q, 3 + q % 4),
                        continuation: format!(" {}", words(q + c, 1 + c)),
                    })
                    .collect(),
            })
            .collect();
        let task = McTask { name: "t".into(), source: "t".into(), items, skipped_unconditional: 0 };
        let cfg = tiny_config(crate::config::Family::Llama);
        let opts = ScoringOptions { max_len: 64, batch_tokens: 40 };
        let model =
            tiny_model(&cfg, crate::plan::SuperBlockPlan::dense(cfg.num_layers), tch::Kind::Double, 9);
        let (want, want_items) =
            evaluate(&model, &tiny_tokenizer(), &task, None, opts, None, |_, _| {}).unwrap();
        for ranks in [2, 3] {
            let handles: Vec<_> = ThreadGroup::new(ranks)
                .into_iter()
                .map(|group| {
                    let (task, cfg) = (task.clone(), cfg.clone());
                    std::thread::spawn(move || {
                        let model = tiny_model(
                            &cfg,
                            crate::plan::SuperBlockPlan::dense(cfg.num_layers),
                            tch::Kind::Double,
                            9,
                        );
                        evaluate(&model, &tiny_tokenizer(), &task, None, opts, Some(&group), |_, _| {})
                            .unwrap()
                    })
                })
                .collect();
            for (rank, h) in handles.into_iter().enumerate() {
                let (got, items) = h.join().unwrap();
                assert_eq!(
                    (got.items, got.requests, got.acc.value),
                    (want.items, want.requests, want.acc.value)
                );
                for (a, b) in items.iter().zip(&want_items) {
                    assert_eq!((a.pred, a.pred_norm), (b.pred, b.pred_norm), "{ranks} ranks, rank {rank}");
                    for (x, y) in a.results.iter().zip(&b.results) {
                        assert_eq!((x.is_greedy, x.tokens), (y.is_greedy, y.tokens));
                        assert!(
                            (x.logprob - y.logprob).abs() < 1e-9,
                            "{ranks} ranks, rank {rank}: {x:?} vs {y:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gold_cross_entropy_is_the_softmax_loss_over_choices() {
        let item = |lps: &[f64], gold: usize| ItemScore {
            doc_id: 0,
            gold,
            results: lps.iter().map(|&logprob| LlResult { logprob, is_greedy: false, tokens: 1 }).collect(),
            pred: 0,
            pred_norm: 0,
        };
        // Equal choices: ln 4. Gold far ahead (large magnitudes, no overflow): ~0.
        let a = item(&[-700.0, -700.0, -700.0, -700.0], 2);
        let b = item(&[-1.0, -1001.0], 0);
        assert!((gold_cross_entropy(&[a]) - 4f64.ln()).abs() < 1e-12);
        let c = item(&[-2.0, -1.0], 0);
        // -log(e^-2 / (e^-2 + e^-1)) = ln(1 + e)
        let want = (1.0 + 1f64.exp()).ln();
        assert!((gold_cross_entropy(&[b, c]) - want / 2.0).abs() < 1e-12);
    }
}
