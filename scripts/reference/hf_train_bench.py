"""Baseline for `uniattn train` throughput: a plain PyTorch + transformers training loop on the
same model folder, data, batch, precision (bf16 autocast, f32 master weights, AdamW, clipping at
1.0) and attention implementation (sdpa), in four modes: `eager` (torch.optim.AdamW's default
foreach update), `fused` (AdamW(fused=True)), `compiled` (fused AdamW and torch.compile(model):
what a PyTorch user gets in one line, the baseline issue 18 measures against), `reduce-overhead`
(the same compiled with mode="reduce-overhead": CUDA graphs of the forward and backward). Not part of the
product; runs on the GPU machine:
    python3 scripts/reference/hf_train_bench.py MODEL_DIR TEXT_FILE --batch 8 --len 1024 --steps 20 --mode compiled
Prints one JSON line: tokens/s over steps 4 onwards (7 with --profile; compilation happens in the first), and peak
CUDA memory allocated. `--profile FILE` records steps 4-6 as a Chrome trace, as `uniattn train
--profile` does (their step times then include the profiler's overhead).
"""
import argparse
import json
import os
import time

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("text")
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--len", type=int, default=1024)
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--mode", choices=["eager", "fused", "compiled", "reduce-overhead"], default="compiled")
ap.add_argument("--profile", help="write a Chrome trace of steps 4-6 (torch.profiler) here")
a = ap.parse_args()

model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa").cuda()
model.train()
# The folder's tokenizer.json through the tokenizers library (AutoTokenizer guesses a class from
# config.json, which a stand-in tokenizer of a random-weights folder does not match).
tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
ids = tok.encode(open(a.text).read(), add_special_tokens=False).ids
chunks = [ids[i:i + a.len] for i in range(0, len(ids) - a.len, a.len)]
opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, fused=a.mode != "eager")
step_model = {"compiled": lambda: torch.compile(model),
              "reduce-overhead": lambda: torch.compile(model, mode="reduce-overhead")}.get(a.mode, lambda: model)()
torch.cuda.reset_peak_memory_stats()
times = []
prof = None
for step in range(a.steps):
    if a.profile and step == 3:
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                  torch.profiler.ProfilerActivity.CUDA])
        prof.__enter__()
    if prof is not None and step == 6:
        prof.__exit__(None, None, None)
        prof.export_chrome_trace(a.profile)
        prof = None
    batch = torch.tensor(chunks[(step * a.batch) % len(chunks):][:a.batch]).cuda()
    torch.cuda.synchronize()
    t0 = time.time()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = step_model(input_ids=batch, labels=batch)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    times.append(time.time() - t0)
steady = times[6:] if a.profile else times[3:]  # the profiled steps run slower
print(json.dumps({
    "impl": f"transformers-{a.mode}",
    "tokens_per_second": a.batch * a.len * len(steady) / sum(steady),
    "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
    "loss": out.loss.item(),
}))
