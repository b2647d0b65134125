"""Baselines for `uniattn bench`: Hugging Face transformers on the same model and card, same
batch/context grid, in three modes (run one process per mode; each prints JSON lines):

  eager     `generate` with its default dynamic KV cache (greedy, SDPA attention);
  static    `generate(..., cache_implementation="static")`, which transformers compiles;
  compiled  a gpt-fast-style loop, the fastest plain PyTorch gets: a StaticCache, one prefill,
            then one greedy token per call of `torch.compile(step, mode="reduce-overhead",
            fullgraph=True)` (CUDA graphs) at a device-side cache position, timed over
            --new-tokens steps after warm-up.

    python3 scripts/reference/hf_generate_bench.py MODEL_DIR --mode compiled --batch 1,32 \
        --context 2048,8192 --new-tokens 128 [--dtype bf16] [--repeats 3]

MODEL_DIR is a Hugging Face folder (`uniattn import` writes one from a GGUF). TTFT is a
generate/prefill call of one new token; decode tokens/s excludes the prefill.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def generate_rates(model, ids, new_tokens, static):
    """(ttft seconds, decode tokens/s) from generate with 1 and with N new tokens."""
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)
    if static:
        kw["cache_implementation"] = "static"
    run = lambda n: model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
    # Untimed first: compilation (static) and first-shape set-up stay out of the numbers.
    run(new_tokens)
    run(1)
    ttft, _ = timed(lambda: run(1))
    total, _ = timed(lambda: run(new_tokens))
    return ttft, ids.shape[0] * (new_tokens - 1) / max(total - ttft, 1e-9)


def static_cache(model, batch, max_len, dtype, dev):
    from transformers import StaticCache

    try:  # transformers 5: shapes are taken from the first update
        return StaticCache(config=model.config, max_cache_len=max_len)
    except TypeError:  # transformers 4
        return StaticCache(config=model.config, max_batch_size=batch, max_cache_len=max_len, device=dev, dtype=dtype)


def compiled_rates(model, ids, new_tokens, dtype, dev, step_fn):
    b, c = ids.shape
    cache = static_cache(model, b, c + new_tokens + 8, dtype, dev)
    ttft, out = timed(
        lambda: model(input_ids=ids, past_key_values=cache, cache_position=torch.arange(c, device=dev), use_cache=True)
    )
    tok = out.logits[:, -1, :].argmax(-1, keepdim=True)
    pos = torch.tensor([c], device=dev)
    # Warm-up: compilation and graph capture happen in the first calls.
    for _ in range(3):
        tok = step_fn(model, cache, tok, pos).clone()
        pos += 1
    n = new_tokens - 3
    sync()
    t = time.perf_counter()
    for _ in range(n):
        tok = step_fn(model, cache, tok, pos).clone()
        pos += 1
    sync()
    return ttft, b * n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--mode", choices=["eager", "static", "compiled"], default="eager")
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--context", default="512,2048,8192")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32, "f16": torch.float16}[a.dtype]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="sdpa").to(dev).eval()
    vocab = model.config.vocab_size

    def step(model, cache, tok, pos):
        out = model(input_ids=tok, past_key_values=cache, cache_position=pos, use_cache=True)
        return out.logits[:, -1, :].argmax(-1, keepdim=True)

    step_fn = torch.compile(step, mode="reduce-overhead", fullgraph=True) if a.mode == "compiled" else None
    g = torch.Generator().manual_seed(0)
    for c in map(int, a.context.split(",")):
        for b in map(int, a.batch.split(",")):
            ids = torch.randint(0, vocab, (b, c), generator=g).to(dev)
            row = {"engine": f"transformers-{a.mode}", "model": a.model, "batch": b, "context": c,
                   "new_tokens": a.new_tokens}
            try:
                with torch.no_grad():
                    runs = []
                    for _ in range(a.repeats):
                        if a.mode == "compiled":
                            runs.append(compiled_rates(model, ids, a.new_tokens, dtype, dev, step_fn))
                        else:
                            runs.append(generate_rates(model, ids, a.new_tokens, a.mode == "static"))
                rates = [r[1] for r in runs]
                row.update(ttft_ms=statistics.median(r[0] for r in runs) * 1e3,
                           prefill_tokens_per_s=b * c / statistics.median(r[0] for r in runs),
                           decode_tokens_per_s=statistics.median(rates), decode_runs=rates)
            except Exception as e:  # report and go on with the next shape
                row["error"] = f"{type(e).__name__}: {e}"[:300]
                torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
