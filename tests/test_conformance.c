/* Every fixture model against transformers: logits of every prompt within the fixture's
 * tolerance, and greedy tokens equal (up to a near-tie, where margins say a flip is allowed).
 *
 * With HUBCAP_TEST_DEVICE=cuda the same runs on the GPU. With HUBCAP_TEST_DTYPE=bf16 (or f16)
 * the logits are compared statistically instead: the mean KL divergence from HF's next-token
 * distributions is reported and must stay small, and greedy tokens must agree until the first
 * step whose HF margin is below the noise the compute dtype adds (4x the largest logit error
 * seen on the prompts, at least 0.02). */
#include <dirent.h>

#include "format/json.h"
#include "format/safetensors.h"
#include "backend/cpu/fast.h"
#include "hubcap.h"
#include "test_util.h"

static const hc_tensor_info *ref_tensor(hc_safetensors *ref, const char *fmt, int i) {
    char name[64];
    snprintf(name, sizeof name, fmt, i);
    return hc_safetensors_find(ref, name);
}

static int32_t argmax(const float *x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return (int32_t)best;
}

/* Greedy decoding from `prompt`; compares with ref until the first allowed divergence. */
static void check_greedy(hc_model *m, const int64_t *prompt, int64_t T, const int64_t *ref, const float *margins,
                         int64_t n_new, const char *label, float noise) {
    const int64_t V = hc_model_vocab_size(m);
    hc_session *s;
    CHECK_OK(hc_session_new(m, T + n_new, &s));
    if (!s) return;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)T);
    float *logits = malloc(sizeof(float) * (size_t)V);
    for (int64_t i = 0; i < T; i++) ids[i] = (int32_t)prompt[i];
    CHECK_OK(hc_session_forward(s, ids, T, logits, false));
    for (int64_t i = 0; i < n_new; i++) {
        int32_t next = argmax(logits, V);
        if (next != ref[i]) {
            bool tie = margins && i > 0 && margins[i - 1] < noise;
            bool tie_here = margins && margins[i] < noise;
            CHECK(tie || tie_here, "%s: greedy token %lld is %d, HF gave %lld", label, (long long)i, next,
                  (long long)ref[i]);
            break;
        }
        if (i + 1 < n_new) CHECK_OK(hc_session_forward(s, &next, 1, logits, false));
    }
    free(ids);
    free(logits);
    hc_session_free(s);
}

/* Mean over rows of KL(p_ref || p) between softmaxes of [T, V] logits. */
static double mean_kl(const float *ref, const float *got, int64_t T, int64_t V) {
    double total = 0;
    for (int64_t t = 0; t < T; t++) {
        const float *a = ref + t * V, *b = got + t * V;
        double ma = -INFINITY, mb = -INFINITY, za = 0, zb = 0, kl = 0;
        for (int64_t v = 0; v < V; v++) ma = fmax(ma, a[v]), mb = fmax(mb, b[v]);
        for (int64_t v = 0; v < V; v++) za += exp(a[v] - ma), zb += exp(b[v] - mb);
        for (int64_t v = 0; v < V; v++) {
            const double pa = exp(a[v] - ma) / za;
            kl += pa * ((a[v] - ma - log(za)) - (b[v] - mb - log(zb)));
        }
        total += kl;
    }
    return total / (double)T;
}

/* On a GPU, a prompt longer than a decode step of 64 sequences takes the prompt kernels (in 16
 * bits: activations converted once, the residual add inside the GEMM): its logits, all at once
 * and in pieces of 40 rows, against the CPU's f32 on the same ids. The fixtures' prompts are
 * shorter than that, and transformers has no logits for this one. */
static void check_long_prompt(hc_model *m, const char *dir, const char *name, hc_safetensors *ref, double tolerance,
                              bool low) {
    enum { L = 120 }; /* below GPT-2's 128 positions */
    const int64_t V = hc_model_vocab_size(m);
    int32_t ids[L];
    int64_t n = 0;
    for (int i = 0; n < L; i = (i + 1) % 3) {
        const hc_tensor_info *tp = ref_tensor(ref, "prompt%d", i);
        if (!tp) break;
        for (int64_t t = 0; t < tp->shape[1] && n < L; t++) ids[n++] = (int32_t)((const int64_t *)tp->data)[t];
    }
    if (n < L) return; /* no prompts */
    hc_model_params cp = hc_model_default_params();
    cp.compute_dtype = HC_DTYPE_F32;
    hc_model *cpu;
    CHECK_OK(hc_model_load(dir, &cp, &cpu));
    if (!cpu) return;
    float *want = malloc(sizeof(float) * (size_t)(L * V)), *got = malloc(sizeof(float) * (size_t)(L * V));
    hc_session *s;
    for (int pieces = 0; pieces < 2; pieces++) {
        /* the CPU in the same pieces: ropes that depend on the sequence's length (dynamic NTK)
         * give pieces their own tables */
        const int64_t step = pieces ? 40 : L;
        CHECK_OK(hc_session_new(cpu, L, &s));
        for (int64_t t = 0; t < L; t += step) CHECK_OK(hc_session_forward(s, ids + t, step, want + t * V, true));
        hc_session_free(s);
        CHECK_OK(hc_session_new(m, L, &s));
        for (int64_t t = 0; t < L; t += step) CHECK_OK(hc_session_forward(s, ids + t, step, got + t * V, true));
        hc_session_free(s);
        double max_err = 0;
        for (int64_t j = 0; j < L * V; j++) {
            const double e = fabs((double)got[j] - (double)want[j]);
            if (!(e <= max_err)) max_err = e;
        }
        const char *how = pieces ? "in pieces of 40" : "at once";
        if (low) {
            const double kl = mean_kl(want, got, L, V);
            CHECK(kl < 1e-2, "%s: %d-token prompt %s: mean KL from the CPU %g", name, L, how, kl);
            printf("  %-14s T=%d %-15s max|err| %.2e mean KL %.2e (against the CPU)\n", name, L, how, max_err, kl);
        } else {
            CHECK(max_err <= tolerance, "%s: %d-token prompt %s: max |logit - CPU| = %g > %g", name, L, how, max_err,
                  tolerance);
            printf("  %-14s T=%d %-15s max|err| %.2e (against the CPU)\n", name, L, how, max_err);
        }
    }
    free(want);
    free(got);
    hc_model_free(cpu);
}

static void check_model(const char *dir, const char *name) {
    char path[4096];
    hc_model *m;
    hc_model_params mp = test_model_params();
    const bool low = test_low_precision();
    hc_status st = hc_model_load(dir, &mp, &m);
    CHECK(st == HC_OK, "%s: load: %s", name, hc_last_error());
    if (st) return;
    const int64_t V = hc_model_vocab_size(m);

    snprintf(path, sizeof path, "%s/reference.json", dir);
    hc_json_doc rj;
    CHECK_OK(hc_json_parse_file(&rj, path));
    const hc_json *tol = hc_json_get(hc_json_get(rj.root, "tolerance"), "f32_compute_max_abs");
    const double tolerance = tol ? tol->u.num.d : 1e-3;

    snprintf(path, sizeof path, "%s/reference.safetensors", dir);
    hc_safetensors ref;
    CHECK_OK(hc_safetensors_open(&ref, path, true));
    for (int i = 0; i < 16; i++) {
        const hc_tensor_info *tp = ref_tensor(&ref, "prompt%d", i);
        if (!tp) break;
        const hc_tensor_info *tl = ref_tensor(&ref, "logits%d", i);
        const hc_tensor_info *tg = ref_tensor(&ref, "greedy%d", i);
        const hc_tensor_info *tm = ref_tensor(&ref, "margins%d", i);
        const int64_t T = tp->shape[1];
        const int64_t *prompt = tp->data;
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)T);
        for (int64_t t = 0; t < T; t++) ids[t] = (int32_t)prompt[t];
        float *logits = malloc(sizeof(float) * (size_t)(T * V));
        hc_session *s;
        CHECK_OK(hc_session_new(m, T, &s));
        CHECK_OK(hc_session_forward(s, ids, T, logits, true));
        const float *want = tl->data;
        double max_err = 0;
        for (int64_t j = 0; j < T * V; j++) {
            double e = fabs((double)logits[j] - (double)want[j]);
            if (!(e <= max_err)) max_err = e; /* NaN propagates into a failure */
        }
        if (!low) {
            CHECK(max_err <= tolerance, "%s prompt%d: max |logit - HF| = %g > %g", name, i, max_err, tolerance);
            printf("  %-14s prompt%d T=%-3lld max|err| %.2e (tol %.2e)\n", name, i, (long long)T, max_err, tolerance);
        } else {
            const double kl = mean_kl(want, logits, T, V);
            CHECK(kl < 1e-2, "%s prompt%d: mean KL from HF %g", name, i, kl);
            printf("  %-14s prompt%d T=%-3lld max|err| %.2e mean KL %.2e\n", name, i, (long long)T, max_err, kl);
        }
        const float noise = low ? (float)fmax(0.02, 4 * max_err) : 0.01f;
        /* The same prompt in three pieces through the KV cache gives the same logits (in f32:
         * with 16-bit compute, pieces of other lengths take other kernels and roundings).
         * Ropes that depend on the sequence's length differ by design once it passes their
         * trained length: dynamic NTK rotates each piece by the table of its own length; longrope
         * gives the first piece's rows with the short factors, and from the piece that crosses
         * on, re-runs the cache with the long ones, so those rows match the whole prompt's. */
        const hc_model_config *mc = hc_model_get_config(m);
        const bool dynamic_past = mc->rope.type == HC_ROPE_DYNAMIC && T > mc->max_position_embeddings;
        int64_t long_from = 0; /* the first row of the piece that crosses (pieces: T/2, the rest but one, one) */
        if (mc->rope.type == HC_ROPE_LONGROPE && T > mc->rope.original_max_position_embeddings) {
            const int64_t orig = mc->rope.original_max_position_embeddings;
            long_from = T / 2 > orig ? 0 : T - 1 > orig ? T / 2 : T - 1;
        }
        if (T >= 3 && !low && !dynamic_past) {
            hc_session *s2;
            CHECK_OK(hc_session_new(m, T, &s2));
            const int64_t a = T / 2, b = T - a - 1;
            float *pieces = malloc(sizeof(float) * (size_t)(T * V));
            CHECK_OK(hc_session_forward(s2, ids, a, pieces, true));
            CHECK_OK(hc_session_forward(s2, ids + a, b, pieces + a * V, true));
            CHECK_OK(hc_session_forward(s2, ids + a + b, 1, pieces + (a + b) * V, false));
            double piece_err = 0;
            for (int64_t j = long_from * V; j < T * V; j++) {
                double e = fabs((double)pieces[j] - (double)logits[j]);
                if (!(e <= piece_err)) piece_err = e;
            }
            CHECK(piece_err < 1e-4, "%s prompt%d: chunked forward differs by %g", name, i, piece_err);
            CHECK(hc_session_forward(s2, ids, 1, NULL, false) == HC_ERR_RANGE, "a full context refuses more");
            free(pieces);
            hc_session_free(s2);
        }
        char label[128];
        snprintf(label, sizeof label, "%s prompt%d", name, i);
        check_greedy(m, prompt, T, tg->data, tm ? tm->data : NULL, tg->shape[1], label, noise);
        hc_session_free(s);
        free(logits);
        free(ids);
    }
    if (mp.device != HC_DEVICE_CPU) check_long_prompt(m, dir, name, &ref, tolerance, low);
    /* stories260K also carries 200 tokens of greedy text from BOS alone. */
    const hc_tensor_info *gb = hc_safetensors_find(&ref, "greedy_from_bos");
    if (gb) {
        const int64_t bos = 1;
        check_greedy(m, &bos, 1, gb->data, NULL, gb->shape[1], "greedy_from_bos", 0.01f);
    }
    hc_safetensors_close(&ref);
    hc_json_free(&rj);
    hc_model_free(m);
}

/* A model loaded with mp: its compute dtype (HC_DTYPE_COUNT when it failed to load), whether it
 * was repacked, and (logits non-NULL) the logits of ids as one prompt, then (stepped non-NULL)
 * fed one token at a time (decode's kernels), [T, V] each. */
static hc_dtype run_loaded(const char *dir, hc_model_params mp, float *logits, float *stepped, const int32_t *ids,
                           int64_t T, int64_t V, bool *repacked) {
    hc_model *m = NULL;
    CHECK_OK(hc_model_load(dir, &mp, &m));
    if (!m) return HC_DTYPE_COUNT;
    const hc_dtype got = hc_model_compute_dtype(m);
    if (repacked) *repacked = hc_model_repacked(m);
    hc_session *s = NULL;
    if (logits) CHECK_OK(hc_session_new(m, T, &s));
    if (s) CHECK_OK(hc_session_forward(s, ids, T, logits, true));
    if (s && stepped) {
        hc_session_reset(s);
        for (int64_t t = 0; t < T; t++) CHECK_OK(hc_session_forward(s, ids + t, 1, stepped + t * V, true));
    }
    hc_session_free(s);
    hc_model_free(m);
    return got;
}

/* The CPU's default compute dtype: bf16 for a checkpoint stored in bf16 (on a CPU with
 * AVX512_BF16), f32 for one stored in f32, asked for, or quantized. The bf16 one's logits are
 * bf16 numbers (not the f32 ones) and stay near HF's. */
static hc_dtype loaded_compute(const char *dir, hc_dtype asked, hc_weight_format weights, float *logits,
                               const int32_t *ids, int64_t T) {
    hc_model_params mp = hc_model_default_params();
    mp.compute_dtype = asked;
    mp.weights = weights;
    return run_loaded(dir, mp, logits, NULL, ids, T, 0, NULL);
}

/* llama3_2 (stored in bf16) and its first reference prompt: ids [T], HF's logits [T, V]. */
typedef struct {
    char dir[4400];
    hc_safetensors ref;
    const float *hf;
    int32_t ids[512];
    int64_t T, V;
} bf16_prompt;

static bool bf16_prompt_open(bf16_prompt *c, const char *models) {
    char path[4500];
    snprintf(c->dir, sizeof c->dir, "%s/llama3_2", models);
    snprintf(path, sizeof path, "%s/reference.safetensors", c->dir);
    CHECK_OK(hc_safetensors_open(&c->ref, path, true));
    const hc_tensor_info *tp = ref_tensor(&c->ref, "prompt%d", 0), *tl = ref_tensor(&c->ref, "logits%d", 0);
    if (!tp || !tl) return false;
    c->T = tp->shape[1] < 512 ? tp->shape[1] : 512, c->V = tl->shape[2];
    c->hf = tl->data;
    for (int64_t t = 0; t < c->T; t++) c->ids[t] = (int32_t)((const int64_t *)tp->data)[t];
    return true;
}

static void check_default_compute(const bf16_prompt *c, const char *models) {
    char path[4500];
    const char *dir = c->dir;
    const int32_t *ids = c->ids;
    const int64_t T = c->T, V = c->V;
    float *def = malloc(sizeof(float) * (size_t)(T * V)), *f32 = malloc(sizeof(float) * (size_t)(T * V));
    const bool dot = hc_cpu_has_bf16_dot();
    const hc_dtype want = dot ? HC_DTYPE_BF16 : HC_DTYPE_F32;
    CHECK(loaded_compute(dir, HC_DTYPE_AUTO, HC_WEIGHTS_AS_STORED, def, ids, T) == want,
          "a bf16 checkpoint computes in %s by default", hc_dtype_name(want));
    CHECK(loaded_compute(dir, HC_DTYPE_F32, HC_WEIGHTS_AS_STORED, f32, ids, T) == HC_DTYPE_F32, "F32 when asked");
    CHECK(loaded_compute(dir, HC_DTYPE_AUTO, HC_WEIGHTS_Q8_0, NULL, ids, T) == HC_DTYPE_F32,
          "quantized weights report F32");
    snprintf(path, sizeof path, "%s/gpt2", models); /* stored in f32 */
    CHECK(loaded_compute(path, HC_DTYPE_AUTO, HC_WEIGHTS_AS_STORED, NULL, ids, 1) == HC_DTYPE_F32,
          "an f32 checkpoint computes in F32 by default");
    double diff = 0;
    for (int64_t j = 0; j < T * V; j++) diff = fmax(diff, fabs((double)def[j] - (double)f32[j]));
    const double kl = mean_kl(c->hf, def, T, V);
    CHECK(dot ? diff > 1e-5 : diff == 0, "default against f32 compute: max |diff| %g", diff);
    CHECK(kl < 1e-3, "default compute: mean KL from HF %g", kl);
    printf("  default compute on the CPU: %s; llama3_2 prompt0 against f32 compute max|diff| %.2e, mean KL from HF %.2e\n",
           hc_dtype_name(want), diff, kl);
    free(def);
    free(f32);
}

/* Whether a model loaded with mp was repacked (and its logits, as run_loaded). */
static bool loaded_repacked(const char *dir, hc_model_params mp, float *logits, float *stepped, const int32_t *ids,
                            int64_t T, int64_t V) {
    bool repacked = false;
    run_loaded(dir, mp, logits, stepped, ids, T, V, &repacked);
    return repacked;
}

/* bf16 weights read into RAM are repacked (bf16r16) where the CPU runs the AVX-512 kernels, and
 * give the logits of the stored layout, in bf16 and f32 compute; a mapping, --no-repack and an
 * f32 checkpoint keep the stored layout; a repacked model refuses to train or save. */
static void check_repack(const bf16_prompt *c, const char *models) {
    char path[4500];
    const char *dir = c->dir;
    const int32_t *ids = c->ids;
    const int64_t T = c->T, V = c->V;
    const size_t bytes = sizeof(float) * (size_t)(T * V);
    float *rp = malloc(bytes), *rs = malloc(bytes), *sp = malloc(bytes), *ss = malloc(bytes);
    const bool dot = hc_cpu_has_bf16_dot(), avx512 = !strcmp(hc_cpu_kernels(), "avx512");
    hc_model_params mp = hc_model_default_params();
    mp.use_mmap = false;
    CHECK(!loaded_repacked(dir, mp, NULL, NULL, ids, T, V), "the library's default: the stored layout");
    mp.repack = true;
    CHECK(loaded_repacked(dir, mp, rp, rs, ids, T, V) == avx512, "bf16 in RAM: repacked %s", avx512 ? "yes" : "no");
    mp.repack = false;
    CHECK(!loaded_repacked(dir, mp, sp, ss, ids, T, V), "repack off: the stored layout");
    mp = hc_model_default_params();
    mp.repack = true;
    CHECK(!loaded_repacked(dir, mp, NULL, NULL, ids, T, V), "mapped: the stored layout");
    /* f32 compute repacks too where the AVX-512 kernels run; the same f32 sums in another order */
    float *fp = malloc(bytes), *fs = malloc(bytes), *gp = malloc(bytes), *gs = malloc(bytes);
    mp.use_mmap = false;
    mp.compute_dtype = HC_DTYPE_F32;
    CHECK(loaded_repacked(dir, mp, fp, fs, ids, T, V) == avx512, "f32 compute in RAM: repacked %s", avx512 ? "yes" : "no");
    mp.repack = false;
    CHECK(!loaded_repacked(dir, mp, gp, gs, ids, T, V), "f32 compute, repack off: the stored layout");
    double df = 0;
    for (int64_t j = 0; j < T * V; j++) df = fmax(df, fmax(fabs((double)fp[j] - gp[j]), fabs((double)fs[j] - gs[j])));
    CHECK(df < 1e-4, "f32 compute: repacked against the stored layout %g", df);
    printf("  repacked bf16, f32 compute: against the stored layout max|diff| %.2e\n", df);
    free(fp), free(fs), free(gp), free(gs);
    mp.repack = true;
    mp.compute_dtype = HC_DTYPE_AUTO;
    snprintf(path, sizeof path, "%s/gpt2", models); /* stored in f32 */
    CHECK(!loaded_repacked(path, mp, NULL, NULL, ids, T, V), "an f32 checkpoint: the stored layout");
    /* the same bf16 products summed in another order: a sum that rounds differently rounds the
     * next layer's bf16 activations differently, so the logits move as far as the stored layout's
     * own decode is from its prompt (1.1e-2 here) */
    double dp = 0, ds = 0, own = 0, rown = 0;
    for (int64_t j = 0; j < T * V; j++) {
        dp = fmax(dp, fabs((double)rp[j] - sp[j])), ds = fmax(ds, fabs((double)rs[j] - ss[j]));
        own = fmax(own, fabs((double)ss[j] - sp[j])), rown = fmax(rown, fabs((double)rs[j] - rp[j]));
    }
    CHECK(dp <= 2 * own + 1e-4 && ds <= 2 * own + 1e-4 && rown <= 2 * own + 1e-4,
          "repacked against stored layout: prompt %g, decode %g (decode against prompt: stored %g, repacked %g)", dp, ds, own, rown);
    CHECK(mean_kl(c->hf, rp, T, V) < 1e-3, "repacked: mean KL from HF %g", mean_kl(c->hf, rp, T, V));
    printf("  repacked bf16 (%s): against the stored layout max|diff| prompt %.2e, decode %.2e; decode against prompt %.2e (stored %.2e)\n",
           dot ? "bf16r16, vdpbf16ps" : avx512 ? "bf16r16, f32 compute" : "not repacked", dp, ds, rown, own);
    if (avx512) {
        hc_model *m = NULL;
        mp = hc_model_default_params();
        mp.use_mmap = false;
        mp.repack = true;
        CHECK_OK(hc_model_load(dir, &mp, &m));
        hc_grads *g = NULL;
        hc_status st = m ? hc_grads_new(m, &g) : HC_ERR_INVALID_ARG;
        if (!st) {
            uint8_t mask[512];
            memset(mask, 1, sizeof mask);
            double loss, acc;
            st = hc_model_loss_grad(m, ids, mask, 1, T, g, &loss, &acc);
        }
        CHECK(st == HC_ERR_UNSUPPORTED && strstr(hc_last_error(), "--no-repack"), "training a repacked model: %s", hc_last_error());
        hc_grads_free(g);
        snprintf(path, sizeof path, "/tmp/hubcap-test-repacked-%ld", (long)getpid());
        st = m ? hc_checkpoint_save(hc_model_checkpoint(m), path, NULL) : HC_ERR_INVALID_ARG;
        CHECK(st == HC_ERR_UNSUPPORTED && strstr(hc_last_error(), "--no-repack"), "saving a repacked model: %s", hc_last_error());
        hc_model_free(m);
    }
    free(rp), free(rs), free(sp), free(ss);
}

int main(void) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models", test_source_dir());
    DIR *d = opendir(dir);
    CHECK(d != NULL, "cannot open %s", dir);
    int n = 0;
    struct dirent *e;
    char names[64][256];
    while (d && (e = readdir(d)) && n < 64) {
        if (e->d_name[0] == '.' || !strcmp(e->d_name, "index.json")) continue;
        snprintf(names[n++], sizeof names[0], "%s", e->d_name);
    }
    if (d) closedir(d);
    CHECK(n >= 13, "expected the 13 fixture models, found %d", n);
    for (int i = 0; i < n; i++) {
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        check_model(path, names[i]);
    }
    snprintf(dir, sizeof dir, "%s/models/stories260K", test_source_dir());
    check_model(dir, "stories260K");
    if (!getenv("HUBCAP_TEST_DEVICE")) {
        snprintf(dir, sizeof dir, "%s/tests/fixtures/models", test_source_dir());
        static bf16_prompt c; /* llama3_2's first prompt, for both */
        if (bf16_prompt_open(&c, dir)) {
            check_default_compute(&c, dir);
            check_repack(&c, dir);
        }
        hc_safetensors_close(&c.ref);
    }
    return test_finish("conformance");
}
