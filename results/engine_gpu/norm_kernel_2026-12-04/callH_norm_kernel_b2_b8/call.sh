# Session 37, call H: the decode norm kernel (u87 = a3ef9c2) against 1a398f9 (u82, libtorch's
# fused RMSNorm) at batch 2 and 8 / 8k, where it also runs: 3 repeats.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin
OUT=$OUT/b U=$B/u87 OLD_U=$B/u82 BATCH=2,8 CONTEXT=8192 REPEATS=3 \
  MODES= EAGER=0 NEW=64 timeout 400 bash scripts/device/graph_bench.sh > $OUT/bench.log 2>&1
python3 scripts/device/bench_summary.py $OUT/b graphs=u87_norm_kernel old=u82_head > $OUT/summary.md 2>&1
cat $OUT/summary.md
tar czf $OUT/callH.tgz -C $OUT b bench.log && rm -rf $OUT/b
