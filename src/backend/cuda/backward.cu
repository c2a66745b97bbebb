/* Backward of the ops on the GPU, for training: what cpu/ops_backward.c computes, in f32.
 * Activation gradients are written (=); parameter gradients accumulate (+=), as backend.h
 * states. Weight gradients are f32 GEMMs in cuBLAS (no TF32: the default math mode), so they
 * match the CPU reference to f32 rounding; reductions over rows that many blocks share go
 * through atomicAdd (their order, and so the last bits, may vary between runs).
 *
 * Attention's backward materialises the probabilities P and their gradient dS, [H, T, T]
 * each, then takes dq = dS K, dk = dS^T Q and dv = P^T dO as per-head GEMMs: simple and exact,
 * with memory quadratic in T (a fused flash-attention backward is the faster next step). */
#include "backend/cuda/common.cuh"

#define GRID_STRIDE(i, n) for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

static unsigned grid_for(int64_t n) {
    unsigned b = hc_blocks(n, 256);
    return b < 65535u ? (b ? b : 1) : 65535u;
}

/* The sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it. */
static __device__ float block_sum(float v, float *shared32) {
    v = hc_warp_sum(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads(); /* shared32 may still be read from the previous call */
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    v = lane < nw ? shared32[lane] : 0.0f;
    return hc_warp_sum(v);
}

static __device__ float block_max(float v, float *shared32) {
    v = hc_warp_max(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    v = lane < nw ? shared32[lane] : -INFINITY;
    return hc_warp_max(v);
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
    if (dx) { /* a forward matmul over W's transposed view: [T, N] x [N, K] */
        hc_mat wt = *w;
        wt.rows = K, wt.cols = N, wt.transposed = !w->transposed;
        hc_cuda_matmul(be, dx, dout, &wt, NULL, T);
    }
    const float one = 1.0f;
    if (dw) {
        /* Column-major view of the row-major gradient: [N, K] with ld is K x N (ld); GPT-2's
         * stored [K, N] is N x K (ld). x is K x T (ld K), dout N x T (ld N). */
        cublasStatus_t st = w->transposed
                                ? cublasSgemm(cx->blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)N, (int)K, (int)T, &one, dout, (int)N,
                                              x, (int)K, &one, dw, (int)w->ld)
                                : cublasSgemm(cx->blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)K, (int)N, (int)T, &one, x, (int)K,
                                              dout, (int)N, &one, dw, (int)w->ld);
        if (st != CUBLAS_STATUS_SUCCESS) {
            hc_cuda_fail(be, cudaErrorUnknown, "cublasSgemm (matmul_backward dW)");
            return;
        }
    }
    if (db) bias_backward_kernel<<<grid_for(N), 256, 0, cx->stream>>>(db, dout, T, N);
    HC_CUDA_LAUNCHED(be, "matmul_backward");
}

/* ---- norms: a block per row -------------------------------------------------------------------- */

__global__ void norm_backward_kernel(float *dx, float *dw, float *db, const float *dout, const float *x, const void *w,
                                     hc_dtype wdt, bool has_b, hc_norm_kind kind, float eps, int64_t C) {
    __shared__ float red[32];
    const int64_t t = blockIdx.x;
    const float *xt = x + t * C, *gt = dout + t * C;
    float mean = 0;
    if (kind == HC_NORM_LAYER) {
        float s = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += xt[c];
        mean = block_sum(s, red) / (float)C;
    }
    float ss = 0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += (xt[c] - mean) * (xt[c] - mean);
    const float inv = rsqrtf(block_sum(ss, red) / (float)C + eps);
    float sum_d = 0, sum_dx = 0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float g = w ? hc_ld(w, wdt, c) : 1.0f;
        if (kind == HC_NORM_RMS_PLUS1) g += 1.0f;
        const float xhat = (xt[c] - mean) * inv, d = gt[c] * g;
        sum_d += d;
        sum_dx += d * xhat;
        if (dw && w) atomicAdd(dw + c, gt[c] * xhat);
        if (db && has_b) atomicAdd(db + c, gt[c]);
    }
    if (!dx) return;
    sum_d = block_sum(sum_d, red);
    sum_dx = block_sum(sum_dx, red);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float g = w ? hc_ld(w, wdt, c) : 1.0f;
        if (kind == HC_NORM_RMS_PLUS1) g += 1.0f;
        const float xhat = (xt[c] - mean) * inv, d = gt[c] * g;
        float v = d - xhat * sum_dx / (float)C;
        if (kind == HC_NORM_LAYER) v -= sum_d / (float)C;
        dx[t * C + c] = inv * v;
    }
}

void hc_cuda_norm_backward(hc_backend *be, float *dx, float *dw, float *db, const float *dout, const float *x,
                           const hc_vec *w, const hc_vec *b, hc_norm_kind kind, float eps, int64_t T, int64_t C) {
    if (T <= 0 || hc_cuda(be)->failed) return;
    const void *wd = w && w->data ? w->data : NULL;
    norm_backward_kernel<<<(unsigned)T, 256, 0, hc_cuda(be)->stream>>>(dx, dw, db, dout, x, wd, wd ? w->dtype : HC_DTYPE_F32,
                                                                      b && b->data, kind, eps, C);
    HC_CUDA_LAUNCHED(be, "norm_backward");
}

/* ---- rope: the transpose of the rotation ------------------------------------------------------- */

__global__ void rope_backward_kernel(float *dx, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T,
                                     int64_t nh, int64_t D, int64_t half) {
    GRID_STRIDE(i, T * half * nh) {
        const int64_t h = i % nh, j = (i / nh) % half, t = i / (nh * half);
        const float angle = (float)pos[t] * inv_freq[j];
        double sd, cd;
        sincos((double)angle, &sd, &cd);
        const float c = (float)cd * attn_factor, s = (float)sd * attn_factor;
        float *v = dx + (t * nh + h) * D;
        const float a = v[j], b = v[j + half];
        v[j] = a * c + b * s;
        v[j + half] = b * c - a * s;
    }
}

void hc_cuda_rope_backward(hc_backend *be, float *dx, const int32_t *pos, const float *inv_freq, float attn_factor,
                           int64_t T, int64_t nh, int64_t D, int64_t R) {
    if (T <= 0 || R < 2 || hc_cuda(be)->failed) return;
    const int64_t half = R / 2;
    rope_backward_kernel<<<grid_for(T * half * nh), 256, 0, hc_cuda(be)->stream>>>(dx, pos, inv_freq, attn_factor, T, nh,
                                                                                     D, half);
    HC_CUDA_LAUNCHED(be, "rope_backward");
}

/* ---- attention ----------------------------------------------------------------------------------
 * One block per (query t, head h): the row's probabilities P[h, t, :] and score gradients
 * dS[h, t, :] (already through the soft-cap and the scale), zero where the mask hides a key. */

__device__ __forceinline__ bool key_seen(const int32_t *pos, int64_t t, int64_t j, int64_t window) {
    return pos[j] <= pos[t] && !(window > 0 && pos[j] <= pos[t] - window);
}

__device__ __forceinline__ float row_dot(const float *a, const float *b, int64_t D) {
    float s = 0;
    for (int64_t d = 0; d < D; d++) s += a[d] * b[d];
    return s;
}

__global__ void attention_probs_kernel(float *P, float *dS, const float *dout, const float *q, const float *k, const float *v,
                                       const int32_t *pos, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale,
                                       int64_t window, float softcap) {
    __shared__ float red[32];
    extern __shared__ float qg[]; /* [2D]: this row's query and output gradient */
    const int64_t t = blockIdx.x, h = blockIdx.y, kvh = h / (H / KVH);
    const float *qh = q + (t * H + h) * D, *go = dout + (t * H + h) * D;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) qg[d] = qh[d], qg[D + d] = go[d];
    __syncthreads();
    float *prow = P + (h * T + t) * T, *srow = dS + (h * T + t) * T;
    /* the capped, scaled scores, and their max */
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < T; j += blockDim.x) {
        float z = -INFINITY;
        if (key_seen(pos, t, j, window)) {
            z = row_dot(qg, k + (j * KVH + kvh) * D, D) * scale;
            if (softcap > 0) z = softcap * tanhf(z / softcap);
        }
        prow[j] = z;
        mx = fmaxf(mx, z);
    }
    mx = block_max(mx, red);
    float sum = 0;
    for (int64_t j = threadIdx.x; j < T; j += blockDim.x) sum += prow[j] == -INFINITY ? 0.0f : expf(prow[j] - mx);
    sum = block_sum(sum, red);
    /* P, dP = dO . v_j, and sum_j P_j dP_j */
    float dot = 0;
    for (int64_t j = threadIdx.x; j < T; j += blockDim.x) {
        const float z = prow[j];
        const float p = z == -INFINITY ? 0.0f : expf(z - mx) / sum;
        const float dp = p == 0.0f ? 0.0f : row_dot(qg + D, v + (j * KVH + kvh) * D, D);
        /* keep the cap's derivative with dP: 1 - (z / cap)^2 */
        const float fac = softcap > 0 && p != 0.0f ? 1.0f - (z / softcap) * (z / softcap) : 1.0f;
        prow[j] = p;
        srow[j] = dp * fac;
        dot += p * dp;
    }
    dot = block_sum(dot, red);
    for (int64_t j = threadIdx.x; j < T; j += blockDim.x) {
        const float p = prow[j];
        if (p == 0.0f) {
            srow[j] = 0.0f;
            continue;
        }
        /* srow holds dP * fac; dS = P * (dP - dot) * fac * scale */
        const float fac_dp = srow[j];
        float fac = 1.0f;
        if (softcap > 0) { /* the factor again, from the score recomputed */
            const float z = softcap * tanhf(row_dot(qg, k + (j * KVH + kvh) * D, D) * scale / softcap);
            fac = 1.0f - (z / softcap) * (z / softcap);
        }
        srow[j] = p * (fac_dp - dot * fac) * scale;
    }
}

void hc_cuda_attention_backward(hc_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *q,
                                const float *k, const float *v, const int32_t *pos, int64_t T, int64_t H, int64_t KVH,
                                int64_t D, float scale, int64_t window, float softcap, float *scratch) {
    (void)scratch; /* the GPU keeps its own [2, H, T, T] */
    hc_cuda_ctx *cx = hc_cuda(be);
    if (T <= 0 || cx->failed) return;
    float *P = (float *)hc_cuda_scratch(be, &cx->train_scratch, &cx->train_scratch_bytes,
                                        2 * sizeof(float) * (size_t)(H * T * T));
    if (!P) return;
    float *dS = P + H * T * T;
    const dim3 grid((unsigned)T, (unsigned)H);
    attention_probs_kernel<<<grid, 128, 2 * sizeof(float) * (size_t)D, cx->stream>>>(P, dS, dout, q, k, v, pos, T, H, KVH, D,
                                                                                      scale, window, softcap);
    if (HC_CUDA_LAUNCHED(be, "attention_backward")) return;
    /* Per head, column-major: a row-major [T, D] slice with row stride s is D x T with ld s;
     * P and dS rows [T, T] are T x T with ld T, element (j, t) = row t, key j. */
    const int64_t group = H / KVH;
    const float one = 1.0f, zero = 0.0f;
    for (int64_t h = 0; h < H; h++) {
        const int64_t g = h / group;
        const float *Ph = P + h * T * T, *dSh = dS + h * T * T;
        const float beta = h % group == 0 ? zero : one; /* the group's first head writes, the rest add */
        cublasStatus_t st = cublasSgemm(cx->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)D, (int)T, (int)T, &one, k + g * D,
                                        (int)(KVH * D), dSh, (int)T, &zero, dq + h * D, (int)(H * D));
        if (st == CUBLAS_STATUS_SUCCESS)
            st = cublasSgemm(cx->blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)D, (int)T, (int)T, &one, q + h * D, (int)(H * D), dSh,
                             (int)T, &beta, dk + g * D, (int)(KVH * D));
        if (st == CUBLAS_STATUS_SUCCESS)
            st = cublasSgemm(cx->blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)D, (int)T, (int)T, &one, dout + h * D, (int)(H * D), Ph,
                             (int)T, &beta, dv + g * D, (int)(KVH * D));
        if (st != CUBLAS_STATUS_SUCCESS) {
            hc_cuda_fail(be, cudaErrorUnknown, "cublasSgemm (attention_backward)");
            return;
        }
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
