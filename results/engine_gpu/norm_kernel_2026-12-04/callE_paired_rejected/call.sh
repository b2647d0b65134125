# Session 37, call E: the joint all-outputs form two blocks a launched block of 512 threads that
# meet at the same barriers (DA_JOINT_PAIRED, UNIATTN_DECODE_ATTENTION_PAIRED=1) against the same
# build's two blocks an SM (u84) and 1a398f9 (u82, HEAD's SASS): GPU tests, then batch 32 at 8k,
# 3 repeats.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin
timeout 200 $B/t84 --test-threads 1 decode_attention joint_form_behind every_entry_point \
  cuda_graph_decode_attention_kernel_equals_eager cuda_graph_decode_in_bf16_report 2>&1 \
  | grep -E "^test |result|panicked|assert" > $OUT/tests.log
cat $OUT/tests.log
OUT=$OUT/b U=$B/u84 OLD_U=$B/u82 COMPARE="UNIATTN_DECODE_ATTENTION_PAIRED=1" BATCH=32 CONTEXT=8192 REPEATS=3 \
  MODES= EAGER=0 NEW=64 timeout 330 bash scripts/device/graph_bench.sh > $OUT/bench.log 2>&1
python3 scripts/device/bench_summary.py $OUT/b graphs=u84_two_blocks old=u82_head \
  UNIATTN_DECODE_ATTENTION_PAIRED1=u84_paired > $OUT/summary.md 2>&1
cat $OUT/summary.md
tar czf $OUT/callE.tgz -C $OUT b bench.log && rm -rf $OUT/b
