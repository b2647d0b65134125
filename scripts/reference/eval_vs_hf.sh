#!/usr/bin/env bash
# `uniattn eval mc` against Hugging Face transformers on the same requests and weights (CPU,
# f32): ARC-Easy (the whole rc_5shot validation set, 570 questions) and MedMCQA (first 500).
#   scripts/reference/eval_vs_hf.sh [MODEL.gguf] [PYTHON with transformers]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
MODEL="${1:-smollm2}"
PY="${2:-/tmp/refenv/bin/python}"
OUT=results/eval_vs_hf
mkdir -p "$OUT"
for spec in "arc_easy 570" "medmcqa 500"; do
  set -- $spec
  ./target/release/uniattn eval mc --model "$MODEL" --tasks "$1" --limit "$2" \
    --per-item "$OUT/$1.ours.jsonl" --json "$OUT/$1.ours.json" 2>&1 | tail -4
  "$PY" scripts/reference/hf_loglikelihood.py "$MODEL" "$1" "$2" "$OUT/$1.hf.jsonl" 2> "$OUT/$1.hf.log"
  python3 scripts/reference/compare_loglikelihood.py "$OUT/$1.ours.jsonl" "$1" "$OUT/$1.hf.jsonl" | tee "$OUT/$1.compare.json"
done
