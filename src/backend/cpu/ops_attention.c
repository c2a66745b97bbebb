/* Causal attention over a KV cache, with sliding windows, soft-capping and GQA. */
#include <math.h>

#include "backend/cpu/cpu.h"

void hc_cpu_attention(hc_backend *be, float *out, const float *q, const void *k_cache, const void *v_cache,
                      hc_dtype kv_dtype, const int32_t *pos, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale,
                      int64_t window, float softcap, int64_t S, float *scratch) {
    (void)be;
    (void)S;
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
                const int64_t kj = (j * KVH + kvh) * D; /* element offset of k[j, kvh, :] */
                float s = 0;
                for (int64_t d = 0; d < D; d++) s += qh[d] * hc_load_f32(k_cache, kv_dtype, kj + d);
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
                const int64_t vj = (j * KVH + kvh) * D;
                for (int64_t d = 0; d < D; d++) oh[d] += a * hc_load_f32(v_cache, kv_dtype, vj + d);
            }
        }
    }
}

void hc_cpu_set_rows(hc_backend *be, void *dst, hc_dtype dst_dtype, const float *src, const int32_t *pos, int64_t T,
                     int64_t width) {
    (void)be;
    for (int64_t t = 0; t < T; t++) {
        const float *row = src + t * width;
        if (dst_dtype == HC_DTYPE_F32) {
            memcpy((float *)dst + (int64_t)pos[t] * width, row, sizeof(float) * (size_t)width);
            continue;
        }
        uint16_t *d = (uint16_t *)dst + (int64_t)pos[t] * width;
        for (int64_t i = 0; i < width; i++) d[i] = dst_dtype == HC_DTYPE_F16 ? hc_f32_to_f16(row[i]) : hc_f32_to_bf16(row[i]);
    }
}
