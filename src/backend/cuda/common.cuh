/* Shared by the CUDA op files: the backend context, error capture and dtype loads.
 * Conventions are backend.h's (T rows, C channels, H/KVH heads, D head dim, N/K features).
 * Every op is queued on the context's one stream; only download() waits for it. */
#ifndef HC_BACKEND_CUDA_COMMON_CUH
#define HC_BACKEND_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "backend/cuda/cuda.h"
#include "backend/cpu/quant.h"
}

/* A captured decode step, keyed by the pointers and flags it was recorded with. */
typedef struct {
    unsigned char key[64];
    size_t key_len;
    int seen;               /* runs so far: the first runs eagerly (lazy buffers settle), the second is captured */
    cudaGraphExec_t exec;
} hc_cuda_graph;

#define HC_CUDA_MAX_GRAPHS 16

typedef struct {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    hc_dtype compute;   /* F32, BF16 or F16: the matmul input type of prompt GEMMs */
    int n_sm;
    /* Grown on demand and kept: GEMM operand conversions and attention partials. */
    void *scratch_a;
    size_t scratch_a_bytes;
    void *scratch_b;
    size_t scratch_b_bytes;
    void *mmq_x; /* x quantized for the int8 tensor-core matmul: [T][K] int8, then [T][K / 32] f32 scales */
    size_t mmq_x_bytes;
    float *partials;
    size_t partials_bytes;
    void *train_scratch; /* attention backward: P and dS, or the flash path's bf16 operands */
    size_t train_scratch_bytes;
    void *kv16;          /* f32 keys and values rounded to bf16 for the attention kernel */
    size_t kv16_bytes;
    void *dw16;          /* a weight gradient's operands rounded to 16 bits (backward.cu) */
    size_t dw16_bytes;
    void *att_done;      /* attention: finished splits a (row, head), zero between calls */
    size_t att_done_bytes;
    void *argmax_state;  /* argmax_rows: a key and a count a row, zero between calls */
    size_t argmax_state_bytes;
    void *pinned;       /* page-locked staging for downloads: pageable copies are several times slower */
    size_t pinned_bytes;
    /* A prompt's norm and attention also write their f32 output in the compute dtype, here:
     * the GEMM that reads that output next takes this copy instead of converting it again.
     * Valid only while op_seq equals acts16_seq, i.e. until the next op or copy (each passes
     * through hc_cuda_fail, which counts them). */
    void *acts16;
    size_t acts16_bytes;
    const float *acts16_src; /* the f32 tensor copied, of acts16_n elements */
    int64_t acts16_n;
    unsigned acts16_seq, op_seq;
    /* A prompt norm whose output only matmuls read (matmul_add_norm / ffn_add_norm with
     * h_matmul_only) writes it in the compute dtype alone: then acts16 holds the only copy of
     * this f32 tensor, for any matmul until the tensor is written again or acts16 is reused, and
     * a matmul that needs it in f32 widens it back first (hc_cuda_f32_ready). */
    const float *f32_missing;
    /* The first error; ops after it are skipped and check() reports it. */
    char error[256];
    int failed;
    bool capturing;
    hc_cuda_graph graphs[HC_CUDA_MAX_GRAPHS];
    bool no_graphs;     /* HUBCAP_CUDA_NO_GRAPHS: run every step eagerly (for profilers) */
    bool timing;        /* HUBCAP_CUDA_TIMING: time graph replays */
    cudaEvent_t ev[2];
    double replay_ms;
    long long replays;
    int n_graphs;
    bool quant_gemv_last; /* the last matmul was a decode step's int8 GEMV: see launch_norm */
    bool pdl;           /* programmatic dependent launch (sm_90 and later; HUBCAP_CUDA_NO_PDL turns it off) */
} hc_cuda_ctx;

static inline hc_cuda_ctx *hc_cuda(hc_backend *be) { return (hc_cuda_ctx *)be->ctx; }

/* ---- programmatic dependent launch ----
 * A decode step is about 130 small kernels; between two of them the GPU drains and refills,
 * and a GEMV's first weight loads wait for the previous kernel's last block. Kernels launched
 * with hc_launch may start while the previous kernel of the stream still runs: they may read
 * only what no earlier kernel writes (weights) until hc_pdl_wait() returns, which is when every
 * earlier kernel has finished and its writes are visible. So every kernel launched with
 * hc_launch calls hc_pdl_wait() before it touches activations, and hc_pdl_trigger() after it,
 * which lets the next kernel start (one kernel ahead at most). Both do nothing without PDL, but
 * not for free: about 100 cycles a block, which a grid of many tiny blocks notices.
 *
 * Decode's KV store and attention trigger before they wait, so the kernel after them may start
 * (and load its weights) while they still wait on theirs: two kernels ahead. That is safe
 * because the next kernel's own wait returns only once they have finished, which they do only
 * after their wait. It helps where the next kernel's early start falls in a step's latency-bound
 * stretch (store, attention, then the o GEMV: 1B decode 1.092 -> 1.083 ms a token). A norm
 * between two GEMVs triggers early only when they are int8 GEMVs of quantized weights: the
 * next GEMV then starts in the previous one's tail, which gained q8_0 / q4_0 decode 4% / 3%
 * (0.915 -> 0.879, 0.784 -> 0.759 ms) but cost bf16 1.085 -> 1.097 ms. */
__device__ __forceinline__ void hc_pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void hc_pdl_trigger(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
/* Asks L2 for the 128-byte line at p (no register, no wait): for weights, before hc_pdl_wait. */
__device__ __forceinline__ void hc_prefetch_l2(const void *p) { asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p)); }

/* kernel<<<grid, block, smem, stream>>>(args...), with programmatic dependent launch when the
 * context allows it and `pdl` asks for it: decode-sized launches. (A 2048-token prompt whose
 * rope ran this way after cuBLAS's GEMM took 10% longer: the waiting blocks were let in early.) */
#define HC_PDL_MAX_ROWS 64 /* decode-sized: rows of a step of up to 64 sequences */
template <typename... KArgs, typename... Args>
static inline void hc_launch(const hc_cuda_ctx *cx, bool pdl, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                             Args... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = cx->stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr, cfg.numAttrs = cx->pdl && pdl ? 1 : 0;
    cudaLaunchKernelEx(&cfg, kernel, ((KArgs)args)...);
}

/* Records the first failure (with where it happened) and returns true when there is one. */
bool hc_cuda_fail(hc_backend *be, cudaError_t e, const char *what);
#define HC_CUDA_LAUNCHED(be, what) hc_cuda_fail((be), cudaGetLastError(), (what))

/* begin: room for the 16-bit copy an op may write beside its f32 output of n elements (NULL:
 * write none); done: registers that copy as `out`'s once the op has launched. Prompts only (no
 * graph capture). */
void *hc_cuda_acts16_begin(hc_backend *be, int64_t n);
void hc_cuda_acts16_done(hc_backend *be, const float *out, int64_t n);
/* Makes x's f32 values readable: widens acts16 into x when a norm left x unwritten. */
void hc_cuda_f32_ready(hc_backend *be, const float *x);

/* Scratch of at least `bytes`, grown (never during graph capture) and kept. NULL on failure. */
void *hc_cuda_scratch(hc_backend *be, void **buf, size_t *cap, size_t bytes);

/* out = x @ W^T through cuBLAS with x already rounded to the compute dtype (x16), where the
 * matmul op would take that path (a prompt-sized T, W stored in the compute dtype); false
 * otherwise, nothing queued (matmul.cu). */
bool hc_cuda_matmul_converted(hc_backend *be, float *out, const void *x16, const hc_mat *w, int64_t T);

/* dst[n] = src[n] rounded to `to` (BF16, or F16 saturating), queued on the stream (matmul.cu). */
void hc_cuda_narrow(hc_backend *be, void *dst, hc_dtype to, const float *src, int64_t n);

/* A weight a prompt-sized product (T rows) multiplies as it is stored: 16-bit operands in the
 * compute dtype, not transposed, not quantized (matmul.cu). */
bool hc_cuda_gemm16_weight(hc_backend *be, const hc_mat *w, int64_t T);

/* out[n] = act(gate[n]) * up[n], all three 16-bit in the compute dtype, the product rounded once
 * (matmul.cu). Vector loads: 16-byte aligned pointers. */
void hc_cuda_glu16(hc_backend *be, void *out, const void *gate, const void *up, hc_activation act, int64_t n);

static inline unsigned hc_blocks(int64_t n, int threads) { return (unsigned)((n + threads - 1) / threads); }

/* Element i of a float buffer of dtype dt, widened to f32. */
__device__ __forceinline__ float hc_ld(const void *p, hc_dtype dt, int64_t i) {
    if (dt == HC_DTYPE_F32) return ((const float *)p)[i];
    if (dt == HC_DTYPE_BF16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    return __half2float(((const __half *)p)[i]);
}

__device__ __forceinline__ float hc_f16_bits(uint16_t h) { return __half2float(__ushort_as_half(h)); }

/* x reduced over the 32 lanes of a warp; every lane gets the sum. */
__device__ __forceinline__ float hc_warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

__device__ __forceinline__ float hc_warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

/* Block-wide reductions (blockDim.x a multiple of 32, at most 1024); every thread gets the
 * result. red: [32] shared, reusable across calls. */
__device__ __forceinline__ float hc_block_sum(float v, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = (blockDim.x + 31) >> 5;
    v = hc_warp_sum(v);
    __syncthreads(); /* red may still be read from a previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads();
    return hc_warp_sum(lane < n_warps ? red[lane] : 0.0f);
}

__device__ __forceinline__ double hc_block_sum_double(double v, double *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = (blockDim.x + 31) >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = 0;
    for (int i = 0; i < n_warps; i++) v += red[i];
    return v;
}

__device__ __forceinline__ float hc_block_max(float v, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = (blockDim.x + 31) >> 5;
    v = hc_warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    return hc_warp_max(lane < n_warps ? red[lane] : -INFINITY);
}

/* The largest value over the block and its first index (ties: the smaller index, as
 * torch.argmax); every thread gets both. red, redi: [32] shared. */
__device__ __forceinline__ void hc_block_argmax(float *mx, int64_t *best, float *red, int64_t *redi) {
    float m = *mx;
    int64_t b = *best;
    for (int o = 16; o > 0; o >>= 1) {
        const float om = __shfl_xor_sync(0xffffffffu, m, o);
        const int64_t ob = __shfl_xor_sync(0xffffffffu, b, o);
        if (om > m || (om == m && ob < b)) m = om, b = ob;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) red[warp] = m, redi[warp] = b;
    __syncthreads();
    m = red[0], b = redi[0];
    for (int i = 1; i < n_warps; i++)
        if (red[i] > m || (red[i] == m && redi[i] < b)) m = red[i], b = redi[i];
    *mx = m, *best = b;
}

#include "backend/activation.h"

/* f32 narrowed to an operand type: bf16 rounds to nearest even; f16 saturates at +-65504
 * instead of overflowing to inf, and NaN stays NaN. */
template <typename OT> __device__ __forceinline__ OT narrow(float v);
template <> __device__ __forceinline__ float narrow<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half narrow<__half>(float v) {
    return __float2half_rn(v != v ? v : fminf(fmaxf(v, -65504.0f), 65504.0f));
}

/* The op entry points, one family per file. */
void hc_cuda_embedding(hc_backend *be, float *out, const hc_mat *table, const int32_t *ids, int64_t T, float scale,
                       bool accumulate);
void hc_cuda_matmul(hc_backend *be, float *out, const float *x, const hc_mat *w, const hc_vec *bias, int64_t T);
void hc_cuda_norm(hc_backend *be, float *out, const float *x, const hc_vec *w, const hc_vec *b, hc_norm_kind kind,
                  float eps, int64_t T, int64_t C);
/* hc_cuda_norm; with only16, its f32 output may be left unwritten at prompt sizes in 16-bit
 * compute, when only matmuls read it next (f32_missing). */
void hc_cuda_norm_only16(hc_backend *be, float *out, const float *x, const hc_vec *w, const hc_vec *b,
                         hc_norm_kind kind, float eps, int64_t T, int64_t C, bool only16);
void hc_cuda_rope(hc_backend *be, float *x, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T,
                  int64_t nh, int64_t D, int64_t R);
void hc_cuda_attention(hc_backend *be, float *out, const float *q, const void *k_cache, const void *v_cache,
                       hc_dtype kv_dtype, const int32_t *pos, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale,
                       int64_t window, float softcap, int64_t S, float *scratch);
void hc_cuda_set_rows(hc_backend *be, void *dst, hc_dtype dst_dtype, const float *src, const int32_t *pos, int64_t T,
                      int64_t width);
void hc_cuda_fill(hc_backend *be, float *x, float v, int64_t n);
void hc_cuda_glu(hc_backend *be, float *out, const float *gate, const float *up, hc_activation act, int64_t n);
void hc_cuda_activate(hc_backend *be, float *x, hc_activation act, int64_t n);
void hc_cuda_add(hc_backend *be, float *out, const float *a, const float *b, int64_t n);
void hc_cuda_add_scaled(hc_backend *be, float *out, const float *x, float alpha, int64_t n);
void hc_cuda_softcap(hc_backend *be, float *x, float cap, int64_t n);
void hc_cuda_matmul_n(hc_backend *be, float *const *outs, const float *x, const hc_mat *const *ws, const hc_vec *const *bs,
                      int n, int64_t T);
void hc_cuda_ffn(hc_backend *be, float *out, float *a, float *b, const float *x, const hc_mat *gate, const hc_vec *bg,
                 const hc_mat *up, const hc_vec *bu, const hc_mat *down, const hc_vec *bd, hc_activation act, int64_t T);
void hc_cuda_matmul_add_norm(hc_backend *be, float *h, float *x, float *o, const float *a, const hc_mat *w,
                             const hc_vec *bias, const hc_vec *nw, const hc_vec *nb, hc_norm_kind kind, float eps,
                             bool h_matmul_only, int64_t T);
void hc_cuda_ffn_add_norm(hc_backend *be, float *h, float *x, float *o, float *fa, float *fb, const float *in,
                          const hc_mat *gate, const hc_vec *bg, const hc_mat *up, const hc_vec *bu, const hc_mat *down,
                          const hc_vec *bd, hc_activation act, const hc_vec *nw, const hc_vec *nb, hc_norm_kind kind,
                          float eps, bool h_matmul_only, int64_t T);
void hc_cuda_matmul_add(hc_backend *be, float *out, float *tmp, const float *x, const hc_mat *w, float alpha, int64_t T);
void hc_cuda_gated_matmul(hc_backend *be, float *out, float *tmp, const float *x, const hc_mat *gate, const hc_vec *bg,
                          const hc_mat *up, const hc_vec *bu, hc_activation act, int64_t T);
void hc_cuda_add_norm(hc_backend *be, float *h, float *x, const float *o, const hc_vec *w, const hc_vec *b,
                      hc_norm_kind kind, float eps, int64_t T, int64_t C);
void hc_cuda_rope_store(hc_backend *be, float *q, float *k, const float *v, void *k_cache, void *v_cache, hc_dtype kv_dtype,
                        const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T, int64_t H, int64_t KVH,
                        int64_t D, int64_t R);
void hc_cuda_rope_store_rows(hc_backend *be, float *q, float *k, const float *v, void *const *k_rows, void *const *v_rows,
                             hc_dtype kv_dtype, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T,
                             int64_t H, int64_t KVH, int64_t D, int64_t R);
void hc_cuda_attention_rows(hc_backend *be, float *out, const float *q, void *const *k_rows, void *const *v_rows,
                            hc_dtype kv_dtype, const int32_t *pos, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale,
                            int64_t window, float softcap, int64_t S, float *scratch);
/* Backward (backward.cu) */
void hc_cuda_embedding_backward(hc_backend *be, float *dtable, const hc_mat *table, const float *dout, const int32_t *ids,
                                int64_t T, float scale);
void hc_cuda_matmul_backward(hc_backend *be, float *dx, float *dw, float *db, const float *dout, const float *x,
                             const hc_mat *w, int64_t T);
void hc_cuda_norm_backward(hc_backend *be, float *dx, float *dw, float *db, const float *dout, const float *x,
                           const hc_vec *w, const hc_vec *b, hc_norm_kind kind, float eps, int64_t T, int64_t C,
                           bool accumulate);
void hc_cuda_rope_backward(hc_backend *be, float *dx, const int32_t *pos, const float *inv_freq, float attn_factor,
                           int64_t T, int64_t nh, int64_t D, int64_t R);
void hc_cuda_attention_backward(hc_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                                const float *reserve, const float *q, const float *k, const float *v, const int32_t *pos,
                                int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale, int64_t window,
                                float softcap, float *scratch);
/* Training's attention (attention.cu, attention_backward.cu): whether B sequences of T rows take
 * the tensor-core kernels (bf16 compute, head dims 64 and 128), the forward over the batch, and
 * the backward (false where it does not apply: the caller takes the general path). */
bool hc_cuda_flash_train(const hc_cuda_ctx *cx, int64_t B, int64_t T, int64_t H, int64_t D);
void hc_cuda_attention_train(hc_backend *be, float *out, float *reserve, const float *q, const float *k, const float *v,
                             const int32_t *pos, int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale,
                             int64_t window, float softcap, float *scratch);
bool hc_cuda_flash_attention_backward(hc_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                                      const float *reserve, const float *q, const float *k, const float *v, int64_t B,
                                      int64_t T, int64_t H, int64_t KVH, int64_t D, float scale, int64_t window,
                                      float softcap);
/* The gated MLP's training forward and backward, and matmul_n's backward, with 16-bit
 * operands kept between them (mlp_train.cu). */
void hc_cuda_ffn_train(hc_backend *be, float *out, float *keep, const float *x, const hc_mat *gate, const hc_vec *bg,
                       const hc_mat *up, const hc_vec *bu, const hc_mat *down, const hc_vec *bd, hc_activation act,
                       int64_t T);
void hc_cuda_ffn_backward(hc_backend *be, float *dx, float *dgate, float *dbg, float *dup, float *dbu, float *ddown,
                          float *dbd, const float *dout, const float *x, const float *keep, const hc_mat *gate,
                          const hc_vec *bg, const hc_mat *up, const hc_vec *bu, const hc_mat *down, const hc_vec *bd,
                          hc_activation act, int64_t T, float *scratch, bool overwrite);
void hc_cuda_matmul_n_backward(hc_backend *be, float *dx, float *const *dws, float *const *dbs, const float *const *douts,
                               const float *x, const hc_mat *const *ws, int n, int64_t T, float *tmp, bool overwrite);
void hc_cuda_glu_backward(hc_backend *be, float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                          hc_activation act, int64_t n);
void hc_cuda_topk_route_backward(hc_backend *be, float *dlogits, const float *dweights, const int32_t *experts,
                                 const float *logits, int64_t T, int64_t E, int64_t k, bool renorm);
void hc_cuda_softcap_backward(hc_backend *be, float *dx, const float *dy, const float *y, float cap, int64_t n);
void hc_cuda_cross_entropy(hc_backend *be, float *dlogits, float *loss, float *hit, const float *logits,
                           const int32_t *targets, int64_t T, int64_t V, double scale);
/* cross_entropy on logits of the compute dtype (16 bits), dlogits in it too, in place allowed. */
void hc_cuda_cross_entropy16(hc_backend *be, void *dlogits, float *loss, float *hit, const void *logits,
                             const int32_t *targets, int64_t T, int64_t V, double scale);
void hc_cuda_lm_loss(hc_backend *be, float *dx, float *dw, float *loss, float *hit, const float *x, const hc_mat *w,
                     float softcap, const int32_t *targets, int64_t T, double scale, float *scratch, bool overwrite);
void hc_cuda_argmax_rows(hc_backend *be, int32_t *out, const float *x, int64_t T, int64_t V);
void hc_cuda_sum_squares(hc_backend *be, double *acc, const float *x, int64_t n);
void hc_cuda_adamw(hc_backend *be, float *w, float *m1, float *m2, const float *g, float g_scale, int64_t n,
                   const hc_adamw_params *p, int64_t step, void *out, hc_dtype out_dtype);
void hc_cuda_copy(hc_backend *be, float *out, const float *x, int64_t n);
void hc_cuda_topk_route(hc_backend *be, float *weights, int32_t *experts, const float *logits, int64_t T, int64_t E,
                        int64_t k, bool renorm);


/* ---- tensor-core building blocks (sm_80 and later), shared by the attention kernels ---- */

/* 16-byte global-to-shared copies that do not hold up the thread (sm_80 and later). */
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(a), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void mma_bf16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* A compile-time flag as a value, for generic lambdas specialised on it (if constexpr). */
template <bool B> struct hc_flag {
    static constexpr bool value = B;
};

/* 2^x in one MUFU instruction (ex2.approx, relative error about 2^-22; exp2(-inf) = 0):
 * softmax in log2 units, x = s * log2(e), saves the multiply that __expf makes. */
#define LOG2E_F 1.4426950408889634f
#define LN2_F 0.6931471805599453f
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

/* ldmatrix.x4: four 8x8 bf16 pieces of shared memory, one row address a lane. A fragment of
 * a 16x16 tile (rows r, columns c of a row-major tile): lane l addresses row l % 16, column
 * 8 (l / 16). B fragments of S = X Y^T from Y [n][k] row-major: keys n0 + l % 8, dims k0 +
 * 8 (l / 8 % 2) + 16 (l / 16), giving two k-steps' pairs. B fragments of O = P Y from
 * Y [k][n] row-major (.trans): rows k0 + l % 16, columns n0 + 8 (l / 16), giving two n-tiles. */
__device__ __forceinline__ void hc_ldsm_x4(uint32_t *r, const void *p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void hc_ldsm_x4_trans(uint32_t *r, const void *p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

#endif
