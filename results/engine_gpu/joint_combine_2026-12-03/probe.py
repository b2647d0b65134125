#!/usr/bin/env python3
"""Reads call 1's probe (`probe.txt`: one line a block of two joint launches at batch 32 / 8k,
printed by the build with `call1_probe_b1_bisect/probe.patch`) and prints where the launch's
time goes; with --plot SPEC.json also writes a `uniattn plot` spec of each block's loop end and
end, blocks in order of their end. Fields of a line: PROBE launch block sm subs g0 g4 c1 c2 c3 c4
(g = %globaltimer ns at the block's start and end; c = clock64 cycles from the block's start to
after its wait, its first sub-tile's arrival, its loop's end and its finish's end).
    python3 probe.py call1_probe_b1_bisect/probe.txt [--plot probe.json]"""
import json
import statistics
import sys


def blocks(path, launch):
    out = []
    for line in open(path):
        f = line.split()
        if f[1] != launch:
            continue
        b = dict(zip(["block", "sm", "subs", "g0", "g4", "c1", "c2", "c3", "c4"], map(int, f[2:])))
        out.append(b)
    t0 = min(b["g0"] for b in out)
    # ns a cycle from each block's own clocks; the printing blocks' ends are late (printf), so
    # the median rate converts every block.
    rate = statistics.median((b["g4"] - b["g0"]) / b["c4"] for b in out)
    for b in out:
        b["start"] = (b["g0"] - t0) / 1e3
        b["first"] = b["start"] + b["c2"] * rate / 1e3
        b["loop_end"] = b["start"] + b["c3"] * rate / 1e3
        b["end"] = (b["g4"] - t0) / 1e3
    return out, 1 / rate


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


def main(path, plot):
    spec = None
    for launch in ("60", "61"):
        bs, ghz = blocks(path, launch)
        pairs = {}
        for b in bs:
            pairs.setdefault(b["block"] // 4, []).append(b)
        # A pair ends when its last block has combined; the printing blocks (~2 of 256) are cut.
        real = [b for b in bs if b["end"] < 150]
        gap = [max(b["end"] for b in p if b["end"] < 150) - max(b["loop_end"] for b in p) for p in pairs.values()]
        own = [b["end"] - b["loop_end"] for b in real]
        print(f"launch {launch}: {len(bs)} blocks on {len({b['sm'] for b in bs})} SMs, SM clock {ghz:.2f} GHz")
        print(f"  first sub-tile in shared memory, us after the launch: median {pct([b['first'] for b in bs], .5):.1f}")
        for name, v in [("loop end", [b["loop_end"] for b in bs]), ("block end", [b["end"] for b in real])]:
            print(f"  {name}, us after the launch: min {min(v):.1f} p10 {pct(v, .1):.1f} median {pct(v, .5):.1f} "
                  f"p90 {pct(v, .9):.1f} max {max(v):.1f}")
        print(f"  a block's finish (loop end to its end), us: median {pct(own, .5):.2f} p90 {pct(own, .9):.2f}")
        print(f"  a pair's last loop end to its outputs, us: median {pct(gap, .5):.2f} max {max(gap):.2f}")
        if spec is None:
            order = sorted(real, key=lambda b: b["end"])
            spec = {
                "kind": "lines",
                "title": "One joint launch at batch 32 / 8k (H200, 0.5B shapes, main before 5a84508): each block",
                "x_label": "block, in order of its end",
                "y_label": "us after the launch's first block started",
                "series": [
                    {"name": "its first sub-tile arrived", "points": [[i, b["first"]] for i, b in enumerate(order)]},
                    {"name": "its sub-tile loop ended", "points": [[i, b["loop_end"]] for i, b in enumerate(order)]},
                    {"name": "it ended (a pair's last block: after combining)", "points": [[i, b["end"]] for i, b in enumerate(order)]},
                ],
            }
    if plot:
        json.dump(spec, open(plot, "w"), indent=1)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], args[args.index("--plot") + 1] if "--plot" in args else None)
