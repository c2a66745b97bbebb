/* GPT-2: learned positions, LayerNorm with bias, Conv1D weights stored [in, out], fused c_attn,
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
