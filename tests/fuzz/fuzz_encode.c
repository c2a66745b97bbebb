/* libFuzzer target: arbitrary bytes (invalid UTF-8 included) through real tokenizers: encode
 * must succeed or refuse with a message, every id must be in the vocabulary, and decoding them
 * must not crash. The tokenizers are the fixtures' (byte fallback SentencePiece BPE, byte-level
 * BPE), found through HUBCAP_FUZZ_TOKENIZERS, a colon-separated list of folders. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hubcap.h"

#define MAX_TOKENIZERS 4

static hc_tokenizer *toks[MAX_TOKENIZERS];
static int n_toks = -1;

static void setup(void) {
    if (n_toks >= 0) return;
    n_toks = 0;
    const char *env = getenv("HUBCAP_FUZZ_TOKENIZERS");
    char *list = strdup(env ? env : "models/stories260K:tests/fixtures/tokenizers/qwen3");
    for (char *save = NULL, *d = strtok_r(list, ":", &save); d && n_toks < MAX_TOKENIZERS; d = strtok_r(NULL, ":", &save))
        if (hc_tokenizer_load(d, NULL, &toks[n_toks]) == HC_OK) n_toks++;
    free(list);
    if (!n_toks) abort(); /* nothing to fuzz: say so loudly */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setup();
    for (int i = 0; i < n_toks; i++) {
        hc_tokens ids = {0};
        if (hc_tokenizer_encode(toks[i], (const char *)data, size, true, &ids) == HC_OK) {
            const int64_t V = hc_tokenizer_vocab_size(toks[i]);
            for (int64_t k = 0; k < ids.n; k++)
                if (ids.ids[k] < 0 || ids.ids[k] >= V) abort();
            char *text = NULL;
            if (hc_tokenizer_decode(toks[i], ids.ids, ids.n, false, &text, NULL) == HC_OK) hc_free(text);
        }
        hc_tokens_free(&ids);
    }
    return 0;
}
