#!/usr/bin/env python3
"""The same runs as `hubcap bench --device cuda`, with HF transformers on the same card:
torch bf16, sdpa attention, static KV cache, greedy. Prints one JSON object per run.
usage: python3 bench/hf_bench.py CHECKPOINT_DIR [--compile]"""
import json, sys, time

import torch
from transformers import AutoModelForCausalLM

path = sys.argv[1]
compile_ = "--compile" in sys.argv
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
if compile_:
    model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
V = model.config.vocab_size


def timed(fn, reps=3):
    fn()  # warm-up
    best = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best.append(time.perf_counter() - t)
    return sorted(best)[len(best) // 2]


with torch.inference_mode():
    ids = torch.randint(0, V, (1, 2048), device="cuda")
    prompt_s = timed(lambda: model(ids, use_cache=False, logits_to_keep=1))
    for batch, plen, gen in ((1, 128, 256), (8, 128, 128), (32, 128, 128), (64, 128, 128)):
        x = torch.randint(0, V, (batch, plen), device="cuda")
        run = lambda n: model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                       cache_implementation="static", pad_token_id=0)
        t_prefill = timed(lambda: run(1), reps=2)
        t_all = timed(lambda: run(gen), reps=2)
        dec = batch * (gen - 1) / (t_all - t_prefill)
        print(json.dumps({"engine": "transformers", "compile": compile_, "model": path, "batch": batch,
                          "prompt_tok_s_2048": round(2048 / prompt_s, 1), "decode_tok_s": round(dec, 2),
                          "decode_tok_s_per_seq": round(dec / batch, 2)}), flush=True)
