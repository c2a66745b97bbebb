/* The Phi family.
 * Phi-3 (Phi-3.5, Phi-4): Llama with fused qkv_proj and gate_up_proj (gate first), and partial
 * rotary (config).
 * Phi-1.5 / Phi-2 (model_type phi): LayerNorm with bias, biases on every projection and on the LM
 * head, a GELU MLP (fc1, fc2), partial rotary, and parallel blocks: attention and the MLP both
 * read the one input norm and add to the residual together. */
#include "model/arch.h"

const hc_arch hc_arch_phi3 = {
    .model_type = "phi3",
    .names = {[W_TOK_EMBED] = "model.embed_tokens.weight", [W_FINAL_NORM] = "model.norm.weight",
              [W_LM_HEAD] = "lm_head.weight", [W_ATTN_NORM] = "model.layers.%d.input_layernorm.weight",
              [W_QKV] = "model.layers.%d.self_attn.qkv_proj.weight", [W_O] = "model.layers.%d.self_attn.o_proj.weight",
              [W_FFN_NORM] = "model.layers.%d.post_attention_layernorm.weight",
              [W_GATE_UP] = "model.layers.%d.mlp.gate_up_proj.weight",
              [W_DOWN] = "model.layers.%d.mlp.down_proj.weight"},
    .norm = HC_NORM_RMS,
    .gated_mlp = true,
};

const hc_arch hc_arch_phi = {
    .model_type = "phi",
    .names = {[W_TOK_EMBED] = "model.embed_tokens.weight", [W_FINAL_NORM] = "model.final_layernorm.weight",
              [W_FINAL_NORM_B] = "model.final_layernorm.bias", [W_LM_HEAD] = "lm_head.weight",
              [W_LM_HEAD_B] = "lm_head.bias", [W_ATTN_NORM] = "model.layers.%d.input_layernorm.weight",
              [W_ATTN_NORM_B] = "model.layers.%d.input_layernorm.bias",
              [W_Q] = "model.layers.%d.self_attn.q_proj.weight", [W_K] = "model.layers.%d.self_attn.k_proj.weight",
              [W_V] = "model.layers.%d.self_attn.v_proj.weight", [W_O] = "model.layers.%d.self_attn.dense.weight",
              [W_Q_B] = "model.layers.%d.self_attn.q_proj.bias", [W_K_B] = "model.layers.%d.self_attn.k_proj.bias",
              [W_V_B] = "model.layers.%d.self_attn.v_proj.bias", [W_O_B] = "model.layers.%d.self_attn.dense.bias",
              [W_UP] = "model.layers.%d.mlp.fc1.weight", [W_UP_B] = "model.layers.%d.mlp.fc1.bias",
              [W_DOWN] = "model.layers.%d.mlp.fc2.weight", [W_DOWN_B] = "model.layers.%d.mlp.fc2.bias"},
    .norm = HC_NORM_LAYER,
    .parallel_block = true,
};
