/* Saving a checkpoint folder as transformers' save_pretrained writes one: config.json (with
 * torch_dtype set to what was written), generation_config.json and the tokenizer files copied,
 * and the weights in model.safetensors, or in model-0000i-of-0000N.safetensors shards with
 * model.safetensors.index.json when they pass the shard size. A tied LM head is written once
 * (as the embedding). Everything is written into a temporary folder beside the target, which is
 * renamed into place at the end: the folder appears whole or not at all. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/file.h"
#include "base/half.h"
#include "base/status.h"
#include "format/checkpoint.h"
#include "format/json.h"

hc_save_params hc_save_default_params(void) {
    hc_save_params p = {.dtype = HC_DTYPE_AUTO, .max_shard_bytes = 0};
    return p;
}

static const char *torch_dtype_name(hc_dtype dt) {
    return dt == HC_DTYPE_F32 ? "float32" : dt == HC_DTYPE_BF16 ? "bfloat16" : dt == HC_DTYPE_F16 ? "float16" : NULL;
}

static bool is_float(hc_dtype dt) { return dt == HC_DTYPE_F32 || dt == HC_DTYPE_BF16 || dt == HC_DTYPE_F16; }

static hc_status copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb");
    if (!in) return hc_fail(HC_ERR_IO, "%s: %s", from, strerror(errno));
    FILE *out = fopen(to, "wb");
    if (!out) {
        fclose(in);
        return hc_fail(HC_ERR_IO, "%s: %s", to, strerror(errno));
    }
    char buf[1 << 16];
    size_t n;
    bool ok = true;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0) ok = fwrite(buf, 1, n, out) == n;
    ok = ok && !ferror(in);
    fclose(in);
    if (fclose(out) != 0) ok = false;
    return ok ? HC_OK : hc_fail(HC_ERR_IO, "%s: write failed", to);
}

/* A tensor as written: the source in its dtype, or a converted copy (owned). */
typedef struct {
    hc_tensor_write w;
    void *owned;
    size_t bytes;
} out_tensor;

static hc_status convert(out_tensor *o, const hc_tensor_info *t, hc_dtype to) {
    memset(o, 0, sizeof *o);
    o->w.name = t->name;
    o->w.n_dims = t->n_dims;
    memcpy(o->w.shape, t->shape, sizeof t->shape);
    o->w.dtype = t->dtype;
    o->w.data = t->data;
    o->bytes = t->n_bytes;
    if (to == HC_DTYPE_AUTO || !is_float(t->dtype) || t->dtype == to) return HC_OK;
    const int64_t n = t->n_elements;
    o->owned = malloc((size_t)n * hc_dtype_size(to) + 1);
    if (!o->owned) return hc_fail(HC_ERR_NOMEM, "out of memory converting tensor '%s'", t->name);
    for (int64_t i = 0; i < n; i++) {
        float v;
        if (t->dtype == HC_DTYPE_F32) memcpy(&v, (const char *)t->data + 4 * i, 4);
        else {
            uint16_t h;
            memcpy(&h, (const char *)t->data + 2 * i, 2);
            v = t->dtype == HC_DTYPE_BF16 ? hc_bf16_to_f32(h) : hc_f16_to_f32(h);
        }
        if (to == HC_DTYPE_F32) memcpy((char *)o->owned + 4 * i, &v, 4);
        else ((uint16_t *)o->owned)[i] = to == HC_DTYPE_BF16 ? hc_f32_to_bf16(v) : hc_f32_to_f16(v);
    }
    o->w.dtype = to;
    o->w.data = o->owned;
    o->bytes = (size_t)n * hc_dtype_size(to);
    return HC_OK;
}

/* The weights, in name order, split into shards of at most max_bytes (a bigger tensor gets a
 * shard of its own). */
static hc_status write_weights(const hc_checkpoint *ck, const char *dir, const hc_save_params *p, bool skip_head) {
    const int64_t n = hc_checkpoint_n_tensors(ck);
    const uint64_t max_bytes = p->max_shard_bytes > 0 ? (uint64_t)p->max_shard_bytes : 5000000000ull;
    /* Plan the shards first: their count is in every file name. */
    int *shard_of = calloc((size_t)n + 1, sizeof(int));
    if (!shard_of) return hc_fail(HC_ERR_NOMEM, "out of memory");
    int n_shards = 0;
    uint64_t in_shard = 0, total = 0;
    const uint64_t es_to = p->dtype == HC_DTYPE_AUTO ? 0 : hc_dtype_size(p->dtype);
    for (int64_t i = 0; i < n; i++) {
        const hc_tensor_info *t = hc_checkpoint_tensor(ck, i);
        shard_of[i] = -1;
        if (skip_head && !strcmp(t->name, "lm_head.weight")) continue;
        const uint64_t b = es_to && is_float(t->dtype) ? (uint64_t)t->n_elements * es_to : t->n_bytes;
        if (n_shards == 0 || (in_shard > 0 && in_shard + b > max_bytes)) n_shards++, in_shard = 0;
        in_shard += b;
        total += b;
        shard_of[i] = n_shards - 1;
    }
    hc_status st = HC_OK;
    char path[4096];
    char **names = calloc((size_t)(n_shards ? n_shards : 1), sizeof(char *));
    out_tensor *outs = calloc((size_t)n + 1, sizeof *outs);
    if (!names || !outs) st = hc_fail(HC_ERR_NOMEM, "out of memory");
    for (int s = 0; !st && s < n_shards; s++) {
        char name[64];
        if (n_shards == 1) snprintf(name, sizeof name, "model.safetensors");
        else snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        if (!(names[s] = strdup(name))) st = hc_fail(HC_ERR_NOMEM, "out of memory");
        int64_t k = 0;
        for (int64_t i = 0; !st && i < n; i++)
            if (shard_of[i] == s) st = convert(&outs[k++], hc_checkpoint_tensor(ck, i), p->dtype);
        hc_tensor_write *ws = calloc((size_t)k + 1, sizeof *ws);
        if (!st && !ws) st = hc_fail(HC_ERR_NOMEM, "out of memory");
        for (int64_t j = 0; !st && j < k; j++) ws[j] = outs[j].w;
        const char *meta[] = {"format", "pt"};
        if (!st) st = hc_path_join(path, sizeof path, dir, name);
        if (!st) st = hc_safetensors_write(path, ws, k, meta, 1);
        for (int64_t j = 0; j < k; j++) free(outs[j].owned), outs[j].owned = NULL;
        free(ws);
    }
    if (!st && n_shards > 1) {
        st = hc_path_join(path, sizeof path, dir, "model.safetensors.index.json");
        FILE *f = st ? NULL : fopen(path, "w");
        if (!st && !f) st = hc_fail(HC_ERR_IO, "%s: %s", path, strerror(errno));
        if (f) {
            fprintf(f, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n  \"weight_map\": {", (unsigned long long)total);
            bool first = true;
            for (int64_t i = 0; i < n; i++) {
                if (shard_of[i] < 0) continue;
                fprintf(f, "%s\n    ", first ? "" : ",");
                hc_json_write_string(f, hc_checkpoint_tensor(ck, i)->name);
                fprintf(f, ": \"%s\"", names[shard_of[i]]);
                first = false;
            }
            fputs("\n  }\n}\n", f);
            if (fclose(f) != 0) st = hc_fail(HC_ERR_IO, "%s: write failed", path);
        }
    }
    for (int s = 0; names && s < n_shards; s++) free(names[s]);
    free(names);
    free(outs);
    free(shard_of);
    return st;
}

hc_status hc_checkpoint_save(const hc_checkpoint *ck, const char *out_dir, const hc_save_params *params) {
    hc_save_params p = params ? *params : hc_save_default_params();
    if (p.dtype != HC_DTYPE_AUTO && !torch_dtype_name(p.dtype))
        return hc_fail(HC_ERR_UNSUPPORTED, "saving as %s: use F32, BF16 or F16", hc_dtype_name(p.dtype));
    const char *src = hc_checkpoint_path(ck);
    if (!hc_path_is_dir(src)) return hc_fail(HC_ERR_INVALID_ARG, "%s: not a checkpoint folder", src);
    if (hc_checkpoint_released(ck))
        return hc_fail(HC_ERR_UNSUPPORTED, "%s: its weights were quantized or repacked on load and not kept; load it without --quantize and with --no-repack to save it",
                       src);
    char tmp[4096], path[4096], from[4096];
    hc_status st = hc_dir_stage(out_dir, tmp, sizeof tmp);
    if (st) return st;
    const hc_model_config *c = hc_checkpoint_config(ck);
    st = write_weights(ck, tmp, &p, c && c->tie_word_embeddings);

    /* config.json, with the dtype written */
    hc_json_doc cfg = {0};
    if (!st) st = hc_path_join(from, sizeof from, src, "config.json");
    if (!st) st = hc_json_parse_file(&cfg, from);
    if (!st) st = hc_path_join(path, sizeof path, tmp, "config.json");
    if (!st) {
        FILE *f = fopen(path, "w");
        if (!f) {
            st = hc_fail(HC_ERR_IO, "%s: %s", path, strerror(errno));
        } else {
            char dt[32];
            snprintf(dt, sizeof dt, "\"%s\"", p.dtype == HC_DTYPE_AUTO ? "" : torch_dtype_name(p.dtype));
            const char *set[] = {"torch_dtype", dt, "dtype", dt};
            hc_json_write(f, cfg.root, set, p.dtype == HC_DTYPE_AUTO ? 0 : 2);
            fputc('\n', f);
            if (fclose(f) != 0) st = hc_fail(HC_ERR_IO, "%s: write failed", path);
        }
    }
    hc_json_free(&cfg);
    /* The rest of the folder as it is. */
    static const char *const copied[] = {"generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                         "special_tokens_map.json", "tokenizer.model", "chat_template.jinja",
                                         "chat_template.json", "vocab.json", "merges.txt", "added_tokens.json"};
    for (size_t i = 0; !st && i < sizeof copied / sizeof copied[0]; i++) {
        if ((st = hc_path_join(from, sizeof from, src, copied[i]))) break;
        if (access(from, R_OK) != 0) continue;
        if (!(st = hc_path_join(path, sizeof path, tmp, copied[i]))) st = copy_file(from, path);
    }
    return hc_dir_publish(tmp, out_dir, st);
}
