/* libFuzzer target: a config.json of arbitrary bytes beside real weights (stories260K, or the
 * folder HUBCAP_FUZZ_MODEL names) must load and run a token, or fail with a message: never
 * crash, and never read past the weights it was given. */
#define _XOPEN_SOURCE 700 /* realpath */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hubcap.h"

static char dir[64], config_path[96];

static void link_into(const char *src_dir, const char *name) {
    char from[4096], to[160];
    snprintf(from, sizeof from, "%s/%s", src_dir, name);
    snprintf(to, sizeof to, "%s/%s", dir, name);
    if (symlink(from, to) != 0) abort();
}

static void setup(void) {
    if (dir[0]) return;
    const char *model = getenv("HUBCAP_FUZZ_MODEL");
    char *abs = realpath(model ? model : "models/stories260K", NULL);
    if (!abs) abort(); /* nothing to fuzz against: say so loudly */
    snprintf(dir, sizeof dir, "/tmp/hubcap-fuzz-cfg-XXXXXX");
    if (!mkdtemp(dir)) abort();
    link_into(abs, "model.safetensors");
    link_into(abs, "tokenizer.json");
    link_into(abs, "tokenizer_config.json");
    snprintf(config_path, sizeof config_path, "%s/config.json", dir);
    free(abs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setup();
    FILE *f = fopen(config_path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
    hc_model_params mp = hc_model_default_params();
    mp.n_threads = 1;
    mp.device = HC_DEVICE_CPU;
    hc_model *m = NULL;
    if (hc_model_load(dir, &mp, &m) != HC_OK) return 0;
    hc_session *s = NULL;
    if (hc_session_new(m, 8, &s) == HC_OK) {
        const int32_t ids[2] = {1, 2};
        int32_t next;
        (void)hc_session_forward_greedy(s, ids, 2, &next);
        hc_session_free(s);
    }
    hc_model_free(m);
    return 0;
}
