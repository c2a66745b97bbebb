/* Phi-3: Llama with fused qkv_proj and gate_up_proj (gate first), and partial rotary (config). */
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
