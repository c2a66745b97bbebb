/* Sustained read bandwidth of this machine, all cores: each thread sums its slice of a 1 GiB
 * buffer, best of 5 passes.  usage: bench_membw [MiB] [THREADS] */
#include <stdio.h>
#include <stdlib.h>

#include "base/threadpool.h"
#include "read_loop.h"

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? (size_t)atoi(argv[1]) : 1024;
    int threads = argc > 2 ? atoi(argv[2]) : 0;
    static read_job job;
    job.n = mib * 1024 * 1024 / 4;
    float *buf = aligned_alloc(64, job.n * 4);
    if (!buf) {
        fprintf(stderr, "bench_membw: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    for (size_t i = 0; i < job.n; i++) buf[i] = (float)(i & 1023);
    job.buf = buf;
    hc_pool *pool;
    if (hc_pool_new(threads, &pool)) return 1;
    double best = 1e9;
    for (int r = 0; r < 5; r++) {
        double t0 = read_now();
        hc_pool_run(pool, read_part, &job);
        double dt = read_now() - t0;
        if (dt < best) best = dt;
    }
    printf("membw: %.1f GB/s read (%zu MiB, %d threads, best of 5)\n", (double)(job.n * 4) / best / 1e9, mib,
           hc_pool_size(pool));
    hc_pool_free(pool);
    free(buf);
    return job.sink[0] == 12345.0f;
}
