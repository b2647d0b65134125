#!/usr/bin/env bash
# Issue 7, why UniAttn falls short: does the closed-form conversion's held-out loss rank plans
# as post-training does (and `analyze`'s similarity does not)? SmolLM2-135M on the CPU, four
# plans of 4 reuse layers, each converted (W_c from the closed-form fit) and scored on the
# held-out rows, then post-trained (both stages) with the CPU protocol of
# scripts/experiment_medical.sh (256 rows, 320 tokens, lr 2e-4, seed 1). ~11 min a plan.
#
#   scripts/experiment_plan_choice.sh [PLAN...]     # results in runs/plan_choice (OUT=)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
U=${U:-./target/release/uniattn}
M=${MODEL:-$(scripts/fetch-models.sh smollm2 | tail -n1)}
P=${PMC:-data/pmc_llama_instructions_1000.json}
OUT=${OUT:-runs/plan_choice} D=$OUT/data
PLANS=("$@")
((${#PLANS[@]})) || PLANS=(17-18,23-26 24-25,26-29 15-18,20-21 19-20,21-22,27-29)
mkdir -p "$D"
# The CPU profile's data: 256 training rows, 50 PMC + 50 MedMCQA held-out rows.
$U medmcqa-split --out "$D" --heldout 1000 --seed 0 > /dev/null
python3 scripts/experiment_data.py medical "$D" 256 50 1280 "$P" -
$U analyze "$M" --data "$P" --rows 500..516 --reuse-layers 4 --out "$OUT/analyze" --device cpu > "$OUT/analyze.txt"
for plan in "${PLANS[@]}"; do
  o=$OUT/$plan
  mkdir -p "$o"
  [[ -s $o/untrained.val.json ]] || {
    $U convert "$M" --plan-blocks "$plan" --calib "$P" --calib-rows 0..64 --max-len 320 --out "$o/untrained" > "$o/convert.log" 2>&1
    $U eval ppl --model "$o/untrained" --text "$D/medical_val.json" --window 1024 --json > "$o/untrained.val.json" 2> "$o/untrained.val.log"
    rm -f "$o/untrained/model.safetensors"; }
  [[ -d $o/run/final ]] ||
    $U train --model "$M" --variant uniattn --plan-blocks "$plan" --data "$D/medical_train.json" --val-data "$D/medical_val.json" --calib "$P" \
      --calib-rows 0..64 --seed 1 --lr 2e-4 --micro-batch 8 --grad-accum 2 --eval-every 1000 --max-len 320 \
      --save-every 100000 --device cpu --out "$o/run" > "$o/train.log" 2>&1
  rm -rf "$o/run/checkpoints" "$o/run/final/model.safetensors"
done
python3 - "$OUT" "${PLANS[@]}" <<'PY'
import json, sys
out, plans = sys.argv[1], sys.argv[2:]
sim = json.load(open(f"{out}/analyze/similarity.json"))["similarity"]
print("| plan | mean similarity to the lead | converted, held-out NLL | after stage 1 | after stage 2 |")
print("| --- | --- | --- | --- | --- |")
for plan in plans:
    pairs = [(s, j) for s, e in (map(int, b.split("-")) for b in plan.split(",")) for j in range(s + 1, e + 1)]
    mean_sim = sum(sim[s][j] for s, j in pairs) / len(pairs)
    nll = json.load(open(f"{out}/{plan}/untrained.val.json"))["mean_nll"]
    val = [m["val_loss"] for m in map(json.loads, open(f"{out}/{plan}/run/metrics.jsonl")) if m["val_loss"] is not None]
    print(f"| {plan} | {mean_sim:.3f} | {nll:.4f} | {val[0]:.4f} | {val[-1]:.4f} |")
PY
