"""Writes results/MANIFEST.json: every raw result file the repository keeps (run logs, metrics,
JSON reports, plots) with its size, sha256, the commit that added it, and the documents that
cite its folder, where the commands that produced it are written next to the numbers.

    python3 scripts/results_manifest.py          (from the repository root)
"""
import hashlib
import json
import os
import subprocess

ROOT = "results"
DOCS = ["README.md", "docs/benchmarks.md", "docs/results.md", "docs/guide.md"]


def added_in(path):
    out = subprocess.run(["git", "log", "--diff-filter=A", "--format=%h %ad", "--date=short", "--", path],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return [line for line in out if line][-1] if any(out) else "not committed"


def main():
    docs = {d: open(d).read() for d in DOCS if os.path.exists(d)}
    files = []
    for dirpath, _, names in sorted(os.walk(ROOT)):
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            if path == os.path.join(ROOT, "MANIFEST.json"):
                continue
            data = open(path, "rb").read()
            folder = os.path.dirname(path) + "/"
            cited = [d for d, text in docs.items() if path in text or (folder != ROOT + "/" and folder in text)]
            files.append({"path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                          "added_in": added_in(path), "cited_by": cited})
    manifest = {"about": "Raw result files with their size, sha256, the commit that added each, and the "
                         "documents citing its folder (the commands that made them sit next to the numbers "
                         "there). Regenerate: python3 scripts/results_manifest.py",
                "files": files,
                "total_bytes": sum(f["bytes"] for f in files)}
    with open(os.path.join(ROOT, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"{len(files)} files, {manifest['total_bytes'] / 1e6:.1f} MB, "
          f"{sum(1 for f in files if not f['cited_by'])} not cited by a document")


if __name__ == "__main__":
    main()
