#!/usr/bin/env python3
"""Hostile traffic and a soak against `uniattn serve`, on loopback only (standard library only).

Starts the server on a free port (SmolLM2 by default), sends every hostile case issue 16 lists
(absurd Content-Lengths, HTTP/2.0 request lines, an oversized header, slow clients, text/plain
bodies, abandoned non-streaming requests, a full queue), checking after each that the process is
alive, /health answers and descriptors do not leak; then a soak of CLIENTS x REQUESTS mixed
requests (non-streaming, streaming, cancelled, malformed) with p50/p99 latency, failures, and the
server's resident memory before and after. Prints a table, writes --json, exits 1 on any
unexpected result.

  python3 scripts/hostile_soak.py [--model smollm2] [--clients 64] [--requests 200] [--json out.json]
"""
import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--binary", default="./target/release/uniattn")
p.add_argument("--model", default="smollm2")
p.add_argument("--clients", type=int, default=64)
p.add_argument("--requests", type=int, default=200, help="per client")
p.add_argument("--json")
args = p.parse_args()

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    PORT = s.getsockname()[1]
server = subprocess.Popen(
    [args.binary, "serve", "--model", args.model, "--port", str(PORT), "--host", "127.0.0.1", "--max-batch", "16",
     "--max-len", "512", "--no-request-log"],
    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
problems = []


def raw(data, timeout=10.0):
    """Sends bytes on a new connection; returns what came back (b'' if closed unanswered)."""
    with socket.create_connection(("127.0.0.1", PORT), timeout=timeout) as c:
        try:
            c.sendall(data)
        except OSError:
            pass
        out = b""
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                out += b
        except OSError:
            pass
        return out


def http(method, path, body=None, headers=None, timeout=60.0):
    """A whole request on a new connection: (status, body bytes, chunks, seconds)."""
    t0 = time.time()
    head = [f"{method} {path} HTTP/1.1", "Host: x", "Connection: close"]
    data = body.encode() if isinstance(body, str) else (body or b"")
    hs = {"Content-Type": "application/json", **(headers or {})}
    head += [f"{k}: {v}" for k, v in hs.items()] + [f"Content-Length: {len(data)}", "", ""]
    r = raw("\r\n".join(head).encode() + data, timeout=timeout)
    if not r:
        return 0, b"", 0, time.time() - t0
    status = int(r.split(b" ", 2)[1])
    body = r.split(b"\r\n\r\n", 1)[1]
    return status, body, body.count(b"data: "), time.time() - t0


def health():
    try:
        s, b, _, _ = http("GET", "/health", timeout=10)
        return s, json.loads(b) if s else {}
    except (OSError, ValueError):
        return 0, {}


def rss_kib():
    for line in open(f"/proc/{server.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds():
    return len(os.listdir(f"/proc/{server.pid}/fd"))


def open_post(body, path="/v1/completions"):
    """A connection that has sent a whole JSON POST and has not read the answer."""
    c = socket.create_connection(("127.0.0.1", PORT), timeout=60)
    c.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
              f"{len(body)}\r\n\r\n{body}".encode())
    return c


def pending():
    return health()[1].get("pending", 0)


def wait_until(done, seconds):
    """Polls `done()` until it holds or `seconds` pass; returns the seconds waited."""
    t0 = time.time()
    while not done() and time.time() - t0 < seconds:
        time.sleep(0.05)
    return time.time() - t0


def check(name, ok, detail=""):
    alive = server.poll() is None
    h, _ = health() if alive else (0, {})
    good = ok and alive and h == 200
    print(f"{'ok  ' if good else 'FAIL'} {name}{': ' + detail if detail else ''}{'' if alive else ' (server died)'}")
    if not good:
        problems.append(name)


for _ in range(600):
    if health()[0] == 200:
        break
    if server.poll() is not None:
        sys.exit("the server did not start: " + server.stderr.read()[-2000:])
    time.sleep(0.5)
else:
    sys.exit("the server did not answer /health within 5 minutes")

# ---- hostile cases
post = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{"
r = raw(post.format(10**12).encode())
check("Content-Length 10^12", r.startswith(b"HTTP/1.1 413"), r[:40].decode(errors="replace"))
r = raw(post.format(2**64 - 1).encode())
check("Content-Length 2^64-1", r.startswith(b"HTTP/1.1 4"), r[:40].decode(errors="replace"))
before = fds()
for _ in range(200):
    raw(b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n")
time.sleep(0.5)
check("200 HTTP/2.0 request lines", fds() <= before + 8, f"descriptors {before} -> {fds()}")
rss0 = rss_kib()
r = raw(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (64 << 20) + b"\r\n\r\n")
check("a 64 MiB header line", not r.startswith(b"HTTP/1.1 200") and rss_kib() < rss0 + 32 * 1024,
      f"answer {r[:20]!r}, RSS +{(rss_kib() - rss0) // 1024} MiB")
slow = [socket.create_connection(("127.0.0.1", PORT)) for _ in range(200)]
for c in slow:
    c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
check("200 clients stalled mid-header", health()[0] == 200)
for c in slow:
    c.close()
s, b, _, _ = http("POST", "/v1/completions", '{"prompt": "x"}', {"Content-Type": "text/plain"})
check("text/plain body", s == 415, str(s))
s, b, _, _ = http("POST", "/v1/completions", json.dumps({"prompt": ["x"] * 10000, "max_tokens": 4}))
check("10^4 prompts in one request", s == 400, str(s))
body = json.dumps({"prompt": ["Once upon a time"] * 64, "max_tokens": 128, "temperature": 0})
abandoned = [open_post(body) for _ in range(4)]
wait_until(lambda: pending() >= 256, 10)
running = pending()
for c in abandoned:
    c.close()
waited = wait_until(lambda: pending() == 0, 30)
check("4 abandoned 64-prompt requests cancelled", running == 256 and pending() == 0,
      f"{running} pending, 0 after {waited:.2f} s")
one = json.dumps({"prompt": "Once upon a time", "max_tokens": 128})
sockets = [open_post(one) for _ in range(300)]
wait_until(lambda: pending() >= 256, 10)
s, _, _, _ = http("POST", "/v1/completions", one)
check("a full queue answers 503", s == 503, f"{s} with {pending()} pending")
for c in sockets:
    c.close()
waited = wait_until(lambda: pending() == 0, 60)
check("300 abandoned requests drained", pending() == 0, f"{waited:.1f} s")
one_token = [http("POST", "/v1/completions", json.dumps({"prompt": "Hello", "max_tokens": 1}))[3] for _ in range(5)]


def first_byte(path, body):
    """Seconds until the first `data:` event of a streamed request arrives (the stream is read
    to its end, so that no abandoned stream shares the next one's steps)."""
    t0, first, buf = time.time(), float("inf"), b""
    with open_post(body, path) as c:
        while b"[DONE]" not in buf:
            b = c.recv(4096)
            if not b:
                break
            buf += b
            if first == float("inf") and b"data: " in buf.partition(b"\r\n\r\n")[2]:
                first = time.time() - t0
    return first


ttft = [first_byte("/v1/completions", json.dumps({"prompt": "Hello", "max_tokens": 32, "stream": True}))
        for _ in range(5)]
check("streaming first token <= 1.2x a one-token request", statistics.median(ttft) <= 1.2 * statistics.median(one_token),
      f"{statistics.median(ttft) * 1e3:.1f} ms vs {statistics.median(one_token) * 1e3:.1f} ms")
s, b, chunks, _ = http("POST", "/v1/completions", json.dumps({"prompt": "Hello", "max_tokens": 16, "stream": True}))
events = [e for e in b.split(b"data: ")[1:] if not e.startswith(b"[DONE]")]
check("events one token at a time", s == 200 and len(events) >= 8, f"{len(events)} events")

# ---- soak
rss_before = rss_kib()
lat, unexpected, kinds = [], [], {"plain": 0, "stream": 0, "cancelled": 0, "malformed": 0}
lock = threading.Lock()


def client(seed):
    rnd = random.Random(seed)
    for _ in range(args.requests):
        kind = rnd.choices(list(kinds), [4, 3, 1.5, 1.5])[0]
        t0, s = time.time(), None
        try:
            if kind == "plain":
                s, b, _, _ = http("POST", "/v1/completions", json.dumps({"prompt": "Once upon", "max_tokens": 4}))
                ok = s == 200 and json.loads(b)["usage"]["completion_tokens"] > 0
            elif kind == "stream":
                s, b, _, _ = http("POST", "/v1/chat/completions", json.dumps(
                    {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True}))
                ok = s == 200 and b.rstrip().endswith(b"0") and b"[DONE]" in b
            elif kind == "cancelled":
                open_post(json.dumps({"prompt": "Once upon", "max_tokens": 64})).close()
                ok = True
            else:
                s, b, _, _ = http("POST", "/v1/completions", rnd.choice(
                    ['{"prompt": ', '{"prompt": "x", "max_tokens": -1}', '[]', '{"prompt": [99999999]}']))
                ok = s == 400
            if s == 503:
                ok = True  # the queue was full: an expected answer under load
        except Exception as e:  # noqa: BLE001 (any failure counts)
            ok, s = False, repr(e)
        with lock:
            kinds[kind] += 1
            if kind in ("plain", "stream"):
                lat.append(time.time() - t0)
            if not ok:
                unexpected.append(f"{kind}: {s}")


t0 = time.time()
threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
soak_s = time.time() - t0
time.sleep(2)
wait_until(lambda: pending() == 0, 60)
rss_after = rss_kib()
lat.sort()
q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] if lat else float("nan")  # noqa: E731
report = {
    "clients": args.clients, "requests": args.clients * args.requests, "kinds": kinds, "seconds": round(soak_s, 1),
    "unexpected": len(unexpected), "examples": unexpected[:5], "latency_p50_s": q(0.5), "latency_p99_s": q(0.99),
    "rss_before_mib": rss_before / 1024, "rss_after_mib": rss_after / 1024, "hostile_failures": problems,
}
print(f"soak: {report['requests']} requests {kinds} in {soak_s:.0f} s; unexpected {len(unexpected)} "
      f"{unexpected[:3]}; p50 {q(0.5) * 1e3:.0f} ms, p99 {q(0.99) * 1e3:.0f} ms; "
      f"RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB")
check("soak without unexpected failures", not unexpected)
check("memory after the soak within 10% of before", rss_after <= 1.1 * rss_before)
server.terminate()
server.wait(timeout=60)
if args.json:
    json.dump(report, open(args.json, "w"), indent=1)
sys.exit(1 if problems else 0)
