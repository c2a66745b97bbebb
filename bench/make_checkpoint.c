/* Writes a Llama-shaped checkpoint with random bf16 weights for the benchmarks:
 *   1b (default): Llama-3.2-1B: hidden 2048, 16 layers, 32 heads, 8 kv heads of 64,
 *                 intermediate 8192, vocab 128256, tied embeddings (about 2.5 GB);
 *   8b:           Llama-3.1-8B: hidden 4096, 32 layers, 32 heads, 8 kv heads of 128,
 *                 intermediate 14336, vocab 128256, separate LM head (about 16 GB);
 *   moe:          Qwen3-30B-A3B's layers, 4 of its 48: hidden 2048, 32 heads, 4 kv heads of 128,
 *                 q/k norms, 128 experts of 768 with 8 a token, vocab 151936, separate LM head
 *                 (about 6 GB: 1.2 GB of experts a layer, 3% of them read by a decoded token).
 * usage: bench_make_checkpoint OUTDIR [1b|8b|moe] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/half.h"
#include "hubcap.h"

static int HIDDEN = 2048, LAYERS = 16, HEADS = 32, KV_HEADS = 8, HEAD_DIM = 64, INTER = 8192, VOCAB = 128256;
static int TIED = 1, EXPERTS = 0, TOP_K = 0;

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static float uniform(void) { /* xorshift64*, in [-1, 1) */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (float)((rng * 2685821657736338717ull) >> 40) / (float)(1 << 23) - 1.0f;
}

static uint16_t *random_bf16(int64_t n, float scale, float offset) {
    uint16_t *p = malloc((size_t)n * 2);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < n; i++) p[i] = hc_f32_to_bf16(offset + scale * uniform());
    return p;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "1b") && strcmp(argv[2], "8b") && strcmp(argv[2], "moe"))) {
        fprintf(stderr, "usage: %s OUTDIR [1b|8b|moe]\n", argv[0]);
        return 2;
    }
    if (argc == 3 && !strcmp(argv[2], "8b")) {
        HIDDEN = 4096, LAYERS = 32, HEAD_DIM = 128, INTER = 14336;
        TIED = 0;
    }
    if (argc == 3 && !strcmp(argv[2], "moe")) {
        HIDDEN = 2048, LAYERS = 4, KV_HEADS = 4, HEAD_DIM = 128, INTER = 768, VOCAB = 151936;
        EXPERTS = 128, TOP_K = 8, TIED = 0;
    }
    const char *dir = argv[1];
    mkdir(dir, 0755);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        return 1;
    }
    if (EXPERTS)
        fprintf(f,
                "{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"model_type\":\"qwen3_moe\",\"hidden_size\":%d,"
                "\"moe_intermediate_size\":%d,\"intermediate_size\":6144,\"num_hidden_layers\":%d,"
                "\"num_attention_heads\":%d,\"num_key_value_heads\":%d,\"head_dim\":%d,\"vocab_size\":%d,"
                "\"num_experts\":%d,\"num_experts_per_tok\":%d,\"norm_topk_prob\":true,\"decoder_sparse_step\":1,"
                "\"mlp_only_layers\":[],\"max_position_embeddings\":40960,\"rms_norm_eps\":1e-06,"
                "\"rope_theta\":1000000.0,\"tie_word_embeddings\":false,\"hidden_act\":\"silu\","
                "\"bos_token_id\":151643,\"eos_token_id\":151645,\"torch_dtype\":\"bfloat16\"}\n",
                HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB, EXPERTS, TOP_K);
    else
    fprintf(f,
            "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"hidden_size\":%d,"
            "\"intermediate_size\":%d,\"num_hidden_layers\":%d,\"num_attention_heads\":%d,"
            "\"num_key_value_heads\":%d,\"head_dim\":%d,\"vocab_size\":%d,\"max_position_embeddings\":131072,"
            "\"rms_norm_eps\":1e-05,\"rope_theta\":500000.0,\"rope_scaling\":{\"factor\":32.0,"
            "\"high_freq_factor\":4.0,\"low_freq_factor\":1.0,\"original_max_position_embeddings\":8192,"
            "\"rope_type\":\"llama3\"},\"tie_word_embeddings\":%s,\"hidden_act\":\"silu\","
            "\"bos_token_id\":128000,\"eos_token_id\":128001,\"torch_dtype\":\"bfloat16\"}\n",
            HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB, TIED ? "true" : "false");
    fclose(f);

    int64_t cap = 4 + LAYERS * (11 + 3 * EXPERTS), n = 0;
    hc_tensor_write *t = calloc((size_t)cap, sizeof *t);
    char (*names)[96] = calloc((size_t)cap, sizeof *names);
    const float w = 0.02f;
#define ADD(NAME, D0, D1, SCALE, OFFSET)                                                                               \
    do {                                                                                                               \
        snprintf(names[n], sizeof names[n], "%s", NAME);                                                               \
        t[n].name = names[n];                                                                                          \
        t[n].dtype = HC_DTYPE_BF16;                                                                                    \
        const int64_t d0_ = (D0), d1_ = (D1);                                                                          \
        t[n].n_dims = d1_ ? 2 : 1;                                                                                     \
        t[n].shape[0] = d0_;                                                                                           \
        t[n].shape[1] = d1_;                                                                                           \
        t[n].data = random_bf16(d0_ * (d1_ ? d1_ : 1), SCALE, OFFSET);                                                 \
        n++;                                                                                                           \
    } while (0)
    ADD("model.embed_tokens.weight", VOCAB, HIDDEN, w, 0);
    ADD("model.norm.weight", HIDDEN, 0, 0.1f, 1.0f);
    if (!TIED) ADD("lm_head.weight", VOCAB, HIDDEN, w, 0);
    char name[96];
    for (int l = 0; l < LAYERS; l++) {
#define LAYER(SUFFIX, D0, D1, SCALE, OFFSET)                                                                           \
    snprintf(name, sizeof name, "model.layers.%d.%s", l, SUFFIX);                                                      \
    ADD(name, D0, D1, SCALE, OFFSET)
        LAYER("input_layernorm.weight", HIDDEN, 0, 0.1f, 1.0f);
        LAYER("post_attention_layernorm.weight", HIDDEN, 0, 0.1f, 1.0f);
        LAYER("self_attn.q_proj.weight", HEADS * HEAD_DIM, HIDDEN, w, 0);
        LAYER("self_attn.k_proj.weight", KV_HEADS * HEAD_DIM, HIDDEN, w, 0);
        LAYER("self_attn.v_proj.weight", KV_HEADS * HEAD_DIM, HIDDEN, w, 0);
        LAYER("self_attn.o_proj.weight", HIDDEN, HEADS * HEAD_DIM, w, 0);
        if (!EXPERTS) {
            LAYER("mlp.gate_proj.weight", INTER, HIDDEN, w, 0);
            LAYER("mlp.up_proj.weight", INTER, HIDDEN, w, 0);
            LAYER("mlp.down_proj.weight", HIDDEN, INTER, w, 0);
            continue;
        }
        LAYER("self_attn.q_norm.weight", HEAD_DIM, 0, 0.1f, 1.0f);
        LAYER("self_attn.k_norm.weight", HEAD_DIM, 0, 0.1f, 1.0f);
        LAYER("mlp.gate.weight", EXPERTS, HIDDEN, w, 0);
        for (int e = 0; e < EXPERTS; e++) {
            char ex[64];
            snprintf(ex, sizeof ex, "mlp.experts.%d.gate_proj.weight", e);
            LAYER(ex, INTER, HIDDEN, w, 0);
            snprintf(ex, sizeof ex, "mlp.experts.%d.up_proj.weight", e);
            LAYER(ex, INTER, HIDDEN, w, 0);
            snprintf(ex, sizeof ex, "mlp.experts.%d.down_proj.weight", e);
            LAYER(ex, HIDDEN, INTER, w, 0);
        }
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    const char *meta[] = {"format", "pt"};
    hc_status st = hc_safetensors_write(path, t, n, meta, 1);
    if (st) {
        fprintf(stderr, "%s\n", hc_last_error());
        return 1;
    }
    for (int64_t i = 0; i < n; i++) free((void *)t[i].data);
    free(t);
    free(names);
    printf("%s\n", dir);
    return 0;
}
