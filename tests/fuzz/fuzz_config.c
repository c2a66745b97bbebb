/* libFuzzer target: a config.json of arbitrary bytes beside real weights (stories260K, or the
 * folder HUBCAP_FUZZ_MODEL names) must load and run a token, or fail with a message: never
 * crash, and never read past the weights it was given. */
#define _XOPEN_SOURCE 700 /* realpath, mkdtemp */
#include "fuzz_folder.h"

static char dir[64], config_path[96];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dir[0]) {
        fuzz_folder(dir, sizeof dir, "cfg", (const char *const[]){"model.safetensors", "tokenizer.json", "tokenizer_config.json", NULL});
        snprintf(config_path, sizeof config_path, "%s/config.json", dir);
    }
    fuzz_write(config_path, data, size);
    fuzz_load_and_run(dir, true, NULL);
    return 0;
}
