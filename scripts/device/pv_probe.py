"""Kernel times of one decode layer's attention pieces (issue 17), with torch on the GPU machine.

Captures each piece 50 times in a CUDA graph and reports microseconds per call and the bytes it
must read: the reuse layer's `P V` (what `Heads::apply_probs` runs), a lead's explicit path
(score GEMM, softmax, `P V`) and the fused attention a dense layer runs, for the shapes of
Qwen2.5-Coder-0.5B (14 query heads, 2 kv heads of 64) at batch 1 and 32, 2k and 8k keys.
    python scripts/device/pv_probe.py
"""
import json
import torch
import torch.nn.functional as F

H, HKV, D = 14, 2, 64
G = H // HKV
dev, dt = "cuda", torch.bfloat16


def timed(fn, reps=50):
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        best = min(best, a.elapsed_time(b) * 1e3 / reps)
    return best


for b in (1, 32):
    for k in (2048, 8192):
        cap = k + 256
        kc = torch.randn(b, HKV, cap, D, device=dev, dtype=dt)
        vc = torch.randn(b, HKV, cap, D, device=dev, dtype=dt)
        keys, values = kc[:, :, :k], vc[:, :, :k]
        q = torch.randn(b, H, 1, D, device=dev, dtype=dt)
        p = torch.softmax(torch.randn(b, H, 1, k, device=dev, dtype=torch.float32), -1).to(dt)
        kv_bytes = b * HKV * k * D * 2
        pv = lambda: p.reshape(b, HKV, G, k).matmul(values)
        scores = lambda: q.reshape(b, HKV, G, D).matmul(keys.transpose(-2, -1))
        softmax = lambda: torch.softmax(scores().float(), -1).to(dt)
        sdpa = lambda: F.scaled_dot_product_attention(q, keys, values, enable_gqa=True)
        r = {"batch": b, "keys": k, "v_MB": kv_bytes / 1e6}
        for name, fn in [("pv", pv), ("scores", scores), ("lead_explicit", lambda: softmax().reshape(b, HKV, G, k).matmul(values)), ("sdpa", sdpa)]:
            us = timed(fn)
            r[name + "_us"] = round(us, 2)
        r["pv_TBps"] = round(kv_bytes / r["pv_us"] / 1e6, 2)
        r["sdpa_TBps"] = round(2 * kv_bytes / r["sdpa_us"] / 1e6, 2)
        print(json.dumps(r), flush=True)
