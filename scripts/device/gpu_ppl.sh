#!/usr/bin/env bash
# Runs on the GPU machine (see docs/benchmarks.md): perplexity of SmolLM2-135M and
# Qwen2.5-Coder-0.5B in f32 and bf16 on CUDA, against the CPU f32 values, plus decode speed.
# Expects the two GGUFs at $WORK/m/{smol,qwen}.gguf and the texts in $DATA (scripts/fetch-models.sh texts).
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
B=./target/release/uniattn
OUT=${OUT:-/tmp/out}
DATA=${DATA:-.cache/data}
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $WORK/m/smol.gguf" | sha256sum -c || exit 1
echo "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32  $WORK/m/qwen.gguf" | sha256sum -c || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
for m in smol qwen; do
  for t in tiny wiki; do
    for d in f32 bf16; do
      r=$($B eval ppl --model $WORK/m/$m.gguf --text $DATA/$t.utf8 --max-tokens 256 --device cuda --dtype $d --json 2>>"$OUT/log.txt")
      echo "$m $t cuda $d $r" | tee -a "$OUT/ppl.txt"
    done
  done
  # A longer run for throughput: 8192 tokens of wiki in 1024-token windows.
  for d in f32 bf16; do
    r=$($B eval ppl --model $WORK/m/$m.gguf --text $DATA/wiki.utf8 --max-tokens 8192 --window 1024 --stride 1024 --device cuda --dtype $d --json 2>>"$OUT/log.txt")
    echo "$m wiki8k cuda $d $r" | tee -a "$OUT/ppl.txt"
  done
  $B generate --model $WORK/m/$m.gguf --prompt "Write a short story about a robot who learns to paint." --max-tokens 256 --device cuda --dtype bf16 > "$OUT/gen_$m.txt" 2>&1
  tail -n1 "$OUT/gen_$m.txt"
done
