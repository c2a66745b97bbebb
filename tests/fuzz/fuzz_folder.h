/* For the targets that fuzz one file of a model folder: a private folder holding links to a real
 * model's other files (stories260K, or the folder HUBCAP_FUZZ_MODEL names), the fuzzed file
 * written beside them, and a load that runs one token. */
#ifndef HC_FUZZ_FOLDER_H
#define HC_FUZZ_FOLDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hubcap.h"

/* Makes /tmp/hubcap-fuzz-<tag>-XXXXXX in dir[cap] with links to the model's files in names (a
 * NULL-terminated list); aborts, loudly, when the model is not there to fuzz against. */
static inline void fuzz_folder(char *dir, size_t cap, const char *tag, const char *const *names) {
    const char *model = getenv("HUBCAP_FUZZ_MODEL");
    char *abs = realpath(model ? model : "models/stories260K", NULL);
    if (!abs) abort();
    snprintf(dir, cap, "/tmp/hubcap-fuzz-%s-XXXXXX", tag);
    if (!mkdtemp(dir)) abort();
    for (; *names; names++) {
        char from[4096], to[4096];
        snprintf(from, sizeof from, "%s/%s", abs, *names);
        snprintf(to, sizeof to, "%s/%s", dir, *names);
        if (symlink(from, to) != 0) abort();
    }
    free(abs);
}

static inline void fuzz_write(const char *path, const uint8_t *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (n && fwrite(p, 1, n, f) != n) abort();
    fclose(f);
}

/* Loads the folder on the CPU (mapped or read; with a LoRA adapter folder, or NULL) and, when
 * that works, runs two tokens. */
static inline void fuzz_load_and_run(const char *dir, bool use_mmap, const char *lora_path) {
    hc_model_params mp = hc_model_default_params();
    mp.n_threads = 1;
    mp.device = HC_DEVICE_CPU;
    mp.use_mmap = use_mmap;
    mp.lora_path = lora_path;
    hc_model *m = NULL;
    if (hc_model_load(dir, &mp, &m) != HC_OK) return;
    hc_session *s = NULL;
    if (hc_session_new(m, 8, &s) == HC_OK) {
        const int32_t ids[2] = {1, 2};
        int32_t next;
        (void)hc_session_forward_greedy(s, ids, 2, &next);
        hc_session_free(s);
    }
    hc_model_free(m);
}

#endif
