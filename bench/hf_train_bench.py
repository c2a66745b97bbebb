#!/usr/bin/env python3
"""The training step `hubcap finetune --device cuda` runs, with transformers (+ peft) on the same
card: f32 master weights under bf16 autocast (what Trainer's bf16=True does), AdamW, batch 8 x 512.
Prints one JSON object: seconds a step, tokens/s and MFU (6 N tokens/s / 989 TFLOP/s).
usage: python3 bench/hf_train_bench.py CHECKPOINT_DIR full|lora [BATCH] [SEQ]"""
import json, sys, time

import torch
from transformers import AutoModelForCausalLM

path, mode = sys.argv[1], sys.argv[2]
B = int(sys.argv[3]) if len(sys.argv) > 3 else 8
T = int(sys.argv[4]) if len(sys.argv) > 4 else 512
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="sdpa").cuda()
N = sum(p.numel() for p in model.parameters())
if mode == "lora":
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
ids = torch.randint(0, model.config.vocab_size, (B, T), device="cuda")


def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


for _ in range(2):
    step()
torch.cuda.synchronize()
n = 5
t = time.perf_counter()
for _ in range(n):
    step()
torch.cuda.synchronize()
dt = (time.perf_counter() - t) / n
tok = B * T / dt
print(json.dumps({"engine": "transformers", "mode": mode, "batch": B, "seq": T, "params": N, "step_s": round(dt, 4),
                  "tok_s": round(tok, 1), "mfu": round(6 * N * tok / 989e12, 4)}), flush=True)
