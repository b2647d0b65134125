//! The OpenAI-compatible server and a load generator for it.
use crate::args::*;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use uniattn::loader;
use uniattn::runtime;

#[derive(Args)]
#[command(after_help = "Example:\n  uniattn serve --model smollm2 --port 8000 --api-key secret")]
pub struct ServeArgs {
    /// A GGUF file, a model folder or a fetched model's short name
    #[arg(long)]
    pub model: PathBuf,
    /// Quiet: no line per request on standard error
    #[arg(long)]
    pub no_request_log: bool,
    /// Address to listen on, host:port
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub addr: String,
    /// Host to listen on (overrides --addr's host)
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on (overrides --addr's port)
    #[arg(long)]
    pub port: Option<u16>,
    /// Require `Authorization: Bearer KEY` on every request but /health
    #[arg(long, env = "UNIATTN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Let web pages from this origin call the API (CORS; repeat for several, `*` for any).
    /// Off by default: browsers then refuse cross-origin calls
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origins: Vec<String>,
    /// Seconds a request may run, waiting included; then 504 (or an error event ending a stream)
    #[arg(long, default_value_t = 600.0)]
    pub request_timeout: f64,
    /// Prompts waiting or generating at once; more are answered 503 with Retry-After
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending: u64,
    /// Prompts one completion request may carry
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_prompts: u64,
    /// Seconds the graceful shutdown waits for requests in flight (a second Ctrl-C exits at once)
    #[arg(long, default_value_t = 30.0)]
    pub shutdown_timeout: f64,
    /// Name reported by /v1/models (default: the model's file name)
    #[arg(long)]
    pub name: Option<String>,
    /// Largest request body accepted, bytes
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Largest max_tokens a request may ask for
    #[arg(long, default_value_t = 2048)]
    pub max_tokens: usize,
    /// Requests handled at once (the pool the endpoints run on; at least --max-pending + 16)
    #[arg(long, default_value_t = 128)]
    pub threads: usize,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn serve(
    ServeArgs {
        no_request_log,
        model,
        addr,
        host,
        port,
        api_key,
        allow_origins,
        request_timeout,
        max_pending,
        max_prompts,
        shutdown_timeout,
        name,
        max_body_bytes,
        max_tokens,
        threads,
        engine,
        dev,
    }: ServeArgs,
) -> Result<()> {
    let addr = match (host, port, addr.rsplit_once(':')) {
        (None, None, _) => addr,
        (h, p, Some((ah, ap))) => {
            format!("{}:{}", h.as_deref().unwrap_or(ah), p.map_or(ap.to_string(), |p| p.to_string()))
        }
        (h, p, None) => format!("{}:{}", h.as_deref().unwrap_or(&addr), p.unwrap_or(8000)),
    };
    let deadline = std::time::Duration::try_from_secs_f64(shutdown_timeout)
        .map_err(|e| anyhow::anyhow!("--shutdown-timeout {shutdown_timeout}: expected seconds >= 0 ({e})"))?;
    let request_timeout = std::time::Duration::try_from_secs_f64(request_timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("--request-timeout {request_timeout}: expected seconds > 0"))?;
    let (device, kind) = setup(&dev)?;
    let name = name.unwrap_or_else(|| loader::model_label(&model));
    let sched = engine.scheduler(loader::load(&model, kind, device)?)?;
    let opts = uniattn::server::ServerOptions {
        addr,
        model_name: name,
        max_body_bytes,
        max_tokens,
        threads,
        api_key,
        allow_origins,
        max_pending: max_pending as usize,
        max_prompts: max_prompts as usize,
        request_timeout,
    };
    // The request log (and anything else the library logs) on standard error, filtered by
    // RUST_LOG (default: info); --no-request-log turns the per-request lines off.
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if no_request_log {
        filter = filter.add_directive(format!("{}=off", uniattn::server::REQUEST_LOG).parse()?);
    }
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let handle = uniattn::server::start(sched, opts)?;
    eprintln!("serving {} on http://{} (Ctrl-C to stop)", model.display(), handle.addr());
    runtime::wait_for_shutdown_signal_with_deadline(deadline);
    eprintln!("shutting down: finishing requests in flight (at most {deadline:?}; Ctrl-C again to exit now)");
    handle.shutdown();
    Ok(())
}

#[derive(Args)]
#[command(after_help = "Example:\n  uniattn loadtest --addr 127.0.0.1:8000 --clients 64 --requests 20")]
pub struct LoadtestArgs {
    /// The server, host:port
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub addr: String,
    /// Concurrent clients
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Requests each client sends, one after another
    #[arg(long, default_value_t = 20)]
    pub requests: usize,
    /// The prompt of every request
    #[arg(long, default_value = "Once upon a time, an old lighthouse keeper")]
    pub prompt: String,
    /// max_tokens of every request
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Stream every request and measure time to first token and between tokens
    #[arg(long)]
    pub stream: bool,
    #[command(flatten)]
    pub json: JsonArgs,
}

pub fn loadtest(
    LoadtestArgs { addr, clients, requests, prompt, max_tokens, stream, json }: LoadtestArgs,
) -> Result<()> {
    let addr: std::net::SocketAddr = addr.parse().with_context(|| format!("--addr {addr}"))?;
    let report = uniattn::server::client::load_test(addr, clients, requests, &prompt, max_tokens, stream);
    json.emit(&report, || report.table())?;
    if report.failures > 0 {
        bail!("{} of {} requests failed", report.failures, report.requests);
    }
    Ok(())
}
