/* Architectures as data: what each model family names its weights and which quirks it has.
 * A new architecture is a config mapping (config.c) plus one of these tables. */
#ifndef HC_MODEL_ARCH_H
#define HC_MODEL_ARCH_H

#include <stdbool.h>

#include "backend/backend.h"

/* The roles a weight plays. Per-layer names contain one %d (the layer); expert names two
 * (layer, expert). */
typedef enum {
    W_TOK_EMBED, W_POS_EMBED, W_FINAL_NORM, W_FINAL_NORM_B, W_LM_HEAD, W_LM_HEAD_B,
    W_ATTN_NORM, W_ATTN_NORM_B,
    W_Q, W_K, W_V, W_QKV, W_O,
    W_Q_B, W_K_B, W_V_B, W_QKV_B, W_O_B,
    W_Q_NORM, W_K_NORM, W_ATTN_POST_NORM,
    W_FFN_NORM, W_FFN_NORM_B, W_FFN_POST_NORM,
    W_GATE, W_UP, W_GATE_UP, W_DOWN, W_GATE_B, W_UP_B, W_DOWN_B,
    W_ROUTER, W_EXP_GATE, W_EXP_UP, W_EXP_DOWN, W_SHARED_GATE,
    W_EXPS_GATE_UP, W_EXPS_DOWN, /* every expert in one tensor: [E, 2I, C] (gate rows, then up), [E, C, I] */
    W_ROLE_COUNT
} hc_weight_role;

typedef struct {
    const char *model_type;     /* config.json model_type(s) it serves, space separated */
    const char *names[W_ROLE_COUNT]; /* NULL: this family has no such weight */
    hc_norm_kind norm;
    bool embed_scale_sqrt;      /* Gemma: embeddings times sqrt(hidden) */
    bool qk_norm;               /* per-head RMSNorm on q and k (Qwen3, Gemma 3) */
    bool sandwich_norms;        /* Gemma 2/3: norms after attention and around the MLP */
    bool gated_mlp;             /* act(gate) * up; false: act(up) (GPT-2) */
    bool transposed_weights;    /* GPT-2 Conv1D stores [in, out] */
    bool parallel_block;        /* Phi-2: attention and MLP both read the block's one input norm,
                                   x + attn + mlp; no norm between them */
    bool post_norms_only;       /* OLMo 2: norms on the attention's and the MLP's outputs (the
                                   sandwich's post norms) and none on their inputs */
    bool qk_norm_whole;         /* OLMo 2: q and k normalized over the whole projection (H*D,
                                   KVH*D) before the heads split, not per head */
} hc_arch;

/* The table for a model_type (after gemma3 -> gemma3_text), or NULL. */
const hc_arch *hc_arch_find(const char *model_type);

extern const hc_arch hc_arch_llama, hc_arch_mixtral, hc_arch_qwen3, hc_arch_qwen3_moe, hc_arch_qwen2_moe, hc_arch_olmo2, hc_arch_exaone4, hc_arch_gemma, hc_arch_gemma2, hc_arch_gemma3,
    hc_arch_phi3, hc_arch_phi, hc_arch_gpt2, hc_arch_starcoder2, hc_arch_granitemoe;

#endif
