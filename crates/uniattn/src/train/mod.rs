//! Supervised post-training: dense, UniAttn's two stages (W_c alone, then everything), and the
//! baselines, with gradient accumulation normalised over the whole window, clipping, a cosine
//! schedule, validation, metrics, and atomic checkpoints that resume bit-exactly.
pub mod checkpoint;
pub mod dataset;
pub mod events;
pub mod job;
pub mod optim;
mod step_graph;

use crate::cuda::training::autocast_bf16;
use crate::distributed::progress::Phase;
use crate::distributed::zero::Collective;
use crate::distributed::World;
use crate::error::{Error, Result};
use crate::model::names::Module;
use crate::model::nn::accumulate_kind;
use crate::model::transformer::PositionContext;
use crate::model::Transformer;
use crate::rng::SplitMix64;
use dataset::TokenizedExample;
use optim::{cosine_lr, AdamW, AdamWConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Which parameters a stage trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StageKind {
    /// Only the compensation matrices (UniAttn stage 1).
    CompensationOnly,
    /// Every weight.
    All,
}

impl StageKind {
    /// The modules the stage trains, by role; `None` is every weight.
    pub fn modules(self) -> Option<&'static [Module]> {
        match self {
            StageKind::CompensationOnly => Some(&[Module::Wc]),
            StageKind::All => None,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub stages: Vec<StageKind>,
    pub optim: AdamWConfig,
    /// Learning rate of the compensation-only stage (defaults to `optim.lr`).
    pub stage1_lr: Option<f64>,
    pub micro_batch: usize,
    pub grad_accum: usize,
    pub epochs: usize,
    pub warmup_ratio: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub eval_every: usize,
    pub save_every: usize,
    pub save_total_limit: Option<usize>,
    /// Stop after this many optimizer steps in total (for tests and interrupted runs).
    pub stop_after: Option<usize>,
    /// bf16 autocast (GPU); master weights and optimizer state stay f32.
    pub autocast: bool,
    /// Activation checkpointing: keep one tensor per layer (per SuperBlock) and recompute the
    /// rest during the backward pass.
    #[serde(default)]
    pub recompute_layers: bool,
    /// Pack short training examples into sequences of up to the maximum length (documents keep
    /// their own positions and never attend to each other).
    #[serde(default)]
    pub pack: bool,
    /// ZeRO stage over the ranks (0 or 1; see [`crate::distributed::zero`]).
    #[serde(default)]
    pub zero: u8,
}

impl Default for TrainConfig {
    /// The reference recipe's shape: one epoch per stage, 3% warm-up, clipping at 1.0, no
    /// validation or checkpoints until asked for; the stages follow from the variant.
    fn default() -> Self {
        TrainConfig {
            stages: vec![],
            optim: AdamWConfig::default(),
            stage1_lr: None,
            micro_batch: 4,
            grad_accum: 1,
            epochs: 1,
            warmup_ratio: 0.03,
            max_grad_norm: 1.0,
            seed: 0,
            eval_every: 0,
            save_every: 0,
            save_total_limit: None,
            stop_after: None,
            autocast: false,
            recompute_layers: false,
            pack: false,
            zero: 0,
        }
    }
}

/// Where a run stands: enough to continue exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub stage: usize,
    /// Optimizer steps done in this stage.
    pub step: usize,
    /// Optimizer steps done in the whole run.
    pub global_step: usize,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StepMetrics {
    pub stage: usize,
    pub step: usize,
    pub global_step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_second: f64,
    pub val_loss: Option<f64>,
    /// The most GPU memory libtorch's allocator had handed out so far, GiB (CUDA only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_gpu_gib: Option<f64>,
    /// The optimizer's moments this process holds, GiB (1/N of them under ZeRO-1).
    #[serde(default)]
    pub optimizer_state_gib: f64,
}

/// A run folder's log of its steps, one JSON object a line.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// The steps a run's metrics file records, each with its line; a line that does not parse (one
/// cut off mid-write when the run was) is left out.
fn logged_steps(path: &Path) -> Result<Vec<(String, StepMetrics)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok().map(|m| (line.to_string(), m)))
        .collect())
}

/// Every step of the run in `out`, those of the invocations it was resumed from included.
pub fn run_steps(out: &Path) -> Result<Vec<StepMetrics>> {
    Ok(logged_steps(&out.join(METRICS_FILE))?.into_iter().map(|(_, m)| m).collect())
}

/// A padded micro-batch: inputs and targets `[b, t]` (-100 where there is no loss), and for
/// each token its position within its document and the document's number (-1 for padding).
struct Batch {
    ids: Tensor,
    targets: Tensor,
    positions: Tensor,
    docs: Tensor,
    /// Every row is one document filling it (no packing, no padding): the attention mask is
    /// plain causal, which lets dense layers run flash attention.
    causal: bool,
}

impl Batch {
    fn position_context(&self, model: &Transformer) -> PositionContext {
        if self.causal {
            PositionContext::full(&model.stem, self.ids.size()[1])
        } else {
            PositionContext::packed(&model.stem, &self.positions, &self.docs)
        }
    }

    /// The residual stream after the last layer (before the head).
    fn hidden(&self, model: &Transformer) -> Tensor {
        model.run_layers(model.stem.embed(&self.ids), 0..model.layers.len(), &self.position_context(model))
    }
}

fn collate(examples: &[&TokenizedExample], device: Device) -> Batch {
    collate_padded(examples, device, 0)
}

/// [`collate`] with rows padded to at least `min_len` tokens: packed batches all take one shape,
/// so that one captured CUDA graph serves every micro-batch.
fn collate_padded(examples: &[&TokenizedExample], device: Device, min_len: usize) -> Batch {
    let t = examples.iter().map(|e| e.ids.len() - 1).max().unwrap_or(1).max(min_len);
    let cap = examples.len() * t;
    let (mut ids, mut tgt, mut pos, mut doc) =
        (Vec::with_capacity(cap), Vec::with_capacity(cap), Vec::with_capacity(cap), Vec::with_capacity(cap));
    for e in examples {
        let n = e.ids.len() - 1;
        ids.extend(e.ids[..n].iter().map(|&x| x as i64));
        ids.extend(std::iter::repeat_n(0i64, t - n));
        tgt.extend((1..=n).map(|i| if e.mask[i] { e.ids[i] as i64 } else { -100 }));
        tgt.extend(std::iter::repeat_n(-100i64, t - n));
        let lens = if e.docs.is_empty() { vec![e.ids.len()] } else { e.docs.clone() };
        for (d, &len) in lens.iter().enumerate() {
            pos.extend(0..len as i64);
            doc.extend(std::iter::repeat_n(d as i64, len));
        }
        pos.truncate(pos.len() - 1);
        doc.truncate(doc.len() - 1);
        pos.extend(std::iter::repeat_n(0i64, t - n));
        doc.extend(std::iter::repeat_n(-1i64, t - n));
    }
    let causal = examples.iter().all(|e| e.docs.len() <= 1 && e.ids.len() - 1 == t);
    let shape = [examples.len() as i64, t as i64];
    let mk = |v: &[i64]| Tensor::from_slice(v).view(shape).to_device(device);
    Batch { ids: mk(&ids), targets: mk(&tgt), positions: mk(&pos), docs: mk(&doc), causal }
}

/// Tokens a chunk of the LM head's backward pass: f32 logits of a 152k vocabulary are 0.6 MB a
/// token, and cross-entropy holds them about three times over (logits, log-softmax, gradient),
/// so a 16k-token micro-batch at once would need ~30 GB; chunks need one chunk's worth.
pub const HEAD_CHUNK_TOKENS: i64 = 2048;

/// `scale` x the summed cross-entropy of `head(h)` against `targets`, `chunk` tokens at a
/// time. With `backward`, each chunk is backpropagated into the head's parameters and
/// `h.grad()` (`h`: a leaf `[b, t, d]` that requires grad) before the next one is computed.
/// On CUDA one fused kernel computes each chunk's loss and logit gradient from the head's
/// bf16/f32 output (see [`crate::cuda::kernels::cross_entropy`]); elsewhere libtorch's
/// cross-entropy over f32 logits and its backward pass do. `scale` is a one-element tensor
/// ([`loss_scale`]) and the loss stays on the device (0-d f64): nothing here waits for the
/// GPU, so a CUDA graph can capture it.
fn head_loss(
    model: &Transformer,
    h: &Tensor,
    targets: &Tensor,
    scale: &Tensor,
    autocast: bool,
    chunk: i64,
    backward: bool,
) -> Result<Tensor> {
    let (d, n) = (h.size()[2], targets.numel() as i64);
    let targets = targets.view([-1]);
    let softcap = model.stem.cfg.final_logit_softcapping;
    let mut loss = Tensor::zeros([], (Kind::Double, h.device()));
    for start in (0..n).step_by(chunk.max(1) as usize) {
        let len = chunk.min(n - start);
        let x = h.view([-1, d]).narrow(0, start, len);
        let logits = autocast_bf16(autocast, || model.stem.head_logits(&x))?;
        let targets = targets.narrow(0, start, len);
        if let Some((rows, grad)) =
            crate::cuda::kernels::cross_entropy(&logits.detach(), &targets, scale, softcap, backward)
        {
            if let Some(grad) = grad {
                crate::cuda::training::backward(&logits, &grad)?;
            }
            loss += rows.sum(Kind::Double);
            continue;
        }
        let l = cross_entropy_sum(&model.stem.finish_logits(logits), &targets) * scale;
        if backward {
            l.backward();
        }
        loss += l.detach().to_kind(Kind::Double);
    }
    Ok(loss)
}

/// `value` as the one-element tensor [`head_loss`] scales by, in the model's reduction type.
fn loss_scale(model: &Transformer, value: f64) -> Tensor {
    Tensor::full([] as [i64; 0], value, (accumulate_kind(model.stem.kind), model.stem.device))
}

/// The ordinary backward of the summed loss x `scale`, with the head run in chunks (see
/// [`head_loss`]). Returns the scaled loss (0-d f64, on the device).
fn chunked_backward(
    model: &Transformer,
    b: &Batch,
    scale: &Tensor,
    autocast: bool,
    chunk: i64,
) -> Result<Tensor> {
    // One autocast region for the whole micro-batch.
    autocast_bf16(autocast, || {
        let h = b.hidden(model);
        let last = h.detach().set_requires_grad(true);
        let loss = head_loss(model, &last, &b.targets, scale, autocast, chunk, true)?;
        let grad = last.grad();
        (h * &grad).sum(accumulate_kind(grad.kind())).backward();
        Ok(loss)
    })?
}

/// Logits `[..., vocab]` against targets of the same leading shape (-100: no target).
fn cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> Tensor {
    let v = *logits.size().last().expect("logits have a vocabulary dimension");
    logits.view([-1, v]).to_kind(accumulate_kind(logits.kind())).cross_entropy_loss::<Tensor>(
        &targets.view([-1]),
        None,
        tch::Reduction::Sum,
        -100,
        0.0,
    )
}

/// Backpropagates the summed loss x `scale` keeping only the input of each recompute unit (a layer,
/// or a whole SuperBlock): the forward runs without a graph, then every unit is recomputed
/// with one while the gradient flows back through it; the head runs in chunks. Returns the
/// scaled loss (0-d f64, on the device).
fn checkpointed_backward(
    model: &Transformer,
    batch: &Batch,
    scale: &Tensor,
    autocast: bool,
    chunk: i64,
) -> Result<Tensor> {
    let (ids, targets) = (&batch.ids, &batch.targets);
    let pc = batch.position_context(model);
    let ac = |f: &dyn Fn() -> Tensor| autocast_bf16(autocast, f);
    let units = model.recompute_units();
    let mut inputs = Vec::with_capacity(units.len());
    let mut h = tch::no_grad(|| ac(&|| model.stem.embed(ids)))?;
    for u in &units {
        inputs.push(h.shallow_clone());
        h = tch::no_grad(|| ac(&|| model.run_layers(h.shallow_clone(), u.clone(), &pc)))?;
    }
    let last = h.detach().set_requires_grad(true);
    let loss = head_loss(model, &last, targets, scale, autocast, chunk, true)?;
    let mut grad = last.grad();
    for (u, x) in units.iter().zip(&inputs).rev() {
        let x = x.detach().set_requires_grad(true);
        let out = ac(&|| model.run_layers(x.shallow_clone(), u.clone(), &pc))?;
        (out * &grad).sum(accumulate_kind(grad.kind())).backward();
        grad = x.grad();
    }
    let h0 = ac(&|| model.stem.embed(ids))?;
    if h0.requires_grad() {
        (h0 * &grad).sum(accumulate_kind(grad.kind())).backward();
    }
    Ok(loss)
}

/// Mean loss per target token over `examples`.
pub fn evaluate(
    model: &Transformer,
    examples: &[TokenizedExample],
    micro_batch: usize,
    autocast: bool,
) -> Result<f64> {
    let _guard = tch::no_grad_guard();
    let (mut sum, mut n) = (Tensor::zeros([], (Kind::Double, model.stem.device)), 0usize);
    let refs: Vec<&TokenizedExample> = examples.iter().collect();
    let one = loss_scale(model, 1.0);
    for chunk in refs.chunks(micro_batch.max(1)) {
        let b = collate(chunk, model.stem.device);
        let h = autocast_bf16(autocast, || b.hidden(model))?;
        sum += head_loss(model, &h, &b.targets, &one, autocast, HEAD_CHUNK_TOKENS, false)?;
        n += chunk.iter().map(|e| e.targets()).sum::<usize>();
    }
    Ok(sum.double_value(&[]) / n.max(1) as f64)
}

/// The order of examples in a stage: the same for a given seed and stage, so a resumed run
/// sees exactly the batches it would have seen.
pub fn stage_order(n: usize, seed: u64, stage: usize, epochs: usize) -> Vec<usize> {
    let mut rng = SplitMix64(seed ^ (0xA076_1D64_78BD_642F_u64.wrapping_mul(stage as u64 + 1)));
    let mut order = Vec::with_capacity(n * epochs);
    for _ in 0..epochs {
        let mut e: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut e);
        order.extend(e);
    }
    order
}

pub struct Trainer<'a> {
    pub model: &'a Transformer,
    pub tokenizer: &'a crate::tokenizer::Tokenizer,
    pub cfg: TrainConfig,
    pub train: Vec<TokenizedExample>,
    pub val: Vec<TokenizedExample>,
    pub out: PathBuf,
    /// Record [`PROFILED_STEPS`] with libtorch's profiler and write them here as a Chrome
    /// trace (CUDA kernels and operators, for finding where a step's time goes).
    pub profile: Option<PathBuf>,
    /// This process's rank among the job's (one GPU each; [`World::single`] alone) and, with
    /// more than one, the collective its gradients are summed over (NCCL's communicator).
    pub world: World,
    pub comm: Option<Box<dyn Collective>>,
    /// Over several ranks: where this rank reports its progress, so that rank 0 can name a
    /// rank that hangs ([`crate::distributed::progress`]).
    pub watch: Option<&'a crate::distributed::rendezvous::Watch>,
}

/// The gradient accumulation that resumes on `now` ranks a run of `cfg` written on
/// `written_by`: an optimizer step takes micro-batch x accumulation x ranks examples, and a
/// checkpoint's position counts steps, so the resumed steps must take as many (the moments
/// consolidate for any number of ranks). Errors with what would fit where none does.
pub fn accumulation_to_resume(
    cfg: &TrainConfig,
    written_by: usize,
    now: usize,
) -> std::result::Result<usize, String> {
    let window = cfg.micro_batch * cfg.grad_accum * written_by;
    let per_rank = cfg.micro_batch * now;
    if window.is_multiple_of(per_rank) {
        return Ok(window / per_rank);
    }
    Err(format!(
        "written on {written_by} GPU(s), each step {window} examples ({written_by} x micro-batch {} x accumulation {}); \
         on {now} GPU(s) at micro-batch {} no accumulation makes {window}: resume on a number of GPUs that divides \
         {}",
        cfg.micro_batch,
        cfg.grad_accum,
        cfg.micro_batch,
        window / cfg.micro_batch
    ))
}

/// The optimizer steps (0-based, over the whole run) a profile records: after the first
/// steps' one-time costs (allocator growth, cuBLAS set-up, kernel compilation).
pub const PROFILED_STEPS: std::ops::Range<usize> = 3..6;

impl Trainer<'_> {
    /// Tells the other ranks' watch where this rank is (nothing alone).
    fn report(&self, step: usize, phase: Phase) {
        if let Some(w) = self.watch {
            w.report(step, phase);
        }
    }

    fn parameters(&self, stage: StageKind) -> Vec<(String, Tensor)> {
        let trained = stage.modules().map(|modules| self.model.names_of(modules));
        let mut ps = Vec::new();
        for (name, t) in self.model.named_tensors() {
            let on = trained.as_ref().is_none_or(|t| t.contains(&name));
            let _ = t.set_requires_grad(on);
            if on {
                ps.push((name, t));
            }
        }
        ps
    }

    /// Runs (or continues from `resume`) every stage. `on_step` sees each step's metrics.
    pub fn run(
        &mut self,
        resume: Option<checkpoint::Resume>,
        mut on_step: impl FnMut(&StepMetrics, usize),
    ) -> Result<Vec<StepMetrics>> {
        if self.train.is_empty() {
            return Err(Error::invalid("no training examples"));
        }
        if self.cfg.autocast && !self.model.stem.device.is_cuda() {
            return Err(Error::invalid(format!(
                "bf16 autocast runs on a CUDA device; this model is on {:?} (train in f32 there)",
                self.model.stem.device
            )));
        }
        if self.world.size > 1 && self.comm.is_none() {
            return Err(Error::invalid(format!(
                "rank {} of {} has no communicator",
                self.world.rank, self.world.size
            )));
        }
        // Rank 0 writes the run's files and reports; the other ranks only train.
        let leader = self.world.is_leader();
        let metrics_path = self.out.join(METRICS_FILE);
        let (mut metrics, mut events) = if leader {
            std::fs::create_dir_all(&self.out).map_err(|e| Error::io(&self.out, e))?;
            if let Some(r) = &resume {
                // The steps logged after the checkpoint, before the run was cut off, are
                // trained again: their lines go, so that each step appears once. (A run resumed
                // into a new folder from another's checkpoint starts an empty log.)
                let kept: String = logged_steps(&metrics_path)?
                    .into_iter()
                    .filter(|(_, m)| m.global_step <= r.position.global_step)
                    .map(|(line, _)| line + "\n")
                    .collect();
                crate::fs::write_atomic(&metrics_path, kept.as_bytes())?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .map_err(|e| Error::io(&metrics_path, e))?;
            let resumed_after = resume.as_ref().map(|r| r.position.global_step);
            (Some(file), Some(events::EventWriter::create(&self.out, resumed_after)?))
        } else {
            (None, None)
        };
        let mut history = Vec::new();
        let mut pos = resume.as_ref().map_or(Position { stage: 0, step: 0, global_step: 0 }, |r| r.position);
        let mut pending_opt = resume.and_then(|r| r.optimizer);
        // An optimizer step's examples over every rank: each runs `grad_accum` micro-batches.
        let window = self.cfg.micro_batch * self.cfg.grad_accum * self.world.size;
        // Packed rows are padded to the longest one, so that micro-batches share one shape.
        let min_len =
            if self.cfg.pack { self.train.iter().map(|e| e.ids.len() - 1).max().unwrap_or(0) } else { 0 };
        let mut profiler = None;
        while pos.stage < self.cfg.stages.len() {
            let stage = self.cfg.stages[pos.stage];
            let order = stage_order(self.train.len(), self.cfg.seed, pos.stage, self.cfg.epochs);
            let total = order.len().div_ceil(window);
            let warmup = (self.cfg.warmup_ratio * total as f64).ceil() as usize;
            let base_lr = match (stage, self.cfg.stage1_lr) {
                (StageKind::CompensationOnly, Some(lr)) => lr,
                _ => self.cfg.optim.lr,
            };
            let zero = self.cfg.zero >= 1 && self.world.size > 1;
            let mut opt = if zero {
                AdamW::sharded(self.cfg.optim, self.parameters(stage), self.world.rank, self.world.size)
            } else {
                AdamW::new(self.cfg.optim, self.parameters(stage))
            };
            if let Some(state) = pending_opt.take() {
                checkpoint::restore_optimizer(&mut opt, state)?;
            }
            if self.cfg.autocast {
                opt.keep_bf16_copies();
            }
            // After the optimizer: its flat gradient buffer is what a captured graph writes.
            let mut runner = step_graph::MicroBatchRunner::new(self.model, self.cfg.recompute_layers)?;
            // Weights this stage does not train keep one bf16 copy for the stage.
            let _frozen = (self.cfg.autocast && stage.modules().is_some())
                .then(crate::cuda::training::FrozenCasts::keep);
            // Over NCCL, the layers' gradients are summed during the backward pass, where every
            // rank is on this machine: across two 1-GPU nodes (H200s, NCCL 2.28) the second
            // node's rank did not exit after the last step with it on, and did with it off.
            let reducer = match (self.comm.as_deref().and_then(|c| c.nccl()), opt.flat_grad_buffer()) {
                (Some(nccl), Some(flat))
                    if crate::cuda::layer_reduce::wanted() && self.world.on_one_machine() =>
                {
                    let Device::Cuda(device) = self.model.stem.device else {
                        unreachable!("NCCL runs on GPUs")
                    };
                    let layers = opt.layer_ranges(self.model.layers.len());
                    Some(crate::cuda::layer_reduce::LayerReducer::new(nccl, device, flat, layers)?)
                }
                _ => None,
            };
            while pos.step < total {
                if self.cfg.stop_after.is_some_and(|s| pos.global_step >= s) {
                    return Ok(history);
                }
                if leader && self.profile.is_some() && pos.global_step == PROFILED_STEPS.start {
                    profiler = Some(crate::cuda::profiler::Profiler::start()?);
                }
                let t0 = std::time::Instant::now();
                self.report(pos.global_step + 1, Phase::Computing);
                let batch: Vec<&TokenizedExample> = order
                    [pos.step * window..((pos.step + 1) * window).min(order.len())]
                    .iter()
                    .map(|&i| &self.train[i])
                    .collect();
                // Normalise by the target tokens of the whole window, so 2 x 4 equals 8 x 1.
                let n_targets: usize = batch.iter().map(|e| e.targets()).sum();
                let scale = 1.0 / n_targets.max(1) as f64;
                // Summed on the device: one synchronisation per step.
                let mut loss = Tensor::zeros([], (Kind::Double, self.model.stem.device));
                // A rank's last micro-batch sums the gradients during its backward pass, where
                // every rank has one (the ranks must issue the same collectives).
                let micro_batches = batch.len().div_ceil(self.cfg.micro_batch);
                let last = (0..micro_batches).rev().find(|&i| self.world.owns_micro_batch(i));
                let reducing = reducer.as_ref().filter(|_| micro_batches >= self.world.size);
                let mut summed = vec![];
                for (i, micro) in batch.chunks(self.cfg.micro_batch).enumerate() {
                    if self.world.owns_micro_batch(i) {
                        let b = collate_padded(micro, self.model.stem.device, min_len);
                        let reducer = reducing.filter(|_| Some(i) == last);
                        let (l, s) = runner.run(self.model, &b, scale, self.cfg.autocast, reducer)?;
                        loss += l;
                        summed = s;
                    }
                }
                // The window's loss is the sum over the ranks' micro-batches (the optimizer sums
                // their gradients).
                let group = self.comm.as_deref();
                if let Some(group) = group {
                    group.all_reduce_sum(&loss)?;
                }
                self.report(pos.global_step + 1, Phase::Waiting);
                let loss = loss.double_value(&[]);
                if !loss.is_finite() {
                    // Stop before the optimizer spreads it into the weights; checkpoints stay intact.
                    return Err(Error::invalid(format!(
                        "stage {} step {}: the loss is {loss} (not finite); the weights were not updated. \
                         Lower the learning rate, train in f32, or check the data and the model's weights",
                        pos.stage + 1,
                        pos.step + 1
                    )));
                }
                let lr = cosine_lr(base_lr, pos.step, total, warmup);
                let grad_norm = opt.step(lr, self.cfg.max_grad_norm, group, &summed)?;
                opt.zero_grad();
                pos.step += 1;
                pos.global_step += 1;
                let tokens: usize = batch.iter().map(|e| e.ids.len()).sum();
                let val_loss = (leader
                    && self.cfg.eval_every > 0
                    && !self.val.is_empty()
                    && (pos.step.is_multiple_of(self.cfg.eval_every) || pos.step == total))
                    .then(|| {
                        self.report(pos.global_step, Phase::Evaluating);
                        evaluate(self.model, &self.val, self.cfg.micro_batch, self.cfg.autocast)
                    })
                    .transpose()?;
                let m = StepMetrics {
                    stage: pos.stage,
                    step: pos.step,
                    global_step: pos.global_step,
                    loss,
                    lr,
                    grad_norm,
                    tokens,
                    tokens_per_second: tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9),
                    val_loss,
                    optimizer_state_gib: opt.state_bytes() as f64 / (1u64 << 30) as f64,
                    peak_gpu_gib: match self.model.stem.device {
                        Device::Cuda(d) => crate::cuda::training::peak_memory_allocated(d)
                            .map(|b| b as f64 / (1u64 << 30) as f64),
                        _ => None,
                    },
                };
                if let (Some(metrics), Some(events)) = (&mut metrics, &mut events) {
                    writeln!(metrics, "{}", serde_json::to_string(&m).expect("metrics serialise"))
                        .map_err(|e| Error::io(&metrics_path, e))?;
                    let mut scalars = vec![
                        ("train/loss", m.loss),
                        ("train/lr", m.lr),
                        ("train/grad_norm", m.grad_norm),
                        ("train/tokens_per_second", m.tokens_per_second),
                        ("train/stage", (m.stage + 1) as f64),
                    ];
                    scalars.extend(m.val_loss.map(|v| ("val/loss", v)));
                    scalars.extend(m.peak_gpu_gib.map(|v| ("train/peak_gpu_gib", v)));
                    events.scalars(m.global_step, &scalars)?;
                    on_step(&m, total);
                }
                history.push(m);
                if let (Some(path), true) = (&self.profile, pos.global_step == PROFILED_STEPS.end) {
                    if let Some(p) = profiler.take() {
                        p.save(path)?;
                    }
                }
                let stage_done = pos.step == total;
                // Every rank holds the same weights: rank 0 saves them and the optimizer state,
                // or under ZeRO-1 every rank its share of the moments.
                if (self.cfg.save_every > 0 && pos.global_step.is_multiple_of(self.cfg.save_every))
                    || stage_done
                {
                    let next = if stage_done {
                        Position { stage: pos.stage + 1, step: 0, global_step: pos.global_step }
                    } else {
                        pos
                    };
                    self.report(pos.global_step, Phase::Saving);
                    checkpoint::save(self, &opt, next, stage_done, group)?;
                }
            }
            pos = Position { stage: pos.stage + 1, step: 0, global_step: pos.global_step };
        }
        Ok(history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Family;
    use crate::plan::SuperBlockPlan;
    use crate::testing::{tiny_config, tiny_model};
    use tch::Kind;

    /// Summed cross-entropy over target tokens, the whole head at once: the reference the
    /// chunked paths are checked against.
    fn loss_sum(model: &Transformer, b: &Batch, autocast: bool) -> Tensor {
        let logits =
            autocast_bf16(autocast, || model.stem.head(&model.hidden_packed(&b.ids, &b.positions, &b.docs)))
                .unwrap();
        cross_entropy_sum(&logits, &b.targets)
    }

    /// Examples of uneven length whose first `p` tokens are prompt.
    fn examples(n: usize, seed: u64) -> Vec<TokenizedExample> {
        let mut rng = SplitMix64(seed);
        (0..n)
            .map(|_| {
                let len = 6 + (rng.next_u64() % 9) as usize;
                let p = 2 + (rng.next_u64() % 3) as usize;
                // A learnable pattern: each token is the previous one plus 1 (mod 32).
                let start = rng.next_u64() % 32;
                let ids = (0..len).map(|i| ((start + i as u64) % 32) as u32).collect();
                TokenizedExample { ids, mask: (0..len).map(|i| i >= p).collect(), docs: vec![] }
            })
            .collect()
    }

    fn config(stages: Vec<StageKind>, micro: usize, accum: usize) -> TrainConfig {
        TrainConfig {
            stages,
            optim: AdamWConfig { lr: 3e-3, ..Default::default() },
            micro_batch: micro,
            grad_accum: accum,
            seed: 7,
            ..Default::default()
        }
    }

    /// A scratch directory, removed when the test ends; the run writes to `run/` inside it.
    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn weights(m: &Transformer) -> Vec<(String, Tensor)> {
        m.named_tensors().into_iter().map(|(n, t)| (n, t.detach().copy())).collect()
    }

    /// A trainer without validation data.
    fn trainer<'a>(
        model: &'a Transformer,
        tokenizer: &'a crate::tokenizer::Tokenizer,
        cfg: TrainConfig,
        train: Vec<TokenizedExample>,
        out: PathBuf,
    ) -> Trainer<'a> {
        Trainer {
            model,
            tokenizer,
            cfg,
            train,
            val: vec![],
            out,
            profile: None,
            world: World::single(),
            comm: None,
            watch: None,
        }
    }

    #[test]
    fn loss_decreases() {
        let cfg = tiny_config(Family::Llama);
        let model = tiny_model(&cfg, SuperBlockPlan::dense(4), Kind::Float, 11);
        let tok = crate::testing::tiny_tokenizer();
        let mut c = config(vec![StageKind::All], 4, 1);
        c.epochs = 8;
        let dir = scratch();
        let mut t = trainer(&model, &tok, c, examples(32, 1), dir.path().join("run"));
        let h = t.run(None, |_, _| {}).unwrap();
        let first: f64 = h[..4].iter().map(|m| m.loss).sum::<f64>() / 4.0;
        let last: f64 = h[h.len() - 4..].iter().map(|m| m.loss).sum::<f64>() / 4.0;
        assert!(last < 0.7 * first, "loss {first} -> {last}");
    }

    /// Micro-batch 2 x accumulation 4 makes the same update as 8 x 1.
    #[test]
    fn accumulation_matches_a_big_batch() {
        let cfg = tiny_config(Family::Llama);
        let tok = crate::testing::tiny_tokenizer();
        let data = examples(8, 2);
        let run = |micro, accum| {
            let model = tiny_model(&cfg, SuperBlockPlan::dense(4), Kind::Float, 12);
            let dir = scratch();
            let mut t = trainer(
                &model,
                &tok,
                config(vec![StageKind::All], micro, accum),
                data.clone(),
                dir.path().join("run"),
            );
            t.run(None, |_, _| {}).unwrap();
            weights(&model)
        };
        let (a, b) = (run(2, 4), run(8, 1));
        for ((n, x), (_, y)) in a.iter().zip(&b) {
            let d = (x - y).abs().max().double_value(&[]);
            assert!(d < 1e-5, "{n}: {d}");
        }
    }

    /// N steps, stop, resume for N more: the same weights as 2N steps straight.
    #[test]
    fn resume_is_exact() {
        let cfg = tiny_config(Family::Llama);
        let tok = crate::testing::tiny_tokenizer();
        let data = examples(16, 3);
        let plan = SuperBlockPlan::from_blocks(vec![(1, 3)], 4).unwrap();
        let stages = vec![StageKind::CompensationOnly, StageKind::All];
        let straight = {
            let model = tiny_model(&cfg, plan.clone(), Kind::Float, 13);
            let dir = scratch();
            let mut t =
                trainer(&model, &tok, config(stages.clone(), 2, 2), data.clone(), dir.path().join("run"));
            t.run(None, |_, _| {}).unwrap();
            weights(&model)
        };
        // 4 steps per stage; stop in the middle of stage 2 (after 6), checkpoint every 3.
        let dir = scratch();
        let out = dir.path().join("run");
        {
            let model = tiny_model(&cfg, plan.clone(), Kind::Float, 13);
            let mut c = config(stages.clone(), 2, 2);
            c.save_every = 3;
            c.stop_after = Some(6);
            let mut t = trainer(&model, &tok, c, data.clone(), out.clone());
            t.run(None, |_, _| {}).unwrap();
        }
        let resume = checkpoint::load(&out).unwrap();
        assert_eq!(resume.position, Position { stage: 1, step: 2, global_step: 6 });
        let parts = crate::loader::read_parts(&resume.dir).unwrap();
        let model =
            Transformer::from_weights(parts.weights, parts.cfg, parts.plan, Kind::Float, Device::Cpu, false)
                .unwrap();
        let mut t = trainer(&model, &tok, config(stages, 2, 2), data, out);
        t.run(Some(resume), |_, _| {}).unwrap();
        for ((n, x), (_, y)) in weights(&model).iter().zip(&straight) {
            assert!(x.equal(y), "{n} differs after resume");
        }
    }

    /// ZeRO-1 with each rank's `--out` in a folder of its own (machines that share no
    /// filesystem): at the first checkpoint every rank stops with the same error, naming the
    /// rank that could not write its share and why, and none waits for the others.
    #[test]
    fn zero_checkpoints_without_a_shared_folder_stop_every_rank() {
        use crate::distributed::zero::threads::ThreadGroup;
        let cfg = tiny_config(Family::Llama);
        let data = examples(24, 5);
        let dirs = [scratch(), scratch()];
        let handles: Vec<_> = ThreadGroup::new(2)
            .into_iter()
            .map(|group| {
                let (cfg, data) = (cfg.clone(), data.clone());
                let out = dirs[group.rank()].path().join("run");
                std::thread::spawn(move || {
                    let rank = group.rank();
                    let tok = crate::testing::tiny_tokenizer();
                    let model = tiny_model(&cfg, SuperBlockPlan::dense(4), Kind::Float, 15);
                    let mut c = config(vec![StageKind::All], 2, 1);
                    (c.zero, c.save_every) = (1, 2);
                    let mut t = trainer(&model, &tok, c, data, out);
                    t.world = World { rank, size: 2, ..World::single() };
                    t.comm = Some(Box::new(group));
                    t.run(None, |_, _| {}).map(|_| ()).map_err(|e| e.to_string())
                })
            })
            .collect();
        for (rank, h) in handles.into_iter().enumerate() {
            let e = h.join().unwrap().expect_err("no shared checkpoint folder");
            assert!(
                e.contains("rank(s) 1 could not write") && e.contains("filesystem they all share"),
                "{rank}: {e}"
            );
            assert!(e.contains("step-000002.tmp"), "{rank}: {e}");
        }
        let step2 = dirs[0].path().join("run/checkpoints/step-000002");
        assert!(!step2.exists(), "no checkpoint is finished without every share");
    }

    /// Data parallelism over two ranks (threads on the CPU, each with its own model) at
    /// micro-batch 2, plain and with ZeRO-1, trains as one process at micro-batch 4 does; a
    /// ZeRO-1 run stopped after 5 steps (its checkpoint holding each rank's share of the
    /// moments) and resumed ends on the uninterrupted run's weights.
    #[test]
    fn two_ranks_with_and_without_zero_train_as_one_process() {
        use crate::distributed::zero::threads::ThreadGroup;
        let cfg = tiny_config(Family::Llama);
        let data = examples(24, 5);
        let plan = SuperBlockPlan::from_blocks(vec![(1, 3)], 4).unwrap();
        let stages = vec![StageKind::CompensationOnly, StageKind::All];
        let one = {
            let model = tiny_model(&cfg, plan.clone(), Kind::Float, 15);
            let tok = crate::testing::tiny_tokenizer();
            let dir = scratch();
            let mut t =
                trainer(&model, &tok, config(stages.clone(), 4, 1), data.clone(), dir.path().join("run"));
            t.run(None, |_, _| {}).unwrap();
            weights(&model)
        };
        // Both ranks in one folder, as a shared one on several machines.
        let ranks =
            |zero: u8, stop: Option<usize>, out: &std::path::Path, resume: bool| -> Vec<(String, Tensor)> {
                let handles: Vec<_> = ThreadGroup::new(2)
                    .into_iter()
                    .map(|group| {
                        let (cfg, plan, stages, data, out) =
                            (cfg.clone(), plan.clone(), stages.clone(), data.clone(), out.to_path_buf());
                        std::thread::spawn(move || {
                            let rank = group.rank();
                            let tok = crate::testing::tiny_tokenizer();
                            let (model, resume) = if resume {
                                let r = checkpoint::load(&out).unwrap();
                                let parts = crate::loader::read_parts(&r.dir).unwrap();
                                let m = Transformer::from_weights(
                                    parts.weights,
                                    parts.cfg,
                                    parts.plan,
                                    Kind::Float,
                                    Device::Cpu,
                                    false,
                                )
                                .unwrap();
                                (m, Some(r))
                            } else {
                                (tiny_model(&cfg, plan, Kind::Float, 15), None)
                            };
                            let mut c = config(stages, 2, 1);
                            (c.zero, c.save_every, c.stop_after) = (zero, 5, stop);
                            let mut t = trainer(&model, &tok, c, data, out);
                            t.world = World { rank, size: 2, ..World::single() };
                            t.comm = Some(Box::new(group));
                            t.run(resume, |_, _| {}).unwrap();
                            weights(&model)
                        })
                    })
                    .collect();
                let mut all: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
                for ((n, a), (_, b)) in all[0].iter().zip(&all[1]) {
                    assert!(a.equal(b), "zero {zero}: {n} differs between the ranks");
                }
                all.remove(0)
            };
        for zero in [0, 1] {
            let dir = scratch();
            let got = ranks(zero, None, &dir.path().join("run"), false);
            for ((n, x), (_, y)) in got.iter().zip(&one) {
                let d = (x - y).abs().max().double_value(&[]);
                assert!(d < 1e-5, "zero {zero}: {n} differs from one process by {d}");
            }
        }
        let dir = scratch();
        let out = dir.path().join("run");
        let straight = ranks(1, None, &out, false);
        let dir = scratch();
        let out = dir.path().join("run");
        ranks(1, Some(5), &out, false);
        let step5 = out.join("checkpoints/step-000005");
        assert!(step5.join("optimizer-rank00001.safetensors").exists(), "rank 1 wrote its share");
        assert!(!step5.join("optimizer.safetensors").exists(), "no whole-moment file under ZeRO-1");
        // On one process, the shares consolidated and the accumulation doubled: the same
        // examples a step, so the same weights up to summation order.
        let resumed = ranks(1, None, &out, true);
        for ((n, x), (_, y)) in resumed.iter().zip(&straight) {
            assert!(x.equal(y), "{n} differs after the ZeRO-1 resume");
        }
        let r = checkpoint::load(&step5).unwrap();
        assert_eq!(r.world_size, 2);
        let mut c = config(stages.clone(), 2, 1);
        c.grad_accum = accumulation_to_resume(&c, 2, 1).unwrap();
        assert_eq!(c.grad_accum, 2);
        let parts = crate::loader::read_parts(&r.dir).unwrap();
        let model =
            Transformer::from_weights(parts.weights, parts.cfg, parts.plan, Kind::Float, Device::Cpu, false)
                .unwrap();
        let tok = crate::testing::tiny_tokenizer();
        let mut t = trainer(&model, &tok, c, data.clone(), dir.path().join("one"));
        t.run(Some(r), |_, _| {}).unwrap();
        for ((n, x), (_, y)) in weights(&model).iter().zip(&straight) {
            let d = (x - y).abs().max().double_value(&[]);
            assert!(d < 1e-5, "{n} differs by {d} after resuming two ranks' run on one");
        }
        let e = accumulation_to_resume(&config(stages, 2, 1), 2, 3).unwrap_err();
        assert!(e.contains("each step 4 examples") && e.contains("divides 2"), "{e}");
    }

    #[test]
    fn stage_one_changes_only_the_compensation() {
        let cfg = tiny_config(Family::Llama);
        let tok = crate::testing::tiny_tokenizer();
        let plan = SuperBlockPlan::from_blocks(vec![(1, 4)], 4).unwrap();
        let model = tiny_model(&cfg, plan, Kind::Float, 14);
        let before = weights(&model);
        let dir = scratch();
        let mut t = trainer(
            &model,
            &tok,
            config(vec![StageKind::CompensationOnly], 2, 1),
            examples(8, 4),
            dir.path().join("run"),
        );
        t.run(None, |_, _| {}).unwrap();
        let mut changed = 0;
        for ((n, x), (_, y)) in weights(&model).iter().zip(&before) {
            if n.ends_with("v2_proj.weight") {
                assert!(!x.equal(y), "{n} should train");
                changed += 1;
            } else {
                assert!(x.equal(y), "{n} must stay bit-identical in stage 1");
            }
        }
        assert_eq!(changed, 2);
    }

    /// Validation (head in chunks, no graph) is the whole-head loss per target token.
    #[test]
    fn evaluate_is_the_mean_target_loss() {
        let cfg = tiny_config(Family::Llama);
        let plan = SuperBlockPlan::from_blocks(vec![(1, 3)], 4).unwrap();
        let m = tiny_model(&cfg, plan, Kind::Double, 5);
        let data = examples(5, 13);
        let refs: Vec<&TokenizedExample> = data.iter().collect();
        let whole = loss_sum(&m, &collate(&refs, Device::Cpu), false).double_value(&[]);
        let targets: usize = data.iter().map(|e| e.targets()).sum();
        let got = evaluate(&m, &data, 2, false).unwrap();
        assert!((got - whole / targets as f64).abs() < 1e-10, "{got} vs {}", whole / targets as f64);
    }

    /// Recomputing layers (and whole SuperBlocks) and running the head in chunks (5 tokens of
    /// 27, so the last chunk is short) give the gradients of the ordinary backward, for UniAttn
    /// and CLA plans.
    #[test]
    fn recomputation_and_head_chunks_give_the_same_gradients() {
        let cfg = tiny_config(Family::Llama);
        let data = examples(3, 9);
        let refs: Vec<&TokenizedExample> = data.iter().collect();
        let batch = collate(&refs, Device::Cpu);
        for kind in [crate::plan::ReuseKind::Uniattn, crate::plan::ReuseKind::Cla] {
            let plan = SuperBlockPlan::from_blocks(vec![(1, 3)], 4).unwrap().with_reuse(kind);
            let grads = |how: &str| {
                let m = tiny_model(&cfg, plan.clone(), Kind::Double, 21);
                let ps: Vec<(String, Tensor)> = m.named_tensors();
                for (_, p) in &ps {
                    let _ = p.set_requires_grad(true);
                }
                let loss = match how {
                    "recompute" => checkpointed_backward(&m, &batch, &loss_scale(&m, 0.5), false, 5)
                        .unwrap()
                        .double_value(&[]),
                    "chunked" => chunked_backward(&m, &batch, &loss_scale(&m, 0.5), false, 5)
                        .unwrap()
                        .double_value(&[]),
                    _ => {
                        let l = loss_sum(&m, &batch, false) * 0.5;
                        l.backward();
                        l.double_value(&[])
                    }
                };
                (loss, ps.into_iter().map(|(n, p)| (n, p.grad().copy())).collect::<Vec<_>>())
            };
            let (la, ga) = grads("plain");
            for how in ["recompute", "chunked"] {
                let (lb, gb) = grads(how);
                assert!((la - lb).abs() < 1e-10, "{kind:?} {how}: loss {la} vs {lb}");
                for ((n, a), (_, b)) in ga.iter().zip(&gb) {
                    let d = (a - b).abs().max().double_value(&[]);
                    assert!(d < 1e-10, "{kind:?} {how} {n}: {d}");
                }
            }
        }
    }

    /// Whole-row batches (every row one document, no padding) take the causal path (flash
    /// attention in dense layers on a GPU): the same gradients as the packed-mask reference.
    #[test]
    fn whole_rows_take_the_causal_path_with_the_same_gradients() {
        let cfg = tiny_config(Family::Qwen2);
        let data: Vec<TokenizedExample> = examples(3, 9)
            .into_iter()
            .map(|mut e| {
                e.ids.resize(12, 5);
                e.mask = vec![true; 12];
                e
            })
            .collect();
        let refs: Vec<&TokenizedExample> = data.iter().collect();
        let batch = collate(&refs, Device::Cpu);
        assert!(batch.causal, "whole rows are plain causal");
        for kind in [crate::plan::ReuseKind::Uniattn, crate::plan::ReuseKind::Cla] {
            let plan = SuperBlockPlan::from_blocks(vec![(1, 3)], 4).unwrap().with_reuse(kind);
            let m = tiny_model(&cfg, plan, Kind::Double, 22);
            let ps: Vec<(String, Tensor)> = m.named_tensors();
            for (_, p) in &ps {
                let _ = p.set_requires_grad(true);
            }
            let grads = |causal: bool| {
                for (_, p) in &ps {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.zero_();
                    }
                }
                let b = Batch { causal, ..collate(&refs, Device::Cpu) };
                let loss =
                    chunked_backward(&m, &b, &loss_scale(&m, 1.0), false, 7).unwrap().double_value(&[]);
                (loss, ps.iter().map(|(n, p)| (n.clone(), p.grad().copy())).collect::<Vec<_>>())
            };
            let ((la, ga), (lb, gb)) = (grads(true), grads(false));
            assert!((la - lb).abs() < 1e-10, "{kind:?}: loss {la} vs {lb}");
            for ((n, a), (_, b)) in ga.iter().zip(&gb) {
                let d = (a - b).abs().max().double_value(&[]);
                assert!(d < 1e-10, "{kind:?} {n}: {d}");
            }
        }
    }

    /// On a GPU (skipped elsewhere): 20 steps of the fused path (gradients in one flat
    /// buffer, PyTorch's fused AdamW, the fused cross-entropy, flash attention on whole rows)
    /// follow the libtorch composition's losses: within 1e-4 relative in f32 and within bf16
    /// noise (3%) under bf16 autocast.
    #[test]
    fn fused_training_follows_the_composition() {
        let Some(dev) = crate::testing::cuda() else { return };
        let cfg = tiny_config(Family::Llama);
        let tok = crate::testing::tiny_tokenizer();
        // Whole rows (the causal path) and uneven ones (the packed-mask path), mixed.
        let mut data = examples(16, 6);
        data.extend(examples(16, 7).into_iter().map(|mut e| {
            e.ids.resize(14, 3);
            e.mask = vec![true; 14];
            e
        }));
        let plan = SuperBlockPlan::from_blocks(vec![(1, 3)], 4).unwrap();
        let mut curves = vec![];
        for (autocast, tol) in [(false, 1e-4), (true, 3e-2)] {
            let run = |fused: bool| {
                let go = || {
                    let model = crate::testing::tiny_model_on(&cfg, plan.clone(), Kind::Float, 15, dev);
                    let mut c = config(vec![StageKind::CompensationOnly, StageKind::All], 4, 2);
                    c.epochs = 3;
                    c.autocast = autocast;
                    let dir = scratch();
                    let mut t = trainer(&model, &tok, c, data.clone(), dir.path().join("run"));
                    t.run(None, |_, _| {}).unwrap().iter().map(|m| m.loss).collect::<Vec<f64>>()
                };
                if fused {
                    go()
                } else {
                    crate::cuda::kernels::without(go)
                }
            };
            let (fused, plain) = (run(true), run(false));
            assert_eq!(fused.len(), 24);
            for (i, (a, b)) in fused.iter().zip(&plain).enumerate() {
                assert!((a - b).abs() <= tol * b.abs(), "autocast {autocast} step {i}: {a} vs {b}");
            }
            curves.push(fused);
        }
        for c in curves {
            let (first, last) = (c[..4].iter().sum::<f64>(), c[20..].iter().sum::<f64>());
            assert!(last < 0.85 * first, "it learns: {c:?}");
        }
    }

    #[test]
    fn collate_masks_prompt_and_padding() {
        let a =
            TokenizedExample { ids: vec![5, 6, 7, 8], mask: vec![false, false, true, true], docs: vec![] };
        let b = TokenizedExample { ids: vec![9, 10], mask: vec![false, true], docs: vec![] };
        let batch = collate(&[&a, &b], Device::Cpu);
        let v = |t: &Tensor| Vec::<i64>::try_from(t.view([-1])).unwrap();
        assert_eq!(v(&batch.ids), vec![5, 6, 7, 9, 0, 0]);
        assert_eq!(v(&batch.targets), vec![-100, 7, 8, 10, -100, -100]);
        assert_eq!(v(&batch.docs), vec![0, 0, 0, 0, -1, -1]);
    }

    /// A packed sequence scores each document exactly as it would be scored alone.
    #[test]
    fn packing_keeps_documents_apart() {
        let cfg = tiny_config(Family::Gemma3);
        let m = tiny_model(&cfg, SuperBlockPlan::from_blocks(vec![(1, 3)], 4).unwrap(), Kind::Double, 31);
        let docs = examples(3, 10);
        let alone: f64 = docs
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e.mask[0] = false;
                loss_sum(&m, &collate(&[&e], Device::Cpu), false).double_value(&[])
            })
            .sum();
        let packed = dataset::pack(docs.clone(), 1000);
        assert_eq!(packed.len(), 1);
        assert_eq!(packed[0].docs, docs.iter().map(|d| d.ids.len()).collect::<Vec<_>>());
        let together = loss_sum(&m, &collate(&[&packed[0]], Device::Cpu), false).double_value(&[]);
        // (libtorch's CPU kernels leave ~1e-8 relative noise even in f64; leakage across
        // documents would change the loss by far more.)
        assert!((alone - together).abs() < 1e-6 * alone.abs(), "alone {alone} vs packed {together}");
    }
}
