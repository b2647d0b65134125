"""Sliding-window perplexity of SmolLM2 by transformers (CPU f32), the reference for
tests/golden.rs::sliding_window_matches_transformers. Same environment as make_golden.py:
    /tmp/refenv/bin/python scripts/reference/sliding_ppl.py
Prints (mean NLL, predicted tokens) for windows/strides (300, 300), (200, 100), (128, 64) over the
first 300 tokens of wiki.utf8. Measured 2026-11-26: 1.982499, 2.287043, 2.324462 (299 each).
"""
import os
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

CACHE = os.environ.get("UNIATTN_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "uniattn")
d, f = CACHE + "/models/smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf"
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
ids = tok(open(CACHE + "/data/wiki.utf8").read(), add_special_tokens=False)["input_ids"][:300]


def ppl(window, stride):
    nll, n, done, b = 0.0, 0, 1, 0
    while done < len(ids):
        e = min(b + window, len(ids))
        x = torch.tensor([ids[b:e]])
        with torch.no_grad():
            lp = torch.log_softmax(m(x).logits[0, :-1].float(), -1).gather(-1, x[0, 1:, None])[:, 0]
        for j, v in enumerate(lp.tolist()):
            if b + 1 + j >= done:
                nll -= v
                n += 1
        done = e
        if e == len(ids):
            break
        b += stride
    return nll / n, n


print(ppl(300, 300), ppl(200, 100), ppl(128, 64))
