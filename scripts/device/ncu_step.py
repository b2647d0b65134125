#!/usr/bin/env python3
"""Per-kernel times of a decode step from an Nsight Compute CSV (decode_profile.sh's
profile_<model>.csv): the KERNELS launches (`bench` prints kernels per step) that end with the
last greedy pick (torch's ArgMax reduction, a step's last kernel), so that the fills `bench`
runs after the last step (the cache's reset) stay out; without an ArgMax, the last KERNELS.
Prints each kernel name's launches and microseconds, longest first.
    python3 scripts/device/ncu_step.py profile_q05.csv 264"""
import collections
import csv
import sys


def main(path, kernels):
    rows = []
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") == "gpu__time_duration.sum":
            rows.append((r["Kernel Name"], float(r["Metric Value"].replace(",", "")) / 1e3, r["Grid Size"], r["Block Size"]))
    picks = [i for i, row in enumerate(rows) if "ArgMax" in row[0]]
    end = picks[-1] + 1 if picks else len(rows)
    step = rows[max(0, end - kernels):end]
    by = collections.defaultdict(lambda: [0, 0.0, ""])
    for name, us, grid, block in step:
        short = name.split("(")[0][:70]
        by[short][0] += 1
        by[short][1] += us
        by[short][2] = f"{grid}x{block}"
    total = sum(us for _, us, _, _ in step)
    print(f"{path}: {len(step)} kernels, {total:.1f} us")
    for name, (n, us, shape) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        print(f"{us:9.1f} us {n:4d} x {us / n:6.2f}  {shape:28s} {name}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
