//! Log-likelihood of a continuation given a context, as lm-evaluation-harness computes it:
//! trailing spaces of the context move to the continuation, the continuation's tokens are those
//! of `tokens(context + continuation)` after the context's own tokens, and the score is the sum
//! of their log-probabilities. Requests sharing a context are scored from one prefill.
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlRequest {
    pub context: String,
    pub continuation: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LlResult {
    pub logprob: f64,
    /// Every continuation token is the model's argmax.
    pub is_greedy: bool,
    pub tokens: usize,
}

/// Token ids of context and continuation, split the way lm-evaluation-harness splits them.
pub fn encode_pair(tok: &Tokenizer, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end_matches(' ');
    let (context, continuation) = if trimmed.len() < context.len() {
        (trimmed.to_string(), format!("{}{continuation}", &context[trimmed.len()..]))
    } else {
        (context.to_string(), continuation.to_string())
    };
    let whole = tok.encode(&format!("{context}{continuation}"), true)?;
    let mut ctx = tok.encode(&context, true)?;
    let cont = whole[ctx.len().min(whole.len())..].to_vec();
    if cont.is_empty() {
        return Err(Error::invalid(format!("continuation {continuation:?} has no tokens of its own")));
    }
    if ctx.is_empty() {
        // An empty context is conditioned on the end-of-text token, as the harness does.
        ctx.push(tok.eos_ids.first().or(tok.bos_id.as_ref()).copied().unwrap_or(0));
    }
    Ok((ctx, cont))
}

/// Scores `continuations` after one shared `context`. Contexts too long for the engine lose
/// their oldest tokens, as the harness's left truncation does.
pub fn score_shared_context(
    engine: &mut Engine,
    context: &[u32],
    continuations: &[Vec<u32>],
) -> Result<Vec<LlResult>> {
    let longest = continuations.iter().map(Vec::len).max().unwrap_or(0);
    let room = engine.cache.max_len().saturating_sub(longest).max(1);
    let context = &context[context.len().saturating_sub(room)..];
    engine.reset(0);
    let first = engine.prefill(0, context, false)?.unsqueeze(0);
    let mut out = Vec::with_capacity(continuations.len());
    for cont in continuations {
        let logits = if cont.len() > 1 {
            let rest = engine.prefill(0, &cont[..cont.len() - 1], true)?;
            engine.truncate(0, context.len());
            Tensor::cat(&[&first, &rest], 0)
        } else {
            first.shallow_clone()
        };
        let logp = logits.log_softmax(-1, logits.kind());
        let target: Vec<i64> = cont.iter().map(|&t| t as i64).collect();
        let target = Tensor::from_slice(&target).to_device(logp.device());
        let picked = logp.gather(-1, &target.unsqueeze(-1), false).sum(Kind::Double);
        let greedy = logp.argmax(-1, false).eq_tensor(&target).all();
        out.push(LlResult {
            logprob: picked.to_device(Device::Cpu).double_value(&[]),
            is_greedy: greedy.int64_value(&[]) != 0,
            tokens: cont.len(),
        });
    }
    engine.reset(0);
    Ok(out)
}

/// Scores requests in order, sharing the prefill among consecutive requests with the same
/// context. `progress` sees how many are done.
pub fn score(
    engine: &mut Engine,
    tok: &Tokenizer,
    requests: &[LlRequest],
    mut progress: impl FnMut(usize),
) -> Result<Vec<LlResult>> {
    let mut out = Vec::with_capacity(requests.len());
    let mut i = 0;
    while i < requests.len() {
        let mut j = i + 1;
        while j < requests.len() && requests[j].context == requests[i].context {
            j += 1;
        }
        let pairs = requests[i..j]
            .iter()
            .map(|r| encode_pair(tok, &r.context, &r.continuation))
            .collect::<Result<Vec<_>>>()?;
        // Boundary merges can give one request a different context split; score those alone.
        let shared = pairs.iter().all(|(c, _)| *c == pairs[0].0);
        if shared {
            let conts: Vec<Vec<u32>> = pairs.iter().map(|(_, c)| c.clone()).collect();
            out.extend(score_shared_context(engine, &pairs[0].0, &conts)?);
        } else {
            for (c, k) in &pairs {
                out.extend(score_shared_context(engine, c, std::slice::from_ref(k))?);
            }
        }
        i = j;
        progress(i);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineOptions;
    use crate::model::transformer::tests::{tiny_config, tiny_model};
    use crate::plan::SuperBlockPlan;

    /// Shared-context scoring equals summing the full forward's log-probabilities of each
    /// context + continuation, including a context cut to fit the engine.
    #[test]
    fn shared_context_scores_equal_full_forward_sums() {
        let cfg = tiny_config(crate::config::Family::Llama);
        let plan = SuperBlockPlan::from_blocks(vec![(1, 4)], 4).unwrap();
        let reference = tiny_model(&cfg, plan.clone(), Kind::Double, 4);
        let opts = EngineOptions { max_batch: 1, max_len: 12, prefill_chunk: 3 };
        let mut engine = Engine::new(tiny_model(&cfg, plan, Kind::Double, 4), opts).unwrap();
        let ctx: Vec<u32> = (0..11).map(|i| (i * 7 + 3) % 31).collect();
        let conts = vec![vec![4u32], vec![9, 2, 30], vec![1, 1]];
        let got = score_shared_context(&mut engine, &ctx, &conts).unwrap();
        for (c, g) in conts.iter().zip(&got) {
            // The engine holds 12 tokens: the context keeps its last 12 - 3 = 9.
            let seq: Vec<i64> = ctx[2..].iter().chain(c).map(|&t| t as i64).collect();
            let lp = reference
                .forward(&Tensor::from_slice(&seq).unsqueeze(0))
                .squeeze_dim(0)
                .log_softmax(-1, Kind::Double);
            let n = seq.len();
            let want: f64 =
                (0..c.len()).map(|k| lp.double_value(&[(n - c.len() + k - 1) as i64, c[k] as i64])).sum();
            assert!((g.logprob - want).abs() < 1e-9, "{c:?}: {} vs {want}", g.logprob);
            assert_eq!(g.tokens, c.len());
        }
    }
}
