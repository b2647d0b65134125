# Session 38, call L: the SM clock and power while decoding at batch 32 / 8k (a3ef9c2 = u87,
# HEAD's kernels): nvidia-smi sampled every 20 ms during one bench of each model, 256 new tokens.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin
W=$WORK/gb
[[ -d $W/q05-uni ]] || { "$PYTHON" scripts/device/random_model.py scripts/device/qwen2.5-coder-0.5b.config.json "$W/q05" | tail -1;
  $B/u87 convert "$W/q05" --plan 4:12:24 --calib data/pmc_llama_instructions_1000.json --calib-rows 0..16 --device cuda --overwrite --out "$W/q05-uni" | grep plan; }
nvidia-smi --query-gpu=power.limit,clocks.max.sm,clocks.max.mem --format=csv | tee $OUT/limits.txt
for m in q05 q05-uni; do
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader -lms 20 > $OUT/smi_$m.csv &
  p=$!
  $B/u87 bench --model $W/$m --batch 32 --context 8192 --new-tokens 256 --dtype bf16 --device cuda --json-out $OUT/bench_$m.json 2>&1 | grep "^|" | tail -1
  kill $p
done
for m in q05 q05-uni; do echo "== $m"; awk -F', ' '{print $2, $4, $6}' $OUT/smi_$m.csv | sort | uniq -c | sort -rn | head -8; done
