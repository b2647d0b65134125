set -u
bash .x20/unpack.sh; B=/root/x20/bin
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
T0=$(date +%s)
timeout 240 $B/t-ahead --test-threads 1 decode_attention_equals decode_gemv_rope cuda_graph --nocapture 2>&1 | grep -E "^test |max|result|panicked|differ|past|off|\| " > $OUT/tests.log
cut -c1-220 $OUT/tests.log | head -40; echo "tests $(( $(date +%s)-T0 )) s"
OUT=$OUT/b1 U=$B/u-ahead OLD_U=$B/u-main BATCH=1 CONTEXT=2048,8192 REPEATS=3 MODES= EAGER=0 COMPARE="UNIATTN_DECODE_ATTENTION_AHEAD=0" \
  timeout $(( 560 - ($(date +%s)-T0) )) bash scripts/device/graph_bench.sh > $OUT/b1.log 2>&1
grep -E "^\||==" $OUT/b1.log | cut -c1-150; echo "all $(( $(date +%s)-T0 )) s"
