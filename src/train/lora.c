/* LoRA adapters: made for training, loaded from and saved to PEFT's format
 * (adapter_config.json + adapter_model.safetensors with PEFT's tensor names). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/quant.h"
#include "base/file.h"
#include "base/half.h"
#include "base/status.h"
#include "format/json.h"
#include "format/safetensors.h"
#include "train/lora.h"
#include "train/train.h"

/* The checkpoint weight each module adapts. */
static const hc_weight_role module_roles[HC_LORA_MODULES] = {W_Q, W_K, W_V, W_O, W_GATE, W_UP, W_DOWN, W_QKV, W_GATE_UP};

static hc_mat *layer_mat(hc_layer *L, int t) {
    hc_mat *m[HC_LORA_N] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down};
    return m[t];
}

/* Where each role's adapter lives: its own module, or its rows of the fused one. */
static void map_roles(const hc_model *m, hc_lora *lo) {
    const hc_layer *L = &m->layers[0];
    for (int t = 0; t < HC_LORA_N; t++) lo->module_of[t] = t, lo->row0[t] = 0, lo->rows[t] = -1;
    if (m->arch->names[W_QKV]) {
        const int64_t nq = L->wq.rows, nk = L->wk.rows, nv = L->wv.rows;
        const int roles[3] = {HC_LORA_Q, HC_LORA_K, HC_LORA_V};
        const int64_t r0[3] = {0, nq, nq + nk}, rows[3] = {nq, nk, nv};
        for (int i = 0; i < 3; i++) lo->module_of[roles[i]] = HC_LORA_QKV, lo->row0[roles[i]] = r0[i], lo->rows[roles[i]] = rows[i];
    }
    if (m->arch->names[W_GATE_UP]) { /* gate first */
        lo->module_of[HC_LORA_GATE] = lo->module_of[HC_LORA_UP] = HC_LORA_GATE_UP;
        lo->row0[HC_LORA_UP] = L->gate.rows;
        lo->rows[HC_LORA_GATE] = L->gate.rows, lo->rows[HC_LORA_UP] = L->up.rows;
    }
}

/* A module this model has: some role maps to it and the checkpoint holds that weight. */
static bool module_present(const hc_model *m, const hc_lora *lo, int mod) {
    /* a mixture of experts runs its MLP without adapters (Qwen2-MoE's shared expert included) */
    if (m->cfg.n_experts > 0 && mod != HC_LORA_Q && mod != HC_LORA_K && mod != HC_LORA_V && mod != HC_LORA_O &&
        mod != HC_LORA_QKV)
        return false;
    for (int t = 0; t < HC_LORA_N; t++)
        if (lo->module_of[t] == mod && layer_mat(&m->layers[0], t)->data) return true;
    return false;
}

/* The module's HF path in layer l ("model.layers.3.self_attn.qkv_proj"), and its last part
 * (PEFT's target name, "qkv_proj"). */
static void module_path(const hc_model *m, int mod, int64_t l, char *out, size_t cap) {
    char name[200]; /* arch names are short; out has room for the prefix too */
    snprintf(name, sizeof name, m->arch->names[module_roles[mod]], (int)l);
    char *w = strstr(name, ".weight");
    if (w) *w = 0;
    /* A multimodal checkpoint's language model is model.language_model in transformers 5's module
     * tree (Mistral3ForConditionalGeneration, LlavaForConditionalGeneration,
     * Gemma3ForConditionalGeneration), which is where PEFT names its adapters. */
    if (strcmp(m->cfg.model_type, m->cfg.text_model_type) && !strncmp(name, "model.", 6))
        snprintf(out, cap, "model.language_model.%s", name + 6);
    else
        snprintf(out, cap, "%s", name);
}

static const char *module_short(const hc_model *m, int mod, char *buf, size_t cap) {
    module_path(m, mod, 0, buf, cap);
    const char *dot = strrchr(buf, '.');
    return dot ? dot + 1 : buf;
}

/* "qkv_proj,o_proj" (or "all-linear") -> bits of this model's modules. A name may cover two
 * modules (GPT-2's c_proj is attention's output and the MLP's down projection). */
static hc_status parse_targets(const hc_model *m, const hc_lora *lo, const char *list, unsigned *out) {
    *out = 0;
    char have[256] = "", buf[256];
    for (int mod = 0; mod < HC_LORA_MODULES; mod++) {
        if (!module_present(m, lo, mod)) continue;
        const char *name = module_short(m, mod, buf, sizeof buf);
        char key[260];
        snprintf(key, sizeof key, " %s,", name);
        if (strstr(have, key) || strlen(have) + strlen(name) + 3 > sizeof have) continue;
        strcat(strcat(strcat(have, " "), name), ",");
    }
    if (*have) have[strlen(have) - 1] = 0; /* " q_proj, k_proj," -> " q_proj, k_proj" */
    const bool moe = m->cfg.n_experts > 0;
    if (!list) { /* the attention projections, as this checkpoint stores them */
        for (int mod = 0; mod < HC_LORA_MODULES; mod++) {
            const bool attention = mod == HC_LORA_Q || mod == HC_LORA_K || mod == HC_LORA_V || mod == HC_LORA_O ||
                                   mod == HC_LORA_QKV;
            if (!attention || !module_present(m, lo, mod)) continue;
            /* a name the MLP shares (GPT-2's c_proj) would adapt it too, when PEFT reads the config */
            const char *name = module_short(m, mod, buf, sizeof buf);
            char other[256];
            bool shared = false;
            for (int o = 0; o < HC_LORA_MODULES; o++)
                shared |= o != mod && module_present(m, lo, o) && !strcmp(module_short(m, o, other, sizeof other), name);
            if (!shared) *out |= 1u << mod;
        }
        return *out ? HC_OK : hc_fail(HC_ERR_UNSUPPORTED, "LoRA: %s has no attention projection to adapt", m->cfg.model_type);
    }
    if (!strcmp(list, "all-linear")) {
        if (moe)
            return hc_fail(HC_ERR_UNSUPPORTED, "LoRA on the experts of a mixture-of-experts model is not supported: "
                                               "target the attention projections (%s)", have + 1);
        for (int mod = 0; mod < HC_LORA_MODULES; mod++)
            if (module_present(m, lo, mod)) *out |= 1u << mod;
        return HC_OK;
    }
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        const size_t n = e ? (size_t)(e - p) : strlen(p);
        bool found = false;
        for (int mod = 0; mod < HC_LORA_MODULES; mod++) {
            if (!module_present(m, lo, mod)) continue;
            const char *name = module_short(m, mod, buf, sizeof buf);
            if (strlen(name) == n && !strncmp(p, name, n)) *out |= 1u << mod, found = true;
        }
        if (!found)
            return hc_fail(HC_ERR_INVALID_ARG, "LoRA target '%.*s': %s%s has %s (or all-linear)", (int)n, p,
                           moe ? "this mixture-of-experts " : "", m->cfg.model_type, have + 1);
        p += n + (e != NULL);
    }
    return *out ? HC_OK : hc_fail(HC_ERR_INVALID_ARG, "no LoRA targets given");
}

/* PEFT's name of layer l's module: "base_model.model.<module>.lora_A.weight". */
static void peft_name(const hc_model *m, int64_t l, int mod, char ab, char *out, size_t cap) {
    char module[256];
    module_path(m, mod, l, module, sizeof module);
    snprintf(out, cap, "base_model.model.%s.lora_%c.weight", module, ab);
}

void hc_lora_free(hc_model *m) {
    hc_lora *lo = m->lora;
    if (!lo) return;
    for (int64_t i = 0; lo->pairs && i < m->cfg.n_layers * HC_LORA_MODULES; i++) {
        hc_lora_pair *p = &lo->pairs[i];
        if (m->be->device) {
            if (p->a_dev) m->be->free(m->be, p->a_dev);
            if (p->b_dev) m->be->free(m->be, p->b_dev);
            if (p->da) m->be->free(m->be, p->da);
            if (p->db) m->be->free(m->be, p->db);
            free(p->da_h), free(p->db_h);
        } else {
            free(p->da), free(p->db);
        }
        free(p->a), free(p->b);
    }
    free(lo->pairs);
    free(lo);
    m->lora = NULL;
}

/* A new adapter with its roles mapped, no modules yet (m->lora). */
static hc_status lora_new(hc_model *m) {
    hc_lora *lo = calloc(1, sizeof *lo);
    if (!lo || !(lo->pairs = calloc((size_t)(m->cfg.n_layers * HC_LORA_MODULES), sizeof *lo->pairs))) {
        free(lo);
        return hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    map_roles(m, lo);
    m->lora = lo;
    return HC_OK;
}

/* Allocates every module of the targets (A and B zero); hc_lora_sync makes their backend copies. */
static hc_status lora_alloc(hc_model *m, int64_t r, double alpha, unsigned targets) {
    hc_lora *lo = m->lora;
    if (r < 1 || r > HC_LORA_MAX_RANK) return hc_fail(HC_ERR_INVALID_ARG, "LoRA rank %lld (from 1 to %d)", (long long)r, HC_LORA_MAX_RANK);
    lo->r = r;
    lo->alpha = alpha;
    lo->scale = (float)(alpha / (double)r);
    lo->targets = targets;
    for (int64_t l = 0; l < m->cfg.n_layers; l++)
        for (int mod = 0; mod < HC_LORA_MODULES; mod++) {
            if (!(targets & (1u << mod))) continue;
            int64_t n = 0, k = 0; /* the module's [N, K]: its roles' rows together */
            for (int t = 0; t < HC_LORA_N; t++) {
                const hc_mat *w = layer_mat(&m->layers[l], t);
                if (lo->module_of[t] != mod || !w->data) continue;
                n += w->rows, k = w->cols;
            }
            if (!n) continue;
            hc_lora_pair *p = &lo->pairs[l * HC_LORA_MODULES + mod];
            p->n = n, p->k = k;
            p->a = calloc((size_t)(r * p->k), sizeof(float));
            p->b = calloc((size_t)(p->n * r), sizeof(float));
            if (!p->a || !p->b) return hc_fail(HC_ERR_NOMEM, "out of memory for LoRA adapters");
        }
    return HC_OK;
}

/* Points the views at backend memory (uploading on a device). */
hc_status hc_lora_sync(hc_model *m) {
    hc_lora *lo = m->lora;
    hc_backend *be = m->be;
    for (int64_t i = 0; lo && i < m->cfg.n_layers * HC_LORA_MODULES; i++) {
        hc_lora_pair *p = &lo->pairs[i];
        if (!p->a) continue;
        const size_t ab = sizeof(float) * (size_t)(lo->r * p->k), bb = sizeof(float) * (size_t)(p->n * lo->r);
        if (be->device) {
            if (!p->a_dev && !(p->a_dev = be->alloc(be, ab))) return hc_fail(HC_ERR_NOMEM, "LoRA: out of GPU memory");
            if (!p->b_dev && !(p->b_dev = be->alloc(be, bb))) return hc_fail(HC_ERR_NOMEM, "LoRA: out of GPU memory");
            be->upload(be, p->a_dev, p->a, ab);
            be->upload(be, p->b_dev, p->b, bb);
        } else {
            p->a_dev = p->a, p->b_dev = p->b;
        }
        p->A = (hc_mat){.data = p->a_dev, .dtype = HC_DTYPE_F32, .rows = lo->r, .cols = p->k, .ld = p->k};
        p->B = (hc_mat){.data = p->b_dev, .dtype = HC_DTYPE_F32, .rows = p->n, .cols = lo->r, .ld = lo->r};
    }
    return HC_OK;
}

hc_status hc_model_lora_init(hc_model *m, int64_t r, double alpha, const char *targets, uint64_t seed) {
    if (m->lora) return hc_fail(HC_ERR_INVALID_ARG, "the model already has a LoRA adapter");
    unsigned bits;
    hc_status st = lora_new(m);
    if (!st) st = parse_targets(m, m->lora, targets, &bits);
    if (!st) st = lora_alloc(m, r, alpha, bits);
    /* A as PEFT initialises it (kaiming-uniform with a = sqrt(5): bound 1/sqrt(K)), B zero, so
     * training starts from the base model exactly. */
    uint64_t s = seed ? seed : 0x2545F4914F6CDD1Dull;
    for (int64_t i = 0; !st && i < m->cfg.n_layers * HC_LORA_MODULES; i++) {
        hc_lora_pair *p = &m->lora->pairs[i];
        const float bound = p->a ? 1.0f / sqrtf((float)p->k) : 0;
        for (int64_t j = 0; p->a && j < r * p->k; j++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            p->a[j] = bound * (float)((double)(s >> 11) / 4503599627370496.0 - 1.0);
        }
    }
    if (!st) st = hc_lora_sync(m);
    if (st) hc_lora_free(m);
    return st;
}

hc_status hc_model_lora_load(hc_model *m, const char *dir) {
    char path[4200];
    hc_json_doc cfg = {0};
    hc_status st = hc_path_join(path, sizeof path, dir, "adapter_config.json");
    if (!st) st = hc_json_parse_file(&cfg, path);
    if (st) return st;
    const hc_json *r = hc_json_get(cfg.root, "r"), *alpha = hc_json_get(cfg.root, "lora_alpha");
    const hc_json *tm = hc_json_get(cfg.root, "target_modules"), *pt = hc_json_get(cfg.root, "peft_type");
    unsigned bits = 0;
    hc_status st0 = lora_new(m);
    if (st0) {
        hc_json_free(&cfg);
        return st0;
    }
    if (!r || r->type != HC_JSON_NUMBER || !alpha || alpha->type != HC_JSON_NUMBER || !tm)
        st = hc_fail(HC_ERR_FORMAT, "%s: needs r, lora_alpha and target_modules", path);
    else if (pt && pt->type == HC_JSON_STRING && strcmp(pt->u.str, "LORA"))
        st = hc_fail(HC_ERR_UNSUPPORTED, "%s: peft_type %s (only LORA)", path, pt->u.str);
    for (size_t i = 0; !st && tm->type == HC_JSON_ARRAY && i < tm->len; i++) {
        unsigned b;
        if (tm->u.items[i].type != HC_JSON_STRING) {
            st = hc_fail(HC_ERR_FORMAT, "%s: target_modules should hold strings", path);
            break;
        }
        if ((st = parse_targets(m, m->lora, tm->u.items[i].u.str, &b))) break;
        bits |= b;
    }
    if (!st && tm->type == HC_JSON_STRING) st = parse_targets(m, m->lora, tm->u.str, &bits);
    /* checked before the conversion: a fuzzed 6.7e27 does not fit an int64 */
    if (!st && !(r->u.num.d >= 1 && r->u.num.d <= HC_LORA_MAX_RANK && r->u.num.d == floor(r->u.num.d)))
        st = hc_fail(HC_ERR_FORMAT, "%s: r = %g (an integer from 1 to %d)", path, r->u.num.d, HC_LORA_MAX_RANK);
    if (!st && !isfinite(alpha->u.num.d)) st = hc_fail(HC_ERR_FORMAT, "%s: lora_alpha must be a finite number", path);
    if (!st) st = lora_alloc(m, (int64_t)r->u.num.d, alpha->u.num.d, bits);
    hc_json_free(&cfg);
    hc_safetensors f;
    bool open = false;
    if (!st) st = hc_path_join(path, sizeof path, dir, "adapter_model.safetensors");
    if (!st && !(st = hc_safetensors_open(&f, path, true))) open = true;
    for (int64_t l = 0; !st && l < m->cfg.n_layers; l++)
        for (int mod = 0; !st && mod < HC_LORA_MODULES; mod++) {
            hc_lora_pair *p = &m->lora->pairs[l * HC_LORA_MODULES + mod];
            if (!p->a) continue;
            for (int ab = 0; !st && ab < 2; ab++) {
                char name[512];
                peft_name(m, l, mod, ab ? 'B' : 'A', name, sizeof name);
                const hc_tensor_info *ti = hc_safetensors_find(&f, name);
                const int64_t d0 = ab ? p->n : m->lora->r, d1 = ab ? m->lora->r : p->k;
                if (!ti) st = hc_fail(HC_ERR_NOT_FOUND, "%s: missing tensor '%s'", path, name);
                else if (ti->n_dims != 2 || ti->shape[0] != d0 || ti->shape[1] != d1 ||
                         (ti->dtype != HC_DTYPE_F32 && ti->dtype != HC_DTYPE_BF16 && ti->dtype != HC_DTYPE_F16))
                    st = hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' should be a float [%lld, %lld]", path, name, (long long)d0,
                                 (long long)d1);
                for (int64_t j = 0; !st && j < d0 * d1; j++) {
                    float v;
                    uint16_t h;
                    if (ti->dtype == HC_DTYPE_F32) memcpy(&v, (const char *)ti->data + 4 * j, 4);
                    else {
                        memcpy(&h, (const char *)ti->data + 2 * j, 2);
                        v = ti->dtype == HC_DTYPE_BF16 ? hc_bf16_to_f32(h) : hc_f16_to_f32(h);
                    }
                    (ab ? p->b : p->a)[j] = v;
                }
            }
        }
    if (open) hc_safetensors_close(&f);
    if (!st) st = hc_lora_sync(m);
    if (st && m->lora) hc_lora_free(m);
    return st;
}

hc_status hc_model_lora_save(const hc_model *m, const char *dir) {
    const hc_lora *lo = m->lora;
    if (!lo) return hc_fail(HC_ERR_INVALID_ARG, "the model has no LoRA adapter to save");
    char tmp[4096], path[4300];
    hc_status st = hc_dir_stage(dir, tmp, sizeof tmp);
    if (st) return st;
    int64_t n = 0;
    for (int64_t i = 0; i < m->cfg.n_layers * HC_LORA_MODULES; i++) n += lo->pairs[i].a != NULL;
    hc_tensor_write *w = calloc((size_t)(2 * n + 1), sizeof *w);
    char (*names)[512] = calloc((size_t)(2 * n + 1), sizeof *names);
    if (!w || !names) st = hc_fail(HC_ERR_NOMEM, "out of memory");
    int64_t k = 0;
    for (int64_t l = 0; !st && l < m->cfg.n_layers; l++)
        for (int mod = 0; mod < HC_LORA_MODULES; mod++) {
            const hc_lora_pair *p = &lo->pairs[l * HC_LORA_MODULES + mod];
            if (!p->a) continue;
            for (int ab = 0; ab < 2; ab++, k++) {
                peft_name(m, l, mod, ab ? 'B' : 'A', names[k], sizeof names[k]);
                w[k].name = names[k];
                w[k].dtype = HC_DTYPE_F32;
                w[k].n_dims = 2;
                w[k].shape[0] = ab ? p->n : lo->r;
                w[k].shape[1] = ab ? lo->r : p->k;
                w[k].data = ab ? p->b : p->a;
            }
        }
    const char *meta[] = {"format", "pt"};
    if (!st) st = hc_path_join(path, sizeof path, tmp, "adapter_model.safetensors");
    if (!st) st = hc_safetensors_write(path, w, k, meta, 1);
    free(w);
    free(names);
    if (!st) st = hc_path_join(path, sizeof path, tmp, "adapter_config.json");
    if (!st) {
        FILE *f = fopen(path, "w");
        if (!f) st = hc_fail(HC_ERR_IO, "%s: %s", path, strerror(errno));
        else {
            fprintf(f, "{\n  \"peft_type\": \"LORA\",\n  \"task_type\": \"CAUSAL_LM\",\n  \"base_model_name_or_path\": ");
            hc_json_write_string(f, hc_checkpoint_path(m->ck));
            fprintf(f, ",\n  \"r\": %lld,\n  \"lora_alpha\": %.17g,\n  \"lora_dropout\": 0.0,\n  \"bias\": \"none\",\n"
                       "  \"fan_in_fan_out\": %s,\n  \"inference_mode\": true,\n  \"target_modules\": [",
                    (long long)lo->r, lo->alpha, m->arch->transposed_weights ? "true" : "false");
            /* PEFT's target names, each once (GPT-2's c_proj covers two modules) */
            char listed[512] = ",", buf[256];
            for (int mod = 0; mod < HC_LORA_MODULES; mod++) {
                if (!(lo->targets & (1u << mod))) continue;
                const char *name = module_short(m, mod, buf, sizeof buf);
                char key[260];
                snprintf(key, sizeof key, ",%s,", name);
                if (strstr(listed, key)) continue;
                fprintf(f, "%s\"%s\"", listed[1] ? ", " : "", name);
                if (strlen(listed) + strlen(name) + 2 <= sizeof listed) strcat(strcat(listed, name), ",");
            }
            fprintf(f, "]\n}\n");
            if (fclose(f) != 0) st = hc_fail(HC_ERR_IO, "%s: write failed", path);
        }
    }
    return hc_dir_publish(tmp, dir, st);
}

hc_status hc_model_lora_merge(hc_model *m) {
    hc_lora *lo = m->lora;
    if (!lo) return hc_fail(HC_ERR_INVALID_ARG, "the model has no LoRA adapter to merge");
    if (m->use_mmap || m->be->device)
        return hc_fail(HC_ERR_INVALID_ARG, "merging a LoRA adapter writes the weights: load the model on the CPU with --no-mmap");
    for (int64_t l = 0; l < m->cfg.n_layers; l++)
        for (int t = 0; t < HC_LORA_N; t++) {
            hc_lora_view view; /* on the CPU its A and B are the host arrays */
            const hc_mat *w = layer_mat(&m->layers[l], t);
            if (!hc_lora_get(lo, l, t, &view)) continue;
            if (w->quant == HC_QUANT_BF16R16)
                return hc_fail(HC_ERR_UNSUPPORTED, "cannot merge a LoRA adapter into weights repacked for the CPU's bf16 "
                                                   "kernels: load the model with repack off (--no-repack)");
            if (w->quant) return hc_fail(HC_ERR_UNSUPPORTED, "cannot merge a LoRA adapter into quantized weights");
            const float *A = view.A.data, *B = view.B.data; /* [r, K], [n, r] */
            /* W[n, k] += scale * sum_j B[n, j] A[j, k], rounded to the stored dtype (element (n, k)
             * at k * ld + n where stored [K, N], as GPT-2's Conv1D: PEFT's fan_in_fan_out) */
            for (int64_t n = 0; n < view.n; n++)
                for (int64_t k = 0; k < view.k; k++) {
                    double d = 0;
                    for (int64_t j = 0; j < lo->r; j++) d += (double)B[n * lo->r + j] * A[j * view.k + k];
                    const int64_t at_el = w->transposed ? k * w->ld + n : n * w->ld + k;
                    void *at = (char *)w->data + (size_t)at_el * hc_dtype_size(w->dtype);
                    float v;
                    uint16_t h;
                    if (w->dtype == HC_DTYPE_F32) memcpy(&v, at, 4);
                    else {
                        memcpy(&h, at, 2);
                        v = w->dtype == HC_DTYPE_BF16 ? hc_bf16_to_f32(h) : hc_f16_to_f32(h);
                    }
                    v += (float)(lo->scale * d);
                    if (w->dtype == HC_DTYPE_F32) memcpy(at, &v, 4);
                    else {
                        h = w->dtype == HC_DTYPE_BF16 ? hc_f32_to_bf16(v) : hc_f32_to_f16(v);
                        memcpy(at, &h, 2);
                    }
                }
        }
    hc_lora_free(m); /* the weights now hold it */
    return HC_OK;
}
