set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s); W=/root/gb; mkdir -p $W
timeout 100 $B/t-ahead2 --test-threads 1 decode_gemv_rope decode_attention_equals cuda_graph_decode_attention_kernel --nocapture 2>&1 | grep -E "^test |max|result|panicked|past" > $OUT/tests.log
cut -c1-150 $OUT/tests.log; echo "tests $(( $(date +%s)-T0 )) s"
$PYTHON scripts/device/random_model.py scripts/device/qwen2.5-coder-0.5b.config.json $W/q05 | tail -1
$B/u-main convert $W/q05 --plan 4:12:24 --calib data/pmc_llama_instructions_1000.json --calib-rows 0..16 --device cuda --overwrite --out $W/q05-uni 2>&1 | grep -E "plan|error"
for u in main ahead2; do for m in q05 q05-uni; do
  $B/u-$u bench --model $W/$m --batch 1 --context 8192 --new-tokens 16 --dtype bf16 --device cuda --trace $OUT/tr 2>&1 | grep -E "rror"
  $PYTHON scripts/device/trace_summary.py $OUT/tr/$m-batch1-context8192.json --steps 3 --timeline > $OUT/trace_${u}_$m.txt; rm -rf $OUT/tr
  echo "$u $m"; sed -n 2,9p $OUT/trace_${u}_$m.txt | cut -c1-100
done; done
echo "traces $(( $(date +%s)-T0 )) s"
for r in 1 2; do for u in ahead ahead2 main; do
  $B/u-$u bench --model $W/q05 --model $W/q05-uni --batch 1 --context 2048,8192 --new-tokens 128 --dtype bf16 --device cuda --json-out $OUT/b_${u}_$r.json 2>&1 | grep -E "^\| q05" | cut -c1-110 | sed "s/^/$u /"
done; done
cd $OUT && tar czf bench.tgz b_*.json && rm b_*.json
echo "all $(( $(date +%s)-T0 )) s"
