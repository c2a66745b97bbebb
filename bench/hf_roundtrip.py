#!/usr/bin/env python3
"""transformers reads what hubcap writes: checkpoints saved by `hubcap save` give the fixture's
reference logits, and a LoRA adapter saved by `hubcap finetune --lora-rank` gives hubcap's
logits (through peft when it is installed, else by adding scale * B @ A into the weights).
usage: python3 bench/hf_roundtrip.py RT_DIR FIXTURES_DIR BASE_MODEL_DIR
RT_DIR holds llama2, qwen2_f32, gemma2_sharded (hubcap save of those fixtures), adapter
(a LoRA adapter on BASE_MODEL_DIR) and lora_logits.safetensors (hubcap logits --lora of the
ids below)."""
import json, os, sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

rt, fx, base = sys.argv[1], sys.argv[2], sys.argv[3]
ok = True
for saved, fixture in (("llama2", "llama2"), ("qwen2_f32", "qwen2"), ("gemma2_sharded", "gemma2")):
    ref = load_file(os.path.join(fx, fixture, "reference.safetensors"))
    tol = json.load(open(os.path.join(fx, fixture, "reference.json")))["tolerance"]["f32_compute_max_abs"]
    # eager attention, as the fixtures were made (sdpa would drop Gemma 2's soft-capping)
    m = AutoModelForCausalLM.from_pretrained(os.path.join(rt, saved), dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        got = m(ref["prompt0"]).logits[0]
    err = (got - ref["logits0"].reshape(got.shape)).abs().max().item()
    print(f"{saved}: transformers loads hubcap's save, max |logit - reference| = {err:.2e} (tol {tol:.2e})")
    ok &= err <= tol

ids = torch.tensor([[1, 403, 407, 261, 109, 29]])
want = load_file(os.path.join(rt, "lora_logits.safetensors"))["logits"].reshape(6, -1)
m = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager").eval()
try:
    from peft import PeftModel
    m = PeftModel.from_pretrained(m, os.path.join(rt, "adapter")).eval()
    how = "peft"
except ImportError:
    cfg = json.load(open(os.path.join(rt, "adapter", "adapter_config.json")))
    ad = load_file(os.path.join(rt, "adapter", "adapter_model.safetensors"))
    params = dict(m.named_parameters())
    scale = cfg["lora_alpha"] / cfg["r"]
    with torch.no_grad():
        for k, a in ad.items():
            if ".lora_A." not in k:
                continue
            b = ad[k.replace(".lora_A.", ".lora_B.")]
            params[k.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")] += scale * (b @ a)
    how = "W + scale * B @ A (peft is not installed)"
with torch.no_grad():
    got = m(ids).logits[0]
err = (got - want).abs().max().item()
print(f"adapter via {how}: max |logit - hubcap --lora| = {err:.2e}")
ok &= err < 1e-3
print("roundtrip:", "ok" if ok else "FAILED")
sys.exit(0 if ok else 1)
