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
    let get = |k: &str| headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.as_str());
    let (mut raw, mut chunks) = (Vec::new(), 0);
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if n == 0 {
                break;
            }
            chunks += 1;
            let start = raw.len();
            raw.resize(start + n, 0);
            r.read_exact(&mut raw[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        raw.resize(n, 0);
        r.read_exact(&mut raw)?;
    } else {
        r.read_to_end(&mut raw)?;
    }
    Ok(HttpResponse { status, headers, body: String::from_utf8_lossy(&raw).into_owned(), chunks })
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
