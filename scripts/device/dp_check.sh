#!/usr/bin/env bash
# On the 2-GPU machine (issue 19): data-parallel jobs over NCCL against one GPU. Sections, in
# the order they run (ONLY="..." picks some; zero and nodes compare with equivalence's run):
#   equivalence  f32: `train --nproc-per-node 2 --micro-batch M` against one GPU at
#                `--micro-batch 2M` (the same examples per optimizer step), 20 steps, random
#                weights in SmolLM2-135M's shapes: per-step loss and final weights compared
#                (scripts/device/dp_compare.py); also with gradient accumulation (2 x 1 x 2
#                against 1 x 1 x 4) and with the all-reduce after the backward pass
#                (UNIATTN_OVERLAP_REDUCE=0) against inside it.
#   zero         f32: `--zero 1` against plain data parallelism, a checkpoint every 5 steps and
#                a resume from step 10 (the shares consolidated) that must end on the same weights.
#   convert      f32: convert and search-plan over 2 GPUs against 1: W_c and every score.
#   scaling      bf16: Qwen2.5-Coder-1.5B shapes, 8 x 1,024 tokens a GPU a step, 1 GPU against 2
#                (all-reduce inside the backward pass, and after it), and 2 with ZeRO-1
#                (optimizer-state GiB per GPU from metrics.jsonl).
#   hang         rank 1 frozen with SIGSTOP mid-run: every rank stops, naming it, within
#                --hang-timeout.
#   nodes        two 1-GPU "machines" (different --node-rank, over 127.0.0.1): the same weights
#                as the 2-GPU run (each node under a 150 s timeout).
# Logs and metrics go to $OUT/dp_check.tgz, the comparisons to $OUT/summary.txt. All sections
# take ~10 min, more than one device call: split them, e.g. ONLY="equivalence zero convert".
#   scripts/device/dp_check.sh
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# NVLink multicast off in every process (the shared machine's policy).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
U=${U:-./target/release/uniattn} OUT=${OUT:-/tmp/out} W=${W:-$WORK/dp}
L=$W/logs
rm -rf "$L" && mkdir -p "$W" "$L" "$OUT"
want() { [[ " ${ONLY:-equivalence zero convert scaling hang nodes} " == *" $1 "* ]]; }
exec > >(tee "$OUT/summary.txt") 2>&1
trap 'tar czf "$OUT/dp_check.tgz" -C "$W" logs' EXIT
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
"$PYTHON" scripts/device/random_model.py scripts/device/smollm2-135m.config.json "$W/s135" --dtype f32 | tail -1
python3 - data/pmc_llama_instructions_1000.json "$W/pmc.txt" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
open(sys.argv[2], "w").write("\n\n".join(r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in rows))
PY
common=(--data data/pmc_llama_instructions_1000.json --max-len 256 --max-steps 20 --val-fraction 0 --eval-every 0
        --save-every 0 --save-dtype f32 --lr 1e-4 --device cuda --overwrite)
if want equivalence; then
echo "== equivalence (f32): 1 GPU x micro-batch 4 against 2 GPUs x micro-batch 2"
$U train --model "$W/s135" "${common[@]}" --micro-batch 4 --out "$W/one" > "$L/one.log" 2>&1 || tail -5 "$L/one.log"
$U train --model "$W/s135" "${common[@]}" --micro-batch 2 --nproc-per-node 2 --out "$W/two" > "$L/two.log" 2>&1 \
  || tail -5 "$L/two.log"
"$PYTHON" scripts/device/dp_compare.py "$W/one" "$W/two" | tee "$L/equivalence.json"
echo "== the same, the all-reduce after the backward pass (UNIATTN_OVERLAP_REDUCE=0) against inside it"
UNIATTN_OVERLAP_REDUCE=0 $U train --model "$W/s135" "${common[@]}" --micro-batch 2 --nproc-per-node 2 --out "$W/two_after" \
  > "$L/two_after.log" 2>&1 || tail -5 "$L/two_after.log"
"$PYTHON" scripts/device/dp_compare.py "$W/two" "$W/two_after" | tee "$L/overlap_vs_after.json"
echo "== gradient accumulation: 2 GPUs x micro-batch 1 x 2 against 1 GPU x micro-batch 1 x 4, and the all-reduce after"
$U train --model "$W/s135" "${common[@]}" --micro-batch 1 --grad-accum 4 --out "$W/one_accum" \
  > "$L/one_accum.log" 2>&1 || tail -5 "$L/one_accum.log"
$U train --model "$W/s135" "${common[@]}" --micro-batch 1 --grad-accum 2 --nproc-per-node 2 --out "$W/two_accum" \
  > "$L/two_accum.log" 2>&1 || tail -5 "$L/two_accum.log"
UNIATTN_OVERLAP_REDUCE=0 $U train --model "$W/s135" "${common[@]}" --micro-batch 1 --grad-accum 2 --nproc-per-node 2 \
  --out "$W/two_accum_after" > "$L/two_accum_after.log" 2>&1 || tail -5 "$L/two_accum_after.log"
"$PYTHON" scripts/device/dp_compare.py "$W/one_accum" "$W/two_accum" | tee "$L/accumulation.json"
"$PYTHON" scripts/device/dp_compare.py "$W/two_accum_after" "$W/two_accum" | tee "$L/accumulation_overlap_vs_after.json"
fi
if want zero; then
echo "== ZeRO-1 (f32): 2 GPUs with --zero 1 against plain data parallelism; checkpoints and a resume"
$U train --model "$W/s135" "${common[@]}" --save-every 5 --micro-batch 2 --nproc-per-node 2 --zero 1 --out "$W/zero" \
  > "$L/zero.log" 2>&1 || tail -5 "$L/zero.log"
"$PYTHON" scripts/device/dp_compare.py "$W/two" "$W/zero" | tee "$L/zero_vs_dp.json"
ls "$W/zero/checkpoints/step-000010" | tee "$L/zero_checkpoint.txt"
rm -rf "$W/zero_resumed" && mkdir -p "$W/zero_resumed" && cp -r "$W/zero/checkpoints" "$W/zero_resumed/"
rm -rf "$W/zero_resumed/checkpoints/step-000015" "$W/zero_resumed/checkpoints/step-000020"
resume_args=(); for a in "${common[@]}"; do [[ $a == --overwrite ]] || resume_args+=("$a"); done
$U train --model "$W/s135" "${resume_args[@]}" --micro-batch 2 --nproc-per-node 2 --zero 1 \
  --resume "$W/zero_resumed" --out "$W/zero_resumed" > "$L/zero_resumed.log" 2>&1 || tail -5 "$L/zero_resumed.log"
"$PYTHON" scripts/device/dp_compare.py "$W/zero" "$W/zero_resumed" --weights-only | tee "$L/zero_resumed.json"
fi
if want convert; then
echo "== convert and search-plan (f32) over 2 GPUs against 1: the fit and the scores to the order of the sums"
conv=(--plan-blocks 20-23,24-27 --calib data/pmc_llama_instructions_1000.json --calib-rows 0..200 --chunk-tokens 2048
      --device cuda --overwrite)
$U convert "$W/s135" "${conv[@]}" --out "$W/conv_one" > "$L/conv_one.log" 2>&1 || tail -5 "$L/conv_one.log"
$U convert "$W/s135" "${conv[@]}" --nproc-per-node 2 --out "$W/conv_two" > "$L/conv_two.log" 2>&1 \
  || tail -5 "$L/conv_two.log"
search=(--reuse-layers 4 --verify 2 --calib data/pmc_llama_instructions_1000.json --calib-rows 0..100 --chunk-tokens 2048
        --val "$W/pmc.txt" --val-rows 200..260 --val-max-len 512 --device cuda)
$U search-plan "$W/s135" "${search[@]}" --out "$W/search_one" > "$L/search_one.log" 2>&1 || tail -5 "$L/search_one.log"
$U search-plan "$W/s135" "${search[@]}" --nproc-per-node 2 --out "$W/search_two" > "$L/search_two.log" 2>&1 \
  || tail -5 "$L/search_two.log"
"$PYTHON" - "$W" <<'PY' | tee "$L/convert_search.json"
import json, sys
from safetensors.torch import load_file
w = sys.argv[1]
a, b = load_file(f"{w}/conv_one/model.safetensors"), load_file(f"{w}/conv_two/model.safetensors")
wc = [k for k in a if "v2_proj" in k]
rel = max(((a[k].double() - b[k].double()).abs().max() / a[k].double().abs().max()).item() for k in wc)
s1, s2 = (json.load(open(f"{w}/search_{r}/plan_search.json")) for r in ("one", "two"))
nll = lambda r: [b["mean_nll"] for b in r["blocks"]] + [p["mean_nll"] for p in r["plans"]] + [r["dense_nll"]]
print(json.dumps({"wc_tensors": len(wc), "wc_max_rel_diff": rel, "best": [s1["best"], s2["best"]],
                  "scores_max_abs_diff": max(abs(x - y) for x, y in zip(nll(s1), nll(s2)))}))
PY
fi
if want scaling; then
echo "== scaling (bf16): Qwen2.5-Coder-1.5B shapes, 8 x 1,024 tokens per GPU a step"
"$PYTHON" scripts/device/random_model.py scripts/device/qwen2.5-coder-1.5b.config.json "$W/q15" --dtype f32 | tail -1
scale=(--model "$W/q15" --data "$W/pmc.txt" --max-len 1024 --micro-batch 8 --val-fraction 0 --eval-every 0 --save-every 0
       --bf16 --device cuda --lr 1e-5 --max-steps 20 --overwrite)
$U train "${scale[@]}" --out "$W/q15_one" > "$L/q15_one.log" 2>&1 || tail -5 "$L/q15_one.log"
$U train "${scale[@]}" --nproc-per-node 2 --out "$W/q15_two" > "$L/q15_two.log" 2>&1 || tail -5 "$L/q15_two.log"
UNIATTN_OVERLAP_REDUCE=0 $U train "${scale[@]}" --nproc-per-node 2 --out "$W/q15_after" > "$L/q15_after.log" 2>&1 \
  || tail -5 "$L/q15_after.log"
$U train "${scale[@]}" --nproc-per-node 2 --zero 1 --out "$W/q15_zero" > "$L/q15_zero.log" 2>&1 \
  || tail -5 "$L/q15_zero.log"
for r in one two after zero; do cp "$W/q15_$r/metrics.jsonl" "$L/q15_${r}_metrics.jsonl"; done
python3 - "$W"/q15_{one,two,zero,after}/metrics.jsonl <<'PY' | tee "$L/scaling.json"
import json, statistics, sys
def run(path):
    r = [json.loads(l) for l in open(path)][3:]
    return (statistics.median(x["tokens_per_second"] for x in r), max(x.get("peak_gpu_gib") or 0 for x in r),
            r[-1].get("optimizer_state_gib"))
(one, m1, o1), (two, m2, o2), (zero, m3, o3), (after, _, _) = (run(p) for p in sys.argv[1:5])
print(json.dumps({"one_gpu_tok_s": round(one), "two_gpu_tok_s": round(two), "speedup": round(two / one, 3),
                  "two_gpu_reduce_after_backward_tok_s": round(after), "speedup_reduce_after": round(after / one, 3),
                  "zero1_tok_s": round(zero), "zero1_speedup": round(zero / one, 3),
                  "peak_gib_one": m1, "peak_gib_two_rank0": m2, "peak_gib_zero1_rank0": m3,
                  "optimizer_state_gib": {"one": o1, "two": o2, "zero1": o3},
                  "zero1_state_ratio": round(o3 / o1, 3) if o1 and o3 else None}))
PY
fi
if want hang; then
echo "== a rank that hangs alive (rank 1 frozen with SIGSTOP mid-run): every rank stops naming it"
hang=(--data data/pmc_llama_instructions_1000.json --max-len 256 --epochs 20 --max-steps 2000 --val-fraction 0
      --eval-every 0 --save-every 0 --lr 1e-4 --device cuda --overwrite --micro-batch 2 --nproc-per-node 2 --hang-timeout 20)
$U train --model "$W/s135" "${hang[@]}" --out "$W/hang" > "$L/hang.log" 2>&1 &
launcher=$!
sleep 20
rank1=$(for p in $(pgrep -f "train --model $W/s135"); do
  tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx RANK=1 && echo "$p"; done | head -1)
frozen=$(date +%s)
kill -STOP "$rank1"
for _ in $(seq 120); do kill -0 "$launcher" 2>/dev/null || break; sleep 1; done
if kill -0 "$launcher" 2>/dev/null; then echo "still running 120 s after the freeze"; kill -9 "$launcher" "$rank1"; fi
wait "$launcher"; rc=$?
echo "{\"rank1_pid\": \"$rank1\", \"launcher_rc\": $rc, \"seconds_from_freeze_to_exit\": $(( $(date +%s) - frozen ))}" \
  | tee "$L/hang.json"
grep -E "no progress|waited|error" "$L/hang.log" | head -5
fi
if want nodes; then
echo "== two machines simulated on one: two 1-GPU nodes meeting over 127.0.0.1 (same job as the 2-GPU run)"
node() { # NODE_RANK GPU OUT: each "machine" its own output folder, as separate disks would be
  CUDA_VISIBLE_DEVICES=$2 timeout 150 $U train --model "$W/s135" "${common[@]}" --micro-batch 2 --nnodes 2 --node-rank "$1" \
    --nproc-per-node 1 --master-addr 127.0.0.1 --master-port 29611 --out "$3" > "$L/node$1.log" 2>&1
  echo "node $1 exited with $?"
}
node 0 0 "$W/nodes" & node 1 1 "$W/nodes-node1"; wait
"$PYTHON" scripts/device/dp_compare.py "$W/two" "$W/nodes" | tee "$L/two_nodes.json"
fi
echo "== notes the runs printed"
grep -h "note:" "$L"/*.log | sort | uniq -c
