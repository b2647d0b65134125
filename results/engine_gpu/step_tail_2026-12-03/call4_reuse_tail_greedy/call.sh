set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s); W=/root/gb
timeout 170 $B/t55 --test-threads 1 rope_kv_write decode_attention cuda_graph 2>&1 | grep -E "^test |max|result|panicked|differ|past the bound" | head -30 > $OUT/tests.log
tail -3 $OUT/tests.log; grep -E "FAILED|panicked|bound" $OUT/tests.log | head; echo "tests $(( $(date +%s)-T0 )) s"
OUT=$OUT/b32 U=$B/u55 OLD_U=$B/u53 BATCH=32 CONTEXT=2048,8192 REPEATS=2 MODES= EAGER=0 NEW=64 \
  timeout 240 bash scripts/device/graph_bench.sh > $OUT/b32.log 2>&1
grep -E "^\| q05|==" $OUT/b32.log | cut -c1-120 | tail -20; echo "b32 $(( $(date +%s)-T0 )) s"
name=joint_b32
timeout 100 $NCU --clock-control none --section WarpStateStats --section SourceCounters --section SpeedOfLight --import-source no -k "regex:^decode_attention_joint_bf16\$" --launch-skip 6 --launch-count 1 \
    -o $OUT/$name -f $B/u55 bench --model $W/q05-uni --batch 32 --context 8192 --new-tokens 8 --dtype bf16 --device cuda > $OUT/$name.log 2>&1
$NCU -i $OUT/$name.ncu-rep --page raw > $OUT/${name}_raw.txt 2>&1
$NCU -i $OUT/$name.ncu-rep --page source --csv --print-source sass 2>&1 | gzip > $OUT/${name}_sass.csv.gz
tail -2 $OUT/$name.log; rm -f $OUT/$name.ncu-rep
grep -E "issue_stalled.*per_warp_active|gpu__time_duration.sum" $OUT/${name}_raw.txt | sort -k3 -n -r | head -24
echo "ncu $(( $(date +%s)-T0 )) s"
U=$B/u55 OUT=$OUT/tr BATCH=32 CONTEXT=8192 PLAN=4:12:24 PROFILER=trace timeout 150 bash scripts/device/decode_profile.sh > $OUT/trace.log 2>&1
cd $OUT/tr/traces && tar czf $OUT/traces.tgz *.txt && cd - >/dev/null; rm -rf $OUT/tr
grep -E "ms/step|argmax|rope_kv|elementwise" $OUT/trace.log | cut -c1-140 | head
echo "all $(( $(date +%s)-T0 )) s"
