//! Importing a GGUF file and describing a model.
use crate::args::*;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use uniattn::loader;
use uniattn::runtime;

#[derive(Args)]
#[command(after_help = "Example:\n  uniattn import smollm2 out/smollm2 --dtype bf16")]
pub struct ImportArgs {
    /// The GGUF file (or a fetched model's short name, e.g. smollm2)
    pub gguf: PathBuf,
    /// The Hugging Face folder to write
    pub out: PathBuf,
    /// Stored precision
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// Replace a non-empty OUT
    #[arg(long)]
    pub overwrite: bool,
}

pub fn import(ImportArgs { gguf, out, dtype, overwrite }: ImportArgs) -> Result<()> {
    runtime::init()?;
    let kind = dtype.kind();
    let source = uniattn::cache::resolve_model(&gguf)?;
    let staged = uniattn::fs::OutputDir::prepare(&out, overwrite, &[&source])?;
    let m = loader::load(&source, tch::Kind::Float, tch::Device::Cpu)?;
    loader::save_folder(&m.model, &m.tokenizer, staged.path(), kind, None, &[])?;
    staged.commit()?;
    println!("wrote {} ({} parameters, {dtype})", out.display(), m.model.num_parameters());
    Ok(())
}

#[derive(Args)]
#[command(after_help = "Example:\n  uniattn info smollm2")]
pub struct InfoArgs {
    /// A GGUF file, a model folder or a fetched model's short name
    pub model: PathBuf,
    #[command(flatten)]
    pub json: JsonArgs,
}

pub fn info(InfoArgs { model, json }: InfoArgs) -> Result<()> {
    runtime::init()?;
    let report = loader::ModelReport::of(&model)?;
    json.emit(&report, || report.table())
}
