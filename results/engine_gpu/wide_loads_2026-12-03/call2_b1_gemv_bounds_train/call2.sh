set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s)
OUT=$OUT/b1 U=$B/u63 OLD_U="$B/u64 $B/u62" BATCH=1 CONTEXT=2048,8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  timeout 300 bash scripts/device/graph_bench.sh > $OUT/b1.log 2>&1
grep -E "^\| q05|==" $OUT/b1.log | cut -c1-110 | tail -20; echo "b1 $(( $(date +%s)-T0 )) s"
W=/root/tvc; mkdir -p $W
"$PYTHON" scripts/device/random_model.py scripts/device/qwen2.5-coder-0.5b.config.json $W/model --dtype f32 | tail -1
python3 - data/pmc_llama_instructions_1000.json "$W/pmc.txt" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
open(sys.argv[2], "w").write("\n\n".join(r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in rows))
PY
for r in 1 2; do for b in u63 u62; do
  [[ $(( $(date +%s)-T0 )) -gt 540 ]] && break 2
  timeout 90 $B/$b train --model $W/model --data $W/pmc.txt --max-len 1024 --micro-batch 8 --val-fraction 0 --eval-every 0 \
    --save-every 0 --bf16 --device cuda --lr 1e-5 --overwrite --max-steps 20 --out $W/${b}_$r > $OUT/train_${b}_$r.log 2>&1 || tail -3 $OUT/train_${b}_$r.log
  python3 - $W/${b}_$r/metrics.jsonl $b $r <<'PY' | tee -a $OUT/train.txt
import json, statistics, sys
r = [json.loads(l) for l in open(sys.argv[1])]
full = max(x["tokens"] for x in r)
t = [x for x in r[3:] if x["tokens"] == full]
ms = statistics.median(x["tokens"] / x["tokens_per_second"] for x in t) * 1e3
print(sys.argv[2], "repeat", sys.argv[3], "median step ms", round(ms, 2), "tok/s", round(full / ms * 1e3), "loss", r[0]["loss"], r[-1]["loss"])
PY
done; done
echo "all $(( $(date +%s)-T0 )) s"
