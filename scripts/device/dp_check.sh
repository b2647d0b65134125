#!/usr/bin/env bash
# On the 2-GPU machine (issue 19): data-parallel training over NCCL against one GPU.
# 1. Equivalence, f32: `train --nproc-per-node 2 --micro-batch M` against one GPU at
#    `--micro-batch 2M` (the same examples per optimizer step), 20 steps, random weights in
#    SmolLM2-135M's shapes: per-step loss and final weights compared (scripts/device/dp_compare.py).
#    Also with gradient accumulation (2 GPUs x micro-batch 1 x 2 against 1 GPU x 1 x 4), and with
#    the all-reduce after the backward pass (UNIATTN_OVERLAP_REDUCE=0) against inside it.
# 2. Two machines simulated on one (two 1-GPU nodes, different --node-rank, over 127.0.0.1):
#    the same weights as the 2-GPU run (run last, each node under a 150 s timeout).
# 3. ZeRO-1 (f32): `--zero 1` on 2 GPUs against plain data parallelism, with a checkpoint every
#    5 steps and a resume from step 10 (the shares consolidated) that must end on the same weights.
# 3b. convert and search-plan over 2 GPUs against 1 (f32): W_c and every score compared.
# 4. Scaling, bf16: Qwen2.5-Coder-1.5B shapes, 8 x 1,024 tokens a GPU a step, 1 GPU against 2
#    (all-reduce inside the backward pass, and after it), and 2 with ZeRO-1 (optimizer-state GiB
#    per GPU from metrics.jsonl).
# Logs and metrics go to $OUT/dp_check.tgz, the comparisons to $OUT/summary.txt.
#   scripts/device/dp_check.sh
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# NVLink multicast off in every process (the shared machine's policy).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
U=${U:-./target/release/uniattn} OUT=${OUT:-/tmp/out} W=${W:-$WORK/dp}
L=$W/logs
rm -rf "$L" && mkdir -p "$W" "$L" "$OUT"
exec > >(tee "$OUT/summary.txt") 2>&1
trap 'tar czf "$OUT/dp_check.tgz" -C "$W" logs' EXIT
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
"$PYTHON" scripts/device/random_model.py scripts/device/smollm2-135m.config.json "$W/s135" --dtype f32 | tail -1
common=(--data data/pmc_llama_instructions_1000.json --max-len 256 --max-steps 20 --val-fraction 0 --eval-every 0
        --save-every 0 --save-dtype f32 --lr 1e-4 --device cuda --overwrite)
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
echo "== convert and search-plan (f32) over 2 GPUs against 1: the fit and the scores to the order of the sums"
conv=(--plan-blocks 20-23,24-27 --calib data/pmc_llama_instructions_1000.json --calib-rows 0..200 --chunk-tokens 2048
      --device cuda --overwrite)
$U convert "$W/s135" "${conv[@]}" --out "$W/conv_one" > "$L/conv_one.log" 2>&1 || tail -5 "$L/conv_one.log"
$U convert "$W/s135" "${conv[@]}" --nproc-per-node 2 --out "$W/conv_two" > "$L/conv_two.log" 2>&1 \
  || tail -5 "$L/conv_two.log"
python3 - data/pmc_llama_instructions_1000.json "$W/pmc.txt" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
open(sys.argv[2], "w").write("\n\n".join(r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in rows))
PY
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
echo "== two machines simulated on one: two 1-GPU nodes meeting over 127.0.0.1 (same job as the 2-GPU run)"
node() { # NODE_RANK GPU
  CUDA_VISIBLE_DEVICES=$2 timeout 150 $U train --model "$W/s135" "${common[@]}" --micro-batch 2 --nnodes 2 --node-rank "$1" \
    --nproc-per-node 1 --master-addr 127.0.0.1 --master-port 29611 --out "$W/nodes" > "$L/node$1.log" 2>&1
}
node 0 0 & node 1 1; wait
"$PYTHON" scripts/device/dp_compare.py "$W/two" "$W/nodes" | tee "$L/two_nodes.json"
echo "== notes the runs printed"
grep -h "note:" "$L"/*.log | sort | uniq -c
