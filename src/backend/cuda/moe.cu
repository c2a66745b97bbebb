/* Mixture-of-experts routing, forward and backward: one thread per row (E is small, 8 to 128
 * experts), the CPU reference's row math (backend/route.h). */
#include "backend/cuda/common.cuh"
#include "backend/route.h"

__global__ void topk_route_kernel(float *weights, int32_t *experts, const float *logits, int64_t T, int64_t E, int64_t k,
                                  bool renorm) {
    const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (t < T) hc_route_row(weights + t * k, experts + t * k, logits + t * E, E, k, renorm);
}

__global__ void topk_route_backward_kernel(float *dlogits, const float *dweights, const int32_t *experts,
                                           const float *logits, int64_t T, int64_t E, int64_t k, bool renorm) {
    const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (t < T) hc_route_backward_row(dlogits + t * E, dweights + t * k, experts + t * k, logits + t * E, E, k, renorm);
}

void hc_cuda_topk_route(hc_backend *be, float *weights, int32_t *experts, const float *logits, int64_t T, int64_t E,
                        int64_t k, bool renorm) {
    if (T <= 0 || hc_cuda(be)->failed) return;
    topk_route_kernel<<<hc_blocks(T, 128), 128, 0, hc_cuda(be)->stream>>>(weights, experts, logits, T, E, k, renorm);
    HC_CUDA_LAUNCHED(be, "topk_route");
}

void hc_cuda_topk_route_backward(hc_backend *be, float *dlogits, const float *dweights, const int32_t *experts,
                                 const float *logits, int64_t T, int64_t E, int64_t k, bool renorm) {
    if (T <= 0 || hc_cuda(be)->failed) return;
    topk_route_backward_kernel<<<hc_blocks(T, 128), 128, 0, hc_cuda(be)->stream>>>(dlogits, dweights, experts, logits, T,
                                                                                    E, k, renorm);
    HC_CUDA_LAUNCHED(be, "topk_route_backward");
}
