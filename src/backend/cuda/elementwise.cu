/* Elementwise ops: fill, activations, gated products, residual adds, soft-capping, the KV
 * cache store and the embedding gather. One thread per element; these are memory-bound. */
#include "backend/cuda/common.cuh"

#define GRID_STRIDE(i, n) for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

static unsigned grid_for(int64_t n) {
    unsigned b = hc_blocks(n, 256);
    return b < 65535u ? (b ? b : 1) : 65535u;
}

__global__ void fill_kernel(float *x, float v, int64_t n) {
    GRID_STRIDE(i, n) x[i] = v;
}

__global__ void glu_kernel(float *out, const float *gate, const float *up, hc_activation act, int64_t n) {
    GRID_STRIDE(i, n) out[i] = hc_act_apply(gate[i], act) * up[i];
}

__global__ void activate_kernel(float *x, hc_activation act, int64_t n) {
    GRID_STRIDE(i, n) x[i] = hc_act_apply(x[i], act);
}

/* Four at a time where every pointer is 16-byte aligned (the residual stream's [T, C] adds). */
__global__ void add_kernel(float *out, const float *a, const float *b, int64_t n) {
    const bool vec = ((uintptr_t)out | (uintptr_t)a | (uintptr_t)b) % 16 == 0;
    const int64_t n4 = vec ? n / 4 : 0;
    GRID_STRIDE(i, n4) {
        const float4 x = ((const float4 *)a)[i], y = ((const float4 *)b)[i];
        ((float4 *)out)[i] = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
    }
    for (int64_t i = 4 * n4 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

__global__ void add_scaled_kernel(float *out, const float *x, float alpha, int64_t n) {
    GRID_STRIDE(i, n) out[i] += alpha * x[i];
}

__global__ void softcap_kernel(float *x, float cap, int64_t n) {
    GRID_STRIDE(i, n) x[i] = cap * tanhf(x[i] / cap);
}

/* dst[pos[t], :] = src[t, :] (width values a row), converted to dst_dtype. */
__global__ void set_rows_kernel(void *dst, hc_dtype dt, const float *src, const int32_t *pos, int64_t T, int64_t width) {
    GRID_STRIDE(i, T * width) {
        const int64_t t = i / width, c = i % width;
        const int64_t o = (int64_t)pos[t] * width + c;
        const float v = src[i];
        if (dt == HC_DTYPE_F32) ((float *)dst)[o] = v;
        else if (dt == HC_DTYPE_BF16) ((__nv_bfloat16 *)dst)[o] = __float2bfloat16_rn(v);
        else ((__half *)dst)[o] = __float2half_rn(v);
    }
}

/* out[t, c] (= or +=) table[ids[t], c] * scale; the table is [rows, C], or [C, rows] when
 * transposed. */
__global__ void embedding_kernel(float *out, const void *table, hc_dtype dt, int64_t ld, bool transposed,
                                 const int32_t *ids, int64_t T, int64_t C, float scale, bool accumulate) {
    GRID_STRIDE(i, T * C) {
        const int64_t t = i / C, c = i % C, row = ids[t];
        const float v = hc_ld(table, dt, transposed ? c * ld + row : row * ld + c) * scale;
        out[i] = accumulate ? out[i] + v : v;
    }
}

#define LAUNCH(be, n, kernel, ...)                                                                                     \
    do {                                                                                                               \
        if ((n) <= 0 || hc_cuda(be)->failed) return;                                                                   \
        kernel<<<grid_for(n), 256, 0, hc_cuda(be)->stream>>>(__VA_ARGS__);                                             \
        HC_CUDA_LAUNCHED(be, #kernel);                                                                                 \
    } while (0)

void hc_cuda_fill(hc_backend *be, float *x, float v, int64_t n) {
    if (v == 0.0f && !signbit(v) && n > 0 && !hc_cuda(be)->failed) { /* +0.0 is all zero bits: the copy engine's memset */
        hc_cuda_fail(be, cudaMemsetAsync(x, 0, sizeof(float) * (size_t)n, hc_cuda(be)->stream), "fill");
        return;
    }
    LAUNCH(be, n, fill_kernel, x, v, n);
}
void hc_cuda_glu(hc_backend *be, float *out, const float *gate, const float *up, hc_activation act, int64_t n) {
    LAUNCH(be, n, glu_kernel, out, gate, up, act, n);
}
void hc_cuda_activate(hc_backend *be, float *x, hc_activation act, int64_t n) { LAUNCH(be, n, activate_kernel, x, act, n); }
void hc_cuda_add(hc_backend *be, float *out, const float *a, const float *b, int64_t n) {
    LAUNCH(be, (n + 3) / 4, add_kernel, out, a, b, n);
}
void hc_cuda_add_scaled(hc_backend *be, float *out, const float *x, float alpha, int64_t n) {
    LAUNCH(be, n, add_scaled_kernel, out, x, alpha, n);
}
void hc_cuda_softcap(hc_backend *be, float *x, float cap, int64_t n) { LAUNCH(be, n, softcap_kernel, x, cap, n); }
void hc_cuda_set_rows(hc_backend *be, void *dst, hc_dtype dst_dtype, const float *src, const int32_t *pos, int64_t T,
                      int64_t width) {
    LAUNCH(be, T * width, set_rows_kernel, dst, dst_dtype, src, pos, T, width);
}
void hc_cuda_embedding(hc_backend *be, float *out, const hc_mat *table, const int32_t *ids, int64_t T, float scale,
                       bool accumulate) {
    LAUNCH(be, T * table->cols, embedding_kernel, out, table->data, table->dtype, table->ld, table->transposed, ids, T,
           table->cols, scale, accumulate);
}
