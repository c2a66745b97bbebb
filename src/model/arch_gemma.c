/* Gemma 1/2/3 (text): (1 + w) RMSNorm, sqrt(hidden) embedding scale; Gemma 2/3 add norms
 * after attention and around the MLP; Gemma 3 adds per-head q/k norms. Soft-capping, windows,
 * query_pre_attn_scalar and rope bases are config values (config.c). */
#include "model/arch.h"

#define GEMMA_BASE                                                                                                     \
    [W_TOK_EMBED] = "model.embed_tokens.weight", [W_FINAL_NORM] = "model.norm.weight",                                 \
    [W_LM_HEAD] = "lm_head.weight", [W_ATTN_NORM] = "model.layers.%d.input_layernorm.weight",                          \
    [W_Q] = "model.layers.%d.self_attn.q_proj.weight", [W_K] = "model.layers.%d.self_attn.k_proj.weight",             \
    [W_V] = "model.layers.%d.self_attn.v_proj.weight", [W_O] = "model.layers.%d.self_attn.o_proj.weight",             \
    [W_Q_B] = "model.layers.%d.self_attn.q_proj.bias", [W_K_B] = "model.layers.%d.self_attn.k_proj.bias",             \
    [W_V_B] = "model.layers.%d.self_attn.v_proj.bias", [W_O_B] = "model.layers.%d.self_attn.o_proj.bias",             \
    [W_GATE] = "model.layers.%d.mlp.gate_proj.weight", [W_UP] = "model.layers.%d.mlp.up_proj.weight",                 \
    [W_DOWN] = "model.layers.%d.mlp.down_proj.weight"

#define GEMMA_SANDWICH                                                                                                 \
    [W_ATTN_POST_NORM] = "model.layers.%d.post_attention_layernorm.weight",                                            \
    [W_FFN_NORM] = "model.layers.%d.pre_feedforward_layernorm.weight",                                                 \
    [W_FFN_POST_NORM] = "model.layers.%d.post_feedforward_layernorm.weight"

const hc_arch hc_arch_gemma = {
    .model_type = "gemma",
    .names = {GEMMA_BASE, [W_FFN_NORM] = "model.layers.%d.post_attention_layernorm.weight"},
    .norm = HC_NORM_RMS_PLUS1,
    .embed_scale_sqrt = true,
    .gated_mlp = true,
};

const hc_arch hc_arch_gemma2 = {
    .model_type = "gemma2",
    .names = {GEMMA_BASE, GEMMA_SANDWICH},
    .norm = HC_NORM_RMS_PLUS1,
    .embed_scale_sqrt = true,
    .sandwich_norms = true,
    .gated_mlp = true,
};

const hc_arch hc_arch_gemma3 = {
    .model_type = "gemma3_text gemma3",
    .names = {GEMMA_BASE, GEMMA_SANDWICH, [W_Q_NORM] = "model.layers.%d.self_attn.q_norm.weight",
              [W_K_NORM] = "model.layers.%d.self_attn.k_norm.weight"},
    .norm = HC_NORM_RMS_PLUS1,
    .embed_scale_sqrt = true,
    .qk_norm = true,
    .sandwich_norms = true,
    .gated_mlp = true,
};
