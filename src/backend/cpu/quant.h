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
 *         boundary is itself a q4_0x4 row.
 *   q4_0r16, q8_0r16: q4_0's and q8_0's numbers with 16 rows interleaved, so one 64-byte load
 *         holds 4 weights of each of 16 rows and one vpdpbusd against 4 broadcast activations
 *         adds into all 16 rows' sums (decode then needs no shuffles and one conversion and one
 *         FMA per block for 16 rows; quantize on load picks these where VNNI is). Each group of
 *         16 rows (rows 16g..16g+15, starting at byte 16g x row bytes) holds its blocks in pairs:
 *           [16 f16 scales of block b][16 of block b+1][block b's data][block b+1's data]
 *         (a lone last block: [scales][data]). Data is 64-byte vectors whose byte 4r+c is row r's:
 *           q4_0r16: 4 vectors; vector i: low nibble = q[8i+c], high nibble = q[8i+4+c] (0..15)
 *           q8_0r16: 8 vectors; vector j: q[4j+c] + 128 (unsigned)
 *         A pair is 32 rows x 18 (or 34) bytes, so the sizes are q4_0's and q8_0's and, for an even
 *         number of blocks, every vector is 64-byte aligned.
 *   q4_kr16: q4_k's numbers, 16 rows interleaved the same way, a super-block of 16 rows (2304
 *         bytes, 64-byte aligned) at a time:
 *           [16 f16 d][16 f16 dmin][u0 x 16][u1 x 16][u2 x 16][8 sub-blocks' data]
 *         where u0, u1, u2 are the three 32-bit words of each row's 12 packed scale bytes, and a
 *         sub-block's data is q4_0r16's 4 vectors (q 0..15).
 *         Rows past the last whole group are stored one by one at 16g x row bytes + ..., as
 *         q4_0x4, q8_0 and q4_k rows.
 *   bf16r16: not a quantization: bf16 weights as stored, 16 rows interleaved by pairs of k, for
 *         the vdpbf16ps kernels (the CPU repacks bf16 weights read into RAM when it computes in
 *         bf16). Group g (rows 16g..16g+15) is K/2 vectors of 64 bytes; vector p holds
 *         W[16g + r][2p], W[16g + r][2p + 1] at bytes 4r, 4r + 2. So one load serves 16 rows and x
 *         is a broadcast pair, with no horizontal sums. Rows past the last whole group are plain
 *         bf16 rows. A "block" is one pair. */
#ifndef HC_BACKEND_CPU_QUANT_H
#define HC_BACKEND_CPU_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

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

enum { HC_QUANT_NONE = 0, HC_QUANT_Q8_0 = 1, HC_QUANT_Q4_0 = 2, HC_QUANT_Q4_K = 3, HC_QUANT_Q4_0X4 = 4,
       HC_QUANT_Q4_0R16 = 5, HC_QUANT_Q8_0R16 = 6, HC_QUANT_Q4_KR16 = 7,
       HC_QUANT_BF16R16 = 8 };

#define HC_Q4_0X4_GROUP 4 /* blocks per group */

/* Weights a block holds (32, 256 for q4_k, 2 for bf16r16), and its bytes. */
int64_t hc_quant_block_elems(int quant);
size_t hc_quant_block_bytes(int quant);
size_t hc_quant_row_bytes(int quant, int64_t K);
/* The 6-bit scale and min of sub-block j (0..7) of a q4_k block. */
void hc_q4_k_scale_min(const uint8_t *scales, int j, int *sc, int *m);
/* All 8 at once: byte j of sc (two words) is sub-block j's scale, of m its min; the layout
 * hc_q4_k_scale_min reads one by one, unpacked four at a time with 32-bit masks. */
static inline void hc_q4_k_unpack_scales(const uint8_t *packed, uint32_t sc[2], uint32_t m[2]) {
    uint32_t u[3];
    memcpy(u, packed, 12);
    const uint32_t low6 = 0x3f3f3f3f, low4 = 0x0f0f0f0f, top2 = 0x03030303;
    sc[0] = u[0] & low6;
    sc[1] = (u[2] & low4) | (((u[0] >> 6) & top2) << 4);
    m[0] = u[1] & low6;
    m[1] = ((u[2] >> 4) & low4) | (((u[1] >> 6) & top2) << 4);
}
/* Quantizes one row of K floats (K a multiple of the block; bf16r16: a plain bf16 row). */
void hc_quantize_row(int quant, void *dst, const float *src, int64_t K);
/* Widens one quantized row back to floats (not the r16 layouts: their rows are interleaved). */
void hc_dequantize_row(int quant, float *dst, const void *src, int64_t K);

/* r16 layouts: whether quant is one of the VNNI ones (q4_0r16, q8_0r16, q4_kr16), whether its
 * rows are interleaved in 16s at all (those and bf16r16), and the layout of its rows past the
 * last whole group of 16 (q4_0x4, q8_0, q4_k; bf16r16's plain rows); quant itself for every
 * other format. */
bool hc_quant_is_r16(int quant);
bool hc_quant_is_grouped(int quant);
int hc_quant_tail_layout(int quant);
/* Quantizes src (K floats) into row n of the [N, K] matrix mat in any layout (the r16 layouts
 * scatter it into its group). Rows of one group may be written by different threads. */
void hc_quantize_mat_row(int quant, void *mat, int64_t N, int64_t K, int64_t n, const float *src);
/* Widens block b (32 weights, 256 for q4_kr16, 2 for bf16r16) of row n of a grouped matrix, n
 * inside a whole group. */
void hc_dequantize_r16_block(int quant, float *dst, const void *mat, int64_t K, int64_t n, int64_t b);
/* Where in a group block b keeps its 16 scales and its data (nb blocks a row; q4_0r16 and
 * q8_0r16): byte offsets. Inline, since the decode kernels ask for every block. */
static inline void hc_r16_offsets(int quant, int64_t nb, int64_t b, size_t *scales, size_t *data) {
    const size_t db = quant == HC_QUANT_Q4_0R16 ? 256 : 512; /* a block's data for 16 rows */
    const size_t pair = (size_t)(b / 2) * (64 + 2 * db);
    const bool lone = b == nb - 1 && nb % 2;
    *scales = pair + 32 * (size_t)(b % 2);
    *data = pair + (lone ? 32 : 64) + db * (size_t)(b % 2);
}

#endif
