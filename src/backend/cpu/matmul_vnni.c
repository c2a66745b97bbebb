/* Quantized weights (q4_0 as q4_0x4, q4_k, q8_0) on AVX512-VNNI. vpdpbusd multiplies 64 unsigned bytes
 * by 64 signed bytes and adds them in fours into 16 int32 lanes: one instruction where the
 * AVX2 kernels (matmul_fast.c) need four, and no sign trick, because nibbles are unsigned.
 *
 * Both compute what the AVX2 kernels compute, against activations quantized to int8 (quantize_acts
 * in matmul_fast.c: a scale per block of 32, or per 256 for q4_k, kept per block of 32):
 *   q4_0: out = sum_b dw[b] * dx[b] * sum_i (q[i] - 8) * qx[i]
 *   q4_k: out = sum_j d*sc[j] * dx[j] * sum_i q[i]*qx[i]  -  sum_j dmin*m[j] * sx[j]
 * where sx[j] = dx[j] * sum_i qx[i] is precomputed per activation block.
 *
 * Decode streams a row at a time; a few tokens come in tiles of TB tokens x RB rows (a weight
 * read once per TB tokens, an activation once per RB rows); 8 tokens or more put rows across
 * lanes (below). Each output keeps its own accumulator, so the tiling (and so the thread count)
 * never changes a result's bits.
 *
 * Shapes: out [T, N]; qx [T, K] int8; dx, sx [T, K/32]; weights N rows of K/32 (or K/256)
 * blocks. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "backend/cpu/fast.h"
#include "backend/cpu/quant.h"

#define VNNI "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"
#define TILE_FN static inline __attribute__((always_inline, target(VNNI)))

/* An index vector for _mm512_permutexvar_ps: int32 lanes 0-7 take element a, lanes 8-15 element
 * b (two blocks of 32 weights each own half the lanes of a vpdpbusd result). */
TILE_FN __m512i lanes8(int a, int b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(a)), _mm256_set1_epi32(b), 1);
}

/* vpdpbusd of w against the 4 bytes at p in every lane, the broadcast folded into the instruction
 * ({1to16}); gcc 12 loads it with a separate vpbroadcastd. Only q4_kr16's decode uses it: there,
 * folded, it read 0.035 more of the bandwidth in this VM's fast memory regime (paired, 1B model).
 * The same change cost q4_0r16's decode 0.03 and q8_0r16's 0.15, though q4_0r16 ran 9% faster in
 * cache and q8_0r16 no slower (bench/README, session 18). */
TILE_FN __m512i dpbusd_bcast(__m512i acc, __m512i w, const int8_t *p) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*(const char(*)[4])(const void *)p));
    return acc;
}

bool hc_cpu_has_vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

/* ---- q4_0: plain blocks exist only as the last (nb mod 4) blocks of a q4_0x4 row; quantize on
 * load repacks everything else where these kernels run. */

/* One plain block against 32 activations, in 256 bits: dw * dx * sum (q - 8) x. */
TILE_FN float q4_0_block_dot(const int8_t *x, float dx, const hc_block_q4_0 *blk) {
    const __m128i v = _mm_loadu_si128((const __m128i *)blk->q);
    const __m256i w = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1),
                                       _mm256_set1_epi8(0x0F));
    const __m256i xv = _mm256_loadu_si256((const __m256i *)x), zero = _mm256_setzero_si256();
    const __m256i minus8x = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, _mm256_set1_epi8(8), xv));
    const __m256i s = _mm256_dpbusd_epi32(minus8x, w, xv);
    const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    const __m128i s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    return _cvtsh_ss(blk->d) * dx * (float)(_mm_cvtsi128_si32(s2) + _mm_extract_epi32(s2, 1));
}

/* ---- q4_0x4 (quant.h): q4_0 repacked at load so 4 blocks are one 64-byte load --------------
 * The low nibbles of a group's 64 bytes are blocks 0-1 in element order, the high ones blocks
 * 2-3: and / shift-and give two vpdpbusd operands already in the activations' order, whose
 * int32 lanes 0-7 belong to the first block of the pair and 8-15 to the second. */

#define X4_BYTES 72 /* a group: 4 f16 scales, 64 bytes of nibbles */

/* Decode: one row, two groups per step into four accumulators (independent FMA chains); the
 * "- 8" once per block as 8 * dw * sx. A row's last (nb mod 4) blocks are plain q4_0. */
TILE_FN float q4_0x4_decode_row(const int8_t *x, const float *dx, const float *sx, const uint8_t *row, int64_t nb) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i first = lanes8(0, 1), second = lanes8(2, 3);
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    __m128 corr = _mm_setzero_ps(); /* sum of dw * sx, per block lane */
    const int64_t ng = nb / HC_Q4_0X4_GROUP;
    int64_t g = 0;
#define X4_GROUP_STEP(G, A)                                                                                            \
    do {                                                                                                               \
        const uint8_t *grp = row + (G) * X4_BYTES;                                                                     \
        hc_prefetch_ahead(grp, 1);                                                                                     \
        const __m512i v = _mm512_loadu_si512((const void *)(grp + 8));                                                 \
        const __m128 dw = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)grp));                                         \
        corr = _mm_fmadd_ps(dw, _mm_loadu_ps(sx + 4 * (G)), corr);                                                     \
        const __m512 sc = _mm512_castps128_ps512(_mm_mul_ps(dw, _mm_loadu_ps(dx + 4 * (G))));                          \
        const __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(v, m4),                        \
                                               _mm512_loadu_si512((const void *)(x + (G) * 128)));                     \
        const __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(_mm512_srli_epi16(v, 4), m4), \
                                               _mm512_loadu_si512((const void *)(x + (G) * 128 + 64)));                \
        acc[A] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_permutexvar_ps(first, sc), acc[A]);                    \
        acc[(A) + 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), _mm512_permutexvar_ps(second, sc), acc[(A) + 1]);       \
    } while (0)
    for (; g + 2 <= ng; g += 2) {
        X4_GROUP_STEP(g, 0);
        X4_GROUP_STEP(g + 1, 2);
    }
    if (g < ng) X4_GROUP_STEP(g, 0);
#undef X4_GROUP_STEP
    float tail = 0;
    for (int64_t b = ng * HC_Q4_0X4_GROUP; b < nb; b++) /* plain q4_0 blocks, in 256 bits */
        tail += q4_0_block_dot(x + b * HC_QK, dx[b], (const hc_block_q4_0 *)(const void *)row + b);
    const __m128 c2 = _mm_add_ps(corr, _mm_movehl_ps(corr, corr));
    const float c = _mm_cvtss_f32(_mm_add_ss(c2, _mm_movehdup_ps(c2)));
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]))) - 8.0f * c +
           tail;
}

/* Prompts: TB tokens x RB rows. Each group goes in two halves (blocks 0-1, then 2-3) so the
 * rows' weights and the spread scales fit in registers beside the 16 accumulators; the "- 8"
 * starts each accumulation at -8 x the activations' sums in fours. */
TILE_FN void q4_0x4_tile(float *const *out, const int8_t *const *x, const float *const *dx, const uint8_t *const *rows,
                         int64_t nb, const int TB, const int RB) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(8), zero = _mm512_setzero_si512();
    const __m512i spread[2] = {lanes8(0, 1), lanes8(2, 3)};
    __m512 acc[4][4];
    for (int t = 0; t < TB; t++)
        for (int r = 0; r < RB; r++) acc[t][r] = _mm512_setzero_ps();
    const int64_t ng = nb / HC_Q4_0X4_GROUP;
    for (int64_t g = 0; g < ng; g++) {
        for (int h = 0; h < 2; h++) {
            __m512i wv[4];
            __m512 dw[4];
            for (int r = 0; r < RB; r++) {
                const uint8_t *grp = rows[r] + g * X4_BYTES;
                const __m512i v = _mm512_loadu_si512((const void *)(grp + 8));
                wv[r] = _mm512_and_si512(h ? _mm512_srli_epi16(v, 4) : v, m4);
                dw[r] = _mm512_permutexvar_ps(spread[h], _mm512_castps128_ps512(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)grp))));
            }
            for (int t = 0; t < TB; t++) {
                const __m512i xv = _mm512_loadu_si512((const void *)(x[t] + g * 128 + h * 64));
                const __m512i minus8x = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, eight, xv));
                const __m512 dxv = _mm512_permutexvar_ps(spread[h], _mm512_castps128_ps512(_mm_loadu_ps(dx[t] + g * 4)));
                for (int r = 0; r < RB; r++) {
                    const __m512i s = _mm512_dpbusd_epi32(minus8x, wv[r], xv);
                    acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw[r], dxv), acc[t][r]);
                }
            }
        }
    }
    float tail[4][4] = {{0}};
    const int64_t b0 = ng * HC_Q4_0X4_GROUP;
    for (int r = 0; r < RB; r++) /* plain q4_0 blocks */
        for (int t = 0; t < TB; t++)
            for (int64_t b = b0; b < nb; b++)
                tail[t][r] += q4_0_block_dot(x[t] + b * HC_QK, dx[t][b], (const hc_block_q4_0 *)(const void *)rows[r] + b);
    for (int t = 0; t < TB; t++)
        for (int r = 0; r < RB; r++) *out[t * RB + r] = _mm512_reduce_add_ps(acc[t][r]) + tail[t][r];
}

/* ---- q8_0 prompts: weights are signed, so the activations are made unsigned instead (x + 128,
 * a flip of the top bit) and 128 * sum(w), per row, is taken back off: the accumulator starts
 * at -128 x the weights' sums in fours. Two blocks per vpdpbusd, in their natural order. */
TILE_FN void q8_0_tile(float *const *out, const int8_t *const *x, const float *const *dx,
                       const hc_block_q8_0 *const *rows, int64_t nb, const int TB, const int RB) {
    const __m512i top = _mm512_set1_epi8((char)0x80), zero = _mm512_setzero_si512();
    const __m512i pair_lanes = lanes8(0, 1);
    __m512 acc[4][4];
    for (int t = 0; t < TB; t++)
        for (int r = 0; r < RB; r++) acc[t][r] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m512i wv[4], minus128w[4];
        __m512 dw[4];
        for (int r = 0; r < RB; r++) {
            const hc_block_q8_0 *b0 = rows[r] + b, *b1 = b0 + 1;
            wv[r] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)b0->q)),
                                       _mm256_loadu_si256((const __m256i *)b1->q), 1);
            minus128w[r] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, top, wv[r]));
            const __m128i d = _mm_cvtsi32_si128((int)(b0->d | (uint32_t)b1->d << 16));
            dw[r] = _mm512_permutexvar_ps(pair_lanes, _mm512_castps128_ps512(_mm_cvtph_ps(d)));
        }
        for (int t = 0; t < TB; t++) {
            const __m512i xu = _mm512_xor_si512(_mm512_loadu_si512((const void *)(x[t] + b * HC_QK)), top);
            const __m128 dx2 = _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(dx[t] + b))); /* movq: any alignment */
            const __m512 dxv = _mm512_permutexvar_ps(pair_lanes, _mm512_castps128_ps512(dx2));
            for (int r = 0; r < RB; r++) {
                const __m512i s = _mm512_dpbusd_epi32(minus128w[r], xu, wv[r]);
                acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw[r], dxv), acc[t][r]);
            }
        }
    }
    float tail[4][4] = {{0}};
    for (; b < nb; b++) /* an odd last block */
        for (int r = 0; r < RB; r++) {
            const hc_block_q8_0 *b0 = rows[r] + b;
            const float dw0 = _cvtsh_ss(b0->d);
            for (int t = 0; t < TB; t++) {
                int si = 0;
                for (int i = 0; i < HC_QK; i++) si += b0->q[i] * x[t][b * HC_QK + i];
                tail[t][r] = dw0 * dx[t][b] * (float)si;
            }
        }
    for (int t = 0; t < TB; t++)
        for (int r = 0; r < RB; r++) *out[t * RB + r] = _mm512_reduce_add_ps(acc[t][r]) + tail[t][r];
}

/* Decode (one token) on q8_0, four blocks per step: the activations made unsigned once per call
 * (xu = x + 128, a flip of the top bit), so each pair of blocks is vpdpbusd(xu, w) from an
 * accumulator starting at -128 x the weights' sums. xu: [K]. */
TILE_FN float q8_0_decode_row(const uint8_t *xu, const float *dx, const hc_block_q8_0 *row, int64_t nb) {
    const __m512i top = _mm512_set1_epi8((char)0x80), zero = _mm512_setzero_si512();
    const __m512i first = lanes8(0, 1), second = lanes8(2, 3);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        const hc_block_q8_0 *blk = row + b;
        hc_prefetch_ahead(blk, 2); /* 136 bytes a step */
        __m512i s[2];
        for (int p = 0; p < 2; p++) {
            const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)blk[2 * p].q)),
                                                 _mm256_loadu_si256((const __m256i *)blk[2 * p + 1].q), 1);
            const __m512i minus128w = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, top, w));
            s[p] = _mm512_dpbusd_epi32(minus128w, _mm512_loadu_si512((const void *)(xu + (b + 2 * p) * HC_QK)), w);
        }
        __m128i d16 = _mm_cvtsi32_si128((int)(blk[0].d | (uint32_t)blk[1].d << 16));
        d16 = _mm_insert_epi32(d16, (int)(blk[2].d | (uint32_t)blk[3].d << 16), 1);
        const __m512 sc = _mm512_castps128_ps512(_mm_mul_ps(_mm_cvtph_ps(d16), _mm_loadu_ps(dx + b)));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[0]), _mm512_permutexvar_ps(first, sc), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[1]), _mm512_permutexvar_ps(second, sc), acc1);
    }
    float tail = 0;
    for (; b < nb; b++) { /* the last 1-3 blocks, in 256 bits */
        const __m256i w = _mm256_loadu_si256((const __m256i *)row[b].q), z = _mm256_setzero_si256();
        const __m256i minus128w = _mm256_sub_epi32(z, _mm256_dpbusd_epi32(z, _mm256_set1_epi8((char)0x80), w));
        const __m256i sv = _mm256_dpbusd_epi32(minus128w, _mm256_loadu_si256((const __m256i *)(xu + b * HC_QK)), w);
        const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sv), _mm256_extracti128_si256(sv, 1));
        const __m128i s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        tail += _cvtsh_ss(row[b].d) * dx[b] * (float)(_mm_cvtsi128_si32(s2) + _mm_extract_epi32(s2, 1));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + tail;
}

/* ---- q4_k: a super-block is 8 sub-blocks of 32; 64 bytes of nibbles hold four of them --------
 * Bytes 64h..64h+63 of qs split into low nibbles = sub-blocks [4h, 4h+2] and high nibbles =
 * [4h+1, 4h+3], 32 elements each, so each vpdpbusd covers two sub-blocks: int32 lanes 0-7 the
 * first, 8-15 the second. */

TILE_FN __m256 bytes8_to_ps(const uint32_t v[2]) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set_epi32(0, 0, (int)v[1], (int)v[0])));
}

TILE_FN void q4_k_tile(float *const *out, const int8_t *const *x, const float *const *dx, const float *const *sx,
                       const hc_block_q4_k *const *rows, int64_t nsb, const int TB, const int RB) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), zero = _mm512_setzero_si512();
    /* which of the 8 sub-block scales each int32 lane takes: [first x8, second x8] */
    const __m512i lanes[4] = {lanes8(0, 2), lanes8(1, 3), lanes8(4, 6), lanes8(5, 7)};
    __m512 acc[4][4];
    for (int t = 0; t < TB; t++)
        for (int r = 0; r < RB; r++) acc[t][r] = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        __m256 dsc[4], dmn[4]; /* d*sc[j] and dmin*m[j] of row r */
        for (int r = 0; r < RB; r++) {
            const hc_block_q4_k *blk = rows[r] + sb;
            uint32_t sc[2], m[2];
            hc_q4_k_unpack_scales(blk->scales, sc, m);
            dsc[r] = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(blk->d)), bytes8_to_ps(sc));
            dmn[r] = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(blk->dmin)), bytes8_to_ps(m));
        }
        for (int t = 0; t < TB; t++)
            for (int r = 0; r < RB; r++)
                acc[t][r] = _mm512_fnmadd_ps(_mm512_zextps256_ps512(dmn[r]),
                                             _mm512_zextps256_ps512(_mm256_loadu_ps(sx[t] + sb * 8)), acc[t][r]);
        for (int h = 0; h < 2; h++) {
            __m512i lo[4], hi[4];
            for (int r = 0; r < RB; r++) {
                const __m512i v = _mm512_loadu_si512((const void *)(rows[r][sb].qs + 64 * h));
                lo[r] = _mm512_and_si512(v, m4);
                hi[r] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            }
            for (int t = 0; t < TB; t++) {
                const int8_t *xs = x[t] + sb * HC_QKK + 128 * h;
                const __m512i xlo = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)xs)),
                                                       _mm256_loadu_si256((const __m256i *)(xs + 64)), 1);
                const __m512i xhi = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(xs + 32))),
                                                       _mm256_loadu_si256((const __m256i *)(xs + 96)), 1);
                const __m256 dx8 = _mm256_loadu_ps(dx[t] + sb * 8);
                for (int r = 0; r < RB; r++) {
                    const __m512 s8 = _mm512_zextps256_ps512(_mm256_mul_ps(dsc[r], dx8));
                    acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, lo[r], xlo)),
                                                _mm512_permutexvar_ps(lanes[2 * h], s8), acc[t][r]);
                    acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, hi[r], xhi)),
                                                _mm512_permutexvar_ps(lanes[2 * h + 1], s8), acc[t][r]);
                }
            }
        }
    }
    for (int t = 0; t < TB; t++)
        for (int r = 0; r < RB; r++) *out[t * RB + r] = _mm512_reduce_add_ps(acc[t][r]);
}

/* Decode (one token) on q4_k: the activations are first put in the nibbles' order (each 128
 * values as [0-31, 64-95 | 32-63, 96-127]), once per call instead of once per row, so a half
 * super-block's two activation vectors are two plain loads. xp: [K] in that order. */
TILE_FN float q4_k_decode_row(const int8_t *xp, const float *dx, const float *sx, const hc_block_q4_k *row,
                              int64_t nsb) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), zero = _mm512_setzero_si512();
    const __m512i lanes[4] = {lanes8(0, 2), lanes8(1, 3), lanes8(4, 6), lanes8(5, 7)};
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m256 mins = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const hc_block_q4_k *blk = row + sb;
        hc_prefetch_ahead(blk, 3); /* 144 bytes a step */
        uint32_t sc[2], m[2];
        hc_q4_k_unpack_scales(blk->scales, sc, m);
        const __m512 s8 = _mm512_zextps256_ps512(
            _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(blk->d)), bytes8_to_ps(sc)), _mm256_loadu_ps(dx + sb * 8)));
        mins = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(blk->dmin)), bytes8_to_ps(m)),
                               _mm256_loadu_ps(sx + sb * 8), mins);
        const int8_t *xs = xp + sb * HC_QKK;
        for (int h = 0; h < 2; h++) {
            const __m512i v = _mm512_loadu_si512((const void *)(blk->qs + 64 * h));
            const __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            const __m512i ilo = _mm512_dpbusd_epi32(zero, lo, _mm512_loadu_si512((const void *)(xs + 128 * h)));
            const __m512i ihi = _mm512_dpbusd_epi32(zero, hi, _mm512_loadu_si512((const void *)(xs + 128 * h + 64)));
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ilo), _mm512_permutexvar_ps(lanes[2 * h], s8), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ihi), _mm512_permutexvar_ps(lanes[2 * h + 1], s8), acc1);
        }
    }
    const __m128 m4s = _mm_add_ps(_mm256_castps256_ps128(mins), _mm256_extractf128_ps(mins, 1));
    const __m128 m2s = _mm_add_ps(m4s, _mm_movehl_ps(m4s, m4s));
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) - _mm_cvtss_f32(_mm_add_ss(m2s, _mm_movehdup_ps(m2s)));
}

/* The largest K whose prepared activations the decode kernels keep on the stack. */
#define DECODE_MAX_K 32768

/* ---- drivers: rows [n0, n1) of out, all T tokens ------------------------------------------------
 * Tiles of 4 rows; tokens one at a time for decode, 4 at a time for prompts, in chunks of 64
 * tokens so the chunk's activations stay in cache while the rows stream past. Leftover rows
 * and tokens repeat the last pointer and write to a dummy. */

#define TOKEN_CHUNK 64

typedef struct {
    float *out;
    const int8_t *qx;
    const float *dx, *sx;
    int64_t T, N, K;
} tile_args;

static void tile_pointers(const tile_args *a, int64_t t, int64_t te, int64_t n, int64_t n1, float **os,
                          const int8_t **xs, const float **dxs, const float **sxs, float *dummy) {
    for (int tt = 0; tt < 4; tt++) {
        const int64_t ti = t + tt < te ? t + tt : t;
        xs[tt] = a->qx + ti * a->K;
        dxs[tt] = a->dx + ti * (a->K / HC_QK);
        sxs[tt] = a->sx + ti * (a->K / HC_QK);
        for (int r = 0; r < 4; r++) os[tt * 4 + r] = (t + tt < te && n + r < n1) ? a->out + (t + tt) * a->N + n + r : dummy;
    }
}

/* A format's 4 x 4 tile, as the shared driver calls it. */
typedef void (*tile4_fn)(float *const *os, const int8_t *const *xs, const float *const *dxs, const float *const *sxs,
                         const void *const *rows, int64_t nblocks);

__attribute__((target(VNNI))) static void q4_0x4_tile4(float *const *os, const int8_t *const *xs, const float *const *dxs,
                                                       const float *const *sxs, const void *const *rows, int64_t nb) {
    (void)sxs;
    q4_0x4_tile(os, xs, dxs, (const uint8_t *const *)rows, nb, 4, 4);
}

__attribute__((target(VNNI))) static void q4_k_tile4(float *const *os, const int8_t *const *xs, const float *const *dxs,
                                                     const float *const *sxs, const void *const *rows, int64_t nsb) {
    q4_k_tile(os, xs, dxs, sxs, (const hc_block_q4_k *const *)rows, nsb, 4, 4);
}

__attribute__((target(VNNI))) static void q8_0_tile4(float *const *os, const int8_t *const *xs, const float *const *dxs,
                                                     const float *const *sxs, const void *const *rows, int64_t nb) {
    (void)sxs;
    q8_0_tile(os, xs, dxs, (const hc_block_q8_0 *const *)rows, nb, 4, 4);
}

/* Rows [n0, n1) for all tokens in tiles of 4 tokens x 4 rows (leftovers repeat pointers and
 * write to a dummy). */
static void run_tiles(const tile_args *a, const hc_mat *w, size_t row_bytes, int64_t nblocks, int64_t n0, int64_t n1,
                      tile4_fn tile) {
    float dummy;
    for (int64_t tc = 0; tc < a->T; tc += TOKEN_CHUNK) {
        const int64_t te = tc + TOKEN_CHUNK < a->T ? tc + TOKEN_CHUNK : a->T;
        for (int64_t n = n0; n < n1; n += 4) {
            const void *rows[4];
            for (int r = 0; r < 4; r++) rows[r] = (const char *)w->data + (size_t)(n + r < n1 ? n + r : n) * row_bytes;
            for (int64_t t = tc; t < te; t += 4) {
                float *os[16];
                const int8_t *xs[4];
                const float *dxs[4], *sxs[4];
                tile_pointers(a, t, te, n, n1, os, xs, dxs, sxs, &dummy);
                tile(os, xs, dxs, sxs, rows, nblocks);
            }
        }
    }
}

/* ---- q4_0x4, q8_0 and q4_k prompts with rows across lanes ------------------------------------
 * For many tokens the weights of 16 rows are unpacked once per chunk of blocks into bytes laid
 * out [block][j][row][4]: one zmm holds weights 4j..4j+3 of each of the 16 rows, so vpdpbusd
 * against those 4 activations (broadcast) adds into all 16 rows' sums at once, and a token's
 * block then needs one conversion and two FMAs for the 16 rows together, where the 4 x 4 tiles
 * convert and scale per row. The outputs come out as 16 lanes, stored straight into the row.
 * Each lane sums its blocks in order (a K chunk's partial sum goes through the output), so the
 * bits depend neither on the tiling nor on the thread count. */

#define R16_CHUNK 32   /* blocks a pack holds: 16 KiB of weights and 2 KiB of scales */
#define R16_MIN_T 8    /* fewer tokens keep the 4 x 4 tiles (the unpacking would not pay) */

typedef struct {
    uint8_t q[R16_CHUNK][8][64]; /* [block][j][row * 4 + i] = weight 4j + i of the row: q4_0's
                                    0..15, or q8_0's signed bytes */
    float d[R16_CHUNK][16];      /* [block][row] scales (0 for rows past the matrix) */
    float mn[R16_CHUNK][16];     /* [block][row] what each weight has taken off: q4_0 8 d, q4_k
                                    dmin m (its sub-block's min); the sum takes mn * sx off */
    int32_t ws[R16_CHUNK][16];   /* q8_0: [block][row] sum of the weights */
} r16_pack;

/* Blocks [b0, b0 + nblk) of 16 rows (NULL: a row past the matrix) into p. A row of nb blocks
 * holds its first nb / 4 * 4 blocks in q4_0x4 groups, the rest as plain q4_0 blocks. */
__attribute__((target(VNNI))) static void r16_pack_rows(r16_pack *p, const uint8_t *const *rows, int64_t b0, int64_t nblk, int64_t nb) {
    const int64_t grouped = nb / HC_Q4_0X4_GROUP * HC_Q4_0X4_GROUP;
    for (int64_t bi = 0; bi < nblk; bi++) {
        const int64_t b = b0 + bi;
        for (int r = 0; r < 16; r++) {
            uint8_t e[HC_QK] = {0};
            uint16_t d16 = 0;
            if (rows[r] && b < grouped) {
                const uint8_t *grp = rows[r] + b / 4 * X4_BYTES;
                const int idx = (int)(b % 4), shift = 4 * (idx / 2);
                memcpy(&d16, grp + 2 * idx, 2);
                const uint8_t *q = grp + 8 + 32 * (idx % 2);
                for (int k = 0; k < HC_QK; k++) e[k] = (uint8_t)((q[k] >> shift) & 0xF);
            } else if (rows[r]) {
                const hc_block_q4_0 *blk = (const hc_block_q4_0 *)(const void *)rows[r] + b;
                d16 = blk->d;
                for (int k = 0; k < HC_QK / 2; k++) e[k] = blk->q[k] & 0xF, e[k + 16] = blk->q[k] >> 4;
            }
            p->d[bi][r] = _cvtsh_ss(d16);
            p->mn[bi][r] = 8.0f * p->d[bi][r];
            for (int k = 0; k < HC_QK; k++) p->q[bi][k / 4][r * 4 + k % 4] = e[k];
        }
    }
}

/* The same for q4_k rows, a block here being a sub-block of 32: its scale d sc and min dmin m. */
__attribute__((target(VNNI))) static void r16_pack_rows_q4k(r16_pack *p, const uint8_t *const *rows, int64_t b0,
                                                            int64_t nblk) {
    for (int64_t bi = 0; bi < nblk; bi++) {
        const int64_t b = b0 + bi, sb = b / 8;
        const int j = (int)(b % 8);
        for (int r = 0; r < 16; r++) {
            const hc_block_q4_k *blk = rows[r] ? (const hc_block_q4_k *)(const void *)rows[r] + sb : NULL;
            int sc = 0, m = 0;
            if (blk) hc_q4_k_scale_min(blk->scales, j, &sc, &m);
            p->d[bi][r] = blk ? _cvtsh_ss(blk->d) * (float)sc : 0.0f;
            p->mn[bi][r] = blk ? _cvtsh_ss(blk->dmin) * (float)m : 0.0f;
            for (int k = 0; k < HC_QK; k++)
                p->q[bi][k / 4][r * 4 + k % 4] = blk ? (uint8_t)((blk->qs[j / 2 * 32 + k] >> (4 * (j % 2))) & 0xF) : 0;
        }
    }
}

/* The same for q8_0 rows (plain blocks), with each block's weight sum. */
__attribute__((target(VNNI))) static void r16_pack_rows_q8(r16_pack *p, const uint8_t *const *rows, int64_t b0,
                                                           int64_t nblk) {
    for (int64_t bi = 0; bi < nblk; bi++)
        for (int r = 0; r < 16; r++) {
            const hc_block_q8_0 *blk = rows[r] ? (const hc_block_q8_0 *)(const void *)rows[r] + b0 + bi : NULL;
            int32_t sum = 0;
            for (int k = 0; k < HC_QK; k++) {
                const int8_t v = blk ? blk->q[k] : 0;
                p->q[bi][k / 4][r * 4 + k % 4] = (uint8_t)v;
                sum += v;
            }
            p->d[bi][r] = blk ? _cvtsh_ss(blk->d) : 0.0f;
            p->ws[bi][r] = sum;
        }
}

/* q4_kr16: a super-block's 6-bit scales and mins for 16 rows, from the packed words u0, u1, u2
 * (hc_q4_k_unpack_scales' masks, on 16 rows at once): byte j of each row's dword in sc[0] / m[0]
 * is sub-block j's (j = 0-3), in sc[1] / m[1] sub-block 4 + j's. */
TILE_FN void q4kr16_words(const uint8_t *sb, __m512i sc[2], __m512i m[2]) {
    const __m512i u0 = _mm512_loadu_si512((const void *)(sb + 64)), u1 = _mm512_loadu_si512((const void *)(sb + 128)),
                  u2 = _mm512_loadu_si512((const void *)(sb + 192));
    const __m512i low6 = _mm512_set1_epi32(0x3f3f3f3f), low4 = _mm512_set1_epi32(0x0f0f0f0f),
                  top2 = _mm512_set1_epi32(0x30303030);
    sc[0] = _mm512_and_si512(u0, low6);
    sc[1] = _mm512_or_si512(_mm512_and_si512(u2, low4), _mm512_and_si512(_mm512_srli_epi32(u0, 2), top2));
    m[0] = _mm512_and_si512(u1, low6);
    m[1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u2, 4), low4), _mm512_and_si512(_mm512_srli_epi32(u1, 2), top2));
}

/* The same as floats: d sc[j] and dmin m[j]. */
TILE_FN void q4kr16_scales(const uint8_t *sb, __m512 dsc[8], __m512 dmn[8]) {
    __m512i sc[2], m[2];
    q4kr16_words(sb, sc, m);
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)sb)),
                 dmin = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sb + 32)));
    for (int j = 0; j < 8; j++) { /* byte j % 4 of each row's dword, as a 32-bit integer: one shuffle */
        const int k = j % 4, z = (int)0x80808000;
        const __m512i pick = _mm512_set_epi32(z | (12 + k), z | (8 + k), z | (4 + k), z | k, z | (12 + k), z | (8 + k),
                                              z | (4 + k), z | k, z | (12 + k), z | (8 + k), z | (4 + k), z | k,
                                              z | (12 + k), z | (8 + k), z | (4 + k), z | k);
        dsc[j] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_shuffle_epi8(sc[j / 4], pick)));
        dmn[j] = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(_mm512_shuffle_epi8(m[j / 4], pick)));
    }
}

/* A chunk of blocks of one whole group of an r16 layout (below) into the pack: signed q8_0 bytes
 * and their sums, or the nibbles with q4_0's 8 d or q4_k's sub-block scales and mins (unpacked
 * once per super-block). */
__attribute__((target(VNNI))) static void r16_pack_group(r16_pack *p, int quant, const uint8_t *group, int64_t nb,
                                                        int64_t b0, int64_t nblk) {
    const __m512i low = _mm512_set1_epi8(0x0F), top = _mm512_set1_epi8((char)0x80), ones = _mm512_set1_epi8(1);
    __m512 dsc[8], dmn[8]; /* q4_k: the current super-block's */
    for (int64_t bi = 0; bi < nblk; bi++) {
        const int64_t b = b0 + bi;
        const uint8_t *data;
        if (quant == HC_QUANT_Q4_KR16) { /* sub-block b % 8 of super-block b / 8 */
            const uint8_t *sb = group + (size_t)(b / 8) * 16 * sizeof(hc_block_q4_k);
            if (bi == 0 || b % 8 == 0) q4kr16_scales(sb, dsc, dmn);
            _mm512_storeu_ps(p->d[bi], dsc[b % 8]);
            _mm512_storeu_ps(p->mn[bi], dmn[b % 8]);
            data = sb + 256 + 256 * (b % 8);
        } else {
            size_t so, d_o;
            hc_r16_offsets(quant, nb, b, &so, &d_o);
            data = group + d_o;
            const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(group + so)));
            _mm512_storeu_ps(p->d[bi], d);
            if (quant == HC_QUANT_Q4_0R16) _mm512_storeu_ps(p->mn[bi], _mm512_mul_ps(d, _mm512_set1_ps(8.0f)));
        }
        if (quant == HC_QUANT_Q8_0R16) {
            __m512i sum = _mm512_setzero_si512();
            for (int j = 0; j < 8; j++) {
                const __m512i v = _mm512_xor_si512(_mm512_loadu_si512((const void *)(data + 64 * j)), top);
                _mm512_storeu_si512((void *)p->q[bi][j], v);
                sum = _mm512_dpbusd_epi32(sum, ones, v);
            }
            _mm512_storeu_si512((void *)p->ws[bi], sum);
        } else { /* nibbles: vector i holds weights 4(2i)..+3 low and 4(2i+1)..+3 high */
            for (int i = 0; i < 4; i++) {
                const __m512i v = _mm512_loadu_si512((const void *)(data + 64 * i));
                _mm512_storeu_si512((void *)p->q[bi][2 * i], _mm512_and_si512(v, low));
                _mm512_storeu_si512((void *)p->q[bi][2 * i + 1], _mm512_and_si512(_mm512_srli_epi16(v, 4), low));
            }
        }
    }
}

/* 4 tokens (x, dx, sx, out at the group's first row) over the pack's blocks; first: the chunk
 * that starts the sums; m: the group's rows inside the matrix. */
TILE_FN void r16_tokens(float *const *out, const int8_t *const *x, const float *const *dx, const float *const *sx,
                        const r16_pack *p, int64_t b0, int64_t nblk, bool first, __mmask16 m, const bool q8) {
    __m512 acc[4];
    for (int t = 0; t < 4; t++) acc[t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, out[t]);
    for (int64_t bi = 0; bi < nblk; bi++) {
        const int64_t b = b0 + bi;
        const __m512 dw = _mm512_loadu_ps(p->d[bi]);
        /* q8_0: the weights are signed, so the activations go in unsigned (x + 128, a flip of the
         * top bit) and 128 x the weights' sum comes back off, exactly, in integers */
        const __m512i corr = q8 ? _mm512_slli_epi32(_mm512_loadu_si512((const void *)p->ws[bi]), 7) : _mm512_setzero_si512();
        const __m512i top = _mm512_set1_epi32((int)0x80808080u);
        __m512i w[8];
        for (int j = 0; j < 8; j++) w[j] = _mm512_loadu_si512((const void *)p->q[bi][j]);
        for (int t = 0; t < 4; t++) {
            const int8_t *xb = x[t] + b * HC_QK;
            __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
            for (int j = 0; j < 8; j += 2) {
                int32_t a0, a1;
                memcpy(&a0, xb + 4 * j, 4);
                memcpy(&a1, xb + 4 * j + 4, 4);
                if (q8) {
                    s0 = _mm512_dpbusd_epi32(s0, _mm512_xor_si512(_mm512_set1_epi32(a0), top), w[j]);
                    s1 = _mm512_dpbusd_epi32(s1, _mm512_xor_si512(_mm512_set1_epi32(a1), top), w[j + 1]);
                } else {
                    s0 = _mm512_dpbusd_epi32(s0, w[j], _mm512_set1_epi32(a0));
                    s1 = _mm512_dpbusd_epi32(s1, w[j + 1], _mm512_set1_epi32(a1));
                }
            }
            const __m512 si = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_add_epi32(s0, s1), corr));
            acc[t] = _mm512_fmadd_ps(si, _mm512_mul_ps(dw, _mm512_set1_ps(dx[t][b])), acc[t]);
            /* nibbles: d (dx sum q x) - mn sx, sx = dx sum x: what each weight has taken off
             * (q4_0's 8 d, q4_k's dmin m) */
            if (!q8) acc[t] = _mm512_fnmadd_ps(_mm512_loadu_ps(p->mn[bi]), _mm512_set1_ps(sx[t][b]), acc[t]);
        }
    }
    for (int t = 0; t < 4; t++) _mm512_mask_storeu_ps(out[t], m, acc[t]);
}

/* Rows [n0, n1) (n0 a multiple of 16 past the matrix's start, as the threads split them) of
 * out[T, N] for T >= R16_MIN_T tokens, on q4_0x4, q8_0 or q4_k weights. */
__attribute__((target(VNNI))) static void rows_r16(float *out, const int8_t *qx, const float *dx, const float *sx,
                                                   const hc_mat *w, int64_t T, int64_t n0, int64_t n1) {
    const int64_t N = w->rows, K = w->cols, nb = K / HC_QK;
    const bool q8 = w->quant == HC_QUANT_Q8_0 || w->quant == HC_QUANT_Q8_0R16,
               q4k = w->quant == HC_QUANT_Q4_K || w->quant == HC_QUANT_Q4_KR16;
    const size_t row_bytes = hc_quant_row_bytes(w->quant, K);
    _Alignas(64) r16_pack pack;
    float dummy[4][16];
    for (int64_t g = n0; g < n1; g += 16) {
        const uint8_t *rows[16];
        for (int r = 0; r < 16; r++) rows[r] = g + r < n1 ? (const uint8_t *)w->data + (size_t)(g + r) * row_bytes : NULL;
        const __mmask16 m = n1 - g >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n1 - g)) - 1);
        for (int64_t b0 = 0; b0 < nb; b0 += R16_CHUNK) {
            const int64_t nblk = nb - b0 < R16_CHUNK ? nb - b0 : R16_CHUNK;
            if (hc_quant_is_r16(w->quant)) r16_pack_group(&pack, w->quant, rows[0], nb, b0, nblk); /* a whole group */
            else if (q8) r16_pack_rows_q8(&pack, rows, b0, nblk);
            else if (q4k) r16_pack_rows_q4k(&pack, rows, b0, nblk);
            else r16_pack_rows(&pack, rows, b0, nblk, nb);
            for (int64_t t = 0; t < T; t += 4) {
                float *os[4];
                const int8_t *xs[4];
                const float *dxs[4], *sxs[4];
                for (int tt = 0; tt < 4; tt++) { /* tokens past T repeat the last and write to a dummy */
                    const int64_t ti = t + tt < T ? t + tt : T - 1;
                    os[tt] = t + tt < T ? out + ti * N + g : dummy[tt];
                    xs[tt] = qx + ti * K, dxs[tt] = dx + ti * nb, sxs[tt] = sx + ti * nb;
                }
                if (q8) r16_tokens(os, xs, dxs, dxs, &pack, b0, nblk, b0 == 0, m, true);
                else r16_tokens(os, xs, dxs, sxs, &pack, b0, nblk, b0 == 0, m, false);
            }
        }
    }
}

/* ---- the r16 layouts (quant.h): 16 rows interleaved as stored ------------------------------
 * Decode and a few tokens read the weights as they lie: a 64-byte load holds 4 weights of each
 * of 16 rows, so vpdpbusd against 4 broadcast activations adds into the 16 rows' sums, and a
 * block costs one conversion and one FMA for all 16 rows. The per-row kernels above spend most
 * of their work on permutes, conversions and FMAs per row (in cache they ate q4_0 at about 50
 * GB/s on two cores, less than this VM's fast memory; bench_gemv). Weights are unsigned in the
 * products (q4_0's nibbles 0..15, q8_0's bytes + 128), so each block's sum takes off that offset
 * times its activations' sum, exactly, in integers. q4_0's high nibbles are masked in place
 * (16 q) into their own sum, shifted back by 4 at the end of the block: one op fewer per vector.
 * No software prefetch here: the row kernels' 4 KiB-ahead prefetch cost this one 7-10% from
 * memory (the 1B model's q8_0 and q4_0 matrices in one huge-page arena, alternated in one
 * process), where the hardware prefetchers alone keep up. */

/* TB tokens (x [K] int8, dx and isx [K/32]) over one whole group of 16 rows: out[t][0..15]. */
TILE_FN void r16s_group(float *const *out, const int8_t *const *x, const float *const *dx, const int32_t *const *isx,
                        const uint8_t *group, int64_t nb, const int TB, const bool q4) {
    const __m512i low = _mm512_set1_epi8(0x0F), high = _mm512_set1_epi8((char)0xF0), zero = _mm512_setzero_si512();
    const int32_t offset = q4 ? 8 : 128;
    __m512 acc[4];
    for (int t = 0; t < TB; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        size_t so, d_o;
        hc_r16_offsets(q4 ? HC_QUANT_Q4_0R16 : HC_QUANT_Q8_0R16, nb, b, &so, &d_o);
        const uint8_t *sc = group + so, *data = group + d_o;
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)sc));
        __m512i w[8]; /* w[j]: weights 4j..4j+3 of the 16 rows (q4_0's odd j as 16 q) */
        for (int i = 0; i < (q4 ? 4 : 8); i++) {
            const __m512i v = _mm512_loadu_si512((const void *)(data + 64 * i));
            if (q4) w[2 * i] = _mm512_and_si512(v, low), w[2 * i + 1] = _mm512_and_si512(v, high);
            else w[i] = v;
        }
        for (int t = 0; t < TB; t++) {
            const int8_t *xb = x[t] + b * HC_QK; /* the block's activations, broadcast in fours from memory */
            __m512i s0 = zero, s1 = zero;
            for (int i = 0; i < 4; i++) {
                s0 = _mm512_dpbusd_epi32(s0, w[2 * i], _mm512_broadcastd_epi32(_mm_loadu_si32(xb + 8 * i)));
                s1 = _mm512_dpbusd_epi32(s1, w[2 * i + 1], _mm512_broadcastd_epi32(_mm_loadu_si32(xb + 8 * i + 4)));
            }
            __m512i sum = _mm512_add_epi32(s0, q4 ? _mm512_srai_epi32(s1, 4) : s1);
            sum = _mm512_sub_epi32(sum, _mm512_set1_epi32(offset * isx[t][b]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dw, _mm512_set1_ps(dx[t][b])), acc[t]);
        }
    }
    for (int t = 0; t < TB; t++) _mm512_storeu_ps(out[t], acc[t]);
}

/* One token over one whole q4_0r16 or q8_0r16 group: decode. r16s_group's numbers for TB = 1
 * (the same integer sums, then the same float ops in the same order), with each vector's load
 * next to its vpdpbusds. */
TILE_FN void r16s_group1(float *out, const int8_t *x, const float *dx, const int32_t *isx, const uint8_t *group,
                         int64_t nb, const bool q4) {
    const __m512i low = _mm512_set1_epi8(0x0F), high = _mm512_set1_epi8((char)0xF0), zero = _mm512_setzero_si512();
    const int32_t offset = q4 ? 8 : 128;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        size_t so, d_o;
        hc_r16_offsets(q4 ? HC_QUANT_Q4_0R16 : HC_QUANT_Q8_0R16, nb, b, &so, &d_o);
        const uint8_t *data = group + d_o;
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(group + so)));
        const int8_t *xb = x + b * HC_QK;
        __m512i s0 = zero, s1 = zero;
        for (int i = 0; i < 4; i++) {
            const __m512i x0 = _mm512_broadcastd_epi32(_mm_loadu_si32(xb + 8 * i)),
                          x1 = _mm512_broadcastd_epi32(_mm_loadu_si32(xb + 8 * i + 4));
            if (q4) {
                const __m512i v = _mm512_loadu_si512((const void *)(data + 64 * i));
                s0 = _mm512_dpbusd_epi32(s0, _mm512_and_si512(v, low), x0);
                s1 = _mm512_dpbusd_epi32(s1, _mm512_and_si512(v, high), x1);
            } else {
                s0 = _mm512_dpbusd_epi32(s0, _mm512_loadu_si512((const void *)(data + 128 * i)), x0);
                s1 = _mm512_dpbusd_epi32(s1, _mm512_loadu_si512((const void *)(data + 128 * i + 64)), x1);
            }
        }
        __m512i sum = _mm512_add_epi32(s0, q4 ? _mm512_srai_epi32(s1, 4) : s1);
        sum = _mm512_sub_epi32(sum, _mm512_set1_epi32(offset * isx[b]));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dw, _mm512_set1_ps(dx[b])), acc);
    }
    _mm512_storeu_ps(out, acc);
}

/* TB tokens (x [K] int8, dx and sx [K/32]) over one whole q4_kr16 group: out[t][0..15]. Each
 * sub-block: d sc (dx sum q x) - dmin m sx, as r16_tokens computes it. */
TILE_FN void r16k_group(float *const *out, const int8_t *const *x, const float *const *dx, const float *const *sx,
                        const uint8_t *group, int64_t nsb, const int TB) {
    const __m512i low = _mm512_set1_epi8(0x0F), high = _mm512_set1_epi8((char)0xF0), zero = _mm512_setzero_si512();
    __m512 acc[4];
    for (int t = 0; t < TB; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t s = 0; s < nsb; s++) {
        const uint8_t *sb = group + (size_t)s * 16 * sizeof(hc_block_q4_k);
        __m512 dsc[8], dmn[8];
        q4kr16_scales(sb, dsc, dmn);
        for (int j = 0; j < 8; j++) {
            const uint8_t *data = sb + 256 + 256 * j;
            __m512i w[8];
            for (int i = 0; i < 4; i++) {
                const __m512i v = _mm512_loadu_si512((const void *)(data + 64 * i));
                w[2 * i] = _mm512_and_si512(v, low), w[2 * i + 1] = _mm512_and_si512(v, high);
            }
            const int64_t b = s * 8 + j; /* the 32-block of the activations */
            for (int t = 0; t < TB; t++) {
                const int8_t *xb = x[t] + b * HC_QK;
                __m512i s0 = zero, s1 = zero;
                for (int i = 0; i < 4; i++) {
                    s0 = _mm512_dpbusd_epi32(s0, w[2 * i], _mm512_broadcastd_epi32(_mm_loadu_si32(xb + 8 * i)));
                    s1 = _mm512_dpbusd_epi32(s1, w[2 * i + 1], _mm512_broadcastd_epi32(_mm_loadu_si32(xb + 8 * i + 4)));
                }
                const __m512 sum = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, _mm512_srai_epi32(s1, 4)));
                acc[t] = _mm512_fmadd_ps(sum, _mm512_mul_ps(dsc[j], _mm512_set1_ps(dx[t][b])), acc[t]);
                acc[t] = _mm512_fnmadd_ps(dmn[j], _mm512_set1_ps(sx[t][b]), acc[t]);
            }
        }
    }
    for (int t = 0; t < TB; t++) _mm512_storeu_ps(out[t], acc[t]);
}

/* Decode on one whole q4_kr16 group: out[0..15]. The activations have one scale per super-block
 * (quantize_acts' group of 256: dx[8 s] for super-block s, the same for its 8 blocks of 32), so a
 * super-block sums its sub-blocks' integer dot products times their 6-bit scales, and its mins
 * times the blocks' activation sums, in integers, and converts once (llama.cpp's q4_K against
 * q8_K):
 *   out = sum_s dx_s (d_s sum_j sc_j sum_i q x  -  dmin_s sum_j m_j isx_j)
 * A sub-block's low-nibble sum s0 and high-nibble sum t (s1 = 16 t, masked in place) are each at
 * most 16 * 15 * 127 < 2^15, so they go as the two int16 halves of one lane into vpdpwssd
 * against sc_j in both halves: sc (s0 + t) added in one instruction. Against r16k_group, which
 * converts, scales and adds in floats per sub-block (and activations scaled per 32), one core in
 * cache ran 51 -> 65 GB/s, and the 1B model's decode read 0.11 more of the bandwidth in the fast
 * memory regime (paired).
 * No overflow: a super-block's sum is at most 256 * 15 * 127 * 63 < 2^31.
 * mins: [4 per super-block] the blocks' sums isx_j in bytes for vpdpbusd against the 6-bit mins:
 * isx_j & 63 for j = 0-3, for j = 4-7, then isx_j >> 6 (signed: |isx| <= 32 * 127) for j = 0-3
 * and 4-7, so sum_j m_j isx_j = lo + 64 hi. */
TILE_FN void r16k_group1(float *out, const int8_t *x, const float *dx, const int32_t *mins, const uint8_t *group,
                         int64_t nsb) {
    const __m512i low = _mm512_set1_epi8(0x0F), high = _mm512_set1_epi8((char)0xF0), zero = _mm512_setzero_si512();
    __m512 acc = _mm512_setzero_ps();
    for (int64_t s = 0; s < nsb; s++) {
        const uint8_t *sb = group + (size_t)s * 16 * sizeof(hc_block_q4_k);
        __m512i sc[2], m[2]; /* the 6-bit scales and mins of 16 rows (q4kr16_words) */
        q4kr16_words(sb, sc, m);
        const int32_t *ms = mins + 4 * s;
        const __m512i mlo = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, m[0], _mm512_set1_epi32(ms[0])), m[1], _mm512_set1_epi32(ms[1]));
        const __m512i mhi = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, m[0], _mm512_set1_epi32(ms[2])), m[1], _mm512_set1_epi32(ms[3]));
        const __m512i imin = _mm512_add_epi32(mlo, _mm512_slli_epi32(mhi, 6));
        __m512i isum = zero;
        for (int j = 0; j < 8; j++) {
            const uint8_t *data = sb + 256 + 256 * j;
            const int8_t *xb = x + s * HC_QKK + HC_QK * j;
            __m512i s0 = zero, s1 = zero;
            for (int i = 0; i < 4; i++) {
                const __m512i v = _mm512_loadu_si512((const void *)(data + 64 * i));
                s0 = dpbusd_bcast(s0, _mm512_and_si512(v, low), xb + 8 * i);
                s1 = dpbusd_bcast(s1, _mm512_and_si512(v, high), xb + 8 * i + 4);
            }
            /* sc_j of each row in both int16 halves of its lane: byte j % 4 of the row's dword */
            const int b0 = j % 4, b1 = 4 + j % 4, b2 = 8 + j % 4, b3 = 12 + j % 4;
            const int z = (int)0x80008000;
            const __m512i pick = _mm512_set_epi32(z | b3 << 16 | b3, z | b2 << 16 | b2, z | b1 << 16 | b1, z | b0 << 16 | b0,
                                                  z | b3 << 16 | b3, z | b2 << 16 | b2, z | b1 << 16 | b1, z | b0 << 16 | b0,
                                                  z | b3 << 16 | b3, z | b2 << 16 | b2, z | b1 << 16 | b1, z | b0 << 16 | b0,
                                                  z | b3 << 16 | b3, z | b2 << 16 | b2, z | b1 << 16 | b1, z | b0 << 16 | b0);
            const __m512i st = _mm512_mask_blend_epi16(0xAAAAAAAA, s0, _mm512_slli_epi32(s1, 12)); /* [s0 | t] */
            isum = _mm512_dpwssd_epi32(isum, st, _mm512_shuffle_epi8(sc[j / 4], pick));
        }
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)sb)),
                     dmin = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sb + 32))), dxs = _mm512_set1_ps(dx[8 * s]);
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(d, dxs), acc);
        acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(imin), _mm512_mul_ps(dmin, dxs), acc);
    }
    _mm512_storeu_ps(out, acc);
}

/* r16k_group1's mins[K / 256 * 4] from the blocks' activation sums isx[K / 32]. */
static void r16k_mins(int32_t *mins, const int32_t *isx, int64_t nsb) {
    for (int64_t s = 0; s < nsb; s++) {
        uint8_t lo[8], hi[8];
        for (int j = 0; j < 8; j++) {
            const int32_t v = isx[8 * s + j];
            lo[j] = (uint8_t)(v & 63);
            hi[j] = (uint8_t)(int8_t)(v >> 6); /* arithmetic: -64..63 */
        }
        memcpy(mins + 4 * s, lo, 4);
        memcpy(mins + 4 * s + 1, lo + 4, 4);
        memcpy(mins + 4 * s + 2, hi, 4);
        memcpy(mins + 4 * s + 3, hi + 4, 4);
    }
}

/* One whole group for tb (1..4) tokens of any r16 layout, the count as a constant so each case
 * unrolls. */
TILE_FN void r16_group_tokens(int quant, int tb, float *const *os, const int8_t *const *xs, const float *const *dxs,
                              const float *const *sxs, const int32_t *const *is, const uint8_t *group, int64_t nb) {
#define R16_CASE(TB)                                                                                                   \
    case TB:                                                                                                           \
        if (quant == HC_QUANT_Q4_KR16) r16k_group(os, xs, dxs, sxs, group, nb / 8, TB);                                \
        else if (quant == HC_QUANT_Q4_0R16) r16s_group(os, xs, dxs, is, group, nb, TB, true);                          \
        else r16s_group(os, xs, dxs, is, group, nb, TB, false);                                                        \
        break;
    switch (tb) {
        R16_CASE(1)
        R16_CASE(2)
        R16_CASE(3)
        R16_CASE(4)
    }
#undef R16_CASE
}

/* Rows [n0, n1) of out[T, N] on an r16 matrix (n0 a multiple of 16, as the threads split them):
 * whole groups as stored for fewer than R16_MIN_T tokens, through rows_r16's pack for more; rows
 * past the last whole group in their own layout (q4_0x4, q8_0). */
__attribute__((target(VNNI))) static void r16s_rows(float *out, const int8_t *qx, const float *dx, const float *sx,
                                                   const int32_t *isx, const hc_mat *w, int64_t T, int64_t n0, int64_t n1) {
    const int64_t N = w->rows, K = w->cols, nb = K / HC_QK, whole = N / 16 * 16;
    const bool q4 = w->quant == HC_QUANT_Q4_0R16, q4k = w->quant == HC_QUANT_Q4_KR16;
    const size_t row_bytes = hc_quant_row_bytes(w->quant, K);
    const int64_t g1 = n1 < whole ? n1 : whole;
    if (T == 1) {
        /* decode: the layout a constant in each loop, so each compiles without the others' branches
         * (with them the 1B q4_0 matrices read 0.03 less of the bandwidth in the fast regime) */
        const uint8_t *base = (const uint8_t *)w->data;
        if (q4)
            for (int64_t g = n0; g < g1; g += 16) r16s_group1(out + g, qx, dx, isx, base + (size_t)g * row_bytes, nb, true);
        else if (!q4k)
            for (int64_t g = n0; g < g1; g += 16) r16s_group1(out + g, qx, dx, isx, base + (size_t)g * row_bytes, nb, false);
        else if (K <= DECODE_MAX_K) {
            int32_t mins[DECODE_MAX_K / HC_QKK * 4];
            r16k_mins(mins, isx, nb / 8);
            for (int64_t g = n0; g < g1; g += 16) r16k_group1(out + g, qx, dx, mins, base + (size_t)g * row_bytes, nb / 8);
        } else
            for (int64_t g = n0; g < g1; g += 16) {
                float *os[1] = {out + g};
                r16k_group(os, &qx, &dx, &sx, base + (size_t)g * row_bytes, nb / 8, 1);
            }
    } else if (T < R16_MIN_T) {
        for (int64_t g = n0; g < g1; g += 16) {
            const uint8_t *group = (const uint8_t *)w->data + (size_t)g * row_bytes;
            for (int64_t t = 0; t < T; t += 4) {
                const int tb = T - t < 4 ? (int)(T - t) : 4;
                float *os[4];
                const int8_t *xs[4];
                const float *dxs[4], *sxs[4];
                const int32_t *is[4];
                for (int i = 0; i < tb; i++)
                    os[i] = out + (t + i) * N + g, xs[i] = qx + (t + i) * K, dxs[i] = dx + (t + i) * nb,
                    sxs[i] = sx + (t + i) * nb, is[i] = isx + (t + i) * nb;
                r16_group_tokens(w->quant, tb, os, xs, dxs, sxs, is, group, nb);
            }
        }
    } else if (n0 < g1) {
        rows_r16(out, qx, dx, sx, w, T, n0, g1);
    }
    if (g1 < n1) { /* the rows past the last whole group */
        hc_mat tail = *w;
        tail.quant = hc_quant_tail_layout(w->quant);
        const int64_t t0 = n0 > whole ? n0 : whole;
        if (q4) hc_q4_0x4_rows_vnni(out, qx, dx, sx, &tail, T, t0, n1);
        else if (q4k) hc_q4_k_rows_vnni(out, qx, dx, sx, &tail, T, t0, n1);
        else hc_q8_0_rows_vnni(out, qx, dx, &tail, T, t0, n1);
    }
}

__attribute__((target(VNNI))) void hc_q4_0x4_rows_vnni(float *out, const int8_t *qx, const float *dx, const float *sx,
                                                         const hc_mat *w, int64_t T, int64_t n0, int64_t n1) {
    const tile_args a = {out, qx, dx, sx, T, w->rows, w->cols};
    const size_t row_bytes = hc_quant_row_bytes(HC_QUANT_Q4_0X4, a.K);
    const int64_t nb = a.K / HC_QK;
    if (T == 1) {
        for (int64_t n = n0; n < n1; n++)
            out[n] = q4_0x4_decode_row(qx, dx, sx, (const uint8_t *)w->data + (size_t)n * row_bytes, nb);
        return;
    }
    if (T >= R16_MIN_T) {
        rows_r16(out, qx, dx, sx, w, T, n0, n1);
        return;
    }
    run_tiles(&a, w, row_bytes, nb, n0, n1, q4_0x4_tile4);
}

__attribute__((target(VNNI))) void hc_q4_k_rows_vnni(float *out, const int8_t *qx, const float *dx, const float *sx,
                                                       const hc_mat *w, int64_t T, int64_t n0, int64_t n1) {
    const tile_args a = {out, qx, dx, sx, T, w->rows, w->cols};
    const size_t row_bytes = hc_quant_row_bytes(HC_QUANT_Q4_K, a.K);
    const int64_t nsb = a.K / HC_QKK;
    if (T == 1 && a.K <= DECODE_MAX_K) { /* decode: one row at a time, nothing else per row */
        int8_t xp[DECODE_MAX_K]; /* [K], the nibbles' order */
        for (int64_t c = 0; c < a.K; c += 128) {
            memcpy(xp + c, qx + c, 32);
            memcpy(xp + c + 32, qx + c + 64, 32);
            memcpy(xp + c + 64, qx + c + 32, 32);
            memcpy(xp + c + 96, qx + c + 96, 32);
        }
        for (int64_t n = n0; n < n1; n++)
            out[n] = q4_k_decode_row(xp, dx, sx, (const hc_block_q4_k *)((const char *)w->data + (size_t)n * row_bytes), nsb);
        return;
    }
    if (T >= R16_MIN_T) {
        rows_r16(out, qx, dx, sx, w, T, n0, n1);
        return;
    }
    run_tiles(&a, w, row_bytes, nsb, n0, n1, q4_k_tile4);
}

__attribute__((target(VNNI))) void hc_q8_0_rows_vnni(float *out, const int8_t *qx, const float *dx, const hc_mat *w,
                                                       int64_t T, int64_t n0, int64_t n1) {
    const tile_args a = {out, qx, dx, dx, T, w->rows, w->cols};
    const size_t row_bytes = hc_quant_row_bytes(HC_QUANT_Q8_0, a.K);
    const int64_t nb = a.K / HC_QK;
    if (T == 1 && a.K <= DECODE_MAX_K) { /* decode: one row at a time */
        uint8_t xu[DECODE_MAX_K]; /* [K], x + 128 */
        for (int64_t i = 0; i < a.K; i++) xu[i] = (uint8_t)(qx[i] ^ (int8_t)0x80);
        for (int64_t n = n0; n < n1; n++)
            out[n] = q8_0_decode_row(xu, dx, (const hc_block_q8_0 *)((const char *)w->data + (size_t)n * row_bytes), nb);
        return;
    }
    if (T >= R16_MIN_T) {
        rows_r16(out, qx, dx, dx, w, T, n0, n1);
        return;
    }
    run_tiles(&a, w, row_bytes, nb, n0, n1, q8_0_tile4);
}

__attribute__((target(VNNI))) void hc_r16_rows_vnni(float *out, const int8_t *qx, const float *dx, const float *sx,
                                                      const int32_t *isx, const hc_mat *w, int64_t T, int64_t n0, int64_t n1) {
    r16s_rows(out, qx, dx, sx, isx, w, T, n0, n1);
}
