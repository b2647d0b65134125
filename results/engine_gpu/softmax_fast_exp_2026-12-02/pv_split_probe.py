# Issue 17: how fast can the reuse layers' P V run through cuBLAS at batch 32 / 8k (0.5B shapes:
# 64 (sequence, KV head) pairs, 7 query heads a KV head, 8,448 keys, head dim 64), and does a
# split over the keys (more CTAs than cuBLAS's 64 tiles) help? Four sets of buffers rotate so
# that L2 (50 MB) does not hold the 67 MB of values. CUDA graphs of 20 calls, timed by events.
import torch
torch.manual_seed(0)
dev, dt = "cuda", torch.bfloat16
B, G, L, D, SETS = 64, 7, 8448, 64, 4
P = [torch.rand(B, G, L, device=dev, dtype=dt) for _ in range(SETS)]
V = [torch.randn(B, L, D, device=dev, dtype=dt) for _ in range(SETS)]
def split_layout(p, s):  # the map written chunk-major: [B*s, G, L/s]
    return p.view(B, G, s, L // s).permute(0, 2, 1, 3).reshape(B * s, G, L // s).contiguous()
PS = {s: [split_layout(p, s) for p in P] for s in (2, 3, 4)}
def plain(i): return torch.bmm(P[i], V[i])
def transposed(i): return torch.bmm(V[i].transpose(1, 2), P[i].transpose(1, 2))
def split_copy(s):
    def f(i):
        p = split_layout(P[i], s)
        return torch.bmm(p, V[i].view(B * s, L // s, D)).view(B, s, G, D).sum(1)
    return f
def split_ready(s):
    def f(i): return torch.bmm(PS[s][i], V[i].view(B * s, L // s, D)).view(B, s, G, D).sum(1)
    return f
def split_gemm_only(s):
    def f(i): return torch.bmm(PS[s][i], V[i].view(B * s, L // s, D))
    return f
ref = plain(0).float()
forms = {"bmm (today)": plain, "bmm V^T P^T": transposed}
for s in (2, 3, 4):
    forms[f"split {s}, map copied"] = split_copy(s)
    forms[f"split {s}, map in split layout"] = split_ready(s)
    forms[f"split {s}, GEMM alone"] = split_gemm_only(s)
print(f"| form | us a call | TB/s (values + map) | max abs diff |")
print("| --- | --- | --- | --- |")
bytes_ = B * L * D * 2 + B * G * L * 2
for name, f in forms.items():
    out = f(0)
    diff = (out.float() - (ref if out.shape == ref.shape else out.float())).abs().max().item() if "alone" not in name else float("nan")
    if name == "bmm V^T P^T":
        diff = (out.transpose(1, 2).float() - ref).abs().max().item()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(SETS): f(i)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for r in range(20): f(r % SETS)
    g.replay(); torch.cuda.synchronize()
    ts = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); b.synchronize()
        ts.append(a.elapsed_time(b) * 1000 / 20)
    t = sorted(ts)[2]
    print(f"| {name} | {t:.1f} | {bytes_ / t / 1e6:.2f} | {diff:.3g} |")
