# Session 37, call G: the joint all-outputs form with a pair's four blocks as a thread-block
# cluster combining over distributed shared memory (DA_JOINT_CLUSTER,
# UNIATTN_DECODE_ATTENTION_CLUSTER=1) against the same build's L2 hand-over (u86 = a3ef9c2 +
# the cluster kernel): GPU tests, then batch 32 at 2k and 8k, 3 repeats.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin
timeout 200 $B/t86 --test-threads 1 decode_attention joint_form_behind every_entry_point \
  cuda_graph_decode_attention_kernel_equals_eager cuda_graph_decode_in_bf16_report 2>&1 \
  | grep -E "^test |result|panicked|assert" > $OUT/tests.log
cat $OUT/tests.log
OUT=$OUT/b U=$B/u86 COMPARE="UNIATTN_DECODE_ATTENTION_CLUSTER=1" BATCH=32 CONTEXT=2048,8192 REPEATS=3 \
  MODES= EAGER=0 NEW=64 timeout 330 bash scripts/device/graph_bench.sh > $OUT/bench.log 2>&1
python3 scripts/device/bench_summary.py $OUT/b graphs=u86_l2_handover \
  UNIATTN_DECODE_ATTENTION_CLUSTER1=u86_cluster > $OUT/summary.md 2>&1
cat $OUT/summary.md
tar czf $OUT/callG.tgz -C $OUT b bench.log && rm -rf $OUT/b
