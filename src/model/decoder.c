/* The decoder: one forward pass composed from backend ops, for every architecture.
 * What differs between families is data (model/arch_*.c and the config), not code here. */
#include <string.h>

#include "model/rope.h"
#include "run/session.h"

/* Dynamic NTK rope recomputes its table as the sequence grows past the trained length, and
 * returns to the original table for short sequences, as transformers' dynamic_rope_update. */
static void update_dynamic_rope(hc_session *s, int64_t seq_len) {
    const hc_model_config *c = &s->m->cfg;
    if (c->rope.type != HC_ROPE_DYNAMIC) return;
    const int64_t orig = c->rope.original_max_position_embeddings;
    int64_t want = s->rope_cached_len;
    if (seq_len > s->rope_cached_len) want = seq_len;
    else if (seq_len < orig && s->rope_cached_len > orig) want = orig;
    if (want == s->rope_cached_len) return;
    s->rope_cached_len = want;
    for (int r = 0; r < 2; r++)
        hc_rope_inv_freq(s->inv_freq[r], &s->attn_factor[r], &s->m->rope[r], c->rotary_dim,
                         c->max_position_embeddings, want);
}

static void feed_forward(hc_session *s, const hc_layer *L, int64_t T) {
    const hc_model *m = s->m;
    hc_backend *be = m->be;
    const hc_model_config *c = &m->cfg;
    const int64_t C = c->hidden_size, I = c->intermediate_size;
    if (c->n_experts > 0) {
        const int64_t E = c->n_experts, K = c->n_experts_per_tok;
        be->matmul(be, s->router, s->h, &L->router, NULL, T);
        be->topk_route(be, s->route_w, s->route_e, s->router, T, E, K, c->norm_topk_prob);
        memset(s->o, 0, sizeof(float) * (size_t)(T * C));
        for (int64_t t = 0; t < T; t++) {
            for (int64_t j = 0; j < K; j++) {
                const int32_t e = s->route_e[t * K + j];
                be->matmul(be, s->e_a, s->h + t * C, &L->exp_gate[e], NULL, 1);
                be->matmul(be, s->e_b, s->h + t * C, &L->exp_up[e], NULL, 1);
                be->glu(be, s->e_a, s->e_a, s->e_b, c->act, I);
                be->matmul(be, s->e_o, s->e_a, &L->exp_down[e], NULL, 1);
                be->add_scaled(be, s->o + t * C, s->e_o, s->route_w[t * K + j], C);
            }
        }
    } else if (m->arch->gated_mlp) {
        be->matmul(be, s->ff_a, s->h, &L->gate, &L->b_gate, T);
        be->matmul(be, s->ff_b, s->h, &L->up, &L->b_up, T);
        be->glu(be, s->ff_a, s->ff_a, s->ff_b, c->act, T * I);
        be->matmul(be, s->o, s->ff_a, &L->down, &L->b_down, T);
    } else {
        be->matmul(be, s->ff_a, s->h, &L->up, &L->b_up, T);
        be->activate(be, s->ff_a, c->act, T * I);
        be->matmul(be, s->o, s->ff_a, &L->down, &L->b_down, T);
    }
}

static void forward_chunk(hc_session *s, const int32_t *ids, int64_t T, float *logits, bool all_logits,
                          bool last_chunk) {
    const hc_model *m = s->m;
    hc_backend *be = m->be;
    const hc_model_config *c = &m->cfg;
    const hc_norm_kind nk = m->arch->norm;
    const float eps = (float)c->norm_eps;
    const int64_t C = c->hidden_size, H = c->n_heads, KVH = c->n_kv_heads, D = c->head_dim;
    const int64_t S = s->n_ctx, V = c->vocab_size;
    int32_t *pos = s->pos_buf; /* [T] */
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)(s->pos + t);
    update_dynamic_rope(s, s->pos + T);

    be->embedding(be, s->x, &m->tok_embed, ids, T, m->embed_scale, false);
    if (m->pos_embed.data) be->embedding(be, s->x, &m->pos_embed, pos, T, 1.0f, true);

    for (int64_t l = 0; l < c->n_layers; l++) {
        const hc_layer *L = &m->layers[l];
        float *kc = s->k_cache + l * S * KVH * D; /* [S, KVH*D] */
        float *vc = s->v_cache + l * S * KVH * D;
        be->norm(be, s->h, s->x, &L->attn_norm, &L->attn_norm_b, nk, eps, T, C);
        be->matmul(be, s->q, s->h, &L->wq, &L->bq, T);
        be->matmul(be, s->k, s->h, &L->wk, &L->bk, T);
        be->matmul(be, s->v, s->h, &L->wv, &L->bv, T);
        if (L->q_norm.data) be->norm(be, s->q, s->q, &L->q_norm, NULL, nk, eps, T * H, D);
        if (L->k_norm.data) be->norm(be, s->k, s->k, &L->k_norm, NULL, nk, eps, T * KVH, D);
        if (c->rope.type != HC_ROPE_NONE) {
            be->rope(be, s->q, pos, s->inv_freq[L->rope], s->attn_factor[L->rope], T, H, D, c->rotary_dim);
            be->rope(be, s->k, pos, s->inv_freq[L->rope], s->attn_factor[L->rope], T, KVH, D, c->rotary_dim);
        }
        be->set_rows(be, kc, s->k, pos, T, KVH * D);
        be->set_rows(be, vc, s->v, pos, T, KVH * D);
        be->attention(be, s->att, s->q, kc, vc, pos, T, H, KVH, D, L->attn_scale,
                      L->sliding ? c->sliding_window : 0, (float)c->attn_softcap, s->scores);
        be->matmul(be, s->o, s->att, &L->wo, &L->bo, T);
        if (L->attn_post_norm.data) be->norm(be, s->o, s->o, &L->attn_post_norm, NULL, nk, eps, T, C);
        be->add(be, s->x, s->x, s->o, T * C);

        be->norm(be, s->h, s->x, &L->ffn_norm, &L->ffn_norm_b, nk, eps, T, C);
        feed_forward(s, L, T);
        if (L->ffn_post_norm.data) be->norm(be, s->o, s->o, &L->ffn_post_norm, NULL, nk, eps, T, C);
        be->add(be, s->x, s->x, s->o, T * C);
    }
    s->pos += T;
    if (!logits || (!all_logits && !last_chunk)) return;

    /* Only the rows whose logits are wanted go through the final norm and the LM head. */
    const float *rows = all_logits ? s->x : s->x + (T - 1) * C;
    const int64_t n_rows = all_logits ? T : 1;
    be->norm(be, s->h, rows, &m->final_norm, &m->final_norm_b, nk, eps, n_rows, C);
    be->matmul(be, logits, s->h, &m->lm_head, NULL, n_rows);
    if (c->final_softcap > 0) be->softcap(be, logits, (float)c->final_softcap, n_rows * V);
}

hc_status hc_decoder_forward(hc_session *s, const int32_t *ids, int64_t T, float *logits, bool all_logits) {
    const int64_t V = s->m->cfg.vocab_size;
    for (int64_t done = 0; done < T; done += s->n_batch) {
        const int64_t n = T - done < s->n_batch ? T - done : s->n_batch;
        float *out = (logits && all_logits) ? logits + done * V : logits;
        forward_chunk(s, ids + done, n, out, all_logits, done + n == T);
    }
    return HC_OK;
}
