//! `uniattn serve`: an OpenAI-compatible HTTP API over the engine. `/v1/completions` (text or
//! token prompts, logprobs and echo, enough for lm-evaluation-harness's `local-completions`),
//! `/v1/chat/completions` (SSE streaming), `/v1/models`, `/health`. Concurrent requests share
//! the engine through continuous batching; limits on body size, prompt length and max tokens
//! give OpenAI-style 4xx errors; shutting down finishes the requests in flight.
pub mod api;
pub mod client;
mod http;
mod metrics;
mod worker;

use crate::engine::{Event, FinishReason, Request, Scheduler, TokenLogprob};
use crate::error::{Error, Result};
use crate::tokenizer::{ChatMessage, Tokenizer};
use api::{ApiError, ChatRequest, CompletionRequest, Limits, Prompt};
use http::RequestHead;
pub use http::REQUEST_LOG;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use worker::{Command, Job};

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub addr: String,
    /// The name clients use in `model` (any value is accepted; this one is reported).
    pub model_name: String,
    pub max_body_bytes: usize,
    pub max_tokens: usize,
    /// Requests handled at once (threads of the blocking pool the endpoints run on, at least
    /// `max_pending` + 16); more wait.
    pub threads: usize,
    /// When set, every `/v1/*` and tokenizer request must carry `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Prompts waiting or generating at once; more are answered 503 with Retry-After.
    pub max_pending: usize,
    /// Prompts one completion request may carry.
    pub max_prompts: usize,
    /// Origins whose web pages may call the API (CORS); `*` for any; empty: none.
    pub allow_origins: Vec<String>,
    /// Longest a request may run (waiting included): a non-streaming one is then answered 504,
    /// a stream ends with an error event, and the work is cancelled.
    pub request_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            addr: "127.0.0.1:8000".into(),
            model_name: "model".into(),
            max_body_bytes: 1 << 20,
            max_tokens: 2048,
            threads: 128,
            api_key: None,
            max_pending: 256,
            max_prompts: 64,
            allow_origins: Vec::new(),
            request_timeout: Duration::from_secs(600),
        }
    }
}

pub struct ServerHandle {
    addr: std::net::SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    stop: tokio::sync::watch::Sender<bool>,
    http: Option<tokio::task::JoinHandle<()>>,
    engine: Option<JoinHandle<()>>,
    commands: Sender<Command>,
}

/// What a request's handler knows besides the request: when it arrived, and whether its
/// client has left (then the work it started is cancelled).
struct Ctx {
    arrived: Instant,
    left: Arc<AtomicBool>,
}

struct Shared {
    tokenizer: Arc<Tokenizer>,
    limits: Limits,
    vocab: usize,
    opts: ServerOptions,
    commands: Sender<Command>,
    counter: AtomicU64,
    /// Prompts submitted and not yet finished (see [`Pending`]).
    pending: Arc<AtomicUsize>,
    metrics: Arc<metrics::Metrics>,
}

/// A claim on `n` of the server's pending-prompt places, given back when it drops (the
/// request finished, failed or its client left).
struct Pending {
    count: Arc<AtomicUsize>,
    n: usize,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.count.fetch_sub(self.n, Ordering::SeqCst);
    }
}

impl ServerHandle {
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Stops accepting connections, lets the requests in flight finish, then returns.
    pub fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let (Some(rt), Some(http)) = (&self.runtime, self.http.take()) {
            let _ = rt.block_on(http);
        }
        let _ = self.commands.send(Command::Drain);
        if let Some(e) = self.engine.take() {
            let _ = e.join();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Binds `opts.addr` and serves in background threads until [`ServerHandle::shutdown`].
pub fn start(sched: Scheduler, opts: ServerOptions) -> Result<ServerHandle> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Every pending prompt's request may hold a pool thread while it waits on the engine:
        // the pool must outnumber them, or the pending limit (503) could never be reached.
        .max_blocking_threads(opts.threads.max(opts.max_pending + 16))
        .thread_name("uniattn-http")
        .enable_all()
        .build()
        .map_err(|e| Error::invalid(format!("cannot start the HTTP runtime: {e}")))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&opts.addr))
        .map_err(|e| Error::invalid(format!("cannot listen on {}: {e}", opts.addr)))?;
    let addr = listener.local_addr().map_err(|e| Error::invalid(format!("{}: {e}", opts.addr)))?;
    let limits = Limits { max_tokens: opts.max_tokens, context: sched.engine.cache.max_len() };
    let vocab = sched.engine.config().vocab_size;
    let (tx, rx) = channel();
    let shared = Arc::new(Shared {
        tokenizer: Arc::clone(&sched.tokenizer),
        limits,
        vocab,
        opts: opts.clone(),
        commands: tx.clone(),
        counter: AtomicU64::new(0),
        pending: Arc::new(AtomicUsize::new(0)),
        metrics: Arc::new(metrics::Metrics::default()),
    });
    shared.metrics.beat();
    let beats = Arc::clone(&shared.metrics);
    let engine = std::thread::Builder::new()
        .name("uniattn-engine".into())
        .spawn(move || worker::run(sched, rx, &beats))
        .map_err(|e| Error::invalid(format!("cannot start the engine thread: {e}")))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let http = runtime.spawn(http::run(listener, shared, stopped));
    Ok(ServerHandle {
        addr,
        runtime: Some(runtime),
        stop,
        http: Some(http),
        engine: Some(engine),
        commands: tx,
    })
}

/// What an endpoint answers: a whole response, or events streamed as they are produced.
enum Reply {
    Whole { status: u16, content_type: &'static str, body: Vec<u8> },
    Events(EventStream),
}

fn json_response(status: u16, body: &Value) -> Reply {
    Reply::Whole { status, content_type: "application/json", body: body.to_string().into_bytes() }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The engine thread counts as stalled when it has not gone round its loop for this long.
const STALLED_AFTER_S: f64 = 30.0;

/// The endpoint for `method` and `path`, given the request's body.
fn route(
    method: &hyper::Method,
    path: &str,
    body: &[u8],
    shared: &Shared,
    ctx: &Ctx,
) -> Result<Reply, ApiError> {
    use hyper::Method;
    match (method, path) {
        (&Method::GET, "/health") => Ok(health(shared)),
        (&Method::GET, "/metrics") => {
            let text = shared.metrics.render(shared.pending.load(Ordering::SeqCst));
            Ok(Reply::Whole {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: text.into_bytes(),
            })
        }
        (&Method::GET, "/v1/models") => {
            Ok(json_response(200, &json!({"object": "list", "data": [model_card(shared)]})))
        }
        (&Method::GET, path) if path.starts_with("/v1/models/") => {
            let id = &path["/v1/models/".len()..];
            if id == shared.opts.model_name {
                Ok(json_response(200, &model_card(shared)))
            } else {
                Err(ApiError::new(
                    404,
                    format!("no model {id:?}; this server serves {:?}", shared.opts.model_name),
                ))
            }
        }
        (&Method::POST, "/v1/completions") => completions(body, shared, ctx),
        (&Method::POST, "/v1/chat/completions") => chat(body, shared, ctx),
        (&Method::POST, "/tokenize") => tokenize(body, shared),
        (&Method::POST, "/detokenize") => detokenize(body, shared),
        (
            _,
            "/health"
            | "/v1/models"
            | "/v1/completions"
            | "/v1/chat/completions"
            | "/tokenize"
            | "/detokenize",
        ) => Err(ApiError::new(405, format!("method not allowed on {path}"))),
        _ => Err(ApiError::new(404, format!("no such endpoint: {path}"))),
    }
}

/// 200 while the engine thread goes round its loop, 503 when it has stalled (a request that
/// never finishes would otherwise leave `/health` saying ok).
fn health(shared: &Shared) -> Reply {
    let silence = shared.metrics.engine_silence();
    let pending = shared.pending.load(Ordering::SeqCst);
    if silence > STALLED_AFTER_S {
        json_response(503, &json!({"status": "stalled", "engine_silence_s": silence, "pending": pending}))
    } else {
        json_response(200, &json!({"status": "ok", "pending": pending}))
    }
}

/// Checks before the body is read: the API key, and that a POST body is JSON (a browser page
/// can send `text/plain` to another origin without asking; JSON it cannot).
fn admit(head: &RequestHead, shared: &Shared) -> Result<(), ApiError> {
    if let Some(key) = &shared.opts.api_key {
        if head.path != "/health"
            && head.header("authorization").as_deref() != Some(format!("Bearer {key}").as_str())
        {
            return Err(ApiError::new(401, "missing or wrong API key (Authorization: Bearer ...)"));
        }
    }
    if head.method == hyper::Method::POST {
        let ct = head.header("content-type").unwrap_or_default().to_ascii_lowercase();
        if ct.split(';').next().map(str::trim) != Some("application/json") {
            return Err(ApiError::new(415, format!("request bodies must be application/json, not {ct:?}")));
        }
    }
    Ok(())
}

fn model_card(shared: &Shared) -> Value {
    json!({"id": shared.opts.model_name, "object": "model", "created": 0, "owned_by": "uniattn",
        "max_model_len": shared.limits.context})
}

/// `{"prompt": "text"}` -> its token ids, as vLLM's `/tokenize` answers.
fn tokenize(body: &[u8], shared: &Shared) -> Result<Reply, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        prompt: String,
    }
    let r: Req = serde_json::from_slice(body).map_err(|e| ApiError::bad("prompt", e.to_string()))?;
    let tokens = encode(shared, &r.prompt)?;
    let reply = json!({"tokens": tokens, "count": tokens.len(), "max_model_len": shared.limits.context});
    Ok(json_response(200, &reply))
}

/// `{"tokens": [ids]}` -> the text.
fn detokenize(body: &[u8], shared: &Shared) -> Result<Reply, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        tokens: Vec<u32>,
    }
    let r: Req = serde_json::from_slice(body).map_err(|e| ApiError::bad("tokens", e.to_string()))?;
    if let Some(t) = r.tokens.iter().find(|&&t| t as usize >= shared.vocab) {
        return Err(ApiError::bad(
            "tokens",
            format!("token id {t} is outside the vocabulary ({})", shared.vocab),
        ));
    }
    let text = shared.tokenizer.decode(&r.tokens).map_err(|e| ApiError::bad("tokens", e.to_string()))?;
    Ok(json_response(200, &json!({"prompt": text})))
}

impl Shared {
    /// What a stream needs to count its events after the handler has returned.
    fn observer(&self, arrived: Instant) -> Observer {
        Observer {
            metrics: Arc::clone(&self.metrics),
            arrived,
            first: true,
            deadline: arrived + self.opts.request_timeout,
        }
    }

    /// Claims `n` pending-prompt places, or answers 503 when the server is full.
    fn claim(&self, n: usize) -> Result<Pending, ApiError> {
        let before = self.pending.fetch_add(n, Ordering::SeqCst);
        let claim = Pending { count: Arc::clone(&self.pending), n };
        if before + n > self.opts.max_pending {
            return Err(ApiError::new(
                503,
                format!(
                    "the server is at its limit of {} pending prompts; retry shortly",
                    self.opts.max_pending
                ),
            ));
        }
        Ok(claim)
    }

    fn submit(&self, request: Request) -> Result<Receiver<Event>, ApiError> {
        let (tx, rx) = channel();
        self.commands
            .send(Command::Run(Job { request, events: tx }))
            .map_err(|_| ApiError::new(503, "the server is shutting down"))?;
        Ok(rx)
    }

    fn check_prompt(&self, ids: &[u32], max_new: usize) -> Result<(), ApiError> {
        if ids.is_empty() {
            return Err(ApiError::bad("prompt", "the prompt has no tokens"));
        }
        if let Some(t) = ids.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(ApiError::bad(
                "prompt",
                format!("token id {t} is outside the vocabulary ({})", self.vocab),
            ));
        }
        if ids.len() + max_new > self.limits.context {
            return Err(ApiError::bad(
                "prompt",
                format!(
                    "prompt ({} tokens) plus max_tokens ({max_new}) exceed the context of {} tokens",
                    ids.len(),
                    self.limits.context
                ),
            ));
        }
        Ok(())
    }

    fn id(&self, prefix: &str) -> String {
        format!("{prefix}-{}-{}", now(), self.counter.fetch_add(1, Ordering::Relaxed))
    }

    fn token_text(&self, id: u32) -> String {
        self.tokenizer.decode(&[id]).unwrap_or_default()
    }
}

/// Counts an engine event: the first token's arrival and a finished request's tokens.
fn observe(metrics: &metrics::Metrics, e: &Event, arrived: Instant, first: bool) {
    match e {
        Event::Token { .. } if first => metrics.first_token(arrived),
        Event::Finished { prompt_tokens, completion_tokens, .. } => {
            metrics.prompt_tokens.fetch_add(*prompt_tokens as u64, Ordering::Relaxed);
            metrics.completion_tokens.fetch_add(*completion_tokens as u64, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// A stream's hold on the metrics.
struct Observer {
    metrics: Arc<metrics::Metrics>,
    arrived: Instant,
    first: bool,
    /// When the stream is cut off (`--request-timeout`).
    deadline: Instant,
}

/// Waits for one request's events; returns the finish event's fields and the streamed ones.
struct Outcome {
    tokens: Vec<(u32, Option<TokenLogprob>)>,
    text: String,
    reason: FinishReason,
    prompt_tokens: usize,
    completion_tokens: usize,
    prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
}

/// How often a waiting handler looks whether its client has left.
const LEFT_POLL: Duration = Duration::from_millis(50);

/// Waits for one request's events. Returns early when the client has left; the receiver then
/// drops, which cancels the request in the engine.
fn collect(rx: Receiver<Event>, shared: &Shared, ctx: &Ctx) -> Result<Outcome, ApiError> {
    let mut tokens = Vec::new();
    loop {
        let e = match rx.recv_timeout(LEFT_POLL) {
            Ok(e) => e,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if ctx.left.load(Ordering::SeqCst) => {
                return Err(ApiError::new(499, "the client left"));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                if ctx.arrived.elapsed() > shared.opts.request_timeout =>
            {
                return Err(ApiError::new(
                    504,
                    format!("the request ran past the server's limit of {:?}", shared.opts.request_timeout),
                ));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(ApiError::new(500, "the engine stopped before the request finished"))
            }
        };
        observe(&shared.metrics, &e, ctx.arrived, tokens.is_empty());
        match e {
            Event::Token { token, logprob, .. } => tokens.push((token, logprob)),
            Event::Finished { text, reason, prompt_tokens, completion_tokens, prompt_logprobs, .. } => {
                return Ok(Outcome {
                    tokens,
                    text,
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    prompt_logprobs,
                })
            }
            Event::Failed { error, .. } => return Err(ApiError::new(500, error)),
        }
    }
}

fn completions(body: &[u8], shared: &Shared, ctx: &Ctx) -> Result<Reply, ApiError> {
    let req: CompletionRequest = api::parse(body)?;
    let params = req.sampling(&shared.limits)?;
    let count = match &req.prompt {
        Prompt::Texts(ts) => ts.len(),
        Prompt::TokenLists(l) => l.len(),
        _ => 1,
    };
    if count > shared.opts.max_prompts {
        return Err(ApiError::bad(
            "prompt",
            format!("{count} prompts in one request; this server takes at most {}", shared.opts.max_prompts),
        ));
    }
    let prompts: Vec<Vec<u32>> = match &req.prompt {
        Prompt::Text(t) => vec![encode(shared, t)?],
        Prompt::Texts(ts) => ts.iter().map(|t| encode(shared, t)).collect::<Result<_, _>>()?,
        Prompt::Tokens(ids) => vec![ids.clone()],
        Prompt::TokenLists(l) => l.clone(),
    };
    if prompts.is_empty() {
        return Err(ApiError::bad("prompt", "no prompt given"));
    }
    for p in &prompts {
        shared.check_prompt(p, params.max_new_tokens)?;
    }
    if req.common.stream && (prompts.len() != 1 || req.echo) {
        return Err(ApiError::bad("stream", "streaming takes one prompt and no echo"));
    }
    let (id, created, model) = (shared.id("cmpl"), now(), shared.opts.model_name.clone());
    let logprobs = req.logprobs.map(|k| k as usize);
    let claim = shared.claim(prompts.len())?;
    let mut receivers = Vec::new();
    for p in &prompts {
        let request = Request {
            prompt: p.clone(),
            params: params.clone(),
            prompt_logprobs: req.echo && logprobs.is_some(),
            logprobs,
        };
        receivers.push(shared.submit(request)?);
    }
    if req.common.stream {
        let rx = receivers.pop().expect("one prompt");
        let usage_wanted = req.common.include_usage();
        let envelope = move |choices: Value| json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices});
        let chunk = {
            let envelope = envelope.clone();
            move |text: &str, reason: Option<&str>| {
                envelope(json!([{"index": 0, "text": text, "logprobs": null, "finish_reason": reason}]))
            }
        };
        return Ok(sse(rx, claim, shared.observer(ctx.arrived), move |e| match e {
            Event::Token { text, .. } if !text.is_empty() => vec![chunk(text, None)],
            Event::Finished { tail, reason, prompt_tokens, completion_tokens, .. } => {
                let mut out = vec![chunk(tail, Some(reason.as_str()))];
                if usage_wanted {
                    out.push(usage_chunk(envelope(json!([])), *prompt_tokens, *completion_tokens));
                }
                out
            }
            _ => vec![],
        }));
    }
    let (mut choices, mut usage) = (Vec::new(), (0, 0));
    for (i, (rx, prompt)) in receivers.into_iter().zip(&prompts).enumerate() {
        let o = collect(rx, shared, ctx)?;
        usage = (usage.0 + o.prompt_tokens, usage.1 + o.completion_tokens);
        let prompt_text =
            if req.echo { shared.tokenizer.decode(prompt).unwrap_or_default() } else { String::new() };
        let lp = logprobs.map(|_| completion_logprobs(shared, prompt, &o, req.echo));
        choices.push(json!({"index": i, "text": format!("{prompt_text}{}", o.text), "logprobs": lp,
            "finish_reason": o.reason.as_str()}));
    }
    Ok(json_response(
        200,
        &json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices,
            "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1}}),
    ))
}

fn encode(shared: &Shared, text: &str) -> Result<Vec<u32>, ApiError> {
    shared.tokenizer.encode(text, true).map_err(|e| ApiError::bad("prompt", e.to_string()))
}

/// OpenAI's legacy logprobs object: tokens, their log-probabilities, the top alternatives
/// and character offsets; with `echo` the prompt's tokens come first (the first has none).
fn completion_logprobs(shared: &Shared, prompt: &[u32], o: &Outcome, echo: bool) -> Value {
    let mut entries: Vec<(u32, Option<&TokenLogprob>)> = Vec::new();
    if echo {
        let pl = o.prompt_logprobs.as_deref().unwrap_or(&[]);
        entries.extend(prompt.iter().enumerate().map(|(i, &t)| (t, pl.get(i).and_then(Option::as_ref))));
    }
    entries.extend(o.tokens.iter().map(|(t, lp)| (*t, lp.as_ref())));
    let (mut tokens, mut token_logprobs, mut top, mut offsets, mut offset) =
        (vec![], vec![], vec![], vec![], 0);
    for (t, lp) in entries {
        let text = shared.token_text(t);
        offsets.push(offset);
        offset += text.len();
        tokens.push(text);
        token_logprobs.push(lp.map(|l| l.logprob));
        top.push(lp.map(|l| {
            let mut m = serde_json::Map::new();
            for (id, v) in &l.top {
                m.insert(shared.token_text(*id), json!(v));
            }
            Value::Object(m)
        }));
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets})
}

fn chat(body: &[u8], shared: &Shared, ctx: &Ctx) -> Result<Reply, ApiError> {
    let req: ChatRequest = api::parse(body)?;
    let params = req.sampling(&shared.limits)?;
    let messages: Vec<ChatMessage> = req
        .messages
        .iter()
        .map(|m| ChatMessage { role: m.role.clone(), content: m.content.clone() })
        .collect();
    let text = shared
        .tokenizer
        .apply_chat_template(&messages, true)
        .map_err(|e| ApiError::bad("messages", e.to_string()))?;
    let prompt = encode(shared, &text)?;
    shared.check_prompt(&prompt, params.max_new_tokens)?;
    let logprobs = req.logprobs.then(|| req.top_logprobs.unwrap_or(0) as usize);
    let claim = shared.claim(1)?;
    let rx = shared.submit(Request { prompt, params, prompt_logprobs: false, logprobs })?;
    let (id, created, model) = (shared.id("chatcmpl"), now(), shared.opts.model_name.clone());
    if req.common.stream {
        let usage_wanted = req.common.include_usage();
        let envelope = move |choices: Value| json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices});
        let chunk = {
            let envelope = envelope.clone();
            move |delta: Value, reason: Option<&str>| {
                envelope(json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": reason}]))
            }
        };
        let mut first = true;
        return Ok(sse(rx, claim, shared.observer(ctx.arrived), move |e| {
            let mut out = Vec::new();
            if std::mem::take(&mut first) {
                out.push(chunk(json!({"role": "assistant", "content": ""}), None));
            }
            match e {
                Event::Token { text, .. } if !text.is_empty() => {
                    out.push(chunk(json!({"content": text}), None))
                }
                Event::Finished { tail, reason, prompt_tokens, completion_tokens, .. } => {
                    if !tail.is_empty() {
                        out.push(chunk(json!({"content": tail}), None));
                    }
                    out.push(chunk(json!({}), Some(reason.as_str())));
                    if usage_wanted {
                        out.push(usage_chunk(envelope(json!([])), *prompt_tokens, *completion_tokens));
                    }
                }
                _ => {}
            }
            out
        }));
    }
    let o = collect(rx, shared, ctx)?;
    let lp = logprobs.map(|_| {
        // Chat log-probs cover the message's tokens, not the end-of-sequence token.
        let content: Vec<Value> = o
            .tokens
            .iter()
            .filter(|(t, _)| !shared.tokenizer.eos_ids.contains(t))
            .filter_map(|(t, lp)| lp.as_ref().map(|l| (t, l)))
            .map(|(t, l)| {
                let top: Vec<Value> = l
                    .top
                    .iter()
                    .map(|(id, v)| json!({"token": shared.token_text(*id), "logprob": v}))
                    .collect();
                json!({"token": shared.token_text(*t), "logprob": l.logprob, "top_logprobs": top})
            })
            .collect();
        json!({"content": content})
    });
    Ok(json_response(
        200,
        &json!({"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": o.text}, "logprobs": lp,
                "finish_reason": o.reason.as_str()}],
            "usage": {"prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens,
                "total_tokens": o.prompt_tokens + o.completion_tokens}}),
    ))
}

/// OpenAI's `include_usage` chunk: the stream's envelope with no choices and the usage.
fn usage_chunk(mut envelope: Value, prompt_tokens: usize, completion_tokens: usize) -> Value {
    envelope["usage"] = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens});
    envelope
}

/// Turns an engine event into the JSON payloads a client is sent for it.
type Render = Box<dyn FnMut(&Event) -> Vec<Value> + Send>;

/// Server-sent events of one request: each engine event becomes zero or more `data:` lines,
/// then `data: [DONE]`. Errors mid-stream arrive as an `error` object, as OpenAI sends them.
pub struct EventStream {
    rx: Receiver<Event>,
    render: Render,
    done: bool,
    /// The request's pending place, given back when the stream ends or its client leaves.
    _claim: Pending,
    observer: Observer,
}

impl EventStream {
    /// The bytes of the next event that produces any (`None` once the stream has ended).
    fn next_bytes(&mut self) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        while buf.is_empty() && !self.done {
            let left = self.observer.deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let e = ApiError::new(504, "the request ran past the server's time limit");
                    buf.extend_from_slice(format!("data: {}\n\ndata: [DONE]\n\n", e.body()).as_bytes());
                    self.done = true;
                }
                Ok(e) => {
                    let o = &mut self.observer;
                    observe(&o.metrics, &e, o.arrived, o.first);
                    o.first &= !matches!(e, Event::Token { .. });
                    let end = matches!(e, Event::Finished { .. } | Event::Failed { .. });
                    let values = match &e {
                        Event::Failed { error, .. } => vec![ApiError::new(500, error.clone()).body()],
                        _ => (self.render)(&e),
                    };
                    for v in values {
                        buf.extend_from_slice(format!("data: {v}\n\n").as_bytes());
                    }
                    if end {
                        buf.extend_from_slice(b"data: [DONE]\n\n");
                        self.done = true;
                    }
                }
                Err(_) => self.done = true,
            }
        }
        (!buf.is_empty()).then_some(buf)
    }
}

fn sse(
    rx: Receiver<Event>,
    claim: Pending,
    observer: Observer,
    render: impl FnMut(&Event) -> Vec<Value> + Send + 'static,
) -> Reply {
    Reply::Events(EventStream { rx, render: Box::new(render), done: false, _claim: claim, observer })
}
