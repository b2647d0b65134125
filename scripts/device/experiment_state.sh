#!/usr/bin/env bash
# On the GPU machine: an experiment (scripts/experiment.py) longer than one session's machine.
# Each session's machine starts bare and a device call returns at most 64 MiB, so `pack` keeps
# what the next session needs to go on where this one stopped (plans, evaluations, metrics, loss
# curves, logs) in one archive without any model's files, and `restore` unpacks it there before
# the driver runs again on the same OUT, which then skips every finished run.
#   scripts/device/experiment_state.sh pack OUT ARCHIVE
#   scripts/device/experiment_state.sh restore ARCHIVE OUT
# A run counts as finished once its evaluation is (eval/LABEL.val.json, written last): its
# folder stays, its model's files go (`final/` is left with a note, so the driver trains it no
# more). A run without a finished evaluation is left out whole, so that it trains again.
set -euo pipefail
usage() { echo "usage: $0 pack OUT ARCHIVE | restore ARCHIVE OUT" >&2; exit 2; }
[[ $# == 3 ]] || usage
case $1 in
  pack)
    out=$2 archive=$3
    [[ -d $out/eval ]] || { echo "$out: no eval/ folder; not an experiment's output" >&2; exit 1; }
    keep=()
    for dir in "$out"/runs/*/; do
      name=$(basename "$dir")
      # The first seed's dense run lives in the learning-rate grid's folder (lr-RATE).
      label=$([[ $name == lr-* ]] && echo dense-s1 || echo "$name")
      [[ -s $out/eval/$label.val.json ]] && keep+=("runs/$name")
    done
    list=$(mktemp)
    (
      cd "$out"
      # data/ is made again by every run of the driver; the split's question ids are the record.
      find . \( -path ./runs -o -path ./bench -o -path ./data \) -prune -o -type f ! -name '*.safetensors' -print
      [[ ! -f data/medmcqa_split.json ]] || echo data/medmcqa_split.json
      find runs -maxdepth 1 -type f -print
      for run in "${keep[@]}"; do
        # The run's own files (metrics, loss curve); a converted model's folder is the model.
        [[ $run == *-untrained ]] || find "$run" -maxdepth 1 -type f -print
        echo "$run/final/WEIGHTS_NOT_KEPT"
      done
    ) > "$list"
    for run in "${keep[@]}"; do
      mkdir -p "$out/$run/final"
      echo "model files left on the machine that trained it (scripts/device/experiment_state.sh)" \
        > "$out/$run/final/WEIGHTS_NOT_KEPT"
    done
    tar czf "$archive" -C "$out" -T "$list"
    rm -f "$list"
    echo "$archive: $(stat -c %s "$archive") bytes; finished runs: ${#keep[@]} (${keep[*]:-none})"
    ;;
  restore)
    archive=$2 out=$3
    mkdir -p "$out"
    tar xzf "$archive" -C "$out"
    echo "$out: restored $(find "$out/runs" -name WEIGHTS_NOT_KEPT 2>/dev/null | wc -l) finished runs"
    ;;
  *) usage ;;
esac
