#!/usr/bin/env python3
"""Reads a run folder's TensorBoard event files with TensorBoard's own reader (an independent
check of `uniattn train`'s event writer) and prints each scalar series beside metrics.jsonl's.

  python3 scripts/reference/read_tfevents.py RUN_DIR      (needs `pip install tensorboard`)
"""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run = sys.argv[1]
acc = EventAccumulator(run)
acc.Reload()
rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
fields = {"train/loss": "loss", "train/lr": "lr", "train/grad_norm": "grad_norm", "val/loss": "val_loss"}
worst = 0.0
for tag in sorted(acc.Tags()["scalars"]):
    events = acc.Scalars(tag)
    steps = [e.step for e in events]
    print(f"{tag}: {len(events)} points, steps {steps}")
    # A resumed run's steps logged past its checkpoint are purged (its session start), not shown twice.
    assert len(steps) == len(set(steps)), f"{tag}: a step shown twice"
    if tag in fields:
        want = {r["global_step"]: r[fields[tag]] for r in rows if r.get(fields[tag]) is not None}
        assert sorted(want) == sorted(steps), f"{tag}: steps {steps}, metrics.jsonl {sorted(want)}"
        for e in events:
            rel = abs(e.value - want[e.step]) / max(abs(want[e.step]), 1e-30)
            worst = max(worst, rel)
print(f"largest relative difference from metrics.jsonl (f32 in the event file): {worst:.2e}")
assert worst < 1e-6, worst
