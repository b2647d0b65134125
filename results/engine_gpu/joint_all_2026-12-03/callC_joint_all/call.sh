# Session 36, call C: the joint form's all-outputs combine as a kernel of its own
# (decode_attention_joint_all, picked where it takes fewer L2 round trips) = u82, against main
# (u80, d272cbf's kernels): GPU tests, then batch 16 and 32 at 8k, 3 repeats.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin
timeout 150 $B/t82 --test-threads 1 decode_attention joint_form_behind cuda_graph_decode_in_bf16 every_entry_point 2>&1 \
  | grep -E "^test |result|panicked|assert" > $OUT/tests.log
cat $OUT/tests.log
OUT=$OUT/b U=$B/u82 OLD_U=$B/u80 BATCH=16,32 CONTEXT=8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  timeout 400 bash scripts/device/graph_bench.sh > $OUT/bench.log 2>&1
python3 scripts/device/bench_summary.py $OUT/b graphs=joint_all old=main > $OUT/summary.md 2>&1
cat $OUT/summary.md
tar czf $OUT/callC.tgz -C $OUT b bench.log && rm -rf $OUT/b
