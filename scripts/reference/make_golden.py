"""Golden per-token log-probs from an independent implementation: Hugging Face transformers on
CPU in float32, reading the same GGUF files (transformers dequantizes them with the `gguf`
package, not with our code).

Run in a throwaway environment, not part of the product:
    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch==2.11.0 transformers==5.24.0 gguf==0.19.0 accelerate numpy sentencepiece
    /tmp/refenv/bin/python scripts/reference/make_golden.py [smollm2 qwen0.5b gemma3]

Writes crates/uniattn/tests/fixtures/golden_<name>.json: the token ids transformers' tokenizer produces for the
paragraph (BOS where the GGUF says add_bos_token), and the log-prob of each token given the ones
before it.
"""
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

CACHE = os.environ.get("UNIATTN_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "uniattn")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = {
    "smollm2": CACHE + "/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen0.5b": CACHE + "/models/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf",
    "gemma3": CACHE + "/models/gemma3-270m/gemma-3-270m.Q4_K_M.gguf",
}
PARAGRAPH = (
    "The mitochondrion is the powerhouse of the cell. It produces ATP through oxidative "
    "phosphorylation, a process that depends on a gradient of protons across the inner membrane. "
    "In 1961, Peter Mitchell proposed the chemiosmotic hypothesis; it took more than a decade "
    "before the idea was widely accepted. def f(x): return x ** 2 + 3"
)


def main(names):
    torch.set_num_threads(os.cpu_count())
    for name in names:
        path = MODELS[name]
        d, f = os.path.dirname(path), os.path.basename(path)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
        model.eval()
        ids = tok(PARAGRAPH, add_special_tokens=False)["input_ids"]
        if name == "gemma3":  # the GGUF says add_bos_token = true
            ids = [tok.bos_token_id] + ids
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(x).logits.float()
        lp = torch.log_softmax(logits[0, :-1], -1).gather(-1, x[0, 1:, None])[:, 0]
        out = {
            "model": MODELS[name],
            "made_by": f"transformers {transformers.__version__}, torch {torch.__version__}, CPU float32, "
                       f"attn_implementation={model.config._attn_implementation}",
            "command": "python3 scripts/reference/make_golden.py " + name,
            "text": PARAGRAPH,
            "ids": ids,
            "logprobs": [round(v, 6) for v in lp.tolist()],
        }
        dst = os.path.join(ROOT, "crates", "uniattn", "tests", "fixtures", f"golden_{name}.json")
        with open(dst, "w") as fh:
            json.dump(out, fh, indent=1)
        print(f"{name}: {len(ids)} tokens, mean NLL {-lp.mean().item():.5f} -> {dst}")


if __name__ == "__main__":
    main(sys.argv[1:] or list(MODELS))
