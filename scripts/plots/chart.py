"""Draws a chart with `uniattn plot`, the project's one plotting code: the chart's data goes to
OUT with a .json extension (kept beside the figure), the figure to OUT (.svg or .png).
The binary is $UNIATTN, else target/release/uniattn in this checkout, else `uniattn` on PATH."""
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def binary():
    built = os.path.join(ROOT, "target", "release", "uniattn")
    found = os.environ.get("UNIATTN") or (built if os.path.exists(built) else shutil.which("uniattn"))
    if not found:
        sys.exit("no uniattn binary: build it (cargo build --release) or set UNIATTN")
    return found


def draw(chart, out):
    spec = os.path.splitext(out)[0] + ".json"
    with open(spec, "w") as f:
        json.dump(chart, f, indent=1)
    # Its "wrote ..." goes to stderr: a caller's stdout is often a report (summary.md).
    subprocess.run([binary(), "plot", spec, "--out", out], check=True, stdout=sys.stderr)
