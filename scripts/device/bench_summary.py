#!/usr/bin/env python3
"""A graph_bench.sh folder as one markdown table: each setting's decode tok/s (median [min-max] of
the repeats), GPU ms a step, and the ratio to transformers' compiled loop from the same call.
Settings are named by the JSON files (bench_<setting>_<repeat>.json); NAME=LABEL renames one.
    python3 scripts/device/bench_summary.py results/engine_gpu/<folder> graphs="this commit"
"""
import glob, json, os, re, statistics, sys
folder = sys.argv[1]
labels = dict(a.split("=", 1) for a in sys.argv[2:])
rows = {}
for f in sorted(glob.glob(os.path.join(folder, "bench_*_[0-9].json"))):
    setting = re.sub(r"_\d+\.json$", "", os.path.basename(f))[6:]
    for r in json.load(open(f)):
        if r.get("error"):
            continue
        key = (labels.get(setting, setting), r["model"], r["batch"], r["context"])
        rows.setdefault(key, []).append((r["decode_tokens_per_s"], r["gpu_ms_per_step"]))
hf = {}
for f in glob.glob(os.path.join(folder, "hf_compiled.jsonl")):
    for l in open(f):
        if l.startswith("{"):
            r = json.loads(l); hf[(r["batch"], r["context"])] = r
print("decode tok/s, median [min-max] of the repeats; GPU ms/step median; x = vs transformers' compiled loop (same call)")
print("| setting | model | batch | context | tok/s | GPU ms/step | x compiled |")
print("|---|---|---|---|---|---|---|")
for (s, m, b, c), v in rows.items():
    t = [x[0] for x in v]; g = statistics.median(x[1] for x in v)
    base = hf.get((b, c)); x = f"{statistics.median(t)/base['decode_tokens_per_s']:.2f}x" if base else "-"
    print(f"| {s} | {m} | {b} | {c} | {statistics.median(t):,.1f} [{min(t):,.1f}-{max(t):,.1f}] | {g:.3f} | {x} |")
for (b, c), r in hf.items():
    t = r["decode_runs"]
    print(f"| transformers compiled (gpt-fast-style) | q05 | {b} | {c} | {statistics.median(t):,.1f} [{min(t):,.1f}-{max(t):,.1f}] | - | 1.00x |")
