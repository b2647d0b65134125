#!/usr/bin/env python3
"""The plots of this folder from the calls' files: changes.svg (UniAttn decode tok/s at batch 32
of each change measured here, against a3ef9c2 in the same call) and stream.svg (the joint
launch's 338 MB streamed seven ways, callM_stream_variants/stream2.txt, with the SM clock Nsight
Compute measured for five of them).
    python3 results/engine_gpu/joint_clock_2026-12-04/plots.py"""
import json
import os
import re
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "scripts", "plots"))
import chart  # noqa: E402


def tok_s(call, setting, repeat, context, model="q05-uni"):
    rows = json.load(open(os.path.join(HERE, call, "json", f"bench_{setting}_{repeat}.json")))
    return next(r["decode_tokens_per_s"] for r in rows if r["context"] == context and r["model"] == model)


def change(call, setting, context):
    """Median UniAttn tok/s of `setting` over a3ef9c2's (`old`) in the same call, in percent."""
    new = statistics.median(tok_s(call, setting, r, context) for r in (1, 2, 3))
    old = statistics.median(tok_s(call, "old", r, context) for r in (1, 2, 3))
    return 100.0 * (new / old - 1.0)


def main():
    i, j = "callI_combine_shared_splits", "callJ_shared_tiles_rejected"
    blocks = "UNIATTN_DECODE_ATTENTION_JOINT_BLOCKS"
    rows = [("combine in one round trip, 8k (I)", i, "graphs", 8192),
            ("8 splits a pair, 8k (I)", i, f"{blocks}528", 8192),
            ("12 splits a pair, 8k (I)", i, f"{blocks}792", 8192),
            ("16 splits a pair, 8k (I)", i, f"{blocks}1056", 8192),
            ("shared sub-tiles, 8k (J)", j, "graphs", 8192),
            ("shared sub-tiles, 2k (J)", j, "graphs", 2048)]
    chart.draw({
        "kind": "bars",
        "title": "UniAttn decode tok/s at batch 32 against a3ef9c2 in the same call, H200, bf16 (median of 3)",
        "y_label": "change in tok/s, %",
        "categories": [r[0] for r in rows],
        "series": [{"name": "change against a3ef9c2", "values": [change(c, s, k) for _, c, s, k in rows]}],
    }, os.path.join(HERE, "changes.svg"))
    times = {}
    for line in open(os.path.join(HERE, "callM_stream_variants", "stream2.txt")):
        m = re.match(r"(.+?)\s+([\d.]+) us", line)
        if m and "again" not in m.group(1):
            times[m.group(1).strip()] = float(m.group(2))
    clocks = {}
    for line in open(os.path.join(HERE, "callM_stream_variants", "ncu_summary.txt")):
        name, rest = line.split(":", 1)
        clocks[name] = float(re.search(r"SM Frequency=([\d,.]+)", rest).group(1).replace(",", "")) / 1e9
    label_kernel = {"cp.async 2 stages": "cp_async_kernel", "cp.async + 48 mma": "cp_async_mma_kernel",
                    "tma 8 KB 2 stages": "tma_kernel", "tma rows padded 2 stages": "tma_rows_kernel",
                    "tma map swizzled 2 stages": "tma_map_kernel"}
    names = [n for n in times if n != "tma rows padded 2 stages"]  # 317 us: it would flatten the rest
    cats = [f"{n} ({clocks[label_kernel[n]]:.2f} GHz)" if n in label_kernel else n for n in names]
    chart.draw({
        "kind": "bars",
        "title": "The joint launch's 338 MB streamed alone, H200: us a launch (SM clock under Nsight Compute)",
        "y_label": "us a launch (50 launches, events)",
        "categories": cats,
        "series": [{"name": "stream2.cu, 256 blocks of 256 threads, 2 stages", "values": [times[n] for n in names]}],
    }, os.path.join(HERE, "stream.svg"))


if __name__ == "__main__":
    main()
