set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
OUT=$OUT/b32 U=$B/u72 OLD_U="$B/u71" COMPARE="UNIATTN_OVERLAP_LAUNCHES=0" BATCH=32 CONTEXT=8192 REPEATS=2 MODES= EAGER=0 NEW=64 \
  timeout 145 bash scripts/device/graph_bench.sh > $OUT/b32.log 2>&1
grep -E "^\| q05|==" $OUT/b32.log | cut -c1-130 | tail -12
