# Prepared in session 35, not run: the joint combine with the run-time choice
# (joint_combine_chosen.patch on main) against main. Binaries in .x20/: u80 = main (8ade3f9:
# d272cbf's kernels), c81 = main + the patch, t81 = c81's lib tests. The patch reads a batch of
# two splits of all four outputs a round trip only where that takes fewer trips (batch 32 /
# 8k: 4 splits), and keeps d272cbf's per-output batches at 2-8 sequences (15-43 splits).
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin
timeout 150 $B/t81 --test-threads 1 decode_attention joint_form_behind cuda_graph_decode_in_bf16 2>&1 \
  | grep -E "^test |result|panicked|assert" > $OUT/tests.log
cat $OUT/tests.log
OUT=$OUT/b U=$B/c81 OLD_U=$B/u80 BATCH=2,8,32 CONTEXT=8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  timeout 430 bash scripts/device/graph_bench.sh > $OUT/bench.log 2>&1
python3 scripts/device/bench_summary.py $OUT/b graphs=chosen old=main > $OUT/summary.md 2>&1
cat $OUT/summary.md
tar czf $OUT/callA.tgz -C $OUT b bench.log && rm -rf $OUT/b
