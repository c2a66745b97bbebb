/* The Llama family: Llama 2/3.x, Mistral, Qwen2/2.5 (q/k/v bias comes from config), SmolLM3
 * (Llama with rope left out of every 4th layer: config), Granite (Llama with multipliers on the
 * embeddings, the residual branches, the attention scale and the logits: config), Seed-OSS
 * (biases by config), OLMo 2 and 3 and EXAONE 4 (norms after attention and the MLP instead of
 * before; q/k norms over the whole projection, or per head), Qwen3 (per-head q/k norms), Mixtral (experts), Qwen3-MoE (Qwen3's attention, experts) and Qwen2-MoE
 * (Qwen2's attention, experts and a shared expert: the gate/up/down roles, scaled by a sigmoid
 * gate). */
#include "model/arch.h"

#define LLAMA_ATTENTION                                                                                                \
    [W_TOK_EMBED] = "model.embed_tokens.weight", [W_FINAL_NORM] = "model.norm.weight",                                 \
    [W_LM_HEAD] = "lm_head.weight", [W_ATTN_NORM] = "model.layers.%d.input_layernorm.weight",                          \
    [W_Q] = "model.layers.%d.self_attn.q_proj.weight", [W_K] = "model.layers.%d.self_attn.k_proj.weight",             \
    [W_V] = "model.layers.%d.self_attn.v_proj.weight", [W_O] = "model.layers.%d.self_attn.o_proj.weight",             \
    [W_Q_B] = "model.layers.%d.self_attn.q_proj.bias", [W_K_B] = "model.layers.%d.self_attn.k_proj.bias",             \
    [W_V_B] = "model.layers.%d.self_attn.v_proj.bias", [W_O_B] = "model.layers.%d.self_attn.o_proj.bias",             \
    [W_FFN_NORM] = "model.layers.%d.post_attention_layernorm.weight"

#define LLAMA_MLP                                                                                                      \
    [W_GATE] = "model.layers.%d.mlp.gate_proj.weight", [W_UP] = "model.layers.%d.mlp.up_proj.weight",                 \
    [W_DOWN] = "model.layers.%d.mlp.down_proj.weight", [W_GATE_B] = "model.layers.%d.mlp.gate_proj.bias",             \
    [W_UP_B] = "model.layers.%d.mlp.up_proj.bias", [W_DOWN_B] = "model.layers.%d.mlp.down_proj.bias"

const hc_arch hc_arch_llama = {
    .model_type = "llama mistral qwen2 smollm3 granite seed_oss",
    .names = {LLAMA_ATTENTION, LLAMA_MLP},
    .norm = HC_NORM_RMS,
    .gated_mlp = true,
};

const hc_arch hc_arch_qwen3 = {
    .model_type = "qwen3",
    .names = {LLAMA_ATTENTION, LLAMA_MLP, [W_Q_NORM] = "model.layers.%d.self_attn.q_norm.weight",
              [W_K_NORM] = "model.layers.%d.self_attn.k_norm.weight"},
    .norm = HC_NORM_RMS,
    .qk_norm = true,
    .gated_mlp = true,
};

const hc_arch hc_arch_mixtral = {
    .model_type = "mixtral",
    .names = {LLAMA_ATTENTION, [W_ROUTER] = "model.layers.%d.block_sparse_moe.gate.weight",
              [W_EXP_GATE] = "model.layers.%d.block_sparse_moe.experts.%d.w1.weight",
              [W_EXP_DOWN] = "model.layers.%d.block_sparse_moe.experts.%d.w2.weight",
              [W_EXP_UP] = "model.layers.%d.block_sparse_moe.experts.%d.w3.weight"},
    .norm = HC_NORM_RMS,
    .gated_mlp = true,
};

/* Granite MoE (granite-3.x-*-a*m): Granite's attention and multipliers, and experts stored as two
 * tensors for all of them (block_sparse_moe.input_linear [E, 2I, C], output_linear [E, C, I]),
 * routed by softmax over the top-k logits */
const hc_arch hc_arch_granitemoe = {
    .model_type = "granitemoe",
    .names = {LLAMA_ATTENTION, [W_ROUTER] = "model.layers.%d.block_sparse_moe.router.layer.weight",
              [W_EXPS_GATE_UP] = "model.layers.%d.block_sparse_moe.input_linear.weight",
              [W_EXPS_DOWN] = "model.layers.%d.block_sparse_moe.output_linear.weight"},
    .norm = HC_NORM_RMS,
    .gated_mlp = true,
};

const hc_arch hc_arch_qwen3_moe = {
    .model_type = "qwen3_moe",
    .names = {LLAMA_ATTENTION, [W_Q_NORM] = "model.layers.%d.self_attn.q_norm.weight",
              [W_K_NORM] = "model.layers.%d.self_attn.k_norm.weight", [W_ROUTER] = "model.layers.%d.mlp.gate.weight",
              [W_EXP_GATE] = "model.layers.%d.mlp.experts.%d.gate_proj.weight",
              [W_EXP_DOWN] = "model.layers.%d.mlp.experts.%d.down_proj.weight",
              [W_EXP_UP] = "model.layers.%d.mlp.experts.%d.up_proj.weight"},
    .norm = HC_NORM_RMS,
    .qk_norm = true,
    .gated_mlp = true,
};

const hc_arch hc_arch_qwen2_moe = {
    .model_type = "qwen2_moe",
    .names = {LLAMA_ATTENTION, [W_ROUTER] = "model.layers.%d.mlp.gate.weight",
              [W_EXP_GATE] = "model.layers.%d.mlp.experts.%d.gate_proj.weight",
              [W_EXP_DOWN] = "model.layers.%d.mlp.experts.%d.down_proj.weight",
              [W_EXP_UP] = "model.layers.%d.mlp.experts.%d.up_proj.weight",
              [W_GATE] = "model.layers.%d.mlp.shared_expert.gate_proj.weight",
              [W_UP] = "model.layers.%d.mlp.shared_expert.up_proj.weight",
              [W_DOWN] = "model.layers.%d.mlp.shared_expert.down_proj.weight",
              [W_SHARED_GATE] = "model.layers.%d.mlp.shared_expert_gate.weight"},
    .norm = HC_NORM_RMS,
    .gated_mlp = true,
};

/* OLMo 2's blocks: Llama's weights without the input norms; norms on the attention's and the
 * MLP's outputs, q and k norms. EXAONE 4 stores its blocks the same way (no biases). */
#define POST_NORM_BLOCK                                                                                                \
    [W_TOK_EMBED] = "model.embed_tokens.weight", [W_FINAL_NORM] = "model.norm.weight",                                 \
    [W_LM_HEAD] = "lm_head.weight", [W_Q] = "model.layers.%d.self_attn.q_proj.weight",                                \
    [W_K] = "model.layers.%d.self_attn.k_proj.weight", [W_V] = "model.layers.%d.self_attn.v_proj.weight",             \
    [W_O] = "model.layers.%d.self_attn.o_proj.weight", [W_Q_NORM] = "model.layers.%d.self_attn.q_norm.weight",        \
    [W_K_NORM] = "model.layers.%d.self_attn.k_norm.weight",                                                            \
    [W_ATTN_POST_NORM] = "model.layers.%d.post_attention_layernorm.weight",                                            \
    [W_FFN_POST_NORM] = "model.layers.%d.post_feedforward_layernorm.weight", LLAMA_MLP

const hc_arch hc_arch_olmo2 = {
    .model_type = "olmo2 olmo3", /* OLMo 3: OLMo 2 with sliding windows on three layers of four (config) */
    .names = {POST_NORM_BLOCK, [W_Q_B] = "model.layers.%d.self_attn.q_proj.bias",
              [W_K_B] = "model.layers.%d.self_attn.k_proj.bias", [W_V_B] = "model.layers.%d.self_attn.v_proj.bias",
              [W_O_B] = "model.layers.%d.self_attn.o_proj.bias"},
    .norm = HC_NORM_RMS,
    .qk_norm = true,
    .qk_norm_whole = true,
    .sandwich_norms = true,
    .post_norms_only = true,
    .gated_mlp = true,
};

/* EXAONE 4: OLMo 2's blocks with per-head q/k norms; with a window, rope only on the sliding
 * layers (config) */
const hc_arch hc_arch_exaone4 = {
    .model_type = "exaone4",
    .names = {POST_NORM_BLOCK},
    .norm = HC_NORM_RMS,
    .qk_norm = true,
    .sandwich_norms = true,
    .post_norms_only = true,
    .gated_mlp = true,
};
