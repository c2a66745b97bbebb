#!/usr/bin/env bash
# The CLI's behaviour on good and bad input: exit codes (0 ok, 1 error, 2 usage), one-line
# errors that name the file and the problem, and outputs equal to the HF references.
set -u
HUBCAP=$1
SRC=$2
FIX=$SRC/tests/fixtures/models
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
pass=0
fail=0

# expect CODE PATTERN -- command...: exit code CODE, and (for errors) one stderr line matching PATTERN
expect() {
    local want=$1 pattern=$2
    shift 3
    "$@" >"$TMP/out" 2>"$TMP/err"
    local rc=$?
    local lines
    lines=$(wc -l <"$TMP/err")
    if [ "$rc" != "$want" ]; then
        echo "FAIL: exit $rc, wanted $want: $*"; sed 's/^/  stderr: /' "$TMP/err"; fail=$((fail + 1)); return
    fi
    if [ -n "$pattern" ] && ! grep -qE -- "$pattern" "$TMP/err"; then
        echo "FAIL: stderr lacks /$pattern/: $*"; sed 's/^/  stderr: /' "$TMP/err"; fail=$((fail + 1)); return
    fi
    if [ "$want" = 1 ] && [ "$lines" != 1 ]; then
        echo "FAIL: $lines stderr lines, wanted 1: $*"; fail=$((fail + 1)); return
    fi
    pass=$((pass + 1))
}

# Usage errors exit 2.
expect 2 "unknown command" -- "$HUBCAP" frobnicate
expect 2 "usage: hubcap <command>" -- "$HUBCAP"
expect 2 "unknown option '--bogus'" -- "$HUBCAP" info --bogus
expect 2 "needs a value" -- "$HUBCAP" info -m
expect 2 "--ids" -- "$HUBCAP" logits --out "$TMP/x.safetensors"
expect 2 "not a list of integers" -- "$HUBCAP" generate --ids "1 two 3"
expect 2 "empty" -- "$HUBCAP" generate --ids " , "
expect 2 "--max-new-tokens" -- "$HUBCAP" generate --ids 1 --max-new-tokens -3
expect 2 "--device" -- "$HUBCAP" generate --ids 1 --device tpu
expect 2 "--compute-dtype must be f32, bf16 or f16" -- "$HUBCAP" generate --ids 1 --compute-dtype f64
expect 2 "--dtype must be f32, bf16 or f16" -- "$HUBCAP" generate --ids 1 --dtype half
expect 1 "F16 on the CPU: use F32 or BF16" -- "$HUBCAP" generate --ids 1 --dtype f16 --device cpu
expect 2 "HUBCAP_DEVICE='tpu'" -- env HUBCAP_DEVICE=tpu "$HUBCAP" generate --ids 1
expect 0 "" -- "$HUBCAP" generate --ids 1 --max-new-tokens 4 --compute-dtype bf16
expect 0 "" -- "$HUBCAP" info --help
expect 0 "" -- "$HUBCAP" generate --help

# Good runs.
expect 0 "" -- "$HUBCAP" info
grep -q "LlamaForCausalLM" "$TMP/out" && pass=$((pass + 1)) || { echo "FAIL: info names the architecture"; fail=$((fail + 1)); }
expect 0 "" -- "$HUBCAP" info -m "$FIX/llama_sharded" --no-mmap
grep -q "shards        8" "$TMP/out" && pass=$((pass + 1)) || { echo "FAIL: info counts 8 shards"; fail=$((fail + 1)); }
# stories260K from BOS: HF's greedy tokens (reference.safetensors greedy_from_bos, first 20).
expect 0 "" -- "$HUBCAP" generate --ids 1 --max-new-tokens 20 --temperature 0 --output-ids --ignore-eos
want="403 407 261 378 432 383 286 261 376 298 315 421 395 317 426 338 401 396 267 337"
[ "$(cat "$TMP/out")" = "$want" ] && pass=$((pass + 1)) || { echo "FAIL: greedy ids: $(cat "$TMP/out")"; fail=$((fail + 1)); }
expect 0 "" -- "$HUBCAP" generate --ids "1,403" --max-new-tokens 3 --output-ids --ignore-eos
[ "$(cat "$TMP/out")" = "407 261 378" ] && pass=$((pass + 1)) || { echo "FAIL: comma ids: $(cat "$TMP/out")"; fail=$((fail + 1)); }
expect 0 "" -- "$HUBCAP" logits -m "$FIX/gpt2" --ids "1 2 3 4" --out "$TMP/l.safetensors"
"$HUBCAP" info -m "$TMP/l.safetensors" --tensors | grep -q "^logits F32 \[4, 320\]" && pass=$((pass + 1)) ||
    { echo "FAIL: logits file shape"; fail=$((fail + 1)); }

# Bad model input exits 1 with one line naming the file.
expect 1 "no-such-dir: no such file" -- "$HUBCAP" info -m "$TMP/no-such-dir"
mkdir -p "$TMP/bert"
echo '{"model_type": "bert", "hidden_size": 8}' >"$TMP/bert/config.json"
expect 1 "unsupported architecture 'bert' \(supported: llama" -- "$HUBCAP" info -m "$TMP/bert"
mkdir -p "$TMP/badjson"
printf '{"model_type": "llama",\n "hidden_size": 64,,\n}' >"$TMP/badjson/config.json"
expect 1 "config.json:2:20:" -- "$HUBCAP" info -m "$TMP/badjson"
mkdir -p "$TMP/trunc"
cp "$FIX/llama2/config.json" "$TMP/trunc/"
head -c 5000 "$FIX/llama2/model.safetensors" >"$TMP/trunc/model.safetensors"
expect 1 "trunc/model.safetensors: .*(past|truncated)" -- "$HUBCAP" info -m "$TMP/trunc"
printf '\xff\xff\xff\xff\xff\x00\x00\x00{}' >"$TMP/trunc/model.safetensors"
expect 1 "model.safetensors: header length" -- "$HUBCAP" info -m "$TMP/trunc"
# A missing tensor is named.
mkdir -p "$TMP/missing"
cp "$FIX/llama2/config.json" "$TMP/missing/"
sed 's/"num_hidden_layers": 2/"num_hidden_layers": 3/' "$FIX/llama2/config.json" >"$TMP/missing/config.json"
cp "$FIX/llama2/model.safetensors" "$TMP/missing/"
expect 1 "missing tensor 'model.layers.2.input_layernorm.weight'" -- "$HUBCAP" logits -m "$TMP/missing" --ids 1 --out "$TMP/y.safetensors"
[ ! -e "$TMP/y.safetensors" ] && pass=$((pass + 1)) || { echo "FAIL: a failed run wrote its output"; fail=$((fail + 1)); }
# A shape that disagrees with config.json.
sed 's/"intermediate_size": 160/"intermediate_size": 128/' "$FIX/llama2/config.json" >"$TMP/missing/config.json"
expect 1 "has shape \[160, 64\], but config.json implies \[128, 64\]" -- "$HUBCAP" generate -m "$TMP/missing" --ids 1
# Unsupported features are refused at load, by name.
sed 's/"rope_scaling": null/"rope_scaling": {"rope_type": "mrope", "factor": 2}/' "$FIX/llama2/config.json" >"$TMP/missing/config.json"
expect 1 "rope_type='mrope'" -- "$HUBCAP" generate -m "$TMP/missing" --ids 1
sed 's/"hidden_act": "silu"/"hidden_act": "mish"/' "$FIX/llama2/config.json" >"$TMP/missing/config.json"
expect 1 "hidden_act='mish'" -- "$HUBCAP" generate -m "$TMP/missing" --ids 1
# Bad ids and contexts.
expect 1 "token id 320 .* outside the vocabulary" -- "$HUBCAP" logits -m "$FIX/llama2" --ids "1 320" --out "$TMP/z.safetensors"
expect 1 "token id -1" -- "$HUBCAP" generate -m "$FIX/llama2" --ids "-1"
expect 1 "exceeds the context of 512" -- "$HUBCAP" generate --ids 1 --max-new-tokens 600
expect 1 "exceeds the model's 128 learned positions" -- "$HUBCAP" generate -m "$FIX/gpt2" --ids 1 --max-new-tokens 10 --ctx 200
# Without a usable GPU (or without the CUDA backend in this build) --device cuda is one clear
# line and exit 1; --device auto falls back to the CPU.
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    echo "skipped: --device cuda failure checks (this machine has a GPU)"
else
    expect 1 "device cuda: .*(no CUDA backend|no usable CUDA GPU|no CUDA GPU found)" -- "$HUBCAP" generate --ids 1 --device cuda
    expect 1 "device cuda" -- env HUBCAP_DEVICE=cuda "$HUBCAP" generate --ids 1
fi
expect 0 "" -- "$HUBCAP" generate --ids 1 --max-new-tokens 2 --device auto


# Tokenizers: a model folder or a folder of tokenizer files only.
TOK=$SRC/tests/fixtures/tokenizers
check_out() { # check_out WANT LABEL: stdout equals WANT
    [ "$(cat "$TMP/out")" = "$1" ] && pass=$((pass + 1)) || { echo "FAIL: $2: got '$(cat "$TMP/out")'"; fail=$((fail + 1)); }
}
expect 0 "" -- "$HUBCAP" tokenize -m "$TOK/mistral7b" --text "Hello world"
check_out "1 22557 1526" "tokenize with specials"
expect 0 "" -- "$HUBCAP" tokenize -m "$TOK/mistral7b" --text "Hello world" --no-special
check_out "22557 1526" "tokenize --no-special"
printf 'café naïve résumé' >"$TMP/text.txt"
expect 0 "" -- "$HUBCAP" tokenize -m "$TOK/qwen3" --file "$TMP/text.txt"
check_out "924 58858 94880 586 9333 1242 963" "tokenize --file"
"$HUBCAP" tokenize -m "$TOK/qwen3" <"$TMP/text.txt" >"$TMP/out" 2>&1
check_out "924 58858 94880 586 9333 1242 963" "tokenize from stdin"
expect 0 "" -- "$HUBCAP" tokenize -m "$TOK/qwen3" --text "Hello world" --json
check_out '{"ids":[9707,1879],"tokens":["Hello","Ġworld"]}' "tokenize --json"
expect 0 "" -- "$HUBCAP" detokenize -m "$TOK/mistral7b" --ids "1 22557 1526"
check_out "<s> Hello world" "detokenize"
expect 0 "" -- "$HUBCAP" detokenize -m "$TOK/mistral7b" --ids "1,22557,1526" --skip-special
check_out "Hello world" "detokenize --skip-special"
expect 0 "" -- "$HUBCAP" tokenize --text "Once upon a time"
check_out "1 403 407 261 378" "tokenize with the bundled model"
expect 1 "not in the vocabulary" -- "$HUBCAP" detokenize -m "$TOK/qwen3" --ids "1 99999999"
expect 1 "no tokenizer.json or tokenizer.model" -- "$HUBCAP" tokenize -m "$FIX/llama2" --text hi
expect 2 "cannot read" -- "$HUBCAP" tokenize --file "$TMP/none.txt"
expect 2 "--ids is required" -- "$HUBCAP" detokenize
mkdir -p "$TMP/badtok"
printf '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "normalizer": {"type": "Nope"}}' >"$TMP/badtok/tokenizer.json"
expect 1 "tokenizer.json: unsupported normalizer 'Nope'" -- "$HUBCAP" tokenize -m "$TMP/badtok" --text hi
printf '\xff\xfe bad' >"$TMP/bad.txt"
expect 1 "bad.txt:1:1: invalid UTF-8" -- "$HUBCAP" tokenize -m "$TOK/qwen3" --file "$TMP/bad.txt"

# generate: text in, text out (the README's first command), batches, flags.
expect 0 "" -- "$HUBCAP" generate "Once upon a time" --max-new-tokens 40
check_out "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball." "generate text"
grep -qE "prompt 5 tokens .*new 40 tokens" "$TMP/err" && pass=$((pass + 1)) || { echo "FAIL: generate summary line"; fail=$((fail + 1)); }
printf 'Once upon a time\nLily and Tom went to the park. They saw a big\nThe little dog was sad because\n' >"$TMP/batch.txt"
expect 0 "" -- "$HUBCAP" generate --batch-file "$TMP/batch.txt" --max-new-tokens 12 --output-ids --temperature 0
cp "$TMP/out" "$TMP/batch_ids"
ok=1
i=0
while IFS= read -r line; do
    i=$((i + 1))
    "$HUBCAP" generate "$line" --max-new-tokens 12 --output-ids --temperature 0 >"$TMP/one" 2>/dev/null
    [ "$(cat "$TMP/one")" = "$(sed -n "${i}p" "$TMP/batch_ids")" ] || ok=0
done <"$TMP/batch.txt"
[ "$(wc -l <"$TMP/batch_ids")" = 3 ] && [ $ok = 1 ] && pass=$((pass + 1)) || { echo "FAIL: batch ids equal single runs"; fail=$((fail + 1)); }
expect 0 "" -- "$HUBCAP" generate "Once upon a time" --max-new-tokens 30 --stop "girl"
check_out "Once upon a time, there was a little " "generate --stop"
expect 0 "" -- "$HUBCAP" generate "Once upon a time" --max-new-tokens 20 --temperature 0.8 --top-k 40 --top-p 0.9 --min-p 0.05 --repeat-penalty 1.1 --seed 7
cp "$TMP/out" "$TMP/s1"
expect 0 "" -- "$HUBCAP" generate "Once upon a time" --max-new-tokens 20 --temperature 0.8 --top-k 40 --top-p 0.9 --min-p 0.05 --repeat-penalty 1.1 --seed 7
cmp -s "$TMP/out" "$TMP/s1" && pass=$((pass + 1)) || { echo "FAIL: same seed, same text"; fail=$((fail + 1)); }
expect 2 "--temperature" -- "$HUBCAP" generate "hi" --temperature -1
expect 2 "--temperature must be a number" -- "$HUBCAP" generate "hi" --temperature inf
expect 2 "--top-p must be in" -- "$HUBCAP" generate "hi" --top-p nan
expect 2 "--top-p" -- "$HUBCAP" generate "hi" --top-p 0
expect 2 "--top-p" -- "$HUBCAP" generate "hi" --top-p 1.5
expect 2 "--min-p" -- "$HUBCAP" generate "hi" --min-p 1
expect 2 "--top-k" -- "$HUBCAP" generate "hi" --top-k -2
expect 2 "--seed" -- "$HUBCAP" generate "hi" --seed abc
expect 2 "empty" -- "$HUBCAP" generate ""
expect 2 "cannot read" -- "$HUBCAP" generate --batch-file "$TMP/nothing.txt"
expect 2 "cannot read" -- "$HUBCAP" generate --file "$TMP/nothing.txt"
expect 2 "only one of" -- "$HUBCAP" generate "hi" --ids 1
expect 1 "text prompts need a tokenizer" -- "$HUBCAP" generate -m "$FIX/llama2" "hi"

# template and chat
CT=${HUBCAP_FIXTURES:-$SRC/../shared/fixtures}/chat_templates
printf '[{"role": "user", "content": "Hello!"}]' >"$TMP/msgs.json"
expect 0 "" -- "$HUBCAP" template -m "$TOK/qwen3" --messages "$TMP/msgs.json" --add-generation-prompt
printf '<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n' >"$TMP/want"
cmp -s "$TMP/out" "$TMP/want" && pass=$((pass + 1)) || { echo "FAIL: template render: $(cat "$TMP/out")"; fail=$((fail + 1)); }
expect 0 "" -- "$HUBCAP" template --template "$SRC/tests/fixtures/chat/story.jinja" --messages "$TMP/msgs.json" --bos-token "<s>"
check_out "<s>Hello!" "template --template with --bos-token"
cat "$TMP/msgs.json" | "$HUBCAP" template --template "$SRC/tests/fixtures/chat/story.jinja" --messages - >"$TMP/out" 2>&1
check_out "Hello!" "template --messages -"
printf '[{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]' >"$TMP/sys.json"
if [ -f "$CT/google-gemma-2-2b-it.jinja" ]; then
    expect 1 "System role not supported" -- "$HUBCAP" template --template "$CT/google-gemma-2-2b-it.jinja" --messages "$TMP/sys.json"
else
    echo "skipped: $CT not found"
fi
printf '{%% for m in messages %%}\n{{ m.content }\n{%% endfor %%}' >"$TMP/bad.jinja"
expect 1 "bad.jinja:2:" -- "$HUBCAP" template --template "$TMP/bad.jinja" --messages "$TMP/msgs.json"
printf '{{ x | nosuch }}' >"$TMP/bad2.jinja"
expect 1 "no filter named 'nosuch'" -- "$HUBCAP" template --template "$TMP/bad2.jinja" --messages "$TMP/msgs.json"
printf '{"role": "user"}' >"$TMP/notarray.json"
expect 1 "JSON array" -- "$HUBCAP" template --template "$TMP/bad2.jinja" --messages "$TMP/notarray.json"
printf '[{"content": "hi"}]' >"$TMP/norole.json"
expect 1 "message 1 has no \"role\"" -- "$HUBCAP" template --template "$SRC/tests/fixtures/chat/story.jinja" --messages "$TMP/norole.json"
expect 1 "has no chat template; pass one with --template" -- "$HUBCAP" template --messages "$TMP/msgs.json"
expect 2 "--messages is required" -- "$HUBCAP" template -m "$TOK/qwen3"
printf 'Once upon a time\n/reset\nOnce upon a time\n' | "$HUBCAP" chat --template "$SRC/tests/fixtures/chat/story.jinja" --max-new-tokens 12 --temperature 0 >"$TMP/out" 2>"$TMP/err"
[ "$(sed -n 1p "$TMP/out")" = ", there was a little girl named Lily. She" ] && [ "$(sed -n 1p "$TMP/out")" = "$(sed -n 2p "$TMP/out")" ] &&
    pass=$((pass + 1)) || { echo "FAIL: scripted chat: $(cat "$TMP/out")"; fail=$((fail + 1)); }
expect 1 "has no chat template; pass one with --template" -- "$HUBCAP" chat

# input text must be UTF-8 (Python's would be): one line naming where, exit 1
expect 1 "the prompt:1:4: invalid UTF-8" -- "$HUBCAP" generate "$(printf 'hi \377 there')"
printf 'a\nb\303\n' >"$TMP/bad.txt"
expect 1 "bad.txt:2:2: invalid UTF-8" -- "$HUBCAP" generate --file "$TMP/bad.txt"
expect 1 "bad.txt:2:2: invalid UTF-8" -- "$HUBCAP" finetune --data "$TMP/bad.txt" --out "$TMP/ft-bad" --steps 1
printf 'ok\000hidden\n' >"$TMP/nul.txt"
expect 1 "nul.txt:1:3: a NUL byte in text" -- "$HUBCAP" finetune --data "$TMP/nul.txt" --out "$TMP/ft-bad" --steps 1
expect 1 "--text:1:1: invalid UTF-8" -- "$HUBCAP" tokenize --text "$(printf '\355\240\200')"
[ ! -e "$TMP/ft-bad" ] && pass=$((pass + 1)) || { echo "FAIL: a refused finetune wrote its output"; fail=$((fail + 1)); }

# tokenizer_config.json and generation_config.json values of the wrong type or out of range: one
# line naming the file (they used to read as absent: no template, no BOS, default sampling).
B="$TMP/badcfg"
for bad in '"chat_template": 5' '"bos_token": {"content": 5}' '"add_bos_token": "yes"'; do
    rm -rf "$B"; cp -r "$SRC/models/stories260K" "$B"
    python3 -c 'import json,sys; p=sys.argv[1]; d=json.load(open(p)); d.update(json.loads("{"+sys.argv[2]+"}")); json.dump(d, open(p,"w"))' "$B/tokenizer_config.json" "$bad"
    expect 1 "tokenizer_config.json: '(chat_template|bos_token|add_bos_token)' must be" -- "$HUBCAP" generate -m "$B" "Once"
done
rm -rf "$B"; cp -r "$SRC/models/stories260K" "$B"
printf '{"do_sample": true, "temperature": -1}' >"$B/generation_config.json"
expect 1 "generation_config.json: temperature must be >= 0" -- "$HUBCAP" generate -m "$B" "Once"

# bench --json: one JSON object with the issue's keys, the model path escaped.
cp -r "$SRC/models/stories260K" "$TMP/a \"quoted\" model"
"$HUBCAP" bench -m "$TMP/a \"quoted\" model" --prompt 8 --gen 4 --json >"$TMP/out" 2>"$TMP/err"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["model"].endswith("a \"quoted\" model"); assert all(d[k] > 0 for k in ("prompt_tok_s","decode_tok_s","peak_rss_bytes","bytes_per_token","kv_bytes_per_token"))' "$TMP/out" &&
    pass=$((pass + 1)) || { echo "FAIL: bench --json: $(cat "$TMP/out")"; fail=$((fail + 1)); }

# bench reads a bf16 checkpoint into RAM and repacks it where the AVX-512 kernels run; --no-repack keeps the stored layout.
for flag in "" --no-repack; do
    "$HUBCAP" bench -m "$SRC/tests/fixtures/models/llama3_2" --prompt 8 --gen 2 --json $flag >"$TMP/out" 2>"$TMP/err"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["repacked"] == (d["kernels"] == "avx512" and sys.argv[2] == ""), d' "$TMP/out" "$flag" &&
        pass=$((pass + 1)) || { echo "FAIL: bench repacked ($flag): $(cat "$TMP/out" "$TMP/err")"; fail=$((fail + 1)); }
done

# save: usage errors, then a bf16 copy of stories260K that generates the same greedy story.
expect 2 "give the output folder" -- "$HUBCAP" save
expect 2 "--dtype must be bf16, f16 or f32" -- "$HUBCAP" save "$TMP/s1" --dtype int8
expect 2 "one output folder" -- "$HUBCAP" save "$TMP/s1" "$TMP/s2"
expect 0 "" -- "$HUBCAP" save "$TMP/saved/stories"
expect 1 "not an empty folder" -- "$HUBCAP" save "$TMP/saved/stories"
if cmp -s <("$HUBCAP" generate --ids 1 --max-new-tokens 20 --device cpu) \
          <("$HUBCAP" generate -m "$TMP/saved/stories" --ids 1 --max-new-tokens 20 --device cpu); then
    pass=$((pass + 1))
else
    echo "FAIL: the saved copy generates another story"; fail=$((fail + 1))
fi

# grad: the reference batch of gemma2 gives transformers' loss; bad input is one line.
G=$FIX/gemma2
expect 0 "" -- "$HUBCAP" grad -m "$G" --batch "$G/train_reference.safetensors" --out "$TMP/g.safetensors"
expect 0 "loss 11.6155" -- sh -c "'$HUBCAP' grad -m '$G' --batch '$G/train_reference.safetensors' --out '$TMP/g2.safetensors' 1>&2"
expect 2 "--batch is required" -- "$HUBCAP" grad --out "$TMP/x"
expect 1 "needs a tensor 'input_ids'" -- "$HUBCAP" grad -m "$G" --batch "$TMP/g.safetensors" --out "$TMP/x"

# LoRA: a short adapter run, applied at inference and merged by save.
expect 0 "" -- "$HUBCAP" finetune --data "$SRC/tests/data/stories.txt" --out "$TMP/adapter" --seq-len 64 --steps 3 --lora-rank 4 --device cpu
expect 0 "" -- "$HUBCAP" generate --lora "$TMP/adapter" --ids 1 --max-new-tokens 5
expect 0 "" -- "$HUBCAP" save "$TMP/merged" --merge-lora "$TMP/adapter"
if cmp -s <("$HUBCAP" generate --lora "$TMP/adapter" --ids 1 --max-new-tokens 12 --output-ids --device cpu) \
          <("$HUBCAP" generate -m "$TMP/merged" --ids 1 --max-new-tokens 12 --output-ids --device cpu); then
    pass=$((pass + 1))
else
    echo "FAIL: the merged checkpoint generates other ids than the adapter"; fail=$((fail + 1))
fi
expect 1 "adapter_config.json" -- "$HUBCAP" generate --lora "$TMP/nothing-here" --ids 1
# a lying adapter_config.json: a rank past any int64, a rank of 4097, an infinite alpha
mkdir -p "$TMP/badlora" && cp "$TMP/adapter/adapter_model.safetensors" "$TMP/badlora/"
printf '{"peft_type":"LORA","r":6.7e27,"lora_alpha":8,"target_modules":["q_proj"]}' > "$TMP/badlora/adapter_config.json"
expect 1 "adapter_config.json: r = 6.7e.27 .an integer from 1 to 4096" -- "$HUBCAP" generate --lora "$TMP/badlora" --ids 1
printf '{"peft_type":"LORA","r":4097,"lora_alpha":8,"target_modules":["q_proj"]}' > "$TMP/badlora/adapter_config.json"
expect 1 "r = 4097" -- "$HUBCAP" generate --lora "$TMP/badlora" --ids 1
printf '{"peft_type":"LORA","r":4,"lora_alpha":1e999,"target_modules":["q_proj"]}' > "$TMP/badlora/adapter_config.json"
expect 1 "" -- "$HUBCAP" generate --lora "$TMP/badlora" --ids 1
expect 2 "--lora-rank must be" -- "$HUBCAP" finetune --data x --out y --lora-rank 0
expect 1 "no LoRA targets given" -- "$HUBCAP" finetune --data "$SRC/tests/data/stories.txt" --out "$TMP/lt" --lora-rank 4 --lora-targets ""
expect 1 "llama has q_proj" -- "$HUBCAP" finetune --data "$SRC/tests/data/stories.txt" --out "$TMP/lt" --lora-rank 4 --lora-targets qkv_proj

# --quant-cache: the first load writes the quantized weights beside the snapshot, the next reads
# them (the same logits, the file untouched); a flipped byte is caught (the checksum) and the
# file rewritten, never computed with.
Q=$TMP/qcache
cp -r "$SRC/models/stories260K" "$Q"
qlogits() { "$HUBCAP" logits -m "$Q" --device cpu --quantize q4_k --ids "1 403 407 261" --out "$TMP/$1.safetensors" "${@:2}"; }
expect 0 "" -- qlogits q0
expect 0 "" -- qlogits q1 --quant-cache
QF=$(ls "$Q"/hubcap-q4_k-*.qcache 2>/dev/null | head -n 1)
[ -n "$QF" ] && pass=$((pass + 1)) || { echo "FAIL: --quant-cache wrote no hubcap-q4_k-*.qcache"; fail=$((fail + 1)); }
if [ -n "$QF" ]; then
    touch -d '2001-01-01' "$QF"
    expect 0 "" -- qlogits q2 --quant-cache
    [ "$(stat -c %Y "$QF")" = "$(date -d 2001-01-01 +%s)" ] && pass=$((pass + 1)) || { echo "FAIL: the cache was rewritten, not read"; fail=$((fail + 1)); }
    printf 'X' | dd of="$QF" bs=1 seek=300 conv=notrunc 2>/dev/null
    expect 0 "" -- qlogits q3 --quant-cache
    [ "$(stat -c %Y "$QF")" != "$(date -d 2001-01-01 +%s)" ] && pass=$((pass + 1)) || { echo "FAIL: a corrupt cache was not rewritten"; fail=$((fail + 1)); }
    for k in 1 2 3; do
        cmp -s "$TMP/q0.safetensors" "$TMP/q$k.safetensors" && pass=$((pass + 1)) || { echo "FAIL: cached run $k gives other logits"; fail=$((fail + 1)); }
    done
fi

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
