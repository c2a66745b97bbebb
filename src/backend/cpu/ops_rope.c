/* Rotary position embedding, rotate-half layout (as transformers applies it). */
#include <math.h>

#include "backend/cpu/cpu.h"

void hc_cpu_rope(hc_backend *be, float *x, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T,
                 int64_t nh, int64_t D, int64_t R) {
    (void)be;
    const int64_t half = R / 2;
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < half; i++) {
            /* transformers forms the angle in f32: inv_freq (f32) * position (f32). */
            const float angle = (float)pos[t] * inv_freq[i];
            const float c = (float)cos((double)angle) * attn_factor;
            const float s = (float)sin((double)angle) * attn_factor;
            for (int64_t h = 0; h < nh; h++) {
                float *v = x + (t * nh + h) * D; /* [D] */
                const float a = v[i], b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
    }
}
