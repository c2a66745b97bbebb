/* RMSNorm (plain and Gemma's 1 + w) and LayerNorm, f32 sums: a wide block per row for decode,
 * rows held in registers for prompts and training. */
#include "backend/cuda/common.cuh"

/* out[T, C] = norm(x[T, C]) * w (+ b); with `add`, first x += add (written back). A block a
 * row; thread i takes elements i, i + blockDim.x, ... (NPT at most), kept in registers. The
 * norm's weights do not depend on earlier kernels, so they are loaded before hc_pdl_wait: a
 * decode norm is a chain of latencies (weights, x, two block sums, the store), and this takes
 * one link out. */
template <int NPT>
__global__ void norm_kernel(float *out, float *x, const float *add, const void *w, hc_dtype w_dt, const void *b,
                            hc_dtype b_dt, hc_norm_kind kind, float eps, int64_t C, bool early) {
    __shared__ float red[32];
    float g[NPT], bb[NPT], v[NPT];
#pragma unroll
    for (int i = 0; i < NPT; i++) {
        const int64_t c = threadIdx.x + (int64_t)i * blockDim.x;
        g[i] = w && c < C ? hc_ld(w, w_dt, c) + (kind == HC_NORM_RMS_PLUS1 ? 1.0f : 0.0f) : 1.0f;
        bb[i] = b && c < C ? hc_ld(b, b_dt, c) : 0.0f;
    }
    if (early) hc_pdl_trigger();
    hc_pdl_wait();
    if (!early) hc_pdl_trigger();
    float *xt = x + blockIdx.x * C;   /* [C] */
    float *ot = out + blockIdx.x * C; /* [C] */
#pragma unroll
    for (int i = 0; i < NPT; i++) {
        const int64_t c = threadIdx.x + (int64_t)i * blockDim.x;
        v[i] = c < C ? xt[c] : 0.0f;
    }
    if (add) {
        const float *at = add + blockIdx.x * C;
#pragma unroll
        for (int i = 0; i < NPT; i++) {
            const int64_t c = threadIdx.x + (int64_t)i * blockDim.x;
            if (c < C) xt[c] = v[i] += at[c];
        }
    }
    float inv, mean = 0.0f;
    if (kind == HC_NORM_LAYER) {
        float s = 0;
#pragma unroll
        for (int i = 0; i < NPT; i++) s += v[i];
        mean = hc_block_sum(s, red) / (float)C;
        float q = 0;
#pragma unroll
        for (int i = 0; i < NPT; i++)
            if (threadIdx.x + (int64_t)i * blockDim.x < C) q += (v[i] - mean) * (v[i] - mean);
        inv = rsqrtf(hc_block_sum(q, red) / (float)C + eps);
    } else {
        float ss = 0;
#pragma unroll
        for (int i = 0; i < NPT; i++) ss += v[i] * v[i];
        inv = 1.0f / sqrtf(hc_block_sum(ss, red) / (float)C + eps);
    }
#pragma unroll
    for (int i = 0; i < NPT; i++) {
        const int64_t c = threadIdx.x + (int64_t)i * blockDim.x;
        if (c >= C) continue;
        float o = (v[i] - mean) * inv;
        if (w) o *= g[i];
        if (b) o += bb[i];
        ot[c] = o;
    }
}

/* norm_kernel for rows of any width: each thread strides over the row, reading it again. */
__global__ void norm_wide_kernel(float *out, float *x, const float *add, const void *w, hc_dtype w_dt, const void *b,
                            hc_dtype b_dt, hc_norm_kind kind, float eps, int64_t C, bool early) {
    __shared__ float red[32];
    if (early) hc_pdl_trigger();
    hc_pdl_wait();
    if (!early) hc_pdl_trigger();
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

/* Many rows of a width that is a multiple of 4 and at most 4096 (prompts and training): each
 * of 256 threads holds NV float4s of its row in registers, so the row is read once (16-byte
 * loads) and the reductions run over registers; a block takes `rows` rows. The same sums as
 * norm_kernel, in another order. */
template <int NV>
__global__ void norm_rows_kernel(float *out, void *out16, hc_dtype dt16, float *x, const float *add, const void *w, hc_dtype w_dt,
                                 const void *b, hc_dtype b_dt, hc_norm_kind kind, float eps, int64_t T, int64_t C, int64_t rows,
                                 bool write_f32) {
    __shared__ float red[32];
    const int64_t C4 = C / 4;
    const int64_t t0 = blockIdx.x * rows, t1 = t0 + rows < T ? t0 + rows : T;
    /* the next row's loads go out before this row's reductions wait */
    float4 nx[NV], na[NV];
#pragma unroll
    for (int k = 0; k < NV; k++) {
        const int64_t c4 = threadIdx.x + k * (int64_t)blockDim.x;
        const bool in = c4 < C4 && t0 < t1;
        nx[k] = in ? ((const float4 *)(x + t0 * C))[c4] : make_float4(0, 0, 0, 0);
        na[k] = in && add ? ((const float4 *)(add + t0 * C))[c4] : make_float4(0, 0, 0, 0);
    }
    for (int64_t t = t0; t < t1; t++) {
        float4 v[NV];
        float s = 0;
#pragma unroll
        for (int k = 0; k < NV; k++) {
            const int64_t c4 = threadIdx.x + k * (int64_t)blockDim.x;
            v[k] = nx[k];
            if (add && c4 < C4) {
                const float4 a = na[k];
                v[k].x += a.x, v[k].y += a.y, v[k].z += a.z, v[k].w += a.w;
                ((float4 *)(x + t * C))[c4] = v[k];
            }
            if (c4 < C4 && t + 1 < t1) {
                nx[k] = ((const float4 *)(x + (t + 1) * C))[c4];
                if (add) na[k] = ((const float4 *)(add + (t + 1) * C))[c4];
            }
            s += kind == HC_NORM_LAYER ? v[k].x + v[k].y + v[k].z + v[k].w
                                       : v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
        }
        float mean = 0, inv;
        if (kind == HC_NORM_LAYER) {
            mean = hc_block_sum(s, red) / (float)C;
            float q = 0;
#pragma unroll
            for (int k = 0; k < NV; k++) {
                const int64_t c4 = threadIdx.x + k * (int64_t)blockDim.x;
                if (c4 < C4) {
                    const float a = v[k].x - mean, b2 = v[k].y - mean, c = v[k].z - mean, d = v[k].w - mean;
                    q += a * a + b2 * b2 + c * c + d * d;
                }
            }
            inv = rsqrtf(hc_block_sum(q, red) / (float)C + eps);
        } else {
            inv = 1.0f / sqrtf(hc_block_sum(s, red) / (float)C + eps);
        }
#pragma unroll
        for (int k = 0; k < NV; k++) {
            const int64_t c4 = threadIdx.x + k * (int64_t)blockDim.x;
            if (c4 >= C4) continue;
            float o[4] = {v[k].x, v[k].y, v[k].z, v[k].w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int64_t c = 4 * c4 + j;
                o[j] = (o[j] - mean) * inv;
                if (w) {
                    float g = hc_ld(w, w_dt, c);
                    if (kind == HC_NORM_RMS_PLUS1) g += 1.0f;
                    o[j] *= g;
                }
                if (b) o[j] += hc_ld(b, b_dt, c);
            }
            if (write_f32) ((float4 *)(out + t * C))[c4] = make_float4(o[0], o[1], o[2], o[3]);
            if (out16) { /* out in the compute dtype too, for the GEMM that reads it next */
                if (dt16 == HC_DTYPE_BF16) {
                    const __nv_bfloat16 h[4] = {narrow<__nv_bfloat16>(o[0]), narrow<__nv_bfloat16>(o[1]),
                                                narrow<__nv_bfloat16>(o[2]), narrow<__nv_bfloat16>(o[3])};
                    ((uint2 *)out16)[t * C4 + c4] = *(const uint2 *)h;
                } else {
                    const __half h[4] = {narrow<__half>(o[0]), narrow<__half>(o[1]), narrow<__half>(o[2]), narrow<__half>(o[3])};
                    ((uint2 *)out16)[t * C4 + c4] = *(const uint2 *)h;
                }
            }
        }
    }
}

/* only16: the f32 out may be left unwritten when its 16-bit copy is (see f32_missing). */
static void launch_norm(hc_backend *be, float *out, float *x, const float *add, const hc_vec *w, const hc_vec *b,
                        hc_norm_kind kind, float eps, int64_t T, int64_t C, bool only16) {
    if (T <= 0 || hc_cuda(be)->failed) return;
    hc_cuda_ctx *cx = hc_cuda(be);
    if (out == cx->f32_missing) cx->f32_missing = NULL; /* written again */
    const bool aligned = ((uintptr_t)out | (uintptr_t)x | (uintptr_t)add) % 16 == 0;
    if (T >= 64 && C % 4 == 0 && C <= 4096 && aligned) {
        const void *wd = w ? w->data : NULL, *bd = b ? b->data : NULL;
        int64_t rows = T / (4 * (int64_t)cx->n_sm); /* about four blocks an SM */
        if (rows < 1) rows = 1;
        const unsigned blocks = (unsigned)((T + rows - 1) / rows);
        const hc_dtype wdt = w ? w->dtype : HC_DTYPE_F32, bdt = b ? b->dtype : HC_DTYPE_F32;
        const int nv = (int)((C / 4 + 255) / 256);
        void *o16 = T > HC_PDL_MAX_ROWS ? hc_cuda_acts16_begin(be, T * C) : NULL; /* a prompt's */
#define NR(N)                                                                                                           \
    case N:                                                                                                             \
        norm_rows_kernel<N><<<blocks, 256, 0, cx->stream>>>(out, o16, cx->compute, x, add, wd, wdt, bd, bdt, kind, eps, T, C, \
                                                           rows, !(o16 && only16));                                     \
        break
        switch (nv) { NR(1); NR(2); NR(3); default: NR(4); }
#undef NR
        HC_CUDA_LAUNCHED(be, "norm");
        if (o16) hc_cuda_acts16_done(be, out, T * C);
        if (o16 && only16) cx->f32_missing = out;
        return;
    }
    /* About two values a thread: a single decode row is latency-bound, so spread it wide. */
    int threads = (int)((C / 2 + 31) / 32 * 32);
    if (threads > 1024) threads = 1024;
    if (threads < 32) threads = 32;
    const void *wd = w ? w->data : NULL, *bd = b ? b->data : NULL;
    const bool early = cx->quant_gemv_last; /* trigger the next GEMV before waiting: see hc_pdl_trigger */
    for (int64_t t0 = 0; t0 < T; t0 += 65535 * 32) { /* grids hold 2^31-1 blocks in x; stay far below */
        const int64_t n = T - t0 < 65535 * 32 ? T - t0 : 65535 * 32;
        const int npt = (int)((C + threads - 1) / threads);
#define NK(N)                                                                                                          \
    hc_launch(hc_cuda(be), n <= HC_PDL_MAX_ROWS, norm_kernel<N>, dim3((unsigned)n), dim3(threads), 0, out + t0 * C,       \
              x + t0 * C, add ? add + t0 * C : NULL, wd, w ? w->dtype : HC_DTYPE_F32, bd, b ? b->dtype : HC_DTYPE_F32, kind, \
              eps, C, early)
        if (npt <= 2) NK(2);
        else if (npt <= 4) NK(4);
        else if (npt <= 8) NK(8);
        else if (npt <= 16) NK(16);
        else
            hc_launch(hc_cuda(be), n <= HC_PDL_MAX_ROWS, norm_wide_kernel, dim3((unsigned)n), dim3(threads), 0, out + t0 * C,
                      x + t0 * C, add ? add + t0 * C : NULL, wd, w ? w->dtype : HC_DTYPE_F32, bd, b ? b->dtype : HC_DTYPE_F32,
                      kind, eps, C, early);
#undef NK
    }
    HC_CUDA_LAUNCHED(be, "norm");
}

void hc_cuda_norm(hc_backend *be, float *out, const float *x, const hc_vec *w, const hc_vec *b, hc_norm_kind kind,
                  float eps, int64_t T, int64_t C) {
    launch_norm(be, out, (float *)x, NULL, w, b, kind, eps, T, C, false); /* x is only read without `add` */
}

void hc_cuda_norm_only16(hc_backend *be, float *out, const float *x, const hc_vec *w, const hc_vec *b,
                         hc_norm_kind kind, float eps, int64_t T, int64_t C, bool only16) {
    launch_norm(be, out, (float *)x, NULL, w, b, kind, eps, T, C, only16);
}

void hc_cuda_add_norm(hc_backend *be, float *h, float *x, const float *o, const hc_vec *w, const hc_vec *b,
                      hc_norm_kind kind, float eps, int64_t T, int64_t C) {
    launch_norm(be, h, x, o, w, b, kind, eps, T, C, false);
}
