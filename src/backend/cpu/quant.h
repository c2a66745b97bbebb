/* Block-quantized weight formats (quantize on load), as llama.cpp defines them:
 *   q8_0: blocks of 32 weights, an f16 scale d and 32 int8: w = d * q
 *   q4_0: blocks of 32 weights, an f16 scale d and 16 bytes of nibbles (elements 0-15 in the
 *         low nibbles, 16-31 in the high): w = d * (q - 8)
 *   q4_k: super-blocks of 256 weights in 8 sub-blocks of 32, f16 d and dmin, 6-bit scales sc[j]
 *         and mins m[j] packed in 12 bytes, and nibbles (for each 64 values, 32 bytes: the low
 *         nibbles are the first sub-block, the high the second): w = d*sc[j]*q - dmin*m[j]
 *   q4_0x4: q4_0's numbers in a CPU layout (quantize on load for the AVX512-VNNI kernels picks
 *         it): each run of 4 blocks of a row is one 72-byte group, its 4 f16 scales then 64
 *         bytes whose low nibbles are blocks 0-1 and high nibbles blocks 2-3, each in element
 *         order, so one 64-byte load and a shift give 128 weights in the activations' order.
 *         A row's last (K/32 mod 4) blocks stay plain q4_0 blocks. Every block keeps its 18
 *         bytes, so block b of a row is at 18*b either way, and a row's tail from a group
 *         boundary is itself a q4_0x4 row. */
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

#define HC_QKK 256

typedef struct {
    uint16_t d, dmin; /* f16 */
    uint8_t scales[12];
    uint8_t qs[HC_QKK / 2];
} hc_block_q4_k;

enum { HC_QUANT_NONE = 0, HC_QUANT_Q8_0 = 1, HC_QUANT_Q4_0 = 2, HC_QUANT_Q4_K = 3, HC_QUANT_Q4_0X4 = 4 };

#define HC_Q4_0X4_GROUP 4 /* blocks per group */

/* Weights a block holds (32, or 256 for q4_k), and its bytes. */
int64_t hc_quant_block_elems(int quant);
size_t hc_quant_block_bytes(int quant);
size_t hc_quant_row_bytes(int quant, int64_t K);
/* The 6-bit scale and min of sub-block j (0..7) of a q4_k block. */
void hc_q4_k_scale_min(const uint8_t *scales, int j, int *sc, int *m);
/* Quantizes one row of K floats (K a multiple of the block). */
void hc_quantize_row(int quant, void *dst, const float *src, int64_t K);
/* Widens one quantized row back to floats. */
void hc_dequantize_row(int quant, float *dst, const void *src, int64_t K);

#endif
