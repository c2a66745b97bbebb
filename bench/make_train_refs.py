#!/usr/bin/env python3
"""transformers' loss, gradients and one AdamW step for fixtures that have none yet (or those
named), made as ../shared/tools/gen_fixtures.py makes train_reference.safetensors (same batch
seed, f32, eager attention), with every dropout off, modules' and functional ones (GPT-2 has 0.1
by default, Seed-OSS 0.1 on its residual branches, which would make the reference random): python3 bench/make_train_refs.py FIXTURES_DIR OUT_DIR [NAME ...]
OUT_DIR/<name>/train_reference.safetensors is written for each."""
import os, sys

import torch
import transformers
from safetensors.torch import save_file

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
fx, out = sys.argv[1], sys.argv[2]
names = sys.argv[3:] or sorted(os.listdir(fx))
for name in names:
    d = os.path.join(fx, name)
    if not os.path.isdir(d) or (not sys.argv[3:] and os.path.exists(os.path.join(d, "train_reference.safetensors"))):
        continue
    seed = sum(map(ord, name))
    m = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").train()
    for mod in m.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
        for k, v in list(vars(mod).items()):  # functional dropouts (Seed-OSS's residual_dropout)
            if "dropout" in k and isinstance(v, float):
                setattr(mod, k, 0.0)
    V = m.config.vocab_size
    g = torch.Generator().manual_seed(seed + 99)
    ids = torch.randint(3, V, (2, 16), generator=g)
    o = m(input_ids=ids, labels=ids)
    o.loss.backward()
    t = {"input_ids": ids, "loss": o.loss.detach().reshape(1)}
    for n, p in m.named_parameters():
        if p.grad is not None:
            t["grad." + n] = p.grad.detach().float().contiguous()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    opt.step()
    for n, p in m.named_parameters():
        t["adamw1." + n] = p.detach().float().contiguous()
    os.makedirs(os.path.join(out, name), exist_ok=True)
    save_file(t, os.path.join(out, name, "train_reference.safetensors"))
    print(name, "loss", float(o.loss), "tensors", len(t))
