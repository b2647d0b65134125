#!/usr/bin/env bash
# Issue 7's experiment for one model: medical post-training (PMC rows + the training part of a
# MedMCQA split) of dense, UniAttn, softmax-only, CLA and layer-drop variants on the plans from
# `analyze` (8 and 4 reuse layers on the GPU), a learning-rate grid for dense, seeds, optional
# ablations, evaluation with standard errors, inference cost from `bench`, and a summary table
# + plots (docs/results.md has the commands of the reported runs).
#
#   scripts/experiment_medical.sh MODEL.gguf NAME                 # full run (GPU)
#   PROFILE=cpu scripts/experiment_medical.sh MODEL.gguf NAME     # SmolLM2-sized run on a CPU
#   PROFILE=smoke DEV=cpu scripts/experiment_medical.sh MODEL NAME # a few steps: plumbing only
#   SET=general scripts/experiment_medical.sh MODEL.gguf NAME     # the general set instead
#   PLAN_BY=loss scripts/experiment_medical.sh MODEL.gguf NAME    # plans from search-plan
#   PLAN_BY=choices ...                                            # ... scored on MedMCQA questions
#
# SET=general trains on the Tulu rows of data/ plus ShareGPT conversations (fetched by
# scripts/fetch-models.sh chat), calibrates on Tulu rows, and evaluates general tasks.
#
# Every run trains on the same rows and is validated on the same held-out file (PMC rows from
# 900 and MedMCQA training-split rows from 0, 100 of each, 50 with PROFILE=cpu; never trained on),
# whatever its seed.
# Everything lands in runs/medical/NAME (override with OUT=).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODEL=$1 NAME=$2
U=${U:-./target/release/uniattn}
PROFILE=${PROFILE:-gpu}
DEV=${DEV:-$([[ $PROFILE == gpu ]] && echo cuda || echo cpu)}
OUT=${OUT:-runs/medical/$NAME}
SET=${SET:-medical}
PMC=${PMC:-data/pmc_llama_instructions_1000.json}
TULU=${TULU:-${PMC%/*}/tulu3_sft_filtered_1000.json}
case $SET in
  medical) CALIB=$PMC ;;
  general) CALIB=$TULU SHAREGPT=${SHAREGPT:-$(scripts/fetch-models.sh chat)} ;;
  *) echo "SET must be medical or general, not '$SET'" >&2; exit 2 ;;
esac
WIKI=${WIKI:-$(scripts/fetch-models.sh texts)/wiki.utf8}
# Reuse layers in the plan; several ("8 4") give every plan-dependent variant a point per plan
# (the first plan gets the untrained models; the others, seed 1 only unless named in SEEDED).
REUSE=${REUSE:-$([[ $PROFILE == gpu ]] && echo "8 4" || echo 8)}
# Plans whose runs of SEEDED_VARIANTS get every seed (dense, plan-free, gets them once); the
# other variants run on the first seed.
SEEDED=${SEEDED:-${REUSE%% *}}
SEEDED_VARIANTS=${SEEDED_VARIANTS:-uniattn}
VARIANTS=${VARIANTS:-"dense uniattn softmax-only cla layerdrop"}
# What closes UniAttn's gap? Extra runs on the first plan and seed, trained after the rest with
# more train options: ABLATIONS="uniattn+2ep=uniattn:--epochs 2;dense+2ep=dense:--epochs 2"
# (LABEL=VARIANT:OPTIONS; a rerun on the same OUT skips whatever is done).
ABLATIONS=${ABLATIONS:-}
case $PROFILE in
  gpu)
    SEEDS=${SEEDS:-"1 2"}               # dense and UniAttn; baselines use the first
    LRS=${LRS:-"3e-6 1e-5 3e-5 1e-4"}   # dense learning-rate grid (first seed)
    # Every question: medical tasks as lettered choices (mc_5shot: rc_5shot leaves Qwen2.5-Coder
    # at chance), ARC as OLMES's default cloze (rc_5shot, where these models score above chance).
    GENERAL=arc_easy,arc_challenge,hellaswag,piqa,winogrande,boolq,csqa,openbookqa
    [[ $SET == medical ]] && TASK_SET=medmcqa:mc_5shot,medqa_en:mc_5shot,mmlu_medical:mc_5shot,arc_easy,arc_challenge
    TASKS=${TASKS:-${TASK_SET:-$GENERAL}}
    LIMIT_Q=${LIMIT_Q-} EVAL_BATCH=16384
    # Training options in configs/train/medical_gpu.toml (why they are what they are there);
    # MICRO=4 gives micro-batches of 4, twice accumulated (two trainers on one card).
    MAX_LEN=1024 TRAIN=(--config configs/train/medical_gpu.toml ${MICRO:+--micro-batch $MICRO --grad-accum $((16 / MICRO))})
    LIMIT=(${LIMIT_Q:+--limit $LIMIT_Q}) BENCH=(--batch 32 --context 2048,8192 --new-tokens 64) CALIB_ROWS=0..256
    WIKI_TOKENS=20480 TRAIN_ROWS=${TRAIN_ROWS:-all} VAL_ROWS=100 JOBS=${JOBS:-6} ;;
  cpu)
    SEEDS=${SEEDS:-"1 2"}
    LRS=${LRS:-"5e-5 2e-4"}
    TASKS=${TASKS:-$([[ $SET == medical ]] && echo arc_easy || echo arc_easy,arc_challenge,piqa)}
    MAX_LEN=320 TRAIN=(--config configs/train/medical_cpu.toml)
    LIMIT=(--limit ${LIMIT_Q:-150}) BENCH=(--batch 8 --context 512 --new-tokens 32) CALIB_ROWS=0..64 WIKI_TOKENS=8192
    EVAL_BATCH=4096
    TRAIN_ROWS=${TRAIN_ROWS:-256} VAL_ROWS=50 JOBS=${JOBS:-1} ;;
  smoke)
    SEEDS=${SEEDS:-1} LRS=${LRS:-2e-5} TASKS=$([[ $SET == medical ]] && echo medmcqa,mmlu_anatomy || echo arc_easy,piqa)
    MAX_LEN=256 TRAIN=(--config configs/train/medical_smoke.toml)
    LIMIT=(--limit 3) BENCH=(--batch 1 --context 128 --new-tokens 4) CALIB_ROWS=0..8 WIKI_TOKENS=1024 EVAL_BATCH=2048
    TRAIN_ROWS=16 VAL_ROWS=4 JOBS=${JOBS:-2} ;;
  *) echo "PROFILE must be gpu, cpu or smoke, not '$PROFILE'" >&2; exit 2 ;;
esac
TRAIN+=(--max-len "$MAX_LEN" --device "$DEV")
DT=(--device "$DEV")
if [[ $DEV == cuda ]]; then TRAIN+=(--bf16); DT+=(--dtype bf16); fi
mkdir -p "$OUT/data" "$OUT/eval" "$OUT/runs"
log() { echo "== $*" >&2; }

SPLIT=()
if [[ $SET == medical ]]; then
  log "data: MedMCQA split and the training file"
  $U medmcqa-split --out "$OUT/data" --heldout 1000 --seed 0 >&2
  SPLIT=(--medmcqa-split "$OUT/data/medmcqa_split.json")
else
  log "data: Tulu rows and ShareGPT conversations"
fi
python3 scripts/experiment_data.py "$SET" "$OUT/data" "$TRAIN_ROWS" "$VAL_ROWS" "$((4 * MAX_LEN))" "$PMC" "$TULU" ${SHAREGPT:+"$SHAREGPT"}
DATA="$OUT/data/${SET}_train.json" VAL="$OUT/data/${SET}_val.json"

# Plans: the first is the main one (labels without a suffix), others add -rN. PLAN_BY=similarity
# takes analyze's plan; PLAN_BY=loss the plan of lowest held-out loss after the closed-form
# conversion (search-plan, analyze's plan among the candidates), scored on the validation file;
# PLAN_BY=choices scores it on 5-shot lettered MedMCQA questions of the split's training part
# (CHOICES of them, 300 by default); SEARCH_ARGS adds search-plan options (e.g. "--min-layer 21").
PLAN_BY=${PLAN_BY:-similarity}
case $PLAN_BY in
  similarity) ;;
  loss) SCORE=(--val "$VAL") ;;
  choices)
    [[ $SET == medical ]] || { echo "PLAN_BY=choices needs SET=medical (MedMCQA questions)" >&2; exit 2; }
    SCORE=(--val-task medmcqa:mc_5shot --val-exclude-split "$OUT/data/medmcqa_split.json" --val-limit "${CHOICES:-300}") ;;
  *) echo "PLAN_BY must be similarity, loss or choices, not '$PLAN_BY'" >&2; exit 2 ;;
esac
FIRST_REUSE=${REUSE%% *}
declare -A BLOCKS TAG
for r in $REUSE; do
  TAG[$r]=$([[ $r == "$FIRST_REUSE" ]] || echo "-r$r")
  a="$OUT/analyze${TAG[$r]}"
  log "plan from analyze ($r reuse layers)"
  [[ -s $a.txt ]] ||
    $U analyze "$MODEL" --data "$CALIB" --rows 500..516 --reuse-layers "$r" --out "$a" "${DT[@]}" > "$a.txt"
  BLOCKS[$r]=$(python3 scripts/json_field.py "$a/similarity.json" proposed_plan)
  if [[ $PLAN_BY != similarity ]]; then
    s="$OUT/plan_search${TAG[$r]}"
    log "plan by search-plan, $PLAN_BY ($r reuse layers; analyze's is ${BLOCKS[$r]})"
    [[ -s $s.txt ]] ||
      $U search-plan "$MODEL" --calib "$CALIB" --calib-rows "$CALIB_ROWS" --max-len "$MAX_LEN" "${SCORE[@]}" \
        --reuse-layers "$r" --candidate "${BLOCKS[$r]}" ${SEARCH_ARGS:-} --out "$s" "${DT[@]}" > "$s.tmp" 2> "$s.log"
    [[ -s $s.txt ]] || mv "$s.tmp" "$s.txt"
    BLOCKS[$r]=$(python3 scripts/json_field.py "$s/plan_search.json" best)
  fi
  log "plan ${BLOCKS[$r]}"
done

# Evaluations run in the background, JOBS at a time, while training goes on (perplexity runs one
# window at a time, which leaves the GPU mostly idle). A model whose .val.json (written last)
# exists is not evaluated again, so a cut-off run resumes.
evaluate() { # LABEL PATH
  local label=$1 path=$2 e="$OUT/eval/$1"
  [[ -s $e.val.json ]] && return
  log "evaluate $label"
  { $U eval mc --model "$path" --tasks "$TASKS" "${SPLIT[@]}" "${LIMIT[@]}" \
      --batch-tokens "$EVAL_BATCH" --json-out "$e.mc.json" "${DT[@]}" > "$e.mc.md" &&
    $U eval ppl --model "$path" --text "$WIKI" --max-tokens "$WIKI_TOKENS" --window 1024 --stride 512 --json "${DT[@]}" \
      > "$e.wiki.json" &&
    $U eval ppl --model "$path" --text "$VAL" --window 1024 --json "${DT[@]}" > "$e.val.tmp" &&
    mv "$e.val.tmp" "$e.val.json"; } 2> "$e.log" || log "evaluation of $label FAILED: $e.log"
}
spawn_eval() {
  while (($(jobs -rp | wc -l) >= JOBS)); do wait -n || true; done
  evaluate "$@" &
}
spawn_eval base "$MODEL"

best_val() { python3 -c "import json,sys; v=[json.loads(l).get('val_loss') for l in open(sys.argv[1])]; v=[x for x in v if x is not None]; print(min(v) if v else 1e9)" "$1/metrics.jsonl"; }
train() { # train VARIANT SEED LR DIR [REUSE [OPTIONS...]]
  local variant=$1 seed=$2 lr=$3 dir=$4 reuse=${5:-$FIRST_REUSE}
  shift $(($# < 5 ? $# : 5))
  [[ -d $dir/final ]] && return
  $U train --model "$MODEL" --variant "$variant" --plan-blocks "${BLOCKS[$reuse]}" --data "$DATA" --val-data "$VAL" \
    --calib "$CALIB" --calib-rows "$CALIB_ROWS" --seed "$seed" --lr "$lr" "${TRAIN[@]}" "$@" --out "$dir" > "$dir.log" 2>&1
}

lr_grid() {
  log "learning-rate grid (dense, seed ${SEEDS%% *})"
  local lr v best=1e9 best_lr=
  for lr in $LRS; do train dense "${SEEDS%% *}" "$lr" "$OUT/runs/lr-$lr"; done
  # Every finished grid run counts, those of an earlier invocation with other LRS included.
  : > "$OUT/lr_grid.jsonl"
  while read -r lr; do
    v=$(best_val "$OUT/runs/lr-$lr")
    echo "{\"lr\": $lr, \"best_val_loss\": $v}" >> "$OUT/lr_grid.jsonl"
    if python3 -c "import sys; sys.exit(0 if $v < $best else 1)"; then best=$v best_lr=$lr; fi
  done < <(for d in "$OUT"/runs/lr-*/final; do [[ -d $d ]] && basename "$(dirname "$d")"; done | sed 's/^lr-//' | sort -g)
  log "learning rate of the grid: $best_lr (val loss $best)"
  echo "$best_lr"
}
# LR= fixes every run's learning rate whatever the grid says (e.g. to extend runs made at an
# earlier grid's choice); the grid then trains alongside the other runs and is still reported.
if [[ -n ${LR:-} ]]; then
  # Without dense among the variants (e.g. new plans for a model whose dense runs exist), no
  # dense run at all.
  if [[ " $VARIANTS " == *" dense "* ]]; then
    train dense "${SEEDS%% *}" "$LR" "$OUT/runs/lr-$LR"
    lr_grid > /dev/null &
  fi
  BEST_LR=$LR
else
  BEST_LR=$(lr_grid)
fi
log "learning rate used: $BEST_LR"

MODELS=("base:$MODEL")
for r in $REUSE; do
  for seed in $SEEDS; do
    for variant in $VARIANTS; do
      [[ $variant == dense && $r != "$FIRST_REUSE" ]] && continue
      if [[ $seed != "${SEEDS%% *}" ]]; then
        [[ $variant == dense || (" $SEEDED_VARIANTS " == *" $variant "* && " $SEEDED " == *" $r "*) ]] || continue
      fi
      label="$variant${TAG[$r]}-s$seed" dir="$OUT/runs/$variant${TAG[$r]}-s$seed"
      if [[ $variant == dense && $seed == "${SEEDS%% *}" ]]; then dir="$OUT/runs/lr-$BEST_LR"; fi
      log "train $label (plan ${BLOCKS[$r]})"
      train "$variant" "$seed" "$BEST_LR" "$dir" "$r"
      MODELS+=("$label:$dir/final")
      spawn_eval "$label" "$dir/final"
    done
  done
done

IFS=';' read -ra specs <<< "$ABLATIONS"
for spec in "${specs[@]}"; do
  rest=${spec#*=} label="${spec%%=*}-s${SEEDS%% *}"
  variant=${rest%%:*}
  read -ra extra <<< "${rest#*:}"
  log "train $label ($variant ${extra[*]})"
  train "$variant" "${SEEDS%% *}" "$BEST_LR" "$OUT/runs/$label" "$FIRST_REUSE" "${extra[@]}"
  MODELS+=("$label:$OUT/runs/$label/final")
  spawn_eval "$label" "$OUT/runs/$label/final"
done

log "the unified models before post-training (W_c from the closed-form fit, and none)"
for fit in ours none; do
  label=$([[ $fit == ours ]] && echo uniattn-untrained || echo softmax-only-untrained)
  dir="$OUT/runs/$label"
  [[ -d $dir ]] || $U convert "$MODEL" --plan-blocks "${BLOCKS[$FIRST_REUSE]}" --calib "$CALIB" --calib-rows "$CALIB_ROWS" --fit $fit \
    --max-len "$MAX_LEN" --out "$dir" "${DT[@]}" > "$dir.log" 2>&1
  MODELS+=("$label:$dir")
  spawn_eval "$label" "$dir"
done
wait
for entry in "${MODELS[@]}"; do
  [[ -s $OUT/eval/${entry%%:*}.val.json ]] || log "MISSING: no evaluation of ${entry%%:*}"
done

# Inference cost: one bench process over one model of each architecture (dense first), with
# nothing else on the device; seeds and training do not change speed or cache size. COST=0
# leaves it out (the architectures were timed in an earlier run: cost depends on block sizes).
log "inference cost"
if [[ ${COST:-1} != 0 && ! -s $OUT/eval/cost.bench.json ]]; then
  mkdir -p "$OUT/bench"
  base="$OUT/bench/base$([[ -f $MODEL ]] && echo ".${MODEL##*.}")"
  ln -sfn "$(realpath "$MODEL")" "$base"
  cost=(--model "$base")
  for r in $REUSE; do
    for variant in $VARIANTS; do
      arch="$variant${TAG[$r]}"
      [[ $variant == dense ]] && continue
      # Speed and cache size do not depend on the weights: a model whose weights were deleted
      # (or stayed on another machine) is timed through another seed, its untrained conversion,
      # or a stand-in trained for one step on 16 rows.
      m=
      for c in "$OUT"/runs/"$arch"-s*/final "$OUT/runs/$arch-untrained" "$OUT/bench/$arch.stand-in/final"; do
        [[ -f $c/model.safetensors ]] && { m=$c; break; }
      done
      if [[ -z $m ]]; then
        log "stand-in for $arch (one step)"
        python3 -c "import json,sys; json.dump(json.load(open(sys.argv[1]))[:16], open(sys.argv[2],'w'))" \
          "$DATA" "$OUT/bench/rows16.json"
        m="$OUT/bench/$arch.stand-in"
        $U train --model "$MODEL" --variant "$variant" --plan-blocks "${BLOCKS[$r]}" --data "$OUT/bench/rows16.json" \
          --val-data "$OUT/bench/rows16.json" --calib "$OUT/bench/rows16.json" --max-len "$MAX_LEN" --micro-batch 16 \
          --save-every 100000 --save-dtype bf16 --device "$DEV" $([[ $DEV == cuda ]] && echo --bf16) --out "$m" > "$m.log" 2>&1
        rm -rf "$m/checkpoints"
        m=$m/final
      fi
      ln -sfn "$(realpath "$m")" "$OUT/bench/$arch"
      cost+=(--model "$OUT/bench/$arch")
    done
  done
  $U bench "${cost[@]}" "${BENCH[@]}" --json-out "$OUT/eval/cost.bench.tmp" "${DT[@]}" > "$OUT/eval/cost.bench.md" 2> "$OUT/eval/cost.bench.log"
  mv "$OUT/eval/cost.bench.tmp" "$OUT/eval/cost.bench.json"
fi
python3 scripts/experiment_summary.py "$OUT" | tee "$OUT/summary.md"
