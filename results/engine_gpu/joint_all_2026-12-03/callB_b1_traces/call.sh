# Prepared in session 35, not run (the device time was spent). Binaries in .x20/: u68 (8a49805),
# u69 (870f982), u71 (14dad3f), u80 (main: 8ade3f9 or later). (1) One replayed dense batch-1 / 8k step
# of u68 and u69 kernel by kernel: 870f982 lengthened it by 18 us and left UniAttn's alone.
# (2) UniAttn at batch 1 / 8k lost 1.5% of its tok/s between 14dad3f and d272cbf at the same
# replayed GPU ms: main beside u71, and main with plain launches, in each repeat.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin W=/root/gb
mkdir -p $W
"$PYTHON" scripts/device/random_model.py scripts/device/qwen2.5-coder-0.5b.config.json $W/q05 | tail -1
for b in u68 u69; do
  timeout 120 $B/$b bench --model $W/q05 --batch 1 --context 8192 --new-tokens 16 --dtype bf16 --device cuda \
    --trace $OUT/tr_$b 2>&1 | grep -E "^\| q05|rror"
  for t in $OUT/tr_$b/*.json; do
    "$PYTHON" scripts/device/trace_summary.py "$t" --steps 3 --timeline > $OUT/trace_$b.txt; rm -f "$t"
  done
  head -12 $OUT/trace_$b.txt
done
OUT=$OUT/b1 U=$B/u80 OLD_U=$B/u71 COMPARE="UNIATTN_OVERLAP_LAUNCHES=0" BATCH=1 CONTEXT=8192 REPEATS=2 MODES= \
  EAGER=0 NEW=128 timeout 300 bash scripts/device/graph_bench.sh > $OUT/b1.log 2>&1
python3 scripts/device/bench_summary.py $OUT/b1 graphs=main old=14dad3f > $OUT/b1_summary.md 2>&1
cat $OUT/b1_summary.md
tar czf $OUT/callB.tgz -C $OUT b1 $(ls $OUT | grep -E "^tr_") 2>/dev/null; rm -rf $OUT/b1
