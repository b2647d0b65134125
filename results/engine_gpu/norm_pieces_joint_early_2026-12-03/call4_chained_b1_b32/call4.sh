set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s)
timeout 150 $B/t72 --test-threads 1 add_rms_norm_decode row_argmax_equals_argmax rope_kv_write gated_act decode_attention_equals cuda_graph 2>&1 | grep -E "^test |result|panicked|differ|\| " > $OUT/tests.log
grep -E "result|panicked" $OUT/tests.log; grep -v " ok$" $OUT/tests.log | grep "^test" | head; echo "tests $(( $(date +%s)-T0 )) s"
OUT=$OUT/b32 U=$B/u72 OLD_U="$B/u71" BATCH=1,32 CONTEXT=8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  timeout $(( 455 - ($(date +%s)-T0) )) bash scripts/device/graph_bench.sh > $OUT/b32.log 2>&1
grep -E "^\| q05|==" $OUT/b32.log | cut -c1-130 | tail -10; echo "b32 $(( $(date +%s)-T0 )) s"
