#!/usr/bin/env bash
# peft reads hubcap's LoRA adapters on every kind of projection (separate, Phi-3's fused
# qkv_proj / gate_up_proj, GPT-2's fused and transposed c_attn): test_lora saves its random
# adapters, `hubcap logits --lora --dtype f32` computes with each (f32 activations, as peft runs
# here), and peft must give the same logits.
#   bash bench/hf_lora_check.sh [OUT_DIR]      (BUILD=build by default; needs torch, transformers, peft)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD:-build}
OUT=${1:-bench/out/lora_check}
FX=tests/fixtures/models
rm -rf "$OUT" && mkdir -p "$OUT"
HUBCAP_LORA_EXPORT="$OUT" "$B/tests/test_lora" >/dev/null
for a in "$OUT"/*/; do
    a=${a%/}
    name=$(basename "$a")
    "$B/hubcap" logits -m "$FX/${name%-*}" --lora "$a" --dtype f32 --ids "1 5 9 13 17 21 25 29" --out "$a/logits.safetensors"
done
python3 bench/hf_lora_check.py "$OUT" "$FX"
