/* Decoders: token strings -> text, as HF tokenizers' decode_chain does it. */
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

hc_status hc_decoder_parse(hc_decoder *d, const hc_json *j, const char *src) {
    memset(d, 0, sizeof *d);
    const char *type = hc_json_str(j, "type", NULL);
    if (!type) return hc_fail(HC_ERR_FORMAT, "%s: decoder without a type", src);
    if (!strcmp(type, "Sequence")) {
        d->type = DEC_SEQUENCE;
        const hc_json *list = hc_json_get(j, "decoders");
        if (!list || list->type != HC_JSON_ARRAY) return hc_fail(HC_ERR_FORMAT, "%s: Sequence decoder needs 'decoders'", src);
        d->children = calloc(list->len ? list->len : 1, sizeof *d->children);
        if (!d->children) return hc_fail(HC_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < list->len; i++) {
            hc_status s = hc_decoder_parse(&d->children[i], &list->u.items[i], src);
            d->n_children = (int)i + 1;
            if (s) return s;
        }
    } else if (!strcmp(type, "ByteLevel")) d->type = DEC_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) d->type = DEC_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse")) d->type = DEC_FUSE;
    else if (!strcmp(type, "Metaspace")) {
        d->type = DEC_METASPACE;
        hc_status s = hc_parse_replacement(j, d->replacement, src);
        return s ? s : hc_parse_prepend_scheme(j, &d->prepend, src);
    } else if (!strcmp(type, "Replace")) {
        d->type = DEC_REPLACE;
        const char *c = hc_json_str(j, "content", NULL);
        if (!c) return hc_fail(HC_ERR_FORMAT, "%s: Replace decoder needs 'content'", src);
        if (!(d->text = dup_str(c))) return hc_fail(HC_ERR_NOMEM, "out of memory");
        return hc_regex_from_json(&d->pattern, hc_json_get(j, "pattern"), src, "Replace decoder");
    } else if (!strcmp(type, "Strip")) {
        d->type = DEC_STRIP;
        const char *c = hc_json_str(j, "content", " ");
        const hc_json *a = hc_json_get(j, "start"), *b = hc_json_get(j, "stop");
        if (!(d->text = dup_str(c))) return hc_fail(HC_ERR_NOMEM, "out of memory");
        d->start = (a && a->type == HC_JSON_NUMBER) ? (int)a->u.num.i : 0;
        d->stop = (b && b->type == HC_JSON_NUMBER) ? (int)b->u.num.i : 0;
    } else if (!strcmp(type, "WordPiece")) {
        d->type = DEC_WORDPIECE;
        if (!(d->text = dup_str(hc_json_str(j, "prefix", "##")))) return hc_fail(HC_ERR_NOMEM, "out of memory");
        const hc_json *c = hc_json_get(j, "cleanup");
        d->cleanup = !c || c->type != HC_JSON_BOOL || c->u.b;
    } else if (!strcmp(type, "BPEDecoder")) {
        d->type = DEC_BPE;
        if (!(d->text = dup_str(hc_json_str(j, "suffix", "</w>")))) return hc_fail(HC_ERR_NOMEM, "out of memory");
    } else {
        return hc_fail(HC_ERR_UNSUPPORTED,
                       "%s: unsupported decoder '%s' (supported: Sequence, ByteLevel, Metaspace, Replace, "
                       "ByteFallback, Fuse, Strip, WordPiece, BPEDecoder)",
                       src, type);
    }
    return HC_OK;
}

hc_status hc_decoder_llama(hc_decoder **out, bool strip_space) {
    hc_decoder *d = calloc(1, sizeof *d);
    if (!d || !(d->children = calloc(4, sizeof(hc_decoder)))) {
        free(d);
        return hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    *out = d;
    d->type = DEC_SEQUENCE;
    hc_decoder *c = d->children;
    c[0].type = DEC_REPLACE;
    c[0].text = dup_str(" ");
    hc_status s = hc_regex_compile(&c[0].pattern, "\xe2\x96\x81", true, "decoder");
    c[1].type = DEC_BYTEFALLBACK;
    c[2].type = DEC_FUSE;
    d->n_children = 3;
    if (strip_space) {
        c[3].type = DEC_STRIP;
        c[3].text = dup_str(" ");
        c[3].start = 1;
        d->n_children = 4;
        if (!c[3].text) return hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    if (!c[0].text) return hc_fail(HC_ERR_NOMEM, "out of memory");
    return s;
}

void hc_decoder_free(hc_decoder *d) {
    if (!d) return;
    for (int i = 0; i < d->n_children; i++) hc_decoder_free(&d->children[i]);
    free(d->children);
    free(d->text);
    hc_regex_free(&d->pattern);
}

/* Appends s with each maximal invalid UTF-8 subsequence replaced by U+FFFD, as Rust's
 * String::from_utf8_lossy and Python's errors="replace" do. */
bool hc_utf8_lossy(hc_str *out, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t need;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) need = 0;
        else if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            if (!hc_str_put(out, "\xEF\xBF\xBD", 3)) return false;
            i++;
            continue;
        }
        size_t k = 1;
        for (; k <= need && i + k < n; k++) {
            unsigned b = p[i + k];
            unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
            if (b < l || b > h) break;
        }
        if (k == need + 1) {
            if (!hc_str_put(out, s + i, need + 1)) return false;
            i += need + 1;
        } else {
            if (!hc_str_put(out, "\xEF\xBF\xBD", 3)) return false;
            i += k; /* the maximal valid prefix is replaced by one U+FFFD */
        }
    }
    return true;
}

void hc_clean_up_spaces(hc_str *s) {
    static const char *const from[] = {" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're"};
    static const char *const to[] = {".", "?", "!", ",", "'", "n't", "'m", "'s", "'ve", "'re"};
    if (!s->data) return;
    for (size_t r = 0; r < sizeof from / sizeof from[0]; r++) {
        size_t fl = strlen(from[r]), tl = strlen(to[r]), w = 0;
        for (size_t i = 0; i < s->len;) {
            if (s->len - i >= fl && !memcmp(s->data + i, from[r], fl)) {
                memmove(s->data + w, to[r], tl);
                w += tl;
                i += fl;
            } else {
                s->data[w++] = s->data[i++];
            }
        }
        s->len = w;
        s->data[w] = 0;
    }
}

static bool replace_tokens(hc_pieces *t, hc_pieces *out) {
    hc_pieces tmp = *t;
    *t = *out;
    *out = tmp;
    return true;
}

static bool decode_one(const hc_decoder *d, hc_pieces *t) {
    hc_pieces out = {0};
    hc_str buf = {0};
    bool ok = hc_str_put(&buf, "", 0);
    switch (d->type) {
    case DEC_SEQUENCE:
        for (int i = 0; ok && i < d->n_children; i++) ok = decode_one(&d->children[i], t);
        hc_str_free(&buf);
        return ok;
    case DEC_BYTELEVEL: {
        hc_str bytes = {0};
        ok = hc_str_put(&bytes, "", 0);
        for (size_t i = 0; ok && i < t->n; i++) {
            const char *s = t->text.data + t->start[i];
            size_t n = t->len[i], mark = bytes.len;
            bool all = true;
            for (size_t k = 0; ok && k < n;) {
                int32_t c;
                utf8proc_ssize_t l = utf8proc_iterate((const utf8proc_uint8_t *)s + k, (utf8proc_ssize_t)(n - k), &c);
                int b = l > 0 ? hc_unicode_to_byte(c) : -1;
                if (b < 0) {
                    all = false;
                    break;
                }
                ok = hc_str_putc(&bytes, (char)b);
                k += (size_t)l;
            }
            if (!all) { /* a token with characters outside the byte map keeps its raw bytes */
                bytes.len = mark;
                ok = hc_str_put(&bytes, s, n);
            }
        }
        ok = ok && hc_utf8_lossy(&buf, bytes.data, bytes.len) && hc_pieces_add(&out, buf.data, buf.len, -1);
        hc_str_free(&bytes);
        break;
    }
    case DEC_METASPACE: {
        const size_t rl = strlen(d->replacement);
        for (size_t i = 0; ok && i < t->n; i++) {
            buf.len = 0;
            const char *s = t->text.data + t->start[i];
            for (size_t k = 0; ok && k < t->len[i];) {
                if (t->len[i] - k >= rl && !memcmp(s + k, d->replacement, rl)) {
                    if (!(i == 0 && d->prepend != PREPEND_NEVER)) ok = hc_str_putc(&buf, ' ');
                    k += rl;
                } else {
                    ok = hc_str_putc(&buf, s[k++]);
                }
            }
            ok = ok && hc_pieces_add(&out, buf.data, buf.len, -1);
        }
        break;
    }
    case DEC_REPLACE: {
        const size_t cl = strlen(d->text);
        for (size_t i = 0; ok && i < t->n; i++) {
            buf.len = 0;
            const char *s = t->text.data + t->start[i];
            size_t n = t->len[i], from = 0, ms, me;
            while (ok && hc_regex_next((hc_regex *)&d->pattern, s, n, from, &ms, &me)) {
                ok = hc_str_put(&buf, s + from, ms - from) && hc_str_put(&buf, d->text, cl);
                from = me;
            }
            ok = ok && hc_str_put(&buf, s + from, n - from) && hc_pieces_add(&out, buf.data, buf.len, -1);
        }
        break;
    }
    case DEC_BYTEFALLBACK: {
        hc_str pending = {0};
        size_t n_pending = 0;
        for (size_t i = 0; ok && i <= t->n; i++) {
            const char *s = i < t->n ? t->text.data + t->start[i] : NULL;
            int byte = -1;
            if (s && t->len[i] == 6 && !memcmp(s, "<0x", 3) && s[5] == '>') {
                char hex[3] = {s[3], s[4], 0};
                char *end;
                long v = strtol(hex, &end, 16);
                if (*end == 0 && end == hex + 2) byte = (int)v;
            }
            if (byte >= 0) {
                ok = hc_str_putc(&pending, (char)byte);
                n_pending++;
                continue;
            }
            if (n_pending) {
                hc_str check = {0};
                ok = hc_utf8_lossy(&check, pending.data, pending.len);
                bool valid = ok && check.len == pending.len && !memcmp(check.data, pending.data, pending.len);
                if (valid) ok = hc_pieces_add(&out, pending.data, pending.len, -1);
                else
                    for (size_t k = 0; ok && k < n_pending; k++) ok = hc_pieces_add(&out, "\xEF\xBF\xBD", 3, -1);
                hc_str_free(&check);
                pending.len = 0;
                n_pending = 0;
            }
            if (s) ok = ok && hc_pieces_add(&out, s, t->len[i], -1);
        }
        hc_str_free(&pending);
        break;
    }
    case DEC_FUSE:
        ok = hc_pieces_add(&out, t->text.data ? t->text.data : "", t->text.len, -1);
        break;
    case DEC_STRIP: {
        size_t cl = strlen(d->text);
        for (size_t i = 0; ok && i < t->n; i++) {
            const char *s = t->text.data + t->start[i];
            size_t b = 0, e = t->len[i];
            for (int k = 0; k < d->start && cl && e - b >= cl && !memcmp(s + b, d->text, cl); k++) b += cl;
            for (int k = 0; k < d->stop && cl && e - b >= cl && !memcmp(s + e - cl, d->text, cl); k++) e -= cl;
            ok = hc_pieces_add(&out, s + b, e - b, -1);
        }
        break;
    }
    case DEC_WORDPIECE: {
        size_t pl = strlen(d->text);
        for (size_t i = 0; ok && i < t->n; i++) {
            buf.len = 0;
            const char *s = t->text.data + t->start[i];
            size_t n = t->len[i];
            if (i > 0) {
                if (n >= pl && !memcmp(s, d->text, pl)) s += pl, n -= pl;
                else ok = hc_str_putc(&buf, ' ');
            }
            ok = ok && hc_str_put(&buf, s, n);
            if (ok && d->cleanup) hc_clean_up_spaces(&buf);
            ok = ok && hc_pieces_add(&out, buf.data, buf.len, -1);
        }
        break;
    }
    case DEC_BPE: {
        size_t sl = strlen(d->text);
        for (size_t i = 0; ok && i < t->n; i++) {
            buf.len = 0;
            const char *s = t->text.data + t->start[i];
            size_t n = t->len[i], from = 0;
            for (size_t k = 0; ok && sl && k + sl <= n;) {
                if (!memcmp(s + k, d->text, sl)) {
                    ok = hc_str_put(&buf, s + from, k - from) && (i + 1 == t->n ? true : hc_str_putc(&buf, ' '));
                    k += sl;
                    from = k;
                } else {
                    k++;
                }
            }
            ok = ok && hc_str_put(&buf, s + from, n - from) && hc_pieces_add(&out, buf.data, buf.len, -1);
        }
        break;
    }
    }
    hc_str_free(&buf);
    if (ok) replace_tokens(t, &out);
    hc_pieces_free(&out);
    return ok;
}

bool hc_decode_tokens(const hc_decoder *d, hc_pieces *tokens) { return decode_one(d, tokens); }
