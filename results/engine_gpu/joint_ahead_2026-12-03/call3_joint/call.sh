set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s); W=/root/gb; mkdir -p $W
timeout 90 $B/tj2 --test-threads 1 decode_attention 2>&1 | grep -E "^test |result|panicked|past the bound|applies" | head -20 > $OUT/tests.log
cat $OUT/tests.log; echo "tests $(( $(date +%s)-T0 )) s"
$PYTHON scripts/device/random_model.py scripts/device/qwen2.5-coder-0.5b.config.json $W/q05 | tail -1
$B/uj2 convert $W/q05 --plan 4:12:24 --calib data/pmc_llama_instructions_1000.json --calib-rows 0..16 --device cuda --overwrite --out $W/q05-uni 2>&1 | grep -E "error"
echo "models $(( $(date +%s)-T0 )) s"
export UNIATTN_DECODE_ATTENTION_LEADS=64 UNIATTN_DECODE_ATTENTION_AHEAD=64
run() { local tag=$1 b=$2 c=$3; shift 3; env "$@" timeout 45 $B/uj2 bench --model $W/q05-uni --batch $b --context $c --new-tokens 64 --dtype bf16 --device cuda --json-out $OUT/$tag.json 2>&1 | grep "^| q05" | cut -c1-110 | sed "s/^/$tag /"; }
run joint_b32 32 8192 UNIATTN_DECODE_ATTENTION_JOINT=2
run units_b32 32 8192 UNIATTN_DECODE_ATTENTION_JOINT=1000
echo "b32 $(( $(date +%s)-T0 )) s"
run joint_b8 8 8192 UNIATTN_DECODE_ATTENTION_JOINT=2
run units_b8 8 8192 UNIATTN_DECODE_ATTENTION_JOINT=1000
run joint_b1 1 8192 UNIATTN_DECODE_ATTENTION_JOINT=1
echo "all $(( $(date +%s)-T0 )) s"
