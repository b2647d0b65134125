"""Baseline for `uniattn bench`: Hugging Face transformers `generate` (greedy, SDPA attention,
its default dynamic KV cache) on the same model and card, same batch/context grid.

    python3 scripts/reference/hf_generate_bench.py MODEL_DIR --batch 1,32 --context 512,2048 --new-tokens 64 [--dtype bf16]

MODEL_DIR is a Hugging Face folder (`uniattn import` writes one from a GGUF). Prints JSON
lines: TTFT (generate with one new token), decode tokens/s from the difference of a run with
N new tokens and one with a single new token.
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--context", default="512,2048,8192")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="bf16")
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32, "f16": torch.float16}[a.dtype]
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=dtype, attn_implementation="sdpa").to(dev).eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    for c in map(int, a.context.split(",")):
        for b in map(int, a.batch.split(",")):
            ids = torch.randint(0, vocab, (b, c), generator=g).to(dev)
            mask = torch.ones_like(ids)
            run = lambda n: model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
            row = {"engine": "transformers", "model": a.model, "batch": b, "context": c, "new_tokens": a.new_tokens}
            try:
                with torch.no_grad():
                    # The timed runs once untimed first: the dynamic cache grows by one token a
                    # step, and on the H100 machine a shape run for the first time in a process
                    # was slow (up to 5x slower decoding); this gives transformers its best case,
                    # as `uniattn bench --warm-up` does for ours.
                    run(a.new_tokens)
                    run(1)
                    sync()
                    t = time.perf_counter()
                    run(1)
                    sync()
                    ttft = time.perf_counter() - t
                    t = time.perf_counter()
                    run(a.new_tokens)
                    sync()
                    total = time.perf_counter() - t
                row.update(ttft_ms=ttft * 1e3, prefill_tokens_per_s=b * c / ttft,
                           decode_tokens_per_s=b * (a.new_tokens - 1) / max(total - ttft, 1e-9))
            except torch.OutOfMemoryError as e:
                row["error"] = f"out of memory: {e}"[:200]
                torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
