//! Text generation with the KV cache: prefill the prompt once, then one token per step.
use crate::model::{KvCache, Transformer};
use tch::{Kind, Tensor};

#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub max_new_tokens: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_p: 1.0, top_k: 0, max_new_tokens: 128, seed: 0 }
    }
}

/// Picks the next token from f32 logits `[vocab]`.
pub fn sample(logits: &Tensor, p: &SamplingParams) -> u32 {
    if p.temperature <= 0.0 {
        return logits.argmax(-1, false).int64_value(&[]) as u32;
    }
    let mut l = logits / p.temperature;
    let vocab = l.size()[0];
    if p.top_k > 0 && (p.top_k as i64) < vocab {
        let (vals, _) = l.topk(p.top_k as i64, -1, true, true);
        let kth = vals.get(p.top_k as i64 - 1);
        l = l.masked_fill(&l.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if p.top_p < 1.0 {
        let (sorted, idx) = l.sort(-1, true);
        let probs = sorted.softmax(-1, Kind::Float);
        let cum = probs.cumsum(-1, Kind::Float);
        // Drop a token when the mass before it already reaches top_p (keeps at least one).
        let drop_sorted = (&cum - &probs).ge(p.top_p);
        let drop = drop_sorted.scatter(-1, &idx, &drop_sorted);
        l = l.masked_fill(&drop, f64::NEG_INFINITY);
    }
    l.softmax(-1, Kind::Float).multinomial(1, false).int64_value(&[0]) as u32
}

pub struct Generation {
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    pub stopped_on_eos: bool,
}

/// Generates up to `max_new_tokens` after `prompt`, stopping at any of `eos`. `on_token` sees
/// each new token as it is produced (for streaming).
pub fn generate(
    model: &Transformer,
    prompt: &[u32],
    params: &SamplingParams,
    eos: &[u32],
    mut on_token: impl FnMut(u32),
) -> Generation {
    let _guard = tch::no_grad_guard();
    tch::manual_seed(params.seed as i64);
    let mut cache = KvCache::new(model.cfg.num_layers);
    let to_t = |ids: &[u32]| {
        let v: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        Tensor::from_slice(&v).to_device(model.device).unsqueeze(0)
    };
    let t0 = std::time::Instant::now();
    let logits = model.forward(&to_t(prompt), Some(&mut cache));
    let mut next = sample(&logits.get(0).get(-1), params);
    let prefill_seconds = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let mut tokens = Vec::new();
    let mut stopped_on_eos = false;
    while tokens.len() < params.max_new_tokens {
        if eos.contains(&next) {
            stopped_on_eos = true;
            break;
        }
        tokens.push(next);
        on_token(next);
        if tokens.len() == params.max_new_tokens {
            break;
        }
        let logits = model.forward(&to_t(&[next]), Some(&mut cache));
        next = sample(&logits.get(0).get(-1), params);
    }
    Generation {
        tokens,
        prompt_tokens: prompt.len(),
        prefill_seconds,
        decode_seconds: t1.elapsed().as_secs_f64(),
        stopped_on_eos,
    }
}
