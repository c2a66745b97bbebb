#include "run/session.h"

#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "model/rope.h"

static void *session_alloc(hc_session *s, int64_t count, size_t elem, bool *oom) {
    if (count <= 0) return NULL;
    void *p = s->m->be->alloc(s->m->be, (size_t)count * elem);
    if (!p) *oom = true;
    return p;
}

hc_status hc_session_new(hc_model *m, int64_t n_ctx, hc_session **out) {
    *out = NULL;
    const hc_model_config *c = &m->cfg;
    if (n_ctx < 0) return hc_fail(HC_ERR_INVALID_ARG, "context length %lld is negative", (long long)n_ctx);
    if (n_ctx == 0) n_ctx = c->max_position_embeddings < 4096 ? c->max_position_embeddings : 4096;
    if (c->rope.type == HC_ROPE_NONE && n_ctx > c->max_position_embeddings)
        return hc_fail(HC_ERR_RANGE, "context length %lld exceeds the model's %lld learned positions", (long long)n_ctx,
                       (long long)c->max_position_embeddings);
    if (n_ctx > INT32_MAX) return hc_fail(HC_ERR_RANGE, "context length %lld is too large", (long long)n_ctx);
    hc_session *s = calloc(1, sizeof *s);
    if (!s) return hc_fail(HC_ERR_NOMEM, "out of memory");
    s->m = m;
    s->n_ctx = n_ctx;
    s->n_batch = n_ctx < HC_MAX_BATCH ? n_ctx : HC_MAX_BATCH;
    const int64_t B = s->n_batch, C = c->hidden_size, H = c->n_heads, KVH = c->n_kv_heads, D = c->head_dim;
    const int64_t I = c->intermediate_size, L = c->n_layers, E = c->n_experts, K = c->n_experts_per_tok;
    bool oom = false;
    s->k_cache = session_alloc(s, L * n_ctx * KVH * D, sizeof(float), &oom);
    s->v_cache = session_alloc(s, L * n_ctx * KVH * D, sizeof(float), &oom);
    s->x = session_alloc(s, B * C, sizeof(float), &oom);
    s->h = session_alloc(s, B * C, sizeof(float), &oom);
    s->o = session_alloc(s, B * C, sizeof(float), &oom);
    s->q = session_alloc(s, B * H * D, sizeof(float), &oom);
    s->att = session_alloc(s, B * H * D, sizeof(float), &oom);
    s->k = session_alloc(s, B * KVH * D, sizeof(float), &oom);
    s->v = session_alloc(s, B * KVH * D, sizeof(float), &oom);
    s->scores = session_alloc(s, n_ctx, sizeof(float), &oom);
    s->pos_buf = session_alloc(s, B, sizeof(int32_t), &oom);
    if (E > 0) {
        s->router = session_alloc(s, B * E, sizeof(float), &oom);
        s->route_w = session_alloc(s, B * K, sizeof(float), &oom);
        s->route_e = session_alloc(s, B * K, sizeof(int32_t), &oom);
        s->e_a = session_alloc(s, I, sizeof(float), &oom);
        s->e_b = session_alloc(s, I, sizeof(float), &oom);
        s->e_o = session_alloc(s, C, sizeof(float), &oom);
    } else {
        s->ff_a = session_alloc(s, B * I, sizeof(float), &oom);
        s->ff_b = session_alloc(s, B * I, sizeof(float), &oom);
    }
    if (c->rope.type != HC_ROPE_NONE) {
        s->inv_freq[0] = session_alloc(s, c->rotary_dim / 2, sizeof(float), &oom);
        s->inv_freq[1] = session_alloc(s, c->rotary_dim / 2, sizeof(float), &oom);
    }
    if (oom) {
        double mib = (double)(2 * L * n_ctx * KVH * D * 4) / (1 << 20);
        hc_session_free(s);
        return hc_fail(HC_ERR_NOMEM, "cannot allocate a session for %lld positions (KV cache %.0f MiB)",
                       (long long)n_ctx, mib);
    }
    hc_session_reset(s);
    *out = s;
    return HC_OK;
}

void hc_session_reset(hc_session *s) {
    const hc_model_config *c = &s->m->cfg;
    s->pos = 0;
    s->rope_cached_len = c->max_position_embeddings;
    if (c->rope.type == HC_ROPE_NONE) return;
    for (int r = 0; r < 2; r++)
        hc_rope_inv_freq(s->inv_freq[r], &s->attn_factor[r], &s->m->rope[r], c->rotary_dim,
                         c->max_position_embeddings, c->max_position_embeddings);
}

void hc_session_free(hc_session *s) {
    if (!s) return;
    hc_backend *be = s->m->be;
    void *bufs[] = {s->k_cache, s->v_cache, s->x, s->h, s->o, s->q, s->att, s->k, s->v, s->scores,
                    s->pos_buf, s->router, s->route_w, s->route_e, s->e_a, s->e_b, s->e_o, s->ff_a,
                    s->ff_b, s->inv_freq[0], s->inv_freq[1]};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) be->free(be, bufs[i]);
    free(s);
}

int64_t hc_session_pos(const hc_session *s) { return s->pos; }
int64_t hc_session_n_ctx(const hc_session *s) { return s->n_ctx; }

hc_status hc_session_forward(hc_session *s, const int32_t *ids, int64_t n, float *logits, bool all_logits) {
    const int64_t V = s->m->cfg.vocab_size;
    if (n <= 0 || !ids) return hc_fail(HC_ERR_INVALID_ARG, "empty prompt: give at least one token id");
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return hc_fail(HC_ERR_RANGE, "token id %d at index %lld is outside the vocabulary [0, %lld)", ids[i],
                           (long long)i, (long long)V);
    if (s->pos + n > s->n_ctx)
        return hc_fail(HC_ERR_RANGE, "%lld positions needed but the context holds %lld (%lld used)",
                       (long long)(s->pos + n), (long long)s->n_ctx, (long long)s->pos);
    return hc_decoder_forward(s, ids, n, logits, all_logits);
}
