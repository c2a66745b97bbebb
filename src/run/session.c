#include "run/session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "model/rope.h"
#include "train/lora.h"

static void *ws_alloc(hc_backend *be, int64_t count, size_t elem, bool *oom) {
    if (count <= 0) return NULL;
    void *p = be->alloc(be, (size_t)count * elem);
    if (!p) *oom = true;
    return p;
}

hc_status hc_workspace_init(hc_workspace *ws, hc_model *m, int64_t rows, int64_t ctx) {
    memset(ws, 0, sizeof *ws);
    const hc_model_config *c = &m->cfg;
    hc_backend *be = m->be;
    const int64_t B = rows, C = c->hidden_size, H = c->n_heads, KVH = c->n_kv_heads, D = c->head_dim;
    const int64_t I = c->intermediate_size, E = c->n_experts, K = c->n_experts_per_tok;
    bool oom = false;
    ws->m = m;
    ws->rows = rows;
    ws->ctx = ctx;
    ws->x = ws_alloc(be, B * C, sizeof(float), &oom);
    ws->h = ws_alloc(be, B * C, sizeof(float), &oom);
    ws->o = ws_alloc(be, B * C, sizeof(float), &oom);
    ws->q = ws_alloc(be, B * H * D, sizeof(float), &oom);
    ws->att = ws_alloc(be, B * H * D, sizeof(float), &oom);
    ws->k = ws_alloc(be, B * KVH * D, sizeof(float), &oom);
    ws->v = ws_alloc(be, B * KVH * D, sizeof(float), &oom);
    ws->scores = ws_alloc(be, ctx, sizeof(float), &oom);
    ws->pos = ws_alloc(be, B, sizeof(int32_t), &oom);
    ws->pos_host = calloc((size_t)B, sizeof(int32_t));
    if (!ws->pos_host) oom = true;
    ws->kv_rows = ws_alloc(be, 2 * c->n_layers * B, sizeof(void *), &oom);
    if (m->lora) {
        const int64_t widest = I > C ? (I > H * D ? I : H * D) : (C > H * D ? C : H * D);
        ws->lora_r = ws_alloc(be, B * m->lora->r, sizeof(float), &oom);
        ws->lora_n = ws_alloc(be, B * widest, sizeof(float), &oom);
    }
    ws->kv_rows_host = calloc((size_t)(2 * c->n_layers * B), sizeof(void *));
    if (!ws->kv_rows_host) oom = true;
    if (be->device) {
        ws->ids = ws_alloc(be, B, sizeof(int32_t), &oom);
        ws->logits = ws_alloc(be, B * c->vocab_size, sizeof(float), &oom);
        ws->argmax = ws_alloc(be, B, sizeof(int32_t), &oom);
    }
    if (E > 0) {
        ws->router = ws_alloc(be, B * E, sizeof(float), &oom);
        ws->route_w = ws_alloc(be, B * K, sizeof(float), &oom);
        ws->route_e = ws_alloc(be, B * K, sizeof(int32_t), &oom);
        ws->e_x = ws_alloc(be, B * K * C, sizeof(float), &oom);
        ws->e_a = ws_alloc(be, B * K * I, sizeof(float), &oom);
        ws->e_b = ws_alloc(be, B * K * I, sizeof(float), &oom);
        ws->e_o = ws_alloc(be, B * K * C, sizeof(float), &oom);
        ws->route_e_host = calloc((size_t)(B * K), sizeof(int32_t));
        ws->route_w_host = calloc((size_t)(B * K), sizeof(float));
        ws->route_slot_host = calloc((size_t)(B * K), sizeof(int32_t));
        ws->slot_row_host = calloc((size_t)(B * K), sizeof(int32_t));
        ws->expert_at_host = calloc((size_t)(2 * (E + 1)), sizeof(int32_t));
        if (!ws->route_e_host || !ws->route_w_host || !ws->route_slot_host || !ws->slot_row_host || !ws->expert_at_host)
            oom = true;
        const int64_t IS = c->shared_intermediate_size;
        if (IS > 0) {
            ws->sh_a = ws_alloc(be, B * IS, sizeof(float), &oom);
            ws->sh_b = ws_alloc(be, B * IS, sizeof(float), &oom);
            ws->sh_o = ws_alloc(be, B * C, sizeof(float), &oom);
            ws->sh_g = ws_alloc(be, B, sizeof(float), &oom);
            if (!(ws->sh_g_host = calloc((size_t)B, sizeof(float)))) oom = true;
        }
    } else {
        ws->ff_a = ws_alloc(be, B * I, sizeof(float), &oom);
        ws->ff_b = ws_alloc(be, B * I, sizeof(float), &oom);
    }
    if (oom) {
        hc_workspace_free(ws);
        return hc_fail(HC_ERR_NOMEM, "cannot allocate forward buffers for %lld rows", (long long)rows);
    }
    return HC_OK;
}

void hc_workspace_free(hc_workspace *ws) {
    if (!ws || !ws->m) return;
    hc_backend *be = ws->m->be;
    void *bufs[] = {ws->x, ws->h, ws->o, ws->q, ws->att, ws->k, ws->v, ws->scores, ws->pos, ws->router,
                    ws->route_w, ws->route_e, ws->e_x, ws->e_a, ws->e_b, ws->e_o, ws->sh_a, ws->sh_b, ws->sh_o, ws->sh_g, ws->ff_a, ws->ff_b, ws->ids, ws->logits, ws->argmax, ws->kv_rows, ws->lora_r, ws->lora_n};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) be->free(be, bufs[i]);
    free(ws->pos_host);
    free(ws->kv_rows_host);
    free(ws->route_e_host);
    free(ws->route_w_host);
    free(ws->route_slot_host);
    free(ws->slot_row_host);
    free(ws->expert_at_host);
    free(ws->sh_g_host);
    memset(ws, 0, sizeof *ws);
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
    hc_backend *be = m->be;
    const int64_t kv = c->n_layers * n_ctx * c->n_kv_heads * c->head_dim;
    bool oom = false;
    s->kv_dtype = m->kv_dtype;
    s->k_cache = ws_alloc(be, kv, hc_dtype_size(s->kv_dtype), &oom);
    s->v_cache = ws_alloc(be, kv, hc_dtype_size(s->kv_dtype), &oom);
    if (c->rope.type != HC_ROPE_NONE) {
        s->inv_freq[0] = ws_alloc(be, c->rotary_dim / 2, sizeof(float), &oom);
        s->inv_freq[1] = ws_alloc(be, c->rotary_dim / 2, sizeof(float), &oom);
        s->inv_freq_host[0] = calloc((size_t)c->rotary_dim / 2, sizeof(float));
        s->inv_freq_host[1] = calloc((size_t)c->rotary_dim / 2, sizeof(float));
        if (!s->inv_freq_host[0] || !s->inv_freq_host[1]) oom = true;
    }
    if (c->rope.type == HC_ROPE_LONGROPE && !(s->history = malloc(sizeof(int32_t) * (size_t)n_ctx))) oom = true;
    hc_status st = HC_OK;
    if (oom) {
        size_t free_b = 0, total_b = 0;
        if (be->mem_info) be->mem_info(be, &free_b, &total_b);
        char dev[96] = "";
        if (be->mem_info) snprintf(dev, sizeof dev, "; the %s device has %.0f MiB free", be->name, (double)free_b / (1 << 20));
        st = hc_fail(HC_ERR_NOMEM, "cannot allocate a session for %lld positions (KV cache %.0f MiB%s)", (long long)n_ctx,
                     (double)(2 * kv * (int64_t)hc_dtype_size(s->kv_dtype)) / (1 << 20), dev);
    } else {
        st = hc_workspace_init(&s->ws, m, n_ctx < hc_max_batch(m) ? n_ctx : hc_max_batch(m), n_ctx);
    }
    if (st) {
        hc_session_free(s);
        return st;
    }
    hc_session_reset(s);
    *out = s;
    return HC_OK;
}

void hc_session_reset(hc_session *s) {
    const hc_model_config *c = &s->m->cfg;
    s->pos = 0;
    /* the tables of a freshly loaded transformers model: dynamic's base one, longrope's short factors */
    s->rope_cached_len = c->rope.type == HC_ROPE_LONGROPE ? 0 : c->max_position_embeddings;
    if (c->rope.type == HC_ROPE_NONE) return;
    hc_session_set_rope(s, s->rope_cached_len);
}

void hc_session_set_rope(hc_session *s, int64_t seq_len) {
    const hc_model_config *c = &s->m->cfg;
    for (int r = 0; r < 2; r++) {
        hc_rope_inv_freq(s->inv_freq_host[r], &s->attn_factor[r], &s->m->rope[r], c->rotary_dim,
                         c->max_position_embeddings, seq_len);
        s->m->be->upload(s->m->be, s->inv_freq[r], s->inv_freq_host[r], sizeof(float) * (size_t)(c->rotary_dim / 2));
    }
}

void hc_session_free(hc_session *s) {
    if (!s) return;
    hc_backend *be = s->m->be;
    void *bufs[] = {s->k_cache, s->v_cache, s->inv_freq[0], s->inv_freq[1]};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) be->free(be, bufs[i]);
    free(s->inv_freq_host[0]);
    free(s->inv_freq_host[1]);
    free(s->greedy_logits);
    free(s->history);
    hc_workspace_free(&s->ws);
    free(s);
}

int64_t hc_session_pos(const hc_session *s) { return s->pos; }
int64_t hc_session_n_ctx(const hc_session *s) { return s->n_ctx; }

hc_status hc_session_check(const hc_session *s, const int32_t *ids, int64_t n) {
    const int64_t V = s->m->cfg.vocab_size;
    if (n <= 0 || !ids) return hc_fail(HC_ERR_INVALID_ARG, "empty prompt: give at least one token id");
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return hc_fail(HC_ERR_RANGE, "token id %d at index %lld is outside the vocabulary [0, %lld)", ids[i],
                           (long long)i, (long long)V);
    if (s->pos + n > s->n_ctx)
        return hc_fail(HC_ERR_RANGE, "%lld positions needed but the context holds %lld (%lld used)",
                       (long long)(s->pos + n), (long long)s->n_ctx, (long long)s->pos);
    return HC_OK;
}

hc_status hc_session_forward(hc_session *s, const int32_t *ids, int64_t n, float *logits, bool all_logits) {
    hc_status st = hc_session_check(s, ids, n);
    if (st) return st;
    const int64_t V = s->m->cfg.vocab_size;
    s->rope_end = s->pos + n; /* pieces of one call are one sequence to longrope */
    for (int64_t done = 0; done < n; done += s->ws.rows) {
        const int64_t k = n - done < s->ws.rows ? n - done : s->ws.rows;
        const bool last = done + k == n;
        hc_group g = {s, k};
        float *out = !logits ? NULL : all_logits ? logits + done * V : (last ? logits : NULL);
        hc_decoder_forward_groups(&s->ws, &g, 1, ids + done, out, all_logits, NULL, NULL);
    }
    s->rope_end = 0;
    return s->m->be->check ? s->m->be->check(s->m->be) : HC_OK;
}

hc_status hc_session_forward_greedy(hc_session *s, const int32_t *ids, int64_t n, int32_t *next) {
    if (!next) return hc_fail(HC_ERR_INVALID_ARG, "hc_session_forward_greedy: next is NULL");
    hc_status st = hc_session_check(s, ids, n);
    if (st) return st;
    const hc_backend *be = s->m->be;
    const int64_t V = s->m->cfg.vocab_size;
    if (!be->device && !s->greedy_logits && !(s->greedy_logits = malloc(sizeof(float) * (size_t)V)))
        return hc_fail(HC_ERR_NOMEM, "out of memory");
    s->rope_end = s->pos + n; /* pieces of one call are one sequence to longrope */
    for (int64_t done = 0; done < n; done += s->ws.rows) {
        const int64_t k = n - done < s->ws.rows ? n - done : s->ws.rows;
        hc_group g = {s, k};
        if (done + k < n) { /* not the last rows: nothing to pick yet */
            hc_decoder_forward_groups(&s->ws, &g, 1, ids + done, NULL, false, NULL, NULL);
        } else if (be->device) { /* the decoder picks it where the logits are */
            hc_decoder_forward_groups(&s->ws, &g, 1, ids + done, NULL, false, NULL, next);
        } else { /* the CPU: the logits into a kept host buffer, then the same op */
            hc_decoder_forward_groups(&s->ws, &g, 1, ids + done, s->greedy_logits, false, NULL, NULL);
            s->m->be->argmax_rows(s->m->be, next, s->greedy_logits, 1, V);
        }
    }
    s->rope_end = 0;
    return be->check ? s->m->be->check(s->m->be) : HC_OK;
}

hc_status hc_session_forward_hidden(hc_session *s, const int32_t *ids, int64_t n, float *hidden) {
    hc_status st = hc_session_check(s, ids, n);
    if (st) return st;
    const int64_t C = s->m->cfg.hidden_size;
    s->rope_end = s->pos + n; /* pieces of one call are one sequence to longrope */
    for (int64_t done = 0; done < n; done += s->ws.rows) {
        const int64_t k = n - done < s->ws.rows ? n - done : s->ws.rows;
        hc_group g = {s, k};
        hc_decoder_forward_groups(&s->ws, &g, 1, ids + done, NULL, false, hidden ? hidden + done * C : NULL, NULL);
    }
    s->rope_end = 0;
    return s->m->be->check ? s->m->be->check(s->m->be) : HC_OK;
}
