/* Loading: open the checkpoint, find the architecture, bind every weight to its role and
 * check its dtype and shape against the config. Nothing is converted or copied. */
#include "model/model.h"

#include <errno.h>
#include <math.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "backend/cpu/cpu.h"
#include "backend/cpu/fast.h"
#include "backend/cpu/quant.h"
#include "base/file.h"
#include "base/half.h"
#include "base/threadpool.h"
#include "format/checkpoint.h"
#include "format/hub.h"
#include "format/sha256.h"
#include "model/config.h"
#include "train/train.h"
#ifdef HUBCAP_HAVE_CUDA
#include "backend/cuda/cuda.h"
#endif

hc_model_params hc_model_default_params(void) {
    hc_model_params p = {.device = HC_DEVICE_CPU, .compute_dtype = HC_DTYPE_AUTO, .kv_dtype = HC_DTYPE_AUTO, .n_threads = 0, .n_ctx = 0,
                         .use_mmap = true};
    return p;
}

typedef struct {
    hc_model *m;
    const char *prefix_from; /* rewrite of the "model." prefix (multimodal checkpoints) or NULL */
    const char *prefix_to;
} binder;

static const hc_tensor_info *lookup(binder *b, const char *name) {
    const hc_tensor_info *t = hc_checkpoint_find(b->m->ck, name);
    if (t || !b->prefix_from) return t;
    size_t n = strlen(b->prefix_from);
    char alt[600];
    if (strncmp(name, b->prefix_from, n) != 0) {
        /* the LM head beside the nested model: language_model.lm_head.weight */
        if (strcmp(b->prefix_to, "language_model.model.")) return NULL;
        snprintf(alt, sizeof alt, "language_model.%s", name);
        return hc_checkpoint_find(b->m->ck, alt);
    }
    snprintf(alt, sizeof alt, "%s%s", b->prefix_to, name + n);
    return hc_checkpoint_find(b->m->ck, alt);
}

static hc_status keep_aligned(hc_model *m, const hc_tensor_info *t, const void **data) {
    size_t es = hc_dtype_size(t->dtype);
    *data = t->data;
    if (((uintptr_t)t->data % es) == 0) return HC_OK;
    void **owned = realloc(m->owned, (size_t)(m->n_owned + 1) * sizeof *owned);
    if (!owned) return hc_fail(HC_ERR_NOMEM, "out of memory");
    m->owned = owned;
    void *copy = malloc(t->n_bytes ? t->n_bytes : 1);
    if (!copy) return hc_fail(HC_ERR_NOMEM, "out of memory copying misaligned tensor '%s'", t->name);
    memcpy(copy, t->data, t->n_bytes);
    m->owned[m->n_owned++] = copy;
    *data = copy;
    return HC_OK;
}

static void shape_str(char *buf, size_t cap, const int64_t *shape, int n) {
    size_t off = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n && off < cap; i++) off += (size_t)snprintf(buf + off, cap - off, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (off < cap) snprintf(buf + off, cap - off, "]");
}

/* Finds the tensor for `role` and checks dtype and shape (d0[, d1[, d2]]). A missing required
 * tensor is an error naming it; a missing optional one leaves *out NULL. */
static hc_status bind3(binder *b, hc_weight_role role, int layer, int expert, int n_dims, int64_t d0, int64_t d1,
                       int64_t d2, bool required, const hc_tensor_info **out, const void **data) {
    *out = NULL;
    const char *pattern = b->m->arch->names[role];
    if (!pattern) {
        if (required) return hc_fail(HC_ERR_UNSUPPORTED, "%s: this architecture has no tensor for a required role", b->m->cfg.model_type);
        return HC_OK;
    }
    char name[512];
    snprintf(name, sizeof name, pattern, layer, expert);
    const hc_tensor_info *t = lookup(b, name);
    if (!t) {
        if (required) return hc_fail(HC_ERR_NOT_FOUND, "%s: missing tensor '%s'", hc_checkpoint_path(b->m->ck), name);
        return HC_OK;
    }
    if (t->dtype != HC_DTYPE_F32 && t->dtype != HC_DTYPE_BF16 && t->dtype != HC_DTYPE_F16)
        return hc_fail(HC_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s (hubcap computes with F32, BF16 or F16 weights)",
                       hc_checkpoint_path(b->m->ck), t->name, hc_dtype_name(t->dtype));
    int64_t want[3] = {d0, d1, d2};
    bool ok = t->n_dims == n_dims;
    for (int i = 0; ok && i < n_dims; i++) ok = t->shape[i] == want[i];
    if (!ok) {
        char got[128], exp[128];
        shape_str(got, sizeof got, t->shape, t->n_dims);
        shape_str(exp, sizeof exp, want, n_dims);
        return hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' has shape %s, but config.json implies %s",
                       hc_checkpoint_path(b->m->ck), t->name, got, exp);
    }
    *out = t;
    return keep_aligned(b->m, t, data);
}

/* bind3 for vectors and matrices (d0[, d1]). */
static hc_status bind(binder *b, hc_weight_role role, int layer, int expert, int n_dims, int64_t d0, int64_t d1,
                      bool required, const hc_tensor_info **out, const void **data) {
    return bind3(b, role, layer, expert, n_dims, d0, d1, 0, required, out, data);
}

/* A matrix of logical shape [N, K]; stored [K, N] when `tr` (GPT-2 Conv1D). */
static hc_status bind_mat_as(binder *b, hc_weight_role role, int layer, int expert, int64_t N, int64_t K,
                             bool required, bool tr, hc_mat *out) {
    const hc_tensor_info *t;
    const void *data;
    hc_status s = bind(b, role, layer, expert, 2, tr ? K : N, tr ? N : K, required, &t, &data);
    memset(out, 0, sizeof *out);
    if (s || !t) return s;
    *out = (hc_mat){.data = data, .dtype = t->dtype, .rows = N, .cols = K, .ld = tr ? N : K, .transposed = tr};
    return HC_OK;
}

static hc_status bind_mat(binder *b, hc_weight_role role, int layer, int expert, int64_t N, int64_t K, bool required,
                          hc_mat *out) {
    return bind_mat_as(b, role, layer, expert, N, K, required, b->m->arch->transposed_weights, out);
}

static hc_status bind_vec(binder *b, hc_weight_role role, int layer, int64_t n, bool required, hc_vec *out) {
    const hc_tensor_info *t;
    const void *data;
    hc_status s = bind(b, role, layer, 0, 1, n, 0, required, &t, &data);
    memset(out, 0, sizeof *out);
    if (s || !t) return s;
    *out = (hc_vec){.data = data, .dtype = t->dtype, .n = n};
    return HC_OK;
}

/* Rows [r0, r0+n) of a fused [N_total, K] matrix (columns when stored transposed). */
static hc_mat mat_slice(const hc_mat *fused, int64_t r0, int64_t n) {
    hc_mat v = *fused;
    size_t es = hc_dtype_size(fused->dtype);
    v.data = (const char *)fused->data + (size_t)(fused->transposed ? r0 : r0 * fused->ld) * es;
    v.rows = n;
    return v;
}

static hc_vec vec_slice(const hc_vec *fused, int64_t off, int64_t n) {
    hc_vec v = *fused;
    if (v.data) v.data = (const char *)fused->data + (size_t)off * hc_dtype_size(fused->dtype);
    v.n = n;
    return v;
}

#define TRY(expr)                                                                                                      \
    do {                                                                                                               \
        hc_status s_ = (expr);                                                                                         \
        if (s_) return s_;                                                                                             \
    } while (0)

static hc_status bind_layer(binder *b, int l) {
    hc_model *m = b->m;
    const hc_model_config *c = &m->cfg;
    const hc_arch *a = m->arch;
    hc_layer *L = &m->layers[l];
    const int64_t C = c->hidden_size, H = c->n_heads, KVH = c->n_kv_heads, D = c->head_dim, I = c->intermediate_size;
    const bool layer_norm = a->norm == HC_NORM_LAYER;

    TRY(bind_vec(b, W_ATTN_NORM, l, C, !a->post_norms_only, &L->attn_norm));
    TRY(bind_vec(b, W_ATTN_NORM_B, l, C, layer_norm, &L->attn_norm_b));
    if (a->names[W_QKV]) {
        hc_mat qkv;
        hc_vec bqkv;
        TRY(bind_mat(b, W_QKV, l, 0, (H + 2 * KVH) * D, C, true, &qkv));
        TRY(bind_vec(b, W_QKV_B, l, (H + 2 * KVH) * D, c->qkv_bias, &bqkv));
        L->wq = mat_slice(&qkv, 0, H * D);
        L->wk = mat_slice(&qkv, H * D, KVH * D);
        L->wv = mat_slice(&qkv, (H + KVH) * D, KVH * D);
        L->bq = vec_slice(&bqkv, 0, H * D);
        L->bk = vec_slice(&bqkv, H * D, KVH * D);
        L->bv = vec_slice(&bqkv, (H + KVH) * D, KVH * D);
    } else {
        TRY(bind_mat(b, W_Q, l, 0, H * D, C, true, &L->wq));
        TRY(bind_mat(b, W_K, l, 0, KVH * D, C, true, &L->wk));
        TRY(bind_mat(b, W_V, l, 0, KVH * D, C, true, &L->wv));
        if (c->qkv_bias) {
            TRY(bind_vec(b, W_Q_B, l, H * D, true, &L->bq));
            TRY(bind_vec(b, W_K_B, l, KVH * D, true, &L->bk));
            TRY(bind_vec(b, W_V_B, l, KVH * D, true, &L->bv));
        }
    }
    TRY(bind_mat(b, W_O, l, 0, C, H * D, true, &L->wo));
    if (c->o_bias) TRY(bind_vec(b, W_O_B, l, C, true, &L->bo));
    if (a->qk_norm) {
        TRY(bind_vec(b, W_Q_NORM, l, a->qk_norm_whole ? H * D : D, true, &L->q_norm));
        TRY(bind_vec(b, W_K_NORM, l, a->qk_norm_whole ? KVH * D : D, true, &L->k_norm));
    }
    if (a->sandwich_norms) {
        TRY(bind_vec(b, W_ATTN_POST_NORM, l, C, true, &L->attn_post_norm));
        TRY(bind_vec(b, W_FFN_POST_NORM, l, C, true, &L->ffn_post_norm));
    }
    if (!a->parallel_block) { /* a parallel block's MLP reads the attention's input norm */
        TRY(bind_vec(b, W_FFN_NORM, l, C, !a->post_norms_only, &L->ffn_norm));
        TRY(bind_vec(b, W_FFN_NORM_B, l, C, layer_norm, &L->ffn_norm_b));
    }

    if (c->n_experts > 0) {
        const int64_t E = c->n_experts;
        TRY(bind_mat(b, W_ROUTER, l, 0, E, C, true, &L->router));
        L->exp_gate = calloc((size_t)E * 3, sizeof(hc_mat));
        if (!L->exp_gate) return hc_fail(HC_ERR_NOMEM, "out of memory");
        L->exp_up = L->exp_gate + E;
        L->exp_down = L->exp_gate + 2 * E;
        if (a->names[W_EXPS_GATE_UP]) { /* one tensor for all experts: each expert's rows are views */
            const hc_tensor_info *t;
            const void *data;
            TRY(bind3(b, W_EXPS_GATE_UP, l, 0, 3, E, 2 * I, C, true, &t, &data));
            const hc_mat gu = {.data = data, .dtype = t->dtype, .rows = E * 2 * I, .cols = C, .ld = C};
            TRY(bind3(b, W_EXPS_DOWN, l, 0, 3, E, C, I, true, &t, &data));
            const hc_mat dn = {.data = data, .dtype = t->dtype, .rows = E * C, .cols = I, .ld = I};
            for (int e = 0; e < E; e++) {
                L->exp_gate[e] = mat_slice(&gu, (int64_t)e * 2 * I, I);
                L->exp_up[e] = mat_slice(&gu, (int64_t)e * 2 * I + I, I);
                L->exp_down[e] = mat_slice(&dn, (int64_t)e * C, C);
            }
        } else {
            for (int e = 0; e < E; e++) {
                TRY(bind_mat(b, W_EXP_GATE, l, e, I, C, true, &L->exp_gate[e]));
                TRY(bind_mat(b, W_EXP_UP, l, e, I, C, true, &L->exp_up[e]));
                TRY(bind_mat(b, W_EXP_DOWN, l, e, C, I, true, &L->exp_down[e]));
            }
        }
        const int64_t IS = c->shared_intermediate_size;
        if (IS > 0) {
            TRY(bind_mat(b, W_GATE, l, 0, IS, C, true, &L->gate));
            TRY(bind_mat(b, W_UP, l, 0, IS, C, true, &L->up));
            TRY(bind_mat(b, W_DOWN, l, 0, C, IS, true, &L->down));
            TRY(bind_mat(b, W_SHARED_GATE, l, 0, 1, C, true, &L->shared_gate));
        }
    } else {
        if (a->names[W_GATE_UP]) {
            hc_mat gu;
            TRY(bind_mat(b, W_GATE_UP, l, 0, 2 * I, C, true, &gu));
            L->gate = mat_slice(&gu, 0, I);
            L->up = mat_slice(&gu, I, I);
        } else {
            if (a->gated_mlp) TRY(bind_mat(b, W_GATE, l, 0, I, C, true, &L->gate));
            TRY(bind_mat(b, W_UP, l, 0, I, C, true, &L->up));
        }
        TRY(bind_mat(b, W_DOWN, l, 0, C, I, true, &L->down));
        if (c->mlp_bias) {
            if (a->gated_mlp) TRY(bind_vec(b, W_GATE_B, l, I, true, &L->b_gate));
            TRY(bind_vec(b, W_UP_B, l, I, true, &L->b_up));
            TRY(bind_vec(b, W_DOWN_B, l, C, true, &L->b_down));
        }
    }

    L->sliding = c->layer_sliding[l] && c->sliding_window > 0;
    L->nope = c->layer_nope[l];
    L->rope = (L->sliding && c->has_rope_local) ? 1 : 0;
    if (c->attention_multiplier > 0) L->attn_scale = (float)c->attention_multiplier; /* Granite */
    else if (c->query_pre_attn_scalar > 0) L->attn_scale = (float)(1.0 / sqrt(c->query_pre_attn_scalar));
    else if (!c->scale_attn_weights) L->attn_scale = 1.0f;
    else L->attn_scale = (float)(1.0 / sqrt((double)D));
    if (c->scale_attn_by_inverse_layer_idx) L->attn_scale /= (float)(l + 1);
    return HC_OK;
}

static hc_status bind_all(hc_model *m) {
    const hc_model_config *c = &m->cfg;
    binder b = {.m = m};
    /* Multimodal checkpoints nest the language model under another prefix. */
    if (!hc_checkpoint_find(m->ck, m->arch->names[W_TOK_EMBED])) {
        static const char *alts[] = {"model.language_model.", "language_model.model."};
        for (int i = 0; i < 2; i++) {
            char alt[256];
            snprintf(alt, sizeof alt, "%s%s", alts[i], m->arch->names[W_TOK_EMBED] + strlen("model."));
            if (!strncmp(m->arch->names[W_TOK_EMBED], "model.", 6) && hc_checkpoint_find(m->ck, alt)) {
                b.prefix_from = "model.";
                b.prefix_to = alts[i];
            }
        }
    }
    const int64_t C = c->hidden_size, V = c->vocab_size;
    /* Embedding tables and the LM head are [V, C] in every architecture. */
    TRY(bind_mat_as(&b, W_TOK_EMBED, 0, 0, V, C, true, false, &m->tok_embed));
    if (m->arch->names[W_POS_EMBED])
        TRY(bind_mat_as(&b, W_POS_EMBED, 0, 0, c->max_position_embeddings, C, true, false, &m->pos_embed));
    TRY(bind_vec(&b, W_FINAL_NORM, 0, C, true, &m->final_norm));
    TRY(bind_vec(&b, W_FINAL_NORM_B, 0, C, m->arch->norm == HC_NORM_LAYER, &m->final_norm_b));
    if (c->tie_word_embeddings) m->lm_head = m->tok_embed;
    else TRY(bind_mat_as(&b, W_LM_HEAD, 0, 0, V, C, true, false, &m->lm_head));
    TRY(bind_vec(&b, W_LM_HEAD_B, 0, V, m->arch->names[W_LM_HEAD_B] != NULL, &m->lm_head_b));
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) return hc_fail(HC_ERR_NOMEM, "out of memory");
    for (int l = 0; l < c->n_layers; l++) TRY(bind_layer(&b, l));
    return HC_OK;
}

/* ---- quantize on load ----------------------------------------------------------------------
 * Every matrix quantized goes into one arena, 2 MiB aligned with huge pages asked for (as
 * weights read into RAM are): decode streams through all of it each token, and 4 KiB pages
 * would cost a TLB miss every 4 KiB. Rows are quantized on all cores; each row is independent,
 * so the bits do not depend on the thread count. */

typedef struct {
    hc_mat *w;
    int quant;
    size_t off;   /* in the arena */
    bool release; /* its stored rows' pages go back once quantized (no other weight shares them) */
} quant_item;

typedef struct {
    hc_backend *be;
    hc_checkpoint *ck;
    quant_item *items;
    int n;
    uint8_t *arena;
    int64_t max_k;
    bool nomem;
} quant_job;

#define QUANT_ROWS_PER_TASK 64

/* Rows [n0, n1) of bf16 w into bf16r16 (quant.h) at dst: the same 16-bit values moved, a group's
 * 64-byte vectors written one after another (hc_quantize_mat_row's path through floats took a
 * 1B model 10 s). n0 is a multiple of 16. */
static void repack_bf16r16(uint8_t *dst, const hc_mat *w, int64_t n0, int64_t n1) {
    const int64_t K = w->cols, whole = w->rows / 16 * 16;
    const uint16_t *src = w->data;
    int64_t n = n0;
    for (; n + 16 <= n1 && n + 16 <= whole; n += 16) {
        uint32_t *g = (uint32_t *)(void *)(dst + (size_t)n * (size_t)K * 2); /* [K/2][16] pairs */
        for (int r = 0; r < 16; r++) {
            const uint16_t *row = src + (size_t)(n + r) * (size_t)w->ld;
            for (int64_t p = 0; p < K / 2; p++) memcpy(&g[p * 16 + r], row + 2 * p, 4);
        }
    }
    for (; n < n1; n++) memcpy(dst + (size_t)n * (size_t)K * 2, src + (size_t)n * (size_t)w->ld, (size_t)K * 2);
}

static void quantize_part(void *ctx, int ith, int nth) {
    quant_job *j = ctx;
    float *row = malloc(sizeof(float) * (size_t)j->max_k); /* [K] */
    if (!row) {
        j->nomem = true;
        return;
    }
    int64_t task = 0;
    for (int i = 0; i < j->n; i++) {
        const hc_mat *w = j->items[i].w;
        const int quant = j->items[i].quant;
        for (int64_t n0 = 0; n0 < w->rows; n0 += QUANT_ROWS_PER_TASK, task++) {
            if (task % nth != ith) continue;
            const int64_t n1 = n0 + QUANT_ROWS_PER_TASK < w->rows ? n0 + QUANT_ROWS_PER_TASK : w->rows;
            if (quant == HC_QUANT_BF16R16) repack_bf16r16(j->arena + j->items[i].off, w, n0, n1);
            else
                for (int64_t n = n0; n < n1; n++) {
                    for (int64_t k = 0; k < w->cols; k++) row[k] = hc_load_f32(w->data, w->dtype, n * w->ld + k);
                    hc_quantize_mat_row(quant, j->arena + j->items[i].off, w->rows, w->cols, n, row);
                }
            if (j->items[i].release) { /* these rows' whole pages: the next task's rows start past them */
                const size_t es = hc_dtype_size(w->dtype);
                hc_checkpoint_release(j->ck, (const char *)w->data + (size_t)(n0 * w->ld) * es,
                                      (size_t)((n1 - 1 - n0) * w->ld + w->cols) * es);
            }
        }
    }
    free(row);
}

/* Adds w to the list when it can be quantized. Rows too short for q4_k's 256-wide super-blocks
 * fall back to q4_0, as llama.cpp falls back. */
static hc_status plan_quant(quant_job *j, int *cap, size_t *total, hc_mat *w, int quant) {
    if (quant == HC_QUANT_BF16R16 && w->dtype != HC_DTYPE_BF16) return HC_OK; /* repacks bf16 only */
    if (quant == HC_QUANT_Q4_K && w->cols % HC_QKK) quant = HC_QUANT_Q4_0;
    if (j->be->quant_layout) quant = j->be->quant_layout(j->be, quant);
    if (!w->data || w->quant || w->transposed || w->cols % hc_quant_block_elems(quant)) return HC_OK;
    if (j->n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        quant_item *items = realloc(j->items, (size_t)*cap * sizeof *items);
        if (!items) return hc_fail(HC_ERR_NOMEM, "out of memory");
        j->items = items;
    }
    j->items[j->n++] = (quant_item){w, quant, *total, false};
    *total += (hc_quant_row_bytes(quant, w->cols) * (size_t)w->rows + 63) / 64 * 64;
    if (w->cols > j->max_k) j->max_k = w->cols;
    return HC_OK;
}

/* ---- the quantized-weight cache (--quant-cache) ------------------------------------------------
 * The arena is written to "<snapshot>/hubcap-<format>-<key>.qcache" and read back by later loads
 * instead of quantizing again. The key hashes everything the arena depends on: the cache's
 * version, each shard's name, size and modification time, and every planned matrix (shape,
 * format, offset). A file whose header, key, length or checksum disagree is ignored and
 * rewritten. It is
 * written to a temp file and renamed, so no reader sees half of one; failing to write it costs
 * the next load its speed, not this one its weights. */

#define QCACHE_MAGIC "HCQCACH1"

typedef struct {
    char magic[8];
    char key[64]; /* sha256, hex */
    uint64_t bytes; /* the arena's */
    uint64_t n_items;
    uint64_t sum;   /* qcache_sum of the arena: a flipped byte is caught, not computed with */
} qcache_header;

/* A 64-bit checksum at memory speed (sha256 of a gigabyte would cost as much as quantizing it
 * again): four lanes of multiply-rotate over 8-byte words, then the tail. */
static uint64_t qcache_sum(const uint8_t *p, size_t n) {
    const uint64_t k1 = 0x9E3779B185EBCA87ull, k2 = 0xC2B2AE3D27D4EB4Full;
    uint64_t h[4] = {k1, k2, ~k1, ~k2};
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int l = 0; l < 4; l++) {
            uint64_t w;
            memcpy(&w, p + i + 8 * l, 8);
            h[l] = (h[l] ^ (w * k2)) * k1;
            h[l] = (h[l] << 31) | (h[l] >> 33);
        }
    uint64_t r = (uint64_t)n * k1;
    for (int l = 0; l < 4; l++) r = (r ^ h[l]) * k2;
    for (; i < n; i++) r = (r ^ p[i]) * k1;
    return r ^ (r >> 29);
}

/* The cache's path for this plan, and its key; false when the snapshot's shards cannot be
 * stat'ed. */
static bool qcache_locate(const hc_model *m, const quant_job *j, size_t total, const char *fmt, char *path, size_t cap,
                          char key[65]) {
    hc_sha256 h;
    hc_sha256_init(&h);
    hc_sha256_update(&h, QCACHE_MAGIC, 8);
    const int n_shards = hc_checkpoint_n_shards(m->ck);
    if (n_shards < 1) return false;
    for (int i = 0; i < n_shards; i++) {
        const char *sp = hc_checkpoint_shard_path(m->ck, i);
        struct stat st;
        if (!sp || stat(sp, &st) != 0) return false;
        const char *base = strrchr(sp, '/');
        base = base ? base + 1 : sp;
        const int64_t id[3] = {(int64_t)st.st_size, (int64_t)st.st_mtim.tv_sec, (int64_t)st.st_mtim.tv_nsec};
        hc_sha256_update(&h, base, strlen(base) + 1);
        hc_sha256_update(&h, id, sizeof id);
    }
    for (int i = 0; i < j->n; i++) {
        const hc_mat *w = j->items[i].w;
        const int64_t item[4] = {w->rows, w->cols, j->items[i].quant, (int64_t)j->items[i].off};
        hc_sha256_update(&h, item, sizeof item);
    }
    const uint64_t t = total;
    hc_sha256_update(&h, &t, sizeof t);
    hc_sha256_final(&h, key);
    /* beside the first shard */
    const char *first = hc_checkpoint_shard_path(m->ck, 0);
    const char *slash = strrchr(first, '/');
    const int dir_len = slash ? (int)(slash - first) : 1;
    const int n = snprintf(path, cap, "%.*s/hubcap-%s-%.16s.qcache", dir_len, slash ? first : ".", fmt, key);
    return n > 0 && (size_t)n < cap;
}

/* Reads a cache into the arena; false (arena contents undefined) when it is missing or does not
 * match. */
static bool qcache_read(const char *path, const char key[65], uint8_t *arena, size_t total, int n_items) {
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    qcache_header hd;
    bool ok = fread(&hd, sizeof hd, 1, f) == 1 && !memcmp(hd.magic, QCACHE_MAGIC, 8) && !memcmp(hd.key, key, 64) &&
              hd.bytes == total && hd.n_items == (uint64_t)n_items;
    for (size_t done = 0; ok && done < total;) {
        const size_t n = fread(arena + done, 1, total - done, f);
        ok = n > 0;
        done += n;
    }
    ok = ok && fgetc(f) == EOF && qcache_sum(arena, total) == hd.sum; /* nothing after it; every byte as written */
    fclose(f);
    return ok;
}

static void qcache_write(const char *path, const char key[65], const uint8_t *arena, size_t total, int n_items) {
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp) return;
    FILE *f = fopen(tmp, "wb");
    if (!f) return;
    qcache_header hd = {.bytes = total, .n_items = (uint64_t)n_items, .sum = qcache_sum(arena, total)};
    memcpy(hd.magic, QCACHE_MAGIC, 8);
    memcpy(hd.key, key, 64);
    bool ok = fwrite(&hd, sizeof hd, 1, f) == 1 && fwrite(arena, 1, total, f) == total;
    /* no fsync: a file torn by a crash fails its length or checksum and is rewritten */
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) unlink(tmp);
}

/* ---- host byte ranges of the weights: what quantizing may give back, what upload_weights copies */

typedef hc_device_range host_range;

typedef struct {
    host_range *r;
    int n, cap;
    bool oom;
    char *dev_base;
} range_set;

static void add_range(range_set *rs, const void *data, size_t bytes) {
    if (!data || rs->oom) return;
    if (rs->n == rs->cap) {
        int cap = rs->cap ? rs->cap * 2 : 256;
        host_range *r = realloc(rs->r, sizeof *r * (size_t)cap);
        if (!r) {
            rs->oom = true;
            return;
        }
        rs->r = r;
        rs->cap = cap;
    }
    rs->r[rs->n++] = (host_range){(uintptr_t)data, (uintptr_t)data + bytes, 0};
}

/* The bytes a view spans, from its first element to its last (slices of fused tensors too). */
static size_t mat_span(const hc_mat *w) {
    if (w->quant) return hc_quant_row_bytes(w->quant, w->cols) * (size_t)w->rows;
    const int64_t outer = w->transposed ? w->cols : w->rows, inner = w->transposed ? w->rows : w->cols;
    return (size_t)((outer - 1) * w->ld + inner) * hc_dtype_size(w->dtype);
}

static void collect_mat(hc_mat *w, void *arg) { add_range(arg, w->data, w->data ? mat_span(w) : 0); }
static void collect_vec(hc_vec *v, void *arg) { add_range(arg, v->data, (size_t)v->n * hc_dtype_size(v->dtype)); }

/* ---- giving back the weights quantize on load replaces ------------------------------------
 * A quantized model kept its stored weights too: read into RAM (`hubcap bench`), a 1B model held
 * its 2.47 GB of bf16 beside 0.83 GB of q4_0. Quantizing now reads a mapping of the file, and
 * each task gives back the pages of the rows it quantized, unless a weight still in use shares
 * them (a tied LM head's source is the embedding table).
 *
 * plan_release marks those items: their views are taken out while the rest are collected, then
 * each item is checked against what is left. */
static hc_status plan_release(hc_model *m, quant_job *j) {
    const void **saved = malloc(sizeof *saved * (size_t)j->n);
    if (!saved) return hc_fail(HC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < j->n; i++) saved[i] = j->items[i].w->data, j->items[i].w->data = NULL;
    range_set kept = {0};
    hc_model_each_weight(m, collect_mat, collect_vec, &kept);
    for (int i = 0; i < j->n; i++) j->items[i].w->data = saved[i];
    free(saved);
    for (int i = 0; i < j->n && !kept.oom; i++) {
        const hc_mat *w = j->items[i].w;
        const uintptr_t lo = (uintptr_t)w->data, hi = lo + mat_span(w);
        bool shared = false;
        for (int r = 0; r < kept.n && !shared; r++) shared = kept.r[r].lo < hi && lo < kept.r[r].hi;
        /* rows back to back only: a column slice's rows interleave with another view's. A page
         * another weight reads (tied embeddings) may go back only from a mapping, whence it comes
         * again when read: the embeddings' few rows a token then fault in from the page cache. */
        j->items[i].release = (!shared || hc_checkpoint_mapped(m->ck)) && w->ld == w->cols;
    }
    free(kept.r);
    return HC_OK;
}

/* head_quant: the LM head's format. n_threads: as the model was asked for (0: every core).
 * use_cache: --quant-cache. */
static hc_status quantize_model(hc_model *m, int quant, int head_quant, int n_threads, bool use_cache) {
    quant_job j = {.be = m->be};
    int cap = 0;
    size_t total = 0;
    hc_status s = HC_OK;
    for (int64_t l = 0; l < m->cfg.n_layers && !s; l++) {
        hc_layer *L = &m->layers[l];
        hc_mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down};
        for (size_t i = 0; i < sizeof mats / sizeof mats[0] && !s; i++) s = plan_quant(&j, &cap, &total, mats[i], quant);
        for (int64_t e = 0; e < m->cfg.n_experts && !s; e++) {
            s = plan_quant(&j, &cap, &total, &L->exp_gate[e], quant);
            if (!s) s = plan_quant(&j, &cap, &total, &L->exp_up[e], quant);
            if (!s) s = plan_quant(&j, &cap, &total, &L->exp_down[e], quant);
        }
    }
    /* The LM head is a decode step's largest matrix (a 1B model's 128k x 2048 is half its bytes
     * at 4 bits): it takes 8 bits whatever the format, as llama.cpp keeps its output tensor at 6
     * (1B q4_0 decode on the CPU 25-28 -> 32-35 tok/s; on an H100, since its q8_0 GEMV takes int8
     * activations, 0.90 -> 0.85 ms a token). Tied to the embeddings, only the head's view
     * changes; the lookup reads the table as stored. */
    if (!s) s = plan_quant(&j, &cap, &total, &m->lm_head, head_quant);
    void **owned = s || !j.n ? NULL : realloc(m->owned, (size_t)(m->n_owned + 1) * sizeof *owned);
    if (!s && j.n && !owned) s = hc_fail(HC_ERR_NOMEM, "out of memory");
    if (!s && j.n) {
        m->owned = owned;
        j.arena = hc_alloc_huge(total);
        if (!j.arena) s = hc_fail(HC_ERR_NOMEM, "out of memory: quantized weights need %zu bytes", total);
    }
    if (!s && j.n) {
        m->owned[m->n_owned++] = j.arena;
        j.ck = m->ck;
        if (!m->be->device) s = plan_release(m, &j);
    }
    if (!s && j.n) {
        const char *fmt = quant == HC_QUANT_Q8_0 ? "q8_0" : quant == HC_QUANT_Q4_0 ? "q4_0" : "q4_k";
        char cache_path[4096], key[65];
        const bool cacheable = use_cache && qcache_locate(m, &j, total, fmt, cache_path, sizeof cache_path, key);
        if (!(cacheable && qcache_read(cache_path, key, j.arena, total, j.n))) {
            hc_pool *pool = NULL;
            if (hc_pool_new(n_threads, &pool) == HC_OK) hc_pool_run(pool, quantize_part, &j);
            else quantize_part(&j, 0, 1);
            hc_pool_free(pool);
            if (!j.nomem && cacheable) qcache_write(cache_path, key, j.arena, total, j.n);
        }
        if (j.nomem) s = hc_fail(HC_ERR_NOMEM, "out of memory quantizing the weights");
        for (int i = 0; i < j.n && !s; i++) {
            j.items[i].w->data = j.arena + j.items[i].off;
            j.items[i].w->quant = j.items[i].quant;
        }
    }
    free(j.items);
    return s;
}

/* ---- weights on a device backend ---------------------------------------------------------- */

/* Calls fn on every weight matrix and vector the model uses. */
void hc_model_each_weight(hc_model *m, void (*fn_mat)(hc_mat *, void *), void (*fn_vec)(hc_vec *, void *), void *arg) {
    hc_mat *mats[] = {&m->tok_embed, &m->pos_embed, &m->lm_head};
    for (size_t i = 0; i < 3; i++) fn_mat(mats[i], arg);
    fn_vec(&m->final_norm, arg);
    fn_vec(&m->final_norm_b, arg);
    fn_vec(&m->lm_head_b, arg);
    for (int64_t l = 0; l < m->cfg.n_layers; l++) {
        hc_layer *L = &m->layers[l];
        hc_mat *lm[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down, &L->router, &L->shared_gate};
        for (size_t i = 0; i < sizeof lm / sizeof lm[0]; i++) fn_mat(lm[i], arg);
        for (int64_t e = 0; e < m->cfg.n_experts; e++) {
            fn_mat(&L->exp_gate[e], arg);
            fn_mat(&L->exp_up[e], arg);
            fn_mat(&L->exp_down[e], arg);
        }
        hc_vec *lv[] = {&L->attn_norm, &L->attn_norm_b, &L->bq, &L->bk, &L->bv, &L->bo, &L->q_norm, &L->k_norm,
                        &L->attn_post_norm, &L->ffn_norm, &L->ffn_norm_b, &L->ffn_post_norm, &L->b_gate, &L->b_up, &L->b_down};
        for (size_t i = 0; i < sizeof lv / sizeof lv[0]; i++) fn_vec(lv[i], arg);
    }
}

static const void *translate(range_set *rs, const void *p) {
    if (!p) return NULL;
    int lo = 0, hi = rs->n - 1;
    while (lo < hi) { /* the last range starting at or before p */
        int mid = (lo + hi + 1) / 2;
        if (rs->r[mid].lo <= (uintptr_t)p) lo = mid;
        else hi = mid - 1;
    }
    return rs->dev_base + rs->r[lo].dev_off + ((uintptr_t)p - rs->r[lo].lo);
}

static void move_mat(hc_mat *w, void *arg) { w->data = translate(arg, w->data); }
static void move_vec(hc_vec *v, void *arg) { v->data = translate(arg, v->data); }

static int cmp_range(const void *a, const void *b) {
    const host_range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Copies every weight the model uses to the device once, in its stored (or quantized) form,
 * and points the views there. Views that overlap (slices of one fused tensor, a tied LM head)
 * share one copy. Each copy starts 256-byte aligned (a safetensors file aligns its tensors to
 * 8 bytes at best), so rows whose length is a multiple of 16 bytes suit 16-byte loads. */
static hc_status upload_weights(hc_model *m) {
    hc_backend *be = m->be;
    range_set rs = {0};
    hc_model_each_weight(m, collect_mat, collect_vec, &rs);
    if (rs.oom) {
        free(rs.r);
        return hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    qsort(rs.r, (size_t)rs.n, sizeof *rs.r, cmp_range);
    int n = 0;
    for (int i = 0; i < rs.n; i++) {
        if (n && rs.r[i].lo < rs.r[n - 1].hi) {
            if (rs.r[i].hi > rs.r[n - 1].hi) rs.r[n - 1].hi = rs.r[i].hi;
        } else {
            rs.r[n++] = rs.r[i];
        }
    }
    rs.n = n;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        total = (total + 255) & ~(size_t)255;
        rs.r[i].dev_off = total;
        total = rs.r[i].dev_off + (rs.r[i].hi - rs.r[i].lo);
    }
    m->device_bytes = (int64_t)total;
    size_t free_b = 0, total_b = 0;
    if (be->mem_info) be->mem_info(be, &free_b, &total_b);
    if (be->mem_info && total > free_b) {
        free(rs.r);
        return hc_fail(HC_ERR_NOMEM, "%s: the weights need %.0f MiB of GPU memory but only %.0f MiB of %.0f MiB are free",
                       be->name, (double)total / (1 << 20), (double)free_b / (1 << 20), (double)total_b / (1 << 20));
    }
    rs.dev_base = be->alloc(be, total);
    if (!rs.dev_base) {
        free(rs.r);
        return hc_fail(HC_ERR_NOMEM, "%s: cannot allocate %.0f MiB for the weights (%.0f MiB free)", be->name,
                       (double)total / (1 << 20), (double)free_b / (1 << 20));
    }
    m->device_weights = rs.dev_base;
    for (int i = 0; i < n; i++)
        be->upload(be, rs.dev_base + rs.r[i].dev_off, (const void *)rs.r[i].lo, rs.r[i].hi - rs.r[i].lo);
    hc_model_each_weight(m, move_mat, move_vec, &rs);
    m->device_ranges = rs.r; /* kept: training maps device views back to their tensors */
    m->n_device_ranges = n;
    hc_status st = be->check ? be->check(be) : HC_OK;
    if (st) return st;
    /* Quantized and realigned host copies have served their purpose. */
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    m->n_owned = 0;
    return HC_OK;
}

const void *hc_model_host_address(const hc_model *m, const void *p) {
    const char *base = m->device_weights;
    if (!p || !base || (const char *)p < base || (const char *)p >= base + m->device_bytes) return p;
    const size_t off = (size_t)((const char *)p - base);
    int lo = 0, hi = m->n_device_ranges - 1;
    while (lo < hi) { /* the last range whose copy starts at or before p (copies are in host order) */
        const int mid = (lo + hi + 1) / 2;
        if (m->device_ranges[mid].dev_off <= off) lo = mid;
        else hi = mid - 1;
    }
    return (const void *)(m->device_ranges[lo].lo + (off - m->device_ranges[lo].dev_off));
}

void *hc_model_device_address(hc_model *m, const void *host, size_t bytes) {
    if (!m->device_weights || !m->n_device_ranges) return NULL;
    int lo = 0, hi = m->n_device_ranges - 1;
    while (lo < hi) { /* the last range starting at or before host */
        const int mid = (lo + hi + 1) / 2;
        if (m->device_ranges[mid].lo <= (uintptr_t)host) lo = mid;
        else hi = mid - 1;
    }
    const hc_device_range *r = &m->device_ranges[lo];
    if ((uintptr_t)host < r->lo || (uintptr_t)host + bytes > r->hi) return NULL; /* not a weight the device holds */
    return (char *)m->device_weights + r->dev_off + ((uintptr_t)host - r->lo);
}

void hc_model_update_device(hc_model *m, const void *host, size_t bytes) {
    void *dev = bytes ? hc_model_device_address(m, host, bytes) : NULL;
    if (dev) m->be->upload(m->be, dev, host, bytes);
}

static hc_status open_backend(hc_model *m, hc_model_params *p) {
    if (p->device == HC_DEVICE_AUTO) {
        p->device = HC_DEVICE_CPU;
#ifdef HUBCAP_HAVE_CUDA
        char why[200];
        if (hc_cuda_available(why, sizeof why)) p->device = HC_DEVICE_CUDA;
#endif
    }
    if (p->device == HC_DEVICE_CUDA) {
#ifdef HUBCAP_HAVE_CUDA
        if (p->compute_dtype == HC_DTYPE_AUTO) p->compute_dtype = HC_DTYPE_BF16;
        return hc_backend_cuda_new(0, p->compute_dtype, &m->be);
#else
        return hc_fail(HC_ERR_UNSUPPORTED, "--device cuda: this build of hubcap has no CUDA backend (nvcc was not found "
                                           "when it was built; rebuild with -DHUBCAP_CUDA=ON)");
#endif
    }
    if (p->compute_dtype != HC_DTYPE_AUTO && p->compute_dtype != HC_DTYPE_F32 && p->compute_dtype != HC_DTYPE_BF16)
        return hc_fail(HC_ERR_UNSUPPORTED, "compute dtype %s on the CPU: use F32 or BF16", hc_dtype_name(p->compute_dtype));
    return hc_backend_cpu_fast_new(p->n_threads, &m->be); /* the compute dtype once the weights are bound */
}

/* The CPU's compute dtype, once the weights are bound (and quantized): BF16 where matmuls on bf16
 * weights round their activations to bf16 (asked, or by default on a checkpoint stored in bf16,
 * as transformers 5 loads it in its stored dtype and llama.cpp multiplies BF16 weights), on a CPU
 * with AVX512_BF16; else F32. */
static hc_dtype cpu_compute_dtype(hc_model *m, hc_dtype asked) {
    const hc_mat *w = &m->layers[0].wq, *head = &m->lm_head;
    const bool bf16_weights = (!w->quant && w->dtype == HC_DTYPE_BF16) || (!head->quant && head->dtype == HC_DTYPE_BF16);
    const bool on = hc_backend_cpu_fast_bf16_compute(m->be, asked != HC_DTYPE_F32 && bf16_weights);
    return on ? HC_DTYPE_BF16 : HC_DTYPE_F32;
}

/* Whether bf16 weights are to be repacked for the CPU's AVX-512 kernels: asked for (an inference
 * load, hc_model_params.repack), into RAM (not mapped: mmap is the quick start, and repacking reads
 * every weight at load), as stored, on the CPU (device: the backend is a device, or is to be). */
static bool repack_wanted(const hc_model_params *p, bool device) {
    return p->repack && !p->use_mmap && p->weights == HC_WEIGHTS_AS_STORED && !device &&
           !strcmp(hc_cpu_kernels(), "avx512");
}

/* Whether most of the checkpoint's bytes are stored in bf16. */
static bool mostly_bf16(const hc_checkpoint *ck) {
    uint64_t bf16 = 0, all = 0;
    for (int64_t i = 0; i < hc_checkpoint_n_tensors(ck); i++) {
        const hc_tensor_info *t = hc_checkpoint_tensor(ck, i);
        all += t->n_bytes;
        if (t->dtype == HC_DTYPE_BF16) bf16 += t->n_bytes;
    }
    return all && bf16 * 2 > all;
}

hc_status hc_model_load(const char *path, const hc_model_params *params, hc_model **out) {
    *out = NULL;
    hc_model_params p = params ? *params : hc_model_default_params();
    if (p.compute_dtype != HC_DTYPE_AUTO && p.compute_dtype != HC_DTYPE_F32 && p.compute_dtype != HC_DTYPE_BF16 &&
        p.compute_dtype != HC_DTYPE_F16)
        return hc_fail(HC_ERR_UNSUPPORTED, "compute dtype %s: use F32, BF16 or F16", hc_dtype_name(p.compute_dtype));
    if (p.kv_dtype != HC_DTYPE_AUTO && p.kv_dtype != HC_DTYPE_F32 && p.kv_dtype != HC_DTYPE_F16 &&
        p.kv_dtype != HC_DTYPE_BF16)
        return hc_fail(HC_ERR_UNSUPPORTED, "KV cache dtype %s: use F32, F16 or BF16", hc_dtype_name(p.kv_dtype));
    if (p.n_ctx < 0) return hc_fail(HC_ERR_INVALID_ARG, "context length %lld is negative", (long long)p.n_ctx);
    hc_model *m = calloc(1, sizeof *m);
    if (!m) return hc_fail(HC_ERR_NOMEM, "out of memory");
    hc_checkpoint_params cp = hc_checkpoint_default_params();
    /* Quantizing reads the stored weights once and gives their pages back (quantize_model): from
     * a mapping, so they never all sit in RAM beside the quantized ones. */
    cp.use_mmap = p.use_mmap || (p.weights != HC_WEIGHTS_AS_STORED && !p.mlock);
    char *local = NULL;
    hc_status s = hc_resolve_model_path(path, &local); /* hf:// handles become snapshot folders */
    if (s) goto fail;
    path = local;
    /* Repacking bf16 weights for the CPU's AVX-512 kernels (below) reads each weight once: from a
     * mapping whose pages go back as each part is done, as quantizing reads them. Read into RAM
     * first and then copied, twice the memory was faulted in (a 1B load took 8.6 s, most of it
     * the kernel zeroing pages). What is not repacked (embeddings, norms) stays mapped. Whether
     * it will happen is decided once the weights are bound; here it is expected when most of the
     * stored bytes are bf16. */
    const bool may_repack = repack_wanted(&p, p.device == HC_DEVICE_CUDA);
    cp.use_mmap = cp.use_mmap || may_repack;
    s = hc_checkpoint_open(path, &cp, &m->ck);
    if (!s && may_repack && !mostly_bf16(m->ck)) { /* read into RAM after all */
        hc_checkpoint_free(m->ck);
        m->ck = NULL;
        cp.use_mmap = false;
        s = hc_checkpoint_open(path, &cp, &m->ck);
    }
    if (s) goto fail;
    const hc_model_config *c = hc_checkpoint_config(m->ck);
    if (!c) {
        s = hc_fail(HC_ERR_INVALID_ARG, "%s: a model needs a folder with config.json, not a bare .safetensors file", path);
        goto fail;
    }
    m->cfg = *c;
    m->n_ctx = p.n_ctx ? p.n_ctx : c->max_position_embeddings;
    if (c->rope.type == HC_ROPE_NONE && m->n_ctx > c->max_position_embeddings) {
        s = hc_fail(HC_ERR_RANGE, "context length %lld exceeds the model's %lld learned positions", (long long)m->n_ctx,
                    (long long)c->max_position_embeddings);
        goto fail;
    }
    m->arch = hc_arch_find(c->text_model_type);
    if (!m->arch) {
        s = hc_fail(HC_ERR_UNSUPPORTED, "unsupported architecture '%s' (supported: %s)", c->model_type,
                    hc_supported_model_types());
        goto fail;
    }
    if ((s = open_backend(m, &p))) goto fail;
    m->compute_dtype = p.compute_dtype;
    m->use_mmap = p.use_mmap;
    /* The KV cache follows the compute dtype unless asked: f32 on the CPU, 16-bit on a GPU
     * computing in 16 bits (as transformers' cache is in a bf16 model). */
    m->kv_dtype = p.kv_dtype != HC_DTYPE_AUTO ? p.kv_dtype : m->be->device ? p.compute_dtype : HC_DTYPE_F32;
    m->embed_scale = m->arch->embed_scale_sqrt ? (float)sqrt((double)c->hidden_size) : (float)c->embedding_multiplier;
    m->rope[0] = c->rope;
    m->rope[1] = c->has_rope_local ? c->rope_local : c->rope;
    if ((s = bind_all(m))) goto fail;
    if (p.weights != HC_WEIGHTS_AS_STORED &&
        (s = quantize_model(m,
                            p.weights == HC_WEIGHTS_Q8_0   ? HC_QUANT_Q8_0
                            : p.weights == HC_WEIGHTS_Q4_0 ? HC_QUANT_Q4_0
                                                           : HC_QUANT_Q4_K,
                            HC_QUANT_Q8_0, p.n_threads, p.quant_cache)))
        goto fail;
    if (!m->be->device) m->compute_dtype = cpu_compute_dtype(m, p.compute_dtype);
    /* bf16 weights repacked into bf16r16 for the AVX-512 kernels (vdpbf16ps in bf16 compute, FMAs
     * on the widened pairs in f32), the stored pages given back as each part is done (as
     * quantizing does). In this VM's fast memory regime a 1B decode read 10% more of the
     * bandwidth (bench/README, session 22). */
    if (repack_wanted(&p, m->be->device)) {
        if ((s = quantize_model(m, HC_QUANT_BF16R16, HC_QUANT_BF16R16, p.n_threads, false))) goto fail;
        m->repacked = m->lm_head.quant == HC_QUANT_BF16R16 || m->layers[0].wq.quant == HC_QUANT_BF16R16;
    }
    /* a repack expected but not made (a checkpoint mostly in bf16 whose head and projections are
     * not) leaves the weights mapped: read-only, as a mapped model's */
    if (!m->repacked && p.weights == HC_WEIGHTS_AS_STORED && hc_checkpoint_mapped(m->ck)) m->use_mmap = true;
    if (m->be->device && (s = upload_weights(m))) goto fail;
    if (p.lora_path && (s = hc_model_lora_load(m, p.lora_path))) goto fail;
    /* --mlock: every weight byte (mapped or read, and what quantizing made) stays resident. */
    if (p.mlock && mlockall(MCL_CURRENT) != 0) {
        s = hc_fail(HC_ERR_NOMEM, "--mlock: cannot lock the weights in RAM (%s; raise `ulimit -l`)", strerror(errno));
        goto fail;
    }
    /* The tokenizer comes along when the folder has one; its absence only matters for text. */
    if (hc_tokenizer_load(path, NULL, &m->tokenizer) != HC_OK)
        snprintf(m->tokenizer_error, sizeof m->tokenizer_error, "%s", hc_last_error());
    hc_error_clear();
    free(local);
    *out = m;
    return HC_OK;
fail:
    free(local);
    hc_model_free(m);
    return s;
}

void hc_model_free(hc_model *m) {
    if (!m) return;
    hc_lora_free(m);
    if (m->layers)
        for (int64_t l = 0; l < m->cfg.n_layers; l++) free(m->layers[l].exp_gate);
    free(m->layers);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    if (m->device_weights) m->be->free(m->be, m->device_weights);
    free(m->device_ranges);
    hc_checkpoint_free(m->ck);
    hc_tokenizer_free(m->tokenizer);
    if (m->be && m->be->destroy) m->be->destroy(m->be);
    free(m);
}

const hc_tokenizer *hc_model_tokenizer(const hc_model *m) { return m->tokenizer; }

static int64_t mat_bytes(const hc_mat *w) {
    if (!w->data) return 0;
    if (w->quant) return (int64_t)hc_quant_row_bytes(w->quant, w->cols) * w->rows;
    return w->rows * w->cols * (int64_t)hc_dtype_size(w->dtype);
}

int64_t hc_model_weight_bytes_per_token(const hc_model *m) {
    int64_t b = mat_bytes(&m->lm_head);
    for (int64_t l = 0; l < m->cfg.n_layers; l++) {
        const hc_layer *L = &m->layers[l];
        const hc_mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down, &L->router, &L->shared_gate};
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++) b += mat_bytes(mats[i]);
        /* a token reads only its experts */
        if (m->cfg.n_experts > 0)
            b += m->cfg.n_experts_per_tok * (mat_bytes(&L->exp_gate[0]) + mat_bytes(&L->exp_up[0]) + mat_bytes(&L->exp_down[0]));
    }
    return b;
}

int64_t hc_model_kv_bytes_per_token(const hc_model *m, int64_t n_pos) {
    const hc_model_config *c = &m->cfg;
    int64_t b = 0;
    for (int64_t l = 0; l < c->n_layers; l++) {
        const int64_t seen = c->layer_sliding[l] && c->sliding_window > 0 && c->sliding_window < n_pos ? c->sliding_window : n_pos;
        b += 2 * seen * c->n_kv_heads * c->head_dim * (int64_t)hc_dtype_size(m->kv_dtype);
    }
    return b;
}

const hc_model_config *hc_model_get_config(const hc_model *m) { return &m->cfg; }
const char *hc_model_device_name(const hc_model *m) { return m->be->name; }
hc_dtype hc_model_compute_dtype(const hc_model *m) { return m->compute_dtype; }
bool hc_model_repacked(const hc_model *m) { return m->repacked; }
int64_t hc_model_device_weight_bytes(const hc_model *m) { return m->device_bytes; }
const hc_checkpoint *hc_model_checkpoint(const hc_model *m) { return m->ck; }
int64_t hc_model_vocab_size(const hc_model *m) { return m->cfg.vocab_size; }
int64_t hc_model_hidden_size(const hc_model *m) { return m->cfg.hidden_size; }

void hc_expert_slots(int32_t *start, int32_t *slot, int32_t *slot_row, int32_t *cursor, const int32_t *experts,
                     int64_t n, int64_t E) {
    memset(start, 0, sizeof(int32_t) * (size_t)(E + 1));
    for (int64_t r = 0; r < n; r++) start[experts[r] + 1]++;
    for (int64_t e = 0; e < E; e++) start[e + 1] += start[e];
    memcpy(cursor, start, sizeof(int32_t) * (size_t)(E + 1));
    for (int64_t r = 0; r < n; r++) {
        const int32_t at = cursor[experts[r]]++;
        slot[r] = at;
        slot_row[at] = (int32_t)r;
    }
}
