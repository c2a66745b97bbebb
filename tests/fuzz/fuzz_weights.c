/* libFuzzer target: a model.safetensors of arbitrary bytes beside a real config.json
 * (stories260K, or the folder HUBCAP_FUZZ_MODEL names): a lying header, a missing or misshapen
 * tensor, a wrong dtype or a truncated file must fail with a message, and whatever loads must run
 * a token without reading outside the file. */
#define _XOPEN_SOURCE 700 /* realpath */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hubcap.h"

static char dir[64], weights_path[96];

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
    snprintf(dir, sizeof dir, "/tmp/hubcap-fuzz-w-XXXXXX");
    if (!mkdtemp(dir)) abort();
    link_into(abs, "config.json");
    link_into(abs, "tokenizer.json");
    snprintf(weights_path, sizeof weights_path, "%s/model.safetensors", dir);
    free(abs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setup();
    FILE *f = fopen(weights_path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
    for (int mmap = 0; mmap < 2; mmap++) {
        hc_model_params mp = hc_model_default_params();
        mp.n_threads = 1;
        mp.device = HC_DEVICE_CPU;
        mp.use_mmap = mmap;
        hc_model *m = NULL;
        if (hc_model_load(dir, &mp, &m) != HC_OK) continue;
        hc_session *s = NULL;
        if (hc_session_new(m, 8, &s) == HC_OK) {
            const int32_t ids[2] = {1, 2};
            int32_t next;
            (void)hc_session_forward_greedy(s, ids, 2, &next);
            hc_session_free(s);
        }
        hc_model_free(m);
    }
    return 0;
}
