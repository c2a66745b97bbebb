#!/usr/bin/env python3
"""peft loads each adapter hubcap saved (OUT/<fixture>-<n>) on its fixture and gives the
logits hubcap computed with it (OUT/<fixture>-<n>/logits.safetensors).
usage: python3 bench/hf_lora_check.py OUT FIXTURES_DIR"""
import json, os, sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
import transformers
from transformers import AutoModelForCausalLM

out, fx = sys.argv[1], sys.argv[2]
ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
ok = True
for d in sorted(os.listdir(out)):
    a = os.path.join(out, d)
    base = os.path.join(fx, d.rsplit("-", 1)[0])
    targets = json.load(open(os.path.join(a, "adapter_config.json")))["target_modules"]
    arch = json.load(open(os.path.join(base, "config.json")))["architectures"][0]
    cls = getattr(transformers, arch) if arch.endswith("ForConditionalGeneration") else AutoModelForCausalLM  # multimodal
    m = cls.from_pretrained(base, dtype=torch.float32, attn_implementation="eager").eval()
    m = PeftModel.from_pretrained(m, a).eval()
    want = load_file(os.path.join(a, "logits.safetensors"))["logits"].reshape(ids.shape[1], -1)
    with torch.no_grad():
        got = m(ids).logits[0]
    err = (got - want).abs().max().item()
    print(f"{d} {targets}: peft vs hubcap --lora, max |logit difference| = {err:.2e}")
    ok &= err < 1e-3
print("lora check:", "ok" if ok else "FAILED")
sys.exit(0 if ok else 1)
