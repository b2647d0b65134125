set -u
bash .x20/unpack.sh; B=/root/x20/bin
T0=$(date +%s)
OUT=$OUT/b1 U=$B/ufin OLD_U=$B/u603 BATCH=1 CONTEXT=2048,8192 REPEATS=3 MODES= EAGER=0 \
  timeout 290 bash scripts/device/graph_bench.sh > $OUT/b1.log 2>&1
grep -E "^\| q05|==" $OUT/b1.log | cut -c1-140 | tail -30; echo "b1 $(( $(date +%s)-T0 )) s"
OUT=$OUT/q15 U=$B/ufin SHAPES=1.5b BATCH=1 CONTEXT=2048,8192 REPEATS=2 MODES= EAGER=0 COMPARE="UNIATTN_DECODE_ATTENTION_LEADS=16" \
  timeout 280 bash scripts/device/graph_bench.sh > $OUT/q15.log 2>&1
grep -E "^\| q05|==" $OUT/q15.log | cut -c1-140 | tail -30; echo "all $(( $(date +%s)-T0 )) s"
