"""A model folder with random weights in a real model's shapes, for speed runs on the GPU
machine (speed does not depend on the values, and this spares moving weights):

    python3 scripts/device/random_model.py CONFIG.json OUT_DIR [--dtype bf16]

Writes transformers' safetensors and config.json plus a small word-level tokenizer.json
(uniattn needs one to load a folder; benchmarks feed token ids, not text).
"""
import argparse
import json
import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("config")
ap.add_argument("out")
ap.add_argument("--dtype", default="bf16")
a = ap.parse_args()
spec = json.load(open(a.config))
cfg = AutoConfig.for_model(**spec)
torch.manual_seed(0)
dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[a.dtype]
model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
model.save_pretrained(a.out)
vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, 256)}}
tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
       "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
       "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}}
with open(os.path.join(a.out, "tokenizer.json"), "w") as f:
    json.dump(tok, f)
print(a.out, sum(p.numel() for p in model.parameters()), "parameters")
