"""Times the pieces of a UniAttn lead/reuse decode step against fused attention, with the
engine's shapes and cache layout (a narrowed view of a [slots, Hkv, max_len, d] cache), to find
which kernel makes the explicit-probability path slow at long contexts.

    python3 scripts/device/lead_attention_probe.py
"""
import torch

torch.manual_seed(0)
dev, dt = "cuda", torch.bfloat16
Hkv, g, d = 2, 7, 64


def bench(fn, reps=50, inner=20):
    """GPU time of one call, from CUDA-graph replays of `inner` calls (no launch overhead)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(inner):
            fn()
    graph.replay()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    s.record()
    for _ in range(reps):
        graph.replay()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / reps / inner * 1e3  # us


for n, L in [(1, 2048), (1, 8192), (32, 8192)]:
    maxL = L + 256
    kc = torch.randn(n, Hkv, maxL, d, device=dev, dtype=dt)
    vc = torch.randn(n, Hkv, maxL, d, device=dev, dtype=dt)
    K, V = kc[:, :, :L], vc[:, :, :L]
    Kc, Vc = K.contiguous(), V.contiguous()
    q = torch.randn(n, Hkv * g, 1, d, device=dev, dtype=dt)
    mask = torch.zeros(n, 1, 1, L, device=dev, dtype=dt)
    P = torch.softmax(torch.randn(n, Hkv * g, 1, L, device=dev), -1).to(dt)
    rows = {
        "scores bmm (strided K)": lambda: q.reshape(n, Hkv, g, d) @ K.transpose(-2, -1),
        "scores bmm (contiguous K)": lambda: q.reshape(n, Hkv, g, d) @ Kc.transpose(-2, -1),
        "softmax f32 + cast": lambda: (P + mask).softmax(-1, dtype=torch.float32).to(dt),
        "P V bmm (strided V)": lambda: P.reshape(n, Hkv, g, L) @ V,
        "P V bmm (contiguous V)": lambda: P.reshape(n, Hkv, g, L) @ Vc,
        "P V as [n*Hkv*g, L] x V^T gemv": lambda: torch.einsum("bhgl,bhld->bhgd", P.reshape(n, Hkv, g, L), V),
        "SDPA (mask, gqa)": lambda: torch.nn.functional.scaled_dot_product_attention(q, K, V, attn_mask=mask, enable_gqa=True),
    }
    for name, fn in rows.items():
        print(f"n={n:2d} L={L:5d}  {name:34s} {bench(fn):8.1f} us", flush=True)
