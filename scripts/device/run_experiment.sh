#!/usr/bin/env bash
# On the GPU machine: an experiment of scripts/experiment.py, which runs for longer than one
# device call (10 minutes) and, on a large model, than one session's machine. `start` unpacks
# what the parts brought (assemble_models.sh cut into FILES: the model's GGUF and .tgz archives
# of the user cache's eval data and texts), restores an earlier session's state where STATE
# names its archive (experiment_state.sh), copies the binary and the scripts aside (the next
# call's working tree replaces these) and starts the driver in a process session of its own,
# which outlives the call. `poll` waits, prints where the driver is, and packs the state into
# $OUT/state.tgz with the driver's log. The machine is given back 30 s after a call ends, with
# all it holds and the driver with it (2026-12-02: a build between two calls lost eight plan
# searches): keep a `poll` in flight until the last pack.
#   U=path/to/uniattn [STATE=state.tgz] scripts/device/run_experiment.sh start FILES EXPERIMENT.toml MODEL NAME [driver options]
#   scripts/device/run_experiment.sh poll SECONDS
# MODEL is a file of FILES or what scripts/experiment.py takes.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BASE=${EXPERIMENT_WORK:-$WORK/experiment}
RESULTS=$BASE/out LOG=$BASE/driver.log
export UNIATTN_CACHE=$BASE/cache LD_LIBRARY_PATH
# The driver's helpers run as `python3`: the machine's Python is the venv's.
export PATH=$(dirname "$PYTHON"):$PATH
driver_running() { pgrep -f "experiment.py .*--out $RESULTS" > /dev/null; }
case ${1:-} in
  start)
    (($# >= 5)) || { echo "usage: $0 start FILES EXPERIMENT.toml MODEL NAME [driver options]" >&2; exit 2; }
    files=$2 experiment=$3 model=$4 name=$5
    shift 5
    [[ -f $files/$model ]] && model=$(realpath "$files/$model")
    if driver_running; then
      echo "a driver is already running on $RESULTS" >&2
      exit 1
    fi
    mkdir -p "$UNIATTN_CACHE" "$BASE/bin" "$BASE/repo"
    for archive in "$files"/*.tgz; do tar xzf "$archive" -C "$UNIATTN_CACHE"; done
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
    ;;
  poll)
    (($# == 2)) || { echo "usage: $0 poll SECONDS" >&2; exit 2; }
    sleep "$2"
    [[ -f $LOG ]] || { echo "no driver log at $LOG: start first" >&2; exit 1; }
    # Progress bars redraw with carriage returns: the log's own lines, then each job's last bar.
    tr '\r' '\n' < "$LOG" | grep -v '[░█]' | tail -12
    for f in "$RESULTS"/plan_search-*.log "$RESULTS"/runs/*.log "$RESULTS"/eval/*.log; do
      [[ -f $f ]] && echo "${f#"$RESULTS"/}: $(tr '\r' '\n' < "$f" | grep -v '^\s*$' | tail -1 | cut -c1-120)"
    done
    driver_running && echo "driver: running" || echo "driver: finished"
    ! command -v nvidia-smi > /dev/null || nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
    df -h "$BASE" | tail -1
    if [[ -n ${OUT:-} ]]; then
      bash "$ROOT/scripts/device/experiment_state.sh" pack "$RESULTS" "$OUT/state.tgz"
      cp "$LOG" "$OUT/"
    fi
    ;;
  *) echo "usage: $0 start FILES EXPERIMENT.toml MODEL NAME [driver options] | poll SECONDS" >&2; exit 2 ;;
esac
