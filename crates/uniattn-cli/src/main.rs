//! `uniattn`: the command line. Parses arguments and calls the library; nothing else lives here.
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use uniattn::generate::{generate, SamplingParams};
use uniattn::loader;
use uniattn::runtime;
use uniattn::tokenizer::ChatMessage;

#[derive(Parser)]
#[command(name = "uniattn", version, about = "UniAttn: softmax unification for post-trained LLMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct DeviceArgs {
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    /// Compute precision: f32, bf16 or f16
    #[arg(long, default_value = "f32")]
    dtype: String,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a GGUF file into a Hugging Face folder (safetensors, config.json, tokenizer).
    Import {
        gguf: PathBuf,
        out: PathBuf,
        /// Stored precision: f32 or bf16
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Describe a model: family, sizes, plan, parameters.
    Info { model: PathBuf },
    /// Generate text from a prompt.
    Generate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        /// Send the prompt as is, without the chat template.
        #[arg(long)]
        raw: bool,
        #[arg(long)]
        system: Option<String>,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// 0 = greedy
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        dev: DeviceArgs,
    },
    /// Evaluate a model.
    Eval {
        #[command(subcommand)]
        what: EvalCommand,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Perplexity of a text file (sliding window).
    Ppl {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        text: PathBuf,
        /// Score only the first N tokens (BOS included where the model adds one).
        #[arg(long)]
        max_tokens: Option<usize>,
        /// Tokens per forward pass.
        #[arg(long, default_value_t = 1024)]
        window: usize,
        /// How far the window advances; at most --window.
        #[arg(long)]
        stride: Option<usize>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dev: DeviceArgs,
    },
}

fn setup(dev: &DeviceArgs) -> Result<(tch::Device, tch::Kind)> {
    let info = runtime::init()?;
    eprintln!("{info}");
    Ok((runtime::parse_device(&dev.device)?, runtime::parse_dtype(&dev.dtype)?))
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!("{what} {{bar:30}} {{pos}}/{{len}} {{per_sec}} ETA {{eta}}"))
            .expect("valid template"),
    );
    pb
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Import { gguf, out, dtype } => {
            runtime::init()?;
            let kind = runtime::parse_dtype(&dtype)?;
            let m = loader::load(&gguf, tch::Kind::Float, tch::Device::Cpu)?;
            loader::save_folder(&m.model, &m.tokenizer, &out, kind, None)?;
            println!("wrote {} ({} parameters, {dtype})", out.display(), m.model.num_parameters());
        }
        Command::Info { model } => {
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
            }
        }
        Command::Generate {
            model,
            prompt,
            raw,
            system,
            max_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            dev,
        } => {
            let (device, kind) = setup(&dev)?;
            let m = loader::load(&model, kind, device)?;
            let text = if raw || m.tokenizer.chat_template.is_none() {
                prompt
            } else {
                let mut msgs = Vec::new();
                if let Some(s) = system {
                    msgs.push(ChatMessage { role: "system".into(), content: s });
                }
                msgs.push(ChatMessage { role: "user".into(), content: prompt });
                m.tokenizer.apply_chat_template(&msgs, true)?
            };
            let ids = m.tokenizer.encode(&text, true)?;
            let params = SamplingParams { temperature, top_p, top_k, max_new_tokens: max_tokens, seed };
            let g = generate(&m.model, &ids, &params, &m.tokenizer.eos_ids, |_| {});
            println!("{}", m.tokenizer.decode(&g.tokens)?);
            eprintln!(
                "prompt {} tokens, prefill {:.1} tok/s; generated {} tokens, decode {:.1} tok/s",
                g.prompt_tokens,
                g.prompt_tokens as f64 / g.prefill_seconds.max(1e-9),
                g.tokens.len(),
                g.tokens.len() as f64 / g.decode_seconds.max(1e-9)
            );
        }
        Command::Eval { what: EvalCommand::Ppl { model, text, max_tokens, window, stride, json, dev } } => {
            let stride = stride.unwrap_or(window / 2);
            if stride == 0 || stride > window || window < 2 {
                bail!("--stride must be between 1 and --window ({window}), and --window at least 2");
            }
            let (device, kind) = setup(&dev)?;
            let m = loader::load(&model, kind, device)?;
            let body =
                std::fs::read_to_string(&text).with_context(|| format!("reading {}", text.display()))?;
            let mut ids = m.tokenizer.encode(&body, true)?;
            if let Some(n) = max_tokens {
                ids.truncate(n);
            }
            if ids.len() < 2 {
                bail!("{}: fewer than 2 tokens to score", text.display());
            }
            let pb = bar(ids.len() as u64, "ppl");
            let r = uniattn::eval::perplexity::perplexity(&m.model, &ids, window, stride, |done, _| {
                pb.set_position(done as u64)
            });
            pb.finish_and_clear();
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("device       {}", runtime::device_name(device));
                println!("tokens       {} ({} predicted)", r.tokens, r.predicted);
                println!("mean NLL     {:.5}", r.mean_nll);
                println!("perplexity   {:.4}", r.perplexity);
                println!("tokens/s     {:.1}", r.tokens_per_second);
            }
        }
    }
    Ok(())
}
