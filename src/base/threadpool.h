/* A persistent thread pool: the caller and n-1 workers run one function together. Workers spin
 * briefly between jobs (a token makes hundreds of small jobs), then sleep. */
#ifndef HC_BASE_THREADPOOL_H
#define HC_BASE_THREADPOOL_H

#include "hubcap.h"

typedef struct hc_pool hc_pool;

/* The cores this process may run on (sched_getaffinity), at least 1. */
int hc_cpu_count(void);

/* n_threads 0: hc_cpu_count(). */
hc_status hc_pool_new(int n_threads, hc_pool **out);
void hc_pool_free(hc_pool *p);
int hc_pool_size(const hc_pool *p);

/* Runs fn(ctx, i, n) for i in [0, n) on the pool's n threads and returns when all are done.
 * The caller runs i = 0. */
void hc_pool_run(hc_pool *p, void (*fn)(void *ctx, int ith, int nth), void *ctx);

#endif
