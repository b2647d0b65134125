#!/usr/bin/env bash
# On the GPU machine (issue 17): CUDA-graph decode checked against the eager engine, then
# timed against the eager engine and transformers (eager, static-cache generate, and the
# gpt-fast-style compiled step), all in one run on one card. Random weights in
# Qwen2.5-Coder-0.5B's shapes (SHAPES=1.5b for 1.5B's); UniAttn is the paper's 4:12:24 plan
# (PLAN=...) with W_c fitted on 16 rows. VARIANTS="cla layerdrop" also benches those baselines on
# the same plan (each made by one `train --variant V --max-steps 1` step). COMPARE="VAR=VALUE ..."
# also runs ours under each setting, in the same repeat (e.g. UNIATTN_DECODE_GEMV=0: cuBLAS for
# every projection; UNIATTN_OVERLAP_LAUNCHES=0: plain launches; A=1,B=2 sets both);
# OLD_U=path/to/uniattn also runs another build of ours (the commit before a kernel change) in
# each repeat; OLD_U="a b" runs each of several.
#   TESTBIN=target/release/deps/uniattn-HASH scripts/device/graph_bench.sh
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
U=${U:-./target/release/uniattn}
OUT=${OUT:-/tmp/out} W=${W:-$WORK/gb}
BATCH=${BATCH:-1,32} CONTEXT=${CONTEXT:-2048,8192} NEW=${NEW:-128} REPEATS=${REPEATS:-3} MODES=${MODES-compiled static}
mkdir -p "$W" "$OUT"
# What an earlier call left in $OUT (a reused machine's output folder held that morning's files
# on 2026-12-01) would be summed with this call's by bench_summary.py: anything not touched in
# the last 30 minutes (a call runs 10 at most) moves aside, out of the archive below.
earlier=(-mindepth 1 -maxdepth 1 -mmin +30 ! -name all.tgz ! -name 'earlier-*')
if [[ -n $(find "$OUT" "${earlier[@]}") ]]; then
  aside="$OUT/earlier-$(date +%Y%m%d-%H%M%S)"
  mkdir -p "$aside" && find "$OUT" "${earlier[@]}" -exec mv {} "$aside"/ \;
  echo "graph_bench: what an earlier call left in $OUT moved to $aside"
fi
# A device call returns at most 8 files: everything also goes back as one archive, which sorts
# first.
trap 'tar czf "$OUT/all.tgz" -C "$OUT" --exclude=all.tgz --exclude="./earlier-*" .' EXIT
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader | tee "$OUT/gpu.txt"
if [[ -n ${TESTBIN:-} ]]; then
  echo "== fused kernels vs their compositions; CUDA graphs + fused kernels vs eager (tiny models, f32)"
  "$TESTBIN" --test-threads 1 cuda:: cuda_graph --nocapture 2>&1 | grep -E "^test |max|result|panicked|differ" | tee "$OUT/graph_test.log"
fi
echo "== models"
SHAPES=${SHAPES:-0.5b}
# Both models are made again on every run: a warm machine may hold another shape's from the
# call before (with SHAPES=1.5b a stale 0.5B q05-uni once stood beside the 1.5B q05).
"$PYTHON" scripts/device/random_model.py scripts/device/qwen2.5-coder-$SHAPES.config.json "$W/q05" 2>&1 | tail -1
$U convert "$W/q05" --plan ${PLAN:-4:12:24} --calib data/pmc_llama_instructions_1000.json --calib-rows 0..16 \
  --device cuda --overwrite --out "$W/q05-uni" 2>&1 | grep -E "plan|KV|error" | head -3
models=(--model "$W/q05" --model "$W/q05-uni")
for v in ${VARIANTS:-}; do
  $U train --model "$W/q05" --variant "$v" --plan ${PLAN:-4:12:24} --data data/pmc_llama_instructions_1000.json \
    --max-len 256 --micro-batch 2 --max-steps 1 --val-fraction 0 --device cuda --overwrite --out "$W/$v" \
    > "$OUT/train_$v.log" 2>&1 || tail -3 "$OUT/train_$v.log"
  models+=(--model "$W/$v/final")
done
common=(--batch "$BATCH" --context "$CONTEXT" --new-tokens "$NEW" --dtype bf16 --device cuda)
for r in $(seq 1 "$REPEATS"); do
  echo "== uniattn bench, repeat $r (eager; graphs without fused kernels if UNFUSED=1; graphs + fused kernels)"
  [[ ${EAGER:-1} == 1 ]] && UNIATTN_CUDA_GRAPHS=0 $U bench --model "$W/q05" "${common[@]}" --json-out "$OUT/bench_eager_$r.json" 2>&1 | grep "^|" | tail -n +3
  [[ ${UNFUSED:-0} == 1 ]] && UNIATTN_FUSED_KERNELS=0 $U bench --model "$W/q05" --model "$W/q05-uni" "${common[@]}" --json-out "$OUT/bench_unfused_$r.json" 2>&1 | grep "^|" | tail -n +3
  $U bench "${models[@]}" "${common[@]}" --json-out "$OUT/bench_graphs_$r.json" 2>&1 | grep -E "^\||fused" | tail -n +3
  i=0
  for old in ${OLD_U:-}; do  # bench_old_R.json for the first, bench_old2_R.json for the second...
    i=$((i + 1)); tag=old; [[ $i -gt 1 ]] && tag=old$i
    echo "== the same with $old (another build, e.g. the commit before a kernel change)"
    $old bench "${models[@]}" "${common[@]}" --json-out "$OUT/bench_${tag}_$r.json" 2>&1 | grep -E "^\||fused" | tail -n +3
  done
  for setting in ${COMPARE:-}; do
    echo "== the same with $setting"
    # Several variables joined by commas; the files are named by the last (A=1,B=6: bench_B6).
    last=${setting##*,}
    env ${setting//,/ } $U bench "${models[@]}" "${common[@]}" --json-out "$OUT/bench_${last//=/}_$r.json" 2>&1 | grep -E "^\||fused" | tail -n +3
  done
done
for mode in $MODES; do
  echo "== transformers $mode"
  "$PYTHON" scripts/reference/hf_generate_bench.py "$W/q05" --mode $mode --batch "$BATCH" --context "$CONTEXT" \
    --new-tokens "$NEW" --repeats "$REPEATS" 2> "$OUT/hf_$mode.err" | tee "$OUT/hf_$mode.jsonl"
  tail -3 "$OUT/hf_$mode.err"
done
