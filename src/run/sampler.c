/* The sampler chain: penalties, temperature, top-k, top-p, min-p, then a seeded draw.
 * Candidates are narrowed with partial selection, never a full sort of the vocabulary. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "model/model.h"
#include "run/session.h"

typedef struct {
    float logit;
    float p; /* exp(logit - max), unnormalised */
    int32_t id;
} cand;

struct hc_sampler {
    hc_sampler_params p;
    int64_t V;
    uint64_t rng[4];
    cand *c;          /* [V] candidates */
    int32_t *counts;  /* [V] occurrences in the penalty window (zero between calls) */
    int32_t *touched; /* [V] ids whose count is non-zero */
};

hc_sampler_params hc_sampler_default_params(void) {
    hc_sampler_params p = {.temperature = 0, .top_k = 0, .top_p = 1, .min_p = 0, .repetition_penalty = 1,
                           .frequency_penalty = 0, .presence_penalty = 0, .penalty_last_n = -1, .seed = 0};
    return p;
}

hc_sampler_params hc_model_sampler_params(const hc_model *m) {
    const hc_model_config *c = &m->cfg;
    hc_sampler_params p = hc_sampler_default_params();
    if (c->gen_repetition_penalty > 0) p.repetition_penalty = (float)c->gen_repetition_penalty;
    if (c->gen_do_sample == 1) {
        /* transformers' defaults when sampling: temperature 1, top_k 50, top_p 1. */
        p.temperature = c->gen_temperature >= 0 ? (float)c->gen_temperature : 1.0f;
        p.top_k = c->gen_top_k >= 0 ? (int32_t)c->gen_top_k : 50;
        p.top_p = c->gen_top_p > 0 ? (float)c->gen_top_p : 1.0f;
    }
    return p;
}

hc_status hc_sampler_params_check(const hc_sampler_params *p) {
    if (!(p->temperature >= 0) || !isfinite(p->temperature))
        return hc_fail(HC_ERR_INVALID_ARG, "temperature must be >= 0 (got %g)", p->temperature);
    if (p->top_k < 0) return hc_fail(HC_ERR_INVALID_ARG, "top-k must be >= 0 (got %d)", p->top_k);
    if (!(p->top_p > 0 && p->top_p <= 1)) return hc_fail(HC_ERR_INVALID_ARG, "top-p must be in (0, 1] (got %g)", p->top_p);
    if (!(p->min_p >= 0 && p->min_p < 1)) return hc_fail(HC_ERR_INVALID_ARG, "min-p must be in [0, 1) (got %g)", p->min_p);
    if (!(p->repetition_penalty > 0) || !isfinite(p->repetition_penalty))
        return hc_fail(HC_ERR_INVALID_ARG, "repetition penalty must be > 0 (got %g)", p->repetition_penalty);
    if (!isfinite(p->frequency_penalty) || !isfinite(p->presence_penalty))
        return hc_fail(HC_ERR_INVALID_ARG, "penalties must be finite numbers");
    return HC_OK;
}

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* xoshiro256**: a uniform double in [0, 1). */
static double uniform(uint64_t s[4]) {
    const uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return (double)(r >> 11) * (1.0 / 9007199254740992.0);
}

hc_status hc_sampler_new(const hc_sampler_params *p, int64_t V, hc_sampler **out) {
    *out = NULL;
    hc_status st = hc_sampler_params_check(p);
    if (st) return st;
    hc_sampler *s = calloc(1, sizeof *s);
    if (!s) return hc_fail(HC_ERR_NOMEM, "out of memory");
    s->p = *p;
    s->V = V;
    s->c = malloc((size_t)V * sizeof *s->c);
    s->counts = calloc((size_t)V, sizeof *s->counts);
    s->touched = malloc((size_t)V * sizeof *s->touched);
    if (!s->c || !s->counts || !s->touched) {
        hc_sampler_free(s);
        return hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix(&x);
    *out = s;
    return HC_OK;
}

void hc_sampler_free(hc_sampler *s) {
    if (!s) return;
    free(s->c);
    free(s->counts);
    free(s->touched);
    free(s);
}

static bool better(cand a, cand b) { return a.logit != b.logit ? a.logit > b.logit : a.id < b.id; }

static int cmp_cand(const void *a, const void *b) {
    cand x = *(const cand *)a, y = *(const cand *)b;
    return better(x, y) ? -1 : better(y, x) ? 1 : 0;
}

/* Reorders c[lo, hi) so that c[lo, k) holds its k - lo best candidates (quickselect). */
static void select_top(cand *c, int64_t lo, int64_t hi, int64_t k) {
    while (hi - lo > 1) {
        cand pivot = c[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi - 1;
        while (i <= j) {
            while (better(c[i], pivot)) i++;
            while (better(pivot, c[j])) j--;
            if (i <= j) {
                cand t = c[i];
                c[i] = c[j];
                c[j] = t;
                i++;
                j--;
            }
        }
        if (k <= j) hi = j + 1;
        else if (k >= i) lo = i;
        else return;
    }
}

static void apply_penalties(hc_sampler *s, float *logits, const int32_t *hist, int64_t n) {
    const hc_sampler_params *p = &s->p;
    if (p->repetition_penalty == 1 && p->frequency_penalty == 0 && p->presence_penalty == 0) return;
    int64_t from = (p->penalty_last_n >= 0 && n > p->penalty_last_n) ? n - p->penalty_last_n : 0;
    int64_t nt = 0;
    for (int64_t i = from; i < n; i++) {
        int32_t id = hist[i];
        if (id < 0 || id >= s->V) continue;
        if (s->counts[id]++ == 0) s->touched[nt++] = id;
    }
    for (int64_t i = 0; i < nt; i++) {
        int32_t id = s->touched[i];
        float l = logits[id];
        if (p->repetition_penalty != 1) l = l < 0 ? l * p->repetition_penalty : l / p->repetition_penalty;
        l -= (float)s->counts[id] * p->frequency_penalty + p->presence_penalty;
        logits[id] = l;
        s->counts[id] = 0;
    }
}

/* The k best of V logits with a min-heap of k: one comparison for most tokens. */
static int64_t top_k_heap(cand *heap, const float *logits, int64_t V, int64_t k, float inv_t) {
    int64_t n = 0;
    for (int64_t i = 0; i < V; i++) {
        cand x = {logits[i] * inv_t, 0, (int32_t)i};
        if (n < k) {
            int64_t j = n++;
            heap[j] = x;
            while (j > 0 && better(heap[(j - 1) / 2], heap[j])) { /* sift up: the worst at the root */
                cand t = heap[j];
                heap[j] = heap[(j - 1) / 2];
                heap[(j - 1) / 2] = t;
                j = (j - 1) / 2;
            }
        } else if (better(x, heap[0])) {
            heap[0] = x;
            int64_t j = 0;
            for (;;) {
                int64_t l = 2 * j + 1, r = l + 1, w = j;
                if (l < n && better(heap[w], heap[l])) w = l;
                if (r < n && better(heap[w], heap[r])) w = r;
                if (w == j) break;
                cand t = heap[j];
                heap[j] = heap[w];
                heap[w] = t;
                j = w;
            }
        }
    }
    return n;
}

/* Top-p without sorting the vocabulary: candidates are bucketed by logit (512 buckets over
 * the 40 nats below the best; everything lower shares the last), the bucket where the mass
 * crosses top_p * sum is found, and only that bucket is sorted. The kept set is exactly what a
 * full sort would keep. Returns the new count; c[0, n) is compacted. */
static int64_t nucleus(cand *c, int64_t n, float mx, double sum, float top_p) {
    enum { NB = 512 };
    const float span = 40.0f;
    double mass[NB] = {0};
    for (int64_t i = 0; i < n; i++) {
        float d = (mx - c[i].logit) * (float)(NB - 1) / span;
        int b = d >= (float)(NB - 1) ? NB - 1 : (int)d;
        mass[b] += c[i].p;
    }
    const double target = (double)top_p * sum;
    double cum = 0;
    int cross = NB - 1;
    for (int b = 0; b < NB; b++) {
        if (cum + mass[b] >= target) {
            cross = b;
            break;
        }
        cum += mass[b];
    }
    /* Keep the buckets above the crossing one; move the crossing bucket's members after them. */
    int64_t w = 0, tail = n;
    for (int64_t i = 0; i < tail;) {
        float d = (mx - c[i].logit) * (float)(NB - 1) / span;
        int b = d >= (float)(NB - 1) ? NB - 1 : (int)d;
        if (b < cross) {
            cand t = c[w];
            c[w++] = c[i];
            c[i] = t;
            i++;
        } else if (b == cross) {
            i++;
        } else {
            cand t = c[--tail];
            c[tail] = c[i];
            c[i] = t;
        }
    }
    /* c[w, tail) is the crossing bucket: take its best until the mass is reached. */
    qsort(c + w, (size_t)(tail - w), sizeof *c, cmp_cand);
    int64_t keep = w;
    for (int64_t i = w; i < tail; i++) {
        keep = i + 1;
        cum += c[i].p;
        if (cum >= target) break;
    }
    return keep > 0 ? keep : 1;
}

bool hc_sampler_is_greedy(const hc_sampler *s) {
    const hc_sampler_params *p = &s->p;
    return p->temperature <= 0 && p->repetition_penalty == 1 && p->frequency_penalty == 0 && p->presence_penalty == 0;
}

int32_t hc_sampler_sample(hc_sampler *s, float *logits, const int32_t *history, int64_t n_history) {
    const hc_sampler_params *p = &s->p;
    const int64_t V = s->V;
    apply_penalties(s, logits, history, n_history);
    if (p->temperature <= 0) {
        int64_t best = 0;
        for (int64_t i = 1; i < V; i++)
            if (logits[i] > logits[best]) best = i; /* the first maximum, as torch.argmax */
        return (int32_t)best;
    }
    cand *c = s->c;
    int64_t n = V;
    const float inv_t = 1.0f / p->temperature;
    if (p->top_k > 0 && p->top_k <= 1024 && p->top_k < V) {
        n = top_k_heap(c, logits, V, p->top_k, inv_t);
    } else {
        for (int64_t i = 0; i < V; i++) c[i] = (cand){logits[i] * inv_t, 0, (int32_t)i};
        if (p->top_k > 0 && p->top_k < n) {
            select_top(c, 0, n, p->top_k);
            n = p->top_k;
        }
    }
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        if (c[i].logit > mx) mx = c[i].logit;
    if (p->top_p >= 1 && p->min_p > 0) {
        /* min-p alone cuts by logit first, so only the survivors need an exp. */
        const float cut = mx + logf(p->min_p);
        int64_t w = 0;
        for (int64_t i = 0; i < n; i++)
            if (c[i].logit >= cut) c[w++] = c[i];
        n = w;
    }
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (c[i].p = expf(c[i].logit - mx));
    if (p->top_p < 1) {
        n = nucleus(c, n, mx, sum, p->top_p);
        sum = 0;
        for (int64_t i = 0; i < n; i++) sum += c[i].p;
    }
    if (p->min_p > 0) {
        /* Keep tokens whose probability is at least min_p times the top one's. */
        const float cut = mx + logf(p->min_p);
        int64_t w = 0;
        for (int64_t i = 0; i < n; i++)
            if (c[i].logit >= cut) c[w++] = c[i];
        n = w;
        sum = 0;
        for (int64_t i = 0; i < n; i++) sum += c[i].p;
    }
    double r = uniform(s->rng) * sum, acc = 0;
    for (int64_t i = 0; i < n; i++) {
        acc += c[i].p;
        if (r < acc) return c[i].id;
    }
    return c[n - 1].id;
}
