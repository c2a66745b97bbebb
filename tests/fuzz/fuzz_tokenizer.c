/* libFuzzer target: a tokenizer file of arbitrary bytes must load or fail with a message, and a
 * tokenizer that loads must encode and decode text (invalid UTF-8 included) without crashing.
 * The first byte picks the file: odd, tokenizer.json; even, SentencePiece's tokenizer.model.
 * The rest is the file, written to a private folder (the loader reads folders). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hubcap.h"

static char dir[64], json_path[96], model_path[96];

static void setup(void) {
    if (dir[0]) return;
    snprintf(dir, sizeof dir, "/tmp/hubcap-fuzz-tok-XXXXXX");
    if (!mkdtemp(dir)) abort();
    snprintf(json_path, sizeof json_path, "%s/tokenizer.json", dir);
    snprintf(model_path, sizeof model_path, "%s/tokenizer.model", dir);
}

static const char *texts[] = {"Hello world", "  two  spaces\n\ttab", "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80",
                              "bad \xff\xfe utf8 \xc3", "<s></s><unk>[CLS]", ""};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setup();
    if (size < 1) return 0;
    const bool json = data[0] & 1;
    unlink(json_path);
    unlink(model_path);
    FILE *f = fopen(json ? json_path : model_path, "wb");
    if (!f) abort();
    if (size > 1 && fwrite(data + 1, 1, size - 1, f) != size - 1) abort();
    fclose(f);
    hc_tokenizer *t = NULL;
    if (hc_tokenizer_load(dir, NULL, &t) != HC_OK) return 0;
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        hc_tokens ids = {0};
        if (hc_tokenizer_encode(t, texts[i], strlen(texts[i]), true, &ids) == HC_OK) {
            char *text = NULL;
            if (hc_tokenizer_decode(t, ids.ids, ids.n, false, &text, NULL) == HC_OK) hc_free(text);
        }
        hc_tokens_free(&ids);
    }
    hc_tokenizer_free(t);
    return 0;
}
