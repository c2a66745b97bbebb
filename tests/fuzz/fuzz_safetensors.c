/* libFuzzer target: a safetensors file of arbitrary bytes must be refused cleanly or yield
 * tensor views that lie inside the buffer. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "format/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    hc_safetensors st;
    if (hc_safetensors_parse(&st, data, size, "fuzz.safetensors") == HC_OK) {
        for (int64_t i = 0; i < st.n_tensors; i++) {
            const hc_tensor_info *t = &st.tensors[i];
            const uint8_t *p = t->data;
            if (p < data || p + t->n_bytes > data + size) abort();
            if (t->n_bytes) (void)(volatile uint8_t)p[t->n_bytes - 1];
            if (hc_safetensors_find(&st, t->name) != t) abort();
        }
        hc_safetensors_close(&st);
    }
    return 0;
}
