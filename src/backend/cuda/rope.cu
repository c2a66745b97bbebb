/* Rotary position embedding, rotate-half layout, in place on x[T, nh, D]. */
#include "backend/cuda/common.cuh"

/* One thread per (t, i < R/2): the angle's cos and sin once (the angle formed in f32 as
 * transformers forms it, cos and sin taken in double as the CPU reference takes them), then the
 * pair (i, i + R/2) of every head. */
__global__ void rope_kernel(float *x, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T, int64_t nh,
                            int64_t D, int64_t half) {
    const int64_t n = T * half;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t k = i % half, t = i / half;
        const float angle = (float)pos[t] * inv_freq[k];
        double sd, cd;
        sincos((double)angle, &sd, &cd);
        const float c = (float)cd * attn_factor, s = (float)sd * attn_factor;
        for (int64_t h = 0; h < nh; h++) {
            float *v = x + (t * nh + h) * D; /* [D] */
            const float a = v[k], b = v[k + half];
            v[k] = a * c - b * s;
            v[k + half] = b * c + a * s;
        }
    }
}

void hc_cuda_rope(hc_backend *be, float *x, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T,
                  int64_t nh, int64_t D, int64_t R) {
    const int64_t n = T * (R / 2);
    if (n <= 0 || nh <= 0 || hc_cuda(be)->failed) return;
    unsigned blocks = hc_blocks(n, 256);
    if (blocks > 65535u) blocks = 65535u;
    rope_kernel<<<blocks, 256, 0, hc_cuda(be)->stream>>>(x, pos, inv_freq, attn_factor, T, nh, D, R / 2);
    HC_CUDA_LAUNCHED(be, "rope");
}

/* The same pass for a prompt's rows: a block per row, which takes its R/2 angles once into
 * shared memory (the kernel above takes them again for every head: 48 sincosf of the same
 * angle a row for the 1B model, and half its threads idle). Items of two: for a head, u < R/4
 * the pairs (2u, 2u + R/2) and (2u + 1, 2u + 1 + R/2), then two elements past R; q heads, then
 * k heads, then v's elements two by two, so a warp reads and writes whole runs of a row with
 * 8-byte accesses. Needs R/2 and D even. */
template <typename CT> __device__ __forceinline__ void store2(void *c, int64_t o, float a, float b) {
    if constexpr (sizeof(CT) == 4) *(float2 *)((float *)c + o) = make_float2(a, b);
    else {
        CT v[2] = {(CT)a, (CT)b};
        *(uint32_t *)((CT *)c + o) = *(const uint32_t *)v;
    }
}
template <typename CT>
__global__ void rope_store_rows_kernel(float *q, float *k, const float *v, void *kc0, void *vc0, void *const *k_rows,
                                       void *const *v_rows, const int32_t *pos, const float *inv_freq, float attn_factor, int H,
                                       int KVH, int D, int half) {
    extern __shared__ float cs[]; /* [2][half]: cos, then sin, times attn_factor */
    const int64_t t = blockIdx.x, p = pos[t];
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        float sf, cf;
        sincosf((float)p * inv_freq[j], &sf, &cf); /* as rope_store_kernel: within an ulp of the CPU's double */
        cs[j] = cf * attn_factor, cs[half + j] = sf * attn_factor;
    }
    __syncthreads();
    void *kc = k_rows ? k_rows[t] : kc0, *vc = v_rows ? v_rows[t] : vc0; /* this row's caches */
    const int per = (D - half) / 2, nq = H * per, nk = KVH * per, nv = KVH * D / 2;
    for (int i = threadIdx.x; i < nq + nk + nv; i += blockDim.x) {
        if (i >= nq + nk) { /* two v elements */
            const int e = 2 * (i - nq - nk);
            const float2 a = *(const float2 *)(v + t * KVH * D + e);
            store2<CT>(vc, p * KVH * D + e, a.x, a.y);
            continue;
        }
        const bool is_k = i >= nq;
        const int hi = is_k ? i - nq : i, hh = hi / per, u = 2 * (hi - hh * per);
        float *x = is_k ? k + (t * KVH + hh) * D : q + (t * H + hh) * D; /* [D] */
        const int64_t o = p * KVH * D + (int64_t)hh * D;
        if (u < half) {
            const float2 x0 = *(const float2 *)(x + u), x1 = *(const float2 *)(x + u + half);
            const float c0 = cs[u], c1 = cs[u + 1], s0 = cs[half + u], s1 = cs[half + u + 1];
            const float2 a = make_float2(x0.x * c0 - x1.x * s0, x0.y * c1 - x1.y * s1);
            const float2 b = make_float2(x1.x * c0 + x0.x * s0, x1.y * c1 + x0.y * s1);
            *(float2 *)(x + u) = a;
            *(float2 *)(x + u + half) = b;
            if (is_k) store2<CT>(kc, o + u, a.x, a.y), store2<CT>(kc, o + u + half, b.x, b.y);
        } else if (is_k) { /* k elements past R; q's stay */
            const float2 a = *(const float2 *)(x + u + half);
            store2<CT>(kc, o + u + half, a.x, a.y);
        }
    }
}

/* rope on q and k, then k and v into the cache, in one pass. A block per (head, row) over the
 * q, k and v heads (blockIdx.x; rows stride blockIdx.y), its threads over j < D: j < R/2
 * rotates the pair (j, j + R/2) (and stores both for k); j >= R stores an unrotated k element;
 * v heads store element j. The grid's shape replaces 64-bit divisions per element. */
__global__ void rope_store_kernel(float *q, float *k, const float *v, void *kc0, void *vc0, void *const *k_rows,
                                  void *const *v_rows, hc_dtype dt, const int32_t *pos, const float *inv_freq,
                                  float attn_factor, int64_t T, int64_t H, int64_t KVH, int64_t D, int64_t half, bool pdl) {
    const int64_t hh = blockIdx.x;
    /* The first row's angle for this thread's first pair, before waiting: positions come from
     * the host and the frequencies are constants, so only q, k and v wait for the kernel
     * before (a decode step has one row and one pair a thread). */
    float sf0 = 0.0f, cf0 = 1.0f;
    if (blockIdx.y < T && threadIdx.x < half && hh < H + KVH)
        sincosf((float)pos[blockIdx.y] * inv_freq[threadIdx.x], &sf0, &cf0);
    if (pdl) { /* only when launched so: the wait costs a tiny block of a long prompt's grid about 100 cycles */
        hc_pdl_trigger(); /* early: see hc_pdl_trigger */
        hc_pdl_wait();
    }
    for (int64_t t = blockIdx.y; t < T; t += gridDim.y) {
        const int64_t p = pos[t];
        void *kc = k_rows ? k_rows[t] : kc0, *vc = v_rows ? v_rows[t] : vc0; /* this row's caches */
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
            if (hh < H + KVH) {
                const bool is_k = hh >= H;
                float *x = is_k ? k + (t * KVH + (hh - H)) * D : q + (t * H + hh) * D; /* [D] */
                float a, b;
                if (j < half) {
                    float sf = sf0, cf = cf0;
                    if (t != blockIdx.y || j != threadIdx.x)
                        sincosf((float)p * inv_freq[j], &sf, &cf); /* full range reduction: within an ulp of the CPU's double */
                    const float c = cf * attn_factor, s = sf * attn_factor;
                    const float x0 = x[j], x1 = x[j + half];
                    a = x0 * c - x1 * s;
                    b = x1 * c + x0 * s;
                    x[j] = a;
                    x[j + half] = b;
                } else if (j < 2 * half || !is_k) {
                    continue; /* the second of a rotated pair, or a q element that stays */
                } else {
                    a = x[j];
                }
                if (is_k) {
                    const int64_t o = p * KVH * D + (hh - H) * D;
                    if (dt == HC_DTYPE_F32) {
                        ((float *)kc)[o + j] = a;
                        if (j < half) ((float *)kc)[o + j + half] = b;
                    } else if (dt == HC_DTYPE_BF16) {
                        ((__nv_bfloat16 *)kc)[o + j] = __float2bfloat16_rn(a);
                        if (j < half) ((__nv_bfloat16 *)kc)[o + j + half] = __float2bfloat16_rn(b);
                    } else {
                        ((__half *)kc)[o + j] = __float2half_rn(a);
                        if (j < half) ((__half *)kc)[o + j + half] = __float2half_rn(b);
                    }
                }
            } else {
                const int64_t kvh = hh - H - KVH, o = p * KVH * D + kvh * D + j;
                const float a = v[(t * KVH + kvh) * D + j];
                if (dt == HC_DTYPE_F32) ((float *)vc)[o] = a;
                else if (dt == HC_DTYPE_BF16) ((__nv_bfloat16 *)vc)[o] = __float2bfloat16_rn(a);
                else ((__half *)vc)[o] = __float2half_rn(a);
            }
        }
    }
}

static void launch_rope_store(hc_backend *be, float *q, float *k, const float *v, void *k_cache, void *v_cache,
                              void *const *k_rows, void *const *v_rows, hc_dtype kv_dtype, const int32_t *pos,
                              const float *inv_freq, float attn_factor, int64_t T, int64_t H, int64_t KVH, int64_t D,
                              int64_t R) {
    if (T <= 0 || D <= 0 || hc_cuda(be)->failed) return;
    const int64_t half = inv_freq ? R / 2 : 0;
    const bool aligned = ((uintptr_t)q | (uintptr_t)k | (uintptr_t)v | (uintptr_t)k_cache | (uintptr_t)v_cache) % 8 == 0;
    if (T > HC_PDL_MAX_ROWS && T < INT32_MAX && (H + 2 * KVH) * D < INT32_MAX && half % 2 == 0 && D % 2 == 0 && aligned) {
        /* a prompt */
        const size_t smem = 2 * sizeof(float) * (size_t)(half ? half : 1);
        cudaStream_t st = hc_cuda(be)->stream;
        if (kv_dtype == HC_DTYPE_F32)
            rope_store_rows_kernel<float><<<(unsigned)T, 256, smem, st>>>(q, k, v, k_cache, v_cache, k_rows, v_rows, pos, inv_freq,
                                                                         attn_factor, (int)H, (int)KVH, (int)D, (int)half);
        else if (kv_dtype == HC_DTYPE_BF16)
            rope_store_rows_kernel<__nv_bfloat16><<<(unsigned)T, 256, smem, st>>>(
                q, k, v, k_cache, v_cache, k_rows, v_rows, pos, inv_freq, attn_factor, (int)H, (int)KVH, (int)D, (int)half);
        else
            rope_store_rows_kernel<__half><<<(unsigned)T, 256, smem, st>>>(q, k, v, k_cache, v_cache, k_rows, v_rows, pos, inv_freq,
                                                                          attn_factor, (int)H, (int)KVH, (int)D, (int)half);
        HC_CUDA_LAUNCHED(be, "rope_store");
        return;
    }
    const dim3 grid((unsigned)(H + 2 * KVH), (unsigned)(T < 65535 ? T : 65535));
    const unsigned threads = D >= 256 ? 256u : (unsigned)((D + 31) / 32 * 32);
    const bool pdl = hc_cuda(be)->pdl && T <= HC_PDL_MAX_ROWS;
    hc_launch(hc_cuda(be), pdl, rope_store_kernel, grid, dim3(threads), 0, q, k, v, k_cache, v_cache, k_rows, v_rows, kv_dtype,
              pos, inv_freq, attn_factor, T, H, KVH, D, half, pdl);
    HC_CUDA_LAUNCHED(be, "rope_store");
}

void hc_cuda_rope_store(hc_backend *be, float *q, float *k, const float *v, void *k_cache, void *v_cache, hc_dtype kv_dtype,
                        const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T, int64_t H, int64_t KVH,
                        int64_t D, int64_t R) {
    launch_rope_store(be, q, k, v, k_cache, v_cache, NULL, NULL, kv_dtype, pos, inv_freq, attn_factor, T, H, KVH, D, R);
}

void hc_cuda_rope_store_rows(hc_backend *be, float *q, float *k, const float *v, void *const *k_rows, void *const *v_rows,
                             hc_dtype kv_dtype, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T,
                             int64_t H, int64_t KVH, int64_t D, int64_t R) {
    launch_rope_store(be, q, k, v, NULL, NULL, k_rows, v_rows, kv_dtype, pos, inv_freq, attn_factor, T, H, KVH, D, R);
}
