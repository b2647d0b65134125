#!/usr/bin/env bash
# On the GPU machine (issue 17): per-kernel times of one captured decode step. Random weights
# in Qwen2.5-Coder-0.5B's shapes (SHAPES=1.5b), batch 1, 2k context (BATCH, CONTEXT), and with
# PLAN=... a UniAttn model beside the dense one.
# - PROFILER=ncu (default): Nsight Compute, gpu__time_duration of every kernel the process runs
#   (prefill too: slow past batch 1 / 2k). Caches are flushed before each kernel unless
#   CACHE=none (then each kernel finds what the one before left in L2, as in a replayed step).
# - PROFILER=trace: `bench --trace`, libtorch's profiler over three replayed steps alone, at
#   full speed, kernels overlapping as they do in a step; any batch and context.
#   scripts/device/decode_profile.sh   (writes $OUT/profile_<model>.csv or $OUT/traces/)
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
U=${U:-./target/release/uniattn} OUT=${OUT:-/tmp/out} W=${W:-$WORK/gb}
mkdir -p "$W" "$OUT"
# Made again on every run, as in graph_bench.sh: a warm machine may hold another shape's models.
"$PYTHON" scripts/device/random_model.py scripts/device/qwen2.5-coder-${SHAPES:-0.5b}.config.json "$W/q05" | tail -1
if [[ -n ${PLAN:-} ]]; then
  $U convert "$W/q05" --plan "$PLAN" --calib data/pmc_llama_instructions_1000.json --calib-rows 0..16 \
    --device cuda --overwrite --out "$W/q05-uni" 2>&1 | grep -E "plan|error"
fi
for m in q05 ${PLAN:+q05-uni}; do
  if [[ ${PROFILER:-ncu} == trace ]]; then
    $U bench --model "$W/$m" --batch ${BATCH:-1} --context ${CONTEXT:-2048} --new-tokens 16 --dtype bf16 --device cuda \
      --trace "$OUT/traces" 2>&1 | grep -E "^\| $m|rror"
    for t in "$OUT"/traces/$m-batch*.json; do
      "$PYTHON" scripts/device/trace_summary.py "$t" --steps 3 --timeline > "${t%.json}.txt"; head -25 "${t%.json}.txt"
    done
    continue
  fi
  $NCU --clock-control none --cache-control ${CACHE:-all} --metrics gpu__time_duration.sum --csv --print-units base \
    $U bench --model "$W/$m" --batch ${BATCH:-1} --context ${CONTEXT:-2048} --new-tokens 3 --dtype bf16 --device cuda \
    > "$OUT/profile_$m.csv" 2> "$OUT/profile_$m.err"
  echo "$m: $(grep -c gpu__time_duration "$OUT/profile_$m.csv") kernels profiled"; tail -2 "$OUT/profile_$m.err"
  # The kernels a step, from bench's table in the same output: the per-kernel summary.
  k=$(grep "^| $m " "$OUT/profile_$m.csv" | awk -F'|' '{print $5}' | head -1)
  [[ -n $k ]] && "$PYTHON" scripts/device/ncu_step.py "$OUT/profile_$m.csv" $k | tee "$OUT/step_$m.txt" | head -20
done
