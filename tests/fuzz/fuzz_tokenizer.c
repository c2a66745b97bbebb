/* libFuzzer target: a tokenizer file of arbitrary bytes must load or fail with a message, and a
 * tokenizer that loads must encode and decode text (invalid UTF-8 included) without crashing.
 * The first byte picks the file: odd, tokenizer.json; even, SentencePiece's tokenizer.model.
 * With its bit 1 set, the rest splits at its first zero byte into that file and a
 * tokenizer_config.json. The files go to a private folder (the loader reads folders). */
#define _XOPEN_SOURCE 700 /* mkdtemp, realpath (fuzz_folder.h) */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_folder.h"
#include "hubcap.h"

static char dir[64], json_path[96], model_path[96], config_path[112];

static void setup(void) {
    if (dir[0]) return;
    snprintf(dir, sizeof dir, "/tmp/hubcap-fuzz-tok-XXXXXX");
    if (!mkdtemp(dir)) abort();
    snprintf(json_path, sizeof json_path, "%s/tokenizer.json", dir);
    snprintf(model_path, sizeof model_path, "%s/tokenizer.model", dir);
    snprintf(config_path, sizeof config_path, "%s/tokenizer_config.json", dir);
}


static const char *texts[] = {"Hello world", "  two  spaces\n\ttab", "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80",
                              "bad \xff\xfe utf8 \xc3", "<s></s><unk>[CLS]", ""};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setup();
    if (size < 1) return 0;
    const bool json = data[0] & 1, with_config = data[0] & 2;
    unlink(json_path);
    unlink(model_path);
    unlink(config_path);
    const uint8_t *rest = data + 1;
    size_t n = size - 1;
    const uint8_t *zero = with_config ? memchr(rest, 0, n) : NULL;
    if (zero) {
        fuzz_write(config_path, zero + 1, n - (size_t)(zero + 1 - rest));
        n = (size_t)(zero - rest);
    }
    fuzz_write(json ? json_path : model_path, rest, n);
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
