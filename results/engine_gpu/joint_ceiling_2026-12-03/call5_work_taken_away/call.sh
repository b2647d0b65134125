# Session 34, call 5: where the joint launch's time goes, by taking its work away (timing only;
# the outputs are wrong): b3 = no scores and no P V (staging, mask, barriers, finish), b1 = no
# P V, b2 = no scores (P constant); against u73 (d272cbf), batch 32 / 8k, one repeat.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh
B=/root/x20/bin
mkdir -p $OUT/c5
OUT=$OUT/c5/x U=$B/u73 OLD_U="$B/b3 $B/b1 $B/b2" BATCH=32 CONTEXT=8192 REPEATS=1 MODES= EAGER=0 NEW=64 bash scripts/device/graph_bench.sh > $OUT/c5/b32.log 2>&1
python3 scripts/device/bench_summary.py $OUT/c5/x graphs="u73" old="b3 staging only" old2="b1 no PV" old3="b2 no scores" > $OUT/c5/summary.md 2>&1
cat $OUT/c5/summary.md
