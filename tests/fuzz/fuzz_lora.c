/* libFuzzer target: a LoRA adapter (PEFT's adapter_config.json and adapter_model.safetensors) of
 * arbitrary bytes, applied to a real model (stories260K, or HUBCAP_FUZZ_MODEL): must load and run a
 * token, or fail with a message. The input splits at its first zero byte into the config and the
 * weights. */
#define _XOPEN_SOURCE 700 /* realpath, mkdtemp */
#include "fuzz_folder.h"

static char model_dir[64], adapter_dir[64], config_path[128], weights_path[128];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!model_dir[0]) {
        fuzz_folder(model_dir, sizeof model_dir, "lm",
                    (const char *const[]){"config.json", "model.safetensors", "tokenizer.json", NULL});
        fuzz_folder(adapter_dir, sizeof adapter_dir, "la", (const char *const[]){NULL});
        snprintf(config_path, sizeof config_path, "%s/adapter_config.json", adapter_dir);
        snprintf(weights_path, sizeof weights_path, "%s/adapter_model.safetensors", adapter_dir);
    }
    const uint8_t *zero = memchr(data, 0, size);
    const size_t n_config = zero ? (size_t)(zero - data) : size;
    fuzz_write(config_path, data, n_config);
    if (zero) fuzz_write(weights_path, zero + 1, size - n_config - 1);
    else unlink(weights_path);
    fuzz_load_and_run(model_dir, true, adapter_dir);
    return 0;
}
