/* Tokenizers against HF tokenizers: every vector of vectors.json (ids, ids with specials,
 * decoded text), the chat renders' ids, llama.cpp's vectors, streaming decode, tokenizer.model. */
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"
#include "format/json.h"
#include "hubcap.h"
#include "test_util.h"

static int skipped;

static bool ids_equal(const hc_tokens *got, const hc_json *want) {
    if (!want || want->type != HC_JSON_ARRAY || (int64_t)want->len != got->n) return false;
    for (size_t i = 0; i < want->len; i++)
        if (got->ids[i] != want->u.items[i].u.num.i) return false;
    return true;
}

static void print_ids(const char *label, const hc_tokens *t) {
    fprintf(stderr, "    %s:", label);
    for (int64_t i = 0; i < t->n && i < 40; i++) fprintf(stderr, " %d", t->ids[i]);
    fprintf(stderr, "\n");
}

static void check_stream(hc_tokenizer *t, const hc_tokens *ids, const char *want, const char *label) {
    hc_detokenizer *d;
    CHECK_OK(hc_detokenizer_new(t, false, &d));
    if (!d) return;
    char buf[4096];
    size_t n = 0;
    bool ok = true;
    for (int64_t i = 0; i < ids->n && ok; i++) {
        const char *s;
        size_t l;
        ok = hc_detokenizer_push(d, ids->ids[i], &s, &l) == HC_OK;
        if (ok && n + l < sizeof buf) memcpy(buf + n, s, l), n += l;
    }
    const char *s;
    size_t l;
    if (ok && hc_detokenizer_flush(d, &s, &l) == HC_OK && n + l < sizeof buf) memcpy(buf + n, s, l), n += l;
    buf[n] = 0;
    CHECK(ok && !strcmp(buf, want), "%s: streamed decode '%s' != '%s'", label, buf, want);
    hc_detokenizer_free(d);
}

static void check_vectors(const char *name, const char *dir, const hc_json *entry) {
    hc_tokenizer *t;
    hc_status st = hc_tokenizer_load(dir, NULL, &t);
    CHECK(st == HC_OK, "%s: load: %s", name, hc_last_error());
    if (st) return;
    const hc_json *cases = hc_json_get(entry, "cases");
    int bad = 0;
    for (size_t i = 0; cases && i < cases->len; i++) {
        const hc_json *c = &cases->u.items[i];
        const hc_json *text = hc_json_get(c, "text");
        hc_tokens a = {0}, b = {0};
        CHECK_OK(hc_tokenizer_encode(t, text->u.str, text->len, false, &a));
        CHECK_OK(hc_tokenizer_encode(t, text->u.str, text->len, true, &b));
        bool ok_a = ids_equal(&a, hc_json_get(c, "ids")), ok_b = ids_equal(&b, hc_json_get(c, "ids_special"));
        CHECK(ok_a, "%s case %zu %s: ids differ", name, i, text->u.str);
        CHECK(ok_b, "%s case %zu %s: ids with specials differ", name, i, text->u.str);
        if (!ok_a) print_ids("got", &a);
        char *dec = NULL;
        const char *want = hc_json_str(c, "decoded", "");
        hc_tokens ref = {0};
        const hc_json *ids_special = hc_json_get(c, "ids_special");
        for (size_t k = 0; k < ids_special->len; k++) {
            int32_t id = (int32_t)ids_special->u.items[k].u.num.i;
            hc_tokens *r = &ref;
            if (r->n == r->cap) {
                r->cap = r->cap ? r->cap * 2 : 64;
                r->ids = realloc(r->ids, (size_t)r->cap * sizeof *r->ids);
            }
            r->ids[r->n++] = id;
        }
        CHECK_OK(hc_tokenizer_decode(t, ref.ids, ref.n, false, &dec, NULL));
        bool ok_d = dec && !strcmp(dec, want);
        CHECK(ok_d, "%s case %zu: decoded '%s' != '%s'", name, i, dec ? dec : "(null)", want);
        if (ok_d) {
            char label[64];
            snprintf(label, sizeof label, "%s case %zu", name, i);
            check_stream(t, &ref, want, label);
        }
        /* Round trip wherever HF's own holds. */
        if (!strcmp(want, text->u.str)) {
            char *rt = NULL;
            CHECK_OK(hc_tokenizer_decode(t, a.ids, a.n, false, &rt, NULL));
            CHECK(rt && !strcmp(rt, text->u.str), "%s case %zu: round trip gives '%s'", name, i, rt ? rt : "");
            hc_free(rt);
        }
        bad += !ok_a || !ok_b || !ok_d;
        hc_free(dec);
        hc_tokens_free(&a);
        hc_tokens_free(&b);
        hc_tokens_free(&ref);
    }
    /* Chat renders are tokenized without added specials, as apply_chat_template does. */
    const hc_json *chat = hc_json_get(entry, "chat");
    for (size_t i = 0; chat && i < chat->len; i++) {
        const hc_json *r = hc_json_get(&chat->u.items[i], "rendered");
        if (!r) continue;
        hc_tokens a = {0};
        CHECK_OK(hc_tokenizer_encode(t, r->u.str, r->len, false, &a));
        CHECK(ids_equal(&a, hc_json_get(&chat->u.items[i], "ids")), "%s chat %zu: ids differ", name, i);
        hc_tokens_free(&a);
    }
    printf("  %-12s %zu cases, %zu chats, %d mismatched\n", name, cases ? cases->len : 0, chat ? chat->len : 0, bad);
    hc_tokenizer_free(t);
}

/* llama.cpp's vectors: inputs separated by "\n__ggml_vocab_test__\n", one line of ids each. */
/* llama.cpp made its vectors with the tokenizers library on tokenizer.json alone (raw). */
static void check_llamacpp(const char *name, const char *dir, const char *base, bool raw) {
    char inp[1024], outp[1024];
    snprintf(inp, sizeof inp, "%s.inp", base);
    snprintf(outp, sizeof outp, "%s.out", base);
    char *in_text, *out_text;
    if (hc_file_read_all(inp, &in_text, NULL) || hc_file_read_all(outp, &out_text, NULL)) {
        printf("  %s: llama.cpp vectors skipped (%s not found)\n", name, inp);
        skipped++;
        return;
    }
    hc_tokenizer *t;
    hc_tokenizer_params tp = hc_tokenizer_default_params();
    tp.raw_tokenizer_json = raw;
    CHECK_OK(hc_tokenizer_load(dir, &tp, &t));
    if (!t) return;
    const char *sep = "\n__ggml_vocab_test__\n";
    char *p = in_text, *line = out_text;
    int n = 0, bad = 0;
    while (p && *line) {
        char *next = strstr(p, sep);
        size_t len = next ? (size_t)(next - p) : strlen(p);
        char *eol = strchr(line, '\n');
        if (eol) *eol = 0;
        hc_tokens a = {0};
        CHECK_OK(hc_tokenizer_encode(t, p, len, false, &a));
        char got[8192];
        size_t g = 0;
        got[0] = 0;
        for (int64_t i = 0; i < a.n && g + 16 < sizeof got; i++) g += (size_t)snprintf(got + g, sizeof got - g, " %d", a.ids[i]);
        const char *want = line;
        while (*want == ' ') want++;
        const char *gotp = got;
        while (*gotp == ' ') gotp++;
        if (strcmp(gotp, want)) {
            bad++;
            CHECK(false, "%s llama.cpp input %d '%.*s': got [%s] want [%s]", name, n, (int)len, p, gotp, want);
        }
        hc_tokens_free(&a);
        n++;
        p = next ? next + strlen(sep) : NULL;
        line = eol ? eol + 1 : line + strlen(line);
    }
    printf("  %-12s %d llama.cpp vectors, %d mismatched\n", name, n, bad);
    hc_tokenizer_free(t);
    free(in_text);
    free(out_text);
}


static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void expect_load_error(const char *tmp, const char *json, hc_status want, const char *needle) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/bad", tmp);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    write_text(path, json);
    hc_tokenizer *t = NULL;
    hc_status s = hc_tokenizer_load(dir, NULL, &t);
    CHECK(s == want, "load of %.60s -> %s", json, hc_status_name(s));
    CHECK(strstr(hc_last_error(), needle) != NULL, "message has '%s': %s", needle, hc_last_error());
    hc_tokenizer_free(t);
}

static uint64_t rng = 7;
static uint64_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Garbled input never crashes: invalid UTF-8 becomes U+FFFD; bad ids are refused. */
static void test_bad_input(const char *tmp) {
    expect_load_error(tmp, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"normalizer\": {\"type\": \"Precompiled\"}}",
                      HC_ERR_UNSUPPORTED, "unsupported normalizer 'Precompiled'");
    expect_load_error(tmp, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"UnicodeScripts\"}}",
                      HC_ERR_UNSUPPORTED, "unsupported pre_tokenizer 'UnicodeScripts'");
    expect_load_error(tmp, "{\"model\": {\"type\": \"WordLevel\", \"vocab\": {}}}", HC_ERR_UNSUPPORTED,
                      "unsupported tokenizer model 'WordLevel'");
    expect_load_error(tmp, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"decoder\": {\"type\": \"CTC\"}}",
                      HC_ERR_UNSUPPORTED, "unsupported decoder 'CTC'");
    expect_load_error(tmp, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}", HC_ERR_FORMAT,
                      "merges[0]");
    expect_load_error(tmp, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0", HC_ERR_FORMAT, "tokenizer.json:1:");
    /* an id far past the vocabulary's size would size the id table by it (a fuzzer's 666666665: 8 GB) */
    expect_load_error(tmp, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 666666665}, \"merges\": []}}",
                      HC_ERR_FORMAT, "vocab entry 'b' has no valid id (0 to about the vocabulary's 2 entries)");
    expect_load_error(tmp, "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 4294967296}}}", HC_ERR_FORMAT,
                      "vocab entry 'a' has no valid id");
    expect_load_error(tmp, "{\"model\": {\"type\": \"BPE\", \"vocab\": {}}, \"pre_tokenizer\": {\"type\": \"Split\", "
                           "\"pattern\": {\"Regex\": \"(unclosed\"}, \"behavior\": \"Isolated\"}}",
                      HC_ERR_UNSUPPORTED, "does not compile");
    /* A truncated copy of a real tokenizer.json. */
    char path[1024], *text;
    size_t n;
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/mistral7b/tokenizer.json", test_source_dir());
    if (hc_file_read_all(path, &text, &n) == HC_OK) {
        text[n / 2] = 0;
        expect_load_error(tmp, text, HC_ERR_FORMAT, "tokenizer.json:");
        free(text);
    }
    hc_tokenizer *t;
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/qwen3", test_source_dir());
    CHECK_OK(hc_tokenizer_load(path, NULL, &t));
    if (!t) return;
    hc_tokens ids = {0};
    CHECK_OK(hc_tokenizer_encode(t, "a\xff\xfe b\xc3", 6, false, &ids));
    char *dec = NULL;
    CHECK_OK(hc_tokenizer_decode(t, ids.ids, ids.n, false, &dec, NULL));
    CHECK(dec && !strcmp(dec, "a\xef\xbf\xbd\xef\xbf\xbd b\xef\xbf\xbd"), "invalid UTF-8 becomes U+FFFD: %s", dec);
    hc_free(dec);
    int32_t bad[2] = {5, 999999};
    CHECK(hc_tokenizer_decode(t, bad, 2, false, &dec, NULL) == HC_ERR_RANGE, "an id outside the vocab is refused");
    char buf[256];
    for (int it = 0; it < 2000; it++) {
        size_t len = rnd() % sizeof buf;
        for (size_t k = 0; k < len; k++) buf[k] = (char)rnd();
        CHECK(hc_tokenizer_encode(t, buf, len, true, &ids) == HC_OK, "random bytes encode");
    }
    hc_tokens_free(&ids);
    hc_tokenizer_free(t);
}

int main(void) {
    char path[2048], dir[2048];
    const char *src = test_source_dir(), *shared = test_shared_fixtures();
    hc_json_doc local, all;
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/vectors.json", src);
    CHECK_OK(hc_json_parse_file(&local, path));
    snprintf(path, sizeof path, "%s/tokenizers/vectors.json", shared);
    bool have_shared = hc_json_parse_file(&all, path) == HC_OK;
    if (!have_shared) printf("  skipped: %s not found (Llama 2/3 and Gemma 3 tokenizers)\n", path);

    snprintf(dir, sizeof dir, "%s/models/stories260K", src);
    check_vectors("stories260K", dir, hc_json_get(local.root, "stories260K"));
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tokenizers/qwen3", src);
    check_vectors("qwen3", dir, hc_json_get(local.root, "qwen3"));
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/llamacpp-vectors/ggml-vocab-qwen2.gguf", src);
    check_llamacpp("qwen3", dir, path, false);
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tokenizers/mistral7b", src);
    check_vectors("mistral7b", dir, hc_json_get(local.root, "mistral7b"));

    char tmp[256];
    snprintf(tmp, sizeof tmp, "/tmp/hubcap-test-tok-%ld", (long)getpid());
    mkdir(tmp, 0755);
    if (have_shared) {
        snprintf(dir, sizeof dir, "%s/tokenizers/llama3", shared);
        check_vectors("llama3", dir, hc_json_get(all.root, "llama3"));
        snprintf(path, sizeof path, "%s/tokenizers/llamacpp-vectors/ggml-vocab-llama-bpe.gguf", shared);
        check_llamacpp("llama3", dir, path, false);
        snprintf(dir, sizeof dir, "%s/tokenizers/llama2", shared);
        check_vectors("llama2", dir, hc_json_get(all.root, "llama2"));
        snprintf(path, sizeof path, "%s/tokenizers/llamacpp-vectors/ggml-vocab-llama-spm.gguf", shared);
        check_llamacpp("llama2 (raw)", dir, path, true);
        snprintf(path, sizeof path, "%s/tokenizers/llamacpp-vectors/ggml-vocab-phi-3.gguf", shared);
        check_llamacpp("phi-3 (raw)", dir, path, true);
        /* The same Llama 2 tokenizer from tokenizer.model alone. */
        char spdir[512], f[2600], t[700];
        snprintf(spdir, sizeof spdir, "%s/llama2-spm", tmp);
        mkdir(spdir, 0755);
        snprintf(f, sizeof f, "%s/tokenizer.model", dir);
        snprintf(t, sizeof t, "%s/tokenizer.model", spdir);
        test_copy_file(f, t);
        snprintf(f, sizeof f, "%s/tokenizer_config.json", dir);
        snprintf(t, sizeof t, "%s/tokenizer_config.json", spdir);
        test_copy_file(f, t);
        check_vectors("llama2.model", spdir, hc_json_get(all.root, "llama2"));
        /* Gemma 3's tokenizer.json is stored xz-compressed. */
        char gdir[512], cmd[1600];
        snprintf(gdir, sizeof gdir, "%s/gemma3", tmp);
        mkdir(gdir, 0755);
        snprintf(cmd, sizeof cmd, "xz -dc '%s/tokenizers/gemma3/tokenizer.json.xz' > '%s/tokenizer.json' 2>/dev/null && cp '%s/tokenizers/gemma3/tokenizer_config.json' '%s/'",
                 shared, gdir, shared, gdir);
        if (system(cmd) == 0) {
            check_vectors("gemma3", gdir, hc_json_get(all.root, "gemma3"));
            snprintf(path, sizeof path, "%s/tokenizers/llamacpp-vectors/ggml-vocab-gemma-4.gguf", shared);
            check_llamacpp("gemma3", gdir, path, false);
        } else {
            printf("  skipped: gemma3 (xz not available)\n");
            skipped++;
        }
        hc_json_free(&all);
    } else {
        skipped += 4;
    }
    test_bad_input(tmp);
    snprintf(path, sizeof path, "rm -rf '%s'", tmp);
    if (system(path) != 0) fprintf(stderr, "could not remove %s\n", tmp);
    hc_json_free(&local);
    if (skipped) printf("tokenizer: %d groups skipped\n", skipped);
    return test_finish("tokenizer");
}
