set -u
bash .x20/unpack.sh; B=/root/x20/bin
T0=$(date +%s)
OUT=$OUT/b1c U=$B/u-ahead3 BATCH=1 CONTEXT=2048,8192 REPEATS=3 MODES=compiled EAGER=0 \
  timeout 470 bash scripts/device/graph_bench.sh > $OUT/b1c.log 2>&1
grep -E "^\| q05|==|tok" $OUT/b1c.log | cut -c1-130 | tail -30; echo "all $(( $(date +%s)-T0 )) s"
