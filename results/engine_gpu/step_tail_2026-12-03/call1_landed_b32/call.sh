set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s); W=/root/gb
timeout 150 $B/t53 --test-threads 1 decode_attention cuda_graph 2>&1 | grep -E "^test |max|result|panicked|differ|past the bound" | head -30 > $OUT/tests.log
tail -3 $OUT/tests.log; grep -E "FAILED|panicked|bound" $OUT/tests.log | head; echo "tests $(( $(date +%s)-T0 )) s"
A="UNIATTN_DECODE_ATTENTION_LEADS=64,UNIATTN_DECODE_ATTENTION_AHEAD=64"
OUT=$OUT/b32 U=$B/u53 BATCH=32 CONTEXT=2048,8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  COMPARE="$A,UNIATTN_DECODE_ATTENTION_JOINT=2" timeout 330 bash scripts/device/graph_bench.sh > $OUT/b32.log 2>&1
grep -E "^\| q05|==" $OUT/b32.log | cut -c1-120 | tail -20; echo "b32 $(( $(date +%s)-T0 )) s"
name=joint_b32
timeout 100 $NCU --clock-control none --set full --import-source no -k "regex:^decode_attention_joint_bf16\$" --launch-skip 6 --launch-count 1 \
    -o $OUT/$name -f $B/u53 bench --model $W/q05-uni --batch 32 --context 8192 --new-tokens 8 --dtype bf16 --device cuda > $OUT/$name.log 2>&1
$NCU -i $OUT/$name.ncu-rep --page details > $OUT/$name.txt 2>&1
tail -3 $OUT/$name.log; rm -f $OUT/$name.ncu-rep
grep -E "Duration|DRAM Throughput|Memory Throughput|L2 Hit|Registers Per|Achieved Occupancy|Grid Size|Executed Ipc A|L1/TEX Hit|Block Size" $OUT/$name.txt | head -14
echo "all $(( $(date +%s)-T0 )) s"
