set -u
bash .x20/unpack.sh; B=/root/x20/bin
T0=$(date +%s)
OUT=$OUT/b1c U=$B/u175 BATCH=1 CONTEXT=2048,8192 REPEATS=3 MODES=compiled EAGER=0 \
  timeout 330 bash scripts/device/graph_bench.sh > $OUT/b1c.log 2>&1
grep -E "^\| q05|==|tok" $OUT/b1c.log | cut -c1-140 | tail -24; echo "b1c $(( $(date +%s)-T0 )) s"
OUT=$OUT/q15b8 U=$B/u175 SHAPES=1.5b BATCH=8 CONTEXT=2048,8192 REPEATS=1 MODES= EAGER=0 COMPARE="UNIATTN_DECODE_ATTENTION_LEADS=16" \
  timeout $(( 530 - ($(date +%s)-T0) )) bash scripts/device/graph_bench.sh > $OUT/q15b8.log 2>&1
grep -E "^\| q05|==" $OUT/q15b8.log | cut -c1-140; echo "all $(( $(date +%s)-T0 )) s"
