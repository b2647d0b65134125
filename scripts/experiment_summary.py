"""Summary of scripts/experiment_medical.sh: one row per variant (accuracy with standard errors
on the medical tasks and ARC, wiki perplexity, KV bytes and throughput from bench), the medical
average, and an SVG of medical accuracy against the KV-cache saving.

    python3 scripts/experiment_summary.py runs/medical/NAME > summary.md
"""
import glob
import json
import os
import sys

out = sys.argv[1]
MED = ("medmcqa", "medqa_en", "mmlu_")
rows = []
for f in sorted(glob.glob(os.path.join(out, "eval", "*.mc.json"))):
    label = os.path.basename(f)[: -len(".mc.json")]
    mc = json.load(open(f))
    wiki = json.load(open(f.replace(".mc.json", ".wiki.json")))
    bench = json.load(open(f.replace(".mc.json", ".bench.json")))
    med = [t for t in mc if t["task"].startswith(MED)]
    row = {"label": label, "tasks": {t["task"]: t for t in mc}, "wiki_ppl": wiki["perplexity"],
           "medical_avg": sum(t["acc"]["value"] for t in med) / max(len(med), 1),
           "kv_per_token": bench[0]["kv_bytes_per_token"], "bench": bench}
    rows.append(row)
base_kv = max(r["kv_per_token"] for r in rows)
tasks = sorted({t for r in rows for t in r["tasks"]})
print("| variant | " + " | ".join(tasks) + " | medical avg | wiki ppl | KV saved | " +
      " | ".join(f"decode tok/s b{b['batch']} ctx{b['context']}" for b in rows[0]["bench"]) + " |")
print("|---" * (len(tasks) + 4 + len(rows[0]["bench"])) + "|")
for r in rows:
    cells = [f"{r['tasks'][t]['acc']['value']:.3f} ± {r['tasks'][t]['acc']['stderr']:.3f}" if t in r["tasks"] else "-" for t in tasks]
    speeds = [f"{b['decode_tokens_per_s']:.0f}" if not b.get("error") else "oom" for b in r["bench"]]
    saved = 1 - r["kv_per_token"] / base_kv
    print(f"| {r['label']} | " + " | ".join(cells) + f" | {r['medical_avg']:.3f} | {r['wiki_ppl']:.3f} | {saved:.1%} | " + " | ".join(speeds) + " |")

# Medical accuracy against KV saving, one point per variant.
W, H, L, T = 560, 320, 70, 30
pts = [(1 - r["kv_per_token"] / base_kv, r["medical_avg"], r["label"]) for r in rows]
xs, ys = [p[0] for p in pts], [p[1] for p in pts]
x1 = max(max(xs), 0.01) * 1.1
y0, y1 = min(ys) - 0.01, max(ys) + 0.01
px = lambda x: L + x / x1 * W
py = lambda y: T + (1 - (y - y0) / (y1 - y0)) * H
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W + L + 160}" height="{H + T + 50}" font-family="sans-serif" font-size="12">',
       '<rect width="100%" height="100%" fill="white"/>',
       f'<text x="{L}" y="18" font-size="14">medical accuracy vs KV-cache saving</text>',
       f'<line x1="{L}" y1="{T}" x2="{L}" y2="{T + H}" stroke="black"/><line x1="{L}" y1="{T + H}" x2="{L + W}" y2="{T + H}" stroke="black"/>',
       f'<text x="{L + W / 2}" y="{T + H + 35}" text-anchor="middle">KV bytes saved (fraction)</text>',
       f'<text x="{L - 5}" y="{T + 5}" text-anchor="end">{y1:.3f}</text><text x="{L - 5}" y="{T + H}" text-anchor="end">{y0:.3f}</text>',
       f'<text x="{L + W}" y="{T + H + 16}" text-anchor="end">{x1:.2f}</text><text x="{L}" y="{T + H + 16}">0</text>']
for x, y, label in pts:
    svg.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="#1f77b4"/><text x="{px(x) + 6:.1f}" y="{py(y) + 4:.1f}">{label}</text>')
svg.append("</svg>")
open(os.path.join(out, "accuracy_vs_saving.svg"), "w").write("\n".join(svg))
print(f"\nplot: {os.path.join(out, 'accuracy_vs_saving.svg')}; learning-rate grid: {os.path.join(out, 'lr_grid.jsonl')}")
