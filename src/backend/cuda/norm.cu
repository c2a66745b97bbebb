/* RMSNorm (plain and Gemma's 1 + w) and LayerNorm: one block per row, f32 sums. */
#include "backend/cuda/common.cuh"

/* out[T, C] = norm(x[T, C]) * w (+ b); with `add`, first x += add (written back). */
__global__ void norm_kernel(float *out, float *x, const float *add, const void *w, hc_dtype w_dt, const void *b,
                            hc_dtype b_dt, hc_norm_kind kind, float eps, int64_t C) {
    __shared__ float red[32];
    float *xt = x + blockIdx.x * C;   /* [C] */
    float *ot = out + blockIdx.x * C; /* [C] */
    if (add) {
        const float *at = add + blockIdx.x * C;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) xt[c] += at[c];
        /* each thread reads back only what it wrote until the first block_sum's barrier */
    }
    float inv, mean = 0.0f;
    if (kind == HC_NORM_LAYER) {
        float s = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += xt[c];
        mean = hc_block_sum(s, red) / (float)C;
        float v = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) v += (xt[c] - mean) * (xt[c] - mean);
        inv = rsqrtf(hc_block_sum(v, red) / (float)C + eps);
    } else {
        float ss = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += xt[c] * xt[c];
        inv = 1.0f / sqrtf(hc_block_sum(ss, red) / (float)C + eps);
    }
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float v = (xt[c] - mean) * inv;
        if (w) {
            float g = hc_ld(w, w_dt, c);
            if (kind == HC_NORM_RMS_PLUS1) g += 1.0f;
            v *= g;
        }
        if (b) v += hc_ld(b, b_dt, c);
        ot[c] = v;
    }
}

static void launch_norm(hc_backend *be, float *out, float *x, const float *add, const hc_vec *w, const hc_vec *b,
                        hc_norm_kind kind, float eps, int64_t T, int64_t C) {
    if (T <= 0 || hc_cuda(be)->failed) return;
    /* About two values a thread: a single decode row is latency-bound, so spread it wide. Many
     * rows (a prompt, a training batch) fill the GPU anyway, and narrower blocks spend less on
     * their reductions. */
    int threads = (int)((C / 2 + 31) / 32 * 32);
    if (threads > 1024) threads = 1024;
    if (T >= 64 && threads > 256) threads = 256;
    if (threads < 32) threads = 32;
    const void *wd = w ? w->data : NULL, *bd = b ? b->data : NULL;
    for (int64_t t0 = 0; t0 < T; t0 += 65535 * 32) { /* grids hold 2^31-1 blocks in x; stay far below */
        const int64_t n = T - t0 < 65535 * 32 ? T - t0 : 65535 * 32;
        norm_kernel<<<(unsigned)n, threads, 0, hc_cuda(be)->stream>>>(out + t0 * C, x + t0 * C, add ? add + t0 * C : NULL, wd,
                                                                      w ? w->dtype : HC_DTYPE_F32, bd,
                                                                      b ? b->dtype : HC_DTYPE_F32, kind, eps, C);
    }
    HC_CUDA_LAUNCHED(be, "norm");
}

void hc_cuda_norm(hc_backend *be, float *out, const float *x, const hc_vec *w, const hc_vec *b, hc_norm_kind kind,
                  float eps, int64_t T, int64_t C) {
    launch_norm(be, out, (float *)x, NULL, w, b, kind, eps, T, C); /* x is only read without `add` */
}

void hc_cuda_add_norm(hc_backend *be, float *h, float *x, const float *o, const hc_vec *w, const hc_vec *b,
                      hc_norm_kind kind, float eps, int64_t T, int64_t C) {
    launch_norm(be, h, x, o, w, b, kind, eps, T, C);
}
