/* Backward of the ops, the reference for training: plain loops, f32 with double sums where a
 * reduction is long. Conventions as backend.h states them. */
#include <math.h>

#include "backend/activation.h"
#include "backend/cpu/cpu.h"
#include "base/half.h"

void hc_cpu_embedding_backward(hc_backend *be, float *dtable, const hc_mat *table, const float *dout, const int32_t *ids,
                               int64_t T, float scale) {
    (void)be;
    const int64_t C = table->cols;
    for (int64_t t = 0; t < T; t++)
        for (int64_t c = 0; c < C; c++) {
            const int64_t idx = table->transposed ? c * table->ld + ids[t] : ids[t] * table->ld + c;
            dtable[idx] += dout[t * C + c] * scale;
        }
}

void hc_cpu_matmul_backward(hc_backend *be, float *dx, float *dw, float *db, const float *dout, const float *x,
                            const hc_mat *w, int64_t T) {
    (void)be;
    const int64_t N = w->rows, K = w->cols;
#define W_AT(n, k) (w->transposed ? (k) * w->ld + (n) : (n) * w->ld + (k))
    if (dx)
        for (int64_t t = 0; t < T; t++)
            for (int64_t k = 0; k < K; k++) {
                double s = 0;
                for (int64_t n = 0; n < N; n++) s += (double)dout[t * N + n] * hc_load_f32(w->data, w->dtype, W_AT(n, k));
                dx[t * K + k] = (float)s;
            }
    if (dw)
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < K; k++) {
                double s = 0;
                for (int64_t t = 0; t < T; t++) s += (double)dout[t * N + n] * x[t * K + k];
                dw[W_AT(n, k)] += (float)s;
            }
#undef W_AT
    if (db)
        for (int64_t n = 0; n < N; n++) {
            double s = 0;
            for (int64_t t = 0; t < T; t++) s += dout[t * N + n];
            db[n] += (float)s;
        }
}

void hc_cpu_norm_backward(hc_backend *be, float *dx, float *dw, float *db, const float *dout, const float *x,
                          const hc_vec *w, const hc_vec *b, hc_norm_kind kind, float eps, int64_t T, int64_t C,
                          bool accumulate) {
    (void)be;
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * C, *gt = dout + t * C;
        double mean = 0, ss = 0;
        if (kind == HC_NORM_LAYER) {
            for (int64_t c = 0; c < C; c++) mean += xt[c];
            mean /= (double)C;
        }
        for (int64_t c = 0; c < C; c++) ss += ((double)xt[c] - mean) * ((double)xt[c] - mean);
        const double inv = 1.0 / sqrt(ss / (double)C + eps);
        /* y = xhat * g (+ b), xhat = (x - mean) * inv; dxhat = dy * g */
        double sum_d = 0, sum_dx = 0;
        for (int64_t c = 0; c < C; c++) {
            double g = w && w->data ? hc_load_f32(w->data, w->dtype, c) : 1.0;
            if (kind == HC_NORM_RMS_PLUS1) g += 1.0;
            const double xhat = ((double)xt[c] - mean) * inv, d = (double)gt[c] * g;
            sum_d += d;
            sum_dx += d * xhat;
            if (dw && w && w->data) dw[c] += (float)((double)gt[c] * xhat);
            if (db && b && b->data) db[c] += gt[c];
        }
        if (!dx) continue;
        for (int64_t c = 0; c < C; c++) {
            double g = w && w->data ? hc_load_f32(w->data, w->dtype, c) : 1.0;
            if (kind == HC_NORM_RMS_PLUS1) g += 1.0;
            const double xhat = ((double)xt[c] - mean) * inv, d = (double)gt[c] * g;
            double v = d - xhat * sum_dx / (double)C;
            if (kind == HC_NORM_LAYER) v -= sum_d / (double)C;
            const float r = (float)(inv * v);
            dx[t * C + c] = accumulate ? dx[t * C + c] + r : r;
        }
    }
}

void hc_cpu_rope_backward(hc_backend *be, float *dx, const int32_t *pos, const float *inv_freq, float attn_factor,
                          int64_t T, int64_t nh, int64_t D, int64_t R) {
    (void)be;
    const int64_t half = R / 2;
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < half; i++) {
            const float angle = (float)pos[t] * inv_freq[i];
            const float c = (float)cos((double)angle) * attn_factor, s = (float)sin((double)angle) * attn_factor;
            for (int64_t h = 0; h < nh; h++) {
                float *v = dx + (t * nh + h) * D;
                const float a = v[i], b = v[i + half];
                v[i] = a * c + b * s; /* the transpose of the rotation */
                v[i + half] = b * c - a * s;
            }
        }
}

/* One sequence of T rows. */
static void attention_backward_seq(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                                   const float *v, const int32_t *pos, int64_t T, int64_t H, int64_t KVH, int64_t D,
                                   float scale, int64_t window, float softcap, float *scratch) {
    const int64_t group = H / KVH;
    for (int64_t i = 0; i < T * H * D; i++) dq[i] = 0;
    for (int64_t i = 0; i < T * KVH * D; i++) dk[i] = 0, dv[i] = 0;
    float *p = scratch, *th = scratch + T; /* [T] probabilities, [T] tanh of the capped scores */
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            const int64_t kvh = h / group;
            const float *qh = q + (t * H + h) * D, *go = dout + (t * H + h) * D;
            float mx = -INFINITY;
            for (int64_t j = 0; j < T; j++) {
                const bool seen = pos[j] <= pos[t] && !(window > 0 && pos[j] <= pos[t] - window);
                if (!seen) {
                    p[j] = -INFINITY;
                    continue;
                }
                const float *kj = k + (j * KVH + kvh) * D;
                float s = 0;
                for (int64_t d = 0; d < D; d++) s += qh[d] * kj[d];
                s *= scale;
                if (softcap > 0) {
                    th[j] = tanhf(s / softcap);
                    s = softcap * th[j];
                }
                p[j] = s;
                if (s > mx) mx = s;
            }
            double sum = 0;
            for (int64_t j = 0; j < T; j++) sum += p[j] == -INFINITY ? 0 : exp((double)(p[j] - mx));
            double dot = 0; /* sum_j P_j dP_j */
            for (int64_t j = 0; j < T; j++) {
                p[j] = p[j] == -INFINITY ? 0 : (float)(exp((double)(p[j] - mx)) / sum);
                if (p[j] == 0) continue;
                const float *vj = v + (j * KVH + kvh) * D;
                double dp = 0;
                for (int64_t d = 0; d < D; d++) dp += (double)go[d] * vj[d];
                dot += p[j] * dp;
            }
            for (int64_t j = 0; j < T; j++) {
                if (p[j] == 0) continue;
                const float *vj = v + (j * KVH + kvh) * D, *kj = k + (j * KVH + kvh) * D;
                double dp = 0;
                for (int64_t d = 0; d < D; d++) dp += (double)go[d] * vj[d];
                double ds = p[j] * (dp - dot);
                if (softcap > 0) ds *= 1.0 - (double)th[j] * th[j];
                ds *= scale;
                float *dkj = dk + (j * KVH + kvh) * D, *dvj = dv + (j * KVH + kvh) * D, *dqh = dq + (t * H + h) * D;
                for (int64_t d = 0; d < D; d++) {
                    dqh[d] += (float)(ds * kj[d]);
                    dkj[d] += (float)(ds * qh[d]);
                    dvj[d] += p[j] * go[d];
                }
            }
        }
}

void hc_cpu_attention_backward(hc_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                               const float *reserve, const float *q, const float *k, const float *v, const int32_t *pos,
                               int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale, int64_t window,
                               float softcap, float *scratch) {
    (void)be, (void)out, (void)reserve;
    for (int64_t b = 0; b < B; b++) {
        const int64_t oq = b * T * H * D, ok = b * T * KVH * D;
        attention_backward_seq(dq + oq, dk + ok, dv + ok, dout + oq, q + oq, k + ok, v + ok, pos, T, H, KVH, D, scale, window,
                               softcap, scratch);
    }
}

void hc_cpu_glu_backward(hc_backend *be, float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                         hc_activation act, int64_t n) {
    (void)be;
    for (int64_t i = 0; i < n; i++) {
        float a, da;
        hc_act_grad(gate[i], act, &a, &da);
        const float g = dout[i];
        if (dup) dup[i] = g * a;
        if (dgate) dgate[i] = g * (up ? up[i] : 1.0f) * da;
    }
}

void hc_cpu_softcap_backward(hc_backend *be, float *dx, const float *dy, const float *y, float cap, int64_t n) {
    (void)be;
    for (int64_t i = 0; i < n; i++) {
        const float t = y[i] / cap;
        dx[i] = dy[i] * (1.0f - t * t);
    }
}

void hc_cpu_cross_entropy(hc_backend *be, float *dlogits, float *loss, float *hit, const float *logits,
                          const int32_t *targets, int64_t T, int64_t V, double scale) {
    (void)be;
    for (int64_t t = 0; t < T; t++) {
        const float *lt = logits + t * V;
        float *dl = dlogits ? dlogits + t * V : NULL;
        const int32_t y = targets[t];
        if (y < 0) {
            loss[t] = hit[t] = 0;
            for (int64_t v = 0; dl && v < V; v++) dl[v] = 0;
            continue;
        }
        double mx = -INFINITY, z = 0;
        int64_t best = 0;
        for (int64_t v = 0; v < V; v++) {
            mx = fmax(mx, lt[v]);
            if (lt[v] > lt[best]) best = v;
        }
        for (int64_t v = 0; v < V; v++) z += exp(lt[v] - mx);
        hit[t] = best == y;
        loss[t] = (float)(log(z) + mx - lt[y]);
        for (int64_t v = 0; dl && v < V; v++) dl[v] = (float)(exp(lt[v] - mx) / z * scale);
        if (dl) dl[y] -= (float)scale;
    }
}

void hc_cpu_sum_squares(hc_backend *be, double *acc, const float *x, int64_t n) {
    (void)be;
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    *acc += s;
}

void hc_cpu_adamw(hc_backend *be, float *w, float *m1, float *m2, const float *g, float g_scale, int64_t n,
                  const hc_adamw_params *p, int64_t step, void *out, hc_dtype out_dtype) {
    (void)be;
    const float lr = (float)p->lr, b1 = (float)p->beta1, b2 = (float)p->beta2;
    const float bc1 = 1.0f - powf(b1, (float)step), bc2_sqrt = sqrtf(1.0f - powf(b2, (float)step));
    const float step_size = lr / bc1, decay = 1.0f - lr * (float)p->weight_decay, eps = (float)p->eps;
    for (int64_t i = 0; i < n; i++) {
        const float gi = g[i] * g_scale;
        w[i] *= decay;
        m1[i] += (gi - m1[i]) * (1.0f - b1);
        m2[i] = m2[i] * b2 + (1.0f - b2) * gi * gi;
        w[i] -= step_size * m1[i] / (sqrtf(m2[i]) / bc2_sqrt + eps);
        if (!out) continue;
        if (out_dtype == HC_DTYPE_F32) ((float *)out)[i] = w[i];
        else if (out_dtype == HC_DTYPE_BF16) ((uint16_t *)out)[i] = hc_f32_to_bf16(w[i]);
        else ((uint16_t *)out)[i] = hc_f32_to_f16(w[i]);
    }
}

void hc_cpu_argmax_rows(hc_backend *be, int32_t *out, const float *x, int64_t T, int64_t V) {
    (void)be;
    for (int64_t t = 0; t < T; t++) {
        const float *r = x + t * V;
        int64_t best = 0;
        for (int64_t v = 1; v < V; v++)
            if (r[v] > r[best]) best = v; /* the first maximum, as torch.argmax */
        out[t] = (int32_t)best;
    }
}
