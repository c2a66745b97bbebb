/* Mixture-of-experts routing: softmax over experts, top-k, optional renormalisation.
 * One thread per row; E is small (8 to 128 experts). */
#include "backend/cuda/common.cuh"

__global__ void topk_route_kernel(float *weights, int32_t *experts, const float *logits, int64_t T, int64_t E, int64_t k,
                                  bool renorm) {
    const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (t >= T) return;
    const float *l = logits + t * E; /* [E] */
    float *w = weights + t * k;      /* [k] */
    int32_t *e = experts + t * k;    /* [k] */
    float mx = -INFINITY;
    for (int64_t i = 0; i < E; i++) mx = fmaxf(mx, l[i]);
    double sum = 0;
    for (int64_t i = 0; i < E; i++) sum += exp((double)(l[i] - mx));
    /* Repeated max keeps ties in index order, as the CPU reference (and torch.topk) does. */
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

void hc_cuda_topk_route(hc_backend *be, float *weights, int32_t *experts, const float *logits, int64_t T, int64_t E,
                        int64_t k, bool renorm) {
    if (T <= 0 || hc_cuda(be)->failed) return;
    topk_route_kernel<<<hc_blocks(T, 128), 128, 0, hc_cuda(be)->stream>>>(weights, experts, logits, T, E, k, renorm);
    HC_CUDA_LAUNCHED(be, "topk_route");
}

/* topk_route's backward, one thread per row, the CPU reference's math. */
__global__ void topk_route_backward_kernel(float *dlogits, const float *dweights, const int32_t *experts,
                                           const float *logits, int64_t T, int64_t E, int64_t k, bool renorm) {
    const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (t >= T) return;
    const float *l = logits + t * E, *dw = dweights + t * k; /* [E], [k] */
    const int32_t *e = experts + t * k;                      /* [k] */
    float *dl = dlogits + t * E;                             /* [E] */
    double mx = -INFINITY;
    for (int64_t i = 0; i < E; i++) mx = fmax(mx, (double)l[i]);
    double z = 0;
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

void hc_cuda_topk_route_backward(hc_backend *be, float *dlogits, const float *dweights, const int32_t *experts,
                                 const float *logits, int64_t T, int64_t E, int64_t k, bool renorm) {
    if (T <= 0 || hc_cuda(be)->failed) return;
    topk_route_backward_kernel<<<hc_blocks(T, 128), 128, 0, hc_cuda(be)->stream>>>(dlogits, dweights, experts, logits, T,
                                                                                    E, k, renorm);
    HC_CUDA_LAUNCHED(be, "topk_route_backward");
}
