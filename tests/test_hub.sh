#!/usr/bin/env bash
# hf:// against a real local Hub (tests/hub_server.py on 127.0.0.1): the cache layout
# huggingface_hub writes, no request for a cached snapshot, offline use, resume after a cut,
# checksum retry, concurrent downloads, gated and missing repos.
set -u
HUBCAP=$1
SRC=$2
TMP=$(mktemp -d)
python3 "$SRC/tests/hub_server.py" "$TMP/port" "$TMP/log" "$SRC" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$TMP"' EXIT
for _ in $(seq 100); do [ -f "$TMP/port" ] && break; sleep 0.05; done
[ -f "$TMP/port" ] || { echo "FAIL: the test Hub did not start"; exit 1; }
export HF_ENDPOINT="http://127.0.0.1:$(cat "$TMP/port")"
export HF_HUB_CACHE="$TMP/cache"
export HF_HOME="$TMP/home"
export HUBCAP_RETRY_DELAY_MS=10
unset HF_TOKEN HF_HUB_OFFLINE
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
requests() { wc -l <"$TMP/log" 2>/dev/null || echo 0; }

# Download, then the layout huggingface_hub writes.
snap=$("$HUBCAP" download hf://test/stories 2>"$TMP/err") || bad "download: $(cat "$TMP/err")"
commit=$(printf 'test/stories' | sha1sum | cut -d' ' -f1)
repo="$TMP/cache/models--test--stories"
[ "$snap" = "$repo/snapshots/$commit" ] && ok || bad "snapshot path $snap"
[ "$(cat "$repo/refs/main")" = "$commit" ] && ok || bad "refs/main"
link=$(readlink "$snap/config.json")
case $link in ../../blobs/*) ok ;; *) bad "config.json links to '$link'" ;; esac
cmp -s "$snap/model.safetensors" "$SRC/models/stories260K/model.safetensors" && ok || bad "model.safetensors content"
sha=$(sha256sum "$SRC/models/stories260K/model.safetensors" | cut -d' ' -f1)
[ -f "$repo/blobs/$sha" ] && ok || bad "LFS blob named by its sha256"
blob=$(printf 'blob %s\0' "$(stat -c %s "$SRC/models/stories260K/config.json")" | cat - "$SRC/models/stories260K/config.json" | sha1sum | cut -d' ' -f1)
[ -f "$repo/blobs/$blob" ] && ok || bad "small file blob named by its git etag"
grep -q "pytorch_model.bin\|README.md" "$TMP/log" && bad "fetched a file a model does not need" || ok
ls "$repo/blobs" | grep -q incomplete && bad "an .incomplete file is left" || ok

# A second run makes no request.
before=$(requests)
out=$("$HUBCAP" generate -m hf://test/stories "Once upon a time" --max-new-tokens 10 2>/dev/null)
local_out=$("$HUBCAP" generate -m "$SRC/models/stories260K" "Once upon a time" --max-new-tokens 10 2>/dev/null)
[ -n "$out" ] && [ "$out" = "$local_out" ] && ok || bad "generate from hf:// gives '$out'"
[ "$(requests)" = "$before" ] && ok || bad "a cached model made $(( $(requests) - before )) requests"
"$HUBCAP" info -m hf://test/stories | grep -q "LlamaForCausalLM" && ok || bad "info -m hf://"
"$HUBCAP" tokenize -m hf://test/stories --text "Once upon a time" | grep -q "^1 403 407 261 378$" && ok || bad "tokenize -m hf://"

# Offline.
HF_HUB_OFFLINE=1 "$HUBCAP" generate -m hf://test/stories "Once" --max-new-tokens 3 >/dev/null 2>&1 && ok || bad "offline with a cache"
HF_HUB_OFFLINE=1 "$HUBCAP" download hf://test/sharded >/dev/null 2>"$TMP/err" && bad "offline without a cache" ||
    { grep -q "offline.*hubcap download hf://test/sharded" "$TMP/err" && ok || bad "offline message: $(cat "$TMP/err")"; }
rm "$repo/snapshots/$commit/model.safetensors"
HF_HUB_OFFLINE=1 "$HUBCAP" info -m hf://test/stories >/dev/null 2>"$TMP/err" && bad "offline with a missing file" ||
    { grep -q "lacks: model.safetensors" "$TMP/err" && ok || bad "missing-file message: $(cat "$TMP/err")"; }
"$HUBCAP" download hf://test/stories >/dev/null 2>&1 && [ -L "$repo/snapshots/$commit/model.safetensors" ] && ok || bad "re-download of a missing file"

# Sharded checkpoints, revisions, globs.
"$HUBCAP" info -m hf://test/sharded@v1 2>/dev/null | grep -q "shards        8" && ok || bad "sharded via hf://"
[ -f "$TMP/cache/models--test--sharded/refs/v1" ] && ok || bad "refs/v1"
snap=$("$HUBCAP" download hf://test/stories --include '*.json' --refresh 2>/dev/null)
[ -f "$snap/tokenizer_config.json" ] && ok || bad "--include"

# Resume after a cut, checksum retry and failure, busy server.
"$HUBCAP" download hf://test/flaky >/dev/null 2>"$TMP/err" && ok || bad "flaky download: $(cat "$TMP/err")"
grep -q "GET /lfs/test/flaky/.* bytes=[1-9]" "$TMP/log" && ok || bad "no Range request after the cut"
cmp -s "$TMP/cache/models--test--flaky/snapshots/$(printf 'test/flaky' | sha1sum | cut -d' ' -f1)/model.safetensors" \
    "$SRC/models/stories260K/model.safetensors" && ok || bad "resumed file content"
"$HUBCAP" download hf://test/corrupt >/dev/null 2>"$TMP/err" && ok || bad "corrupt-once download: $(cat "$TMP/err")"
"$HUBCAP" download hf://test/badsum >/dev/null 2>"$TMP/err" && bad "a bad checksum was accepted" ||
    { grep -q "failed its checksum twice" "$TMP/err" && ok || bad "checksum message: $(cat "$TMP/err")"; }
ls "$TMP/cache/models--test--badsum/snapshots/"*/model.safetensors >/dev/null 2>&1 && bad "a bad file reached snapshots/" || ok
"$HUBCAP" download hf://test/busy >/dev/null 2>"$TMP/err" && ok || bad "retry on 503: $(cat "$TMP/err")"

# Two downloads of one repo at once.
"$HUBCAP" download hf://test/sharded2 >"$TMP/a" 2>&1 &
A=$!
"$HUBCAP" download hf://test/sharded2 >"$TMP/b" 2>&1 &
B=$!
wait $A && wait $B && ok || bad "concurrent downloads: $(cat "$TMP/a" "$TMP/b")"
"$HUBCAP" logits -m hf://test/sharded2 --ids "1 2 3" --out "$TMP/l.safetensors" 2>/dev/null && ok || bad "model after concurrent downloads"

# Errors with meaning.
"$HUBCAP" download hf://test/gated >/dev/null 2>"$TMP/err" && bad "gated without a token" ||
    { grep -q "gated.*HF_TOKEN" "$TMP/err" && ok || bad "401 message: $(cat "$TMP/err")"; }
HF_TOKEN=secret "$HUBCAP" download hf://test/gated >/dev/null 2>&1 && ok || bad "gated with HF_TOKEN"
rm -rf "$TMP/cache/models--test--gated"
mkdir -p "$HF_HOME" && printf 'secret\n' >"$HF_HOME/token"
"$HUBCAP" download hf://test/gated >/dev/null 2>&1 && ok || bad "gated with the token file"
rm "$HF_HOME/token"
"$HUBCAP" download hf://test/nope >/dev/null 2>"$TMP/err" && bad "a missing repo" ||
    { grep -q "not found" "$TMP/err" && ok || bad "404 message: $(cat "$TMP/err")"; }
"$HUBCAP" download hf://test/stories@nobranch --refresh >/dev/null 2>"$TMP/err" && bad "a missing revision" ||
    { grep -q "not found" "$TMP/err" && ok || bad "bad revision message: $(cat "$TMP/err")"; }
"$HUBCAP" download hf://test/binonly >/dev/null 2>"$TMP/err" && bad "a .bin-only repo" ||
    { grep -q "no safetensors weights (only .bin/.pth" "$TMP/err" && ok || bad "bin-only message: $(cat "$TMP/err")"; }
HF_ENDPOINT=http://127.0.0.1:9 "$HUBCAP" download hf://test/sharded@v1 --refresh >/dev/null 2>&1 && ok || bad "no network with a full cache"
"$HUBCAP" download "hf://../etc" >/dev/null 2>&1; [ $? = 1 ] && ok || bad "a bad handle"
"$HUBCAP" cache ls | grep -q "^test/stories .* MB  main" && ok || bad "cache ls: $("$HUBCAP" cache ls)"

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
