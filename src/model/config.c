#include "model/config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/status.h"

/* The values transformers' config classes use when config.json leaves a key out. */
typedef struct {
    const char *model_type;
    int64_t vocab, hidden, intermediate, layers, heads;
    int64_t kv_heads; /* 0: same as heads */
    int64_t head_dim; /* 0: hidden / heads */
    int64_t max_pos;
    double eps, rope_theta;
    const char *act;
    bool tie;
    int64_t sliding_window; /* 0: none */
} arch_defaults;

static const arch_defaults defaults_table[] = {
    {"llama", 32000, 4096, 11008, 32, 32, 0, 0, 2048, 1e-6, 10000.0, "silu", false, 0},
    {"mistral", 32000, 4096, 14336, 32, 32, 8, 0, 4096 * 32, 1e-6, 10000.0, "silu", false, 4096},
    {"mixtral", 32000, 4096, 14336, 32, 32, 8, 0, 4096 * 32, 1e-5, 1e6, "silu", false, 0},
    {"qwen2", 151936, 4096, 22016, 32, 32, 32, 0, 32768, 1e-6, 10000.0, "silu", false, 4096},
    {"qwen3", 151936, 4096, 22016, 32, 32, 32, 128, 32768, 1e-6, 10000.0, "silu", false, 4096},
    {"qwen3_moe", 151936, 2048, 6144, 24, 32, 4, 0, 32768, 1e-6, 10000.0, "silu", false, 0},
    {"qwen2_moe", 151936, 2048, 5632, 24, 16, 16, 0, 32768, 1e-6, 10000.0, "silu", false, 4096},
    {"gemma", 256000, 3072, 24576, 28, 16, 16, 256, 8192, 1e-6, 10000.0, "gelu_pytorch_tanh", true, 0},
    {"gemma2", 256000, 2304, 9216, 26, 8, 4, 256, 8192, 1e-6, 10000.0, "gelu_pytorch_tanh", true, 4096},
    {"gemma3_text", 262208, 2304, 9216, 26, 8, 4, 256, 131072, 1e-6, 1e6, "gelu_pytorch_tanh", true, 4096},
    {"phi3", 32064, 3072, 8192, 32, 32, 0, 0, 4096, 1e-5, 10000.0, "silu", false, 0},
    {"phi", 51200, 2048, 8192, 24, 32, 0, 0, 2048, 1e-5, 10000.0, "gelu_new", false, 0},
    {"granitemoe", 32000, 4096, 11008, 32, 32, 0, 0, 2048, 1e-6, 10000.0, "silu", false, 0},
    {"granite", 32000, 4096, 11008, 32, 32, 0, 0, 2048, 1e-6, 10000.0, "silu", false, 0},
    {"olmo2", 50304, 4096, 11008, 32, 32, 0, 0, 2048, 1e-5, 10000.0, "silu", false, 0},
    {"olmo3", 50304, 4096, 11008, 32, 32, 0, 0, 2048, 1e-5, 10000.0, "silu", false, 4096},
    {"exaone4", 102400, 4096, 16384, 32, 32, 32, 0, 2048, 1e-5, 10000.0, "silu", false, 4096},
    {"smollm3", 128256, 2048, 11008, 36, 16, 4, 0, 32768, 1e-6, 2000000.0, "silu", true, 0},
    {"seed_oss", 155136, 4096, 27648, 64, 80, 8, 128, 524288, 1e-6, 1e7, "silu", false, 0},
    {"starcoder2", 49152, 3072, 12288, 30, 24, 2, 0, 4096, 1e-5, 10000.0, "gelu_pytorch_tanh", true, 0},
    {"gpt2", 50257, 768, 0, 12, 12, 0, 0, 1024, 1e-5, 0.0, "gelu_new", true, 0},
};

const char *hc_supported_model_types(void) {
    return "llama, mistral, mixtral, qwen2, qwen2_moe, qwen3, qwen3_moe, smollm3, granite, granitemoe, olmo2, olmo3, exaone4, starcoder2, seed_oss, gemma, gemma2, gemma3, gemma3_text, phi3, phi, gpt2, and the "
           "language model of mistral3, llava, qwen2_vl, qwen2_5_vl and qwen3_vl";
}

const char *hc_rope_type_name(hc_rope_type t) {
    switch (t) {
    case HC_ROPE_NONE: return "none (learned positions)";
    case HC_ROPE_DEFAULT: return "default";
    case HC_ROPE_LINEAR: return "linear";
    case HC_ROPE_DYNAMIC: return "dynamic";
    case HC_ROPE_YARN: return "yarn";
    case HC_ROPE_LLAMA3: return "llama3";
    case HC_ROPE_LONGROPE: return "longrope";
    }
    return "?";
}

const char *hc_activation_name(hc_activation a) {
    switch (a) {
    case HC_ACT_SILU: return "silu";
    case HC_ACT_GELU_TANH: return "gelu_tanh";
    case HC_ACT_GELU: return "gelu";
    case HC_ACT_RELU: return "relu";
    }
    return "?";
}

/* ---- typed reads: absent or null gives the default; a wrong type is an error ---------- */

static hc_status get_int(const hc_json *obj, const char *key, int64_t dflt, int64_t *out, const char *src) {
    const hc_json *v = hc_json_get(obj, key);
    if (hc_json_is_null(v)) {
        *out = dflt;
        return HC_OK;
    }
    if (v->type == HC_JSON_NUMBER && v->is_int) {
        *out = v->u.num.i;
        return HC_OK;
    }
    if (v->type == HC_JSON_NUMBER && v->u.num.d == floor(v->u.num.d) && fabs(v->u.num.d) < 9e15) {
        *out = (int64_t)v->u.num.d;
        return HC_OK;
    }
    return hc_fail(HC_ERR_FORMAT, "%s: '%s' must be an integer", src, key);
}

static hc_status get_num(const hc_json *obj, const char *key, double dflt, double *out, const char *src) {
    const hc_json *v = hc_json_get(obj, key);
    if (hc_json_is_null(v)) {
        *out = dflt;
        return HC_OK;
    }
    if (v->type == HC_JSON_NUMBER) {
        *out = v->u.num.d;
        return HC_OK;
    }
    return hc_fail(HC_ERR_FORMAT, "%s: '%s' must be a number", src, key);
}

static hc_status get_bool(const hc_json *obj, const char *key, bool dflt, bool *out, const char *src) {
    const hc_json *v = hc_json_get(obj, key);
    if (hc_json_is_null(v)) {
        *out = dflt;
        return HC_OK;
    }
    if (v->type == HC_JSON_BOOL) {
        *out = v->u.b;
        return HC_OK;
    }
    return hc_fail(HC_ERR_FORMAT, "%s: '%s' must be true or false", src, key);
}

#define TRY(expr)                                                                                                      \
    do {                                                                                                               \
        hc_status s_ = (expr);                                                                                         \
        if (s_) return s_;                                                                                             \
    } while (0)

static hc_status parse_activation(const char *name, const char *key, hc_activation *out, const char *src) {
    if (!strcmp(name, "silu") || !strcmp(name, "swish")) *out = HC_ACT_SILU;
    else if (!strcmp(name, "gelu_pytorch_tanh") || !strcmp(name, "gelu_new") || !strcmp(name, "gelu_fast"))
        *out = HC_ACT_GELU_TANH;
    else if (!strcmp(name, "gelu")) *out = HC_ACT_GELU;
    else if (!strcmp(name, "relu")) *out = HC_ACT_RELU;
    else
        return hc_fail(HC_ERR_UNSUPPORTED,
                       "%s: unsupported activation %s='%s' (supported: silu, swish, gelu, gelu_new, "
                       "gelu_pytorch_tanh, gelu_fast, relu)",
                       src, key, name);
    return HC_OK;
}

/* longrope's short_factor / long_factor: a list of positive numbers (their count is checked
 * against the rotary dimension once that is known). */
static hc_status get_factors(const hc_json *p, const char *key, float *out, int *n, const char *src, const char *where) {
    const hc_json *v = hc_json_get(p, key);
    if (hc_json_is_null(v)) return hc_fail(HC_ERR_FORMAT, "%s: longrope needs %s.%s", src, where, key);
    if (v->type != HC_JSON_ARRAY) return hc_fail(HC_ERR_FORMAT, "%s: %s.%s must be a list of numbers", src, where, key);
    if (v->len > HC_MAX_ROPE_FACTORS)
        return hc_fail(HC_ERR_FORMAT, "%s: %s.%s has %zu entries (at most %d)", src, where, key, v->len,
                       HC_MAX_ROPE_FACTORS);
    for (size_t i = 0; i < v->len; i++) {
        const hc_json *x = hc_json_at(v, i);
        if (x->type != HC_JSON_NUMBER || !(x->u.num.d > 0) || !isfinite(x->u.num.d))
            return hc_fail(HC_ERR_FORMAT, "%s: %s.%s[%zu] must be a positive number", src, where, key, i);
        out[i] = (float)x->u.num.d; /* transformers makes an f32 tensor of them */
    }
    *n = (int)v->len;
    return HC_OK;
}

/* Reads one rope description: `p` holds rope_type/type, factor and the rest; `theta` comes from
 * p.rope_theta when present (the v5 rope_parameters style), else from dflt_theta. mrope: a Qwen-VL
 * language model, whose rope_scaling type "mrope" is the default rope on text. */
static hc_status parse_rope(hc_rope_config *r, const hc_json *p, double dflt_theta, int64_t max_pos, bool mrope,
                            const char *src, const char *where) {
    memset(r, 0, sizeof *r);
    r->type = HC_ROPE_DEFAULT;
    r->theta = dflt_theta;
    r->factor = 1.0;
    r->truncate = true;
    if (hc_json_is_null(p)) {
        if (!(r->theta > 0 && isfinite(r->theta))) return hc_fail(HC_ERR_FORMAT, "%s: rope_theta must be positive", src);
        return HC_OK;
    }
    if (p->type != HC_JSON_OBJECT) return hc_fail(HC_ERR_FORMAT, "%s: '%s' must be an object", src, where);
    const char *type = hc_json_str(p, "rope_type", NULL);
    if (!type) type = hc_json_str(p, "type", "default");
    if (!strcmp(type, "default")) r->type = HC_ROPE_DEFAULT;
    else if (!strcmp(type, "linear")) r->type = HC_ROPE_LINEAR;
    else if (!strcmp(type, "dynamic")) r->type = HC_ROPE_DYNAMIC;
    else if (!strcmp(type, "yarn")) r->type = HC_ROPE_YARN;
    else if (!strcmp(type, "llama3")) r->type = HC_ROPE_LLAMA3;
    else if (!strcmp(type, "longrope") || !strcmp(type, "su")) r->type = HC_ROPE_LONGROPE; /* "su": early Phi-3 */
    else if (!strcmp(type, "mrope") && mrope) r->type = HC_ROPE_DEFAULT; /* Qwen2-VL's, on text: qwen_vl */
    else
        return hc_fail(HC_ERR_UNSUPPORTED,
                       "%s: unsupported %s.rope_type='%s' (supported: default, linear, dynamic, yarn, llama3, longrope)",
                       src, where, type);
    TRY(get_num(p, "rope_theta", dflt_theta, &r->theta, src));
    /* longrope without a factor takes max_position_embeddings / original_max_position_embeddings
     * (0 here until that is known) */
    TRY(get_num(p, "factor", r->type == HC_ROPE_LONGROPE ? 0.0 : 1.0, &r->factor, src));
    TRY(get_num(p, "low_freq_factor", 1.0, &r->low_freq_factor, src));
    TRY(get_num(p, "high_freq_factor", 4.0, &r->high_freq_factor, src));
    TRY(get_int(p, "original_max_position_embeddings", 0, &r->original_max_position_embeddings, src));
    TRY(get_num(p, "attention_factor", 0.0, &r->attention_factor, src));
    TRY(get_num(p, "beta_fast", 0.0, &r->beta_fast, src));
    TRY(get_num(p, "beta_slow", 0.0, &r->beta_slow, src));
    TRY(get_num(p, "mscale", 0.0, &r->mscale, src));
    TRY(get_num(p, "mscale_all_dim", 0.0, &r->mscale_all_dim, src));
    TRY(get_bool(p, "truncate", true, &r->truncate, src));
    if (r->type != HC_ROPE_DEFAULT && !(r->factor > 0) &&
        !(r->type == HC_ROPE_LONGROPE && hc_json_is_null(hc_json_get(p, "factor"))))
        return hc_fail(HC_ERR_FORMAT, "%s: %s.factor must be positive", src, where);
    if (r->attention_factor < 0 || !isfinite(r->attention_factor))
        return hc_fail(HC_ERR_FORMAT, "%s: %s.attention_factor must be positive", src, where);
    if (r->type == HC_ROPE_LONGROPE) {
        int n_long = 0;
        TRY(get_factors(p, "short_factor", r->short_factor, &r->n_factors, src, where));
        TRY(get_factors(p, "long_factor", r->long_factor, &n_long, src, where));
        if (n_long != r->n_factors)
            return hc_fail(HC_ERR_FORMAT, "%s: %s.short_factor has %d entries but long_factor %d", src, where,
                           r->n_factors, n_long);
    }
    if (r->type == HC_ROPE_LLAMA3 && r->high_freq_factor == r->low_freq_factor)
        return hc_fail(HC_ERR_FORMAT, "%s: llama3 rope needs high_freq_factor != low_freq_factor", src);
    /* transformers' dynamic NTK measures from max_position_embeddings, whatever
     * original_max_position_embeddings says */
    if (r->type == HC_ROPE_DYNAMIC) r->original_max_position_embeddings = max_pos;
    if (!(r->theta > 0 && isfinite(r->theta))) return hc_fail(HC_ERR_FORMAT, "%s: rope_theta must be positive", src);
    return HC_OK;
}

/* llama3, yarn and longrope scale against the context the model was pretrained with. As
 * transformers standardizes it: a top-level original_max_position_embeddings wins (Phi-3 keeps it
 * there, and its config class defaults it to 4096), then the rope's own, then
 * max_position_embeddings. top_cfg is NULL for per-layer-type ropes, which only take the
 * default. longrope without a factor then takes max_position_embeddings / that. */
static hc_status pretrained_context(hc_rope_config *r, const hc_json *top_cfg, bool phi3, int64_t max_pos,
                                    const char *src) {
    if (r->type != HC_ROPE_LLAMA3 && r->type != HC_ROPE_YARN && r->type != HC_ROPE_LONGROPE) return HC_OK;
    int64_t top = 0;
    if (top_cfg) TRY(get_int(top_cfg, "original_max_position_embeddings", phi3 ? 4096 : 0, &top, src));
    if (top) r->original_max_position_embeddings = top;
    else if (!r->original_max_position_embeddings) r->original_max_position_embeddings = max_pos;
    if (r->original_max_position_embeddings <= 0)
        return hc_fail(HC_ERR_FORMAT, "%s: original_max_position_embeddings must be positive", src);
    if (r->type == HC_ROPE_LONGROPE && r->factor == 0)
        r->factor = (double)max_pos / (double)r->original_max_position_embeddings;
    if (r->type == HC_ROPE_LONGROPE && r->factor > 1 && r->attention_factor == 0 && r->original_max_position_embeddings < 2)
        return hc_fail(HC_ERR_FORMAT, "%s: longrope's attention factor needs original_max_position_embeddings > 1", src);
    return HC_OK;
}

static hc_status parse_layer_types(hc_model_config *c, const hc_json *root, const char *src) {
    const hc_json *lt = hc_json_get(root, "layer_types");
    if (hc_json_is_null(lt)) return HC_OK;
    if (lt->type != HC_JSON_ARRAY || (int64_t)lt->len != c->n_layers)
        return hc_fail(HC_ERR_FORMAT, "%s: 'layer_types' must list one type for each of the %lld layers", src,
                       (long long)c->n_layers);
    for (size_t i = 0; i < lt->len; i++) {
        const hc_json *v = &lt->u.items[i];
        if (v->type != HC_JSON_STRING) return hc_fail(HC_ERR_FORMAT, "%s: layer_types[%zu] must be a string", src, i);
        if (!strcmp(v->u.str, "sliding_attention")) c->layer_sliding[i] = true;
        else if (!strcmp(v->u.str, "full_attention")) c->layer_sliding[i] = false;
        else
            return hc_fail(HC_ERR_UNSUPPORTED,
                           "%s: unsupported layer_types[%zu]='%s' (supported: full_attention, sliding_attention)", src,
                           i, v->u.str);
    }
    return HC_OK;
}

hc_status hc_config_parse(hc_model_config *c, const hc_json *root, const char *src) {
    memset(c, 0, sizeof *c);
    if (!root || root->type != HC_JSON_OBJECT) return hc_fail(HC_ERR_FORMAT, "%s: not a JSON object", src);
    const char *mt = hc_json_str(root, "model_type", NULL);
    if (!mt) return hc_fail(HC_ERR_FORMAT, "%s: no 'model_type'", src);
    const arch_defaults *d = NULL;
    const char *effective = mt;
    const hc_json *cfg = root;
    /* Multimodal checkpoints keep the language model's config in text_config: Gemma 3, Mistral
     * Small 3.1 and later (mistral3), and LLaVA-style ones (llava: Pixtral, LLaVA 1.5). hubcap
     * runs their language model on text. */
    /* Qwen2-VL, Qwen2.5-VL and Qwen3-VL: their language model is a Qwen2 (Qwen3), configured in
     * text_config or, in the Hub's older configs, at the top level beside vision_config. On text
     * alone their multimodal rope (mrope) rotates every section by the same position, which is the
     * default rope. */
    const bool qwen_vl = !strcmp(mt, "qwen2_vl") || !strcmp(mt, "qwen2_5_vl") || !strcmp(mt, "qwen3_vl");
    if (qwen_vl) {
        const hc_json *tc = hc_json_get(root, "text_config");
        if (!hc_json_is_null(tc) && tc->type != HC_JSON_OBJECT)
            return hc_fail(HC_ERR_FORMAT, "%s: 'text_config' must be an object", src);
        if (tc) cfg = tc;
        effective = !strcmp(mt, "qwen3_vl") ? "qwen3" : "qwen2";
    } else if (!strcmp(mt, "gemma3") || !strcmp(mt, "mistral3") || !strcmp(mt, "llava")) {
        cfg = hc_json_get(root, "text_config");
        if (!cfg || cfg->type != HC_JSON_OBJECT)
            return hc_fail(HC_ERR_FORMAT, "%s: %s config has no 'text_config'", src, mt);
        if (!strcmp(mt, "gemma3")) {
            effective = "gemma3_text";
        } else {
            const hc_json *tt = hc_json_get(cfg, "model_type");
            if (!hc_json_is_null(tt) && tt->type != HC_JSON_STRING)
                return hc_fail(HC_ERR_FORMAT, "%s: text_config.model_type must be a string", src);
            effective = tt && tt->type == HC_JSON_STRING ? tt->u.str : !strcmp(mt, "mistral3") ? "mistral" : "llama";
            if (strcmp(effective, "llama") && strcmp(effective, "mistral") && strcmp(effective, "qwen2"))
                return hc_fail(HC_ERR_UNSUPPORTED,
                               "%s: unsupported language model '%s' in a %s checkpoint (supported: llama, mistral, qwen2)",
                               src, effective, mt);
        }
    }
    for (size_t i = 0; i < sizeof defaults_table / sizeof defaults_table[0]; i++)
        if (!strcmp(defaults_table[i].model_type, effective)) d = &defaults_table[i];
    if (!d)
        return hc_fail(HC_ERR_UNSUPPORTED, "%s: unsupported architecture '%s' (supported: %s)", src, mt,
                       hc_supported_model_types());
    snprintf(c->model_type, sizeof c->model_type, "%s", mt);
    snprintf(c->text_model_type, sizeof c->text_model_type, "%s", effective);
    const hc_json *arch = hc_json_at(hc_json_get(root, "architectures"), 0);
    if (arch && arch->type == HC_JSON_STRING) snprintf(c->architecture, sizeof c->architecture, "%s", arch->u.str);
    const char *dt = hc_json_str(root, "dtype", NULL);
    if (!dt) dt = hc_json_str(root, "torch_dtype", "");
    if (!*dt && cfg != root) {
        dt = hc_json_str(cfg, "dtype", NULL);
        if (!dt) dt = hc_json_str(cfg, "torch_dtype", "");
    }
    snprintf(c->torch_dtype, sizeof c->torch_dtype, "%s", dt);

    const bool gpt2 = !strcmp(effective, "gpt2");
    const bool gemma = !strncmp(effective, "gemma", 5);
    TRY(get_int(cfg, "vocab_size", d->vocab, &c->vocab_size, src));
    TRY(get_int(cfg, gpt2 ? "n_embd" : "hidden_size", d->hidden, &c->hidden_size, src));
    TRY(get_int(cfg, gpt2 ? "n_layer" : "num_hidden_layers", d->layers, &c->n_layers, src));
    TRY(get_int(cfg, gpt2 ? "n_head" : "num_attention_heads", d->heads, &c->n_heads, src));
    TRY(get_int(cfg, gpt2 ? "n_positions" : "max_position_embeddings", d->max_pos, &c->max_position_embeddings, src));
    if (gpt2) TRY(get_int(cfg, "n_inner", 4 * c->hidden_size, &c->intermediate_size, src));
    else TRY(get_int(cfg, "intermediate_size", d->intermediate, &c->intermediate_size, src));
    if (c->hidden_size <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->vocab_size <= 0 || c->intermediate_size <= 0)
        return hc_fail(HC_ERR_FORMAT, "%s: sizes (hidden, layers, heads, vocab, intermediate) must be positive", src);
    if (c->max_position_embeddings <= 0)
        return hc_fail(HC_ERR_FORMAT, "%s: %s must be positive", src, gpt2 ? "n_positions" : "max_position_embeddings");
    if (c->n_layers > HC_MAX_LAYERS)
        return hc_fail(HC_ERR_UNSUPPORTED, "%s: %lld layers (hubcap supports up to %d)", src, (long long)c->n_layers,
                       HC_MAX_LAYERS);
    TRY(get_int(cfg, "num_key_value_heads", d->kv_heads ? d->kv_heads : c->n_heads, &c->n_kv_heads, src));
    if (gpt2) c->n_kv_heads = c->n_heads;
    if (c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads != 0)
        return hc_fail(HC_ERR_FORMAT, "%s: num_key_value_heads=%lld must divide num_attention_heads=%lld", src,
                       (long long)c->n_kv_heads, (long long)c->n_heads);
    TRY(get_int(cfg, "head_dim", d->head_dim ? d->head_dim : c->hidden_size / c->n_heads, &c->head_dim, src));
    if (gpt2) c->head_dim = c->hidden_size / c->n_heads;
    if (c->head_dim <= 0 || (gpt2 && c->hidden_size % c->n_heads))
        return hc_fail(HC_ERR_FORMAT, "%s: head_dim must be positive (hidden_size / heads)", src);
    const bool phi = !strcmp(effective, "phi");
    const bool starcoder2 = !strcmp(effective, "starcoder2");
    TRY(get_num(cfg, gpt2 ? "layer_norm_epsilon" : phi ? "layer_norm_eps" : starcoder2 ? "norm_epsilon" : "rms_norm_eps", d->eps,
                &c->norm_eps, src));

    const char *act = d->act;
    const char *act_key = gemma ? "hidden_activation" : gpt2 ? "activation_function" : "hidden_act";
    const hc_json *av = hc_json_get(cfg, act_key);
    if (av && av->type == HC_JSON_STRING) act = av->u.str;
    else if (!hc_json_is_null(av)) return hc_fail(HC_ERR_FORMAT, "%s: '%s' must be a string", src, act_key);
    TRY(parse_activation(act, act_key, &c->act, src));

    /* In a multimodal checkpoint the wrapper's own tie_word_embeddings, when it says one, decides
     * its LM head (transformers 5 ties a mistral3 head whose text_config says false) */
    TRY(get_bool(cfg, "tie_word_embeddings", d->tie, &c->tie_word_embeddings, src));
    if (cfg != root) TRY(get_bool(root, "tie_word_embeddings", c->tie_word_embeddings, &c->tie_word_embeddings, src));
    bool attention_bias;
    TRY(get_bool(cfg, "attention_bias", false, &attention_bias, src));
    TRY(get_bool(cfg, "mlp_bias", false, &c->mlp_bias, src));
    const bool qwen3 = !strcmp(effective, "qwen3") || !strcmp(effective, "qwen3_moe");
    const bool granite = !strcmp(effective, "granite") || !strcmp(effective, "granitemoe");
    const bool post_norm_blocks = !strcmp(effective, "olmo2") || !strcmp(effective, "olmo3") || !strcmp(effective, "exaone4");
    if (!strcmp(effective, "llama") || !strcmp(effective, "smollm3") || qwen3 || gemma || granite || post_norm_blocks) {
        c->qkv_bias = c->o_bias = attention_bias;
    } else if (!strcmp(effective, "qwen2") || !strcmp(effective, "qwen2_moe")) {
        c->qkv_bias = true; /* Qwen2 always has q/k/v biases and none on o_proj */
    } else if (gpt2 || phi) {
        c->qkv_bias = c->o_bias = c->mlp_bias = true;
    } else if (!strcmp(effective, "seed_oss")) { /* q/k/v biases by default; o's on its own switch */
        TRY(get_bool(cfg, "attention_bias", true, &c->qkv_bias, src));
        TRY(get_bool(cfg, "attention_out_bias", false, &c->o_bias, src));
    } else if (starcoder2) {
        bool use_bias;
        TRY(get_bool(cfg, "use_bias", true, &use_bias, src));
        c->qkv_bias = c->o_bias = c->mlp_bias = use_bias;
    }
    if (strcmp(effective, "llama") && strcmp(effective, "smollm3") && strcmp(effective, "seed_oss") && !granite && !gpt2 &&
        !phi && !starcoder2)
        c->mlp_bias = false;
    if (phi) {
        bool qk_layernorm;
        TRY(get_bool(cfg, "qk_layernorm", false, &qk_layernorm, src));
        if (qk_layernorm) return hc_fail(HC_ERR_UNSUPPORTED, "%s: phi with qk_layernorm is not supported", src);
    }

    /* Rope. */
    double partial = phi ? 0.5 : 1.0; /* PhiConfig's default */
    TRY(get_num(cfg, "partial_rotary_factor", partial, &partial, src));
    if (gpt2) {
        c->rope.type = HC_ROPE_NONE;
    } else {
        double theta;
        TRY(get_num(cfg, "rope_theta", d->rope_theta, &theta, src));
        const hc_json *rp = hc_json_get(cfg, "rope_parameters");
        const hc_json *rs = hc_json_get(cfg, "rope_scaling");
        if (!hc_json_is_null(rp) && rp->type == HC_JSON_OBJECT && hc_json_get(rp, "full_attention")) {
            /* v5 per-layer-type style: {"full_attention": {...}, "sliding_attention": {...}} */
            TRY(parse_rope(&c->rope, hc_json_get(rp, "full_attention"), theta, c->max_position_embeddings, qwen_vl, src,
                           "rope_parameters.full_attention"));
            const hc_json *sl = hc_json_get(rp, "sliding_attention");
            if (sl) {
                TRY(parse_rope(&c->rope_local, sl, theta, c->max_position_embeddings, qwen_vl, src,
                               "rope_parameters.sliding_attention"));
                c->has_rope_local = true;
            }
            TRY(get_num(hc_json_get(rp, "full_attention"), "partial_rotary_factor", partial, &partial, src));
            TRY(pretrained_context(&c->rope, NULL, false, c->max_position_embeddings, src));
            if (c->has_rope_local) TRY(pretrained_context(&c->rope_local, NULL, false, c->max_position_embeddings, src));
        } else {
            if (!hc_json_is_null(rp)) {
                TRY(parse_rope(&c->rope, rp, theta, c->max_position_embeddings, qwen_vl, src, "rope_parameters"));
                TRY(get_num(rp, "partial_rotary_factor", partial, &partial, src));
            } else {
                TRY(parse_rope(&c->rope, rs, theta, c->max_position_embeddings, qwen_vl, src, "rope_scaling"));
            }
            TRY(pretrained_context(&c->rope, cfg, !strcmp(effective, "phi3"), c->max_position_embeddings, src));
        }
        /* Gemma 3's sliding layers rotate with their own base; OLMo 3's take the plain rope, its
         * scaling (yarn) going to the full-attention layers alone, as transformers 5 reads it */
        const bool olmo3 = !strcmp(effective, "olmo3");
        if ((!strcmp(effective, "gemma3_text") || olmo3) && !c->has_rope_local) {
            double local;
            TRY(get_num(cfg, "rope_local_base_freq", olmo3 ? theta : 10000.0, &local, src));
            TRY(parse_rope(&c->rope_local, NULL, local, c->max_position_embeddings, qwen_vl, src, "rope_local_base_freq"));
            c->has_rope_local = true;
        }
    }
    if (!(partial > 0 && partial <= 1)) return hc_fail(HC_ERR_FORMAT, "%s: partial_rotary_factor must be in (0, 1]", src);
    c->rotary_dim = (int64_t)(c->head_dim * partial);
    if (c->rope.type != HC_ROPE_NONE && (c->rotary_dim < 2 || c->rotary_dim % 2))
        return hc_fail(HC_ERR_FORMAT, "%s: rotary dimension %lld (head_dim x partial_rotary_factor) must be even", src,
                       (long long)c->rotary_dim);
    for (int i = 0; i < (c->has_rope_local ? 2 : 1); i++) {
        const hc_rope_config *r = i ? &c->rope_local : &c->rope;
        if (r->type == HC_ROPE_LONGROPE && r->n_factors != c->rotary_dim / 2)
            return hc_fail(HC_ERR_FORMAT, "%s: longrope has %d factors, but the rotary dimension %lld needs %lld", src,
                           r->n_factors, (long long)c->rotary_dim, (long long)(c->rotary_dim / 2));
    }

    /* Sliding windows. */
    int64_t window;
    TRY(get_int(cfg, "sliding_window", d->sliding_window, &window, src));
    /* an explicit null is no window (Mistral 7B v0.2 and later, Mistral Nemo); only a missing key
     * takes the config class's default */
    const hc_json *wv = hc_json_get(cfg, "sliding_window");
    if (wv && wv->type == HC_JSON_NULL) window = 0;
    if (!strcmp(effective, "llama") || !strcmp(effective, "gemma") || granite ||
        !strcmp(effective, "seed_oss") ||
        !strcmp(effective, "olmo2") || gpt2 || phi)
        window = 0;
    if (!strcmp(effective, "qwen2") || !strcmp(effective, "qwen2_moe") || qwen3) {
        bool use;
        int64_t max_window_layers;
        TRY(get_bool(cfg, "use_sliding_window", false, &use, src));
        TRY(get_int(cfg, "max_window_layers", 28, &max_window_layers, src));
        if (!use) window = 0;
        for (int64_t i = 0; i < c->n_layers; i++) c->layer_sliding[i] = window > 0 && i >= max_window_layers;
    } else if (!strcmp(effective, "smollm3")) {
        /* SmolLM3Config: every no_rope_layer_interval-th layer leaves rope out (no_rope_layers[i]
         * == 0), and with use_sliding_window only those take the window */
        bool use;
        int64_t interval;
        TRY(get_bool(cfg, "use_sliding_window", false, &use, src));
        TRY(get_int(cfg, "no_rope_layer_interval", 4, &interval, src));
        if (interval <= 0) return hc_fail(HC_ERR_FORMAT, "%s: no_rope_layer_interval must be positive", src);
        const hc_json *nr = hc_json_get(cfg, "no_rope_layers");
        if (!hc_json_is_null(nr) && (nr->type != HC_JSON_ARRAY || (int64_t)nr->len < c->n_layers))
            return hc_fail(HC_ERR_FORMAT, "%s: 'no_rope_layers' must list 0 or 1 for each of the %lld layers", src,
                           (long long)c->n_layers);
        for (int64_t i = 0; i < c->n_layers; i++) {
            bool roped = (i + 1) % interval != 0;
            if (!hc_json_is_null(nr)) {
                const hc_json *v = hc_json_at(nr, (size_t)i);
                if (v->type != HC_JSON_NUMBER || (v->u.num.d != 0 && v->u.num.d != 1))
                    return hc_fail(HC_ERR_FORMAT, "%s: no_rope_layers[%lld] must be 0 or 1", src, (long long)i);
                roped = v->u.num.d == 1;
            }
            c->layer_nope[i] = !roped;
            c->layer_sliding[i] = use && window > 0 && !roped;
        }
        if (!use) window = 0;
    } else if (!strcmp(effective, "gemma2")) {
        for (int64_t i = 0; i < c->n_layers; i++) c->layer_sliding[i] = (i + 1) % 2 != 0;
    } else if (!strcmp(effective, "olmo3")) { /* Olmo3Config: three sliding layers, then a full one */
        for (int64_t i = 0; i < c->n_layers; i++) c->layer_sliding[i] = (i + 1) % 4 != 0;
    } else if (!strcmp(effective, "exaone4")) {
        /* Exaone4Config: sliding_window_pattern 4 (three sliding layers, a full one), or as a
         * string of L (local) and G (global) repeated, "LLLG" */
        const hc_json *pv = hc_json_get(cfg, "sliding_window_pattern");
        if (pv && pv->type == HC_JSON_STRING) {
            if (!pv->len || strspn(pv->u.str, "LG") != pv->len)
                return hc_fail(HC_ERR_FORMAT, "%s: sliding_window_pattern '%s' must be L and G letters", src, pv->u.str);
            for (int64_t i = 0; i < c->n_layers; i++) c->layer_sliding[i] = pv->u.str[i % (int64_t)pv->len] == 'L';
        } else if (window > 0) { /* without a window the pattern is moot (Exaone4Config sets it to 0) */
            int64_t pattern;
            TRY(get_int(cfg, "sliding_window_pattern", 4, &pattern, src));
            if (pattern <= 0) return hc_fail(HC_ERR_FORMAT, "%s: sliding_window_pattern must be positive", src);
            for (int64_t i = 0; i < c->n_layers; i++) c->layer_sliding[i] = (i + 1) % pattern != 0;
        }
    } else if (!strcmp(effective, "gemma3_text")) {
        int64_t pattern;
        TRY(get_int(cfg, "sliding_window_pattern", 6, &pattern, src));
        TRY(get_int(cfg, "_sliding_window_pattern", pattern, &pattern, src));
        if (pattern <= 0) return hc_fail(HC_ERR_FORMAT, "%s: sliding_window_pattern must be positive", src);
        for (int64_t i = 0; i < c->n_layers; i++) c->layer_sliding[i] = (i + 1) % pattern != 0;
    } else {
        for (int64_t i = 0; i < c->n_layers; i++) c->layer_sliding[i] = window > 0;
    }
    if (!gpt2 && strcmp(effective, "llama") && strcmp(effective, "gemma")) TRY(parse_layer_types(c, cfg, src));
    if (window < 0) return hc_fail(HC_ERR_FORMAT, "%s: sliding_window must be positive", src);
    c->sliding_window = window;
    if (!window)
        for (int64_t i = 0; i < c->n_layers; i++) c->layer_sliding[i] = false;
    if (!strcmp(effective, "exaone4")) /* with windows, the global layers go without rope (NoPE) */
        for (int64_t i = 0; i < c->n_layers; i++) c->layer_nope[i] = window > 0 && !c->layer_sliding[i];

    /* Gemma 2/3 quirks. */
    if (!strcmp(effective, "gemma2") || !strcmp(effective, "gemma3_text")) {
        bool g2 = !strcmp(effective, "gemma2");
        TRY(get_num(cfg, "attn_logit_softcapping", g2 ? 50.0 : 0.0, &c->attn_softcap, src));
        TRY(get_num(cfg, "final_logit_softcapping", g2 ? 30.0 : 0.0, &c->final_softcap, src));
        TRY(get_num(cfg, "query_pre_attn_scalar", 256.0, &c->query_pre_attn_scalar, src));
        if (!(c->query_pre_attn_scalar > 0)) return hc_fail(HC_ERR_FORMAT, "%s: query_pre_attn_scalar must be positive", src);
        if (c->attn_softcap < 0 || c->final_softcap < 0)
            return hc_fail(HC_ERR_FORMAT, "%s: soft-capping values must be positive", src);
    }

    /* Mixture of experts. */
    if (!strcmp(effective, "mixtral") || !strcmp(effective, "granitemoe")) { /* both: softmax over the top-k */
        TRY(get_int(cfg, "num_local_experts", 8, &c->n_experts, src));
        TRY(get_int(cfg, "num_experts_per_tok", 2, &c->n_experts_per_tok, src));
        c->norm_topk_prob = true;
        if (c->n_experts <= 0 || c->n_experts_per_tok <= 0 || c->n_experts_per_tok > c->n_experts)
            return hc_fail(HC_ERR_FORMAT, "%s: need 0 < num_experts_per_tok <= num_local_experts", src);
    } else if (!strcmp(effective, "qwen3_moe") || !strcmp(effective, "qwen2_moe")) {
        /* Every layer's MLP is a set of experts of moe_intermediate_size; the router's weights are
         * renormalized over the chosen ones only with norm_topk_prob. Qwen2-MoE adds a shared
         * expert every token takes, scaled by sigmoid(shared_expert_gate . h). */
        const bool q2 = !strcmp(effective, "qwen2_moe");
        int64_t moe_size, sparse_step;
        TRY(get_int(cfg, "num_local_experts", q2 ? 60 : 128, &c->n_experts, src)); /* what transformers 5 writes */
        TRY(get_int(cfg, "num_experts", c->n_experts, &c->n_experts, src));      /* what the Hub's configs say */
        TRY(get_int(cfg, "num_experts_per_tok", q2 ? 4 : 8, &c->n_experts_per_tok, src));
        TRY(get_bool(cfg, "norm_topk_prob", false, &c->norm_topk_prob, src));
        TRY(get_int(cfg, "moe_intermediate_size", q2 ? 1408 : 768, &moe_size, src));
        if (q2) {
            TRY(get_int(cfg, "shared_expert_intermediate_size", 5632, &c->shared_intermediate_size, src));
            if (c->shared_intermediate_size <= 0)
                return hc_fail(HC_ERR_FORMAT, "%s: shared_expert_intermediate_size must be positive", src);
        }
        TRY(get_int(cfg, "decoder_sparse_step", 1, &sparse_step, src));
        if (c->n_experts <= 0 || c->n_experts_per_tok <= 0 || c->n_experts_per_tok > c->n_experts)
            return hc_fail(HC_ERR_FORMAT, "%s: need 0 < num_experts_per_tok <= num_experts", src);
        if (moe_size <= 0) return hc_fail(HC_ERR_FORMAT, "%s: moe_intermediate_size must be positive", src);
        const hc_json *dense = hc_json_get(cfg, "mlp_only_layers");
        if (sparse_step != 1 || (!hc_json_is_null(dense) && !(dense->type == HC_JSON_ARRAY && dense->len == 0)))
            return hc_fail(HC_ERR_UNSUPPORTED,
                           "%s: dense MLP layers among the experts (mlp_only_layers, decoder_sparse_step != 1) "
                           "are not supported",
                           src);
        c->intermediate_size = moe_size;
    }

    /* Granite's multipliers (muP); 1 (and an attention scale of 1/sqrt(head_dim)) elsewhere. */
    c->embedding_multiplier = c->residual_multiplier = c->logits_scaling = 1.0;
    c->attention_multiplier = 0;
    if (granite) {
        TRY(get_num(cfg, "embedding_multiplier", 1.0, &c->embedding_multiplier, src));
        TRY(get_num(cfg, "residual_multiplier", 1.0, &c->residual_multiplier, src));
        TRY(get_num(cfg, "attention_multiplier", 1.0, &c->attention_multiplier, src));
        TRY(get_num(cfg, "logits_scaling", 1.0, &c->logits_scaling, src));
        if (!(c->attention_multiplier > 0) || !(c->logits_scaling > 0) || !isfinite(c->embedding_multiplier) ||
            !isfinite(c->residual_multiplier) || !isfinite(c->attention_multiplier) || !isfinite(c->logits_scaling))
            return hc_fail(HC_ERR_FORMAT, "%s: attention_multiplier and logits_scaling must be positive, and every "
                                          "multiplier finite", src);
    }

    c->scale_attn_weights = true;
    if (gpt2) {
        TRY(get_bool(cfg, "scale_attn_weights", true, &c->scale_attn_weights, src));
        TRY(get_bool(cfg, "scale_attn_by_inverse_layer_idx", false, &c->scale_attn_by_inverse_layer_idx, src));
    }

    /* Token ids from config.json; generation_config.json overrides them. */
    c->bos_token_id = c->pad_token_id = -1;
    c->gen_temperature = c->gen_top_p = c->gen_repetition_penalty = -1;
    c->gen_top_k = c->gen_max_new_tokens = -1;
    c->gen_do_sample = -1;
    return hc_generation_config_parse(c, cfg, src);
}

static hc_status get_id_list(const hc_json *obj, const char *key, hc_model_config *c, const char *src) {
    const hc_json *v = hc_json_get(obj, key);
    if (hc_json_is_null(v)) return HC_OK;
    if (v->type == HC_JSON_NUMBER && v->is_int) {
        c->eos_token_ids[0] = v->u.num.i;
        c->n_eos = 1;
        return HC_OK;
    }
    if (v->type != HC_JSON_ARRAY) return hc_fail(HC_ERR_FORMAT, "%s: '%s' must be an integer or a list", src, key);
    if (v->len > sizeof c->eos_token_ids / sizeof c->eos_token_ids[0])
        return hc_fail(HC_ERR_UNSUPPORTED, "%s: more than 8 eos_token_id values", src);
    for (size_t i = 0; i < v->len; i++) {
        if (v->u.items[i].type != HC_JSON_NUMBER || !v->u.items[i].is_int)
            return hc_fail(HC_ERR_FORMAT, "%s: '%s' entries must be integers", src, key);
        c->eos_token_ids[i] = v->u.items[i].u.num.i;
    }
    c->n_eos = (int)v->len;
    return HC_OK;
}

hc_status hc_generation_config_parse(hc_model_config *c, const hc_json *root, const char *src) {
    if (!root || root->type != HC_JSON_OBJECT) return hc_fail(HC_ERR_FORMAT, "%s: not a JSON object", src);
    TRY(get_int(root, "bos_token_id", c->bos_token_id, &c->bos_token_id, src));
    TRY(get_int(root, "pad_token_id", c->pad_token_id, &c->pad_token_id, src));
    TRY(get_id_list(root, "eos_token_id", c, src));
    TRY(get_num(root, "temperature", c->gen_temperature, &c->gen_temperature, src));
    TRY(get_num(root, "top_p", c->gen_top_p, &c->gen_top_p, src));
    TRY(get_num(root, "repetition_penalty", c->gen_repetition_penalty, &c->gen_repetition_penalty, src));
    TRY(get_int(root, "top_k", c->gen_top_k, &c->gen_top_k, src));
    TRY(get_int(root, "max_new_tokens", c->gen_max_new_tokens, &c->gen_max_new_tokens, src));
    /* A value out of range is an error, as transformers raises when it generates with it; read as
     * absent (the -1 these fields use for that), it would quietly sample with the defaults. */
    static const struct {
        const char *key;
        double lo, hi;
        bool open_lo; /* lo itself excluded */
        const char *allowed;
    } ranges[] = {{"temperature", 0, INFINITY, false, ">= 0"},
                  {"top_p", 0, 1, true, "in (0, 1]"},
                  {"repetition_penalty", 0, INFINITY, true, "> 0"},
                  {"top_k", 0, INFINITY, false, ">= 0"},
                  {"max_new_tokens", 0, INFINITY, false, ">= 0"}};
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
        const hc_json *x = hc_json_get(root, ranges[i].key);
        if (hc_json_is_null(x)) continue;
        const double d = x->u.num.d;
        if (!(ranges[i].open_lo ? d > ranges[i].lo : d >= ranges[i].lo) || !(d <= ranges[i].hi))
            return hc_fail(HC_ERR_FORMAT, "%s: %s must be %s (got %g)", src, ranges[i].key, ranges[i].allowed, d);
    }
    bool ds;
    const hc_json *v = hc_json_get(root, "do_sample");
    if (!hc_json_is_null(v)) {
        TRY(get_bool(root, "do_sample", false, &ds, src));
        c->gen_do_sample = ds;
    }
    return HC_OK;
}
