/* Rotary position embedding, rotate-half layout, in place on x[T, nh, D]. */
#include "backend/cuda/common.cuh"

/* One thread per (t, h, i < R/2) pair of rotated values. The angle is formed in f32 as
 * transformers forms it; cos and sin are taken in double, as the CPU reference takes them. */
__global__ void rope_kernel(float *x, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T, int64_t nh,
                            int64_t D, int64_t half) {
    const int64_t n = T * nh * half;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t k = i % half, th = i / half, t = th / nh;
        const float angle = (float)pos[t] * inv_freq[k];
        double sd, cd;
        sincos((double)angle, &sd, &cd);
        const float c = (float)cd * attn_factor, s = (float)sd * attn_factor;
        float *v = x + th * D; /* [D] */
        const float a = v[k], b = v[k + half];
        v[k] = a * c - b * s;
        v[k + half] = b * c + a * s;
    }
}

void hc_cuda_rope(hc_backend *be, float *x, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T,
                  int64_t nh, int64_t D, int64_t R) {
    const int64_t n = T * nh * (R / 2);
    if (n <= 0 || hc_cuda(be)->failed) return;
    unsigned blocks = hc_blocks(n, 256);
    if (blocks > 65535u) blocks = 65535u;
    rope_kernel<<<blocks, 256, 0, hc_cuda(be)->stream>>>(x, pos, inv_freq, attn_factor, T, nh, D, R / 2);
    HC_CUDA_LAUNCHED(be, "rope");
}
