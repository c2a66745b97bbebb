/* LoRA adapters: for each adapted projection W [N, K], out += scale * (x A^T) B^T with
 * A [r, K] and B [N, r] in f32 (scale = alpha / r), as PEFT defines them. The base weights stay
 * as loaded (mapped, frozen). */
#ifndef HC_TRAIN_LORA_H
#define HC_TRAIN_LORA_H

#include "backend/backend.h"

/* The projections an adapter may cover, in PEFT's module names. */
enum { HC_LORA_Q, HC_LORA_K, HC_LORA_V, HC_LORA_O, HC_LORA_GATE, HC_LORA_UP, HC_LORA_DOWN, HC_LORA_N };

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
    unsigned targets;      /* bit per HC_LORA_* */
    hc_lora_pair *pairs;   /* [L][HC_LORA_N]; a NULL where not adapted */
    float *tmp_r, *tmp_n;  /* backend scratch: [rows, r], [rows, max N] (inference) */
    int64_t tmp_rows;
} hc_lora;

/* The adapter pair of layer l's projection t, or NULL. */
static inline const hc_lora_pair *hc_lora_at(const hc_lora *lo, int64_t l, int t) {
    if (!lo || !(lo->targets & (1u << t))) return NULL;
    const hc_lora_pair *p = &lo->pairs[l * HC_LORA_N + t];
    return p->a ? p : NULL;
}

#endif
