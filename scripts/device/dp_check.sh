#!/usr/bin/env bash
# On the 2-GPU machine (issue 19): data-parallel training over NCCL against one GPU.
# 1. Equivalence, f32: `train --nproc-per-node 2 --micro-batch M` against one GPU at
#    `--micro-batch 2M` (the same examples per optimizer step), 20 steps, random weights in
#    SmolLM2-135M's shapes: per-step loss and final weights compared (scripts/device/dp_compare.py).
# 2. Two machines simulated on one (two 1-GPU nodes, different --node-rank, over 127.0.0.1):
#    the same weights as the 2-GPU run.
# 3. Scaling, bf16: Qwen2.5-Coder-1.5B shapes, 8 x 1,024 tokens a GPU a step, 1 GPU against 2.
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
cp "$W/q15_one/metrics.jsonl" "$OUT/q15_one_metrics.jsonl"; cp "$W/q15_two/metrics.jsonl" "$OUT/q15_two_metrics.jsonl"
python3 - "$W/q15_one/metrics.jsonl" "$W/q15_two/metrics.jsonl" <<'PY' | tee "$OUT/scaling.json"
import json, statistics, sys
def tok_s(path):
    r = [json.loads(l) for l in open(path)][3:]
    return statistics.median(x["tokens_per_second"] for x in r), max(x.get("peak_gpu_gib") or 0 for x in r)
(one, m1), (two, m2) = tok_s(sys.argv[1]), tok_s(sys.argv[2])
print(json.dumps({"one_gpu_tok_s": round(one), "two_gpu_tok_s": round(two), "speedup": round(two / one, 3),
                  "peak_gib_one": m1, "peak_gib_two_rank0": m2}))
PY
