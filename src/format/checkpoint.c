/* A checkpoint: a Hub snapshot folder (config.json, generation_config.json, one
 * model.safetensors or a sharded index) or a single .safetensors file. Only headers are read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/file.h"
#include "base/status.h"
#include "format/checkpoint.h"
#include "format/hub.h"
#include "format/json.h"
#include "format/safetensors.h"
#include "model/config.h"

struct hc_checkpoint {
    char *path;
    hc_safetensors *shards;
    int n_shards;
    hc_tensor_info *tensors; /* all shards, sorted by name; names owned by the shards */
    int64_t n_tensors;
    bool has_config;
    hc_model_config config;
    uint64_t bytes_on_disk;
    bool released; /* hc_checkpoint_release gave some tensor's pages back */
};

hc_checkpoint_params hc_checkpoint_default_params(void) {
    hc_checkpoint_params p = {.use_mmap = true};
    return p;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const hc_tensor_info *)a)->name, ((const hc_tensor_info *)b)->name);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* Shard names come from an untrusted index: keep them inside the snapshot folder. */
static bool safe_relative_name(const char *name) {
    if (!*name || name[0] == '/') return false;
    for (const char *p = name; *p;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if ((n == 2 && !strncmp(p, "..", 2)) || n == 0) return false;
        if (!slash) break;
        p = slash + 1;
    }
    return true;
}

static hc_status open_shard(hc_checkpoint *ck, const char *file, bool use_mmap) {
    hc_status s = hc_safetensors_open(&ck->shards[ck->n_shards], file, use_mmap);
    if (s) return s;
    ck->bytes_on_disk += ck->shards[ck->n_shards].map.size;
    ck->n_shards++;
    return HC_OK;
}

static hc_status open_single(hc_checkpoint *ck, const char *file, bool use_mmap) {
    ck->shards = calloc(1, sizeof *ck->shards);
    if (!ck->shards) return hc_fail(HC_ERR_NOMEM, "out of memory");
    hc_status s = open_shard(ck, file, use_mmap);
    if (s) return s;
    hc_safetensors *sh = &ck->shards[0];
    ck->tensors = malloc((sh->n_tensors ? (size_t)sh->n_tensors : 1) * sizeof *ck->tensors);
    if (!ck->tensors) return hc_fail(HC_ERR_NOMEM, "out of memory");
    memcpy(ck->tensors, sh->tensors, (size_t)sh->n_tensors * sizeof *ck->tensors);
    ck->n_tensors = sh->n_tensors;
    return HC_OK;
}

static hc_status open_sharded(hc_checkpoint *ck, const char *dir, const char *index_path, bool use_mmap) {
    hc_json_doc doc;
    hc_status s = hc_json_parse_file(&doc, index_path);
    if (s) return s;
    const hc_json *wm = hc_json_get(doc.root, "weight_map");
    const char **names = NULL;
    size_t n_unique = 0;
    char file[4096];
    if (!wm || wm->type != HC_JSON_OBJECT) {
        s = hc_fail(HC_ERR_FORMAT, "%s: no 'weight_map' object", index_path);
        goto out;
    }
    names = malloc((wm->len ? wm->len : 1) * sizeof *names);
    if (!names) {
        s = hc_fail(HC_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < wm->len; i++) {
        const hc_json *v = &wm->u.members[i].value;
        if (v->type != HC_JSON_STRING || !safe_relative_name(v->u.str)) {
            s = hc_fail(HC_ERR_FORMAT, "%s: weight_map['%s'] is not a file name inside the folder", index_path,
                        wm->u.members[i].key);
            goto out;
        }
        names[i] = v->u.str;
    }
    /* Each shard is opened once, in name order. */
    qsort(names, wm->len, sizeof *names, cmp_str);
    for (size_t i = 0; i < wm->len; i++)
        if (i == 0 || strcmp(names[i], names[n_unique - 1])) names[n_unique++] = names[i];
    ck->shards = calloc(n_unique ? n_unique : 1, sizeof *ck->shards);
    ck->tensors = calloc(wm->len ? wm->len : 1, sizeof *ck->tensors);
    if (!ck->shards || !ck->tensors) {
        s = hc_fail(HC_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_unique; i++) {
        if ((s = hc_path_join(file, sizeof file, dir, names[i]))) goto out;
        if ((s = open_shard(ck, file, use_mmap))) goto out;
    }
    for (size_t i = 0; i < wm->len; i++) {
        const hc_json_member *m = &wm->u.members[i];
        const char **found = bsearch(&m->value.u.str, names, n_unique, sizeof *names, cmp_str);
        int shard = (int)(found - names);
        const hc_tensor_info *t = hc_safetensors_find(&ck->shards[shard], m->key);
        if (!t) {
            s = hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' is not in its shard %s", index_path, m->key, m->value.u.str);
            goto out;
        }
        ck->tensors[i] = *t;
        ck->tensors[i].shard = shard;
    }
    ck->n_tensors = (int64_t)wm->len;
    qsort(ck->tensors, wm->len, sizeof *ck->tensors, cmp_name);
    for (size_t i = 1; i < wm->len; i++) {
        if (!strcmp(ck->tensors[i - 1].name, ck->tensors[i].name)) {
            s = hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' is listed twice in weight_map", index_path, ck->tensors[i].name);
            goto out;
        }
    }
out:
    free(names);
    hc_json_free(&doc);
    return s;
}

static hc_status load_configs(hc_checkpoint *ck, const char *dir) {
    char file[4096];
    hc_status s = hc_path_join(file, sizeof file, dir, "config.json");
    if (s) return s;
    if (!hc_path_exists(file)) return hc_fail(HC_ERR_NOT_FOUND, "%s: no config.json in this folder", dir);
    hc_json_doc doc;
    if ((s = hc_json_parse_file(&doc, file))) return s;
    s = hc_config_parse(&ck->config, doc.root, file);
    hc_json_free(&doc);
    if (s) return s;
    ck->has_config = true;
    if ((s = hc_path_join(file, sizeof file, dir, "generation_config.json"))) return s;
    if (!hc_path_exists(file)) return HC_OK;
    if ((s = hc_json_parse_file(&doc, file))) return s;
    s = hc_generation_config_parse(&ck->config, doc.root, file);
    hc_json_free(&doc);
    return s;
}

hc_status hc_checkpoint_open(const char *path, const hc_checkpoint_params *params, hc_checkpoint **out) {
    *out = NULL;
    if (!path || !*path) return hc_fail(HC_ERR_INVALID_ARG, "no model path given");
    if (hc_is_hub_handle(path)) {
        char *local;
        hc_status s = hc_hub_resolve(path, NULL, &local);
        if (s) return s;
        s = hc_checkpoint_open(local, params, out);
        free(local);
        return s;
    }
    hc_checkpoint_params p = params ? *params : hc_checkpoint_default_params();
    hc_checkpoint *ck = calloc(1, sizeof *ck);
    if (!ck || !(ck->path = strdup(path))) {
        free(ck);
        return hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    hc_status s;
    if (!hc_path_exists(path)) {
        s = hc_fail(HC_ERR_NOT_FOUND, "%s: no such file or folder", path);
    } else if (!hc_path_is_dir(path)) {
        s = open_single(ck, path, p.use_mmap);
    } else {
        char index[4096], single[4096];
        s = hc_path_join(index, sizeof index, path, "model.safetensors.index.json");
        if (!s) s = hc_path_join(single, sizeof single, path, "model.safetensors");
        if (!s) s = load_configs(ck, path);
        if (!s) {
            if (hc_path_exists(index)) s = open_sharded(ck, path, index, p.use_mmap);
            else if (hc_path_exists(single)) s = open_single(ck, single, p.use_mmap);
            else s = hc_fail(HC_ERR_NOT_FOUND, "%s: no model.safetensors or model.safetensors.index.json", path);
        }
    }
    if (s) {
        hc_checkpoint_free(ck);
        return s;
    }
    *out = ck;
    return HC_OK;
}

void hc_checkpoint_free(hc_checkpoint *ck) {
    if (!ck) return;
    for (int i = 0; i < ck->n_shards; i++) hc_safetensors_close(&ck->shards[i]);
    free(ck->shards);
    free(ck->tensors);
    free(ck->path);
    free(ck);
}

int64_t hc_checkpoint_n_tensors(const hc_checkpoint *ck) { return ck->n_tensors; }

const hc_tensor_info *hc_checkpoint_tensor(const hc_checkpoint *ck, int64_t i) {
    return (i >= 0 && i < ck->n_tensors) ? &ck->tensors[i] : NULL;
}

const hc_tensor_info *hc_checkpoint_find(const hc_checkpoint *ck, const char *name) {
    hc_tensor_info key = {.name = name};
    return bsearch(&key, ck->tensors, (size_t)ck->n_tensors, sizeof key, cmp_name);
}

int hc_checkpoint_n_shards(const hc_checkpoint *ck) { return ck->n_shards; }

const char *hc_checkpoint_shard_path(const hc_checkpoint *ck, int i) {
    return (i >= 0 && i < ck->n_shards) ? ck->shards[i].path : NULL;
}

uint64_t hc_checkpoint_bytes_on_disk(const hc_checkpoint *ck) { return ck->bytes_on_disk; }
const char *hc_checkpoint_path(const hc_checkpoint *ck) { return ck->path; }
const hc_model_config *hc_checkpoint_config(const hc_checkpoint *ck) { return ck->has_config ? &ck->config : NULL; }

void hc_checkpoint_release(hc_checkpoint *ck, const void *p, size_t n) {
    if (hc_release_pages(p, n)) ck->released = true;
}

bool hc_checkpoint_released(const hc_checkpoint *ck) { return ck->released; }

bool hc_checkpoint_mapped(const hc_checkpoint *ck) { return ck->n_shards > 0 && ck->shards[0].map.mapped; }
