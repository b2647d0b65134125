set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
OUT=$OUT/b1c U=$B/u68 OLD_U="$B/u62" BATCH=1 CONTEXT=2048,8192 REPEATS=2 MODES=compiled EAGER=0 NEW=128 \
  timeout 215 bash scripts/device/graph_bench.sh > $OUT/b1c.log 2>&1
grep -E "^\| q05|==|decode_tokens" $OUT/b1c.log | cut -c1-110 | tail -16
