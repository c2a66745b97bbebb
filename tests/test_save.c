/* Saving: every fixture written out as stored loads again with the same logits, bit for bit;
 * bf16 and sharded copies load and stay close; a tied head is written once; a non-empty target
 * is refused and left alone. */
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hubcap.h"
#include "test_util.h"

static float *logits_of(const char *dir, int64_t *V) {
    hc_model_params mp = hc_model_default_params();
    hc_model *m = NULL;
    hc_session *s = NULL;
    CHECK_OK(hc_model_load(dir, &mp, &m));
    if (!m) return NULL;
    const int32_t ids[6] = {1, 5, 9, 2, 7, 3};
    *V = hc_model_vocab_size(m);
    float *out = malloc(sizeof(float) * (size_t)(6 * *V));
    CHECK_OK(hc_session_new(m, 6, &s));
    if (s) CHECK_OK(hc_session_forward(s, ids, 6, out, true));
    hc_session_free(s);
    hc_model_free(m);
    return out;
}

static void check_fixture(const char *src, const char *name, const char *tmp) {
    char out[4400];
    snprintf(out, sizeof out, "%s/%s", tmp, name);
    hc_checkpoint *ck = NULL;
    CHECK_OK(hc_checkpoint_open(src, NULL, &ck));
    if (!ck) return;
    CHECK_OK(hc_checkpoint_save(ck, out, NULL));
    int64_t V = 0, V2 = 0;
    float *a = logits_of(src, &V), *b = logits_of(out, &V2);
    CHECK(a && b && V == V2 && !memcmp(a, b, sizeof(float) * (size_t)(6 * V)), "%s: saved as stored, same logits", name);
    /* A tied LM head is not written a second time. */
    const hc_model_config *c = hc_checkpoint_config(ck);
    hc_checkpoint *saved = NULL;
    CHECK_OK(hc_checkpoint_open(out, NULL, &saved));
    if (saved && c->tie_word_embeddings)
        CHECK(!hc_checkpoint_find(saved, "lm_head.weight"), "%s: tied head written once", name);
    hc_checkpoint_free(saved);
    test_rm_dir(out);

    /* bf16, in shards of at most 64 KB. */
    hc_save_params sp = hc_save_default_params();
    sp.dtype = HC_DTYPE_BF16;
    sp.max_shard_bytes = 64 * 1024;
    CHECK_OK(hc_checkpoint_save(ck, out, &sp));
    char idx[4500];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", out);
    CHECK(access(idx, R_OK) == 0, "%s: sharded save has an index", name);
    CHECK_OK(hc_checkpoint_open(out, NULL, &saved));
    if (saved) {
        CHECK(hc_checkpoint_n_shards(saved) > 1, "%s: %d shards", name, hc_checkpoint_n_shards(saved));
        for (int64_t i = 0; i < hc_checkpoint_n_tensors(saved); i++) {
            const hc_tensor_info *t = hc_checkpoint_tensor(saved, i);
            CHECK(t->dtype == HC_DTYPE_BF16, "%s: %s written as bf16", name, t->name);
        }
        CHECK(!strcmp(hc_checkpoint_config(saved)->torch_dtype, "bfloat16"), "%s: torch_dtype bfloat16, not '%s'", name,
              hc_checkpoint_config(saved)->torch_dtype);
    }
    hc_checkpoint_free(saved);
    float *c16 = logits_of(out, &V2);
    double worst = 0;
    for (int64_t i = 0; a && c16 && i < 6 * V; i++) worst = fmax(worst, fabs((double)a[i] - c16[i]));
    CHECK(c16 && worst < 0.5, "%s: bf16 copy's logits within 0.5 (%g)", name, worst);
    test_rm_dir(out);
    free(a), free(b), free(c16);
    hc_checkpoint_free(ck);
}

int main(void) {
    char dir[4096], tmp[] = "/tmp/hubcap-save-XXXXXX";
    CHECK(mkdtemp(tmp) != NULL, "mkdtemp");
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models", test_source_dir());
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.' || !strcmp(e->d_name, "index.json")) continue;
        char src[4400];
        snprintf(src, sizeof src, "%s/%s", dir, e->d_name);
        check_fixture(src, e->d_name, tmp);
        n++;
    }
    if (d) closedir(d);
    CHECK(n >= 13, "13 fixtures, found %d", n);
    char stories[4400];
    snprintf(stories, sizeof stories, "%s/models/stories260K", test_source_dir());
    check_fixture(stories, "stories260K", tmp);

    /* A folder that holds something is refused and keeps what it holds. */
    char busy[4500], keep[4600];
    snprintf(busy, sizeof busy, "%s/busy", tmp);
    mkdir(busy, 0755);
    snprintf(keep, sizeof keep, "%s/notes.txt", busy);
    FILE *f = fopen(keep, "w");
    if (f) fputs("mine\n", f), fclose(f);
    hc_checkpoint *ck = NULL;
    CHECK_OK(hc_checkpoint_open(stories, NULL, &ck));
    CHECK(hc_checkpoint_save(ck, busy, NULL) == HC_ERR_INVALID_ARG, "a non-empty folder is refused");
    CHECK(strstr(hc_last_error(), "not an empty folder") != NULL, "the error says why: %s", hc_last_error());
    CHECK(access(keep, R_OK) == 0, "and keeps its file");
    hc_checkpoint_free(ck);
    test_rm_dir(busy);
    rmdir(tmp);
    return test_finish("save");
}
