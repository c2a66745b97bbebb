/* config.json -> hc_model_config: every fixture, transformers' defaults, both rope styles,
 * and the refusals. */
#include "format/json.h"
#include "hubcap.h"
#include "model/config.h"
#include "test_util.h"

static hc_status parse_cfg(hc_model_config *c, const char *text) {
    hc_json_doc d;
    hc_status s = hc_json_parse(&d, text, strlen(text), "config.json");
    if (s) return s;
    s = hc_config_parse(c, d.root, "config.json");
    hc_json_free(&d);
    return s;
}

static int64_t json_int(const hc_json *o, const char *k, int64_t dflt) {
    const hc_json *v = hc_json_get(o, k);
    return (v && v->type == HC_JSON_NUMBER) ? v->u.num.i : dflt;
}

/* The typed config agrees with config.json on every key the fixture states. */
static void test_fixtures(void) {
    static const char *names[] = {"llama2", "llama3_2", "llama3_v5", "llama_sharded", "mistral", "qwen2", "qwen3",
                                  "gemma", "gemma2", "gemma3", "phi3", "mixtral", "gpt2"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/tests/fixtures/models/%s", test_source_dir(), names[i]);
        hc_checkpoint *ck;
        CHECK_OK(hc_checkpoint_open(path, NULL, &ck));
        if (!ck) continue;
        const hc_model_config *c = hc_checkpoint_config(ck);
        snprintf(path, sizeof path, "%s/tests/fixtures/models/%s/config.json", test_source_dir(), names[i]);
        hc_json_doc d;
        CHECK_OK(hc_json_parse_file(&d, path));
        const hc_json *j = d.root;
        const bool gpt2 = !strcmp(names[i], "gpt2");
        CHECK(c->hidden_size == json_int(j, gpt2 ? "n_embd" : "hidden_size", -1), "%s hidden", names[i]);
        CHECK(c->n_layers == json_int(j, gpt2 ? "n_layer" : "num_hidden_layers", -1), "%s layers", names[i]);
        CHECK(c->n_heads == json_int(j, gpt2 ? "n_head" : "num_attention_heads", -1), "%s heads", names[i]);
        CHECK(c->vocab_size == json_int(j, "vocab_size", -1), "%s vocab", names[i]);
        CHECK(c->max_position_embeddings == json_int(j, gpt2 ? "n_positions" : "max_position_embeddings", -1),
              "%s context", names[i]);
        if (!gpt2) {
            CHECK(c->n_kv_heads == json_int(j, "num_key_value_heads", -1), "%s kv heads", names[i]);
            CHECK(c->intermediate_size == json_int(j, "intermediate_size", -1), "%s intermediate", names[i]);
            int64_t hd = json_int(j, "head_dim", c->hidden_size / c->n_heads);
            CHECK(c->head_dim == hd, "%s head_dim %lld vs %lld", names[i], (long long)c->head_dim, (long long)hd);
        } else {
            CHECK(c->intermediate_size == 4 * c->hidden_size, "gpt2 n_inner null -> 4 * n_embd");
            CHECK(c->rope.type == HC_ROPE_NONE, "gpt2 learned positions");
        }
        const hc_json *tie = hc_json_get(j, "tie_word_embeddings");
        if (tie) CHECK(c->tie_word_embeddings == tie->u.b, "%s tie", names[i]);
        CHECK(c->n_eos == 1 && c->eos_token_ids[0] == 2 && c->bos_token_id == 1, "%s generation ids", names[i]);
        hc_json_free(&d);
        hc_checkpoint_free(ck);
    }
}

static void test_rope_styles(void) {
    hc_model_config a, b;
    char p1[512], p2[512];
    snprintf(p1, sizeof p1, "%s/tests/fixtures/models/llama3_2", test_source_dir());
    snprintf(p2, sizeof p2, "%s/tests/fixtures/models/llama3_v5", test_source_dir());
    hc_checkpoint *c1, *c2;
    CHECK_OK(hc_checkpoint_open(p1, NULL, &c1));
    CHECK_OK(hc_checkpoint_open(p2, NULL, &c2));
    if (!c1 || !c2) return;
    a = *hc_checkpoint_config(c1);
    b = *hc_checkpoint_config(c2);
    CHECK(a.rope.type == HC_ROPE_LLAMA3 && b.rope.type == HC_ROPE_LLAMA3, "both llama3");
    CHECK(a.rope.theta == 500000.0 && b.rope.theta == 500000.0, "theta from rope_theta and rope_parameters");
    CHECK(a.rope.factor == 8 && b.rope.factor == 8 && a.rope.original_max_position_embeddings == 64 &&
              b.rope.original_max_position_embeddings == 64 && a.rope.high_freq_factor == 4 &&
              b.rope.low_freq_factor == 1,
          "same llama3 parameters");
    hc_checkpoint_free(c1);
    hc_checkpoint_free(c2);

    hc_model_config c;
    /* Gemma 3 multimodal config with the v5 per-layer-type rope_parameters. */
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"gemma3\",\"text_config\":{\"hidden_size\":64,\"num_hidden_layers\":6,"
                           "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":16,\"vocab_size\":100,"
                           "\"rope_parameters\":{\"full_attention\":{\"rope_type\":\"linear\",\"factor\":8.0,"
                           "\"rope_theta\":1000000.0},\"sliding_attention\":{\"rope_type\":\"default\","
                           "\"rope_theta\":10000.0}}}}"));
    CHECK(c.rope.type == HC_ROPE_LINEAR && c.rope.theta == 1e6 && c.rope.factor == 8, "global rope");
    CHECK(c.has_rope_local && c.rope_local.type == HC_ROPE_DEFAULT && c.rope_local.theta == 10000, "local rope");
    CHECK(c.layer_sliding[0] && c.layer_sliding[4] && !c.layer_sliding[5], "pattern 6: every 6th layer is global");
    CHECK(c.sliding_window == 4096 && c.query_pre_attn_scalar == 256, "gemma3 defaults");
    /* Legacy "type" key, yarn. */
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"qwen2\",\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4.0,"
                           "\"original_max_position_embeddings\":32768}}"));
    CHECK(c.rope.type == HC_ROPE_YARN && c.rope.factor == 4 && c.rope.original_max_position_embeddings == 32768,
          "yarn via legacy 'type'");
    CHECK(c.qkv_bias && !c.o_bias, "qwen2: q/k/v bias only");
    /* multimodal checkpoints: the language model's config from text_config */
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"mistral3\",\"text_config\":{\"model_type\":\"mistral\",\"hidden_size\":128,"
                           "\"num_attention_heads\":8,\"tie_word_embeddings\":false}}"));
    CHECK(!strcmp(c.model_type, "mistral3") && !strcmp(c.text_model_type, "mistral") && c.hidden_size == 128 &&
              !c.tie_word_embeddings && c.sliding_window == 4096 && c.n_kv_heads == 8,
          "mistral3: a Mistral with its defaults");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"llava\",\"tie_word_embeddings\":true,\"text_config\":{\"hidden_size\":64,"
                           "\"num_attention_heads\":4,\"tie_word_embeddings\":false}}"));
    CHECK(!strcmp(c.text_model_type, "llama") && c.tie_word_embeddings, "llava: Llama by default; the wrapper's tie decides");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"qwen3\"}"));
    CHECK(!strcmp(c.text_model_type, "qwen3"), "text_model_type of a plain checkpoint");
    /* Qwen3-MoE as the Hub writes it (num_experts) and as transformers 5 does (num_local_experts) */
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"qwen3_moe\",\"num_experts\":128,\"num_experts_per_tok\":8,"
                           "\"moe_intermediate_size\":768,\"intermediate_size\":6144,\"norm_topk_prob\":true,"
                           "\"mlp_only_layers\":[],\"decoder_sparse_step\":1}"));
    CHECK(c.n_experts == 128 && c.n_experts_per_tok == 8 && c.intermediate_size == 768 && c.norm_topk_prob &&
              c.head_dim == 64 && c.n_kv_heads == 4 && c.sliding_window == 0,
          "qwen3_moe, Hub style");
    /* SmolLM3: rope left out of every 4th layer, or as no_rope_layers says */
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"smollm3\",\"num_hidden_layers\":8}"));
    CHECK(!c.layer_nope[0] && !c.layer_nope[2] && c.layer_nope[3] && c.layer_nope[7] && !c.layer_nope[4] &&
              c.rope.theta == 2e6 && c.tie_word_embeddings && c.sliding_window == 0,
          "smollm3 defaults");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"smollm3\",\"num_hidden_layers\":3,\"no_rope_layers\":[0,1,1],"
                           "\"use_sliding_window\":true,\"sliding_window\":16}"));
    CHECK(c.layer_nope[0] && !c.layer_nope[1] && c.layer_sliding[0] && !c.layer_sliding[1] && c.sliding_window == 16,
          "smollm3: no_rope_layers given; only rope-less layers slide");
    /* Granite's multipliers; 1 (and the usual attention scale) for every other family */
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"granite\",\"embedding_multiplier\":12.0,\"residual_multiplier\":0.22,"
                           "\"attention_multiplier\":0.015625,\"logits_scaling\":8,\"mlp_bias\":true}"));
    CHECK(c.embedding_multiplier == 12.0 && c.residual_multiplier == 0.22 && c.attention_multiplier == 0.015625 &&
              c.logits_scaling == 8.0 && c.mlp_bias && c.norm_eps == 1e-6 && c.sliding_window == 0,
          "granite multipliers");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"granite\"}"));
    CHECK(c.embedding_multiplier == 1.0 && c.attention_multiplier == 1.0 && c.logits_scaling == 1.0, "granite defaults");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"llama\",\"embedding_multiplier\":12.0,\"logits_scaling\":8}"));
    CHECK(c.embedding_multiplier == 1.0 && c.attention_multiplier == 0 && c.logits_scaling == 1.0,
          "multipliers are Granite's alone");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"olmo2\",\"attention_bias\":true}"));
    CHECK(c.vocab_size == 50304 && c.norm_eps == 1e-5 && c.qkv_bias && c.o_bias && !c.mlp_bias && !c.tie_word_embeddings,
          "olmo2 defaults");
    /* Qwen-VL language models: the Hub's top-level keys with rope_scaling mrope, or text_config */
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"qwen2_5_vl\",\"hidden_size\":2048,\"num_attention_heads\":16,"
                           "\"num_key_value_heads\":2,\"rope_scaling\":{\"type\":\"mrope\",\"mrope_section\":[16,24,24]},\"rope_theta\":1e6,"
                           "\"vision_config\":{\"depth\":32}}"));
    CHECK(!strcmp(c.text_model_type, "qwen2") && c.rope.type == HC_ROPE_DEFAULT && c.rope.theta == 1e6 && c.qkv_bias &&
              c.head_dim == 128,
          "qwen2_5_vl, Hub layout");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"qwen3_vl\",\"tie_word_embeddings\":false,\"text_config\":{"
                           "\"model_type\":\"qwen3_vl_text\",\"hidden_size\":2560,\"head_dim\":128,\"tie_word_embeddings\":true,"
                           "\"rope_scaling\":{\"rope_type\":\"default\",\"mrope_interleaved\":true,\"mrope_section\":[24,20,20]},"
                           "\"rope_theta\":5000000}}"));
    CHECK(!strcmp(c.text_model_type, "qwen3") && c.hidden_size == 2560 && c.rope.theta == 5e6 && !c.qkv_bias &&
              !c.tie_word_embeddings,
          "qwen3_vl, text_config (the wrapper's tie_word_embeddings wins)");
    /* OLMo 3: windows on three layers of four; yarn on the full layers, the plain rope on the others */
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"olmo3\",\"num_hidden_layers\":8,\"rope_theta\":500000,"
                           "\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":8,\"original_max_position_embeddings\":8192},"
                           "\"max_position_embeddings\":65536}"));
    CHECK(c.sliding_window == 4096 && c.layer_sliding[0] && c.layer_sliding[2] && !c.layer_sliding[3] && !c.layer_sliding[7] &&
              c.rope.type == HC_ROPE_YARN && c.has_rope_local && c.rope_local.type == HC_ROPE_DEFAULT &&
              c.rope_local.theta == 500000,
          "olmo3 defaults, yarn on full layers");
    /* sliding_window: null is none (Mistral 7B v0.2 and later); a missing key the class default */
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"mistral\",\"sliding_window\":null}"));
    CHECK(c.sliding_window == 0 && !c.layer_sliding[0], "mistral: sliding_window null");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"mistral\"}"));
    CHECK(c.sliding_window == 4096 && c.layer_sliding[0], "mistral: MistralConfig's window");
    /* EXAONE 4: windows by an L/G pattern, no rope on the global layers; none without a window */
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"exaone4\",\"num_hidden_layers\":6,\"sliding_window\":4096,"
                           "\"sliding_window_pattern\":\"LLG\"}"));
    CHECK(c.layer_sliding[0] && c.layer_sliding[1] && !c.layer_sliding[2] && c.layer_sliding[3] && !c.layer_sliding[5] &&
              !c.layer_nope[0] && c.layer_nope[2] && c.layer_nope[5] && c.n_kv_heads == 32,
          "exaone4: LLG");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"exaone4\",\"num_hidden_layers\":4,\"sliding_window\":null,"
                           "\"sliding_window_pattern\":0}"));
    CHECK(c.sliding_window == 0 && !c.layer_sliding[0] && !c.layer_nope[3], "exaone4 without a window: rope everywhere");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"starcoder2\",\"norm_epsilon\":1e-3,\"sliding_window\":4096}"));
    CHECK(c.norm_eps == 1e-3 && c.qkv_bias && c.o_bias && c.mlp_bias && c.act == HC_ACT_GELU_TANH && c.tie_word_embeddings &&
              c.sliding_window == 4096 && c.layer_sliding[29],
          "starcoder2 defaults");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"starcoder2\",\"use_bias\":false}"));
    CHECK(!c.qkv_bias && !c.o_bias && !c.mlp_bias && c.sliding_window == 0, "starcoder2 without biases");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"granitemoe\",\"num_local_experts\":40,\"num_experts_per_tok\":8,"
                           "\"intermediate_size\":512,\"residual_multiplier\":0.22,\"logits_scaling\":6}"));
    CHECK(c.n_experts == 40 && c.n_experts_per_tok == 8 && c.norm_topk_prob && c.intermediate_size == 512 &&
              c.residual_multiplier == 0.22 && c.logits_scaling == 6.0,
          "granitemoe: experts and multipliers");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"seed_oss\"}"));
    CHECK(c.qkv_bias && !c.o_bias && !c.mlp_bias && c.head_dim == 128 && c.rope.theta == 1e7 && c.sliding_window == 0,
          "seed_oss defaults");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"seed_oss\",\"attention_bias\":false,\"attention_out_bias\":true,\"mlp_bias\":true}"));
    CHECK(!c.qkv_bias && c.o_bias && c.mlp_bias, "seed_oss biases");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"qwen2_moe\"}"));
    CHECK(c.n_experts == 60 && c.n_experts_per_tok == 4 && c.intermediate_size == 1408 &&
              c.shared_intermediate_size == 5632 && c.qkv_bias && !c.norm_topk_prob,
          "qwen2_moe defaults (Qwen1.5-MoE-A2.7B)");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"qwen3_moe\",\"num_local_experts\":6,\"num_experts_per_tok\":3}"));
    CHECK(c.n_experts == 6 && c.n_experts_per_tok == 3 && !c.norm_topk_prob, "qwen3_moe, transformers 5 style");

    /* longrope as Phi-3.5-mini carries it: original_max_position_embeddings at the top level,
     * the factor from max_position_embeddings / it, one factor per rotary frequency. */
#define PHI_DIMS "\"model_type\":\"phi3\",\"hidden_size\":64,\"num_attention_heads\":4,\"max_position_embeddings\":131072,"
#define EIGHT_SHORT "\"short_factor\":[1,1.01,1.02,1.03,1.04,1.05,1.06,1.07]"
#define EIGHT_LONG "\"long_factor\":[1,2,3,4,5,6,7,8]"
    CHECK_OK(parse_cfg(&c, "{" PHI_DIMS "\"original_max_position_embeddings\":4096,\"rope_scaling\":{\"type\":"
                           "\"longrope\"," EIGHT_SHORT "," EIGHT_LONG "}}"));
    CHECK(c.rope.type == HC_ROPE_LONGROPE && c.rope.original_max_position_embeddings == 4096 && c.rope.factor == 32 &&
              c.rope.n_factors == 8 && c.rope.short_factor[7] == 1.07f && c.rope.long_factor[7] == 8.0f &&
              c.rope.attention_factor == 0,
          "longrope, Phi-3.5 style");
    /* Phi3Config defaults original_max_position_embeddings to 4096; "su" is longrope's old name */
    CHECK_OK(parse_cfg(&c, "{" PHI_DIMS "\"rope_scaling\":{\"type\":\"su\"," EIGHT_SHORT "," EIGHT_LONG "}}"));
    CHECK(c.rope.type == HC_ROPE_LONGROPE && c.rope.original_max_position_embeddings == 4096, "phi3 'su', default 4096");
    CHECK_OK(parse_cfg(&c, "{" PHI_DIMS "\"rope_scaling\":{\"type\":\"longrope\",\"factor\":null," EIGHT_SHORT "," EIGHT_LONG "}}"));
    CHECK(c.rope.factor == 32, "longrope: a null factor is derived");
    /* elsewhere: the rope's own original_max_position_embeddings and factor; a top-level one wins */
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"llama\",\"hidden_size\":64,\"num_attention_heads\":4,"
                           "\"max_position_embeddings\":64,\"rope_scaling\":{\"rope_type\":\"longrope\",\"factor\":3,"
                           "\"attention_factor\":1.5,\"original_max_position_embeddings\":16," EIGHT_SHORT "," EIGHT_LONG "}}"));
    CHECK(c.rope.original_max_position_embeddings == 16 && c.rope.factor == 3 && c.rope.attention_factor == 1.5,
          "longrope's own parameters");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"qwen2\",\"original_max_position_embeddings\":8,\"max_position_embeddings\":64,"
                           "\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4.0,\"original_max_position_embeddings\":16}}"));
    CHECK(c.rope.original_max_position_embeddings == 8, "a top-level original_max_position_embeddings wins (transformers)");
    /* llama3 without one: max_position_embeddings, as transformers standardizes it */
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"llama\",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8}}"));
    CHECK(c.rope.type == HC_ROPE_LLAMA3 && c.rope.original_max_position_embeddings == 2048, "llama3 default context");
    /* dynamic NTK measures from max_position_embeddings whatever the rope says (transformers) */
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"llama\",\"max_position_embeddings\":64,\"rope_scaling\":{\"type\":"
                           "\"dynamic\",\"factor\":2,\"original_max_position_embeddings\":16}}"));
    CHECK(c.rope.type == HC_ROPE_DYNAMIC && c.rope.original_max_position_embeddings == 64, "dynamic: max_position_embeddings");
}

static void test_defaults(void) {
    hc_model_config c;
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"llama\"}"));
    CHECK(c.hidden_size == 4096 && c.n_layers == 32 && c.n_kv_heads == 32 && c.head_dim == 128 &&
              c.vocab_size == 32000 && c.norm_eps == 1e-6 && c.rope.theta == 10000 && !c.tie_word_embeddings &&
              c.act == HC_ACT_SILU && c.max_position_embeddings == 2048,
          "llama defaults");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"mistral\",\"num_key_value_heads\":null}"));
    CHECK(c.n_kv_heads == 8 && c.sliding_window == 4096 && c.layer_sliding[0], "mistral defaults");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"gemma\",\"hidden_act\":\"gelu\"}"));
    CHECK(c.act == HC_ACT_GELU_TANH && c.head_dim == 256 && c.tie_word_embeddings, "gemma ignores hidden_act");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"gemma2\",\"num_hidden_layers\":4}"));
    CHECK(c.layer_sliding[0] && !c.layer_sliding[1] && c.attn_softcap == 50 && c.final_softcap == 30,
          "gemma2 alternates, soft-caps");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"phi3\",\"partial_rotary_factor\":0.5,\"hidden_size\":256,"
                           "\"num_attention_heads\":4}"));
    CHECK(c.head_dim == 64 && c.rotary_dim == 32, "phi3 partial rotary");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"qwen3\",\"use_sliding_window\":true,\"sliding_window\":16,"
                           "\"max_window_layers\":1,\"num_hidden_layers\":3}"));
    CHECK(!c.layer_sliding[0] && c.layer_sliding[1] && c.layer_sliding[2], "qwen sliding from max_window_layers");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"mixtral\"}"));
    CHECK(c.n_experts == 8 && c.n_experts_per_tok == 2 && c.rope.theta == 1e6, "mixtral defaults");
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"llama\",\"eos_token_id\":[7,9],\"bos_token_id\":3}"));
    CHECK(c.n_eos == 2 && c.eos_token_ids[1] == 9 && c.bos_token_id == 3, "eos as a list");
}

static void expect_refused(const char *json, hc_status want, const char *needle) {
    hc_model_config c;
    hc_status s = parse_cfg(&c, json);
    CHECK(s == want, "%s -> %s", json, hc_status_name(s));
    CHECK(strstr(hc_last_error(), needle) != NULL, "message has '%s': %s", needle, hc_last_error());
}

static void test_refusals(void) {
    expect_refused("{\"model_type\":\"bert\"}", HC_ERR_UNSUPPORTED, "unsupported architecture 'bert' (supported: llama");
    expect_refused("{\"hidden_size\":3}", HC_ERR_FORMAT, "model_type");
    expect_refused("{\"model_type\":\"mistral3\"}", HC_ERR_FORMAT, "mistral3 config has no 'text_config'");
    expect_refused("{\"model_type\":\"qwen2_vl\",\"text_config\":7}", HC_ERR_FORMAT, "'text_config' must be an object");
    expect_refused("{\"model_type\":\"exaone4\",\"sliding_window_pattern\":\"LLX\"}", HC_ERR_FORMAT,
                   "sliding_window_pattern 'LLX' must be L and G letters");
    expect_refused("{\"model_type\":\"exaone4\",\"sliding_window_pattern\":0}", HC_ERR_FORMAT,
                   "sliding_window_pattern must be positive");
    expect_refused("{\"model_type\":\"granite\",\"attention_multiplier\":0}", HC_ERR_FORMAT,
                   "attention_multiplier and logits_scaling must be positive");
    expect_refused("{\"model_type\":\"granite\",\"logits_scaling\":-8}", HC_ERR_FORMAT,
                   "attention_multiplier and logits_scaling must be positive");
    expect_refused("{\"model_type\":\"granite\",\"residual_multiplier\":\"x\"}", HC_ERR_FORMAT, "residual_multiplier");
    expect_refused("{\"model_type\":\"smollm3\",\"num_hidden_layers\":3,\"no_rope_layers\":[1,1]}", HC_ERR_FORMAT,
                   "'no_rope_layers' must list 0 or 1 for each of the 3 layers");
    expect_refused("{\"model_type\":\"smollm3\",\"num_hidden_layers\":2,\"no_rope_layers\":[1,2]}", HC_ERR_FORMAT,
                   "no_rope_layers[1] must be 0 or 1");
    expect_refused("{\"model_type\":\"llava\",\"text_config\":{\"model_type\":\"gemma\"}}", HC_ERR_UNSUPPORTED,
                   "unsupported language model 'gemma' in a llava checkpoint");
    expect_refused("{\"model_type\":\"llava\",\"text_config\":{\"model_type\":3}}", HC_ERR_FORMAT,
                   "text_config.model_type must be a string");
    expect_refused("{\"model_type\":\"qwen3_moe\",\"mlp_only_layers\":[0]}", HC_ERR_UNSUPPORTED, "dense MLP layers");
    expect_refused("{\"model_type\":\"qwen3_moe\",\"decoder_sparse_step\":2}", HC_ERR_UNSUPPORTED, "dense MLP layers");
    expect_refused("{\"model_type\":\"qwen3_moe\",\"num_experts\":4,\"num_experts_per_tok\":5}", HC_ERR_FORMAT,
                   "num_experts_per_tok <= num_experts");
    expect_refused("{\"model_type\":\"llama\",\"rope_scaling\":{\"rope_type\":\"mrope\"}}", HC_ERR_UNSUPPORTED,
                   "rope_type='mrope'");
    expect_refused("{\"model_type\":\"llama\",\"rope_scaling\":{\"rope_type\":\"longrope\"}}", HC_ERR_FORMAT,
                   "longrope needs rope_scaling.short_factor");
    expect_refused("{" PHI_DIMS "\"rope_scaling\":{\"type\":\"longrope\"," EIGHT_SHORT ",\"long_factor\":[1,2]}}",
                   HC_ERR_FORMAT, "short_factor has 8 entries but long_factor 2");
    expect_refused("{" PHI_DIMS "\"partial_rotary_factor\":0.5,\"rope_scaling\":{\"type\":\"longrope\"," EIGHT_SHORT
                   "," EIGHT_LONG "}}",
                   HC_ERR_FORMAT, "longrope has 8 factors, but the rotary dimension 8 needs 4");
    expect_refused("{" PHI_DIMS "\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":[1,1,1,1,1,1,1,0]," EIGHT_LONG "}}",
                   HC_ERR_FORMAT, "short_factor[7] must be a positive number");
    expect_refused("{" PHI_DIMS "\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":\"1\"," EIGHT_LONG "}}",
                   HC_ERR_FORMAT, "short_factor must be a list of numbers");
    expect_refused("{" PHI_DIMS "\"original_max_position_embeddings\":-1,\"rope_scaling\":{\"type\":\"longrope\","
                   EIGHT_SHORT "," EIGHT_LONG "}}",
                   HC_ERR_FORMAT, "original_max_position_embeddings must be positive");
    expect_refused("{\"model_type\":\"llama\",\"hidden_act\":\"mish\"}", HC_ERR_UNSUPPORTED, "hidden_act='mish'");
    expect_refused("{\"model_type\":\"llama\",\"hidden_size\":\"big\"}", HC_ERR_FORMAT, "'hidden_size' must be");
    expect_refused("{\"model_type\":\"llama\",\"num_attention_heads\":6,\"num_key_value_heads\":4}", HC_ERR_FORMAT,
                   "must divide");
    expect_refused("{\"model_type\":\"llama\",\"num_hidden_layers\":0}", HC_ERR_FORMAT, "positive");
    expect_refused("{\"model_type\":\"mistral\",\"layer_types\":[\"chunked_attention\"],\"num_hidden_layers\":1}",
                   HC_ERR_UNSUPPORTED, "chunked_attention");
    /* values that used to load and then compute garbage (rope_theta 0: inf frequencies) or fail
     * late with an odd message (a context of -3) */
    expect_refused("{\"model_type\":\"llama\",\"rope_theta\":0}", HC_ERR_FORMAT, "rope_theta must be positive");
    expect_refused("{\"model_type\":\"llama\",\"rope_theta\":-5,\"rope_scaling\":null}", HC_ERR_FORMAT,
                   "rope_theta must be positive");
    expect_refused("{\"model_type\":\"llama\",\"max_position_embeddings\":0}", HC_ERR_FORMAT,
                   "max_position_embeddings must be positive");
    expect_refused("{\"model_type\":\"gpt2\",\"n_positions\":-3}", HC_ERR_FORMAT, "n_positions must be positive");
}

/* generation_config.json: sampling values out of range are refused with the file's name (they
 * used to read as absent, so sampling went on with the defaults); values in range are kept. */
static void test_generation_config(void) {
    hc_model_config c;
    CHECK_OK(parse_cfg(&c, "{\"model_type\":\"llama\"}"));
    static const struct {
        const char *json, *needle;
    } bad[] = {{"{\"temperature\":-1}", "temperature must be >= 0 (got -1)"},
               {"{\"top_p\":0}", "top_p must be in (0, 1]"},
               {"{\"top_p\":5}", "top_p must be in (0, 1] (got 5)"},
               {"{\"top_k\":-4}", "top_k must be >= 0"},
               {"{\"repetition_penalty\":0}", "repetition_penalty must be > 0"},
               {"{\"max_new_tokens\":-2}", "max_new_tokens must be >= 0"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        hc_json_doc d;
        CHECK_OK(hc_json_parse(&d, bad[i].json, strlen(bad[i].json), "g"));
        const hc_status s = hc_generation_config_parse(&c, d.root, "generation_config.json");
        CHECK(s == HC_ERR_FORMAT, "%s is refused", bad[i].json);
        CHECK(strstr(hc_last_error(), "generation_config.json: ") && strstr(hc_last_error(), bad[i].needle),
              "%s: message has '%s': %s", bad[i].json, bad[i].needle, hc_last_error());
        hc_json_free(&d);
    }
    const char *good = "{\"do_sample\":true,\"temperature\":0.6,\"top_p\":0.9,\"top_k\":0,\"repetition_penalty\":1.1,\"max_new_tokens\":0}";
    hc_json_doc d;
    CHECK_OK(hc_json_parse(&d, good, strlen(good), "g"));
    CHECK_OK(hc_generation_config_parse(&c, d.root, "generation_config.json"));
    CHECK(c.gen_temperature == 0.6 && c.gen_top_p == 0.9 && c.gen_top_k == 0 && c.gen_repetition_penalty == 1.1,
          "values in range are kept");
    hc_json_free(&d);
}

int main(void) {
    test_fixtures();
    test_rope_styles();
    test_defaults();
    test_refusals();
    test_generation_config();
    return test_finish("config");
}
