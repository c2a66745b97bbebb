#include "model/arch.h"

#include <string.h>

static const hc_arch *const all_archs[] = {&hc_arch_llama,  &hc_arch_qwen3,  &hc_arch_mixtral, &hc_arch_granitemoe, &hc_arch_qwen3_moe, &hc_arch_qwen2_moe, &hc_arch_olmo2, &hc_arch_exaone4,
                                           &hc_arch_gemma,  &hc_arch_gemma2, &hc_arch_gemma3,  &hc_arch_phi3,
                                           &hc_arch_phi,    &hc_arch_gpt2, &hc_arch_starcoder2};

const hc_arch *hc_arch_find(const char *model_type) {
    size_t n = strlen(model_type);
    for (size_t i = 0; i < sizeof all_archs / sizeof all_archs[0]; i++) {
        for (const char *p = all_archs[i]->model_type; *p;) {
            const char *sp = strchr(p, ' ');
            size_t len = sp ? (size_t)(sp - p) : strlen(p);
            if (len == n && !strncmp(p, model_type, n)) return all_archs[i];
            if (!sp) break;
            p = sp + 1;
        }
    }
    return NULL;
}
