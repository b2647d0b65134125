set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s); W=/root/gb; mkdir -p $W
$PYTHON scripts/device/random_model.py scripts/device/qwen2.5-coder-0.5b.config.json $W/q05 | tail -1
$B/u-main convert $W/q05 --plan 4:12:24 --calib data/pmc_llama_instructions_1000.json --calib-rows 0..16 --device cuda --overwrite --out $W/q05-uni 2>&1 | grep -E "plan|error"
echo "models $(( $(date +%s)-T0 )) s"
for f in plain:decode_attention_bf16:60 lead:decode_attention_lead_bf16:15 reuse:decode_attention_reuse_bf16:45; do
  IFS=: read name k skip <<< "$f"
  timeout 150 $NCU --clock-control none --set full --import-source no -k "regex:^${k}\$" --launch-skip $skip --launch-count 1 \
    -o $OUT/$name -f $B/u-main bench --model $W/q05-uni --batch 1 --context 8192 --new-tokens 32 --dtype bf16 --device cuda > $OUT/$name.log 2>&1
  tail -3 $OUT/$name.log
  $NCU -i $OUT/$name.ncu-rep --page details > $OUT/$name.txt 2>&1
  $NCU -i $OUT/$name.ncu-rep --page source --csv --print-source sass 2>&1 | xz -c > $OUT/${name}_sass.csv.xz
  rm -f $OUT/$name.ncu-rep $OUT/$name.log
  grep -E "Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Grid Size" $OUT/$name.txt
  echo "$name $(( $(date +%s)-T0 )) s"
done
