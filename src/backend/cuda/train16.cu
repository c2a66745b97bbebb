/* Training's projections with 16-bit operands kept between forward and backward: the gated
 * MLP (ffn_train, ffn_backward), the backward of several products of one input
 * (matmul_n_backward, q/k/v) and the LM head with the loss (lm_loss).
 *
 * The op sequences (backend/fused.c) keep gate, up and their product in f32, and every
 * matmul_backward rounds its x and dout to the compute dtype again. Here, when the backend
 * computes in bf16 or f16 and the weights are stored in that dtype, the forward keeps x, gate,
 * up and the product already rounded (where transformers' bf16 autocast rounds them: every
 * Linear's output, and the product act(gate) * up), cuBLAS writes the 16-bit outputs directly,
 * the glu's backward reads and writes 16 bits, and the input gradients of several products add
 * up inside cuBLAS (beta = 1) instead of through [T, C] temporaries. Anything else (f32
 * compute, biases, quantized or transposed weights, decode-sized T) takes the op sequence.
 *
 * Shapes: T rows, C = K input features, I the MLP width; weights [N, K] row-major (HF Linear).
 * cuBLAS is column-major: a row-major [T, N] buffer is its [N, T] with ld N. */
#include "backend/cuda/common.cuh"

static unsigned grid_for(int64_t n) {
    unsigned b = hc_blocks(n, 256);
    return b < 65535u ? (b ? b : 1) : 65535u;
}

static cudaDataType_t t16(const hc_cuda_ctx *cx) { return cx->compute == HC_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F; }

/* The three products of a layer, 16-bit operands, f32 sums, C of type ct:
 *   fwd:  y[T, N]  = x[T, K] W^T          (beta 0)
 *   dx:   dx[T, K] (=, or += when acc) dy[T, N] W
 *   dw:   dW[N, K] += dy^T x              (f32, W's ld; = when overwrite) */
static bool gemm_fwd(hc_backend *be, void *y, cudaDataType_t ct, const void *x16, const hc_mat *w, int64_t T) {
    hc_cuda_ctx *cx = hc_cuda(be);
    const float one = 1.0f, zero = 0.0f;
    const cublasStatus_t st = cublasGemmEx(cx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)w->rows, (int)T, (int)w->cols, &one,
                                           w->data, t16(cx), (int)w->ld, x16, t16(cx), (int)w->cols, &zero, y, ct,
                                           (int)w->rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) hc_cuda_fail(be, cudaErrorUnknown, "cublasGemmEx (training forward)");
    return st == CUBLAS_STATUS_SUCCESS;
}

/* dy16's rows are ldd apart (w->rows when it stands alone). */
static bool gemm_dx(hc_backend *be, void *dx, cudaDataType_t ct, bool acc, const void *dy16, int64_t ldd, const hc_mat *w,
                    int64_t T) {
    hc_cuda_ctx *cx = hc_cuda(be);
    const float one = 1.0f, beta = acc ? 1.0f : 0.0f;
    const cublasStatus_t st = cublasGemmEx(cx->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)w->cols, (int)T, (int)w->rows, &one,
                                           w->data, t16(cx), (int)w->ld, dy16, t16(cx), (int)ldd, &beta, dx, ct,
                                           (int)w->cols, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) hc_cuda_fail(be, cudaErrorUnknown, "cublasGemmEx (input gradient)");
    return st == CUBLAS_STATUS_SUCCESS;
}

/* dW (=) when overwrite, else (+=). */
static bool gemm_dw(hc_backend *be, float *dw, const void *dy16, int64_t ldd, const void *x16, const hc_mat *w, int64_t T,
                    bool overwrite) {
    if (!dw) return true;
    hc_cuda_ctx *cx = hc_cuda(be);
    const float one = 1.0f, beta = overwrite ? 0.0f : 1.0f;
    const cublasStatus_t st = cublasGemmEx(cx->blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)w->cols, (int)w->rows, (int)T, &one,
                                           x16, t16(cx), (int)w->cols, dy16, t16(cx), (int)ldd, &beta, dw, CUDA_R_32F,
                                           (int)w->ld, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) hc_cuda_fail(be, cudaErrorUnknown, "cublasGemmEx (weight gradient)");
    return st == CUBLAS_STATUS_SUCCESS;
}

static bool has(const hc_vec *b) { return b && b->data; }

/* 16-bit buffers carved out of a float buffer, each start on 256 bytes. */
typedef struct {
    char *p, *end;
} carver;

static void *carve(carver *c, int64_t elems) {
    char *r = c->p;
    c->p += (2 * (size_t)elems + 255) / 256 * 256;
    return c->p <= c->end ? r : NULL;
}

/* keep: x16 [T, C] | gate16 [T, I] | up16 [T, I] | act16 [T, I], in keep's [T, 3I] floats. */
typedef struct {
    void *x, *g, *u, *a;
} ffn_keep;

static bool ffn_fast(hc_backend *be, const float *keep, const hc_mat *gate, const hc_vec *bg, const hc_mat *up,
                     const hc_vec *bu, const hc_mat *down, const hc_vec *bd, int64_t T, ffn_keep *k) {
    const int64_t I = gate->rows, C = gate->cols;
    if (has(bg) || has(bu) || has(bd) || up->rows != I || up->cols != C || down->cols != I || down->rows != C) return false;
    if (!hc_cuda_gemm16_weight(be, gate, T) || !hc_cuda_gemm16_weight(be, up, T) || !hc_cuda_gemm16_weight(be, down, T))
        return false;
    carver c = {(char *)keep, (char *)keep + sizeof(float) * (size_t)(3 * T * I)};
    k->x = carve(&c, T * C), k->g = carve(&c, T * I), k->u = carve(&c, T * I), k->a = carve(&c, T * I);
    return k->a != NULL && (uintptr_t)keep % 256 == 0;
}

void hc_cuda_ffn_train(hc_backend *be, float *out, float *keep, const float *x, const hc_mat *gate, const hc_vec *bg,
                       const hc_mat *up, const hc_vec *bu, const hc_mat *down, const hc_vec *bd, hc_activation act,
                       int64_t T) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (T <= 0 || cx->failed) return;
    ffn_keep k;
    if (!ffn_fast(be, keep, gate, bg, up, bu, down, bd, T, &k)) {
        hc_fused_ffn_train(be, out, keep, x, gate, bg, up, bu, down, bd, act, T);
        return;
    }
    const int64_t I = gate->rows;
    hc_cuda_narrow(be, k.x, cx->compute, x, T * gate->cols);
    if (!gemm_fwd(be, k.g, t16(cx), k.x, gate, T) || !gemm_fwd(be, k.u, t16(cx), k.x, up, T)) return;
    hc_cuda_glu16(be, k.a, k.g, k.u, act, T * I);
    gemm_fwd(be, out, CUDA_R_32F, k.a, down, T);
    HC_CUDA_LAUNCHED(be, "ffn_train");
}

/* dgate = dact * up * act'(gate), dup = dact * act(gate), from and to 16 bits, in f32 between;
 * eight elements a thread (16-byte loads and stores: every buffer starts on 256 bytes). */
template <typename HT> __device__ __forceinline__ void glu_backward16_one(HT *dg, HT *du, HT d, HT g, HT u, hc_activation act) {
    float a, da;
    hc_act_grad((float)g, act, &a, &da);
    *du = narrow<HT>((float)d * a);
    *dg = narrow<HT>((float)d * (float)u * da);
}

template <typename HT>
__global__ void glu_backward16_kernel(HT *dgate, HT *dup, const HT *dact, const HT *gate, const HT *up,
                                      hc_activation act, int64_t n) {
    const int64_t n8 = n / 8;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
        const uint4 dv = ((const uint4 *)dact)[i], gv = ((const uint4 *)gate)[i], uv = ((const uint4 *)up)[i];
        const HT *d = (const HT *)&dv, *g = (const HT *)&gv, *u = (const HT *)&uv;
        HT og[8], ou[8];
#pragma unroll
        for (int j = 0; j < 8; j++) glu_backward16_one(&og[j], &ou[j], d[j], g[j], u[j], act);
        ((uint4 *)dgate)[i] = *(const uint4 *)og;
        ((uint4 *)dup)[i] = *(const uint4 *)ou;
    }
    for (int64_t i = 8 * n8 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        glu_backward16_one(&dgate[i], &dup[i], dact[i], gate[i], up[i], act);
}

void hc_cuda_ffn_backward(hc_backend *be, float *dx, float *dgate, float *dbg, float *dup, float *dbu, float *ddown,
                          float *dbd, const float *dout, const float *x, const float *keep, const hc_mat *gate,
                          const hc_vec *bg, const hc_mat *up, const hc_vec *bu, const hc_mat *down, const hc_vec *bd,
                          hc_activation act, int64_t T, float *scratch, bool overwrite) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (T <= 0 || cx->failed) return;
    ffn_keep k;
    if (!ffn_fast(be, keep, gate, bg, up, bu, down, bd, T, &k)) { /* the forward's choice too */
        hc_fused_ffn_backward(be, dx, dgate, dbg, dup, dbu, ddown, dbd, dout, x, keep, gate, bg, up, bu, down, bd, act, T,
                              scratch, overwrite);
        return;
    }
    const int64_t I = gate->rows, C = gate->cols;
    /* scratch: dout16 [T, C] | dact16 [T, I] | dgate16 [T, I] | dup16 [T, I] */
    carver c = {(char *)scratch, (char *)scratch + sizeof(float) * (size_t)(T * (3 * I + C))};
    void *d16 = carve(&c, T * C), *da = carve(&c, T * I), *dg = carve(&c, T * I), *du = carve(&c, T * I);
    if (!du) {
        hc_cuda_fail(be, cudaErrorInvalidValue, "ffn_backward: scratch too small");
        return;
    }
    hc_cuda_narrow(be, d16, cx->compute, dout, T * C);
    if (!gemm_dx(be, da, t16(cx), false, d16, down->rows, down, T) || !gemm_dw(be, ddown, d16, down->rows, k.a, down, T, overwrite)) return;
    if (cx->compute == HC_DTYPE_BF16)
        glu_backward16_kernel<__nv_bfloat16><<<grid_for((T * I + 7) / 8), 256, 0, cx->stream>>>(
            (__nv_bfloat16 *)dg, (__nv_bfloat16 *)du, (const __nv_bfloat16 *)da, (const __nv_bfloat16 *)k.g,
            (const __nv_bfloat16 *)k.u, act, T * I);
    else
        glu_backward16_kernel<__half><<<grid_for((T * I + 7) / 8), 256, 0, cx->stream>>>(
            (__half *)dg, (__half *)du, (const __half *)da, (const __half *)k.g, (const __half *)k.u, act, T * I);
    if (!gemm_dx(be, dx, CUDA_R_32F, false, dg, I, gate, T) || !gemm_dx(be, dx, CUDA_R_32F, true, du, I, up, T)) return;
    if (!gemm_dw(be, dgate, dg, I, k.x, gate, T, overwrite)) return;
    gemm_dw(be, dup, du, I, k.x, up, T, overwrite);
    HC_CUDA_LAUNCHED(be, "ffn_backward");
}

/* dst[t, :N] (rows ldd apart, 16-bit) = src[t, :N] (f32, contiguous), four columns a thread
 * (N and ldd multiples of 4). */
template <typename HT> __global__ void narrow_rows_kernel(HT *dst, int64_t ldd, const float *src, int64_t T, int64_t N) {
    for (int64_t t = blockIdx.y; t < T; t += gridDim.y)
        for (int64_t n = 4 * (blockIdx.x * (int64_t)blockDim.x + threadIdx.x); n < N; n += 4 * (int64_t)gridDim.x * blockDim.x) {
            const float4 v = *(const float4 *)(src + t * N + n);
            HT o[4] = {narrow<HT>(v.x), narrow<HT>(v.y), narrow<HT>(v.z), narrow<HT>(v.w)};
            *(uint2 *)(dst + t * ldd + n) = *(const uint2 *)o;
        }
}

static void narrow_rows(hc_backend *be, void *dst, int64_t ldd, const float *src, int64_t T, int64_t N) {
    hc_cuda_ctx *cx = hc_cuda(be);
    const dim3 grid((unsigned)((N / 4 + 255) / 256), (unsigned)(T < 65535 ? T : 65535));
    if (cx->compute == HC_DTYPE_BF16)
        narrow_rows_kernel<__nv_bfloat16><<<grid, 256, 0, cx->stream>>>((__nv_bfloat16 *)dst, ldd, src, T, N);
    else
        narrow_rows_kernel<__half><<<grid, 256, 0, cx->stream>>>((__half *)dst, ldd, src, T, N);
}

void hc_cuda_matmul_n_backward(hc_backend *be, float *dx, float *const *dws, float *const *dbs, const float *const *douts,
                               const float *x, const hc_mat *const *ws, int n, int64_t T, float *tmp, bool overwrite) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (T <= 0 || cx->failed) return;
    bool fast = true;
    int64_t n_max = 0;
    for (int i = 0; i < n; i++) {
        fast = fast && !dbs[i] && hc_cuda_gemm16_weight(be, ws[i], T) && ws[i]->cols == ws[0]->cols;
        n_max = ws[i]->rows > n_max ? ws[i]->rows : n_max;
    }
    if (!fast) {
        hc_fused_matmul_n_backward(be, dx, dws, dbs, douts, x, ws, n, T, tmp, overwrite);
        return;
    }
    const int64_t K = ws[0]->cols;
    int64_t n_all = 0; /* the products' outputs side by side */
    bool whole = n > 1; /* one product needs no side by side */
    for (int i = 0; i < n; i++)
        n_all += ws[i]->rows, whole = whole && ws[i]->ld == K && ws[i]->rows % 4 == 0 && (uintptr_t)douts[i] % 16 == 0;
    if (whole) {
        /* dx = [d_0 | d_1 | ...] [W_0; W_1; ...]: one GEMM over all the outputs, where k's and v's
         * alone are short (K = 512 for a 1B Llama) and each would add onto dx; the douts are
         * rounded into one [T, n_all] operand, the weights copied into one [n_all, K] (a few MB) */
        const size_t bytes = 2 * (size_t)(T * K + T * n_all + n_all * K) + 1024;
        char *buf = (char *)hc_cuda_scratch(be, &cx->dw16, &cx->dw16_bytes, bytes);
        if (!buf) return;
        carver c = {buf, buf + bytes};
        char *x16 = (char *)carve(&c, T * K), *dall = (char *)carve(&c, T * n_all), *wall = (char *)carve(&c, n_all * K);
        hc_cuda_narrow(be, x16, cx->compute, x, T * K);
        for (int i = 0, off = 0; i < n; off += (int)ws[i]->rows, i++) {
            narrow_rows(be, dall + 2 * (size_t)off, n_all, douts[i], T, ws[i]->rows);
            if (hc_cuda_fail(be, cudaMemcpyAsync(wall + 2 * (size_t)(off * K), ws[i]->data, 2 * (size_t)(ws[i]->rows * K),
                                                 cudaMemcpyDeviceToDevice, cx->stream), "matmul_n_backward"))
                return;
        }
        hc_mat wm = *ws[0]; /* stored in the compute dtype, not transposed, not quantized */
        wm.data = wall, wm.rows = n_all;
        if (!gemm_dx(be, dx, CUDA_R_32F, false, dall, n_all, &wm, T)) return;
        for (int i = 0, off = 0; i < n; off += (int)ws[i]->rows, i++)
            if (!gemm_dw(be, dws[i], dall + 2 * (size_t)off, n_all, x16, ws[i], T, overwrite)) return;
        HC_CUDA_LAUNCHED(be, "matmul_n_backward");
        return;
    }
    /* x rounded once for every weight gradient; each dout in turn */
    const size_t bytes = 2 * (size_t)(T * (K + n_max)) + 512;
    char *buf = (char *)hc_cuda_scratch(be, &cx->dw16, &cx->dw16_bytes, bytes);
    if (!buf) return;
    carver c = {buf, buf + bytes};
    void *x16 = carve(&c, T * K), *d16 = carve(&c, T * n_max);
    hc_cuda_narrow(be, x16, cx->compute, x, T * K);
    for (int i = 0; i < n; i++) {
        hc_cuda_narrow(be, d16, cx->compute, douts[i], T * ws[i]->rows);
        if (!gemm_dx(be, dx, CUDA_R_32F, i > 0, d16, ws[i]->rows, ws[i], T) ||
            !gemm_dw(be, dws[i], d16, ws[i]->rows, x16, ws[i], T, overwrite))
            return;
    }
    HC_CUDA_LAUNCHED(be, "matmul_n_backward");
}

/* The LM head and the loss: bf16 logits out of cuBLAS (autocast's), the loss read from them
 * and their gradient written over them in place, the backward's GEMMs taking it as it is. The
 * f32 sequence writes [T, V] f32 logits, reads them twice, writes f32 gradients and rounds
 * those again for the GEMMs: for a 128k vocabulary that is most of the step's memory traffic
 * outside the optimizer. */
void hc_cuda_lm_loss(hc_backend *be, float *dx, float *dw, float *loss, float *hit, const float *x, const hc_mat *w,
                     float softcap, const int32_t *targets, int64_t T, double scale, float *scratch, bool overwrite) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (T <= 0 || cx->failed) return;
    const int64_t V = w->rows, C = w->cols;
    carver c = {(char *)scratch, (char *)scratch + sizeof(float) * (size_t)(2 * T * V)};
    void *l16 = carve(&c, T * V), *x16 = carve(&c, T * C);
    if (softcap > 0 || !hc_cuda_gemm16_weight(be, w, T) || !x16) {
        hc_fused_lm_loss(be, dx, dw, loss, hit, x, w, softcap, targets, T, scale, scratch, overwrite);
        return;
    }
    hc_cuda_narrow(be, x16, cx->compute, x, T * C);
    if (!gemm_fwd(be, l16, t16(cx), x16, w, T)) return;
    hc_cuda_cross_entropy16(be, dx ? l16 : NULL, loss, hit, l16, targets, T, V, scale);
    if (!dx) return;
    if (!gemm_dx(be, dx, CUDA_R_32F, false, l16, V, w, T)) return;
    gemm_dw(be, dw, l16, V, x16, w, T, overwrite);
    HC_CUDA_LAUNCHED(be, "lm_loss");
}
