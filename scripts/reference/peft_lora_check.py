"""A planned folder (UniAttn, ...) under PEFT: LoRA adapters on its projections through the
modeling code the folder carries (`trust_remote_code=True`), f32, CPU; a few AdamW steps on one
batch of text must lower its loss, and the adapters must be the only trained weights. Prints one
JSON line. Not part of the product: the check that what uniattn writes works in other tools.

    /path/to/venv/bin/python scripts/reference/peft_lora_check.py FOLDER [STEPS]
(a venv with torch, transformers 5 and peft.)
"""
import json
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, steps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
tok.pad_token = tok.pad_token or tok.eos_token
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=True)
targets = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in ("q_proj", "v_proj", "o_proj", "v2_proj")})
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, lora_dropout=0.0))
trainable = [n for n, p in model.named_parameters() if p.requires_grad]
text = ["The patient presented with fever and a cough that had lasted three days.",
        "Aspirin inhibits cyclooxygenase and so reduces the synthesis of prostaglandins."]
batch = tok(text, return_tensors="pt", padding=True)
labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
losses = []
for _ in range(steps):
    loss = model(**batch, labels=labels, use_cache=False).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    losses.append(loss.item())
print(json.dumps({"folder": folder, "architecture": model.config.architectures,
                  "reuse": model.config.uniattn_plan.get("reuse"), "lora_targets": targets,
                  "trainable_tensors": len(trainable), "all_lora": all("lora_" in n for n in trainable),
                  "losses": [round(x, 4) for x in losses], "loss_fell": losses[-1] < losses[0]}))
