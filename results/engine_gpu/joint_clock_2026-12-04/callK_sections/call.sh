# Prepared in the thirty-seventh session, run in the thirty-eighth (call K): where the joint launch's ~15 us above stream.cu
# go, by Nsight Compute's sections for stream.cu's cp.async kernel (the joint form's load
# pattern, 338 MB) and for three of UniAttn's decode_attention_joint_all launches at batch 32 /
# 8k (a3ef9c2 = u87). Sections, not metric names, so that one renamed metric cannot end the
# call; clocks left as they are (--clock-control none). Run from the repository root with
# .x20/u87.xz and .x20/unpack.sh (this folder's ../unpack.sh); ~3 minutes.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin
W=$WORK/gb
mkdir -p "$W"
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
sections=(--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy)
$NVCC -O2 -arch=sm_90 -o "$W/stream" results/engine_gpu/joint_ceiling_2026-12-03/call3_stream_same_run_b1/stream.cu
"$W/stream" | tee "$OUT/stream.txt"
timeout 120 $NCU --clock-control none -k regex:cp_async_kernel --launch-skip 3 --launch-count 1 "${sections[@]}" \
  --csv --page details "$W/stream" > "$OUT/stream_sections.csv" 2>&1
"$PYTHON" scripts/device/random_model.py scripts/device/qwen2.5-coder-0.5b.config.json "$W/q05" | tail -1
$B/u87 convert "$W/q05" --plan 4:12:24 --calib data/pmc_llama_instructions_1000.json --calib-rows 0..16 \
  --device cuda --overwrite --out "$W/q05-uni" 2>&1 | grep -E "plan|error" | head -2
timeout 240 $NCU --clock-control none -k regex:decode_attention_joint_all --launch-skip 6 --launch-count 3 \
  "${sections[@]}" --csv --page details \
  $B/u87 bench --model "$W/q05-uni" --batch 32 --context 8192 --new-tokens 4 --dtype bf16 --device cuda \
  > "$OUT/joint_sections.csv" 2>&1
grep -E "Duration|DRAM Throughput|L2 Hit|Achieved Occupancy|Stall Long|Mem Busy|Max Bandwidth" \
  "$OUT/stream_sections.csv" "$OUT/joint_sections.csv" | head -60
