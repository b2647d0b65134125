# Session 37, call F: a decode step's norms by a kernel launched behind the projection before
# them (rms_norm_decode, u85) against 1a398f9 (u82, libtorch's fused RMSNorm): GPU tests, then
# batch 32 at 2k and 8k, 3 repeats.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin
timeout 240 $B/t85 --test-threads 1 add_rms_norm_decode every_entry_point cuda_graph 2>&1 \
  | grep -E "^test |result|panicked|assert|max" > $OUT/tests.log
cat $OUT/tests.log
OUT=$OUT/b U=$B/u85 OLD_U=$B/u82 BATCH=32 CONTEXT=2048,8192 REPEATS=3 \
  MODES= EAGER=0 NEW=64 timeout 330 bash scripts/device/graph_bench.sh > $OUT/bench.log 2>&1
python3 scripts/device/bench_summary.py $OUT/b graphs=u85_norm_kernel old=u82_head > $OUT/summary.md 2>&1
cat $OUT/summary.md
tar czf $OUT/callF.tgz -C $OUT b bench.log && rm -rf $OUT/b
