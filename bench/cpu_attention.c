/* Decode attention alone on the CPU: one token's query over the KV cache of 16 layers in turn,
 * the 1B bench model's shapes (32 query heads of 64, 8 KV heads), through the fast backend's
 * attention on all cores. Layers rotate so each call reads its cache from memory, as in a
 * decode; with LAYERS=1 one layer's cache stays in the caches (the kernel's own ceiling).
 *
 * usage: bench_cpu_attention [POS=1816] [f32|f16|bf16] [REPS=30] [LAYERS=16]
 * prints the read loop's rate over the caches (bench_membw's loop, taken between rounds) and
 * the median time a layer, with its quartiles and the cache bytes it read per second. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/cpu/fast.h"
#include "base/file.h"
#include "base/threadpool.h"
#include "read_loop.h"

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    const int n = argc > 1 ? atoi(argv[1]) : 1816;
    const char *dts = argc > 2 ? argv[2] : "f32";
    const int reps = argc > 3 ? atoi(argv[3]) : 30, layers = argc > 4 ? atoi(argv[4]) : 16;
    const hc_dtype dt = !strcmp(dts, "bf16") ? HC_DTYPE_BF16 : !strcmp(dts, "f16") ? HC_DTYPE_F16 : HC_DTYPE_F32;
    const int64_t H = 32, KVH = 8, D = 64, S = n < 4096 ? 4096 : n;
    if (n < 1 || reps < 1 || layers < 1 || (strcmp(dts, "f32") && strcmp(dts, "f16") && strcmp(dts, "bf16"))) {
        fprintf(stderr, "usage: bench_cpu_attention [POS>=1] [f32|f16|bf16] [REPS>=1] [LAYERS>=1]\n");
        return 2;
    }
    hc_backend *be;
    if (hc_backend_cpu_fast_new(0, &be) != HC_OK) {
        fprintf(stderr, "bench_cpu_attention: cannot start the CPU backend\n");
        return 1;
    }
    hc_fast_ctx *fx = be->ctx;
    const size_t es = dt == HC_DTYPE_F32 ? 4 : 2, layer = (size_t)S * KVH * D * es;
    if ((size_t)layers > SIZE_MAX / 2 / layer) {
        fprintf(stderr, "bench_cpu_attention: %d layers of %lld positions do not fit in memory\n", layers, (long long)S);
        return 2;
    }
    uint16_t *kc = hc_alloc_huge((size_t)layers * layer), *vc = hc_alloc_huge((size_t)layers * layer);
    float *q = malloc(sizeof(float) * H * D), *out = malloc(sizeof(float) * H * D);
    float *scratch = malloc(sizeof(float) * (size_t)S);
    double *t = malloc(sizeof(double) * (size_t)reps);
    if (!kc || !vc || !q || !out || !scratch || !t) {
        fprintf(stderr, "bench_cpu_attention: out of memory for %d layers' caches of %lld positions\n", layers,
                (long long)S);
        return 1;
    }
    /* 16-bit patterns that are small finite numbers in f16 and bf16 alike (and tiny f32s) */
    for (size_t i = 0; i < (size_t)layers * layer / 2; i++)
        kc[i] = (uint16_t)(0x3c00 + i % 64), vc[i] = (uint16_t)(0x3c00 + i % 32);
    for (int64_t i = 0; i < H * D; i++) q[i] = 0.01f * (float)(i % 17);
    const int32_t pos = n - 1;
    read_job rj = {.buf = (const float *)kc, .n = (size_t)layers * layer / 4};
    double read_sum = 0;
    for (int r = 0; r < reps; r++) {
        const double t0 = read_now();
        hc_pool_run(fx->pool, read_part, &rj);
        read_sum += (double)layers * (double)layer / 1e9 / (read_now() - t0);
        const double t1 = read_now();
        for (int l = 0; l < 16 * (layers < 16 ? 16 / layers : 1); l++) {
            const size_t off = (size_t)(l % layers) * layer;
            be->attention(be, out, q, (const char *)kc + off, (const char *)vc + off, dt, &pos, 1, H, KVH, D, 0.125f, 0, 0,
                          S, scratch);
        }
        t[r] = (read_now() - t1) / (16 * (layers < 16 ? 16 / layers : 1)) * 1e6;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_double);
    const double bytes = 2.0 * n * KVH * D * (double)es, med = t[reps / 2];
    printf("position %d, %s cache, %d layers: read loop %.1f GB/s (mean); attention %.1f us a layer (quartiles "
           "%.1f-%.1f), %.2f MB of cache, %.1f GB/s\n",
           n, dts, layers, read_sum / reps, med, t[reps / 4], t[3 * reps / 4], bytes / 1e6, bytes / med / 1e3);
    free(t), free(scratch), free(out), free(q), free(kc), free(vc);
    be->destroy(be);
    return 0;
}
