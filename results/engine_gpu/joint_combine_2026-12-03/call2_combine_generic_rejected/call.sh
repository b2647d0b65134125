# Session 35, call 2: the decode attention's combine reading every output's sums in one round
# trip (u78) against main (u73): the GPU tests, then batch 32 / 8k (3 repeats) and batch 1 / 8k.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin
mkdir -p $OUT/c2
timeout 150 $B/t78 --test-threads 1 decode_attention joint_form_behind cuda_graph 2>&1 | grep -E "^test |result|panicked|assert" > $OUT/tests.log
cat $OUT/tests.log
OUT=$OUT/c2/b32 U=$B/u78 OLD_U=$B/u73 BATCH=32 CONTEXT=8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  timeout 320 bash scripts/device/graph_bench.sh > $OUT/c2/b32.log 2>&1
python3 scripts/device/bench_summary.py $OUT/c2/b32 graphs=u78 old=u73 > $OUT/b32_summary.md 2>&1
cat $OUT/b32_summary.md
OUT=$OUT/c2/b1 U=$B/u78 OLD_U=$B/u73 BATCH=1 CONTEXT=8192 REPEATS=2 MODES= EAGER=0 NEW=128 \
  timeout 100 bash scripts/device/graph_bench.sh > $OUT/c2/b1.log 2>&1
python3 scripts/device/bench_summary.py $OUT/c2/b1 graphs=u78 old=u73 > $OUT/b1_summary.md 2>&1
cat $OUT/b1_summary.md
tar czf $OUT/call2.tgz -C $OUT c2 && rm -rf $OUT/c2
