#!/usr/bin/env bash
# The main job on a fresh machine: set up libtorch, build, fetch SmolLM2-135M and the texts,
# generate a reply, print perplexity on wiki.utf8, score ARC-Easy questions and benchmark the
# engine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
. .cache/env.sh
cargo build --release --quiet
MODEL="$(scripts/fetch-models.sh smollm2 | tail -n1)"
DATA="$(scripts/fetch-models.sh texts | tail -n1)"
scripts/fetch-models.sh evals > /dev/null
echo "== generate"
./target/release/uniattn generate --model "$MODEL" --prompt "What is the capital of France? Answer in one sentence." --max-tokens 48
echo "== perplexity (first 256 tokens of wiki.utf8; the brief's reference is 8.79)"
./target/release/uniattn eval ppl --model "$MODEL" --text "$DATA/wiki.utf8" --max-tokens 256
echo "== multiple choice (first 100 ARC-Easy questions, 5-shot, lm-eval scoring)"
./target/release/uniattn eval mc --model "$MODEL" --tasks arc_easy --limit 100
echo "== engine benchmark (CPU sizes; the GPU grid: scripts/device/engine_bench.sh, docs/benchmarks.md)"
./target/release/uniattn bench --model "$MODEL" --batch 1,8 --context 256 --new-tokens 16
