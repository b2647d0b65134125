"""Runs an experiment described by a file (issue 15): the settings of the medical/general
post-training experiment (scripts/experiment_medical.sh carries it out) live in
experiments/SET/PROFILE.toml instead of environment variables. The file is checked against the
schema below (an unknown key, a wrong type or a bad choice is an error naming the file and the
key), `--set KEY=VALUE` overrides a key for one run, and the resolved settings are printed and
saved as OUT/experiment.json (with the files read, the overrides, the commit and the date)
before anything runs. A rerun on the same OUT resumes: finished runs are skipped.

    python3 scripts/experiment.py experiments/medical/gpu.toml MODEL.gguf NAME
    python3 scripts/experiment.py experiments/medical/cpu.toml MODEL NAME --set 'reuse=[10]'
    python3 scripts/experiment.py experiments/medical/smoke.toml MODEL NAME --dry-run

A file may start from another (`extends = "gpu.toml"`, relative to it) and change some keys.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    sys.exit("experiment: reading experiment files needs Python 3.11 or newer (tomllib)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# key: (type, default or REQUIRED, what it means). Types: str, int, float, bool, [str], [int],
# [float], [ablation]; a tuple of strings is a choice among them.
REQUIRED = object()
SCHEMA = {
    "set": (("medical", "general"), REQUIRED, "training/evaluation set: medical (PMC + MedMCQA) or general (Tulu + ShareGPT)"),
    "device": (("cuda", "cpu"), REQUIRED, "where every command runs"),
    "reuse": ([int], REQUIRED, "reuse layers of each plan; the first is the main plan, others label their runs -rN"),
    "seeded": ([int], [], "plans (by reuse count) whose seeded_variants runs get every seed; default: the first"),
    "seeded_variants": ([str], ["uniattn"], "variants trained with every seed on the seeded plans"),
    "variants": ([str], ["dense", "uniattn", "softmax-only", "cla", "layerdrop"], "variants to post-train"),
    "seeds": ([int], REQUIRED, "training seeds; the first is every variant's, the rest dense's and the seeded runs'"),
    "lrs": ([float], REQUIRED, "dense learning-rate grid (first seed); the best is every run's rate"),
    "lr": (float, None, "fix every run's learning rate (the grid still trains and is reported)"),
    "plan_by": (("similarity", "loss", "choices"), "similarity",
                "analyze's plan, or search-plan's by held-out loss or by MedMCQA questions"),
    "choices": (int, 300, "questions of each task that score plans with plan_by = choices"),
    "choice_tasks": (str, "medmcqa:mc_5shot",
                     "tasks that score plans with plan_by = choices, comma-separated (MedMCQA's from the "
                     "split's training part; e.g. mmlu_medical:mc_5shot:validation adds MMLU's validation questions)"),
    "plans": (("shared", "per-variant"), "shared",
              "one plan (UniAttn's) for every variant, or each variant's own from search-plan --variant"),
    "matched_saving": (bool, False,
                       "CLA and layer drop take half of each reuse count: the same KV saving as UniAttn's "
                       "(kv-heads keeps it: merging 2 KV heads into 1 saves what dropping K does)"),
    "search_args": ([str], [], "extra search-plan options, e.g. [\"--min-layer\", \"21\"]"),
    "tasks": (str, REQUIRED, "eval mc tasks, comma-separated"),
    "limit": (int, None, "questions per task (none: all)"),
    "eval_batch": (int, REQUIRED, "eval mc --batch-tokens"),
    "train_config": (str, REQUIRED, "train --config file (training options)"),
    "micro_batch": (int, None, "micro-batch size; gradient accumulation keeps 16 rows a step"),
    "max_len": (int, REQUIRED, "tokens per training row"),
    "bench": ([str], REQUIRED, "bench options for the inference cost"),
    "calib_rows": (str, REQUIRED, "calibration rows of W_c's closed-form fit"),
    "wiki_tokens": (int, REQUIRED, "tokens of wiki text for perplexity"),
    "train_rows": (str, REQUIRED, "training rows: a count or \"all\""),
    "val_rows": (int, REQUIRED, "held-out rows of each source"),
    "jobs": (int, REQUIRED, "evaluations running at once beside training"),
    "cost": (bool, True, "time one model of each architecture with bench"),
    "keep_weights": (("all", "bench"), "all",
                     "trained models whose files stay once evaluated: all, or those the cost bench times "
                     "(each compressed architecture's first seed; 64 GB holds ~18 bf16 1.5B models)"),
    "ablations": ([dict], [], "extra runs on the main plan and first seed: {label, variant, options}"),
    "pmc": (str, "data/pmc_llama_instructions_1000.json", "PMC instruction rows"),
    "tulu": (str, "data/tulu3_sft_filtered_1000.json", "Tulu 3 SFT rows"),
    "sharegpt": (str, "", "ShareGPT conversations (general set; empty: fetched by scripts/fetch-models.sh chat)"),
    "wiki": (str, "", "wiki text file (empty: fetched by scripts/fetch-models.sh texts)"),
}
ABLATION_KEYS = {"label": str, "variant": str, "options": list}
VARIANTS = {"dense", "uniattn", "softmax-only", "cla", "layerdrop", "kv-heads"}


def type_name(t):
    if isinstance(t, tuple):
        return " or ".join(f'"{c}"' for c in t)
    if isinstance(t, list):
        return f"a list of {type_name(t[0])}"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a table"}[t]


def check(value, t, where):
    """`value` as type `t`, or SystemExit naming `where` and what was expected."""
    def fail():
        sys.exit(f"experiment: {where}: expected {type_name(t)}, found {json.dumps(value)}")
    if isinstance(t, tuple):
        if value not in t:
            fail()
        return value
    if isinstance(t, list):
        if not isinstance(value, list):
            fail()
        return [check(v, t[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if t is int and isinstance(value, bool) or not isinstance(value, t):
        fail()
    return value


def load(path, seen=()):
    """The file's keys over those of the file it extends; the chain of files read."""
    path = os.path.abspath(path)
    if path in seen:
        sys.exit(f"experiment: {path}: 'extends' loops back to itself")
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        sys.exit(f"experiment: {path}: no such file")
    except tomllib.TOMLDecodeError as e:
        sys.exit(f"experiment: {path}: not valid TOML: {e}")
    base, chain = {}, []
    if "extends" in raw:
        parent = raw.pop("extends")
        if not isinstance(parent, str):
            sys.exit(f"experiment: {path}: extends: expected a file name, found {json.dumps(parent)}")
        base, chain = load(os.path.join(os.path.dirname(path), parent), seen + (path,))
    for key in raw:
        if key not in SCHEMA:
            sys.exit(f"experiment: {path}: unknown key '{key}' (known: {', '.join(SCHEMA)})")
    return {**base, **{k: (path, v) for k, v in raw.items()}}, chain + [path]


def parse_override(text):
    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq or key not in SCHEMA:
        sys.exit(f"experiment: --set {text}: expected KEY=VALUE with KEY one of {', '.join(SCHEMA)}")
    try:
        return key, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key, value  # a bare word: a string


def resolve(file, overrides):
    keyed, chain = load(file)
    for key, value in overrides:
        keyed[key] = ("--set", value)
    settings = {}
    for key, (t, default, _) in SCHEMA.items():
        if key in keyed:
            source, value = keyed[key]
            settings[key] = None if value is None else check(value, t, f"{source}: {key}")
        elif default is REQUIRED:
            sys.exit(f"experiment: {chain[-1]}: missing key '{key}' ({SCHEMA[key][2]})")
        else:
            settings[key] = default
    for i, a in enumerate(settings["ablations"]):
        where = f"{keyed['ablations'][0]}: ablations[{i}]"
        for k, t in ABLATION_KEYS.items():
            if k not in a:
                sys.exit(f"experiment: {where}: missing '{k}'")
            check(a[k], t if t is not list else [str], f"{where}.{k}")
        if set(a) - set(ABLATION_KEYS):
            sys.exit(f"experiment: {where}: unknown keys {sorted(set(a) - set(ABLATION_KEYS))}")
    for v in settings["variants"] + settings["seeded_variants"] + [a["variant"] for a in settings["ablations"]]:
        if v not in VARIANTS:
            sys.exit(f"experiment: {file}: unknown variant '{v}' (known: {', '.join(sorted(VARIANTS))})")
    for key in ("reuse", "seeds", "lrs"):
        if not settings[key]:
            sys.exit(f"experiment: {file}: {key} is empty")
    if settings["plan_by"] == "choices" and settings["set"] != "medical":
        sys.exit(f"experiment: {file}: plan_by = \"choices\" scores MedMCQA questions and needs set = \"medical\"")
    if settings["matched_saving"] and any(r % 2 for r in settings["reuse"]):
        sys.exit(f"experiment: {file}: matched_saving halves each reuse count for CLA and layer drop; "
                 f"reuse = {settings['reuse']} has an odd one")
    if not settings["seeded"]:
        settings["seeded"] = settings["reuse"][:1]
    return settings, chain


def shell_env(settings):
    """The settings as scripts/experiment_medical.sh reads them (EXP_KEY; lists space-separated)."""
    env = {}
    for key, value in settings.items():
        if key == "ablations":
            value = ";".join(f"{a['label']}={a['variant']}:{' '.join(a['options'])}" for a in value)
        elif isinstance(value, bool):
            value = "1" if value else "0"
        elif isinstance(value, list):
            value = " ".join(format(v, "g") if isinstance(v, float) else str(v) for v in value)
        elif isinstance(value, float):
            value = format(value, "g")
        env["EXP_" + key.upper()] = "" if value is None else str(value)
    return env


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="keys:\n" + "\n".join(f"  {k}: {type_name(t)}. {h}" for k, (t, _, h) in SCHEMA.items()))
    ap.add_argument("experiment", help="experiment file, e.g. experiments/medical/gpu.toml")
    ap.add_argument("model", help="the model: a GGUF file or folder, or a short name scripts/fetch-models.sh fetches")
    ap.add_argument("name", help="run name; results go to runs/SET/NAME unless --out")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key (VALUE in TOML syntax; a bare word is a string)")
    ap.add_argument("--out", help="results folder (default runs/SET/NAME)")
    ap.add_argument("--uniattn", default="./target/release/uniattn", help="the uniattn binary")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved settings and stop")
    args = ap.parse_args()
    settings, chain = resolve(args.experiment, [parse_override(o) for o in args.overrides])
    model = args.model
    if not os.path.exists(model):  # a short name (smollm2, ...): fetched into the user cache
        r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "fetch-models.sh"), model],
                           capture_output=True, text=True)
        if r.returncode != 0 or not r.stdout.strip():
            sys.exit(f"experiment: model {model}: no such file or folder, and {r.stderr.strip() or 'not fetched'}")
        model = r.stdout.strip().splitlines()[-1]
    model = os.path.abspath(model)
    out = os.path.abspath(args.out or os.path.join(ROOT, "runs", settings["set"], args.name))
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    manifest = {"experiment": [os.path.relpath(p, ROOT) for p in chain], "overrides": args.overrides,
                "model": model, "name": args.name, "out": out, "commit": commit or None,
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "settings": settings}
    print(json.dumps(manifest, indent=2), file=sys.stderr)
    if args.dry_run:
        return
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "experiment.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    env = {**os.environ, **shell_env(settings), "EXP_OUT": out, "EXP_UNIATTN": args.uniattn}
    sys.exit(subprocess.run(["bash", os.path.join(ROOT, "scripts", "experiment_medical.sh"), model, args.name],
                            env=env).returncode)


if __name__ == "__main__":
    main()
