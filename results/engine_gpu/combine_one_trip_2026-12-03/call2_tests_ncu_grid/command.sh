set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s); W=/root/gb; mkdir -p $W
timeout 200 $B/tfin --test-threads 1 decode_attention rope_kv_write decode_gemv_rope cuda_graph 2>&1 | grep -E "^test |max|result|panicked|differ" > $OUT/tests.log
tail -3 $OUT/tests.log; grep -E "FAILED|panicked" $OUT/tests.log | head; echo "tests $(( $(date +%s)-T0 )) s"
$PYTHON scripts/device/random_model.py scripts/device/qwen2.5-coder-0.5b.config.json $W/q05 | tail -1
$B/u603 convert $W/q05 --plan 4:12:24 --calib data/pmc_llama_instructions_1000.json --calib-rows 0..16 --device cuda --overwrite --out $W/q05-uni 2>&1 | grep -E "plan|error"
export UNIATTN_DECODE_ATTENTION_LEADS=64 UNIATTN_DECODE_ATTENTION_AHEAD=64
name=ahead_b32
timeout 150 $NCU --clock-control none --set full --import-source no -k "regex:^decode_attention_ahead_bf16\$" --launch-skip 6 --launch-count 1 \
    -o $OUT/$name -f $B/u603 bench --model $W/q05-uni --batch 32 --context 8192 --new-tokens 8 --dtype bf16 --device cuda > $OUT/$name.log 2>&1
tail -2 $OUT/$name.log
$NCU -i $OUT/$name.ncu-rep --page details > $OUT/$name.txt 2>&1
rm -f $OUT/$name.ncu-rep $OUT/$name.log
grep -E "Duration|DRAM Throughput|Memory Throughput|L2 Hit|Registers Per|Achieved Occupancy|Grid Size|Block Limit" $OUT/$name.txt
echo "ncu $(( $(date +%s)-T0 )) s"
unset UNIATTN_DECODE_ATTENTION_LEADS UNIATTN_DECODE_ATTENTION_AHEAD
OUT=$OUT/knob U=$B/uknob BATCH=32 CONTEXT=8192 REPEATS=1 MODES= EAGER=0 \
  COMPARE="UNIATTN_DECODE_ATTENTION_LEADS=64,UNIATTN_DECODE_ATTENTION_AHEAD=64 UNIATTN_DECODE_ATTENTION_LEADS=64,UNIATTN_DECODE_ATTENTION_AHEAD=64,UNIATTN_DECODE_ATTENTION_GRID_BLOCKS=528 UNIATTN_DECODE_ATTENTION_LEADS=64,UNIATTN_DECODE_ATTENTION_AHEAD=64,UNIATTN_DECODE_ATTENTION_GRID_BLOCKS=792" \
  timeout 300 bash scripts/device/graph_bench.sh > $OUT/knob.log 2>&1
grep -E "^\| q05|==" $OUT/knob.log | cut -c1-140 | tail -30; echo "all $(( $(date +%s)-T0 )) s"
