#!/usr/bin/env python3
"""Grouped bar chart (SVG, standard library only) of decode tokens/s per (batch, context) case:
the medians over `uniattn bench --json` repeats and over transformers' JSON lines, one bar per
series, each case scaled to its own tallest bar (the cases differ 30x), the value on each bar.

  scripts/plots/decode_bars.py OUT.svg "label=file1.json,file2.json[:model]" ... "label=hf.jsonl"
"""
import json
import statistics
import sys

COLORS = ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]


def series(spec):
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
            runs.setdefault((r["batch"], r["context"]), []).append(r["decode_tokens_per_s"])
    return label, {k: statistics.median(v) for k, v in runs.items()}


def main():
    out, specs = sys.argv[1], [series(s) for s in sys.argv[2:]]
    cases = sorted({k for _, s in specs for k in s})
    bw, gap, h, top, left = 26, 30, 260, 50, 20
    width = left + len(cases) * (len(specs) * bw + gap) + 230
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h + top + 70}" font-family="sans-serif" font-size="11">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="{left}" y="22" font-size="14">Decode tokens/s (median of repeats; bars scaled per case)</text>']
    x = left
    for case in cases:
        peak = max(s.get(case, 0) for _, s in specs) or 1
        for i, (_, s) in enumerate(specs):
            v = s.get(case)
            if v is not None:
                bh = v / peak * h
                parts.append(f'<rect x="{x}" y="{top + h - bh:.1f}" width="{bw - 4}" height="{bh:.1f}" fill="{COLORS[i % len(COLORS)]}"/>')
                parts.append(f'<text x="{x + (bw - 4) / 2}" y="{top + h - bh - 4:.1f}" font-size="9" text-anchor="middle" transform="rotate(-60 {x + (bw - 4) / 2} {top + h - bh - 4:.1f})">{v:,.0f}</text>')
            x += bw
        parts.append(f'<text x="{x - len(specs) * bw / 2}" y="{top + h + 18}" text-anchor="middle">batch {case[0]}, {case[1] // 1024}k</text>')
        x += gap
    parts.append(f'<line x1="{left}" y1="{top + h}" x2="{x}" y2="{top + h}" stroke="black"/>')
    parts.append(f'<text x="{(left + x) / 2}" y="{top + h + 40}" text-anchor="middle">case (batch size, context length)</text>')
    for i, (label, _) in enumerate(specs):
        y = top + 10 + i * 18
        parts.append(f'<rect x="{x + 10}" y="{y - 9}" width="12" height="12" fill="{COLORS[i % len(COLORS)]}"/><text x="{x + 28}" y="{y + 1}">{label}</text>')
    parts.append("</svg>")
    open(out, "w").write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
