"""Greedy generation of a planned uniattn folder in transformers (its modeling_uniattn.py,
`trust_remote_code=True`), f32, CPU: with the KV cache (what `generate` uses by default) and
without it, against `uniattn generate --raw --jsonl`'s text for the same prompts.

    PY scripts/reference/hf_generate_check.py DIR PROMPTS.txt MAX_NEW OURS.jsonl

Prints one JSON object: prompts, how many texts equal ours with and without the cache, and the
largest |logit| difference between the cached and the uncached run over the generated steps.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(folder, prompts_file, max_new, ours_file):
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=True).eval()
    prompts = [l for l in open(prompts_file).read().splitlines() if l.strip()]
    ours = {}
    for line in open(ours_file):
        r = json.loads(line)
        ours[r["index"]] = r["text"]
    same = {True: 0, False: 0}
    worst = 0.0
    for i, p in enumerate(prompts):
        ids = tok(p, return_tensors="pt")
        runs = {}
        for cache in (True, False):
            with torch.no_grad():
                out = model.generate(**ids, max_new_tokens=int(max_new), do_sample=False, use_cache=cache,
                                     output_scores=True, return_dict_in_generate=True,
                                     pad_token_id=tok.eos_token_id)
            new = out.sequences[0, ids["input_ids"].shape[1]:]
            text = tok.decode(new, skip_special_tokens=True)
            runs[cache] = (new.tolist(), torch.stack(out.scores))
            same[cache] += int(text == ours.get(i))
        (a, sa), (b, sb) = runs[True], runs[False]
        n = min(len(a), len(b))
        if a[:n] == b[:n]:
            worst = max(worst, float((sa[:n] - sb[:n]).abs().max()))
        else:
            worst = float("inf")
    print(json.dumps({"prompts": len(prompts), "equal_to_ours_cached": same[True], "equal_to_ours_uncached": same[False],
                      "max_logit_diff_cached_vs_uncached": worst}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
