"""Summary of scripts/experiment_medical.sh: one row per trained model (accuracy with standard
errors on each task, the medical and general averages, perplexity on the held-out validation
rows and on wiki text, KV bytes and throughput from bench), the spread over seeds, and SVGs of
medical accuracy, general-task accuracy, held-out perplexity and loss against the KV-cache
saving (one point per variant: the mean over seeds, with whiskers over their range; a plot with
no data is not drawn), drawn by `uniattn plot` (scripts/plots/chart.py).

    python3 scripts/experiment_summary.py runs/medical/NAME > summary.md
"""
import glob
import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "plots"))
from chart import draw  # noqa: E402

out = sys.argv[1]
MED = ("medmcqa", "medqa_en", "mmlu_")
# Inference cost: eval/cost.bench.json (one bench process, one model per architecture, named
# base, uniattn, softmax-only, cla, layerdrop), then any other eval/cost*.bench.json for the
# architectures it lacks (a rerun of some of them), or an older run's eval/LABEL.bench.json.
cost = {}
for f in sorted(glob.glob(os.path.join(out, "eval", "cost*.bench.json")), key=lambda f: not f.endswith("/cost.bench.json")):
    first = {}
    for b in json.load(open(f)):
        first.setdefault(b["model"], []).append(b)
    for model, rows_ in first.items():
        cost.setdefault(model, rows_)


def bench_of(f, arch):
    """The cost rows of a model's architecture, or None when it was not timed."""
    own = f.replace(".mc.json", ".bench.json")
    if os.path.exists(own):
        return json.load(open(own))
    return cost.get(arch)


def best_val_loss(label):
    """The trainer's best validation loss (response tokens of the held-out rows) for a trained
    model: runs/LABEL/metrics.jsonl (or runs/LABEL.metrics.jsonl as results/ keeps it); the
    first seed's dense model is the learning-rate grid's best run."""
    names = [label]
    grid = os.path.join(out, "lr_grid.jsonl")
    if label.startswith("dense-s") and os.path.exists(grid):
        lines = [(json.loads(l)["best_val_loss"], l.split('"lr": ')[1].split(",")[0]) for l in open(grid)]
        names.append("lr-" + min(lines)[1])
    for n in names:
        for f in (os.path.join(out, "runs", n, "metrics.jsonl"), os.path.join(out, "runs", n + ".metrics.jsonl")):
            if os.path.exists(f):
                v = [json.loads(l).get("val_loss") for l in open(f)]
                v = [x for x in v if x is not None]
                return min(v) if v else None
    return None


def legacy_saved(arch):
    """The KV fraction a plan saves, for a run without manifests: the plan of
    plan_search[-rN]/plan_search.json when the run searched it, else analyze[-rN]/similarity.json's."""
    if arch == "base":
        return 0.0
    head, _, tail = arch.rpartition("-r")
    variant, suffix = (head, "-r" + tail) if head and tail.isdigit() else (arch, "")
    path = os.path.join(out, "analyze" + suffix, "similarity.json")
    if not os.path.exists(path):
        return None
    analysis = json.load(open(path))
    searched = os.path.join(out, "plan_search" + suffix, "plan_search.json")
    blocks = json.load(open(searched))["best"] if os.path.exists(searched) else analysis["proposed_plan"]
    reuse = sum(int(b) - int(a) for a, b in (blk.split("-") for blk in blocks.split(",")))
    return kv_saved(variant, reuse, len(analysis["similarity"]))


def base_kv_heads():
    """The experiment's model's KV heads per layer (`uniattn info --json` on OUT/experiment.json's
    model), for the KV-head-merging variant's saving."""
    import subprocess
    from chart import binary
    model = json.load(open(os.path.join(out, "experiment.json")))["model"]
    if not os.path.exists(model):
        # Summarised elsewhere than where it ran (results/ copied from the GPU machine): the same
        # file in this machine's cache (scripts/fetch-models.sh), if fetched.
        cache = os.environ.get("UNIATTN_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "uniattn")
        model = next(iter(glob.glob(os.path.join(cache, "models", "*", os.path.basename(model)))), model)
    info = subprocess.run([binary(), "info", model, "--json"], check=True, capture_output=True, text=True)
    return json.loads(info.stdout)["kv_heads"]


def kv_saved(variant, reuse_layers, num_layers):
    """Reuse layers keep V only (UniAttn, softmax-only), nothing (CLA, layer drop), or K and V
    of fewer heads (kv-heads: the largest divisor of the model's count up to half, as plan.rs's
    merged_kv_heads)."""
    if variant == "kv-heads":
        kv = base_kv_heads()
        merged = next((d for d in range(kv // 2, 0, -1) if kv % d == 0), kv)
        return reuse_layers / num_layers * (1 - merged / kv)
    return reuse_layers / num_layers * (0.5 if variant in ("uniattn", "softmax-only") else 1.0)


def described(label):
    """What a model is: eval/LABEL.run.json, written by scripts/experiment_medical.sh. Runs made
    before it wrote them (results/ keeps some) are read from their labels: VARIANT[-rN][+WHAT]
    [-untrained]-sSEED."""
    path = os.path.join(out, "eval", label + ".run.json")
    if os.path.exists(path):
        m = json.load(open(path))
        saved = 0.0 if m["architecture"] == "base" else kv_saved(m["variant"], m["reuse_layers"], m["num_layers"])
        return {"group": m["group"], "architecture": m["architecture"], "method": m["variant"], "saved": saved}
    group = label.rsplit("-s", 1)[0]
    arch = group.split("+")[0].removesuffix("-untrained")
    arch = "base" if arch in ("base", "dense") else arch
    head, _, tail = group.rpartition("-r")
    method = head if head and tail.isdigit() else group
    return {"group": group, "architecture": arch, "method": method.split("+")[0], "saved": legacy_saved(arch)}


def mean_acc(tasks):
    """The unweighted mean of the tasks' accuracies (None without tasks)."""
    return sum(t["acc"]["value"] for t in tasks) / len(tasks) if tasks else None


def mean_stderr(tasks):
    """The standard error of mean_acc: the tasks' questions are independent samples."""
    return math.sqrt(sum(t["acc"]["stderr"] ** 2 for t in tasks)) / len(tasks) if tasks else None


rows = []
for f in sorted(glob.glob(os.path.join(out, "eval", "*.mc.json"))):
    label = os.path.basename(f)[: -len(".mc.json")]
    mc = json.load(open(f))
    def load(ext, key):
        path = f.replace(".mc.json", ext)
        return json.load(open(path))[key] if os.path.exists(path) else None
    info = described(label)
    bench = bench_of(f, info["architecture"])
    med = [t for t in mc if t["task"].startswith(MED)]
    general = [t for t in mc if not t["task"].startswith(MED)]
    arc_c = next((t["acc"]["value"] for t in mc if t["task"].startswith("arc_challenge")), None)
    # A plot's series: the method, across its plans; an ablation of it (a group named other than
    # its architecture: `uniattn-3x`, `uniattn-untrained`) apart, so the legend tells them apart.
    series = info["method"] if info["group"] == info["architecture"] else info["group"]
    rows.append({"label": label, "variant": info["group"], "method": info["method"], "series": series,
                 "plan_saved": info["saved"], "tasks": {t["task"]: t for t in mc},
                 "wiki_ppl": load(".wiki.json", "perplexity"), "val_ppl": load(".val.json", "perplexity"),
                 "val_loss": best_val_loss(label), "arc_c": arc_c,
                 "medical_avg": mean_acc(med), "medical_se": mean_stderr(med),
                 "general_avg": mean_acc(general), "general_se": mean_stderr(general),
                 "kv_per_token": bench[0]["kv_bytes_per_token"] if bench else None, "bench": bench or []})
fmt = lambda v, spec: "-" if v is None else format(v, spec)
base_kv = max((r["kv_per_token"] for r in rows if r["kv_per_token"]), default=None)
for r in rows:
    r["saved"] = 1 - r["kv_per_token"] / base_kv if r["kv_per_token"] and base_kv else r["plan_saved"]
    r["saved_cell"] = fmt(r["saved"], ".1%") + ("" if r["kv_per_token"] else "*")
grid = max((r["bench"] for r in rows), key=len)
tasks = sorted({t for r in rows for t in r["tasks"]})
# An average column only where some model has tasks of that kind.
avgs = [(name, key) for name, key in (("medical avg", "medical_avg"), ("general avg", "general_avg"))
        if any(r[key] is not None for r in rows)]
speed_heads = [f"{what} tok/s b{b['batch']} ctx{b['context']}" for what in ("prefill", "decode") for b in grid]
heads = tasks + [name for name, _ in avgs] + ["held-out val loss", "held-out ppl", "wiki ppl", "KV saved"] + speed_heads
print("| model | " + " | ".join(heads) + " |")
print("|---" * (len(heads) + 1) + "|")
for r in rows:
    cells = [f"{r['tasks'][t]['acc']['value']:.3f} ± {r['tasks'][t]['acc']['stderr']:.3f}" if t in r["tasks"] else "-" for t in tasks]
    speeds = [f"{b[what + '_tokens_per_s']:.0f}" if not b.get("error") else "oom"
              for what in ("prefill", "decode") for b in r["bench"]] or ["-"] * (2 * len(grid))
    cells += ["-" if r[key] is None else f"{r[key]:.3f} ± {r[key.replace('avg', 'se')]:.3f}" for _, key in avgs]
    cells += [fmt(r["val_loss"], ".4f"), fmt(r["val_ppl"], ".3f"), fmt(r["wiki_ppl"], ".3f"), r["saved_cell"]]
    print(f"| {r['label']} | " + " | ".join(cells + (speeds if grid else [])) + " |")

if any(not r["kv_per_token"] for r in rows):
    print("\n\\* KV saving from the plan: this architecture was not timed.")

def spread_cell(rs, key, spec, se_key=None):
    """`key`'s mean over the seeds' runs `rs`, with the mean standard error `se_key` of one run
    where given, and the range where there are several values ("-" without any)."""
    xs = [r[key] for r in rs if r[key] is not None]
    if not xs:
        return "-"
    cell = f"{statistics.mean(xs):{spec}}"
    if se_key:
        cell += f" ± {statistics.mean(r[se_key] for r in rs if r[se_key] is not None):{spec}}"
    return cell + (f" ({min(xs):{spec}}..{max(xs):{spec}})" if len(xs) > 1 else "")


def decode_speed(r):
    """Decode tokens/s at the bench grid's last point (the largest batch and context), or None."""
    b = r["bench"][-1] if r["bench"] else None
    return None if b is None or b.get("error") else b["decode_tokens_per_s"]


by_variant = {}
for r in rows:
    by_variant.setdefault(r["variant"], []).append(r)
spread = {v: rs for v, rs in by_variant.items() if len(rs) > 1}
if spread:
    print("\nSeed spread (mean, min..max over seeds):\n")
    spread_heads = [name for name, _ in avgs] + ["held-out val loss", "held-out ppl", "wiki ppl"]
    print("| variant | seeds | " + " | ".join(spread_heads) + " |")
    print("|---" * (len(spread_heads) + 2) + "|")
    for v, rs in spread.items():
        cells = [spread_cell(rs, key, ".3f") for _, key in avgs]
        cells += [spread_cell(rs, key, spec) for key, spec in (("val_loss", ".4f"), ("val_ppl", ".3f"), ("wiki_ppl", ".3f"))]
        print(f"| {v} | {len(rs)} | " + " | ".join(cells) + " |")


# The comparison at matched savings: each trained variant once, by KV saving, with the standard
# error of one run's average beside the range over its seeds.
print("\nBy KV saving (means over seeds; ± the standard error of one run's average; min..max over seeds):\n")
# Decode speed against the base model's, timed in the same bench process.
base_speed = next((decode_speed(r) for r in rows if r["variant"] == "base"), None)
print("| KV saved | variant | seeds | medical avg | ARC-C | held-out val loss | decode tok/s | decode vs base |")
print("|---" * 8 + "|")
for v, rs in sorted(by_variant.items(), key=lambda kv: (kv[1][0]["saved"] or 0, -statistics.mean(
        [r["medical_avg"] or 0 for r in kv[1]]))):
    speed = decode_speed(rs[0])
    ratio = speed / base_speed if speed and base_speed else None
    print(f"| {fmt(rs[0]['saved'], '.1%')} | {v} | {len(rs)} | {spread_cell(rs, 'medical_avg', '.3f', 'medical_se')} | "
          f"{spread_cell(rs, 'arc_c', '.3f')} | {spread_cell(rs, 'val_loss', '.4f')} | {fmt(speed, '.0f')} | "
          f"{'-' if ratio is None else f'{ratio:.2f}x'} |")


# Each method's plan from search-plan (plans = "per-variant"; OUT/plan_search-VARIANT[-rN]): what
# its conversion scored before post-training, against dense on the same questions.
searches = sorted(glob.glob(os.path.join(out, "plan_search-*", "plan_search.json")))
if searches:
    layers = len(json.load(open(os.path.join(out, "analyze", "similarity.json")))["similarity"])
    found = []
    for f in searches:
        s = json.load(open(f))
        best = next(p for p in s["plans"] if p["plan"] == s["best"])
        given = next((p for p in s["plans"] if p["given"]), None)
        found.append((kv_saved(s["variant"], s["reuse_layers"], layers), s, best, given))
    print(f"\nPlans each method chose (search-plan, before post-training; {found[0][1]['scored_on']}; lower is better):\n")
    print("| method | reuse layers | KV saved | plan | score | vs dense | analyze's plan, vs dense | search s |")
    print("|---" * 8 + "|")
    for saved, s, best, given in sorted(found, key=lambda x: (x[0], x[1]["variant"])):
        g = "-" if given is None else f"{given['plan']}: {given['mean_nll'] - s['dense_nll']:+.4f}"
        print(f"| {s['variant']} | {s['reuse_layers']} | {saved:.1%} | {best['plan']} | {best['mean_nll']:.4f} | "
              f"{best['mean_nll'] - s['dense_nll']:+.4f} | {g} | {s['seconds']:.0f} |")


def scatter(key, y_label, title, path, x_of=lambda r: r["saved"], x_label="KV-cache bytes saved (fraction)"):
    """One series per method (and per ablation), one point per variant (the mean over its seeds,
    whiskers from the lowest to the highest): `key` against `x_of` (the KV-cache saving, or decode
    speed). Drawn by `uniattn plot`."""
    series = {}
    for v, rs in by_variant.items():
        ys = [r[key] for r in rs if r[key] is not None]
        x = x_of(rs[0])
        if ys and x is not None:
            m = rs[0]["series"]
            s = series.setdefault(m, {"name": m, "points": [], "y_ranges": []})
            s["points"].append([x, statistics.mean(ys)])
            s["y_ranges"].append([min(ys), max(ys)])
    if not series:
        return
    draw({"kind": "scatter", "title": title, "x_label": x_label, "y_label": y_label,
          "series": list(series.values())}, path)
    print(f"plot: {path}")


# What is plotted, against the KV saving and (where timed) the decode speed: key, y label, title's
# subject, and the two plots' file names.
PLOTS = [
    ("medical_avg", "medical accuracy (mean of tasks)", "medical accuracy", "accuracy_vs_saving", "medical_vs_decode_speed"),
    ("general_avg", "general-task accuracy (mean of tasks)", "general-task accuracy", "general_vs_saving",
     "general_vs_decode_speed"),
    ("arc_c", "ARC-Challenge accuracy", "ARC-Challenge accuracy", "arc_challenge_vs_saving", "arc_challenge_vs_decode_speed"),
    ("val_ppl", "perplexity of the validation rows", "held-out perplexity of the validation rows (lower is better)",
     "val_ppl_vs_saving", None),
    ("val_loss", "validation loss (nats per token)", "held-out validation loss after post-training (lower is better)",
     "val_loss_vs_saving", "val_loss_vs_decode_speed"),
]
print()
for key, y_label, what, saving_file, _ in PLOTS:
    scatter(key, y_label, f"{what} vs KV-cache saving", os.path.join(out, f"{saving_file}.svg"))
if grid:
    last = grid[-1]
    speed = f"decode tokens/s (batch {last['batch']}, context {last['context']})"
    for key, y_label, what, _, speed_file in PLOTS:
        if speed_file:
            scatter(key, y_label, f"{what} vs measured decode speed", os.path.join(out, f"{speed_file}.svg"), decode_speed, speed)
print(f"learning-rate grid: {os.path.join(out, 'lr_grid.jsonl')}")
