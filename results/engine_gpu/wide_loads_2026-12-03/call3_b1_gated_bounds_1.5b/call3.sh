set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s)
timeout 100 $B/t67 --test-threads 1 decode_gemv cuda_graph_decode_equals_eager 2>&1 | grep -E "^test |result|panicked|differ" > $OUT/tests.log
tail -5 $OUT/tests.log; echo "tests $(( $(date +%s)-T0 )) s"
OUT=$OUT/b1 U=$B/u67 OLD_U="$B/u64 $B/u62" BATCH=1 CONTEXT=2048,8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  timeout 260 bash scripts/device/graph_bench.sh > $OUT/b1.log 2>&1
grep -E "^\| q05|==" $OUT/b1.log | cut -c1-110 | tail -20; echo "b1 $(( $(date +%s)-T0 )) s"
OUT=$OUT/b1_15 U=$B/u67 OLD_U="$B/u62" SHAPES=1.5b BATCH=1 CONTEXT=2048,8192 REPEATS=2 MODES= EAGER=0 NEW=64 \
  timeout $(( 560 - ($(date +%s)-T0) )) bash scripts/device/graph_bench.sh > $OUT/b1_15.log 2>&1
grep -E "^\| q05|==" $OUT/b1_15.log | cut -c1-110 | tail -12; echo "all $(( $(date +%s)-T0 )) s"
