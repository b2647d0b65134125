"""Turns the JSON lines of scripts/uniattn_results.sh into the markdown tables of docs/results.md.
    python3 scripts/results_table.py runs/results/results.jsonl
"""
import json
import sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by_model = defaultdict(list)
for r in rows:
    by_model[r["model"]].append(r)

NAMES = {"none": "unified, no W_c", "reference": "unified + reference fit", "ours": "unified + our fit"}
for model, rs in by_model.items():
    dense = next(r for r in rs if r["label"] == "dense")
    print(f"\n### {model}\n")
    print(f"In-domain: PMC rows 900..1000 ({dense['pmc']['predicted']} predicted tokens); "
          f"out-of-domain: wiki.utf8 ({dense['wiki']['predicted']} predicted tokens).\n")
    print("| plan | variant | PMC ppl | wiki ppl | calibration time (s) |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| dense | dense | {dense['pmc']['perplexity']:.3f} | {dense['wiki']['perplexity']:.3f} | - |")
    for r in rs:
        if r["label"] == "dense" or r["label"].startswith("ridge") or "note" in r:
            continue
        kind = "analysis" if r["label"].startswith("blocks") else "paper g=4"
        print(f"| {kind}: {r['plan']} | {NAMES[r['fit']]} | {r['pmc']['perplexity']:.3f} | "
              f"{r['wiki']['perplexity']:.3f} | {r['calib_seconds'] if r['fit'] != 'none' else '-'} |")
    sweep = [r for r in rs if r["label"].startswith("ridge")]
    if sweep:
        auto = next(r for r in rs if r["label"] == "blocks-ours")
        print(f"\nRidge sweep (analysis plan, fixed relative ridge for every layer):\n")
        print("| ridge alpha | PMC ppl | wiki ppl |")
        print("| --- | --- | --- |")
        for r in sweep:
            print(f"| {r['ridge']:g} | {r['pmc']['perplexity']:.3f} | {r['wiki']['perplexity']:.3f} |")
        print(f"| auto (per layer, held-out) | {auto['pmc']['perplexity']:.3f} | {auto['wiki']['perplexity']:.3f} |")
