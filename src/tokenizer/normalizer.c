/* Normalizers: Unicode normal forms (utf8proc), Lowercase, Prepend, Replace, Strip,
 * StripAccents, BertNormalizer and Sequence. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "base/status.h"
#include "tokenizer/tokenizer_internal.h"

static char *dup_str(const char *s) {
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

hc_status hc_normalizer_parse(hc_normalizer *n, const hc_json *j, const char *src) {
    memset(n, 0, sizeof *n);
    const char *type = hc_json_str(j, "type", NULL);
    if (!type) return hc_fail(HC_ERR_FORMAT, "%s: normalizer without a type", src);
    if (!strcmp(type, "Sequence")) {
        n->type = NORM_SEQUENCE;
        const hc_json *list = hc_json_get(j, "normalizers");
        if (!list || list->type != HC_JSON_ARRAY) return hc_fail(HC_ERR_FORMAT, "%s: Sequence normalizer needs 'normalizers'", src);
        n->children = calloc(list->len ? list->len : 1, sizeof *n->children);
        if (!n->children) return hc_fail(HC_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < list->len; i++) {
            hc_status s = hc_normalizer_parse(&n->children[i], &list->u.items[i], src);
            n->n_children = (int)i + 1;
            if (s) return s;
        }
    } else if (!strcmp(type, "NFC")) n->type = NORM_NFC;
    else if (!strcmp(type, "NFD")) n->type = NORM_NFD;
    else if (!strcmp(type, "NFKC")) n->type = NORM_NFKC;
    else if (!strcmp(type, "NFKD")) n->type = NORM_NFKD;
    else if (!strcmp(type, "Lowercase")) n->type = NORM_LOWERCASE;
    else if (!strcmp(type, "StripAccents")) n->type = NORM_STRIP_ACCENTS;
    else if (!strcmp(type, "Prepend")) {
        n->type = NORM_PREPEND;
        const char *p = hc_json_str(j, "prepend", NULL);
        if (!p) return hc_fail(HC_ERR_FORMAT, "%s: Prepend normalizer needs 'prepend'", src);
        if (!(n->text = dup_str(p))) return hc_fail(HC_ERR_NOMEM, "out of memory");
    } else if (!strcmp(type, "Replace")) {
        n->type = NORM_REPLACE;
        const char *c = hc_json_str(j, "content", NULL);
        if (!c) return hc_fail(HC_ERR_FORMAT, "%s: Replace normalizer needs 'content'", src);
        if (!(n->text = dup_str(c))) return hc_fail(HC_ERR_NOMEM, "out of memory");
        return hc_regex_from_json(&n->pattern, hc_json_get(j, "pattern"), src, "Replace");
    } else if (!strcmp(type, "Strip")) {
        n->type = NORM_STRIP;
        const hc_json *l = hc_json_get(j, "strip_left"), *r = hc_json_get(j, "strip_right");
        n->left = !l || l->type != HC_JSON_BOOL || l->u.b;
        n->right = !r || r->type != HC_JSON_BOOL || r->u.b;
    } else if (!strcmp(type, "BertNormalizer")) {
        n->type = NORM_BERT;
        const hc_json *v;
        n->clean_text = !(v = hc_json_get(j, "clean_text")) || v->type != HC_JSON_BOOL || v->u.b;
        n->handle_chinese = !(v = hc_json_get(j, "handle_chinese_chars")) || v->type != HC_JSON_BOOL || v->u.b;
        n->lowercase = !(v = hc_json_get(j, "lowercase")) || v->type != HC_JSON_BOOL || v->u.b;
        v = hc_json_get(j, "strip_accents");
        n->strip_accents = (v && v->type == HC_JSON_BOOL) ? v->u.b : n->lowercase;
    } else {
        return hc_fail(HC_ERR_UNSUPPORTED,
                       "%s: unsupported normalizer '%s' (supported: Sequence, NFC, NFD, NFKC, NFKD, Lowercase, "
                       "Prepend, Replace, Strip, StripAccents, BertNormalizer)",
                       src, type);
    }
    return HC_OK;
}

void hc_normalizer_free(hc_normalizer *n) {
    if (!n) return;
    for (int i = 0; i < n->n_children; i++) hc_normalizer_free(&n->children[i]);
    free(n->children);
    free(n->text);
    hc_regex_free(&n->pattern);
}

static bool utf8proc_form(const char *in, size_t len, hc_str *out, utf8proc_option_t opts) {
    utf8proc_uint8_t *res = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)in, (utf8proc_ssize_t)len, &res, opts | UTF8PROC_STABLE);
    if (r < 0) return hc_str_put(out, in, len); /* input is valid UTF-8, so this is rare: keep it */
    bool ok = hc_str_put(out, (const char *)res, (size_t)r);
    free(res);
    return ok;
}

static bool is_whitespace_cp(int32_t c) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == 0x0b || c == 0x0c) return true;
    const utf8proc_property_t *p = utf8proc_get_property(c);
    return p->category == UTF8PROC_CATEGORY_ZS || p->category == UTF8PROC_CATEGORY_ZL ||
           p->category == UTF8PROC_CATEGORY_ZP || c == 0x85;
}

static bool is_chinese_cp(int32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

static bool put_cp(hc_str *out, int32_t c) {
    utf8proc_uint8_t buf[4];
    utf8proc_ssize_t n = utf8proc_encode_char(c, buf);
    return hc_str_put(out, (const char *)buf, (size_t)n);
}

/* Applies one character-wise transformation. mode: 0 lowercase, 1 strip accents (Mn), 2 BERT. */
static bool map_chars(const hc_normalizer *n, const char *in, size_t len, hc_str *out, int mode) {
    size_t i = 0;
    while (i < len) {
        int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)in + i, (utf8proc_ssize_t)(len - i), &c);
        if (k <= 0) {
            c = 0xFFFD;
            k = 1;
        }
        i += (size_t)k;
        const utf8proc_property_t *p = utf8proc_get_property(c);
        if (mode == 0) {
            if (!put_cp(out, utf8proc_tolower(c))) return false;
        } else if (mode == 1) {
            if (p->category != UTF8PROC_CATEGORY_MN && !put_cp(out, c)) return false;
        } else {
            if (n->clean_text) {
                if (c == 0 || c == 0xFFFD) continue;
                bool control = (p->category == UTF8PROC_CATEGORY_CC || p->category == UTF8PROC_CATEGORY_CF) &&
                               c != '\t' && c != '\n' && c != '\r';
                if (control) continue;
                if (is_whitespace_cp(c)) c = ' ';
            }
            if (n->handle_chinese && is_chinese_cp(c)) {
                if (!hc_str_putc(out, ' ') || !put_cp(out, c) || !hc_str_putc(out, ' ')) return false;
                continue;
            }
            if (!put_cp(out, c)) return false;
        }
    }
    return true;
}

static bool normalize_one(const hc_normalizer *n, const char *in, size_t len, hc_str *out) {
    switch (n->type) {
    case NORM_SEQUENCE: {
        hc_str a = {0}, b = {0};
        if (!hc_str_put(&a, in, len)) return false;
        for (int i = 0; i < n->n_children; i++) {
            b.len = 0;
            if (!normalize_one(&n->children[i], a.data, a.len, &b)) {
                hc_str_free(&a);
                hc_str_free(&b);
                return false;
            }
            hc_str t = a;
            a = b;
            b = t;
        }
        bool ok = hc_str_put(out, a.data, a.len);
        hc_str_free(&a);
        hc_str_free(&b);
        return ok;
    }
    case NORM_NFC: return utf8proc_form(in, len, out, UTF8PROC_COMPOSE);
    case NORM_NFD: return utf8proc_form(in, len, out, UTF8PROC_DECOMPOSE);
    case NORM_NFKC: return utf8proc_form(in, len, out, UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
    case NORM_NFKD: return utf8proc_form(in, len, out, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
    case NORM_LOWERCASE: return map_chars(n, in, len, out, 0);
    case NORM_STRIP_ACCENTS: return map_chars(n, in, len, out, 1);
    case NORM_PREPEND:
        /* HF prepends only to non-empty text. */
        if (len && !hc_str_put(out, n->text, strlen(n->text))) return false;
        return hc_str_put(out, in, len);
    case NORM_REPLACE: {
        size_t from = 0, ms, me;
        const size_t cl = strlen(n->text);
        hc_regex *re = (hc_regex *)&n->pattern;
        while (hc_regex_next(re, in, len, from, &ms, &me)) {
            if (!hc_str_put(out, in + from, ms - from) || !hc_str_put(out, n->text, cl)) return false;
            from = me;
        }
        return hc_str_put(out, in + from, len - from);
    }
    case NORM_STRIP: {
        size_t b = 0, e = len;
        while (n->left && b < e) {
            int32_t c;
            utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)in + b, (utf8proc_ssize_t)(e - b), &c);
            if (k <= 0 || !is_whitespace_cp(c)) break;
            b += (size_t)k;
        }
        while (n->right && e > b) {
            size_t s = e - 1;
            while (s > b && ((unsigned char)in[s] & 0xC0) == 0x80) s--;
            int32_t c;
            utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)in + s, (utf8proc_ssize_t)(e - s), &c);
            if (k <= 0 || !is_whitespace_cp(c)) break;
            e = s;
        }
        return hc_str_put(out, in + b, e - b);
    }
    case NORM_BERT: {
        hc_str a = {0}, b = {0};
        bool ok = map_chars(n, in, len, &a, 2);
        if (ok && n->strip_accents) {
            ok = utf8proc_form(a.data ? a.data : "", a.len, &b, UTF8PROC_DECOMPOSE);
            a.len = 0;
            ok = ok && map_chars(n, b.data ? b.data : "", b.len, &a, 1);
        }
        if (ok && n->lowercase) {
            b.len = 0;
            ok = map_chars(n, a.data ? a.data : "", a.len, &b, 0) && hc_str_put(out, b.data ? b.data : "", b.len);
        } else if (ok) {
            ok = hc_str_put(out, a.data ? a.data : "", a.len);
        }
        hc_str_free(&a);
        hc_str_free(&b);
        return ok;
    }
    }
    return false;
}

bool hc_normalize(const hc_normalizer *n, const char *in, size_t len, hc_str *out) {
    out->len = 0;
    if (!hc_str_put(out, "", 0)) return false;
    return normalize_one(n, in, len, out);
}
