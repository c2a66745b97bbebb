/* GPT-2 and StarCoder2. GPT-2: learned positions, LayerNorm with bias, Conv1D weights stored [in, out], fused c_attn,
 * a plain (ungated) MLP. */
#include "model/arch.h"

const hc_arch hc_arch_gpt2 = {
    .model_type = "gpt2",
    .names = {[W_TOK_EMBED] = "transformer.wte.weight", [W_POS_EMBED] = "transformer.wpe.weight",
              [W_FINAL_NORM] = "transformer.ln_f.weight", [W_FINAL_NORM_B] = "transformer.ln_f.bias",
              [W_LM_HEAD] = "lm_head.weight",
              [W_ATTN_NORM] = "transformer.h.%d.ln_1.weight", [W_ATTN_NORM_B] = "transformer.h.%d.ln_1.bias",
              [W_QKV] = "transformer.h.%d.attn.c_attn.weight", [W_QKV_B] = "transformer.h.%d.attn.c_attn.bias",
              [W_O] = "transformer.h.%d.attn.c_proj.weight", [W_O_B] = "transformer.h.%d.attn.c_proj.bias",
              [W_FFN_NORM] = "transformer.h.%d.ln_2.weight", [W_FFN_NORM_B] = "transformer.h.%d.ln_2.bias",
              [W_UP] = "transformer.h.%d.mlp.c_fc.weight", [W_UP_B] = "transformer.h.%d.mlp.c_fc.bias",
              [W_DOWN] = "transformer.h.%d.mlp.c_proj.weight", [W_DOWN_B] = "transformer.h.%d.mlp.c_proj.bias"},
    .norm = HC_NORM_LAYER,
    .gated_mlp = false,
    .transposed_weights = true,
};

/* StarCoder2: Llama's attention (biases by use_bias) with LayerNorm (and bias) and GPT-2's plain
 * MLP, c_fc then c_proj; a window on every layer when sliding_window is set (config). */
const hc_arch hc_arch_starcoder2 = {
    .model_type = "starcoder2",
    .names = {[W_TOK_EMBED] = "model.embed_tokens.weight", [W_FINAL_NORM] = "model.norm.weight",
              [W_FINAL_NORM_B] = "model.norm.bias", [W_LM_HEAD] = "lm_head.weight",
              [W_ATTN_NORM] = "model.layers.%d.input_layernorm.weight",
              [W_ATTN_NORM_B] = "model.layers.%d.input_layernorm.bias",
              [W_Q] = "model.layers.%d.self_attn.q_proj.weight", [W_K] = "model.layers.%d.self_attn.k_proj.weight",
              [W_V] = "model.layers.%d.self_attn.v_proj.weight", [W_O] = "model.layers.%d.self_attn.o_proj.weight",
              [W_Q_B] = "model.layers.%d.self_attn.q_proj.bias", [W_K_B] = "model.layers.%d.self_attn.k_proj.bias",
              [W_V_B] = "model.layers.%d.self_attn.v_proj.bias", [W_O_B] = "model.layers.%d.self_attn.o_proj.bias",
              [W_FFN_NORM] = "model.layers.%d.post_attention_layernorm.weight",
              [W_FFN_NORM_B] = "model.layers.%d.post_attention_layernorm.bias",
              [W_UP] = "model.layers.%d.mlp.c_fc.weight", [W_UP_B] = "model.layers.%d.mlp.c_fc.bias",
              [W_DOWN] = "model.layers.%d.mlp.c_proj.weight", [W_DOWN_B] = "model.layers.%d.mlp.c_proj.bias"},
    .norm = HC_NORM_LAYER,
    .gated_mlp = false,
};
