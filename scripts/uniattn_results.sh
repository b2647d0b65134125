#!/usr/bin/env bash
# Issue 3's measured result for one model: dense vs unified without W_c vs reference fit vs our
# fit, for a plan chosen by `analyze` and the paper-style g=4 plan, perplexity in-domain (PMC
# rows 900..1000, Alpaca-formatted) and out-of-domain (20,480 tokens of wiki.utf8), calibration
# time of both fits, and a ridge sweep. Appends JSON lines to $OUT/results.jsonl.
#
#   scripts/uniattn_results.sh NAME MODEL REUSE_LAYERS PAPER_PLAN [DEVICE]
#   e.g. scripts/uniattn_results.sh smollm2 model.gguf 10 4:16:30 cuda
set -euo pipefail
NAME=$1 MODEL=$2 K=$3 PAPER=$4 DEV=${5:-cuda}
U=${U:-./target/release/uniattn}
PMC=${PMC:-data/pmc_llama_instructions_1000.json}
WIKI=${WIKI:-$(scripts/fetch-models.sh texts)/wiki.utf8}
OUT=${OUT:-runs/results}
WORK=${WORK:-/tmp/uniattn-results/$NAME}
mkdir -p "$OUT" "$WORK"
# Sizes (override for a quick check): calibration rows, evaluation rows, wiki tokens.
CALIB_ROWS=${CALIB_ROWS:-0..256} EVAL_ROWS=${EVAL_ROWS:-900..1000} WIKI_TOKENS=${WIKI_TOKENS:-20480}
MAX_LEN=${MAX_LEN:-1024}
# Which variants to run (for partial re-runs): fits, the dense baseline, the ridge sweep.
FITS=${FITS:-none reference ours} DENSE=${DENSE:-1} SWEEP=${SWEEP:-1}
CAL=(--calib "$PMC" --calib-rows "$CALIB_ROWS" --max-len "$MAX_LEN" --ref-len "$MAX_LEN" --device "$DEV" --dtype f32)

ppl() { # ppl LABEL MODEL EXTRA_JSON
  local a b
  a=$($U eval ppl --model "$2" --text "$PMC" --rows "$EVAL_ROWS" --window 1024 --device "$DEV" --json 2>/dev/null)
  b=$($U eval ppl --model "$2" --text "$WIKI" --max-tokens "$WIKI_TOKENS" --window 1024 --stride 512 --device "$DEV" --json 2>/dev/null)
  echo "{\"model\": \"$NAME\", \"label\": \"$1\", $3, \"pmc\": $a, \"wiki\": $b}" | tee -a "$OUT/results.jsonl"
}

$U analyze "$MODEL" --data "$PMC" --rows 500..516 --reuse-layers "$K" --out "$WORK/analyze" --device "$DEV" | tee "$OUT/analyze_$NAME.txt"
cp "$WORK/analyze/similarity.png" "$OUT/similarity_$NAME.png"
BLOCKS=$(python3 scripts/json_field.py "$WORK/analyze/similarity.json" proposed_plan)

if [[ $DENSE == 1 ]]; then ppl dense "$MODEL" '"plan": "dense", "fit": "none", "calib_seconds": 0'; fi
for spec in "blocks:$BLOCKS" "grouped:$PAPER"; do
  kind=${spec%%:*} p=${spec#*:}
  flag=$([[ $kind == blocks ]] && echo --plan-blocks || echo --plan)
  for fit in $FITS; do
    dir="$WORK/${kind}-$fit"
    $U convert "$MODEL" $flag "$p" "${CAL[@]}" --fit $fit --out "$dir" --json-out "$WORK/${kind}-$fit.json" \
      > "$WORK/${kind}-$fit.log" 2>&1
    secs=$(python3 scripts/json_field.py "$WORK/${kind}-$fit.json" calibration.seconds)
    ppl "$kind-$fit" "$dir" "\"plan\": \"$p\", \"fit\": \"$fit\", \"calib_seconds\": $secs"
    cp "$WORK/${kind}-$fit.log" "$OUT/convert_${NAME}_${kind}-$fit.log"
    [[ $fit == ours ]] || rm -rf "$dir"
  done
done
for r in $([[ $SWEEP == 1 ]] && echo 1e-6 1e-4 1e-2 1e-1 1); do
  dir="$WORK/ridge-$r"
  $U convert "$MODEL" --plan-blocks "$BLOCKS" "${CAL[@]}" --ridge $r --out "$dir" --json-out "$WORK/ridge-$r.json" \
    > "$WORK/ridge-$r.log" 2>&1
  secs=$(python3 scripts/json_field.py "$WORK/ridge-$r.json" calibration.seconds)
  ppl "ridge-$r" "$dir" "\"plan\": \"$BLOCKS\", \"fit\": \"ours\", \"ridge\": $r, \"calib_seconds\": $secs"
  rm -rf "$dir"
done
