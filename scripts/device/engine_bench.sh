#!/usr/bin/env bash
# On the GPU machine: the issue-5 benchmark. Converts SmolLM2 and Qwen2.5-Coder-0.5B to UniAttn
# (the paper's grouping, closed-form W_c on 256 PMC rows), then one `uniattn bench` process per
# model pair (dense first) over batch 1/8/32/64 x context 512/2k/8k in bf16, then transformers'
# generate on the dense models at batch 1 and 32. Everything lands in $OUT.
#   PMC=pmc.json scripts/device/engine_bench.sh SMOLLM2.gguf QWEN05.gguf
set -uo pipefail
SMOL=$1 QWEN=$2
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
U=${U:-./target/release/uniattn}
OUT=${OUT:-/tmp/out}
W=${W:-$WORK/eb}
mkdir -p "$W" "$OUT"
BATCH=${BATCH:-1,8,32,64} CONTEXT=${CONTEXT:-512,2048,8192} NEW=${NEW:-64}
for pair in "smollm2 $SMOL 4:16:30" "qwen05 $QWEN 4:12:24"; do
  set -- $pair
  name=$1 gguf=$2 plan=$3
  $U import "$gguf" "$W/$name-dense" --dtype bf16 > /dev/null 2>&1
  $U convert "$gguf" --plan "$plan" --calib "$PMC" --calib-rows 0..256 --device cuda --out "$W/$name-uniattn" \
    > "$OUT/convert_$name.log" 2>&1
  $U bench --model "$W/$name-dense" --model "$W/$name-uniattn" --batch "$BATCH" --context "$CONTEXT" \
    --new-tokens "$NEW" --dtype bf16 --device cuda --json "$OUT/bench_$name.json" --plot "$OUT/bench_$name.svg" > "$OUT/bench_$name.md" 2> "$OUT/bench_$name.err"
  "$PYTHON" scripts/reference/hf_generate_bench.py "$W/$name-dense" --batch 1,32 \
    --context "$CONTEXT" --new-tokens "$NEW" > "$OUT/hf_generate_$name.jsonl" 2> "$OUT/hf_generate_$name.err"
  cat "$OUT/bench_$name.md" "$OUT/hf_generate_$name.jsonl"
done
