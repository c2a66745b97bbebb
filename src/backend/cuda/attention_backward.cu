/* Attention's backward on the tensor cores (bf16 compute), FlashAttention-2's way: nothing of
 * size [H, T, T] is written. Each row's log-sum-exp L comes from the forward (its reserve), a
 * first pass takes delta = rowsum(dO * O); then, tile by tile, P = exp(S - L) is recomputed
 * from S = scale Q K^T, dP = dO V^T, and dS = P (dP - delta) (through the soft-cap and the
 * scale) feeds three products:
 *   - the key kernel: a block owns 64 keys of one query head and walks the query blocks that
 *     see them, keeping dV += P^T dO and dK += dS^T Q in registers;
 *   - the query kernel: a block owns 64 queries of one head and walks their keys, keeping
 *     dQ += dS K.
 * Each output element has one writer, so the bits do not depend on scheduling. With GQA a key
 * block walks every query head of its kv head in turn, summing into the same registers (a
 * per-query-head dK and dV and a kernel summing each group cost 0.55 ms of a 1B training step).
 * Operands (Q, K, V, dO) and the P / dS fed to the products are bf16, sums f32, as the
 * forward. blockIdx.z is the sequence: a training step's B sequences of T rows go in one launch,
 * each its own whole context in order (row j at position j).
 * mma.sync m16n8k16 fragments as in attention.cu: g = lane / 4, tq = lane % 4; C holds rows
 * (g, g + 8) and columns (2 tq, 2 tq + 1) of each 16 x 8 tile. */
#include "backend/cuda/common.cuh"

#define FB_ROWS 64 /* the rows a block owns (keys or queries), 16 per warp */
#define FB_THREADS 128

/* q16, do16 [rows, D] = q, dout rounded to bf16; delta[row] = dout[row] . out[row]. A warp a row. */
__global__ void flash_bwd_prep_kernel(__nv_bfloat16 *q16, __nv_bfloat16 *do16, float *delta, const float *q,
                                      const float *dout, const float *out, int64_t rows, int D) {
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    float acc = 0.0f;
    for (int d = 2 * lane; d < D; d += 64) {
        const size_t e = (size_t)row * D + d;
        const float2 g = *(const float2 *)(dout + e), o = *(const float2 *)(out + e), x = *(const float2 *)(q + e);
        acc += g.x * o.x + g.y * o.y;
        *(__nv_bfloat162 *)(q16 + e) = __floats2bfloat162_rn(x.x, x.y);
        *(__nv_bfloat162 *)(do16 + e) = __floats2bfloat162_rn(g.x, g.y);
    }
    acc = hc_warp_sum(acc);
    if (lane == 0) delta[row] = acc;
}

/* Copies rows [r0, r0 + n) of a [T, heads, D] bf16 tensor (head h) into a [n][D + 8] tile with
 * cp.async; rows past T are zeros (never stale values: 0 * NaN would poison the products). */
template <int D>
__device__ __forceinline__ void fb_load_rows(__nv_bfloat16 *tile, const __nv_bfloat16 *src, int r0, int n, int T,
                                             int heads, int h) {
    constexpr int LDH = D + 8;
    for (int i = threadIdx.x; i < n * (D / 8); i += FB_THREADS) {
        const int r = i / (D / 8), d = (i % (D / 8)) * 8;
        if (r0 + r < T) cp_async16(tile + r * LDH + d, src + ((size_t)(r0 + r) * heads + h) * D + d);
        else *(uint4 *)(tile + r * LDH + d) = make_uint4(0, 0, 0, 0);
    }
}

/* acc[16 x 8 BN] = A (16 rows of a [.][LDH] tile at `a`) times B^T, B the [BN][LDH] tile at b. */
template <int D, int BN>
__device__ __forceinline__ void fb_mma_abt(float (*acc)[4], const __nv_bfloat16 *a, const __nv_bfloat16 *b, int lane) {
    constexpr int LDH = D + 8;
#pragma unroll
    for (int j = 0; j < BN / 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
    for (int k = 0; k < D / 16; k += 2) {
        uint32_t a0[4], a1[4];
        hc_ldsm_x4(a0, a + (lane & 15) * LDH + k * 16 + (lane >> 4) * 8);
        hc_ldsm_x4(a1, a + (lane & 15) * LDH + k * 16 + 16 + (lane >> 4) * 8);
#pragma unroll
        for (int j = 0; j < BN / 8; j++) {
            uint32_t bf[4];
            const int mi = lane >> 3;
            hc_ldsm_x4(bf, b + (8 * j + (lane & 7)) * LDH + k * 16 + (mi & 1) * 8 + (mi >> 1) * 16);
            mma_bf16(acc[j], a0, bf[0], bf[1]);
            mma_bf16(acc[j], a1, bf[2], bf[3]);
        }
    }
}

/* acc[16 x D] += X (16 x BN, C fragments x, rounded to bf16) times Y, the [BN][LDH] tile at y. */
template <int D, int BN>
__device__ __forceinline__ void fb_mma_xy(float (*acc)[4], const float (*x)[4], const __nv_bfloat16 *y, int lane) {
    constexpr int LDH = D + 8;
#pragma unroll
    for (int k = 0; k < BN / 16; k++) {
        const uint32_t a[4] = {pack_bf16(x[2 * k][0], x[2 * k][1]), pack_bf16(x[2 * k][2], x[2 * k][3]),
                               pack_bf16(x[2 * k + 1][0], x[2 * k + 1][1]), pack_bf16(x[2 * k + 1][2], x[2 * k + 1][3])};
#pragma unroll
        for (int n = 0; n < D / 8; n += 2) {
            uint32_t bf[4];
            hc_ldsm_x4_trans(bf, y + (k * 16 + (lane & 15)) * LDH + (n + (lane >> 4)) * 8);
            mma_bf16(acc[n], a, bf[0], bf[1]);
            mma_bf16(acc[n + 1], a, bf[2], bf[3]);
        }
    }
}

/* P and dS of one score element (s: the raw Q.K; dp: dO.V; row L and delta), in place. */
__device__ __forceinline__ void fb_grad(float &s, float &dp, bool seen, float L, float delta, float scale, float softcap) {
    float x = s * scale;
    if (softcap > 0) x = softcap * tanhf(x / softcap);
    const float p = seen ? __expf(x - L) : 0.0f;
    float ds = p * (dp - delta);
    if (softcap > 0) ds *= 1.0f - (x / softcap) * (x / softcap);
    s = p;
    dp = ds * scale;
}

__device__ __forceinline__ bool fb_seen(int t, int j, int T, int window) {
    return t < T && j <= t && !(window > 0 && j <= t - window);
}

/* Keys kb..kb+63 of kv head kvh (block (kb / 64, kvh)) for each of its query heads in turn,
 * summed in the same registers; warp w owns keys kb + 16 w... BN queries a step,
 * double-buffered. dk, dv: [T, KVH, D]. */
template <int D, int BN>
__global__ void __launch_bounds__(FB_THREADS)
flash_bwd_dkv_kernel(float *dk, float *dv, const __nv_bfloat16 *q16, const __nv_bfloat16 *do16,
                     const __nv_bfloat16 *k16, const __nv_bfloat16 *v16, const float *lse, const float *delta, int T,
                     int H, int KVH, float scale, int window, float softcap) {
    constexpr int LDH = D + 8, NO = D / 8, NS = BN / 8;
    extern __shared__ __align__(128) unsigned char smem[];
    __nv_bfloat16 *sK = (__nv_bfloat16 *)smem, *sV = sK + FB_ROWS * LDH; /* [64][LDH] each */
    __nv_bfloat16 *sQ = sV + FB_ROWS * LDH;                            /* 2 x ([BN][LDH] Q, [BN][LDH] dO) */
    float *sL = (float *)(sQ + 4 * BN * LDH), *sDl = sL + 2 * BN;      /* 2 x [BN] each */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    const int kb = ((int)gridDim.x - 1 - (int)blockIdx.x) * FB_ROWS; /* the longest walks first */
    const int kvh = blockIdx.y, group = H / KVH, h0 = kvh * group;
    {
        const size_t z = blockIdx.z; /* this sequence's rows */
        q16 += z * T * H * D, do16 += z * T * H * D, k16 += z * T * KVH * D, v16 += z * T * KVH * D;
        lse += z * T * H, delta += z * T * H, dk += z * T * KVH * D, dv += z * T * KVH * D;
    }
    const int q_end = window > 0 ? min(T, kb + FB_ROWS - 1 + window) : T;

    auto load_q = [&](int b, int qb, int h) {
        fb_load_rows<D>(sQ + 2 * b * BN * LDH, q16, qb, BN, T, H, h);
        fb_load_rows<D>(sQ + (2 * b + 1) * BN * LDH, do16, qb, BN, T, H, h);
        for (int i = threadIdx.x; i < BN; i += FB_THREADS) {
            const bool in = qb + i < T;
            sL[b * BN + i] = in ? lse[(size_t)(qb + i) * H + h] : 0.0f;
            sDl[b * BN + i] = in ? delta[(size_t)(qb + i) * H + h] : 0.0f;
        }
        cp_async_commit();
    };
    fb_load_rows<D>(sK, k16, kb, FB_ROWS, T, KVH, kvh);
    fb_load_rows<D>(sV, v16, kb, FB_ROWS, T, KVH, kvh);

    float dka[NO][4], dva[NO][4];
#pragma unroll
    for (int n = 0; n < NO; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) dka[n][e] = dva[n][e] = 0.0f;
    const int ka = kb + warp * 16 + g; /* this thread's keys: ka, ka + 8 */
    for (int h = h0; h < h0 + group; h++) {
        load_q(0, kb, h);
        int it = 0;
        for (int qb = kb; qb < q_end; qb += BN, it++) {
            const int b = it & 1;
            if (qb + BN < q_end) load_q(b ^ 1, qb + BN, h);
            else cp_async_commit();
            cp_async_wait<1>();
            __syncthreads();
            const __nv_bfloat16 *tQ = sQ + 2 * b * BN * LDH, *tO = tQ + BN * LDH;
            const float *tL = sL + b * BN, *tD = sDl + b * BN;
            float st[NS][4], dpt[NS][4]; /* S^T and dP^T: 16 keys x BN queries */
            fb_mma_abt<D, BN>(st, sK + warp * 16 * LDH, tQ, lane);
            fb_mma_abt<D, BN>(dpt, sV + warp * 16 * LDH, tO, lane);
#pragma unroll
            for (int j = 0; j < NS; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int c = 8 * j + 2 * tq + (e & 1), t = qb + c, key = ka + 8 * (e >> 1);
                    fb_grad(st[j][e], dpt[j][e], fb_seen(t, key, T, window), tL[c], tD[c], scale, softcap);
                }
            fb_mma_xy<D, BN>(dva, st, tO, lane);  /* dV += P^T dO */
            fb_mma_xy<D, BN>(dka, dpt, tQ, lane); /* dK += dS^T Q */
            __syncthreads(); /* buffer b is refilled two steps on */
        }
    }
#pragma unroll
    for (int n = 0; n < NO; n++) {
        const int d = 8 * n + 2 * tq;
        if (ka < T) {
            const size_t e = ((size_t)ka * KVH + kvh) * D + d;
            *(float2 *)(dk + e) = make_float2(dka[n][0], dka[n][1]);
            *(float2 *)(dv + e) = make_float2(dva[n][0], dva[n][1]);
        }
        if (ka + 8 < T) {
            const size_t e = ((size_t)(ka + 8) * KVH + kvh) * D + d;
            *(float2 *)(dk + e) = make_float2(dka[n][2], dka[n][3]);
            *(float2 *)(dv + e) = make_float2(dva[n][2], dva[n][3]);
        }
    }
}

/* Queries qb..qb+63 of head h (block (qb / 64, h)); warp w owns queries qb + 16 w... BN keys a
 * step, double-buffered. dq: [T, H, D]. */
template <int D, int BN>
__global__ void __launch_bounds__(FB_THREADS)
flash_bwd_dq_kernel(float *dq, const __nv_bfloat16 *q16, const __nv_bfloat16 *do16, const __nv_bfloat16 *k16,
                    const __nv_bfloat16 *v16, const float *lse, const float *delta, int T, int H, int KVH, float scale,
                    int window, float softcap) {
    constexpr int LDH = D + 8, NO = D / 8, NS = BN / 8;
    extern __shared__ __align__(128) unsigned char smem[];
    __nv_bfloat16 *sQ = (__nv_bfloat16 *)smem, *sO = sQ + FB_ROWS * LDH; /* [64][LDH] each */
    __nv_bfloat16 *sK = sO + FB_ROWS * LDH;                            /* 2 x ([BN][LDH] K, [BN][LDH] V) */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    const int qb = ((int)gridDim.x - 1 - (int)blockIdx.x) * FB_ROWS; /* the longest walks first */
    const int h = blockIdx.y, kvh = h / (H / KVH);
    {
        const size_t z = blockIdx.z; /* this sequence's rows */
        q16 += z * T * H * D, do16 += z * T * H * D, k16 += z * T * KVH * D, v16 += z * T * KVH * D;
        lse += z * T * H, delta += z * T * H, dq += z * T * H * D;
    }
    const int k_first = window > 0 && qb - window + 1 > 0 ? (qb - window + 1) / BN * BN : 0;
    const int k_end = min(T, qb + FB_ROWS);

    auto load_kv = [&](int b, int kb) {
        fb_load_rows<D>(sK + 2 * b * BN * LDH, k16, kb, BN, T, KVH, kvh);
        fb_load_rows<D>(sK + (2 * b + 1) * BN * LDH, v16, kb, BN, T, KVH, kvh);
        cp_async_commit();
    };
    fb_load_rows<D>(sQ, q16, qb, FB_ROWS, T, H, h);
    fb_load_rows<D>(sO, do16, qb, FB_ROWS, T, H, h);
    load_kv(0, k_first);

    const int ta = qb + warp * 16 + g; /* this thread's queries: ta, ta + 8 */
    float La[2], Da[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const bool in = ta + 8 * r < T;
        La[r] = in ? lse[(size_t)(ta + 8 * r) * H + h] : 0.0f;
        Da[r] = in ? delta[(size_t)(ta + 8 * r) * H + h] : 0.0f;
    }
    float dqa[NO][4];
#pragma unroll
    for (int n = 0; n < NO; n++) dqa[n][0] = dqa[n][1] = dqa[n][2] = dqa[n][3] = 0.0f;
    int it = 0;
    for (int kb = k_first; kb < k_end; kb += BN, it++) {
        const int b = it & 1;
        if (kb + BN < k_end) load_kv(b ^ 1, kb + BN);
        else cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const __nv_bfloat16 *tK = sK + 2 * b * BN * LDH, *tV = tK + BN * LDH;
        float s[NS][4], dp[NS][4]; /* 16 queries x BN keys */
        fb_mma_abt<D, BN>(s, sQ + warp * 16 * LDH, tK, lane);
        fb_mma_abt<D, BN>(dp, sO + warp * 16 * LDH, tV, lane);
#pragma unroll
        for (int j = 0; j < NS; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = kb + 8 * j + 2 * tq + (e & 1), r = e >> 1;
                fb_grad(s[j][e], dp[j][e], fb_seen(ta + 8 * r, key, T, window), La[r], Da[r], scale, softcap);
            }
        fb_mma_xy<D, BN>(dqa, dp, tK, lane); /* dQ += dS K */
        __syncthreads();
    }
#pragma unroll
    for (int n = 0; n < NO; n++) {
        const int d = 8 * n + 2 * tq;
        if (ta < T) *(float2 *)(dq + ((size_t)ta * H + h) * D + d) = make_float2(dqa[n][0], dqa[n][1]);
        if (ta + 8 < T) *(float2 *)(dq + ((size_t)(ta + 8) * H + h) * D + d) = make_float2(dqa[n][2], dqa[n][3]);
    }
}

template <int D, int BN_KV, int BN_Q>
static bool launch_flash_bwd(hc_backend *be, float *dq, float *dk, float *dv, const __nv_bfloat16 *q16,
                             const __nv_bfloat16 *do16, const __nv_bfloat16 *k16, const __nv_bfloat16 *v16,
                             const float *lse, const float *delta, int B, int T, int H, int KVH, float scale, int window,
                             float softcap) {
    hc_cuda_ctx *cx = hc_cuda(be);
    constexpr int LDH = D + 8;
    const size_t smem_kv = (size_t)(2 * FB_ROWS + 4 * BN_KV) * LDH * 2 + 4 * BN_KV * sizeof(float);
    const size_t smem_q = (size_t)(2 * FB_ROWS + 4 * BN_Q) * LDH * 2;
    if (cudaFuncSetAttribute(flash_bwd_dkv_kernel<D, BN_KV>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_kv) !=
            cudaSuccess ||
        cudaFuncSetAttribute(flash_bwd_dq_kernel<D, BN_Q>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_q) !=
            cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    const dim3 grid((unsigned)((T + FB_ROWS - 1) / FB_ROWS), (unsigned)H, (unsigned)B);
    const dim3 grid_kv(grid.x, (unsigned)KVH, grid.z);
    flash_bwd_dkv_kernel<D, BN_KV><<<grid_kv, FB_THREADS, smem_kv, cx->stream>>>(dk, dv, q16, do16, k16, v16, lse, delta, T, H,
                                                                                KVH, scale, window, softcap);
    flash_bwd_dq_kernel<D, BN_Q><<<grid, FB_THREADS, smem_q, cx->stream>>>(dq, q16, do16, k16, v16, lse, delta, T, H, KVH,
                                                                          scale, window, softcap);
    return true;
}

bool hc_cuda_flash_attention_backward(hc_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                                      const float *reserve, const float *q, const float *k, const float *v, int64_t B,
                                      int64_t T, int64_t H, int64_t KVH, int64_t D, float scale, int64_t window,
                                      float softcap) {
    hc_cuda_ctx *cx = hc_cuda(be);
    /* the same condition as attention_train's, whose reserve holds the log-sum-exps */
    if (!hc_cuda_flash_train(cx, B, T, H, D) || !out || !reserve || H % KVH) return false;
    const int64_t nq = B * T * H * D, nk = B * T * KVH * D;
    /* scratch: Q, dO, K, V in bf16, then delta */
    const size_t bytes = 2 * sizeof(__nv_bfloat16) * (size_t)(nq + nk) + sizeof(float) * (size_t)(B * T * H);
    char *base = (char *)hc_cuda_scratch(be, &cx->train_scratch, &cx->train_scratch_bytes, bytes);
    if (!base) return true; /* the failure is recorded */
    __nv_bfloat16 *q16 = (__nv_bfloat16 *)base, *do16 = q16 + nq, *k16 = do16 + nq, *v16 = k16 + nk;
    float *delta = (float *)(v16 + nk);
    const int rows_per_block = 8;
    flash_bwd_prep_kernel<<<hc_blocks(B * T * H, rows_per_block), 32 * rows_per_block, 0, cx->stream>>>(
        q16, do16, delta, q, dout, out, B * T * H, (int)D);
    hc_cuda_narrow(be, k16, HC_DTYPE_BF16, k, nk);
    hc_cuda_narrow(be, v16, HC_DTYPE_BF16, v, nk);
    const bool ok = D == 64 ? launch_flash_bwd<64, 64, 64>(be, dq, dk, dv, q16, do16, k16, v16, reserve, delta, (int)B,
                                                           (int)T, (int)H, (int)KVH, scale, (int)window, softcap)
                            : launch_flash_bwd<128, 32, 32>(be, dq, dk, dv, q16, do16, k16, v16, reserve, delta, (int)B,
                                                            (int)T, (int)H, (int)KVH, scale, (int)window, softcap);
    if (!ok) {
        hc_cuda_fail(be, cudaErrorInvalidValue, "attention backward (shared memory limit)");
        return true;
    }
    HC_CUDA_LAUNCHED(be, "attention backward (flash)");
    return true;
}
