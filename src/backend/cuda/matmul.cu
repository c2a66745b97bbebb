/* Matmul: out[T, N] = x[T, K] @ W[N, K]^T + bias[N], weights in their stored dtype.
 *
 * Few rows (T <= gemv_max_t(), batch-1 and small-batch decode) are bandwidth-bound: our own GEMV
 * reads each weight once, 16 bytes a lane, widens it and accumulates in f32 against f32
 * activations, so decode numerics do not depend on the compute dtype. Quantized weights
 * (q8_0, q4_0, q4_k) are dequantized inside the GEMV.
 *
 * More rows go to cuBLAS with the compute dtype as the operand type (bf16 or f16 tensor cores,
 * or f32) and f32 accumulation and output; q8_0 / q4_0 weights with 9 to 16 rows take an int8
 * tensor-core kernel of our own (mmq). Weights of another dtype are converted a chunk of
 * rows at a time into scratch; activations are converted once per call. */
#include "backend/cuda/common.cuh"

#define GEMV_WARPS 4       /* warps a block in the simple kernels */
#define GEMV_BLOCK_WARPS 8 /* warps a block in the 16-byte kernel */
#define CONVERT_CHUNK_ELEMS (32ll << 20) /* weights converted per cuBLAS call: 128 MiB in f32 */

/* ---- GEMV ------------------------------------------------------------------------------- */

/* Row counts up to this take the GEMV, more go to cuBLAS: 4, or HUBCAP_CUDA_GEMV_MAX_T (0..8)
 * to measure. On the H100 (bench/results/cuda-h100-gemv-2026-11-26.txt) the GEMV wins at 2 and
 * 4 rows of the 1B shape; at 8 rows cuBLAS reads the weights once at full speed while the GEMV,
 * re-reading every row's activations per weight load, fell to half (1B 2.0k -> 2.8k tok/s, 8B
 * 429 -> 947). */
static int64_t gemv_max_t(void) {
    static int64_t v = -1;
    if (v < 0) {
        const char *e = getenv("HUBCAP_CUDA_GEMV_MAX_T");
        v = e && *e >= '0' && *e <= '8' && !e[1] ? *e - '0' : 4;
    }
    return v;
}

template <typename WT> __device__ __forceinline__ float widen(WT v);
template <> __device__ __forceinline__ float widen<float>(float v) { return v; }
template <> __device__ __forceinline__ float widen<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float widen<__half>(__half v) { return __half2float(v); }

/* Up to three weight matrices of one input, as one launch: rows [0, end[0]) are matrix 0's,
 * [end[0], end[1]) matrix 1's, and so on. Gated: matrices 0 and 1 are gate and up of the same
 * rows, and out[0] = act(gate . x + bg) * (up . x + bu). */
typedef struct {
    const void *w[3];
    const void *bias[3];
    hc_dtype bias_dt[3];
    float *out[3];
    int64_t ld[3];
    int64_t end[3];
    int n;
    hc_activation act;
} gemv_set;

/* WPR warps per output row n (split over K, summed through shared memory) and 8 warps a block;
 * lanes stride over K 16 bytes at a time. Small N takes more warps a row so that enough loads
 * are in flight to keep HBM busy. TT: rows of x (1..8). Needs rows 16-byte aligned and K a
 * multiple of the vector (checked by the launcher). */
template <typename WT, int TT, int WPR, bool GATED>
__global__ void __launch_bounds__(32 * GEMV_BLOCK_WARPS)
gemv_vec_kernel(const gemv_set s, const float *x, int64_t K) {
    constexpr int VEC = 16 / sizeof(WT), RPB = GEMV_BLOCK_WARPS / WPR, NM = GATED ? 2 : 1;
    __shared__ float part[NM][GEMV_BLOCK_WARPS][TT];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, slice = warp % WPR;
    const int64_t n = blockIdx.x * (int64_t)RPB + warp / WPR;
    const int64_t total = s.end[GATED ? 0 : s.n - 1];
    /* which matrix, and the row within it */
    const int mi = GATED ? 0 : (n < s.end[0] ? 0 : n < s.end[1] ? 1 : 2);
    const int64_t r = n - (mi ? s.end[mi - 1] : 0), N = s.end[mi] - (mi ? s.end[mi - 1] : 0);
    const int64_t k0 = (int64_t)(slice * 32 + lane) * VEC, step = 32 * VEC * WPR;
    /* The weights do not depend on the previous kernel: each lane's first PRE vectors of every
     * row are loaded while that kernel finishes (hc_launch), then x is waited for. More costs
     * registers and so resident blocks: a 1B decode token took 1.653-1.656 ms of GPU time with
     * 2 (46-52 registers; 0 and 1 about the same), 1.671 with 4 (60-64), 1.828 with 6, 1.931
     * with 8. The next L2PRE vectors are asked of L2, which costs no register: 2 took a token
     * from 1.161-1.163 to 1.145-1.146 ms, 4 gained nothing and 6 lost 5%. */
    constexpr int PRE = 2, L2PRE = 2;
    uint4 pre[NM][PRE];
#pragma unroll
    for (int m = 0; m < NM; m++)
#pragma unroll
        for (int p = 0; p < PRE; p++)
            if (n < total && k0 + p * step < K)
                pre[m][p] = __ldg((const uint4 *)((const WT *)s.w[mi + m] + r * s.ld[mi + m] + k0 + p * step));
#pragma unroll
    for (int m = 0; m < NM; m++)
#pragma unroll
        for (int p = PRE; p < PRE + L2PRE; p++)
            if (n < total && k0 + p * step < K) hc_prefetch_l2((const WT *)s.w[mi + m] + r * s.ld[mi + m] + k0 + p * step);
    hc_pdl_wait();
    hc_pdl_trigger();
    float acc[NM][TT];
#pragma unroll
    for (int m = 0; m < NM; m++)
#pragma unroll
        for (int t = 0; t < TT; t++) acc[m][t] = 0.0f;
    /* acc[m] += the 16 bytes of weights at k times x[., k..k+VEC) */
    auto fma16 = [&](int m, const uint4 raw, int64_t k) {
        const WT *wv = (const WT *)&raw;
        float wf[VEC];
#pragma unroll
        for (int i = 0; i < VEC; i++) wf[i] = widen<WT>(wv[i]);
#pragma unroll
        for (int t = 0; t < TT; t++) {
            const float4 *xv = (const float4 *)(x + t * K + k);
#pragma unroll
            for (int i = 0; i < VEC / 4; i++) {
                const float4 a = xv[i];
                acc[m][t] += a.x * wf[4 * i] + a.y * wf[4 * i + 1] + a.z * wf[4 * i + 2] + a.w * wf[4 * i + 3];
            }
        }
    };
    if (n < total) {
#pragma unroll
        for (int m = 0; m < NM; m++) {
            const WT *row = (const WT *)s.w[mi + m] + r * s.ld[mi + m]; /* [K] */
#pragma unroll
            for (int p = 0; p < PRE; p++)
                if (k0 + p * step < K) fma16(m, pre[m][p], k0 + p * step);
#pragma unroll 4
            for (int64_t k = k0 + PRE * step; k < K; k += step) fma16(m, __ldg((const uint4 *)(row + k)), k);
        }
    }
#pragma unroll
    for (int m = 0; m < NM; m++)
#pragma unroll
        for (int t = 0; t < TT; t++) {
            const float v = hc_warp_sum(acc[m][t]);
            if (lane == 0) part[m][warp][t] = v;
        }
    __syncthreads();
    if (slice != 0 || lane >= TT || n >= total) return;
    float v[NM];
#pragma unroll
    for (int m = 0; m < NM; m++) {
        v[m] = 0;
#pragma unroll
        for (int j = 0; j < WPR; j++) v[m] += part[m][warp + j][lane];
        if (s.bias[mi + m]) v[m] += hc_ld(s.bias[mi + m], s.bias_dt[mi + m], r);
    }
    s.out[mi][lane * N + r] = GATED ? hc_act_apply(v[0], s.act) * v[NM - 1] : v[0];
}

/* Rows of any alignment or length: one warp per output row, lanes reading neighbouring
 * elements (still coalesced, but 2 or 4 bytes a lane). */
template <int TT>
__global__ void gemv_rows_kernel(float *out, const float *x, const void *w, hc_dtype dt, int64_t ld, const void *bias,
                                 hc_dtype bias_dt, int64_t N, int64_t K) {
    const int lane = threadIdx.x & 31;
    const int64_t n = blockIdx.x * (int64_t)GEMV_WARPS + (threadIdx.x >> 5);
    if (n >= N) return;
    float acc[TT];
#pragma unroll
    for (int t = 0; t < TT; t++) acc[t] = 0.0f;
    for (int64_t k = lane; k < K; k += 32) {
        const float wv = hc_ld(w, dt, n * ld + k);
#pragma unroll
        for (int t = 0; t < TT; t++) acc[t] += x[t * K + k] * wv;
    }
#pragma unroll
    for (int t = 0; t < TT; t++) {
        const float s = hc_warp_sum(acc[t]);
        if (lane == 0) out[t * N + n] = s + (bias ? hc_ld(bias, bias_dt, n) : 0.0f);
    }
}

/* GPT-2's transposed [K, N] weights: one thread per (t, n), k in order, threads of a warp
 * reading neighbouring columns. */
__global__ void gemv_any_kernel(float *out, const float *x, const void *w, hc_dtype dt, int64_t ld, bool transposed,
                                const void *bias, hc_dtype bias_dt, int64_t N, int64_t K, int64_t T) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= T * N) return;
    const int64_t t = i / N, n = i % N;
    const float *xt = x + t * K;
    float s = 0;
    for (int64_t k = 0; k < K; k++) s += xt[k] * hc_ld(w, dt, transposed ? k * ld + n : n * ld + k);
    out[i] = s + (bias ? hc_ld(bias, bias_dt, n) : 0.0f);
}

/* Quantized blocks widened to f32: 32 weights (q8_0, q4_0) or 256 (q4_k) from a block that is
 * only 2-byte aligned, so it is read 16 bits at a time. */
__device__ __forceinline__ void dequant_q8_0(float *o, const uint16_t *b) {
    const float d = hc_f16_bits(b[0]);
#pragma unroll
    for (int i = 0; i < 16; i++) {
        const uint16_t v = b[1 + i];
        o[2 * i] = d * (float)(int8_t)(v & 0xff);
        o[2 * i + 1] = d * (float)(int8_t)(v >> 8);
    }
}

__device__ __forceinline__ void dequant_q4_0(float *o, const uint16_t *b) {
    const float d = hc_f16_bits(b[0]);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const uint16_t v = b[1 + i];
        o[2 * i] = d * (float)((v & 0xf) - 8);
        o[2 * i + 16] = d * (float)(((v >> 4) & 0xf) - 8);
        o[2 * i + 1] = d * (float)(((v >> 8) & 0xf) - 8);
        o[2 * i + 17] = d * (float)((v >> 12) - 8);
    }
}

__device__ __forceinline__ void q4_k_scale_min(const uint8_t *q, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Sub-block j (32 weights) of a q4_k super-block. */
__device__ __forceinline__ void dequant_q4_k_sub(float *o, const hc_block_q4_k *b, int j) {
    int sc, m;
    q4_k_scale_min(b->scales, j, &sc, &m);
    const float d = hc_f16_bits(b->d) * (float)sc, mn = hc_f16_bits(b->dmin) * (float)m;
    const uint8_t *qs = b->qs + (j / 2) * 32;
#pragma unroll
    for (int i = 0; i < 32; i++) o[i] = d * (float)((j & 1) ? (qs[i] >> 4) : (qs[i] & 0xf)) - mn;
}

/* 8 values of x to int8 (q8[0..7]) as the CPU's quantize_acts does: threads 4j .. 4j + 3 hold
 * one block of 32 and all take the shuffles (in = false: a thread past the end, whose whole group
 * is, reads and writes nothing). Returns the block's d = amax / 127 (q = x / d rounded to
 * nearest even); *sum = the block's sum of q. */
__device__ __forceinline__ float quantize8_q8(int8_t *q8, const float *x8, bool in, int *sum) {
    float v[8];
    const float4 a = in ? ((const float4 *)x8)[0] : make_float4(0, 0, 0, 0);
    const float4 b = in ? ((const float4 *)x8)[1] : make_float4(0, 0, 0, 0);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) amax = fmaxf(amax, fabsf(v[j]));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    int s = 0;
    uint32_t pk[2] = {0, 0};
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int qv = __float2int_rn(v[j] * id);
        s += qv;
        pk[j / 4] |= (uint32_t)(qv & 0xff) << (8 * (j % 4));
    }
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    s += __shfl_xor_sync(0xffffffffu, s, 2);
    if (in) *(uint2 *)q8 = make_uint2(pk[0], pk[1]);
    *sum = s;
    return d;
}

/* q8_0, q4_0 and q4_k rows whose length is a multiple of 16 bytes, for up to 4 rows of x: WPR warps
 * share RW rows; each warp copies 32 consecutive blocks of its rows at a time to shared memory
 * with 16-byte loads (the blocks themselves are 34 or 18 bytes, only 2-byte aligned). Each block
 * of the grid first quantizes x into its shared memory as the CPU's quantize_acts does (per
 * block of 32: d = amax / 127, q = x / d rounded to nearest even, and d * sum(q) for q4_0's
 * "- 8"); then a lane takes one staged weight block of each row against its x block with dp4a:
 * 8 of them a q8_0 block, where widening to f32 took 32 conversions and 32 products. On q4_k a
 * lane takes a sub-block (32 lanes: 4 super-blocks of 144 bytes), d sc (dx sum q x) - dmin m
 * (dx sum x): the 1B model's decode went 198 -> 954-961 tok/s on an H100 (q4_0 1,147), from
 * gemv_quant_kernel's floats.
 * The CPU scales q4_k's activations per 256; here they stay per 32. The first group's weights
 * are staged before hc_pdl_wait. xq/xd: dynamic shared memory, TT * K bytes then
 * [TT][K / 32] (d, d * sum). */
template <int TT, int WPR, int QUANT, int RW, bool GATED>
__global__ void __launch_bounds__(32 * GEMV_BLOCK_WARPS)
gemv_q8x_kernel(const gemv_set s, const float *x, size_t row_bytes, int64_t K) {
    /* bytes a lane's block of 32 weights: q4_k's sub-block is an eighth of its super-block */
    constexpr int BB = QUANT == HC_QUANT_Q8_0   ? sizeof(hc_block_q8_0)
                       : QUANT == HC_QUANT_Q4_K ? sizeof(hc_block_q4_k) / 8
                                                : sizeof(hc_block_q4_0);
    constexpr int RPB = GEMV_BLOCK_WARPS / WPR, NW = QUANT == HC_QUANT_Q8_0 ? 9 : 5; /* words covering a block */
    constexpr int NM = GATED ? 2 : 1; /* matrices a row: gate and up */
    extern __shared__ __align__(16) unsigned char xsm[];
    int8_t *xq = (int8_t *)xsm;                 /* [TT][K] */
    float2 *xd = (float2 *)(xsm + TT * K);      /* [TT][K / 32] */
    __shared__ __align__(16) uint8_t stage[GEMV_BLOCK_WARPS][NM * RW][32 * BB];
    __shared__ float part[GEMV_BLOCK_WARPS][NM * RW][TT];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, slice = warp % WPR;
    const int64_t N = s.end[GATED ? 0 : s.n - 1]; /* rows of the set */
    const int64_t n0 = (blockIdx.x * (int64_t)RPB + warp / WPR) * RW; /* this warp's first row */
    const int64_t nb = K / 32;
    /* row n of the set: its matrix and its row there */
    auto mat_of = [&](int64_t n) { return GATED ? 0 : n < s.end[0] ? 0 : n < s.end[1] ? 1 : 2; };
    auto row_in = [&](int64_t n, int mi) { return n - (mi ? s.end[mi - 1] : 0); };
    auto stage_group = [&](int64_t g) { /* blocks g .. g + 31 of this warp's rows, 16 bytes a copy */
        const int cnt = nb - g < 32 ? (int)(nb - g) : 32, n16 = cnt * BB / 16;
#pragma unroll
        for (int r = 0; r < RW; r++) {
            if (n0 + r >= N) break;
            const int mi = mat_of(n0 + r);
#pragma unroll
            for (int m = 0; m < NM; m++) {
                /* 32 * BB is a multiple of 16 */
                const uint4 *src = (const uint4 *)((const uint8_t *)s.w[mi + m] + row_in(n0 + r, mi) * row_bytes + g * BB);
                uint8_t *dst = stage[warp][m * RW + r];
                for (int i = lane; i < n16; i += 32) ((uint4 *)dst)[i] = __ldg(src + i);
                for (int i = n16 * 8 + lane; i < cnt * BB / 2; i += 32) /* the tail of a short group */
                    ((uint16_t *)dst)[i] = ((const uint16_t *)src)[i];
            }
        }
    };
    const int64_t g0 = (int64_t)slice * 32;
    if (n0 < N && g0 < nb) stage_group(g0); /* weights: no earlier kernel writes them */
    hc_pdl_wait();
    hc_pdl_trigger();
    /* x to int8: 8 values a thread, 4 threads a block of 32 (K is a multiple of 32, so every
     * pass of the loop holds whole blocks and all threads take the shuffles) */
    const int64_t chunks = TT * K / 8;
    for (int64_t c0 = 0; c0 < chunks; c0 += blockDim.x) {
        const int64_t c = c0 + threadIdx.x;
        const bool in = c < chunks;
        int sum;
        const float d = quantize8_q8(xq + 8 * c, x + 8 * c, in, &sum);
        if (in && (threadIdx.x & 3) == 0) xd[c / 4] = make_float2(d, d * (float)sum);
    }
    __syncthreads();
    float acc[NM * RW][TT];
#pragma unroll
    for (int r = 0; r < NM * RW; r++)
#pragma unroll
        for (int t = 0; t < TT; t++) acc[r][t] = 0.0f;
    if (n0 < N) {
        for (int64_t g = g0; g < nb; g += 32 * WPR) {
            const int cnt = nb - g < 32 ? (int)(nb - g) : 32;
            if (g != g0) {
                __syncwarp();
                stage_group(g);
            }
            __syncwarp();
            if (lane >= cnt) continue;
            const int64_t b = g + lane; /* this lane's block of 32 */
            int xw[TT][8];
            float2 xs[TT];
#pragma unroll
            for (int t = 0; t < TT; t++) {
                const int4 u0 = ((const int4 *)(xq + t * K + b * 32))[0], u1 = ((const int4 *)(xq + t * K + b * 32))[1];
                xw[t][0] = u0.x, xw[t][1] = u0.y, xw[t][2] = u0.z, xw[t][3] = u0.w;
                xw[t][4] = u1.x, xw[t][5] = u1.y, xw[t][6] = u1.z, xw[t][7] = u1.w;
                xs[t] = xd[t * nb + b];
            }
            if (QUANT == HC_QUANT_Q4_K) { /* sub-block j of super-block lane / 8 of the group (K: whole super-blocks) */
                const int sb = (lane / 8) * (int)sizeof(hc_block_q4_k), j = lane % 8;
#pragma unroll
                for (int r = 0; r < NM * RW; r++) {
                    if (n0 + r % RW >= N) continue;
                    const uint8_t *blk = stage[warp][r] + sb;
                    int sc, m;
                    q4_k_scale_min(blk + 4, j, &sc, &m);
                    const float d = hc_f16_bits(*(const uint16_t *)blk) * (float)sc,
                                mn = hc_f16_bits(*(const uint16_t *)(blk + 2)) * (float)m;
                    /* byte i of the 32 holds weight i of sub-blocks 2 (j / 2) (low nibble) and 2 (j / 2) + 1 (high) */
                    const uint32_t *qw = (const uint32_t *)(blk + 16 + 32 * (j / 2));
                    uint32_t wd[8];
#pragma unroll
                    for (int k = 0; k < 8; k++) wd[k] = ((j & 1) ? qw[k] >> 4 : qw[k]) & 0x0f0f0f0fu;
#pragma unroll
                    for (int t = 0; t < TT; t++) {
                        int dp = 0;
#pragma unroll
                        for (int k = 0; k < 8; k++) dp = __dp4a((int)wd[k], xw[t][k], dp);
                        acc[r][t] += d * xs[t].x * (float)dp - mn * xs[t].y;
                    }
                }
                continue;
            }
            /* The block starts 2 bytes past a 4-byte boundary on odd lanes: read the words that
             * cover it and take each group of 4 weights with one byte permute. */
            const int off = lane * BB;
            const unsigned sel = off & 2 ? 0x7654 : 0x5432;
#pragma unroll
            for (int r = 0; r < NM * RW; r++) {
                if (n0 + r % RW >= N) continue;
                const uint32_t *wp = (const uint32_t *)(stage[warp][r] + (off & ~3));
                uint32_t wd[NW];
#pragma unroll
                for (int k = 0; k < NW; k++) wd[k] = wp[k];
                const float dw = hc_f16_bits((uint16_t)(off & 2 ? wd[0] >> 16 : wd[0] & 0xffff));
#pragma unroll
                for (int t = 0; t < TT; t++) {
                    int dp = 0;
                    if (QUANT == HC_QUANT_Q8_0) {
#pragma unroll
                        for (int k = 0; k < 8; k++) dp = __dp4a((int)__byte_perm(wd[k], wd[k + 1], sel), xw[t][k], dp);
                        acc[r][t] += dw * xs[t].x * (float)dp;
                    } else { /* q4_0: byte j holds weights j (low nibble) and j + 16 (high) */
#pragma unroll
                        for (int k = 0; k < 4; k++) {
                            const uint32_t q = __byte_perm(wd[k], wd[k + 1], sel);
                            dp = __dp4a((int)(q & 0x0f0f0f0fu), xw[t][k], dp);
                            dp = __dp4a((int)((q >> 4) & 0x0f0f0f0fu), xw[t][4 + k], dp);
                        }
                        acc[r][t] += dw * (xs[t].x * (float)dp - 8.0f * xs[t].y);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < NM * RW; r++)
#pragma unroll
        for (int t = 0; t < TT; t++) {
            const float v = hc_warp_sum(acc[r][t]);
            if (lane == 0) part[warp][r][t] = v;
        }
    __syncthreads();
    const int r = lane / TT, t = lane % TT;
    if (slice == 0 && lane < TT * RW && n0 + r < N) {
        const int64_t n = n0 + r;
        const int mi = mat_of(n);
        const int64_t rr = row_in(n, mi), Nm = s.end[mi] - (mi ? s.end[mi - 1] : 0);
        float v[NM];
#pragma unroll
        for (int m = 0; m < NM; m++) {
            v[m] = 0;
#pragma unroll
            for (int j = 0; j < WPR; j++) v[m] += part[warp + j][m * RW + r][t];
            if (s.bias[mi + m]) v[m] += hc_ld(s.bias[mi + m], s.bias_dt[mi + m], rr);
        }
        s.out[mi][t * Nm + rr] = GATED ? hc_act_apply(v[0], s.act) * v[NM - 1] : v[0];
    }
}

/* Any quantized row (rows that are not whole 16-byte lines, x too wide for
 * gemv_q8x_kernel's shared memory): one warp per output row; a lane takes 32 weights (one
 * q8_0/q4_0 block or a q4_k sub-block) at a time, read 16 bits at a time. */
template <int TT>
__global__ void gemv_quant_kernel(float *out, const float *x, const uint8_t *w, int quant, size_t row_bytes,
                                  const void *bias, hc_dtype bias_dt, int64_t N, int64_t K) {
    const int lane = threadIdx.x & 31;
    const int64_t n = blockIdx.x * (int64_t)GEMV_WARPS + (threadIdx.x >> 5);
    if (n >= N) return;
    const uint8_t *row = w + n * row_bytes;
    float acc[TT];
#pragma unroll
    for (int t = 0; t < TT; t++) acc[t] = 0.0f;
    for (int64_t g = lane; g < K / 32; g += 32) {
        float wf[32];
        if (quant == HC_QUANT_Q8_0) dequant_q8_0(wf, (const uint16_t *)(row + g * sizeof(hc_block_q8_0)));
        else if (quant == HC_QUANT_Q4_0) dequant_q4_0(wf, (const uint16_t *)(row + g * sizeof(hc_block_q4_0)));
        else dequant_q4_k_sub(wf, (const hc_block_q4_k *)(row + (g / 8) * sizeof(hc_block_q4_k)), (int)(g % 8));
#pragma unroll
        for (int t = 0; t < TT; t++) {
            const float *xt = x + t * K + g * 32;
            float s = 0;
#pragma unroll
            for (int i = 0; i < 32; i++) s += xt[i] * wf[i];
            acc[t] += s;
        }
    }
#pragma unroll
    for (int t = 0; t < TT; t++) {
        const float s = hc_warp_sum(acc[t]);
        if (lane == 0) out[t * N + n] = s + (bias ? hc_ld(bias, bias_dt, n) : 0.0f);
    }
}

/* Warps a row: enough for about 24 warps per multiprocessor, at most 8, and not more slices
 * than K has 16-byte steps for. Measured on the H100 with programmatic dependent launch (1B
 * decode, GPU time a token): 24 -> 1.179-1.184 ms, 16 -> 1.187, 32 -> 1.204, 48 -> 1.202 (the
 * target before PDL), 64 -> 1.260, 8 (one warp a row) -> 1.267. */
static int warps_per_row(const hc_cuda_ctx *cx, int64_t N, int64_t steps) {
    int wpr = 1;
    while (wpr < 8 && N * wpr < (int64_t)cx->n_sm * 24 && steps >= 2 * wpr) wpr *= 2;
    return wpr;
}

#define TT_SWITCH(T, CASE)                                                                                             \
    switch (T) { CASE(1); CASE(2); CASE(3); CASE(4); CASE(5); CASE(6); CASE(7); CASE(8); }

template <typename WT, int WPR, bool GATED>
static void launch_gemv_vec_wpr(hc_cuda_ctx *cx, const gemv_set &s, const float *x, int64_t K, int64_t T) {
    const unsigned blocks = hc_blocks(s.end[GATED ? 0 : s.n - 1], GEMV_BLOCK_WARPS / WPR);
#define GV(TT)                                                                                                         \
    case TT: hc_launch(cx, true, gemv_vec_kernel<WT, TT, WPR, GATED>, dim3(blocks), dim3(32 * GEMV_BLOCK_WARPS), 0, s, x, K); break
    TT_SWITCH(T, GV)
#undef GV
}

template <typename WT, bool GATED>
static void launch_gemv_vec(hc_cuda_ctx *cx, const gemv_set &s, const float *x, int64_t K, int64_t T) {
    switch (warps_per_row(cx, s.end[GATED ? 0 : s.n - 1], K / (32 * (16 / (int64_t)sizeof(WT))))) {
    case 1: launch_gemv_vec_wpr<WT, 1, GATED>(cx, s, x, K, T); break;
    case 2: launch_gemv_vec_wpr<WT, 2, GATED>(cx, s, x, K, T); break;
    case 4: launch_gemv_vec_wpr<WT, 4, GATED>(cx, s, x, K, T); break;
    default: launch_gemv_vec_wpr<WT, 8, GATED>(cx, s, x, K, T); break;
    }
}

/* The 16-byte kernel's conditions on one weight matrix. */
static bool vec_ok(const hc_mat *w, const float *x) {
    const size_t es = hc_dtype_size(w->dtype);
    const int64_t vec = 16 / (int64_t)es;
    return !w->quant && !w->transposed && ((uintptr_t)w->data & 15) == 0 && (w->ld * (int64_t)es) % 16 == 0 &&
           w->cols % vec == 0 && ((uintptr_t)x & 15) == 0 && w->cols % 4 == 0;
}

/* s from n matrices of one input (gated: gate and up of the same rows); the callers check that
 * the matrices suit their kernel. */
static void gemv_set_fill(gemv_set *s, float *const *outs, const hc_mat *const *ws, const hc_vec *const *bs, int n, bool gated,
                          hc_activation act) {
    memset(s, 0, sizeof *s);
    int64_t end = 0;
    for (int i = 0; i < n; i++) {
        s->w[i] = ws[i]->data;
        s->ld[i] = ws[i]->ld;
        s->bias[i] = bs[i] && bs[i]->data ? bs[i]->data : NULL;
        s->bias_dt[i] = s->bias[i] ? bs[i]->dtype : HC_DTYPE_F32;
        s->out[i] = outs[i];
        end = gated ? ws[i]->rows : end + ws[i]->rows;
        s->end[i] = end;
    }
    s->n = n;
    s->act = act;
}

/* One launch for n matrices of one input when they share a dtype and K and suit the 16-byte
 * kernel; false otherwise. */
static bool gemv_fused(hc_cuda_ctx *cx, float *const *outs, const float *x, const hc_mat *const *ws, const hc_vec *const *bs,
                       int n, int64_t T, bool gated, hc_activation act) {
    for (int i = 0; i < n; i++)
        if (!vec_ok(ws[i], x) || ws[i]->dtype != ws[0]->dtype || ws[i]->cols != ws[0]->cols) return false;
    gemv_set s;
    gemv_set_fill(&s, outs, ws, bs, n, gated, act);
    const int64_t K = ws[0]->cols;
    switch (ws[0]->dtype) {
    case HC_DTYPE_F32: gated ? launch_gemv_vec<float, true>(cx, s, x, K, T) : launch_gemv_vec<float, false>(cx, s, x, K, T); break;
    case HC_DTYPE_BF16:
        gated ? launch_gemv_vec<__nv_bfloat16, true>(cx, s, x, K, T) : launch_gemv_vec<__nv_bfloat16, false>(cx, s, x, K, T);
        break;
    default: gated ? launch_gemv_vec<__half, true>(cx, s, x, K, T) : launch_gemv_vec<__half, false>(cx, s, x, K, T); break;
    }
    return true;
}

/* Rows a warp in gemv_q8x_kernel. Measured with its float-activation predecessor: 1B decode
 * q8_0 took 2.18 ms a token with 1, 1.66 with 2, 1.84 with 4 (q4_0: 2.02, 1.52, 1.75). */
#define QUANT_RW 2
/* gemv_q8x_kernel for up to 4 rows of x; false when x's int8 copy does not fit shared memory. */
template <int TT, int WPR, int QUANT, bool GATED>
static bool launch_gemv_q8x_tt(hc_cuda_ctx *cx, const gemv_set &s, const float *x, size_t row_bytes, int64_t K) {
    const size_t smem = (size_t)TT * (size_t)K * 5 / 4; /* int8 values, then (d, d * sum) per 32 */
    static size_t allowed = 48 * 1024 - sizeof(uint8_t[GEMV_BLOCK_WARPS][2 * QUANT_RW][32 * 34]) - 1024;
    if (smem > allowed) {
        if (smem > 160 * 1024 ||
            cudaFuncSetAttribute(gemv_q8x_kernel<TT, WPR, QUANT, QUANT_RW, GATED>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)smem) != cudaSuccess) {
            cudaGetLastError();
            return false;
        }
        allowed = smem;
    }
    const int64_t N = s.end[GATED ? 0 : s.n - 1];
    hc_launch(cx, true, gemv_q8x_kernel<TT, WPR, QUANT, QUANT_RW, GATED>, dim3(hc_blocks(N, GEMV_BLOCK_WARPS / WPR * QUANT_RW)),
              dim3(32 * GEMV_BLOCK_WARPS), smem, s, x, row_bytes, K);
    return true;
}

template <int QUANT, bool GATED>
static bool launch_gemv_q8x(hc_cuda_ctx *cx, const gemv_set &s, const float *x, size_t row_bytes, int64_t K, int64_t T) {
    const int64_t N = s.end[GATED ? 0 : s.n - 1];
#define Q8X_WPR(WPR)                                                                                                   \
    switch (T) {                                                                                                       \
    case 1: return launch_gemv_q8x_tt<1, WPR, QUANT, GATED>(cx, s, x, row_bytes, K);                                    \
    case 2: return launch_gemv_q8x_tt<2, WPR, QUANT, GATED>(cx, s, x, row_bytes, K);                                    \
    case 3: return launch_gemv_q8x_tt<3, WPR, QUANT, GATED>(cx, s, x, row_bytes, K);                                    \
    default: return launch_gemv_q8x_tt<4, WPR, QUANT, GATED>(cx, s, x, row_bytes, K);                                   \
    }
    switch (warps_per_row(cx, (N + QUANT_RW - 1) / QUANT_RW, K / 1024)) {
    case 1: Q8X_WPR(1);
    case 2: Q8X_WPR(2);
    case 4: Q8X_WPR(4);
    default: Q8X_WPR(8);
    }
#undef Q8X_WPR
}

/* Up to three q8_0 or q4_0 matrices of one input (q, k, v), or gate and up (gated), in one
 * launch of the int8 kernel for each 4 rows of x, up to Q8X_MAX_T rows; false when they do not
 * suit it (the caller runs them one by one, or through cuBLAS on widened rows). Each pass reads
 * the weights again, so more rows go to cuBLAS: 1B q8_0 decode of 8 / 16 / 32 / 64 sequences
 * took 2,829 / 3,020 / 3,167 / 3,230 tok/s in passes and 2,023 / 3,910 / 7,560 / 13,497 through
 * cuBLAS (q4_0 2,965 / 3,225 / 3,389 / 3,445 and 2,058 / 3,898 / 7,618 / 13,480). */
#define Q8X_MAX_T 8
static bool gemv_q8x_set(hc_cuda_ctx *cx, float *const *outs, const float *x, const hc_mat *const *ws, const hc_vec *const *bs,
                         int n, int64_t T, bool gated, hc_activation act) {
    const int quant = ws[0]->quant;
    if (T > Q8X_MAX_T || (quant != HC_QUANT_Q8_0 && quant != HC_QUANT_Q4_0 && quant != HC_QUANT_Q4_K) ||
        ((uintptr_t)x & 15))
        return false;
    const int64_t K = ws[0]->cols;
    const size_t rb = hc_quant_row_bytes(quant, K);
    if (rb % 16) return false;
    for (int i = 0; i < n; i++) {
        const hc_mat *w = ws[i];
        if (w->quant != quant || w->cols != K || w->transposed || ((uintptr_t)w->data & 15)) return false;
        if (gated && w->rows != ws[0]->rows) return false;
    }
    gemv_set s;
    gemv_set_fill(&s, outs, ws, bs, n, gated, act);
    /* more than 4 rows of x (a decode step of several sequences): 4 at a time, each pass
     * reading the weights again, which still beats widening them for cuBLAS every step */
    for (int64_t t0 = 0; t0 < T; t0 += 4) {
        const int64_t tt = T - t0 < 4 ? T - t0 : 4;
        gemv_set c = s;
        for (int i = 0; i < n; i++)
            if (c.out[i]) c.out[i] += t0 * (s.end[i] - (i && !gated ? s.end[i - 1] : 0));
        const float *xc = x + t0 * K;
        const bool ok = quant == HC_QUANT_Q8_0
                            ? (gated ? launch_gemv_q8x<HC_QUANT_Q8_0, true>(cx, c, xc, rb, K, tt)
                                     : launch_gemv_q8x<HC_QUANT_Q8_0, false>(cx, c, xc, rb, K, tt))
                        : quant == HC_QUANT_Q4_K
                            ? (gated ? launch_gemv_q8x<HC_QUANT_Q4_K, true>(cx, c, xc, rb, K, tt)
                                     : launch_gemv_q8x<HC_QUANT_Q4_K, false>(cx, c, xc, rb, K, tt))
                            : (gated ? launch_gemv_q8x<HC_QUANT_Q4_0, true>(cx, c, xc, rb, K, tt)
                                     : launch_gemv_q8x<HC_QUANT_Q4_0, false>(cx, c, xc, rb, K, tt));
        if (!ok) return false; /* only the first pass can fail: later ones need no more shared memory */
    }
    return true;
}

/* ---- int8 tensor-core matmul: q8_0 / q4_0 weights, 9 to 16 rows of x ----------------------------
 * Decode steps of several sequences. Widening every weight for cuBLAS each step wrote and read
 * back twice the weights' bytes; here x is quantized once per call as the GEMV quantizes it (per
 * block of 32: d = amax / 127, q = x / d rounded to nearest even) and each weight block meets it
 * on the tensor cores (mma.sync m16n8k32, s8 x s8 -> s32), the block's integer dot then scaled by
 * d_x * d_w into f32. A block of MMQ_WARPS warps takes 8 weight rows, its warps splitting the
 * 32-blocks of K, and all rows of x (MT tiles of 16). 1B decode, 12 / 16 sequences: q8_0 2,986-
 * 3,017 -> 3,838-3,885 / 3,971-3,984 -> 4,662-4,705 tok/s, q4_0 2,942-3,013 -> 4,556-4,559 /
 * 3,977-4,003 -> 5,468-5,524. From 32 rows widening for cuBLAS is faster again (q8_0 32 / 64:
 * 7,166 / 12,790 widened, 6,909 / 9,653 here): each warp loads x's fragments for only 8 rows of
 * weights, so the loads of x, not of weights, bound it there. */
#define MMQ_MAX_T 16
#define MMQ_WARPS 8

/* x[T, K] to int8 [T][K] and scales [T][K / 32]: 8 values a thread, 4 threads a block of 32 */
__global__ void quantize_x_q8_kernel(int8_t *xq, float *xd, const float *x, int64_t n) {
    const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    const bool in = c < n / 8;
    int sum;
    const float d = quantize8_q8(xq + 8 * c, x + 8 * c, in, &sum);
    if (in && (threadIdx.x & 3) == 0) xd[c / 4] = d;
}

/* 4 bytes of a weight block at a 2-byte aligned address */
__device__ __forceinline__ uint32_t ld_u32_a2(const uint8_t *p) {
    const uint16_t *h = (const uint16_t *)p;
    return (uint32_t)__ldg(h) | ((uint32_t)__ldg(h + 1) << 16);
}

/* out[T, N] (+ bias) from xq [T][K] int8 with scales xd [T][K / 32] and q8_0 / q4_0 rows w of
 * row_bytes; T <= 16 * MT. Fragments of m16n8k32: lane (g = lane / 4, tq = lane % 4) holds x's
 * rows g and g + 8 at k = 4 tq .. 4 tq + 3 and 16 + 4 tq .., weight row g at the same k, and the
 * products of rows g, g + 8 with weight rows 2 tq, 2 tq + 1. */
template <int QUANT, int MT>
__global__ void __launch_bounds__(32 * MMQ_WARPS)
mmq_kernel(float *out, const int8_t *xq, const float *xd, const uint8_t *w, size_t row_bytes, const void *bias,
           hc_dtype bias_dt, int64_t N, int64_t K, int T) {
    constexpr int BB = QUANT == HC_QUANT_Q8_0 ? sizeof(hc_block_q8_0) : sizeof(hc_block_q4_0);
    __shared__ float part[MMQ_WARPS][MT * 16][8];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    const int64_t n0 = blockIdx.x * 8ll, nb = K / 32;
    const int64_t nB = n0 + g;                          /* this lane's row of the B fragment */
    const int64_t nC0 = n0 + 2 * tq, nC1 = nC0 + 1;     /* its rows of C */
    const uint8_t *rowB = w + (nB < N ? nB : 0) * row_bytes;
    const uint8_t *rowC0 = w + (nC0 < N ? nC0 : 0) * row_bytes, *rowC1 = w + (nC1 < N ? nC1 : 0) * row_bytes;
    float acc[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0.0f;
    for (int64_t b = warp; b < nb; b += MMQ_WARPS) {
        uint32_t b0, b1;
        if (QUANT == HC_QUANT_Q8_0) {
            const uint8_t *q = rowB + b * BB + 2; /* the block's 32 int8 after its f16 scale */
            b0 = ld_u32_a2(q + 4 * tq), b1 = ld_u32_a2(q + 16 + 4 * tq);
        } else { /* q4_0: element i is byte i's low nibble, element 16 + i its high one; value - 8 */
            const uint32_t v = ld_u32_a2(rowB + b * BB + 2 + 4 * tq);
            b0 = __vsub4(v & 0x0f0f0f0fu, 0x08080808u), b1 = __vsub4((v >> 4) & 0x0f0f0f0fu, 0x08080808u);
        }
        if (nB >= N) b0 = b1 = 0;
        const float dw0 = nC0 < N ? __half2float(__ldg((const __half *)(rowC0 + b * BB))) : 0.0f;
        const float dw1 = nC1 < N ? __half2float(__ldg((const __half *)(rowC1 + b * BB))) : 0.0f;
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            const int t0 = mt * 16 + g, t1 = t0 + 8;
            uint32_t a[4] = {0, 0, 0, 0};
            float dx0 = 0.0f, dx1 = 0.0f;
            if (t0 < T) {
                const int8_t *xr = xq + (int64_t)t0 * K + b * 32 + 4 * tq;
                a[0] = *(const uint32_t *)xr, a[2] = *(const uint32_t *)(xr + 16);
                dx0 = xd[(int64_t)t0 * nb + b];
            }
            if (t1 < T) {
                const int8_t *xr = xq + (int64_t)t1 * K + b * 32 + 4 * tq;
                a[1] = *(const uint32_t *)xr, a[3] = *(const uint32_t *)(xr + 16);
                dx1 = xd[(int64_t)t1 * nb + b];
            }
            int c[4] = {0, 0, 0, 0};
            asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                         "{%0,%1,%2,%3};\n"
                         : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
            acc[mt][0] += (float)c[0] * (dx0 * dw0);
            acc[mt][1] += (float)c[1] * (dx0 * dw1);
            acc[mt][2] += (float)c[2] * (dx1 * dw0);
            acc[mt][3] += (float)c[3] * (dx1 * dw1);
        }
    }
    /* the warps' partial sums over K, added in warp order */
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        part[warp][mt * 16 + g][2 * tq] = acc[mt][0], part[warp][mt * 16 + g][2 * tq + 1] = acc[mt][1];
        part[warp][mt * 16 + g + 8][2 * tq] = acc[mt][2], part[warp][mt * 16 + g + 8][2 * tq + 1] = acc[mt][3];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < MT * 16 * 8; i += blockDim.x) {
        const int t = i / 8, c = i % 8;
        const int64_t n = n0 + c;
        if (t >= T || n >= N) continue;
        float v = 0.0f;
#pragma unroll
        for (int wi = 0; wi < MMQ_WARPS; wi++) v += part[wi][t][c];
        if (bias) v += hc_ld(bias, bias_dt, n);
        out[(int64_t)t * N + n] = v;
    }
}

/* Whether W and x suit the int8 tensor-core matmul (q8_0 / q4_0, 9 to MMQ_MAX_T rows). */
static bool mmq_applies(const hc_mat *w, const float *x, int64_t T) {
    return T > Q8X_MAX_T && T <= MMQ_MAX_T && (w->quant == HC_QUANT_Q8_0 || w->quant == HC_QUANT_Q4_0) && !w->transposed &&
           w->cols % 32 == 0 && ((uintptr_t)x & 15) == 0 && ((uintptr_t)w->data & 1) == 0;
}

/* x[T, K] to int8 in cx->mmq_x: [T][K] int8, then [T][K / 32] scales. False when the scratch
 * could not grow (the error is kept). */
static bool mmq_quantize(hc_backend *be, const float *x, int64_t T, int64_t K) {
    hc_cuda_ctx *cx = hc_cuda(be);
    hc_cuda_f32_ready(be, x);
    const size_t bytes = (size_t)(T * K) + sizeof(float) * (size_t)(T * K / 32);
    char *buf = (char *)hc_cuda_scratch(be, &cx->mmq_x, &cx->mmq_x_bytes, bytes);
    if (!buf) return false;
    const int64_t chunks = T * K / 8;
    quantize_x_q8_kernel<<<(unsigned)((chunks + 255) / 256), 256, 0, cx->stream>>>(
        (int8_t *)buf, (float *)(buf + T * K) /* T * K is a multiple of 32 */, x, T * K);
    return true;
}

/* out = x @ W^T (+ bias) from the x that mmq_quantize left (W suits mmq_applies). */
static void mmq_launch(hc_cuda_ctx *cx, float *out, const hc_mat *w, const hc_vec *bias, int64_t T) {
    constexpr int MT = (MMQ_MAX_T + 15) / 16;
    const int64_t K = w->cols, N = w->rows;
    const int8_t *xq = (const int8_t *)cx->mmq_x;
    const float *xd = (const float *)((const char *)cx->mmq_x + T * K);
    const void *bd = bias && bias->data ? bias->data : NULL;
    const hc_dtype bdt = bd ? bias->dtype : HC_DTYPE_F32;
    const size_t rb = hc_quant_row_bytes(w->quant, K);
    const unsigned blocks = (unsigned)((N + 7) / 8);
    const uint8_t *wd = (const uint8_t *)w->data;
    if (w->quant == HC_QUANT_Q8_0)
        mmq_kernel<HC_QUANT_Q8_0, MT><<<blocks, 32 * MMQ_WARPS, 0, cx->stream>>>(out, xq, xd, wd, rb, bd, bdt, N, K, (int)T);
    else
        mmq_kernel<HC_QUANT_Q4_0, MT><<<blocks, 32 * MMQ_WARPS, 0, cx->stream>>>(out, xq, xd, wd, rb, bd, bdt, N, K, (int)T);
}

/* out = x @ W^T (+ bias) through the int8 tensor-core matmul; false when it does not apply
 * (the caller widens the weights for cuBLAS). */
static bool mmq(hc_backend *be, float *out, const float *x, const hc_mat *w, const hc_vec *bias, int64_t T) {
    if (!mmq_applies(w, x, T)) return false;
    if (mmq_quantize(be, x, T, w->cols)) mmq_launch(hc_cuda(be), out, w, bias, T);
    return true;
}

static void launch_gemv_quant(hc_cuda_ctx *cx, float *out, const float *x, const hc_mat *w, const void *bias, hc_dtype bdt,
                              int64_t T) {
    const size_t rb = hc_quant_row_bytes(w->quant, w->cols);
    const unsigned blocks = hc_blocks(w->rows, GEMV_WARPS);
    const uint8_t *wd = (const uint8_t *)w->data;
#define GQ(TT)                                                                                                         \
    case TT: gemv_quant_kernel<TT><<<blocks, 32 * GEMV_WARPS, 0, cx->stream>>>(out, x, wd, w->quant, rb, bias, bdt, w->rows, w->cols); break
    TT_SWITCH(T, GQ)
#undef GQ
}

static void gemv(hc_backend *be, float *out, const float *x, const hc_mat *w, const hc_vec *bias, int64_t T) {
    hc_cuda_ctx *cx = hc_cuda(be);
    const void *bd = bias && bias->data ? bias->data : NULL;
    const hc_dtype bdt = bd ? bias->dtype : HC_DTYPE_F32;
    if (w->quant) {
        const hc_vec *const bl[1] = {bias};
        float *const ol[1] = {out};
        if (!gemv_q8x_set(cx, ol, x, &w, bl, 1, T, false, HC_ACT_SILU)) launch_gemv_quant(cx, out, x, w, bd, bdt, T);
        return;
    }
    const hc_vec *const bl[1] = {bias};
    float *const ol[1] = {out};
    if (gemv_fused(cx, ol, x, &w, bl, 1, T, false, HC_ACT_SILU)) return;
    if (!w->transposed) { /* misaligned or odd rows */
        const unsigned blocks = hc_blocks(w->rows, GEMV_WARPS);
#define GR(TT)                                                                                                         \
    case TT: gemv_rows_kernel<TT><<<blocks, 32 * GEMV_WARPS, 0, cx->stream>>>(out, x, w->data, w->dtype, w->ld, bd, bdt, w->rows, w->cols); break
        switch (T) { GR(1); GR(2); GR(3); GR(4); GR(5); GR(6); GR(7); GR(8); }
#undef GR
        return;
    }
    gemv_any_kernel<<<hc_blocks(T * w->rows, 128), 128, 0, cx->stream>>>(out, x, w->data, w->dtype, w->ld, w->transposed, bd,
                                                                        bdt, w->rows, w->cols, T);
}

/* ---- GEMM through cuBLAS ------------------------------------------------------------------ */

/* dst[n] = narrow(src[n]) for activations, four at a time (16-byte loads, 8-byte stores). */
template <typename OT> __global__ void convert_acts_kernel(OT *dst, const float *src, int64_t n, bool vec) {
    const int64_t n4 = vec ? n / 4 : 0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4; i += (int64_t)gridDim.x * blockDim.x) {
        const float4 v = ((const float4 *)src)[i];
        OT o[4] = {narrow<OT>(v.x), narrow<OT>(v.y), narrow<OT>(v.z), narrow<OT>(v.w)};
        *(uint2 *)(dst + 4 * i) = *(const uint2 *)o;
    }
    for (int64_t i = 4 * n4 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = narrow<OT>(src[i]);
}

/* dst[n] = src[n] widened from 16 bits (HT) to f32. */
template <typename HT> __global__ void widen_acts_kernel(float *dst, const HT *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = (float)src[i];
}

/* dst[r, c] (contiguous [rows, cols]) = stored rows r0.. of a weight matrix, widened or
 * narrowed to OT; quantized rows are dequantized. */
template <typename OT>
__global__ void convert_rows_kernel(OT *dst, const void *src, hc_dtype dt, int quant, size_t row_bytes, int64_t ld,
                                    int64_t r0, int64_t rows, int64_t cols) {
    if (quant) { /* a thread a block of 32 (cols is a multiple of 32): each block widened once */
        const int64_t nbr = cols / 32, n = rows * nbr;
        for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
            const int64_t r = i / nbr, g = i % nbr;
            const uint8_t *row = (const uint8_t *)src + (r0 + r) * row_bytes;
            float wf[32];
            if (quant == HC_QUANT_Q8_0) dequant_q8_0(wf, (const uint16_t *)(row + g * sizeof(hc_block_q8_0)));
            else if (quant == HC_QUANT_Q4_0) dequant_q4_0(wf, (const uint16_t *)(row + g * sizeof(hc_block_q4_0)));
            else dequant_q4_k_sub(wf, (const hc_block_q4_k *)(row + (g / 8) * sizeof(hc_block_q4_k)), (int)(g % 8));
            __align__(16) OT o[32];
#pragma unroll
            for (int j = 0; j < 32; j++) o[j] = narrow<OT>(wf[j]);
            uint4 *d16 = (uint4 *)(dst + r * cols + g * 32); /* 16-byte stores: cols is a multiple of 32 */
#pragma unroll
            for (int j = 0; j < 32 * (int)sizeof(OT) / 16; j++) d16[j] = ((const uint4 *)o)[j];
        }
        return;
    }
    const int64_t n = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = r0 + i / cols, c = i % cols;
        dst[i] = narrow<OT>(hc_ld(src, dt, r * ld + c));
    }
}

/* out[t, n] = bias[n]: the starting value cuBLAS accumulates onto (beta = 1). */
__global__ void broadcast_bias_kernel(float *out, const void *bias, hc_dtype dt, int64_t N, int64_t T) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < T * N; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = hc_ld(bias, dt, i % N);
}

static unsigned grid_for(int64_t n) {
    unsigned b = hc_blocks(n, 256);
    return b < 65535u ? (b ? b : 1) : 65535u;
}

static cudaDataType_t cuda_type(hc_dtype dt) {
    return dt == HC_DTYPE_F32 ? CUDA_R_32F : dt == HC_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
}

static void convert_rows(hc_cuda_ctx *cx, void *dst, hc_dtype to, const hc_mat *w, int64_t r0, int64_t rows, int64_t cols) {
    const size_t rb = w->quant ? hc_quant_row_bytes(w->quant, w->cols) : 0;
    const unsigned g = grid_for(w->quant ? rows * cols / 32 : rows * cols);
    if (to == HC_DTYPE_F32)
        convert_rows_kernel<float><<<g, 256, 0, cx->stream>>>((float *)dst, w->data, w->dtype, w->quant, rb, w->ld, r0, rows, cols);
    else if (to == HC_DTYPE_BF16)
        convert_rows_kernel<__nv_bfloat16><<<g, 256, 0, cx->stream>>>((__nv_bfloat16 *)dst, w->data, w->dtype, w->quant, rb,
                                                                      w->ld, r0, rows, cols);
    else
        convert_rows_kernel<__half><<<g, 256, 0, cx->stream>>>((__half *)dst, w->data, w->dtype, w->quant, rb, w->ld, r0, rows,
                                                               cols);
}

/* The operand type of a prompt GEMM: f32 weights stay as they are (cuBLAS rounds them itself
 * when the compute dtype is lower); the others meet the compute dtype. */
static hc_dtype gemm_operand(const hc_cuda_ctx *cx, const hc_mat *w) {
    return !w->quant && w->dtype == HC_DTYPE_F32 ? HC_DTYPE_F32 : cx->compute;
}

void hc_cuda_narrow(hc_backend *be, void *dst, hc_dtype to, const float *src, int64_t n) {
    hc_cuda_ctx *cx = hc_cuda(be);
    const bool vec = (uintptr_t)src % 16 == 0 && (uintptr_t)dst % 8 == 0; /* float4 loads, 8-byte stores */
    const unsigned g = grid_for(vec ? (n + 3) / 4 : n);
    if (to == HC_DTYPE_BF16) convert_acts_kernel<__nv_bfloat16><<<g, 256, 0, cx->stream>>>((__nv_bfloat16 *)dst, src, n, vec);
    else convert_acts_kernel<__half><<<g, 256, 0, cx->stream>>>((__half *)dst, src, n, vec);
}

void hc_cuda_f32_ready(hc_backend *be, const float *x) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (!x || x != cx->f32_missing) return;
    cx->f32_missing = NULL;
    const int64_t n = cx->acts16_n;
    if (cx->compute == HC_DTYPE_BF16)
        widen_acts_kernel<<<grid_for(n), 256, 0, cx->stream>>>((float *)x, (const __nv_bfloat16 *)cx->acts16, n);
    else
        widen_acts_kernel<<<grid_for(n), 256, 0, cx->stream>>>((float *)x, (const __half *)cx->acts16, n);
    HC_CUDA_LAUNCHED(be, "widen");
}

/* x[T, K] as the operand type op: x itself for f32, else a conversion in scratch_b. */
static const void *gemm_acts(hc_backend *be, const float *x, int64_t T, int64_t K, hc_dtype op) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (op == cx->compute && x == cx->acts16_src && T * K == cx->acts16_n &&
        (cx->acts16_seq == cx->op_seq || x == cx->f32_missing))
        return cx->acts16; /* the op before wrote this copy, or it is x's only copy */
    hc_cuda_f32_ready(be, x);
    if (op == HC_DTYPE_F32) return x;
    void *xs = hc_cuda_scratch(be, &cx->scratch_b, &cx->scratch_b_bytes, hc_dtype_size(op) * (size_t)(T * K));
    if (xs) hc_cuda_narrow(be, xs, op, x, T * K);
    return xs;
}

/* out = x @ W^T + b with x already as gemm_operand(w) (xb). */
static void gemm_core(hc_backend *be, float *out, const void *xb, const hc_mat *w, const hc_vec *bias, int64_t T) {
    hc_cuda_ctx *cx = hc_cuda(be);
    const int64_t N = w->rows, K = w->cols;
    const bool f32_weights = !w->quant && w->dtype == HC_DTYPE_F32;
    const hc_dtype op = gemm_operand(cx, w);
    cublasComputeType_t ctype = CUBLAS_COMPUTE_32F;
    if (f32_weights && cx->compute == HC_DTYPE_BF16) ctype = CUBLAS_COMPUTE_32F_FAST_16BF;
    if (f32_weights && cx->compute == HC_DTYPE_F16) ctype = CUBLAS_COMPUTE_32F_FAST_16F;
    float beta = 0.0f;
    if (bias && bias->data) {
        broadcast_bias_kernel<<<grid_for(T * N), 256, 0, cx->stream>>>(out, bias->data, bias->dtype, N, T);
        beta = 1.0f;
    }
    const float alpha = 1.0f;
    const size_t ops = hc_dtype_size(op);
    /* Stored rows: N (out features) for [N, K]; K for GPT-2's [K, N]. */
    const int64_t stored_rows = w->transposed ? K : N, stored_cols = w->transposed ? N : K;
    const bool direct = !w->quant && w->dtype == op;
    int64_t chunk = direct ? stored_rows : CONVERT_CHUNK_ELEMS / stored_cols;
    if (chunk < 1) chunk = 1;
    if (chunk > stored_rows) chunk = stored_rows;
    void *ws = NULL;
    if (!direct && !(ws = hc_cuda_scratch(be, &cx->scratch_a, &cx->scratch_a_bytes, ops * (size_t)(chunk * stored_cols))))
        return;
    for (int64_t r0 = 0; r0 < stored_rows; r0 += chunk) {
        const int64_t rows = stored_rows - r0 < chunk ? stored_rows - r0 : chunk;
        const void *a;
        int64_t lda;
        if (direct) {
            a = (const char *)w->data + (size_t)(r0 * w->ld) * ops;
            lda = w->ld;
        } else {
            convert_rows(cx, ws, op, w, r0, rows, stored_cols);
            a = ws;
            lda = stored_cols;
        }
        cublasStatus_t st;
        if (!w->transposed) {
            /* Column-major: out^T[N, T] (ldc N) = (W rows r0..)[rows, K] . x^T[K, T]. */
            st = cublasGemmEx(cx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, (int)T, (int)K, &alpha, a, cuda_type(op), (int)lda,
                              xb, cuda_type(op), (int)K, &beta, out + r0, CUDA_R_32F, (int)N, ctype, CUBLAS_GEMM_DEFAULT);
        } else {
            /* Stored [K, N]: the chunk is k in [r0, r0 + rows); partial sums accumulate. */
            const float b = r0 == 0 ? beta : 1.0f;
            st = cublasGemmEx(cx->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)N, (int)T, (int)rows, &alpha, a, cuda_type(op), (int)lda,
                              (const char *)xb + (size_t)r0 * ops, cuda_type(op), (int)K, &b, out, CUDA_R_32F, (int)N, ctype,
                              CUBLAS_GEMM_DEFAULT);
        }
        if (st != CUBLAS_STATUS_SUCCESS) {
            hc_cuda_fail(be, cudaErrorUnknown, "cublasGemmEx");
            return;
        }
    }
}

static void gemm(hc_backend *be, float *out, const float *x, const hc_mat *w, const hc_vec *bias, int64_t T) {
    const void *xb = gemm_acts(be, x, T, w->cols, gemm_operand(hc_cuda(be), w));
    if (xb) gemm_core(be, out, xb, w, bias, T);
}

/* Two GEMMs of one input whose weights have one shape (k and v of a GQA model: each alone is
 * too few output tiles to fill the GPU; gate and up: one launch of twice the tiles leaves less
 * of a last wave) as one strided-batched cuBLAS call: the batch stride is the distance between
 * the two weights, and between the two outputs (of type ot: f32, or the 16-bit compute type).
 * 16-bit compute only: in f32 the batched kernel rounds differently from the single one, and f32
 * results stay the same whichever buffers the outputs land in (an adapter with B = 0 changes
 * nothing, to the bit). False when the two do not qualify. */
static bool gemm_pair(hc_backend *be, void *const *outs, cudaDataType_t ot, const void *xb, const hc_mat *const *ws,
                      const hc_vec *const *bs, int64_t T) {
    hc_cuda_ctx *cx = hc_cuda(be);
    const hc_mat *a = ws[0], *b = ws[1];
    if (cx->compute == HC_DTYPE_F32 || a->quant || b->quant || a->transposed || b->transposed || a->dtype != cx->compute ||
        b->dtype != cx->compute || a->rows != b->rows || a->cols != b->cols || a->ld != b->ld || (bs[0] && bs[0]->data) ||
        (bs[1] && bs[1]->data))
        return false;
    const ptrdiff_t es = (ptrdiff_t)hc_dtype_size(a->dtype), os = ot == CUDA_R_32F ? 4 : 2;
    const ptrdiff_t wd = (const char *)b->data - (const char *)a->data, od = (const char *)outs[1] - (const char *)outs[0];
    if (wd <= 0 || od <= 0 || wd % es || od % os) return false;
    const float alpha = 1.0f, beta = 0.0f;
    const cudaDataType_t t = cuda_type(cx->compute);
    const cublasStatus_t st = cublasGemmStridedBatchedEx(cx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)a->rows, (int)T, (int)a->cols,
                                                         &alpha, a->data, t, (int)a->ld, (long long)(wd / es), xb, t,
                                                         (int)a->cols, 0, &beta, outs[0], ot, (int)a->rows, (long long)(od / os),
                                                         2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) hc_cuda_fail(be, cudaErrorUnknown, "cublasGemmStridedBatchedEx");
    return true;
}

/* Prompt GEMMs of one input (q, k, v; gate, up): the input is converted once when every weight
 * takes the same operand type. False when they do not (the caller runs them one by one). */
static bool gemm_shared_input(hc_backend *be, float *const *outs, const float *x, const hc_mat *const *ws,
                              const hc_vec *const *bs, int n, int64_t T) {
    hc_cuda_ctx *cx = hc_cuda(be);
    bool int8 = true; /* q8_0 / q4_0 weights take the int8 matmul, x quantized once for all */
    for (int i = 0; int8 && i < n; i++) int8 = mmq_applies(ws[i], x, T) && ws[i]->cols == ws[0]->cols;
    if (int8) {
        if (mmq_quantize(be, x, T, ws[0]->cols))
            for (int i = 0; i < n; i++) mmq_launch(cx, outs[i], ws[i], bs[i], T);
        return true;
    }
    const hc_dtype op = gemm_operand(cx, ws[0]);
    for (int i = 1; i < n; i++)
        if (gemm_operand(cx, ws[i]) != op || ws[i]->cols != ws[0]->cols) return false;
    const void *xb = gemm_acts(be, x, T, ws[0]->cols, op);
    for (int i = 0; xb && i < n; i++) {
        void *const two[2] = {outs[i], i + 1 < n ? outs[i + 1] : NULL};
        if (i + 1 < n && gemm_pair(be, two, CUDA_R_32F, xb, ws + i, bs + i, T)) {
            i++;
            continue;
        }
        gemm_core(be, outs[i], xb, ws[i], bs[i], T);
    }
    return true;
}

bool hc_cuda_gemm16_weight(hc_backend *be, const hc_mat *w, int64_t T) {
    const hc_cuda_ctx *cx = hc_cuda(be);
    return T > gemv_max_t() && cx->compute != HC_DTYPE_F32 && !w->quant && !w->transposed && w->dtype == cx->compute;
}

bool hc_cuda_matmul_converted(hc_backend *be, float *out, const void *x16, const hc_mat *w, int64_t T) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (T <= gemv_max_t() || gemm_operand(cx, w) != cx->compute || cx->compute == HC_DTYPE_F32) return false;
    gemm_core(be, out, x16, w, NULL, T);
    HC_CUDA_LAUNCHED(be, "matmul");
    return true;
}

/* Whether this matmul is a decode step's int8 GEMV (a norm after it lets the next GEMV start
 * early). */
static void note_gemv_kind(hc_backend *be, const hc_mat *w, int64_t T) {
    hc_cuda(be)->quant_gemv_last = T <= Q8X_MAX_T && (w->quant == HC_QUANT_Q8_0 || w->quant == HC_QUANT_Q4_0);
}

void hc_cuda_matmul(hc_backend *be, float *out, const float *x, const hc_mat *w, const hc_vec *bias, int64_t T) {
    if (T <= 0 || hc_cuda(be)->failed) return;
    note_gemv_kind(be, w, T);
    if (T <= gemv_max_t()) {
        gemv(be, out, x, w, bias, T);
    } else {
        const hc_vec *const bl[1] = {bias};
        float *const ol[1] = {out};
        if (!(w->quant && (gemv_q8x_set(hc_cuda(be), ol, x, &w, bl, 1, T, false, HC_ACT_SILU) || mmq(be, out, x, w, bias, T))))
            gemm(be, out, x, w, bias, T);
    }
    HC_CUDA_LAUNCHED(be, "matmul");
}

void hc_cuda_matmul_n(hc_backend *be, float *const *outs, const float *x, const hc_mat *const *ws, const hc_vec *const *bs,
                      int n, int64_t T) {
    if (T <= 0 || hc_cuda(be)->failed) return;
    note_gemv_kind(be, ws[0], T);
    if ((T <= gemv_max_t() && gemv_fused(hc_cuda(be), outs, x, ws, bs, n, T, false, HC_ACT_SILU)) ||
        gemv_q8x_set(hc_cuda(be), outs, x, ws, bs, n, T, false, HC_ACT_SILU)) {
        HC_CUDA_LAUNCHED(be, "matmul_n");
        return;
    }
    if (T > gemv_max_t() && gemm_shared_input(be, outs, x, ws, bs, n, T)) {
        HC_CUDA_LAUNCHED(be, "matmul_n");
        return;
    }
    for (int i = 0; i < n; i++) hc_cuda_matmul(be, outs[i], x, ws[i], bs[i], T);
}

/* out += alpha x W^T. f32 weights (LoRA's A and B) at prompt sizes: one cuBLAS call that
 * accumulates (beta 1) at the rate matmul would use; otherwise the op sequence. */
void hc_cuda_matmul_add(hc_backend *be, float *out, float *tmp, const float *x, const hc_mat *w, float alpha, int64_t T) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (T <= 0 || cx->failed) return;
    if (T <= gemv_max_t() || w->quant || w->dtype != HC_DTYPE_F32) {
        hc_fused_matmul_add(be, out, tmp, x, w, alpha, T);
        return;
    }
    hc_cuda_f32_ready(be, x); /* cuBLAS reads x below */
    const int64_t N = w->rows, K = w->cols;
    const cublasComputeType_t ct = cx->compute == HC_DTYPE_BF16   ? CUBLAS_COMPUTE_32F_FAST_16BF
                                   : cx->compute == HC_DTYPE_F16 ? CUBLAS_COMPUTE_32F_FAST_16F
                                                                 : CUBLAS_COMPUTE_32F;
    const float beta = 1.0f;
    /* column-major out^T[N, T] += alpha W . x^T; W stored [N, K] (ld), or [K, N] when transposed */
    const cublasStatus_t st = cublasGemmEx(cx->blas, w->transposed ? CUBLAS_OP_N : CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)T,
                                           (int)K, &alpha, w->data, CUDA_R_32F, (int)w->ld, x, CUDA_R_32F, (int)K, &beta,
                                           out, CUDA_R_32F, (int)N, ct, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) hc_cuda_fail(be, cudaErrorUnknown, "cublasGemmEx (matmul_add)");
}

void hc_cuda_gated_matmul(hc_backend *be, float *out, float *tmp, const float *x, const hc_mat *gate, const hc_vec *bg,
                          const hc_mat *up, const hc_vec *bu, hc_activation act, int64_t T) {
    if (T <= 0 || hc_cuda(be)->failed) return;
    note_gemv_kind(be, gate, T);
    const hc_mat *const ws[2] = {gate, up};
    const hc_vec *const bs[2] = {bg, bu};
    float *const outs[2] = {out, NULL};
    if (gate->rows == up->rows && ((T <= gemv_max_t() && gemv_fused(hc_cuda(be), outs, x, ws, bs, 2, T, true, act)) ||
                                   gemv_q8x_set(hc_cuda(be), outs, x, ws, bs, 2, T, true, act))) {
        HC_CUDA_LAUNCHED(be, "gated_matmul");
        return;
    }
    float *const gu[2] = {out, tmp};
    if (!(T > gemv_max_t() && gemm_shared_input(be, gu, x, ws, bs, 2, T))) {
        hc_cuda_matmul(be, out, x, gate, bg, T);
        hc_cuda_matmul(be, tmp, x, up, bu, T);
    }
    hc_cuda_glu(be, out, out, tmp, act, T * gate->rows);
}

/* ---- the gated MLP in 16 bits ----------------------------------------------------------------
 * Prompts computing in bf16/f16 on weights stored in that dtype: gate and up come out of
 * cuBLAS in 16 bits, the glu reads and writes 16 bits, and the down GEMM takes that product as
 * it is, where the op sequence would write both in f32, read them back, write the glu's f32
 * output and convert it again. transformers rounds at the same places in a bf16 model. */

template <typename HT>
__global__ void glu16_kernel(HT *out, const HT *gate, const HT *up, hc_activation act, int64_t n) {
    const int64_t n8 = n / 8;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
        const uint4 g = ((const uint4 *)gate)[i], u = ((const uint4 *)up)[i];
        const HT *gv = (const HT *)&g, *uv = (const HT *)&u;
        HT o[8];
#pragma unroll
        for (int j = 0; j < 8; j++) o[j] = narrow<HT>(hc_act_apply((float)gv[j], act) * (float)uv[j]);
        ((uint4 *)out)[i] = *(const uint4 *)o;
    }
    for (int64_t i = 8 * n8 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = narrow<HT>(hc_act_apply((float)gate[i], act) * (float)up[i]);
}

void hc_cuda_glu16(hc_backend *be, void *out, const void *gate, const void *up, hc_activation act, int64_t n) {
    hc_cuda_ctx *cx = hc_cuda(be);
    const unsigned g = grid_for((n + 7) / 8);
    if (cx->compute == HC_DTYPE_BF16)
        glu16_kernel<__nv_bfloat16><<<g, 256, 0, cx->stream>>>((__nv_bfloat16 *)out, (const __nv_bfloat16 *)gate,
                                                                (const __nv_bfloat16 *)up, act, n);
    else
        glu16_kernel<__half><<<g, 256, 0, cx->stream>>>((__half *)out, (const __half *)gate, (const __half *)up, act, n);
}

/* out^T[N, T] = W[N, K] . x^T (+ out when beta is 1: the residual add in the GEMM's epilogue)
 * with 16-bit x and W (stored as op) and output type ot. */
static bool gemm16(hc_backend *be, void *out, cudaDataType_t ot, const void *x, const hc_mat *w, int64_t T, float beta) {
    hc_cuda_ctx *cx = hc_cuda(be);
    const float alpha = 1.0f;
    const cudaDataType_t t = cuda_type(cx->compute);
    const cublasStatus_t st = cublasGemmEx(cx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)w->rows, (int)T, (int)w->cols, &alpha,
                                           w->data, t, (int)w->ld, x, t, (int)w->cols, &beta, out, ot, (int)w->rows,
                                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) hc_cuda_fail(be, cudaErrorUnknown, "cublasGemmEx");
    return st == CUBLAS_STATUS_SUCCESS;
}

/* The gated MLP in 16 bits into out[T, C] (f32; beta 1 adds onto it). False, having done
 * nothing, when the shapes, dtypes or row count do not qualify. */
static bool ffn16(hc_backend *be, float *out, float beta, float *a, float *b, const float *x, const hc_mat *gate,
                  const hc_vec *bg, const hc_mat *up, const hc_vec *bu, const hc_mat *down, const hc_vec *bd,
                  hc_activation act, int64_t T) {
    hc_cuda_ctx *cx = hc_cuda(be);
    const hc_mat *const ms[3] = {gate, up, down};
    bool fast = T > gemv_max_t() && cx->compute != HC_DTYPE_F32 && !(bg && bg->data) && !(bu && bu->data) &&
                !(bd && bd->data) && gate->rows == up->rows && gate->cols == up->cols && down->cols == gate->rows &&
                (T * gate->rows) % 8 == 0; /* the 16-bit halves of a start on 16 bytes */
    for (int i = 0; fast && i < 3; i++) fast = !ms[i]->quant && !ms[i]->transposed && ms[i]->dtype == cx->compute;
    if (!fast) return false;
    const int64_t I = gate->rows;
    const void *xb = gemm_acts(be, x, T, gate->cols, cx->compute); /* [T, C] 16-bit */
    /* a's 4 bytes an element hold 16-bit gate and up [T, I] each; b holds the product */
    char *g16 = (char *)a, *u16 = g16 + 2 * (size_t)(T * I);
    const cudaDataType_t ht = cuda_type(cx->compute);
    if (!xb) return true; /* the failure is recorded */
    const hc_mat *const gu[2] = {gate, up};
    const hc_vec *const no_bias[2] = {NULL, NULL};
    void *const gu16[2] = {g16, u16};
    if (!gemm_pair(be, gu16, ht, xb, gu, no_bias, T) && /* one batched call where gate and up lie in order */
        (!gemm16(be, g16, ht, xb, gate, T, 0.0f) || !gemm16(be, u16, ht, xb, up, T, 0.0f)))
        return true;
    hc_cuda_glu16(be, b, g16, u16, act, T * I);
    gemm16(be, out, CUDA_R_32F, b, down, T, beta);
    return true;
}

void hc_cuda_ffn(hc_backend *be, float *out, float *a, float *b, const float *x, const hc_mat *gate, const hc_vec *bg,
                 const hc_mat *up, const hc_vec *bu, const hc_mat *down, const hc_vec *bd, hc_activation act, int64_t T) {
    if (T <= 0 || hc_cuda(be)->failed) return;
    if (ffn16(be, out, 0.0f, a, b, x, gate, bg, up, bu, down, bd, act, T)) {
        HC_CUDA_LAUNCHED(be, "ffn");
        return;
    }
    hc_cuda_gated_matmul(be, a, b, x, gate, bg, up, bu, act, T);
    hc_cuda_matmul(be, out, a, down, bd, T);
}

/* ---- the residual add in the GEMM ----------------------------------------------------------
 * A 16-bit prompt's o and down projections add into the f32 residual x inside cuBLAS (beta 1,
 * f32 C): the separate add would write the product in f32 and read it back with x. The norm
 * that follows then reads x alone. The sum is the same f32 addition of the same two values.
 * Prompts only, past a decode step of HC_PDL_MAX_ROWS sequences: there the add is a few rows'
 * worth, and decode steps keep the kernels they were tuned with. */

static bool residual_in_gemm(int64_t T) {
    static int off = -1; /* HUBCAP_CUDA_NO_RESIDUAL_GEMM: the op sequence always, to measure */
    if (off < 0) off = getenv("HUBCAP_CUDA_NO_RESIDUAL_GEMM") != NULL;
    return !off && T > HC_PDL_MAX_ROWS;
}

void hc_cuda_matmul_add_norm(hc_backend *be, float *h, float *x, float *o, const float *a, const hc_mat *w,
                             const hc_vec *bias, const hc_vec *nw, const hc_vec *nb, hc_norm_kind kind, float eps,
                             bool h_matmul_only, int64_t T) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (T <= 0 || cx->failed) return;
    if (residual_in_gemm(T) && hc_cuda_gemm16_weight(be, w, T) && !(bias && bias->data)) {
        const void *xb = gemm_acts(be, a, T, w->cols, cx->compute); /* [T, K] 16-bit */
        if (xb && gemm16(be, x, CUDA_R_32F, xb, w, T, 1.0f)) {
            HC_CUDA_LAUNCHED(be, "matmul_add_norm");
            if (h) hc_cuda_norm_only16(be, h, x, nw, nb, kind, eps, T, w->rows, h_matmul_only);
        }
        return;
    }
    hc_fused_matmul_add_norm(be, h, x, o, a, w, bias, nw, nb, kind, eps, h_matmul_only, T);
}

void hc_cuda_ffn_add_norm(hc_backend *be, float *h, float *x, float *o, float *fa, float *fb, const float *in,
                          const hc_mat *gate, const hc_vec *bg, const hc_mat *up, const hc_vec *bu, const hc_mat *down,
                          const hc_vec *bd, hc_activation act, const hc_vec *nw, const hc_vec *nb, hc_norm_kind kind,
                          float eps, bool h_matmul_only, int64_t T) {
    if (T <= 0 || hc_cuda(be)->failed) return;
    if (residual_in_gemm(T) && ffn16(be, x, 1.0f, fa, fb, in, gate, bg, up, bu, down, bd, act, T)) {
        HC_CUDA_LAUNCHED(be, "ffn_add_norm");
        if (h) hc_cuda_norm_only16(be, h, x, nw, nb, kind, eps, T, down->rows, h_matmul_only);
        return;
    }
    hc_fused_ffn_add_norm(be, h, x, o, fa, fb, in, gate, bg, up, bu, down, bd, act, nw, nb, kind, eps, h_matmul_only, T);
}
