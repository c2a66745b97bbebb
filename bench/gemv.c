/* Batch-1 decode's matrix-vector product alone, per weight format, in cache and from memory.
 *
 * A decode token is bound by memory only if its kernels can eat weights faster than the memory
 * brings them. This measures both sides, on all cores through the fast CPU backend's matmul
 * (T = 1, the decode path):
 *   cache   a [N, K] matrix small enough to stay in the cores' L2 (1 MiB, half of it a core), multiplied
 *           over and over: the kernel's own ceiling, in GB/s of weight bytes;
 *   memory  a matrix of about 1 GiB, each pass reading every weight from RAM;
 *   read    the plain read loop of bench_membw over a 1 GiB buffer, right before the memory run,
 *           so the share (memory / read) compares readings taken together on this noisy VM.
 *
 * usage: bench_gemv [ROUNDS=3] [K=2048]
 * prints one line per format and round. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/cpu/quant.h"
#include "base/threadpool.h"
#include "read_loop.h"

typedef struct {
    const char *name;
    hc_dtype dtype;
    int quant;
} format;

static uint16_t bf16_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

/* A [N, K] matrix of format f (in the layout quantize on load picks) with pseudo-random values
 * in [-1, 1). */
static void *make_matrix(const format *f, int64_t N, int64_t K, size_t *row_bytes) {
    *row_bytes = f->quant ? hc_quant_row_bytes(f->quant, K) : (size_t)K * 2;
    uint8_t *m = aligned_alloc(64, (*row_bytes * (size_t)N + 63) / 64 * 64);
    float *row = malloc((size_t)K * sizeof(float));
    if (!m || !row) {
        free(m);
        free(row);
        return NULL;
    }
    uint32_t seed = 12345;
    for (int64_t n = 0; n < N; n++) {
        for (int64_t k = 0; k < K; k++) {
            seed = seed * 1664525u + 1013904223u;
            row[k] = (float)(seed >> 8) / (float)(1u << 23) - 1.0f;
        }
        uint8_t *dst = m + (size_t)n * *row_bytes;
        if (f->quant) hc_quantize_mat_row(f->quant, m, N, K, n, row);
        else
            for (int64_t k = 0; k < K; k++) {
                const uint16_t b = bf16_of(row[k]);
                memcpy(dst + 2 * k, &b, 2);
            }
    }
    free(row);
    return m;
}

/* GB/s of weight bytes: the best of `reps` timed batches of `calls` products each. */
static double gemv_gb_s(hc_backend *be, float *out, const float *x, const hc_mat *w, size_t bytes, int calls, int reps) {
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        const double t0 = read_now();
        for (int c = 0; c < calls; c++) be->matmul(be, out, x, w, NULL, 1);
        const double dt = (read_now() - t0) / calls;
        if (dt < best) best = dt;
    }
    return (double)bytes / best / 1e9;
}

int main(int argc, char **argv) {
    const int rounds = argc > 1 ? atoi(argv[1]) : 3;
    const int64_t K = argc > 2 ? atoll(argv[2]) : 2048;
    if (argc > 3 || rounds < 1 || K < 256 || K % 256) {
        fprintf(stderr, "usage: bench_gemv [ROUNDS] [K, a multiple of 256]\n");
        return 2;
    }
    hc_backend *be;
    hc_pool *pool;
    if (hc_backend_cpu_fast_new(0, &be) || hc_pool_new(0, &pool)) {
        fprintf(stderr, "bench_gemv: cannot start the CPU backend\n");
        return 1;
    }
    read_job job = {.n = (size_t)1 << 28};
    float *buf = aligned_alloc(64, job.n * 4);
    float *x = malloc((size_t)K * sizeof(float)), *out = malloc(((size_t)1 << 20) * sizeof(float));
    if (!buf || !x || !out) {
        fprintf(stderr, "bench_gemv: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < job.n; i++) buf[i] = (float)(i & 1023);
    job.buf = buf;
    for (int64_t k = 0; k < K; k++) x[k] = (float)((k * 37) % 101) / 50.0f - 1.0f;

    const format formats[] = {{"bf16", HC_DTYPE_BF16, 0},
                              {"q8_0", HC_DTYPE_F32, be->quant_layout(be, HC_QUANT_Q8_0)},
                              {"q4_0", HC_DTYPE_F32, be->quant_layout(be, HC_QUANT_Q4_0)},
                              {"q4_k", HC_DTYPE_F32, be->quant_layout(be, HC_QUANT_Q4_K)}};
    printf("K %lld; GB/s of weight bytes, all cores\n", (long long)K);
    printf("%-5s %5s %9s %9s %9s %6s\n", "fmt", "round", "cache", "read", "memory", "share");
    for (size_t fi = 0; fi < sizeof formats / sizeof formats[0]; fi++) {
        const format *f = &formats[fi];
        size_t row_bytes;
        const int64_t n_small = (int64_t)(((size_t)1024 << 10) / (f->quant ? hc_quant_row_bytes(f->quant, K) : (size_t)K * 2));
        const int64_t n_big = (int64_t)(((size_t)1 << 30) / (f->quant ? hc_quant_row_bytes(f->quant, K) : (size_t)K * 2));
        void *small = make_matrix(f, n_small, K, &row_bytes), *big = make_matrix(f, n_big, K, &row_bytes);
        if (!small || !big) {
            fprintf(stderr, "bench_gemv: out of memory for the %s matrices\n", f->name);
            return 1;
        }
        hc_mat ws = {small, f->dtype, n_small, K, K, false, f->quant}, wb = ws;
        wb.data = big;
        wb.rows = n_big;
        for (int r = 0; r < rounds; r++) {
            const double cache = gemv_gb_s(be, out, x, &ws, row_bytes * (size_t)n_small, 200, 5);
            double best = 1e9;
            for (int p = 0; p < 2; p++) {
                const double t0 = read_now();
                hc_pool_run(pool, read_part, &job);
                if (read_now() - t0 < best) best = read_now() - t0;
            }
            const double read = (double)(job.n * 4) / best / 1e9;
            const double mem = gemv_gb_s(be, out, x, &wb, row_bytes * (size_t)n_big, 1, 2);
            printf("%-5s %5d %9.1f %9.1f %9.1f %6.2f\n", f->name, r, cache, read, mem, mem / read);
            fflush(stdout);
        }
        free(small);
        free(big);
    }
    free(buf);
    free(x);
    free(out);
    hc_pool_free(pool);
    be->destroy(be);
    return 0;
}
