/* Mixture-of-experts routing: softmax over experts, top-k, optional renormalisation (the row
 * math is backend/route.h, shared with the CUDA kernels). */
#include "backend/cpu/cpu.h"
#include "backend/route.h"

void hc_cpu_topk_route(hc_backend *be, float *weights, int32_t *experts, const float *logits, int64_t T, int64_t E,
                       int64_t k, bool renorm) {
    (void)be;
    for (int64_t t = 0; t < T; t++) hc_route_row(weights + t * k, experts + t * k, logits + t * E, E, k, renorm);
}

void hc_cpu_topk_route_backward(hc_backend *be, float *dlogits, const float *dweights, const int32_t *experts,
                                const float *logits, int64_t T, int64_t E, int64_t k, bool renorm) {
    (void)be;
    for (int64_t t = 0; t < T; t++)
        hc_route_backward_row(dlogits + t * E, dweights + t * k, experts + t * k, logits + t * E, E, k, renorm);
}
