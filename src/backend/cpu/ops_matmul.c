/* Embedding gather and matmul with weights in their stored dtype. */
#include "backend/cpu/cpu.h"
#include "backend/cpu/quant.h"

void hc_cpu_embedding(hc_backend *be, float *out, const hc_mat *table, const int32_t *ids, int64_t T, float scale,
                      bool accumulate) {
    (void)be;
    const int64_t C = table->cols;
    for (int64_t t = 0; t < T; t++) {
        float *o = out + t * C; /* [C] */
        const int64_t row = ids[t];
        for (int64_t c = 0; c < C; c++) {
            int64_t idx = table->transposed ? c * table->ld + row : row * table->ld + c;
            float v = hc_load_f32(table->data, table->dtype, idx) * scale;
            o[c] = accumulate ? o[c] + v : v;
        }
    }
}

/* Dot of an f32 vector with a contiguous weight row. Eight partial sums let the compiler
 * vectorise without reassociating; the order is fixed, so results are reproducible. */
#define DOT_BODY(LOAD)                                                                                                 \
    float acc[8] = {0};                                                                                                \
    int64_t k = 0;                                                                                                     \
    for (; k + 8 <= K; k += 8)                                                                                         \
        for (int j = 0; j < 8; j++) acc[j] += x[k + j] * LOAD(k + j);                                                  \
    float s = 0;                                                                                                       \
    for (; k < K; k++) s += x[k] * LOAD(k);                                                                            \
    return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));

static float dot_f32(const float *x, const float *w, int64_t K) {
#define LOAD_F32(i) w[i]
    DOT_BODY(LOAD_F32)
#undef LOAD_F32
}

static float dot_bf16(const float *x, const uint16_t *w, int64_t K) {
#define LOAD_BF16(i) hc_bf16_to_f32(w[i])
    DOT_BODY(LOAD_BF16)
#undef LOAD_BF16
}

static float dot_f16(const float *x, const uint16_t *w, int64_t K) {
#define LOAD_F16(i) hc_f16_to_f32(w[i])
    DOT_BODY(LOAD_F16)
#undef LOAD_F16
}

/* Quantized rows: widened a unit at a time (a block, or a q4_0x4 group of 4 blocks), then the
 * same dot. Block b starts at b * (its bytes) in every format. */
static float dot_quant(const float *x, const void *row, int quant, int64_t K) {
    float s = 0, tmp[HC_QKK]; /* [one unit] */
    const int64_t be = hc_quant_block_elems(quant), nb = K / be;
    const size_t bb = hc_quant_block_bytes(quant);
    for (int64_t b = 0; b < nb;) {
        const int64_t blocks = quant == HC_QUANT_Q4_0X4 && b + HC_Q4_0X4_GROUP <= nb ? HC_Q4_0X4_GROUP : 1;
        hc_dequantize_row(quant, tmp, (const char *)row + (size_t)b * bb, blocks * be);
        for (int64_t i = 0; i < blocks * be; i++) s += x[b * be + i] * tmp[i];
        b += blocks;
    }
    return s;
}

/* Row n of an r16 matrix (quant.h), inside a whole group of 16: block by block, the same dot. */
static float dot_r16(const float *x, const void *mat, int quant, int64_t K, int64_t n) {
    float s = 0, tmp[HC_QKK]; /* [one block] */
    const int64_t be = hc_quant_block_elems(quant);
    for (int64_t b = 0; b < K / be; b++) {
        hc_dequantize_r16_block(quant, tmp, mat, K, n, b);
        for (int64_t i = 0; i < be; i++) s += x[b * be + i] * tmp[i];
    }
    return s;
}

void hc_cpu_matmul(hc_backend *be, float *out, const float *x, const hc_mat *w, const hc_vec *bias, int64_t T) {
    (void)be;
    const int64_t N = w->rows, K = w->cols;
    if (w->quant) {
        const size_t rb = hc_quant_row_bytes(w->quant, K);
        const int64_t grouped = hc_quant_is_grouped(w->quant) ? N / 16 * 16 : 0; /* rows interleaved in 16s */
        for (int64_t n = 0; n < N; n++)
            for (int64_t t = 0; t < T; t++)
                out[t * N + n] = n < grouped ? dot_r16(x + t * K, w->data, w->quant, K, n)
                                             : dot_quant(x + t * K, (const char *)w->data + (size_t)n * rb,
                                                         hc_quant_tail_layout(w->quant), K);
    } else if (!w->transposed) {
        /* Weight rows outermost: each row is read from memory once for all T tokens. */
        for (int64_t n = 0; n < N; n++) {
            for (int64_t t = 0; t < T; t++) {
                const float *xt = x + t * K; /* [K] */
                float s;
                switch (w->dtype) {
                case HC_DTYPE_F32: s = dot_f32(xt, (const float *)w->data + n * w->ld, K); break;
                case HC_DTYPE_BF16: s = dot_bf16(xt, (const uint16_t *)w->data + n * w->ld, K); break;
                default: s = dot_f16(xt, (const uint16_t *)w->data + n * w->ld, K); break;
                }
                out[t * N + n] = s;
            }
        }
    } else {
        /* W stored [K, N]: accumulate rows of W scaled by x[k]. */
        for (int64_t t = 0; t < T; t++) {
            const float *xt = x + t * K;
            float *ot = out + t * N;
            for (int64_t n = 0; n < N; n++) ot[n] = 0;
            for (int64_t k = 0; k < K; k++) {
                const float xk = xt[k];
                for (int64_t n = 0; n < N; n++) ot[n] += xk * hc_load_f32(w->data, w->dtype, k * w->ld + n);
            }
        }
    }
    if (bias && bias->data)
        for (int64_t t = 0; t < T; t++)
            for (int64_t n = 0; n < N; n++) out[t * N + n] += hc_load_f32(bias->data, bias->dtype, n);
}
