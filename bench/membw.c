/* Sustained read bandwidth of this machine, all cores: each thread sums its slice of a 1 GiB
 * buffer, best of 5 passes.  usage: bench_membw [MiB] [THREADS] */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/threadpool.h"

static float *buf;
static size_t n_floats;
static float sink[256];

__attribute__((target("avx2"))) static void part(void *ctx, int ith, int nth) {
    (void)ctx;
    size_t per = n_floats / (size_t)nth, a = per * (size_t)ith, b = ith == nth - 1 ? n_floats : a + per;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = a; i + 32 <= b; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(buf + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(buf + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(buf + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(buf + i + 24));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    sink[ith] = t[0] + t[7];
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? (size_t)atoi(argv[1]) : 1024;
    int threads = argc > 2 ? atoi(argv[2]) : 0;
    n_floats = mib * 1024 * 1024 / 4;
    buf = aligned_alloc(64, n_floats * 4);
    for (size_t i = 0; i < n_floats; i++) buf[i] = (float)(i & 1023);
    hc_pool *pool;
    if (hc_pool_new(threads, &pool)) return 1;
    double best = 1e9;
    for (int r = 0; r < 5; r++) {
        double t0 = now();
        hc_pool_run(pool, part, NULL);
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    printf("membw: %.1f GB/s read (%zu MiB, %d threads, best of 5)\n", (double)(n_floats * 4) / best / 1e9, mib,
           hc_pool_size(pool));
    hc_pool_free(pool);
    free(buf);
    return sink[0] == 12345.0f;
}
