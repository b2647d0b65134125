set -u
bash .x20/unpack.sh; B=/root/x20/bin
T0=$(date +%s)
$B/t603 --test-threads 1 decode_attention rope_kv_write decode_gemv_rope cuda_graph 2>&1 | grep -E "^test |max|result|panicked|differ" > $OUT/tests.log
tail -4 $OUT/tests.log; grep -c " ok$" $OUT/tests.log; grep -E "FAILED|panicked" $OUT/tests.log | head; echo "tests $(( $(date +%s)-T0 )) s"
OUT=$OUT/b32 U=$B/u603 BATCH=32 CONTEXT=8192 REPEATS=2 MODES= EAGER=0 \
  COMPARE="UNIATTN_DECODE_ATTENTION_LEADS=64,UNIATTN_DECODE_ATTENTION_AHEAD=64 UNIATTN_DECODE_ATTENTION_LEADS=64,UNIATTN_DECODE_ATTENTION_AHEAD=0" \
  timeout 420 bash scripts/device/graph_bench.sh > $OUT/b32.log 2>&1
grep -E "^\| q05|==" $OUT/b32.log | cut -c1-140 | tail -30; echo "all $(( $(date +%s)-T0 )) s"
