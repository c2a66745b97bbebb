#include "backend/cpu/quant.h"

#include <math.h>
#include <string.h>

#include "base/half.h"

int64_t hc_quant_block_elems(int quant) {
    return quant == HC_QUANT_BF16R16 ? 2 : quant == HC_QUANT_Q4_K || quant == HC_QUANT_Q4_KR16 ? HC_QKK : HC_QK;
}

size_t hc_quant_block_bytes(int quant) {
    return quant == HC_QUANT_BF16R16 ? 4
           : quant == HC_QUANT_Q8_0 || quant == HC_QUANT_Q8_0R16 ? sizeof(hc_block_q8_0)
           : quant == HC_QUANT_Q4_K || quant == HC_QUANT_Q4_KR16 ? sizeof(hc_block_q4_k)
                                                             : sizeof(hc_block_q4_0);
}

bool hc_quant_is_r16(int quant) {
    return quant == HC_QUANT_Q4_0R16 || quant == HC_QUANT_Q8_0R16 || quant == HC_QUANT_Q4_KR16;
}

bool hc_quant_is_grouped(int quant) { return hc_quant_is_r16(quant) || quant == HC_QUANT_BF16R16; }

int hc_quant_tail_layout(int quant) {
    return quant == HC_QUANT_Q4_0R16   ? HC_QUANT_Q4_0X4
           : quant == HC_QUANT_Q8_0R16 ? HC_QUANT_Q8_0
           : quant == HC_QUANT_Q4_KR16 ? HC_QUANT_Q4_K
                                       : quant;
}

size_t hc_quant_row_bytes(int quant, int64_t K) {
    return (size_t)(K / hc_quant_block_elems(quant)) * hc_quant_block_bytes(quant);
}

void hc_q4_k_scale_min(const uint8_t *q, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* q4_k: each sub-block's range [min(0, lo), hi] over 16 levels; scales and mins to 6 bits
 * against the super-block's largest. */
static void quantize_q4_k(hc_block_q4_k *o, const float *x) {
    float scale[8], minv[8], maxs = 0, maxm = 0;
    for (int j = 0; j < 8; j++) {
        float lo = 0, hi = x[j * 32];
        for (int i = 0; i < 32; i++) lo = fminf(lo, x[j * 32 + i]), hi = fmaxf(hi, x[j * 32 + i]);
        scale[j] = (hi - lo) / 15.0f;
        minv[j] = -lo;
        maxs = fmaxf(maxs, scale[j]);
        maxm = fmaxf(maxm, minv[j]);
    }
    const float d = maxs / 63.0f, dmin = maxm / 63.0f;
    o->d = hc_f32_to_f16(d);
    o->dmin = hc_f32_to_f16(dmin);
    const float dq = hc_f16_to_f32(o->d), dmq = hc_f16_to_f32(o->dmin);
    int sc[8], m[8];
    for (int j = 0; j < 8; j++) {
        sc[j] = dq > 0 ? (int)fminf(63.0f, roundf(scale[j] / dq)) : 0;
        m[j] = dmq > 0 ? (int)fminf(63.0f, roundf(minv[j] / dmq)) : 0;
    }
    for (int j = 0; j < 4; j++) {
        o->scales[j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
        o->scales[j + 4] = (uint8_t)(m[j] | ((m[j + 4] >> 4) << 6));
        o->scales[j + 8] = (uint8_t)((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
    }
    for (int j = 0; j < 8; j += 2) {
        for (int h = 0; h < 2; h++) {
            const float dd = dq * (float)sc[j + h], mm = dmq * (float)m[j + h];
            for (int i = 0; i < 32; i++) {
                int q = dd > 0 ? (int)roundf((x[(j + h) * 32 + i] + mm) / dd) : 0;
                q = q < 0 ? 0 : q > 15 ? 15 : q;
                uint8_t *b = &o->qs[j / 2 * 32 + i];
                *b = h ? (uint8_t)(*b | q << 4) : (uint8_t)q;
            }
        }
    }
}

/* q4_0 <-> q4_0x4 for one group of 4 blocks (72 bytes), through a copy so in place works. */
static void q4_0_to_x4(void *group) {
    hc_block_q4_0 b[HC_Q4_0X4_GROUP];
    memcpy(b, group, sizeof b);
    uint8_t *o = group;
    for (int i = 0; i < HC_Q4_0X4_GROUP; i++) memcpy(o + 2 * i, &b[i].d, 2);
    for (int j = 0; j < 64; j++) {
        const int e = j % 32; /* element of blocks j/32 (low) and 2 + j/32 (high) */
        const hc_block_q4_0 *lo = &b[j / 32], *hi = &b[2 + j / 32];
        const int ql = e < 16 ? lo->q[e] & 0xF : lo->q[e - 16] >> 4, qh = e < 16 ? hi->q[e] & 0xF : hi->q[e - 16] >> 4;
        o[8 + j] = (uint8_t)(ql | qh << 4);
    }
}

static void x4_to_q4_0(hc_block_q4_0 *b, const void *group) {
    const uint8_t *g = group;
    for (int i = 0; i < HC_Q4_0X4_GROUP; i++) {
        memcpy(&b[i].d, g + 2 * i, 2);
        memset(b[i].q, 0, sizeof b[i].q);
    }
    for (int j = 0; j < 64; j++) {
        const int e = j % 32, sh = e < 16 ? 0 : 4, at = e % 16;
        b[j / 32].q[at] |= (uint8_t)((g[8 + j] & 0xF) << sh);
        b[2 + j / 32].q[at] |= (uint8_t)((g[8 + j] >> 4) << sh);
    }
}

void hc_quantize_row(int quant, void *dst, const float *src, int64_t K) {
    if (quant == HC_QUANT_BF16R16) { /* a row past bf16r16's last whole group: plain bf16 */
        for (int64_t k = 0; k < K; k++) ((uint16_t *)dst)[k] = hc_f32_to_bf16(src[k]);
        return;
    }
    if (quant == HC_QUANT_Q4_0X4) {
        hc_quantize_row(HC_QUANT_Q4_0, dst, src, K);
        for (int64_t b = 0; b + HC_Q4_0X4_GROUP <= K / HC_QK; b += HC_Q4_0X4_GROUP)
            q4_0_to_x4((hc_block_q4_0 *)dst + b);
        return;
    }
    if (quant == HC_QUANT_Q4_K) {
        for (int64_t b = 0; b < K / HC_QKK; b++) quantize_q4_k((hc_block_q4_k *)dst + b, src + b * HC_QKK);
        return;
    }
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
    if (quant == HC_QUANT_BF16R16) {
        for (int64_t k = 0; k < K; k++) dst[k] = hc_bf16_to_f32(((const uint16_t *)src)[k]);
        return;
    }
    if (quant == HC_QUANT_Q4_0X4) {
        int64_t b = 0;
        for (; b + HC_Q4_0X4_GROUP <= K / HC_QK; b += HC_Q4_0X4_GROUP) {
            hc_block_q4_0 plain[HC_Q4_0X4_GROUP];
            x4_to_q4_0(plain, (const hc_block_q4_0 *)src + b);
            hc_dequantize_row(HC_QUANT_Q4_0, dst + b * HC_QK, plain, HC_Q4_0X4_GROUP * HC_QK);
        }
        hc_dequantize_row(HC_QUANT_Q4_0, dst + b * HC_QK, (const hc_block_q4_0 *)src + b, K - b * HC_QK);
        return;
    }
    if (quant == HC_QUANT_Q4_K) {
        for (int64_t b = 0; b < K / HC_QKK; b++) {
            const hc_block_q4_k *blk = (const hc_block_q4_k *)src + b;
            const float d = hc_f16_to_f32(blk->d), dmin = hc_f16_to_f32(blk->dmin);
            for (int j = 0; j < 8; j++) {
                int sc, m;
                hc_q4_k_scale_min(blk->scales, j, &sc, &m);
                const uint8_t *q = blk->qs + j / 2 * 32;
                for (int i = 0; i < 32; i++)
                    dst[b * HC_QKK + j * 32 + i] = d * (float)sc * (float)((j & 1) ? q[i] >> 4 : q[i] & 0xF) - dmin * (float)m;
            }
        }
        return;
    }
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

/* ---- r16 layouts (quant.h) ---------------------------------------------------------------- */

void hc_quantize_mat_row(int quant, void *mat, int64_t N, int64_t K, int64_t n, const float *src) {
    const size_t rb = hc_quant_row_bytes(quant, K);
    if (!hc_quant_is_grouped(quant) || n >= N / 16 * 16) {
        hc_quantize_row(hc_quant_tail_layout(quant), (uint8_t *)mat + rb * (size_t)n, src, K);
        return;
    }
    const int64_t nb = K / HC_QK;
    const int r = (int)(n % 16);
    uint8_t *group = (uint8_t *)mat + rb * (size_t)(n - r);
    if (quant == HC_QUANT_BF16R16) {
        for (int64_t p = 0; p < K / 2; p++) {
            const uint16_t pair[2] = {hc_f32_to_bf16(src[2 * p]), hc_f32_to_bf16(src[2 * p + 1])};
            memcpy(group + 64 * (size_t)p + 4 * r, pair, 4);
        }
        return;
    }
    if (quant == HC_QUANT_Q4_KR16) {
        for (int64_t sb = 0; sb < K / HC_QKK; sb++) {
            hc_block_q4_k blk;
            hc_quantize_row(HC_QUANT_Q4_K, &blk, src + sb * HC_QKK, HC_QKK);
            uint8_t *o = group + (size_t)sb * 16 * sizeof(hc_block_q4_k);
            memcpy(o + 2 * r, &blk.d, 2);
            memcpy(o + 32 + 2 * r, &blk.dmin, 2);
            for (int u = 0; u < 3; u++) memcpy(o + 64 + 64 * u + 4 * r, blk.scales + 4 * u, 4);
            for (int j = 0; j < 8; j++) { /* sub-block j: the low (even j) or high nibbles of qs[j/2*32 ..] */
                uint8_t *d = o + 256 + 256 * j;
                for (int i = 0; i < 4; i++)
                    for (int c = 0; c < 4; c++) {
                        const int lo = (blk.qs[j / 2 * 32 + 8 * i + c] >> (4 * (j % 2))) & 0xF;
                        const int hi = (blk.qs[j / 2 * 32 + 8 * i + 4 + c] >> (4 * (j % 2))) & 0xF;
                        d[64 * i + 4 * r + c] = (uint8_t)(lo | hi << 4);
                    }
            }
        }
        return;
    }
    for (int64_t b = 0; b < nb; b++) {
        size_t so, d_o;
        hc_r16_offsets(quant, nb, b, &so, &d_o);
        uint8_t *scales = group + so, *d = group + d_o;
        if (quant == HC_QUANT_Q8_0R16) {
            hc_block_q8_0 blk;
            hc_quantize_row(HC_QUANT_Q8_0, &blk, src + b * HC_QK, HC_QK);
            memcpy(scales + 2 * r, &blk.d, 2);
            for (int k = 0; k < HC_QK; k++) d[64 * (k / 4) + 4 * r + k % 4] = (uint8_t)(blk.q[k] ^ 0x80);
        } else {
            hc_block_q4_0 blk;
            hc_quantize_row(HC_QUANT_Q4_0, &blk, src + b * HC_QK, HC_QK);
            memcpy(scales + 2 * r, &blk.d, 2);
            uint8_t q[HC_QK];
            for (int k = 0; k < HC_QK / 2; k++) q[k] = blk.q[k] & 0xF, q[k + 16] = blk.q[k] >> 4;
            for (int i = 0; i < 4; i++)
                for (int c = 0; c < 4; c++) d[64 * i + 4 * r + c] = (uint8_t)(q[8 * i + c] | q[8 * i + 4 + c] << 4);
        }
    }
}

void hc_dequantize_r16_block(int quant, float *dst, const void *mat, int64_t K, int64_t n, int64_t b) {
    const int r = (int)(n % 16);
    if (quant == HC_QUANT_BF16R16) {
        uint16_t pair[2];
        memcpy(pair, (const uint8_t *)mat + hc_quant_row_bytes(quant, K) * (size_t)(n - r) + 64 * (size_t)b + 4 * r, 4);
        dst[0] = hc_bf16_to_f32(pair[0]), dst[1] = hc_bf16_to_f32(pair[1]);
        return;
    }
    if (quant == HC_QUANT_Q4_KR16) { /* back to a plain q4_k block, then as q4_k */
        const uint8_t *o = (const uint8_t *)mat + hc_quant_row_bytes(quant, K) * (size_t)(n - r) +
                           (size_t)b * 16 * sizeof(hc_block_q4_k);
        hc_block_q4_k blk;
        memcpy(&blk.d, o + 2 * r, 2);
        memcpy(&blk.dmin, o + 32 + 2 * r, 2);
        for (int u = 0; u < 3; u++) memcpy(blk.scales + 4 * u, o + 64 + 64 * u + 4 * r, 4);
        memset(blk.qs, 0, sizeof blk.qs);
        for (int j = 0; j < 8; j++)
            for (int k = 0; k < HC_QK; k++) {
                const uint8_t byte = o[256 + 256 * j + 64 * (k / 8) + 4 * r + k % 4];
                const int q = (k % 8) < 4 ? byte & 0xF : byte >> 4;
                blk.qs[j / 2 * 32 + k] |= (uint8_t)(q << (4 * (j % 2)));
            }
        hc_dequantize_row(HC_QUANT_Q4_K, dst, &blk, HC_QKK);
        return;
    }
    const uint8_t *group = (const uint8_t *)mat + hc_quant_row_bytes(quant, K) * (size_t)(n - r);
    size_t so, d_o;
    hc_r16_offsets(quant, K / HC_QK, b, &so, &d_o);
    const uint8_t *sc = group + so, *data = group + d_o;
    uint16_t d16;
    memcpy(&d16, sc + 2 * r, 2);
    const float d = hc_f16_to_f32(d16);
    for (int k = 0; k < HC_QK; k++) {
        if (quant == HC_QUANT_Q8_0R16) {
            dst[k] = d * (float)((int)data[64 * (k / 4) + 4 * r + k % 4] - 128);
        } else {
            const uint8_t byte = data[64 * (k / 8) + 4 * r + k % 4];
            dst[k] = d * (float)(((k % 8) < 4 ? byte & 0xF : byte >> 4) - 8);
        }
    }
}
