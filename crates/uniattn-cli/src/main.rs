//! `uniattn`: the command line. Parses arguments and calls the library; nothing else lives here.
mod args;
mod commands;
mod config_file;
mod progress;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use commands::{bench, convert, eval, generate, medmcqa, model, plot, search_plan, serve, train};
use std::ffi::OsString;

#[derive(Parser)]
#[command(
    name = "uniattn",
    version,
    about = "UniAttn: softmax unification for post-trained LLMs",
    after_help = "Exit status: 0 done; 1 an error (the message on stderr names what and where); 2 a usage \
                  error; 3 the device ran out of memory (the same message, with what to lower)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a GGUF file into a Hugging Face folder (safetensors, config.json, tokenizer).
    Import(model::ImportArgs),
    /// Describe a model: family, sizes, plan, parameters.
    Info(model::InfoArgs),
    /// Generate text for one or more prompts (batched through the engine; one prompt streams).
    Generate(generate::GenerateArgs),
    /// Talk to a model interactively (chat template, streaming). /reset clears, /exit quits.
    Chat(generate::ChatArgs),
    /// Split MedMCQA (eval package) into held-out questions and Alpaca training rows.
    MedmcqaSplit(medmcqa::MedmcqaSplitArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (Ctrl-C finishes requests in flight).
    Serve(serve::ServeArgs),
    /// Load-test a running server: concurrent clients, each sending requests one after another.
    Loadtest(serve::LoadtestArgs),
    /// Measure TTFT, prefill and decode throughput, KV-cache size and achieved bandwidth for a
    /// grid of batch sizes and contexts; several models run in one process and are compared.
    Bench(bench::BenchArgs),
    /// Apply a SuperBlock plan and fit W_c in closed form; writes a UniAttn model folder.
    Convert(convert::ConvertArgs),
    /// Measure cross-layer similarity of softmax maps, draw a heatmap, propose a plan.
    Analyze(convert::AnalyzeArgs),
    /// Choose a plan by held-out loss after conversion: score every block alone, then convert
    /// and score the cheapest predicted plans whole; writes plan_search.json and block_cost.png.
    SearchPlan(Box<search_plan::SearchPlanArgs>),
    /// Post-train: dense, UniAttn (two stages), or a baseline at the same plan.
    Train(Box<train::TrainArgs>),
    /// Draw a chart (lines, scatter, grouped bars, heatmap) described as JSON, as PNG or SVG.
    Plot(plot::PlotArgs),
    /// Evaluate a model.
    Eval {
        #[command(subcommand)]
        what: eval::EvalCommand,
    },
}

/// Where the last panic happened, recorded by the hook that replaces the default report.
static PANIC_AT: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn main() {
    // libtorch failures inside tch's infallible calls (CUDA out of memory above all) arrive as
    // panics: report them as errors, with what to change, instead of a backtrace.
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut at) = PANIC_AT.lock() {
            *at = info.location().map(|l| l.to_string()).unwrap_or_default();
        }
    }));
    let message = match std::panic::catch_unwind(|| run(std::env::args_os().collect())) {
        Ok(Ok(())) => return,
        Ok(Err(e)) => format!("{e:#}"),
        Err(payload) => {
            let what = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            let at = PANIC_AT.lock().map(|a| a.clone()).unwrap_or_default();
            format!("{what} (at {at})")
        }
    };
    eprintln!("error: {message}");
    let status = exit_status(&message);
    if status == EXIT_OUT_OF_MEMORY {
        eprintln!(
            "hint: the device ran out of memory; lower --micro-batch or add --recompute-layers (train), \
             lower --batch-tokens (eval mc) or --batch/--context (bench), or stop other jobs on the device"
        );
    }
    std::process::exit(status);
}

/// The exit status of a failed command whose memory ran out: what a driver retrying with less
/// (or after other jobs finish) tests (`scripts/experiment_medical.sh`), not the message's text.
const EXIT_OUT_OF_MEMORY: i32 = 3;

/// 3 when `message` is an allocation failure (CUDA's "out of memory"; libtorch's CPU allocator
/// says "can't allocate memory", older releases "not enough memory"), else 1.
fn exit_status(message: &str) -> i32 {
    let allocation = ["out of memory", "can't allocate memory", "not enough memory"];
    if allocation.iter().any(|a| message.contains(a)) {
        EXIT_OUT_OF_MEMORY
    } else {
        1
    }
}

fn run(args: Vec<OsString>) -> Result<()> {
    let command = Cli::command();
    let matches = command.clone().get_matches_from(config_file::splice(args, &command)?);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Import(a) => model::import(a),
        Command::Info(a) => model::info(a),
        Command::Generate(a) => generate::generate(a),
        Command::Chat(a) => generate::chat(a),
        Command::MedmcqaSplit(a) => medmcqa::medmcqa_split(a),
        Command::Serve(a) => serve::serve(a),
        Command::Loadtest(a) => serve::loadtest(a),
        Command::Bench(a) => bench::bench(a),
        Command::Convert(a) => convert::convert(a),
        Command::Analyze(a) => convert::analyze(a),
        Command::SearchPlan(a) => search_plan::search_plan(*a),
        Command::Train(a) => {
            let sub = command.find_subcommand("train").expect("train is a subcommand");
            let used = matches.subcommand_matches("train").expect("train was parsed");
            train::train(*a, config_file::resolved(sub, used))
        }
        Command::Plot(a) => plot::plot(a),
        Command::Eval { what: eval::EvalCommand::Mc(a) } => eval::mc(a),
        Command::Eval { what: eval::EvalCommand::Ppl(a) } => eval::ppl(a),
    }
}

#[cfg(test)]
mod tests {
    use super::{exit_status, Cli, EXIT_OUT_OF_MEMORY};
    use clap::CommandFactory;

    /// Running out of memory exits 3 whichever allocator says so: libtorch's CPU allocator's own
    /// message (asked for more than any machine has) and CUDA's (its format, as libtorch words
    /// it); any other failure 1.
    #[test]
    fn out_of_memory_has_its_own_exit_status() {
        let cpu = tch::Tensor::f_empty([1i64 << 60], (tch::Kind::Float, tch::Device::Cpu))
            .expect_err("no machine holds 4 EiB");
        assert_eq!(exit_status(&format!("{cpu:#}")), EXIT_OUT_OF_MEMORY, "{cpu:#}");
        let cuda = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.81 GiB";
        assert_eq!(exit_status(cuda), EXIT_OUT_OF_MEMORY);
        assert_eq!(exit_status("model/config.json: missing field `hidden_size`"), 1);
    }

    /// Every option says what it is, and every command's help ends with an example.
    #[test]
    fn every_option_has_help_and_every_command_an_example() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if a.get_help().is_none() && a.get_long_help().is_none() && !builtin {
                    missing.push(format!("{path} --{}", a.get_id()));
                }
            }
            let leaf = c.get_subcommands().next().is_none();
            if leaf && !c.get_after_help().is_some_and(|h| h.to_string().contains("uniattn ")) {
                missing.push(format!("{path}: no example"));
            }
            for s in c.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "uniattn", &mut missing);
        assert!(missing.is_empty(), "{} without help:\n{}", missing.len(), missing.join("\n"));
    }
}
