set -u
bash .x20/unpack.sh; B=/root/x20/bin
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
T0=$(date +%s)
timeout 150 $B/t-ahead3 --test-threads 1 rope_kv_write decode_gemv_rope decode_attention_equals cuda_graph --nocapture 2>&1 | grep -E "^test |max|result|panicked|past|\| " > $OUT/tests.log
grep -E "^test |result|panicked" $OUT/tests.log | cut -c1-160; echo "tests $(( $(date +%s)-T0 )) s"
OUT=$OUT/b28 U=$B/u-ahead3 OLD_U=$B/u-main BATCH=2,8 CONTEXT=2048,8192 REPEATS=2 MODES= EAGER=0 COMPARE="UNIATTN_DECODE_ATTENTION_AHEAD=1" \
  timeout $(( 570 - ($(date +%s)-T0) )) bash scripts/device/graph_bench.sh > $OUT/b28.log 2>&1
grep -E "^\| q05|==" $OUT/b28.log | cut -c1-120; echo "all $(( $(date +%s)-T0 )) s"
