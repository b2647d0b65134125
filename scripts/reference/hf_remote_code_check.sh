#!/usr/bin/env bash
# A planned folder of each reuse kind (UniAttn from `convert`; softmax-only, CLA, layer drop, KV-head merging
# after one `train` step, which converts on the fly) loaded by transformers with
# `trust_remote_code=True` (the modeling_uniattn.py the folder carries), f32, CPU: its ARC-Easy
# 0-shot log-likelihoods (each context run once, continuations continuing its KV cache) against
# `uniattn eval mc`'s, and its greedy `generate` (with and without the cache) against
# `uniattn generate`'s text. Writes results/hf_remote_code/MODEL.jsonl.
#   PY=/path/to/venv/bin/python scripts/reference/hf_remote_code_check.sh [MODEL] [QUESTIONS]
# (PLAN=LEAD-LAST,... for another model than SmolLM2's 30 layers, e.g. 9-12,13-16 for Gemma 3 270M.)
# (a Python with torch and transformers 5.)
set -euo pipefail
MODEL=${1:-smollm2} N=${2:-20} PLAN=${PLAN:-23-24,25-28}
U=${U:-./target/release/uniattn} OUT=${OUT:-results/hf_remote_code} W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
mkdir -p "$OUT"
: > "$OUT/$MODEL.jsonl"
printf '%s\n' "The capital of France is" "def fibonacci(n):" "A patient with a fever and a cough" \
  "Once upon a time" > "$W/prompts.txt"
NEW=${NEW:-24}
for kind in uniattn softmax-only cla layerdrop kv-heads; do
  if [[ $kind == uniattn ]]; then
    $U convert "$MODEL" --plan-blocks "$PLAN" --calib data/pmc_llama_instructions_1000.json --calib-rows 0..16 \
      --out "$W/$kind" > "$W/$kind.log" 2>&1 || { tail -5 "$W/$kind.log"; exit 1; }
    dir=$W/$kind
  else
    $U train --model "$MODEL" --variant "$kind" --plan-blocks "$PLAN" --data data/pmc_llama_instructions_1000.json \
      --max-len 256 --micro-batch 2 --max-steps 1 --val-fraction 0 --eval-every 0 --out "$W/$kind" > "$W/$kind.log" 2>&1 \
      || { tail -5 "$W/$kind.log"; exit 1; }
    dir=$W/$kind/final
  fi
  "${PY:?set PY to a python with torch and transformers}" scripts/reference/hf_loglikelihood.py "$dir" arc_easy:rc_0shot "$N" "$W/$kind.hf.jsonl" 2> /dev/null
  $U eval mc --model "$dir" --tasks arc_easy:rc_0shot --limit "$N" --per-item "$W/$kind.ours.jsonl" > /dev/null 2>&1
  r=$(python3 scripts/reference/compare_loglikelihood.py "$W/$kind.ours.jsonl" arc_easy:rc_0shot "$W/$kind.hf.jsonl")
  $U generate --model "$dir" --prompts-file "$W/prompts.txt" --raw --jsonl --max-tokens "$NEW" > "$W/$kind.gen.jsonl" 2> /dev/null
  g=$("$PY" scripts/reference/hf_generate_check.py "$dir" "$W/prompts.txt" "$NEW" "$W/$kind.gen.jsonl" 2> /dev/null)
  echo "{\"reuse\": \"$kind\", \"model\": \"$MODEL\", \"plan\": \"$PLAN\", \"comparison\": $r, \"generate\": $g}" | tee -a "$OUT/$MODEL.jsonl"
done
