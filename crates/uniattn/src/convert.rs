//! `convert`: apply a SuperBlock plan to a model as one reuse kind (UniAttn's `W_c` fitted in
//! closed form; the baselines have nothing to fit), then write the model folder (UniAttn's
//! `v2_proj` weights, `uniattn.json` with the plan and the fit report).
use crate::calibrate::{calibrate, CalibOptions, CalibReport};
use crate::data;
use crate::error::{Error, Result};
use crate::loader::{self, read_parts};
use crate::model::names;
use crate::model::Transformer;
use crate::plan::{ReuseKind, SuperBlockPlan};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// A plan as the user wrote it, resolved once the layer count is known.
#[derive(Debug, Clone)]
pub enum PlanSpec {
    /// `g:begin:end`
    Grouped(String),
    /// `16-19,20-23`
    Blocks(String),
}

impl PlanSpec {
    pub fn resolve(&self, num_layers: usize) -> Result<SuperBlockPlan> {
        match self {
            PlanSpec::Grouped(s) => SuperBlockPlan::parse_grouped(s, num_layers),
            PlanSpec::Blocks(s) => SuperBlockPlan::parse_blocks(s, num_layers),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CalibData {
    pub path: PathBuf,
    /// Rows (or paragraphs) used; all when `None`.
    pub rows: Option<Range<usize>>,
    /// Fraction of those rows held out to choose the ridge strength.
    pub heldout_fraction: f64,
    /// Tokens per sequence at most.
    pub max_len: usize,
}

/// Token sequences, one per row.
pub type Sequences = Vec<Vec<u32>>;

/// Tokenized calibration sequences: (fit, held-out).
pub fn calibration_sequences(
    tok: &crate::tokenizer::Tokenizer,
    data: &CalibData,
) -> Result<(Sequences, Sequences)> {
    let texts = data::read_texts(&data.path)?;
    let texts = match &data.rows {
        Some(r) => data::select(&texts, r, &data.path)?,
        None => texts,
    };
    let mut seqs = Vec::with_capacity(texts.len());
    for t in &texts {
        let mut ids = tok.encode(t, true)?;
        ids.truncate(data.max_len);
        if ids.len() >= 2 {
            seqs.push(ids);
        }
    }
    if !(0.0..1.0).contains(&data.heldout_fraction) {
        return Err(Error::invalid(format!("held-out fraction {} must be in [0, 1)", data.heldout_fraction)));
    }
    let n_held = (seqs.len() as f64 * data.heldout_fraction).round() as usize;
    let held = seqs.split_off(seqs.len() - n_held);
    if seqs.is_empty() {
        return Err(Error::format(&data.path, "no calibration sequences of at least 2 tokens"));
    }
    Ok((seqs, held))
}

pub struct ConvertOutput {
    pub model: Transformer,
    pub tokenizer: crate::tokenizer::Tokenizer,
    /// The fit of `W_c` (UniAttn); `None` for the reuse kinds without one.
    pub report: Option<CalibReport>,
}

/// Loads `model_path` on `device` in `kind`, applies `plan` as `reuse` converts a model (for
/// UniAttn with `W_c` fitted on `data`; softmax-only, CLA, layer drop and KV-head merging need
/// no data) and returns it, untrained. Q/K weights of reuse layers are returned separately in
/// `kept_qk` when asked for. Over a `group` of ranks the calibration's chunks are split over
/// them (see [`calibrate`]); every rank returns the same model.
#[allow(clippy::too_many_arguments)]
pub fn convert(
    model_path: &Path,
    plan: &PlanSpec,
    reuse: ReuseKind,
    data: Option<&CalibData>,
    opts: &CalibOptions,
    kind: Kind,
    device: Device,
    group: Option<&dyn crate::distributed::zero::Collective>,
    progress: impl FnMut(usize, usize),
) -> Result<(ConvertOutput, Vec<(String, tch::Tensor)>)> {
    let parts = read_parts(model_path)?;
    let plan = plan.resolve(parts.cfg.num_layers)?.with_reuse(reuse);
    if plan.is_dense() {
        return Err(Error::invalid("the plan has no reuse layers; nothing to convert"));
    }
    let tokenizer = parts.tokenizer;
    let dense = Transformer::from_weights(parts.weights, parts.cfg, parts.plan, kind, device, false)?;
    let (wc, report) = if reuse.spec().compensation {
        let data = data.ok_or_else(|| {
            Error::invalid(format!(
                "{}'s W_c is fitted on calibration rows: give calibration data",
                reuse.name()
            ))
        })?;
        let (fit, held) = calibration_sequences(&tokenizer, data)?;
        let (wc, report) = calibrate(&dense, &plan, &fit, &held, opts, group, progress)?;
        (wc, Some(report))
    } else {
        (BTreeMap::new(), None)
    };
    // The dense weights the reuse layers drop (the reference code's checkpoints keep them).
    let drops = reuse.spec().drops;
    let gemma = dense.stem.cfg.family.is_gemma();
    let dropped: std::collections::BTreeSet<String> = plan
        .reuse_layers()
        .iter()
        .flat_map(|&l| {
            drops.iter().flat_map(move |&m| [names::weight(l, m, gemma), names::bias(l, m, gemma)])
        })
        .collect();
    let kept: Vec<(String, tch::Tensor)> =
        dense.named_tensors().into_iter().filter(|(n, _)| dropped.contains(n)).collect();
    let model = dense.apply_plan(plan, wc)?;
    Ok((ConvertOutput { model, tokenizer, report }, kept))
}

/// Writes the converted model; `keep_qk` adds the reuse layers' original Q/K weights, which
/// the reference code's checkpoints carry (our loader ignores them).
pub fn save(
    out: &ConvertOutput,
    dir: &Path,
    kind: Kind,
    kept_qk: Option<&[(String, tch::Tensor)]>,
) -> Result<()> {
    let info = serde_json::json!({ "calibration": out.report });
    loader::save_folder(&out.model, &out.tokenizer, dir, kind, Some(info), kept_qk.unwrap_or(&[]))
}
