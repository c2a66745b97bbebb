/* Block-quantized weight formats (quantize on load), as llama.cpp defines them:
 *   q8_0: blocks of 32 weights, an f16 scale d and 32 int8: w = d * q
 *   q4_0: blocks of 32 weights, an f16 scale d and 16 bytes of nibbles (elements 0-15 in the
 *         low nibbles, 16-31 in the high): w = d * (q - 8) */
#ifndef HC_BACKEND_CPU_QUANT_H
#define HC_BACKEND_CPU_QUANT_H

#include <stddef.h>
#include <stdint.h>

#define HC_QK 32

typedef struct {
    uint16_t d; /* f16 */
    int8_t q[HC_QK];
} hc_block_q8_0;

typedef struct {
    uint16_t d; /* f16 */
    uint8_t q[HC_QK / 2];
} hc_block_q4_0;

enum { HC_QUANT_NONE = 0, HC_QUANT_Q8_0 = 1, HC_QUANT_Q4_0 = 2 };

size_t hc_quant_row_bytes(int quant, int64_t K);
/* Quantizes one row of K floats (K a multiple of 32). */
void hc_quantize_row(int quant, void *dst, const float *src, int64_t K);
/* Widens one quantized row back to floats. */
void hc_dequantize_row(int quant, float *dst, const void *src, int64_t K);

#endif
