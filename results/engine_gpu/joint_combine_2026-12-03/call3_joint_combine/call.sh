# Session 35, call 3: the joint combine reading two splits of every output a round trip (u79)
# against main (u73): GPU tests, batch 32 / 8k in 3 repeats; then dense batch 1 / 8k of
# 870f982 (u69) beside 8a49805 (u68), with a trace of each step.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin
mkdir -p $OUT/c3
timeout 120 $B/t79 --test-threads 1 decode_attention joint_form_behind cuda_graph_decode_in_bf16 2>&1 | grep -E "^test |result|panicked|assert" > $OUT/tests.log
cat $OUT/tests.log
OUT=$OUT/c3/b32 U=$B/u79 OLD_U=$B/u73 BATCH=32 CONTEXT=8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  timeout 300 bash scripts/device/graph_bench.sh > $OUT/c3/b32.log 2>&1
python3 scripts/device/bench_summary.py $OUT/c3/b32 graphs=u79 old=u73 > $OUT/b32_summary.md 2>&1
cat $OUT/b32_summary.md
OUT=$OUT/c3/b1 U=$B/u69 OLD_U=$B/u68 BATCH=1 CONTEXT=8192 REPEATS=2 MODES= EAGER=0 NEW=128 \
  timeout 100 bash scripts/device/graph_bench.sh > $OUT/c3/b1.log 2>&1
python3 scripts/device/bench_summary.py $OUT/c3/b1 graphs=u69 old=u68 > $OUT/b1_summary.md 2>&1
cat $OUT/b1_summary.md
for b in u68 u69; do
  OUT=$OUT/c3/tr_$b U=$B/$b PROFILER=trace BATCH=1 CONTEXT=8192 timeout 40 bash scripts/device/decode_profile.sh > $OUT/c3/tr_$b.log 2>&1
done
tar czf $OUT/call3.tgz -C $OUT c3 && rm -rf $OUT/c3
