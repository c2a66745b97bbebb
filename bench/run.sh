#!/usr/bin/env bash
# hubcap's benchmarks. Run from the repository root after `make`:
#   bash bench/run.sh            # all
#   bash bench/run.sh info json  # some
# The 1B-shaped checkpoint (2.5 GB, random bf16 weights, Llama-3.2-1B shapes) is written to
# bench/out/llama1b once by bench_make_checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
OUT=bench/out
CK=$OUT/llama1b
FIXTURES=${HUBCAP_FIXTURES:-../shared/fixtures}
mkdir -p "$OUT"
which=${*:-info json tokenizer sampler generate}

ensure_checkpoint() {
    [ -f "$CK/model.safetensors" ] || "$BUILD/bench_make_checkpoint" "$CK" >/dev/null
}

for b in $which; do
    case $b in
    info)
        # Opening is O(header): hubcap info on the 2.5 GB checkpoint, from the page cache.
        ensure_checkpoint
        cat "$CK/model.safetensors" >/dev/null
        best=999999999
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            s=$(date +%s%N)
            "$BUILD/hubcap" info -m "$CK" >/dev/null
            e=$(date +%s%N)
            t=$(( (e - s) / 1000 ))
            if [ "$t" -lt "$best" ]; then best=$t; fi
        done
        echo "info: hubcap info -m $CK: best of 10 = $((best / 1000)).$(printf %03d $((best % 1000))) ms"
        ;;
    json)
        # The JSON parser on the 33 MB Gemma 3 tokenizer.json.
        src=$FIXTURES/tokenizers/gemma3/tokenizer.json.xz
        if [ -f "$src" ]; then
            [ -f "$OUT/gemma3-tokenizer.json" ] || xz -dc "$src" >"$OUT/gemma3-tokenizer.json"
            "$BUILD/bench_json" "$OUT/gemma3-tokenizer.json" 5
        else
            echo "json: skipped ($src not found)"
        fi
        ;;
    tokenizer)
        # Load time and encode throughput (1 MB of mixed text, one core) of each tokenizer.
        src=$FIXTURES/tokenizers/gemma3/tokenizer.json.xz
        if [ -f "$src" ]; then
            mkdir -p "$OUT/gemma3-tok"
            [ -f "$OUT/gemma3-tok/tokenizer.json" ] || xz -dc "$src" >"$OUT/gemma3-tok/tokenizer.json"
            cp "$FIXTURES/tokenizers/gemma3/tokenizer_config.json" "$OUT/gemma3-tok/"
            "$BUILD/bench_tokenizer" "$OUT/gemma3-tok"
        fi
        [ -d "$FIXTURES/tokenizers/llama3" ] && "$BUILD/bench_tokenizer" "$FIXTURES/tokenizers/llama3"
        "$BUILD/bench_tokenizer" tests/fixtures/tokenizers/qwen3
        "$BUILD/bench_tokenizer" tests/fixtures/tokenizers/mistral7b
        ;;
    sampler)
        # Per-token sampler cost on a 262k vocabulary (includes copying the logits).
        "$BUILD/bench_sampler"
        ;;
    generate)
        # Peak RSS, load-to-first-token, prompt and decode speed: 1B-shaped bf16 model,
        # a 64-token prompt, 256 new tokens, greedy.
        ensure_checkpoint
        ids=$(seq 1000 1063 | tr '\n' ' ')
        /usr/bin/time -f "generate: peak RSS %M KB, wall %e s" "$BUILD/hubcap" generate -m "$CK" --ids "$ids" \
            --max-new-tokens "${NEW_TOKENS:-256}" --ignore-eos --timings >/dev/null
        ;;
    *) echo "unknown benchmark '$b' (info, json, tokenizer, sampler, generate)" >&2; exit 2 ;;
    esac
done
