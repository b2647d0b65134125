"""Logits of a planned uniattn folder in transformers (its modeling_uniattn.py,
`trust_remote_code=True`), f32, CPU, for one sequence of token ids: over the whole sequence at
once, and with the KV cache (all but the last STEPS tokens, then one token a step). Used by
uniattn's test `loader::tests::planned_folders_run_in_transformers`.

    PY scripts/reference/hf_folder_logits.py DIR IDS_JSON STEPS

Prints {"full": [[logit, ...] per position], "cached": [[...] per cached step]}.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM


def main(folder, ids_json, steps):
    ids = torch.tensor([json.loads(ids_json)])
    steps = int(steps)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=True).eval()
    with torch.no_grad():
        full = model(ids, use_cache=False).logits[0]
        out = model(ids[:, :-steps], use_cache=True)
        cache, cached = out.cache if hasattr(out, "cache") else out.past_key_values, []
        for i in range(ids.shape[1] - steps, ids.shape[1]):
            out = model(ids[:, i:i + 1], cache=cache, use_cache=True)
            cache = out.cache if hasattr(out, "cache") else out.past_key_values
            cached.append(out.logits[0, -1])
    print(json.dumps({"full": full.tolist(), "cached": torch.stack(cached).tolist()}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
