/* LoRA on every kind of projection a checkpoint stores: separate (llama2), fused (Phi-3's
 * qkv_proj and gate_up_proj), fused and transposed (GPT-2's c_attn, Conv1D weights), and on the
 * attention of a mixture-of-experts model (mixtral). For each, with random A and B
 * (HUBCAP_TEST_DEVICE=cuda runs the gradients on the GPU):
 *   - the adapter's gradients against central differences of the loss, on elements of A and
 *     of every role's rows of B (a fused module's roles share A);
 *   - the saved adapter has PEFT's module names and loads back to the same loss;
 *   - merged into the weights, the model without an adapter gives the same loss. */
#include "hubcap.h"
#include "model/model.h"
#include "test_util.h"
#include "train/lora.h"
#include "train/train.h"

enum { B_ = 2, T_ = 12 };

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float uniform(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static double loss_of(hc_model *m, const int32_t *ids, hc_grads *g) {
    double loss = NAN;
    if (g) hc_grads_zero(g);
    CHECK_OK(hc_model_loss_grad(m, ids, NULL, B_, T_, g, &loss, NULL));
    return loss;
}

/* One element of a module's A or B: the analytic gradient against (L(+h) - L(-h)) / 2h. */
static void fd_check(hc_model *m, const int32_t *ids, hc_lora_pair *p, bool is_b, int64_t i, const char *what) {
    float *x = is_b ? p->b : p->a;
    const float g = (is_b ? p->db_h : p->da_h)[i], x0 = x[i], h = 1e-2f;
    x[i] = x0 + h;
    hc_lora_sync(m);
    const double up = loss_of(m, ids, NULL);
    x[i] = x0 - h;
    hc_lora_sync(m);
    const double down = loss_of(m, ids, NULL);
    x[i] = x0;
    hc_lora_sync(m);
    const double fd = (up - down) / (2.0 * h);
    CHECK(fabs(fd - g) <= 2e-3 * fmax(1.0, fabs(fd)) + 1e-5, "%s: d%c[%lld] = %.6g, differences say %.6g", what,
          is_b ? 'B' : 'A', (long long)i, g, fd);
}

/* targets: what to adapt; names: PEFT module names the saved config must list; tensor: one
 * PEFT tensor name the adapter file must hold. */
static void check_arch(const char *name, const char *targets, const char *const *names, int n_names, const char *tensor) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/%s", test_source_dir(), name);
    hc_model_params mp = test_model_params(); /* HUBCAP_TEST_DEVICE=cuda: the gradients on the GPU */
    mp.use_mmap = false;
    hc_model *m = NULL;
    CHECK_OK(hc_model_load(dir, &mp, &m));
    if (!m) return;
    int32_t ids[B_ * T_];
    for (int i = 0; i < B_ * T_; i++) ids[i] = 3 + (int32_t)((uniform() + 1.0f) * 0.5f * (float)(m->cfg.vocab_size - 4));
    const double base = loss_of(m, ids, NULL);
    CHECK_OK(hc_model_lora_init(m, 4, 8.0, targets, 11));
    hc_lora *lo = m->lora;
    if (!lo) {
        hc_model_free(m);
        return;
    }
    CHECK(fabs(loss_of(m, ids, NULL) - base) < 1e-9, "%s: a new adapter (B = 0) changes nothing", name);
    for (int64_t i = 0; i < m->cfg.n_layers * HC_LORA_MODULES; i++) {
        hc_lora_pair *p = &lo->pairs[i];
        for (int64_t j = 0; p->a && j < lo->r * p->k; j++) p->a[j] = 0.3f * uniform();
        for (int64_t j = 0; p->a && j < p->n * lo->r; j++) p->b[j] = 0.3f * uniform();
    }
    CHECK_OK(hc_lora_sync(m));
    hc_grads *g = NULL;
    CHECK_OK(hc_grads_new(m, &g));
    const double adapted = loss_of(m, ids, g);
    CHECK(fabs(adapted - base) > 1e-4, "%s: the adapter changes the loss (%.6f -> %.6f)", name, base, adapted);
    if (g) {
        hc_grads_download(g);
        /* layer 0's modules: an element of A, and of B in each of its roles' rows */
        for (int mod = 0; mod < HC_LORA_MODULES; mod++) {
            hc_lora_pair *p = &lo->pairs[mod];
            if (!p->a) continue;
            char what[64];
            snprintf(what, sizeof what, "%s module %d", name, mod);
            fd_check(m, ids, p, false, (lo->r * p->k) / 3, what);
            for (int t = 0; t < HC_LORA_N; t++)
                if (lo->module_of[t] == mod) {
                    const int64_t rows = lo->rows[t] < 0 ? p->n : lo->rows[t];
                    fd_check(m, ids, p, true, (lo->row0[t] + rows / 2) * lo->r + 1, what);
                }
        }
    }
    hc_grads_free(g);
    /* saved in PEFT's format, loaded back */
    char adir[] = "/tmp/hubcap-lora-XXXXXX", path[4400];
    CHECK(mkdtemp(adir) != NULL, "mkdtemp");
    CHECK_OK(hc_model_lora_save(m, adir));
    /* HUBCAP_LORA_EXPORT=DIR keeps a copy, DIR/<fixture>-<n>, for bench/hf_lora_check.sh (peft) */
    const char *exp = getenv("HUBCAP_LORA_EXPORT");
    if (exp) {
        static int n_exported;
        char keep[4400];
        snprintf(keep, sizeof keep, "%s/%s-%d", exp, name, n_exported++);
        CHECK_OK(hc_model_lora_save(m, keep));
    }
    hc_model_free(m);
    snprintf(path, sizeof path, "%s/adapter_config.json", adir);
    FILE *f = fopen(path, "rb");
    char cfg[4096] = "";
    if (f) cfg[fread(cfg, 1, sizeof cfg - 1, f)] = 0, fclose(f);
    for (int i = 0; i < n_names; i++) {
        char quoted[64];
        snprintf(quoted, sizeof quoted, "\"%s\"", names[i]);
        const char *at = strstr(cfg, quoted);
        CHECK(at && !strstr(at + 1, quoted), "%s: target_modules lists %s once: %s", name, quoted, cfg);
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", adir);
    hc_checkpoint *ck = NULL;
    CHECK_OK(hc_checkpoint_open(path, NULL, &ck));
    if (ck) CHECK(hc_checkpoint_find(ck, tensor) != NULL, "%s: the adapter holds %s", name, tensor);
    hc_checkpoint_free(ck);
    mp = hc_model_default_params(); /* merging writes the weights: on the CPU, in RAM */
    mp.compute_dtype = HC_DTYPE_F32;  /* as the adapted loss above */
    mp.use_mmap = false;
    mp.lora_path = adir;
    CHECK_OK(hc_model_load(dir, &mp, &m));
    if (m) {
        CHECK(fabs(loss_of(m, ids, NULL) - adapted) < 1e-6 * adapted, "%s: the loaded adapter gives the same loss", name);
        /* merged (rounded to the stored dtype): the same loss without an adapter */
        CHECK_OK(hc_model_lora_merge(m));
        const double merged = loss_of(m, ids, NULL);
        const double tol = m->layers[0].wo.dtype == HC_DTYPE_F32 ? 1e-5 : 2e-2;
        CHECK(fabs(merged - adapted) < tol * adapted, "%s: merged %.6f, adapted %.6f", name, merged, adapted);
        printf("  %s (%s): loss %.5f, with the adapter %.5f, merged %.5f\n", name, targets, base, adapted, merged);
    }
    hc_model_free(m);
    test_rm_dir(adir);
}

int main(void) {
    const char *llama[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    check_arch("llama2", "all-linear", llama, 7, "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight");
    const char *phi3[] = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"};
    check_arch("phi3", "all-linear", phi3, 4, "base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight");
    const char *phi3_qkv[] = {"qkv_proj"};
    check_arch("phi3", "qkv_proj", phi3_qkv, 1, "base_model.model.model.layers.1.self_attn.qkv_proj.lora_B.weight");
    /* Phi-2: attention's output is dense, the MLP fc1 and fc2 */
    const char *phi2[] = {"q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"};
    check_arch("phi2", "all-linear", phi2, 6, "base_model.model.model.layers.1.mlp.fc2.lora_B.weight");
    /* a multimodal checkpoint's language model, where transformers 5 puts it */
    const char *qv[] = {"q_proj", "v_proj"};
    check_arch("mistral3", "q_proj,v_proj", qv, 2,
               "base_model.model.model.language_model.layers.1.self_attn.v_proj.lora_A.weight");
    /* Granite (multipliers on the residual branches) and OLMo 2 (post norms, whole q/k norms) */
    check_arch("granite", "all-linear", llama, 7, "base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight");
    check_arch("olmo2", "all-linear", llama, 7, "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight");
    /* Qwen2.5-VL as the Hub stores it (model.layers) and Qwen3-VL (model.language_model.layers):
     * transformers 5 puts both language models at model.language_model */
    check_arch("qwen2_5_vl", "q_proj,v_proj", qv, 2,
               "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_B.weight");
    check_arch("qwen3_vl", "all-linear", llama, 7, "base_model.model.model.language_model.layers.1.mlp.gate_proj.lora_A.weight");
    /* StarCoder2: Llama's attention, the MLP as c_fc and c_proj */
    const char *starcoder2[] = {"q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"};
    check_arch("starcoder2", "all-linear", starcoder2, 6, "base_model.model.model.layers.1.mlp.c_fc.lora_A.weight");
    const char *gpt2[] = {"c_attn", "c_proj", "c_fc"};
    check_arch("gpt2", "c_attn,c_proj,c_fc", gpt2, 3, "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight");
    const char *mixtral[] = {"q_proj", "v_proj"};

    /* mixtral: attention adapts; the experts are refused */
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/mixtral", test_source_dir());
    hc_model_params mp = hc_model_default_params();
    hc_model *m = NULL;
    CHECK_OK(hc_model_load(dir, &mp, &m));
    if (m) {
        CHECK(hc_model_lora_init(m, 4, 8.0, "all-linear", 1) == HC_ERR_UNSUPPORTED, "mixtral: all-linear is refused");
        CHECK(strstr(hc_last_error(), "mixture-of-experts") != NULL, "the message says why: %s", hc_last_error());
        CHECK(hc_model_lora_init(m, 4, 8.0, "w1", 1) == HC_ERR_INVALID_ARG, "mixtral: an expert's w1 is refused");
        CHECK(hc_model_lora_init(m, 4, 8.0, "q_proj,v_proj", 1) == HC_OK, "mixtral: attention adapts");
        const char *exp = getenv("HUBCAP_LORA_EXPORT");
        for (int64_t i = 0; m->lora && i < m->cfg.n_layers * HC_LORA_MODULES; i++) {
            hc_lora_pair *p = &m->lora->pairs[i];
            for (int64_t j = 0; p->a && j < p->n * m->lora->r; j++) p->b[j] = 0.3f * uniform();
        }
        if (m->lora && exp) { /* for peft's check (bench/hf_lora_check.sh) */
            char keep[4400];
            snprintf(keep, sizeof keep, "%s/mixtral-9", exp);
            CHECK_OK(hc_model_lora_save(m, keep));
        }
        (void)mixtral;
    }
    hc_model_free(m);
    /* no targets named: the attention projections as each checkpoint stores them (GPT-2's c_proj
     * is left out: the MLP's projection has the same name, which PEFT would adapt too) */
    const char *const defaults[][3] = {{"llama2", "\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\"]", ""},
                                       {"phi3", "\"o_proj\", \"qkv_proj\"]", "gate_up_proj"},
                                       {"gpt2", "\"c_attn\"]", "c_proj"}};
    for (int i = 0; i < 3; i++) {
        snprintf(dir, sizeof dir, "%s/tests/fixtures/models/%s", test_source_dir(), defaults[i][0]);
        CHECK_OK(hc_model_load(dir, &mp, &m));
        if (!m) continue;
        char adir[] = "/tmp/hubcap-lora-XXXXXX", path[4400], cfg[4096] = "";
        CHECK(mkdtemp(adir) != NULL, "mkdtemp");
        CHECK_OK(hc_model_lora_init(m, 2, 4.0, NULL, 1));
        CHECK_OK(hc_model_lora_save(m, adir));
        snprintf(path, sizeof path, "%s/adapter_config.json", adir);
        FILE *f = fopen(path, "rb");
        if (f) cfg[fread(cfg, 1, sizeof cfg - 1, f)] = 0, fclose(f);
        CHECK(strstr(cfg, defaults[i][1]) != NULL, "%s: default targets %s in %s", defaults[i][0], defaults[i][1], cfg);
        CHECK(!*defaults[i][2] || !strstr(cfg, defaults[i][2]), "%s: %s is not a default target", defaults[i][0],
              defaults[i][2]);
        hc_model_free(m);
        test_rm_dir(adir);
    }
    /* a projection the checkpoint fuses, named alone: refused, naming what the model has */
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/phi3", test_source_dir());
    CHECK_OK(hc_model_load(dir, &mp, &m));
    if (m) {
        CHECK(hc_model_lora_init(m, 4, 8.0, "q_proj", 1) == HC_ERR_INVALID_ARG, "phi3: q_proj alone is refused");
        CHECK(strstr(hc_last_error(), "qkv_proj") != NULL, "the message names qkv_proj: %s", hc_last_error());
    }
    hc_model_free(m);
    /* a mixture of experts: its MLP (Qwen2-MoE's shared expert too) takes no adapter */
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/qwen2_moe", test_source_dir());
    CHECK_OK(hc_model_load(dir, &mp, &m));
    if (m) {
        CHECK(hc_model_lora_init(m, 4, 8.0, "gate_proj", 1) == HC_ERR_INVALID_ARG, "qwen2_moe: gate_proj is refused");
        CHECK(strstr(hc_last_error(), "q_proj") != NULL, "the message names what can be adapted: %s", hc_last_error());
        CHECK_OK(hc_model_lora_init(m, 4, 8.0, "q_proj,v_proj", 1));
    }
    hc_model_free(m);
    return test_finish("lora");
}
