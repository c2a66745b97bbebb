/* The decoder: one forward pass composed from backend ops, for every architecture.
 * What differs between families is data (model/arch_*.c and the config), not code here.
 * Rows of several sequences go through together: every op but attention and the KV store
 * treats rows independently, so each row computes exactly what it would alone. */
#include <math.h>
#include <string.h>

#include "backend/activation.h"
#include "model/rope.h"
#include "run/session.h"
#include "train/lora.h"

/* Where the sequence s is being fed ends, n rows on: this pass's end, or the whole call's when
 * a call was cut into passes (longrope treats it as one sequence). */
static int64_t sequence_end(const hc_session *s, int64_t n) {
    return s->rope_end > s->pos + n ? s->rope_end : s->pos + n;
}

/* Ropes whose table depends on the sequence's length, remade when the forward about to run
 * needs another, as transformers' dynamic_rope_update does:
 * - dynamic NTK recomputes its table as the sequence grows past the trained length, and returns
 *   to the original table for short sequences;
 * - longrope takes its long factors while the sequence is longer than the pretrained context,
 *   the short ones otherwise. Keys already in the cache keep the rotation they were stored with,
 *   as in transformers' cache. */
static void update_length_rope(hc_session *s, int64_t n) {
    const hc_rope_config *r = &s->m->cfg.rope;
    const int64_t seq_len = s->pos + n;
    const int64_t orig = r->original_max_position_embeddings;
    int64_t want = s->rope_cached_len;
    if (r->type == HC_ROPE_LONGROPE) {
        want = sequence_end(s, n) > orig ? orig + 1 : 0;
    } else if (r->type == HC_ROPE_DYNAMIC) {
        if (seq_len > s->rope_cached_len) want = seq_len;
        else if (seq_len < orig && s->rope_cached_len > orig) want = orig;
    }
    if (want == s->rope_cached_len) return;
    s->rope_cached_len = want;
    hc_session_set_rope(s, want);
}

/* y[T, N] += scale * (x A^T) B^T: layer l's adapter on projection t, if it has one. */
static void lora_add(hc_workspace *ws, int64_t l, int t, float *y, const float *x, int64_t T) {
    hc_lora_view p;
    if (!hc_lora_get(ws->m->lora, l, t, &p)) return;
    hc_backend *be = ws->m->be;
    be->matmul(be, ws->lora_r, x, &p.A, NULL, T);
    be->matmul(be, ws->lora_n, ws->lora_r, &p.B, NULL, T);
    be->add_scaled(be, y, ws->lora_n, ws->m->lora->scale, T * p.n);
}

/* A mixture-of-experts MLP: o[t] = sum_j w[t, j] * expert_{e[t, j]}(h[t]) over the K experts the
 * router picks for row t. The routing is decided on the host: which expert weights each row uses.
 * The rows are grouped by expert, so each expert's weights are read once a pass and a prompt's
 * rows go through an expert as one matrix product (llama.cpp's mul_mat_id does the same; one
 * matrix-vector product per row and expert read 8 experts' weights per token). An expert that
 * one row picked reads that row in place; several rows are gathered first. Every row then adds
 * its experts' outputs in the order it chose them, as when each ran alone. */
static void experts_forward(hc_workspace *ws, const hc_layer *L, int64_t T) {
    const hc_model *m = ws->m;
    hc_backend *be = m->be;
    const hc_model_config *c = &m->cfg;
    const int64_t C = c->hidden_size, I = c->intermediate_size, E = c->n_experts, K = c->n_experts_per_tok, n = T * K;
    be->matmul(be, ws->router, ws->h, &L->router, NULL, T);
    be->topk_route(be, ws->route_w, ws->route_e, ws->router, T, E, K, c->norm_topk_prob);
    be->download(be, ws->route_e_host, ws->route_e, sizeof(int32_t) * (size_t)n);
    be->download(be, ws->route_w_host, ws->route_w, sizeof(float) * (size_t)n);
    const int32_t *start = ws->expert_at_host;
    hc_expert_slots(ws->expert_at_host, ws->route_slot_host, ws->slot_row_host, ws->expert_at_host + E + 1,
                    ws->route_e_host, n, E);
    static const hc_vec no_bias = {0};
    for (int64_t e = 0; e < E; e++) {
        const int64_t s0 = start[e], ne = start[e + 1] - s0;
        if (!ne) continue;
        const float *x = ws->h + (ws->slot_row_host[s0] / K) * C;
        if (ne > 1) {
            for (int64_t i = 0; i < ne; i++)
                be->copy(be, ws->e_x + (s0 + i) * C, ws->h + (ws->slot_row_host[s0 + i] / K) * C, C);
            x = ws->e_x + s0 * C;
        }
        be->ffn(be, ws->e_o + s0 * C, ws->e_a + s0 * I, ws->e_b + s0 * I, x, &L->exp_gate[e], &no_bias, &L->exp_up[e],
                &no_bias, &L->exp_down[e], &no_bias, c->act, ne);
    }
    be->fill(be, ws->o, 0.0f, T * C);
    for (int64_t r = 0; r < n; r++)
        be->add_scaled(be, ws->o + (r / K) * C, ws->e_o + (int64_t)ws->route_slot_host[r] * C, ws->route_w_host[r], C);
    if (c->shared_intermediate_size > 0) { /* Qwen2-MoE: + sigmoid(shared_gate . h) * shared expert(h) */
        be->ffn(be, ws->sh_o, ws->sh_a, ws->sh_b, ws->h, &L->gate, &no_bias, &L->up, &no_bias, &L->down, &no_bias, c->act, T);
        be->matmul(be, ws->sh_g, ws->h, &L->shared_gate, NULL, T);
        be->download(be, ws->sh_g_host, ws->sh_g, sizeof(float) * (size_t)T);
        for (int64_t t = 0; t < T; t++)
            be->add_scaled(be, ws->o + t * C, ws->sh_o + t * C, hc_sigmoid(ws->sh_g_host[t]), C);
    }
}

static void feed_forward(hc_workspace *ws, const hc_layer *L, int64_t l, int64_t T) {
    const hc_model *m = ws->m;
    hc_backend *be = m->be;
    const hc_model_config *c = &m->cfg;
    const int64_t I = c->intermediate_size;
    if (c->n_experts > 0) {
        experts_forward(ws, L, T);
    } else if (m->arch->gated_mlp) {
        if (hc_lora_has(m->lora, l, HC_LORA_GATE) || hc_lora_has(m->lora, l, HC_LORA_UP)) {
            be->matmul(be, ws->ff_a, ws->h, &L->gate, &L->b_gate, T);
            lora_add(ws, l, HC_LORA_GATE, ws->ff_a, ws->h, T);
            be->matmul(be, ws->ff_b, ws->h, &L->up, &L->b_up, T);
            lora_add(ws, l, HC_LORA_UP, ws->ff_b, ws->h, T);
            be->glu(be, ws->ff_a, ws->ff_a, ws->ff_b, c->act, T * I);
            be->matmul(be, ws->o, ws->ff_a, &L->down, &L->b_down, T);
        } else if (hc_lora_has(m->lora, l, HC_LORA_DOWN)) { /* its adapter reads the glu's output */
            be->gated_matmul(be, ws->ff_a, ws->ff_b, ws->h, &L->gate, &L->b_gate, &L->up, &L->b_up, c->act, T);
            be->matmul(be, ws->o, ws->ff_a, &L->down, &L->b_down, T);
        } else {
            be->ffn(be, ws->o, ws->ff_a, ws->ff_b, ws->h, &L->gate, &L->b_gate, &L->up, &L->b_up, &L->down, &L->b_down, c->act,
                    T);
        }
        lora_add(ws, l, HC_LORA_DOWN, ws->o, ws->ff_a, T);
    } else {
        be->matmul(be, ws->ff_a, ws->h, &L->up, &L->b_up, T);
        lora_add(ws, l, HC_LORA_UP, ws->ff_a, ws->h, T);
        be->activate(be, ws->ff_a, c->act, T * I);
        be->matmul(be, ws->o, ws->ff_a, &L->down, &L->b_down, T);
        lora_add(ws, l, HC_LORA_DOWN, ws->o, ws->ff_a, T);
    }
}

/* A block's input norm of x into h; OLMo 2's blocks have none, and read x as it is. */
static void input_norm(hc_workspace *ws, float *h, const float *x, const hc_vec *w, const hc_vec *b, int64_t T) {
    const hc_model *m = ws->m;
    const int64_t C = m->cfg.hidden_size;
    if (w->data) m->be->norm(m->be, h, x, w, b, m->arch->norm, (float)m->cfg.norm_eps, T, C);
    else m->be->copy(m->be, h, x, T * C);
}

/* x += r o, r being Granite's residual_multiplier (1 elsewhere), then the next input norm into h
 * (none when h is NULL: after the last block). */
static void residual_add(hc_workspace *ws, float *h, const float *o, const hc_vec *w, const hc_vec *b, int64_t T) {
    const hc_model *m = ws->m;
    hc_backend *be = m->be;
    const int64_t C = m->cfg.hidden_size;
    const double r = m->cfg.residual_multiplier;
    if (r == 1.0 && h && w->data) {
        be->add_norm(be, h, ws->x, o, w, b, m->arch->norm, (float)m->cfg.norm_eps, T, C);
        return;
    }
    if (r == 1.0) be->add(be, ws->x, ws->x, o, T * C);
    else be->add_scaled(be, ws->x, o, (float)r, T * C);
    if (h) input_norm(ws, h, ws->x, w, b, T);
}

/* The block's MLP, its residual add into x, and the next block's input norm into h (none after
 * the last block: next is NULL). A plain gated MLP goes to the backend as one fused op, which
 * a GPU may compute without writing the MLP's output apart from x. */
static void feed_forward_residual(hc_workspace *ws, const hc_layer *L, int64_t l, int64_t T, const hc_layer *next) {
    const hc_model *m = ws->m;
    hc_backend *be = m->be;
    const hc_model_config *c = &m->cfg;
    const hc_norm_kind nk = m->arch->norm;
    const float eps = (float)c->norm_eps;
    float *const h = next ? ws->h : NULL;
    const hc_vec *const nw = next ? &next->attn_norm : NULL, *const nb = next ? &next->attn_norm_b : NULL;
    const bool plain = c->n_experts == 0 && m->arch->gated_mlp && !L->ffn_post_norm.data &&
                       c->residual_multiplier == 1.0 && (!next || next->attn_norm.data) &&
                       !hc_lora_has(m->lora, l, HC_LORA_GATE) && !hc_lora_has(m->lora, l, HC_LORA_UP) &&
                       !hc_lora_has(m->lora, l, HC_LORA_DOWN);
    if (plain) {
        /* the next block reads h as the input of its q, k, v projections and their adapters */
        be->ffn_add_norm(be, h, ws->x, ws->o, ws->ff_a, ws->ff_b, ws->h, &L->gate, &L->b_gate, &L->up, &L->b_up, &L->down,
                         &L->b_down, c->act, nw, nb, nk, eps, true, T);
        return;
    }
    feed_forward(ws, L, l, T);
    if (L->ffn_post_norm.data) be->norm(be, ws->o, ws->o, &L->ffn_post_norm, NULL, nk, eps, T, c->hidden_size);
    residual_add(ws, h, ws->o, nw, nb, T);
}

/* One forward pass over rows already staged in backend memory (ids, positions). */
typedef struct {
    hc_workspace *ws;
    const hc_group *groups;
    int n_groups;
    const int32_t *ids; /* [T] backend memory */
    int64_t T;
    float *logits;      /* backend memory, or NULL */
    bool all_logits;
    float *hidden;      /* host memory, or NULL */
    int64_t n_rows;     /* out: rows of logits written */
    bool rows;          /* attention row by row over ws->kv_rows (several sequences) */
    int64_t S_max;      /* the largest cache among them */
} forward_step;

static void run_forward(void *arg) {
    forward_step *f = arg;
    hc_workspace *ws = f->ws;
    const hc_group *groups = f->groups;
    const int n_groups = f->n_groups;
    const int64_t T = f->T;
    const hc_model *m = ws->m;
    hc_backend *be = m->be;
    const hc_model_config *c = &m->cfg;
    const hc_norm_kind nk = m->arch->norm;
    const float eps = (float)c->norm_eps;
    const int64_t C = c->hidden_size, H = c->n_heads, KVH = c->n_kv_heads, D = c->head_dim, V = c->vocab_size;
    const int32_t *pos = ws->pos; /* [T] backend memory */

    be->embedding(be, ws->x, &m->tok_embed, f->ids, T, m->embed_scale, false);
    if (m->pos_embed.data) be->embedding(be, ws->x, &m->pos_embed, pos, T, 1.0f, true);

    /* Each block's input norm comes fused with the residual add that ends the block before. */
    input_norm(ws, ws->h, ws->x, &m->layers[0].attn_norm, &m->layers[0].attn_norm_b, T);
    for (int64_t l = 0; l < c->n_layers; l++) {
        const hc_layer *L = &m->layers[l];
        float *const qkv_out[3] = {ws->q, ws->k, ws->v};
        const hc_mat *const qkv_w[3] = {&L->wq, &L->wk, &L->wv};
        const hc_vec *const qkv_b[3] = {&L->bq, &L->bk, &L->bv};
        be->matmul_n(be, qkv_out, ws->h, qkv_w, qkv_b, 3, T);
        lora_add(ws, l, HC_LORA_Q, ws->q, ws->h, T);
        lora_add(ws, l, HC_LORA_K, ws->k, ws->h, T);
        lora_add(ws, l, HC_LORA_V, ws->v, ws->h, T);
        /* per head, or (OLMo 2) over the whole projection */
        const bool whole = m->arch->qk_norm_whole;
        if (L->q_norm.data) be->norm(be, ws->q, ws->q, &L->q_norm, NULL, nk, eps, whole ? T : T * H, whole ? H * D : D);
        if (L->k_norm.data) be->norm(be, ws->k, ws->k, &L->k_norm, NULL, nk, eps, whole ? T : T * KVH, whole ? KVH * D : D);
        /* Rope, KV store and attention are per sequence: each has its cache and rope state.
         * Several sequences go through together, row by row, when they share rope tables. */
        if (f->rows) {
            const hc_session *s0 = groups[0].s;
            void *const *k_rows = ws->kv_rows + l * T, *const *v_rows = ws->kv_rows + (c->n_layers + l) * T;
            const bool roped = c->rope.type != HC_ROPE_NONE && !L->nope;
            be->rope_store_rows(be, ws->q, ws->k, ws->v, k_rows, v_rows, s0->kv_dtype, pos,
                                roped ? s0->inv_freq[L->rope] : NULL, s0->attn_factor[L->rope], T, H, KVH, D,
                                c->rotary_dim);
            be->attention_rows(be, ws->att, ws->q, k_rows, v_rows, s0->kv_dtype, pos, T, H, KVH, D, L->attn_scale,
                               L->sliding ? c->sliding_window : 0, (float)c->attn_softcap, f->S_max, ws->scores);
        } else {
            int64_t r0 = 0;
            for (int g = 0; g < n_groups; g++) {
                hc_session *s = groups[g].s;
                const int64_t n = groups[g].n, S = s->n_ctx;
                float *q = ws->q + r0 * H * D, *k = ws->k + r0 * KVH * D, *v = ws->v + r0 * KVH * D;
                const size_t es = hc_dtype_size(s->kv_dtype);
                void *kc = (char *)s->k_cache + (size_t)(l * S * KVH * D) * es; /* [S, KVH*D] */
                void *vc = (char *)s->v_cache + (size_t)(l * S * KVH * D) * es;
                const bool roped = c->rope.type != HC_ROPE_NONE && !L->nope;
                be->rope_store(be, q, k, v, kc, vc, s->kv_dtype, pos + r0, roped ? s->inv_freq[L->rope] : NULL,
                               s->attn_factor[L->rope], n, H, KVH, D, c->rotary_dim);
                be->attention(be, ws->att + r0 * H * D, q, kc, vc, s->kv_dtype, pos + r0, n, H, KVH, D, L->attn_scale,
                              L->sliding ? c->sliding_window : 0, (float)c->attn_softcap, S, ws->scores);
                r0 += n;
            }
        }
        /* the output projection, the residual add and the MLP's norm: one fused op unless an
         * adapter or a post-norm needs the projection on its own */
        if (m->arch->parallel_block) {
            /* x += attention now; the MLP then reads h, the block's input norm, as attention did */
            be->matmul(be, ws->o, ws->att, &L->wo, &L->bo, T);
            lora_add(ws, l, HC_LORA_O, ws->o, ws->att, T);
            be->add(be, ws->x, ws->x, ws->o, T * C);
        } else if (!hc_lora_has(m->lora, l, HC_LORA_O) && !L->attn_post_norm.data && c->residual_multiplier == 1.0 &&
                   L->ffn_norm.data) {
            /* the MLP reads h whole, as matmul input, unless experts take rows of it one by one */
            be->matmul_add_norm(be, ws->h, ws->x, ws->o, ws->att, &L->wo, &L->bo, &L->ffn_norm, &L->ffn_norm_b, nk, eps,
                                c->n_experts == 0, T);
        } else {
            be->matmul(be, ws->o, ws->att, &L->wo, &L->bo, T);
            lora_add(ws, l, HC_LORA_O, ws->o, ws->att, T);
            if (L->attn_post_norm.data) be->norm(be, ws->o, ws->o, &L->attn_post_norm, NULL, nk, eps, T, C);
            residual_add(ws, ws->h, ws->o, &L->ffn_norm, &L->ffn_norm_b, T);
        }
        feed_forward_residual(ws, L, l, T, l + 1 < c->n_layers ? L + 1 : NULL);
    }
    if (f->hidden) {
        float *dst = be->device ? ws->h : f->hidden;
        be->norm(be, dst, ws->x, &m->final_norm, &m->final_norm_b, nk, eps, T, C);
        if (be->device) be->download(be, f->hidden, dst, sizeof(float) * (size_t)(T * C));
    }
    if (!f->logits) return;

    /* Only the rows whose logits are wanted go through the final norm and the LM head. */
    if (f->all_logits) {
        f->n_rows = T;
        be->norm(be, ws->h, ws->x, &m->final_norm, &m->final_norm_b, nk, eps, T, C);
    } else {
        f->n_rows = n_groups;
        int64_t r = 0;
        for (int g = 0; g < n_groups; g++) {
            r += groups[g].n;
            be->norm(be, ws->h + g * C, ws->x + (r - 1) * C, &m->final_norm, &m->final_norm_b, nk, eps, 1, C);
        }
    }
    const float *head_in = ws->h;
    if (c->logits_scaling != 1.0) { /* Granite: logits / logits_scaling, as the head's input scaled */
        be->fill(be, ws->o, 0.0f, f->n_rows * C);
        be->add_scaled(be, ws->o, ws->h, (float)(1.0 / c->logits_scaling), f->n_rows * C);
        head_in = ws->o;
    }
    be->matmul(be, f->logits, head_in, &m->lm_head, &m->lm_head_b, f->n_rows);
    if (c->final_softcap > 0) be->softcap(be, f->logits, (float)c->final_softcap, f->n_rows * V);
}

/* longrope, when a sequence grows past the pretrained context: its cached positions were made
 * with the short factors, so they run again with the long ones before it goes on. transformers'
 * Phi-3 drops its cache at that point and recomputes the whole sequence (Phi3ForCausalLM.
 * prepare_inputs_for_generation), so every position sees one rotation. */
static void longrope_rerun(hc_workspace *ws, hc_session *s, int64_t n) {
    const hc_rope_config *r = &s->m->cfg.rope;
    const int64_t orig = r->original_max_position_embeddings;
    const int64_t end = sequence_end(s, n);
    if (r->type != HC_ROPE_LONGROPE || s->pos == 0 || end <= orig || s->rope_cached_len == orig + 1) return;
    const int64_t cached = s->pos, outer_end = s->rope_end;
    s->rope_end = end; /* the runs below take the long factors, as the whole sequence will */
    s->pos = 0;
    for (int64_t done = 0; done < cached; done += ws->rows) {
        const int64_t k = cached - done < ws->rows ? cached - done : ws->rows;
        const hc_group g = {s, k};
        hc_decoder_forward_groups(ws, &g, 1, s->history + done, NULL, false, NULL, NULL);
    }
    s->rope_end = outer_end;
}

void hc_decoder_forward_groups(hc_workspace *ws, const hc_group *groups, int n_groups, const int32_t *ids,
                               float *logits, bool all_logits, float *hidden, int32_t *argmax) {
    const hc_model *m = ws->m;
    hc_backend *be = m->be;
    const hc_model_config *c = &m->cfg;
    int64_t T = 0;
    for (int g = 0; g < n_groups; g++) { /* before the workspace fills: a rerun uses it too */
        hc_session *s = groups[g].s;
        longrope_rerun(ws, s, groups[g].n);
        if (s->history) memmove(s->history + s->pos, ids + T, sizeof(int32_t) * (size_t)groups[g].n);
        T += groups[g].n;
    }
    T = 0;
    for (int g = 0; g < n_groups; g++) {
        hc_session *s = groups[g].s;
        for (int64_t t = 0; t < groups[g].n; t++) ws->pos_host[T + t] = (int32_t)(s->pos + t);
        update_length_rope(s, groups[g].n);
        T += groups[g].n;
    }
    be->upload(be, ws->pos, ws->pos_host, sizeof(int32_t) * (size_t)T);
    if (be->device) {
        be->upload(be, ws->ids, ids, sizeof(int32_t) * (size_t)T);
        ids = ws->ids;
    }
    forward_step f = {.ws = ws, .groups = groups, .n_groups = n_groups, .ids = ids, .T = T,
                      .logits = (logits || argmax) && be->device ? ws->logits : logits, .all_logits = all_logits,
                      .hidden = hidden};
    /* Several sequences: one attention launch for all rows instead of one per sequence, when
     * they share rope tables (dynamic rope and longrope make them differ) and a cache dtype. */
    bool same = n_groups > 1 && c->rope.type != HC_ROPE_DYNAMIC && c->rope.type != HC_ROPE_LONGROPE;
    for (int g = 1; same && g < n_groups; g++) same = groups[g].s->kv_dtype == groups[0].s->kv_dtype;
    if (same) {
        const int64_t L = c->n_layers, KVH = c->n_kv_heads, D = c->head_dim;
        int64_t r = 0;
        f.rows = true;
        for (int g = 0; g < n_groups; g++) {
            const hc_session *s = groups[g].s;
            const size_t layer = (size_t)(s->n_ctx * KVH * D) * hc_dtype_size(s->kv_dtype);
            if (s->n_ctx > f.S_max) f.S_max = s->n_ctx;
            for (int64_t n = 0; n < groups[g].n; n++, r++)
                for (int64_t l = 0; l < L; l++) {
                    ws->kv_rows_host[l * T + r] = (char *)s->k_cache + l * layer;
                    ws->kv_rows_host[(L + l) * T + r] = (char *)s->v_cache + l * layer;
                }
        }
        be->upload(be, ws->kv_rows, ws->kv_rows_host, sizeof(void *) * (size_t)(2 * L * T));
    }
    /* A single-token step of one sequence is the same launches every token: a device backend
     * may record it once and replay it. Everything it depends on that can change between
     * tokens is either read on the device (ids, positions, rope tables) or part of the key. */
    if (be->graph_run && n_groups == 1 && T == 1 && c->n_experts == 0 && !hidden) {
        const hc_session *s = groups[0].s;
        struct {
            const void *ws, *s, *logits;
            float attn_factor[2];
            int32_t all_logits;
        } key;
        memset(&key, 0, sizeof key);
        key.ws = ws;
        key.s = s;
        key.logits = f.logits;
        key.attn_factor[0] = s->attn_factor[0];
        key.attn_factor[1] = s->attn_factor[1];
        key.all_logits = all_logits;
        f.n_rows = 1;
        be->graph_run(be, &key, sizeof key, run_forward, &f);
    } else {
        run_forward(&f);
    }
    for (int g = 0; g < n_groups; g++) groups[g].s->pos += groups[g].n;
    if (logits && be->device)
        be->download(be, logits, ws->logits, sizeof(float) * (size_t)(f.n_rows * c->vocab_size));
    if (argmax && be->device) { /* greedy: only the chosen ids come back */
        be->argmax_rows(be, ws->argmax, ws->logits, f.n_rows, c->vocab_size);
        be->download(be, argmax, ws->argmax, sizeof(int32_t) * (size_t)f.n_rows);
    }
}
