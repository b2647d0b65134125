//! Multiple-choice accuracy from log-likelihoods, with lm-evaluation-harness's metrics:
//! `acc` (highest summed log-probability), `acc_norm` (divided by the continuation's length in
//! characters), plus OLMES's `acc_per_token` and the gold continuation's bits per byte.
use super::loglikelihood::{score, LlResult};
use super::mc_task::McTask;
use crate::error::Result;
use crate::model::Transformer;
use crate::tokenizer::Tokenizer;
use std::time::Instant;

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

/// Scores the first `limit` items of `task`.
pub fn evaluate(
    model: &Transformer,
    tok: &Tokenizer,
    task: &McTask,
    limit: Option<usize>,
    opts: ScoringOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<(TaskReport, Vec<ItemScore>)> {
    let start = Instant::now();
    let items = &task.items[..limit.unwrap_or(usize::MAX).min(task.items.len())];
    let requests: Vec<_> = items.iter().flat_map(|i| i.requests.iter().cloned()).collect();
    let results =
        score(model, tok, &requests, opts.max_len, opts.batch_tokens, |done| progress(done, requests.len()))?;
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
