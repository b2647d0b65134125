set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s)
timeout 170 $B/t65 --test-threads 1 cuda::kernels cuda_graph_decode_equals_eager 2>&1 | grep -E "^test |result|panicked|differ" > $OUT/tests.log
tail -4 $OUT/tests.log; grep -v " ok$" $OUT/tests.log | head; echo "tests $(( $(date +%s)-T0 )) s"
OUT=$OUT/b32 U=$B/u65 OLD_U="$B/u63 $B/u62" BATCH=32 CONTEXT=8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  timeout $(( 570 - ($(date +%s)-T0) )) bash scripts/device/graph_bench.sh > $OUT/b32.log 2>&1
grep -E "^\| q05|==" $OUT/b32.log | cut -c1-130 | tail -14; echo "b32 $(( $(date +%s)-T0 )) s"
