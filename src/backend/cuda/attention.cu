/* Attention over the KV cache, flash-decoding style: each block takes one query row t, one
 * head h and one split of that query's keys, runs an online softmax over them in its warps (a
 * warp for every 32 keys in one block when a decode step's keys are few, else four a split),
 * and either writes the normalised output (one split) or a partial (max, sum, acc[D]) that a
 * second kernel, or with many splits the last split to finish, combines. Causal and
 * sliding-window masks come from pos[t] (read on the device, so a captured decode step stays
 * valid); GQA reads kv head h / (H / KVH) in place. */
#include <mma.h>
#include <stdlib.h>

#include "backend/cuda/common.cuh"

#define ATT_WARPS 4      /* warps a block: flash attention, and split decode attention */
#define ATT_MAX_WARPS 16 /* decode attention in one block a head */

/* The dot of the query (in shared memory) with key row `row` of the cache, over D. */
__device__ __forceinline__ float att_key_dot(const float *sq, const void *kc, hc_dtype dt, int64_t row, int64_t D) {
    float s = 0.0f;
    if (dt != HC_DTYPE_F32 && D % 8 == 0) { /* 16-byte loads of 8 halves */
        const uint4 *p = (const uint4 *)((const uint16_t *)kc + row);
        for (int64_t d = 0; d < D; d += 8) {
            const uint4 raw = p[d / 8];
            const uint16_t *h = (const uint16_t *)&raw;
#pragma unroll
            for (int i = 0; i < 8; i++)
                s += sq[d + i] * (dt == HC_DTYPE_BF16 ? __bfloat162float(*(const __nv_bfloat16 *)&h[i])
                                                      : __half2float(*(const __half *)&h[i]));
        }
    } else if (dt == HC_DTYPE_F32 && D % 4 == 0) {
        const float4 *p = (const float4 *)((const float *)kc + row);
        for (int64_t d = 0; d < D; d += 4) {
            const float4 v = p[d / 4];
            s += sq[d] * v.x + sq[d + 1] * v.y + sq[d + 2] * v.z + sq[d + 3] * v.w;
        }
    } else {
        for (int64_t d = 0; d < D; d++) s += sq[d] * hc_ld(kc, dt, row + d);
    }
    return s;
}

/* A 16-bit key row of D <= 32 * NPL values, as 16-byte vectors: all loaded before any sum. A
 * decode step's attention is a chain of dependent loads, so their latency, not bandwidth, sets
 * its time. */
template <int NPL>
__device__ __forceinline__ void att_key_load(uint4 (&raw)[4 * NPL], const void *kc, int64_t row, int64_t D) {
    const uint4 *p = (const uint4 *)((const uint16_t *)kc + row);
#pragma unroll
    for (int c = 0; c < 4 * NPL; c++)
        if (8 * c < D) raw[c] = p[c];
}

/* The dot of the query (in shared memory) with a key row att_key_load loaded, in d order. */
template <int NPL>
__device__ __forceinline__ float att_key_dot_raw(const float *sq, const uint4 (&raw)[4 * NPL], hc_dtype dt, int64_t D) {
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < 4 * NPL; c++) {
        if (8 * c >= D) break;
        const uint16_t *h = (const uint16_t *)&raw[c];
#pragma unroll
        for (int i = 0; i < 8; i++)
            s += sq[8 * c + i] * (dt == HC_DTYPE_BF16 ? __bfloat162float(*(const __nv_bfloat16 *)&h[i])
                                                      : __half2float(*(const __half *)&h[i]));
    }
    return s;
}

/* Shared memory of attention_kernel<NPL> with `warps` warps (see its layout). */
static size_t att_smem_bytes(int NPL, int warps) {
    const size_t sv = NPL <= 4 ? (size_t)warps * 32 * 32 * NPL * 2 : 0;
    return sv + 4 * ((size_t)warps * 32 * NPL + (size_t)warps * 32 + 32 * (size_t)NPL + 2 * (size_t)warps);
}

/* NPL: head dims per lane (D <= 32 * NPL); blockDim.x / 32 warps. A warp takes 32 keys at a
 * time: lane l scores key l (its whole row against the query in shared memory), the warp takes
 * their max and sum once, then each lane adds the 32 probability-weighted value rows into its
 * own dims. With a 16-bit cache and D <= 128 the warp first starts copying those 32 value rows
 * into shared memory (cp.async), so they arrive while the keys are scored instead of in rounds
 * after. The first round's key and value rows that no kernel of this step writes (all but the
 * step's own rows) are loaded before hc_pdl_wait, while the kernel before (the KV store) runs. */
template <int NPL>
__global__ void attention_kernel(float *out, float *partials, unsigned *done, const float *q, const void *kc0,
                                 const void *vc0, void *const *k_rows, void *const *v_rows, hc_dtype kv_dt,
                                 const int32_t *pos, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale,
                                 int64_t window, float softcap, int n_split) {
    constexpr bool STAGE_MAX = NPL <= 4; /* 32 rows of 128 16-bit values: 8 KB a warp */
    constexpr int KN = STAGE_MAX ? NPL : 1; /* the held key row's size, in 32-value units */
    const int W = (int)(blockDim.x >> 5);
    /* Dynamic shared memory: sv [W][32, D] 16-bit value rows (STAGE_MAX), sm_acc [W][32 NPL],
     * sp [W][32] (each warp's current 32 probabilities), sq [32 NPL] (the query row), sm_m and
     * sm_l [W] (the warps' running states). */
    extern __shared__ __align__(16) unsigned char att_smem[];
    uint16_t *sv_all = (uint16_t *)att_smem;
    float *sm_acc = (float *)(att_smem + (STAGE_MAX ? (size_t)W * 32 * 32 * NPL * 2 : 0));
    float *sp_all = sm_acc + W * 32 * NPL, *sq = sp_all + W * 32, *sm_m = sq + 32 * NPL, *sm_l = sm_m + W;
    const int split = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint16_t *sv = sv_all + (size_t)warp * 32 * 32 * NPL;
    float *sp = sp_all + warp * 32;
    const int64_t h = blockIdx.y, t = blockIdx.z, kvh = h / (H / KVH);
    /* Positions and row pointers come from the host, before the step: no kernel writes them. */
    const void *kc = k_rows ? k_rows[t] : kc0, *vc = v_rows ? v_rows[t] : vc0; /* this row's caches */
    const int64_t p = pos[t];
    const bool vec16 = kv_dt != HC_DTYPE_F32 && D % 8 == 0, stage = STAGE_MAX && vec16;
    const int64_t lo = (window > 0 && p - window + 1 > 0) ? p - window + 1 : 0;
    const int64_t nk = p - lo + 1, chunk = (nk + n_split - 1) / n_split;
    const int64_t j0 = lo + split * chunk, j1 = min(j0 + chunk, p + 1);
    /* This step's rows (at most T of them, the last at p) are written by the kernel before;
     * rows below `fresh` were written by earlier steps. */
    const int64_t fresh = p - T + 1;
    const int nvec = (int)(D / 8);
    /* value rows [from, to) of the 32 at `base` into sv, 16 bytes a copy */
    auto stage_values = [&](int64_t base, int from, int to) {
        for (int idx = from * nvec + lane; idx < to * nvec; idx += 32) {
            const int jj = idx / nvec, c = idx - jj * nvec;
            cp_async16(&sv[jj * D + 8 * c], (const uint16_t *)vc + ((base + jj) * KVH + kvh) * D + 8 * c);
        }
    };
    uint4 kraw[4 * KN]; /* this lane's key row (staged path) */
    int early = 0;      /* value rows of the first round staged before the wait */
    bool k_early = false; /* this lane's kraw holds its first-round key */
    {
        const int64_t base = j0 + warp * 32, j = base + lane;
        if (stage && base < j1) {
            const int n = (int)min((int64_t)32, j1 - base);
            early = (int)max((int64_t)0, min((int64_t)n, fresh - base));
            stage_values(base, 0, early);
            if (j < j1 && j < fresh) att_key_load<KN>(kraw, kc, (j * KVH + kvh) * D, D), k_early = true;
        }
    }
    hc_pdl_trigger(); /* early: see hc_pdl_trigger */
    hc_pdl_wait();

    const float *qh = q + (t * H + h) * D; /* [D] */
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) sq[d] = qh[d];
    __syncthreads();
    float acc[NPL];
#pragma unroll
    for (int i = 0; i < NPL; i++) acc[i] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    bool first = true;
    for (int64_t base = j0 + warp * 32; base < j1; base += (int64_t)W * 32, first = false) {
        const int64_t j = base + lane;
        const int n = (int)min((int64_t)32, j1 - base);
        if (stage) {
            stage_values(base, first ? early : 0, n);
            cp_async_commit();
        }
        float s = -INFINITY;
        if (j < j1) {
            if (stage) {
                if (!(first && k_early)) att_key_load<KN>(kraw, kc, (j * KVH + kvh) * D, D);
                s = att_key_dot_raw<KN>(sq, kraw, kv_dt, D);
            } else if (vec16) {
                uint4 raw[4 * NPL];
                att_key_load<NPL>(raw, kc, (j * KVH + kvh) * D, D);
                s = att_key_dot_raw<NPL>(sq, raw, kv_dt, D);
            } else {
                s = att_key_dot(sq, kc, kv_dt, (j * KVH + kvh) * D, D);
            }
            s *= scale;
            if (softcap > 0) s = softcap * tanhf(s / softcap);
        }
        const float m_new = fmaxf(m, hc_warp_max(s)); /* finite: key `base` is in range */
        const float corr = expf(m - m_new), e = j < j1 ? expf(s - m_new) : 0.0f;
        l = l * corr + hc_warp_sum(e);
        sp[lane] = e;
#pragma unroll
        for (int i = 0; i < NPL; i++) acc[i] *= corr;
        if (stage) {
            cp_async_wait<0>();
            __syncwarp();
            for (int jj = 0; jj < n; jj++) {
                const float pj = sp[jj];
                const uint16_t *vr = &sv[jj * D];
#pragma unroll
                for (int i = 0; i < NPL; i++) {
                    const int64_t d = lane + 32 * i;
                    if (d < D)
                        acc[i] += pj * (kv_dt == HC_DTYPE_BF16 ? __bfloat162float(*(const __nv_bfloat16 *)&vr[d])
                                                               : __half2float(*(const __half *)&vr[d]));
                }
            }
            __syncwarp(); /* sv and sp are rewritten by the next round */
            m = m_new;
            continue;
        }
        __syncwarp();
        /* eight value rows' loads at a time, then their sums in key order */
        for (int g0 = 0; g0 < n; g0 += 8) {
            float vv[8][NPL];
#pragma unroll
            for (int u = 0; u < 8; u++) {
                const int64_t row = ((base + g0 + u) * KVH + kvh) * D;
#pragma unroll
                for (int i = 0; i < NPL; i++) {
                    const int64_t d = lane + 32 * i;
                    vv[u][i] = g0 + u < n && d < D ? hc_ld(vc, kv_dt, row + d) : 0.0f;
                }
            }
#pragma unroll
            for (int u = 0; u < 8; u++) {
                if (g0 + u >= n) break;
                const float pj = sp[g0 + u];
#pragma unroll
                for (int i = 0; i < NPL; i++) acc[i] += pj * vv[u][i];
            }
        }
        __syncwarp();
        m = m_new;
    }
    /* Merge the warps' running states. */
    if (lane == 0) sm_m[warp] = m, sm_l[warp] = l;
#pragma unroll
    for (int i = 0; i < NPL; i++) sm_acc[warp * 32 * NPL + lane + 32 * i] = acc[i];
    __syncthreads();
    if (warp != 0) return;
    float M = -INFINITY;
    for (int w = 0; w < W; w++) M = fmaxf(M, sm_m[w]);
    float L = 0, o[NPL];
#pragma unroll
    for (int i = 0; i < NPL; i++) o[i] = 0;
    for (int w = 0; w < W; w++) {
        const float f = sm_m[w] == -INFINITY ? 0.0f : expf(sm_m[w] - M);
        L += sm_l[w] * f;
#pragma unroll
        for (int i = 0; i < NPL; i++) o[i] += sm_acc[w * 32 * NPL + lane + 32 * i] * f;
    }
    if (n_split == 1) {
        float *oh = out + (t * H + h) * D; /* [D] */
#pragma unroll
        for (int i = 0; i < NPL; i++)
            if (lane + 32 * i < D) oh[lane + 32 * i] = o[i] / L;
        return;
    }
    float *pp = partials + ((t * H + h) * n_split + split) * (D + 2); /* [max, sum, acc[D]] */
    if (lane == 0) pp[0] = M, pp[1] = L;
#pragma unroll
    for (int i = 0; i < NPL; i++)
        if (lane + 32 * i < D) pp[2 + lane + 32 * i] = o[i];
    if (!done) return;
    /* The last split of (t, h) to finish combines the partials, so decode needs no second
     * launch: each split publishes its partial, then counts itself in done[t, h] (zero between
     * calls: the last one resets it). Partials are read from L2 (__ldcg), all splits' at once.
     * Not attention_combine_kernel's loop: with 8 or more splits, lanes over splits are faster
     * (sharing one routine took a 2048-token 1B decode from 1.245 to 1.346 ms). */
    __threadfence();
    unsigned prev = 0;
    if (lane == 0) prev = atomicAdd(&done[t * H + h], 1u);
    if (__shfl_sync(0xffffffffu, prev, 0) != (unsigned)n_split - 1) return;
    __threadfence();
    const float *ps = partials + (t * H + h) * n_split * (D + 2); /* [n_split, D + 2] */
    float ms = -INFINITY;
    for (int sp0 = lane; sp0 < n_split; sp0 += 32) ms = fmaxf(ms, __ldcg(ps + sp0 * (D + 2)));
    const float Mx = hc_warp_max(ms);
    float ls = 0;
    for (int sp0 = lane; sp0 < n_split; sp0 += 32) {
        const float m_s = __ldcg(ps + sp0 * (D + 2));
        if (m_s != -INFINITY) ls += __ldcg(ps + sp0 * (D + 2) + 1) * expf(m_s - Mx);
    }
    const float Lx = hc_warp_sum(ls);
    float od[NPL];
#pragma unroll
    for (int i = 0; i < NPL; i++) od[i] = 0.0f;
#pragma unroll 4
    for (int sp0 = 0; sp0 < n_split; sp0++) {
        const float m_s = __ldcg(ps + sp0 * (D + 2));
        const float f = m_s == -INFINITY ? 0.0f : expf(m_s - Mx);
#pragma unroll
        for (int i = 0; i < NPL; i++)
            if (lane + 32 * i < D) od[i] += __ldcg(ps + sp0 * (D + 2) + 2 + lane + 32 * i) * f;
    }
    float *oh = out + (t * H + h) * D; /* [D] */
#pragma unroll
    for (int i = 0; i < NPL; i++)
        if (lane + 32 * i < D) oh[lane + 32 * i] = od[i] / Lx;
    if (lane == 0) done[t * H + h] = 0;
}

/* out[t, h, :] from the n_split <= CM partials of (t, h), all loaded at once, then summed in
 * split order. More than ATT_COMBINE_MAX splits are combined by the last split to finish. */
#define ATT_COMBINE_MAX 32
template <int CM>
__global__ void attention_combine_kernel(float *out, const float *partials, int64_t H, int64_t D, int n_split) {
    hc_pdl_trigger(); /* early: see hc_pdl_trigger */
    hc_pdl_wait();
    const int64_t h = blockIdx.x, t = blockIdx.y;
    const float *pp = partials + (t * H + h) * n_split * (D + 2);
    float ms[CM], ls[CM];
#pragma unroll
    for (int s = 0; s < CM; s++) {
        ms[s] = s < n_split ? pp[s * (D + 2)] : -INFINITY;
        ls[s] = s < n_split ? pp[s * (D + 2) + 1] : 0.0f;
    }
    float M = -INFINITY;
#pragma unroll
    for (int s = 0; s < CM; s++) M = fmaxf(M, ms[s]);
    float L = 0;
#pragma unroll
    for (int s = 0; s < CM; s++)
        if (ms[s] != -INFINITY) L += ls[s] * expf(ms[s] - M);
    float *oh = out + (t * H + h) * D;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float a[CM];
#pragma unroll
        for (int s = 0; s < CM; s++) a[s] = s < n_split ? pp[s * (D + 2) + 2 + d] : 0.0f;
        float o = 0;
#pragma unroll
        for (int s = 0; s < CM; s++)
            if (ms[s] != -INFINITY) o += a[s] * expf(ms[s] - M);
        oh[d] = o / L;
    }
}


/* ---- prompts: tensor-core flash attention ---------------------------------------------------
 * With a 16-bit compute dtype, rows of a prompt go through a flash-attention kernel: a block
 * takes 64 query rows of one head and walks the keys 64 at a time; S = Q K^T and O += P V run
 * on the tensor cores (WMMA, 16-bit operands, f32 accumulation), the online softmax in f32.
 * Each of the 4 warps owns 16 query rows, so only the K/V tile loads are shared. */

#define FA_BQ 64
#define FA_BK 64

template <typename HT> __device__ __forceinline__ HT to_half(float v);
template <> __device__ __forceinline__ __nv_bfloat16 to_half<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half to_half<__half>(float v) {
    return __float2half_rn(fminf(fmaxf(v, -65504.0f), 65504.0f));
}

template <typename HT> __device__ __forceinline__ hc_dtype half_dtype();
template <> __device__ __forceinline__ hc_dtype half_dtype<__nv_bfloat16>() { return HC_DTYPE_BF16; }
template <> __device__ __forceinline__ hc_dtype half_dtype<__half>() { return HC_DTYPE_F16; }

/* Shared-memory strides (elements), padded against bank conflicts; WMMA needs multiples of 8
 * (16-bit) or 4 (f32). */
static __host__ __device__ inline int fa_ldh(int D) { return D + 8; }
static __host__ __device__ inline int fa_ldo(int D) { return D + 4; }

/* nbuf: K/V tile buffers (2 overlaps the next tile's copy with this tile's math). */
static size_t fa_smem_bytes(int D, int nbuf) {
    return (1 + 2 * (size_t)nbuf) * FA_BQ * fa_ldh(D) * 2 /* Q, and K, V tiles */
           + (size_t)FA_BQ * (FA_BK + 4) * 4           /* S */
           + (size_t)FA_BQ * (FA_BK + 8) * 2           /* P */
           + (size_t)FA_BQ * fa_ldo(D) * 4             /* O */
           + (size_t)ATT_WARPS * 256 * 4               /* one 16x16 product tile per warp */
           + 3 * (size_t)FA_BQ * 4;                    /* running max, sum, correction */
}

template <typename HT>
__global__ void __launch_bounds__(32 * ATT_WARPS)
flash_prefill_kernel(float *out, const float *q, const void *kc, const void *vc, hc_dtype kv_dt, const int32_t *pos,
                     int64_t T, int64_t H, int64_t KVH, int D, float scale, int64_t window, float softcap, int nbuf) {
    using namespace nvcuda;
    extern __shared__ __align__(128) unsigned char smem[];
    const int ldh = fa_ldh(D), ldo = fa_ldo(D), lds = FA_BK + 4, ldp = FA_BK + 8;
    HT *sQ = (HT *)smem;                          /* [BQ][ldh] */
    HT *sKV = sQ + FA_BQ * ldh;                   /* nbuf x ([BK][ldh] K, then [BK][ldh] V) */
    float *sS = (float *)(sKV + 2 * nbuf * FA_BK * ldh); /* [BQ][lds] */
    HT *sP = (HT *)(sS + FA_BQ * lds);            /* [BQ][ldp] */
    float *sO = (float *)(sP + FA_BQ * ldp);      /* [BQ][ldo] */
    float *sTile = sO + FA_BQ * ldo;              /* [warps][16*16] */
    float *sM = sTile + ATT_WARPS * 256, *sL = sM + FA_BQ, *sC = sL + FA_BQ; /* [BQ] each */

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t h = blockIdx.y, kvh = h / (H / KVH), t0 = (int64_t)blockIdx.x * FA_BQ;
    const int64_t t_end = min(t0 + FA_BQ, T);
    /* Positions rise with t within a call's rows of one sequence. */
    const int64_t p_first = pos[t0], p_last = pos[t_end - 1];
    const int64_t lo = window > 0 && p_first - window + 1 > 0 ? p_first - window + 1 : 0;

    for (int i = tid; i < FA_BQ * D; i += blockDim.x) {
        const int r = i / D, d = i % D;
        const int64_t t = t0 + r;
        sQ[r * ldh + d] = to_half<HT>(t < T ? q[(t * H + h) * D + d] : 0.0f);
        sO[r * ldo + d] = 0.0f;
    }
    for (int r = tid; r < FA_BQ; r += blockDim.x) sM[r] = -INFINITY, sL[r] = 0.0f;

    const int r0 = warp * 16; /* this warp's query rows */
    const bool same_type = D % 8 == 0 && kv_dt == half_dtype<HT>();
    /* Tile kb into buffer b: 16-byte asynchronous copies when the cache holds HT already, else
     * widened element by element. Rows past p_last are zeros (never stale NaNs). */
    auto load_tile = [&](int b, int64_t kb) {
        HT *sK = sKV + 2 * b * FA_BK * ldh, *sV = sK + FA_BK * ldh;
        if (same_type) {
            const int per_row = D / 8;
            for (int i = tid; i < FA_BK * per_row; i += blockDim.x) {
                const int r = i / per_row, d = (i % per_row) * 8;
                const int64_t j = kb + r;
                if (j <= p_last) {
                    const int64_t e = (j * KVH + kvh) * D + d;
                    cp_async16(sK + r * ldh + d, (const HT *)kc + e);
                    cp_async16(sV + r * ldh + d, (const HT *)vc + e);
                } else {
                    *(uint4 *)(sK + r * ldh + d) = make_uint4(0, 0, 0, 0);
                    *(uint4 *)(sV + r * ldh + d) = make_uint4(0, 0, 0, 0);
                }
            }
        } else {
            for (int i = tid; i < FA_BK * D; i += blockDim.x) {
                const int r = i / D, d = i % D;
                const int64_t j = kb + r;
                const bool ok = j <= p_last;
                const int64_t e = (j * KVH + kvh) * D + d;
                sK[r * ldh + d] = to_half<HT>(ok ? hc_ld(kc, kv_dt, e) : 0.0f);
                sV[r * ldh + d] = to_half<HT>(ok ? hc_ld(vc, kv_dt, e) : 0.0f);
            }
        }
        cp_async_commit();
    };
    const int64_t kb0 = lo / FA_BK * FA_BK;
    if (nbuf == 2) load_tile(0, kb0);
    int it = 0;
    for (int64_t kb = kb0; kb <= p_last; kb += FA_BK, it++) {
        const int b = nbuf == 2 ? it & 1 : 0;
        if (nbuf == 2) { /* start the next tile's copy, then wait for this one */
            if (kb + FA_BK <= p_last) load_tile(b ^ 1, kb + FA_BK);
            else cp_async_commit();
            cp_async_wait<1>();
        } else {
            __syncthreads(); /* the previous tile is no longer read */
            load_tile(0, kb);
            cp_async_wait<0>();
        }
        __syncthreads();
        const HT *sK = sKV + 2 * b * FA_BK * ldh, *sV = sK + FA_BK * ldh;
        /* S[16 rows, 64 keys] = Q K^T. */
        for (int c = 0; c < FA_BK / 16; c++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int d = 0; d < D; d += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, HT, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, HT, wmma::col_major> b;
                wmma::load_matrix_sync(a, sQ + r0 * ldh + d, ldh);
                wmma::load_matrix_sync(b, sK + c * 16 * ldh + d, ldh);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(sS + r0 * lds + c * 16, acc, lds, wmma::mem_row_major);
        }
        __syncwarp();

        /* Online softmax over this tile: two lanes a row, 32 keys each. */
        {
            const int r = r0 + (lane >> 1), c0 = (lane & 1) * 32;
            const int64_t t = t0 + r;
            const int64_t pt = t < T ? pos[t] : -1;
            const int64_t lo_t = window > 0 && pt - window + 1 > 0 ? pt - window + 1 : 0;
            float *srow = sS + r * lds + c0;
            float mx = -INFINITY;
            for (int c = 0; c < 32; c++) {
                const int64_t j = kb + c0 + c;
                float x = srow[c] * scale;
                if (softcap > 0) x = softcap * tanhf(x / softcap);
                x = (j <= pt && j >= lo_t) ? x : -INFINITY;
                srow[c] = x;
                mx = fmaxf(mx, x);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            const float m_old = sM[r], m_new = fmaxf(m_old, mx);
            float sum = 0.0f, corr = 1.0f;
            HT *prow = sP + r * ldp + c0;
            if (m_new == -INFINITY) { /* no key of this row so far */
                for (int c = 0; c < 32; c++) prow[c] = to_half<HT>(0.0f);
            } else {
                for (int c = 0; c < 32; c++) {
                    const float p = __expf(srow[c] - m_new);
                    prow[c] = to_half<HT>(p);
                    sum += p;
                }
                corr = __expf(m_old - m_new);
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            __syncwarp(); /* both lanes of the row have read sM[r] */
            if (!(lane & 1)) {
                sL[r] = sL[r] * corr + sum;
                sM[r] = m_new;
                sC[r] = corr;
            }
        }
        __syncwarp();

        /* O[16 rows, D] = O * corr + P V, a 16x16 output tile at a time. */
        float *tile = sTile + warp * 256;
        for (int dt = 0; dt < D; dt += 16) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int k = 0; k < FA_BK; k += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, HT, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, HT, wmma::row_major> b;
                wmma::load_matrix_sync(a, sP + r0 * ldp + k, ldp);
                wmma::load_matrix_sync(b, sV + k * ldh + dt, ldh);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(tile, acc, 16, wmma::mem_row_major);
            __syncwarp();
            for (int e = lane; e < 256; e += 32) {
                const int r = r0 + e / 16, c = dt + e % 16;
                sO[r * ldo + c] = sO[r * ldo + c] * sC[r] + tile[e];
            }
            __syncwarp();
        }
        if (nbuf == 2) __syncthreads(); /* buffer b is refilled two tiles on */
    }
    __syncwarp();
    for (int e = lane; e < 16 * D; e += 32) {
        const int r = r0 + e / D, d = e % D;
        const int64_t t = t0 + r;
        if (t < T) out[(t * H + h) * D + d] = sO[r * ldo + d] / sL[r];
    }
}

template <typename HT>
static bool launch_flash(hc_cuda_ctx *cx, float *out, const float *q, const void *k_cache, const void *v_cache,
                         hc_dtype kv_dtype, const int32_t *pos, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale,
                         int64_t window, float softcap) {
    /* Over 48 KB of shared memory needs the limit raised (a host-side call; prompts only). */
    const bool same_type = D % 8 == 0 && kv_dtype == cx->compute; /* HT is the compute dtype */
    const int nbuf = same_type && D <= 128 ? 2 : 1;
    const size_t smem = fa_smem_bytes((int)D, nbuf);
    if (cudaFuncSetAttribute(flash_prefill_kernel<HT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    dim3 grid((unsigned)((T + FA_BQ - 1) / FA_BQ), (unsigned)H);
    flash_prefill_kernel<HT><<<grid, 32 * ATT_WARPS, smem, cx->stream>>>(out, q, k_cache, v_cache, kv_dtype, pos, T, H, KVH,
                                                                         (int)D, scale, window, softcap, nbuf);
    return true;
}

/* ---- prompts, head dims 64 and 128 with a bf16 cache: register-resident flash attention ----
 * The FlashAttention-2 layout on mma.sync m16n8k16: each warp keeps its 16 query rows' Q
 * fragments, scores, softmax state and output in registers; only the K/V tiles go through
 * shared memory (cp.async, double-buffered), V read transposed by ldmatrix. Fragment layouts
 * (PTX ISA, "mma.m16n8k16"): g = lane / 4, q = lane % 4; A holds (g | g+8, 2q..2q+1 | +8);
 * B holds (k = 2q..2q+1 | +8, n = g); C holds (g | g+8, 2q..2q+1). */

/* blockIdx.z: a sequence of a training batch, whose T rows are its own cache (gridDim.z 1 for
 * the decoder). lse: NULL, or each row's log-sum-exp of its scaled, soft-capped scores at
 * [t, h] (the backward's input). */
/* Registers: D 64 is held to 128 (4 blocks an SM, at the cost of an 8-byte spill), D 128 to 168
 * (3 blocks an SM). Four blocks at D 64 took a 2048-token prompt's attention from 97 to
 * 87 us on an H100. */
template <int D>
__global__ void __launch_bounds__(32 * ATT_WARPS, D == 128 ? 3 : 4)
flash2_kernel(float *out, __nv_bfloat16 *out16, float *lse, const float *q, const __nv_bfloat16 *kc, const __nv_bfloat16 *vc,
              const int32_t *pos, int T, int H, int KVH, float scale, int window, float softcap) {
    constexpr int LDH = D + 8, KS = D / 16, NO = D / 8, NS = FA_BK / 8, BQ = FA_BQ;
    static_assert(FA_BQ == 16 * ATT_WARPS, "a warp takes 16 query rows");
    static_assert(BQ <= 2 * FA_BK, "Q is staged in one K/V buffer");
    extern __shared__ __align__(128) unsigned char smem[];
    __nv_bfloat16 *sKV = (__nv_bfloat16 *)smem; /* 2 x ([BK][LDH] K, [BK][LDH] V) */
    /* Q is staged in the second K/V buffer: once its fragments are in registers that buffer
     * takes the next tile, so a block needs 4 tiles of shared memory instead of 5 (3 blocks an
     * SM instead of 2 at D = 128). */
    __nv_bfloat16 *sQ = sKV + 2 * FA_BK * LDH; /* [BQ][LDH] */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, tq = lane & 3;
    if (blockIdx.z) { /* sequence z of a batch: its rows, its keys */
        const size_t z = blockIdx.z;
        q += z * T * H * D, out += z * T * H * D, kc += z * T * KVH * D, vc += z * T * KVH * D;
        if (lse) lse += z * T * H;
    }
    /* The last query blocks see the most keys, so they start first, every head's before any
     * head's shorter ones: blocks start in the order of their linear index, and the short ones
     * then fill the tail. (Heavy-first within each head only left a tail of long blocks
     * started late: 113 -> 99 us for a 2048-token prompt of 32 heads.) */
    const int L = blockIdx.x + gridDim.x * blockIdx.y, qb = gridDim.x - 1 - L / H, h = L % H;
    const int kvh = h / (H / KVH), t0 = qb * BQ, r0 = warp * 16;
    const int t_end = min(t0 + BQ, T);
    const int p_first = pos[t0], p_last = pos[t_end - 1];
    const int lo = window > 0 && p_first - window + 1 > 0 ? p_first - window + 1 : 0;

    /* A thread copies the same 16-byte piece (column d_ld) of rows r_ld + p RPI of every tile:
     * its addresses are formed once here, not for every copy. */
    constexpr int CPR = D / 8, RPI = 32 * ATT_WARPS / CPR, PASSES = FA_BK / RPI; /* pieces a row, rows a pass */
    static_assert(32 * ATT_WARPS % CPR == 0 && FA_BK % RPI == 0, "tile copy layout");
    const int r_ld = tid / CPR, d_ld = (tid % CPR) * 8;
    const size_t row_stride = (size_t)KVH * D;
    const __nv_bfloat16 *k_ld = kc + (size_t)kvh * D + d_ld + r_ld * row_stride, *v_ld = vc + (k_ld - kc);
    const size_t pass_stride = (size_t)RPI * row_stride;
    auto load_tile = [&](int b, int kb) {
        __nv_bfloat16 *sK = sKV + 2 * b * FA_BK * LDH + r_ld * LDH + d_ld, *sV = sK + FA_BK * LDH;
        const __nv_bfloat16 *ks = k_ld + (size_t)kb * row_stride, *vs = v_ld + (size_t)kb * row_stride;
        /* Two loops, not one with `whole || row test`: that form cost the D 64 kernel 3% (80-81
         * against 83-84 us for a 2048-token prompt). */
        if (kb + FA_BK - 1 <= p_last) { /* every row of the tile exists: no test a row */
#pragma unroll
            for (int p = 0; p < PASSES; p++) {
                cp_async16(sK + p * RPI * LDH, ks + p * pass_stride);
                cp_async16(sV + p * RPI * LDH, vs + p * pass_stride);
            }
        } else {
#pragma unroll
            for (int p = 0; p < PASSES; p++) {
                if (kb + r_ld + p * RPI <= p_last) {
                    cp_async16(sK + p * RPI * LDH, ks + p * pass_stride);
                    cp_async16(sV + p * RPI * LDH, vs + p * pass_stride);
                } else { /* never stale NaNs */
                    *(uint4 *)(sK + p * RPI * LDH) = make_uint4(0, 0, 0, 0);
                    *(uint4 *)(sV + p * RPI * LDH) = make_uint4(0, 0, 0, 0);
                }
            }
        }
        cp_async_commit();
    };

    { /* Q's rows, 4 values a load, every load of a thread issued before the first store */
        constexpr int QL = BQ * D / 4 / (32 * ATT_WARPS);
        static_assert(BQ * D % (4 * 32 * ATT_WARPS) == 0, "Q staging layout");
        float4 qv[QL];
#pragma unroll
        for (int i = 0; i < QL; i++) {
            const int e = 4 * (tid + i * 32 * ATT_WARPS), r = e / D, t = t0 + r;
            qv[i] = t < T ? *(const float4 *)(q + ((size_t)t * H + h) * D + e % D) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int i = 0; i < QL; i++) {
            const int e = 4 * (tid + i * 32 * ATT_WARPS);
            *(uint2 *)(sQ + e / D * LDH + e % D) = make_uint2(pack_bf16(qv[i].x, qv[i].y), pack_bf16(qv[i].z, qv[i].w));
        }
    }
    const int kb0 = lo / FA_BK * FA_BK;
    load_tile(0, kb0);
    __syncthreads();
    uint32_t qf[KS][4];
#pragma unroll
    for (int k = 0; k < KS; k++) {
        const __nv_bfloat16 *base = sQ + (r0 + g) * LDH + k * 16 + 2 * tq;
        qf[k][0] = *(const uint32_t *)base;
        qf[k][1] = *(const uint32_t *)(base + 8 * LDH);
        qf[k][2] = *(const uint32_t *)(base + 8);
        qf[k][3] = *(const uint32_t *)(base + 8 * LDH + 8);
    }
    __syncthreads(); /* every warp has its Q fragments: sQ's buffer may be refilled */
    /* This thread's two rows: g and g + 8 of the warp's 16 (their position and window start). */
    int pr[2], lr[2];
    int w_min_pos = INT_MAX, w_max_pos = -1, w_max_lo = 0;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int t = t0 + r0 + 8 * r + g;
        pr[r] = t < T ? pos[t] : -1;
        lr[r] = window > 0 && pr[r] - window + 1 > 0 ? pr[r] - window + 1 : 0;
        w_min_pos = min(w_min_pos, pr[r]), w_max_pos = max(w_max_pos, pr[r]), w_max_lo = max(w_max_lo, lr[r]);
    }
    /* The keys every row of this warp sees: tiles inside [w_max_lo, w_min_pos] skip the mask
     * (a row past T has position -1, so its warp masks every tile); tiles past w_max_pos hold
     * no key of this warp's and skip the math. */
    w_min_pos = __reduce_min_sync(0xffffffffu, w_min_pos);
    w_max_pos = __reduce_max_sync(0xffffffffu, w_max_pos);
    w_max_lo = __reduce_max_sync(0xffffffffu, w_max_lo);
    float o[NO][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}; /* m: the row maxima, log2 units */
#pragma unroll
    for (int n = 0; n < NO; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    const float mul = softcap > 0 ? 1.0f : scale * LOG2E_F;

    /* One K/V tile for this warp's rows. MASK: the tile reaches past a row's position or before
     * its window; in a long prompt only the diagonal tile of each query block does. The two
     * versions are separate code: as one, the compiler predicated the mask into every tile
     * (about 100 of a tile's 450 instructions). */
    auto tile = [&](const __nv_bfloat16 *sK, const __nv_bfloat16 *sV, int kb, auto mask_tag) {
        constexpr bool MASK = decltype(mask_tag)::value;
        float sc[NS][4];
#pragma unroll
        for (int j = 0; j < NS; j++) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
#pragma unroll
        for (int k = 0; k < KS; k += 2) {
            /* ldmatrix.x4 for key group j: keys 8j..8j+7 against dims 16k..16k+31, i.e. the
             * B fragments of two k-steps (lanes 0-7, 8-15, 16-23, 24-31 address the four
             * 8x8 pieces). All groups' fragments first, then the products group by group:
             * a product waits on the one before into the same scores, so those two stand
             * NS products apart (written pair by pair, the warp stalled on each). */
            uint32_t bf[NS][4];
            const int mi = lane >> 3;
#pragma unroll
            for (int j = 0; j < NS; j++) {
                const unsigned addr = (unsigned)__cvta_generic_to_shared(sK + (8 * j + (lane & 7)) * LDH + k * 16 +
                                                                         (mi & 1) * 8 + (mi >> 1) * 16);
                asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                             : "=r"(bf[j][0]), "=r"(bf[j][1]), "=r"(bf[j][2]), "=r"(bf[j][3])
                             : "r"(addr));
            }
#pragma unroll
            for (int j = 0; j < NS; j++) mma_bf16(sc[j], qf[k], bf[j][0], bf[j][1]);
#pragma unroll
            for (int j = 0; j < NS; j++) mma_bf16(sc[j], qf[k + 1], bf[j][2], bf[j][3]);
        }
        /* Scores in log2 units (exp2 is one MUFU instruction): x = s * scale * log2(e), or
         * the soft-capped score times log2(e). Only tiles that reach past a row's position
         * or before its window need the mask; in a long prompt that is the diagonal tile
         * of each query block (the per-element mask was the kernel's largest cost in issue
         * slots). */
        if (softcap > 0) {
#pragma unroll
            for (int j = 0; j < NS; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) sc[j][e] = softcap * tanhf(sc[j][e] * scale / softcap) * LOG2E_F;
        }
        if constexpr (MASK) {
#pragma unroll
            for (int j = 0; j < NS; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = kb + 8 * j + 2 * tq + (e & 1), r = e >> 1;
                    if (key > pr[r] || key < lr[r]) sc[j][e] = -INFINITY;
                }
        }
        /* the row maxima over the quad that shares a row */
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < NS; j++) {
            mx[0] = fmaxf(mx[0], fmaxf(sc[j][0], sc[j][1]));
            mx[1] = fmaxf(mx[1], fmaxf(sc[j][2], sc[j][3]));
        }
        float corr[2] = {1.0f, 1.0f}, nm[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        }
        /* The running maxima move, and O and l are rescaled, only when a row's maximum grows by
         * more than 8 (log2 units) anywhere in the warp: otherwise the stale maxima stay, p is at
         * most 2^8 (exact in f32, and bf16 rounds it relative to its size as it does any p), and
         * the final O / l is the same. Past the first tiles of a row this skips the rescale
         * (FlashAttention-4 does the same). */
        if (__any_sync(0xffffffffu, mx[0] * mul > m[0] + 8.0f || mx[1] * mul > m[1] + 8.0f)) {
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const float mn = fmaxf(m[r], mx[r] * mul);
                /* a row with no key yet (only in a masked tile) keeps m = -inf: its p are 0;
                 * elsewhere corr = exp2(-inf) = 0 on the first tile */
                corr[r] = MASK && mn == -INFINITY ? 1.0f : fast_exp2(m[r] - mn);
                nm[r] = MASK && mn == -INFINITY ? 0.0f : mn;
                m[r] = mn;
            }
#pragma unroll
            for (int n = 0; n < NO; n++) {
                o[n][0] *= corr[0], o[n][1] *= corr[0];
                o[n][2] *= corr[1], o[n][3] *= corr[1];
            }
        } else {
#pragma unroll
            for (int r = 0; r < 2; r++) nm[r] = MASK && m[r] == -INFINITY ? 0.0f : m[r];
        }
        float rs[2] = {0.0f, 0.0f};
#pragma unroll
        for (int j = 0; j < NS; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float p = fast_exp2(fmaf(sc[j][e], mul, -nm[e >> 1])); /* masked: exp2(-inf) = 0 */
                sc[j][e] = p;
                rs[e >> 1] += p;
            }
        /* l: this lane's part of the row sums (its columns); the quad adds them at the end */
#pragma unroll
        for (int r = 0; r < 2; r++) l[r] = l[r] * corr[r] + rs[r];
        /* O += P V: P's score fragments are already A fragments of the next product. */
#pragma unroll
        for (int k = 0; k < FA_BK / 16; k++) {
            const uint32_t pa[4] = {pack_bf16(sc[2 * k][0], sc[2 * k][1]), pack_bf16(sc[2 * k][2], sc[2 * k][3]),
                                    pack_bf16(sc[2 * k + 1][0], sc[2 * k + 1][1]),
                                    pack_bf16(sc[2 * k + 1][2], sc[2 * k + 1][3])};
            /* the B fragments of output columns 8n.. and 8(n+1).. in one ldmatrix.x4.trans,
             * all of this k-step's first */
            uint32_t bf[NO / 2][4];
#pragma unroll
            for (int n = 0; n < NO; n += 2) {
                const unsigned addr =
                    (unsigned)__cvta_generic_to_shared(sV + (k * 16 + (lane & 15)) * LDH + (n + (lane >> 4)) * 8);
                asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                             : "=r"(bf[n / 2][0]), "=r"(bf[n / 2][1]), "=r"(bf[n / 2][2]), "=r"(bf[n / 2][3])
                             : "r"(addr));
            }
#pragma unroll
            for (int n = 0; n < NO; n += 2) {
                mma_bf16(o[n], pa, bf[n / 2][0], bf[n / 2][1]);
                mma_bf16(o[n + 1], pa, bf[n / 2][2], bf[n / 2][3]);
            }
        }
    };

    int it = 0;
    for (int kb = kb0; kb <= p_last; kb += FA_BK, it++) {
        const int b = it & 1;
        if (kb + FA_BK <= p_last) load_tile(b ^ 1, kb + FA_BK);
        else cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const __nv_bfloat16 *sK = sKV + 2 * b * FA_BK * LDH, *sV = sK + FA_BK * LDH;
        if (kb <= w_max_pos) { /* tiles past w_max_pos hold none of this warp's keys */
            if (kb + FA_BK - 1 <= w_min_pos && kb >= w_max_lo) tile(sK, sV, kb, hc_flag<false>());
            else tile(sK, sV, kb, hc_flag<true>());
        }
        __syncthreads(); /* buffer b is refilled two tiles on */
    }
#pragma unroll
    for (int r = 0; r < 2; r++) { /* the row sums over the quad that shares a row */
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int t = t0 + r0 + 8 * r + g; /* formed again here: a register less in the loop */
        if (t >= T) continue;
        if (lse && tq == 0) /* m is in log2 units */
            lse[(size_t)t * H + h] = l[r] > 0 ? m[r] * LN2_F + logf(l[r]) : INFINITY;
        const float inv = l[r] > 0 ? 1.0f / l[r] : 0.0f;
#pragma unroll
        for (int n = 0; n < NO; n++) {
            const size_t e = ((size_t)t * H + h) * D + 8 * n + 2 * tq;
            const float a = o[n][2 * r] * inv, c = o[n][2 * r + 1] * inv;
            *(float2 *)(out + e) = make_float2(a, c);
            if (out16) *(uint32_t *)(out16 + e) = pack_bf16(a, c); /* for the o GEMM */
        }
    }
}

/* out16: NULL, or a bf16 copy of out (for the GEMM that reads it next). */
template <int D>
static bool launch_flash2(hc_cuda_ctx *cx, float *out, void *out16, float *lse, const float *q, const void *k_cache,
                          const void *v_cache, const int32_t *pos, int64_t B, int64_t T, int64_t H, int64_t KVH, float scale,
                          int64_t window, float softcap) {
    const size_t smem = (size_t)4 * FA_BK * (D + 8) * 2; /* two K/V buffers (Q staged in the second) */
    if (cudaFuncSetAttribute(flash2_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    dim3 grid((unsigned)((T + FA_BQ - 1) / FA_BQ), (unsigned)H, (unsigned)B);
    flash2_kernel<D><<<grid, 32 * ATT_WARPS, smem, cx->stream>>>(out, (__nv_bfloat16 *)out16, lse, q, (const __nv_bfloat16 *)k_cache,
                                                                 (const __nv_bfloat16 *)v_cache, pos, (int)T, (int)H, (int)KVH,
                                                                 scale, (int)window, softcap);
    return true;
}

bool hc_cuda_flash_train(const hc_cuda_ctx *cx, int64_t B, int64_t T, int64_t H, int64_t D) {
    return cx->compute == HC_DTYPE_BF16 && (D == 64 || D == 128) && T >= 16 && B <= 65535 && B * T * H * D < INT32_MAX &&
           !getenv("HUBCAP_CUDA_WMMA_ATTENTION");
}

void hc_cuda_attention_train(hc_backend *be, float *out, float *reserve, const float *q, const float *k, const float *v,
                             const int32_t *pos, int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale,
                             int64_t window, float softcap, float *scratch) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (B <= 0 || T <= 0 || cx->failed) return;
    if (!hc_cuda_flash_train(cx, B, T, H, D)) {
        hc_fused_attention_train(be, out, reserve, q, k, v, pos, B, T, H, KVH, D, scale, window, softcap, scratch);
        return;
    }
    /* the whole batch in one launch: K and V rounded to bf16 (as autocast does), then a block
     * per (query block, head, sequence), each row's log-sum-exp kept in reserve */
    const int64_t n = B * T * KVH * D;
    __nv_bfloat16 *kv = (__nv_bfloat16 *)hc_cuda_scratch(be, &cx->kv16, &cx->kv16_bytes, 2 * sizeof(__nv_bfloat16) * (size_t)n);
    if (!kv) return;
    hc_cuda_narrow(be, kv, HC_DTYPE_BF16, k, n);
    hc_cuda_narrow(be, kv + n, HC_DTYPE_BF16, v, n);
    const bool ok = D == 64 ? launch_flash2<64>(cx, out, NULL, reserve, q, kv, kv + n, pos, B, T, H, KVH, scale, window, softcap)
                            : launch_flash2<128>(cx, out, NULL, reserve, q, kv, kv + n, pos, B, T, H, KVH, scale, window, softcap);
    if (!ok) hc_cuda_fail(be, cudaErrorInvalidValue, "flash attention (shared memory limit)");
    else HC_CUDA_LAUNCHED(be, "flash attention (training)");
}

/* The most warps attention_kernel<npl> takes in one block: ATT_MAX_WARPS, or fewer where its
 * registers do not allow that many threads. */
static int att_max_warps(int npl) {
    static int cap[9];
    if (!cap[npl]) {
        cudaFuncAttributes a = {};
        cudaError_t e = npl == 1   ? cudaFuncGetAttributes(&a, attention_kernel<1>)
                        : npl == 2 ? cudaFuncGetAttributes(&a, attention_kernel<2>)
                        : npl == 4 ? cudaFuncGetAttributes(&a, attention_kernel<4>)
                                   : cudaFuncGetAttributes(&a, attention_kernel<8>);
        if (e != cudaSuccess) cudaGetLastError(); /* not sticky: the split kernel is the fallback */
        const int w = e == cudaSuccess ? a.maxThreadsPerBlock / 32 : 0;
        cap[npl] = w < 1 ? -1 : w > ATT_MAX_WARPS ? ATT_MAX_WARPS : w;
    }
    return cap[npl] > 0 ? cap[npl] : 0;
}

static void launch_attention(hc_backend *be, float *out, const float *q, const void *k_cache, const void *v_cache,
                             void *const *k_rows, void *const *v_rows, hc_dtype kv_dtype, const int32_t *pos, int64_t T,
                             int64_t H, int64_t KVH, int64_t D, float scale, int64_t window, float softcap, int64_t S) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (T <= 0 || cx->failed) return;
    if (D > 256) {
        hc_cuda_fail(be, cudaErrorInvalidValue, "attention (head_dim above 256)");
        return;
    }
    /* f32 keys and values with bf16 compute (training's rows): rounded to bf16 first, as
     * transformers' autocast computes attention, so the mma.sync kernel takes them. */
    if (!k_rows && T >= 16 && cx->compute == HC_DTYPE_BF16 && kv_dtype == HC_DTYPE_F32 && (D == 64 || D == 128) &&
        !getenv("HUBCAP_CUDA_WMMA_ATTENTION")) {
        const int64_t n = S * KVH * D;
        __nv_bfloat16 *kv = (__nv_bfloat16 *)hc_cuda_scratch(be, &cx->kv16, &cx->kv16_bytes, 2 * sizeof(__nv_bfloat16) * (size_t)n);
        if (!kv) return;
        hc_cuda_narrow(be, kv, HC_DTYPE_BF16, (const float *)k_cache, n);
        hc_cuda_narrow(be, kv + n, HC_DTYPE_BF16, (const float *)v_cache, n);
        k_cache = kv, v_cache = kv + n, kv_dtype = HC_DTYPE_BF16;
    }
    /* Prompts of one sequence with a 16-bit compute dtype: the tensor-core kernels. */
    if (!k_rows && T >= 16 && cx->compute == HC_DTYPE_BF16 && kv_dtype == HC_DTYPE_BF16 && (D == 64 || D == 128) && S < INT32_MAX / 2 &&
        !getenv("HUBCAP_CUDA_WMMA_ATTENTION")) {
        void *o16 = cx->compute == HC_DTYPE_BF16 && T > HC_PDL_MAX_ROWS ? hc_cuda_acts16_begin(be, T * H * D) : NULL;
        const bool ok = D == 64 ? launch_flash2<64>(cx, out, o16, NULL, q, k_cache, v_cache, pos, 1, T, H, KVH, scale, window, softcap)
                                : launch_flash2<128>(cx, out, o16, NULL, q, k_cache, v_cache, pos, 1, T, H, KVH, scale, window, softcap);
        if (ok) {
            HC_CUDA_LAUNCHED(be, "flash attention");
            if (o16) hc_cuda_acts16_done(be, out, T * H * D);
            return;
        }
    }
    if (!k_rows && T >= 16 && D % 16 == 0 && D <= 256 && cx->compute != HC_DTYPE_F32) {
        const bool ok = cx->compute == HC_DTYPE_BF16
                            ? launch_flash<__nv_bfloat16>(cx, out, q, k_cache, v_cache, kv_dtype, pos, T, H, KVH, D, scale,
                                                          window, softcap)
                            : launch_flash<__half>(cx, out, q, k_cache, v_cache, kv_dtype, pos, T, H, KVH, D, scale, window,
                                                   softcap);
        if (ok) {
            HC_CUDA_LAUNCHED(be, "flash attention");
            return;
        }
    }
    /* Enough blocks to fill the GPU: split each query's keys when rows x heads are few. The
     * count depends only on T, H and S, so a captured decode step keeps its grid. A decode step
     * of few rows x heads over at most 32 * ATT_MAX_WARPS keys instead takes a warp for every 32
     * of them in one block a head, which needs no combine (1B decode at 384 keys: 1.133 -> 1.104
     * ms a token). With many rows x heads the blocks fill the GPU anyway, and four warps a block
     * going round were faster (1B, 64 sequences: 23.5-24.0k against 21.4-21.5k tok/s). */
    const int64_t max_keys = window > 0 && window < S ? window : S;
    int warps = ATT_WARPS;
    int64_t n_split = (4 * (int64_t)cx->n_sm + T * H - 1) / (T * H);
    const int64_t by_len = (max_keys + 127) / 128;
    if (n_split > by_len) n_split = by_len;
    if (n_split < 1) n_split = 1;
    const int npl = D <= 32 ? 1 : D <= 64 ? 2 : D <= 128 ? 4 : 8;
    if (T <= HC_PDL_MAX_ROWS && T * H <= 4 * (int64_t)cx->n_sm && max_keys <= 32 * att_max_warps(npl)) {
        warps = (int)((max_keys + 31) / 32);
        if (warps < 1) warps = 1;
        n_split = 1;
    }
    float *partials = NULL;
    unsigned *done = NULL;
    if (n_split > 1) {
        partials = (float *)hc_cuda_scratch(be, (void **)&cx->partials, &cx->partials_bytes,
                                            sizeof(float) * (size_t)(T * H * n_split * (D + 2)));
        const size_t had = cx->att_done_bytes;
        done = (unsigned *)hc_cuda_scratch(be, &cx->att_done, &cx->att_done_bytes, sizeof(unsigned) * (size_t)(T * H));
        if (!partials || !done) return;
        if (cx->att_done_bytes != had &&
            hc_cuda_fail(be, cudaMemsetAsync(done, 0, cx->att_done_bytes, cx->stream), "attention counters"))
            return;
        /* Up to ATT_COMBINE_MAX splits a second kernel combines them; it is launched early
         * (see hc_pdl_trigger), which made it faster than the last split combining (1B decode
         * at 2304 keys, 17 splits: 1.183-1.185 against 1.208-1.210 ms a token). */
        if (n_split <= ATT_COMBINE_MAX) done = NULL;
    }
    dim3 grid((unsigned)n_split, (unsigned)H, (unsigned)T);
    const int ns = (int)n_split;
#define ATT(NPL)                                                                                                       \
    do {                                                                                                               \
        const size_t smem = att_smem_bytes(NPL, warps);                                                                \
        static bool opted = false;                                                                                     \
        if (!opted) {                                                                                                  \
            opted = true;                                                                                              \
            cudaFuncSetAttribute(attention_kernel<NPL>, cudaFuncAttributeMaxDynamicSharedMemorySize,                   \
                                 (int)att_smem_bytes(NPL, ATT_MAX_WARPS));                                             \
        }                                                                                                              \
        hc_launch(cx, T <= HC_PDL_MAX_ROWS, attention_kernel<NPL>, grid, dim3(32 * warps), smem, out, partials, done, q, \
                  k_cache, v_cache, k_rows, v_rows, kv_dtype, pos, T, H, KVH, D, scale, window, softcap, ns);          \
    } while (0)
    switch (npl) {
    case 1: ATT(1); break;
    case 2: ATT(2); break;
    case 4: ATT(4); break;
    default: ATT(8); break;
    }
#undef ATT
    if (n_split > 1 && !done) {
        if (ns <= 8)
            hc_launch(cx, T <= HC_PDL_MAX_ROWS, attention_combine_kernel<8>, dim3((unsigned)H, (unsigned)T), dim3(128), 0, out,
                      partials, H, D, ns);
        else
            hc_launch(cx, T <= HC_PDL_MAX_ROWS, attention_combine_kernel<32>, dim3((unsigned)H, (unsigned)T), dim3(128), 0, out,
                      partials, H, D, ns);
    }
    HC_CUDA_LAUNCHED(be, "attention");
}

void hc_cuda_attention(hc_backend *be, float *out, const float *q, const void *k_cache, const void *v_cache,
                       hc_dtype kv_dtype, const int32_t *pos, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale,
                       int64_t window, float softcap, int64_t S, float *scratch) {
    (void)scratch;
    launch_attention(be, out, q, k_cache, v_cache, NULL, NULL, kv_dtype, pos, T, H, KVH, D, scale, window, softcap, S);
}

void hc_cuda_attention_rows(hc_backend *be, float *out, const float *q, void *const *k_rows, void *const *v_rows,
                            hc_dtype kv_dtype, const int32_t *pos, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale,
                            int64_t window, float softcap, int64_t S, float *scratch) {
    (void)scratch;
    launch_attention(be, out, q, NULL, NULL, k_rows, v_rows, kv_dtype, pos, T, H, KVH, D, scale, window, softcap, S);
}
