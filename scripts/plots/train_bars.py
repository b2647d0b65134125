#!/usr/bin/env python3
"""Grouped bar chart of training tokens/s per model: transformers + torch.compile (default and
reduce-overhead modes, where measured) against `uniattn train`, from the files
scripts/device/train_vs_compiled.sh leaves (hf_<name>_<mode>.json, ours_<name>_metrics.jsonl).
Each model's bars are scaled to its tallest (the models differ 5x). Drawn by `uniattn plot`.

  scripts/plots/train_bars.py RESULTS_DIR OUT.svg NAME=LABEL ...
"""
import json
import os
import statistics
import sys

from chart import draw

MODES = [("compiled", "transformers + torch.compile, fused AdamW"),
         ("reduce-overhead", "same, mode=\"reduce-overhead\" (CUDA graphs)")]


def ours(path):
    """tokens/s at the median step time over full windows from step 4 (as the script reports)."""
    r = [json.loads(line) for line in open(path)]
    full = max(x["tokens"] for x in r)
    ms = statistics.median(x["tokens"] / x["tokens_per_second"] for x in r[3:] if x["tokens"] == full)
    return full / ms


def baseline(root, name, mode):
    for d in (root, os.path.join(root, f"{name}_baseline")):
        f = os.path.join(d, f"hf_{name}_{mode}.json")
        if os.path.exists(f):
            return json.load(open(f))["tokens_per_second"]
    return None


def main():
    root, out, models = sys.argv[1], sys.argv[2], [a.split("=", 1) for a in sys.argv[3:]]
    rows = {mode: [baseline(root, name, mode) for name, _ in models] for mode, _ in MODES}
    us = [ours(os.path.join(root, f"ours_{name}_metrics.jsonl")) for name, _ in models]
    best = [max((rows[m][i] for m, _ in MODES if rows[m][i]), default=None) for i in range(len(models))]
    labels = [f"{label} ({u / b:.2f}x the faster)" if b else label for (_, label), u, b in zip(models, us, best)]
    series = [{"name": title, "values": rows[mode]} for mode, title in MODES if any(rows[mode])]
    draw({"kind": "bars", "title": "full fine-tuning tokens/s (H200, bf16 autocast, 8 x 1,024 tokens a step)",
          "y_label": "training tokens/s", "categories": labels,
          "series": series + [{"name": "uniattn train", "values": us}], "per_category_scale": True}, out)


if __name__ == "__main__":
    main()
