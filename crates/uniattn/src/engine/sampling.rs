//! Choosing the next token. The filters run in transformers' order (repetition penalty,
//! temperature, top-k, top-p, min-p); the draw uses the request's own generator, so a seeded
//! request gives the same text whatever else is in the batch.
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    /// 0 means off.
    pub top_k: usize,
    pub top_p: f64,
    /// Drop tokens below `min_p` times the most likely token's probability; 0 means off.
    pub min_p: f64,
    /// Divides positive logits (multiplies negative ones) of tokens already seen; 1 means off.
    pub repetition_penalty: f64,
    pub seed: u64,
    pub max_new_tokens: usize,
    /// Generation ends before the first occurrence of any of these; it is not returned.
    pub stop: Vec<String>,
    /// Keep going past the model's end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
            max_new_tokens: 128,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Rejects values no sampler can honour, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, want: &str, got: String| {
            Err(Error::invalid(format!("{field}: expected {want}, got {got}")))
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", "a finite number >= 0", self.temperature.to_string());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "a number in (0, 1]", self.top_p.to_string());
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return bad("min_p", "a number in [0, 1)", self.min_p.to_string());
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty", "a finite number > 0", self.repetition_penalty.to_string());
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop", "non-empty strings", "an empty string".into());
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 && self.repetition_penalty == 1.0
    }
}

/// One request's sampler: its parameters and its random generator.
#[derive(Debug, Clone)]
pub struct Sampler {
    pub params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = SplitMix64(params.seed);
        Sampler { params, rng }
    }

    /// The filtered logits `[vocab]` (f32): `-inf` for every token the filters removed.
    pub fn filtered_logits(&self, logits: &Tensor, history: &[u32]) -> Tensor {
        let p = &self.params;
        let mut l = logits.to_kind(Kind::Float);
        if p.repetition_penalty != 1.0 && !history.is_empty() {
            let mut seen: Vec<i64> = history.iter().map(|&t| t as i64).collect();
            seen.sort_unstable();
            seen.dedup();
            let idx = Tensor::from_slice(&seen).to_device(l.device());
            let vals = l.index_select(0, &idx);
            // Clamped to f32's range: a tiny penalty must not turn logits into infinities.
            let penalised = (&vals * p.repetition_penalty)
                .where_self(&vals.lt(0.0), &(&vals / p.repetition_penalty))
                .clamp(f32::MIN as f64, f32::MAX as f64);
            l = l.index_copy(0, &idx, &penalised);
        }
        if p.temperature == 0.0 {
            return l;
        }
        // Shifted so the largest logit is 0 before scaling: a tiny temperature then sends the
        // others to -inf (greedy in the limit) instead of overflowing into NaN probabilities.
        // (The divisor stays a normal f32: 1e-300 would round to 0 and give 0/0.)
        l = (&l - l.max()) / p.temperature.max(1e-30);
        let vocab = l.size()[0];
        if p.top_k > 0 && (p.top_k as i64) < vocab {
            let (vals, _) = l.topk(p.top_k as i64, -1, true, true);
            l = l.masked_fill(&l.lt_tensor(&vals.get(p.top_k as i64 - 1)), f64::NEG_INFINITY);
        }
        if p.top_p < 1.0 {
            let (sorted, idx) = l.sort(-1, true);
            let probs = sorted.softmax(-1, Kind::Float);
            // Drop a token when the mass before it already reaches top_p (keeps at least one).
            let drop_sorted = (probs.cumsum(-1, Kind::Float) - &probs).ge(p.top_p);
            let drop = drop_sorted.scatter(-1, &idx, &drop_sorted);
            l = l.masked_fill(&drop, f64::NEG_INFINITY);
        }
        if p.min_p > 0.0 {
            let probs = l.softmax(-1, Kind::Float);
            l = l.masked_fill(&probs.lt_tensor(&(probs.max() * p.min_p)), f64::NEG_INFINITY);
        }
        l
    }

    /// The next token for one sequence; `history` is its prompt and what it generated so far.
    pub fn pick(&mut self, logits: &Tensor, history: &[u32]) -> u32 {
        let l = self.filtered_logits(logits, history);
        if self.params.temperature == 0.0 {
            return l.argmax(-1, false).int64_value(&[]) as u32;
        }
        let probs = Vec::<f32>::try_from(l.softmax(-1, Kind::Float).to_device(Device::Cpu))
            .expect("f32 probabilities");
        let mut u = self.rng.next_f64();
        let mut last = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                last = i;
                u -= p as f64;
                if u < 0.0 {
                    return i as u32;
                }
            }
        }
        last as u32
    }
}

/// Next tokens for a batch (`logits` `[n, vocab]`, one row per sampler and its history): one
/// argmax for all greedy rows, the filters row by row for the others.
pub fn pick_batch(rows: &mut [(&mut Sampler, &[u32])], logits: &Tensor) -> Vec<u32> {
    let greedy: Vec<i64> =
        Vec::<i64>::try_from(logits.argmax(-1, false).to_device(Device::Cpu)).expect("int64 argmax");
    rows.iter_mut()
        .enumerate()
        .map(
            |(i, (s, history))| {
                if s.params.is_greedy() {
                    greedy[i] as u32
                } else {
                    s.pick(&logits.get(i as i64), history)
                }
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Tensor {
        Tensor::from_slice(&[2.0f32, 1.0, 0.5, -1.0, -3.0])
    }

    fn kept(p: SamplingParams, history: &[u32]) -> Vec<bool> {
        let l = Sampler::new(p).filtered_logits(&logits(), history);
        Vec::<f32>::try_from(l).unwrap().iter().map(|v| v.is_finite()).collect()
    }

    #[test]
    fn filters_keep_what_transformers_keeps() {
        let t = SamplingParams { temperature: 1.0, ..Default::default() };
        assert_eq!(kept(SamplingParams { top_k: 2, ..t.clone() }, &[]), [true, true, false, false, false]);
        // softmax = [.609, .224, .136, .030, .004]: top_p .7 needs the first two.
        assert_eq!(kept(SamplingParams { top_p: 0.7, ..t.clone() }, &[]), [true, true, false, false, false]);
        // min_p .2 of .609 = .122: three tokens stay.
        assert_eq!(kept(SamplingParams { min_p: 0.2, ..t.clone() }, &[]), [true, true, true, false, false]);
    }

    #[test]
    fn extreme_temperature_and_penalty_stay_finite() {
        let logits = Tensor::from_slice(&[1.0f32, 3.0, 2.0, -1.0]);
        let mut s = Sampler::new(SamplingParams { temperature: 1e-300, seed: 3, ..Default::default() });
        for _ in 0..5 {
            assert_eq!(s.pick(&logits, &[]), 1, "a vanishing temperature is greedy");
        }
        let p = SamplingParams { temperature: 1.0, repetition_penalty: 1e-300, ..Default::default() };
        let l = Sampler::new(p.clone()).filtered_logits(&logits, &[0, 3]);
        let probs = Vec::<f32>::try_from(l.softmax(-1, Kind::Float)).unwrap();
        assert!(probs.iter().all(|p| p.is_finite()), "{probs:?}");
        assert_eq!(Sampler::new(p).pick(&logits, &[0, 3]), 0, "the boosted seen token wins");
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let p = SamplingParams { repetition_penalty: 2.0, ..Default::default() };
        let l = Sampler::new(p).filtered_logits(&logits(), &[0, 3, 3]);
        assert_eq!(Vec::<f32>::try_from(l).unwrap(), [1.0, 1.0, 0.5, -2.0, -3.0]);
    }

    #[test]
    fn seeded_draws_repeat_and_follow_the_distribution() {
        let p = SamplingParams { temperature: 1.0, seed: 7, ..Default::default() };
        let draw = |n| {
            let mut s = Sampler::new(p.clone());
            (0..n).map(|_| s.pick(&logits(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(50), draw(50));
        let counts = draw(4000).iter().fold([0usize; 5], |mut c, &t| {
            c[t as usize] += 1;
            c
        });
        // Expected share of token 0: 0.609; 4000 draws have a standard error of ~0.008.
        let share = counts[0] as f64 / 4000.0;
        assert!((share - 0.609).abs() < 0.04, "{counts:?}");
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let e = SamplingParams { top_p: 0.0, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("top_p"), "{e}");
        let e = SamplingParams { temperature: -1.0, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("temperature"), "{e}");
        assert!(SamplingParams::default().validate().is_ok());
    }
}
