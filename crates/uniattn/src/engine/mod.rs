//! The inference engine: a pre-allocated KV cache for a batch of sequences of different
//! lengths, chunked prefill, one decode step for the whole batch, sampling, stop handling and
//! continuous batching. Reuse layers run without Q/K weights, K cache, scores or softmax, so
//! UniAttn's savings are real here; tests hold the engine to the training graph's forward.
pub mod bench;
pub mod graphs;
pub mod kv_cache;
pub mod layers;
pub mod sampling;
pub mod scheduler;
pub mod stop;

use crate::cuda::kernels;
use crate::error::{Error, Result};
use crate::model::attention::Want;
use crate::model::transformer::{PositionContext, PositionTables, Stem};
use crate::model::Transformer;
use crate::plan::{LayerRole, LeadHandover};
use kv_cache::{KvCache, KEY_BUCKET};
use layers::{InferenceLayer, Step};
use tch::{Device, Kind, Tensor};

pub use sampling::SamplingParams;
pub use scheduler::{Event, FinishReason, Request, Scheduler, TokenLogprob};

#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Sequences decoded together (cache slots).
    pub max_batch: usize,
    /// Longest sequence, prompt plus generated tokens.
    pub max_len: usize,
    /// Prompt tokens per prefill call: bounds the activations of a chunk, and how long a
    /// long prompt holds up the decoding of the others.
    pub prefill_chunk: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { max_batch: 8, max_len: 4096, prefill_chunk: 512 }
    }
}

/// A zeroed `step_inputs` buffer for `cache`'s slots.
fn step_inputs(cache: &KvCache, device: Device) -> Tensor {
    Tensor::zeros([2, cache.slots() as i64, 1], (Kind::Int64, device))
}

fn cache_for(layers: &[InferenceLayer], stem: &Stem, slots: usize, len: usize) -> Result<KvCache> {
    let kinds: Vec<_> = layers.iter().map(InferenceLayer::cache_kind).collect();
    let heads: Vec<i64> =
        (0..layers.len()).map(|l| stem.plan.kv_heads(l, stem.cfg.num_kv_heads) as i64).collect();
    KvCache::new(&kinds, &heads, slots, len, stem.cfg.head_dim as i64, stem.kind, stem.device)
}

/// A decode step's greedy picks on their way to the host ([`Engine::picks`]).
pub enum Picks {
    Ready(Vec<i64>),
    Copying(crate::cuda::host_copy::Copying),
}

impl Picks {
    /// Waits for the picks; returns them and the pinned buffer to give back
    /// ([`Engine::recycle`]).
    pub fn wait(self) -> Result<(Vec<u32>, Option<crate::cuda::host_copy::PinnedI64>)> {
        let (ids, buffer) = match self {
            Picks::Ready(ids) => (ids, None),
            Picks::Copying(c) => c.wait().map(|(ids, b)| (ids, Some(b)))?,
        };
        Ok((ids.into_iter().map(|t| t as u32).collect(), buffer))
    }
}

pub struct Engine {
    /// Embedding, final norm, head, configuration and plan: the model outside its layers
    /// (read through [`Engine::config`], [`Engine::plan`] and [`Engine::device`]).
    stem: Stem,
    layers: Vec<InferenceLayer>,
    pub cache: KvCache,
    /// Each layer's role under the plan, looked up once rather than on every step.
    roles: Vec<LayerRole>,
    /// Each layer's reuse layers (a lead's; empty for the others), for which a lead may attend
    /// in a decode step.
    reuse_layers: Vec<Vec<usize>>,
    pub options: EngineOptions,
    /// Captured decode steps, when decoding through CUDA graphs (see [`Engine::use_cuda_graphs`]).
    graphs: Option<graphs::DecodeGraphs>,
    /// `[2, slots, 1]` int64 on the device: the token ids, then the positions, a decode step
    /// reads; the step writes its greedy picks and the next positions back (see
    /// [`Engine::decode_ahead`]). At a fixed address, which captured steps read.
    step_inputs: Tensor,
    /// Pinned buffers for [`Engine::picks`], given back after use.
    pinned: Vec<crate::cuda::host_copy::PinnedI64>,
    /// [`MAPS_FOR_PROBS`] on CUDA; 0 on the CPU, where `P V` has no such shape problem and
    /// reading no keys is what pays. Tests set it to run both forms.
    maps_for_probs: i64,
    /// RoPE angles and key positions of every position the cache holds, looked up each step
    /// rather than computed.
    position_tables: PositionTables,
}

/// (Sequence, kv head) maps from which a decode step's SuperBlock leads hand their
/// probabilities to their reuse layers. Below it the lead hands over its queries and keys and
/// each reuse layer reruns fused attention on them and its own values: cuBLAS runs `P V` (a few
/// query rows over thousands of keys) as one block per map, so at batch 1 it takes longer than
/// fused attention over keys and values (12.3 against 7.6 us at 8k keys on the H200), and the
/// lead then runs fused attention too, instead of score GEMM, softmax and `P V`. From 32 maps
/// `P V` streams the values at 3.1-3.3 TB/s and reading no keys pays
/// (`scripts/device/pv_probe.py`; docs/benchmarks.md).
pub const MAPS_FOR_PROBS: i64 = 32;

impl Engine {
    pub fn new(model: Transformer, options: EngineOptions) -> Result<Self> {
        let Transformer { mut stem, layers } = model;
        stem.norm.freeze();
        if options.max_batch == 0 || options.max_len == 0 || options.prefill_chunk == 0 {
            return Err(Error::invalid(format!(
                "engine options: max batch, max length and prefill chunk must be at least 1, got {options:?}"
            )));
        }
        if options.max_len > stem.cfg.max_position_embeddings {
            return Err(Error::invalid(format!(
                "max length {} exceeds the model's context of {} positions (max_position_embeddings); \
                 give --max-len {} or less",
                options.max_len, stem.cfg.max_position_embeddings, stem.cfg.max_position_embeddings
            )));
        }
        let roles = stem.plan.roles();
        let reuse_layers = (0..roles.len()).map(|l| stem.plan.reuse_layers_of(l).collect()).collect();
        let layers: Vec<InferenceLayer> = layers
            .into_iter()
            .zip(&roles)
            .map(|(layer, role)| {
                let lead = match role {
                    LayerRole::Reuse { lead } => Some(*lead),
                    _ => None,
                };
                InferenceLayer::new(layer, lead)
            })
            .collect();
        let cache = cache_for(&layers, &stem, options.max_batch, options.max_len)?;
        let maps_for_probs = if stem.device.is_cuda() { MAPS_FOR_PROBS } else { 0 };
        let step_inputs = step_inputs(&cache, stem.device);
        let position_tables = PositionTables::new(&stem, cache.capacity() as i64);
        let mut engine = Engine {
            stem,
            layers,
            cache,
            roles,
            reuse_layers,
            options,
            graphs: None,
            step_inputs,
            pinned: vec![],
            maps_for_probs,
            position_tables,
        };
        // On a GPU, decode through CUDA graphs unless UNIATTN_CUDA_GRAPHS=0 (or the shim is
        // missing, in which case the eager path runs as before).
        if crate::cuda::graph::wanted() && engine.stem.device.is_cuda() && crate::cuda::available() {
            engine.use_cuda_graphs(true)?;
        }
        Ok(engine)
    }

    /// The model's configuration.
    pub fn config(&self) -> &crate::config::ModelConfig {
        &self.stem.cfg
    }

    /// The model's SuperBlock plan.
    pub fn plan(&self) -> &crate::plan::SuperBlockPlan {
        &self.stem.plan
    }

    /// Where the model's weights and the KV cache live.
    pub fn device(&self) -> tch::Device {
        self.stem.device
    }

    /// Decodes through CUDA graphs (`true`) or launches every kernel eagerly (`false`).
    pub fn use_cuda_graphs(&mut self, on: bool) -> Result<()> {
        self.graphs = match on {
            true if !self.stem.device.is_cuda() => {
                return Err(Error::invalid("CUDA graphs need a CUDA device"));
            }
            true => {
                let Device::Cuda(device) = self.stem.device else { unreachable!("checked above") };
                Some(graphs::DecodeGraphs::new(device)?)
            }
            false => None,
        };
        Ok(())
    }

    /// Whether decode steps replay CUDA graphs, and how many shapes are captured.
    pub fn cuda_graphs(&self) -> Option<usize> {
        self.graphs.as_ref().map(graphs::DecodeGraphs::captured)
    }

    /// Kernels (CUDA graph nodes) the last decode step launched, when it replayed a graph.
    pub fn decode_kernels(&self) -> Option<usize> {
        self.graphs.as_ref().and_then(|g| g.last_nodes())
    }

    /// GPU seconds of the last decode step's shape, replayed `n` times back to back (`None`
    /// when steps run eagerly).
    pub fn decode_gpu_seconds(&self, n: usize) -> Result<Option<f64>> {
        self.graphs.as_ref().map_or(Ok(None), |g| g.replay_seconds(n, &self.step_inputs))
    }

    /// Replaces the cache with one for `max_batch` sequences of `max_len` tokens (the old one
    /// is freed first, so the new one may use its memory).
    pub fn resize_cache(&mut self, max_batch: usize, max_len: usize) -> Result<()> {
        // Captured steps point into the old cache: drop them first.
        let graphs = self.graphs.take().is_some();
        self.cache = cache_for(&self.layers, &self.stem, 1, 1)?;
        self.cache = cache_for(&self.layers, &self.stem, max_batch, max_len)?;
        self.step_inputs = step_inputs(&self.cache, self.stem.device);
        self.position_tables = PositionTables::new(&self.stem, self.cache.capacity() as i64);
        self.pinned.clear();
        self.options = EngineOptions { max_batch, max_len, ..self.options };
        self.use_cuda_graphs(graphs)
    }

    /// Bytes of weights one forward call reads: every layer and the output head (the
    /// embedding lookup itself reads only the rows it needs).
    pub fn weight_bytes_per_step(&self) -> usize {
        let t = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
        let head = t(self.stem.lm_head.as_ref().unwrap_or(&self.stem.embed)) + t(&self.stem.norm.weight);
        self.layers.iter().map(InferenceLayer::weight_bytes).sum::<usize>() + head
    }

    /// Cache bytes a decode step of `batch` sequences over `keys` keys reads per past token
    /// over all layers: more than the cache's own bytes per token where CLA layers read their
    /// lead's keys and values again, and where reuse layers read their lead's keys (small
    /// batches, unless the decode attention kernel hands the map over in pieces).
    pub fn cache_read_bytes_per_token(&self, batch: usize, keys: usize) -> usize {
        let (n, keys) = (batch as i64, self.key_bucket(keys as i64));
        let hands_map = self.hands_map(n) || self.kernel_hands_map(n, keys);
        self.layers.iter().enumerate().map(|(i, l)| self.cache.entry_bytes(i, l.cache_read(hands_map))).sum()
    }

    /// Whether a decode step of `batch` sequences has its SuperBlock leads hand their map
    /// over (see [`MAPS_FOR_PROBS`]).
    fn hands_map(&self, batch: i64) -> bool {
        batch * self.stem.cfg.num_kv_heads as i64 >= self.maps_for_probs
    }

    /// Whether a decode step of `batch` sequences over `keys` keys runs its leads on the decode
    /// attention kernel, which hands their map over in the kernel's pieces.
    fn kernel_hands_map(&self, batch: i64, keys: i64) -> bool {
        let c = &self.stem.cfg;
        let shape = [batch, c.num_heads as i64, c.num_kv_heads as i64, c.head_dim as i64, keys];
        kernels::lead_maps_apply(self.stem.kind, self.stem.device, shape)
    }

    /// Sets the map count from which leads hand their map over in decode (tests run both forms).
    #[cfg(test)]
    pub(crate) fn set_maps_for_probs(&mut self, maps: i64) {
        self.maps_for_probs = maps;
    }

    /// Runs the stack on `ids` (`[n, q]`) for cache rows `slot0..slot0 + n`.
    fn run(
        &mut self,
        ids: &Tensor,
        slot0: usize,
        positions: &Tensor,
        k_len: i64,
        causal_from_zero: bool,
    ) -> Tensor {
        // A chunk from position 0 keeps its exact length: it reads no key past its own, and the
        // fused kernel's causal flag stands in for the mask.
        let k_len = if causal_from_zero { k_len } else { self.key_bucket(k_len) };
        let pc = PositionContext::from_tables(&self.stem, &self.position_tables, positions, k_len);
        let mut h = self.stem.embed(ids);
        let mut lead = None;
        // What a lead whose reuse layers take its attention hands over: a decode step of many
        // sequences the (small) map; a prefill chunk, or a decode step of few, its queries and
        // keys; a decode step the decode attention kernel runs, the map in its pieces.
        let (n, q) = (ids.size()[0], ids.size()[1]);
        let lead_hands = (self.stem.plan.reuse.spec().lead_hands == LeadHandover::Probs).then(|| {
            if q == 1 && self.hands_map(n) && !self.kernel_hands_map(n, k_len) {
                Want::Probs
            } else {
                Want::Attention
            }
        });
        for (l, layer) in self.layers.iter().enumerate() {
            let ctx = pc.layer(&self.stem, l);
            // A decode step's lead may attend for its reuse layers (see `attend_ahead`).
            let ahead = q == 1 && lead_hands == Some(Want::Attention);
            let step = Step {
                slot0,
                positions,
                k_len,
                reuse_layers: if ahead { &self.reuse_layers[l] } else { &[] },
                rope: ctx.rope,
                mask: ctx.mask,
                causal_from_zero: causal_from_zero
                    && self.stem.cfg.layer_window(l).is_none_or(|w| w as i64 >= k_len),
            };
            let hands = if self.roles[l] == LayerRole::Lead { lead_hands } else { None };
            layer.forward(l, &mut h, &step, &mut self.cache, hands, &mut lead);
            // The lead's attention lives only while its block runs.
            if !matches!(self.roles.get(l + 1), Some(LayerRole::Reuse { .. })) {
                lead = None;
            }
        }
        h
    }

    /// The key length attention reads for keys `0..k_len`: whole buckets (the cache holds
    /// whole buckets).
    fn key_bucket(&self, k_len: i64) -> i64 {
        ((k_len + KEY_BUCKET - 1) / KEY_BUCKET * KEY_BUCKET).min(self.cache.capacity() as i64)
    }

    /// Appends `ids` to `slot`'s sequence in chunks of `prefill_chunk` tokens. Returns f32
    /// logits of the last token (`[vocab]`), or of every token (`[q, vocab]`) with `all_logits`.
    pub fn prefill(&mut self, slot: usize, ids: &[u32], all_logits: bool) -> Result<Tensor> {
        if slot >= self.cache.slots() {
            return Err(Error::invalid(format!(
                "slot {slot} out of range (max batch {})",
                self.cache.slots()
            )));
        }
        if ids.is_empty() {
            return Err(Error::invalid("empty prompt: at least one token is needed"));
        }
        let start = self.cache.len(slot) as usize;
        if start + ids.len() > self.cache.max_len() {
            return Err(Error::invalid(format!(
                "{} tokens do not fit: the sequence holds {start} of at most {} tokens",
                ids.len(),
                self.cache.max_len()
            )));
        }
        let _guard = tch::no_grad_guard();
        let device = self.stem.device;
        let mut out = Vec::new();
        for chunk in ids.chunks(self.options.prefill_chunk) {
            let p = self.cache.len(slot);
            let c = chunk.len() as i64;
            let t: Vec<i64> = chunk.iter().map(|&i| i as i64).collect();
            let ids = Tensor::from_slice(&t).to_device(device).unsqueeze(0);
            let positions = Tensor::arange_start(p, p + c, (Kind::Int64, device)).unsqueeze(0);
            let h = self.run(&ids, slot, &positions, p + c, p == 0);
            self.cache.set_len(slot, p + c);
            out.push(if all_logits { h } else { h.narrow(1, c - 1, 1) });
        }
        let h = if all_logits { Tensor::cat(&out, 1) } else { out.pop().expect("one chunk at least") };
        let logits = self.stem.head(&h).squeeze_dim(0);
        Ok(if all_logits { logits } else { logits.squeeze_dim(0) })
    }

    /// One decode step: `tokens[i]` is appended to slot `i`. Returns f32 logits `[n, vocab]`.
    /// The step also leaves its greedy picks where [`Engine::decode_ahead`] reads them.
    pub fn decode(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let n = tokens.len();
        let lens = self.next_lens(n)?;
        // Ids then positions, each padded to the slots: in a graph's padded batch, rows past
        // `n` write K/V at their own sequence's next position, and the rest are not read.
        let slots = self.cache.slots();
        let last = self.cache.max_len() as i64 - 1;
        let mut inputs = vec![0i64; 2 * slots];
        for (s, &t) in tokens.iter().enumerate() {
            inputs[s] = t as i64;
        }
        for s in 0..slots {
            inputs[slots + s] = if s < n { lens[s] } else { self.cache.len(s).min(last) };
        }
        self.step_inputs.copy_(&Tensor::from_slice(&inputs).view([2, slots as i64, 1]));
        self.step(n, &lens, true).map(|logits| logits.expect("asked for"))
    }

    /// The next decode step of the same `n` sequences fed the last step's greedy picks, which
    /// never leave the device: the host queues it without waiting for the last step. Read the
    /// picks with [`Engine::picks`] (queued before this step, they are the last step's).
    pub fn decode_ahead(&mut self, n: usize) -> Result<()> {
        let lens = self.next_lens(n)?;
        self.step(n, &lens, false).map(drop)
    }

    /// The greedy picks of the last decode step for slots `0..n`, copied behind it: on a GPU
    /// without waiting for it (the host waits in [`Picks::wait`], and may queue more work
    /// first), elsewhere at once.
    pub fn picks(&mut self, n: usize) -> Result<Picks> {
        let ids = self.step_rows(n).0.view([-1]);
        match self.stem.device {
            Device::Cuda(d) => {
                let buffer = match self.pinned.pop() {
                    Some(b) => b,
                    None => crate::cuda::host_copy::PinnedI64::new(self.cache.slots())?,
                };
                Ok(Picks::Copying(buffer.copy_from(&ids, d)?))
            }
            _ => Ok(Picks::Ready(Vec::<i64>::try_from(ids).expect("int64 picks"))),
        }
    }

    /// Gives a waited-for pick buffer back for the next [`Engine::picks`].
    pub fn recycle(&mut self, buffer: Option<crate::cuda::host_copy::PinnedI64>) {
        self.pinned.extend(buffer);
    }

    /// The lengths of slots `0..n` before a decode step, checked to have room for one more.
    fn next_lens(&self, n: usize) -> Result<Vec<i64>> {
        if n == 0 || n > self.cache.slots() {
            return Err(Error::invalid(format!("decode takes 1 to {} tokens, got {n}", self.cache.slots())));
        }
        let lens: Vec<i64> = (0..n).map(|s| self.cache.len(s)).collect();
        if let Some(s) = lens.iter().position(|&l| l as usize >= self.cache.max_len()) {
            return Err(Error::invalid(format!("sequence {s} is full ({} tokens)", self.cache.max_len())));
        }
        Ok(lens)
    }

    /// A decode step of slots `0..n` (at `lens`) over the ids and positions in `step_inputs`;
    /// its logits when `logits` (a graph's are copied out of its buffer, which the next replay
    /// overwrites).
    fn step(&mut self, n: usize, lens: &[i64], logits: bool) -> Result<Option<Tensor>> {
        let _guard = tch::no_grad_guard();
        let k_len = lens.iter().max().copied().unwrap_or(0) + 1;
        let logits = match self.graphs.take() {
            Some(mut g) => {
                let r = self.decode_graphed(&mut g, n, k_len);
                self.graphs = Some(g);
                logits.then(|| r.map(|out| self.stem.finish_picked(&out, true))).transpose()?
            }
            None => {
                let (ids, positions) = self.step_rows(n);
                let picked = self.step_body(&ids, &positions, k_len);
                Some(self.stem.finish_picked(&picked, false))
            }
        };
        for (s, l) in lens.iter().enumerate() {
            self.cache.set_len(s, l + 1);
        }
        Ok(logits)
    }

    /// Views of rows `0..rows` of the step's ids and positions.
    fn step_rows(&self, rows: usize) -> (Tensor, Tensor) {
        let rows = rows as i64;
        (self.step_inputs.get(0).narrow(0, 0, rows), self.step_inputs.get(1).narrow(0, 0, rows))
    }

    /// What a decode step runs, eagerly or captured: the layers and the head over `ids` and
    /// `positions` (views of `step_inputs`), then the greedy picks and the next positions
    /// written back over them, so that a following step can run without the host. Returns
    /// the logits the picks were taken from ([`Stem::pick_logits`]): a step that only feeds
    /// the next one casts none of them to f32 (at batch 32 the cast and an argmax over f32
    /// took 29 us of a 1.77 ms step on an H200, 2026-12-03). The picks come from
    /// [`kernels::row_argmax`] where it applies (CUDA), else from torch's argmax.
    fn step_body(&mut self, ids: &Tensor, positions: &Tensor, k_len: i64) -> Tensor {
        let h = self.run(ids, 0, positions, k_len, false);
        let logits = self.stem.pick_logits(&h).squeeze_dim(1);
        let last = self.cache.max_len() as i64 - 1;
        let next_positions = (positions + 1).clamp_max(last);
        if kernels::row_argmax(&logits, ids).is_none() {
            ids.shallow_clone().copy_(&logits.argmax(-1, true));
        }
        positions.shallow_clone().copy_(&next_positions);
        logits
    }

    /// One decode step replayed from a CUDA graph: the batch is padded to its bucket with rows
    /// for the next slots (each writes K/V at its own sequence's next position, which its
    /// prefill or its next decode step overwrites), and attention reads whole key buckets.
    fn decode_graphed(&mut self, g: &mut graphs::DecodeGraphs, n: usize, k_len: i64) -> Result<Tensor> {
        let batch = graphs::DecodeGraphs::batch_bucket(n, self.cache.slots());
        let (ids, positions) = self.step_rows(batch);
        let k_len = self.key_bucket(k_len);
        let inputs = self.step_inputs.shallow_clone();
        let out = g.run(batch, k_len, &inputs, || self.step_body(&ids, &positions, k_len))?;
        Ok(out.narrow(0, 0, n as i64))
    }

    /// Forgets `slot`'s sequence.
    pub fn reset(&mut self, slot: usize) {
        self.cache.set_len(slot, 0);
    }

    /// Moves a sequence to another slot (keeps the live slots contiguous from 0).
    pub fn move_slot(&mut self, from: usize, to: usize) {
        self.cache.move_slot(from, to);
    }
}

#[cfg(test)]
mod tests;
