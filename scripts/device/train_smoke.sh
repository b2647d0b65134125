#!/usr/bin/env bash
# On the GPU machine: `uniattn train` on random weights in Qwen2.5-Coder-0.5B's shapes, bf16
# autocast with f32 master weights, 8 x 1,024 tokens of the PMC text, 20 steps: dense, then the
# two UniAttn stages on the 4:12:24 plan. Prints tokens/s over steps 4-20 and the loss curve's
# ends (a check that training runs and learns on the GPU path, with libtorch's fused RMSNorm).
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
U=${U:-./target/release/uniattn}
OUT=${OUT:-/tmp/out} W=${W:-$WORK/ts}
mkdir -p "$W" "$OUT"
[[ -f $W/q05/config.json ]] || "$PYTHON" scripts/device/random_model.py scripts/device/qwen2.5-coder-0.5b.config.json "$W/q05" --dtype f32 | tail -1
python3 - data/pmc_llama_instructions_1000.json "$W/pmc.txt" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
open(sys.argv[2], "w").write("\n\n".join(r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in rows))
PY
common=(--data "$W/pmc.txt" --max-len 1024 --micro-batch 8 --pack --val-fraction 0 --eval-every 0 --save-every 0
        --bf16 --device cuda --lr 1e-5 --overwrite)
summary() {
  python3 - "$1" <<'PY'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])]
t = r[3:]
print(f"{len(r)} steps, loss {r[0]['loss']:.4f} -> {r[-1]['loss']:.4f}, "
      f"{sum(x['tokens'] for x in t) / sum(x['tokens'] / x['tokens_per_second'] for x in t):.0f} tok/s over steps 4-{len(r)}, "
      f"{t[0]['tokens']} tokens/step")
PY
}
if [[ ${DENSE:-1} == 1 ]]; then
  echo "== dense"
  $U train --model "$W/q05" "${common[@]}" --max-steps 20 --out "$W/dense" > "$OUT/dense.log" 2>&1 || tail -5 "$OUT/dense.log"
  summary "$W/dense/metrics.jsonl"
fi
echo "== uniattn (stage 1 W_c only, then stage 2)"
$U train --model "$W/q05" --variant uniattn --plan 4:12:24 "${common[@]}" --max-steps 40 --out "$W/uni" > "$OUT/uni.log" 2>&1 || tail -5 "$OUT/uni.log"
python3 - "$W/uni/metrics.jsonl" <<'PY'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])]
for st in sorted({x['stage'] for x in r}):
    s = [x for x in r if x['stage'] == st][3:]
    if s:
        print(f"stage {st + 1}: {len(s) + 3} steps, loss {s[0]['loss']:.4f} -> {s[-1]['loss']:.4f}, "
              f"{sum(x['tokens'] for x in s) / sum(x['tokens'] / x['tokens_per_second'] for x in s):.0f} tok/s")
PY
cp "$W/dense/metrics.jsonl" "$OUT/dense_metrics.jsonl" 2>/dev/null; cp "$W/uni/metrics.jsonl" "$OUT/uni_metrics.jsonl" 2>/dev/null
