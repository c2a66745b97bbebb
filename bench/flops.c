/* Peak f32 FMA rate of this machine, all cores, with the widest vectors it has (AVX-512 or
 * AVX2): independent FMA chains, no memory traffic. Where the CPU has AVX512_BF16, also the
 * peak of vdpbf16ps (32 bf16 multiply-adds per instruction), the ceiling of --compute-dtype
 * bf16 prompts.  usage: bench_flops [THREADS] */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "base/threadpool.h"

#define ITERS 20000000L
static float out[256];

__attribute__((target("avx512f"))) static void fma512(void *ctx, int ith, int nth) {
    (void)ctx;
    (void)nth;
    __m512 a[12], x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(0.9999999f);
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < ITERS; it++)
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], x, y);
    float s = 0;
    for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(a[i]);
    out[ith] = s;
}

__attribute__((target("avx512f,avx512bf16,avx512bw"))) static void dpbf16(void *ctx, int ith, int nth) {
    (void)ctx;
    (void)nth;
    __m512 a[12];
    const __m512bh x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1.0f), _mm512_set1_ps(0.5f));
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < ITERS; it++)
        for (int i = 0; i < 12; i++) a[i] = _mm512_dpbf16_ps(a[i], x, x);
    float s = 0;
    for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(a[i]);
    out[ith] = s;
}

__attribute__((target("avx2,fma"))) static void fma256(void *ctx, int ith, int nth) {
    (void)ctx;
    (void)nth;
    __m256 a[12], x = _mm256_set1_ps(1.0000001f), y = _mm256_set1_ps(0.9999999f);
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < ITERS; it++)
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], x, y);
    float t[8], s = 0;
    for (int i = 0; i < 12; i++) {
        _mm256_storeu_ps(t, a[i]);
        s += t[0];
    }
    out[ith] = s;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    hc_pool *pool;
    if (hc_pool_new(argc > 1 ? atoi(argv[1]) : 0, &pool)) return 1;
    __builtin_cpu_init();
    const int w = __builtin_cpu_supports("avx512f") ? 16 : 8;
    double t0 = now();
    hc_pool_run(pool, w == 16 ? fma512 : fma256, NULL);
    double dt = now() - t0;
    double flops = 2.0 * w * 12 * (double)ITERS * hc_pool_size(pool);
    printf("flops: %.1f GFLOP/s f32 FMA peak (%s, %d threads)\n", flops / dt / 1e9, w == 16 ? "avx512" : "avx2",
           hc_pool_size(pool));
    if (__builtin_cpu_supports("avx512bf16")) {
        t0 = now();
        hc_pool_run(pool, dpbf16, NULL);
        dt = now() - t0;
        flops = 2.0 * 32 * 12 * (double)ITERS * hc_pool_size(pool);
        printf("flops: %.1f GFLOP/s bf16 dot peak (vdpbf16ps, %d threads)\n", flops / dt / 1e9, hc_pool_size(pool));
    }
    hc_pool_free(pool);
    return out[0] == 12345.0f;
}
