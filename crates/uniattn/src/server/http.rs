//! The HTTP layer: hyper's HTTP/1.1 server on a tokio runtime. hyper parses requests within
//! fixed limits (headers in `MAX_HEAD_BYTES`, a deadline to send them, any `Content-Length`
//! without allocating it; a request line it cannot parse, e.g. `HTTP/2.0`, gets an error and
//! its connection closed), so no request can take the process, a thread or memory with it; the
//! endpoints (`super::route`) run on tokio's blocking pool, because the engine speaks through
//! blocking channels. A server-sent event stream is one body frame per event, each written as
//! it is produced; a client that leaves drops the body, which ends the stream and cancels its
//! request, and an abandoned non-streaming request is cancelled the same way.
use super::{ApiError, Ctx, Reply, Shared};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The `tracing` target of the per-request log line (method, path, status, milliseconds):
/// `RUST_LOG=uniattn::request=off` silences it.
pub const REQUEST_LOG: &str = "uniattn::request";

/// Bytes a request line and headers may take (hyper's read buffer); more is refused.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Time a client has to send a request's line and headers.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Events a stream may run ahead of a slow client.
const STREAM_BUFFER: usize = 64;

/// What an endpoint needs of the request besides its body.
pub struct RequestHead {
    pub method: hyper::Method,
    /// The path, without the query.
    pub path: String,
    headers: hyper::HeaderMap,
}

impl RequestHead {
    /// A header's value, trimmed (`None` when absent or not text).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_string())
    }
}

type ResponseBody = BoxBody<Bytes, Infallible>;

/// A stream's events, handed from the blocking pool to hyper.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// Sets its flag when dropped: hyper drops a request's future when the client leaves.
struct LeftGuard(Arc<AtomicBool>);

impl Drop for LeftGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn whole(
    status: u16,
    headers: &[(&'static str, String)],
    content_type: &str,
    body: Vec<u8>,
) -> hyper::Response<ResponseBody> {
    let mut r = hyper::Response::builder().status(status).header("Content-Type", content_type);
    for (k, v) in headers {
        r = r.header(*k, v.as_str());
    }
    r.body(Full::new(Bytes::from(body)).boxed()).expect("a valid response")
}

fn error_response(e: &ApiError) -> hyper::Response<ResponseBody> {
    let mut headers = Vec::new();
    if e.status == 503 {
        headers.push(("Retry-After", "1".to_string()));
    }
    if e.status == 401 {
        headers.push(("WWW-Authenticate", "Bearer".to_string()));
    }
    whole(e.status, &headers, "application/json", e.body().to_string().into_bytes())
}

/// Reads the body within `max` bytes (a larger `Content-Length` is refused before reading).
async fn read_body(body: Incoming, declared: Option<u64>, max: usize) -> Result<Bytes, ApiError> {
    let too_big = || ApiError::new(413, format!("request body exceeds {max} bytes"));
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_big()),
        Err(e) => Err(ApiError::new(400, format!("cannot read the request body: {e}"))),
    }
}

/// The endpoint's reply: admission, the body within its limit, then the route (GET endpoints
/// here, since they never wait; the others on the blocking pool, as they wait on the engine).
async fn answer(
    head: &RequestHead,
    body: Incoming,
    shared: &Arc<Shared>,
    ctx: Ctx,
) -> Result<Reply, ApiError> {
    super::admit(head, shared)?;
    let declared = head.header("content-length").and_then(|v| v.parse::<u64>().ok());
    let bytes = read_body(body, declared, shared.opts.max_body_bytes).await?;
    if head.method == hyper::Method::GET {
        // Health, metrics and model cards answer while every pool thread waits on the engine.
        return super::route(&head.method, &head.path, &bytes, shared, &ctx);
    }
    let (shared, path, method) = (Arc::clone(shared), head.path.clone(), head.method.clone());
    tokio::task::spawn_blocking(move || super::route(&method, &path, &bytes, &shared, &ctx))
        .await
        .unwrap_or_else(|e| Err(ApiError::new(500, format!("the request's handler failed: {e}"))))
}

fn into_response(reply: Result<Reply, ApiError>) -> hyper::Response<ResponseBody> {
    match reply {
        Ok(Reply::Whole { status, content_type, body }) => whole(status, &[], content_type, body),
        Ok(Reply::Events(mut events)) => {
            let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
            tokio::task::spawn_blocking(move || {
                // A failed send means hyper dropped the body (the client left): returning drops
                // the stream, which cancels the request in the engine.
                while let Some(bytes) = events.next_bytes() {
                    if tx.blocking_send(Bytes::from(bytes)).is_err() {
                        break;
                    }
                }
            });
            hyper::Response::builder()
                .status(200)
                .header("Content-Type", "text/event-stream")
                .header("Cache-Control", "no-cache")
                .body(ChannelBody(rx).boxed())
                .expect("a valid response")
        }
        Err(e) => error_response(&e),
    }
}

async fn serve(
    rq: hyper::Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<hyper::Response<ResponseBody>, Infallible> {
    let arrived = Instant::now();
    let (parts, body) = rq.into_parts();
    let head =
        RequestHead { method: parts.method, path: parts.uri.path().to_string(), headers: parts.headers };
    let left = Arc::new(AtomicBool::new(false));
    let _guard = LeftGuard(Arc::clone(&left));
    let (status, mut response) =
        if head.method == hyper::Method::OPTIONS && !shared.opts.allow_origins.is_empty() {
            // A CORS preflight carries no credentials and asks only what the API allows.
            let headers = [
                ("Access-Control-Allow-Methods", "GET, POST, OPTIONS".to_string()),
                ("Access-Control-Allow-Headers", "Authorization, Content-Type".to_string()),
                ("Access-Control-Max-Age", "600".to_string()),
            ];
            (204, whole(204, &headers, "text/plain", Vec::new()))
        } else {
            let reply = answer(&head, body, &shared, Ctx { arrived, left: Arc::clone(&left) }).await;
            (reply.as_ref().map_or_else(|e| e.status, |_| 200), into_response(reply))
        };
    if let Some(origin) = allowed_origin(&head, &shared.opts.allow_origins) {
        let h = response.headers_mut();
        h.insert("Access-Control-Allow-Origin", origin);
        h.insert("Vary", hyper::header::HeaderValue::from_static("Origin"));
    }
    shared.metrics.request(&head.path, status);
    let ms = arrived.elapsed().as_secs_f64() * 1e3;
    tracing::info!(target: REQUEST_LOG, "{} {} {status} {ms:.1} ms", head.method, head.path);
    Ok(response)
}

/// The `Access-Control-Allow-Origin` value for this request: its `Origin` when allowed (or
/// `*` when any is), `None` otherwise (no CORS header; a browser then refuses the answer).
fn allowed_origin(head: &RequestHead, allowed: &[String]) -> Option<hyper::header::HeaderValue> {
    let origin = head.header("origin")?;
    if allowed.iter().any(|a| a == "*") {
        return Some(hyper::header::HeaderValue::from_static("*"));
    }
    allowed.contains(&origin).then(|| hyper::header::HeaderValue::from_str(&origin).ok()).flatten()
}

/// The listening side: accepts connections until `stop`, then lets every connection finish
/// its request in flight (idle keep-alive connections are closed) before `run` returns.
pub async fn run(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of descriptors or the like: wait, and keep serving the others.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                // Events are small writes: without this, Nagle's algorithm holds each behind the
                // client's delayed acknowledgement of the previous one (~40 ms).
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .max_buf_size(MAX_HEAD_BYTES)
                    .serve_connection(TokioIo::new(stream), service_fn(move |rq| serve(rq, Arc::clone(&shared))));
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}
