# Session 38, call I: the joint launch's combine in one L2 round trip into shared memory (u88)
# and the final norm before the LM head by rms_norm_decode (u88) against a3ef9c2 (u87), and u88's joint launch cut into 8 / 12 / 16 splits a pair
# (UNIATTN_DECODE_ATTENTION_JOINT_BLOCKS=528/792/1056; 4 by default): GPU tests, then batch 32 /
# 8k, 3 repeats, every build and setting in each repeat.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin
timeout 150 $B/t88 --test-threads 1 decode_attention add_rms_norm_decode every_entry_point cuda_graph 2>&1 \
  | grep -E "^test |result|panicked|assert|max" > $OUT/tests.log
cat $OUT/tests.log
OUT=$OUT/b U=$B/u88 OLD_U=$B/u87 BATCH=32 CONTEXT=8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  COMPARE="UNIATTN_DECODE_ATTENTION_JOINT_BLOCKS=528 UNIATTN_DECODE_ATTENTION_JOINT_BLOCKS=792 UNIATTN_DECODE_ATTENTION_JOINT_BLOCKS=1056" \
  timeout 400 bash scripts/device/graph_bench.sh > $OUT/bench.log 2>&1
python3 scripts/device/bench_summary.py $OUT/b graphs=u88_combine_shared old=u87_head \
  UNIATTN_DECODE_ATTENTION_JOINT_BLOCKS528=u88_8_splits UNIATTN_DECODE_ATTENTION_JOINT_BLOCKS792=u88_12_splits \
  UNIATTN_DECODE_ATTENTION_JOINT_BLOCKS1056=u88_16_splits > $OUT/summary.md 2>&1
cat $OUT/summary.md
tar czf $OUT/callI.tgz -C $OUT b bench.log && rm -rf $OUT/b
