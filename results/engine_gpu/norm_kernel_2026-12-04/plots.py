#!/usr/bin/env python3
"""The plots of this folder from the calls' JSON: tok_s_b32.svg (batch 32, dense and UniAttn,
before and after the decode norm kernel, call F's medians) and ratio_b32_8k.svg (UniAttn / dense
at batch 32 / 8k in each repeat of each call but the cluster form's, against the issue's target).
    python3 results/engine_gpu/norm_kernel_2026-12-04/plots.py"""
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "scripts", "plots"))
import chart  # noqa: E402

TARGET = 1 + 0.8 * 0.14411


def tok_s(call, setting, repeat, context, model):
    rows = json.load(open(os.path.join(HERE, call, "json", f"bench_{setting}_{repeat}.json")))
    return next(r["decode_tokens_per_s"] for r in rows
                if r["context"] == context and r["model"].rsplit("/", 1)[-1] == model and r["batch"] == 32)


def main():
    f = "callF_norm_kernel"
    cats, before, after = [], [], []
    for context in (2048, 8192):
        for model, name in (("q05", "dense"), ("q05-uni", "UniAttn")):
            cats.append(f"{name}, {context // 1024}k")
            before.append(statistics.median(tok_s(f, "old", r, context, model) for r in (1, 2, 3)))
            after.append(statistics.median(tok_s(f, "graphs", r, context, model) for r in (1, 2, 3)))
    chart.draw({
        "kind": "bars",
        "title": "Decode tok/s at batch 32, H200, bf16, 0.5B shapes (call F, median of 3, builds alternating)",
        "y_label": "tokens a second",
        "categories": cats,
        "series": [{"name": "1a398f9: libtorch's fused RMSNorm", "values": before},
                   {"name": "a3ef9c2: rms_norm_decode, launched behind the projection", "values": after}],
    }, os.path.join(HERE, "tok_s_b32.svg"))
    runs = [("callE_paired_rejected", "old", "1a398f9, call E"),
            ("callE_paired_rejected", "UNIATTN_DECODE_ATTENTION_PAIRED1", "two blocks a launched block (rejected), call E"),
            ("callF_norm_kernel", "old", "1a398f9, call F"),
            ("callF_norm_kernel", "graphs", "a3ef9c2 (norm kernel), call F"),
            ("callG_cluster_rejected", "graphs", "a3ef9c2 + cluster kernel off, call G")]
    # The cluster form (call G, 1.013-1.023) is left out: it would flatten the rest.
    series = []
    for call, setting, name in runs:
        pts = [[r, tok_s(call, setting, r, 8192, "q05-uni") / tok_s(call, setting, r, 8192, "q05")] for r in (1, 2, 3)]
        series.append({"name": name, "points": pts})
    series.append({"name": "target: 1 + 0.8 x 14.411% of a step's bytes saved",
                   "points": [[r, TARGET] for r in (1, 2, 3)]})
    chart.draw({
        "kind": "lines",
        "title": "UniAttn / dense decode tok/s, batch 32 / 8k, H200, bf16, 0.5B shapes",
        "x_label": "repeat",
        "y_label": "UniAttn tok/s / dense tok/s",
        "series": series,
    }, os.path.join(HERE, "ratio_b32_8k.svg"))


if __name__ == "__main__":
    main()
