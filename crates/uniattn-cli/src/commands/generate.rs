//! Text generation: one-shot prompts and interactive chat.
use crate::args::*;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use uniattn::engine::{Event, Request};
use uniattn::loader;
use uniattn::tokenizer::ChatMessage;

#[derive(Args)]
#[command(
    after_help = "Example:\n  uniattn generate --model smollm2 --prompt \"What is the capital of France?\""
)]
pub struct GenerateArgs {
    /// A prompt; repeat for a batch
    #[arg(long, required_unless_present = "prompts_file")]
    pub prompt: Vec<String>,
    /// A file with one prompt per line
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    /// Send prompts as they are, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Print one JSON object per prompt as it finishes (index, prompt, text, finish_reason,
    /// prompt_tokens, completion_tokens) instead of the text
    #[arg(long)]
    pub jsonl: bool,
    #[command(flatten)]
    pub run: GenerationArgs,
}

/// One finished prompt, as `generate --jsonl` prints it.
#[derive(serde::Serialize)]
struct Completion<'a> {
    index: usize,
    prompt: &'a str,
    text: &'a str,
    finish_reason: &'a str,
    prompt_tokens: usize,
    completion_tokens: usize,
}

pub fn generate(
    GenerateArgs {
        prompt,
        prompts_file,
        raw,
        jsonl,
        run: GenerationArgs { model, system, sampling, engine, dev },
    }: GenerateArgs,
) -> Result<()> {
    let (device, kind) = setup(&dev)?;
    let mut prompts = prompt;
    if let Some(f) = prompts_file {
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        prompts.extend(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string));
    }
    let mut sched = engine.scheduler(loader::load(&model, kind, device)?)?;
    let tok = Arc::clone(&sched.tokenizer);
    let mut ids = Vec::with_capacity(prompts.len());
    for p in &prompts {
        let text = tok.render_prompt(system.as_deref(), p, raw)?;
        let req =
            Request { prompt: tok.encode(&text, true)?, params: sampling.params(), ..Default::default() };
        ids.push(sched.submit(req)?);
    }
    let stream = prompts.len() == 1 && !jsonl;
    let t0 = std::time::Instant::now();
    let mut tokens = 0;
    let mut out = std::io::stdout().lock();
    sched.run(|e| match e {
        Event::Token { text, .. } => {
            tokens += 1;
            if stream {
                let _ = write!(out, "{text}");
                let _ = out.flush();
            }
        }
        Event::Finished { id, tail, text, reason, prompt_tokens, completion_tokens, .. } => {
            if jsonl {
                let index = ids.iter().position(|i| i == id).expect("a submitted request");
                let c = Completion {
                    index,
                    prompt: &prompts[index],
                    text,
                    finish_reason: reason.as_str(),
                    prompt_tokens: *prompt_tokens,
                    completion_tokens: *completion_tokens,
                };
                let _ = writeln!(out, "{}", serde_json::to_string(&c).expect("a completion serialises"));
            } else if stream {
                let _ = writeln!(out, "{tail}");
            } else {
                let _ = writeln!(out, "--- [{id}] ({})\n{text}", reason.as_str());
            }
        }
        Event::Failed { id, error } => eprintln!("request {id} failed: {error}"),
    });
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{} prompts, {tokens} tokens in {secs:.2} s ({:.1} tok/s)",
        prompts.len(),
        tokens as f64 / secs
    );
    Ok(())
}

#[derive(Args)]
#[command(after_help = "Example:\n  uniattn chat --model smollm2 --system \"You are concise.\"")]
pub struct ChatArgs {
    #[command(flatten)]
    pub run: GenerationArgs,
}

pub fn chat(
    ChatArgs { run: GenerationArgs { model, system, sampling, engine, dev } }: ChatArgs,
) -> Result<()> {
    let (device, kind) = setup(&dev)?;
    let mut sched = engine.scheduler(loader::load(&model, kind, device)?)?;
    let tok = Arc::clone(&sched.tokenizer);
    if tok.chat_template.is_none() {
        bail!("{} has no chat template; use `uniattn generate --raw` instead", model.display());
    }
    let mut history: Vec<ChatMessage> =
        system.map(|s| vec![ChatMessage { role: "system".into(), content: s }]).unwrap_or_default();
    let keep = history.len();
    eprintln!(
        "chatting with {} ({}); /reset clears the conversation, /exit quits",
        model.display(),
        sched.engine.plan().describe()
    );
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.read_line(&mut line)? == 0 {
            break;
        }
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.truncate(keep);
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage { role: "user".into(), content: line.trim_end().to_string() });
        let ids = tok.encode(&tok.apply_chat_template(&history, true)?, true)?;
        if let Err(e) = sched.submit(Request { prompt: ids, params: sampling.params(), ..Default::default() })
        {
            eprintln!("{e} (try /reset)");
            history.pop();
            continue;
        }
        let mut reply = String::new();
        let mut out = std::io::stdout().lock();
        sched.run(|e| match e {
            Event::Token { text, .. } => {
                let _ = write!(out, "{text}");
                let _ = out.flush();
            }
            Event::Finished { tail, text, .. } => {
                let _ = writeln!(out, "{tail}");
                reply = text.clone();
            }
            Event::Failed { error, .. } => eprintln!("failed: {error}"),
        });
        history.push(ChatMessage { role: "assistant".into(), content: reply });
    }
    Ok(())
}
