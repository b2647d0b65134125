#!/usr/bin/env python3
"""A graph_bench.sh folder as one markdown table: each setting's decode tok/s (median [min-max] of
the repeats), GPU ms a step, and the ratio to transformers' compiled loop from the same call.
Settings are named by the JSON files (bench_<setting>_<repeat>.json); NAME=LABEL renames one.
    python3 scripts/device/bench_summary.py results/engine_gpu/<folder> graphs="this commit"
"""
import glob
import json
import os
import re
import statistics
import sys


def spread(values):
    return f"{statistics.median(values):,.1f} [{min(values):,.1f}-{max(values):,.1f}]"


def main(folder, labels):
    runs = {}
    for path in sorted(glob.glob(os.path.join(folder, "bench_*_[0-9].json"))):
        setting = re.sub(r"_\d+\.json$", "", os.path.basename(path))[len("bench_"):]
        for r in json.load(open(path)):
            if not r.get("error"):
                key = (labels.get(setting, setting), r["model"], r["batch"], r["context"])
                runs.setdefault(key, []).append((r["decode_tokens_per_s"], r["gpu_ms_per_step"]))
    compiled = {}
    hf = os.path.join(folder, "hf_compiled.jsonl")
    if os.path.exists(hf):
        for line in open(hf):
            if line.startswith("{"):
                r = json.loads(line)
                compiled[(r["batch"], r["context"])] = r
    print("decode tok/s, median [min-max] of the repeats; GPU ms/step median; "
          "x = vs transformers' compiled loop (same call)")
    print("| setting | model | batch | context | tok/s | GPU ms/step | x compiled |")
    print("|---|---|---|---|---|---|---|")
    for (setting, model, batch, context), v in runs.items():
        tok = [t for t, _ in v]
        base = compiled.get((batch, context))
        ratio = f"{statistics.median(tok) / base['decode_tokens_per_s']:.2f}x" if base else "-"
        gpu_ms = statistics.median(ms for _, ms in v)
        print(f"| {setting} | {model} | {batch} | {context} | {spread(tok)} | {gpu_ms:.3f} | {ratio} |")
    for (batch, context), r in compiled.items():
        print(f"| transformers compiled (gpt-fast-style) | {os.path.basename(r['model'])} | {batch} | {context} "
              f"| {spread(r['decode_runs'])} | - | 1.00x |")


if __name__ == "__main__":
    main(sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:]))
