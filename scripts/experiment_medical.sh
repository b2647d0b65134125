#!/usr/bin/env bash
# Issue 7's experiment for one model: medical (or general) post-training of dense, UniAttn,
# softmax-only, CLA and layer-drop variants on the plans from `analyze` or `search-plan`, a
# learning-rate grid for dense, seeds, optional ablations, evaluation with standard errors,
# inference cost from `bench`, and a summary table + plots (docs/results.md has the commands of
# the reported runs). Its settings come from an experiment file through the driver:
#
#   python3 scripts/experiment.py experiments/medical/gpu.toml MODEL.gguf NAME
#
# which checks them, saves them as OUT/experiment.json and passes them here as EXP_* variables
# (experiments/*/*.toml and `python3 scripts/experiment.py --help` say what each key means).
#
# Every run trains on the same rows and is validated on the same held-out file (PMC rows from
# 900 and MedMCQA training-split rows from 0, `val_rows` of each; never trained on), whatever
# its seed. Each trained or converted model gets OUT/eval/LABEL.run.json: its variant, plan,
# seed, learning rate and extra options, which scripts/experiment_summary.py reads.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${EXP_OUT:?run this through scripts/experiment.py EXPERIMENT.toml MODEL NAME}"
MODEL=$1 NAME=$2
U=$EXP_UNIATTN OUT=$EXP_OUT SET=$EXP_SET DEV=$EXP_DEVICE
PMC=$EXP_PMC TULU=$EXP_TULU
case $SET in
  medical) CALIB=$PMC ;;
  general) CALIB=$TULU SHAREGPT=${EXP_SHAREGPT:-$(scripts/fetch-models.sh chat)} ;;
esac
WIKI=${EXP_WIKI:-$(scripts/fetch-models.sh texts)/wiki.utf8}
REUSE=$EXP_REUSE SEEDED=$EXP_SEEDED SEEDED_VARIANTS=$EXP_SEEDED_VARIANTS VARIANTS=$EXP_VARIANTS
ABLATIONS=$EXP_ABLATIONS SEEDS=$EXP_SEEDS LRS=$EXP_LRS LR=$EXP_LR TASKS=$EXP_TASKS
EVAL_BATCH=$EXP_EVAL_BATCH MAX_LEN=$EXP_MAX_LEN CALIB_ROWS=$EXP_CALIB_ROWS WIKI_TOKENS=$EXP_WIKI_TOKENS
TRAIN_ROWS=$EXP_TRAIN_ROWS VAL_ROWS=$EXP_VAL_ROWS JOBS=$EXP_JOBS PLAN_BY=$EXP_PLAN_BY
read -ra BENCH <<< "$EXP_BENCH"
LIMIT=(${EXP_LIMIT:+--limit $EXP_LIMIT})
MICRO=$EXP_MICRO_BATCH
TRAIN=(--config "$EXP_TRAIN_CONFIG" ${MICRO:+--micro-batch $MICRO --grad-accum $((16 / MICRO))})
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

# Plans: the first is the main one (labels without a suffix), others add -rN. plan_by =
# similarity takes analyze's plan; loss the plan of lowest held-out loss after the closed-form
# conversion (search-plan, analyze's plan among the candidates), scored on the validation file;
# choices scores it on the `choice_tasks` (5-shot lettered MedMCQA questions of the split's
# training part by default; `choices` of each); `search_args` adds search-plan options (e.g.
# ["--min-layer", "21"]).
case $PLAN_BY in
  similarity) ;;
  loss) SCORE=(--val "$VAL") ;;
  choices)
    SCORE=(--val-task "$EXP_CHOICE_TASKS" --val-limit "$EXP_CHOICES")
    [[ $EXP_CHOICE_TASKS != *medmcqa* ]] || SCORE+=(--val-exclude-split "$OUT/data/medmcqa_split.json") ;;
esac
FIRST_REUSE=${REUSE%% *}
# Plan R (an entry of `reuse`) gives UniAttn and softmax-only R reuse layers; with
# matched_saving CLA and layer drop get R/2, the same KV saving (they drop K and V, not K alone).
layers_of() { # VARIANT R
  if [[ $EXP_MATCHED_SAVING == 1 && ($1 == cla || $1 == layerdrop) ]]; then echo $(($2 / 2)); else echo "$2"; fi
}
# The key of BLOCKS that VARIANT trains on for plan R: its reuse-layer count, and with
# plans = "per-variant" its own name (each method's plan searched after its own conversion).
plan_key() { # VARIANT R
  local n
  n=$(layers_of "$1" "$2")
  if [[ $EXP_PLANS == per-variant && $1 != dense ]]; then echo "$1:$n"; else echo "$n"; fi
}
tag_of() { [[ $1 == "$FIRST_REUSE" ]] || echo "-r$1"; } # folder suffix of a reuse-layer count
declare -A BLOCKS TAG SEARCH
# Every plan-based variant's plan, and on the first plan UniAttn's and softmax-only's (their
# untrained conversions are evaluated whatever `variants` says): analyze's first, then, unless
# plan_by = similarity, search-plan's, JOBS searches at a time (each scores many conversions
# with small batches, so several share one GPU well).
plan_keys() { # R: "VARIANT KEY N" for each plan R needs
  local v
  for v in $VARIANTS $([[ $1 == "$FIRST_REUSE" ]] && echo uniattn softmax-only); do
    [[ $v == dense ]] || echo "$v $(plan_key "$v" "$1") $(layers_of "$v" "$1")"
  done
}
for r in $REUSE; do
  TAG[$r]=$(tag_of "$r")
  mapfile -t wanted < <(plan_keys "$r")
  for entry in "${wanted[@]}"; do
    read -r v key n <<< "$entry"
    [[ -n ${BLOCKS[$key]:-} ]] && continue
    a="$OUT/analyze$(tag_of "$n")"
    if [[ ! -s $a.txt ]]; then
      log "plan from analyze ($n reuse layers)"
      $U analyze "$MODEL" --data "$CALIB" --rows 500..516 --reuse-layers "$n" --out "$a" "${DT[@]}" > "$a.txt"
    fi
    BLOCKS[$key]=$(python3 scripts/json_field.py "$a/similarity.json" proposed_plan)
    [[ $PLAN_BY == similarity ]] && continue
    # Shared plans are UniAttn's (W_c fitted); per-variant plans each method's own.
    sv=$([[ $EXP_PLANS == per-variant ]] && echo "$v" || echo uniattn)
    s="$OUT/plan_search$([[ $EXP_PLANS == per-variant ]] && echo "-$sv")$(tag_of "$n")"
    SEARCH[$key]=$s
    [[ -s $s.txt ]] && continue
    while (($(jobs -rp | wc -l) >= JOBS)); do wait -n || true; done
    log "plan by search-plan, $PLAN_BY, as $sv ($n reuse layers; analyze's is ${BLOCKS[$key]})"
    { $U search-plan "$MODEL" --variant "$sv" --calib "$CALIB" --calib-rows "$CALIB_ROWS" --max-len "$MAX_LEN" \
        "${SCORE[@]}" --reuse-layers "$n" --candidate "${BLOCKS[$key]}" $EXP_SEARCH_ARGS --out "$s" "${DT[@]}" \
        > "$s.tmp" 2> "$s.log" && mv "$s.tmp" "$s.txt"; } || log "search-plan $key FAILED: $s.log" &
  done
done
wait
for key in "${!SEARCH[@]}"; do
  [[ -s ${SEARCH[$key]}.txt ]] || { log "no plan for $key: ${SEARCH[$key]}.log"; exit 1; }
  BLOCKS[$key]=$(python3 scripts/json_field.py "${SEARCH[$key]}/plan_search.json" best)
done
for key in "${!BLOCKS[@]}"; do log "plan $key: ${BLOCKS[$key]}"; done

# Evaluations run in the background, JOBS at a time, while training goes on (perplexity runs one
# window at a time, which leaves the GPU mostly idle). A model whose .val.json (written last)
# exists is not evaluated again, so a cut-off run resumes. With DROP = 1 (keep_weights = "bench"
# and a model the cost bench does not time) the model's files go once it is evaluated.
evaluate() { # LABEL PATH [DROP]
  local label=$1 path=$2 drop=${3:-0} e="$OUT/eval/$1"
  [[ -s $e.val.json ]] && return
  log "evaluate $label"
  { $U eval mc --model "$path" --tasks "$TASKS" "${SPLIT[@]}" "${LIMIT[@]}" \
      --batch-tokens "$EVAL_BATCH" --json-out "$e.mc.json" "${DT[@]}" > "$e.mc.md" &&
    $U eval ppl --model "$path" --text "$WIKI" --max-tokens "$WIKI_TOKENS" --window 1024 --stride 512 --json "${DT[@]}" \
      > "$e.wiki.json" &&
    $U eval ppl --model "$path" --text "$VAL" --window 1024 --json "${DT[@]}" > "$e.val.tmp" &&
    mv "$e.val.tmp" "$e.val.json"; } 2> "$e.log" || { log "evaluation of $label FAILED: $e.log"; return; }
  if [[ $drop == 1 ]]; then
    rm -rf "${path:?}"/*
    echo "model files deleted once evaluated (keep_weights = \"bench\")" > "$path/WEIGHTS_NOT_KEPT"
  fi
}
spawn_eval() {
  while (($(jobs -rp | wc -l) >= JOBS)); do wait -n || true; done
  evaluate "$@" &
}
# OUT/eval/LABEL.run.json: what a model is, for scripts/experiment_summary.py. GROUP: the runs
# that differ only in seed; ARCH: the architecture whose bench rows apply (base for dense).
describe() { # LABEL GROUP ARCH VARIANT PLAN_BLOCKS SEED LR [OPTIONS...]
  python3 - "$OUT/eval/$1.run.json" "$OUT/analyze/similarity.json" "$@" <<'PY'
import json, sys
path, analysis, label, group, arch, variant, blocks, seed, lr, *options = sys.argv[1:]
reuse = sum(int(e) - int(s) for s, e in (b.split("-") for b in blocks.split(","))) if blocks else 0
json.dump({"label": label, "group": group, "architecture": arch, "variant": variant,
           "plan_blocks": blocks or None, "reuse_layers": reuse,
           "num_layers": len(json.load(open(analysis))["similarity"]),
           "seed": int(seed) if seed else None, "lr": float(lr) if lr else None, "train_options": options},
          open(path, "w"), indent=1)
PY
}
describe base base base base "" "" ""
spawn_eval base "$MODEL"

# One `uniattn train` into DIR. A run cut off before its final model (out of memory, a machine
# taken back) goes on from its newest checkpoint, or starts over where it wrote none: `train`
# refuses a used folder otherwise, and the restarted driver stopped on it (2026-12-02).
train_once() { # DIR TRAIN_OPTIONS...
  local dir=$1 again=()
  shift
  if [[ -n $(ls -A "$dir/checkpoints" 2> /dev/null) ]]; then
    again=(--resume "$dir")
  elif [[ -d $dir ]]; then
    again=(--overwrite)
  fi
  $U train "$@" "${again[@]}" --out "$dir" > "$dir.log" 2>&1
}
best_val() { python3 -c "import json,sys; v=[json.loads(l).get('val_loss') for l in open(sys.argv[1])]; v=[x for x in v if x is not None]; print(min(v) if v else 1e9)" "$1/metrics.jsonl"; }
train() { # train VARIANT SEED LR DIR [REUSE [OPTIONS...]]
  local variant=$1 seed=$2 lr=$3 dir=$4 reuse=${5:-$FIRST_REUSE}
  shift $(($# < 5 ? $# : 5))
  [[ -d $dir/final ]] && return
  local plan=()
  [[ $variant == dense ]] || plan=(--plan-blocks "${BLOCKS[$(plan_key "$variant" "$reuse")]}")
  local attempt=(train_once "$dir" --model "$MODEL" --variant "$variant" "${plan[@]}" --data "$DATA" --val-data "$VAL" \
    --calib "$CALIB" --calib-rows "$CALIB_ROWS" --seed "$seed" --lr "$lr" "${TRAIN[@]}" "$@")
  # Out of GPU memory beside this driver's evaluations (or another experiment's runs), a run goes
  # on from its newest checkpoint once the evaluations in flight have finished: two 3x runs and
  # a seed were lost that way beside another experiment (2026-12-02). Any other failure, or a
  # second one, is reported and left for a rerun of the driver (which goes on from it); the
  # others go on: one run out of memory stopped them all (2026-12-02).
  local status=0
  "${attempt[@]}" || status=$?
  # 3: the CLI's exit status for a device out of memory (`uniattn --help`).
  if ((status == 3)); then
    log "$(basename "$dir") ran out of GPU memory: going on from its newest checkpoint once the evaluations in flight finish"
    wait
    mv "$dir.log" "$dir.out-of-memory.log"
    status=0
    "${attempt[@]}" || status=$?
  fi
  if ((status != 0)); then
    log "training of $(basename "$dir") FAILED: $dir.log"
    return 1
  fi
  # Checkpoints serve resuming an unfinished run; the driver never resumes a finished one, and a
  # 1.5B run leaves 7-14 GB of them (2026-12-02: they filled the GPU machine's 64 GB disk).
  rm -rf "$dir/checkpoints"
}
# 1 when a trained model's files go once it is evaluated: keep_weights = "bench" keeps only what
# the cost bench times, each compressed architecture's first seed.
drop_after_eval() { # VARIANT SEED
  [[ $EXP_KEEP_WEIGHTS == bench && ($1 == dense || $2 != "${SEEDS%% *}") ]] && echo 1 || echo 0
}

lr_grid() {
  log "learning-rate grid (dense, seed ${SEEDS%% *})"
  local lr v best=1e9 best_lr=
  for lr in $LRS; do train dense "${SEEDS%% *}" "$lr" "$OUT/runs/lr-$lr" || true; done
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
# `lr` fixes every run's learning rate whatever the grid says (e.g. to extend runs made at an
# earlier grid's choice); the grid then trains alongside the other runs and is still reported.
if [[ -n $LR ]]; then
  # Without dense among the variants (e.g. new plans for a model whose dense runs exist), no
  # dense run at all.
  if [[ " $VARIANTS " == *" dense "* ]]; then
    train dense "${SEEDS%% *}" "$LR" "$OUT/runs/lr-$LR" || true
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
      plan=$([[ $variant == dense ]] || echo "${BLOCKS[$(plan_key "$variant" "$r")]}")
      log "train $label${plan:+ (plan $plan)}"
      # (Listed first: a run whose training failed is reported missing below.)
      MODELS+=("$label:$dir/final")
      train "$variant" "$seed" "$BEST_LR" "$dir" "$r" || continue
      describe "$label" "$variant${TAG[$r]}" "$([[ $variant == dense ]] && echo base || echo "$variant${TAG[$r]}")" \
        "$variant" "$plan" "$seed" "$BEST_LR"
      spawn_eval "$label" "$dir/final" "$(drop_after_eval "$variant" "$seed")"
    done
  done
done

IFS=';' read -ra specs <<< "$ABLATIONS"
for spec in "${specs[@]}"; do
  rest=${spec#*=} label="${spec%%=*}-s${SEEDS%% *}"
  variant=${rest%%:*}
  read -ra extra <<< "${rest#*:}"
  log "train $label ($variant ${extra[*]})"
  MODELS+=("$label:$OUT/runs/$label/final")
  train "$variant" "${SEEDS%% *}" "$BEST_LR" "$OUT/runs/$label" "$FIRST_REUSE" "${extra[@]}" || continue
  describe "$label" "${spec%%=*}" "$([[ $variant == dense ]] && echo base || echo "$variant")" "$variant" \
    "$([[ $variant == dense ]] || echo "${BLOCKS[$(plan_key "$variant" "$FIRST_REUSE")]}")" "${SEEDS%% *}" \
    "$BEST_LR" "${extra[@]}"
  spawn_eval "$label" "$OUT/runs/$label/final" "$([[ $EXP_KEEP_WEIGHTS == bench ]] && echo 1 || echo 0)"
done

# Models as `convert` leaves them (no training), in the precision evaluation reads them in.
SAVE=(--save-dtype "$([[ $DEV == cuda ]] && echo bf16 || echo f32)")
log "the unified models before post-training (UniAttn's W_c from the closed-form fit; softmax-only)"
for variant in uniattn softmax-only; do
  label=$variant-untrained dir="$OUT/runs/$variant-untrained"
  plan=${BLOCKS[$(plan_key "$variant" "$FIRST_REUSE")]}
  [[ -d $dir ]] || $U convert "$MODEL" --variant "$variant" --plan-blocks "$plan" --calib "$CALIB" \
    --calib-rows "$CALIB_ROWS" --max-len "$MAX_LEN" "${SAVE[@]}" --out "$dir" "${DT[@]}" > "$dir.log" 2>&1
  MODELS+=("$label:$dir")
  describe "$label" "$label" "$variant" "$variant" "$plan" "" ""
  spawn_eval "$label" "$dir"
done
wait
missing=0
for entry in "${MODELS[@]}"; do
  [[ -s $OUT/eval/${entry%%:*}.val.json ]] || { log "MISSING: no evaluation of ${entry%%:*}"; missing=$((missing + 1)); }
done

# Inference cost: one bench process over one model of each architecture (dense first), with
# nothing else on the device; seeds and training do not change speed or cache size. cost = false
# leaves it out (the architectures were timed in an earlier run: cost depends on block sizes).
log "inference cost"
if [[ $EXP_COST != 0 && ! -s $OUT/eval/cost.bench.json ]]; then
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
      # or the architecture as `convert --variant` makes it (W_c fitted on 16 rows).
      m=
      for c in "$OUT"/runs/"$arch"-s*/final "$OUT/runs/$arch-untrained" "$OUT/bench/$arch.converted"; do
        [[ -f $c/model.safetensors ]] && { m=$c; break; }
      done
      if [[ -z $m ]]; then
        log "$arch converted, untrained, to time"
        m="$OUT/bench/$arch.converted"
        $U convert "$MODEL" --variant "$variant" --plan-blocks "${BLOCKS[$(plan_key "$variant" "$r")]}" \
          --calib "$CALIB" --calib-rows 0..16 --max-len "$MAX_LEN" "${SAVE[@]}" --overwrite --out "$m" "${DT[@]}" \
          > "$m.log" 2>&1
      fi
      ln -sfn "$(realpath "$m")" "$OUT/bench/$arch"
      cost+=(--model "$OUT/bench/$arch")
    done
  done
  $U bench "${cost[@]}" "${BENCH[@]}" --json-out "$OUT/eval/cost.bench.tmp" "${DT[@]}" > "$OUT/eval/cost.bench.md" 2> "$OUT/eval/cost.bench.log"
  mv "$OUT/eval/cost.bench.tmp" "$OUT/eval/cost.bench.json"
fi
python3 scripts/experiment_summary.py "$OUT" | tee "$OUT/summary.md"
# The summary holds what finished; the driver fails where something did not (a rerun goes on).
((missing == 0)) || { log "$missing model(s) without an evaluation (above): rerun the driver to go on"; exit 1; }
