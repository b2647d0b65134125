//! A minimal HTTP/1.1 client for loopback tests and `uniattn loadtest`: one request per
//! connection, plain or chunked bodies. Not a general client; just enough to talk to `serve`.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// HTTP chunks the body came in (0 when it was not chunked).
    pub chunks: usize,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The JSON payloads of a `text/event-stream` body, `[DONE]` excluded.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect()
    }
}

/// Sends `method path` with `body` (JSON when given) and reads the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> std::io::Result<HttpResponse> {
    request_with(addr, method, path, body, &[("Content-Type", "application/json")])
}

/// [`request`] with the given headers instead of the JSON content type.
pub fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    let (status, headers, mut r) = send(addr, method, path, body, headers)?;
    let get = |k: &str| headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.as_str());
    let (mut raw, mut chunks) = (Vec::new(), 0);
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        while let Some(chunk) = read_chunk(&mut r)? {
            chunks += 1;
            raw.extend_from_slice(&chunk);
        }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        raw.resize(n, 0);
        r.read_exact(&mut raw)?;
    } else {
        r.read_to_end(&mut raw)?;
    }
    Ok(HttpResponse { status, headers, body: String::from_utf8_lossy(&raw).into_owned(), chunks })
}

type Headers = Vec<(String, String)>;

/// Sends a request and reads the status line and headers; the body is left in the reader.
fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, Headers, BufReader<TcpStream>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    let body = body.unwrap_or(b"");
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    s.flush()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad status line {line:?}"))
    })?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok((status, headers, r))
}

/// The next chunk of a chunked body, `None` after the last.
fn read_chunk(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let n = usize::from_str_radix(line.trim(), 16)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if n == 0 {
        return Ok(None);
    }
    let mut chunk = vec![0; n];
    r.read_exact(&mut chunk)?;
    line.clear();
    r.read_line(&mut line)?;
    Ok(Some(chunk))
}

/// When each event of a streamed response arrived, in seconds from the request.
#[derive(Debug, Clone)]
pub struct StreamTiming {
    pub status: u16,
    /// Arrival of every chunk that carried a token's text (the server sends one per event).
    pub token_times: Vec<f64>,
    pub total: f64,
}

/// Sends a streaming request and times its events as they arrive.
pub fn request_stream(addr: SocketAddr, path: &str, body: &[u8]) -> std::io::Result<StreamTiming> {
    let t = std::time::Instant::now();
    let (status, _, mut r) = send(addr, "POST", path, Some(body), &[("Content-Type", "application/json")])?;
    let mut token_times = Vec::new();
    if status == 200 {
        while let Some(chunk) = read_chunk(&mut r)? {
            let text = String::from_utf8_lossy(&chunk);
            let has_text = text.lines().filter_map(|l| l.strip_prefix("data: ")).any(|d| {
                serde_json::from_str::<serde_json::Value>(d).is_ok_and(|v| {
                    let c = &v["choices"][0];
                    c["text"].as_str().or(c["delta"]["content"].as_str()).is_some_and(|s| !s.is_empty())
                })
            });
            if has_text {
                token_times.push(t.elapsed().as_secs_f64());
            }
        }
    }
    Ok(StreamTiming { status, token_times, total: t.elapsed().as_secs_f64() })
}

#[derive(Debug, Clone, Copy)]
pub struct LoadResult {
    pub seconds: f64,
    pub status: u16,
    pub completion_tokens: u64,
}

/// `clients` threads each send `per_client` copies of `body` to `path` one after another.
/// Returns each request's outcome, or the I/O error that ended it.
pub fn load(
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    clients: usize,
    per_client: usize,
) -> Vec<std::result::Result<LoadResult, String>> {
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (path, body) = (path.to_string(), body.to_vec());
            std::thread::spawn(move || {
                (0..per_client)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        request(addr, "POST", &path, Some(&body))
                            .map(|r| LoadResult {
                                seconds: t.elapsed().as_secs_f64(),
                                status: r.status,
                                completion_tokens: r.json()["usage"]["completion_tokens"]
                                    .as_u64()
                                    .unwrap_or(0),
                            })
                            .map_err(|e| e.to_string())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
}

/// What `uniattn loadtest` measures: whole-request latency and throughput, and for streamed
/// requests the time to the first token and between tokens.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub clients: usize,
    pub requests: usize,
    pub failures: usize,
    pub streamed: bool,
    pub latency_p50_s: f64,
    pub latency_p99_s: f64,
    pub requests_per_s: f64,
    pub tokens_per_s: f64,
    /// Streamed requests only: first token, and the gaps between tokens.
    pub ttft_p50_s: Option<f64>,
    pub ttft_p99_s: Option<f64>,
    pub itl_p50_s: Option<f64>,
    pub itl_p99_s: Option<f64>,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN)
}

/// `clients` concurrent clients each send `per_client` completion requests for `prompt`, one
/// after another, streamed or whole.
pub fn load_test(
    addr: SocketAddr,
    clients: usize,
    per_client: usize,
    prompt: &str,
    max_tokens: usize,
    stream: bool,
) -> LoadReport {
    let body =
        serde_json::json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.7, "stream": stream})
            .to_string();
    let t0 = std::time::Instant::now();
    // (latency, tokens, first token, gaps) of each successful request; None for a failure.
    type Outcome = Option<(f64, u64, Option<f64>, Vec<f64>)>;
    let outcomes: Vec<Outcome> = if stream {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let body = body.clone();
                std::thread::spawn(move || {
                    (0..per_client)
                        .map(|_| match request_stream(addr, "/v1/completions", body.as_bytes()) {
                            Ok(t) if t.status == 200 => {
                                let gaps = t.token_times.windows(2).map(|w| w[1] - w[0]).collect();
                                Some((
                                    t.total,
                                    t.token_times.len() as u64,
                                    t.token_times.first().copied(),
                                    gaps,
                                ))
                            }
                            _ => None,
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    } else {
        load(addr, "/v1/completions", body.as_bytes(), clients, per_client)
            .into_iter()
            .map(|r| {
                r.ok().filter(|r| r.status == 200).map(|r| (r.seconds, r.completion_tokens, None, vec![]))
            })
            .collect()
    };
    let secs = t0.elapsed().as_secs_f64();
    let ok: Vec<_> = outcomes.iter().flatten().collect();
    let mut lat: Vec<f64> = ok.iter().map(|o| o.0).collect();
    let mut ttft: Vec<f64> = ok.iter().filter_map(|o| o.2).collect();
    let mut itl: Vec<f64> = ok.iter().flat_map(|o| o.3.iter().copied()).collect();
    let tokens: u64 = ok.iter().map(|o| o.1).sum();
    let opt = |v: &mut Vec<f64>, p| (stream && !v.is_empty()).then(|| percentile(v, p));
    LoadReport {
        clients,
        requests: outcomes.len(),
        failures: outcomes.len() - ok.len(),
        streamed: stream,
        latency_p50_s: percentile(&mut lat, 0.5),
        latency_p99_s: percentile(&mut lat, 0.99),
        requests_per_s: ok.len() as f64 / secs,
        tokens_per_s: tokens as f64 / secs,
        ttft_p50_s: opt(&mut ttft, 0.5),
        ttft_p99_s: opt(&mut ttft, 0.99),
        itl_p50_s: opt(&mut itl, 0.5),
        itl_p99_s: opt(&mut itl, 0.99),
    }
}

impl LoadReport {
    /// One Markdown table row with its header.
    pub fn table(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.3}"));
        format!(
            "| clients | requests | failures | p50 s | p99 s | requests/s | tokens/s | TTFT p50 s | TTFT p99 s | ITL p50 s | ITL p99 s |\n\
             |---|---|---|---|---|---|---|---|---|---|---|\n\
             | {} | {} | {} | {:.3} | {:.3} | {:.2} | {:.1} | {} | {} | {} | {} |",
            self.clients,
            self.requests,
            self.failures,
            self.latency_p50_s,
            self.latency_p99_s,
            self.requests_per_s,
            self.tokens_per_s,
            f(self.ttft_p50_s),
            f(self.ttft_p99_s),
            f(self.itl_p50_s),
            f(self.itl_p99_s)
        )
    }
}
