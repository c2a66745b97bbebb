#!/usr/bin/env bash
# Writes checkpoints and a LoRA adapter with hubcap, then checks that transformers (and peft)
# read them with the same numbers: bash bench/hf_roundtrip.sh [RT_DIR]
# hubcap's part runs anywhere; the Python part needs torch, transformers and (optionally) peft.
set -euo pipefail
cd "$(dirname "$0")/.."
H=${BUILD:-build}/hubcap
RT=${1:-bench/out/roundtrip}
FX=tests/fixtures/models
rm -rf "$RT" && mkdir -p "$RT"
"$H" save -m $FX/llama2 "$RT/llama2" >/dev/null
"$H" save -m $FX/qwen2 "$RT/qwen2_f32" --dtype f32 >/dev/null
"$H" save -m $FX/gemma2 "$RT/gemma2_sharded" --max-shard-size 200000 >/dev/null
"$H" finetune --data tests/data/stories.txt --out "$RT/adapter" --seq-len 64 --steps 6 --lr 1e-2 --lora-rank 4 \
    --lora-targets all-linear >/dev/null
"$H" logits --lora "$RT/adapter" --ids "1 403 407 261 109 29" --out "$RT/lora_logits.safetensors"
if python3 -c "import torch, transformers" 2>/dev/null; then
    python3 bench/hf_roundtrip.py "$RT" $FX models/stories260K
else
    echo "hubcap's files are in $RT; run bench/hf_roundtrip.py where torch and transformers are installed"
fi
