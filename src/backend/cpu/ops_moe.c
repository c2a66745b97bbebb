/* Mixture-of-experts routing: softmax over experts, top-k, optional renormalisation. */
#include <math.h>

#include "backend/cpu/cpu.h"

void hc_cpu_topk_route(hc_backend *be, float *weights, int32_t *experts, const float *logits, int64_t T, int64_t E,
                       int64_t k, bool renorm) {
    (void)be;
    for (int64_t t = 0; t < T; t++) {
        const float *l = logits + t * E; /* [E] */
        float *w = weights + t * k;      /* [k] */
        int32_t *e = experts + t * k;    /* [k] */
        float mx = -INFINITY;
        for (int64_t i = 0; i < E; i++)
            if (l[i] > mx) mx = l[i];
        double sum = 0;
        for (int64_t i = 0; i < E; i++) sum += exp((double)(l[i] - mx));
        /* Selection by repeated max keeps ties in index order, as torch.topk does on CPU. */
        for (int64_t j = 0; j < k; j++) {
            int64_t best = -1;
            for (int64_t i = 0; i < E; i++) {
                bool taken = false;
                for (int64_t m = 0; m < j; m++) taken |= e[m] == i;
                if (!taken && (best < 0 || l[i] > l[best])) best = i;
            }
            e[j] = (int32_t)best;
            w[j] = (float)(exp((double)(l[best] - mx)) / sum);
        }
        if (renorm) {
            float s = 0;
            for (int64_t j = 0; j < k; j++) s += w[j];
            for (int64_t j = 0; j < k; j++) w[j] /= s;
        }
    }
}

void hc_cpu_topk_route_backward(hc_backend *be, float *dlogits, const float *dweights, const int32_t *experts,
                                const float *logits, int64_t T, int64_t E, int64_t k, bool renorm) {
    (void)be;
    for (int64_t t = 0; t < T; t++) {
        const float *l = logits + t * E, *dw = dweights + t * k; /* [E], [k] */
        const int32_t *e = experts + t * k;                      /* [k] */
        float *dl = dlogits + t * E;                             /* [E] */
        double mx = -INFINITY;
        for (int64_t i = 0; i < E; i++) mx = l[i] > mx ? l[i] : mx;
        /* the weights as the forward made them: over all E, or over the chosen k */
        double z = 0;
        if (renorm)
            for (int64_t j = 0; j < k; j++) z += exp(l[e[j]] - mx);
        else
            for (int64_t i = 0; i < E; i++) z += exp(l[i] - mx);
        double dot = 0; /* sum_j dw_j w_j */
        for (int64_t j = 0; j < k; j++) dot += dw[j] * (exp(l[e[j]] - mx) / z);
        for (int64_t i = 0; i < E; i++) {
            double g = 0;
            bool chosen = false;
            for (int64_t j = 0; j < k; j++)
                if (e[j] == i) g = dw[j], chosen = true;
            dl[i] = renorm && !chosen ? 0.0f : (float)(exp(l[i] - mx) / z * (g - dot));
        }
    }
}
