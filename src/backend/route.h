/* Mixture-of-experts routing of one row, forward and backward: one definition for the CPU
 * reference and the CUDA kernels (compiled for host and device under nvcc, as activation.h). */
#ifndef HC_BACKEND_ROUTE_H
#define HC_BACKEND_ROUTE_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "backend/activation.h"

/* The k largest softmax probabilities of logits l[E] -> weights w[k], experts e[k] (descending;
 * repeated max keeps ties in index order, as torch.topk does), renormalised to sum 1 when
 * renorm. */
HC_HOST_DEVICE void hc_route_row(float *w, int32_t *e, const float *l, int64_t E, int64_t k, bool renorm) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < E; i++) mx = l[i] > mx ? l[i] : mx;
    double sum = 0;
    for (int64_t i = 0; i < E; i++) sum += exp((double)(l[i] - mx));
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

/* Its backward: dl[E] (=) from dw[k], given the chosen experts e. Without renorm w_j = p(e_j),
 * so dl_i = p_i (g_i - sum_j dw_j w_j) with g_i = dw_j where i = e_j, else 0; with renorm w is
 * the softmax of the chosen logits alone: dl_(e_j) = w_j (dw_j - sum_k dw_k w_k), others 0. */
HC_HOST_DEVICE void hc_route_backward_row(float *dl, const float *dw, const int32_t *e, const float *l, int64_t E,
                                          int64_t k, bool renorm) {
    double mx = -INFINITY;
    for (int64_t i = 0; i < E; i++) mx = l[i] > mx ? l[i] : mx;
    double z = 0; /* the forward's normaliser: over all E, or over the chosen k */
    if (renorm)
        for (int64_t j = 0; j < k; j++) z += exp(l[e[j]] - mx);
    else
        for (int64_t i = 0; i < E; i++) z += exp(l[i] - mx);
    double dot = 0;
    for (int64_t j = 0; j < k; j++) dot += dw[j] * (exp(l[e[j]] - mx) / z);
    for (int64_t i = 0; i < E; i++) {
        double g = 0;
        bool chosen = false;
        for (int64_t j = 0; j < k; j++)
            if (e[j] == i) g = dw[j], chosen = true;
        dl[i] = renorm && !chosen ? 0.0f : (float)(exp(l[i] - mx) / z * (g - dot));
    }
}

#endif
