/* The read loop of bench_membw and bench_decode_regime: every thread sums its slice of a buffer
 * with four AVX2 accumulators, so the loop is bound by the memory and not by the adds. */
#ifndef HC_BENCH_READ_LOOP_H
#define HC_BENCH_READ_LOOP_H

#include <immintrin.h>
#include <stddef.h>
#include <time.h>

typedef struct {
    const float *buf; /* [n] */
    size_t n;
    float sink[256];  /* each thread's sum, so the reads cannot be dropped */
} read_job;

/* hc_pool_run's job: thread ith of nth reads its slice of job->buf. */
__attribute__((target("avx2"))) static void read_part(void *ctx, int ith, int nth) {
    read_job *j = ctx;
    const size_t per = j->n / (size_t)nth, a = per * (size_t)ith, b = ith == nth - 1 ? j->n : a + per;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = a; i + 32 <= b; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(j->buf + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(j->buf + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(j->buf + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(j->buf + i + 24));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    j->sink[ith] += t[0] + t[7];
}

static double read_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
