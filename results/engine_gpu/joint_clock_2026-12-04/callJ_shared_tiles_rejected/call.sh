# Session 38, call J: a pair's blocks take its sub-tiles as they come (a counter a pair; split
# s of every pair first) in the joint all-outputs form (u89, prototype), against a3ef9c2 (u87):
# GPU tests, then batch 32 at 2k and 8k, 3 repeats, both builds in each repeat.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin
timeout 120 $B/t89 --test-threads 1 decode_attention every_entry_point cuda_graph_decode_attention cuda_graph_decode_in_bf16 2>&1 \
  | grep -E "^test |result|panicked|assert|max|diverge" > $OUT/tests.log
cat $OUT/tests.log
OUT=$OUT/b U=$B/u89 OLD_U=$B/u87 BATCH=32 CONTEXT=2048,8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  timeout 380 bash scripts/device/graph_bench.sh > $OUT/bench.log 2>&1
python3 scripts/device/bench_summary.py $OUT/b graphs=u89_shared_tiles old=u87_head > $OUT/summary.md 2>&1
cat $OUT/summary.md
tar czf $OUT/callJ.tgz -C $OUT b bench.log && rm -rf $OUT/b
