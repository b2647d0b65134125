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
}

pub fn info(InfoArgs { model }: InfoArgs) -> Result<()> {
    runtime::init()?;
    let parts = loader::read_parts(&model)?;
    let c = &parts.cfg;
    println!("model        {}", model.display());
    println!("family       {:?}", c.family);
    println!("layers       {}", c.num_layers);
    println!("hidden       {}", c.hidden_size);
    println!("heads        {} query, {} KV, head dim {}", c.num_heads, c.num_kv_heads, c.head_dim);
    println!("vocab        {}", c.vocab_size);
    let params: usize = parts.weights.tensors.values().map(|t| t.numel()).sum();
    println!("parameters   {params}");
    println!("plan         {}", parts.plan.describe());
    if !parts.plan.is_dense() {
        println!("reuse layers {:?}", parts.plan.reuse_layers());
        print_savings(c, &parts.plan);
    }
    Ok(())
}
