#!/usr/bin/env bash
# The main job on a fresh machine: set up libtorch, build, fetch SmolLM2-135M and the texts,
# generate a reply, print perplexity on wiki.utf8, score ARC-Easy questions, convert the model
# to UniAttn with the closed-form W_c and benchmark the engine, dense against UniAttn.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/cache.sh
scripts/setup.sh
. "$UNIATTN_CACHE/env.sh"
cargo build --release --quiet
scripts/fetch-models.sh smollm2 texts evals > /dev/null
U=./target/release/uniattn
OUT="$(mktemp -d "${TMPDIR:-/tmp}/uniattn-main.XXXX")"
echo "== generate"
$U generate --model smollm2 --prompt "What is the capital of France? Answer in one sentence." --max-tokens 48
echo "== perplexity (first 256 tokens of wiki.utf8; the brief's reference is 8.79)"
$U eval ppl --model smollm2 --text "$UNIATTN_CACHE/data/wiki.utf8" --max-tokens 256
echo "== multiple choice (first 100 ARC-Easy questions, 5-shot, lm-eval scoring)"
$U eval mc --model smollm2 --tasks arc_easy --limit 100
echo "== UniAttn: 4 SuperBlocks over layers 15-29, W_c fitted on 64 PMC rows"
$U convert smollm2 --plan-blocks 15-18,20-22,23-26,27-29 --calib data/pmc_llama_instructions_1000.json \
  --calib-rows 0..64 --out "$OUT/smol-uni"
$U info "$OUT/smol-uni"
$U eval ppl --model "$OUT/smol-uni" --text "$UNIATTN_CACHE/data/wiki.utf8" --max-tokens 256
echo "== engine benchmark, dense vs UniAttn (CPU sizes; the GPU grid: docs/benchmarks.md)"
$U bench --model smollm2 --model "$OUT/smol-uni" --batch 1,8 --context 256 --new-tokens 16
echo "== outputs in $OUT"
