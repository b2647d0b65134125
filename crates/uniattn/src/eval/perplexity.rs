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

/// Perplexity over several independent documents (each scored from its own first token),
/// pooled over every predicted token. `bytes` is the UTF-8 length of the predicted tokens'
/// text, for bits per byte.
pub fn perplexity_docs(
    model: &Transformer,
    docs: &[Vec<u32>],
    bytes: usize,
    window: usize,
    stride: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<PerplexityReport> {
    let start = Instant::now();
    let total: usize = docs.iter().map(Vec::len).sum();
    let (mut nll, mut predicted, mut done) = (0.0, 0usize, 0usize);
    for ids in docs {
        let (d_nll, d_pred) = doc_nll(model, ids, window, stride, |k| progress(done + k, total));
        nll += d_nll;
        predicted += d_pred;
        done += ids.len();
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

/// Summed NLL and number of predicted tokens of one document.
fn doc_nll(
    model: &Transformer,
    ids: &[u32],
    window: usize,
    stride: usize,
    mut progress: impl FnMut(usize),
) -> (f64, usize) {
    let n = ids.len();
    let mut nll = 0.0;
    let mut predicted = 0usize;
    let mut scored_until = 1; // ids[0] has no prediction
    let mut begin = 0;
    while scored_until < n {
        let end = (begin + window).min(n);
        let lp = token_logprobs(model, &ids[begin..end]);
        // lp[j] scores ids[begin + 1 + j]
        for (j, v) in lp.iter().enumerate() {
            if begin + 1 + j >= scored_until {
                nll -= v;
                predicted += 1;
            }
        }
        scored_until = end;
        progress(end);
        if end == n {
            break;
        }
        begin += stride.max(1);
    }
    (nll, predicted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Family;
    use crate::plan::SuperBlockPlan;
    use crate::testing::{tiny_config, tiny_model};

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
