/* The tokenizer: loading tokenizer.json and tokenizer_config.json, added tokens, encode,
 * decode and streaming decode. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "base/file.h"
#include "base/status.h"
#include "format/hub.h"
#include "tokenizer/tokenizer_internal.h"

void hc_free(void *p) { free(p); }

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* ---- loading ---------------------------------------------------------------------------- */

static hc_status parse_template(hc_tokenizer *t, const hc_json *pp, const char *src) {
    const hc_json *single = hc_json_get(pp, "single");
    const hc_json *specials = hc_json_get(pp, "special_tokens");
    if (!single || single->type != HC_JSON_ARRAY) return hc_fail(HC_ERR_FORMAT, "%s: TemplateProcessing needs 'single'", src);
    t->post = calloc(single->len ? single->len : 1, sizeof *t->post);
    if (!t->post) return hc_fail(HC_ERR_NOMEM, "out of memory");
    t->n_post = (int)single->len;
    for (size_t i = 0; i < single->len; i++) {
        const hc_json *it = &single->u.items[i];
        const hc_json *sp = hc_json_get(it, "SpecialToken");
        if (!sp) {
            if (!hc_json_get(it, "Sequence")) return hc_fail(HC_ERR_FORMAT, "%s: bad TemplateProcessing item", src);
            t->post[i].n = 0;
            continue;
        }
        const char *name = hc_json_str(sp, "id", NULL);
        const hc_json *def = name ? hc_json_get(specials, name) : NULL;
        const hc_json *ids = hc_json_get(def, "ids");
        if (!ids || ids->type != HC_JSON_ARRAY || ids->len == 0 || ids->len > 8)
            return hc_fail(HC_ERR_FORMAT, "%s: TemplateProcessing special token '%s' has no ids", src, name ? name : "?");
        for (size_t k = 0; k < ids->len; k++) t->post[i].ids[k] = (int32_t)ids->u.items[k].u.num.i;
        t->post[i].n = (int)ids->len;
    }
    return HC_OK;
}

/* [cls] $A [sep] for BertProcessing / RobertaProcessing. */
static hc_status parse_cls_sep(hc_tokenizer *t, const hc_json *pp, const char *src) {
    const hc_json *cls = hc_json_at(hc_json_get(pp, "cls"), 1), *sep = hc_json_at(hc_json_get(pp, "sep"), 1);
    if (!cls || !sep) return hc_fail(HC_ERR_FORMAT, "%s: post_processor needs cls and sep", src);
    t->post = calloc(3, sizeof *t->post);
    if (!t->post) return hc_fail(HC_ERR_NOMEM, "out of memory");
    t->n_post = 3;
    t->post[0] = (hc_template_item){{(int32_t)cls->u.num.i}, 1};
    t->post[2] = (hc_template_item){{(int32_t)sep->u.num.i}, 1};
    return HC_OK;
}

static hc_status parse_post(hc_tokenizer *t, const hc_json *pp, const char *src) {
    if (hc_json_is_null(pp)) return HC_OK;
    const char *type = hc_json_str(pp, "type", "");
    if (!strcmp(type, "TemplateProcessing")) return parse_template(t, pp, src);
    if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing")) return parse_cls_sep(t, pp, src);
    if (!strcmp(type, "ByteLevel")) return HC_OK; /* offsets only */
    if (!strcmp(type, "Sequence")) {
        const hc_json *list = hc_json_get(pp, "processors");
        for (size_t i = 0; list && i < list->len; i++) {
            hc_status s = parse_post(t, &list->u.items[i], src);
            if (s) return s;
        }
        return HC_OK;
    }
    return hc_fail(HC_ERR_UNSUPPORTED,
                   "%s: unsupported post_processor '%s' (supported: TemplateProcessing, ByteLevel, Sequence, "
                   "BertProcessing, RobertaProcessing)",
                   src, type);
}

static hc_status parse_added(hc_tokenizer *t, const hc_json *list, const char *src) {
    if (hc_json_is_null(list)) return HC_OK;
    if (list->type != HC_JSON_ARRAY) return hc_fail(HC_ERR_FORMAT, "%s: added_tokens must be a list", src);
    t->added = calloc(list->len ? list->len : 1, sizeof *t->added);
    if (!t->added) return hc_fail(HC_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < list->len; i++) {
        const hc_json *a = &list->u.items[i];
        const hc_json *id = hc_json_get(a, "id");
        const hc_json *content = hc_json_get(a, "content");
        if (!id || id->type != HC_JSON_NUMBER || id->u.num.i < 0 || id->u.num.i > INT32_MAX || !content ||
            content->type != HC_JSON_STRING)
            return hc_fail(HC_ERR_FORMAT, "%s: added_tokens[%zu] needs an id and a content", src, i);
        hc_added_token *at = &t->added[t->n_added++];
        at->id = (int32_t)id->u.num.i;
        at->len = content->len;
        if (!(at->content = dup_n(content->u.str, content->len))) return hc_fail(HC_ERR_NOMEM, "out of memory");
        const hc_json *v;
        at->special = (v = hc_json_get(a, "special")) && v->type == HC_JSON_BOOL && v->u.b;
        at->lstrip = (v = hc_json_get(a, "lstrip")) && v->type == HC_JSON_BOOL && v->u.b;
        at->rstrip = (v = hc_json_get(a, "rstrip")) && v->type == HC_JSON_BOOL && v->u.b;
        at->single_word = (v = hc_json_get(a, "single_word")) && v->type == HC_JSON_BOOL && v->u.b;
        at->normalized = (v = hc_json_get(a, "normalized")) && v->type == HC_JSON_BOOL && v->u.b;
    }
    return HC_OK;
}

static hc_status load_json(hc_tokenizer *t, const hc_json *root, const char *src) {
    if (!root || root->type != HC_JSON_OBJECT) return hc_fail(HC_ERR_FORMAT, "%s: not a JSON object", src);
    const hc_json *model = hc_json_get(root, "model");
    if (!model || model->type != HC_JSON_OBJECT) return hc_fail(HC_ERR_FORMAT, "%s: no 'model'", src);
    const char *type = hc_json_str(model, "type", hc_json_get(model, "merges") ? "BPE" : "");
    hc_status s;
    if (!strcmp(type, "BPE")) s = hc_bpe_parse(&t->model, model, src);
    else if (!strcmp(type, "Unigram")) s = hc_unigram_parse(&t->model, model, src);
    else if (!strcmp(type, "WordPiece")) s = hc_wordpiece_parse(&t->model, model, src);
    else
        return hc_fail(HC_ERR_UNSUPPORTED, "%s: unsupported tokenizer model '%s' (supported: BPE, Unigram, WordPiece)",
                       src, *type ? type : "(none)");
    if (s) return s;
    const hc_json *j;
    if (!hc_json_is_null(j = hc_json_get(root, "normalizer"))) {
        if (!(t->normalizer = calloc(1, sizeof *t->normalizer))) return hc_fail(HC_ERR_NOMEM, "out of memory");
        if ((s = hc_normalizer_parse(t->normalizer, j, src))) return s;
    }
    if (!hc_json_is_null(j = hc_json_get(root, "pre_tokenizer"))) {
        if (!(t->pretok = calloc(1, sizeof *t->pretok))) return hc_fail(HC_ERR_NOMEM, "out of memory");
        if ((s = hc_pretok_parse(t->pretok, j, src))) return s;
    }
    if (!hc_json_is_null(j = hc_json_get(root, "decoder"))) {
        if (!(t->decoder = calloc(1, sizeof *t->decoder))) return hc_fail(HC_ERR_NOMEM, "out of memory");
        if ((s = hc_decoder_parse(t->decoder, j, src))) return s;
    }
    if ((s = parse_post(t, hc_json_get(root, "post_processor"), src))) return s;
    return parse_added(t, hc_json_get(root, "added_tokens"), src);
}

static const hc_added_token *added_by_id(const hc_tokenizer *t, int32_t id) {
    for (int i = t->n_added - 1; i >= 0; i--)
        if (t->added[i].id == id) return &t->added[i];
    return NULL;
}

static int32_t token_id(const hc_tokenizer *t, const char *s) {
    size_t n = strlen(s);
    for (int i = t->n_added - 1; i >= 0; i--)
        if (t->added[i].len == n && !memcmp(t->added[i].content, s, n)) return t->added[i].id;
    return hc_vocab_find(&t->model.vocab, s, n);
}

/* A special token in tokenizer_config.json: "<s>" or {"content": "<s>", ...}. */
static const char *config_token(const hc_json *cfg, const char *key) {
    const hc_json *v = hc_json_get(cfg, key);
    if (v && v->type == HC_JSON_STRING) return v->u.str;
    if (v && v->type == HC_JSON_OBJECT) return hc_json_str(v, "content", NULL);
    return NULL;
}

/* transformers (v5) builds LlamaTokenizer's pipeline itself, whatever tokenizer.json holds:
 * no normalizer, a Metaspace pre-tokenizer ("always" prepends for legacy tokenizers, "first"
 * otherwise; "never" without add_prefix_space), and Replace/ByteFallback/Fuse(/Strip) decoders. */
static hc_status apply_llama_pipeline(hc_tokenizer *t, bool add_prefix_space, bool legacy) {
    if (t->normalizer) hc_normalizer_free(t->normalizer);
    free(t->normalizer);
    t->normalizer = NULL;
    if (t->pretok) hc_pretok_free(t->pretok);
    if (!t->pretok && !(t->pretok = malloc(sizeof *t->pretok))) return hc_fail(HC_ERR_NOMEM, "out of memory");
    memset(t->pretok, 0, sizeof *t->pretok);
    t->pretok->type = PRE_METASPACE;
    memcpy(t->pretok->replacement, "\xe2\x96\x81", 4);
    t->pretok->prepend = !add_prefix_space ? PREPEND_NEVER : legacy ? PREPEND_ALWAYS : PREPEND_FIRST;
    t->pretok->split = false;
    if (t->decoder) hc_decoder_free(t->decoder);
    free(t->decoder);
    t->decoder = NULL;
    hc_status s = hc_decoder_llama(&t->decoder, add_prefix_space);
    if (t->model.kind == MODEL_BPE) {
        t->model.fuse_unk = true;
        t->model.byte_fallback = true;
    }
    return s;
}

/* The keys load_config reads, each of the type transformers expects: a wrong one (a template
 * that is a number, add_bos_token "yes") is refused, not read as absent. */
static hc_status check_config_types(const hc_json *cfg, const char *path) {
    if (cfg->type != HC_JSON_OBJECT) return hc_fail(HC_ERR_FORMAT, "%s: not a JSON object", path);
    static const char *const tokens[] = {"bos_token", "eos_token", "pad_token", "unk_token"};
    for (size_t i = 0; i < sizeof tokens / sizeof tokens[0]; i++) {
        const hc_json *v = hc_json_get(cfg, tokens[i]);
        if (hc_json_is_null(v) || v->type == HC_JSON_STRING) continue;
        const hc_json *content = v->type == HC_JSON_OBJECT ? hc_json_get(v, "content") : NULL;
        if (!content || content->type != HC_JSON_STRING)
            return hc_fail(HC_ERR_FORMAT, "%s: '%s' must be a string or {\"content\": string}", path, tokens[i]);
    }
    static const char *const flags[] = {"add_bos_token", "add_eos_token", "clean_up_tokenization_spaces",
                                        "add_prefix_space", "legacy"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        const hc_json *v = hc_json_get(cfg, flags[i]);
        if (!hc_json_is_null(v) && v->type != HC_JSON_BOOL)
            return hc_fail(HC_ERR_FORMAT, "%s: '%s' must be true or false", path, flags[i]);
    }
    const hc_json *cls = hc_json_get(cfg, "tokenizer_class");
    if (!hc_json_is_null(cls) && cls->type != HC_JSON_STRING)
        return hc_fail(HC_ERR_FORMAT, "%s: 'tokenizer_class' must be a string", path);
    const hc_json *ct = hc_json_get(cfg, "chat_template");
    bool ok = hc_json_is_null(ct) || ct->type == HC_JSON_STRING || ct->type == HC_JSON_ARRAY;
    for (size_t i = 0; ok && ct && ct->type == HC_JSON_ARRAY && i < ct->len; i++) {
        const hc_json *e = &ct->u.items[i], *name = hc_json_get(e, "name"), *tmpl = hc_json_get(e, "template");
        ok = e->type == HC_JSON_OBJECT && name && name->type == HC_JSON_STRING && tmpl && tmpl->type == HC_JSON_STRING;
    }
    if (!ok)
        return hc_fail(HC_ERR_FORMAT, "%s: 'chat_template' must be a string or a list of {\"name\", \"template\"} strings",
                       path);
    return HC_OK;
}

static hc_status load_config(hc_tokenizer *t, const char *dir, bool raw) {
    char path[4096];
    hc_status s = hc_path_join(path, sizeof path, dir, "tokenizer_config.json");
    if (s) return s;
    if (hc_path_exists(path)) {
        hc_json_doc doc;
        if ((s = hc_json_parse_file(&doc, path))) return s;
        const hc_json *cfg = doc.root;
        if ((s = check_config_types(cfg, path))) {
            hc_json_free(&doc);
            return s;
        }
        const char *bos = config_token(cfg, "bos_token"), *eos = config_token(cfg, "eos_token");
        const char *pad = config_token(cfg, "pad_token"), *unk = config_token(cfg, "unk_token");
        if (bos && !(t->bos_token = dup_n(bos, strlen(bos)))) s = hc_fail(HC_ERR_NOMEM, "out of memory");
        if (eos && !(t->eos_token = dup_n(eos, strlen(eos)))) s = hc_fail(HC_ERR_NOMEM, "out of memory");
        if (bos) t->bos_id = token_id(t, bos);
        if (eos) t->eos_id = token_id(t, eos);
        if (pad) t->pad_id = token_id(t, pad);
        if (unk) t->unk_id = token_id(t, unk);
        const hc_json *v = hc_json_get(cfg, "clean_up_tokenization_spaces");
        t->clean_up_spaces = v && v->type == HC_JSON_BOOL && v->u.b;
        /* chat_template: a string, or a list of {name, template} (the "default" one is used). */
        const hc_json *ct = hc_json_get(cfg, "chat_template");
        const char *tmpl = NULL;
        if (ct && ct->type == HC_JSON_STRING) tmpl = ct->u.str;
        for (size_t i = 0; ct && ct->type == HC_JSON_ARRAY && i < ct->len; i++)
            if (!strcmp(hc_json_str(&ct->u.items[i], "name", ""), "default")) tmpl = hc_json_str(&ct->u.items[i], "template", NULL);
        if (tmpl && !s && !(t->chat_template = dup_n(tmpl, strlen(tmpl)))) s = hc_fail(HC_ERR_NOMEM, "out of memory");
        /* Llama and Gemma tokenizers in transformers rebuild their template from add_bos_token and
         * add_eos_token, whatever tokenizer.json's post_processor says. */
        const char *cls = hc_json_str(cfg, "tokenizer_class", "");
        const hc_json *ab = hc_json_get(cfg, "add_bos_token"), *ae = hc_json_get(cfg, "add_eos_token");
        bool rebuilds = !strncmp(cls, "LlamaTokenizer", 14) || !strncmp(cls, "GemmaTokenizer", 14) ||
                        !strncmp(cls, "CodeLlamaTokenizer", 18);
        if (!s && !raw && rebuilds && ((ab && ab->type == HC_JSON_BOOL) || (ae && ae->type == HC_JSON_BOOL))) {
            bool add_bos = ab && ab->type == HC_JSON_BOOL ? ab->u.b : true;
            bool add_eos = ae && ae->type == HC_JSON_BOOL && ae->u.b;
            free(t->post);
            t->post = calloc(3, sizeof *t->post);
            t->n_post = 0;
            if (!t->post) s = hc_fail(HC_ERR_NOMEM, "out of memory");
            if (!s && add_bos && t->bos_id >= 0) t->post[t->n_post++] = (hc_template_item){{t->bos_id}, 1};
            if (!s) t->post[t->n_post++] = (hc_template_item){{0}, 0};
            if (!s && add_eos && t->eos_id >= 0) t->post[t->n_post++] = (hc_template_item){{t->eos_id}, 1};
        }
        if (!s && !raw && (!strcmp(cls, "LlamaTokenizer") || !strcmp(cls, "LlamaTokenizerFast"))) {
            const hc_json *aps = hc_json_get(cfg, "add_prefix_space"), *leg = hc_json_get(cfg, "legacy");
            s = apply_llama_pipeline(t, !(aps && aps->type == HC_JSON_BOOL && !aps->u.b),
                                     leg && leg->type == HC_JSON_BOOL && leg->u.b);
        }
        hc_json_free(&doc);
        if (s) return s;
    }
    /* A separate chat_template.jinja wins over the one in tokenizer_config.json. */
    if ((s = hc_path_join(path, sizeof path, dir, "chat_template.jinja"))) return s;
    if (hc_path_exists(path)) {
        char *text;
        if ((s = hc_file_read_all(path, &text, NULL))) return s;
        free(t->chat_template);
        t->chat_template = text;
    }
    return HC_OK;
}

static hc_status build_trie(hc_tokenizer *t) {
    size_t total = 1;
    for (int i = 0; i < t->n_added; i++) total += t->added[i].len;
    t->trie = calloc(total, sizeof *t->trie);
    t->trie_token = malloc(total * sizeof *t->trie_token);
    if (!t->trie || !t->trie_token) return hc_fail(HC_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < total; i++) t->trie_token[i] = -1;
    t->n_nodes = 1;
    for (int i = 0; i < t->n_added; i++) {
        const hc_added_token *a = &t->added[i];
        if (a->len == 0) continue;
        int32_t node = 0;
        for (size_t k = 0; k < a->len; k++) {
            unsigned char c = (unsigned char)a->content[k];
            if (!t->trie[node][c]) t->trie[node][c] = t->n_nodes++;
            node = t->trie[node][c];
        }
        t->trie_token[node] = i; /* a later duplicate wins */
    }
    return HC_OK;
}

hc_tokenizer_params hc_tokenizer_default_params(void) {
    hc_tokenizer_params p = {.raw_tokenizer_json = false};
    return p;
}

hc_status hc_tokenizer_load(const char *dir, const hc_tokenizer_params *params, hc_tokenizer **out) {
    *out = NULL;
    const hc_tokenizer_params p = params ? *params : hc_tokenizer_default_params();
    if (hc_is_hub_handle(dir)) {
        char *local;
        hc_status s = hc_hub_resolve(dir, NULL, &local);
        if (s) return s;
        s = hc_tokenizer_load(local, params, out);
        free(local);
        return s;
    }
    hc_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return hc_fail(HC_ERR_NOMEM, "out of memory");
    t->bos_id = t->eos_id = t->pad_id = t->unk_id = -1;
    char path[4096];
    hc_status s = hc_path_join(path, sizeof path, dir, "tokenizer.json");
    if (!s && hc_path_exists(path)) {
        hc_json_doc doc;
        s = hc_json_parse_file(&doc, path);
        if (!s) {
            s = load_json(t, doc.root, path);
            hc_json_free(&doc);
        }
    } else if (!s) {
        s = hc_path_join(path, sizeof path, dir, "tokenizer.model");
        if (!s && hc_path_exists(path)) s = hc_sentencepiece_load(t, path);
        else if (!s) s = hc_fail(HC_ERR_NOT_FOUND, "%s: no tokenizer.json or tokenizer.model", dir);
    }
    if (!s) s = load_config(t, dir, p.raw_tokenizer_json);
    if (!s) s = build_trie(t);
    if (!s && !(t->path = dup_n(dir, strlen(dir)))) s = hc_fail(HC_ERR_NOMEM, "out of memory");
    if (s) {
        hc_tokenizer_free(t);
        return s;
    }
    t->vocab_size = t->model.vocab.n_ids;
    for (int64_t i = t->model.vocab.n_ids; i-- > 0;)
        if (t->model.vocab.str[i]) {
            t->vocab_size = i + 1;
            break;
        }
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id >= t->vocab_size) t->vocab_size = t->added[i].id + 1;
    *out = t;
    return HC_OK;
}

void hc_tokenizer_free(hc_tokenizer *t) {
    if (!t) return;
    if (t->normalizer) hc_normalizer_free(t->normalizer);
    free(t->normalizer);
    if (t->pretok) hc_pretok_free(t->pretok);
    free(t->pretok);
    if (t->decoder) hc_decoder_free(t->decoder);
    free(t->decoder);
    hc_tok_model_free(&t->model);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    free(t->trie);
    free(t->trie_token);
    free(t->post);
    free(t->chat_template);
    free(t->bos_token);
    free(t->eos_token);
    free(t->path);
    free(t);
}

/* ---- encoding --------------------------------------------------------------------------- */

static bool is_space_at(const char *s, size_t n, size_t i, size_t *len) {
    int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
    if (k <= 0) return false;
    *len = (size_t)k;
    const utf8proc_property_t *p = utf8proc_get_property(c);
    return c == ' ' || (c >= 0x09 && c <= 0x0d) || c == 0x85 || p->category == UTF8PROC_CATEGORY_ZS ||
           p->category == UTF8PROC_CATEGORY_ZL || p->category == UTF8PROC_CATEGORY_ZP;
}

static bool is_word_char_before(const char *s, size_t i) {
    if (i == 0) return false;
    size_t b = i - 1;
    while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80) b--;
    int32_t c;
    if (utf8proc_iterate((const utf8proc_uint8_t *)s + b, (utf8proc_ssize_t)(i - b), &c) <= 0) return false;
    utf8proc_category_t cat = utf8proc_category(c);
    return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_NO) || c == '_';
}

static bool is_word_char_at(const char *s, size_t n, size_t i) {
    if (i >= n) return false;
    int32_t c;
    if (utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c) <= 0) return false;
    utf8proc_category_t cat = utf8proc_category(c);
    return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_NO) || c == '_';
}

/* Splits s into text pieces and added-token pieces, leftmost-longest, for the added tokens
 * whose `normalized` flag equals `normalized`. `flag` is given to the first text piece when it
 * starts s. */
static bool split_added(const hc_tokenizer *t, const char *s, size_t n, bool normalized, int32_t first_flag,
                        hc_pieces *out) {
    size_t text_start = 0, i = 0;
    while (i < n) {
        int32_t node = 0, best = -1;
        size_t best_end = 0;
        for (size_t k = i; k < n; k++) {
            node = t->trie[node][(unsigned char)s[k]];
            if (!node) break;
            int32_t a = t->trie_token[node];
            if (a >= 0 && t->added[a].normalized == normalized) {
                const hc_added_token *at = &t->added[a];
                if (at->single_word && (is_word_char_before(s, i) || is_word_char_at(s, n, k + 1))) continue;
                best = a;
                best_end = k + 1;
            }
        }
        if (best < 0) {
            i++;
            continue;
        }
        const hc_added_token *at = &t->added[best];
        size_t ms = i, me = best_end, sl;
        if (at->lstrip) { /* swallow the whitespace before it */
            while (ms > text_start) {
                size_t b = ms - 1;
                while (b > text_start && ((unsigned char)s[b] & 0xC0) == 0x80) b--;
                if (!is_space_at(s, n, b, &sl)) break;
                ms = b;
            }
        }
        if (at->rstrip)
            while (me < n && is_space_at(s, n, me, &sl)) me += sl;
        if (ms > text_start &&
            !hc_pieces_add(out, s + text_start, ms - text_start, text_start == 0 ? first_flag : HC_PIECE_TEXT))
            return false;
        if (!hc_pieces_add(out, at->content, at->len, at->id)) return false;
        text_start = i = me;
    }
    if (n > text_start && !hc_pieces_add(out, s + text_start, n - text_start, text_start == 0 ? first_flag : HC_PIECE_TEXT))
        return false;
    return true;
}

static bool model_encode(const hc_tok_model *m, const char *w, size_t n, hc_tokens *out) {
    switch (m->kind) {
    case MODEL_BPE: return hc_bpe_encode(m, w, n, out);
    case MODEL_UNIGRAM: return hc_unigram_encode(m, w, n, out);
    case MODEL_WORDPIECE: return hc_wordpiece_encode(m, w, n, out);
    }
    return false;
}

hc_status hc_tokenizer_encode(const hc_tokenizer *t, const char *text, size_t len, bool add_special, hc_tokens *out) {
    out->n = 0;
    hc_str clean = {0}, norm = {0};
    hc_pieces raw = {0}, normed = {0}, words = {0};
    bool ok = hc_utf8_lossy(&clean, text ? text : "", text ? len : 0) && hc_str_put(&clean, "", 0);
    ok = ok && split_added(t, clean.data, clean.len, false, HC_PIECE_TEXT_START, &raw);
    for (size_t i = 0; ok && i < raw.n; i++) {
        const char *s = raw.text.data + raw.start[i];
        if (raw.token[i] >= 0) {
            ok = hc_pieces_add(&normed, s, raw.len[i], raw.token[i]);
            continue;
        }
        if (t->normalizer) {
            ok = hc_normalize(t->normalizer, s, raw.len[i], &norm);
            s = norm.data;
        } else {
            norm.len = 0;
            ok = hc_str_put(&norm, s, raw.len[i]);
        }
        ok = ok && split_added(t, norm.data, norm.len, true, raw.token[i], &normed);
    }
    if (ok && t->pretok) {
        ok = hc_pretokenize(t->pretok, &normed, &words);
    } else if (ok) {
        hc_pieces tmp = words;
        words = normed;
        normed = tmp;
    }
    hc_tokens body = {0};
    for (size_t i = 0; ok && i < words.n; i++) {
        if (words.token[i] >= 0) ok = hc_tokens_push(&body, words.token[i]);
        else ok = model_encode(&t->model, words.text.data + words.start[i], words.len[i], &body);
    }
    if (ok && add_special && t->post) {
        for (int k = 0; ok && k < t->n_post; k++) {
            if (t->post[k].n == 0)
                for (int64_t i = 0; ok && i < body.n; i++) ok = hc_tokens_push(out, body.ids[i]);
            else
                for (int i = 0; ok && i < t->post[k].n; i++) ok = hc_tokens_push(out, t->post[k].ids[i]);
        }
    } else {
        for (int64_t i = 0; ok && i < body.n; i++) ok = hc_tokens_push(out, body.ids[i]);
    }
    hc_tokens_free(&body);
    hc_str_free(&clean);
    hc_str_free(&norm);
    hc_pieces_free(&raw);
    hc_pieces_free(&normed);
    hc_pieces_free(&words);
    return ok ? HC_OK : hc_fail(HC_ERR_NOMEM, "out of memory while encoding");
}

hc_status hc_tokenizer_encode_batch(const hc_tokenizer *t, const char *const *texts, int64_t n, bool add_special,
                                    int32_t pad_id, bool padding_left, hc_batch *out) {
    memset(out, 0, sizeof *out);
    if (n <= 0) return hc_fail(HC_ERR_INVALID_ARG, "an empty batch");
    if (pad_id < 0) pad_id = t->pad_id >= 0 ? t->pad_id : t->eos_id >= 0 ? t->eos_id : 0;
    hc_tokens *enc = calloc((size_t)n, sizeof *enc);
    out->lens = malloc(sizeof *out->lens * (size_t)n);
    hc_status st = (enc && out->lens) ? HC_OK : hc_fail(HC_ERR_NOMEM, "out of memory");
    int64_t T = 0;
    for (int64_t i = 0; i < n && !st; i++) {
        st = hc_tokenizer_encode(t, texts[i], strlen(texts[i]), add_special, &enc[i]);
        out->lens[i] = enc[i].n;
        if (enc[i].n > T) T = enc[i].n;
    }
    if (!st) {
        out->ids = malloc(sizeof *out->ids * (size_t)(n * (T ? T : 1)));
        out->mask = calloc((size_t)(n * (T ? T : 1)), 1);
        if (!out->ids || !out->mask) st = hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    for (int64_t i = 0; i < n && !st; i++) {
        const int64_t off = padding_left ? T - enc[i].n : 0;
        for (int64_t k = 0; k < T; k++) out->ids[i * T + k] = pad_id;
        memcpy(out->ids + i * T + off, enc[i].ids, sizeof(int32_t) * (size_t)enc[i].n);
        memset(out->mask + i * T + off, 1, (size_t)enc[i].n);
    }
    for (int64_t i = 0; enc && i < n; i++) hc_tokens_free(&enc[i]);
    free(enc);
    out->n = n;
    out->T = T;
    if (st) hc_batch_free(out);
    return st;
}

void hc_batch_free(hc_batch *b) {
    if (!b) return;
    free(b->ids);
    free(b->mask);
    free(b->lens);
    memset(b, 0, sizeof *b);
}

/* ---- decoding --------------------------------------------------------------------------- */

const char *hc_tokenizer_token(const hc_tokenizer *t, int32_t id) {
    const hc_added_token *a = added_by_id(t, id);
    if (a) return a->content;
    if (id >= 0 && id < t->model.vocab.n_ids) return t->model.vocab.str[id];
    return NULL;
}

bool hc_tokenizer_is_special(const hc_tokenizer *t, int32_t id) {
    const hc_added_token *a = added_by_id(t, id);
    return a && a->special;
}

hc_status hc_tokenizer_decode(const hc_tokenizer *t, const int32_t *ids, int64_t n, bool skip_special, char **text,
                              size_t *len) {
    *text = NULL;
    hc_pieces toks = {0};
    bool ok = true;
    for (int64_t i = 0; ok && i < n; i++) {
        const char *s = hc_tokenizer_token(t, ids[i]);
        if (!s) {
            hc_pieces_free(&toks);
            return hc_fail(HC_ERR_RANGE, "token id %d is not in the vocabulary (size %lld)", ids[i], (long long)t->vocab_size);
        }
        if (skip_special && hc_tokenizer_is_special(t, ids[i])) continue;
        const hc_added_token *a = added_by_id(t, ids[i]);
        ok = hc_pieces_add(&toks, s, a ? a->len : t->model.vocab.str_len[ids[i]], -1);
    }
    hc_str out = {0};
    ok = ok && hc_str_put(&out, "", 0);
    if (ok && t->decoder) {
        ok = hc_decode_tokens(t->decoder, &toks) && hc_str_put(&out, toks.text.data ? toks.text.data : "", toks.text.len);
    } else {
        for (size_t i = 0; ok && i < toks.n; i++)
            ok = (i ? hc_str_putc(&out, ' ') : true) && hc_str_put(&out, toks.text.data + toks.start[i], toks.len[i]);
    }
    hc_pieces_free(&toks);
    if (!ok) {
        hc_str_free(&out);
        return hc_fail(HC_ERR_NOMEM, "out of memory while decoding");
    }
    if (t->clean_up_spaces) hc_clean_up_spaces(&out);
    *text = out.data;
    if (len) *len = out.len;
    return HC_OK;
}

int64_t hc_tokenizer_vocab_size(const hc_tokenizer *t) { return t->vocab_size; }
int32_t hc_tokenizer_bos(const hc_tokenizer *t) { return t->bos_id; }
int32_t hc_tokenizer_eos(const hc_tokenizer *t) { return t->eos_id; }
const char *hc_tokenizer_chat_template(const hc_tokenizer *t) { return t->chat_template; }
const char *hc_tokenizer_bos_token(const hc_tokenizer *t) { return t->bos_token ? t->bos_token : ""; }
const char *hc_tokenizer_eos_token(const hc_tokenizer *t) { return t->eos_token ? t->eos_token : ""; }

/* ---- streaming decode (the window scheme of HF's DecodeStream) --------------------------- */

struct hc_detokenizer {
    const hc_tokenizer *t;
    bool skip_special;
    hc_tokens ids;        /* the window: context tokens, then the tokens not yet shown */
    char *prefix;         /* decode(ids) as of the last text handed out */
    size_t prefix_len;
    int64_t prefix_index; /* how many leading tokens of the window to drop at the next output */
    hc_str out;           /* the text handed to the caller */
};

hc_status hc_detokenizer_new(const hc_tokenizer *t, bool skip_special, hc_detokenizer **out) {
    hc_detokenizer *d = calloc(1, sizeof *d);
    if (!d) return hc_fail(HC_ERR_NOMEM, "out of memory");
    d->t = t;
    d->skip_special = skip_special;
    *out = d;
    return HC_OK;
}

/* Decoding the whole window and comparing with the previous decode keeps every decoder's
 * context (a leading-space strip, a byte sequence split across tokens) right. Text ending in
 * U+FFFD is held back until the character completes. */
hc_status hc_detokenizer_push(hc_detokenizer *d, int32_t id, const char **text, size_t *len) {
    *text = "";
    *len = 0;
    if (!hc_tokens_push(&d->ids, id)) return hc_fail(HC_ERR_NOMEM, "out of memory");
    char *s;
    size_t n;
    hc_status st = hc_tokenizer_decode(d->t, d->ids.ids, d->ids.n, d->skip_special, &s, &n);
    if (st) {
        d->ids.n--;
        return st;
    }
    const bool held = n >= 3 && !memcmp(s + n - 3, "\xEF\xBF\xBD", 3);
    if (n <= d->prefix_len || held) {
        free(s);
        return HC_OK;
    }
    d->out.len = 0;
    const size_t common = (d->prefix_len && !memcmp(s, d->prefix, d->prefix_len)) ? d->prefix_len : 0;
    bool ok = hc_str_put(&d->out, s + common, n - common);
    free(s);
    if (!ok) return hc_fail(HC_ERR_NOMEM, "out of memory");
    const int64_t new_prefix_index = d->ids.n - d->prefix_index;
    memmove(d->ids.ids, d->ids.ids + d->prefix_index, sizeof(int32_t) * (size_t)new_prefix_index);
    d->ids.n = new_prefix_index;
    d->prefix_index = new_prefix_index;
    free(d->prefix);
    d->prefix = NULL;
    st = hc_tokenizer_decode(d->t, d->ids.ids, d->ids.n, d->skip_special, &d->prefix, &d->prefix_len);
    if (st) return st;
    *text = d->out.data;
    *len = d->out.len;
    return HC_OK;
}

hc_status hc_detokenizer_flush(hc_detokenizer *d, const char **text, size_t *len) {
    *text = "";
    *len = 0;
    char *s;
    size_t n;
    hc_status st = hc_tokenizer_decode(d->t, d->ids.ids, d->ids.n, d->skip_special, &s, &n);
    if (st) return st;
    d->out.len = 0;
    const size_t common = (d->prefix_len && n >= d->prefix_len && !memcmp(s, d->prefix, d->prefix_len)) ? d->prefix_len : 0;
    bool ok = hc_str_put(&d->out, s + common, n - common);
    free(s);
    if (!ok) return hc_fail(HC_ERR_NOMEM, "out of memory");
    d->ids.n = 0;
    d->prefix_index = 0;
    free(d->prefix);
    d->prefix = NULL;
    d->prefix_len = 0;
    *text = d->out.data;
    *len = d->out.len;
    return HC_OK;
}

void hc_detokenizer_free(hc_detokenizer *d) {
    if (!d) return;
    hc_tokens_free(&d->ids);
    free(d->prefix);
    hc_str_free(&d->out);
    free(d);
}
