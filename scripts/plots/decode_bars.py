#!/usr/bin/env python3
"""Grouped bar chart of decode tokens/s per (batch, context) case: the medians over `uniattn
bench --json` repeats and over transformers' JSON lines, one bar per series, each case scaled to
its own tallest bar (the cases differ 30x), the value on each bar. Drawn by `uniattn plot`.
With --gpu-ms first, the bars are bench's GPU ms a decode step instead (ours only).

  scripts/plots/decode_bars.py [--gpu-ms] OUT.svg "label=file1.json,file2.json[:model]" ... "label=hf.jsonl"
"""
import json
import statistics
import sys

from chart import draw


def series(spec, key):
    label, _, files = spec.partition("=")
    files, _, model = files.partition(":")
    runs = {}
    for f in files.split(","):
        if f.endswith(".jsonl"):
            rows = [json.loads(line) for line in open(f) if line.startswith("{")]
            rows = [dict(r, decode_tokens_per_s=v) for r in rows for v in r.get("decode_runs", [r["decode_tokens_per_s"]])]
        else:
            d = json.load(open(f))
            rows = d["rows"] if isinstance(d, dict) else d
        for r in rows:
            if model and r.get("model") != model:
                continue
            if key not in r:
                sys.exit(f"decode_bars: {f}: a row without {key} (transformers' rows have no GPU ms)")
            runs.setdefault((r["batch"], r["context"]), []).append(r[key])
    return label, {k: statistics.median(v) for k, v in runs.items()}


def main():
    args = sys.argv[1:]
    gpu_ms = bool(args) and args[0] == "--gpu-ms"
    args = args[1:] if gpu_ms else args
    key, what = ("gpu_ms_per_step", "GPU ms a decode step") if gpu_ms else ("decode_tokens_per_s", "decode tokens/s")
    out, specs = args[0], [series(s, key) for s in args[1:]]
    cases = sorted({k for _, s in specs for k in s})
    draw({"kind": "bars", "title": f"{what} (median of repeats)", "y_label": what,
          "categories": [f"batch {b}, {c // 1024}k context" for b, c in cases],
          "series": [{"name": label, "values": [s.get(case) for case in cases]} for label, s in specs],
          "per_category_scale": True}, out)


if __name__ == "__main__":
    main()
