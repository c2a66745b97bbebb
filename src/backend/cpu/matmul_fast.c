/* The fast CPU matmul: SIMD micro-kernels chosen at run time (AVX-512F, AVX2+FMA+F16C) and
 * split over the thread pool by output rows, so every result is computed by one thread in one
 * fixed order: the same bits whatever the thread count. The scalar reference stays in
 * ops_matmul.c and the kernels are tested against it. */
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu.h"
#include "backend/cpu/quant.h"
#include "backend/cpu/fast.h"
#include "base/threadpool.h"

/* ---- AVX2 + FMA + F16C: 8 floats, blocks of 4 tokens x 2 rows -------------------------------- */
#define SFX _avx2
#define TARGET "avx2,fma,f16c"
#define VF __m256
#define VL 8
#define KRB 2
#define VZERO() _mm256_setzero_ps()
#define VLOAD(p) _mm256_loadu_ps(p)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VSET1(f) _mm256_set1_ps(f)
#define VBF16(p) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define VF16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define VI8(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
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
#undef VZERO
#undef VLOAD
#undef VFMA
#undef VSET1
#undef VBF16
#undef VF16
#undef VI8
#undef VHSUM

/* ---- AVX-512F: 16 floats, blocks of 4 tokens x 4 rows ---------------------------------------- */
#define SFX _avx512
#define TARGET "avx512f,avx2,fma,f16c"
#define VF __m512
#define VL 16
#define KRB 4
#define VZERO() _mm512_setzero_ps()
#define VLOAD(p) _mm512_loadu_ps(p)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VSET1(f) _mm512_set1_ps(f)
#define VBF16(p) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define VF16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define VI8(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
#define VHSUM(v) _mm512_reduce_add_ps(v)
#include "backend/cpu/matmul_kernels.inc"

/* ---- dispatch --------------------------------------------------------------------------------- */

typedef void (*rows_fn)(float *out, const float *x, const hc_mat *w, int64_t T, int64_t n0, int64_t n1);

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

const char *hc_cpu_kernels(void) {
    rows_fn f = pick();
    return f == matmul_rows__avx512 ? "avx512" : f == matmul_rows__avx2 ? "avx2" : "scalar";
}

typedef struct {
    float *out;
    const float *x;
    const hc_mat *w;
    const hc_vec *bias;
    int64_t T;
    rows_fn fn;
} mm_job;

static void mm_part(void *ctx, int ith, int nth) {
    const mm_job *j = ctx;
    const int64_t N = j->w->rows;
    /* Contiguous slices of rows, cut at multiples of 16 so threads never share a cache line. */
    int64_t per = (N + nth - 1) / nth;
    per = (per + 15) / 16 * 16;
    const int64_t n0 = (int64_t)ith * per, n1 = n0 + per < N ? n0 + per : N;
    if (n0 >= n1) return;
    j->fn(j->out, j->x, j->w, j->T, n0, n1);
    if (j->bias && j->bias->data)
        for (int64_t t = 0; t < j->T; t++)
            for (int64_t n = n0; n < n1; n++) j->out[t * N + n] += hc_load_f32(j->bias->data, j->bias->dtype, n);
}

void hc_cpu_matmul_fast(hc_backend *be, float *out, const float *x, const hc_mat *w, const hc_vec *bias, int64_t T) {
    rows_fn fn = pick();
    /* Transposed (GPT-2 Conv1D) and misaligned-width weights take the reference path. */
    if (!fn || w->transposed) {
        hc_cpu_matmul(be, out, x, w, bias, T);
        return;
    }
    mm_job j = {out, x, w, bias, T, fn};
    hc_pool *pool = ((hc_fast_ctx *)be->ctx)->pool;
    /* Small products are not worth waking threads for. */
    if (!pool || w->rows * w->cols * T < 32768) mm_part(&j, 0, 1);
    else hc_pool_run(pool, mm_part, &j);
}
