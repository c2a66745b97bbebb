#!/usr/bin/env bash
# The CUDA checks and benchmarks, on a machine with an NVIDIA GPU, from the repository root:
#   bash bench/cuda_run.sh [tests] [bench] [hf] [train] [profile]
# BUILD names the folder holding the binaries (default build). Results go to $OUT (default
# bench/out/cuda): the op test's table, the conformance logs, bench JSON lines.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
OUT=${OUT:-bench/out/cuda}
CK=${CK_DIR:-bench/out}
mkdir -p "$OUT" "$CK"
export HUBCAP_SOURCE_DIR=$PWD
which=${*:-tests bench}
find_bin() { [ -x "$BUILD/$1" ] && echo "$BUILD/$1" || echo "$BUILD/tests/$1"; }
rc=0

for w in $which; do
    case $w in
    tests)
        nvidia-smi -L
        HUBCAP_TEST_VERBOSE=1 "$(find_bin test_cuda_ops)" >"$OUT/cuda_ops.txt" 2>&1 || rc=1
        tail -n 3 "$OUT/cuda_ops.txt"; grep FAIL "$OUT/cuda_ops.txt" | head -20
        for dt in f32 bf16; do
            HUBCAP_TEST_DEVICE=cuda HUBCAP_TEST_DTYPE=$dt "$(find_bin test_conformance)" >"$OUT/conformance_$dt.txt" 2>&1 || rc=1
            tail -n 1 "$OUT/conformance_$dt.txt"; grep FAIL "$OUT/conformance_$dt.txt" | head -10
        done
        for dt in f32 bf16; do
            HUBCAP_TEST_DEVICE=cuda HUBCAP_TEST_DTYPE=$dt "$(find_bin test_generate)" >"$OUT/generate_$dt.txt" 2>&1 || rc=1
        done
        for dt in f32 bf16; do
            HUBCAP_POISON_BUFFERS=1 HUBCAP_TEST_DEVICE=cuda HUBCAP_TEST_DTYPE=$dt "$(find_bin test_train)" >"$OUT/train_$dt.txt" 2>&1 || rc=1
            tail -n 1 "$OUT/train_$dt.txt"; grep FAIL "$OUT/train_$dt.txt" | head -10
        done
        for dt in f32 bf16; do tail -n 1 "$OUT/generate_$dt.txt"; grep FAIL "$OUT/generate_$dt.txt" | head -10; done
        HUBCAP_POISON_BUFFERS=1 HUBCAP_TEST_DEVICE=cuda HUBCAP_TEST_DTYPE=f32 "$(find_bin test_lora)" >"$OUT/lora.txt" 2>&1 || rc=1
        tail -n 1 "$OUT/lora.txt"; grep FAIL "$OUT/lora.txt" | head -10
        HUBCAP_DEVICE=cuda bash tests/test_cli.sh "$BUILD/hubcap" "$PWD" >"$OUT/cli.txt" 2>&1 || rc=1
        tail -n 1 "$OUT/cli.txt"; grep -A1 FAIL "$OUT/cli.txt" | head -10
        ;;
    bench)
        "$BUILD/bench_cuda_peak" | tee -a "$OUT/bench.jsonl"
        for size in 1b ${BENCH_8B:+8b}; do
            [ -f "$CK/llama$size/model.safetensors" ] || "$BUILD/bench_make_checkpoint" "$CK/llama$size" $size >/dev/null
            HUBCAP_CUDA_TIMING=1 "$BUILD/hubcap" bench -m "$CK/llama$size" --device cuda --prompt 2048 --gen 256 --json | tee -a "$OUT/bench.jsonl"
            if [ $size = 1b ]; then
                "$BUILD/hubcap" bench -m "$CK/llama$size" --device cuda --dtype f32 --prompt 512 --gen 64 --json | tee -a "$OUT/bench.jsonl"
                for q in q8_0 q4_0; do
                    "$BUILD/hubcap" bench -m "$CK/llama$size" --device cuda --quantize $q --prompt 512 --gen 128 --json | tee -a "$OUT/bench.jsonl"
                done
            fi
            for b in 8 32 64; do
                "$BUILD/hubcap" bench -m "$CK/llama$size" --device cuda --batch $b --prompt 128 --gen 128 --json | tee -a "$OUT/bench.jsonl"
            done
        done
        ;;
    profile)
        # Kernel times of a 2048-token prompt and of decoding (no graphs, so ncu sees each kernel).
        size=${PROFILE_SIZE:-1b}
        [ -f "$CK/llama$size/model.safetensors" ] || "$BUILD/bench_make_checkpoint" "$CK/llama$size" $size >/dev/null
        HUBCAP_CUDA_NO_GRAPHS=1 ncu --csv --metrics gpu__time_duration.sum "$BUILD/hubcap" bench -m "$CK/llama$size" \
            --device cuda --prompt 2048 --gen 0 >"$OUT/ncu_prompt.csv" 2>/dev/null
        python3 bench/ncu_summary.py "$OUT/ncu_prompt.csv" | head -12
        HUBCAP_CUDA_NO_GRAPHS=1 ncu --csv --metrics gpu__time_duration.sum "$BUILD/hubcap" bench -m "$CK/llama$size" \
            --device cuda --prompt 1 --gen 1 >"$OUT/ncu_decode.csv" 2>/dev/null
        python3 bench/ncu_summary.py "$OUT/ncu_decode.csv" | head -14
        ;;
    train)
        # Fine-tuning the 1B-shaped model (batch 8 x 512 tokens; LoRA r=8, then every weight), then
        # the same step with transformers. The checkpoint has no tokenizer: a folder beside it links
        # its weights and borrows the Mistral tokenizer (32k ids, inside the 128k vocabulary).
        [ -f "$CK/llama1b/model.safetensors" ] || "$BUILD/bench_make_checkpoint" "$CK/llama1b" 1b >/dev/null
        mkdir -p "$CK/llama1b-tok"
        ln -sf "$(cd "$CK/llama1b" && pwd)/model.safetensors" "$CK/llama1b-tok/model.safetensors"
        cp "$CK/llama1b/config.json" tests/fixtures/tokenizers/mistral7b/tokenizer*.json "$CK/llama1b-tok/"
        cat src/*/*.c src/*/*/*.c docs/*.md >"$OUT/train.txt"
        for lora in "--lora-rank 8" ""; do
            rm -rf "$OUT/ft"
            "$BUILD/hubcap" finetune -m "$CK/llama1b-tok" --device cuda --data "$OUT/train.txt" --out "$OUT/ft" \
                --seq-len 512 --batch-size 8 --steps 20 --lr 1e-4 --eval-fraction 0 $lora 2>&1 | tail -n 3 | tee -a "$OUT/train.txt.log"
        done
        python3 bench/hf_train_bench.py "$CK/llama1b" lora | tee -a "$OUT/bench.jsonl"
        python3 bench/hf_train_bench.py "$CK/llama1b" full | tee -a "$OUT/bench.jsonl"
        ;;
    hf)
        for size in 1b ${BENCH_8B:+8b}; do
            python3 bench/hf_bench.py "$CK/llama$size" | tee -a "$OUT/bench.jsonl"
        done
        ;;
    esac
done
exit $rc
