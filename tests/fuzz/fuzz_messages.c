/* libFuzzer target: the messages of a chat (a user's input, through `hubcap chat` or the API) of
 * arbitrary bytes, rendered by real chat templates: must render or fail with a message. The
 * templates are tests/fixtures/chat's and any *.jinja in HUBCAP_FUZZ_TEMPLATES (a folder). */
#define _XOPEN_SOURCE 700 /* realpath */
#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hubcap.h"

#define MAX_TEMPLATES 64

static char *templates[MAX_TEMPLATES];
static int n_templates = -1;

static void load_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d)) && n_templates < MAX_TEMPLATES;) {
        const size_t n = strlen(e->d_name);
        if (n < 7 || strcmp(e->d_name + n - 6, ".jinja")) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        const long len = ftell(f);
        fseek(f, 0, SEEK_SET);
        char *t = malloc((size_t)len + 1);
        if (t && fread(t, 1, (size_t)len, f) == (size_t)len) {
            t[len] = 0;
            templates[n_templates++] = t;
        } else {
            free(t);
        }
        fclose(f);
    }
    closedir(d);
}

static void setup(void) {
    if (n_templates >= 0) return;
    n_templates = 0;
    load_dir("tests/fixtures/chat");
    const char *more = getenv("HUBCAP_FUZZ_TEMPLATES");
    load_dir(more ? more : "../shared/fixtures/chat_templates");
    if (!n_templates) abort(); /* nothing to fuzz against: say so loudly */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setup();
    char *messages = malloc(size + 1);
    if (!messages) return 0;
    memcpy(messages, data, size);
    messages[size] = 0;
    hc_chat_params p = hc_chat_default_params();
    p.bos_token = "<s>";
    p.eos_token = "</s>";
    /* one template an input, picked by its length, so each run stays short */
    const char *t = templates[size % (size_t)n_templates];
    char *out = NULL;
    size_t len = 0;
    if (hc_chat_template_render(t, messages, &p, &out, &len) == HC_OK) hc_free(out);
    free(messages);
    return 0;
}
