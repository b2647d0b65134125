"""A planned folder (UniAttn, ...) fine-tuned by TRL's SFTTrainer through the modeling code it
carries (`trust_remote_code=True`), f32, CPU, with TRL's defaults (activation checkpointing
included): a few steps on instruction rows from data/, the loss must fall, and the saved folder
must load again and give the trained weights' logits. Prints one JSON
line. Not part of the product: the check that what uniattn writes works in other tools.

    /path/to/venv/bin/python scripts/reference/trl_sft_check.py FOLDER OUT_DIR [STEPS]
(a venv with torch, transformers 5, datasets and trl.)
"""
import json
import sys

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

folder, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 8
torch.manual_seed(0)
rows = json.load(open("data/pmc_llama_instructions_1000.json"))[:16]
data = Dataset.from_list([{"prompt": r["instruction"] + "\n" + r["input"] + "\n", "completion": r["output"]} for r in rows])
tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
tok.pad_token = tok.pad_token or tok.eos_token
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=True)
cfg = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=2, learning_rate=5e-5,
                logging_steps=1, save_strategy="no", report_to=[], max_length=256, use_cpu=True)
trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok)
trainer.train()
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
trainer.save_model(out)
again = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=True).eval()
# The trainer's weights in a fresh model (the trainer's own forward runs under its autocast).
trained = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=True).eval()
trained.load_state_dict(trainer.model.state_dict())
ids = tok(["The patient presented with fever"], return_tensors="pt")["input_ids"]
with torch.no_grad():
    diff = (again(ids).logits - trained(ids).logits).abs().max().item()
print(json.dumps({"folder": folder, "architecture": again.config.architectures,
                  "reuse": again.config.uniattn_plan.get("reuse"), "steps": steps,
                  "losses": [round(x, 4) for x in losses], "loss_fell": losses[-1] < losses[0],
                  "reloaded_max_logit_diff": diff}))
