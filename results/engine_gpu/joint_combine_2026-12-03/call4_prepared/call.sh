# Session 35, call 4: one replayed dense batch-1 / 8k step of 8a49805 (u68) and 870f982 (u69),
# kernel by kernel (libtorch's profiler through `bench --trace`).
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin W=/root/gb
mkdir -p $W
"$PYTHON" scripts/device/random_model.py scripts/device/qwen2.5-coder-0.5b.config.json $W/q05 | tail -1
for b in u68 u69; do
  timeout 100 $B/$b bench --model $W/q05 --batch 1 --context 8192 --new-tokens 16 --dtype bf16 --device cuda \
    --trace $OUT/tr_$b 2>&1 | grep -E "^\| q05|rror"
  for t in $OUT/tr_$b/*.json; do
    "$PYTHON" scripts/device/trace_summary.py "$t" --steps 3 --timeline > $OUT/trace_$b.txt; rm -f "$t"
  done
  head -12 $OUT/trace_$b.txt
done
