/* Batch-1 decode's read rate against this machine's read bandwidth measured right before and
 * right after it, round after round, in one process.
 *
 * This VM's bandwidth flips between regimes within seconds (`bench_membw` has read 29 to 60
 * GB/s), so a decode's share of the bandwidth ceiling means something only against readings
 * taken around it, and two builds or layouts compare only inside one process. Each round, for
 * each model given: read a 1 GiB buffer (best of 2 passes), decode TOKENS tokens greedily after
 * the same 8-token prompt, read the buffer again. Every round starts again at position 8, so the
 * KV cache stays small and what is measured is the weights' streaming (`hubcap bench` decodes
 * after a long prompt). A decode whose two readings agree within 10% is "steady", and its share is
 * its read rate over their mean. Right after each decode the same read loop also reads the
 * matrices the decode read (best of 2): the rate of the weights' own pages, and the decode's share
 * of it. In microbenchmarks two 1 GiB buffers of one process read 52 and 62 GB/s in the fast
 * regime, so this checks that the buffer is not a faster place than the weights (in session 19
 * it was not: the two shares agreed within 0.01).
 *
 * usage: bench_decode_regime MODEL [ROUNDS=20] [TOKENS=8] [FORMAT...]
 *   FORMAT: bf16 (the bf16 weights with f32 activations: `--dtype f32`; the default),
 *   q8_0, q4_0 or q4_k; a "/rows" suffix loads the format in the CPU's row-by-row layout
 *   (HUBCAP_CPU_ROW_LAYOUT=1) instead of the interleaved one, to compare the two;
 *   "bf16/bf16-compute" runs the bf16 weights with bf16 compute (activations rounded to bf16,
 *   vdpbf16ps: hubcap's default for a bf16 checkpoint since session 21), repacked into bf16r16 as
 *   weights read into RAM are since session 22 (bf16 too); "bf16/stored" and "bf16/bf16-stored"
 *   the same in the stored layout (--no-repack).
 * prints a line a round, then each format's steady shares split at 40 GB/s. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/quant.h"
#include "base/threadpool.h"
#include "hubcap.h"
#include "model/model.h"
#include "read_loop.h"

#define MAX_FORMATS 8

static read_job job;                                            /* the 1 GiB buffer the bandwidth is read from */
static const int32_t prompt_ids[8] = {1, 2, 3, 4, 5, 6, 7, 8}; /* every round's prompt */

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

/* The matrices a decoded token reads (hc_model_weight_bytes_per_token's), as the read loop's jobs:
 * a read of the weights' own pages, which on this VM can read slower than a buffer allocated
 * later (bench/README, session 19). */
typedef struct {
    read_job *parts; /* one a matrix */
    int n, cap;
} weight_read;

static void add_matrix(weight_read *wr, const hc_mat *w) {
    if (!w->data) return;
    const size_t bytes = w->quant ? hc_quant_row_bytes(w->quant, w->cols) * (size_t)w->rows
                                  : (size_t)(w->rows * w->cols) * hc_dtype_size(w->dtype);
    if (wr->n == wr->cap) {
        wr->cap = wr->cap ? 2 * wr->cap : 64;
        wr->parts = realloc(wr->parts, (size_t)wr->cap * sizeof *wr->parts);
        if (!wr->parts) abort();
    }
    wr->parts[wr->n++] = (read_job){.buf = w->data, .n = bytes / 4};
}

static void weight_read_part(void *ctx, int ith, int nth) {
    weight_read *wr = ctx;
    for (int i = 0; i < wr->n; i++) read_part(&wr->parts[i], ith, nth);
}

/* GB/s of the faster of two reads of every matrix a token reads. */
static double weights_gb_s(hc_pool *pool, weight_read *wr, double bytes) {
    double best = 1e9;
    for (int r = 0; r < 2; r++) {
        const double t0 = read_now();
        hc_pool_run(pool, weight_read_part, wr);
        const double dt = read_now() - t0;
        if (dt < best) best = dt;
    }
    return bytes / best / 1e9;
}

typedef struct {
    const char *name;
    hc_model *m;
    hc_session *s;
    double bpt; /* weight bytes a token */
    int32_t next;
    double share_sum[2], wshare_sum[2];
    int share_n[2];
    weight_read wr;
} contender;

int main(int argc, char **argv) {
    if (argc < 2 || argc > 4 + MAX_FORMATS) {
        fprintf(stderr, "usage: bench_decode_regime MODEL [ROUNDS] [TOKENS] [FORMAT...]  (FORMAT: bf16 q8_0 q4_0 q4_k, /rows)\n");
        return 2;
    }
    const int rounds = argc > 2 ? atoi(argv[2]) : 20, tokens = argc > 3 ? atoi(argv[3]) : 8;
    if (rounds < 1 || tokens < 1) {
        fprintf(stderr, "bench_decode_regime: ROUNDS and TOKENS must be positive\n");
        return 2;
    }
    contender cs[MAX_FORMATS] = {{0}};
    const int n = argc > 4 ? argc - 4 : 1;
    hc_pool *pool;
    if (hc_pool_new(0, &pool)) {
        fprintf(stderr, "bench_decode_regime: %s\n", hc_last_error());
        return 1;
    }
    for (int i = 0; i < n; i++) {
        contender *c = &cs[i];
        c->name = argc > 4 ? argv[4 + i] : "bf16";
        hc_model_params mp = hc_model_default_params();
        mp.use_mmap = false; /* as `hubcap bench`: the weights in RAM */
        char fmt[32];
        snprintf(fmt, sizeof fmt, "%s", c->name);
        char *slash = strchr(fmt, '/');
        const bool rows = slash && !strcmp(slash, "/rows"), stored16 = slash && !strcmp(slash, "/bf16-stored"),
                   stored32 = slash && !strcmp(slash, "/stored"),
                   bf16c = (slash && !strcmp(slash, "/bf16-compute")) || stored16;
        if (slash) *slash = 0;
        const bool bf16 = !strcmp(fmt, "bf16");
        if (!strcmp(fmt, "q8_0")) mp.weights = HC_WEIGHTS_Q8_0;
        else if (!strcmp(fmt, "q4_0")) mp.weights = HC_WEIGHTS_Q4_0;
        else if (!strcmp(fmt, "q4_k")) mp.weights = HC_WEIGHTS_Q4_K;
        if ((!bf16 && !mp.weights) || (slash && !rows && !bf16c && !stored32) || (rows && bf16) ||
            ((bf16c || stored32) && !bf16)) {
            fprintf(stderr, "bench_decode_regime: unknown format '%s' (bf16, q8_0, q4_0 or q4_k, optionally /rows; bf16/stored, bf16/bf16-compute, bf16/bf16-stored)\n", c->name);
            return 2;
        }
        mp.compute_dtype = bf16c ? HC_DTYPE_BF16 : HC_DTYPE_F32;
        mp.repack = !stored16 && !stored32; /* as the CLI loads for inference */
        if (rows) setenv("HUBCAP_CPU_ROW_LAYOUT", "1", 1);
        if (hc_model_load(argv[1], &mp, &c->m) || hc_session_new(c->m, 8 + (int64_t)tokens + 8, &c->s) ||
            hc_session_forward_greedy(c->s, prompt_ids, 8, &c->next)) {
            fprintf(stderr, "bench_decode_regime: %s (%s): %s\n", argv[1], c->name, hc_last_error());
            return 1;
        }
        unsetenv("HUBCAP_CPU_ROW_LAYOUT");
        c->bpt = (double)hc_model_weight_bytes_per_token(c->m);
        add_matrix(&c->wr, &c->m->lm_head);
        for (int64_t l = 0; l < c->m->cfg.n_layers; l++) {
            const hc_layer *L = &c->m->layers[l];
            const hc_mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down};
            for (size_t k = 0; k < sizeof mats / sizeof mats[0]; k++) add_matrix(&c->wr, mats[k]);
        }
    }
    job.n = (size_t)1 << 28; /* 1 GiB */
    float *buf = aligned_alloc(64, job.n * 4);
    if (!buf) {
        fprintf(stderr, "bench_decode_regime: cannot allocate the 1 GiB buffer\n");
        return 1;
    }
    for (size_t i = 0; i < job.n; i++) buf[i] = (float)(i & 1023);
    job.buf = buf;
    int rc = 0;
    for (int r = 0; !rc && r < rounds; r++) {
        double before = read_gb_s(pool);
        for (int i = 0; !rc && i < n; i++) {
            contender *c = &cs[i];
            if (r > 0) {
                hc_session_reset(c->s);
                rc = hc_session_forward_greedy(c->s, prompt_ids, 8, &c->next) != HC_OK;
            }
            const double t0 = read_now();
            for (int k = 0; !rc && k < tokens; k++) rc = hc_session_forward_greedy(c->s, &c->next, 1, &c->next) != HC_OK;
            const double decode = c->bpt * tokens / (read_now() - t0) / 1e9;
            const double own = weights_gb_s(pool, &c->wr, c->bpt);
            const double after = read_gb_s(pool);
            const double mean = 0.5 * (before + after);
            const bool steady = before < 1.1 * after && after < 1.1 * before;
            printf("round %2d %-10s membw %.1f / %.1f GB/s, decode %.1f GB/s (%.1f tok/s), share %.2f; its weights read %.1f GB/s, share %.2f%s\n",
                   r, c->name, before, after, decode, decode * 1e9 / c->bpt, decode / mean, own, decode / own,
                   steady ? "" : " (unsteady)");
            if (steady) {
                c->share_sum[mean >= 40] += decode / mean, c->wshare_sum[mean >= 40] += decode / own;
                c->share_n[mean >= 40]++;
            }
            before = after;
        }
        fflush(stdout);
    }
    if (rc) fprintf(stderr, "bench_decode_regime: %s\n", hc_last_error());
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 2; k++)
            if (cs[i].share_n[k])
                printf("%-10s steady decodes at %s 40 GB/s: %d, mean share %.2f (of a read of its weights: %.2f)\n", cs[i].name,
                       k ? "or above" : "below", cs[i].share_n[k], cs[i].share_sum[k] / cs[i].share_n[k],
                       cs[i].wshare_sum[k] / cs[i].share_n[k]);
    for (int i = 0; i < n; i++) {
        hc_session_free(cs[i].s);
        hc_model_free(cs[i].m);
        free(cs[i].wr.parts);
    }
    hc_pool_free(pool);
    free(buf);
    return rc || job.sink[0] == 12345.0f;
}
