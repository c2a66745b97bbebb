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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/threadpool.h"
#include "hubcap.h"
#include "read_loop.h"

static read_job job; /* the 1 GiB buffer the bandwidth is read from */

/* GB/s of the faster of two passes over the buffer. */
static double read_gb_s(hc_pool *pool) {
    double best = 1e9;
    for (int r = 0; r < 2; r++) {
        const double t0 = read_now();
        hc_pool_run(pool, read_part, &job);
        const double dt = read_now() - t0;
        if (dt < best) best = dt;
    }
    return (double)(job.n * 4) / best / 1e9;
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
    job.n = (size_t)1 << 28; /* 1 GiB */
    float *buf = aligned_alloc(64, job.n * 4);
    if (!buf) {
        fprintf(stderr, "bench_decode_regime: cannot allocate the 1 GiB buffer\n");
        return 1;
    }
    for (size_t i = 0; i < job.n; i++) buf[i] = (float)(i & 1023);
    job.buf = buf;
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
        const double t0 = read_now();
        for (int i = 0; !rc && i < tokens; i++) rc = hc_session_forward_greedy(s, &next, 1, &next) != HC_OK;
        const double decode = bpt * tokens / (read_now() - t0) / 1e9;
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
    return rc || job.sink[0] == 12345.0f;
}
