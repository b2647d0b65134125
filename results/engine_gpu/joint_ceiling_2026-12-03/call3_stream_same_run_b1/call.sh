# Session 34, call 3: what one H200 streams the joint attention's bytes at (stream.cu), then the
# landed build (u73 = d272cbf) against transformers' gpt-fast-style compiled loop in the same run,
# batch 1 at 2k and 8k.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh
B=/root/x20/bin
mkdir -p $OUT/c3
nvcc -O2 -arch=sm_90 -o /root/x20/stream .x20/stream.cu && /root/x20/stream | tee $OUT/c3/stream.txt
OUT=$OUT/c3/x U=$B/u73 BATCH=1 CONTEXT=2048,8192 REPEATS=3 MODES=compiled EAGER=0 NEW=128 bash scripts/device/graph_bench.sh > $OUT/c3/b1.log 2>&1
python3 scripts/device/bench_summary.py $OUT/c3/x graphs="d272cbf" > $OUT/c3/summary.md 2>&1
cat $OUT/c3/summary.md
