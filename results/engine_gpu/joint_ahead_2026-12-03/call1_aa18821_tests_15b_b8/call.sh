set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s)
timeout 200 $B/taa --test-threads 1 decode_attention rope_kv_write decode_gemv_rope cuda_graph 2>&1 | grep -E "^test |max|result|panicked|differ" > $OUT/tests.log
tail -3 $OUT/tests.log; grep -E "FAILED|panicked" $OUT/tests.log | head; echo "tests $(( $(date +%s)-T0 )) s"
OUT=$OUT/b8_15 U=$B/uaa SHAPES=1.5b BATCH=8 CONTEXT=2048,8192 REPEATS=2 MODES= EAGER=0 NEW=64 \
  COMPARE="UNIATTN_DECODE_ATTENTION_LEADS=16" timeout 330 bash scripts/device/graph_bench.sh > $OUT/b8_15.log 2>&1
grep -E "^\| q05|==" $OUT/b8_15.log | cut -c1-150 | tail -20; echo "all $(( $(date +%s)-T0 )) s"
