/* `hubcap info --json --tensors` on every fixture: the parameter count equals the sum of the
 * listed tensor sizes, and the config fields equal config.json's. Runs the real binary. */
#include "format/json.h"
#include "hubcap.h"
#include "test_util.h"

static char *run(const char *cmd) {
    FILE *p = popen(cmd, "r");
    if (!p) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += r;
        if (n + 1 == cap) buf = realloc(buf, cap *= 2);
    }
    buf[n] = 0;
    int rc = pclose(p);
    if (rc != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static int64_t num(const hc_json *o, const char *k) {
    const hc_json *v = hc_json_get(o, k);
    return (v && v->type == HC_JSON_NUMBER) ? v->u.num.i : -1;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *names[] = {"llama2", "llama3_2", "llama3_v5", "llama_sharded", "mistral", "qwen2", "qwen3",
                           "gemma",  "gemma2",   "gemma3",    "phi3",          "mixtral", "gpt2",  NULL};
    for (int i = 0; names[i] || i == 13; i++) {
        char dir[1024], cmd[2200];
        if (names[i]) snprintf(dir, sizeof dir, "%s/tests/fixtures/models/%s", test_source_dir(), names[i]);
        else snprintf(dir, sizeof dir, "%s/models/stories260K", test_source_dir());
        const char *label = names[i] ? names[i] : "stories260K";
        snprintf(cmd, sizeof cmd, "'%s' info --json --tensors -m '%s'", argv[1], dir);
        char *out = run(cmd);
        CHECK(out != NULL, "%s: hubcap info failed", label);
        if (!out) {
            if (!names[i]) break;
            continue;
        }
        hc_json_doc d;
        CHECK_OK(hc_json_parse(&d, out, strlen(out), "info output"));
        const hc_json *ts = hc_json_get(d.root, "tensors");
        int64_t sum = 0;
        for (size_t t = 0; ts && t < ts->len; t++) {
            const hc_json *shape = hc_json_get(&ts->u.items[t], "shape");
            int64_t n = 1;
            for (size_t k = 0; k < shape->len; k++) n *= shape->u.items[k].u.num.i;
            sum += n;
        }
        CHECK(ts && (int64_t)ts->len == num(d.root, "tensor_count"), "%s: tensor count", label);
        CHECK(sum == num(d.root, "parameters") && sum > 0, "%s: parameters %lld = sum of tensors %lld", label,
              (long long)num(d.root, "parameters"), (long long)sum);
        /* a mixture of experts: a token reads K of each layer's E experts */
        const int64_t E = num(d.root, "experts"), K = num(d.root, "experts_per_token");
        const int64_t inactive = E > 0 ? num(d.root, "layers") * (E - K) * 3 * num(d.root, "intermediate_size") *
                                             num(d.root, "hidden_size")
                                       : 0;
        CHECK(num(d.root, "active_parameters") == sum - inactive && (E <= 0 || inactive > 0),
              "%s: active parameters %lld", label, (long long)num(d.root, "active_parameters"));
        char cfgp[1100];
        snprintf(cfgp, sizeof cfgp, "%s/config.json", dir);
        hc_json_doc cfg;
        CHECK_OK(hc_json_parse_file(&cfg, cfgp));
        const bool gpt2 = names[i] && !strcmp(names[i], "gpt2");
        CHECK(num(d.root, "hidden_size") == num(cfg.root, gpt2 ? "n_embd" : "hidden_size"), "%s hidden", label);
        CHECK(num(d.root, "layers") == num(cfg.root, gpt2 ? "n_layer" : "num_hidden_layers"), "%s layers", label);
        CHECK(num(d.root, "heads") == num(cfg.root, gpt2 ? "n_head" : "num_attention_heads"), "%s heads", label);
        CHECK(num(d.root, "vocab_size") == num(cfg.root, "vocab_size"), "%s vocab", label);
        CHECK(num(d.root, "context_length") == num(cfg.root, gpt2 ? "n_positions" : "max_position_embeddings"),
              "%s context", label);
        if (!gpt2) CHECK(num(d.root, "kv_heads") == num(cfg.root, "num_key_value_heads"), "%s kv heads", label);
        CHECK(!strcmp(hc_json_str(d.root, "model_type", ""), hc_json_str(cfg.root, "model_type", "?")), "%s type",
              label);
        hc_json_free(&cfg);
        hc_json_free(&d);
        free(out);
        if (!names[i]) break;
    }
    return test_finish("cli_info");
}
