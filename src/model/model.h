/* The loaded model: weights bound to their roles, in their stored dtype, on a backend. */
#ifndef HC_MODEL_MODEL_H
#define HC_MODEL_MODEL_H

#include "backend/backend.h"
#include "hubcap.h"
#include "model/arch.h"

typedef struct {
    hc_vec attn_norm, attn_norm_b;     /* [C] */
    hc_mat wq, wk, wv, wo;             /* [H*D, C], [KVH*D, C], [KVH*D, C], [C, H*D] */
    hc_vec bq, bk, bv, bo;
    hc_vec q_norm, k_norm;             /* [D] */
    hc_vec attn_post_norm;             /* [C] */
    hc_vec ffn_norm, ffn_norm_b, ffn_post_norm; /* [C] */
    hc_mat gate, up, down;             /* [I, C], [I, C], [C, I]; Qwen2-MoE's shared expert (its size) */
    hc_vec b_gate, b_up, b_down;
    hc_mat router;                     /* [E, C] */
    hc_mat *exp_gate, *exp_up, *exp_down; /* [E] of [I, C], [I, C], [C, I] */
    hc_mat shared_gate;                /* [1, C] Qwen2-MoE: the shared expert's sigmoid gate */
    bool sliding;
    bool nope;                         /* no rope in this layer (SmolLM3) */
    int rope;                          /* 0: global table, 1: local (sliding) table */
    float attn_scale;
} hc_layer;

struct hc_model {
    hc_checkpoint *ck;
    hc_model_config cfg;
    const hc_arch *arch;
    hc_backend *be;
    hc_mat tok_embed;   /* [V, C] */
    hc_mat pos_embed;   /* [max_pos, C] (GPT-2) */
    hc_mat lm_head;     /* [V, C] (the embedding when tied) */
    hc_vec lm_head_b;   /* [V] Phi-2's LM head bias, or none */
    hc_vec final_norm, final_norm_b;
    hc_layer *layers;
    float embed_scale;
    int64_t n_ctx;          /* the longest sequence generate() accepts */
    hc_dtype kv_dtype;      /* the KV caches of this model's sessions */
    hc_rope_config rope[2]; /* global, local */
    hc_tokenizer *tokenizer;  /* the folder's tokenizer, or NULL */
    char tokenizer_error[256];/* why there is none */
    hc_dtype compute_dtype; /* resolved: F32, BF16 or F16 */
    bool use_mmap;          /* weights mapped read-only (else read into writable RAM) */
    bool repacked;      /* bf16 weights interleaved for the CPU's bf16 kernels (hc_model_params.repack) */
    void *device_weights;   /* the one device block every view points into (device backends) */
    int64_t device_bytes;   /* its size */
    struct hc_device_range *device_ranges; /* which host bytes went where in it, by host address */
    int n_device_ranges;
    struct hc_lora *lora;   /* a LoRA adapter (train/lora.h), or NULL */
    void **owned;           /* aligned copies of misaligned tensors */
    int n_owned;
};

/* Host weight bytes [lo, hi) copied to device_weights + dev_off. */
typedef struct hc_device_range {
    uintptr_t lo, hi;
    size_t dev_off;
} hc_device_range;

/* The host address of weight bytes: p itself unless p points into the device copy. */
const void *hc_model_host_address(const hc_model *m, const void *p);
/* Where host weight bytes [host, host + bytes) sit in the device copy, or NULL. */
void *hc_model_device_address(hc_model *m, const void *host, size_t bytes);
/* Copies host weight bytes (changed by training) to their device copy; no-op without one. */
void hc_model_update_device(hc_model *m, const void *host, size_t bytes);

/* Calls fn_mat / fn_vec on every weight view the model uses (absent ones too: data NULL). */
void hc_model_each_weight(hc_model *m, void (*fn_mat)(hc_mat *, void *), void (*fn_vec)(hc_vec *, void *), void *arg);

/* Mixture of experts, grouped by expert: the n = T*K routing choices experts[n] (row r = t*K + j)
 * get slots expert by expert, rows in order within one. start[E + 1]: where each expert's slots
 * begin (its count is start[e + 1] - start[e]); slot[n]: choice r's slot; slot_row[n]: the
 * inverse. cursor[E + 1]: scratch. The decoder and training both run each expert once over its
 * slots. */
void hc_expert_slots(int32_t *start, int32_t *slot, int32_t *slot_row, int32_t *cursor, const int32_t *experts,
                     int64_t n, int64_t E);

#endif
