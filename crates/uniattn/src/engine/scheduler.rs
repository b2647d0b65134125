//! Continuous batching: requests wait in a queue, join the running batch as soon as a cache
//! slot is free, then advance one token per decode step together with everyone else. Prompts
//! are prefilled under a per-step budget of `prefill_chunk` tokens, so a long prompt is spread
//! over several steps instead of stalling the batch. Finished sequences leave at once and the
//! last slot moves into the gap, so the live slots stay `0..n` and a step reads only what it
//! needs; the prompt being prefilled sits in slot `n`.
use super::sampling::{pick_batch, Sampler, SamplingParams};
use super::stop::TextStream;
use super::{Engine, Picks};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use std::collections::VecDeque;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// Log-probabilities of the prompt's own tokens (`echo` in `/v1/completions`).
    pub prompt_logprobs: bool,
    /// Log-probabilities of each generated token, with this many most likely alternatives.
    pub logprobs: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f64,
    /// The most likely tokens at this position, best first.
    pub top: Vec<(u32, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token or stop string.
    Stop,
    /// `max_new_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Event {
    /// A generated token and the text it released (empty while held back or mid-character).
    Token {
        id: u64,
        token: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Finished {
        id: u64,
        reason: FinishReason,
        /// Text held back for a possible stop string and released now (streaming clients
        /// append it); `text` is the whole completion.
        tail: String,
        text: String,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// One entry per prompt token; the first has none.
        prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    },
    Failed {
        id: u64,
        error: String,
    },
}

struct Sequence {
    id: u64,
    history: Vec<u32>,
    prompt_len: usize,
    sampler: Sampler,
    stream: TextStream,
    /// Sampled, not yet fed to the model.
    pending: u32,
    completion_tokens: usize,
    logprobs: Option<usize>,
    prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    finished: Option<FinishReason>,
    /// Already reported as failed: no `Finished` event follows.
    failed: bool,
}

/// A prompt partly prefilled, in the slot just after the running batch.
struct Prefill {
    id: u64,
    req: Request,
    done: usize,
    /// Logits of every prefilled position (prompt log-probs wanted) or of the last chunk's end.
    logits: Vec<Tensor>,
}

pub struct Scheduler {
    pub engine: Engine,
    pub tokenizer: Arc<Tokenizer>,
    waiting: VecDeque<(u64, Request)>,
    prefilling: Option<Prefill>,
    active: Vec<Sequence>,
    next_id: u64,
    /// Prompt tokens prefilled since the last decode step: at most `prefill_chunk` of them
    /// run between two decodes, however the steps are cut.
    prefilled_since_decode: usize,
    /// A decode step queued on the device with its picks not read yet (see [`Scheduler::step`]).
    in_flight: Option<Picks>,
    /// Whether steps may be queued ahead: not with `UNIATTN_DECODE_AHEAD=0`.
    ahead: bool,
    /// Decode steps queued ahead so far.
    steps_ahead: usize,
}

/// Whether greedy decode steps are queued ahead of the host: yes unless
/// `UNIATTN_DECODE_AHEAD=0` (the scheduler's default, and `bench`'s).
pub(crate) fn decode_ahead_wanted() -> bool {
    std::env::var("UNIATTN_DECODE_AHEAD").map_or(true, |v| v != "0")
}

/// Log-probability of `token` and the `k` best alternatives from one row of log-probs.
fn token_logprob(logp: &Tensor, token: u32, k: usize) -> TokenLogprob {
    let logprob = logp.double_value(&[token as i64]);
    let top = if k > 0 {
        let (v, i) = logp.topk(k as i64, -1, true, true);
        let v = Vec::<f64>::try_from(v.to_kind(Kind::Double).to_device(Device::Cpu)).unwrap_or_default();
        let i = Vec::<i64>::try_from(i.to_device(Device::Cpu)).unwrap_or_default();
        i.into_iter().map(|t| t as u32).zip(v).collect()
    } else {
        Vec::new()
    };
    TokenLogprob { token, logprob, top }
}

impl Scheduler {
    pub fn new(engine: Engine, tokenizer: Arc<Tokenizer>) -> Self {
        Scheduler {
            engine,
            tokenizer,
            waiting: VecDeque::new(),
            prefilling: None,
            active: Vec::new(),
            next_id: 0,
            prefilled_since_decode: 0,
            in_flight: None,
            ahead: decode_ahead_wanted(),
            steps_ahead: 0,
        }
    }

    /// Whether decode steps may be queued before the last one's picks are read (default: yes,
    /// unless `UNIATTN_DECODE_AHEAD=0`).
    pub fn set_decode_ahead(&mut self, on: bool) {
        self.ahead = on;
    }

    /// Decode steps queued ahead of the host so far (for reports and tests).
    pub fn steps_ahead(&self) -> usize {
        self.steps_ahead
    }

    /// Queues a request after checking it can run at all; returns its id.
    pub fn submit(&mut self, req: Request) -> Result<u64> {
        req.params.validate()?;
        if req.prompt.is_empty() {
            return Err(Error::invalid("prompt: expected at least one token, got none"));
        }
        let max_len = self.engine.cache.max_len();
        let need = req.prompt.len() + req.params.max_new_tokens;
        if need > max_len {
            return Err(Error::invalid(format!(
                "prompt ({} tokens) plus max_tokens ({}) exceed the context of {max_len} tokens",
                req.prompt.len(),
                req.params.max_new_tokens
            )));
        }
        if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= self.engine.config().vocab_size) {
            return Err(Error::invalid(format!(
                "prompt: token id {bad} is outside the vocabulary ({} tokens)",
                self.engine.config().vocab_size
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back((id, req));
        Ok(id)
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || self.prefilling.is_some() || !self.active.is_empty()
    }

    /// Steps until every queued request has finished, handing each event to `on_event`.
    pub fn run(&mut self, mut on_event: impl FnMut(&Event)) {
        while self.has_work() {
            for e in self.step() {
                on_event(&e);
            }
        }
    }

    /// Drops a request whose client went away.
    pub fn cancel(&mut self, id: u64) {
        self.waiting.retain(|(i, _)| *i != id);
        if self.prefilling.as_ref().is_some_and(|p| p.id == id) {
            self.prefilling = None;
            self.engine.reset(self.active.len());
        }
        if let Some(s) = self.active.iter_mut().find(|s| s.id == id) {
            s.finished = Some(FinishReason::Stop);
        }
        // A step in flight still has the sequence's row: the next step reads it, then compacts.
        if self.in_flight.is_none() {
            self.compact();
        }
    }

    /// Prefills up to `prefill_chunk` prompt tokens (finishing prompts join the batch), then
    /// advances every running sequence by one token. Returns what happened, in order.
    pub fn step(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        // A prompt joining changes the batch: the step in flight is read first.
        if self.in_flight.is_some() && self.joining() {
            let drained = self.drain(&mut events);
            self.on_decode_result(drained, &mut events);
            self.compact();
        }
        let mut budget = self.engine.options.prefill_chunk.saturating_sub(self.prefilled_since_decode);
        while budget > 0 {
            if self.prefilling.is_none() {
                if self.active.len() >= self.engine.cache.slots() {
                    break;
                }
                let Some((id, req)) = self.waiting.pop_front() else { break };
                self.engine.reset(self.active.len());
                self.prefilling = Some(Prefill { id, req, done: 0, logits: Vec::new() });
            }
            let slot = self.active.len();
            let p = self.prefilling.as_mut().expect("set above");
            let n = budget.min(p.req.prompt.len() - p.done);
            match self.engine.prefill(slot, &p.req.prompt[p.done..p.done + n], p.req.prompt_logprobs) {
                Ok(l) => {
                    if !p.req.prompt_logprobs {
                        p.logits.clear();
                    }
                    p.logits.push(l);
                    p.done += n;
                    budget -= n;
                    self.prefilled_since_decode += n;
                }
                Err(e) => {
                    events.push(Event::Failed { id: p.id, error: e.to_string() });
                    self.prefilling = None;
                    self.engine.reset(slot);
                    continue;
                }
            }
            if p.done == p.req.prompt.len() {
                let p = self.prefilling.take().expect("set above");
                self.start(p, &mut events);
                // A request can finish on its first token; its slot is free again at once.
                self.compact();
                // Hand the first token over now rather than after this step's decode: a
                // streaming client sees it one step sooner. The decode runs on the next call,
                // after at most the rest of this step's prefill budget.
                return events;
            }
        }
        // The decode (or, with nothing to decode, the end of this step) opens the next budget.
        self.prefilled_since_decode = 0;
        if !self.active.is_empty() {
            let decoded = match self.in_flight.take() {
                Some(picks) => self.decode_in_flight(picks, &mut events),
                None => self.decode_from_host(&mut events),
            };
            self.on_decode_result(decoded, &mut events);
        }
        self.compact();
        events
    }

    /// A decode step fed the pending tokens from the host. When every sequence picks greedily,
    /// the device already holds the picks: the next step is queued behind this one before
    /// the host waits for them, so that the GPU runs it while the host handles these tokens.
    fn decode_from_host(&mut self, events: &mut Vec<Event>) -> Result<()> {
        let tokens: Vec<u32> = self.active.iter().map(|s| s.pending).collect();
        let logits = self.engine.decode(&tokens)?;
        for s in &mut self.active {
            s.history.push(s.pending);
        }
        if self.can_run_ahead() {
            let picks = self.engine.picks(tokens.len())?;
            return self.take_picks(picks, events);
        }
        let mut rows: Vec<(&mut Sampler, &[u32])> =
            self.active.iter_mut().map(|s| (&mut s.sampler, s.history.as_slice())).collect();
        let next = pick_batch(&mut rows, &logits);
        let want_logp = self.active.iter().any(|s| s.logprobs.is_some());
        let logp = want_logp.then(|| logits.log_softmax(-1, Kind::Float));
        for (i, &t) in next.iter().enumerate() {
            let lp = self.active[i]
                .logprobs
                .map(|k| token_logprob(&logp.as_ref().expect("computed").get(i as i64), t, k));
            self.accept(i, t, lp, events);
        }
        Ok(())
    }

    /// The step queued ahead by the last call: the next one is queued behind it where it may
    /// be, then its picks are taken.
    fn decode_in_flight(&mut self, picks: Picks, events: &mut Vec<Event>) -> Result<()> {
        for s in self.active.iter_mut().filter(|s| s.finished.is_none()) {
            s.history.push(s.pending);
        }
        self.take_picks(picks, events)
    }

    /// Queues the next step ahead when it may run (every sequence greedy and unfinished, no
    /// prompt about to join, room in the cache), then waits for `picks` (the step before it) and
    /// takes them. A sequence that finishes on them leaves the step ahead with a row that is
    /// not wanted: that step is read at once (its other rows' tokens are kept).
    fn take_picks(&mut self, picks: Picks, events: &mut Vec<Event>) -> Result<()> {
        let n = self.active.len();
        if self.can_run_ahead() {
            self.engine.decode_ahead(n)?;
            self.in_flight = Some(self.engine.picks(n)?);
            self.steps_ahead += 1;
        }
        self.accept_picks(picks, events)?;
        if self.in_flight.is_some() && self.active.iter().any(|s| s.finished.is_some()) {
            self.drain(events)?;
        }
        Ok(())
    }

    /// Reads the step in flight, if any, and takes its picks for the unfinished sequences.
    fn drain(&mut self, events: &mut Vec<Event>) -> Result<()> {
        let Some(picks) = self.in_flight.take() else { return Ok(()) };
        for s in self.active.iter_mut().filter(|s| s.finished.is_none()) {
            s.history.push(s.pending);
        }
        self.accept_picks(picks, events)
    }

    /// Waits for `picks` and takes each unfinished sequence's.
    fn accept_picks(&mut self, picks: Picks, events: &mut Vec<Event>) -> Result<()> {
        let (tokens, buffer) = picks.wait()?;
        self.engine.recycle(buffer);
        for (i, t) in tokens.into_iter().enumerate() {
            if self.active.get(i).is_some_and(|s| s.finished.is_none()) {
                self.accept(i, t, None, events);
            }
        }
        Ok(())
    }

    /// Whether the next decode step may be queued before this one's picks are read.
    fn can_run_ahead(&self) -> bool {
        let max_len = self.engine.cache.max_len() as i64;
        self.ahead
            && !self.joining()
            && self.active.iter().enumerate().all(|(i, s)| {
                s.finished.is_none()
                    && s.sampler.params.is_greedy()
                    && s.logprobs.is_none()
                    && self.engine.cache.len(i) < max_len
            })
    }

    /// Whether a prompt is being prefilled or can start (a slot is free for it).
    fn joining(&self) -> bool {
        self.prefilling.is_some()
            || (!self.waiting.is_empty() && self.active.len() < self.engine.cache.slots())
    }

    /// A failed decode fails every running sequence and the prompt being prefilled.
    fn on_decode_result(&mut self, r: Result<()>, events: &mut Vec<Event>) {
        let Err(e) = r else { return };
        self.in_flight = None;
        for s in self.active.drain(..) {
            events.push(Event::Failed { id: s.id, error: e.to_string() });
        }
        if let Some(p) = self.prefilling.take() {
            events.push(Event::Failed { id: p.id, error: e.to_string() });
        }
        for slot in 0..self.engine.cache.slots() {
            self.engine.reset(slot);
        }
    }

    /// A fully prefilled prompt joins the batch with its first token.
    fn start(&mut self, p: Prefill, events: &mut Vec<Event>) {
        let (id, req) = (p.id, p.req);
        let slot = self.active.len();
        let logits =
            if req.prompt_logprobs { Tensor::cat(&p.logits, 0) } else { p.logits[0].shallow_clone() };
        let (last, prompt_logprobs) = if req.prompt_logprobs {
            let logp = logits.log_softmax(-1, Kind::Float);
            let k = req.logprobs.unwrap_or(0);
            let mut lps = vec![None];
            for (i, &t) in req.prompt.iter().enumerate().skip(1) {
                lps.push(Some(token_logprob(&logp.get(i as i64 - 1), t, k)));
            }
            (logits.get(-1), Some(lps))
        } else {
            (logits, None)
        };
        let mut sampler = Sampler::new(req.params.clone());
        let first = sampler.pick(&last, &req.prompt);
        let lp = req.logprobs.map(|k| token_logprob(&last.log_softmax(-1, Kind::Float), first, k));
        self.active.push(Sequence {
            id,
            prompt_len: req.prompt.len(),
            history: req.prompt,
            stream: TextStream::new(req.params.stop.clone()),
            sampler,
            pending: first,
            completion_tokens: 0,
            logprobs: req.logprobs,
            prompt_logprobs,
            finished: None,
            failed: false,
        });
        if req.params.max_new_tokens == 0 {
            let s = self.active.last_mut().expect("just pushed");
            s.finished = Some(FinishReason::Length);
            events.push(self.finish_event(slot));
        } else {
            self.accept(slot, first, lp, events);
        }
    }

    /// Takes token `t` as the next output of the sequence in `slot`.
    fn accept(&mut self, slot: usize, t: u32, logprob: Option<TokenLogprob>, events: &mut Vec<Event>) {
        let tokenizer = Arc::clone(&self.tokenizer);
        let s = &mut self.active[slot];
        s.pending = t;
        if !s.sampler.params.ignore_eos && tokenizer.eos_ids.contains(&t) {
            // The end-of-sequence token is generated (and counted) but adds no text: a
            // completion's log-probs include it as vLLM's do, so a scorer that drops the last
            // generated token (lm-evaluation-harness) still sees every continuation token.
            s.completion_tokens += 1;
            events.push(Event::Token { id: s.id, token: t, text: String::new(), logprob });
            s.finished = Some(FinishReason::Stop);
        } else {
            s.completion_tokens += 1;
            match s.stream.push(&tokenizer, t) {
                Ok((text, stopped)) => {
                    events.push(Event::Token { id: s.id, token: t, text, logprob });
                    if stopped {
                        s.finished = Some(FinishReason::Stop);
                    } else if s.completion_tokens >= s.sampler.params.max_new_tokens {
                        s.finished = Some(FinishReason::Length);
                    }
                }
                Err(e) => {
                    events.push(Event::Failed { id: s.id, error: e.to_string() });
                    s.finished = Some(FinishReason::Stop);
                    s.failed = true;
                }
            }
        }
        if s.finished.is_some() && !s.failed {
            events.push(self.finish_event(slot));
        }
    }

    fn finish_event(&mut self, slot: usize) -> Event {
        let s = &mut self.active[slot];
        Event::Finished {
            id: s.id,
            reason: s.finished.expect("finished"),
            tail: s.stream.finish(),
            text: s.stream.text().to_string(),
            prompt_tokens: s.prompt_len,
            completion_tokens: s.completion_tokens,
            prompt_logprobs: s.prompt_logprobs.take(),
        }
    }

    /// Removes finished sequences, moving the last slot into each gap, and the prompt being
    /// prefilled to the slot after the batch.
    fn compact(&mut self) {
        let before = self.active.len();
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].finished.is_some() {
                let last = self.active.len() - 1;
                if i != last {
                    self.engine.move_slot(last, i);
                } else {
                    self.engine.reset(i);
                }
                self.active.swap_remove(i);
            } else {
                i += 1;
            }
        }
        if self.prefilling.is_some() && self.active.len() != before {
            self.engine.move_slot(before, self.active.len());
        }
    }
}
