//! Applying a plan (closed-form W_c) and analysing softmax similarity to propose one.
use crate::args::*;
use crate::progress;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use uniattn::calibrate::{CalibOptions, FitMethod};
use uniattn::convert::PlanSpec;
use uniattn::loader;
use uniattn::runtime;
use uniattn::train::job::Variant;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  uniattn convert smollm2 --plan-blocks 15-18,20-22 --calib data/pmc_llama_instructions_1000.json --out runs/smol-uni\n  uniattn convert smollm2 --variant cla --plan-blocks 24-26 --out runs/smol-cla"
)]
pub struct ConvertArgs {
    /// The dense model: a GGUF file, a folder or a fetched model's short name
    pub model: PathBuf,
    /// How the plan's reuse layers change: uniattn fits W_c on --calib; the others (the
    /// baselines `train` post-trains) have nothing to fit
    #[arg(long, value_enum, default_value_t = VariantArg::Uniattn)]
    pub variant: VariantArg,
    /// The paper's g:begin:end, e.g. 4:16:33 (end clipped to the layer count)
    #[arg(long, conflicts_with = "plan_blocks", required_unless_present = "plan_blocks")]
    pub plan: Option<String>,
    /// Explicit blocks, first-last inclusive, e.g. 16-19,20-23
    #[arg(long)]
    pub plan_blocks: Option<String>,
    #[command(flatten)]
    pub calib: CalibArgs,
    /// How W_c is fitted (uniattn)
    #[arg(long, value_enum, default_value_t = Fit::Ours)]
    pub fit: Fit,
    /// Fixed relative ridge strength instead of choosing it on held-out rows
    #[arg(long)]
    pub ridge: Option<f64>,
    /// Padded length of the reference fit
    #[arg(long, default_value_t = 1024)]
    pub ref_len: usize,
    /// Keep residual streams between layers in host memory instead of on the GPU
    #[arg(long)]
    pub states_on_cpu: bool,
    /// Also write the reuse layers' original Q/K weights (reference-code checkpoints have them)
    #[arg(long)]
    pub keep_qk: bool,
    /// The new model folder (written whole, then moved into place)
    #[arg(long)]
    pub out: PathBuf,
    /// Replace a non-empty --out
    #[arg(long)]
    pub overwrite: bool,
    /// Stored precision
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub save_dtype: Dtype,
    #[command(flatten)]
    pub json: JsonArgs,
    #[command(flatten)]
    pub dev: DeviceArgs,
    #[command(flatten)]
    pub ranks: RankArgs,
}

pub fn convert(
    ConvertArgs {
        model,
        variant,
        plan,
        plan_blocks,
        calib,
        fit,
        ridge,
        ref_len,
        states_on_cpu,
        keep_qk,
        out,
        overwrite,
        save_dtype,
        json,
        dev,
        ranks,
    }: ConvertArgs,
) -> Result<()> {
    let Variant::Reuse(reuse) = variant.variant() else {
        bail!("--variant dense: a dense model is what convert starts from; give uniattn, softmax-only, cla, layerdrop or kv-heads");
    };
    let Some(world) = ranks.world()? else { return Ok(()) };
    let leader = world.is_leader();
    let source = uniattn::cache::resolve_model(&model)?;
    let staged = leader.then(|| uniattn::fs::OutputDir::prepare(&out, overwrite, &[&source])).transpose()?;
    let (device, kind) = setup(&dev)?;
    // Each rank calibrates on its machine's GPU `LOCAL_RANK`.
    let device =
        if world.size > 1 && device.is_cuda() { tch::Device::Cuda(world.local_rank) } else { device };
    let save_kind = save_dtype.kind();
    let spec = match (plan, plan_blocks) {
        (Some(p), _) => PlanSpec::Grouped(p),
        (None, Some(b)) => PlanSpec::Blocks(b),
        (None, None) => bail!("give --plan or --plan-blocks"),
    };
    let method = match fit {
        Fit::Ours => FitMethod::Streaming { ridge },
        Fit::Reference => FitMethod::Reference { len: ref_len },
        Fit::None => FitMethod::Zero,
    };
    let fits = reuse.spec().compensation;
    let data = fits.then(|| calib.data(matches!(method, FitMethod::Streaming { .. }))).transpose()?;
    let opts = CalibOptions {
        method,
        chunk_tokens: calib.chunk_tokens,
        state_device: if states_on_cpu { tch::Device::Cpu } else { device },
        pad_id: 0,
    };
    // What must match on every rank.
    let job = format!("{:?} {spec:?} {reuse:?} {data:?} {:?} {kind:?} {states_on_cpu}", source, opts.method);
    let (comm, watch) = uniattn::distributed::join_ranks(&world, device, &job, ranks.hang_timeout())?.unzip();
    let group = comm.as_ref().map(|c| c as &dyn uniattn::distributed::zero::Collective);
    let pb = progress::leader_bar(leader && fits, "calibrating");
    let (conv, kept) = uniattn::convert::convert(
        &model,
        &spec,
        reuse,
        data.as_ref(),
        &opts,
        kind,
        device,
        group,
        progress::counter(&pb),
    )?;
    pb.finish_and_clear();
    if let Some(w) = &watch {
        w.finish();
    }
    let Some(staged) = staged else { return Ok(()) };
    uniattn::convert::save(&conv, staged.path(), save_kind, keep_qk.then_some(kept.as_slice()))?;
    staged.commit()?;
    let r = &conv.report;
    let savings = uniattn::savings::plan_savings(&conv.model.stem.cfg, &conv.model.stem.plan, 2);
    let report = serde_json::json!({
        "plan": conv.model.stem.plan.describe(),
        "variant": reuse.name(),
        "device": runtime::device_name(device),
        "calibration": r,
        "savings": savings,
        "out": out,
    });
    json.emit(&report, || {
        let mut t = format!("plan         {} ({})\n", conv.model.stem.plan.describe(), reuse.name());
        if let Some(r) = r {
            t += &format!(
                "fit          {}\ntokens       {} fit, {} held out\ntime         {:.1} s on {}\n\
                 layer  lead  ridge      held-out rel. err  fit rel. err\n",
                r.method,
                r.fit_tokens,
                r.heldout_tokens,
                r.seconds,
                runtime::device_name(device)
            );
            for f in &r.layers {
                t += &format!(
                    "{:>5}  {:>4}  {:>9}  {:>17}  {:>12.4}\n",
                    f.layer,
                    f.lead,
                    f.alpha.map_or("pinv".into(), |a| format!("{a:.0e}")),
                    f.heldout_rel_err.map_or("-".into(), |e| format!("{e:.4}")),
                    f.fit_rel_err
                );
            }
        }
        format!("{t}{}\nwrote        {}", savings.table(), out.display())
    })
}

#[derive(Args)]
#[command(
    after_help = "Example:\n  uniattn analyze smollm2 --data data/pmc_llama_instructions_1000.json --reuse-layers 10 --out runs/analysis"
)]
pub struct AnalyzeArgs {
    /// The dense model: a GGUF file, a folder or a fetched model's short name
    pub model: PathBuf,
    /// Sample data: JSON/JSONL instruction rows or a plain text file
    #[arg(long)]
    pub data: PathBuf,
    /// Rows (or paragraphs) to use, e.g. 0..16
    #[arg(long, default_value = "0..16")]
    pub rows: String,
    /// Tokens per sample at most
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    #[command(flatten)]
    pub shape: PlanShapeArgs,
    /// Folder for similarity.json and similarity.png
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn analyze(AnalyzeArgs { model, data, rows, max_len, shape, out, dev }: AnalyzeArgs) -> Result<()> {
    let (device, kind) = setup(&dev)?;
    let m = loader::load(&model, kind, device)?;
    let texts = uniattn::data::read_texts(&data)?;
    let texts = uniattn::data::select(&texts, &uniattn::data::parse_range(&rows)?, &data)?;
    let seqs = texts
        .iter()
        .map(|t| {
            m.tokenizer.encode(t, true).map(|mut ids| {
                ids.truncate(max_len);
                ids
            })
        })
        .collect::<uniattn::Result<Vec<_>>>()?;
    let pb = progress::bar(seqs.len() as u64, "analysing");
    let sim = uniattn::analyze::attention_similarity(&m.model, &seqs, |d, _| pb.set_position(d as u64))?;
    pb.finish_and_clear();
    let n = sim.len();
    let (reuse_layers, min_layer, max_group) = (shape.reuse_layers, shape.min_layer(n), shape.max_group);
    let plan = uniattn::analyze::propose_plan(&sim, reuse_layers, min_layer, max_group)?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    uniattn::analyze::similarity_chart(&sim).save(&out.join("similarity.png"))?;
    let report = serde_json::json!({
        "metric": "head-matched cosine similarity of attention rows, mean over heads and query positions",
        "samples": seqs.len(),
        "tokens": seqs.iter().map(Vec::len).sum::<usize>(),
        "similarity": sim,
        "proposed_plan": plan.describe(),
        "reuse_layers": plan.reuse_layers(),
    });
    std::fs::write(out.join("similarity.json"), serde_json::to_string_pretty(&report)?)?;
    println!("similarity of each layer to the next (head-matched cosine of attention rows):");
    for i in 0..n - 1 {
        println!("  {:>2} -> {:>2}  {:.3}", i, i + 1, sim[i][i + 1]);
    }
    println!(
        "proposed plan ({} reuse layers, blocks start at >= {min_layer}, size <= {max_group}):",
        reuse_layers
    );
    for &(s, e) in &plan.blocks {
        let sims: Vec<String> = (s + 1..e).map(|r| format!("{r}:{:.3}", sim[s][r])).collect();
        println!("  lead {s:>2}  reuse {}", sims.join(" "));
    }
    println!("  --plan-blocks {}", plan.describe());
    println!("wrote {} and similarity.json", out.join("similarity.png").display());
    Ok(())
}
