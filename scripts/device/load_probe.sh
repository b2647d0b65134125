#!/usr/bin/env bash
# On the GPU machine (issue 17): how a decode step's keys and values reach shared memory fastest
# (load_probe.cu: cp.async forms, TMA tensor and bulk copies, stages, blocks an SM), then the
# same L2 and DRAM counters for the probe's forms, the decode attention kernel and cuDNN's SDPA
# at batch 32 / 8k, so the probe's numbers can be read against the two real kernels.
#   OUT=... scripts/device/load_probe.sh            (ENGINE=0: the probe only)
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
U=${U:-./target/release/uniattn} OUT=${OUT:-/tmp/out} W=${W:-$WORK/gb}
mkdir -p "$W" "$OUT"
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
$NVCC -O3 -arch=sm_90a -std=c++17 -o "$W/load_probe" scripts/device/load_probe.cu -lcuda || exit 1
echo "== every form (us and TB/s a launch, the mean of 20, L2 flushed before each)"
"$W/load_probe" | tee "$OUT/load_probe.md"
metrics=gpu__time_duration.sum,dram__bytes_read.sum,lts__t_sector_hit_rate.pct,lts__t_sectors_srcunit_tex_op_read.sum,lts__t_requests_srcunit_tex_op_read.sum,lts__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed,smsp__inst_executed.sum
echo "== counters of the probe's forms (2 stages, 2 blocks an SM, 4 splits)"
for form in ${FORMS:-cg cg_zfill tma bulk}; do
  echo "-- $form"
  $NCU --clock-control none --launch-skip 2 --launch-count 1 --metrics "$metrics" --csv --print-units base \
    "$W/load_probe" "$form" 2 2 4 3 2>&1 | grep -E '"(gpu__|dram__|lts__|smsp__)' | awk -F'","' '{print $(NF-2), $NF}' |
    tee -a "$OUT/load_probe_counters.txt"
done
[[ ${ENGINE:-1} == 1 ]] || exit 0
echo "== counters of cuDNN's SDPA and the decode attention kernel, batch 32 / 8k, dense"
"$PYTHON" scripts/device/random_model.py scripts/device/qwen2.5-coder-0.5b.config.json "$W/q05" | tail -1
for setting in UNIATTN_DECODE_ATTENTION=0 UNIATTN_DECODE_ATTENTION=64; do
  kernel=$([[ $setting == *=0 ]] && echo 'regex:fort_native_sdpa.*16x128x64' || echo 'regex:decode_attention')
  echo "-- $setting ($kernel)"
  env $setting timeout 150 $NCU --clock-control none -k "$kernel" --launch-skip 30 --launch-count 2 \
    --metrics "$metrics" --csv --print-units base \
    $U bench --model "$W/q05" --batch 32 --context 8192 --new-tokens 4 --dtype bf16 --device cuda 2>&1 |
    grep -E '"(gpu__|dram__|lts__|smsp__)' | awk -F'","' '{print $5, $(NF-2), $NF}' | tee -a "$OUT/engine_counters.txt"
done
