/* A prompt's attention on the GPU, alone: the flash-attention kernel the decoder runs for a
 * prompt of T tokens from position 0 (bf16 compute, bf16 KV cache), timed over repeated calls.
 * FLOPs counted are the causal ones: 4 * D * H * (keys each row sees), summed over the rows
 * (QK^T and PV, two FLOPs a multiply-add); the masked half of a square is not counted.
 * usage: bench_cuda_attention [T] [reps]   (shapes: Llama-3.2-1B's 32 x 64 with 8 kv heads, and
 * Llama-3.1-8B's 32 x 128 with 8 kv heads) */
#include "backend/cuda/cuda.h"
#include "base/half.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 42;
static float frand(void) { /* uniform in [-1, 1) */
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng >> 40) & 0xffffff) / (float)(1 << 23) - 1.0f;
}

/* Median seconds a call over `rounds` rounds of `reps` calls each. */
static int run_shape(hc_backend *be, int64_t T, int64_t H, int64_t KVH, int64_t D, int reps) {
    const int64_t nq = T * H * D, nkv = T * KVH * D;
    float *q = malloc(sizeof(float) * (size_t)nq);
    uint16_t *kv = malloc(sizeof(uint16_t) * (size_t)nkv);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)T);
    if (!q || !kv || !pos) {
        fprintf(stderr, "bench_cuda_attention: out of memory for T = %lld\n", (long long)T);
        free(q), free(kv), free(pos);
        return 1;
    }
    for (int64_t i = 0; i < nq; i++) q[i] = frand();
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)t;
    float *dq = be->alloc(be, sizeof(float) * (size_t)nq), *dout = be->alloc(be, sizeof(float) * (size_t)nq);
    void *dk = be->alloc(be, 2 * (size_t)nkv), *dv = be->alloc(be, 2 * (size_t)nkv);
    int32_t *dpos = be->alloc(be, sizeof(int32_t) * (size_t)T);
    float *dscr = be->alloc(be, sizeof(float) * (size_t)T);
    if (!dq || !dout || !dk || !dv || !dpos || !dscr) {
        fprintf(stderr, "bench_cuda_attention: out of GPU memory for T = %lld\n", (long long)T);
        be->free(be, dq), be->free(be, dout), be->free(be, dk), be->free(be, dv), be->free(be, dpos), be->free(be, dscr);
        free(q), free(kv), free(pos);
        return 1;
    }
    be->upload(be, dq, q, sizeof(float) * (size_t)nq);
    for (int64_t i = 0; i < nkv; i++) kv[i] = hc_f32_to_bf16(frand());
    be->upload(be, dk, kv, 2 * (size_t)nkv);
    for (int64_t i = 0; i < nkv; i++) kv[i] = hc_f32_to_bf16(frand());
    be->upload(be, dv, kv, 2 * (size_t)nkv);
    be->upload(be, dpos, pos, sizeof(int32_t) * (size_t)T);
    const float scale = 1.0f / sqrtf((float)D);
    float probe;
    enum { ROUNDS = 7 };
    double best[ROUNDS];
    for (int r = -1; r < ROUNDS; r++) { /* round -1: warm-up */
        const double t0 = now_s();
        for (int i = 0; i < reps; i++)
            be->attention(be, dout, dq, dk, dv, HC_DTYPE_BF16, dpos, T, H, KVH, D, scale, 0, 0, T, dscr);
        be->download(be, &probe, dout, sizeof probe); /* waits for the stream */
        if (r >= 0) best[r] = (now_s() - t0) / reps;
    }
    for (int i = 1; i < ROUNDS; i++) /* insertion sort for the median */
        for (int j = i; j > 0 && best[j] < best[j - 1]; j--) {
            const double x = best[j];
            best[j] = best[j - 1], best[j - 1] = x;
        }
    const double sec = best[ROUNDS / 2], keys = (double)T * (double)(T + 1) / 2.0;
    const double flops = 4.0 * (double)D * (double)H * keys;
    printf("{\"T\":%lld,\"H\":%lld,\"KVH\":%lld,\"D\":%lld,\"us\":%.1f,\"tflop_s\":%.1f,\"finite\":%s}\n", (long long)T,
           (long long)H, (long long)KVH, (long long)D, sec * 1e6, flops / sec * 1e-12, isfinite(probe) ? "true" : "false");
    be->free(be, dq), be->free(be, dout), be->free(be, dk), be->free(be, dv), be->free(be, dpos), be->free(be, dscr);
    free(q), free(kv), free(pos);
    return 0;
}

int main(int argc, char **argv) {
    const int64_t T = argc > 1 ? atoll(argv[1]) : 2048;
    const int reps = argc > 2 ? atoi(argv[2]) : 20;
    if (T < 1 || reps < 1) {
        fprintf(stderr, "usage: bench_cuda_attention [T] [reps]\n");
        return 2;
    }
    hc_backend *be = NULL;
    if (hc_backend_cuda_new(0, HC_DTYPE_BF16, &be) != HC_OK) {
        fprintf(stderr, "bench_cuda_attention: %s\n", hc_last_error());
        return 1;
    }
    int rc = run_shape(be, T, 32, 8, 64, reps);
    if (!rc) rc = run_shape(be, T, 32, 8, 128, reps);
    be->destroy(be);
    return rc;
}
