set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s); W=/root/gb
OUT=$OUT/b32 U=$B/u61 OLD_U=$B/u59 BATCH=32 CONTEXT=8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  timeout 250 bash scripts/device/graph_bench.sh > $OUT/b32.log 2>&1
grep -E "^\| q05|==" $OUT/b32.log | cut -c1-120 | tail -16; echo "b32 $(( $(date +%s)-T0 )) s"
for b in 32 1; do
timeout 45 $NCU --clock-control none --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed -k "regex:row_argmax" --launch-skip 3 --launch-count 2 \
    $B/u61 bench --model $W/q05-uni --batch $b --context 8192 --new-tokens 8 --dtype bf16 --device cuda 2>&1 | grep -E "row_argmax|duration" | cut -c1-150 | sed "s/^/u61 b$b /" | tee -a $OUT/ncu.txt
timeout 45 $NCU --clock-control none --metrics gpu__time_duration.sum -k "regex:reduce_kernel" --launch-skip 2 --launch-count 5 \
    $B/u59 bench --model $W/q05-uni --batch $b --context 8192 --new-tokens 8 --dtype bf16 --device cuda 2>&1 | grep -E "reduce_kernel|duration" | cut -c1-150 | sed "s/^/u59 b$b /" | tee -a $OUT/ncu.txt
done
echo "all $(( $(date +%s)-T0 )) s"
