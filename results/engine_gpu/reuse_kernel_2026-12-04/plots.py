#!/usr/bin/env python3
"""The plots of this folder from the calls' files: ratio.svg (UniAttn / dense tok/s at batch 32
and batch 1, 8k, each repeat of calls P and Q, against the target) and reuse_layer.svg (a reuse
layer's kernels up to its MLP at batch 32 / 8k, from the traces of calls N and P: us each, and
the span they add to the step).
    python3 results/engine_gpu/reuse_kernel_2026-12-04/plots.py"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "scripts", "plots"))
import chart  # noqa: E402

TARGET_B32 = 1.115288  # 1 + 0.8 x the fraction of bytes a step UniAttn saves (issue 17)
TARGET_B1 = 1.0155


def ratio(call, setting, repeat, batch):
    rows = json.load(open(os.path.join(HERE, call, "json", f"bench_{setting}_{repeat}.json")))
    tok = {r["model"].split("/")[-1]: r["decode_tokens_per_s"] for r in rows if r["batch"] == batch}
    return tok["q05-uni"] / tok["q05"]


def trace_ops(call, first, last):
    """Duration (us) and kernel of ops `first..=last` of the last step in a call's batch-32 trace."""
    path = os.path.join(HERE, call, "traces", "q05-uni-batch32-context8192.txt")
    ops = {}
    for line in open(path):
        f = line.split()
        if len(f) > 6 and f[0].isdigit() and first <= int(f[0]) <= last:
            ops[int(f[0])] = (float(f[2]), float(f[3]), f[-1])
    return [ops[i] for i in range(first, last + 1)]


def main():
    p, q = "callP_two_outputs_a_warp", "callQ_one_output_a_warp"
    builds = [(f"c958157 (call Q)", q, "old2"), ("16 outputs a block (call Q)", q, "old"),
              ("8 outputs a block, landed (call Q)", q, "graphs"), ("c958157 (call P)", p, "old"),
              ("16 outputs a block (call P)", p, "graphs")]
    for batch, target, name in [(32, TARGET_B32, "ratio.svg"), (1, TARGET_B1, "ratio_b1.svg")]:
        series = [{"name": label, "points": [[r, ratio(c, s, r, batch)] for r in (1, 2, 3)]}
                  for label, c, s in builds]
        series.append({"name": f"target {target}", "points": [[1, target], [3, target]]})
        chart.draw({
            "kind": "lines",
            "title": f"UniAttn / dense decode tok/s, batch {batch} / 8k, H200, bf16, each repeat",
            "x_label": "repeat (builds alternate within a repeat)",
            "y_label": "UniAttn / dense tok/s",
            "series": series,
        }, os.path.join(HERE, name))
    # A reuse layer before its MLP: the ops after the second joint launch's layer.
    before = trace_ops("callN_trace_main", 148, 152)  # norm, V|W_c, rope tail, O, add + norm
    after = trace_ops(p, 148, 150)  # reuse_attention_decode, [W_o | W_c], norm
    cats = ["attention norm", "V|W_c GEMM", "rope_kv_write tail", "reuse_attention_decode",
            "output GEMM", "norm before the MLP", "span added to the step"]
    b = [before[0][0], before[1][0], before[2][0], None, before[3][0], before[4][0], sum(o[1] for o in before)]
    a = [None, None, None, after[0][0], after[1][0], after[2][0], sum(o[1] for o in after)]
    chart.draw({
        "kind": "bars",
        "title": "A reuse layer up to its MLP, batch 32 / 8k, H200 (bench --trace, last step)",
        "y_label": "us",
        "categories": cats,
        "series": [{"name": "c958157 (call N)", "values": b},
                   {"name": "one kernel, [W_o | W_c] (call P, 16 outputs a block)", "values": a}],
    }, os.path.join(HERE, "reuse_layer.svg"))


if __name__ == "__main__":
    main()
