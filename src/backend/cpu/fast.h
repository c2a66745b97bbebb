/* State of the fast CPU backend: its thread pool and per-thread scratch. */
#ifndef HC_BACKEND_CPU_FAST_H
#define HC_BACKEND_CPU_FAST_H

#include <stdbool.h>
#include <stddef.h>

#include "backend/backend.h"
#include "base/threadpool.h"

#define HC_MAX_THREADS 256

typedef struct {
    hc_pool *pool;
    float *scratch[HC_MAX_THREADS]; /* per thread, grown to the longest sequence seen */
    size_t cap;
    int8_t *qx;     /* activations quantized for quantized weights */
    float *dx;      /* their block scales */
    float *sx;      /* scale x sum of each block (q4_k's mins) */
    int32_t *isx;   /* sum of each block's quantized activations (the r16 kernels' offsets) */
    size_t qx_cap;
    float *xpairs;  /* bf16 decode's x split into even and odd elements (decode_bf16_pairs) */
    size_t xpairs_cap;
    float *att_parts;  /* decode attention's partial sums per chunk of keys (attention_fast.c) */
    size_t att_parts_cap;
    void *wt;          /* a transposed weight matrix copied into [N, K] (matmul_fast.c) */
    size_t wt_cap;
    bool bf16_compute; /* hc_backend_cpu_fast_bf16_compute */
    void *own_acts[HC_MAX_THREADS]; /* per thread: decode's x as that thread prepares it (matmul_fast.c) */
    size_t own_acts_cap;
} hc_fast_ctx;

/* Whether matmuls can take vdpbf16ps: AVX512_BF16 on the CPU and the AVX-512 kernels picked
 * (HUBCAP_KERNELS=avx2|scalar turns it off too). */
bool hc_cpu_has_bf16_dot(void);

/* Decode reads every weight once, row after row. Asking for the lines this far ahead keeps
 * enough reads in flight to reach the memory bandwidth: on the 2-core VM a q4_0 row loop went
 * from about 0.7 to 1.0 of bench_membw with it (4 KiB ahead; 1-2 KiB helped less). */
#define HC_PREFETCH_AHEAD 4096
static inline void hc_prefetch_ahead(const void *p, int lines) {
    for (int i = 0; i < lines; i++) __builtin_prefetch((const char *)p + HC_PREFETCH_AHEAD + 64 * i, 0, 3);
}

/* Makes the quantized-activation buffers hold n values; false when out of memory. */
bool hc_fast_acts(hc_fast_ctx *fx, size_t n);
/* Makes each thread's own buffer hold bytes (64-byte aligned); false when out of memory. Called
 * between jobs only: growing frees the old buffers. */
bool hc_fast_own_acts(hc_fast_ctx *fx, size_t bytes);

/* The dot product and y += a * x in this CPU's vector width (AVX-512, AVX2+FMA or plain C, as
 * the matmul kernels were picked), for the attention loops and the matmul's dW
 * (attention_fast.c). */
typedef float (*hc_dot_fn)(const float *a, const float *b, int64_t n);
typedef void (*hc_axpy_fn)(float *y, const float *x, float a, int64_t n);
void hc_cpu_vec_fns(hc_dot_fn *dot, hc_axpy_fn *axpy);

/* AVX512-VNNI kernels for nibble-quantized weights (matmul_vnni.c): rows [n0, n1) of
 * out[T, N] from activations quantized per block of 32 (qx [T, K], dx and sx [T, K/32]). */
bool hc_cpu_has_vnni(void);
/* The fast backend's quant_layout: the r16 layouts (quant.h) where the VNNI kernels run. */
int hc_cpu_quant_layout(hc_backend *be, int quant);
/* q4_0 as q4_0x4 (quant.h), the layout quantize-on-load picks where VNNI is (plain q4_0 takes
 * the AVX2 kernels). */
void hc_q4_0x4_rows_vnni(float *out, const int8_t *qx, const float *dx, const float *sx, const hc_mat *w, int64_t T,
                         int64_t n0, int64_t n1);
/* q8_0, prompts and decode. */
void hc_q8_0_rows_vnni(float *out, const int8_t *qx, const float *dx, const hc_mat *w, int64_t T, int64_t n0,
                       int64_t n1);
/* The r16 layouts (quant.h): rows [n0, n1), n0 a multiple of 16. q4_kr16's decode takes dx as
 * quantize_acts makes it for q4_k: one scale per 256 values, repeated for each block of 32. */
void hc_r16_rows_vnni(float *out, const int8_t *qx, const float *dx, const float *sx, const int32_t *isx,
                      const hc_mat *w, int64_t T, int64_t n0, int64_t n1);
void hc_q4_k_rows_vnni(float *out, const int8_t *qx, const float *dx, const float *sx, const hc_mat *w, int64_t T,
                       int64_t n0, int64_t n1);

/* SIMD row kernels (vector_math.c), a few ulps from the reference, one row or range at a time:
 * act(gate) * up (SiLU and GELU-tanh vectorised, the rest plain), x = exp(x - shift) returning
 * the sum, and RMSNorm / LayerNorm of T rows. */
void hc_vec_glu(float *out, const float *gate, const float *up, hc_activation act, int64_t n);
double hc_vec_exp_shift(float *x, float shift, int64_t n);
void hc_vec_norm(float *out, const float *x, const hc_vec *w, const hc_vec *b, hc_norm_kind kind, float eps, int64_t T,
                 int64_t C);
/* One token's nh heads [nh, D] rotated by cos c and sin s [half] (rotate-half): the
 * reference's bits. */
void hc_vec_rope_token(float *x, const float *c, const float *s, int64_t nh, int64_t D, int64_t half);

/* Makes every thread's scratch hold n floats; false when out of memory. Grows rarely (the
 * first time a sequence gets this long), never per token. */
bool hc_fast_scratch(hc_fast_ctx *fx, size_t n);

void hc_cpu_attention_fast(hc_backend *be, float *out, const float *q, const void *k_cache, const void *v_cache,
                           hc_dtype kv_dtype, const int32_t *pos, int64_t T, int64_t H, int64_t KVH, int64_t D,
                           float scale, int64_t window, float softcap, int64_t S, float *scratch);

void hc_cpu_rope_fast(hc_backend *be, float *x, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T,
                      int64_t nh, int64_t D, int64_t R);
void hc_cpu_matmul_backward_fast(hc_backend *be, float *dx, float *dw, float *db, const float *dout, const float *x,
                                 const hc_mat *w, int64_t T);
void hc_cpu_attention_backward_fast(hc_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                                    const float *reserve, const float *q, const float *k, const float *v, const int32_t *pos,
                                    int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale, int64_t window,
                                    float softcap, float *scratch);

#endif
