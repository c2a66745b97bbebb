/* The reference CPU backend: plain C, one file per op family. */
#ifndef HC_BACKEND_CPU_H
#define HC_BACKEND_CPU_H

#include "backend/backend.h"
#include <string.h>

#include "base/half.h"

/* Element i of a weight buffer in any float dtype, widened to f32. */
static inline float hc_load_f32(const void *data, hc_dtype dt, int64_t i) {
    switch (dt) {
    case HC_DTYPE_F32: {
        float f;
        memcpy(&f, (const char *)data + 4 * i, 4);
        return f;
    }
    case HC_DTYPE_BF16: {
        uint16_t h;
        memcpy(&h, (const char *)data + 2 * i, 2);
        return hc_bf16_to_f32(h);
    }
    case HC_DTYPE_F16: {
        uint16_t h;
        memcpy(&h, (const char *)data + 2 * i, 2);
        return hc_f16_to_f32(h);
    }
    default: return 0.0f; /* the loader admits only the three float dtypes */
    }
}

void hc_cpu_embedding(hc_backend *be, float *out, const hc_mat *table, const int32_t *ids, int64_t T, float scale,
                      bool accumulate);
void hc_cpu_matmul(hc_backend *be, float *out, const float *x, const hc_mat *w, const hc_vec *bias, int64_t T);
/* Fast-backend versions of norm and glu: the same per-element code, split over the pool. */
void hc_cpu_norm_fast(hc_backend *be, float *out, const float *x, const hc_vec *w, const hc_vec *b, hc_norm_kind kind,
                      float eps, int64_t T, int64_t C);
void hc_cpu_glu_fast(hc_backend *be, float *out, const float *gate, const float *up, hc_activation act, int64_t n);
void hc_cpu_matmul_fast(hc_backend *be, float *out, const float *x, const hc_mat *w, const hc_vec *bias, int64_t T);
/* Decode's products of one x in one pass of the pool (matmul_fast.c); other calls take the op sequence. */
void hc_cpu_matmul_n_fast(hc_backend *be, float *const *outs, const float *x, const hc_mat *const *ws,
                          const hc_vec *const *bs, int n, int64_t T);
void hc_cpu_gated_matmul_fast(hc_backend *be, float *out, float *tmp, const float *x, const hc_mat *gate,
                              const hc_vec *bg, const hc_mat *up, const hc_vec *bu, hc_activation act, int64_t T);
void hc_cpu_norm(hc_backend *be, float *out, const float *x, const hc_vec *w, const hc_vec *b, hc_norm_kind kind,
                 float eps, int64_t T, int64_t C);
void hc_cpu_rope(hc_backend *be, float *x, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T,
                 int64_t nh, int64_t D, int64_t R);
void hc_cpu_attention(hc_backend *be, float *out, const float *q, const void *k_cache, const void *v_cache,
                      hc_dtype kv_dtype, const int32_t *pos, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale,
                      int64_t window, float softcap, int64_t S, float *scratch);
void hc_cpu_set_rows(hc_backend *be, void *dst, hc_dtype dst_dtype, const float *src, const int32_t *pos, int64_t T,
                     int64_t width);
void hc_cpu_glu(hc_backend *be, float *out, const float *gate, const float *up, hc_activation act, int64_t n);
void hc_cpu_embedding_backward(hc_backend *be, float *dtable, const hc_mat *table, const float *dout, const int32_t *ids,
                               int64_t T, float scale);
void hc_cpu_matmul_backward(hc_backend *be, float *dx, float *dw, float *db, const float *dout, const float *x,
                            const hc_mat *w, int64_t T);
void hc_cpu_norm_backward(hc_backend *be, float *dx, float *dw, float *db, const float *dout, const float *x,
                          const hc_vec *w, const hc_vec *b, hc_norm_kind kind, float eps, int64_t T, int64_t C,
                          bool accumulate);
void hc_cpu_rope_backward(hc_backend *be, float *dx, const int32_t *pos, const float *inv_freq, float attn_factor,
                          int64_t T, int64_t nh, int64_t D, int64_t R);
void hc_cpu_attention_backward(hc_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                               const float *reserve, const float *q, const float *k, const float *v, const int32_t *pos,
                               int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale, int64_t window,
                               float softcap, float *scratch);
void hc_cpu_glu_backward(hc_backend *be, float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                         hc_activation act, int64_t n);
void hc_cpu_topk_route_backward(hc_backend *be, float *dlogits, const float *dweights, const int32_t *experts,
                                const float *logits, int64_t T, int64_t E, int64_t k, bool renorm);
void hc_cpu_softcap_backward(hc_backend *be, float *dx, const float *dy, const float *y, float cap, int64_t n);
void hc_cpu_argmax_rows(hc_backend *be, int32_t *out, const float *x, int64_t T, int64_t V);
void hc_cpu_sum_squares(hc_backend *be, double *acc, const float *x, int64_t n);
void hc_cpu_adamw(hc_backend *be, float *w, float *m1, float *m2, const float *g, float g_scale, int64_t n,
                  const hc_adamw_params *p, int64_t step, void *out, hc_dtype out_dtype);
void hc_cpu_cross_entropy(hc_backend *be, float *dlogits, float *loss, float *hit, const float *logits,
                          const int32_t *targets, int64_t T, int64_t V, double scale);
void hc_cpu_activate(hc_backend *be, float *x, hc_activation act, int64_t n);
void hc_cpu_add(hc_backend *be, float *out, const float *a, const float *b, int64_t n);
void hc_cpu_add_scaled(hc_backend *be, float *out, const float *x, float alpha, int64_t n);
void hc_cpu_softcap(hc_backend *be, float *x, float cap, int64_t n);
void hc_cpu_topk_route(hc_backend *be, float *weights, int32_t *experts, const float *logits, int64_t T, int64_t E,
                       int64_t k, bool renorm);

#endif
