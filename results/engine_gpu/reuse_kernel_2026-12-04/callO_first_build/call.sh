# Session 39, call O: a reuse layer up to its output projection in one kernel, [W_o | W_c] as
# one GEMM (u91) against c958157 (u90): GPU tests, batch 1 and 32 at 8k, 3 repeats; a trace.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin
T0=$(date +%s)
timeout 150 $B/t91 --test-threads 1 reuse_attention_decode rms_norm_decode rope_kv_write decode_gemv decode_attention every_entry_point cuda_graph 2>&1 \
  | grep -E "^test |result|panicked|assert|max|past" > $OUT/tests.log
cat $OUT/tests.log | tail -25; echo "tests $(( $(date +%s)-T0 )) s"
OUT=$OUT/b U=$B/u91 OLD_U=$B/u90 BATCH=1,32 CONTEXT=8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  timeout 330 bash scripts/device/graph_bench.sh > $OUT/bench.log 2>&1
python3 scripts/device/bench_summary.py $OUT/b graphs=u91_reuse_kernel old=u90_main > $OUT/summary.md 2>&1
cat $OUT/summary.md; echo "bench $(( $(date +%s)-T0 )) s"
U=$B/u91 OUT=$OUT/tr BATCH=32 CONTEXT=8192 PLAN=4:12:24 PROFILER=trace timeout 120 bash scripts/device/decode_profile.sh > $OUT/trace.log 2>&1
echo "trace $(( $(date +%s)-T0 )) s"
cd $OUT && tar czf callO.tgz b bench.log tr/traces/*.txt trace.log 2>/dev/null; rm -rf b tr; ls
