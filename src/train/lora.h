/* LoRA adapters: for each adapted projection W [N, K], out += scale * (x A^T) B^T with
 * A [r, K] and B [N, r] in f32 (scale = alpha / r), as PEFT defines them. The base weights stay
 * as loaded (mapped, frozen). */
#ifndef HC_TRAIN_LORA_H
#define HC_TRAIN_LORA_H

#include "backend/backend.h"

/* The largest rank an adapter may have (hubcap finetune --lora-rank's bound too). */
#define HC_LORA_MAX_RANK 4096

/* The projections the decoder computes (roles), then the fused modules some checkpoints store
 * them in: one adapter over q, k and v (Phi-3's qkv_proj, GPT-2's c_attn) or over gate and up
 * (Phi-3's gate_up_proj), as PEFT adapts those modules whole. */
enum {
    HC_LORA_Q, HC_LORA_K, HC_LORA_V, HC_LORA_O, HC_LORA_GATE, HC_LORA_UP, HC_LORA_DOWN, HC_LORA_N,
    HC_LORA_QKV = HC_LORA_N, HC_LORA_GATE_UP, HC_LORA_MODULES
};

/* One module's adapter: it owns its memory. */
typedef struct {
    float *a, *b;          /* host: [r, K], [N, r] */
    float *a_dev, *b_dev;  /* backend memory (device backends; else the host arrays) */
    float *da, *db;        /* gradients while training (backend memory), else NULL */
    float *da_h, *db_h;    /* their host copies for the optimizer (the same arrays on the CPU) */
    hc_mat A, B;           /* views of a_dev / b_dev for the backend's matmul */
    int64_t n, k;
} hc_lora_pair;

typedef struct hc_lora {
    int64_t r;
    double alpha;
    float scale;           /* alpha / r */
    unsigned targets;      /* bit per module (HC_LORA_Q .. HC_LORA_GATE_UP) */
    hc_lora_pair *pairs;   /* [L][HC_LORA_MODULES]; a NULL where not adapted */
    /* Where each role's adapter lives: its module, and its rows of the module's B (all of
     * them, row0 0 and rows -1, unless fused). */
    int module_of[HC_LORA_N];
    int64_t row0[HC_LORA_N], rows[HC_LORA_N];
} hc_lora;

/* Layer l's adapter as role t sees it: out[T, n] += scale * (x A^T) B^T. For a fused module, A
 * is the module's (shared by its roles) and B, db the role's rows, so each role's backward
 * adds its part to the shared dA. */
typedef struct {
    hc_mat A, B;     /* A [r, K]; B [n, r] */
    float *da, *db;  /* gradients (backend memory), or NULL */
    int64_t n, k;
} hc_lora_view;

static inline bool hc_lora_get(const hc_lora *lo, int64_t l, int t, hc_lora_view *v) {
    if (!lo) return false;
    const int mod = lo->module_of[t];
    if (!(lo->targets & (1u << mod))) return false;
    const hc_lora_pair *p = &lo->pairs[l * HC_LORA_MODULES + mod];
    if (!p->a) return false;
    const int64_t r0 = lo->row0[t], n = lo->rows[t] < 0 ? p->n : lo->rows[t];
    v->A = p->A;
    v->B = p->B;
    v->B.data = (const float *)p->B.data + r0 * lo->r;
    v->B.rows = n;
    v->da = p->da;
    v->db = p->db ? p->db + r0 * lo->r : NULL;
    v->n = n;
    v->k = p->k;
    return true;
}

static inline bool hc_lora_has(const hc_lora *lo, int64_t l, int t) {
    hc_lora_view v;
    return hc_lora_get(lo, l, t, &v);
}

#endif
