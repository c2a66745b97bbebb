/* Backward of the ops on the GPU, for training: what cpu/ops_backward.c computes. Activation
 * gradients are written (=); parameter gradients accumulate (+=), as backend.h states. The
 * GEMMs of the backward are cuBLAS: exact f32 when the backend computes in f32; in 16 bits the
 * weight gradients take their operands rounded to the compute dtype (as autocast does, summed
 * in f32 into the f32 gradient) and attention's GEMMs run on TF32 tensor cores. Sums over
 * rows that many blocks share go through atomicAdd (their order, so the last bits, may vary
 * between runs).
 *
 * Attention's general backward (f32 compute, or head dims the flash kernels of
 * attention_backward.cu do not take) materialises the scores and their gradients, [H, T, T]
 * each (memory quadratic in T); its GEMMs read and write the rows in place. Training's fused
 * projections in 16 bits (the gated MLP, q/k/v, the LM head with the loss) are in train16.cu. */
#include "backend/cuda/common.cuh"

#define GRID_STRIDE(i, n) for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

static unsigned grid_for(int64_t n) {
    unsigned b = hc_blocks(n, 256);
    return b < 65535u ? (b ? b : 1) : 65535u;
}

/* ---- embedding: dtable[ids[t], :] += dout[t, :] * scale ------------------------------------- */

__global__ void embedding_backward_kernel(float *dtable, int64_t ld, bool transposed, const float *dout,
                                          const int32_t *ids, int64_t T, int64_t C, float scale) {
    GRID_STRIDE(i, T * C) {
        const int64_t t = i / C, c = i % C;
        const int64_t idx = transposed ? c * ld + ids[t] : (int64_t)ids[t] * ld + c;
        atomicAdd(dtable + idx, dout[i] * scale);
    }
}

void hc_cuda_embedding_backward(hc_backend *be, float *dtable, const hc_mat *table, const float *dout, const int32_t *ids,
                                int64_t T, float scale) {
    if (T <= 0 || !dtable || hc_cuda(be)->failed) return;
    embedding_backward_kernel<<<grid_for(T * table->cols), 256, 0, hc_cuda(be)->stream>>>(
        dtable, table->ld, table->transposed, dout, ids, T, table->cols, scale);
    HC_CUDA_LAUNCHED(be, "embedding_backward");
}

/* The f32 GEMMs of the backward: exact f32 when the backend computes in f32, TF32 tensor cores
 * (10-bit mantissas, f32 sums) when it computes in 16 bits. Column-major, as cuBLAS. */
static bool sgemm(hc_backend *be, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, float alpha,
                  const float *A, int64_t lda, long long sa, const float *B, int64_t ldb, long long sb, float beta, float *C,
                  int64_t ldc, long long sc, int64_t batch) {
    hc_cuda_ctx *cx = hc_cuda(be);
    const cublasComputeType_t ct = cx->compute == HC_DTYPE_F32 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
    cublasStatus_t st =
        batch == 1 ? cublasGemmEx(cx->blas, ta, tb, (int)m, (int)n, (int)k, &alpha, A, CUDA_R_32F, (int)lda, B, CUDA_R_32F,
                                  (int)ldb, &beta, C, CUDA_R_32F, (int)ldc, ct, CUBLAS_GEMM_DEFAULT)
                   : cublasGemmStridedBatchedEx(cx->blas, ta, tb, (int)m, (int)n, (int)k, &alpha, A, CUDA_R_32F, (int)lda, sa,
                                                B, CUDA_R_32F, (int)ldb, sb, &beta, C, CUDA_R_32F, (int)ldc, sc, (int)batch,
                                                ct, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) {
        hc_cuda_fail(be, cudaErrorUnknown, "cublasGemmEx (backward)");
        return false;
    }
    return true;
}

/* ---- matmul: dx = dout W; dW += dout^T x; db += column sums of dout --------------------------- */

/* db[n] += sum_t dout[t, n]: a thread per column, rows in order. */
__global__ void bias_backward_kernel(float *db, const float *dout, int64_t T, int64_t N) {
    GRID_STRIDE(n, N) {
        float s = 0;
        for (int64_t t = 0; t < T; t++) s += dout[t * N + n];
        db[n] += s;
    }
}

void hc_cuda_matmul_backward(hc_backend *be, float *dx, float *dw, float *db, const float *dout, const float *x,
                             const hc_mat *w, int64_t T) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (T <= 0 || cx->failed) return;
    const int64_t N = w->rows, K = w->cols;
    hc_mat wt = *w; /* dx = dout W: a forward matmul over W's transposed view, [T, N] x [N, K] */
    wt.rows = K, wt.cols = N, wt.transposed = !w->transposed;
    if (dw && cx->compute != HC_DTYPE_F32) {
        /* x and dout rounded to the compute dtype (tensor cores at twice TF32's rate), f32 sums;
         * dx's GEMM takes the same rounded dout where it would round it itself */
        const size_t es = hc_dtype_size(cx->compute);
        char *x16 = (char *)hc_cuda_scratch(be, &cx->dw16, &cx->dw16_bytes, es * (size_t)(T * (K + N)) + 16);
        if (!x16) return;
        char *d16 = x16 + (es * (size_t)(T * K) + 15) / 16 * 16;
        hc_cuda_narrow(be, x16, cx->compute, x, T * K);
        hc_cuda_narrow(be, d16, cx->compute, dout, T * N);
        if (dx && !hc_cuda_matmul_converted(be, dx, d16, &wt, T)) hc_cuda_matmul(be, dx, dout, &wt, NULL, T);
        const cudaDataType_t t16 = cx->compute == HC_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
        const float one = 1.0f;
        /* the same column-major products as the f32 path below */
        const cublasStatus_t st =
            w->transposed ? cublasGemmEx(cx->blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)N, (int)K, (int)T, &one, d16, t16, (int)N,
                                         x16, t16, (int)K, &one, dw, CUDA_R_32F, (int)w->ld, CUBLAS_COMPUTE_32F,
                                         CUBLAS_GEMM_DEFAULT)
                          : cublasGemmEx(cx->blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)K, (int)N, (int)T, &one, x16, t16, (int)K,
                                         d16, t16, (int)N, &one, dw, CUDA_R_32F, (int)w->ld, CUBLAS_COMPUTE_32F,
                                         CUBLAS_GEMM_DEFAULT);
        if (st != CUBLAS_STATUS_SUCCESS) {
            hc_cuda_fail(be, cudaErrorUnknown, "cublasGemmEx (weight gradient)");
            return;
        }
    } else if (dw) {
        if (dx) hc_cuda_matmul(be, dx, dout, &wt, NULL, T);
        /* Column-major view of the row-major gradient: [N, K] with ld is K x N (ld); GPT-2's
         * stored [K, N] is N x K (ld). x is K x T (ld K), dout N x T (ld N). */
        const bool ok = w->transposed ? sgemm(be, CUBLAS_OP_N, CUBLAS_OP_T, N, K, T, 1.0f, dout, N, 0, x, K, 0, 1.0f, dw,
                                              w->ld, 0, 1)
                                      : sgemm(be, CUBLAS_OP_N, CUBLAS_OP_T, K, N, T, 1.0f, x, K, 0, dout, N, 0, 1.0f, dw,
                                              w->ld, 0, 1);
        if (!ok) return;
    } else if (dx) {
        hc_cuda_matmul(be, dx, dout, &wt, NULL, T);
    }
    if (db) bias_backward_kernel<<<grid_for(N), 256, 0, cx->stream>>>(db, dout, T, N);
    HC_CUDA_LAUNCHED(be, "matmul_backward");
}

/* ---- norms: a block per `rows` rows ------------------------------------------------------------- */

/* dw and db gather over the block's rows in shared memory (acc: [C] each; a column is always
 * the same thread's, so no conflicts) and go out with one atomicAdd a column a block, where a
 * block a row would make T * C atomics on the same C addresses. Rows too wide for shared
 * memory (`direct`) add straight to dw and db. */
__global__ void norm_backward_kernel(float *dx, float *dw, float *db, const float *dout, const float *x, const void *w,
                                     hc_dtype wdt, bool has_b, hc_norm_kind kind, float eps, int64_t T, int64_t C,
                                     int64_t rows, bool direct, bool accumulate) {
    extern __shared__ float acc[];
    __shared__ float red[32];
    const bool want_dw = dw && w, want_db = db && has_b;
    float *adw = direct ? dw : acc, *adb = direct ? db : acc + (want_dw ? C : 0);
    for (int64_t c = threadIdx.x; !direct && c < C; c += blockDim.x) {
        if (want_dw) adw[c] = 0;
        if (want_db) adb[c] = 0;
    }
    const int64_t t1 = (blockIdx.x + 1) * rows < T ? (blockIdx.x + 1) * rows : T;
    for (int64_t t = blockIdx.x * rows; t < t1; t++) {
        const float *xt = x + t * C, *gt = dout + t * C;
        float mean = 0;
        if (kind == HC_NORM_LAYER) {
            float s = 0;
            for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += xt[c];
            mean = hc_block_sum(s, red) / (float)C;
        }
        float ss = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += (xt[c] - mean) * (xt[c] - mean);
        const float inv = rsqrtf(hc_block_sum(ss, red) / (float)C + eps);
        float sum_d = 0, sum_dx = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
            float g = w ? hc_ld(w, wdt, c) : 1.0f;
            if (kind == HC_NORM_RMS_PLUS1) g += 1.0f;
            const float xhat = (xt[c] - mean) * inv, d = gt[c] * g;
            sum_d += d;
            sum_dx += d * xhat;
            if (direct) {
                if (want_dw) atomicAdd(dw + c, gt[c] * xhat);
                if (want_db) atomicAdd(db + c, gt[c]);
            } else {
                if (want_dw) adw[c] += gt[c] * xhat;
                if (want_db) adb[c] += gt[c];
            }
        }
        if (!dx) continue;
        sum_d = hc_block_sum(sum_d, red);
        sum_dx = hc_block_sum(sum_dx, red);
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
            float g = w ? hc_ld(w, wdt, c) : 1.0f;
            if (kind == HC_NORM_RMS_PLUS1) g += 1.0f;
            const float xhat = (xt[c] - mean) * inv, d = gt[c] * g;
            float v = d - xhat * sum_dx / (float)C;
            if (kind == HC_NORM_LAYER) v -= sum_d / (float)C;
            dx[t * C + c] = accumulate ? dx[t * C + c] + inv * v : inv * v;
        }
    }
    for (int64_t c = threadIdx.x; !direct && c < C; c += blockDim.x) {
        if (want_dw) atomicAdd(dw + c, adw[c]);
        if (want_db) atomicAdd(db + c, adb[c]);
    }
}

/* The same for widths that are a multiple of 4, at most 4096, with 16-byte aligned rows: each
 * of 256 threads holds NV float4s of x and dout in registers, and its columns' weights and
 * its shares of dw and db across the block's rows, so a row is read once and nothing goes
 * through shared memory but the reductions. */
template <int NV>
__global__ void norm_backward_rows_kernel(float *dx, float *dw, float *db, const float *dout, const float *x, const void *w,
                                          hc_dtype wdt, bool has_b, hc_norm_kind kind, float eps, int64_t T, int64_t C,
                                          int64_t rows, bool accumulate) {
    __shared__ float red[32];
    const int64_t C4 = C / 4;
    float g[4 * NV], pdw[4 * NV], pdb[4 * NV];
#pragma unroll
    for (int k = 0; k < NV; k++) {
        const int64_t c4 = threadIdx.x + k * (int64_t)blockDim.x;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            g[4 * k + j] = w && c4 < C4 ? hc_ld(w, wdt, 4 * c4 + j) : 1.0f;
            if (kind == HC_NORM_RMS_PLUS1) g[4 * k + j] += 1.0f;
            pdw[4 * k + j] = pdb[4 * k + j] = 0;
        }
    }
    const int64_t t0 = blockIdx.x * rows, t1 = t0 + rows < T ? t0 + rows : T;
    /* the next row's loads go out before this row's reductions wait */
    float4 na[NV], nd[NV];
#pragma unroll
    for (int k = 0; k < NV; k++) {
        const int64_t c4 = threadIdx.x + k * (int64_t)blockDim.x;
        na[k] = c4 < C4 && t0 < t1 ? ((const float4 *)(x + t0 * C))[c4] : make_float4(0, 0, 0, 0);
        nd[k] = c4 < C4 && t0 < t1 ? ((const float4 *)(dout + t0 * C))[c4] : make_float4(0, 0, 0, 0);
    }
    for (int64_t t = t0; t < t1; t++) {
        float xv[4 * NV], dv[4 * NV];
        float s = 0;
#pragma unroll
        for (int k = 0; k < NV; k++) {
            const int64_t c4 = threadIdx.x + k * (int64_t)blockDim.x;
            const float4 a = na[k], d = nd[k];
            xv[4 * k] = a.x, xv[4 * k + 1] = a.y, xv[4 * k + 2] = a.z, xv[4 * k + 3] = a.w;
            dv[4 * k] = d.x, dv[4 * k + 1] = d.y, dv[4 * k + 2] = d.z, dv[4 * k + 3] = d.w;
            s += a.x + a.y + a.z + a.w;
            if (c4 < C4 && t + 1 < t1) {
                na[k] = ((const float4 *)(x + (t + 1) * C))[c4];
                nd[k] = ((const float4 *)(dout + (t + 1) * C))[c4];
            }
        }
        const float mean = kind == HC_NORM_LAYER ? hc_block_sum(s, red) / (float)C : 0.0f;
        float ss = 0;
#pragma unroll
        for (int k = 0; k < NV; k++) {
            const bool in = threadIdx.x + k * (int64_t)blockDim.x < C4;
#pragma unroll
            for (int j = 0; j < 4; j++) ss += in ? (xv[4 * k + j] - mean) * (xv[4 * k + j] - mean) : 0.0f;
        }
        const float inv = rsqrtf(hc_block_sum(ss, red) / (float)C + eps);
        float sum_d = 0, sum_dx = 0;
#pragma unroll
        for (int i = 0; i < 4 * NV; i++) {
            const float xhat = (xv[i] - mean) * inv, d = dv[i] * g[i];
            sum_d += d;
            sum_dx += d * xhat;
            pdw[i] += dv[i] * xhat;
            pdb[i] += dv[i];
        }
        if (!dx) continue;
        sum_d = hc_block_sum(sum_d, red);
        sum_dx = hc_block_sum(sum_dx, red);
#pragma unroll
        for (int k = 0; k < NV; k++) {
            const int64_t c4 = threadIdx.x + k * (int64_t)blockDim.x;
            if (c4 >= C4) continue;
            float o[4];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int i = 4 * k + j;
                const float xhat = (xv[i] - mean) * inv, d = dv[i] * g[i];
                float v = d - xhat * sum_dx / (float)C;
                if (kind == HC_NORM_LAYER) v -= sum_d / (float)C;
                o[j] = inv * v;
            }
            float4 *p = (float4 *)(dx + t * C) + c4;
            if (accumulate) {
                const float4 a = *p;
                o[0] += a.x, o[1] += a.y, o[2] += a.z, o[3] += a.w;
            }
            *p = make_float4(o[0], o[1], o[2], o[3]);
        }
    }
#pragma unroll
    for (int k = 0; k < NV; k++) {
        const int64_t c4 = threadIdx.x + k * (int64_t)blockDim.x;
        if (c4 >= C4) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            if (dw && w) atomicAdd(dw + 4 * c4 + j, pdw[4 * k + j]);
            if (db && has_b) atomicAdd(db + 4 * c4 + j, pdb[4 * k + j]);
        }
    }
}

void hc_cuda_norm_backward(hc_backend *be, float *dx, float *dw, float *db, const float *dout, const float *x,
                           const hc_vec *w, const hc_vec *b, hc_norm_kind kind, float eps, int64_t T, int64_t C,
                           bool accumulate) {
    if (T <= 0 || hc_cuda(be)->failed) return;
    hc_cuda_ctx *cx = hc_cuda(be);
    const void *wd = w && w->data ? w->data : NULL;
    const bool has_b = b && b->data;
    const bool aligned = ((uintptr_t)dx | (uintptr_t)dout | (uintptr_t)x) % 16 == 0;
    if (T >= 64 && C % 4 == 0 && C <= 4096 && aligned) {
        int64_t rows = T / (4 * (int64_t)cx->n_sm); /* about four blocks an SM */
        if (rows < 1) rows = 1;
        const unsigned blocks = (unsigned)((T + rows - 1) / rows);
        const hc_dtype wdt = wd ? w->dtype : HC_DTYPE_F32;
        const int nv = (int)((C / 4 + 255) / 256);
#define NB(N)                                                                                                           \
    case N:                                                                                                             \
        norm_backward_rows_kernel<N><<<blocks, 256, 0, cx->stream>>>(dx, dw, db, dout, x, wd, wdt, has_b, kind, eps, T, C, \
                                                                     rows, accumulate);                                 \
        break
        switch (nv) { NB(1); NB(2); NB(3); default: NB(4); }
#undef NB
        HC_CUDA_LAUNCHED(be, "norm_backward");
        return;
    }
    size_t smem = sizeof(float) * (size_t)C * ((dw && wd) + (db && has_b));
    const bool direct = smem > 48 * 1024; /* within a block's default shared memory */
    if (direct) smem = 0;
    /* about four blocks an SM */
    int64_t rows = direct ? 1 : T / (4 * (int64_t)cx->n_sm);
    if (rows < 1) rows = 1;
    if (rows > 32) rows = 32;
    norm_backward_kernel<<<(unsigned)((T + rows - 1) / rows), 256, smem, cx->stream>>>(
        dx, dw, db, dout, x, wd, wd ? w->dtype : HC_DTYPE_F32, has_b, kind, eps, T, C, rows, direct, accumulate);
    HC_CUDA_LAUNCHED(be, "norm_backward");
}

/* ---- rope: the transpose of the rotation ------------------------------------------------------- */

/* A thread per (token, frequency): the angle's sin and cos (in double, as the reference takes
 * them) once, then every head. */
__global__ void rope_backward_kernel(float *dx, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T,
                                     int64_t nh, int64_t D, int64_t half) {
    GRID_STRIDE(i, T * half) {
        const int64_t j = i % half, t = i / half;
        const float angle = (float)pos[t] * inv_freq[j];
        double sd, cd;
        sincos((double)angle, &sd, &cd);
        const float c = (float)cd * attn_factor, s = (float)sd * attn_factor;
        for (int64_t h = 0; h < nh; h++) {
            float *v = dx + (t * nh + h) * D;
            const float a = v[j], b = v[j + half];
            v[j] = a * c + b * s;
            v[j + half] = b * c - a * s;
        }
    }
}

void hc_cuda_rope_backward(hc_backend *be, float *dx, const int32_t *pos, const float *inv_freq, float attn_factor,
                           int64_t T, int64_t nh, int64_t D, int64_t R) {
    if (T <= 0 || R < 2 || hc_cuda(be)->failed) return;
    const int64_t half = R / 2;
    rope_backward_kernel<<<grid_for(T * half), 256, 0, hc_cuda(be)->stream>>>(dx, pos, inv_freq, attn_factor, T, nh, D,
                                                                                half);
    HC_CUDA_LAUNCHED(be, "rope_backward");
}

/* ---- attention ----------------------------------------------------------------------------------
 * With bf16 compute at head dims 64 and 128 the tensor-core kernels of attention_backward.cu
 * take the whole batch. Otherwise, a sequence at a time: S = scale Q K^T and dP = dO V^T go into
 * P and dS [H, T, T] through GEMMs batched over the heads that read the [T, heads, D] rows in
 * place; a row kernel turns them into the probabilities P and the score gradients dS (through
 * the mask, the soft-cap and the scale); dq = dS K, dK = dS^T Q and dV = P^T dO are GEMMs again,
 * and each kv head sums its query heads' dK and dV. */

__device__ __forceinline__ bool key_seen(const int32_t *pos, int64_t t, int64_t j, int64_t window) {
    return pos[j] <= pos[t] && !(window > 0 && pos[j] <= pos[t] - window);
}

/* dst[h, t, :] = src[t, h / group, :]: rows [T, NH, D] to head-major [H, T, D], each of the NH
 * source heads repeated for `group` consecutive heads (group 1: a plain transpose). */
/* Row (t, h): P holds the scaled scores, dS holds dP; both become what their names say. */
__global__ void attention_rows_backward_kernel(float *P, float *dS, const int32_t *pos, int64_t T, int64_t window,
                                               float softcap, float scale) {
    __shared__ float red[32];
    const int64_t t = blockIdx.x, h = blockIdx.y;
    float *prow = P + (h * T + t) * T, *srow = dS + (h * T + t) * T;
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < T; j += blockDim.x) {
        float z = -INFINITY;
        if (key_seen(pos, t, j, window)) {
            z = prow[j];
            if (softcap > 0) z = softcap * tanhf(z / softcap);
        }
        prow[j] = z;
        mx = fmaxf(mx, z);
    }
    mx = hc_block_max(mx, red);
    float sum = 0;
    for (int64_t j = threadIdx.x; j < T; j += blockDim.x) sum += prow[j] == -INFINITY ? 0.0f : expf(prow[j] - mx);
    sum = hc_block_sum(sum, red);
    float dot = 0; /* sum_j P_j dP_j */
    for (int64_t j = threadIdx.x; j < T; j += blockDim.x) {
        const float z = prow[j], p = z == -INFINITY ? 0.0f : expf(z - mx) / sum;
        dot += p * srow[j];
    }
    dot = hc_block_sum(dot, red);
    for (int64_t j = threadIdx.x; j < T; j += blockDim.x) {
        const float z = prow[j], p = z == -INFINITY ? 0.0f : expf(z - mx) / sum;
        float ds = 0.0f;
        if (p != 0.0f) {
            ds = p * (srow[j] - dot);
            if (softcap > 0) ds *= 1.0f - (z / softcap) * (z / softcap);
            ds *= scale;
        }
        prow[j] = p;
        srow[j] = ds;
    }
}

/* One sequence of T rows through the GEMMs above. */
static void attention_backward_seq(hc_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *q,
                                   const float *k, const float *v, const int32_t *pos, int64_t T, int64_t H, int64_t KVH,
                                   int64_t D, float scale, int64_t window, float softcap) {
    hc_cuda_ctx *cx = hc_cuda(be);
    const int64_t TT = T * T, HD = H * D, KD = KVH * D, group = H / KVH;
    float *P = (float *)hc_cuda_scratch(be, &cx->train_scratch, &cx->train_scratch_bytes, sizeof(float) * (size_t)(2 * H * TT));
    if (!P) return;
    float *dS = P + H * TT;
    /* The GEMMs read and write the [T, heads, D] rows in place, column-major: head h of q is
     * D x T at q + h D (ld H D). Query head h = b group + j uses kv head b, so for each j one
     * call batches the kv heads b (strides: q heads group D, kv heads D, scores group T T).
     * S(j, t) = scale sum_d K(d, j) Q(d, t); dP(j, t) = sum_d V(d, j) dO(d, t) */
    for (int64_t j = 0; j < group; j++)
        if (!sgemm(be, CUBLAS_OP_T, CUBLAS_OP_N, T, T, D, scale, k, KD, D, q + j * D, HD, group * D, 0.0f, P + j * TT, T,
                   group * TT, KVH) ||
            !sgemm(be, CUBLAS_OP_T, CUBLAS_OP_N, T, T, D, 1.0f, v, KD, D, dout + j * D, HD, group * D, 0.0f, dS + j * TT, T,
                   group * TT, KVH))
            return;
    attention_rows_backward_kernel<<<dim3((unsigned)T, (unsigned)H), 256, 0, cx->stream>>>(P, dS, pos, T, window, softcap,
                                                                                         scale);
    if (HC_CUDA_LAUNCHED(be, "attention_backward")) return;
    /* dq(d, t) = sum_j K(d, j) dS(j, t); dK(d, j) = sum_t Q(d, t) dS(j, t) and dV(d, j) = sum_t
     * dO(d, t) P(j, t), each kv head summing its query heads j = 0, 1, ... in order (beta 1) */
    for (int64_t j = 0; j < group; j++) {
        const float beta = j ? 1.0f : 0.0f;
        if (!sgemm(be, CUBLAS_OP_N, CUBLAS_OP_N, D, T, T, 1.0f, k, KD, D, dS + j * TT, T, group * TT, 0.0f, dq + j * D, HD,
                   group * D, KVH) ||
            !sgemm(be, CUBLAS_OP_N, CUBLAS_OP_T, D, T, T, 1.0f, q + j * D, HD, group * D, dS + j * TT, T, group * TT, beta, dk,
                   KD, D, KVH) ||
            !sgemm(be, CUBLAS_OP_N, CUBLAS_OP_T, D, T, T, 1.0f, dout + j * D, HD, group * D, P + j * TT, T, group * TT, beta,
                   dv, KD, D, KVH))
            return;
    }
    HC_CUDA_LAUNCHED(be, "attention_backward");
}

void hc_cuda_attention_backward(hc_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                                const float *reserve, const float *q, const float *k, const float *v, const int32_t *pos,
                                int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale, int64_t window,
                                float softcap, float *scratch) {
    (void)scratch; /* the GPU keeps its own */
    if (B <= 0 || T <= 0 || hc_cuda(be)->failed) return;
    if (hc_cuda_flash_attention_backward(be, dq, dk, dv, dout, out, reserve, q, k, v, B, T, H, KVH, D, scale, window, softcap))
        return;
    for (int64_t b = 0; b < B && !hc_cuda(be)->failed; b++) {
        const int64_t oq = b * T * H * D, ok = b * T * KVH * D;
        attention_backward_seq(be, dq + oq, dk + ok, dv + ok, dout + oq, q + oq, k + ok, v + ok, pos, T, H, KVH, D, scale,
                               window, softcap);
    }
}

/* ---- elementwise ---------------------------------------------------------------------------------- */

__global__ void glu_backward_kernel(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                                    hc_activation act, int64_t n) {
    GRID_STRIDE(i, n) {
        float a, da;
        hc_act_grad(gate[i], act, &a, &da);
        const float g = dout[i];
        if (dup) dup[i] = g * a;
        if (dgate) dgate[i] = g * (up ? up[i] : 1.0f) * da;
    }
}

void hc_cuda_glu_backward(hc_backend *be, float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                          hc_activation act, int64_t n) {
    if (n <= 0 || hc_cuda(be)->failed) return;
    glu_backward_kernel<<<grid_for(n), 256, 0, hc_cuda(be)->stream>>>(dgate, dup, dout, gate, up, act, n);
    HC_CUDA_LAUNCHED(be, "glu_backward");
}

__global__ void softcap_backward_kernel(float *dx, const float *dy, const float *y, float cap, int64_t n) {
    GRID_STRIDE(i, n) {
        const float t = y[i] / cap;
        dx[i] = dy[i] * (1.0f - t * t);
    }
}

void hc_cuda_softcap_backward(hc_backend *be, float *dx, const float *dy, const float *y, float cap, int64_t n) {
    if (n <= 0 || hc_cuda(be)->failed) return;
    softcap_backward_kernel<<<grid_for(n), 256, 0, hc_cuda(be)->stream>>>(dx, dy, y, cap, n);
    HC_CUDA_LAUNCHED(be, "softcap_backward");
}

/* ---- the loss: a block per row ------------------------------------------------------------------ */

/* LT: the logits' type (f32, or 16-bit from the fused LM head); dlogits has it too and may be
 * the logits themselves (each element is read before its own thread writes it; lt[y] is read
 * before the first barrier). */
__device__ __forceinline__ void load8(float *o, const float *p) {
    const float4 a = ((const float4 *)p)[0], b = ((const float4 *)p)[1];
    o[0] = a.x, o[1] = a.y, o[2] = a.z, o[3] = a.w, o[4] = b.x, o[5] = b.y, o[6] = b.z, o[7] = b.w;
}
template <typename HT> __device__ __forceinline__ void load8(float *o, const HT *p) {
    const uint4 u = *(const uint4 *)p;
    const HT *h = (const HT *)&u;
#pragma unroll
    for (int j = 0; j < 8; j++) o[j] = (float)h[j];
}
__device__ __forceinline__ void store8(float *p, const float *v) {
    ((float4 *)p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    ((float4 *)p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
template <typename HT> __device__ __forceinline__ void store8(HT *p, const float *v) {
    HT h[8];
#pragma unroll
    for (int j = 0; j < 8; j++) h[j] = narrow<HT>(v[j]);
    *(uint4 *)p = *(const uint4 *)h;
}

/* A block of 1024 threads per SM walks rows t = blockIdx.x, + gridDim.x, ...: a row's second
 * read (the gradient) then finds it in L2, since the rows in flight at once (one an SM, 256 KB
 * each at a 128k bf16 vocabulary) fit there; with a block per row the second read went to HBM. */
template <typename LT>
__global__ void __launch_bounds__(1024)
cross_entropy_kernel(LT *dlogits, float *loss, float *hit, const LT *logits, const int32_t *targets, int64_t T, int64_t V,
                     double scale, bool vec) {
    __shared__ float red[32];
    __shared__ double redd[32];
    __shared__ int64_t redi[32];
    for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
        const LT *lt = logits + t * V;
        LT *dl = dlogits ? dlogits + t * V : NULL;
        const int32_t y = targets[t];
        const float ly = y >= 0 && threadIdx.x == 0 ? (float)lt[y] : 0.0f;
        if (y < 0) {
            for (int64_t v = threadIdx.x; dl && v < V; v += blockDim.x) dl[v] = narrow<LT>(0.0f);
            if (threadIdx.x == 0) loss[t] = hit[t] = 0;
            continue;
        }
        /* One read for the max, its first index and the sum of exps: each thread keeps its own
         * max and rescales its sum when the max grows (exps in f32, each within an ulp; sums in
         * double), then the block rescales every thread's sum to the row's max. */
        float mx = -INFINITY;
        int64_t best = V;
        double z = 0;
        /* eight at a time (16-byte loads) while the row allows, so enough bytes are in flight; a
         * thread's elements still come in increasing order, so its first maximum wins */
        const int64_t V8 = vec ? V / 8 : 0;
#pragma unroll 2
        for (int64_t i = threadIdx.x; i < V8; i += blockDim.x) {
            float l[8];
            load8(l, lt + 8 * i);
            float m8 = l[0];
            int j8 = 0;
#pragma unroll
            for (int j = 1; j < 8; j++)
                if (l[j] > m8) m8 = l[j], j8 = j;
            if (m8 > mx) {
                z = mx == -INFINITY ? 0 : z * (double)expf(mx - m8);
                mx = m8, best = 8 * i + j8;
            }
            float s = 0;
#pragma unroll
            for (int j = 0; j < 8; j++) s += expf(l[j] - mx);
            z += (double)s;
        }
        for (int64_t v = 8 * V8 + threadIdx.x; v < V; v += blockDim.x) {
            const float l = (float)lt[v];
            if (l > mx) {
                z = mx == -INFINITY ? 0 : z * (double)expf(mx - l);
                mx = l, best = v;
            }
            z += (double)expf(l - mx);
        }
        const float mine = mx;
        hc_block_argmax(&mx, &best, red, redi);
        z = hc_block_sum_double(mine == -INFINITY ? 0 : z * (double)expf(mine - mx), redd);
        if (threadIdx.x == 0) {
            hit[t] = best == y;
            loss[t] = (float)(log(z) + mx - ly);
        }
        const float pscale = (float)(scale / z);
#pragma unroll 2
        for (int64_t i = threadIdx.x; dl && i < V8; i += blockDim.x) {
            float l[8];
            load8(l, lt + 8 * i);
#pragma unroll
            for (int j = 0; j < 8; j++) l[j] = expf(l[j] - mx) * pscale - (8 * i + j == y ? (float)scale : 0.0f);
            store8(dl + 8 * i, l);
        }
        for (int64_t v = 8 * V8 + threadIdx.x; dl && v < V; v += blockDim.x)
            dl[v] = narrow<LT>(expf((float)lt[v] - mx) * pscale - (v == y ? (float)scale : 0.0f));
    }
}

static unsigned ce_blocks(hc_backend *be, int64_t T) {
    const int64_t n = hc_cuda(be)->n_sm > 0 ? hc_cuda(be)->n_sm : 1;
    return (unsigned)(T < n ? T : n);
}

void hc_cuda_cross_entropy16(hc_backend *be, void *dlogits, float *loss, float *hit, const void *logits,
                             const int32_t *targets, int64_t T, int64_t V, double scale) {
    if (T <= 0 || hc_cuda(be)->failed) return;
    const bool vec = V % 8 == 0 && ((uintptr_t)logits | (uintptr_t)dlogits) % 16 == 0; /* every row on 16 bytes */
    if (hc_cuda(be)->compute == HC_DTYPE_BF16)
        cross_entropy_kernel<__nv_bfloat16><<<ce_blocks(be, T), 1024, 0, hc_cuda(be)->stream>>>(
            (__nv_bfloat16 *)dlogits, loss, hit, (const __nv_bfloat16 *)logits, targets, T, V, scale, vec);
    else
        cross_entropy_kernel<__half><<<ce_blocks(be, T), 1024, 0, hc_cuda(be)->stream>>>(
            (__half *)dlogits, loss, hit, (const __half *)logits, targets, T, V, scale, vec);
    HC_CUDA_LAUNCHED(be, "cross_entropy");
}

void hc_cuda_cross_entropy(hc_backend *be, float *dlogits, float *loss, float *hit, const float *logits,
                           const int32_t *targets, int64_t T, int64_t V, double scale) {
    if (T <= 0 || hc_cuda(be)->failed) return;
    const bool vec = V % 4 == 0 && ((uintptr_t)logits | (uintptr_t)dlogits) % 16 == 0; /* every row on 16 bytes */
    cross_entropy_kernel<float><<<ce_blocks(be, T), 1024, 0, hc_cuda(be)->stream>>>(dlogits, loss, hit, logits, targets, T, V,
                                                                                    scale, vec);
    HC_CUDA_LAUNCHED(be, "cross_entropy");
}

void hc_cuda_copy(hc_backend *be, float *out, const float *x, int64_t n) {
    if (n <= 0 || hc_cuda(be)->failed) return;
    hc_cuda_fail(be, cudaMemcpyAsync(out, x, sizeof(float) * (size_t)n, cudaMemcpyDeviceToDevice, hc_cuda(be)->stream),
                 "copy");
}

/* ---- the optimizer ---------------------------------------------------------------------------- */

__global__ void sum_squares_kernel(double *acc, const float *x, int64_t n) {
    __shared__ double red[32];
    double s = 0;
    const int64_t n4 = (uintptr_t)x % 16 == 0 ? n / 4 : 0; /* four at a time: 16-byte loads */
    GRID_STRIDE(i, n4) {
        const float4 v = ((const float4 *)x)[i];
        s += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
    }
    for (int64_t i = 4 * n4 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        s += (double)x[i] * x[i];
    s = hc_block_sum_double(s, red);
    if (threadIdx.x == 0) atomicAdd(acc, s);
}

void hc_cuda_sum_squares(hc_backend *be, double *acc, const float *x, int64_t n) {
    if (n <= 0 || hc_cuda(be)->failed) return;
    const unsigned blocks = grid_for(n) < 1024u ? grid_for(n) : 1024u;
    sum_squares_kernel<<<blocks, 256, 0, hc_cuda(be)->stream>>>(acc, x, n);
    HC_CUDA_LAUNCHED(be, "sum_squares");
}

/* One element's step (w, m1, m2 in place) and the new weight. */
__device__ __forceinline__ float adamw_one(float *w, float *m1, float *m2, float g, float g_scale, float b1, float b2,
                                           float step_size, float bc2_sqrt, float decay, float eps) {
    const float gi = g * g_scale;
    float wi = *w * decay, a = *m1, b = *m2;
    a += (gi - a) * (1.0f - b1);
    b = b * b2 + (1.0f - b2) * gi * gi;
    wi -= step_size * a / (sqrtf(b) / bc2_sqrt + eps);
    *w = wi, *m1 = a, *m2 = b;
    return wi;
}

__device__ __forceinline__ void adamw_store(void *out, hc_dtype out_dtype, int64_t i, float wi) {
    if (out_dtype == HC_DTYPE_F32) ((float *)out)[i] = wi;
    else if (out_dtype == HC_DTYPE_BF16) ((__nv_bfloat16 *)out)[i] = __float2bfloat16_rn(wi);
    else ((__half *)out)[i] = __float2half_rn(wi);
}

/* Bandwidth-bound (about 30 bytes a parameter): four elements a thread with 16-byte loads where
 * every buffer allows it (`vec`), one at a time otherwise. */
__global__ void adamw_kernel(float *w, float *m1, float *m2, const float *g, float g_scale, int64_t n, float b1, float b2,
                             float step_size, float bc2_sqrt, float decay, float eps, void *out, hc_dtype out_dtype,
                             bool vec) {
    const int64_t n4 = vec ? n / 4 : 0;
    GRID_STRIDE(i, n4) {
        float4 wv = ((float4 *)w)[i], av = ((float4 *)m1)[i], bv = ((float4 *)m2)[i];
        const float4 gv = ((const float4 *)g)[i];
        float *wp = &wv.x, *ap = &av.x, *bp = &bv.x;
        const float *gp = &gv.x;
        float o[4];
#pragma unroll
        for (int j = 0; j < 4; j++)
            o[j] = adamw_one(&wp[j], &ap[j], &bp[j], gp[j], g_scale, b1, b2, step_size, bc2_sqrt, decay, eps);
        ((float4 *)w)[i] = wv, ((float4 *)m1)[i] = av, ((float4 *)m2)[i] = bv;
        if (!out) continue;
        if (out_dtype == HC_DTYPE_F32) {
            ((float4 *)out)[i] = make_float4(o[0], o[1], o[2], o[3]);
        } else if (out_dtype == HC_DTYPE_BF16) {
            __nv_bfloat16 h[4] = {__float2bfloat16_rn(o[0]), __float2bfloat16_rn(o[1]), __float2bfloat16_rn(o[2]),
                                  __float2bfloat16_rn(o[3])};
            ((uint2 *)out)[i] = *(const uint2 *)h;
        } else {
            for (int j = 0; j < 4; j++) adamw_store(out, out_dtype, 4 * i + j, o[j]);
        }
    }
    for (int64_t i = 4 * n4 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float wi = adamw_one(&w[i], &m1[i], &m2[i], g[i], g_scale, b1, b2, step_size, bc2_sqrt, decay, eps);
        if (out) adamw_store(out, out_dtype, i, wi);
    }
}

void hc_cuda_adamw(hc_backend *be, float *w, float *m1, float *m2, const float *g, float g_scale, int64_t n,
                   const hc_adamw_params *p, int64_t step, void *out, hc_dtype out_dtype) {
    if (n <= 0 || hc_cuda(be)->failed) return;
    /* the step's constants as the CPU computes them (powf in f32 on the host) */
    const float lr = (float)p->lr, b1 = (float)p->beta1, b2 = (float)p->beta2;
    const float bc1 = 1.0f - powf(b1, (float)step), bc2_sqrt = sqrtf(1.0f - powf(b2, (float)step));
    const bool vec = ((uintptr_t)w | (uintptr_t)m1 | (uintptr_t)m2 | (uintptr_t)g) % 16 == 0 &&
                     (!out || (uintptr_t)out % (4 * hc_dtype_size(out_dtype)) == 0);
    adamw_kernel<<<grid_for(vec ? (n + 3) / 4 : n), 256, 0, hc_cuda(be)->stream>>>(
        w, m1, m2, g, g_scale, n, b1, b2, lr / bc1, bc2_sqrt, 1.0f - lr * (float)p->weight_decay, (float)p->eps, out,
        out_dtype, vec);
    HC_CUDA_LAUNCHED(be, "adamw");
}

/* ---- greedy decoding ------------------------------------------------------------------------------ */

/* A row of 128k logits is too long for one block (one SM streams about 20 us of it), so blocks
 * of 256 threads take chunks of ARGMAX_CHUNK and fold their best into the row's key with one
 * 64-bit atomicMax: the value's bits made to order as unsigned (so the largest float is the
 * largest key), then the index inverted (so ties go to the first index, as torch.argmax and
 * the CPU). NaNs are skipped; a row of only NaNs gives 0, as the CPU does. The row's last block
 * (by a count) writes the id and zeroes the key and the count for the next call. */
#define ARGMAX_CHUNK 4096

__device__ __forceinline__ unsigned long long argmax_key(float v, int64_t i) {
    if (v == 0.0f) v = 0.0f; /* -0 ties with +0: the first index wins */
    const uint32_t u = __float_as_uint(v), ord = u & 0x80000000u ? ~u : u | 0x80000000u;
    return (unsigned long long)ord << 32 | (0xffffffffu - (uint32_t)i);
}

__global__ void argmax_rows_kernel(int32_t *out, unsigned long long *keys, unsigned *done, const float *x, int64_t V) {
    __shared__ unsigned long long red[32];
    hc_pdl_wait();
    hc_pdl_trigger();
    const int64_t t = blockIdx.y, lo = (int64_t)blockIdx.x * ARGMAX_CHUNK, hi = min(lo + ARGMAX_CHUNK, V);
    const float *r = x + t * V;
    unsigned long long best = 0;
    for (int64_t v = lo + threadIdx.x; v < hi; v += blockDim.x)
        if (!isnan(r[v])) best = max(best, argmax_key(r[v], v));
    for (int o = 16; o > 0; o >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = best;
    __syncthreads();
    if (threadIdx.x != 0) return;
    for (int w = 1; w < (int)(blockDim.x >> 5); w++) best = max(best, red[w]);
    atomicMax(&keys[t], best);
    __threadfence(); /* the key before the count */
    if (atomicAdd(&done[t], 1u) == gridDim.x - 1) {
        const unsigned long long k = atomicExch(&keys[t], 0ull);
        done[t] = 0;
        out[t] = k ? (int32_t)(0xffffffffu - (uint32_t)k) : 0;
    }
}

void hc_cuda_argmax_rows(hc_backend *be, int32_t *out, const float *x, int64_t T, int64_t V) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (T <= 0 || cx->failed) return;
    const size_t had = cx->argmax_state_bytes, bytes = (size_t)T * (sizeof(unsigned long long) + sizeof(unsigned));
    char *state = (char *)hc_cuda_scratch(be, &cx->argmax_state, &cx->argmax_state_bytes, bytes);
    if (!state) return;
    if (cx->argmax_state_bytes != had && hc_cuda_fail(be, cudaMemsetAsync(state, 0, cx->argmax_state_bytes, cx->stream), "argmax"))
        return;
    const dim3 grid((unsigned)((V + ARGMAX_CHUNK - 1) / ARGMAX_CHUNK), (unsigned)T);
    hc_launch(cx, T <= HC_PDL_MAX_ROWS, argmax_rows_kernel, grid, dim3(256), 0, out, (unsigned long long *)state,
              (unsigned *)(state + (size_t)T * sizeof(unsigned long long)), x, V);
    HC_CUDA_LAUNCHED(be, "argmax_rows");
}
