# Prepared for the next session (not run): where the joint launch's ~14 us above stream.cu go.
# Binaries in .x20/: u73 (d272cbf or main), b3 (take_away.py 3 on it: no arithmetic), u68
# (8a49805), stream.cu. Nsight Compute's PM sampling shows DRAM throughput over the launch's
# time: the start (current key, queries, the first sub-tile), the steady state and the end
# (the combine of four splits by each pair's last block).
set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
W=/root/gb; mkdir -p $W
"$PYTHON" scripts/device/random_model.py scripts/device/qwen2.5-coder-0.5b.config.json $W/q05 | tail -1
$B/u73 convert $W/q05 --plan 4:12:24 --calib data/pmc_llama_instructions_1000.json --calib-rows 0..16 \
  --device cuda --overwrite --out $W/q05-uni 2>&1 | grep -E "plan|error"
S="--section SpeedOfLight --section PmSampling --section MemoryWorkloadAnalysis --section LaunchStats"
for b in u73 b3; do
  timeout 100 $NCU --clock-control none $S -k "regex:^decode_attention_joint_bf16\$" --launch-skip 6 --launch-count 1 \
    -o $OUT/joint_$b -f $B/$b bench --model $W/q05-uni --batch 32 --context 8192 --new-tokens 8 --dtype bf16 --device cuda > $OUT/joint_$b.log 2>&1
  $NCU -i $OUT/joint_$b.ncu-rep --page details --print-details all > $OUT/joint_$b.txt 2>&1; rm -f $OUT/joint_$b.ncu-rep
  grep -E "Duration|DRAM Throughput|L2 Cache Throughput" $OUT/joint_$b.txt | head -3
done
nvcc -O2 -arch=sm_90 -o /root/x20/stream .x20/stream.cu
timeout 60 $NCU --clock-control none $S -k regex:cp_async_kernel --launch-skip 3 --launch-count 1 -o $OUT/stream -f /root/x20/stream > $OUT/stream.log 2>&1
$NCU -i $OUT/stream.ncu-rep --page details --print-details all > $OUT/stream.txt 2>&1; rm -f $OUT/stream.ncu-rep
grep -E "Duration|DRAM Throughput" $OUT/stream.txt | head -2
# Dense batch 1 / 8k lost ~3% of its tok/s since 8a49805 at the same replayed GPU time: the two
# builds in the same call.
OUT=$OUT/b1 U=$B/u73 OLD_U=$B/u68 BATCH=1 CONTEXT=8192 REPEATS=3 MODES= EAGER=0 NEW=128 \
  timeout 200 bash scripts/device/graph_bench.sh > $OUT/b1.log 2>&1
python3 scripts/device/bench_summary.py $OUT/b1 graphs=d272cbf old=8a49805
