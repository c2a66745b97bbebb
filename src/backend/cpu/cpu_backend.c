/* The CPU op table and its memory functions. */
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu.h"
#include "base/file.h"
#include "base/status.h"
#include "backend/cpu/fast.h"
#include "base/threadpool.h"

static void *cpu_alloc(hc_backend *be, size_t bytes) {
    (void)be;
    /* 64-byte alignment keeps rows on cache lines for the SIMD kernels. Buffers of 2 MiB and
     * more (the KV cache) go on huge pages: decode attention walks a layer's whole cache each
     * token, and on 4 KiB pages the TLB misses cost the 1B model's attention at position 500
     * a fifth of its time (f32 cache) to a third (bf16). */
    size_t n = (bytes + 63) & ~(size_t)63;
    void *p = n >= (2u << 20) ? hc_alloc_huge(n) : aligned_alloc(64, n ? n : 64);
    if (p) memset(p, 0, n ? n : 64);
    return p;
}

static void cpu_free(hc_backend *be, void *p) {
    (void)be;
    free(p);
}

static void cpu_copy(hc_backend *be, void *dst, const void *src, size_t n) {
    (void)be;
    if (n) memcpy(dst, src, n);
}

static void cpu_fill(hc_backend *be, float *x, float v, int64_t n) {
    (void)be;
    for (int64_t i = 0; i < n; i++) x[i] = v;
}

static void cpu_copy_floats(hc_backend *be, float *out, const float *x, int64_t n) {
    (void)be;
    if (n > 0) memcpy(out, x, sizeof(float) * (size_t)n);
}

static hc_backend cpu_backend = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .fill = cpu_fill,
    .copy = cpu_copy_floats,
    .embedding = hc_cpu_embedding,
    .matmul = hc_cpu_matmul,
    .norm = hc_cpu_norm,
    .rope = hc_cpu_rope,
    .attention = hc_cpu_attention,
    .set_rows = hc_cpu_set_rows,
    .glu = hc_cpu_glu,
    .activate = hc_cpu_activate,
    .add = hc_cpu_add,
    .add_scaled = hc_cpu_add_scaled,
    .softcap = hc_cpu_softcap,
    .topk_route = hc_cpu_topk_route,
    .matmul_n = hc_fused_matmul_n,
    .gated_matmul = hc_fused_gated_matmul,
    .ffn = hc_fused_ffn,
    .matmul_add = hc_fused_matmul_add,
    .attention_train = hc_fused_attention_train,
    .ffn_train = hc_fused_ffn_train,
    .add_norm = hc_fused_add_norm,
    .matmul_add_norm = hc_fused_matmul_add_norm,
    .ffn_add_norm = hc_fused_ffn_add_norm,
    .rope_store = hc_fused_rope_store,
    .rope_store_rows = hc_fused_rope_store_rows,
    .attention_rows = hc_fused_attention_rows,
    .embedding_backward = hc_cpu_embedding_backward,
    .matmul_backward = hc_cpu_matmul_backward,
    .norm_backward = hc_cpu_norm_backward,
    .rope_backward = hc_cpu_rope_backward,
    .attention_backward = hc_cpu_attention_backward,
    .matmul_n_backward = hc_fused_matmul_n_backward,
    .ffn_backward = hc_fused_ffn_backward,
    .lm_loss = hc_fused_lm_loss,
    .glu_backward = hc_cpu_glu_backward,
    .softcap_backward = hc_cpu_softcap_backward,
    .topk_route_backward = hc_cpu_topk_route_backward,
    .cross_entropy = hc_cpu_cross_entropy,
    .sum_squares = hc_cpu_sum_squares,
    .argmax_rows = hc_cpu_argmax_rows,
    .adamw = hc_cpu_adamw,
};

hc_backend *hc_backend_cpu(void) { return &cpu_backend; }

bool hc_fast_scratch(hc_fast_ctx *fx, size_t n) {
    if (n <= fx->cap) return true;
    const int nth = hc_pool_size(fx->pool);
    for (int i = 0; i < nth; i++) {
        float *p = realloc(fx->scratch[i], n * sizeof(float));
        if (!p) return false;
        fx->scratch[i] = p;
    }
    fx->cap = n;
    return true;
}

bool hc_fast_acts(hc_fast_ctx *fx, size_t n) {
    if (n <= fx->qx_cap) return true;
    int8_t *q = realloc(fx->qx, n);
    if (!q) return false;
    fx->qx = q;
    float *d = realloc(fx->dx, (n / 32 + 1) * sizeof(float));
    if (!d) return false;
    fx->dx = d;
    float *sx = realloc(fx->sx, (n / 32 + 1) * sizeof(float));
    if (!sx) return false;
    fx->sx = sx;
    int32_t *isx = realloc(fx->isx, (n / 32 + 1) * sizeof(int32_t));
    if (!isx) return false;
    fx->isx = isx;
    fx->qx_cap = n;
    return true;
}

bool hc_fast_own_acts(hc_fast_ctx *fx, size_t bytes) {
    if (bytes <= fx->own_acts_cap) return true;
    const int nth = hc_pool_size(fx->pool);
    bytes = (bytes + 63) / 64 * 64;
    for (int i = 0; i < nth; i++) {
        void *p = aligned_alloc(64, bytes);
        if (!p) return false;
        free(fx->own_acts[i]);
        fx->own_acts[i] = p;
    }
    fx->own_acts_cap = bytes;
    return true;
}

bool hc_backend_cpu_fast_bf16_compute(hc_backend *be, bool on) {
    hc_fast_ctx *fx = be->ctx;
    fx->bf16_compute = on && hc_cpu_has_bf16_dot();
    return fx->bf16_compute;
}

static void fast_destroy(hc_backend *be) {
    hc_fast_ctx *fx = be->ctx;
    free(fx->qx);
    free(fx->dx);
    free(fx->sx);
    free(fx->isx);
    free(fx->xpairs);
    free(fx->wt);
    free(fx->att_parts);
    for (int i = 0; i < HC_MAX_THREADS; i++) free(fx->scratch[i]), free(fx->own_acts[i]);
    hc_pool_free(fx->pool);
    free(fx);
    free(be);
}

hc_status hc_backend_cpu_fast_new(int n_threads, hc_backend **out) {
    hc_backend *be = malloc(sizeof *be);
    if (!be) return hc_fail(HC_ERR_NOMEM, "out of memory");
    *be = cpu_backend;
    be->name = "cpu-fast";
    be->matmul = hc_cpu_matmul_fast;
    be->matmul_n = hc_cpu_matmul_n_fast;
    be->gated_matmul = hc_cpu_gated_matmul_fast;
    be->quant_layout = hc_cpu_quant_layout;
    be->attention = hc_cpu_attention_fast;
    be->norm = hc_cpu_norm_fast;
    be->glu = hc_cpu_glu_fast;
    be->attention_backward = hc_cpu_attention_backward_fast;
    be->rope = hc_cpu_rope_fast;
    be->matmul_backward = hc_cpu_matmul_backward_fast;
    be->destroy = fast_destroy;
    hc_fast_ctx *fx = calloc(1, sizeof *fx);
    if (!fx) {
        free(be);
        return hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    if (n_threads > HC_MAX_THREADS) n_threads = HC_MAX_THREADS;
    if (n_threads <= 0 && hc_cpu_count() > HC_MAX_THREADS) n_threads = HC_MAX_THREADS;
    hc_status st = hc_pool_new(n_threads, &fx->pool);
    if (st) {
        free(fx);
        free(be);
        return st;
    }
    be->ctx = fx;
    *out = be;
    return HC_OK;
}
