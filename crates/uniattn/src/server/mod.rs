//! `uniattn serve`: an OpenAI-compatible HTTP API over the engine. `/v1/completions` (text or
//! token prompts, logprobs and echo, enough for lm-evaluation-harness's `local-completions`),
//! `/v1/chat/completions` (SSE streaming), `/v1/models`, `/health`. Concurrent requests share
//! the engine through continuous batching; limits on body size, prompt length and max tokens
//! give OpenAI-style 4xx errors; shutting down finishes the requests in flight.
pub mod api;
pub mod client;
mod metrics;
mod worker;

use crate::engine::{Event, FinishReason, Request, Scheduler, TokenLogprob};
use crate::error::{Error, Result};
use crate::tokenizer::{ChatMessage, Tokenizer};
use api::{ApiError, ChatRequest, CompletionRequest, Limits, Prompt};
use serde_json::{json, Value};
use std::io::Read;
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
    /// HTTP handler threads (each holds one connection's request at a time).
    pub threads: usize,
    /// When set, every `/v1/*` and tokenizer request must carry `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Prompts waiting or generating at once; more are answered 503 with Retry-After.
    pub max_pending: usize,
    /// Prompts one completion request may carry.
    pub max_prompts: usize,
    /// One line per request on standard error: method, path, status, milliseconds.
    pub log_requests: bool,
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
            log_requests: false,
        }
    }
}

pub struct ServerHandle {
    addr: std::net::SocketAddr,
    stopping: Arc<AtomicBool>,
    http: Vec<JoinHandle<()>>,
    engine: Option<JoinHandle<()>>,
    commands: Sender<Command>,
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
        self.stopping.store(true, Ordering::SeqCst);
        for h in self.http.drain(..) {
            let _ = h.join();
        }
        let _ = self.commands.send(Command::Drain);
        if let Some(e) = self.engine.take() {
            let _ = e.join();
        }
    }
}

/// Binds `opts.addr` and serves in background threads until [`ServerHandle::shutdown`].
pub fn start(sched: Scheduler, opts: ServerOptions) -> Result<ServerHandle> {
    let server = tiny_http::Server::http(&opts.addr)
        .map_err(|e| Error::invalid(format!("cannot listen on {}: {e}", opts.addr)))?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| Error::invalid(format!("{} is not an IP address", opts.addr)))?;
    let limits = Limits { max_tokens: opts.max_tokens, context: sched.engine.cache.max_len() };
    let vocab = sched.engine.model.cfg.vocab_size;
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
    let server = Arc::new(server);
    let stopping = Arc::new(AtomicBool::new(false));
    let http = (0..opts.threads.max(1))
        .map(|i| {
            let (server, shared, stopping) =
                (Arc::clone(&server), Arc::clone(&shared), Arc::clone(&stopping));
            std::thread::Builder::new()
                .name(format!("uniattn-http-{i}"))
                .spawn(move || {
                    while !stopping.load(Ordering::SeqCst) {
                        match server.recv_timeout(Duration::from_millis(100)) {
                            Ok(Some(rq)) => handle(rq, &shared),
                            Ok(None) => {}
                            Err(_) => break,
                        }
                    }
                })
                .map_err(|e| Error::invalid(format!("cannot start an HTTP thread: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ServerHandle { addr, stopping, http, engine: Some(engine), commands: tx })
}

type Response = tiny_http::Response<Box<dyn Read + Send>>;

/// What an endpoint answers: a whole response, or events streamed as they are produced.
enum Reply {
    Whole(Response),
    Events(EventStream),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Self {
        Reply::Whole(r)
    }
}

fn json_response(status: u16, body: &Value) -> Response {
    let data = body.to_string().into_bytes();
    let len = data.len();
    tiny_http::Response::new(
        status.into(),
        vec![header("Content-Type", "application/json")],
        Box::new(std::io::Cursor::new(data)) as Box<dyn Read + Send>,
        Some(len),
        None,
    )
}

fn header(k: &str, v: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("valid header")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The engine thread counts as stalled when it has not gone round its loop for this long.
const STALLED_AFTER_S: f64 = 30.0;

fn handle(mut rq: tiny_http::Request, shared: &Shared) {
    let arrived = Instant::now();
    let method = rq.method().clone();
    let url = rq.url().split('?').next().unwrap_or("").to_string();
    let response = admit(&rq, &url, shared)
        .and_then(|()| read_body(&mut rq, shared.opts.max_body_bytes))
        .and_then(|body| match (method.clone(), url.as_str()) {
            (tiny_http::Method::Get, "/health") => Ok(health(shared).into()),
            (tiny_http::Method::Get, "/metrics") => {
                let text = shared.metrics.render(shared.pending.load(Ordering::SeqCst));
                Ok(text_response(200, "text/plain; version=0.0.4", text).into())
            }
            (tiny_http::Method::Get, "/v1/models") => {
                Ok(json_response(200, &json!({"object": "list", "data": [model_card(shared)]})).into())
            }
            (tiny_http::Method::Get, path) if path.starts_with("/v1/models/") => {
                let id = &path["/v1/models/".len()..];
                if id == shared.opts.model_name {
                    Ok(json_response(200, &model_card(shared)).into())
                } else {
                    Err(ApiError::new(
                        404,
                        format!("no model {id:?}; this server serves {:?}", shared.opts.model_name),
                    ))
                }
            }
            (tiny_http::Method::Post, "/v1/completions") => completions(&body, shared, arrived),
            (tiny_http::Method::Post, "/v1/chat/completions") => chat(&body, shared, arrived),
            (tiny_http::Method::Post, "/tokenize") => tokenize(&body, shared),
            (tiny_http::Method::Post, "/detokenize") => detokenize(&body, shared),
            (
                _,
                "/health"
                | "/v1/models"
                | "/v1/completions"
                | "/v1/chat/completions"
                | "/tokenize"
                | "/detokenize",
            ) => Err(ApiError::new(405, format!("method not allowed on {url}"))),
            _ => Err(ApiError::new(404, format!("no such endpoint: {url}"))),
        });
    let status = match &response {
        Ok(_) => 200,
        Err(e) => e.status,
    };
    match response {
        Ok(Reply::Events(events)) if *rq.http_version() == tiny_http::HTTPVersion(1, 1) => {
            let mut out = rq.into_writer();
            let _ = events.write_chunked(&mut out);
        }
        Ok(Reply::Events(events)) => {
            let _ = rq.respond(events.into_response());
        }
        Ok(Reply::Whole(r)) => {
            let _ = rq.respond(r);
        }
        Err(e) => {
            let mut r = json_response(e.status, &e.body());
            if e.status == 503 {
                r.add_header(header("Retry-After", "1"));
            }
            if e.status == 401 {
                r.add_header(header("WWW-Authenticate", "Bearer"));
            }
            let _ = rq.respond(r);
        }
    }
    shared.metrics.request(&url, status);
    if shared.opts.log_requests {
        eprintln!("{method} {url} {status} {:.1} ms", arrived.elapsed().as_secs_f64() * 1e3);
    }
}

/// 200 while the engine thread goes round its loop, 503 when it has stalled (a request that
/// never finishes would otherwise leave `/health` saying ok).
fn health(shared: &Shared) -> Response {
    let silence = shared.metrics.engine_silence();
    let pending = shared.pending.load(Ordering::SeqCst);
    if silence > STALLED_AFTER_S {
        json_response(503, &json!({"status": "stalled", "engine_silence_s": silence, "pending": pending}))
    } else {
        json_response(200, &json!({"status": "ok", "pending": pending}))
    }
}

fn text_response(status: u16, content_type: &str, text: String) -> Response {
    let data = text.into_bytes();
    let len = data.len();
    tiny_http::Response::new(
        status.into(),
        vec![header("Content-Type", content_type)],
        Box::new(std::io::Cursor::new(data)) as Box<dyn Read + Send>,
        Some(len),
        None,
    )
}

/// Checks before the body is read: the API key, and that a POST body is JSON (a browser page
/// can send `text/plain` to another origin without asking; JSON it cannot).
fn admit(rq: &tiny_http::Request, url: &str, shared: &Shared) -> Result<(), ApiError> {
    let get = |name: &'static str| {
        rq.headers().iter().find(|h| h.field.equiv(name)).map(|h| h.value.as_str().trim().to_string())
    };
    if let Some(key) = &shared.opts.api_key {
        if url != "/health" && get("Authorization").as_deref() != Some(format!("Bearer {key}").as_str()) {
            return Err(ApiError::new(401, "missing or wrong API key (Authorization: Bearer ...)"));
        }
    }
    if *rq.method() == tiny_http::Method::Post {
        let ct = get("Content-Type").unwrap_or_default().to_ascii_lowercase();
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
    Ok(json_response(200, &reply).into())
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
    Ok(json_response(200, &json!({"prompt": text})).into())
}

fn read_body(rq: &mut tiny_http::Request, max: usize) -> Result<Vec<u8>, ApiError> {
    let too_big = || ApiError::new(413, format!("request body exceeds {max} bytes"));
    if rq.body_length().is_some_and(|n| n > max) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    rq.as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::new(400, format!("cannot read the request body: {e}")))?;
    if body.len() > max {
        return Err(too_big());
    }
    Ok(body)
}

impl Shared {
    /// What a stream needs to count its events after the handler has returned.
    fn observer(&self, arrived: Instant) -> Observer {
        Observer { metrics: Arc::clone(&self.metrics), arrived, first: true }
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

fn collect(rx: Receiver<Event>, shared: &Shared, arrived: Instant) -> Result<Outcome, ApiError> {
    let mut tokens = Vec::new();
    for e in rx {
        observe(&shared.metrics, &e, arrived, tokens.is_empty());
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
    Err(ApiError::new(500, "the engine stopped before the request finished"))
}

fn completions(body: &[u8], shared: &Shared, arrived: Instant) -> Result<Reply, ApiError> {
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
        let chunk = move |text: &str, reason: Option<&str>| {
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": reason}]})
        };
        return Ok(sse(rx, claim, shared.observer(arrived), move |e| match e {
            Event::Token { text, .. } if !text.is_empty() => vec![chunk(text, None)],
            Event::Finished { tail, reason, .. } => vec![chunk(tail, Some(reason.as_str()))],
            _ => vec![],
        }));
    }
    let (mut choices, mut usage) = (Vec::new(), (0, 0));
    for (i, (rx, prompt)) in receivers.into_iter().zip(&prompts).enumerate() {
        let o = collect(rx, shared, arrived)?;
        usage = (usage.0 + o.prompt_tokens, usage.1 + o.completion_tokens);
        let prompt_text =
            if req.echo { shared.tokenizer.decode(prompt).unwrap_or_default() } else { String::new() };
        let lp = logprobs.map(|_| completion_logprobs(shared, prompt, &o, req.echo));
        choices.push(json!({"index": i, "text": format!("{prompt_text}{}", o.text), "logprobs": lp,
            "finish_reason": o.reason.as_str()}));
    }
    Ok(Reply::Whole(json_response(
        200,
        &json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices,
            "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1}}),
    )))
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

fn chat(body: &[u8], shared: &Shared, arrived: Instant) -> Result<Reply, ApiError> {
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
        let usage_wanted =
            req.common.stream_options.as_ref().and_then(|o| o.get("include_usage")).and_then(Value::as_bool)
                == Some(true);
        let chunk = move |delta: Value, reason: Option<&str>| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": reason}]})
        };
        let mut first = true;
        return Ok(sse(rx, claim, shared.observer(arrived), move |e| {
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
                    let mut last = chunk(json!({}), Some(reason.as_str()));
                    if usage_wanted {
                        last["usage"] = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens});
                    }
                    out.push(last);
                }
                _ => {}
            }
            out
        }));
    }
    let o = collect(rx, shared, arrived)?;
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
    Ok(Reply::Whole(json_response(
        200,
        &json!({"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": o.text}, "logprobs": lp,
                "finish_reason": o.reason.as_str()}],
            "usage": {"prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens,
                "total_tokens": o.prompt_tokens + o.completion_tokens}}),
    )))
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
            match self.rx.recv() {
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

    /// Writes the response itself, one HTTP chunk per event, flushed as it is produced: a
    /// body handed to tiny_http would reach the client in 8 KiB pieces (dozens of tokens).
    /// A write error means the client left; returning drops the receiver, which cancels the
    /// request in the engine.
    fn write_chunked(mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )?;
        out.flush()?;
        while let Some(bytes) = self.next_bytes() {
            write!(out, "{:x}\r\n", bytes.len())?;
            out.write_all(&bytes)?;
            out.write_all(b"\r\n")?;
            out.flush()?;
        }
        out.write_all(b"0\r\n\r\n")?;
        out.flush()
    }

    /// The same stream as a body for tiny_http (HTTP/1.0 clients, which take no chunks).
    fn into_response(self) -> Response {
        struct Body(EventStream, Vec<u8>, usize);
        impl Read for Body {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                if self.2 == self.1.len() {
                    match self.0.next_bytes() {
                        Some(b) => (self.1, self.2) = (b, 0),
                        None => return Ok(0),
                    }
                }
                let n = out.len().min(self.1.len() - self.2);
                out[..n].copy_from_slice(&self.1[self.2..self.2 + n]);
                self.2 += n;
                Ok(n)
            }
        }
        tiny_http::Response::new(
            200.into(),
            vec![header("Content-Type", "text/event-stream"), header("Cache-Control", "no-cache")],
            Box::new(Body(self, Vec::new(), 0)) as Box<dyn Read + Send>,
            None,
            None,
        )
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
