# torch's own choice for the decode step's projections (F.linear at m rows), timed like ltsweep:
# 200 launches in a CUDA graph, weights rotated through more copies than L2 holds.
import sys, torch, torch.nn.functional as F
m = int(sys.argv[1]) if len(sys.argv) > 1 else 32
for name, n, k in [("qkv", 1152, 896), ("vc", 1024, 896), ("o", 896, 896), ("gate_up", 9728, 896), ("down", 896, 4864)]:
    copies = max(2, (256 << 20) // (n * k * 2) + 1)
    w = [torch.zeros(n, k, dtype=torch.bfloat16, device="cuda") for _ in range(copies)]
    x = torch.zeros(m, k, dtype=torch.bfloat16, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for i in range(3): F.linear(x, w[i])
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for l in range(200): y = F.linear(x, w[l % copies])
    g.replay(); torch.cuda.synchronize()
    best = 1e9
    for _ in range(5):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record(); g.replay(); e1.record(); torch.cuda.synchronize()
        best = min(best, e0.elapsed_time(e1))
    us = best * 1000 / 200
    print(f"torch {name:8s} m={m} n={n} k={k} {us:.2f} us {n*k*2/us/1e6:.2f} TB/s")
    del w, g
