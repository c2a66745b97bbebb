/* RMSNorm (plain and Gemma's 1 + w) and LayerNorm, accumulated in double for stability. */
#include <math.h>

#include "backend/cpu/cpu.h"

void hc_cpu_norm(hc_backend *be, float *out, const float *x, const hc_vec *w, const hc_vec *b, hc_norm_kind kind,
                 float eps, int64_t T, int64_t C) {
    (void)be;
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * C; /* [C] */
        float *ot = out + t * C;     /* [C] */
        if (kind == HC_NORM_LAYER) {
            double mean = 0, var = 0;
            for (int64_t c = 0; c < C; c++) mean += xt[c];
            mean /= (double)C;
            for (int64_t c = 0; c < C; c++) var += ((double)xt[c] - mean) * ((double)xt[c] - mean);
            var /= (double)C;
            const float inv = (float)(1.0 / sqrt(var + eps));
            for (int64_t c = 0; c < C; c++) {
                float v = (float)(xt[c] - mean) * inv;
                if (w && w->data) v *= hc_load_f32(w->data, w->dtype, c);
                if (b && b->data) v += hc_load_f32(b->data, b->dtype, c);
                ot[c] = v;
            }
        } else {
            double ss = 0;
            for (int64_t c = 0; c < C; c++) ss += (double)xt[c] * xt[c];
            const float inv = (float)(1.0 / sqrt(ss / (double)C + eps));
            for (int64_t c = 0; c < C; c++) {
                float g = hc_load_f32(w->data, w->dtype, c);
                if (kind == HC_NORM_RMS_PLUS1) g += 1.0f;
                ot[c] = xt[c] * inv * g;
            }
        }
    }
}
