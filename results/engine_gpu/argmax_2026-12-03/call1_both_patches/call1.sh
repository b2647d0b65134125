set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s); W=/root/gb
timeout 170 $B/t60 --test-threads 1 row_argmax decode_attention rope_kv_write cuda_graph 2>&1 | grep -E "^test |max|result|panicked|differ|past the bound|diverge|against" | head -40 > $OUT/tests.log
tail -3 $OUT/tests.log; grep -E "FAILED|panicked|bound" $OUT/tests.log | head; echo "tests $(( $(date +%s)-T0 )) s"
OUT=$OUT/b32 U=$B/u60 OLD_U=$B/u59 BATCH=32 CONTEXT=2048,8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  timeout 200 bash scripts/device/graph_bench.sh > $OUT/b32.log 2>&1
grep -E "^\| q05|==" $OUT/b32.log | cut -c1-120 | tail -16; echo "b32 $(( $(date +%s)-T0 )) s"
OUT=$OUT/b1 U=$B/u60 OLD_U=$B/u59 BATCH=1 CONTEXT=8192 REPEATS=2 MODES= EAGER=0 NEW=64 \
  timeout 100 bash scripts/device/graph_bench.sh > $OUT/b1.log 2>&1
grep -E "^\| q05|==" $OUT/b1.log | cut -c1-120 | tail -8; echo "b1 $(( $(date +%s)-T0 )) s"
for u in u59 u60; do
timeout 50 $NCU --clock-control none --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed -k "regex:^decode_attention_joint_bf16\$" --launch-skip 6 --launch-count 3 \
    $B/$u bench --model $W/q05-uni --batch 32 --context 8192 --new-tokens 8 --dtype bf16 --device cuda 2>&1 | grep -E "duration|dram__" | sed "s/^/$u joint /" | tee -a $OUT/ncu.txt
done
for b in 32 1; do
timeout 40 $NCU --clock-control none --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed -k "regex:row_argmax|reduce_kernel" --launch-skip 4 --launch-count 2 \
    $B/u60 bench --model $W/q05-uni --batch $b --context 8192 --new-tokens 8 --dtype bf16 --device cuda 2>&1 | grep -E "row_argmax|reduce_kernel|duration" | cut -c1-150 | sed "s/^/u60 b$b /" | tee -a $OUT/ncu.txt
timeout 40 $NCU --clock-control none --metrics gpu__time_duration.sum -k "regex:reduce_kernel" --launch-skip 4 --launch-count 2 \
    $B/u59 bench --model $W/q05-uni --batch $b --context 8192 --new-tokens 8 --dtype bf16 --device cuda 2>&1 | grep -E "reduce_kernel|duration" | cut -c1-150 | sed "s/^/u59 b$b /" | tee -a $OUT/ncu.txt
done
echo "all $(( $(date +%s)-T0 )) s"
