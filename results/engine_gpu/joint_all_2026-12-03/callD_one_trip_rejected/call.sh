# Session 36, call D: the all-outputs combine in one L2 round trip (every split's sums copied to
# shared memory by cp.async, beside the max/sum loads and the score) = u83, against call C's
# decode_attention_joint_all (two splits of every output a trip, into registers) = u82: GPU
# tests, then batch 32 at 8k, 3 repeats.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin
timeout 150 $B/t83 --test-threads 1 decode_attention joint_form_behind every_entry_point 2>&1 \
  | grep -E "^test |result|panicked|assert" > $OUT/tests.log
cat $OUT/tests.log
OUT=$OUT/b U=$B/u83 OLD_U=$B/u82 BATCH=32 CONTEXT=8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  timeout 290 bash scripts/device/graph_bench.sh > $OUT/bench.log 2>&1
python3 scripts/device/bench_summary.py $OUT/b graphs=one_trip old=two_trips > $OUT/summary.md 2>&1
cat $OUT/summary.md
tar czf $OUT/callD.tgz -C $OUT b bench.log && rm -rf $OUT/b
