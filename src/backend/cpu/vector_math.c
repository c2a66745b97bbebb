/* SIMD kernels for the row-wise ops: RMSNorm / LayerNorm, the gated activations (SwiGLU,
 * GELU-tanh) and softmax's exponentials. The plain C in ops_norm.c / ops_elementwise.c is the
 * specification; these agree with it to a few ulps (test_ops checks them on odd sizes).
 *
 * Each kernel works on one row or one range, so the result of a row never depends on how
 * many threads share the work. Picked once by cpuid: AVX-512, AVX2+FMA, else the reference.
 *
 * exp(x) = 2^n * e^r with n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2], and e^r
 * from Cephes' expf polynomial (about 1 ulp). The activations reduce to exp:
 *   silu(x)      = x / (1 + e^-x)
 *   gelu_tanh(x) = x / (1 + e^(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3), since
 *                  0.5 (1 + tanh u) = 1 / (1 + e^(-2u)). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "backend/activation.h"
#include "backend/cpu/cpu.h"
#include "backend/cpu/fast.h"

#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693359375f
#define LN2_LO -2.12194440e-4f
#define P0 1.9875691500e-4f
#define P1 1.3981999507e-3f
#define P2 8.3334519073e-3f
#define P3 4.1665795894e-2f
#define P4 1.6666665459e-1f
#define P5 5.0000001201e-1f
#define GELU_K 0.7978845608028654f

/* ---- AVX-512 --------------------------------------------------------------------------- */

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

T512 static inline __m512 exp512(__m512 x) {
    /* scalef gives 0 below the f32 range and inf above it, as expf does */
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    __m512 p = _mm512_set1_ps(P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P5));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* act(gate) * up for SiLU and GELU-tanh; the caller handles the other activations. */
T512 static inline __m512 glu512(__m512 g, __m512 u, hc_activation act) {
    __m512 z = _mm512_sub_ps(_mm512_setzero_ps(), g); /* -x */
    if (act == HC_ACT_GELU_TANH) {
        const __m512 g3 = _mm512_mul_ps(_mm512_mul_ps(g, g), g);
        z = _mm512_mul_ps(_mm512_set1_ps(-2.0f * GELU_K), _mm512_fmadd_ps(g3, _mm512_set1_ps(0.044715f), g));
    }
    const __m512 den = _mm512_add_ps(_mm512_set1_ps(1.0f), exp512(z));
    return _mm512_mul_ps(_mm512_div_ps(g, den), u);
}

T512 static void glu_avx512(float *out, const float *gate, const float *up, hc_activation act, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, glu512(_mm512_loadu_ps(gate + i), _mm512_loadu_ps(up + i), act));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(out + i, m, glu512(_mm512_maskz_loadu_ps(m, gate + i), _mm512_maskz_loadu_ps(m, up + i), act));
    }
}

/* x[i] = exp(x[i] - shift); returns the sum (in double, like the reference loops). */
T512 static double exp_shift_avx512(float *x, float shift, int64_t n) {
    const __m512 s = _mm512_set1_ps(shift);
    __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
    int64_t i = 0;
    for (; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        const __m512 e = _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), s)));
        _mm512_mask_storeu_ps(x + i, m, e);
        acc0 = _mm512_add_pd(acc0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        acc1 = _mm512_add_pd(acc1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
}

/* 16 weights (or biases) from f32, bf16 or f16 storage, masked. */
T512 static inline __m512 load_w512(const void *w, hc_dtype dt, int64_t c, __mmask16 m) {
    switch (dt) {
    case HC_DTYPE_BF16: {
        const __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + c);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case HC_DTYPE_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)w + c));
    default: return _mm512_maskz_loadu_ps(m, (const float *)w + c);
    }
}

/* A row's sum, sum of squares, or sum of squares about mean, in double as the reference. */
typedef enum { SUM, SUM_SQUARES, SUM_SQUARES_CENTRED } row_sum_kind;

T512 static inline double row_sum512(const float *x, int64_t C, row_sum_kind kind, double mean) {
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    const __m512d mu = _mm512_set1_pd(mean);
    for (int64_t c = 0; c < C; c += 16) {
        const __mmask16 m = C - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (C - c)) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + c);
        __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        if (kind == SUM) {
            a0 = _mm512_add_pd(a0, lo), a1 = _mm512_add_pd(a1, hi);
            continue;
        }
        if (kind == SUM_SQUARES_CENTRED) { /* masked-off lanes would be 0 - mean: keep them 0 */
            lo = _mm512_maskz_sub_pd((__mmask8)m, lo, mu);
            hi = _mm512_maskz_sub_pd((__mmask8)(m >> 8), hi, mu);
        }
        a0 = _mm512_fmadd_pd(lo, lo, a0), a1 = _mm512_fmadd_pd(hi, hi, a1);
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
}

T512 static void norm_avx512(float *out, const float *x, const hc_vec *w, const hc_vec *b, hc_norm_kind kind, float eps,
                             int64_t T, int64_t C) {
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * C; /* [C] */
        float *ot = out + t * C;     /* [C] */
        __m512 inv, shift;
        if (kind == HC_NORM_LAYER) {
            const double mean = row_sum512(xt, C, SUM, 0) / (double)C;
            const double var = row_sum512(xt, C, SUM_SQUARES_CENTRED, mean);
            inv = _mm512_set1_ps((float)(1.0 / sqrt(var / (double)C + eps)));
            shift = _mm512_set1_ps((float)mean);
        } else {
            const double ss = row_sum512(xt, C, SUM_SQUARES, 0);
            inv = _mm512_set1_ps((float)(1.0 / sqrt(ss / (double)C + eps)));
            shift = _mm512_setzero_ps();
        }
        for (int64_t c = 0; c < C; c += 16) {
            const __mmask16 m = C - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (C - c)) - 1);
            __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xt + c), shift), inv);
            if (kind == HC_NORM_LAYER) {
                if (w && w->data) v = _mm512_mul_ps(v, load_w512(w->data, w->dtype, c, m));
                if (b && b->data) v = _mm512_add_ps(v, load_w512(b->data, b->dtype, c, m));
            } else {
                __m512 g = load_w512(w->data, w->dtype, c, m);
                if (kind == HC_NORM_RMS_PLUS1) g = _mm512_add_ps(g, _mm512_set1_ps(1.0f));
                v = _mm512_mul_ps(v, g);
            }
            _mm512_mask_storeu_ps(ot + c, m, v);
        }
    }
}

/* One token's heads rotated (rotate-half) by the angles' cos c and sin s [half]: the
 * reference's products and differences, unfused, so the same bits. */
T512 static void rope_avx512(float *x, const float *c, const float *s, int64_t nh, int64_t D, int64_t half) {
    for (int64_t h = 0; h < nh; h++) {
        float *v = x + h * D; /* [D] */
        for (int64_t i = 0; i < half; i += 16) {
            const __mmask16 m = half - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (half - i)) - 1);
            const __m512 a = _mm512_maskz_loadu_ps(m, v + i), b = _mm512_maskz_loadu_ps(m, v + i + half);
            const __m512 cv = _mm512_maskz_loadu_ps(m, c + i), sv = _mm512_maskz_loadu_ps(m, s + i);
            _mm512_mask_storeu_ps(v + i, m, _mm512_sub_ps(_mm512_mul_ps(a, cv), _mm512_mul_ps(b, sv)));
            _mm512_mask_storeu_ps(v + i + half, m, _mm512_add_ps(_mm512_mul_ps(b, cv), _mm512_mul_ps(a, sv)));
        }
    }
}

/* ---- AVX2 + FMA ------------------------------------------------------------------------ */

#define T256 __attribute__((target("avx2,fma")))

T256 static inline __m256 exp256(__m256 x) {
    const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    __m256 p = _mm256_set1_ps(P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P5));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    /* outside the clamp: 0 below, inf above, as expf */
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ));
    return _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, _mm256_set1_ps(88.0f), _CMP_GT_OQ));
}

T256 static inline __m256 glu256(__m256 g, __m256 u, hc_activation act) {
    __m256 z = _mm256_sub_ps(_mm256_setzero_ps(), g);
    if (act == HC_ACT_GELU_TANH) {
        const __m256 g3 = _mm256_mul_ps(_mm256_mul_ps(g, g), g);
        z = _mm256_mul_ps(_mm256_set1_ps(-2.0f * GELU_K), _mm256_fmadd_ps(g3, _mm256_set1_ps(0.044715f), g));
    }
    const __m256 den = _mm256_add_ps(_mm256_set1_ps(1.0f), exp256(z));
    return _mm256_mul_ps(_mm256_div_ps(g, den), u);
}

T256 static void glu_avx2(float *out, const float *gate, const float *up, hc_activation act, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, glu256(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i), act));
    if (i < n) {
        float g[8] = {0}, u[8] = {0}, o[8];
        memcpy(g, gate + i, sizeof(float) * (size_t)(n - i));
        memcpy(u, up + i, sizeof(float) * (size_t)(n - i));
        _mm256_storeu_ps(o, glu256(_mm256_loadu_ps(g), _mm256_loadu_ps(u), act));
        memcpy(out + i, o, sizeof(float) * (size_t)(n - i));
    }
}

T256 static double exp_shift_avx2(float *x, float shift, int64_t n) {
    const __m256 s = _mm256_set1_ps(shift);
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
        _mm256_storeu_ps(x + i, e);
        acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, _mm256_add_pd(acc0, acc1));
    double sum = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    for (; i < n; i++) sum += (x[i] = expf(x[i] - shift));
    return sum;
}

T256 static void rope_avx2(float *x, const float *c, const float *s, int64_t nh, int64_t D, int64_t half) {
    for (int64_t h = 0; h < nh; h++) {
        float *v = x + h * D; /* [D] */
        int64_t i = 0;
        for (; i + 8 <= half; i += 8) {
            const __m256 a = _mm256_loadu_ps(v + i), b = _mm256_loadu_ps(v + i + half);
            const __m256 cv = _mm256_loadu_ps(c + i), sv = _mm256_loadu_ps(s + i);
            _mm256_storeu_ps(v + i, _mm256_sub_ps(_mm256_mul_ps(a, cv), _mm256_mul_ps(b, sv)));
            _mm256_storeu_ps(v + i + half, _mm256_add_ps(_mm256_mul_ps(b, cv), _mm256_mul_ps(a, sv)));
        }
        for (; i < half; i++) {
            const float a = v[i], b = v[i + half];
            v[i] = a * c[i] - b * s[i];
            v[i + half] = b * c[i] + a * s[i];
        }
    }
}

/* ---- plain C and the pick ---------------------------------------------------------------- */

static void rope_plain(float *x, const float *c, const float *s, int64_t nh, int64_t D, int64_t half) {
    for (int64_t h = 0; h < nh; h++) {
        float *v = x + h * D; /* [D] */
        for (int64_t i = 0; i < half; i++) {
            const float a = v[i], b = v[i + half];
            v[i] = a * c[i] - b * s[i];
            v[i + half] = b * c[i] + a * s[i];
        }
    }
}

static void glu_plain(float *out, const float *gate, const float *up, hc_activation act, int64_t n) {
    hc_cpu_glu(NULL, out, gate, up, act, n);
}

static double exp_shift_plain(float *x, float shift, int64_t n) {
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (x[i] = expf(x[i] - shift));
    return sum;
}

static void norm_plain(float *out, const float *x, const hc_vec *w, const hc_vec *b, hc_norm_kind kind, float eps,
                       int64_t T, int64_t C) {
    hc_cpu_norm(NULL, out, x, w, b, kind, eps, T, C);
}

typedef struct {
    void (*glu)(float *, const float *, const float *, hc_activation, int64_t);
    double (*exp_shift)(float *, float, int64_t);
    void (*norm)(float *, const float *, const hc_vec *, const hc_vec *, hc_norm_kind, float, int64_t, int64_t);
    void (*rope)(float *, const float *, const float *, int64_t, int64_t, int64_t);
} vec_kernels;

static const vec_kernels *kernels(void) {
    static const vec_kernels k512 = {glu_avx512, exp_shift_avx512, norm_avx512, rope_avx512};
    static const vec_kernels k256 = {glu_avx2, exp_shift_avx2, norm_plain, rope_avx2};
    static const vec_kernels plain = {glu_plain, exp_shift_plain, norm_plain, rope_plain};
    static const vec_kernels *picked;
    if (!picked) { /* follows the matmul's pick, so HUBCAP_KERNELS=avx2|scalar applies here too */
        const char *k = hc_cpu_kernels();
        __builtin_cpu_init();
        const bool full512 = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                             __builtin_cpu_supports("avx512dq");
        picked = !strcmp(k, "avx512") && full512 ? &k512 : !strcmp(k, "scalar") ? &plain : &k256;
    }
    return picked;
}

void hc_vec_glu(float *out, const float *gate, const float *up, hc_activation act, int64_t n) {
    if (act == HC_ACT_SILU || act == HC_ACT_GELU_TANH) kernels()->glu(out, gate, up, act, n);
    else hc_cpu_glu(NULL, out, gate, up, act, n);
}

double hc_vec_exp_shift(float *x, float shift, int64_t n) { return kernels()->exp_shift(x, shift, n); }

void hc_vec_norm(float *out, const float *x, const hc_vec *w, const hc_vec *b, hc_norm_kind kind, float eps, int64_t T,
                 int64_t C) {
    kernels()->norm(out, x, w, b, kind, eps, T, C);
}

void hc_vec_rope_token(float *x, const float *c, const float *s, int64_t nh, int64_t D, int64_t half) {
    kernels()->rope(x, c, s, nh, D, half);
}
