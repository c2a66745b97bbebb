/* Norms and gated activations over the thread pool, with the SIMD kernels of vector_math.c.
 * A prompt chunk of T rows spends a few percent of its time here on one thread; splitting it
 * keeps the other cores busy. Parts are whole rows (norms) or ranges (glu), so the result is
 * the same whatever the thread count. */
#include <math.h>

#include "backend/cpu/cpu.h"
#include "backend/cpu/fast.h"

/* Below this many elements the pool's wake-up costs more than the work saves. */
#define MIN_PARALLEL_ELEMS 32768
/* Parts start on 64-float (256-byte) boundaries so no two threads write one cache line. */
#define ALIGN_ELEMS 64

typedef struct {
    float *out;
    const float *x;
    const hc_vec *w, *b;
    hc_norm_kind kind;
    float eps;
    int64_t T, C;
} norm_job;

static void norm_part(void *ctx, int ith, int nth) {
    const norm_job *j = ctx;
    const int64_t t0 = j->T * ith / nth, t1 = j->T * (ith + 1) / nth;
    if (t1 > t0)
        hc_vec_norm(j->out + t0 * j->C, j->x + t0 * j->C, j->w, j->b, j->kind, j->eps, t1 - t0, j->C);
}

void hc_cpu_norm_fast(hc_backend *be, float *out, const float *x, const hc_vec *w, const hc_vec *b, hc_norm_kind kind,
                      float eps, int64_t T, int64_t C) {
    hc_fast_ctx *fx = be->ctx;
    if (T < 2 || T * C < MIN_PARALLEL_ELEMS || hc_pool_size(fx->pool) < 2) {
        hc_vec_norm(out, x, w, b, kind, eps, T, C);
        return;
    }
    norm_job j = {out, x, w, b, kind, eps, T, C};
    hc_pool_run(fx->pool, norm_part, &j);
}

typedef struct {
    float *out;
    const float *gate, *up;
    hc_activation act;
    int64_t n;
} glu_job;

static void glu_part(void *ctx, int ith, int nth) {
    const glu_job *j = ctx;
    const int64_t blocks = (j->n + ALIGN_ELEMS - 1) / ALIGN_ELEMS;
    int64_t i0 = blocks * ith / nth * ALIGN_ELEMS, i1 = blocks * (ith + 1) / nth * ALIGN_ELEMS;
    if (i1 > j->n) i1 = j->n;
    if (i1 > i0) hc_vec_glu(j->out + i0, j->gate + i0, j->up + i0, j->act, i1 - i0);
}

void hc_cpu_glu_fast(hc_backend *be, float *out, const float *gate, const float *up, hc_activation act, int64_t n) {
    hc_fast_ctx *fx = be->ctx;
    if (n < MIN_PARALLEL_ELEMS || hc_pool_size(fx->pool) < 2) {
        hc_vec_glu(out, gate, up, act, n);
        return;
    }
    glu_job j = {out, gate, up, act, n};
    hc_pool_run(fx->pool, glu_part, &j);
}

/* rope on the pool: tokens split into contiguous ranges, each rotated exactly as the reference
 * rotates it (the same bits whatever the thread count), its angles once for all heads and the
 * rotation in SIMD. */
#define ROPE_MAX_HALF 512 /* rotary pairs a token's angle tables hold (heads up to 1024 wide) */

typedef struct {
    float *x;
    const int32_t *pos;
    const float *inv_freq;
    float attn_factor;
    int64_t T, nh, D, R;
} rope_job;

static void rope_part(void *ctx, int ith, int nth) {
    const rope_job *j = ctx;
    const int64_t per = (j->T + nth - 1) / nth, t0 = per * ith, t1 = t0 + per < j->T ? t0 + per : j->T;
    const int64_t half = j->R / 2;
    if (half > ROPE_MAX_HALF) { /* wider than any head the fast kernels take */
        if (t0 < t1)
            hc_cpu_rope(NULL, j->x + t0 * j->nh * j->D, j->pos + t0, j->inv_freq, j->attn_factor, t1 - t0, j->nh, j->D, j->R);
        return;
    }
    float c[ROPE_MAX_HALF], s[ROPE_MAX_HALF]; /* [half] */
    for (int64_t t = t0; t < t1; t++) {
        /* the reference's angles: f32 position x f32 frequency, cos and sin in double, once
         * per token for all its heads */
        for (int64_t i = 0; i < half; i++) {
            const float angle = (float)j->pos[t] * j->inv_freq[i];
            c[i] = (float)cos((double)angle) * j->attn_factor;
            s[i] = (float)sin((double)angle) * j->attn_factor;
        }
        hc_vec_rope_token(j->x + t * j->nh * j->D, c, s, j->nh, j->D, half);
    }
}

void hc_cpu_rope_fast(hc_backend *be, float *x, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T,
                      int64_t nh, int64_t D, int64_t R) {
    hc_fast_ctx *fx = be->ctx;
    rope_job j = {x, pos, inv_freq, attn_factor, T, nh, D, R};
    /* a few tokens (decode) are not worth waking threads for */
    if (!fx->pool || T * nh * R < 16384) rope_part(&j, 0, 1);
    else hc_pool_run(fx->pool, rope_part, &j);
}
