#!/usr/bin/env bash
# On the 2-GPU machine (issue 19): data-parallel training over NCCL against one GPU.
# 1. Equivalence, f32: `train --nproc-per-node 2 --micro-batch M` against one GPU at
#    `--micro-batch 2M` (the same examples per optimizer step), 20 steps, random weights in
#    SmolLM2-135M's shapes: per-step loss and final weights compared (scripts/device/dp_compare.py).
# 2. Two machines simulated on one (two 1-GPU nodes, different --node-rank, over 127.0.0.1):
#    the same weights as the 2-GPU run.
# 3. ZeRO-1 (f32): `--zero 1` on 2 GPUs against plain data parallelism, with a checkpoint every
#    5 steps and a resume from step 10 (the shares consolidated) that must end on the same weights.
# 4. Scaling, bf16: Qwen2.5-Coder-1.5B shapes, 8 x 1,024 tokens a GPU a step, 1 GPU against 2,
#    and 2 with ZeRO-1 (optimizer-state GiB per GPU from metrics.jsonl).
#   scripts/device/dp_check.sh
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# NVLink multicast off in every process (the shared machine's policy).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
U=${U:-./target/release/uniattn} OUT=${OUT:-/tmp/out} W=${W:-$WORK/dp}
mkdir -p "$W" "$OUT"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
"$PYTHON" scripts/device/random_model.py scripts/device/smollm2-135m.config.json "$W/s135" --dtype f32 | tail -1
common=(--data data/pmc_llama_instructions_1000.json --max-len 256 --max-steps 20 --val-fraction 0 --eval-every 0
        --save-every 0 --save-dtype f32 --lr 1e-4 --device cuda --overwrite)
echo "== equivalence (f32): 1 GPU x micro-batch 4 against 2 GPUs x micro-batch 2"
$U train --model "$W/s135" "${common[@]}" --micro-batch 4 --out "$W/one" > "$OUT/one.log" 2>&1 || tail -5 "$OUT/one.log"
$U train --model "$W/s135" "${common[@]}" --micro-batch 2 --nproc-per-node 2 --out "$W/two" > "$OUT/two.log" 2>&1 \
  || tail -5 "$OUT/two.log"
"$PYTHON" scripts/device/dp_compare.py "$W/one" "$W/two" | tee "$OUT/equivalence.json"
echo "== two machines simulated on one: two 1-GPU nodes meeting over 127.0.0.1 (same job as the 2-GPU run)"
node() { # NODE_RANK GPU
  CUDA_VISIBLE_DEVICES=$2 $U train --model "$W/s135" "${common[@]}" --micro-batch 2 --nnodes 2 --node-rank "$1" \
    --nproc-per-node 1 --master-addr 127.0.0.1 --master-port 29611 --out "$W/nodes" > "$OUT/node$1.log" 2>&1
}
node 0 0 & node 1 1; wait
"$PYTHON" scripts/device/dp_compare.py "$W/two" "$W/nodes" | tee "$OUT/two_nodes.json"
echo "== ZeRO-1 (f32): 2 GPUs with --zero 1 against plain data parallelism; checkpoints and a resume"
$U train --model "$W/s135" "${common[@]}" --save-every 5 --micro-batch 2 --nproc-per-node 2 --zero 1 --out "$W/zero" \
  > "$OUT/zero.log" 2>&1 || tail -5 "$OUT/zero.log"
"$PYTHON" scripts/device/dp_compare.py "$W/two" "$W/zero" | tee "$OUT/zero_vs_dp.json"
ls "$W/zero/checkpoints/step-000010" | tee "$OUT/zero_checkpoint.txt"
rm -rf "$W/zero_resumed" && mkdir -p "$W/zero_resumed" && cp -r "$W/zero/checkpoints" "$W/zero_resumed/"
rm -rf "$W/zero_resumed/checkpoints/step-000015" "$W/zero_resumed/checkpoints/step-000020"
resume_args=(); for a in "${common[@]}"; do [[ $a == --overwrite ]] || resume_args+=("$a"); done
$U train --model "$W/s135" "${resume_args[@]}" --micro-batch 2 --nproc-per-node 2 --zero 1 \
  --resume "$W/zero_resumed" --out "$W/zero_resumed" > "$OUT/zero_resumed.log" 2>&1 || tail -5 "$OUT/zero_resumed.log"
"$PYTHON" scripts/device/dp_compare.py "$W/zero" "$W/zero_resumed" --weights-only | tee "$OUT/zero_resumed.json"
echo "== scaling (bf16): Qwen2.5-Coder-1.5B shapes, 8 x 1,024 tokens per GPU a step"
"$PYTHON" scripts/device/random_model.py scripts/device/qwen2.5-coder-1.5b.config.json "$W/q15" --dtype f32 | tail -1
python3 - data/pmc_llama_instructions_1000.json "$W/pmc.txt" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
open(sys.argv[2], "w").write("\n\n".join(r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in rows))
PY
scale=(--model "$W/q15" --data "$W/pmc.txt" --max-len 1024 --micro-batch 8 --val-fraction 0 --eval-every 0 --save-every 0
       --bf16 --device cuda --lr 1e-5 --max-steps 20 --overwrite)
$U train "${scale[@]}" --out "$W/q15_one" > "$OUT/q15_one.log" 2>&1 || tail -5 "$OUT/q15_one.log"
$U train "${scale[@]}" --nproc-per-node 2 --out "$W/q15_two" > "$OUT/q15_two.log" 2>&1 || tail -5 "$OUT/q15_two.log"
$U train "${scale[@]}" --nproc-per-node 2 --zero 1 --out "$W/q15_zero" > "$OUT/q15_zero.log" 2>&1 \
  || tail -5 "$OUT/q15_zero.log"
for r in one two zero; do cp "$W/q15_$r/metrics.jsonl" "$OUT/q15_${r}_metrics.jsonl"; done
python3 - "$W/q15_one/metrics.jsonl" "$W/q15_two/metrics.jsonl" "$W/q15_zero/metrics.jsonl" <<'PY' | tee "$OUT/scaling.json"
import json, statistics, sys
def run(path):
    r = [json.loads(l) for l in open(path)][3:]
    return (statistics.median(x["tokens_per_second"] for x in r), max(x.get("peak_gpu_gib") or 0 for x in r),
            r[-1].get("optimizer_state_gib"))
(one, m1, o1), (two, m2, o2), (zero, m3, o3) = (run(p) for p in sys.argv[1:4])
print(json.dumps({"one_gpu_tok_s": round(one), "two_gpu_tok_s": round(two), "speedup": round(two / one, 3),
                  "zero1_tok_s": round(zero), "zero1_speedup": round(zero / one, 3),
                  "peak_gib_one": m1, "peak_gib_two_rank0": m2, "peak_gib_zero1_rank0": m3,
                  "optimizer_state_gib": {"one": o1, "two": o2, "zero1": o3},
                  "zero1_state_ratio": round(o3 / o1, 3) if o1 and o3 else None}))
PY
