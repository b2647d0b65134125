set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s); W=/root/gb
timeout 120 $B/t57 --test-threads 1 decode_attention cuda_graph 2>&1 | grep -E "^test |max|result|panicked|differ|past the bound|diverge" | head -30 > $OUT/tests.log
tail -3 $OUT/tests.log; grep -E "FAILED|panicked|bound" $OUT/tests.log | head; echo "tests $(( $(date +%s)-T0 )) s"
OUT=$OUT/b32 U=$B/u57 OLD_U=$B/u55 BATCH=32 CONTEXT=2048,8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  timeout 200 bash scripts/device/graph_bench.sh > $OUT/b32.log 2>&1
grep -E "^\| q05|==" $OUT/b32.log | cut -c1-120 | tail -12; echo "b32 $(( $(date +%s)-T0 )) s"
OUT=$OUT/b1 U=$B/u57 OLD_U=$B/u55 BATCH=1 CONTEXT=8192 REPEATS=2 MODES= EAGER=0 NEW=64 \
  timeout 100 bash scripts/device/graph_bench.sh > $OUT/b1.log 2>&1
grep -E "^\| q05|==" $OUT/b1.log | cut -c1-120 | tail -8; echo "b1 $(( $(date +%s)-T0 )) s"
timeout 50 $NCU --clock-control none --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed -k "regex:^decode_attention_joint_bf16\$" --launch-skip 6 --launch-count 3 \
    $B/u57 bench --model $W/q05-uni --batch 32 --context 8192 --new-tokens 8 --dtype bf16 --device cuda 2>&1 | grep -E "duration|dram__" | tee $OUT/ncu.txt
echo "all $(( $(date +%s)-T0 )) s"
