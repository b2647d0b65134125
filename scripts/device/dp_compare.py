#!/usr/bin/env python3
"""Two training runs of the same job (one GPU, and several through data parallelism): the
largest relative difference of their per-step losses and of their final weights, as JSON.
    python3 scripts/device/dp_compare.py RUN_A RUN_B [--weights-only]
--weights-only compares the final weights alone (a resumed run logs only its later steps)."""
import json
import sys

import torch
from safetensors.torch import load_file


def losses(run):
    return [json.loads(line)["loss"] for line in open(f"{run}/metrics.jsonl")]


def weights(run):
    import glob
    out = {}
    for f in sorted(glob.glob(f"{run}/final/*.safetensors")):
        out.update(load_file(f))
    return out


def main(a, b, weights_only=False):
    la, lb = ([], []) if weights_only else (losses(a), losses(b))
    loss_rel = max((abs(x - y) / max(abs(x), 1e-12) for x, y in zip(la, lb)), default=0.0)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys(), "the runs saved different tensors"
    weight_rel = max(((wa[k].double() - wb[k].double()).abs().max() / wa[k].double().abs().max().clamp_min(1e-12)).item()
                     for k in wa)
    print(json.dumps({"steps": [len(la), len(lb)], "max_loss_rel_diff": loss_rel,
                      "max_weight_rel_diff": weight_rel, "target": 1e-5,
                      "equal_within_target": loss_rel <= 1e-5 and weight_rel <= 1e-5}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--weights-only" in sys.argv[3:])
