//! Choosing a SuperBlock plan by what it costs the model: the held-out loss right after the
//! closed-form conversion. `analyze`'s similarity of softmax maps does not rank plans the way
//! post-training does; this loss does (docs/results.md, "which plan"), and it costs a
//! calibration pass and an evaluation per plan, not a training run.
//!
//! Every admissible single block (lead at or after `min_layer`, 2..=`max_group` layers) is
//! converted alone and scored. Summing their loss increases predicts the cost of every full
//! plan; the `verify` cheapest predictions (and any plans the user names) are then converted
//! whole and scored, and the lowest measured loss wins. Blocks interact (a later fit sees the
//! earlier ones, and errors compound through the layers), which is why the winner is measured
//! rather than taken from the sum.
//!
//! What "held-out loss" means is a [`PlanScore`]: the next-token NLL of held-out documents
//! ([`HeldOut`]; layers below the lowest block are the same in every candidate, so their
//! residual streams are computed once and each plan runs only the rest), or the gold choice's
//! cross-entropy on multiple-choice questions in the format the model will be judged on
//! ([`ChoiceLoss`]): free-text NLL does not see what 5-shot lettered answering needs.
use crate::calibrate::{calibrate, CalibOptions};
use crate::distributed::zero::Collective;
use crate::error::{Error, Result};
use crate::eval::mc_task::McTask;
use crate::eval::multiple_choice::{evaluate, gold_cross_entropy, ScoringOptions};
use crate::eval::perplexity::next_token_logprobs;
use crate::model::transformer::PositionContext;
use crate::model::Transformer;
use crate::plan::{ReuseKind, SuperBlockPlan};
use crate::tokenizer::Tokenizer;
use std::collections::BTreeMap;
use std::time::Instant;
use tch::Tensor;

/// Half-open layer range `start..end`, as in [`SuperBlockPlan::blocks`].
pub type Block = (usize, usize);

#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// What every plan's reuse layers become (each method gets plans chosen for it).
    pub reuse: ReuseKind,
    /// Reuse layers every proposed plan has.
    pub reuse_layers: usize,
    /// Lowest layer a block may start at.
    pub min_layer: usize,
    /// Largest block, lead included.
    pub max_group: usize,
    /// Cheapest predicted plans converted whole and measured.
    pub verify: usize,
    /// Plans measured whatever their prediction (e.g. `analyze`'s).
    pub candidates: Vec<SuperBlockPlan>,
}

impl SearchOptions {
    /// The lowest layer any plan of the search may change.
    pub fn lowest_lead(&self) -> usize {
        self.candidates.iter().filter_map(|c| c.blocks.first()).map(|b| b.0).fold(self.min_layer, usize::min)
    }
}

/// The calibration rows of the closed-form fit (and of its ridge choice), and over several
/// ranks (one GPU each) the group the fits split their rows over (see [`calibrate`]).
pub struct SearchData<'a> {
    pub fit: &'a [Vec<u32>],
    pub fit_heldout: &'a [Vec<u32>],
    pub group: Option<&'a dyn Collective>,
}

/// What plans are compared on, the dense model included; lower is better.
pub trait PlanScore {
    /// Layers below this one are taken to be the dense model's; no plan may change them.
    fn first_layer(&self) -> usize;
    fn score(&self, model: &Transformer) -> Result<f64>;
    /// What the score is, for the report.
    fn describe(&self) -> String;
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BlockCost {
    /// `lead-last`, as `--plan-blocks` writes it.
    pub block: String,
    pub lead: usize,
    pub last: usize,
    pub mean_nll: f64,
    /// Increase over the dense model's held-out loss.
    pub delta: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanCost {
    pub plan: String,
    /// Dense loss plus the plan's summed block increases; `None` for a plan given by the user
    /// whose blocks were not all scored alone.
    pub predicted_nll: Option<f64>,
    pub mean_nll: f64,
    /// Named by the user rather than proposed by the search.
    pub given: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SearchReport {
    /// The reuse kind the plans were scored as ([`ReuseKind::name`]).
    pub variant: String,
    pub reuse_layers: usize,
    /// What `dense_nll` and every `mean_nll` are ([`PlanScore::describe`]).
    pub scored_on: String,
    pub dense_nll: f64,
    pub blocks: Vec<BlockCost>,
    /// Measured plans, lowest held-out loss first.
    pub plans: Vec<PlanCost>,
    pub best: String,
    pub seconds: f64,
}

impl SearchReport {
    /// Each scored block's loss increase at (lead, last), NaN elsewhere, over layers
    /// `first..num_layers` where `first` is the lowest lead (returned with the grid).
    pub fn block_grid(&self, num_layers: usize) -> (usize, Vec<Vec<f64>>) {
        let first = self.blocks.iter().map(|b| b.lead).min().unwrap_or(0);
        let n = num_layers - first;
        let mut g = vec![vec![f64::NAN; n]; n];
        for b in &self.blocks {
            g[b.lead - first][b.last - first] = b.delta;
        }
        (first, g)
    }

    /// [`Self::block_grid`] as a heatmap (`block_cost.png`).
    pub fn block_cost_chart(&self, num_layers: usize) -> crate::plot::Chart {
        let (first, grid) = self.block_grid(num_layers);
        let (lo, hi) =
            self.blocks.iter().fold((f64::MAX, f64::MIN), |(lo, hi), b| (lo.min(b.delta), hi.max(b.delta)));
        let title =
            format!("held-out loss of each block converted alone to {} ({})", self.variant, self.scored_on);
        let labels = [title.as_str(), "last layer of the block", "lead layer", "loss increase over dense"];
        crate::plot::Heatmap::of(labels, &grid, first, [lo, hi])
    }
}

/// Every block the search may use: lead at `min_layer` or above, 2..=`max_group` layers, and
/// no more reuse layers than the plan has.
pub fn admissible_blocks(
    num_layers: usize,
    reuse: usize,
    min_layer: usize,
    max_group: usize,
) -> Result<Vec<Block>> {
    if max_group < 2 {
        return Err(Error::invalid("--max-group must be at least 2 (a lead and one reuse layer)"));
    }
    if reuse == 0 {
        return Err(Error::invalid("--reuse-layers must be at least 1"));
    }
    let largest = max_group.min(reuse + 1);
    let blocks: Vec<Block> = (min_layer..num_layers)
        .flat_map(|s| (2..=largest).map(move |g| (s, s + g)))
        .filter(|&(_, e)| e <= num_layers)
        .collect();
    if blocks.is_empty() {
        return Err(Error::invalid(format!(
            "--min-layer {min_layer}: no block of 2 or more layers fits in a model of {num_layers} layers"
        )));
    }
    Ok(blocks)
}

/// The `k` plans of non-overlapping blocks from `costs` with exactly `reuse` reuse layers whose
/// summed costs are lowest, cheapest first (ties broken by the blocks, for a stable order).
pub fn cheapest_plans(
    costs: &BTreeMap<Block, f64>,
    num_layers: usize,
    reuse: usize,
    k: usize,
) -> Vec<(f64, Vec<Block>)> {
    type Partial = Vec<(f64, Vec<Block>)>;
    let keep = |list: &mut Partial| {
        list.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        list.truncate(k);
    };
    // best[i][r]: the k cheapest ways to place r reuse layers in layers 0..i.
    let mut best: Vec<Vec<Partial>> = vec![vec![Vec::new(); reuse + 1]; num_layers + 1];
    best[0][0].push((0.0, Vec::new()));
    for i in 0..num_layers {
        for r in 0..=reuse {
            keep(&mut best[i][r]);
            let here = best[i][r].clone();
            best[i + 1][r].extend(here.iter().cloned());
            for (&(s, e), &c) in costs.range((i, 0)..(i + 1, 0)) {
                let rr = r + e - s - 1;
                if rr > reuse || e > num_layers {
                    continue;
                }
                for (score, blocks) in &here {
                    let mut b = blocks.clone();
                    b.push((s, e));
                    best[e][rr].push((score + c, b));
                }
            }
        }
    }
    let mut out = std::mem::take(&mut best[num_layers][reuse]);
    keep(&mut out);
    out
}

/// The held-out documents, in pieces of at most `max_len` tokens each scored from its own start
/// (no sliding window: every plan sees the same pieces), as ids and as the dense residual stream
/// entering layer `from`, where every candidate still agrees with the dense model. Over a
/// `group` of ranks each keeps its share of the pieces and the losses are summed over them.
pub struct HeldOut<'a> {
    from: usize,
    docs: Vec<(Tensor, Tensor)>,
    group: Option<&'a dyn Collective>,
}

impl<'a> HeldOut<'a> {
    pub fn new(
        dense: &Transformer,
        docs: &[Vec<u32>],
        max_len: usize,
        from: usize,
        group: Option<&'a dyn Collective>,
    ) -> Result<Self> {
        if docs.iter().all(|d| d.len() < 2) {
            return Err(Error::invalid("no held-out document of at least 2 tokens to score plans on"));
        }
        let _guard = tch::no_grad_guard();
        let (rank, ranks) = group.map_or((0, 1), |g| (g.rank(), g.size()));
        let docs = docs
            .iter()
            .flat_map(|d| d.chunks(max_len.max(2)))
            .filter(|d| d.len() >= 2)
            .skip(rank)
            .step_by(ranks)
            .map(|d| {
                let ids: Vec<i64> = d.iter().map(|&i| i as i64).collect();
                let ids = Tensor::from_slice(&ids).to_device(dense.stem.device).unsqueeze(0);
                let pc = PositionContext::full(&dense.stem, ids.size()[1]);
                let h = dense.run_layers(dense.stem.embed(&ids), 0..from, &pc);
                (ids, h)
            })
            .collect();
        Ok(HeldOut { from, docs, group })
    }

    /// Mean next-token NLL of `model` (dense below `from`) over every predicted token.
    pub fn mean_nll(&self, model: &Transformer) -> Result<f64> {
        let _guard = tch::no_grad_guard();
        let (mut nll, mut count) = (0.0, 0usize);
        for (ids, h) in &self.docs {
            let pc = PositionContext::full(&model.stem, ids.size()[1]);
            let h = model.run_layers(h.shallow_clone(), self.from..model.stem.cfg.num_layers, &pc);
            let lp = next_token_logprobs(&model.stem.head(&h), ids);
            nll -= lp.iter().sum::<f64>();
            count += lp.len();
        }
        if let Some(g) = self.group {
            let sums = Tensor::from_slice(&[nll, count as f64]).to_device(model.stem.device);
            g.all_reduce_sum(&sums)?;
            let sums = Vec::<f64>::try_from(sums.to_device(tch::Device::Cpu)).expect("two f64 sums");
            (nll, count) = (sums[0], sums[1] as usize);
        }
        Ok(nll / count.max(1) as f64)
    }

    /// Tokens in the pieces (this rank's share over several).
    pub fn tokens(&self) -> usize {
        self.docs.iter().map(|(ids, _)| ids.size()[1] as usize).sum()
    }
}

impl PlanScore for HeldOut<'_> {
    fn first_layer(&self) -> usize {
        self.from
    }
    fn score(&self, model: &Transformer) -> Result<f64> {
        self.mean_nll(model)
    }
    fn describe(&self) -> String {
        format!("mean next-token NLL of {} held-out pieces, {} tokens", self.docs.len(), self.tokens())
    }
}

/// Multiple-choice questions scored as `eval mc` scores them, by the gold choice's cross-entropy
/// over the choices (every layer runs: nothing is cached); over several tasks, the mean of
/// theirs, so that each task weighs the same whatever its number of questions.
pub struct ChoiceLoss<'a> {
    pub tok: &'a Tokenizer,
    pub tasks: Vec<McTask>,
    pub opts: ScoringOptions,
    /// Over several ranks: the questions' choices go round them (see [`evaluate`]).
    pub group: Option<&'a dyn Collective>,
}

impl PlanScore for ChoiceLoss<'_> {
    fn first_layer(&self) -> usize {
        0
    }
    fn score(&self, model: &Transformer) -> Result<f64> {
        let mut sum = 0.0;
        for task in &self.tasks {
            let (_, items) = evaluate(model, self.tok, task, None, self.opts, self.group, |_, _| {})?;
            sum += gold_cross_entropy(&items);
        }
        Ok(sum / self.tasks.len().max(1) as f64)
    }
    fn describe(&self) -> String {
        let each: Vec<String> =
            self.tasks.iter().map(|t| format!("{} questions of {}", t.items.len(), t.name)).collect();
        match &each[..] {
            [one] => format!("gold-choice cross-entropy over {one}"),
            _ => format!(
                "mean over {} tasks of the gold-choice cross-entropy: {}",
                each.len(),
                each.join(", ")
            ),
        }
    }
}

/// `score` of `plan` applied to `dense` as its reuse kind converts a model: with `W_c` fitted
/// in closed form (UniAttn), else as the plan leaves it (softmax-only, CLA and layer drop have
/// nothing to fit). `dense` is left as it was (the converted model shares its tensors).
pub fn converted_score(
    dense: &Transformer,
    plan: &SuperBlockPlan,
    data: &SearchData,
    calib: &CalibOptions,
    score: &dyn PlanScore,
) -> Result<f64> {
    let wc = if plan.reuse.spec().compensation {
        calibrate(dense, plan, data.fit, data.fit_heldout, calib, data.group, |_, _| {})?.0
    } else {
        BTreeMap::new()
    };
    let model = dense.share()?.apply_plan(plan.clone(), wc)?;
    score.score(&model)
}

/// Runs the search on a dense model; `progress(done, total)` after each scored model.
pub fn search(
    dense: &Transformer,
    data: &SearchData,
    score: &dyn PlanScore,
    calib: &CalibOptions,
    opts: &SearchOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<SearchReport> {
    if !dense.stem.plan.is_dense() {
        return Err(Error::invalid(format!(
            "search a plan on the dense model (this one has {})",
            dense.stem.plan.describe()
        )));
    }
    if opts.lowest_lead() < score.first_layer() {
        return Err(Error::invalid(format!(
            "plans may start at layer {}, but the held-out set was run through layers 0-{} as dense \
             (build it from layer {} or lower)",
            opts.lowest_lead(),
            score.first_layer() - 1,
            opts.lowest_lead()
        )));
    }
    if opts.verify == 0 && opts.candidates.is_empty() {
        return Err(Error::invalid("--verify 0 and no --candidate: no plan would be measured"));
    }
    let n = dense.stem.cfg.num_layers;
    for c in &opts.candidates {
        c.check_layers(n, std::path::Path::new("--candidate"))?;
        let r = c.reuse_layers().len();
        if r != opts.reuse_layers {
            return Err(Error::invalid(format!(
                "--candidate {}: it has {r} reuse layers; the search compares plans of {}",
                c.describe(),
                opts.reuse_layers
            )));
        }
    }
    let start = Instant::now();
    let blocks = admissible_blocks(n, opts.reuse_layers, opts.min_layer, opts.max_group)?;
    let mut total = 1 + blocks.len() + opts.verify + opts.candidates.len();
    let mut done = 0;
    let dense_nll = score.score(dense)?;
    done += 1;
    progress(done, total);
    let mut costs = BTreeMap::new();
    let mut block_costs = Vec::with_capacity(blocks.len());
    for &(s, e) in &blocks {
        let block = SuperBlockPlan::from_blocks(vec![(s, e)], n)?.with_reuse(opts.reuse);
        let nll = converted_score(dense, &block, data, calib, score)?;
        costs.insert((s, e), nll - dense_nll);
        block_costs.push(BlockCost {
            block: format!("{s}-{}", e - 1),
            lead: s,
            last: e - 1,
            mean_nll: nll,
            delta: nll - dense_nll,
        });
        done += 1;
        progress(done, total);
    }
    let proposed = cheapest_plans(&costs, n, opts.reuse_layers, opts.verify);
    if proposed.is_empty() && opts.candidates.is_empty() {
        return Err(Error::invalid(format!(
            "no plan has {} reuse layers in layers {}..{n} with blocks of at most {}",
            opts.reuse_layers, opts.min_layer, opts.max_group
        )));
    }
    total -= opts.verify - proposed.len();
    let mut plans = Vec::new();
    let mut todo: Vec<(SuperBlockPlan, bool)> = Vec::new();
    for (_, b) in &proposed {
        todo.push((SuperBlockPlan::from_blocks(b.clone(), n)?.with_reuse(opts.reuse), false));
    }
    for c in &opts.candidates {
        if !todo.iter().any(|(p, _)| p.blocks == c.blocks) {
            todo.push((c.clone().with_reuse(opts.reuse), true));
        } else {
            total -= 1;
        }
    }
    for (plan, given) in todo {
        let predicted =
            plan.blocks.iter().map(|b| costs.get(b).copied()).sum::<Option<f64>>().map(|d| dense_nll + d);
        // A single-block plan was measured already.
        let measured = match plan.blocks.as_slice() {
            [b] if costs.contains_key(b) => dense_nll + costs[b],
            _ => converted_score(dense, &plan, data, calib, score)?,
        };
        plans.push(PlanCost { plan: plan.describe(), predicted_nll: predicted, mean_nll: measured, given });
        done += 1;
        progress(done, total);
    }
    plans.sort_by(|a, b| a.mean_nll.total_cmp(&b.mean_nll));
    Ok(SearchReport {
        variant: opts.reuse.name().into(),
        reuse_layers: opts.reuse_layers,
        scored_on: score.describe(),
        dense_nll,
        blocks: block_costs,
        best: plans[0].plan.clone(),
        plans,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate::FitMethod;
    use crate::config::{Family, ModelConfig};
    use crate::eval::perplexity::perplexity_docs;
    use crate::testing::{tiny_config, tiny_model};
    use tch::{Device, Kind};

    /// Every plan of non-overlapping blocks from `costs` with exactly `reuse` reuse layers.
    fn all_plans(costs: &BTreeMap<Block, f64>, from: usize, reuse: usize) -> Vec<(f64, Vec<Block>)> {
        if reuse == 0 {
            return vec![(0.0, vec![])];
        }
        let mut out = Vec::new();
        for (&(s, e), &c) in costs.range((from, 0)..) {
            if e - s - 1 > reuse {
                continue;
            }
            for (rest, mut blocks) in all_plans(costs, e, reuse - (e - s - 1)) {
                blocks.insert(0, (s, e));
                out.push((c + rest, blocks));
            }
        }
        out
    }

    #[test]
    fn cheapest_plans_match_brute_force() {
        let n = 14;
        for (reuse, max_group, seed) in [(1, 4, 1u64), (3, 3, 2), (4, 4, 3), (5, 2, 4), (6, 4, 5)] {
            let mut rng = crate::rng::SplitMix64(seed);
            let costs: BTreeMap<Block, f64> = admissible_blocks(n, reuse, 3, max_group)
                .unwrap()
                .into_iter()
                // Quantised costs, so that ties (broken by the blocks) occur.
                .map(|b| (b, (rng.next_f64() * 8.0).floor() / 4.0))
                .collect();
            let mut want = all_plans(&costs, 0, reuse);
            want.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
            want.truncate(7);
            let got = cheapest_plans(&costs, n, reuse, 7);
            assert_eq!(got.len(), want.len(), "reuse {reuse}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.1, w.1, "reuse {reuse}");
                assert!((g.0 - w.0).abs() < 1e-12);
            }
        }
        // No plan fits: 9 reuse layers in layers 10..14.
        let costs: BTreeMap<Block, f64> =
            admissible_blocks(n, 9, 10, 4).unwrap().into_iter().map(|b| (b, 1.0)).collect();
        assert!(cheapest_plans(&costs, n, 9, 3).is_empty());
    }

    #[test]
    fn admissible_blocks_respect_the_limits() {
        let b = admissible_blocks(8, 2, 5, 4).unwrap();
        assert_eq!(b, vec![(5, 7), (5, 8), (6, 8)]);
        assert!(admissible_blocks(8, 2, 5, 1).unwrap_err().to_string().contains("--max-group"));
        assert!(admissible_blocks(8, 2, 7, 4).unwrap_err().to_string().contains("--min-layer 7"));
    }

    fn docs(seed: u64, count: usize, len: usize, vocab: usize) -> Vec<Vec<u32>> {
        let mut rng = crate::rng::SplitMix64(seed);
        (0..count).map(|_| (0..len).map(|_| (rng.next_f64() * vocab as f64) as u32).collect()).collect()
    }

    /// Over 2 ranks (threads: the calibration chunks and the held-out pieces split between
    /// them, the sums reduced) the search scores every block and plan as one process does.
    #[test]
    fn ranks_share_the_search_and_score_what_one_process_scores() {
        use crate::distributed::zero::threads::ThreadGroup;
        let mut cfg = tiny_config(Family::Llama);
        cfg.num_layers = 6;
        let run = |cfg: ModelConfig, group: Option<&dyn Collective>| {
            let n = cfg.num_layers;
            let dense = tiny_model(&cfg, SuperBlockPlan::dense(n), Kind::Double, 4);
            let (fit, held, val) = (
                docs(1, 6, 24, cfg.vocab_size),
                docs(2, 2, 24, cfg.vocab_size),
                docs(3, 3, 14, cfg.vocab_size),
            );
            let data = SearchData { fit: &fit, fit_heldout: &held, group };
            let calib = CalibOptions {
                method: FitMethod::Streaming { ridge: None },
                chunk_tokens: 48,
                state_device: Device::Cpu,
                pad_id: 0,
            };
            let opts = SearchOptions {
                reuse: ReuseKind::Uniattn,
                reuse_layers: 2,
                min_layer: 2,
                max_group: 2,
                verify: 2,
                candidates: vec![],
            };
            let heldout = HeldOut::new(&dense, &val, 16, 2, group).unwrap();
            search(&dense, &data, &heldout, &calib, &opts, |_, _| {}).unwrap()
        };
        let want = run(cfg.clone(), None);
        let handles: Vec<_> = ThreadGroup::new(2)
            .into_iter()
            .map(|g| {
                let cfg = cfg.clone();
                std::thread::spawn(move || run(cfg, Some(&g)))
            })
            .collect();
        for h in handles {
            let got = h.join().unwrap();
            assert_eq!(got.best, want.best);
            assert!((got.dense_nll - want.dense_nll).abs() < 1e-9);
            let costs = |r: &SearchReport| -> Vec<f64> {
                r.blocks.iter().map(|b| b.mean_nll).chain(r.plans.iter().map(|p| p.mean_nll)).collect()
            };
            for (a, b) in costs(&got).iter().zip(costs(&want)) {
                assert!((a - b).abs() < 1e-9, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn search_measures_every_block_and_the_best_plan_on_a_tiny_model() {
        let mut cfg = tiny_config(Family::Qwen2);
        cfg.num_layers = 8;
        let n = cfg.num_layers;
        let dense = tiny_model(&cfg, SuperBlockPlan::dense(n), Kind::Double, 7);
        let (fit, held, val) =
            (docs(1, 6, 24, cfg.vocab_size), docs(2, 2, 24, cfg.vocab_size), docs(3, 3, 14, cfg.vocab_size));
        let data = SearchData { fit: &fit, fit_heldout: &held, group: None };
        let calib = CalibOptions {
            method: FitMethod::Streaming { ridge: None },
            chunk_tokens: 256,
            state_device: Device::Cpu,
            pad_id: 0,
        };
        // A given 3-layer block, larger than the search's own (--max-group 2), so never scored alone.
        let given = SuperBlockPlan::from_blocks(vec![(2, 5)], n).unwrap();
        let opts = SearchOptions {
            reuse: ReuseKind::Uniattn,
            reuse_layers: 2,
            min_layer: 2,
            max_group: 2,
            verify: 3,
            candidates: vec![given],
        };
        assert_eq!(opts.lowest_lead(), 2);
        // Held-out streams cached below layer 2: the scores must still be those of whole models.
        let heldout = HeldOut::new(&dense, &val, 16, 2, None).unwrap();
        let ids = tch::Tensor::from_slice(&[3i64, 1, 4, 1, 5]).unsqueeze(0);
        let before = dense.forward(&ids);
        let mut calls = Vec::new();
        let r = search(&dense, &data, &heldout, &calib, &opts, |d, t| calls.push((d, t))).unwrap();
        assert!(r.scored_on.contains("3 held-out pieces, 42 tokens"), "{}", r.scored_on);
        // The dense model is untouched by the conversions that shared its tensors.
        assert_eq!((dense.forward(&ids) - &before).abs().max().double_value(&[]), 0.0);
        let blocks = admissible_blocks(n, 2, 2, 2).unwrap();
        assert_eq!(r.blocks.len(), blocks.len());
        // Each block's score is that of an independent conversion of a fresh copy.
        for (b, &(s, e)) in r.blocks.iter().zip(&blocks) {
            let fresh = tiny_model(&cfg, SuperBlockPlan::dense(n), Kind::Double, 7);
            let plan = SuperBlockPlan::from_blocks(vec![(s, e)], n).unwrap();
            let (wc, _) = calibrate(&fresh, &plan, &fit, &held, &calib, None, |_, _| {}).unwrap();
            let conv = fresh.apply_plan(plan, wc).unwrap();
            let want = perplexity_docs(&conv, &val, 0, 16, 16, |_, _| {}).unwrap().mean_nll;
            assert!((b.mean_nll - want).abs() < 1e-9, "{}: {} vs {want}", b.block, b.mean_nll);
            assert!((b.delta - (b.mean_nll - r.dense_nll)).abs() < 1e-12);
        }
        // Measured plans: the 3 cheapest predictions plus the given one, sorted, each with 2 reuse
        // layers; the best is first and the given plan carries no prediction (2-4 was not scored).
        assert_eq!(r.plans.len(), 4);
        assert!(r.plans.windows(2).all(|w| w[0].mean_nll <= w[1].mean_nll));
        assert_eq!(r.best, r.plans[0].plan);
        let g = r.plans.iter().find(|p| p.given).unwrap();
        assert_eq!((g.plan.as_str(), g.predicted_nll), ("2-4", None));
        for p in r.plans.iter().filter(|p| !p.given) {
            let plan = SuperBlockPlan::parse_blocks(&p.plan, n).unwrap();
            assert_eq!(plan.reuse_layers().len(), 2);
            let whole = HeldOut::new(&dense, &val, 16, 0, None).unwrap();
            let want = converted_score(&dense, &plan, &data, &calib, &whole).unwrap();
            assert!((p.mean_nll - want).abs() < 1e-9, "{}", p.plan);
        }
        assert_eq!(calls.last().copied(), Some((1 + blocks.len() + 4, 1 + blocks.len() + 4)));
        let (first, grid) = r.block_grid(n);
        assert_eq!((first, grid.len()), (2, n - 2));
        let b = &r.blocks[0];
        assert_eq!(grid[b.lead - 2][b.last - 2], b.delta);
        assert_eq!(grid.iter().flatten().filter(|v| !v.is_nan()).count(), r.blocks.len());
    }

    /// Softmax-only, CLA, layer drop and KV-head merging are scored after their own conversion
    /// (nothing to fit, no calibration data): every block's score is that of the plan of that
    /// kind applied alone.
    #[test]
    fn each_reuse_kind_is_scored_as_it_converts() {
        let mut cfg = tiny_config(Family::Llama);
        cfg.num_layers = 6;
        let n = cfg.num_layers;
        let dense = tiny_model(&cfg, SuperBlockPlan::dense(n), Kind::Double, 9);
        let val = docs(4, 3, 14, cfg.vocab_size);
        let data = SearchData { fit: &[], fit_heldout: &[], group: None };
        let calib =
            CalibOptions { method: FitMethod::Zero, chunk_tokens: 256, state_device: Device::Cpu, pad_id: 0 };
        let heldout = HeldOut::new(&dense, &val, 16, 1, None).unwrap();
        let mut first_block = Vec::new();
        for kind in [ReuseKind::SoftmaxOnly, ReuseKind::Cla, ReuseKind::Layerdrop, ReuseKind::KvHeads] {
            let opts = SearchOptions {
                reuse: kind,
                reuse_layers: 2,
                min_layer: 1,
                max_group: 3,
                verify: 2,
                candidates: vec![SuperBlockPlan::from_blocks(vec![(1, 4)], n).unwrap()],
            };
            let r = search(&dense, &data, &heldout, &calib, &opts, |_, _| {}).unwrap();
            assert_eq!(r.variant, kind.name());
            for b in &r.blocks {
                let plan =
                    SuperBlockPlan::from_blocks(vec![(b.lead, b.last + 1)], n).unwrap().with_reuse(kind);
                let conv = dense.share().unwrap().apply_plan(plan, BTreeMap::new()).unwrap();
                let want = perplexity_docs(&conv, &val, 0, 16, 16, |_, _| {}).unwrap().mean_nll;
                assert!((b.mean_nll - want).abs() < 1e-9, "{kind:?} {}: {} vs {want}", b.block, b.mean_nll);
            }
            for p in &r.plans {
                assert_eq!(SuperBlockPlan::parse_blocks(&p.plan, n).unwrap().reuse_layers().len(), 2);
            }
            first_block.push(r.blocks[0].mean_nll);
        }
        // The kinds change the model differently.
        for (i, a) in first_block.iter().enumerate() {
            assert!(first_block[i + 1..].iter().all(|b| b != a), "{first_block:?}");
        }
    }

    #[test]
    fn search_refuses_what_it_cannot_do() {
        let cfg = tiny_config(Family::Llama);
        let n = cfg.num_layers;
        let val = docs(3, 2, 10, cfg.vocab_size);
        let data = SearchData { fit: &val, fit_heldout: &[], group: None };
        let calib =
            CalibOptions { method: FitMethod::Zero, chunk_tokens: 256, state_device: Device::Cpu, pad_id: 0 };
        let opts = SearchOptions {
            reuse: ReuseKind::Uniattn,
            reuse_layers: 1,
            min_layer: 0,
            max_group: 2,
            verify: 2,
            candidates: vec![],
        };
        let dense = tiny_model(&cfg, SuperBlockPlan::dense(n), Kind::Float, 1);
        let heldout = HeldOut::new(&dense, &val, 16, 0, None).unwrap();
        let planned = tiny_model(&cfg, SuperBlockPlan::from_blocks(vec![(0, 2)], n).unwrap(), Kind::Float, 1);
        let err = search(&planned, &data, &heldout, &calib, &opts, |_, _| {}).unwrap_err().to_string();
        assert!(err.contains("dense model"), "{err}");
        let err = HeldOut::new(&dense, &[vec![1u32]], 16, 0, None).err().unwrap().to_string();
        assert!(err.contains("held-out document"), "{err}");
        // Streams cached through layer 0 cannot score a plan that changes layer 0.
        let cached = HeldOut::new(&dense, &val, 16, 1, None).unwrap();
        let err = search(&dense, &data, &cached, &calib, &opts, |_, _| {}).unwrap_err().to_string();
        assert!(err.contains("start at layer 0") && err.contains("layers 0-0"), "{err}");
        let too_many = SearchOptions { reuse_layers: n, ..opts.clone() };
        let err = search(&dense, &data, &heldout, &calib, &too_many, |_, _| {}).unwrap_err().to_string();
        assert!(err.contains("no plan has"), "{err}");
        let wrong = SearchOptions { candidates: vec![SuperBlockPlan::dense(n + 2)], ..opts.clone() };
        let err = search(&dense, &data, &heldout, &calib, &wrong, |_, _| {}).unwrap_err().to_string();
        assert!(err.contains("--candidate"), "{err}");
        let wrong =
            SearchOptions { candidates: vec![SuperBlockPlan::from_blocks(vec![(0, 3)], n).unwrap()], ..opts };
        let err = search(&dense, &data, &heldout, &calib, &wrong, |_, _| {}).unwrap_err().to_string();
        assert!(err.contains("0-2") && err.contains("2 reuse layers"), "{err}");
    }
}
