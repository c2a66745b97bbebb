/* Causal attention over a KV cache, with sliding windows, soft-capping and GQA. */
#include <math.h>

#include "backend/cpu/cpu.h"

void hc_cpu_attention(hc_backend *be, float *out, const float *q, const float *k_cache, const float *v_cache,
                      const int32_t *pos, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale, int64_t window,
                      float softcap, float *scratch) {
    (void)be;
    const int64_t group = H / KVH;
    for (int64_t t = 0; t < T; t++) {
        const int64_t p = pos[t];
        const int64_t lo = (window > 0 && p - window + 1 > 0) ? p - window + 1 : 0;
        for (int64_t h = 0; h < H; h++) {
            const float *qh = q + (t * H + h) * D; /* [D] */
            const int64_t kvh = h / group;
            float *att = scratch; /* [p - lo + 1] */
            float mx = -INFINITY;
            for (int64_t j = lo; j <= p; j++) {
                const float *kj = k_cache + (j * KVH + kvh) * D; /* [D] */
                float s = 0;
                for (int64_t d = 0; d < D; d++) s += qh[d] * kj[d];
                s *= scale;
                if (softcap > 0) s = softcap * tanhf(s / softcap);
                att[j - lo] = s;
                if (s > mx) mx = s;
            }
            double sum = 0;
            for (int64_t j = lo; j <= p; j++) {
                att[j - lo] = expf(att[j - lo] - mx);
                sum += att[j - lo];
            }
            const float inv = (float)(1.0 / sum);
            float *oh = out + (t * H + h) * D; /* [D] */
            for (int64_t d = 0; d < D; d++) oh[d] = 0;
            for (int64_t j = lo; j <= p; j++) {
                const float a = att[j - lo] * inv;
                const float *vj = v_cache + (j * KVH + kvh) * D;
                for (int64_t d = 0; d < D; d++) oh[d] += a * vj[d];
            }
        }
    }
}

void hc_cpu_set_rows(hc_backend *be, float *dst, const float *src, const int32_t *pos, int64_t T, int64_t width) {
    (void)be;
    for (int64_t t = 0; t < T; t++) memcpy(dst + (int64_t)pos[t] * width, src + t * width, sizeof(float) * width);
}
