#!/usr/bin/env bash
# The main job on a fresh machine: set up libtorch, build, fetch SmolLM2-135M and the texts,
# generate a reply, and print perplexity on wiki.utf8.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
. .cache/env.sh
cargo build --release --quiet
MODEL="$(scripts/fetch-models.sh smollm2 | tail -n1)"
DATA="$(scripts/fetch-models.sh texts | tail -n1)"
echo "== generate"
./target/release/uniattn generate --model "$MODEL" --prompt "What is the capital of France? Answer in one sentence." --max-tokens 48
echo "== perplexity (first 256 tokens of wiki.utf8; the brief's reference is 8.79)"
./target/release/uniattn eval ppl --model "$MODEL" --text "$DATA/wiki.utf8" --max-tokens 256
