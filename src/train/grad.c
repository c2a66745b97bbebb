/* Loss and gradients of a causal LM over a batch, through the backend's ops (CPU or GPU): a
 * training forward that keeps every activation the backward needs, then the backward through
 * the same ops in reverse. Every buffer is backend memory; only the per-row losses come back. One gradient buffer (f32) per checkpoint tensor the model uses; a view's gradient
 * sits at the view's offset in it, so slices of fused tensors and a tied LM head accumulate
 * into their tensor's gradient, as autograd does.
 *
 * Shapes: B sequences of T tokens; per sequence T rows, C channels, H/KVH heads of D, I the
 * MLP width, V the vocabulary. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/activation.h"
#include "backend/cpu/cpu.h"
#include "base/status.h"
#include "model/rope.h"
#include "run/session.h"
#include "train/lora.h"
#include "train/train.h"


static int cmp_data(const void *a, const void *b) {
    const hc_tensor_info *x = *(const hc_tensor_info *const *)a, *y = *(const hc_tensor_info *const *)b;
    return (uintptr_t)x->data < (uintptr_t)y->data ? -1 : (uintptr_t)x->data > (uintptr_t)y->data;
}

/* The tensor holding p (a host address, or one in the device copy of the weights), or -1. */
static int64_t find_tensor(const hc_grads *gr, const void *p) {
    p = hc_model_host_address(gr->m, p);
    int64_t lo = 0, hi = gr->n - 1;
    while (lo <= hi) {
        const int64_t mid = (lo + hi) / 2;
        const hc_tensor_info *t = gr->tensors[mid];
        if ((uintptr_t)p < (uintptr_t)t->data) hi = mid - 1;
        else if ((uintptr_t)p >= (uintptr_t)t->data + t->n_bytes) lo = mid + 1;
        else return mid;
    }
    return -1;
}

/* The gradient of a view: same offset, same ld, in f32. */
static float *grad_at(const hc_grads *gr, const void *data, hc_dtype dt) {
    if (!data) return NULL;
    const int64_t i = find_tensor(gr, data);
    if (i < 0 || !gr->g[i]) return NULL; /* frozen (LoRA trains only the adapter) */
    const hc_tensor_info *t = gr->tensors[i];
    const char *host = hc_model_host_address(gr->m, data);
    return gr->g[i] + (host - (const char *)t->data) / (ptrdiff_t)hc_dtype_size(dt);
}
#define GM(w) grad_at(gr, (w)->data, (w)->dtype)

/* The whole tensor w views (not a slice of a fused one, not transposed, not quantized), or -1. */
static int64_t whole_tensor(const hc_grads *gr, const hc_mat *w) {
    if (!w->data || w->quant || w->transposed || w->ld != w->cols) return -1;
    const int64_t i = find_tensor(gr, w->data);
    if (i < 0) return -1;
    const hc_tensor_info *t = gr->tensors[i];
    const bool whole = hc_model_host_address(gr->m, w->data) == t->data && w->rows * w->cols == t->n_elements &&
                       w->dtype == t->dtype;
    return whole ? i : -1;
}

/* Which tensors the model's views use (those get gradient buffers). */
typedef struct {
    hc_grads *gr;
    bool *used;
    int *refs;         /* views into each tensor */
    bool used_missing; /* a view outside every tensor: quantized or copied */
} mark_ctx;

static void mark_mat(hc_mat *w, void *arg) {
    mark_ctx *c = arg;
    if (!w->data) return;
    const int64_t i = find_tensor(c->gr, w->data);
    if (i < 0 || w->quant) c->used_missing = true;
    else c->used[i] = true, c->refs[i]++;
}
static void mark_vec(hc_vec *v, void *arg) {
    mark_ctx *c = arg;
    if (!v->data) return;
    const int64_t i = find_tensor(c->gr, v->data);
    if (i < 0) c->used_missing = true;
    else c->used[i] = true;
}

static bool adapted(const hc_model *m, int64_t l, int t) {
    hc_lora_view p;
    return hc_lora_get(m->lora, l, t, &p);
}

/* A gated MLP without experts or adapters runs as ffn_train / ffn_backward. */
static bool ffn_fused(const hc_model *m, int64_t l) {
    return m->arch->gated_mlp && !m->cfg.n_experts && !adapted(m, l, HC_LORA_GATE) && !adapted(m, l, HC_LORA_UP) &&
           !adapted(m, l, HC_LORA_DOWN);
}

/* q, k and v without adapters: one input for three products (a GPU rounds it once). */
static bool qkv_fused(const hc_model *m, int64_t l) {
    return !adapted(m, l, HC_LORA_Q) && !adapted(m, l, HC_LORA_K) && !adapted(m, l, HC_LORA_V);
}

/* A group of weights one op writes with `overwrite` (batch_compute passes it when their first
 * member is lazy): lazy together when each is a whole tensor with a gradient that no other view
 * touches (shared_ok: others do, but only after this op in the backward). */
static void lazy_group(hc_grads *gr, const int *refs, const hc_mat *const *ws, int n, bool shared_ok) {
    int64_t idx[3];
    for (int k = 0; k < n; k++) {
        idx[k] = whole_tensor(gr, ws[k]);
        if (idx[k] < 0 || !gr->g[idx[k]] || (refs[idx[k]] != 1 && !shared_ok)) return;
    }
    for (int k = 0; k < n; k++) gr->n_lazy += !gr->lazy[idx[k]], gr->lazy[idx[k]] = true;
}

/* The gradients a step writes (=) before anything adds to them: q, k, v (and o, alone) through
 * matmul_n_backward and gate, up, down through ffn_backward (layers taking those ops), and the
 * LM head through lm_loss, the backward's first op (a tied embedding's gather adds after it).
 * hc_grads_zero leaves them alone; the step's first write replaces them. */
static void mark_lazy(hc_grads *gr, const int *refs) {
    const hc_model *m = gr->m;
    if (m->lora || getenv("HUBCAP_CLEAR_ALL_GRADS")) return;
    const hc_mat *lm[1] = {&m->lm_head};
    if (!m->lm_head_b.data) lazy_group(gr, refs, lm, 1, true); /* with a bias it goes op by op, adding */
    for (int64_t l = 0; l < m->cfg.n_layers; l++) {
        const hc_layer *Ly = &m->layers[l];
        if (qkv_fused(m, l)) {
            const hc_mat *ws[3] = {&Ly->wq, &Ly->wk, &Ly->wv};
            lazy_group(gr, refs, ws, 3, false);
        }
        if (ffn_fused(m, l)) {
            const hc_mat *ws[3] = {&Ly->gate, &Ly->up, &Ly->down};
            lazy_group(gr, refs, ws, 3, false);
        }
        if (!adapted(m, l, HC_LORA_O)) {
            const hc_mat *ws[1] = {&Ly->wo};
            lazy_group(gr, refs, ws, 1, false);
        }
    }
}

/* Whether the op writing w's gradient overwrites it this step. */
static bool overwrites(const hc_grads *gr, const hc_mat *w) {
    if (!gr || !gr->fresh) return false;
    const int64_t i = whole_tensor(gr, w);
    return i >= 0 && gr->lazy[i];
}

hc_status hc_grads_new(hc_model *m, hc_grads **out) {
    *out = NULL;
    hc_grads *gr = calloc(1, sizeof *gr);
    const int64_t n = hc_checkpoint_n_tensors(m->ck);
    if (!gr || !(gr->tensors = calloc((size_t)n, sizeof *gr->tensors)) || !(gr->g = calloc((size_t)n, sizeof *gr->g)) ||
        !(gr->gh = calloc((size_t)n, sizeof *gr->gh))) {
        hc_grads_free(gr);
        return hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    gr->m = m;
    gr->n = n;
    gr->on_device = m->be->device;
    hc_backend *be = m->be;
    for (int64_t i = 0; i < n; i++) gr->tensors[i] = hc_checkpoint_tensor(m->ck, i);
    qsort(gr->tensors, (size_t)n, sizeof *gr->tensors, cmp_data);
    bool *used_flags = calloc((size_t)n, sizeof *used_flags);
    int *refs = calloc((size_t)n, sizeof *refs);
    gr->lazy = calloc((size_t)n, sizeof *gr->lazy);
    if (!refs || !gr->lazy) free(used_flags), used_flags = NULL;
    mark_ctx mc = {gr, used_flags, refs, false};
    /* With a LoRA adapter only the adapter trains: the base has no gradient buffers. */
    if (used_flags) hc_model_each_weight(m, mark_mat, mark_vec, &mc);
    if (used_flags && m->lora) memset(used_flags, 0, (size_t)n * sizeof *used_flags);
    hc_status st = HC_OK;
    if (!used_flags) st = hc_fail(HC_ERR_NOMEM, "out of memory");
    else if (mc.used_missing && m->repacked)
        st = hc_fail(HC_ERR_UNSUPPORTED, "training: the bf16 weights were repacked for the CPU's bf16 kernels when the model "
                                         "loaded; load it with repack off (hc_model_params.repack, --no-repack) to train");
    else if (mc.used_missing)
        st = hc_fail(HC_ERR_UNSUPPORTED, "training: some weights are quantized or copied (train on weights as stored)");
    /* One arena for every gradient: clearing it and taking its norm are one pass each (the
     * gaps between tensors stay zero), not one per tensor. */
    int64_t total = 0;
    for (int64_t i = 0; i < n && used_flags; i++)
        if (used_flags[i]) total += (gr->tensors[i]->n_elements + 63) / 64 * 64;
    if (!st && total > 0 && !(gr->arena = be->alloc(be, sizeof(float) * (size_t)total))) /* zeroed */
        st = hc_fail(HC_ERR_NOMEM, "out of %s memory for the gradients (%lld floats)", gr->on_device ? "GPU" : "",
                     (long long)total);
    gr->arena_n = gr->arena ? total : 0;
    for (int64_t i = 0, at = 0; !st && i < n; i++) {
        if (!used_flags[i]) continue;
        const size_t bytes = sizeof(float) * (size_t)gr->tensors[i]->n_elements;
        gr->g[i] = gr->arena + at;
        at += (gr->tensors[i]->n_elements + 63) / 64 * 64;
        gr->gh[i] = gr->on_device ? calloc(1, bytes) : gr->g[i];
        if (!gr->gh[i])
            st = hc_fail(HC_ERR_NOMEM, "out of memory for the gradient of '%s'", gr->tensors[i]->name);
    }
    free(used_flags);
    if (!st) mark_lazy(gr, refs);
    free(refs);
    for (int64_t i = 0; !st && m->lora && i < m->cfg.n_layers * HC_LORA_MODULES; i++) {
        hc_lora_pair *p = &m->lora->pairs[i];
        if (!p->a) continue;
        const size_t ab = sizeof(float) * (size_t)(m->lora->r * p->k), bb = sizeof(float) * (size_t)(p->n * m->lora->r);
        if (gr->on_device) {
            if (p->da) be->free(be, p->da);
            if (p->db) be->free(be, p->db);
            free(p->da_h), free(p->db_h);
            p->da_h = calloc(1, ab), p->db_h = calloc(1, bb);
        } else {
            free(p->da), free(p->db);
        }
        p->da = be->alloc(be, ab), p->db = be->alloc(be, bb);
        if (!gr->on_device) p->da_h = p->da, p->db_h = p->db;
        if (!p->da || !p->db || !p->da_h || !p->db_h) st = hc_fail(HC_ERR_NOMEM, "out of memory for the adapter's gradients");
    }
    if (st) {
        hc_grads_free(gr);
        return st;
    }
    *out = gr;
    return HC_OK;
}

void hc_grads_free(hc_grads *gr) {
    if (!gr) return;
    hc_backend *be = gr->m ? gr->m->be : NULL;
    for (int64_t i = 0; gr->g && gr->gh && gr->on_device && i < gr->n; i++) free(gr->gh[i]);
    if (gr->arena) be->free(be, gr->arena);
    free(gr->g);
    free(gr->gh);
    free(gr->lazy);
    for (int i = 0; i < gr->ws.n; i++)
        if (gr->ws.p[i]) be->free(be, gr->ws.p[i]);
    free(gr->ws.p);
    free(gr->ws.bytes);
    free(gr->tensors);
    free(gr);
}

void hc_grads_zero(hc_grads *gr) {
    hc_backend *be = gr->m->be;
    if (gr->arena && !gr->n_lazy) be->fill(be, gr->arena, 0, gr->arena_n);
    for (int64_t i = 0; gr->n_lazy && i < gr->n; i++)
        if (gr->g[i] && !gr->lazy[i]) be->fill(be, gr->g[i], 0, gr->tensors[i]->n_elements);
    gr->fresh = gr->n_lazy > 0;
    const hc_lora *lo = gr->m->lora;
    for (int64_t i = 0; lo && i < gr->m->cfg.n_layers * HC_LORA_MODULES; i++) {
        const hc_lora_pair *p = &lo->pairs[i];
        if (p->da) be->fill(be, p->da, 0, lo->r * p->k);
        if (p->db) be->fill(be, p->db, 0, p->n * lo->r);
    }
    gr->stale = gr->on_device; /* the host copies catch up when asked for */
}

void hc_grads_settle(hc_grads *gr) {
    if (!gr->fresh) return;
    hc_backend *be = gr->m->be;
    for (int64_t i = 0; i < gr->n; i++)
        if (gr->g[i] && gr->lazy[i]) be->fill(be, gr->g[i], 0, gr->tensors[i]->n_elements);
    gr->fresh = false;
    gr->stale = gr->on_device;
}

void hc_grads_download(hc_grads *gr) {
    hc_grads_settle(gr);
    if (!gr->on_device || !gr->stale) return;
    hc_backend *be = gr->m->be;
    for (int64_t i = 0; i < gr->n; i++)
        if (gr->g[i]) be->download(be, gr->gh[i], gr->g[i], sizeof(float) * (size_t)gr->tensors[i]->n_elements);
    const hc_lora *lo = gr->m->lora;
    for (int64_t i = 0; lo && i < gr->m->cfg.n_layers * HC_LORA_MODULES; i++) {
        const hc_lora_pair *p = &lo->pairs[i];
        if (p->da) be->download(be, p->da_h, p->da, sizeof(float) * (size_t)(lo->r * p->k));
        if (p->db) be->download(be, p->db_h, p->db, sizeof(float) * (size_t)(p->n * lo->r));
    }
    gr->stale = false;
}

int64_t hc_grads_count(const hc_grads *gr) { return gr->n; }
const hc_tensor_info *hc_grads_tensor(const hc_grads *gr, int64_t i) { return gr->tensors[i]; }
const float *hc_grads_data(hc_grads *gr, int64_t i) {
    hc_grads_download(gr);
    return gr->gh[i];
}

/* One layer's saved activations, [T, ...] each. A mixture-of-experts layer keeps its router's
 * logits [T, E] and choice (experts re, weights rw [T, K]; on the host too, as the decoder
 * decides there which weights each token uses, with the choices' slots grouped by expert), and
 * per slot its input xg (gathered when the expert took several rows), gate, up, act [T*K, I] and
 * the expert's output ey [T*K, C]. */
typedef struct {
    float *x_in, *h1, *q_pre, *k_pre, *q, *k, *v, *att, *o_pre, *x_mid, *h2, *ff_pre;
    float *ffk;             /* [rows, 3I]: the MLP's kept activations (ffn_train's keep) */
    float *gate, *up, *act; /* [rows, I] each, views of ffk for the op-by-op MLPs */
    float *reserve; /* [T, H]: what the attention forward keeps for its backward */
    float *router, *rw, *ey, *xg;
    float *lu[HC_LORA_N]; /* per adapted projection: u = x A^T [T, r] */
    int32_t *re;
    int32_t *re_h; /* host */
    float *rw_h;   /* host */
    int32_t *slot_h, *slot_row_h, *start_h; /* host: [T*K], [T*K], [2 (E + 1)] (hc_expert_slots) */
    float *sh_ffk;          /* [T, 3 IS] Qwen2-MoE's shared expert: gate, up, act */
    float *sh_y, *sh_g;     /* [T, C] its output, [T] its gate's logit */
    float *sh_g_h, *sh_d_h; /* host [T]: the logit, and the backward's gate gradient */
} layer_acts;

/* batch_grad's buffers. With gradients they come from the hc_grads' workspace, which keeps
 * them between calls (every call asks for the same list, so a GPU step allocates nothing);
 * without, they are allocated and freed each call. */
typedef struct {
    hc_backend *be;
    hc_train_workspace *ws; /* or NULL */
    int at;                 /* the next buffer of the list */
} buf_pool;

/* Kept buffers are not cleared between steps: every one is written before it is read (the
 * accumulating ones are filled where they are used). HUBCAP_POISON_BUFFERS=1 fills them with
 * NaN instead, so a read before a write shows in the gradients (the tests run with it). */
static void poison(buf_pool *b, float *p, size_t bytes) {
    static int on = -1;
    if (on < 0) on = getenv("HUBCAP_POISON_BUFFERS") != NULL;
    if (on) b->be->fill(b->be, p, NAN, (int64_t)(bytes / sizeof(float)));
}

/* n floats of backend memory, contents undefined. */
static float *take(buf_pool *b, int64_t n, bool *oom) {
    const size_t bytes = sizeof(float) * (size_t)(n > 0 ? n : 1);
    hc_train_workspace *ws = b->ws;
    if (ws && b->at < ws->n && ws->bytes[b->at] >= bytes) {
        float *p = ws->p[b->at++];
        poison(b, p, bytes);
        return p;
    }
    float *p = b->be->alloc(b->be, bytes);
    if (!p) *oom = true;
    else poison(b, p, bytes);
    if (p && ws && b->at >= ws->cap) { /* room for more slots */
        const int cap = ws->cap ? 2 * ws->cap : 256;
        void **np = realloc(ws->p, sizeof *np * (size_t)cap);
        if (np) ws->p = np;
        size_t *nb = np ? realloc(ws->bytes, sizeof *nb * (size_t)cap) : NULL;
        if (nb) ws->bytes = nb, ws->cap = cap;
    }
    if (p && ws && b->at < ws->cap) { /* replaces what this slot held */
        if (b->at < ws->n && ws->p[b->at]) b->be->free(b->be, ws->p[b->at]);
        ws->p[b->at] = p;
        ws->bytes[b->at] = bytes;
        if (b->at == ws->n) ws->n++;
        b->at++;
        return p;
    }
    if (ws) b->at++; /* no room for the slot: a plain buffer, freed by give() */
    return p;
}

/* Releases p unless the workspace keeps it. */
static void give(buf_pool *b, void *p) {
    if (!p) return;
    if (b->ws)
        for (int i = 0; i < b->ws->n; i++)
            if (b->ws->p[i] == p) return;
    b->be->free(b->be, p);
}

/* Scratch for the adapters: u = x A^T and its gradient [T, r], a scaled output gradient and
 * an input gradient [T, widest]. */
typedef struct {
    float *u, *du, *dys, *dxl;
} lora_scratch;

/* y = x W^T + b, plus layer l's adapter on projection t, keeping u = x A^T in u_keep [T, r]. */
static void mm_fwd(hc_backend *be, const hc_model *m, int64_t l, int t, float *y, const float *x, const hc_mat *w,
                   const hc_vec *b, int64_t T, const lora_scratch *ls, float *u_keep) {
    be->matmul(be, y, x, w, b, T);
    hc_lora_view p;
    if (!hc_lora_get(m->lora, l, t, &p)) return;
    be->matmul(be, u_keep, x, &p.A, NULL, T);
    be->matmul_add(be, y, ls->dys, u_keep, &p.B, m->lora->scale, T);
}

/* The backward of a matmul: dx, and dW and db when they have buffers, in one call (a GPU
 * rounds dy to 16 bits once for both products). */
static void matmul_bwd(hc_backend *be, float *dx, float *dw, float *db, const float *dy, const float *x, const hc_mat *w,
                       int64_t T) {
    be->matmul_backward(be, dx, dw, db, dy, x, w, T);
}

/* The backward of mm_fwd (u: the u it kept): dx (=), the base's dW and db (+=, when they have
 * buffers), and the adapter's dA, dB (+=). With y += s (u B^T), the scale s goes on the
 * [T, r] sides, never on a [T, N] one: dB += dy^T (s u), du = s (dy B), dA += du^T x,
 * dx += du A. */
static void mm_bwd(hc_backend *be, const hc_model *m, int64_t l, int t, float *dx, float *dw, float *db, const float *dy,
                   const float *x, const hc_mat *w, int64_t T, const lora_scratch *ls, const float *u) {
    matmul_bwd(be, dx, dw, db, dy, x, w, T);
    hc_lora_view p;
    if (!hc_lora_get(m->lora, l, t, &p)) return;
    const int64_t r = m->lora->r;
    const float s = m->lora->scale;
    float *us = ls->u, *du_s = ls->dys; /* [T, r] each */
    be->fill(be, us, 0, T * r);
    be->add_scaled(be, us, u, s, T * r);
    /* a fused module's roles each add their part: db to their rows, da to the shared A's */
    be->matmul_backward(be, ls->du, p.db, NULL, dy, us, &p.B, T);
    be->fill(be, du_s, 0, T * r);
    be->add_scaled(be, du_s, ls->du, s, T * r);
    be->matmul_backward(be, NULL, p.da, NULL, du_s, x, &p.A, T);
    if (dx) { /* dx += du A: a product over A's transposed view */
        hc_mat at = p.A;
        at.rows = p.A.cols, at.cols = p.A.rows, at.transposed = !p.A.transposed;
        be->matmul_add(be, dx, ls->dxl, du_s, &at, 1.0f, T);
    }
}

/* What a layer's training forward needs besides its activations. */
typedef struct {
    hc_backend *be;
    const hc_model *m;
    const int32_t *pos;      /* [T]: each row's position in its sequence */
    float *inv[2], attn_factor[2];
    int64_t T, B, S;         /* T = B sequences of S rows */
    float *scratch, *tmp;
    const lora_scratch *ls;
} train_ctx;

/* Expert input of slots [s0, s0 + ne): the one row itself, or the rows gathered into xg. */
static const float *moe_input(const layer_acts *a, int64_t C, int64_t K, int64_t s0, int64_t ne) {
    return ne == 1 ? a->h2 + (a->slot_row_h[s0] / K) * C : a->xg + s0 * C;
}

/* A mixture-of-experts MLP, as the decoder runs it: the router picks K experts per token
 * (softmax, top-k, renormalised or not), and ff_pre[t] = sum_j rw[t, j] * expert_j(h2[t]).
 * Each expert runs once over the rows routed to it (their slots), each row then adds its
 * experts' outputs in the order it chose them. */
static void moe_forward(const train_ctx *tc, const hc_layer *Ly, layer_acts *a) {
    hc_backend *be = tc->be;
    const hc_model_config *c = &tc->m->cfg;
    const int64_t T = tc->T, C = c->hidden_size, I = c->intermediate_size, E = c->n_experts, K = c->n_experts_per_tok;
    be->matmul(be, a->router, a->h2, &Ly->router, NULL, T);
    be->topk_route(be, a->rw, a->re, a->router, T, E, K, c->norm_topk_prob);
    be->download(be, a->re_h, a->re, sizeof(int32_t) * (size_t)(T * K));
    be->download(be, a->rw_h, a->rw, sizeof(float) * (size_t)(T * K));
    hc_expert_slots(a->start_h, a->slot_h, a->slot_row_h, a->start_h + E + 1, a->re_h, T * K, E);
    for (int64_t e = 0; e < E; e++) {
        const int64_t s0 = a->start_h[e], ne = a->start_h[e + 1] - s0;
        if (!ne) continue;
        const float *x = moe_input(a, C, K, s0, ne);
        for (int64_t i = 0; ne > 1 && i < ne; i++)
            be->copy(be, a->xg + (s0 + i) * C, a->h2 + (a->slot_row_h[s0 + i] / K) * C, C);
        be->matmul(be, a->gate + s0 * I, x, &Ly->exp_gate[e], NULL, ne);
        be->matmul(be, a->up + s0 * I, x, &Ly->exp_up[e], NULL, ne);
        be->glu(be, a->act + s0 * I, a->gate + s0 * I, a->up + s0 * I, c->act, ne * I);
        be->matmul(be, a->ey + s0 * C, a->act + s0 * I, &Ly->exp_down[e], NULL, ne);
    }
    be->fill(be, a->ff_pre, 0, T * C);
    for (int64_t r = 0; r < T * K; r++)
        be->add_scaled(be, a->ff_pre + (r / K) * C, a->ey + (int64_t)a->slot_h[r] * C, a->rw_h[r], C);
    const int64_t IS = c->shared_intermediate_size;
    if (IS > 0) { /* Qwen2-MoE: + sigmoid(shared_gate . h2) * shared expert(h2) */
        float *g = a->sh_ffk, *u = g + T * IS, *act = u + T * IS;
        be->matmul(be, g, a->h2, &Ly->gate, NULL, T);
        be->matmul(be, u, a->h2, &Ly->up, NULL, T);
        be->glu(be, act, g, u, c->act, T * IS);
        be->matmul(be, a->sh_y, act, &Ly->down, NULL, T);
        be->matmul(be, a->sh_g, a->h2, &Ly->shared_gate, NULL, T);
        be->download(be, a->sh_g_h, a->sh_g, sizeof(float) * (size_t)T);
        for (int64_t t = 0; t < T; t++)
            be->add_scaled(be, a->ff_pre + t * C, a->sh_y + t * C, hc_sigmoid(a->sh_g_h[t]), C);
    }
}

/* A block's input norm of x into h, or (OLMo 2) x as it is. */
static void train_input_norm(hc_backend *be, const hc_model *m, float *h, const float *x, const hc_vec *w,
                             const hc_vec *b, int64_t T) {
    const int64_t C = m->cfg.hidden_size;
    if (w->data) be->norm(be, h, x, w, b, m->arch->norm, (float)m->cfg.norm_eps, T, C);
    else be->copy(be, h, x, T * C);
}

/* out = x + r o, r being Granite's residual_multiplier (1 elsewhere). */
static void train_residual(hc_backend *be, const hc_model *m, float *out, const float *x, const float *o, int64_t T) {
    const int64_t n = T * m->cfg.hidden_size;
    const double r = m->cfg.residual_multiplier;
    if (r == 1.0) {
        be->add(be, out, x, o, n);
    } else {
        be->copy(be, out, x, n);
        be->add_scaled(be, out, o, (float)r, n);
    }
}

/* The input norm's backward: d x (+=) from dh through norm(x), or dh itself where there is none. */
static void train_input_norm_backward(hc_backend *be, hc_grads *gr, const hc_model *m, float *dx, const float *dh,
                                      const float *x, const hc_vec *w, const hc_vec *b, int64_t T) {
    const int64_t C = m->cfg.hidden_size;
    if (w->data)
        be->norm_backward(be, dx, GM(w), b->data ? GM(b) : NULL, dh, x, w, b, m->arch->norm, (float)m->cfg.norm_eps, T,
                          C, true);
    else
        be->add(be, dx, dx, dh, T * C);
}

/* Layer l from a->x_in, keeping every activation in a; its output goes to xo. */
static void layer_forward(const train_ctx *tc, int64_t l, layer_acts *a, float *xo) {
    hc_backend *be = tc->be;
    const hc_model *m = tc->m;
    const hc_model_config *c = &m->cfg;
    const hc_layer *Ly = &m->layers[l];
    const hc_norm_kind nk = m->arch->norm;
    const float eps = (float)c->norm_eps;
    const int64_t C = c->hidden_size, H = c->n_heads, KVH = c->n_kv_heads, D = c->head_dim, I = c->intermediate_size;
    const int64_t R = c->rotary_dim, T = tc->T;
    const int32_t *pos = tc->pos;
    float *tmp = tc->tmp, *scratch = tc->scratch;
    const lora_scratch *ls = tc->ls;
    train_input_norm(be, m, a->h1, a->x_in, &Ly->attn_norm, &Ly->attn_norm_b, T);
    /* q and k before their norms are kept only where a norm's backward needs them */
    float *q_out = Ly->q_norm.data ? a->q_pre : a->q, *k_out = Ly->k_norm.data ? a->k_pre : a->k;
    if (qkv_fused(m, l)) {
        float *const outs[3] = {q_out, k_out, a->v};
        const hc_mat *const ws[3] = {&Ly->wq, &Ly->wk, &Ly->wv};
        const hc_vec *const bs[3] = {&Ly->bq, &Ly->bk, &Ly->bv};
        be->matmul_n(be, outs, a->h1, ws, bs, 3, T);
    } else {
        mm_fwd(be, m, l, HC_LORA_Q, q_out, a->h1, &Ly->wq, &Ly->bq, T, ls, a->lu[HC_LORA_Q]);
        mm_fwd(be, m, l, HC_LORA_K, k_out, a->h1, &Ly->wk, &Ly->bk, T, ls, a->lu[HC_LORA_K]);
        mm_fwd(be, m, l, HC_LORA_V, a->v, a->h1, &Ly->wv, &Ly->bv, T, ls, a->lu[HC_LORA_V]);
    }
    const bool whole = m->arch->qk_norm_whole; /* OLMo 2: over the whole projection */
    if (Ly->q_norm.data) be->norm(be, a->q, a->q_pre, &Ly->q_norm, NULL, nk, eps, whole ? T : T * H, whole ? H * D : D);
    if (Ly->k_norm.data) be->norm(be, a->k, a->k_pre, &Ly->k_norm, NULL, nk, eps, whole ? T : T * KVH, whole ? KVH * D : D);
    if (c->rope.type != HC_ROPE_NONE && !Ly->nope) {
        be->rope(be, a->q, pos, tc->inv[Ly->rope], tc->attn_factor[Ly->rope], T, H, D, R);
        be->rope(be, a->k, pos, tc->inv[Ly->rope], tc->attn_factor[Ly->rope], T, KVH, D, R);
    }
    /* each sequence's keys are its own rows; pos[0..S) = 0..S-1 */
    be->attention_train(be, a->att, a->reserve, a->q, a->k, a->v, pos, tc->B, tc->S, H, KVH, D, Ly->attn_scale,
                        Ly->sliding ? c->sliding_window : 0, (float)c->attn_softcap, scratch);
    mm_fwd(be, m, l, HC_LORA_O, a->o_pre, a->att, &Ly->wo, &Ly->bo, T, ls, a->lu[HC_LORA_O]);
    if (Ly->attn_post_norm.data) be->norm(be, tmp, a->o_pre, &Ly->attn_post_norm, NULL, nk, eps, T, C);
    train_residual(be, m, a->x_mid, a->x_in, Ly->attn_post_norm.data ? tmp : a->o_pre, T);
    if (m->arch->parallel_block) be->copy(be, a->h2, a->h1, T * C); /* the MLP reads the block's input norm */
    else train_input_norm(be, m, a->h2, a->x_mid, &Ly->ffn_norm, &Ly->ffn_norm_b, T);
    if (c->n_experts > 0) {
        moe_forward(tc, Ly, a);
    } else if (ffn_fused(m, l)) {
        be->ffn_train(be, a->ff_pre, a->ffk, a->h2, &Ly->gate, &Ly->b_gate, &Ly->up, &Ly->b_up, &Ly->down, &Ly->b_down,
                      c->act, T);
    } else if (m->arch->gated_mlp) {
        mm_fwd(be, m, l, HC_LORA_GATE, a->gate, a->h2, &Ly->gate, &Ly->b_gate, T, ls, a->lu[HC_LORA_GATE]);
        mm_fwd(be, m, l, HC_LORA_UP, a->up, a->h2, &Ly->up, &Ly->b_up, T, ls, a->lu[HC_LORA_UP]);
        be->glu(be, a->act, a->gate, a->up, c->act, T * I);
    } else {
        mm_fwd(be, m, l, HC_LORA_UP, a->gate, a->h2, &Ly->up, &Ly->b_up, T, ls, a->lu[HC_LORA_UP]);
        be->copy(be, a->act, a->gate, T * I);
        be->activate(be, a->act, c->act, T * I);
    }
    if (!c->n_experts && !ffn_fused(m, l)) mm_fwd(be, m, l, HC_LORA_DOWN, a->ff_pre, a->act, &Ly->down, &Ly->b_down, T, ls, a->lu[HC_LORA_DOWN]);
    if (Ly->ffn_post_norm.data) be->norm(be, tmp, a->ff_pre, &Ly->ffn_post_norm, NULL, nk, eps, T, C);
    train_residual(be, m, xo, a->x_mid, Ly->ffn_post_norm.data ? tmp : a->ff_pre, T);
}

/* moe_forward's backward: dh (=) [T, C] from dff = d ff_pre, the experts' and the router's
 * weight gradients (+=). Per choice: d rw = dff[t] . ey (a 1-row matmul) and the expert's output
 * gradient rw * dff[t] in its slot; then each expert's backward over its slots at once, the
 * input gradients added back to their rows in order, and the routing's backward to the router's
 * logits; Qwen2-MoE's shared expert and its gate (d logit = (dff[t] . y) s (1 - s), on the host
 * where s was taken). work: dey and dxg [T*K, C], d rw [T*K], d logits [T*E], dact, dgate, dup
 * [T*K, I], then for the shared expert [T, C], [T] and 3 x [T, IS]; tmp [T, C]. */
static void moe_backward(const train_ctx *tc, hc_grads *gr, const hc_layer *Ly, const layer_acts *a, const float *dff,
                         float *dh, float *work, float *tmp) {
    hc_backend *be = tc->be;
    const hc_model_config *c = &tc->m->cfg;
    const int64_t T = tc->T, C = c->hidden_size, I = c->intermediate_size, E = c->n_experts, K = c->n_experts_per_tok;
    const int64_t n = T * K;
    float *dey = work, *dxg = dey + n * C, *drw = dxg + n * C, *drouter = drw + n, *dact = drouter + T * E;
    float *dgate = dact + n * I, *dup = dgate + n * I;
    for (int64_t r = 0; r < n; r++) {
        const int64_t t = r / K, at = a->slot_h[r];
        const hc_mat eyr = {.data = a->ey + at * C, .dtype = HC_DTYPE_F32, .rows = 1, .cols = C, .ld = C};
        be->matmul(be, drw + r, dff + t * C, &eyr, NULL, 1);
        be->fill(be, dey + at * C, 0, C);
        be->add_scaled(be, dey + at * C, dff + t * C, a->rw_h[r], C);
    }
    for (int64_t e = 0; e < E; e++) {
        const int64_t s0 = a->start_h[e], ne = a->start_h[e + 1] - s0;
        if (!ne) continue;
        const float *x = moe_input(a, C, K, s0, ne);
        matmul_bwd(be, dact + s0 * I, GM(&Ly->exp_down[e]), NULL, dey + s0 * C, a->act + s0 * I, &Ly->exp_down[e], ne);
        be->glu_backward(be, dgate + s0 * I, dup + s0 * I, dact + s0 * I, a->gate + s0 * I, a->up + s0 * I, c->act, ne * I);
        matmul_bwd(be, dxg + s0 * C, GM(&Ly->exp_gate[e]), NULL, dgate + s0 * I, x, &Ly->exp_gate[e], ne);
        /* dey's slots are spent: up's input gradient goes there */
        matmul_bwd(be, dey + s0 * C, GM(&Ly->exp_up[e]), NULL, dup + s0 * I, x, &Ly->exp_up[e], ne);
        be->add(be, dxg + s0 * C, dxg + s0 * C, dey + s0 * C, ne * C);
    }
    be->fill(be, dh, 0, T * C);
    for (int64_t r = 0; r < n; r++)
        be->add(be, dh + (r / K) * C, dh + (r / K) * C, dxg + (int64_t)a->slot_h[r] * C, C);
    be->topk_route_backward(be, drouter, drw, a->re, a->router, T, E, K, c->norm_topk_prob);
    matmul_bwd(be, tmp, GM(&Ly->router), NULL, drouter, a->h2, &Ly->router, T);
    be->add(be, dh, dh, tmp, T * C);
    const int64_t IS = c->shared_intermediate_size;
    if (IS > 0) {
        float *dys = dup + n * I, *dsg = dys + T * C, *dact_s = dsg + T, *dgate_s = dact_s + T * IS, *dup_s = dgate_s + T * IS;
        const float *g = a->sh_ffk, *u = g + T * IS, *act = u + T * IS;
        for (int64_t t = 0; t < T; t++) {
            const float s = hc_sigmoid(a->sh_g_h[t]);
            const hc_mat yr = {.data = a->sh_y + t * C, .dtype = HC_DTYPE_F32, .rows = 1, .cols = C, .ld = C};
            be->matmul(be, dsg + t, dff + t * C, &yr, NULL, 1); /* dff[t] . y[t] */
            be->fill(be, dys + t * C, 0, C);
            be->add_scaled(be, dys + t * C, dff + t * C, s, C);
        }
        be->download(be, a->sh_d_h, dsg, sizeof(float) * (size_t)T);
        for (int64_t t = 0; t < T; t++) {
            const float s = hc_sigmoid(a->sh_g_h[t]);
            a->sh_d_h[t] *= s * (1.0f - s);
        }
        be->upload(be, dsg, a->sh_d_h, sizeof(float) * (size_t)T);
        matmul_bwd(be, dact_s, GM(&Ly->down), NULL, dys, act, &Ly->down, T);
        be->glu_backward(be, dgate_s, dup_s, dact_s, g, u, c->act, T * IS);
        matmul_bwd(be, tmp, GM(&Ly->gate), NULL, dgate_s, a->h2, &Ly->gate, T);
        be->add(be, dh, dh, tmp, T * C);
        matmul_bwd(be, tmp, GM(&Ly->up), NULL, dup_s, a->h2, &Ly->up, T);
        be->add(be, dh, dh, tmp, T * C);
        matmul_bwd(be, tmp, GM(&Ly->shared_gate), NULL, dsg, a->h2, &Ly->shared_gate, T);
        be->add(be, dh, dh, tmp, T * C);
    }
}

/* batch_grad's device work between its uploads and its downloads: the forward, the loss and
 * (with gradients) the backward. Nothing in it waits for the device, so a GPU may record it
 * once and replay it each step (MoE layers excepted: their routing comes back to the host). */
typedef struct {
    hc_model *m;
    hc_grads *gr;
    double n_total;
    bool ckpt;
    layer_acts *A;
    const train_ctx *tc; /* B, S, positions, rope tables, scratch and the adapters' scratch */
    int32_t *ids, *tgt;
    float *loss_rows, *hit_rows;
    float *x0, *xL, *hf, *logits, *dx, *dh, *dq, *dk, *dv, *dact, *dgate, *dup;
    float *x_ckpt_out, *moe_work;
} batch_step;

static void batch_compute(void *arg) {
    const batch_step *st = arg;
    hc_model *m = st->m;
    hc_grads *gr = st->gr;
    hc_backend *be = m->be;
    const hc_model_config *c = &m->cfg;
    const hc_norm_kind nk = m->arch->norm;
    const float eps = (float)c->norm_eps;
    const int64_t C = c->hidden_size, H = c->n_heads, KVH = c->n_kv_heads, D = c->head_dim;
    const int64_t I = c->intermediate_size, L = c->n_layers, R = c->rotary_dim, E = c->n_experts;
    const train_ctx tc = *st->tc;
    const int64_t B = tc.B, S = tc.S, T = tc.T;
    const bool gated = m->arch->gated_mlp, ckpt = st->ckpt;
    const double n_total = st->n_total;
    layer_acts *A = st->A;
    const lora_scratch ls = *tc.ls;
    const int32_t *pos = tc.pos;
    int32_t *ids = st->ids, *tgt = st->tgt;
    float *loss_rows = st->loss_rows, *hit_rows = st->hit_rows, *tmp = tc.tmp, *scratch = tc.scratch;
    float *x0 = st->x0, *xL = st->xL, *hf = st->hf, *logits = st->logits, *dx = st->dx;
    float *dh = st->dh, *dq = st->dq, *dk = st->dk, *dv = st->dv, *dact = st->dact, *dgate = st->dgate;
    float *dup = st->dup, *x_ckpt_out = st->x_ckpt_out, *moe_work = st->moe_work;
    /* ---- forward, keeping activations ---- */
    be->embedding(be, x0, &m->tok_embed, ids, T, m->embed_scale, false);
    if (m->pos_embed.data) be->embedding(be, x0, &m->pos_embed, pos, T, 1.0f, true);
    for (int64_t l = 0; l < L; l++) {
        float *xo = l + 1 < L ? A[l + 1].x_in : xL;
        if (l == 0) be->copy(be, A[0].x_in, x0, T * C);
        layer_forward(&tc, l, &A[l], xo);
    }
    be->norm(be, hf, xL, &m->final_norm, &m->final_norm_b, nk, eps, T, C);
    /* Granite divides the logits by logits_scaling: the head reads hf scaled (in tmp), and its input
     * gradient is scaled back before the final norm's backward */
    const double lsc = c->logits_scaling;
    float *head_in = hf;
    if (lsc != 1.0) {
        be->fill(be, tmp, 0.0f, T * C);
        be->add_scaled(be, tmp, hf, (float)(1.0 / lsc), T * C);
        head_in = tmp;
    }
    /* ---- the loss (next-token cross entropy, mean over the batch's predicted tokens) and the
     * backward from it, through the LM head ---- */
    if (m->lm_head_b.data) { /* Phi-2's head has a bias, which lm_loss has not: its ops one by one */
        float *dlogits = logits + T * c->vocab_size;
        be->matmul(be, logits, head_in, &m->lm_head, &m->lm_head_b, T);
        be->cross_entropy(be, gr ? dlogits : NULL, loss_rows, hit_rows, logits, tgt, T, c->vocab_size, 1.0 / n_total);
        if (gr)
            be->matmul_backward(be, dh, GM(&m->lm_head), GM(&m->lm_head_b), dlogits, head_in, &m->lm_head, T);
    } else {
        be->lm_loss(be, gr ? dh : NULL, gr ? GM(&m->lm_head) : NULL, loss_rows, hit_rows, head_in, &m->lm_head,
                    (float)c->final_softcap, tgt, T, 1.0 / n_total, logits, overwrites(gr, &m->lm_head));
    }
    if (!gr) return;
    float *dhf = dh;
    if (lsc != 1.0) { /* d hf = d head_in / logits_scaling, in dact (free until the last layer's MLP) */
        be->fill(be, dact, 0.0f, T * C);
        be->add_scaled(be, dact, dh, (float)(1.0 / lsc), T * C);
        dhf = dact;
    }
    be->norm_backward(be, dx, GM(&m->final_norm), m->final_norm_b.data ? GM(&m->final_norm_b) : NULL, dhf, xL,
                      &m->final_norm, &m->final_norm_b, nk, eps, T, C, false);
    for (int64_t l = L - 1; l >= 0; l--) {
        const hc_layer *Ly = &m->layers[l];
        layer_acts *a = &A[l];
        if (ckpt) layer_forward(&tc, l, a, x_ckpt_out); /* the same numbers again */
        /* the MLP block: x_out = x_mid + r post(ff_pre) (r: Granite's residual_multiplier, which
         * config.c gives only to blocks without post norms) */
        float *dff = dx;
        if (Ly->ffn_post_norm.data) {
            be->norm_backward(be, tmp, GM(&Ly->ffn_post_norm), NULL, dx, a->ff_pre, &Ly->ffn_post_norm, NULL, nk, eps, T, C, false);
            dff = tmp;
        } else if (c->residual_multiplier != 1.0) {
            be->fill(be, tmp, 0.0f, T * C);
            be->add_scaled(be, tmp, dx, (float)c->residual_multiplier, T * C);
            dff = tmp;
        }
        if (E) {
            moe_backward(&tc, gr, Ly, a, dff, dh, moe_work, tmp + T * C);
        } else if (ffn_fused(m, l)) {
            be->ffn_backward(be, dh, GM(&Ly->gate), GM(&Ly->b_gate), GM(&Ly->up), GM(&Ly->b_up), GM(&Ly->down),
                             GM(&Ly->b_down), dff, a->h2, a->ffk, &Ly->gate, &Ly->b_gate, &Ly->up, &Ly->b_up, &Ly->down,
                             &Ly->b_down, c->act, T, dact, overwrites(gr, &Ly->gate));
        } else {
            mm_bwd(be, m, l, HC_LORA_DOWN, dact, GM(&Ly->down), Ly->b_down.data ? GM(&Ly->b_down) : NULL, dff, a->act,
                   &Ly->down, T, &ls, a->lu[HC_LORA_DOWN]);
            if (gated) {
                be->glu_backward(be, dgate, dup, dact, a->gate, a->up, c->act, T * I);
                mm_bwd(be, m, l, HC_LORA_GATE, dh, GM(&Ly->gate), Ly->b_gate.data ? GM(&Ly->b_gate) : NULL, dgate, a->h2,
                       &Ly->gate, T, &ls, a->lu[HC_LORA_GATE]);
                mm_bwd(be, m, l, HC_LORA_UP, tmp, GM(&Ly->up), Ly->b_up.data ? GM(&Ly->b_up) : NULL, dup, a->h2, &Ly->up, T,
                       &ls, a->lu[HC_LORA_UP]);
                be->add(be, dh, dh, tmp, T * C);
            } else {
                be->glu_backward(be, dgate, NULL, dact, a->gate, NULL, c->act, T * I);
                mm_bwd(be, m, l, HC_LORA_UP, dh, GM(&Ly->up), Ly->b_up.data ? GM(&Ly->b_up) : NULL, dgate, a->h2, &Ly->up, T,
                       &ls, a->lu[HC_LORA_UP]);
            }
        }
        /* a parallel block's MLP read h1: its input gradient waits in dact's free tail [T, C] (these
         * blocks take the op-by-op MLP) to join the attention's */
        float *dh_mlp = dact + 3 * T * I;
        if (m->arch->parallel_block)
            be->copy(be, dh_mlp, dh, T * C); /* d x_mid is dx itself: x_out = x_mid + ff */
        else
            train_input_norm_backward(be, gr, m, dx, dh, a->x_mid, &Ly->ffn_norm, &Ly->ffn_norm_b, T); /* d x_mid */
        /* the attention block: x_mid = x_in + r post(o_pre) */
        float *dop = dx;
        if (Ly->attn_post_norm.data) {
            be->norm_backward(be, tmp, GM(&Ly->attn_post_norm), NULL, dx, a->o_pre, &Ly->attn_post_norm, NULL, nk, eps, T, C, false);
            dop = tmp;
        } else if (c->residual_multiplier != 1.0) {
            be->fill(be, tmp, 0.0f, T * C);
            be->add_scaled(be, tmp, dx, (float)c->residual_multiplier, T * C);
            dop = tmp;
        }
        float *datt = tmp + T * (C > I ? C : I) * 2; /* [T, H*D], the tail of tmp */
        if (!adapted(m, l, HC_LORA_O)) { /* as a group of one, so its gradient may be overwritten */
            float *const dws[1] = {GM(&Ly->wo)}, *const dbs[1] = {GM(&Ly->bo)};
            const float *const douts[1] = {dop};
            const hc_mat *const ws[1] = {&Ly->wo};
            be->matmul_n_backward(be, datt, dws, dbs, douts, a->att, ws, 1, T, NULL, overwrites(gr, &Ly->wo));
        } else {
            mm_bwd(be, m, l, HC_LORA_O, datt, GM(&Ly->wo), GM(&Ly->bo), dop, a->att, &Ly->wo, T, &ls, a->lu[HC_LORA_O]);
        }
        be->attention_backward(be, dq, dk, dv, datt, a->att, a->reserve, a->q, a->k, a->v, pos, B, S, H, KVH, D,
                               Ly->attn_scale, Ly->sliding ? c->sliding_window : 0, (float)c->attn_softcap, scratch);
        if (c->rope.type != HC_ROPE_NONE && !Ly->nope) {
            be->rope_backward(be, dq, pos, tc.inv[Ly->rope], tc.attn_factor[Ly->rope], T, H, D, R);
            be->rope_backward(be, dk, pos, tc.inv[Ly->rope], tc.attn_factor[Ly->rope], T, KVH, D, R);
        }
        const bool whole = m->arch->qk_norm_whole;
        if (Ly->q_norm.data) {
            be->norm_backward(be, datt, GM(&Ly->q_norm), NULL, dq, a->q_pre, &Ly->q_norm, NULL, nk, eps, whole ? T : T * H,
                              whole ? H * D : D, false);
            be->copy(be, dq, datt, T * H * D);
        }
        if (Ly->k_norm.data) {
            be->norm_backward(be, datt, GM(&Ly->k_norm), NULL, dk, a->k_pre, &Ly->k_norm, NULL, nk, eps,
                              whole ? T : T * KVH, whole ? KVH * D : D, false);
            be->copy(be, dk, datt, T * KVH * D);
        }
        if (qkv_fused(m, l)) {
            float *const dws[3] = {GM(&Ly->wq), GM(&Ly->wk), GM(&Ly->wv)}, *const dbs[3] = {GM(&Ly->bq), GM(&Ly->bk), GM(&Ly->bv)};
            const float *const douts[3] = {dq, dk, dv};
            const hc_mat *const ws[3] = {&Ly->wq, &Ly->wk, &Ly->wv};
            be->matmul_n_backward(be, dh, dws, dbs, douts, a->h1, ws, 3, T, tmp, overwrites(gr, &Ly->wq));
        } else {
            mm_bwd(be, m, l, HC_LORA_Q, dh, GM(&Ly->wq), GM(&Ly->bq), dq, a->h1, &Ly->wq, T, &ls, a->lu[HC_LORA_Q]);
            mm_bwd(be, m, l, HC_LORA_K, tmp, GM(&Ly->wk), GM(&Ly->bk), dk, a->h1, &Ly->wk, T, &ls, a->lu[HC_LORA_K]);
            be->add(be, dh, dh, tmp, T * C);
            mm_bwd(be, m, l, HC_LORA_V, tmp, GM(&Ly->wv), GM(&Ly->bv), dv, a->h1, &Ly->wv, T, &ls, a->lu[HC_LORA_V]);
            be->add(be, dh, dh, tmp, T * C);
        }
        if (m->arch->parallel_block) be->add(be, dh, dh, dh_mlp, T * C);
        train_input_norm_backward(be, gr, m, dx, dh, a->x_in, &Ly->attn_norm, &Ly->attn_norm_b, T); /* d x_in */
    }
    if (GM(&m->tok_embed)) be->embedding_backward(be, GM(&m->tok_embed), &m->tok_embed, dx, ids, T, m->embed_scale);
    if (m->pos_embed.data && GM(&m->pos_embed))
        be->embedding_backward(be, GM(&m->pos_embed), &m->pos_embed, dx, pos, T, 1.0f);
}

/* Loss (summed over the batch's predicted tokens: t + 1 where mask says so, or all) and
 * gradients (none when gr is NULL) of B sequences of S tokens, run together as T = B*S rows
 * (attention per sequence), the loss scaled by 1/n_total as transformers' mean over the
 * batch; correct counts argmax hits. */
static hc_status batch_grad(hc_model *m, hc_grads *gr, const int32_t *ids_host, const uint8_t *mask, int64_t B, int64_t S,
                            double n_total, double *loss_sum, int64_t *correct) {
    const int64_t T = B * S;
    hc_backend *be = m->be; /* on the CPU: the fast kernels forward, the reference's backward */
    buf_pool wsb = {be, gr ? &gr->ws : NULL, 0};
    const hc_model_config *c = &m->cfg;
    const int64_t C = c->hidden_size, H = c->n_heads, KVH = c->n_kv_heads, D = c->head_dim, V = c->vocab_size;
    const int64_t I = c->intermediate_size, L = c->n_layers, R = c->rotary_dim;
    const int64_t E = c->n_experts, KE = c->n_experts_per_tok, IS = c->shared_intermediate_size;
    bool oom = false;
    layer_acts *A = calloc((size_t)L, sizeof *A);
    /* host: positions, rope frequencies, targets, and the per-row results */
    int32_t *pos_h = malloc(sizeof(int32_t) * (size_t)T), *tgt_h = malloc(sizeof(int32_t) * (size_t)T);
    float *inv_h = malloc(sizeof(float) * (size_t)(R + 2)), *loss_h = malloc(sizeof(float) * (size_t)T);
    float *hit_h = malloc(sizeof(float) * (size_t)T);
    /* backend memory */
    int32_t *ids = (int32_t *)take(&wsb, T, &oom), *pos = (int32_t *)take(&wsb, T, &oom), *tgt = (int32_t *)take(&wsb, T, &oom);
    float *loss_rows = take(&wsb, T, &oom), *hit_rows = take(&wsb, T, &oom);
    float *inv[2] = {take(&wsb, R / 2 + 1, &oom), take(&wsb, R / 2 + 1, &oom)}, attn_factor[2] = {1, 1};
    float *x0 = take(&wsb, T * C, &oom), *xL = take(&wsb, T * C, &oom), *hf = take(&wsb, T * C, &oom);
    float *logits = take(&wsb, 2 * T * V, &oom); /* lm_loss's scratch: logits and their gradient */
    float *dx = take(&wsb, T * C, &oom), *dh = take(&wsb, T * C, &oom), *tmp = take(&wsb, T * (C > I ? C : I) * 2 + T * H * D, &oom);
    float *dq = take(&wsb, T * H * D, &oom), *dk = take(&wsb, T * KVH * D, &oom), *dv = take(&wsb, T * KVH * D, &oom);
    /* [T, 3I + C]: ffn_backward's scratch; the op-by-op MLPs use its first three [T, I] */
    float *dact = take(&wsb, T * (3 * I + C), &oom), *dgate = dact ? dact + T * I : NULL, *dup = dact ? dact + 2 * T * I : NULL;
    float *scratch = take(&wsb, 2 * T + 2, &oom);
    const int64_t widest = (I > C ? I : C) > H * D ? (I > C ? I : C) : H * D, lr = m->lora ? m->lora->r : 1;
    lora_scratch ls = {take(&wsb, T * lr, &oom), take(&wsb, T * lr, &oom), take(&wsb, T * widest, &oom), take(&wsb, T * widest, &oom)};
    if (!A || !pos_h || !tgt_h || !inv_h || !loss_h || !hit_h) oom = true;
    /* Every layer's activations; with checkpointing only each layer's input, and one set of
     * buffers that the backward refills by running the layer again. */
    const bool ckpt = gr && gr->checkpointing;
    float *x_ckpt_out = ckpt ? take(&wsb, T * C, &oom) : NULL;
    bool lora_role[HC_LORA_N] = {false}; /* adapted in some layer: each layer keeps its u */
    for (int64_t l = 0; m->lora && l < L; l++)
        for (int t = 0; t < HC_LORA_N; t++) lora_role[t] |= adapted(m, l, t);
    bool q_normed = false, k_normed = false; /* some layer keeps q or k before its norm */
    for (int64_t l = 0; l < L; l++) q_normed |= m->layers[l].q_norm.data != NULL, k_normed |= m->layers[l].k_norm.data != NULL;
    for (int64_t l = 0; !oom && l < L; l++) {
        layer_acts *a = &A[l];
        a->x_in = take(&wsb, T * C, &oom);
        if (ckpt && l > 0) {
            const float *x_in = a->x_in;
            *a = A[0];
            a->x_in = (float *)x_in;
            continue;
        }
        float **bufs[] = {&a->h1, &a->o_pre, &a->x_mid, &a->h2, &a->ff_pre};
        for (size_t i = 0; i < 5; i++) *bufs[i] = take(&wsb, T * C, &oom);
        a->q_pre = q_normed ? take(&wsb, T * H * D, &oom) : NULL, a->k_pre = k_normed ? take(&wsb, T * KVH * D, &oom) : NULL;
        a->q = take(&wsb, T * H * D, &oom), a->att = take(&wsb, T * H * D, &oom);
        a->k = take(&wsb, T * KVH * D, &oom), a->v = take(&wsb, T * KVH * D, &oom);
        a->reserve = take(&wsb, T * H, &oom);
        const int64_t ff_rows = E ? T * KE : T; /* MoE: a row per chosen (token, expert) */
        a->ffk = take(&wsb, 3 * ff_rows * I, &oom);
        if (a->ffk) a->gate = a->ffk, a->up = a->ffk + ff_rows * I, a->act = a->ffk + 2 * ff_rows * I;
        if (E) {
            a->router = take(&wsb, T * E, &oom), a->rw = take(&wsb, T * KE, &oom), a->ey = take(&wsb, T * KE * C, &oom);
            a->xg = take(&wsb, T * KE * C, &oom);
            if (IS > 0) {
                a->sh_ffk = take(&wsb, 3 * T * IS, &oom), a->sh_y = take(&wsb, T * C, &oom), a->sh_g = take(&wsb, T, &oom);
                a->sh_g_h = malloc(sizeof(float) * (size_t)T), a->sh_d_h = malloc(sizeof(float) * (size_t)T);
                if (!a->sh_g_h || !a->sh_d_h) oom = true;
            }
            a->re = (int32_t *)take(&wsb, T * KE, &oom);
            a->re_h = malloc(sizeof(int32_t) * (size_t)(T * KE)), a->rw_h = malloc(sizeof(float) * (size_t)(T * KE));
            a->slot_h = malloc(sizeof(int32_t) * (size_t)(T * KE)), a->slot_row_h = malloc(sizeof(int32_t) * (size_t)(T * KE));
            a->start_h = malloc(sizeof(int32_t) * (size_t)(2 * (E + 1)));
            if (!a->re_h || !a->rw_h || !a->slot_h || !a->slot_row_h || !a->start_h) oom = true;
        }
        for (int t = 0; t < HC_LORA_N; t++) a->lu[t] = lora_role[t] ? take(&wsb, T * lr, &oom) : NULL;
    }
    float *moe_work = E ? take(&wsb, 2 * T * KE * C + T * KE + T * E + 3 * T * KE * I + T * C + T + 3 * T * IS, &oom) : NULL;
    hc_status st = HC_OK;
    if (oom) {
        st = hc_fail(HC_ERR_NOMEM, "out of memory for the activations of %lld tokens", (long long)T);
        goto out;
    }
    for (int64_t t = 0; t < T; t++) {
        pos_h[t] = (int32_t)(t % S);
        /* what row t predicts: the next token of its sequence */
        tgt_h[t] = t % S + 1 < S && (!mask || mask[t + 1]) ? ids_host[t + 1] : -1;
    }
    be->upload(be, ids, ids_host, sizeof(int32_t) * (size_t)T);
    be->upload(be, pos, pos_h, sizeof(int32_t) * (size_t)T);
    be->upload(be, tgt, tgt_h, sizeof(int32_t) * (size_t)T);
    for (int r = 0; r < 2 && c->rope.type != HC_ROPE_NONE; r++) {
        hc_rope_inv_freq(inv_h, &attn_factor[r], &m->rope[r], R, c->max_position_embeddings, S);
        be->upload(be, inv[r], inv_h, sizeof(float) * (size_t)(R / 2));
    }

    train_ctx tc = {be, m, pos, {inv[0], inv[1]}, {attn_factor[0], attn_factor[1]}, T, B, S, scratch, tmp, &ls};

    batch_step step = {m, gr, n_total, ckpt, A, &tc, ids, tgt, loss_rows, hit_rows, x0, xL, hf, logits,
                       dx, dh, dq, dk, dv, dact, dgate, dup, x_ckpt_out, moe_work};
    if (gr && be->graph_run && !E) {
        struct {
            const void *m, *gr;
            int64_t B, S;
            double n_total; /* the loss scale is a kernel argument */
            int64_t ckpt, fresh; /* fresh: the lazy gradients' GEMMs overwrite instead of adding */
        } key;
        memset(&key, 0, sizeof key);
        key.m = m, key.gr = gr, key.B = B, key.S = S, key.n_total = n_total, key.ckpt = ckpt, key.fresh = gr->fresh;
        be->graph_run(be, &key, sizeof key, batch_compute, &step);
    } else {
        batch_compute(&step);
    }
    if (gr) gr->fresh = false; /* the lazy gradients hold this batch's */
    be->download(be, loss_h, loss_rows, sizeof(float) * (size_t)T);
    be->download(be, hit_h, hit_rows, sizeof(float) * (size_t)T);
    for (int64_t t = 0; t < T; t++) {
        if (tgt_h[t] < 0) continue;
        *loss_sum += loss_h[t];
        *correct += hit_h[t] != 0;
    }
    if (gr) gr->stale = true;
    if (be->check && !st) st = be->check(be);
out:
    for (int64_t l = 0; A && l < L; l++) {
        layer_acts *a = &A[l];
        give(&wsb, a->x_in);
        if (ckpt && l > 0) continue; /* shares layer 0's buffers */
        free(a->re_h), free(a->rw_h), free(a->slot_h), free(a->slot_row_h), free(a->start_h), free(a->sh_g_h), free(a->sh_d_h);
        give(&wsb, a->re);
        float *bufs[] = {a->h1, a->q_pre, a->k_pre, a->q, a->k, a->v, a->att, a->o_pre, a->x_mid, a->h2, a->ffk,
                         a->ff_pre, a->router, a->rw, a->ey, a->xg, a->sh_ffk, a->sh_y, a->sh_g, a->reserve};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) give(&wsb, bufs[i]);
        for (int t = 0; t < HC_LORA_N; t++) give(&wsb, a->lu[t]);
    }
    give(&wsb, x_ckpt_out);
    free(A), free(pos_h), free(tgt_h), free(inv_h), free(loss_h), free(hit_h);
    give(&wsb, ids), give(&wsb, pos), give(&wsb, tgt), give(&wsb, loss_rows), give(&wsb, hit_rows);
    give(&wsb, inv[0]), give(&wsb, inv[1]), give(&wsb, x0), give(&wsb, xL), give(&wsb, hf), give(&wsb, logits), give(&wsb, dx);
    give(&wsb, dh), give(&wsb, tmp), give(&wsb, dq), give(&wsb, dk), give(&wsb, dv), give(&wsb, dact), give(&wsb, scratch);
    give(&wsb, ls.u), give(&wsb, ls.du), give(&wsb, ls.dys), give(&wsb, ls.dxl), give(&wsb, moe_work);
    return st;
}

void hc_grads_set_checkpointing(hc_grads *g, bool on) { g->checkpointing = on; }

hc_status hc_model_loss_grad(hc_model *m, const int32_t *ids, const uint8_t *mask, int64_t B, int64_t T, hc_grads *gr,
                             double *loss, double *accuracy) {
    if (gr && gr->m != m) return hc_fail(HC_ERR_INVALID_ARG, "gradients: the buffers belong to another model");
    if (B <= 0 || T < 2) return hc_fail(HC_ERR_INVALID_ARG, "gradients: need at least one sequence of two tokens");
    int64_t targets = 0;
    for (int64_t i = 0; i < B * T; i++) {
        if (ids[i] < 0 || ids[i] >= m->cfg.vocab_size)
            return hc_fail(HC_ERR_RANGE, "token id %d at index %lld is outside the vocabulary [0, %lld)", ids[i],
                           (long long)i, (long long)m->cfg.vocab_size);
        targets += i % T != 0 && (!mask || mask[i]);
    }
    if (!targets) return hc_fail(HC_ERR_INVALID_ARG, "gradients: the mask leaves no token to predict");
    double sum = 0;
    int64_t correct = 0;
    hc_status st = batch_grad(m, gr, ids, mask, B, T, (double)targets, &sum, &correct);
    if (st) return st;
    *loss = sum / (double)targets;
    if (accuracy) *accuracy = (double)correct / (double)targets;
    return HC_OK;
}

void hc_adamw_update(float *w, float *m1, float *m2, const float *g, int64_t n, const hc_adamw_params *p, int64_t step) {
    /* torch.optim.AdamW (single tensor, f32): decay first, then the bias-corrected step. */
    const float lr = (float)p->lr, b1 = (float)p->beta1, b2 = (float)p->beta2;
    const float bc1 = 1.0f - powf(b1, (float)step), bc2_sqrt = sqrtf(1.0f - powf(b2, (float)step));
    const float step_size = lr / bc1;
    for (int64_t i = 0; i < n; i++) {
        w[i] *= 1.0f - lr * (float)p->weight_decay;
        m1[i] += (g[i] - m1[i]) * (1.0f - b1);
        m2[i] = m2[i] * b2 + (1.0f - b2) * g[i] * g[i];
        const float denom = sqrtf(m2[i]) / bc2_sqrt + (float)p->eps;
        w[i] -= step_size * m1[i] / denom;
    }
}
