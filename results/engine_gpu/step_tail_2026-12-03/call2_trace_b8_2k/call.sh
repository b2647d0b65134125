set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s); W=/root/gb
U=$B/u53 OUT=$OUT BATCH=32 CONTEXT=8192 PLAN=4:12:24 PROFILER=trace timeout 240 bash scripts/device/decode_profile.sh > $OUT/trace.log 2>&1
tail -60 $OUT/trace.log | cut -c1-150; echo "trace $(( $(date +%s)-T0 )) s"
cd $OUT/traces && tar czf ../traces.tgz *.txt && cd - >/dev/null; rm -rf $OUT/traces/*.json
run() { local tag=$1 b=$2 c=$3; shift 3; env "$@" timeout 60 $B/u53 bench --model $W/q05-uni --batch $b --context $c --new-tokens 64 --dtype bf16 --device cuda --json-out $OUT/$tag.json 2>&1 | grep "^| q05" | cut -c1-120 | sed "s/^/$tag /"; }
for r in 1 2; do
run default_b8_2k_$r 8 2048
run joint_b8_2k_$r 8 2048 UNIATTN_DECODE_ATTENTION_JOINT=2
done
echo "all $(( $(date +%s)-T0 )) s"
