# Session 34, call 1: the landed build's new joint test; the joint form's ring of stages
# (u74: sub-tiles of 32 keys, UNIATTN_DECODE_ATTENTION_STAGES 2-5) against u73 (d272cbf).
# (The test lines ran without scripts/device/env.sh, so the test binaries found no libtorch and
# printed nothing: the tests ran again in calls 2 and 4.)
set -uo pipefail
bash .x20/unpack.sh
B=/root/x20/bin
mkdir -p $OUT/c1
( $B/t73 --test-threads 1 joint_form_behind 2>&1 | grep -E "^test |result|panicked"
  $B/t74 --test-threads 1 joint_form_behind decode_attention cuda_graph 2>&1 | grep -E "^test |result|panicked|differ|max"
  UNIATTN_DECODE_ATTENTION_STAGES=5 $B/t74 --test-threads 1 joint_form_behind decode_attention_equals 2>&1 | grep -E "^test |result|panicked"
  UNIATTN_DECODE_ATTENTION_STAGES=2 $B/t74 --test-threads 1 joint_form_behind decode_attention_equals 2>&1 | grep -E "^test |result|panicked"
) > $OUT/c1/tests.log 2>&1
tail -30 $OUT/c1/tests.log
OUT=$OUT/c1/x U=$B/u74 OLD_U=$B/u73 COMPARE="UNIATTN_DECODE_ATTENTION_STAGES=2 UNIATTN_DECODE_ATTENTION_STAGES=3 UNIATTN_DECODE_ATTENTION_STAGES=5" \
  BATCH=32 CONTEXT=8192 REPEATS=2 MODES= EAGER=0 NEW=64 bash scripts/device/graph_bench.sh > $OUT/c1/b32.log 2>&1
python3 scripts/device/bench_summary.py $OUT/c1/x graphs="u74 stages 4" old="u73" > $OUT/c1/summary.md 2>&1
cat $OUT/c1/summary.md
