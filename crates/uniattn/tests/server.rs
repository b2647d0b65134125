//! `uniattn serve` on loopback with SmolLM2: every endpoint, streaming, logprobs against the
//! training graph, the error paths, concurrent clients and a graceful shutdown.
mod common;
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tch::{Device, Kind};
use uniattn::engine::{Engine, EngineOptions, Scheduler};
use uniattn::loader;
use uniattn::server::client::{request, request_with};
use uniattn::server::{self, ServerHandle, ServerOptions};

fn start(max_body_bytes: usize) -> ServerHandle {
    start_with(ServerOptions { max_body_bytes, ..Default::default() })
}

fn start_with(base: ServerOptions) -> ServerHandle {
    init();
    let m = loader::load(&model(SMOLLM2).unwrap(), Kind::Float, Device::Cpu).unwrap();
    let engine =
        Engine::new(m.model, EngineOptions { max_batch: 4, max_len: 256, prefill_chunk: 64 }).unwrap();
    let sched = Scheduler::new(engine, Arc::new(m.tokenizer));
    let opts = ServerOptions {
        addr: "127.0.0.1:0".into(),
        model_name: "smollm2".into(),
        max_tokens: 64,
        threads: 8,
        ..base
    };
    server::start(sched, opts).unwrap()
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let r = request(addr, "POST", path, Some(body.to_string().as_bytes())).unwrap();
    (r.status, r.json())
}

#[test]
fn endpoints_answer_in_the_openai_format() {
    let s = start(1 << 20);
    let a = s.addr();
    let h = request(a, "GET", "/health", None).unwrap();
    assert_eq!((h.status, h.json()["status"].as_str()), (200, Some("ok")));
    let m = request(a, "GET", "/v1/models", None).unwrap().json();
    assert_eq!(m["data"][0]["id"], "smollm2");

    let (st, c) = post(
        a,
        "/v1/completions",
        &json!({"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}),
    );
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["object"], "text_completion");
    assert_eq!(c["choices"][0]["finish_reason"], "length");
    assert_eq!(c["usage"]["completion_tokens"], 5);
    assert!(!c["choices"][0]["text"].as_str().unwrap().is_empty());

    // A list of prompts gives one choice each, in order.
    for prompt in [json!(["1, 2, 3,", "a, b, c,"]), json!([[16, 28, 34], [5, 6]])] {
        let (st, c) =
            post(a, "/v1/completions", &json!({"prompt": prompt, "max_tokens": 2, "temperature": 0}));
        assert_eq!(st, 200, "{c}");
        assert_eq!(c["choices"].as_array().unwrap().len(), 2);
        assert_eq!(c["choices"][1]["index"], 1);
    }

    // Chat, plain and streamed: the streamed deltas add up to the plain answer (greedy).
    let chat =
        json!({"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 12, "temperature": 0});
    let (st, plain) = post(a, "/v1/chat/completions", &chat);
    assert_eq!(st, 200, "{plain}");
    let want = plain["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let r = request(a, "POST", "/v1/chat/completions", Some(streamed.to_string().as_bytes())).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.trim_end().ends_with("data: [DONE]"), "{}", r.body);
    let events = r.events();
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, want);
    assert!(events.last().unwrap()["choices"][0]["finish_reason"].is_string());
    // Each event is sent (and flushed) as its own HTTP chunk, not gathered into 8 KiB pieces.
    assert!(r.chunks + 1 >= events.len() && r.chunks > 2, "{} chunks for {} events", r.chunks, events.len());
    // include_usage: one more chunk, no choices, the usage (chat and completions alike).
    for (path, mut body) in [
        ("/v1/chat/completions", streamed.clone()),
        ("/v1/completions", json!({"prompt": "Hi", "max_tokens": 3, "stream": true})),
    ] {
        body["stream_options"] = json!({"include_usage": true});
        let events = request(a, "POST", path, Some(body.to_string().as_bytes())).unwrap().events();
        let (last, before) = (&events[events.len() - 1], &events[events.len() - 2]);
        assert!(before["choices"][0]["finish_reason"].is_string(), "{path}: {before}");
        assert_eq!(last["choices"], json!([]), "{path}: {last}");
        let u = &last["usage"];
        assert!(
            u["prompt_tokens"].as_u64().unwrap() > 0
                && u["total_tokens"]
                    == json!(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()),
            "{path}: {last}"
        );
    }
    s.shutdown();
}

/// `echo` + `logprobs`, as lm-evaluation-harness's local-completions model asks for them: the
/// prompt's token log-probabilities equal the training graph's full forward.
#[test]
fn echoed_logprobs_match_the_full_forward() {
    let s = start(1 << 20);
    let text = "Question: What do plants need for photosynthesis?\nAnswer: sunlight";
    let (st, c) = post(
        s.addr(),
        "/v1/completions",
        &json!({"prompt": text, "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": true, "seed": 1234}),
    );
    assert_eq!(st, 200, "{c}");
    let lp = &c["choices"][0]["logprobs"];
    let got: Vec<Value> = lp["token_logprobs"].as_array().unwrap().clone();
    let reference = loader::load(&model(SMOLLM2).unwrap(), Kind::Float, Device::Cpu).unwrap();
    let ids = reference.tokenizer.encode(text, true).unwrap();
    let want = uniattn::eval::perplexity::token_logprobs(&reference.model, &ids);
    assert_eq!(got.len(), ids.len() + 1, "prompt tokens plus the generated one");
    assert!(got[0].is_null());
    for (i, w) in want.iter().enumerate() {
        let g = got[i + 1].as_f64().unwrap();
        assert!((g - w).abs() < 1e-3, "token {}: {g} vs {w}", i + 1);
    }
    assert_eq!(lp["tokens"].as_array().unwrap().len(), ids.len() + 1);
    assert!(c["choices"][0]["text"].as_str().unwrap().starts_with(text));
    assert_eq!(lp["top_logprobs"][1].as_object().unwrap().len(), 1);
    s.shutdown();
}

#[test]
fn bad_requests_get_openai_errors_not_dropped_connections() {
    let s = start(4096);
    let a = s.addr();
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        ("/v1/completions", b"{not json".to_vec(), 400, None),
        ("/v1/completions", br#"{"prompt": "x", "max_tokens": -5}"#.to_vec(), 400, None),
        (
            "/v1/completions",
            br#"{"prompt": "x", "max_tokens": 99999999999}"#.to_vec(),
            400,
            Some("max_tokens"),
        ),
        ("/v1/completions", br#"{"prompt": "x", "frobnicate": true}"#.to_vec(), 400, Some("frobnicate")),
        ("/v1/completions", br#"{"prompt": "x", "temperature": -1}"#.to_vec(), 400, Some("temperature")),
        ("/v1/completions", br#"{"prompt": [999999]}"#.to_vec(), 400, Some("prompt")),
        ("/v1/completions", br#"{"prompt": ""}"#.to_vec(), 400, Some("prompt")),
        ("/v1/chat/completions", br#"{"messages": []}"#.to_vec(), 400, Some("messages")),
        ("/v1/chat/completions", br#"{"messages": [{"role": "user"}]}"#.to_vec(), 400, None),
        ("/v1/completions", format!(r#"{{"prompt": "{}"}}"#, "word ".repeat(900)).into_bytes(), 413, None),
        ("/v1/nothing", b"{}".to_vec(), 404, None),
    ];
    for (path, body, status, param) in cases {
        let r = request(a, "POST", path, Some(&body)).unwrap();
        assert_eq!(
            r.status,
            status,
            "{path} {}: {}",
            String::from_utf8_lossy(&body[..body.len().min(60)]),
            r.body
        );
        let e = &r.json()["error"];
        assert!(e["message"].is_string(), "{}", r.body);
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{}", r.body);
        }
    }
    // A prompt longer than the context (256 tokens here) within the body limit.
    let (st, e) =
        post(a, "/v1/completions", &json!({"prompt": (0..300).collect::<Vec<u32>>(), "max_tokens": 4}));
    assert_eq!(st, 400);
    assert!(e["error"]["message"].as_str().unwrap().contains("exceed the context"), "{e}");
    assert_eq!(request(a, "GET", "/v1/completions", None).unwrap().status, 405);
    // The server still works after all that.
    assert_eq!(request(a, "GET", "/health", None).unwrap().status, 200);
    s.shutdown();
}

/// Concurrent clients share the engine (more requests than cache slots), all succeed, and a
/// request in flight when shutdown begins still completes.
#[test]
fn concurrent_requests_and_graceful_shutdown() {
    let s = start(1 << 20);
    let a = s.addr();
    let body =
        json!({"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0.8, "seed": 7}).to_string();
    let results = uniattn::server::client::load(a, "/v1/completions", body.as_bytes(), 10, 2);
    assert_eq!(results.len(), 20);
    assert!(
        results.iter().all(|r| r.as_ref().is_ok_and(|r| r.status == 200 && r.completion_tokens > 0)),
        "{results:?}"
    );
    // Streamed load: every request succeeds and each has a first token and gaps between tokens.
    let r = uniattn::server::client::load_test(a, 4, 2, "Once upon a time", 6, true);
    assert_eq!((r.requests, r.failures), (8, 0), "{r:?}");
    let (ttft, itl) = (r.ttft_p50_s.unwrap(), r.itl_p50_s.unwrap());
    assert!(ttft > 0.0 && itl > 0.0 && ttft <= r.latency_p99_s, "{r:?}");
    let slow = std::thread::spawn(move || {
        post(a, "/v1/completions", &json!({"prompt": "Count: 1, 2, 3,", "max_tokens": 48, "temperature": 0}))
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    s.shutdown();
    let (st, c) = slow.join().unwrap();
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["usage"]["completion_tokens"], 48);
    assert!(request(a, "GET", "/health", None).is_err(), "the listener is closed after shutdown");
}

/// An API key, JSON-only bodies, limits on prompts per request and pending prompts (503 with
/// Retry-After), the tokenizer endpoints and a model's own card.
#[test]
fn keys_content_types_limits_and_tokenizer_endpoints() {
    let s = start_with(ServerOptions {
        api_key: Some("k3y".into()),
        max_pending: 2,
        max_prompts: 3,
        ..Default::default()
    });
    let a = s.addr();
    let auth = [("Content-Type", "application/json"), ("Authorization", "Bearer k3y")];
    let body = json!({"prompt": "Hi", "max_tokens": 2, "temperature": 0}).to_string();
    let call = |path: &str, body: &str, headers: &[(&str, &str)]| {
        request_with(a, "POST", path, Some(body.as_bytes()), headers).unwrap()
    };
    // No key, a wrong key: 401. /health needs none.
    assert_eq!(call("/v1/completions", &body, &auth[..1]).status, 401);
    assert_eq!(call("/v1/completions", &body, &[auth[0], ("Authorization", "Bearer nope")]).status, 401);
    assert_eq!(request(a, "GET", "/health", None).unwrap().status, 200);
    assert_eq!(call("/v1/completions", &body, &auth).status, 200);
    // A body that is not declared JSON (what a cross-site form can send) is refused.
    let r = call("/v1/completions", &body, &[("Content-Type", "text/plain"), auth[1]]);
    assert_eq!(r.status, 415, "{}", r.body);
    // Too many prompts in one request; more prompts than pending places.
    let many = json!({"prompt": ["a", "b", "c", "d"], "max_tokens": 1}).to_string();
    let r = call("/v1/completions", &many, &auth);
    assert!(r.status == 400 && r.json()["error"]["param"] == "prompt", "{}", r.body);
    let three = json!({"prompt": ["a", "b", "c"], "max_tokens": 1}).to_string();
    let r = call("/v1/completions", &three, &auth);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.headers.iter().any(|(k, v)| k == "retry-after" && v == "1"), "{:?}", r.headers);
    // The places come back: a request of two prompts runs afterwards.
    let two = json!({"prompt": ["a", "b"], "max_tokens": 1}).to_string();
    assert_eq!(call("/v1/completions", &two, &auth).status, 200);
    // Tokenize and back.
    let t = call("/tokenize", &json!({"prompt": "Hello world"}).to_string(), &auth);
    assert_eq!(t.status, 200, "{}", t.body);
    let ids = t.json()["tokens"].clone();
    assert_eq!(t.json()["count"], ids.as_array().unwrap().len());
    let d = call("/detokenize", &json!({"tokens": ids}).to_string(), &auth);
    assert_eq!(d.json()["prompt"], "Hello world");
    let d = call("/detokenize", &json!({"tokens": [99999999]}).to_string(), &auth);
    assert_eq!(d.status, 400);
    // A model's own card, and an unknown one.
    let get = |path: &str| request_with(a, "GET", path, None, &auth[1..]).unwrap();
    assert_eq!(get("/v1/models/smollm2").json()["id"], "smollm2");
    assert_eq!(get("/v1/models/other").status, 404);
    // Prometheus metrics count what happened; /health reports the pending prompts given back.
    let m = get("/metrics");
    assert_eq!(m.status, 200);
    for want in [
        "uniattn_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 2",
        "uniattn_requests_total{endpoint=\"/v1/completions\",status=\"503\"} 1",
        "uniattn_requests_total{endpoint=\"/v1/completions\",status=\"401\"} 2",
        "uniattn_time_to_first_token_seconds_count 3",
        "uniattn_pending_prompts 0",
    ] {
        assert!(m.body.contains(want), "{want} missing from:\n{}", m.body);
    }
    let h = request(a, "GET", "/health", None).unwrap();
    assert_eq!((h.status, h.json()["pending"].as_u64()), (200, Some(0)));
    s.shutdown();
}

/// lm-evaluation-harness's `local-completions` scoring, request for request: the context and
/// continuation tokens as one prompt, `echo`, `logprobs: 1`, `max_tokens: 1`, and the sum of
/// `token_logprobs[ctxlen:-1]` (the last entry is the generated token). It equals `eval mc`'s
/// log-likelihood of every choice: the generated token is reported even when it is the
/// end-of-sequence token, where lm-eval would otherwise drop a continuation token.
#[test]
fn lm_eval_local_completions_scores_equal_eval_mc() {
    use uniattn::eval::{loglikelihood::encode_pair, multiple_choice, tasks};
    let s = start(1 << 20);
    let a = s.addr();
    let task = tasks::load(&tasks_dir(), "arc_easy:rc_0shot").unwrap().remove(0);
    let m = loader::load(&model(SMOLLM2).unwrap(), Kind::Float, Device::Cpu).unwrap();
    let n = 25;
    let opts = multiple_choice::ScoringOptions { max_len: 2048, batch_tokens: 4096 };
    let (_, items) =
        multiple_choice::evaluate(&m.model, &m.tokenizer, &task, Some(n), opts, None, |_, _| {}).unwrap();
    let (mut worst, mut eos_next) = (0.0f64, 0);
    for (item, scored) in task.items.iter().take(n).zip(&items) {
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = item
            .requests
            .iter()
            .map(|r| encode_pair(&m.tokenizer, &r.context, &r.continuation).unwrap())
            .collect();
        let prompts: Vec<Vec<u32>> = pairs.iter().map(|(c, k)| [c.as_slice(), k].concat()).collect();
        let body = json!({"prompt": prompts, "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": true, "seed": 1234});
        let (st, out) = post(a, "/v1/completions", &body);
        assert_eq!(st, 200, "{out}");
        for (i, (ctx, _)) in pairs.iter().enumerate() {
            let lp = &out["choices"][i]["logprobs"];
            let t = lp["token_logprobs"].as_array().unwrap();
            let harness: f64 = t[ctx.len()..t.len() - 1].iter().map(|v| v.as_f64().unwrap()).sum();
            worst = worst.max((harness - scored.results[i].logprob).abs());
            // The generated token's text: empty for the end-of-sequence token.
            let last = lp["tokens"].as_array().unwrap().last().unwrap().as_str().unwrap().to_string();
            eos_next += usize::from(last.is_empty() || out["choices"][i]["finish_reason"] == "stop");
        }
    }
    eprintln!("lm-eval's scoring through serve vs eval mc, {n} questions: max |diff| {worst:.2e}, EOS generated after {eos_next} choices");
    assert!(worst < 1e-3, "{worst}");
    s.shutdown();
}

/// Sends `raw` on a new connection and returns what came back before the server closed it or
/// five seconds passed (empty when it closed without answering).
fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let _ = s.write_all(raw);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// What killed or leaked the tiny_http server (issue 16): absurd Content-Lengths, an HTTP/2.0
/// request line, an oversized header, a client that stalls mid-header, and a client that
/// abandons a long non-streaming request. Each gets an answer or a closed connection, the
/// process stays up, and the abandoned request stops occupying the engine.
#[test]
fn hostile_requests_leave_the_server_up() {
    let s = start(4096);
    let a = s.addr();
    let post_head = |len: &str| {
        format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n{{")
    };
    let r = raw_exchange(a, post_head("1000000000000").as_bytes());
    assert!(r.starts_with("HTTP/1.1 413"), "{r:.200}");
    let r = raw_exchange(a, post_head("18446744073709551615").as_bytes());
    assert!(r.starts_with("HTTP/1.1 4"), "an answer, not a dead thread: {r:.200}");
    let r = raw_exchange(a, post_head("99999999999999999999999").as_bytes());
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 4"), "{r:.200}");
    // 200 HTTP/2.0 request lines: each answered or closed, nothing leaked.
    for _ in 0..200 {
        let r = raw_exchange(a, b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n");
        assert!(!r.contains("200 OK"), "{r:.200}");
    }
    // A 1 MiB header line.
    let big = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    let r = raw_exchange(a, big.as_bytes());
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 431") || r.starts_with("HTTP/1.1 400"), "{r:.200}");
    // A client that stalls halfway through its headers does not hold the others up.
    let mut stalled = std::net::TcpStream::connect(a).unwrap();
    std::io::Write::write_all(&mut stalled, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
    assert_eq!(request(a, "GET", "/health", None).unwrap().status, 200);
    // A non-streaming request abandoned by its client is cancelled: the pending count drops
    // back to zero long before 64 tokens could have been generated for all 16 prompts.
    {
        use std::io::Write;
        let body =
            json!({"prompt": vec!["Once upon a time"; 16], "max_tokens": 64, "temperature": 0}).to_string();
        let mut c = std::net::TcpStream::connect(a).unwrap();
        write!(
            c,
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let busy = request(a, "GET", "/health", None).unwrap().json()["pending"].as_u64().unwrap();
        assert!(busy > 0, "the request is running");
    }
    let t0 = std::time::Instant::now();
    loop {
        let pending = request(a, "GET", "/health", None).unwrap().json()["pending"].as_u64().unwrap();
        if pending == 0 {
            break;
        }
        assert!(t0.elapsed().as_secs() < 10, "the abandoned request still holds {pending} places");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(stalled);
    let (st, c) = post(a, "/v1/completions", &json!({"prompt": "Hello", "max_tokens": 2}));
    assert_eq!(st, 200, "{c}");
    s.shutdown();
}

/// CORS is off unless asked for; with `--allow-origin` a preflight gets the methods and headers
/// (no API key needed for it), and answers to an allowed origin carry it, others do not.
#[test]
fn cors_only_for_allowed_origins() {
    let header = |r: &uniattn::server::client::HttpResponse, k: &str| {
        r.headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.clone())
    };
    let closed = start(1 << 20);
    let pre = [("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST")];
    let r = request_with(closed.addr(), "OPTIONS", "/v1/completions", None, &pre).unwrap();
    assert_eq!((r.status, header(&r, "access-control-allow-origin")), (405, None));
    closed.shutdown();
    let s = start_with(ServerOptions {
        allow_origins: vec!["https://app.example".into()],
        api_key: Some("k".into()),
        ..Default::default()
    });
    let a = s.addr();
    let r = request_with(a, "OPTIONS", "/v1/completions", None, &pre).unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(header(&r, "access-control-allow-origin").as_deref(), Some("https://app.example"));
    assert!(header(&r, "access-control-allow-headers").unwrap().contains("Authorization"));
    let body = json!({"prompt": "Hi", "max_tokens": 1}).to_string();
    let call = |origin: &str| {
        let h = [("Content-Type", "application/json"), ("Authorization", "Bearer k"), ("Origin", origin)];
        request_with(a, "POST", "/v1/completions", Some(body.as_bytes()), &h).unwrap()
    };
    let ok = call("https://app.example");
    assert_eq!(
        (ok.status, header(&ok, "access-control-allow-origin").as_deref()),
        (200, Some("https://app.example"))
    );
    let other = call("https://evil.example");
    assert_eq!((other.status, header(&other, "access-control-allow-origin")), (200, None));
    s.shutdown();
}

/// Past `request_timeout` a non-streaming request is answered 504 and a stream ends with an
/// error event; both free their places in the engine. The limit is far below the 64 tokens'
/// time on any CPU (400 ms was not: an idle 2-core machine decoded them in time once).
#[test]
fn requests_past_the_time_limit_end() {
    let s = start_with(ServerOptions {
        request_timeout: std::time::Duration::from_millis(60),
        ..Default::default()
    });
    let a = s.addr();
    let long = json!({"prompt": "Count: 1, 2, 3,", "max_tokens": 64, "temperature": 0});
    let t0 = std::time::Instant::now();
    let (st, e) = post(a, "/v1/completions", &long);
    assert_eq!(st, 504, "{e}");
    assert!(t0.elapsed().as_secs_f64() < 5.0, "answered at the limit, not at the end");
    let mut streamed = long.clone();
    streamed["stream"] = json!(true);
    let r = request(a, "POST", "/v1/completions", Some(streamed.to_string().as_bytes())).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("time limit") && r.body.trim_end().ends_with("data: [DONE]"), "{}", r.body);
    let t0 = std::time::Instant::now();
    while request(a, "GET", "/health", None).unwrap().json()["pending"] != 0 {
        assert!(t0.elapsed().as_secs() < 10, "the timed-out requests still hold their places");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    s.shutdown();
}
