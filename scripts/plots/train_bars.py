#!/usr/bin/env python3
"""Grouped bar chart (SVG, standard library only) of training tokens/s per model: transformers
+ torch.compile (fused AdamW) against `uniattn train`, from the files
scripts/device/train_vs_compiled.sh leaves (hf_<name>_compiled.json, ours_<name>_metrics.jsonl).
Each model's bars are scaled to its tallest (the models differ 5x); values and ratios on top.

  scripts/plots/train_bars.py RESULTS_DIR OUT.svg NAME=LABEL ...
"""
import json
import os
import statistics
import sys

COLORS = ["#7f7f7f", "#1f77b4"]


def ours(path):
    """tokens/s at the median step time over full windows from step 4 (as the script reports)."""
    r = [json.loads(line) for line in open(path)]
    full = max(x["tokens"] for x in r)
    ms = statistics.median(x["tokens"] / x["tokens_per_second"] for x in r[3:] if x["tokens"] == full)
    return full / ms


def main():
    root, out, models = sys.argv[1], sys.argv[2], [a.split("=", 1) for a in sys.argv[3:]]
    rows = []
    for name, label in models:
        hf = json.load(open(os.path.join(root, f"hf_{name}_compiled.json")))["tokens_per_second"]
        rows.append((label, hf, ours(os.path.join(root, f"ours_{name}_metrics.jsonl"))))
    bw, gap, h, top, left = 60, 60, 240, 50, 30
    width = left + len(rows) * (2 * bw + gap) + 260
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h + top + 80}" font-family="sans-serif" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="{left}" y="24" font-size="14">Full fine-tuning, tokens/s (H200, bf16 autocast, 8 x 1,024 tokens a step; bars scaled per model)</text>']
    x = left
    for label, hf, us in rows:
        peak = max(hf, us)
        for i, v in enumerate((hf, us)):
            bh = v / peak * h
            parts.append(f'<rect x="{x}" y="{top + h - bh:.1f}" width="{bw - 8}" height="{bh:.1f}" fill="{COLORS[i]}"/>')
            parts.append(f'<text x="{x + (bw - 8) / 2}" y="{top + h - bh - 5:.1f}" text-anchor="middle">{v:,.0f}</text>')
            x += bw
        parts.append(f'<text x="{x - bw}" y="{top + h + 18}" text-anchor="middle">{label}</text>')
        parts.append(f'<text x="{x - bw}" y="{top + h + 34}" text-anchor="middle" font-size="11">ours / compiled: {us / hf:.2f}x</text>')
        x += gap
    parts.append(f'<line x1="{left}" y1="{top + h}" x2="{x}" y2="{top + h}" stroke="black"/>')
    parts.append(f'<text x="{(left + x) / 2}" y="{top + h + 60}" text-anchor="middle">model shapes (random weights)</text>')
    for i, name in enumerate(["transformers + torch.compile, fused AdamW", "uniattn train"]):
        y = top + 10 + i * 20
        parts.append(f'<rect x="{x + 10}" y="{y - 10}" width="12" height="12" fill="{COLORS[i]}"/><text x="{x + 28}" y="{y + 1}">{name}</text>')
    parts.append("</svg>")
    open(out, "w").write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
