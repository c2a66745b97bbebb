/* The fused ops of backend.h as the op sequences they stand for: the CPU backends' entries,
 * and the specification GPU kernels are tested against. */
#include "backend/backend.h"

void hc_fused_matmul_n(hc_backend *be, float *const *outs, const float *x, const hc_mat *const *ws,
                       const hc_vec *const *bs, int n, int64_t T) {
    for (int i = 0; i < n; i++) be->matmul(be, outs[i], x, ws[i], bs[i], T);
}

void hc_fused_gated_matmul(hc_backend *be, float *out, float *tmp, const float *x, const hc_mat *gate, const hc_vec *bg,
                           const hc_mat *up, const hc_vec *bu, hc_activation act, int64_t T) {
    be->matmul(be, out, x, gate, bg, T);
    be->matmul(be, tmp, x, up, bu, T);
    be->glu(be, out, out, tmp, act, T * gate->rows);
}

void hc_fused_attention_train(hc_backend *be, float *out, float *reserve, const float *q, const float *k, const float *v,
                              const int32_t *pos, int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale,
                              int64_t window, float softcap, float *scratch) {
    (void)reserve; /* the op sequence keeps nothing for the backward */
    for (int64_t b = 0; b < B; b++)
        be->attention(be, out + b * T * H * D, q + b * T * H * D, k + b * T * KVH * D, v + b * T * KVH * D, HC_DTYPE_F32,
                      pos, T, H, KVH, D, scale, window, softcap, T, scratch);
}

void hc_fused_matmul_add(hc_backend *be, float *out, float *tmp, const float *x, const hc_mat *w, float alpha, int64_t T) {
    be->matmul(be, tmp, x, w, NULL, T);
    be->add_scaled(be, out, tmp, alpha, T * w->rows);
}

void hc_fused_ffn(hc_backend *be, float *out, float *a, float *b, const float *x, const hc_mat *gate, const hc_vec *bg,
                  const hc_mat *up, const hc_vec *bu, const hc_mat *down, const hc_vec *bd, hc_activation act, int64_t T) {
    be->gated_matmul(be, a, b, x, gate, bg, up, bu, act, T);
    be->matmul(be, out, a, down, bd, T);
}

void hc_fused_matmul_add_norm(hc_backend *be, float *h, float *x, float *o, const float *a, const hc_mat *w,
                              const hc_vec *bias, const hc_vec *nw, const hc_vec *nb, hc_norm_kind kind, float eps,
                              bool h_matmul_only, int64_t T) {
    (void)h_matmul_only; /* a hint: the sequence writes h in f32 */
    const int64_t C = w->rows;
    be->matmul(be, o, a, w, bias, T);
    if (h) be->add_norm(be, h, x, o, nw, nb, kind, eps, T, C);
    else be->add(be, x, x, o, T * C);
}

void hc_fused_ffn_add_norm(hc_backend *be, float *h, float *x, float *o, float *fa, float *fb, const float *in,
                           const hc_mat *gate, const hc_vec *bg, const hc_mat *up, const hc_vec *bu, const hc_mat *down,
                           const hc_vec *bd, hc_activation act, const hc_vec *nw, const hc_vec *nb, hc_norm_kind kind,
                           float eps, bool h_matmul_only, int64_t T) {
    (void)h_matmul_only;
    const int64_t C = down->rows;
    be->ffn(be, o, fa, fb, in, gate, bg, up, bu, down, bd, act, T);
    if (h) be->add_norm(be, h, x, o, nw, nb, kind, eps, T, C);
    else be->add(be, x, x, o, T * C);
}

void hc_fused_ffn_train(hc_backend *be, float *out, float *keep, const float *x, const hc_mat *gate, const hc_vec *bg,
                        const hc_mat *up, const hc_vec *bu, const hc_mat *down, const hc_vec *bd, hc_activation act,
                        int64_t T) {
    const int64_t I = gate->rows;
    float *g = keep, *u = keep + T * I, *a = keep + 2 * T * I; /* [T, I] each */
    be->matmul(be, g, x, gate, bg, T);
    be->matmul(be, u, x, up, bu, T);
    be->glu(be, a, g, u, act, T * I);
    be->matmul(be, out, a, down, bd, T);
}

void hc_fused_matmul_n_backward(hc_backend *be, float *dx, float *const *dws, float *const *dbs,
                                const float *const *douts, const float *x, const hc_mat *const *ws, int n, int64_t T,
                                float *tmp, bool overwrite) {
    for (int i = 0; i < n; i++) {
        if (overwrite && dws[i]) be->fill(be, dws[i], 0, ws[i]->rows * ws[i]->cols);
        be->matmul_backward(be, i ? tmp : dx, dws[i], dbs[i], douts[i], x, ws[i], T);
        if (i) be->add(be, dx, dx, tmp, T * ws[0]->cols);
    }
}

void hc_fused_ffn_backward(hc_backend *be, float *dx, float *dgate, float *dbg, float *dup, float *dbu, float *ddown,
                           float *dbd, const float *dout, const float *x, const float *keep, const hc_mat *gate,
                           const hc_vec *bg, const hc_mat *up, const hc_vec *bu, const hc_mat *down, const hc_vec *bd,
                           hc_activation act, int64_t T, float *scratch, bool overwrite) {
    (void)bg, (void)bu, (void)bd; /* the sequence keeps what it needs in f32 either way */
    float *const dws[3] = {dgate, dup, ddown};
    const hc_mat *const ws[3] = {gate, up, down};
    for (int i = 0; i < 3 && overwrite; i++)
        if (dws[i]) be->fill(be, dws[i], 0, ws[i]->rows * ws[i]->cols);
    const int64_t I = gate->rows, C = gate->cols;
    const float *g = keep, *u = keep + T * I, *a = keep + 2 * T * I;
    float *da = scratch, *dg = scratch + T * I, *du = scratch + 2 * T * I, *tmp = scratch + 3 * T * I;
    be->matmul_backward(be, da, ddown, dbd, dout, a, down, T);
    be->glu_backward(be, dg, du, da, g, u, act, T * I);
    be->matmul_backward(be, dx, dgate, dbg, dg, x, gate, T);
    be->matmul_backward(be, tmp, dup, dbu, du, x, up, T);
    be->add(be, dx, dx, tmp, T * C);
}

void hc_fused_lm_loss(hc_backend *be, float *dx, float *dw, float *loss, float *hit, const float *x, const hc_mat *w,
                      float softcap, const int32_t *targets, int64_t T, double scale, float *scratch, bool overwrite) {
    const int64_t V = w->rows;
    float *logits = scratch, *dlogits = scratch + T * V; /* [T, V] each */
    be->matmul(be, logits, x, w, NULL, T);
    if (softcap > 0) be->softcap(be, logits, softcap, T * V);
    be->cross_entropy(be, dx ? dlogits : NULL, loss, hit, logits, targets, T, V, scale);
    if (!dx) return;
    if (softcap > 0) be->softcap_backward(be, dlogits, dlogits, logits, softcap, T * V);
    if (overwrite && dw) be->fill(be, dw, 0, V * w->cols);
    be->matmul_backward(be, dx, dw, NULL, dlogits, x, w, T);
}

void hc_fused_add_norm(hc_backend *be, float *h, float *x, const float *o, const hc_vec *w, const hc_vec *b,
                       hc_norm_kind kind, float eps, int64_t T, int64_t C) {
    be->add(be, x, x, o, T * C);
    be->norm(be, h, x, w, b, kind, eps, T, C);
}

void hc_fused_rope_store(hc_backend *be, float *q, float *k, const float *v, void *k_cache, void *v_cache,
                         hc_dtype kv_dtype, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T,
                         int64_t H, int64_t KVH, int64_t D, int64_t R) {
    if (inv_freq) {
        be->rope(be, q, pos, inv_freq, attn_factor, T, H, D, R);
        be->rope(be, k, pos, inv_freq, attn_factor, T, KVH, D, R);
    }
    be->set_rows(be, k_cache, kv_dtype, k, pos, T, KVH * D);
    be->set_rows(be, v_cache, kv_dtype, v, pos, T, KVH * D);
}

/* Host memory only: the row pointers are read here (the CPU's backend memory is the host's). */
void hc_fused_rope_store_rows(hc_backend *be, float *q, float *k, const float *v, void *const *k_rows, void *const *v_rows,
                              hc_dtype kv_dtype, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T,
                              int64_t H, int64_t KVH, int64_t D, int64_t R) {
    for (int64_t t = 0; t < T; t++)
        be->rope_store(be, q + t * H * D, k + t * KVH * D, v + t * KVH * D, k_rows[t], v_rows[t], kv_dtype, pos + t,
                       inv_freq, attn_factor, 1, H, KVH, D, R);
}

void hc_fused_attention_rows(hc_backend *be, float *out, const float *q, void *const *k_rows, void *const *v_rows,
                             hc_dtype kv_dtype, const int32_t *pos, int64_t T, int64_t H, int64_t KVH, int64_t D,
                             float scale, int64_t window, float softcap, int64_t S, float *scratch) {
    for (int64_t t = 0; t < T; t++)
        be->attention(be, out + t * H * D, q + t * H * D, k_rows[t], v_rows[t], kv_dtype, pos + t, 1, H, KVH, D, scale,
                      window, softcap, S, scratch);
}
