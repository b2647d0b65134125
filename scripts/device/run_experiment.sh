#!/usr/bin/env bash
# On the GPU machine: an experiment of scripts/experiment.py, which runs for longer than one
# device call (10 minutes) and, on a large model, than one session's machine. `start` unpacks
# what the parts brought (assemble_models.sh cut into FILES: the model's GGUF and .tgz archives
# of the user cache's eval data and texts), restores an earlier session's state where STATE
# names its archive (experiment_state.sh), copies the binary and the scripts aside (the next
# call's working tree replaces these) and starts the driver in a process session of its own,
# which outlives the call. `poll` waits, then for every experiment started on the machine
# prints where its driver is and packs its state into $OUT/NAME.state.tgz with its log
# ($OUT/NAME.driver.log; NAME is the folder's, `experiment` unless EXPERIMENT_WORK says). The
# machine is given back 30 s after a call ends, with all it holds and the drivers with it
# (2026-12-02: a build between two calls lost eight plan searches): keep a `poll` in flight
# until the last pack. Two experiments share the card when each has its own EXPERIMENT_WORK.
#   U=path/to/uniattn [STATE=state.tgz] [EXPERIMENT_WORK=DIR] scripts/device/run_experiment.sh start FILES EXPERIMENT.toml MODEL NAME [driver options]
#   scripts/device/run_experiment.sh poll SECONDS
# MODEL is a file of FILES or what scripts/experiment.py takes.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BASE=${EXPERIMENT_WORK:-$WORK/experiment}
RESULTS=$BASE/out LOG=$BASE/driver.log
# Every experiment `start` began on this machine, one folder a line, for `poll`.
STARTED=$WORK/experiments.started
export UNIATTN_CACHE=$BASE/cache LD_LIBRARY_PATH
# The driver's helpers run as `python3`: the machine's Python is the venv's.
export PATH=$(dirname "$PYTHON"):$PATH
driver_running() { pgrep -f "experiment.py .*--out $1/out" > /dev/null; }
case ${1:-} in
  start)
    (($# >= 5)) || { echo "usage: $0 start FILES EXPERIMENT.toml MODEL NAME [driver options]" >&2; exit 2; }
    files=$2 experiment=$3 model=$4 name=$5
    shift 5
    [[ -f $files/$model ]] && model=$(realpath "$files/$model")
    if driver_running "$BASE"; then
      echo "a driver is already running on $RESULTS" >&2
      exit 1
    fi
    mkdir -p "$UNIATTN_CACHE" "$BASE/bin" "$BASE/repo"
    for archive in "$files"/*.tgz; do [[ ! -f $archive ]] || tar xzf "$archive" -C "$UNIATTN_CACHE"; done
    [[ -n ${STATE:-} ]] && bash "$ROOT/scripts/device/experiment_state.sh" restore "$STATE" "$RESULTS"
    # (U may be the copy an earlier start made.)
    u=${U:-$ROOT/target/release/uniattn}
    [[ $u -ef $BASE/bin/uniattn ]] || cp "$u" "$BASE/bin/uniattn"
    # The summary draws its plots with `uniattn plot` (scripts/plots/chart.py).
    export UNIATTN=$BASE/bin/uniattn
    tar cf - -C "$ROOT" --exclude=./target --exclude='./.?*' . | tar xf - -C "$BASE/repo"
    cd "$BASE/repo"
    setsid nohup "$PYTHON" scripts/experiment.py "$experiment" "$model" "$name" --out "$RESULTS" \
      --uniattn "$BASE/bin/uniattn" "$@" > "$LOG" 2>&1 < /dev/null &
    echo "driver started (pid $!): log $LOG, results $RESULTS"
    grep -qxF "$BASE" "$STARTED" 2> /dev/null || echo "$BASE" >> "$STARTED"
    ;;
  poll)
    (($# == 2)) || { echo "usage: $0 poll SECONDS" >&2; exit 2; }
    sleep "$2"
    [[ -s $STARTED ]] || { echo "no experiment started on this machine: start first" >&2; exit 1; }
    while read -r base; do
      name=$(basename "$base") results=$base/out log=$base/driver.log
      echo "=== $name"
      # Progress bars redraw with carriage returns: the log's own lines, then each job's last bar.
      tr '\r' '\n' < "$log" | grep -v '[░█]' | tail -12
      for f in "$results"/plan_search-*.log "$results"/runs/*.log "$results"/eval/*.log; do
        [[ -f $f ]] || continue
        # A finished evaluation's log ends with a progress bar; its .val.json is written last.
        if [[ $f == */eval/*.log && -s ${f%.log}.val.json ]]; then
          echo "${f#"$results"/}: evaluated"
        else
          echo "${f#"$results"/}: $(tr '\r' '\n' < "$f" | grep -v '^\s*$' | tail -1 | cut -c1-120)"
        fi
      done
      driver_running "$base" && echo "driver: running" || echo "driver: finished"
      if [[ -n ${OUT:-} ]]; then
        bash "$ROOT/scripts/device/experiment_state.sh" pack "$results" "$OUT/$name.state.tgz" \
          || echo "$name: nothing to pack yet"
        cp "$log" "$OUT/$name.driver.log"
      fi
    done < "$STARTED"
    ! command -v nvidia-smi > /dev/null || nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
    df -h "$WORK" | tail -1
    ;;
  *) echo "usage: $0 start FILES EXPERIMENT.toml MODEL NAME [driver options] | poll SECONDS" >&2; exit 2 ;;
esac
