#!/usr/bin/env bash
# On the GPU machine: `uniattn train` against the transformers loop with fused AdamW and with
# fused AdamW + torch.compile, in one run, on random weights in a real model's shapes (speed
# does not depend on the values): 1,024-token chunks of the PMC text, BATCH (8) sequences a
# step, bf16 autocast with f32 master weights, AdamW, clipping at 1.0, 20 steps. Reports tokens/s
# (transformers: mean over steps 7-20; ours: at the median step time, as a batch of a new shape
# costs one CUDA-graph capture) and peak memory allocated, and profiles steps 4-6 of each trainer
# (trace_summary.py: kernels per step and where the GPU time goes). With UNIATTN=1 also the two
# UniAttn stages on the 4:12:24 plan (stage 1 trains W_c alone; profiled in its steps 4-6); with EAGER=1 a dense run
# without CUDA graphs.
#   scripts/device/train_vs_compiled.sh CONFIG.json NAME      (MODES="fused compiled"; MODES= for none)
set -uo pipefail
CONFIG=$1 NAME=$2
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
U=${U:-./target/release/uniattn}
OUT=${OUT:-/tmp/out} W=$WORK/tvc/$NAME BATCH=${BATCH:-8}
mkdir -p "$W" "$OUT"
[[ -f $W/model/config.json ]] || "$PYTHON" scripts/device/random_model.py "$CONFIG" "$W/model" --dtype f32 | tail -1
python3 - data/pmc_llama_instructions_1000.json "$W/pmc.txt" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
open(sys.argv[2], "w").write("\n\n".join(r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in rows))
PY
summary() { # summary METRICS [STAGE] -> JSON: tokens/s at the median step time (steps 4 on, full
  python3 - "$@" <<'PY'   # windows only: a new batch shape costs one capture), peak GiB, losses
import json, statistics, sys
r = [json.loads(l) for l in open(sys.argv[1])]
if len(sys.argv) > 2:
    r = [x for x in r if x["stage"] == int(sys.argv[2])]
full = max(x["tokens"] for x in r)
t = [x for x in r[3:] if x["tokens"] == full]
ms = statistics.median(x["tokens"] / x["tokens_per_second"] for x in t) * 1e3
print(json.dumps({"steps": len(r), "median_step_ms": round(ms, 2), "tokens_per_second": round(full / ms * 1e3),
                  "peak_gib": round(max(x.get("peak_gpu_gib") or 0 for x in r), 2),
                  "loss_first": r[0]["loss"], "loss_last": r[-1]["loss"]}))
PY
}
for mode in ${MODES-fused compiled}; do
  "$PYTHON" scripts/reference/hf_train_bench.py "$W/model" "$W/pmc.txt" --batch "$BATCH" --len 1024 --steps 20 \
    --mode "$mode" --profile "$OUT/hf_${NAME}_$mode.trace.json" > "$OUT/hf_${NAME}_$mode.json" 2> "$OUT/hf_${NAME}_$mode.err" \
    || tail -3 "$OUT/hf_${NAME}_$mode.err"
  echo "transformers $mode: $(cat "$OUT/hf_${NAME}_$mode.json")"
  python3 scripts/device/trace_summary.py "$OUT/hf_${NAME}_$mode.trace.json" --json "$OUT/hf_${NAME}_$mode.profile.json" --top 15
done
common=(--data "$W/pmc.txt" --max-len 1024 --micro-batch "$BATCH" --val-fraction 0 --eval-every 0 --save-every 0
        --bf16 --device cuda --lr 1e-5 --overwrite)
$U train --model "$W/model" "${common[@]}" --max-steps 20 --profile "$OUT/ours_$NAME.trace.json" --out "$W/dense" \
  > "$OUT/ours_$NAME.log" 2>&1 || tail -5 "$OUT/ours_$NAME.log"
echo "uniattn dense: $(summary "$W/dense/metrics.jsonl")"
python3 scripts/device/trace_summary.py "$OUT/ours_$NAME.trace.json" --json "$OUT/ours_$NAME.profile.json" --top 25
cp "$W/dense/metrics.jsonl" "$OUT/ours_${NAME}_metrics.jsonl"
if [[ ${EAGER:-0} == 1 ]]; then # the same without CUDA graphs, for their share
  UNIATTN_CUDA_GRAPHS=0 $U train --model "$W/model" "${common[@]}" --max-steps 20 --out "$W/eager" > "$OUT/eager_$NAME.log" 2>&1 \
    || tail -5 "$OUT/eager_$NAME.log"
  echo "uniattn dense, no CUDA graphs: $(summary "$W/eager/metrics.jsonl")"
fi
if [[ ${UNIATTN:-0} == 1 ]]; then
  $U train --model "$W/model" --variant uniattn --plan 4:12:24 "${common[@]}" --max-steps 40 --out "$W/uni" \
    --profile "$OUT/uni_$NAME.trace.json" > "$OUT/uni_$NAME.log" 2>&1 || tail -5 "$OUT/uni_$NAME.log"
  echo "uniattn stage 1 (W_c only): $(summary "$W/uni/metrics.jsonl" 0)"
  echo "uniattn stage 2 (all weights): $(summary "$W/uni/metrics.jsonl" 1)"
  python3 scripts/device/trace_summary.py "$OUT/uni_$NAME.trace.json" --json "$OUT/uni_$NAME.profile.json" --top 30
  cp "$W/uni/metrics.jsonl" "$OUT/uni_${NAME}_metrics.jsonl"
fi
