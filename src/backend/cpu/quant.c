#include "backend/cpu/quant.h"

#include <math.h>

#include "base/half.h"

size_t hc_quant_row_bytes(int quant, int64_t K) {
    const int64_t nb = K / HC_QK;
    return (size_t)nb * (quant == HC_QUANT_Q8_0 ? sizeof(hc_block_q8_0) : sizeof(hc_block_q4_0));
}

void hc_quantize_row(int quant, void *dst, const float *src, int64_t K) {
    for (int64_t b = 0; b < K / HC_QK; b++) {
        const float *x = src + b * HC_QK;
        if (quant == HC_QUANT_Q8_0) {
            float amax = 0;
            for (int i = 0; i < HC_QK; i++) amax = fmaxf(amax, fabsf(x[i]));
            const float d = amax / 127.0f, id = d ? 1.0f / d : 0;
            hc_block_q8_0 *o = (hc_block_q8_0 *)dst + b;
            o->d = hc_f32_to_f16(d);
            for (int i = 0; i < HC_QK; i++) o->q[i] = (int8_t)roundf(x[i] * id);
        } else {
            /* The value of largest magnitude maps to -8, as llama.cpp does. */
            float amax = 0, max = 0;
            for (int i = 0; i < HC_QK; i++)
                if (fabsf(x[i]) > amax) amax = fabsf(x[i]), max = x[i];
            const float d = max / -8.0f, id = d ? 1.0f / d : 0;
            hc_block_q4_0 *o = (hc_block_q4_0 *)dst + b;
            o->d = hc_f32_to_f16(d);
            for (int i = 0; i < HC_QK / 2; i++) {
                int lo = (int)(x[i] * id + 8.5f), hi = (int)(x[i + HC_QK / 2] * id + 8.5f);
                lo = lo < 0 ? 0 : lo > 15 ? 15 : lo;
                hi = hi < 0 ? 0 : hi > 15 ? 15 : hi;
                o->q[i] = (uint8_t)(lo | hi << 4);
            }
        }
    }
}

void hc_dequantize_row(int quant, float *dst, const void *src, int64_t K) {
    for (int64_t b = 0; b < K / HC_QK; b++) {
        float *y = dst + b * HC_QK;
        if (quant == HC_QUANT_Q8_0) {
            const hc_block_q8_0 *blk = (const hc_block_q8_0 *)src + b;
            const float d = hc_f16_to_f32(blk->d);
            for (int i = 0; i < HC_QK; i++) y[i] = d * (float)blk->q[i];
        } else {
            const hc_block_q4_0 *blk = (const hc_block_q4_0 *)src + b;
            const float d = hc_f16_to_f32(blk->d);
            for (int i = 0; i < HC_QK / 2; i++) {
                y[i] = d * (float)((blk->q[i] & 0x0F) - 8);
                y[i + HC_QK / 2] = d * (float)((blk->q[i] >> 4) - 8);
            }
        }
    }
}
