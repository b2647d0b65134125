set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s); W=/root/gb
timeout 90 $B/t62 --test-threads 1 row_argmax cuda_graph_decode_equals_eager 2>&1 | grep -E "^test |result|panicked|against|rows" | head -20 > $OUT/tests.log
cat $OUT/tests.log; echo "tests $(( $(date +%s)-T0 )) s"
OUT=$OUT/b32 U=$B/u62 OLD_U=$B/u59 BATCH=32 CONTEXT=8192 REPEATS=2 MODES= EAGER=0 NEW=64 \
  timeout 200 bash scripts/device/graph_bench.sh > $OUT/b32.log 2>&1
grep -E "^\| q05|==" $OUT/b32.log | cut -c1-120 | tail -12; echo "b32 $(( $(date +%s)-T0 )) s"
for b in 32 1; do
timeout 40 $NCU --clock-control none --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed -k "regex:row_argmax" --launch-skip 3 --launch-count 2 \
    $B/u62 bench --model $W/q05 --batch $b --context 8192 --new-tokens 8 --dtype bf16 --device cuda 2>&1 | grep -E "row_argmax|duration|dram" | cut -c1-150 | sed "s/^/u62 b$b /" | tee -a $OUT/ncu.txt
done
echo "all $(( $(date +%s)-T0 )) s"
