/* Fast attention over the KV cache, split over the thread pool. With AVX-512 and a head dim a
 * multiple of 16 (most models), a token's query heads that share a KV head go together
 * (gq_item below); otherwise (token, head) pairs take a dot and an axpy per key, in AVX-512 or
 * AVX2. Each item is computed by one thread in a fixed order, so results do not depend on the
 * thread count. Masks, windows and soft-capping as the reference. */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>

#include "backend/cpu/cpu.h"
#include "backend/cpu/fast.h"
#include "base/threadpool.h"

__attribute__((target("avx512f"))) static float dot512(const float *a, const float *b, int64_t n) {
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    float s = _mm512_reduce_add_ps(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

__attribute__((target("avx512f"))) static void axpy512(float *y, const float *x, float a, int64_t n) {
    const __m512 av = _mm512_set1_ps(a);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

__attribute__((target("avx2,fma"))) static float dot256(const float *a, const float *b, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    float s = _mm_cvtss_f32(s4);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

__attribute__((target("avx2,fma"))) static void axpy256(float *y, const float *x, float a, int64_t n) {
    const __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

static float dot_plain(const float *a, const float *b, int64_t n) {
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy_plain(float *y, const float *x, float a, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

void hc_cpu_vec_fns(hc_dot_fn *dot, hc_axpy_fn *axpy) {
    const char *k = hc_cpu_kernels();
    const bool w512 = !strcmp(k, "avx512"), w256 = !strcmp(k, "avx2");
    *dot = w512 ? dot512 : w256 ? dot256 : dot_plain;
    *axpy = w512 ? axpy512 : w256 ? axpy256 : axpy_plain;
}

typedef struct {
    float *out;
    const float *q;
    const void *kc, *vc;
    hc_dtype kv;
    const int32_t *pos;
    int64_t T, H, KVH, D, window;
    float scale, softcap;
    hc_fast_ctx *fx;
    hc_dot_fn dot;      /* the per-key path */
    hc_axpy_fn axpy;
    int64_t ranges;     /* the AVX-512 path below: KV head ranges a token's items split into, */
    int64_t chunks;     /* or (> 0) chunks of AC keys a token's items split into, */
    float *parts;       /* their partial sums [T][chunks][H][D + 2]: output, max, sum */
    atomic_llong *next; /* the next chunk item not yet taken */
} att_job;

#define HC_MAX_HEAD_DIM 1024

/* The keys token t attends to: [lo, lo + n). */
static void attended(const att_job *j, int64_t t, int64_t *lo, int64_t *n) {
    const int64_t p = j->pos[t];
    *lo = (j->window > 0 && p - j->window + 1 > 0) ? p - j->window + 1 : 0;
    *n = p - *lo + 1;
}

/* Row s, head kvh of a cache: in place for f32, widened into `tmp` for f16/bf16. */
static const float *kv_row(const att_job *j, const void *cache, int64_t s, int64_t kvh, float *tmp) {
    const int64_t off = (s * j->KVH + kvh) * j->D;
    if (j->kv == HC_DTYPE_F32) return (const float *)cache + off;
    const uint16_t *h = (const uint16_t *)cache + off;
    if (j->kv == HC_DTYPE_F16)
        for (int64_t d = 0; d < j->D; d++) tmp[d] = hc_f16_to_f32(h[d]);
    else
        for (int64_t d = 0; d < j->D; d++) tmp[d] = hc_bf16_to_f32(h[d]);
    return tmp;
}

static void att_part(void *ctx, int ith, int nth) {
    const att_job *j = ctx;
    const int64_t pairs = j->T * j->H, group = j->H / j->KVH;
    const int64_t per = (pairs + nth - 1) / nth, a = per * ith, b = a + per < pairs ? a + per : pairs;
    float *att = j->fx->scratch[ith]; /* [S] */
    for (int64_t i = a; i < b; i++) {
        const int64_t t = i / j->H, h = i % j->H;
        int64_t lo, n;
        attended(j, t, &lo, &n);
        const float *qh = j->q + (t * j->H + h) * j->D;
        const int64_t kvh = h / group;
        float row[HC_MAX_HEAD_DIM]; /* a 16-bit cache row widened to f32 */
        float mx = -INFINITY;
        for (int64_t s = lo; s < lo + n; s++) {
            float v = j->dot(qh, kv_row(j, j->kc, s, kvh, row), j->D) * j->scale;
            if (j->softcap > 0) v = j->softcap * tanhf(v / j->softcap);
            att[s - lo] = v;
            if (v > mx) mx = v;
        }
        const float inv = (float)(1.0 / hc_vec_exp_shift(att, mx, n));
        float *oh = j->out + (t * j->H + h) * j->D;
        for (int64_t d = 0; d < j->D; d++) oh[d] = 0;
        for (int64_t s = lo; s < lo + n; s++) j->axpy(oh, kv_row(j, j->vc, s, kvh, row), att[s - lo] * inv, j->D);
    }
}

/* ---- AVX-512, head dims a multiple of 16 (up to 256): whole rows of the cache at a time ----
 * One item is a token and a range of KV heads with all their query heads, or, when a few tokens
 * attend to many keys (decode), a token and a chunk of AC keys with all heads. Scores go 16 keys
 * at a time: each key's products in one vector, the 16 vectors summed across lanes by one tree
 * (sum16), the same order for every key wherever it falls, so a short last block (zero-padded)
 * gives the same bits. The block's rows are read once, for every head of the item, and the
 * value sums go on over the same blocks, in order. A chunk's item leaves each head's partial
 * softmax (max, sum, unnormalized output), combined chunk by chunk in order afterwards; chunks
 * are a fixed size whatever the thread count, so the bits do not depend on it.
 * Why chunks of keys for decode: a cache row holds every KV head ([S, KVH*D]), and two threads
 * reading a half of each row read this VM's memory at 9-16 GB/s, against 60-65 for halves of
 * the keys (the 1B model's f32 cache at position 504: 1 KB on, 1 KB off). The per-key path
 * above (a dot and an axpy call per key and head, each with a lane reduction) took that decode
 * 5.8 ms a token at position 536; chunks, 2.4-3.0 ms. */

#define GQ 4   /* query heads a value tile takes at most */
#define AC 128 /* keys a decode item takes */

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c")))
#define T512_INLINE static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl,avx512dq,f16c")))

/* 16 floats of a cache at element off, widened to f32. */
T512_INLINE __m512 kv_load(const void *cache, hc_dtype dt, int64_t off) {
    if (dt == HC_DTYPE_F32) return _mm512_loadu_ps((const float *)cache + off);
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)cache + off));
    if (dt == HC_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* r[i] = the sum of a[i]'s 16 lanes, for i < 16. */
T512_INLINE __m512 sum16(const __m512 *a) {
    __m512 t[8], w[4], z[2];
    for (int i = 0; i < 8; i++) /* each 128-bit lane: [x0+x2, y0+y2, x1+x3, y1+y3] */
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++) /* each 128-bit lane: its sum for keys 4i..4i+3 */
        w[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int i = 0; i < 2; i++) /* lanes 0+1 and 2+3 */
        z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(z[0], z[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* 16 keys' scores for one head: sc[i] = scale * q . k_i for i < nk, the rest of the block
 * zero-padded. k: the block's first key, keys ld floats apart. DC = D / 16. */
T512_INLINE void hr_block(float *sc, const float *q, const float *k, int nk, int64_t ld, const int64_t DC, __m512 sv) {
    __m512 a[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) {
        a[i] = _mm512_setzero_ps();
        if (i >= nk) continue;
        const float *ki = k + i * ld;
        a[i] = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_loadu_ps(ki));
        for (int64_t c = 1; c < DC; c++) a[i] = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * c), _mm512_loadu_ps(ki + 16 * c), a[i]);
    }
    _mm512_mask_storeu_ps(sc, (__mmask16)((1u << nk) - 1), _mm512_mul_ps(sum16(a), sv));
}

/* Reads rows [s0, s0 + rows) of a cache, a byte a cache line, in address order, before a
 * chunk's block is computed head by head (each head's loads jump a whole row): on this VM the
 * decode's attention took 22-29% less time with it (1B shapes at positions 504 and 1800, f32 and
 * bf16 caches, medians alternated in one process), where software prefetches of the same lines
 * changed nothing. The reads are volatile, so they stay without a use. */
static inline void read_rows_in_order(const void *cache, size_t es, int64_t s0, int64_t rows, int64_t ld) {
    const char *a = (const char *)cache + (size_t)(s0 * ld) * es, *b = a + (size_t)(rows * ld) * es;
    for (const char *p = a; p < b; p += 64) (void)*(const volatile char *)p;
}

/* sc[h][0..n) for the heads [h0, h1) (query heads of KV heads g = h / G): key blocks in order,
 * every head of a block before the next. */
T512_INLINE void hr_scores_dc(float *sc, const att_job *j, const float *q, int64_t h0, int64_t h1, int64_t lo, int64_t n,
                              const hc_dtype dt, const int64_t DC) {
    const int64_t G = j->H / j->KVH, ld = j->KVH * j->D, D = DC * 16;
    const __m512 sv = _mm512_set1_ps(j->scale);
    for (int64_t s = 0; s < n; s += 16) {
        const int nk = n - s < 16 ? (int)(n - s) : 16;
        if (j->chunks) read_rows_in_order(j->kc, dt == HC_DTYPE_F32 ? 4 : 2, lo + s, nk, ld);
        for (int64_t h = h0; h < h1;) {
            const int64_t g = h / G, he = (g + 1) * G < h1 ? (g + 1) * G : h1;
            /* KV head g's block as f32: an f32 cache in place; a 16-bit one widened once for its G
             * query heads, not once per head (a bf16 cache at position 1816: 277-317 -> 252-268 us
             * a layer, bench_cpu_attention) */
            _Alignas(64) float kt[16 * 256]; /* [16 keys][D] */
            const float *k = kt;
            int64_t kld = D;
            if (dt == HC_DTYPE_F32) k = (const float *)j->kc + ((lo + s) * ld + g * D), kld = ld;
            else
                for (int i = 0; i < nk; i++)
                    for (int64_t c = 0; c < DC; c++)
                        _mm512_store_ps(kt + i * D + 16 * c, kv_load(j->kc, dt, (lo + s + i) * ld + g * D + 16 * c));
            for (; h < he; h++) hr_block(sc + (h - h0) * n + s, q + h * D, k, nk, kld, DC, sv);
        }
    }
}

/* the cache's dtype and the common head dims as constants: no branch per load */
T512 static void hr_scores(float *sc, const att_job *j, const float *q, int64_t h0, int64_t h1, int64_t lo, int64_t n) {
#define HR_SCORES(DT)                                                                                                  \
    if (j->D == 64) hr_scores_dc(sc, j, q, h0, h1, lo, n, DT, 4);                                                      \
    else if (j->D == 128) hr_scores_dc(sc, j, q, h0, h1, lo, n, DT, 8);                                                \
    else hr_scores_dc(sc, j, q, h0, h1, lo, n, DT, j->D / 16);
    if (j->kv == HC_DTYPE_F32) {
        HR_SCORES(HC_DTYPE_F32)
    } else if (j->kv == HC_DTYPE_F16) {
        HR_SCORES(HC_DTYPE_F16)
    } else {
        HR_SCORES(HC_DTYPE_BF16)
    }
#undef HR_SCORES
}

/* o[h][16 c ..] += sum_s p[h][s] v_s over nk keys from s0, for HN heads and CN vectors: each sum
 * goes on from memory, over s in order. */
#define HR_VTILE(HN, CN)                                                                                               \
    T512 static void hr_values_##HN##_##CN(float *const *o, const float *const *p, const void *vc, hc_dtype dt,         \
                                           int64_t s0, int nk, int64_t ld, int64_t base) {                            \
        __m512 acc[HN][CN];                                                                                            \
        for (int h = 0; h < HN; h++)                                                                                   \
            for (int c = 0; c < CN; c++) acc[h][c] = _mm512_loadu_ps(o[h] + 16 * c);                                   \
        for (int s = 0; s < nk; s++) {                                                                                 \
            __m512 v[CN];                                                                                              \
            for (int c = 0; c < CN; c++) v[c] = kv_load(vc, dt, (s0 + s) * ld + base + 16 * c);                        \
            for (int h = 0; h < HN; h++) {                                                                             \
                const __m512 w = _mm512_set1_ps(p[h][s]);                                                              \
                for (int c = 0; c < CN; c++) acc[h][c] = _mm512_fmadd_ps(w, v[c], acc[h][c]);                          \
            }                                                                                                          \
        }                                                                                                              \
        for (int h = 0; h < HN; h++)                                                                                   \
            for (int c = 0; c < CN; c++) _mm512_storeu_ps(o[h] + 16 * c, acc[h][c]);                                   \
    }
HR_VTILE(1, 4)
HR_VTILE(2, 4)
HR_VTILE(3, 4)
HR_VTILE(4, 4)
HR_VTILE(1, 1)
HR_VTILE(2, 1)
HR_VTILE(3, 1)
HR_VTILE(4, 1)
typedef void (*hr_values_fn)(float *const *, const float *const *, const void *, hc_dtype, int64_t, int, int64_t,
                             int64_t);

/* Token t, KV heads [g0, g1), keys [lo, lo + n) of those it attends to: out = softmax(scores) V
 * for their query heads; or with part (a chunk), part[h] = the unnormalized sums, their max and
 * sum (stride D + 2). */
T512 static void hr_item(const att_job *j, int64_t t, int64_t g0, int64_t g1, int64_t lo, int64_t n, float *part,
                         float *sc /* [heads][n] */) {
    const int64_t H = j->H, D = j->D, G = H / j->KVH, ld = j->KVH * D, h0 = g0 * G, h1 = g1 * G;
    hr_scores(sc, j, j->q + t * H * D, h0, h1, lo, n);
    float *const obase = part ? part : j->out + t * H * D;
    const int64_t ostride = part ? D + 2 : D;
    for (int64_t h = h0; h < h1; h++) {
        float *e = sc + (h - h0) * n;
        if (j->softcap > 0)
            for (int64_t s = 0; s < n; s++) e[s] = j->softcap * tanhf(e[s] / j->softcap);
        __m512 m = _mm512_set1_ps(-INFINITY);
        int64_t s = 0;
        for (; s + 16 <= n; s += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(e + s));
        float mx = _mm512_reduce_max_ps(m);
        for (; s < n; s++) mx = e[s] > mx ? e[s] : mx;
        const double sum = hc_vec_exp_shift(e, mx, n);
        memset(obase + h * ostride, 0, sizeof(float) * (size_t)D);
        if (part) { /* the chunk's own max and sum; the combine normalizes */
            part[h * ostride + D] = mx;
            part[h * ostride + D + 1] = (float)sum;
            continue;
        }
        const __m512 inv = _mm512_set1_ps((float)(1.0 / sum));
        for (s = 0; s + 16 <= n; s += 16) _mm512_storeu_ps(e + s, _mm512_mul_ps(_mm512_loadu_ps(e + s), inv));
        if (s < n) {
            const __mmask16 k = (__mmask16)((1u << (n - s)) - 1);
            _mm512_mask_storeu_ps(e + s, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, e + s), inv));
        }
    }
    static const hr_values_fn tiles[2][GQ] = {{hr_values_1_1, hr_values_2_1, hr_values_3_1, hr_values_4_1},
                                              {hr_values_1_4, hr_values_2_4, hr_values_3_4, hr_values_4_4}};
    for (int64_t s = 0; s < n; s += 16) {
        const int nk = n - s < 16 ? (int)(n - s) : 16;
        if (part) read_rows_in_order(j->vc, j->kv == HC_DTYPE_F32 ? 4 : 2, lo + s, nk, ld);
        for (int64_t g = g0; g < g1; g++)
            for (int64_t ha = g * G; ha < (g + 1) * G; ha += GQ) { /* up to GQ heads of KV head g */
                const int hn = (g + 1) * G - ha < GQ ? (int)((g + 1) * G - ha) : GQ;
                float *o[GQ] = {0};
                const float *pr[GQ] = {0};
                for (int64_t c = 0; c < D / 16;) {
                    const bool four = D / 16 - c >= 4;
                    for (int h = 0; h < hn; h++) o[h] = obase + (ha + h) * ostride + 16 * c, pr[h] = sc + (ha + h - h0) * n + s;
                    tiles[four][hn - 1](o, pr, j->vc, j->kv, lo + s, nk, ld, g * D + 16 * c);
                    c += four ? 4 : 1;
                }
            }
    }
}

/* A prompt's items are dealt in turn (item ith, ith + nth, ...): its later tokens attend to more
 * keys. A decode's chunks go to whichever thread is free (a shared counter): one core of this VM
 * often runs slower than the other for a while, and each chunk leaves its sums in its own slot,
 * so the bits do not depend on who took it. */
static void hr_part(void *ctx, int ith, int nth) {
    const att_job *j = ctx;
    float *sc = j->fx->scratch[ith];
    if (j->chunks > 0) {
        for (int64_t i = atomic_fetch_add(j->next, 1); i < j->T * j->chunks; i = atomic_fetch_add(j->next, 1)) {
            const int64_t t = i / j->chunks, c = i % j->chunks;
            int64_t lo, n;
            attended(j, t, &lo, &n);
            if (c * AC >= n) continue;
            float *part = j->parts + i * j->H * (j->D + 2);
            hr_item(j, t, 0, j->KVH, lo + c * AC, n - c * AC < AC ? n - c * AC : AC, part, sc);
        }
        return;
    }
    for (int64_t i = ith; i < j->T * j->ranges; i += nth) {
        const int64_t r = i % j->ranges, g0 = j->KVH * r / j->ranges, g1 = j->KVH * (r + 1) / j->ranges;
        int64_t lo, n;
        attended(j, i / j->ranges, &lo, &n);
        hr_item(j, i / j->ranges, g0, g1, lo, n, NULL, sc);
    }
}

/* out = sum_c e^(max_c - M) o_c / sum_c e^(max_c - M) sum_c over a token's chunks, in order. */
T512 static void hr_combine(const att_job *j) {
    const int64_t H = j->H, D = j->D, stride = H * (D + 2);
    for (int64_t t = 0; t < j->T; t++) {
        int64_t lo, n;
        attended(j, t, &lo, &n);
        const int64_t nc = (n + AC - 1) / AC;
        for (int64_t h = 0; h < H; h++) {
            float *part = j->parts + t * j->chunks * stride + h * (D + 2);
            float M = -INFINITY, L = 0;
            for (int64_t c = 0; c < nc; c++) M = part[c * stride + D] > M ? part[c * stride + D] : M;
            for (int64_t c = 0; c < nc; c++) { /* each chunk's max becomes its factor e^(max_c - M) */
                part[c * stride + D] = expf(part[c * stride + D] - M);
                L += part[c * stride + D] * part[c * stride + D + 1];
            }
            float *oh = j->out + (t * H + h) * D;
            for (int64_t d = 0; d < D; d += 16) {
                __m512 acc = _mm512_setzero_ps();
                for (int64_t c = 0; c < nc; c++)
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(part[c * stride + D]), _mm512_loadu_ps(part + c * stride + d), acc);
                _mm512_storeu_ps(oh + d, acc);
            }
            const __m512 inv = _mm512_set1_ps(1.0f / L);
            for (int64_t d = 0; d < D; d += 16) _mm512_storeu_ps(oh + d, _mm512_mul_ps(_mm512_loadu_ps(oh + d), inv));
        }
    }
}

void hc_cpu_attention_fast(hc_backend *be, float *out, const float *q, const void *k_cache, const void *v_cache,
                           hc_dtype kv_dtype, const int32_t *pos, int64_t T, int64_t H, int64_t KVH, int64_t D,
                           float scale, int64_t window, float softcap, int64_t S, float *scratch) {
    hc_fast_ctx *fx = be->ctx;
    int64_t need = 1;
    for (int64_t t = 0; t < T; t++)
        if (pos[t] + 1 > need) need = pos[t] + 1;
    const int nth = hc_pool_size(fx->pool);
    if (D > HC_MAX_HEAD_DIM || !hc_fast_scratch(fx, (size_t)need)) { /* the reference handles the rest */
        hc_cpu_attention(be, out, q, k_cache, v_cache, kv_dtype, pos, T, H, KVH, D, scale, window, softcap, S, scratch);
        return;
    }
    /* a few tokens over many keys: chunks of keys; else a range of KV heads a thread for a few
     * tokens, every head of a token together for more */
    const bool grouped = D % 16 == 0 && D <= 256 && !strcmp(hc_cpu_kernels(), "avx512");
    const int64_t ranges = T < nth ? (KVH < nth ? KVH : nth) : 1, chunks = T < 8 && need > AC ? (need + AC - 1) / AC : 0;
    const size_t parts = (size_t)(T * chunks * H * (D + 2));
    if (grouped && parts > fx->att_parts_cap) { /* grows to the longest context seen, then stays */
        float *pp = realloc(fx->att_parts, parts * sizeof(float));
        if (pp) fx->att_parts = pp, fx->att_parts_cap = parts;
    }
    if (grouped && parts <= fx->att_parts_cap &&
        hc_fast_scratch(fx, chunks ? (size_t)(H * AC) : (size_t)((KVH + ranges - 1) / ranges * (H / KVH) * need))) {
        atomic_llong next = 0;
        att_job hj = {.out = out, .q = q, .kc = k_cache, .vc = v_cache, .kv = kv_dtype, .pos = pos, .T = T, .H = H,
                      .KVH = KVH, .D = D, .window = window, .scale = scale, .softcap = softcap, .fx = fx, .ranges = ranges,
                      .chunks = chunks, .parts = fx->att_parts, .next = &next};
        if (T * H * need * D < 65536 || nth == 1) hr_part(&hj, 0, 1);
        else hc_pool_run(fx->pool, hr_part, &hj);
        if (chunks) hr_combine(&hj);
        return;
    }
    att_job j = {out, q, k_cache, v_cache, kv_dtype, pos, T, H, KVH, D, window, scale, softcap, fx, NULL, NULL, 1, 0, NULL, NULL};
    hc_cpu_vec_fns(&j.dot, &j.axpy);
    if (T * H * (pos[T - 1] + 1) * D < 65536 || nth == 1) att_part(&j, 0, 1);
    else hc_pool_run(fx->pool, att_part, &j);
}

/* ---- backward: kv heads split over the thread pool. A thread owns kv head g: dq of its query
 * heads and dk, dv of g, summed in a fixed order (t, then its heads), so the result does not
 * depend on the thread count. The reference's math in f32 (it sums in double). ------------- */

typedef struct {
    float *dq, *dk, *dv;
    const float *dout, *q, *k, *v;
    const int32_t *pos;
    int64_t T, H, KVH, D, window;
    float scale, softcap;
    hc_fast_ctx *fx;
    hc_dot_fn dot;
    hc_axpy_fn axpy;
} att_bwd_job;

/* Short head dims (stories260K's 8): an indirect call into a 16-wide kernel per key costs more
 * than the work, so below 16 the backward's loops run inline (each sum still in one fixed
 * order, so the bits do not depend on the thread count). */
static inline float dot_short(const float *a, const float *b, int64_t n) {
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}
static inline void axpy_short(float *y, const float *x, float a, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

static void att_bwd_part(void *ctx, int ith, int nth) {
    const att_bwd_job *j = ctx;
    const int64_t T = j->T, H = j->H, KVH = j->KVH, D = j->D, group = H / KVH;
    const bool short_d = D < 16;
#define DOT(a, b) (short_d ? dot_short((a), (b), D) : j->dot((a), (b), D))
#define AXPY(y, x, c) (short_d ? axpy_short((y), (x), (c), D) : j->axpy((y), (x), (c), D))
    float *p = j->fx->scratch[ith], *dp = p + T, *fac = p + 2 * T; /* [T] each: P, dP, the cap's derivative */
    for (int64_t g = ith; g < KVH; g += nth) {
        for (int64_t t = 0; t < T; t++)
            for (int64_t d = 0; d < D; d++) j->dk[(t * KVH + g) * D + d] = j->dv[(t * KVH + g) * D + d] = 0;
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = g * group; h < (g + 1) * group; h++) {
                const float *qh = j->q + (t * H + h) * D, *go = j->dout + (t * H + h) * D;
                float *dqh = j->dq + (t * H + h) * D;
                for (int64_t d = 0; d < D; d++) dqh[d] = 0;
                float mx = -INFINITY;
                for (int64_t s = 0; s < T; s++) {
                    const bool seen = j->pos[s] <= j->pos[t] && !(j->window > 0 && j->pos[s] <= j->pos[t] - j->window);
                    float z = -INFINITY;
                    if (seen) {
                        z = DOT(qh, j->k + (s * KVH + g) * D) * j->scale;
                        if (j->softcap > 0) z = j->softcap * tanhf(z / j->softcap);
                    }
                    p[s] = z;
                    if (z > mx) mx = z;
                }
                /* each exponential once: kept in dp until P is known */
                double sum = 0;
                for (int64_t s = 0; s < T; s++) {
                    const float z = p[s];
                    /* the soft-cap's derivative at this score: 1 - (z / cap)^2 */
                    if (j->softcap > 0) fac[s] = z == -INFINITY ? 0 : 1.0f - (z / j->softcap) * (z / j->softcap);
                    const double e = z == -INFINITY ? 0 : exp((double)(z - mx));
                    dp[s] = (float)e;
                    sum += e;
                }
                double dot = 0; /* sum_s P_s dP_s */
                for (int64_t s = 0; s < T; s++) {
                    p[s] = (float)((double)dp[s] / sum);
                    dp[s] = p[s] == 0 ? 0 : DOT(go, j->v + (s * KVH + g) * D);
                    dot += (double)p[s] * dp[s];
                }
                for (int64_t s = 0; s < T; s++) {
                    if (p[s] == 0) continue;
                    float ds = p[s] * (dp[s] - (float)dot);
                    if (j->softcap > 0) ds *= fac[s];
                    ds *= j->scale;
                    AXPY(dqh, j->k + (s * KVH + g) * D, ds);
                    AXPY(j->dk + (s * KVH + g) * D, qh, ds);
                    AXPY(j->dv + (s * KVH + g) * D, go, p[s]);
                }
            }
    }
#undef DOT
#undef AXPY
}

void hc_cpu_attention_backward_fast(hc_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                                    const float *reserve, const float *q, const float *k, const float *v, const int32_t *pos,
                                    int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale, int64_t window,
                                    float softcap, float *scratch) {
    hc_fast_ctx *fx = be->ctx;
    if (!hc_fast_scratch(fx, (size_t)(3 * T + 1))) { /* the reference handles it */
        hc_cpu_attention_backward(be, dq, dk, dv, dout, out, reserve, q, k, v, pos, B, T, H, KVH, D, scale, window, softcap,
                                  scratch);
        return;
    }
    for (int64_t b = 0; b < B; b++) { /* a sequence at a time, threads over its kv heads */
        const int64_t oq = b * T * H * D, ok = b * T * KVH * D;
        att_bwd_job j = {dq + oq, dk + ok, dv + ok, dout + oq, q + oq, k + ok, v + ok, pos, T, H, KVH, D, window, scale,
                         softcap, fx, NULL, NULL};
        hc_cpu_vec_fns(&j.dot, &j.axpy);
        if (hc_pool_size(fx->pool) == 1 || KVH == 1 || T * T * H * D < 65536) att_bwd_part(&j, 0, 1);
        else hc_pool_run(fx->pool, att_bwd_part, &j);
    }
}
