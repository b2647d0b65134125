"""Where a profiled step's GPU time goes, from a Chrome trace written by `uniattn train
--profile` or `hf_train_bench.py --profile` (3 optimizer steps each) or `uniattn bench --trace`
(3 decode steps):

    python3 scripts/device/trace_summary.py TRACE.json [--steps 3] [--top 25] [--json OUT] [--timeline]

Prints kernels per step, GPU busy time per step, the span of the profiled steps, and the
kernels that take the most time (by name, summed), as a table and optionally as JSON; with
--timeline also the last step's kernels in the order they ran (which layer spends what), with
when each started and how much later than the ops before it each ended.
"""
import argparse
import collections
import json

ap = argparse.ArgumentParser()
ap.add_argument("trace")
ap.add_argument("--steps", type=int, default=3)
ap.add_argument("--top", type=int, default=25)
ap.add_argument("--json")
ap.add_argument("--timeline", action="store_true")
a = ap.parse_args()

events = json.load(open(a.trace))["traceEvents"]
gpu = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
if not gpu:
    raise SystemExit(f"{a.trace}: no GPU events (was it recorded on a CUDA device?)")
busy = sum(e["dur"] for e in gpu)
span = max(e["ts"] + e["dur"] for e in gpu) - min(e["ts"] for e in gpu)
by_name = collections.defaultdict(lambda: [0, 0.0])
for e in gpu:
    name = e["name"]
    by_name[name][0] += 1
    by_name[name][1] += e["dur"]
top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:a.top]
summary = {
    "trace": a.trace,
    "kernels_per_step": len(gpu) / a.steps,
    "gpu_busy_ms_per_step": busy / a.steps / 1e3,
    "span_ms_per_step": span / a.steps / 1e3,
    "gpu_idle_fraction": 1 - busy / span,
    "top": [{"name": n, "count_per_step": c / a.steps, "ms_per_step": d / a.steps / 1e3,
             "share": d / busy} for n, (c, d) in top],
}
print(f"{a.trace}: {summary['kernels_per_step']:.0f} GPU ops/step, busy {summary['gpu_busy_ms_per_step']:.1f} ms/step "
      f"of {summary['span_ms_per_step']:.1f} ms ({100 * summary['gpu_idle_fraction']:.1f}% idle)")
print(f"{'ms/step':>8} {'share':>6} {'n/step':>7}  kernel")
for t in summary["top"]:
    print(f"{t['ms_per_step']:8.2f} {100 * t['share']:5.1f}% {t['count_per_step']:7.1f}  {t['name'][:110]}")
if a.json:
    json.dump(summary, open(a.json, "w"), indent=1)
if a.timeline:
    # Programmatic launches overlap a kernel with the one before, so durations alone do not sum
    # to a step: `start` is each op's start after the step's first op's, and `+end` how much
    # later it ends than every op before it (the step's span is their sum: where time goes
    # between kernels, as well as in them).
    ordered = sorted(gpu, key=lambda e: e["ts"])
    per_step = len(ordered) // a.steps
    last = ordered[len(ordered) - per_step:]
    t0, ended = last[0]["ts"], last[0]["ts"]
    print(f"\nthe last step's {per_step} GPU ops in order, span {max(e['ts'] + e['dur'] for e in last) - t0:.1f} us:")
    print(f"{'#':>4} {'start':>8} {'us':>8} {'+end':>7} {'grid':>14} {'block':>12}  kernel")
    for i, e in enumerate(last):
        args = e.get("args", {})
        end = e["ts"] + e["dur"]
        print(f"{i:4d} {e['ts'] - t0:8.1f} {e['dur']:8.1f} {max(0.0, end - ended):7.1f} {str(args.get('grid', '')):>14} "
              f"{str(args.get('block', '')):>12}  {e['name'][:100]}")
        ended = max(ended, end)
