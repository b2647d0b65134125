# Session 34, call 2: u75 = the tensor-core decode attention transposed (S^T = K Q^T, O^T += V^T P^T):
# its GPU tests, the landed build's new joint test, then batch 32 / 8k and batch 1 / 8k against u73.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh
B=/root/x20/bin
mkdir -p $OUT/c2
( $B/t73 --test-threads 1 joint_form_behind 2>&1 | grep -E "^test |result|panicked|error" | head -20
  $B/t75 --test-threads 1 joint_form_behind decode_attention cuda_graph 2>&1 | grep -E "^test |result|panicked|differ|max|left|right" | head -60
) > $OUT/c2/tests.log 2>&1
cat $OUT/c2/tests.log
OUT=$OUT/c2/x U=$B/u75 OLD_U=$B/u73 BATCH=1,32 CONTEXT=8192 REPEATS=2 MODES= EAGER=0 NEW=64 bash scripts/device/graph_bench.sh > $OUT/c2/bench.log 2>&1
python3 scripts/device/bench_summary.py $OUT/c2/x graphs="u75 transposed" old="u73" > $OUT/c2/summary.md 2>&1
cat $OUT/c2/summary.md
