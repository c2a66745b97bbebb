#define _GNU_SOURCE
#include "base/threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "base/status.h"

struct hc_pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    atomic_uint generation;   /* bumped for each job */
    atomic_int pending;       /* workers still running the job */
    atomic_int sleepers;      /* workers waiting on `wake` (hc_pool_run signals only then) */
    atomic_bool quit;
    int spin_limit;           /* a worker's spins before it sleeps (0 with more threads than cores) */
    int pause_limit;          /* the caller's pauses before it yields (likewise) */
    void (*fn)(void *, int, int);
    void *ctx;
};

int hc_cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    return 1;
}

typedef struct {
    hc_pool *p;
    int ith;
} worker_arg;

static inline void spin_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *worker(void *arg) {
    worker_arg *wa = arg;
    hc_pool *p = wa->p;
    const int ith = wa->ith;
    free(wa);
    unsigned seen = 0;
    for (;;) {
        /* Spin for the next job, then sleep until woken. A decode token runs a hundred matmuls
         * with a few small ops between them; 20000 spins (some 10 us here) let the worker fall
         * asleep between them, and waking it cost 4-10 us a matmul, 4% of a 1B q4_0 decode.
         * 2 million spins (about a millisecond) keep it awake through a token. With more threads
         * than cores nobody spins: a spinning thread holds the core another needs (a 1B q4_0
         * decode on 2 cores with 4 threads: 38 -> 10 tok/s). */
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen && !atomic_load(&p->quit)) {
            if (++spins < p->spin_limit) continue;
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while ((g = atomic_load(&p->generation)) == seen && !atomic_load(&p->quit)) pthread_cond_wait(&p->wake, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
            break;
        }
        if (atomic_load(&p->quit)) return NULL;
        seen = g;
        p->fn(p->ctx, ith, p->n);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
    }
}

hc_status hc_pool_new(int n, hc_pool **out) {
    *out = NULL;
    if (n <= 0) n = hc_cpu_count();
    hc_pool *p = calloc(1, sizeof *p);
    if (!p) return hc_fail(HC_ERR_NOMEM, "out of memory");
    p->n = n;
    const bool oversubscribed = n > hc_cpu_count();
    p->spin_limit = oversubscribed ? 0 : 2000000;
    p->pause_limit = oversubscribed ? 0 : 4096;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->threads = calloc((size_t)n, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    for (int i = 1; i < n; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa || pthread_create(&p->threads[i], NULL, worker, (wa->p = p, wa->ith = i, wa)) != 0) {
            free(wa);
            p->n = i;
            hc_pool_free(p);
            return hc_fail(HC_ERR_NOMEM, "cannot start thread %d", i);
        }
    }
    *out = p;
    return HC_OK;
}

void hc_pool_free(hc_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->quit, true);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    free(p->threads);
    free(p);
}

int hc_pool_size(const hc_pool *p) { return p ? p->n : 1; }

void hc_pool_run(hc_pool *p, void (*fn)(void *ctx, int ith, int nth), void *ctx) {
    if (!p || p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->pending, p->n - 1);
    /* Workers spinning see the new generation by themselves; the mutex and the broadcast are
     * for sleeping ones only. A worker counts itself a sleeper before it checks the generation
     * under the mutex, and both sides' atomics are sequentially consistent, so either it sees
     * this job or this sees it and wakes it. */
    atomic_fetch_add(&p->generation, 1);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
    fn(ctx, 0, p->n);
    /* Wait for the workers spinning (sched_yield is a system call each time round, and the
     * last one's end was seen up to a call late). A matmul's threads finish within a chunk's
     * few microseconds of each other; past some 0.1 ms, or at once with more threads than
     * cores, yield. */
    for (int spins = 0; atomic_load_explicit(&p->pending, memory_order_acquire) > 0; spins++) {
        if (spins < p->pause_limit) spin_pause();
        else sched_yield();
    }
}
