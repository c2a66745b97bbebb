/* The fast CPU matmul: SIMD micro-kernels chosen at run time (AVX-512F, AVX2+FMA+F16C) and
 * split over the thread pool by output rows, so every result is computed by one thread in one
 * fixed order: the same bits whatever the thread count. The scalar reference stays in
 * ops_matmul.c and the kernels are tested against it. */
#include <immintrin.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu.h"
#include "backend/cpu/quant.h"
#include "backend/cpu/fast.h"
#include "base/threadpool.h"

/* Rows [n0, n1) of out[T, N] = x[T, K] @ W^T: the row kernels of one ISA. */
typedef void (*rows_fn)(float *out, const float *x, const hc_mat *w, int64_t T, int64_t n0, int64_t n1);

/* ---- AVX2 + FMA + F16C: 8 floats, blocks of 4 tokens x 2 rows -------------------------------- */
/* Products of fewer multiply-adds than this run on the calling thread: waking the pool costs more. */
#define MIN_POOL_PRODUCT 32768

/* Decode rows longer than this go DEC_RB at a time (matmul_rows_): past it, f32 x (8 KB here)
 * no longer stays in L1 beside the streaming weights. */
#define DECODE_KC 2048

#define SFX _avx2
#define TARGET "avx2,fma,f16c"
#define VF __m256
#define VL 8
#define KRB 2
#define DEC_RB 2 /* 16 registers: 8 accumulators and 4 of x */
#define VZERO() _mm256_setzero_ps()
#define VLOAD(p) _mm256_loadu_ps(p)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VSET1(f) _mm256_set1_ps(f)
#define VBF16(p) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define VF16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define VI8(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
#define VI __m256i
#define VILOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define VPAIR_EVEN(v) _mm256_castsi256_ps(_mm256_slli_epi32(v, 16))
#define VPAIR_ODD(v) _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xFFFF0000u)))
__attribute__((target(TARGET))) static inline float hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#define VHSUM(v) hsum_avx2(v)
#include "backend/cpu/matmul_kernels.inc"
#undef SFX
#undef TARGET
#undef VF
#undef VL
#undef KRB
#undef DEC_RB
#undef VZERO
#undef VLOAD
#undef VFMA
#undef VSET1
#undef VBF16
#undef VF16
#undef VI8
#undef VI
#undef VILOAD
#undef VPAIR_EVEN
#undef VPAIR_ODD
#undef VHSUM

/* ---- AVX-512F: 16 floats, blocks of 4 tokens x 4 rows ---------------------------------------- */
#define SFX _avx512
#define TARGET "avx512f,avx2,fma,f16c"
#define VF __m512
#define VL 16
#define KRB 4
#define DEC_RB 4 /* 32 registers: 16 accumulators and 4 of x */
#define VZERO() _mm512_setzero_ps()
#define VLOAD(p) _mm512_loadu_ps(p)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VSET1(f) _mm512_set1_ps(f)
#define VBF16(p) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define VF16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define VI8(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
#define VI __m512i
#define VILOAD(p) _mm512_loadu_si512((const void *)(p))
#define VPAIR_EVEN(v) _mm512_castsi512_ps(_mm512_slli_epi32(v, 16))
#define VPAIR_ODD(v) _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xFFFF0000u)))
#define VHSUM(v) _mm512_reduce_add_ps(v)
#include "backend/cpu/matmul_kernels.inc"

/* ---- AVX512_BF16 on bf16 weights, with bf16 compute (hc_backend_cpu_fast_bf16_compute):
 * vdpbf16ps does 32 multiply-adds per instruction (twice the f32 FMA rate) on bf16 pairs, so the
 * activations of every matmul on bf16 weights are rounded to bf16 first, as llama.cpp does and
 * as transformers computes a bf16 model. ------------------------------------------------------ */

/* With bf16 compute, prompts at least this long take the packed GEMM (bfp_*); fewer tokens go
 * through kbf16_4x4, and decode through decode_bf16dot. */
#define BF16_DOT_MIN_T 16

__attribute__((target("avx512f,avx512bf16,avx512bw"))) static void acts_to_bf16(uint16_t *xb, const float *x,
                                                                               int64_t n) {
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
        _mm512_storeu_si512((void *)(xb + i), (__m512i)v);
    }
    for (; i < n; i++) xb[i] = hc_f32_to_bf16(x[i]);
}

/* out[t][r] for 4 tokens x 4 rows; x and rows are bf16 [K]. */
__attribute__((target("avx512f,avx512bf16,avx512bw"))) static void kbf16_4x4(float *const *out,
                                                                            const uint16_t *const *x,
                                                                            const uint16_t *const *rows, int64_t K) {
    __m512 acc[4][4];
    for (int t = 0; t < 4; t++)
        for (int r = 0; r < 4; r++) acc[t][r] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512bh wv[4];
        for (int r = 0; r < 4; r++) wv[r] = (__m512bh)_mm512_loadu_si512((const void *)(rows[r] + k));
        for (int t = 0; t < 4; t++) {
            const __m512bh xv = (__m512bh)_mm512_loadu_si512((const void *)(x[t] + k));
            for (int r = 0; r < 4; r++) acc[t][r] = _mm512_dpbf16_ps(acc[t][r], xv, wv[r]);
        }
    }
    for (int t = 0; t < 4; t++)
        for (int r = 0; r < 4; r++) {
            float s = _mm512_reduce_add_ps(acc[t][r]);
            for (int64_t kk = k; kk < K; kk++) s += hc_bf16_to_f32(x[t][kk]) * hc_bf16_to_f32(rows[r][kk]);
            *out[t * 4 + r] = s;
        }
}

/* Decode (one token) on bf16 rows with bf16 activations: out[n] for rows [n0, n1), one row at a
 * time so each thread reads one stream (two or four rows at once ran 30% slower from memory: more
 * streams than the prefetchers follow), four sums over k in steps of 128 so the vdpbf16ps latency
 * hides, the last partial 32 masked. Against the f32 pairs kernel a 64-byte load of weights costs
 * one load of x and one vdpbf16ps instead of two loads, a shift, an and and two FMAs: in cache the
 * 1B shapes ran about twice as fast (bench_gemv), and from memory the headroom shows in this
 * VM's fast regime. */
__attribute__((target("avx512f,avx512bf16,avx512bw"))) static void decode_bf16dot(float *out, const uint16_t *xb,
                                                                                 const hc_mat *w, int64_t n0, int64_t n1) {
    const int64_t K = w->cols;
    const __mmask32 tail = (__mmask32)((1ull << (K % 32)) - 1);
    for (int64_t n = n0; n < n1; n++) {
        const uint16_t *row = (const uint16_t *)w->data + (size_t)n * (size_t)w->ld;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int64_t k = 0;
        for (; k + 128 <= K; k += 128) {
            a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512((const void *)(xb + k)),
                                  (__m512bh)_mm512_loadu_si512((const void *)(row + k)));
            a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512((const void *)(xb + k + 32)),
                                  (__m512bh)_mm512_loadu_si512((const void *)(row + k + 32)));
            a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_loadu_si512((const void *)(xb + k + 64)),
                                  (__m512bh)_mm512_loadu_si512((const void *)(row + k + 64)));
            a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_loadu_si512((const void *)(xb + k + 96)),
                                  (__m512bh)_mm512_loadu_si512((const void *)(row + k + 96)));
        }
        for (; k + 32 <= K; k += 32)
            a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512((const void *)(xb + k)),
                                  (__m512bh)_mm512_loadu_si512((const void *)(row + k)));
        if (k < K)
            a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_maskz_loadu_epi16(tail, xb + k),
                                  (__m512bh)_mm512_maskz_loadu_epi16(tail, row + k));
        out[n] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    }
}

/* Rows [n0, n1) of out[T, N] = xb[T, K] @ W^T for bf16 W (not transposed). Leftover tokens and
 * rows (T or n1 - n0 not a multiple of 4) run the same kernel on repeated pointers and write
 * their extra results to a dummy slot, so every output is computed the same way. */
__attribute__((target("avx512f,avx512bf16,avx512bw"))) static void matmul_rows_bf16dot(float *out, const uint16_t *xb,
                                                                                      const hc_mat *w, int64_t T,
                                                                                      int64_t n0, int64_t n1) {
    const int64_t N = w->rows, K = w->cols;
    const uint16_t *base = w->data;
    float dummy;
    for (int64_t tc = 0; tc < T; tc += 64) {
        const int64_t te = tc + 64 < T ? tc + 64 : T;
        for (int64_t n = n0; n < n1; n += 4) {
            const uint16_t *rows[4];
            for (int r = 0; r < 4; r++) rows[r] = base + (size_t)(n + r < n1 ? n + r : n) * (size_t)w->ld;
            for (int64_t t = tc; t < te; t += 4) {
                const uint16_t *xs[4];
                float *os[16];
                for (int tt = 0; tt < 4; tt++) {
                    xs[tt] = xb + (t + tt < te ? t + tt : t) * K;
                    for (int r = 0; r < 4; r++)
                        os[tt * 4 + r] = (t + tt < te && n + r < n1) ? out + (t + tt) * N + n + r : &dummy;
                }
                kbf16_4x4(os, xs, rows, K);
            }
        }
    }
}


/* Prompts as a packed GEMM. A thread packs 64 of its rows, for 2048 values of k at a time, into
 * a panel of bf16 pairs (P[p][r] = W[n + r][k0 + 2p, k0 + 2p + 1]: 256 KB, kept in L2); then
 * for 6 tokens at a time, each k pair of a token is broadcast against four vectors of the
 * panel, so 24 accumulators each hold 16 rows' sums for one token (no horizontal sums) and every
 * panel load serves 6 tokens. The 4 x 4 kernel above streamed 8 rows of K from L2 for every 16
 * products and ran at about half of vdpbf16ps's peak. A row's sum runs over k in order in one
 * lane whatever the tiling or the thread count. Needs K even (pairs); rows past the end pack as
 * zero and are not stored. */
#define BFP_NR 64
#define BFP_MR 6
#define BFP_KC 2048

/* The end of a panel tile (either kind): out[t, 16 j ..] (rows ldo apart) = acc[t][j], or +=
 * unless first, for t < mr and the nv vectors the panel's rows fill (mask: the last one's). */
__attribute__((target("avx512f"), always_inline)) static inline void panel_store(float *out, int64_t ldo,
                                                                                __m512 acc[][4], int mr, int nv,
                                                                                __mmask16 mask, bool first) {
    for (int t = 0; t < mr; t++)
        for (int j = 0; j < nv; j++) {
            const __mmask16 m = j + 1 == nv ? mask : (__mmask16)0xffff;
            float *o = out + t * ldo + 16 * j;
            __m512 v = acc[t][j];
            if (!first) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, o));
            _mm512_mask_storeu_ps(o, m, v);
        }
}

/* kernel(..., mr) with mr a constant from 1 to BFP_MR, so its accumulators stay in registers. */
#define PANEL_BY_MR(mr, kernel, ...)                                                                                   \
    switch (mr) {                                                                                                      \
    case 1: kernel(__VA_ARGS__, 1); break;                                                                             \
    case 2: kernel(__VA_ARGS__, 2); break;                                                                             \
    case 3: kernel(__VA_ARGS__, 3); break;                                                                             \
    case 4: kernel(__VA_ARGS__, 4); break;                                                                             \
    case 5: kernel(__VA_ARGS__, 5); break;                                                                             \
    default: kernel(__VA_ARGS__, 6); break;                                                                            \
    }

/* A panel kind: pack fills the panel with rows [n, n + nr) of W (the rest of its 64 zero) and k
 * in [k0, k0 + kc); tile adds mr tokens' products with it into out (panel_store), x pointing at
 * the first token's element k0. */
typedef void (*panel_pack_fn)(void *P, const hc_mat *w, int64_t n, int64_t nr, int64_t k0, int64_t kc);
typedef void (*panel_tile_fn)(float *out, int64_t ldo, const void *x, int64_t ldx, const void *P, int64_t kc, int mr,
                              int nv, __mmask16 mask, bool first);

/* Rows [n0, n1) of out[T, N] = x[T, K] @ W^T (x's elements x_bytes wide), kc_max values of k a
 * panel. */
static void matmul_rows_packed(float *out, const void *x, size_t x_bytes, const hc_mat *w, int64_t T, int64_t n0,
                               int64_t n1, void *P, int64_t kc_max, panel_pack_fn pack, panel_tile_fn tile) {
    const int64_t N = w->rows, K = w->cols;
    for (int64_t n = n0; n < n1; n += BFP_NR) {
        const int64_t nr = n1 - n < BFP_NR ? n1 - n : BFP_NR;
        const int nv = (int)((nr + 15) / 16);
        const __mmask16 mask = (__mmask16)(nr % 16 ? (1u << (nr % 16)) - 1 : 0xffffu);
        for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
            const int64_t kc = K - k0 < kc_max ? K - k0 : kc_max;
            pack(P, w, n, nr, k0, kc);
            for (int64_t t = 0; t < T; t += BFP_MR)
                tile(out + t * N + n, N, (const char *)x + x_bytes * (size_t)(t * K + k0), K, P, kc,
                     (int)(T - t < BFP_MR ? T - t : BFP_MR), nv, mask, k0 == 0);
        }
    }
}

static void bfp_pack(void *panel, const hc_mat *w, int64_t n, int64_t nr, int64_t k0, int64_t kc) {
    uint32_t *P = panel;
    const uint16_t *base = w->data;
    for (int64_t r = 0; r < BFP_NR; r++) {
        const uint16_t *src = base + (size_t)(n + r) * (size_t)w->ld + k0;
        for (int64_t p = 0; p < kc / 2; p++) {
            uint32_t v = 0;
            if (r < nr) memcpy(&v, src + 2 * p, sizeof v);
            P[p * BFP_NR + r] = v;
        }
    }
}

/* The bf16 tile: np pairs of a panel against each token's pairs (x rows ldx apart). G[j]: the
 * first pair of the panel's vector j (16 rows), pairs ps uint32 apart: the packed panel P
 * (G[j] = P + 16 j, ps = BFP_NR), or four groups of bf16r16 weights read where they are
 * (ps = 16). */
__attribute__((target("avx512f,avx512bf16,avx512bw"), always_inline)) static inline void
bfp_kernel(float *out, int64_t ldo, const uint16_t *x, int64_t ldx, const uint32_t *const *G, int64_t ps, int64_t np,
           int nv, __mmask16 mask, bool first, const int mr) {
    __m512 acc[BFP_MR][4];
    for (int t = 0; t < BFP_MR; t++) /* the rows past mr are never read (set for the compiler's sake) */
        for (int j = 0; j < 4; j++) acc[t][j] = _mm512_setzero_ps();
    for (int64_t p = 0; p < np; p++) {
        __m512bh wv[4];
        for (int j = 0; j < 4; j++) wv[j] = (__m512bh)_mm512_loadu_si512((const void *)(G[j] + p * ps));
        for (int t = 0; t < mr; t++) {
            int32_t pair;
            memcpy(&pair, x + t * ldx + 2 * p, sizeof pair);
            const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
            for (int j = 0; j < 4; j++) acc[t][j] = _mm512_dpbf16_ps(acc[t][j], wv[j], xv);
        }
    }
    panel_store(out, ldo, acc, mr, nv, mask, first);
}

__attribute__((target("avx512f,avx512bf16,avx512bw"))) static void bfp_tile(float *out, int64_t ldo, const void *x,
                                                                                int64_t ldx, const void *P, int64_t kc,
                                                                                int mr, int nv, __mmask16 mask,
                                                                                bool first) {
    const uint32_t *p = P, *G[4] = {p, p + 16, p + 32, p + 48};
    PANEL_BY_MR(mr, bfp_kernel, out, ldo, x, ldx, G, BFP_NR, kc / 2, nv, mask, first)
}

/* ---- bf16r16 (quant.h): bf16 weights repacked on load, 16 rows interleaved by pairs of k --------
 * Decode: one 64-byte load of a group and a vdpbf16ps against x's pair broadcast adds into 16
 * rows' sums; against decode_bf16dot there is no 64-byte load of x per load of weights and no
 * horizontal sum per row, and each thread still reads one stream. Prompts run bfp_kernel on the
 * groups where they are, 4 groups (64 rows) a tile: the layout is the packed panel's, so nothing
 * is packed. A row's sum in a prompt is the packed GEMM's, pair by pair in one lane. Rows past
 * the last whole group are plain bf16 rows (the row kernels). */

/* The four groups a tile of rows [n, n + 16 nv) reads (nv 1..4; a missing one repeats the last,
 * whose sums are not stored), each from pair p0 on. */
static void bf16r16_tile_groups(const uint32_t *G[4], const hc_mat *w, int64_t n, int nv, int64_t p0) {
    const size_t group = (size_t)w->cols / 2 * 16; /* uint32 pairs in a group */
    for (int j = 0; j < 4; j++) G[j] = (const uint32_t *)w->data + (size_t)(n / 16 + (j < nv ? j : nv - 1)) * group + p0 * 16;
}

/* The plain rows of a bf16r16 matrix (those past its last whole group) as a bf16 matrix. */
static hc_mat bf16r16_plain(const hc_mat *w) {
    hc_mat p = *w;
    p.quant = HC_QUANT_NONE;
    p.ld = w->cols;
    return p;
}

/* out[n] for rows [n0, n1) (n0 a multiple of 16) of a decode with bf16 activations xb[K]. */
__attribute__((target("avx512f,avx512bf16,avx512bw"))) static void decode_bf16r16(float *out, const uint16_t *xb,
                                                                                 const hc_mat *w, int64_t n0, int64_t n1) {
    const int64_t K = w->cols, np = K / 2, whole = w->rows / 16 * 16, g1 = n1 < whole ? n1 : whole;
    for (int64_t g = n0; g < g1; g += 16) {
        const char *G = (const char *)w->data + (size_t)g * (size_t)K * sizeof(uint16_t); /* [np][16 rows][2] */
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int64_t p = 0;
        for (; p + 4 <= np; p += 4) {
            int32_t x4[4];
            memcpy(x4, xb + 2 * p, sizeof x4);
            a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512((const void *)(G + 64 * p)), (__m512bh)_mm512_set1_epi32(x4[0]));
            a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512((const void *)(G + 64 * p + 64)), (__m512bh)_mm512_set1_epi32(x4[1]));
            a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_loadu_si512((const void *)(G + 64 * p + 128)), (__m512bh)_mm512_set1_epi32(x4[2]));
            a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_loadu_si512((const void *)(G + 64 * p + 192)), (__m512bh)_mm512_set1_epi32(x4[3]));
        }
        for (; p < np; p++) {
            int32_t x1;
            memcpy(&x1, xb + 2 * p, sizeof x1);
            a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512((const void *)(G + 64 * p)), (__m512bh)_mm512_set1_epi32(x1));
        }
        _mm512_storeu_ps(out + g, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    }
    if (g1 < n1) {
        const hc_mat plain = bf16r16_plain(w);
        decode_bf16dot(out, xb, &plain, g1 > n0 ? g1 : n0, n1);
    }
}

/* Rows [n0, n1) (n0 a multiple of 16) of out[T, N] = xb[T, K] @ W^T for bf16r16 W. */
__attribute__((target("avx512f,avx512bf16,avx512bw"))) static void matmul_rows_bf16r16(float *out, const uint16_t *xb,
                                                                                      const hc_mat *w, int64_t T,
                                                                                      int64_t n0, int64_t n1) {
    const int64_t N = w->rows, K = w->cols, whole = N / 16 * 16, g1 = n1 < whole ? n1 : whole;
    for (int64_t n = n0; n < g1; n += BFP_NR) {
        const int nv = (int)((g1 - n < BFP_NR ? g1 - n : BFP_NR) / 16);
        for (int64_t k0 = 0; k0 < K; k0 += BFP_KC) {
            const int64_t kc = K - k0 < BFP_KC ? K - k0 : BFP_KC;
            const uint32_t *G[4];
            bf16r16_tile_groups(G, w, n, nv, k0 / 2);
            for (int64_t t = 0; t < T; t += BFP_MR) {
                const int mr = (int)(T - t < BFP_MR ? T - t : BFP_MR);
                PANEL_BY_MR(mr, bfp_kernel, out + t * N + n, N, xb + t * K + k0, K, G, 16, kc / 2, nv, 0xffff, k0 == 0)
            }
        }
    }
    if (g1 < n1) {
        const hc_mat plain = bf16r16_plain(w);
        matmul_rows_bf16dot(out, xb, &plain, T, g1 > n0 ? g1 : n0, n1);
    }
}

/* The same packed GEMM in f32 (the default compute) for float weights of any dtype: the panel
 * holds 64 rows x 512 values of k widened to f32 (P[k][r], 128 KB); six tokens' x[t][k] are
 * broadcast against its four vectors into 24 FMA accumulators. The 4 x KRB kernel took a
 * horizontal sum per output and streamed its rows and tokens from L2. Packing transposes 16 x 16
 * blocks in registers (a scalar transpose cost a tenth of the product). */
#define FPP_KC 512
#define FPP_MIN_T 16

/* r[i][j] <- r[j][i] for a 16 x 16 block of floats. */
__attribute__((target("avx512f"), always_inline)) static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++) {
            t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
            t[8 * i + 4 + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0xdd);
        }
    for (int j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
        r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
    }
}

/* 16 values from p, f32 or bf16 (dt), as f32. */
__attribute__((target("avx512f"), always_inline)) static inline __m512 load16_f32(const char *p, hc_dtype dt) {
    return dt == HC_DTYPE_F32 ? _mm512_loadu_ps(p)
                              : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

__attribute__((target("avx512f"))) static void fpp_pack(void *panel, const hc_mat *w, int64_t n, int64_t nr, int64_t k0,
                                                       int64_t kc) {
    float *P = panel;
    const size_t es = hc_dtype_size(w->dtype);
    const bool vec = w->dtype == HC_DTYPE_BF16 || w->dtype == HC_DTYPE_F32;
    if (w->transposed) { /* stored [K, N]: a panel row is a contiguous run of 64 values, no transpose */
        for (int64_t k = 0; k < kc; k++) {
            const char *src = (const char *)w->data + es * ((size_t)(k0 + k) * (size_t)w->ld + (size_t)n);
            float *dst = P + k * BFP_NR;
            int64_t r = 0;
            for (; vec && r + 16 <= nr; r += 16) _mm512_storeu_ps(dst + r, load16_f32(src + es * (size_t)r, w->dtype));
            for (; r < BFP_NR; r++) dst[r] = r < nr ? hc_load_f32(src, w->dtype, r) : 0.0f;
        }
        return;
    }
    for (int64_t r0 = 0; r0 < BFP_NR; r0 += 16) {
        const char *rows = (const char *)w->data + es * ((size_t)(n + r0) * (size_t)w->ld + (size_t)k0);
        int64_t k = 0;
        if (vec && r0 + 16 <= nr)
            for (; k + 16 <= kc; k += 16) {
                __m512 v[16];
                for (int i = 0; i < 16; i++) v[i] = load16_f32(rows + es * ((size_t)i * (size_t)w->ld + (size_t)k), w->dtype);
                transpose16(v);
                for (int i = 0; i < 16; i++) _mm512_storeu_ps(P + (k + i) * BFP_NR + r0, v[i]);
            }
        for (int64_t r = r0; r < r0 + 16; r++) /* what the blocks left: the tail of k, a partial group */
            for (int64_t kk = k; kk < kc; kk++)
                P[kk * BFP_NR + r] = r < nr ? hc_load_f32((const char *)w->data + es * ((size_t)(n + r) * (size_t)w->ld), w->dtype, k0 + kk) : 0.0f;
    }
}

/* The f32 tile: kc values of k of P against each token's x[t][k] (x rows ldx apart). */
__attribute__((target("avx512f"), always_inline)) static inline void fpp_kernel(float *out, int64_t ldo, const float *x,
                                                                               int64_t ldx, const float *P, int64_t kc,
                                                                               int nv, __mmask16 mask, bool first,
                                                                               const int mr) {
    __m512 acc[BFP_MR][4];
    for (int t = 0; t < BFP_MR; t++) /* the rows past mr are never read (set for the compiler's sake) */
        for (int j = 0; j < 4; j++) acc[t][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k++) {
        __m512 wv[4];
        for (int j = 0; j < 4; j++) wv[j] = _mm512_loadu_ps(P + k * BFP_NR + 16 * j);
        for (int t = 0; t < mr; t++) {
            const __m512 xv = _mm512_set1_ps(x[t * ldx + k]);
            for (int j = 0; j < 4; j++) acc[t][j] = _mm512_fmadd_ps(xv, wv[j], acc[t][j]);
        }
    }
    panel_store(out, ldo, acc, mr, nv, mask, first);
}

__attribute__((target("avx512f"))) static void fpp_tile(float *out, int64_t ldo, const void *x, int64_t ldx,
                                                       const void *P, int64_t kc, int mr, int nv, __mmask16 mask,
                                                       bool first) {
    PANEL_BY_MR(mr, fpp_kernel, out, ldo, x, ldx, P, kc, nv, mask, first)
}

#define VPAIR_EVEN512(v) _mm512_castsi512_ps(_mm512_slli_epi32(v, 16))
#define VPAIR_ODD512(v) _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xFFFF0000u)))

/* ---- bf16r16 with f32 activations (--dtype f32): a vector of 16 rows' pairs widens to their
 * even and odd elements (a shift, an and), each multiplied by a broadcast x. A prompt's row sums
 * run over k in order in one lane, in chunks of FPP_KC: the packed f32 GEMM's bits. */

/* The f32 tile on four groups G[j] (a missing one repeats the last; nv of them stored). */
__attribute__((target("avx512f"), always_inline)) static inline void r16f_kernel(float *out, int64_t ldo, const float *x,
                                                                                int64_t ldx, const uint32_t *const *G,
                                                                                int64_t np, int nv, bool first,
                                                                                const int mr) {
    __m512 acc[BFP_MR][4];
    for (int t = 0; t < BFP_MR; t++)
        for (int j = 0; j < 4; j++) acc[t][j] = _mm512_setzero_ps();
    for (int64_t p = 0; p < np; p++) {
        __m512 we[4], wo[4];
        for (int j = 0; j < 4; j++) {
            const __m512i v = _mm512_loadu_si512((const void *)(G[j] + 16 * p));
            we[j] = VPAIR_EVEN512(v), wo[j] = VPAIR_ODD512(v);
        }
        for (int t = 0; t < mr; t++) {
            const __m512 xe = _mm512_set1_ps(x[t * ldx + 2 * p]), xo = _mm512_set1_ps(x[t * ldx + 2 * p + 1]);
            for (int j = 0; j < 4; j++) acc[t][j] = _mm512_fmadd_ps(xe, we[j], acc[t][j]);
            for (int j = 0; j < 4; j++) acc[t][j] = _mm512_fmadd_ps(xo, wo[j], acc[t][j]);
        }
    }
    panel_store(out, ldo, acc, mr, nv, (__mmask16)0xffff, first);
}

/* Rows [n0, n1) (n0 a multiple of 16) of out[T, N] = x[T, K] @ W^T for bf16r16 W, f32 x; the plain
 * rows past the last group through plain_rows. */
__attribute__((target("avx512f"))) static void matmul_rows_bf16r16_f32(float *out, const float *x, const hc_mat *w,
                                                                      int64_t T, int64_t n0, int64_t n1,
                                                                      rows_fn plain_rows) {
    const int64_t N = w->rows, K = w->cols, whole = N / 16 * 16, g1 = n1 < whole ? n1 : whole;
    if (T == 1) /* decode: one group at a time, four sums so the FMA latency hides */
        for (int64_t g = n0; g < g1; g += 16) {
            const uint32_t *G = (const uint32_t *)w->data + (size_t)g * (size_t)K / 2; /* [K/2][16] pairs */
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            int64_t p = 0;
            for (; p + 2 <= K / 2; p += 2) {
                const __m512i v0 = _mm512_loadu_si512((const void *)(G + 16 * p)), v1 = _mm512_loadu_si512((const void *)(G + 16 * p + 16));
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(x[2 * p]), VPAIR_EVEN512(v0), a0);
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(x[2 * p + 1]), VPAIR_ODD512(v0), a1);
                a2 = _mm512_fmadd_ps(_mm512_set1_ps(x[2 * p + 2]), VPAIR_EVEN512(v1), a2);
                a3 = _mm512_fmadd_ps(_mm512_set1_ps(x[2 * p + 3]), VPAIR_ODD512(v1), a3);
            }
            if (p < K / 2) {
                const __m512i v0 = _mm512_loadu_si512((const void *)(G + 16 * p));
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(x[2 * p]), VPAIR_EVEN512(v0), a0);
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(x[2 * p + 1]), VPAIR_ODD512(v0), a1);
            }
            _mm512_storeu_ps(out + g, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        }
    else
        for (int64_t n = n0; n < g1; n += BFP_NR) {
            const int nv = (int)((g1 - n < BFP_NR ? g1 - n : BFP_NR) / 16);
            for (int64_t k0 = 0; k0 < K; k0 += FPP_KC) {
                const int64_t kc = K - k0 < FPP_KC ? K - k0 : FPP_KC;
                const uint32_t *G[4];
                bf16r16_tile_groups(G, w, n, nv, k0 / 2);
                for (int64_t t = 0; t < T; t += BFP_MR) {
                    const int mr = (int)(T - t < BFP_MR ? T - t : BFP_MR);
                    PANEL_BY_MR(mr, r16f_kernel, out + t * N + n, N, x + t * K + k0, K, G, kc / 2, nv, k0 == 0)
                }
            }
        }
    if (g1 < n1) {
        const hc_mat plain = bf16r16_plain(w);
        plain_rows(out, x, &plain, T, g1 > n0 ? g1 : n0, n1);
    }
}
#undef VPAIR_EVEN512
#undef VPAIR_ODD512

/* ---- quantized weights: int8 dot products with activations quantized to q8 (per block of 32,
 * per 256 for q4_k, as llama.cpp does), so a block costs a few integer instructions instead of widening 32
 * weights to float. Both ISAs use these AVX2 kernels. ------------------------------------------ */

/* x[T, K] -> int8 blocks, their scales and scale x sum: qx[T, K], dx[T, K/32], sx[T, K/32],
 * isx[T, K/32]. One scale d = max|x| / 127 per group of G values (32, or 256 for q4_k, as
 * llama.cpp's q8_K: acts_group), repeated in dx for each of the group's blocks of 32; sx and isx
 * stay per block of 32. */
__attribute__((target("avx2,fma,f16c"))) static void quantize_acts(int8_t *qx, float *dx, float *sx, int32_t *isx,
                                                                   const float *x, int64_t T, int64_t K, int64_t G) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t t = 0; t < T; t++)
        for (int64_t g = 0; g < K; g += G) {
            __m256 mx = _mm256_setzero_ps();
            for (int64_t j = 0; j < G; j += 8) mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + t * K + g + j)));
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            const float amax = _mm_cvtss_f32(m4), d = amax / 127.0f, id = d ? 1.0f / d : 0;
            const __m256 idv = _mm256_set1_ps(id);
            for (int64_t b = g / HC_QK; b < (g + G) / HC_QK; b++) {
                const float *xb = x + t * K + b * HC_QK;
                int sum = 0;
                int8_t *q = qx + t * K + b * HC_QK;
                for (int j = 0; j < HC_QK; j += 8) {
                    __m256i v = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(xb + j), idv),
                                                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
                    int32_t tmp[8];
                    _mm256_storeu_si256((__m256i *)tmp, v);
                    for (int i = 0; i < 8; i++) q[j + i] = (int8_t)tmp[i], sum += tmp[i];
                }
                dx[t * (K / HC_QK) + b] = d;
                sx[t * (K / HC_QK) + b] = d * (float)sum;
                isx[t * (K / HC_QK) + b] = sum;
            }
        }
}

/* quantize_acts in AVX-512, the same numbers 2.3-2.6x faster (one core: 2048 values 1.29 ->
 * 0.50 us, 512 x 2048 593 -> 255 us). Every matmul on quantized weights quantizes its x first
 * while the other threads wait: about 0.2 ms of a 1B decode token and 90 ms of a 512-token
 * prompt before. vpmovdb truncates as the int8 cast does (|q| <= 127 here), and vcvtps2dq
 * rounds to nearest even, as _mm256_round_ps then the conversion. */
__attribute__((target("avx512f,avx512bw"))) static void quantize_acts_512(int8_t *qx, float *dx, float *sx,
                                                                          int32_t *isx, const float *x, int64_t T,
                                                                          int64_t K, int64_t G) {
    const int64_t nb = K / HC_QK;
    for (int64_t t = 0; t < T; t++)
        for (int64_t g = 0; g < K; g += G) {
            __m512 mx = _mm512_setzero_ps();
            for (int64_t j = 0; j < G; j += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(x + t * K + g + j)));
            const float amax = _mm512_reduce_max_ps(mx);
            const float d = amax / 127.0f, id = d ? 1.0f / d : 0;
            const __m512 idv = _mm512_set1_ps(id);
            for (int64_t b = g / HC_QK; b < (g + G) / HC_QK; b++) {
                const float *xb = x + t * K + b * HC_QK;
                const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb), idv)),
                              q1 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + 16), idv));
                int8_t *q = qx + t * K + b * HC_QK;
                _mm_storeu_si128((__m128i *)q, _mm512_cvtepi32_epi8(q0));
                _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtepi32_epi8(q1));
                const int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
                dx[t * nb + b] = d;
                sx[t * nb + b] = d * (float)sum;
                isx[t * nb + b] = sum;
            }
        }
}

/* 32 signed weights of block b of a row, as int8. */
__attribute__((target("avx2,fma,f16c"))) static inline __m256i weights_i8(const void *row, int quant, int64_t b,
                                                                          float *d) {
    if (quant == HC_QUANT_Q8_0) {
        const hc_block_q8_0 *blk = (const hc_block_q8_0 *)row + b;
        *d = _cvtsh_ss(blk->d);
        return _mm256_loadu_si256((const __m256i *)blk->q);
    }
    const hc_block_q4_0 *blk = (const hc_block_q4_0 *)row + b;
    *d = _cvtsh_ss(blk->d);
    const __m128i bytes = _mm_loadu_si128((const __m128i *)blk->q), m4 = _mm_set1_epi8(0x0F);
    const __m256i v = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), m4), _mm_and_si128(bytes, m4));
    return _mm256_sub_epi8(v, _mm256_set1_epi8(8));
}

/* sum(w * x) of 32 int8 pairs as 8 int32 lanes, in float */
__attribute__((target("avx2,fma,f16c"))) static inline __m256 dot_i8(__m256i w, __m256i x) {
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

/* q4_k super-blocks against activations with one scale per super-block (quantize_acts' group of
 * 256: dx[8 sb], repeated for its blocks of 32), as llama.cpp's q4_K x q8_K on AVX2: a sub-block's
 * nibbles times x in int16 pairs (vpmaddubsw: at most 2 * 15 * 127), times its 6-bit scale into
 * int32 (vpmaddwd), all 8 sub-blocks summed in integers; the mins from the blocks' activation
 * sums isx; one conversion per super-block and token:
 *   out = sum_sb dx_sb (d sum_j sc_j sum_i q x  -  dmin sum_j m_j isx_j)
 * Before (a conversion, two FMAs and a second vpmaddubsw for the activations' sum per sub-block),
 * the 1B q4_k matrices streamed 7.6 GB/s from memory on these kernels, now 26.0 (bench_gemv,
 * HUBCAP_KERNELS=avx2, two cores). No overflow:
 * a super-block's sum is at most 256 * 15 * 127 * 63 < 2^31. */
__attribute__((target("avx2,fma,f16c"))) static void q4k_rows_avx2(float *out, const int8_t *qx, const float *dx,
                                                                   const int32_t *isx, const hc_mat *w, int64_t T,
                                                                   int64_t n0, int64_t n1) {
    const int64_t N = w->rows, K = w->cols, nsb = K / HC_QKK, nb = K / HC_QK;
    const size_t row_bytes = hc_quant_row_bytes(HC_QUANT_Q4_K, K);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t n = n0; n < n1; n++) {
        const hc_block_q4_k *row = (const hc_block_q4_k *)((const char *)w->data + (size_t)n * row_bytes);
        for (int64_t t0 = 0; t0 < T; t0 += 4) {
            const int tb = T - t0 < 4 ? (int)(T - t0) : 4;
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            float mins[4] = {0, 0, 0, 0};
            for (int64_t sb = 0; sb < nsb; sb++) {
                const hc_block_q4_k *blk = row + sb;
                uint32_t scw[2], mw[2];
                hc_q4_k_unpack_scales(blk->scales, scw, mw);
                uint8_t sc[8], m[8]; /* sub-block j's 6-bit scale and min */
                memcpy(sc, scw, 8);
                memcpy(m, mw, 8);
                __m256i isum[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                                   _mm256_setzero_si256()};
                for (int p = 0; p < 4; p++) { /* bytes 32p..: sub-block 2p in the low nibbles, 2p + 1 high */
                    const __m256i bytes = _mm256_loadu_si256((const __m256i *)(blk->qs + 32 * p));
                    const __m256i lo = _mm256_and_si256(bytes, m4), hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), m4);
                    const __m256i s_lo = _mm256_set1_epi16((short)sc[2 * p]), s_hi = _mm256_set1_epi16((short)sc[2 * p + 1]);
                    for (int t = 0; t < tb; t++) {
                        const int8_t *xs = qx + (t0 + t) * K + sb * HC_QKK + 64 * p;
                        const __m256i a = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)xs)), s_lo);
                        const __m256i b = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(xs + 32))), s_hi);
                        isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(a, b));
                    }
                }
                const float d = _cvtsh_ss(blk->d), dmin = _cvtsh_ss(blk->dmin);
                for (int t = 0; t < tb; t++) {
                    const int64_t b0 = (t0 + t) * nb + sb * 8;
                    int32_t im = 0;
                    for (int j = 0; j < 8; j++) im += m[j] * isx[b0 + j];
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_set1_ps(d * dx[b0]), acc[t]);
                    mins[t] += dmin * dx[b0] * (float)im;
                }
            }
            for (int t = 0; t < tb; t++) out[(t0 + t) * N + n] = hsum_avx2(acc[t]) - mins[t];
        }
    }
}

__attribute__((target("avx2,fma,f16c"))) static void qmatmul_rows_avx2(float *out, const int8_t *qx, const float *dx,
                                                                       const hc_mat *w, int64_t T, int64_t n0,
                                                                       int64_t n1) {
    const int64_t N = w->rows, K = w->cols, nb = K / HC_QK;
    const size_t row_bytes = hc_quant_row_bytes(w->quant, K);
    for (int64_t n = n0; n < n1; n++) {
        const void *row = (const char *)w->data + (size_t)n * row_bytes;
        for (int64_t t0 = 0; t0 < T; t0 += 4) {
            const int tb = T - t0 < 4 ? (int)(T - t0) : 4;
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            for (int64_t b = 0; b < nb; b++) {
                float dw;
                const __m256i wv = weights_i8(row, w->quant, b, &dw);
                for (int t = 0; t < tb; t++) {
                    const __m256i xv = _mm256_loadu_si256((const __m256i *)(qx + (t0 + t) * K + b * HC_QK));
                    acc[t] = _mm256_fmadd_ps(dot_i8(wv, xv), _mm256_set1_ps(dw * dx[(t0 + t) * nb + b]), acc[t]);
                }
            }
            for (int t = 0; t < tb; t++) out[(t0 + t) * N + n] = hsum_avx2(acc[t]);
        }
    }
}

/* ---- dispatch --------------------------------------------------------------------------------- */


static rows_fn pick(void) {
    static rows_fn fn;
    static int decided;
    if (!decided) {
        __builtin_cpu_init();
        const char *force = getenv("HUBCAP_KERNELS"); /* "scalar", "avx2": for tests and comparisons */
        if (force && !strcmp(force, "scalar")) fn = NULL;
        else if (__builtin_cpu_supports("avx512f") && !(force && !strcmp(force, "avx2"))) fn = matmul_rows__avx512;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) fn = matmul_rows__avx2;
        decided = 1;
    }
    return fn;
}

bool hc_cpu_has_bf16_dot(void) {
    static int v = -1;
    if (v < 0)
        v = pick() == matmul_rows__avx512 && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
    return v;
}

/* Products on w round their activations to bf16 for vdpbf16ps: bf16 weights (as stored, or
 * repacked into bf16r16), bf16 compute on, and the CPU has it. */
static bool bf16_acts(const hc_fast_ctx *fx, const hc_mat *w) {
    return fx->bf16_compute && ((!w->quant && w->dtype == HC_DTYPE_BF16) || w->quant == HC_QUANT_BF16R16) &&
           hc_cpu_has_bf16_dot();
}

/* Weights whose products take quantized activations: every format but bf16r16 (bf16 values). */
static bool int_quant(const hc_mat *w) { return w->quant && w->quant != HC_QUANT_BF16R16; }

/* VNNI where the AVX-512 kernels were picked (HUBCAP_KERNELS=avx2 turns it off). */
static bool has_vnni(void) {
    static int v = -1;
    if (v < 0) v = pick() == matmul_rows__avx512 && hc_cpu_has_vnni();
    return v;
}

int hc_cpu_quant_layout(hc_backend *be, int quant) {
    (void)be;
    /* HUBCAP_CPU_ROW_LAYOUT=1: the row-by-row layouts (q4_0x4, q8_0) instead of the interleaved
     * ones, for benchmarks that compare the two (bench_decode_regime's /rows) */
    const char *rows = getenv("HUBCAP_CPU_ROW_LAYOUT");
    if (!has_vnni()) return quant;
    if (rows && !strcmp(rows, "1")) return quant == HC_QUANT_Q4_0 ? HC_QUANT_Q4_0X4 : quant;
    return quant == HC_QUANT_Q4_0   ? HC_QUANT_Q4_0R16
           : quant == HC_QUANT_Q8_0 ? HC_QUANT_Q8_0R16
           : quant == HC_QUANT_Q4_K ? HC_QUANT_Q4_KR16
                                    : quant;
}

const char *hc_cpu_kernels(void) {
    rows_fn f = pick();
    return f == matmul_rows__avx512 ? "avx512" : f == matmul_rows__avx2 ? "avx2" : "scalar";
}

typedef void (*decode_pairs_fn)(float *out, const float *xs, const hc_mat *w, int64_t n0, int64_t n1);

/* A thread's slice in chunks: the next one not yet taken (by it, or by a thread done with its own). */
typedef struct {
    _Alignas(64) atomic_llong next;
} mm_cursor;

typedef struct {
    float *out;
    const float *x;
    const hc_mat *w;
    const hc_vec *bias;
    int64_t T;
    rows_fn fn;
    const int8_t *qx; /* quantized activations for quantized weights */
    const float *dx, *sx;
    const int32_t *isx;
    bool vnni;          /* q4_0 and q4_k through matmul_vnni.c */
    const uint16_t *xb; /* bf16 activations for the vdpbf16ps path */
    hc_fast_ctx *fx;    /* its per-thread scratch holds the packed panels (xb: bf16 pairs, else f32) */
    const float *xpairs; /* bf16 decode: x split into even and odd elements (decode_bf16_pairs) */
    decode_pairs_fn pairs;
    bool dot16;             /* bf16 decode with bf16 activations: x rounded by each thread (mm_own) */
    const uint16_t *xdec;   /* [K] those activations (decode_bf16dot) */
    int64_t chunk;       /* > 0: decode, rows taken in chunks of this many (below) */
    mm_cursor *cursors;  /* [nth]: the next chunk of each thread's slice */
    void *const *own;    /* decode: per-thread buffers each thread prepares x in first (mm_own), or NULL */
} mm_job;

/* Rows [n0, n1) of the product, whatever path the job takes. */
static void mm_rows(const mm_job *j, int ith, int64_t n0, int64_t n1) {
    const int64_t N = j->w->rows;
    if (j->xdec && j->w->quant == HC_QUANT_BF16R16) decode_bf16r16(j->out, j->xdec, j->w, n0, n1);
    else if (j->xdec) decode_bf16dot(j->out, j->xdec, j->w, n0, n1);
    else if (j->xb && j->w->quant == HC_QUANT_BF16R16) matmul_rows_bf16r16(j->out, j->xb, j->w, j->T, n0, n1);
    else if (j->w->quant == HC_QUANT_BF16R16) matmul_rows_bf16r16_f32(j->out, j->x, j->w, j->T, n0, n1, j->fn);
    else if (j->xb && j->fx)
        matmul_rows_packed(j->out, j->xb, sizeof(uint16_t), j->w, j->T, n0, n1, j->fx->scratch[ith], BFP_KC, bfp_pack, bfp_tile);
    else if (j->xb) matmul_rows_bf16dot(j->out, j->xb, j->w, j->T, n0, n1);
    else if (j->fx)
        matmul_rows_packed(j->out, j->x, sizeof(float), j->w, j->T, n0, n1, j->fx->scratch[ith], FPP_KC, fpp_pack, fpp_tile);
    else if (j->vnni && hc_quant_is_r16(j->w->quant))
        hc_r16_rows_vnni(j->out, j->qx, j->dx, j->sx, j->isx, j->w, j->T, n0, n1);
    else if (j->vnni && j->w->quant == HC_QUANT_Q8_0) hc_q8_0_rows_vnni(j->out, j->qx, j->dx, j->w, j->T, n0, n1);
    else if (j->vnni && j->w->quant == HC_QUANT_Q4_0X4)
        hc_q4_0x4_rows_vnni(j->out, j->qx, j->dx, j->sx, j->w, j->T, n0, n1);
    else if (j->vnni && j->w->quant == HC_QUANT_Q4_K)
        hc_q4_k_rows_vnni(j->out, j->qx, j->dx, j->sx, j->w, j->T, n0, n1);
    else if (j->qx && j->w->quant == HC_QUANT_Q4_K) q4k_rows_avx2(j->out, j->qx, j->dx, j->isx, j->w, j->T, n0, n1);
    else if (j->qx) qmatmul_rows_avx2(j->out, j->qx, j->dx, j->w, j->T, n0, n1);
    else if (j->xpairs) j->pairs(j->out, j->xpairs, j->w, n0, n1);
    else j->fn(j->out, j->x, j->w, j->T, n0, n1);
    if (j->bias && j->bias->data)
        for (int64_t t = 0; t < j->T; t++)
            for (int64_t n = n0; n < n1; n++) j->out[t * N + n] += hc_load_f32(j->bias->data, j->bias->dtype, n);
}

/* Values per activation scale for quantized weights w: 256 on q4_k, whose VNNI decode then sums
 * a super-block's sub-blocks times their 6-bit scales in integers (matmul_vnni.c), as llama.cpp
 * does against q8_K; 32 elsewhere. */
static int64_t acts_group(const hc_mat *w) {
    return w->quant == HC_QUANT_Q4_K || w->quant == HC_QUANT_Q4_KR16 ? HC_QKK : HC_QK;
}

/* x[T, K] quantized for w by the fastest of the two for the picked kernels (the same bytes). */
static void quantize_x(rows_fn fn, int8_t *qx, float *dx, float *sx, int32_t *isx, const float *x, int64_t T,
                       const hc_mat *w) {
    if (fn == matmul_rows__avx512 && __builtin_cpu_supports("avx512bw"))
        quantize_acts_512(qx, dx, sx, isx, x, T, w->cols, acts_group(w));
    else quantize_acts(qx, dx, sx, isx, x, T, w->cols, acts_group(w));
}

/* bf16 decode's x[K] as its even elements, then its odd ones (decode_bf16_pairs). */
static void split_pairs(float *p, const float *x, int64_t K) {
    for (int64_t i = 0; i < K / 2; i++) p[i] = x[2 * i], p[K / 2 + i] = x[2 * i + 1];
}

/* Decode prepares x in each thread's own buffer: the quantized blocks (qx, dx, sx, isx) for
 * quantized weights, the even and odd elements (decode_bf16_pairs) for bf16. When one thread
 * prepared x for all, the others first pulled its lines from that core, and its next writes had
 * to take them back: in this VM's fast memory regime that cost the 1B model's matrices 0.03-0.04
 * of their share of the bandwidth, ten times the microseconds of the work, and real decodes gained
 * up to 0.065 (bench/README, session 16). Each thread's copy is the same bytes, so which thread
 * computes a row does not matter. */
static size_t own_span(size_t bytes) { return (bytes + 63) / 64 * 64; }

static size_t own_bytes(int64_t n) { /* x of n values: qx, dx, sx, isx, then the pairs (or bf16 x) */
    return own_span((size_t)n) + 3 * own_span((size_t)(n / HC_QK + 1) * 4) + own_span((size_t)n * sizeof(float));
}

static void mm_own(mm_job *own, const mm_job *j, int ith) {
    *own = *j;
    own->own = NULL;
    const int64_t K = j->w->cols, n = j->T * K;
    char *buf = j->own[ith];
    if (int_quant(j->w)) {
        const size_t bs = own_span((size_t)(n / HC_QK + 1) * 4);
        int8_t *qx = (int8_t *)buf;
        float *dx = (float *)(void *)(buf + own_span((size_t)n)), *sx = (float *)(void *)((char *)dx + bs);
        int32_t *isx = (int32_t *)(void *)((char *)sx + bs);
        quantize_x(j->fn, qx, dx, sx, isx, j->x, j->T, j->w);
        own->qx = qx, own->dx = dx, own->sx = sx, own->isx = isx;
    } else {
        float *p = (float *)(void *)(buf + own_span((size_t)n) + 3 * own_span((size_t)(n / HC_QK + 1) * 4));
        if (j->dot16) {
            acts_to_bf16((uint16_t *)(void *)p, j->x, K);
            own->xdec = (const uint16_t *)(void *)p;
        } else {
            split_pairs(p, j->x, K);
            own->xpairs = p;
        }
    }
}

/* Each thread owns a contiguous slice of rows, cut at multiples of 16 so threads never share a
 * cache line. Decode takes its slice in chunks, and a thread done with its own takes the next
 * chunks of the others': on this VM one core often streams 10-20% slower than the other for a
 * while, and the faster one waited for it at every matmul (the 1B q4_0 decode: 0.41 against
 * 0.46 s busy in 16 tokens). Every row is computed the same way by whichever thread takes it.
 * gated: up (another job over the same rows) is computed for each chunk too, and the chunk's
 * outputs become act(gate) * up there (glu_out: up's output). */
static void mm_take(const mm_job *j, const mm_job *up, float *glu_out, hc_activation act, int ith, int nth) {
    const int64_t N = j->w->rows;
    int64_t per = (N + nth - 1) / nth;
    per = (per + 15) / 16 * 16;
    if (!j->chunk || !j->cursors) {
        const int64_t n0 = (int64_t)ith * per, n1 = n0 + per < N ? n0 + per : N;
        if (n0 < n1) mm_rows(j, ith, n0, n1);
        return;
    }
    for (int k = 0; k < nth; k++) {
        const int owner = (ith + k) % nth;
        const int64_t s0 = (int64_t)owner * per, s1 = s0 + per < N ? s0 + per : N;
        for (;;) {
            const int64_t n0 = s0 + j->chunk * atomic_fetch_add_explicit(&j->cursors[owner].next, 1, memory_order_relaxed);
            if (n0 >= s1) break;
            const int64_t n1 = n0 + j->chunk < s1 ? n0 + j->chunk : s1;
            mm_rows(j, ith, n0, n1);
            if (!up) continue;
            mm_rows(up, ith, n0, n1);
            for (int64_t t = 0; t < j->T; t++)
                hc_vec_glu(j->out + t * N + n0, j->out + t * N + n0, glu_out + t * N + n0, act, n1 - n0);
        }
    }
}

static void mm_part(void *ctx, int ith, int nth) {
    const mm_job *j = ctx;
    mm_job own;
    if (j->own) {
        mm_own(&own, j, ith);
        j = &own;
    }
    mm_take(j, NULL, NULL, HC_ACT_SILU, ith, nth);
}

/* ---- transposed weights ([K, N] stored: GPT-2's Conv1D, and every dx = dy W of training) ----
 * out[t, n] = sum_k x[t, k] * row_k[n]: register tiles of 4 tokens x 64 outputs, k in order, so
 * each output is one lane summed the same way whatever the tiling or the thread count. Threads
 * split the outputs n in blocks of 64. AVX-512 (others take the reference). */

#define TR_TB 4
#define TR_NB 64

__attribute__((target("avx512f,avx512bw,avx512vl"))) static inline __m512 tr_load(const void *row, hc_dtype dt, int64_t n,
                                                                         __mmask16 m) {
    if (dt == HC_DTYPE_F32) return _mm512_maskz_loadu_ps(m, (const float *)row + n);
    const __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + n);
    if (dt == HC_DTYPE_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) static void tr_part(void *ctx, int ith, int nth) {
    const mm_job *j = ctx; /* out, x, w, bias, T */
    const int64_t N = j->w->rows, K = j->w->cols, blocks = (N + TR_NB - 1) / TR_NB;
    const int64_t per = (blocks + nth - 1) / nth, b0 = per * ith, b1 = b0 + per < blocks ? b0 + per : blocks;
    const size_t esz = hc_dtype_size(j->w->dtype);
    for (int64_t b = b0; b < b1; b++) {
        const int64_t n0 = b * TR_NB, nn = N - n0 < TR_NB ? N - n0 : TR_NB;
        __mmask16 mask[4];
        for (int v = 0; v < 4; v++) {
            const int64_t rem = nn - 16 * v;
            mask[v] = rem >= 16 ? (__mmask16)0xFFFF : rem > 0 ? (__mmask16)((1u << rem) - 1) : 0;
        }
        for (int64_t t0 = 0; t0 < j->T; t0 += TR_TB) {
            const int tb = j->T - t0 < TR_TB ? (int)(j->T - t0) : TR_TB;
            __m512 acc[TR_TB][4];
            for (int t = 0; t < TR_TB; t++)
                for (int v = 0; v < 4; v++) acc[t][v] = _mm512_setzero_ps();
            for (int64_t k = 0; k < K; k++) {
                const char *row = (const char *)j->w->data + (size_t)(k * j->w->ld) * esz;
                __m512 wv[4];
                for (int v = 0; v < 4; v++) wv[v] = tr_load(row, j->w->dtype, n0 + 16 * v, mask[v]);
                for (int t = 0; t < tb; t++) {
                    const __m512 xs = _mm512_set1_ps(j->x[(t0 + t) * K + k]);
                    for (int v = 0; v < 4; v++) acc[t][v] = _mm512_fmadd_ps(xs, wv[v], acc[t][v]);
                }
            }
            for (int t = 0; t < tb; t++)
                for (int v = 0; v < 4; v++) {
                    __m512 r = acc[t][v];
                    if (j->bias && j->bias->data)
                        for (int e = 0; e < 16; e++) {
                            const int64_t n = n0 + 16 * v + e;
                            if (n < N) ((float *)&r)[e] += hc_load_f32(j->bias->data, j->bias->dtype, n);
                        }
                    _mm512_mask_storeu_ps(j->out + (t0 + t) * N + n0 + 16 * v, mask[v], r);
                }
        }
    }
}

/* For many tokens a transposed matrix is cheaper to copy into the usual [N, K] layout (once per
 * call: one pass over the weights) and multiply with the blocked kernels than to stream with
 * tr_part, whose every token tile walks all K strided rows. */
#define TRANSPOSE_MIN_T 16

typedef struct {
    void *dst;       /* [N, K] */
    const hc_mat *w; /* stored [K, N] with ld */
} transpose_job;

static void transpose_part(void *ctx, int ith, int nth) {
    const transpose_job *j = ctx;
    const int64_t N = j->w->rows, K = j->w->cols, ld = j->w->ld;
    const int64_t per = (N + nth - 1) / nth, n0 = per * ith, n1 = n0 + per < N ? n0 + per : N;
    const size_t es = hc_dtype_size(j->w->dtype);
    for (int64_t nb = n0; nb < n1; nb += 32) /* 32 x 32 tiles: both sides stay in cache */
        for (int64_t kb = 0; kb < K; kb += 32)
            for (int64_t n = nb; n < nb + 32 && n < n1; n++)
                for (int64_t k = kb; k < kb + 32 && k < K; k++) {
                    if (es == 4) ((float *)j->dst)[n * K + k] = ((const float *)j->w->data)[k * ld + n];
                    else ((uint16_t *)j->dst)[n * K + k] = ((const uint16_t *)j->w->data)[k * ld + n];
                }
}

/* Decode (one token) on the pool: rows in chunks of about 64 KB of weights (mm_take), x prepared
 * by each thread (mm_own). false where another path applies: no pool or more than 16 threads, a
 * small product, a transposed matrix, an r16 or q4_0x4 layout without VNNI (the reference), or no
 * memory for the buffers. cursors: [16]. */
static bool mm_decode_job(hc_fast_ctx *fx, rows_fn fn, mm_job *j, mm_cursor *cursors, float *out, const float *x,
                          const hc_mat *w, const hc_vec *bias) {
    const int nth = hc_pool_size(fx->pool);
    const int64_t K = w->cols, pair_vl = fn == matmul_rows__avx512 ? 32 : 16;
    if (!fn || !fx->pool || nth < 2 || nth > 16 || w->transposed || w->rows * K < MIN_POOL_PRODUCT) return false;
    *j = (mm_job){.out = out, .x = x, .w = w, .bias = bias, .T = 1, .fn = fn};
    if (int_quant(w)) {
        j->vnni = has_vnni();
        if ((w->quant == HC_QUANT_Q4_0X4 || hc_quant_is_r16(w->quant)) && !j->vnni) return false;
    } else if (bf16_acts(fx, w)) {
        j->dot16 = true;
    } else if (w->quant) { /* bf16r16 with f32 activations: AVX-512, else the reference */
        if (fn != matmul_rows__avx512) return false;
    } else if (w->dtype == HC_DTYPE_BF16 && K % pair_vl == 0) {
        j->pairs = fn == matmul_rows__avx512 ? decode_bf16_pairs_avx512 : decode_bf16_pairs_avx2;
    }
    if (int_quant(w) || j->pairs || j->dot16) {
        if (!hc_fast_own_acts(fx, own_bytes(K))) return false;
        j->own = fx->own_acts;
    }
    const size_t row_bytes = w->quant ? hc_quant_row_bytes(w->quant, K) : (size_t)w->ld * hc_dtype_size(w->dtype);
    j->chunk = ((int64_t)(65536 / row_bytes) + 15) / 16 * 16;
    if (j->chunk < 16) j->chunk = 16;
    for (int i = 0; i < nth; i++) atomic_init(&cursors[i].next, 0);
    j->cursors = cursors;
    return true;
}

void hc_cpu_matmul_fast(hc_backend *be, float *out, const float *x, const hc_mat *w, const hc_vec *bias, int64_t T) {
    rows_fn fn = pick();
    hc_mat wn;
    hc_fast_ctx *pfx = be->ctx;
    if (w->transposed && !w->quant && T >= FPP_MIN_T && fn == matmul_rows__avx512 &&
        hc_fast_scratch(pfx, (size_t)(BFP_NR * FPP_KC))) {
        /* the packed GEMM reads a transposed view as it is (its panels are rows of it) */
        mm_job pj = {.out = out, .x = x, .w = w, .bias = bias, .T = T, .fn = fn, .fx = pfx};
        if (!pfx->pool || w->rows * w->cols * T < MIN_POOL_PRODUCT) mm_part(&pj, 0, 1);
        else hc_pool_run(pfx->pool, mm_part, &pj);
        return;
    }
    if (w->transposed && !w->quant && T >= TRANSPOSE_MIN_T) {
        hc_fast_ctx *tfx = be->ctx;
        const size_t bytes = hc_dtype_size(w->dtype) * (size_t)(w->rows * w->cols);
        if (bytes > tfx->wt_cap) { /* grows to the largest transposed matrix seen, then stays */
            void *p = realloc(tfx->wt, bytes);
            if (p) tfx->wt = p, tfx->wt_cap = bytes;
        }
        if (bytes <= tfx->wt_cap) {
            transpose_job xj = {tfx->wt, w};
            if (!tfx->pool) transpose_part(&xj, 0, 1);
            else hc_pool_run(tfx->pool, transpose_part, &xj);
            wn = (hc_mat){.data = tfx->wt, .dtype = w->dtype, .rows = w->rows, .cols = w->cols, .ld = w->cols};
            w = &wn;
        }
    }
    if (w->transposed && !w->quant && fn == matmul_rows__avx512 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
        mm_job tj = {.out = out, .x = x, .w = w, .bias = bias, .T = T, .fn = fn};
        hc_fast_ctx *tfx = be->ctx;
        if (!tfx->pool || w->rows * w->cols * T < MIN_POOL_PRODUCT) tr_part(&tj, 0, 1);
        else hc_pool_run(tfx->pool, tr_part, &tj);
        return;
    }
    /* Other transposed weights take the reference. */
    if (!fn || w->transposed) {
        hc_cpu_matmul(be, out, x, w, bias, T);
        return;
    }
    hc_fast_ctx *fx = be->ctx;
    hc_pool *pool = fx->pool;
    if (T == 1) {
        mm_job dj;
        mm_cursor cursors[16];
        if (mm_decode_job(fx, fn, &dj, cursors, out, x, w, bias)) {
            hc_pool_run(pool, mm_part, &dj);
            return;
        }
    }
    mm_job j = {.out = out, .x = x, .w = w, .bias = bias, .T = T, .fn = fn};
    if (int_quant(w) && hc_fast_acts(fx, (size_t)(T * w->cols))) {
        quantize_x(fn, fx->qx, fx->dx, fx->sx, fx->isx, x, T, w);
        j.qx = fx->qx;
        j.dx = fx->dx;
        j.sx = fx->sx;
        j.isx = fx->isx;
        j.vnni = has_vnni();
    } else if (bf16_acts(fx, w) && hc_fast_acts(fx, (size_t)(T * w->cols) * sizeof(uint16_t))) {
        /* the int8 activation buffer doubles as the bf16 one (malloc'd, so suitably aligned) */
        acts_to_bf16((uint16_t *)(void *)fx->qx, x, T * w->cols);
        if (T == 1) j.xdec = (const uint16_t *)(void *)fx->qx; /* decode on one thread: mm_decode_job's kernel */
        else j.xb = (const uint16_t *)(void *)fx->qx;
        /* prompts as the packed GEMM for even K: a panel of 64 rows x 2048 values of k in each thread's scratch */
        if (T >= BF16_DOT_MIN_T && w->cols % 2 == 0 && hc_fast_scratch(fx, (size_t)(BFP_NR * BFP_KC / 2))) j.fx = fx;
    } else if (!w->quant && T >= FPP_MIN_T && fn == matmul_rows__avx512 &&
               hc_fast_scratch(fx, (size_t)(BFP_NR * FPP_KC))) {
        j.fx = fx; /* f32 prompts as the packed GEMM */
    }
    /* q4_k without activation buffers, the VNNI layouts (q4_0x4, r16) without VNNI, and bf16r16
     * without bf16 activations take the reference */
    if ((!j.qx && !j.xb && w->quant == HC_QUANT_Q4_K) ||
        ((w->quant == HC_QUANT_Q4_0X4 || hc_quant_is_r16(w->quant)) && !j.vnni) ||
        (w->quant == HC_QUANT_BF16R16 && !j.xb && !j.xdec && fn != matmul_rows__avx512)) {
        hc_cpu_matmul(be, out, x, w, bias, T);
        return;
    }
    /* bf16 decode: x split into even and odd elements once per call (decode_bf16_pairs) */
    const int64_t K = w->cols, pair_vl = fn == matmul_rows__avx512 ? 32 : 16;
    if (T == 1 && !j.qx && !j.xb && !j.xdec && !j.fx && !w->quant && w->dtype == HC_DTYPE_BF16 && K % pair_vl == 0) {
        if ((size_t)K > fx->xpairs_cap) {
            float *p = realloc(fx->xpairs, (size_t)K * sizeof(float));
            if (p) fx->xpairs = p, fx->xpairs_cap = (size_t)K;
        }
        if ((size_t)K <= fx->xpairs_cap) {
            split_pairs(fx->xpairs, x, K);
            j.xpairs = fx->xpairs;
            j.pairs = fn == matmul_rows__avx512 ? decode_bf16_pairs_avx512 : decode_bf16_pairs_avx2;
        }
    }
    /* Small products are not worth waking threads for. */
    if (!pool || w->rows * w->cols * T < MIN_POOL_PRODUCT) {
        mm_part(&j, 0, 1);
        return;
    }
    hc_pool_run(pool, mm_part, &j);
}

/* Decode products that read the same x in one pass of the pool: matmul_n's q, k and v, and a
 * gated MLP's gate and up, whose chunks become act(gate) * up as they are computed. Each thread
 * prepares x once for all of them, and none waits for the others between the matrices. Every
 * row is computed as hc_cpu_matmul_fast computes it, and glu is elementwise, so the results are
 * the same bits as the op sequence. */
#define MM_GROUP_MAX 4

typedef struct {
    mm_job jobs[MM_GROUP_MAX]; /* one matrix each, x prepared the same way for all (mm_same_x) */
    int n;
    bool gated;                /* jobs[0] gate, jobs[1] up */
    hc_activation act;
} mm_group;

static bool mm_same_x(const mm_job *a, const mm_job *b) {
    return a->w->cols == b->w->cols && int_quant(a->w) == int_quant(b->w) &&
           (!int_quant(a->w) || acts_group(a->w) == acts_group(b->w)) && !a->pairs == !b->pairs && a->dot16 == b->dot16;
}

static void mm_group_part(void *ctx, int ith, int nth) {
    const mm_group *g = ctx;
    mm_job own[MM_GROUP_MAX];
    for (int i = 0; i < g->n; i++) own[i] = g->jobs[i];
    if (g->jobs[0].own) { /* x prepared once, for every matrix (mm_same_x) */
        mm_own(&own[0], &g->jobs[0], ith);
        for (int i = 1; i < g->n; i++) {
            own[i].own = NULL;
            own[i].qx = own[0].qx, own[i].dx = own[0].dx, own[i].sx = own[0].sx, own[i].isx = own[0].isx;
            own[i].xpairs = own[0].xpairs, own[i].xdec = own[0].xdec;
        }
    }
    if (g->gated) mm_take(&own[0], &own[1], g->jobs[1].out, g->act, ith, nth);
    else
        for (int i = 0; i < g->n; i++) mm_take(&own[i], NULL, NULL, g->act, ith, nth);
}

void hc_cpu_matmul_n_fast(hc_backend *be, float *const *outs, const float *x, const hc_mat *const *ws,
                          const hc_vec *const *bs, int n, int64_t T) {
    hc_fast_ctx *fx = be->ctx;
    if (T == 1 && n >= 2 && n <= MM_GROUP_MAX) {
        const rows_fn fn = pick();
        mm_group g = {.n = n};
        mm_cursor cursors[MM_GROUP_MAX][16];
        bool ok = true;
        for (int i = 0; ok && i < n; i++)
            ok = mm_decode_job(fx, fn, &g.jobs[i], cursors[i], outs[i], x, ws[i], bs[i]) && mm_same_x(&g.jobs[0], &g.jobs[i]);
        if (ok) {
            hc_pool_run(fx->pool, mm_group_part, &g);
            return;
        }
    }
    hc_fused_matmul_n(be, outs, x, ws, bs, n, T);
}

void hc_cpu_gated_matmul_fast(hc_backend *be, float *out, float *tmp, const float *x, const hc_mat *gate,
                              const hc_vec *bg, const hc_mat *up, const hc_vec *bu, hc_activation act, int64_t T) {
    hc_fast_ctx *fx = be->ctx;
    if (T == 1 && gate->rows == up->rows && gate->cols == up->cols && gate->ld == up->ld && gate->quant == up->quant &&
        gate->dtype == up->dtype) {
        const rows_fn fn = pick();
        mm_group g = {.n = 2, .gated = true, .act = act};
        mm_cursor cursors[2][16];
        if (mm_decode_job(fx, fn, &g.jobs[0], cursors[0], out, x, gate, bg) &&
            mm_decode_job(fx, fn, &g.jobs[1], cursors[1], tmp, x, up, bu) && mm_same_x(&g.jobs[0], &g.jobs[1])) {
            hc_pool_run(fx->pool, mm_group_part, &g);
            return;
        }
    }
    hc_fused_gated_matmul(be, out, tmp, x, gate, bg, up, bu, act, T);
}

/* ---- backward: dW += dout^T x on the pool, split by rows of dW, each row summed over t in
 * order by one thread (the same bits whatever the thread count); dx as a forward matmul over
 * W's transposed view; db as column sums. ---------------------------------------------------- */

typedef struct {
    float *dw;
    const float *dout, *x;
    const hc_mat *w;
    int64_t T;
    hc_axpy_fn axpy;
} dw_job;

static void dw_part(void *ctx, int ith, int nth) {
    const dw_job *j = ctx;
    const int64_t N = j->w->rows, K = j->w->cols;
    /* stored rows: n for [N, K] (row += dout[t][n] * x[t]); k for GPT-2's [K, N] (row += x[t][k] * dout[t]) */
    const int64_t rows = j->w->transposed ? K : N, len = j->w->transposed ? N : K;
    int64_t per = (rows + nth - 1) / nth;
    per = (per + 15) / 16 * 16;
    const int64_t r0 = (int64_t)ith * per, r1 = r0 + per < rows ? r0 + per : rows;
    for (int64_t r = r0; r < r1; r++) {
        float *row = j->dw + r * j->w->ld;
        for (int64_t t = 0; t < j->T; t++) {
            if (j->w->transposed) j->axpy(row, j->dout + t * N, j->x[t * K + r], len);
            else j->axpy(row, j->x + t * K, j->dout[t * N + r], len);
        }
    }
}

void hc_cpu_matmul_backward_fast(hc_backend *be, float *dx, float *dw, float *db, const float *dout, const float *x,
                                 const hc_mat *w, int64_t T) {
    rows_fn fn = pick();
    if (!fn || w->quant) {
        hc_cpu_matmul_backward(be, dx, dw, db, dout, x, w, T);
        return;
    }
    if (dx) {
        hc_mat wt = *w;
        wt.rows = w->cols, wt.cols = w->rows, wt.transposed = !w->transposed;
        hc_cpu_matmul_fast(be, dx, dout, &wt, NULL, T);
    }
    if (dw) {
        dw_job j = {dw, dout, x, w, T, NULL};
        hc_dot_fn dot;
        hc_cpu_vec_fns(&dot, &j.axpy);
        hc_fast_ctx *fx = be->ctx;
        if (!fx->pool || w->rows * w->cols * T < 65536) dw_part(&j, 0, 1);
        else hc_pool_run(fx->pool, dw_part, &j);
    }
    if (db)
        for (int64_t t = 0; t < T; t++)
            for (int64_t n = 0; n < w->rows; n++) db[n] += dout[t * w->rows + n];
}
