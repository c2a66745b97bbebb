/* libFuzzer target: a model.safetensors of arbitrary bytes beside a real config.json
 * (stories260K, or the folder HUBCAP_FUZZ_MODEL names): a lying header, a missing or misshapen
 * tensor, a wrong dtype or a truncated file must fail with a message, and whatever loads must run
 * a token without reading outside the file, mapped or read into RAM. */
#define _XOPEN_SOURCE 700 /* realpath, mkdtemp */
#include "fuzz_folder.h"

static char dir[64], weights_path[96];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dir[0]) {
        fuzz_folder(dir, sizeof dir, "w", (const char *const[]){"config.json", "tokenizer.json", NULL});
        snprintf(weights_path, sizeof weights_path, "%s/model.safetensors", dir);
    }
    fuzz_write(weights_path, data, size);
    fuzz_load_and_run(dir, true, NULL);
    fuzz_load_and_run(dir, false, NULL);
    return 0;
}
