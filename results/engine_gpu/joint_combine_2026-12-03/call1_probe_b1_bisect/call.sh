# Session 35, call 1: (1) where a joint launch's time goes, block by block (p73 = main + a
# globaltimer/clock64 probe printed for two launches); (2) batch 1 / 8k: main (u73) beside
# 8a49805 (u68), ea1bff7 (u70) and 14dad3f (u71) in each repeat, to tell a regression from
# another machine.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin W=/root/gb
mkdir -p $W $OUT/c1
"$PYTHON" scripts/device/random_model.py scripts/device/qwen2.5-coder-0.5b.config.json $W/q05 | tail -1
$B/u73 convert $W/q05 --plan 4:12:24 --calib data/pmc_llama_instructions_1000.json --calib-rows 0..16 \
  --device cuda --overwrite --out $W/q05-uni 2>&1 | grep -E "plan|error"
timeout 150 $B/p73 bench --model $W/q05-uni --batch 32 --context 8192 --new-tokens 8 --dtype bf16 --device cuda > $OUT/c1/probe.log 2>&1
echo "probe rc=$? lines=$(grep -c PROBE $OUT/c1/probe.log)"
grep PROBE $OUT/c1/probe.log > $OUT/probe.txt; grep "^|" $OUT/c1/probe.log | tail -2
OUT=$OUT/c1/b1 U=$B/u73 OLD_U="$B/u68 $B/u70 $B/u71" BATCH=1 CONTEXT=8192 REPEATS=2 MODES= EAGER=0 NEW=128 \
  timeout 400 bash scripts/device/graph_bench.sh > $OUT/c1/b1.log 2>&1
python3 scripts/device/bench_summary.py $OUT/c1/b1 graphs=u73 old=u68 old2=u70 old3=u71 > $OUT/b1_summary.md 2>&1
cat $OUT/b1_summary.md
tar czf $OUT/call1.tgz -C $OUT c1 && rm -rf $OUT/c1
