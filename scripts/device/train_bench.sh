#!/usr/bin/env bash
# On the GPU machine: full fine-tuning throughput of `uniattn train` against a transformers loop
# in its three modes (eager, fused AdamW, torch.compile + fused AdamW; same model folder,
# 1024-token chunks of the PMC texts, BATCH sequences (4), bf16 autocast, AdamW), all in one run,
# then a complete two-stage UniAttn run of SmolLM2 on the PMC file (RECIPE=0 skips it).
#   scripts/device/train_bench.sh GGUF NAME       (MODES="compiled" for the peer alone)
set -uo pipefail
GGUF=$1 NAME=$2 PMC=${PMC:-data/pmc_llama_instructions_1000.json}
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
U=./target/release/uniattn
OUT=${OUT:-/tmp/out}
W=$WORK/tb/$NAME
mkdir -p "$W"
$U import "$GGUF" "$W/hf" --dtype f32 > /dev/null 2>&1
python3 - "$PMC" "$W/pmc.txt" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
open(sys.argv[2], "w").write("\n\n".join(r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in rows))
PY
peak() { # peak PID -> max MiB used by that process while it runs
  local m=0 v
  while kill -0 "$1" 2>/dev/null; do
    v=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits | awk -F', ' -v p="$1" '$1==p{print $2}')
    [[ -n $v && $v -gt $m ]] && m=$v
    sleep 0.2
  done
  echo "$m"
}
BATCH=${BATCH:-4}
hf=()
for mode in ${MODES:-eager fused compiled}; do
  "$PYTHON" scripts/reference/hf_train_bench.py "$W/hf" "$W/pmc.txt" --batch "$BATCH" --len 1024 --steps 20 \
    --mode "$mode" > "$OUT/hf_${NAME}_$mode.json" 2> "$OUT/hf_${NAME}_$mode.err" &
  pid=$!; p=$(peak $pid); wait $pid
  hf+=("\"$mode\": {\"result\": $(cat "$OUT/hf_${NAME}_$mode.json" || echo null), \"peak_mib\": $p}")
done
$U train --model "$W/hf" --data "$W/pmc.txt" --max-len 1024 --micro-batch "$BATCH" --val-fraction 0 --eval-every 0 --save-every 0 \
  --max-steps 20 --bf16 --device cuda --lr 1e-5 --out "$W/ours" > "$OUT/ours_$NAME.log" 2>&1 &
pid=$!; our_peak=$(peak $pid); wait $pid
ours=$(tail -n 18 "$W/ours/metrics.jsonl" | python3 -c "import json,sys; r=[json.loads(l) for l in sys.stdin]; print(sum(x['tokens'] for x in r)/sum(x['tokens']/x['tokens_per_second'] for x in r))")
(IFS=,; echo "{\"model\": \"$NAME\", \"batch\": $BATCH, \"hf\": {${hf[*]}}, \"ours_tokens_per_second\": $ours, \"ours_peak_mib\": $our_peak}") | tee -a "$OUT/train_bench.jsonl"

# The complete recipe on the medical file (SmolLM2 only): UniAttn two stages vs dense, effective
# batch 48 (8 x 6), lr 2e-5, cosine with 3% warm-up, 1 epoch per stage, 5% held out.
if [[ $NAME == smollm2 && ${RECIPE:-1} == 1 ]]; then
  common=(--data "$PMC" --max-len 1024 --micro-batch 8 --grad-accum 6 --lr 2e-5 --val-fraction 0.05
          --eval-every 4 --save-every 1000 --bf16 --device cuda)
  $U train --model "$GGUF" --variant uniattn --plan-blocks 15-18,20-22,23-26,27-29 "${common[@]}" --out "$W/uniattn" > "$OUT/uniattn_run.log" 2>&1
  $U train --model "$GGUF" --variant dense "${common[@]}" --out "$W/dense" > "$OUT/dense_run.log" 2>&1
  cp "$W/uniattn/metrics.jsonl" "$OUT/uniattn_metrics.jsonl"; cp "$W/uniattn/loss.png" "$OUT/uniattn_loss.png"
  cp "$W/dense/metrics.jsonl" "$OUT/dense_metrics.jsonl"
fi
