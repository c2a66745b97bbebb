/* Batch-1 decode's read rate against this machine's read bandwidth measured right before and
 * right after it, round after round, in one process.
 *
 * This VM's bandwidth flips between regimes within seconds (`bench_membw` has read 29 to 60
 * GB/s), so a decode's share of the bandwidth ceiling means something only against readings
 * taken around it. Each round: read a 1 GiB buffer (best of 2 passes), decode TOKENS tokens
 * greedily, read the buffer again. A round whose two readings agree within 10% is "steady", and
 * its share is the decode's read rate over their mean.
 *
 * usage: bench_decode_regime MODEL [ROUNDS=20] [TOKENS=8] [q8_0|q4_0|q4_k]
 * prints a line a round, then the steady rounds' shares split at 40 GB/s. */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/threadpool.h"
#include "hubcap.h"

static float *buf;      /* [n_floats] the buffer the bandwidth is read from */
static size_t n_floats;
static float sink[256];

__attribute__((target("avx2"))) static void read_part(void *ctx, int ith, int nth) {
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
    sink[ith] += t[0] + t[7];
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* GB/s of the faster of two passes over the buffer. */
static double read_gb_s(hc_pool *pool) {
    double best = 1e9;
    for (int r = 0; r < 2; r++) {
        const double t0 = now();
        hc_pool_run(pool, read_part, NULL);
        const double dt = now() - t0;
        if (dt < best) best = dt;
    }
    return (double)(n_floats * 4) / best / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 5) {
        fprintf(stderr, "usage: bench_decode_regime MODEL [ROUNDS] [TOKENS] [q8_0|q4_0|q4_k]\n");
        return 2;
    }
    const int rounds = argc > 2 ? atoi(argv[2]) : 20, tokens = argc > 3 ? atoi(argv[3]) : 8;
    hc_model_params mp = hc_model_default_params();
    mp.use_mmap = false; /* as `hubcap bench`: the weights in RAM */
    if (argc > 4) {
        if (!strcmp(argv[4], "q8_0")) mp.weights = HC_WEIGHTS_Q8_0;
        else if (!strcmp(argv[4], "q4_0")) mp.weights = HC_WEIGHTS_Q4_0;
        else if (!strcmp(argv[4], "q4_k")) mp.weights = HC_WEIGHTS_Q4_K;
        else {
            fprintf(stderr, "bench_decode_regime: unknown format '%s' (q8_0, q4_0 or q4_k)\n", argv[4]);
            return 2;
        }
    }
    if (rounds < 1 || tokens < 1) {
        fprintf(stderr, "bench_decode_regime: ROUNDS and TOKENS must be positive\n");
        return 2;
    }
    n_floats = (size_t)1 << 28; /* 1 GiB */
    buf = aligned_alloc(64, n_floats * 4);
    if (!buf) {
        fprintf(stderr, "bench_decode_regime: cannot allocate the 1 GiB buffer\n");
        return 1;
    }
    for (size_t i = 0; i < n_floats; i++) buf[i] = (float)(i & 1023);
    hc_pool *pool;
    hc_model *m = NULL;
    hc_session *s = NULL;
    if (hc_pool_new(0, &pool) || hc_model_load(argv[1], &mp, &m) ||
        hc_session_new(m, 8 + (int64_t)rounds * tokens + 8, &s)) {
        fprintf(stderr, "bench_decode_regime: %s: %s\n", argv[1], hc_last_error());
        return 1;
    }
    const double bpt = (double)hc_model_weight_bytes_per_token(m);
    int32_t ids[8] = {1, 2, 3, 4, 5, 6, 7, 8}, next = 0;
    int rc = hc_session_forward_greedy(s, ids, 8, &next) != HC_OK;
    double share_sum[2] = {0, 0};
    int share_n[2] = {0, 0};
    for (int r = 0; !rc && r < rounds; r++) {
        const double before = read_gb_s(pool);
        const double t0 = now();
        for (int i = 0; !rc && i < tokens; i++) rc = hc_session_forward_greedy(s, &next, 1, &next) != HC_OK;
        const double decode = bpt * tokens / (now() - t0) / 1e9;
        const double after = read_gb_s(pool);
        const double mean = 0.5 * (before + after);
        const bool steady = before < 1.1 * after && after < 1.1 * before;
        printf("round %2d: membw %.1f / %.1f GB/s, decode %.1f GB/s (%.1f tok/s), share %.2f%s\n", r, before, after, decode,
               decode * 1e9 / bpt, decode / mean, steady ? "" : " (unsteady)");
        if (steady) share_sum[mean >= 40] += decode / mean, share_n[mean >= 40]++;
    }
    if (rc) fprintf(stderr, "bench_decode_regime: %s\n", hc_last_error());
    for (int k = 0; k < 2; k++)
        if (share_n[k])
            printf("steady rounds at %s 40 GB/s: %d, mean share %.2f\n", k ? "or above" : "below", share_n[k],
                   share_sum[k] / share_n[k]);
    hc_session_free(s);
    hc_model_free(m);
    hc_pool_free(pool);
    free(buf);
    return rc || sink[0] == 12345.0f;
}
