# Session 38, call M: stream2.cu (this folder) on the H200: the joint launch's 338 MB streamed
# by cp.async with and without tensor-core work a sub-tile, and by TMA copies in three layouts;
# then each kernel's SM clock, duration and DRAM throughput under Nsight Compute (clocks left
# as they are). Run from the repository root.
set -uo pipefail
. scripts/device/env.sh
D=results/engine_gpu/joint_clock_2026-12-04/callM_stream_variants
/usr/local/cuda/bin/nvcc -O2 -arch=sm_90a -o $WORK/stream2 $D/stream2.cu 2>&1 | grep -v deprecated | head -20
$WORK/stream2 | tee $OUT/stream2.txt
# The 4th launch of each kernel (skip 56 for the 48-mma form: the 16-mma form's 53 launches
# come first).
for k in cp_async_kernel cp_async_mma_kernel tma_kernel tma_rows_kernel tma_map_kernel; do
  skip=3; [[ $k == cp_async_mma_kernel ]] && skip=56
  timeout 60 $NCU --clock-control none -k regex:"^$k" --launch-skip $skip --launch-count 1 --section SpeedOfLight \
    --csv --page details $WORK/stream2 > $OUT/ncu_$k.csv 2>&1
  echo "$k: $(grep -E '"(SM Frequency|Duration|DRAM Throughput|Elapsed Cycles)"' $OUT/ncu_$k.csv | awk -F'","' '{printf "%s=%s ", $13, $15}')"
done | tee $OUT/ncu_summary.txt
