# Session 39, call Q: the reuse kernel at 8 outputs a block, one a warp (u93), against 16 (u92,
# call P) and c958157 (u90): GPU tests, batch 1 and 32 at 8k, 3 repeats, every build in each repeat.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin
T0=$(date +%s)
timeout 120 $B/t93 --test-threads 1 reuse_attention_decode every_entry_point cuda_graph 2>&1 \
  | grep -E "^test |result|panicked|assert|max|past" > $OUT/tests.log
cat $OUT/tests.log | tail -12; echo "tests $(( $(date +%s)-T0 )) s"
OUT=$OUT/b U=$B/u93 OLD_U="$B/u92 $B/u90" BATCH=1,32 CONTEXT=8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  timeout 440 bash scripts/device/graph_bench.sh > $OUT/bench.log 2>&1
python3 scripts/device/bench_summary.py $OUT/b graphs=u93_one_output_a_warp old=u92_two_outputs_a_warp old2=u90_main > $OUT/summary.md 2>&1
cat $OUT/summary.md; echo "bench $(( $(date +%s)-T0 )) s"
cd $OUT && tar czf callQ.tgz b bench.log; rm -rf b; ls
