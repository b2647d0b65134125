//! Perplexity with a sliding window, as transformers' perplexity guide computes it: windows of
//! `window` tokens advance by `stride`; each token is scored once, with as much left context as
//! the window allows.
use crate::data::{self, Record};
use crate::error::{Error, Result};
use crate::model::Transformer;
use crate::tokenizer::Tokenizer;
use std::ops::Range;
use std::path::Path;
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, serde::Serialize)]
pub struct PerplexityReport {
    pub tokens: usize,
    pub predicted: usize,
    pub mean_nll: f64,
    pub perplexity: f64,
    pub tokens_per_second: f64,
    pub seconds: f64,
    /// UTF-8 bytes of the predicted tokens' text and the bits per byte over them.
    pub bytes: usize,
    pub bits_per_byte: f64,
}

/// The documents to score, tokenized: a plain text file is one document; JSON/JSONL rows (or
/// `rows` of them) are one each, instruction rows with their Alpaca prompt and conversations
/// through the model's chat template, so held-out chat data is scored as the model reads it.
pub fn documents(tok: &Tokenizer, path: &Path, rows: Option<&Range<usize>>) -> Result<Vec<Vec<u32>>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext != "json" && ext != "jsonl" {
        if rows.is_some() {
            return Err(Error::invalid(format!(
                "--rows applies to JSON/JSONL files; {} is plain text",
                path.display()
            )));
        }
        let body = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        return Ok(vec![tok.encode(&body, true)?]);
    }
    let (records, _) = data::read_records(path, false)?;
    let records = match rows {
        Some(r) => data::select(&records, r, path)?,
        None => records,
    };
    records
        .iter()
        .map(|r| match r {
            Record::Instruction(e) => tok.encode(&e.text(), true),
            Record::Chat(m) => tok.encode(&tok.apply_chat_template(m, false)?, true),
        })
        .collect()
}

/// Per-token log-probabilities of `ids[1..]` given the preceding tokens, in one window.
pub fn token_logprobs(model: &Transformer, ids: &[u32]) -> Vec<f64> {
    let _guard = tch::no_grad_guard();
    let input: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let t = Tensor::from_slice(&input).to_device(model.stem.device).unsqueeze(0);
    next_token_logprobs(&model.forward(&t), &t)
}

/// Log-probabilities that `logits` (`[1, t, vocab]`) give each next token of `ids` (`[1, t]`).
pub fn next_token_logprobs(logits: &Tensor, ids: &Tensor) -> Vec<f64> {
    let n = ids.size()[1];
    let lp = logits.squeeze_dim(0).narrow(0, 0, n - 1).log_softmax(-1, Kind::Float);
    let target = ids.squeeze_dim(0).narrow(0, 1, n - 1).unsqueeze(-1);
    let picked =
        lp.gather(-1, &target, false).squeeze_dim(-1).to_kind(Kind::Double).to_device(tch::Device::Cpu);
    Vec::<f64>::try_from(&picked).expect("f64 tensor")
}

/// UTF-8 bytes of the tokens that get a prediction (all but each document's first).
pub fn predicted_bytes(tok: &Tokenizer, docs: &[Vec<u32>]) -> Result<usize> {
    docs.iter().try_fold(0, |acc, d| {
        let all = tok.decode(d)?.len();
        let first = tok.decode(&d[..d.len().min(1)])?.len();
        Ok(acc + all.saturating_sub(first))
    })
}

pub fn perplexity(
    model: &Transformer,
    ids: &[u32],
    bytes: usize,
    window: usize,
    stride: usize,
    progress: impl FnMut(usize, usize),
) -> Result<PerplexityReport> {
    perplexity_docs(model, &[ids.to_vec()], bytes, window, stride, progress)
}

/// Tokens one forward pass may hold (padding included), and at least one window: the windows
/// of every document are scored in batches, not one forward a document (one 200-token row at a
/// time ran at ~940 tokens/s on an H200, launch-bound). 4,096 tokens of a 152k vocabulary are
/// 2.5 GB of f32 logits, so the head runs row by row.
const BATCH_TOKENS: usize = 4096;

/// One window of a document: `ids[begin..end]` in, tokens from `scored_from` on scored (those
/// before it were scored by the window before, with less context).
#[derive(Clone, Copy)]
struct Window {
    doc: usize,
    begin: usize,
    end: usize,
    scored_from: usize,
}

/// The windows that score every token of a document of `n` tokens once: `window` tokens each,
/// `stride` apart, the first token unscored (nothing predicts it).
fn windows(doc: usize, n: usize, window: usize, stride: usize) -> Vec<Window> {
    let mut out = Vec::new();
    let (mut begin, mut scored_until) = (0, 1);
    while scored_until < n {
        let end = (begin + window).min(n);
        out.push(Window { doc, begin, end, scored_from: scored_until });
        scored_until = end;
        begin += stride.max(1);
    }
    out
}

/// Perplexity over several independent documents (each scored from its own first token),
/// pooled over every predicted token. `bytes` is the UTF-8 length of the predicted tokens'
/// text, for bits per byte. `progress` sees the predicted tokens scored so far and their total.
pub fn perplexity_docs(
    model: &Transformer,
    docs: &[Vec<u32>],
    bytes: usize,
    window: usize,
    stride: usize,
    progress: impl FnMut(usize, usize),
) -> Result<PerplexityReport> {
    perplexity_in_batches(model, docs, bytes, window, stride, BATCH_TOKENS, progress)
}

/// [`perplexity_docs`] with forward passes of up to `batch_tokens` tokens (at least a window).
fn perplexity_in_batches(
    model: &Transformer,
    docs: &[Vec<u32>],
    bytes: usize,
    window: usize,
    stride: usize,
    batch_tokens: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<PerplexityReport> {
    let start = Instant::now();
    let total: usize = docs.iter().map(Vec::len).sum();
    let mut all: Vec<Window> =
        docs.iter().enumerate().flat_map(|(d, ids)| windows(d, ids.len(), window, stride)).collect();
    // Longest first, so that a batch's rows are of about one length and padding is small.
    all.sort_by_key(|w| std::cmp::Reverse(w.end - w.begin));
    let to_predict: usize = all.iter().map(|w| w.end - w.scored_from).sum();
    let budget = batch_tokens.max(window);
    let (mut nll, mut predicted) = (0.0, 0usize);
    let mut rest = &all[..];
    while !rest.is_empty() {
        let len = rest[0].end - rest[0].begin;
        let rows = (budget / len).clamp(1, rest.len());
        let (batch, later) = rest.split_at(rows);
        for (w, lp) in batch.iter().zip(batch_logprobs(model, docs, batch)) {
            // lp[j] scores ids[begin + 1 + j]
            nll -= lp[w.scored_from - w.begin - 1..].iter().sum::<f64>();
            predicted += w.end - w.scored_from;
        }
        progress(predicted, to_predict);
        rest = later;
    }
    let seconds = start.elapsed().as_secs_f64();
    let mean_nll = nll / predicted.max(1) as f64;
    if !mean_nll.is_finite() {
        return Err(Error::invalid(format!(
            "the mean negative log-likelihood is {mean_nll} (not finite): the model's weights are corrupt or \
             its activations overflow this dtype (try --dtype f32)"
        )));
    }
    Ok(PerplexityReport {
        tokens: total,
        predicted,
        mean_nll,
        perplexity: mean_nll.exp(),
        tokens_per_second: total as f64 / seconds.max(1e-9),
        seconds,
        bytes,
        bits_per_byte: nll / std::f64::consts::LN_2 / bytes.max(1) as f64,
    })
}

/// Per-token log-probabilities of each window's `ids[begin + 1..end]`, the windows in one
/// forward pass: right-padded to the longest, which causal attention keeps from reaching any
/// real token (every row starts at position 0).
fn batch_logprobs(model: &Transformer, docs: &[Vec<u32>], batch: &[Window]) -> Vec<Vec<f64>> {
    let _guard = tch::no_grad_guard();
    let longest = batch.iter().map(|w| w.end - w.begin).max().unwrap_or(0);
    let mut input = vec![0i64; batch.len() * longest];
    for (row, w) in input.chunks_mut(longest).zip(batch) {
        for (slot, &id) in row.iter_mut().zip(&docs[w.doc][w.begin..w.end]) {
            *slot = id as i64;
        }
    }
    let ids =
        Tensor::from_slice(&input).to_device(model.stem.device).view([batch.len() as i64, longest as i64]);
    let hidden = model.hidden_states(&ids);
    batch
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let n = (w.end - w.begin) as i64;
            let logits = model.stem.head(&hidden.get(i as i64).narrow(0, 0, n).unsqueeze(0));
            next_token_logprobs(&logits, &ids.get(i as i64).narrow(0, 0, n).unsqueeze(0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Family;
    use crate::plan::SuperBlockPlan;
    use crate::testing::{tiny_config, tiny_model};

    /// Windows scored in padded batches give what scoring each window alone gives (the loop of
    /// transformers' perplexity guide), every token once: documents shorter and longer than a
    /// window, overlapping windows, a one-token document, several batches of mixed lengths, a
    /// dense model and a UniAttn one.
    #[test]
    fn batched_windows_equal_one_window_at_a_time() {
        let doc = |n: usize, s: usize| -> Vec<u32> { (0..n).map(|i| ((i * 7 + s) % 31) as u32).collect() };
        let docs = vec![doc(3, 1), doc(1, 2), doc(23, 3), doc(9, 4), doc(12, 5), doc(2, 6)];
        let (window, stride) = (8, 5);
        for (family, plan) in [
            (Family::Llama, SuperBlockPlan::dense(4)),
            (Family::Qwen2, SuperBlockPlan::from_blocks(vec![(1, 4)], 4).unwrap()),
        ] {
            let model = tiny_model(&tiny_config(family), plan, Kind::Double, 5);
            let (mut nll, mut predicted) = (0.0, 0usize);
            for ids in &docs {
                let (mut begin, mut scored_until) = (0, 1);
                while scored_until < ids.len() {
                    let end = (begin + window).min(ids.len());
                    for (j, v) in token_logprobs(&model, &ids[begin..end]).iter().enumerate() {
                        if begin + 1 + j >= scored_until {
                            nll -= v;
                            predicted += 1;
                        }
                    }
                    scored_until = end;
                    begin += stride;
                }
            }
            assert_eq!(predicted, docs.iter().map(|d| d.len() - 1).sum::<usize>());
            let mut seen = Vec::new();
            let got = perplexity_in_batches(&model, &docs, 0, window, stride, 20, |d, of| seen.push((d, of)))
                .unwrap();
            assert_eq!(got.predicted, predicted, "{family:?}");
            let want = nll / predicted as f64;
            assert!((got.mean_nll - want).abs() < 1e-12, "{family:?}: {} vs {want}", got.mean_nll);
            assert!(seen.len() > 3, "several batches: {seen:?}");
            assert_eq!(seen.last(), Some(&(predicted, predicted)));
        }
    }

    /// Corrupt weights give an error, never "perplexity NaN" with success.
    #[test]
    fn a_nan_perplexity_is_an_error() {
        let cfg = tiny_config(Family::Llama);
        let m = tiny_model(&cfg, SuperBlockPlan::dense(4), Kind::Float, 3);
        let ids: Vec<u32> = (0..12).collect();
        assert!(perplexity(&m, &ids, 0, 12, 12, |_, _| {}).unwrap().perplexity.is_finite());
        tch::no_grad(|| {
            let _ = m.stem.norm.weight.shallow_clone().fill_(f64::NAN);
        });
        let e = perplexity(&m, &ids, 0, 12, 12, |_, _| {}).unwrap_err().to_string();
        assert!(e.contains("not finite"), "{e}");
    }
}
