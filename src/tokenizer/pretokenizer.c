/* Pre-tokenizers: split normalized text into words, as HF tokenizers does. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "base/status.h"
#include "tokenizer/tokenizer_internal.h"

/* ---- GPT-2 byte map: printable bytes stand for themselves, the rest for 256 + n ----------- */

static char byte_utf8[256][4];
static uint8_t byte_utf8_len[256];
static int16_t cp_to_byte[512];
static pthread_once_t byte_map_once = PTHREAD_ONCE_INIT;

static void byte_map_init(void) {
    int n = 0;
    for (int i = 0; i < 512; i++) cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        int cp = printable ? b : 256 + n++;
        cp_to_byte[cp] = (int16_t)b;
        byte_utf8_len[b] = (uint8_t)utf8proc_encode_char(cp, (utf8proc_uint8_t *)byte_utf8[b]);
    }
}

const char *hc_byte_char(uint8_t b, size_t *len) {
    pthread_once(&byte_map_once, byte_map_init);
    *len = byte_utf8_len[b];
    return byte_utf8[b];
}

int hc_unicode_to_byte(int32_t cp) {
    pthread_once(&byte_map_once, byte_map_init);
    return (cp >= 0 && cp < 512) ? cp_to_byte[cp] : -1;
}

/* ---- parsing ------------------------------------------------------------------------------ */

static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static bool json_bool(const hc_json *j, const char *key, bool dflt) {
    const hc_json *v = hc_json_get(j, key);
    return (v && v->type == HC_JSON_BOOL) ? v->u.b : dflt;
}

hc_status hc_parse_prepend_scheme(const hc_json *j, hc_prepend_scheme *out, const char *src) {
    const char *scheme = hc_json_str(j, "prepend_scheme", NULL);
    if (!scheme) {
        /* Older files: add_prefix_space true means "always". */
        *out = json_bool(j, "add_prefix_space", true) ? PREPEND_ALWAYS : PREPEND_NEVER;
        return HC_OK;
    }
    if (!strcmp(scheme, "always")) *out = PREPEND_ALWAYS;
    else if (!strcmp(scheme, "first")) *out = PREPEND_FIRST;
    else if (!strcmp(scheme, "never")) *out = PREPEND_NEVER;
    else return hc_fail(HC_ERR_FORMAT, "%s: unknown Metaspace prepend_scheme '%s'", src, scheme);
    return HC_OK;
}

hc_status hc_parse_replacement(const hc_json *j, char out[8], const char *src) {
    const char *r = hc_json_str(j, "replacement", "\xe2\x96\x81");
    size_t n = strlen(r);
    if (n == 0 || n > 4) return hc_fail(HC_ERR_FORMAT, "%s: Metaspace replacement must be one character", src);
    memcpy(out, r, n + 1);
    return HC_OK;
}

hc_status hc_pretok_parse(hc_pretok *p, const hc_json *j, const char *src) {
    memset(p, 0, sizeof *p);
    const char *type = hc_json_str(j, "type", NULL);
    if (!type) return hc_fail(HC_ERR_FORMAT, "%s: pre_tokenizer without a type", src);
    if (!strcmp(type, "Sequence")) {
        p->type = PRE_SEQUENCE;
        const hc_json *list = hc_json_get(j, "pretokenizers");
        if (!list || list->type != HC_JSON_ARRAY)
            return hc_fail(HC_ERR_FORMAT, "%s: Sequence pre_tokenizer needs 'pretokenizers'", src);
        p->children = calloc(list->len ? list->len : 1, sizeof *p->children);
        if (!p->children) return hc_fail(HC_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < list->len; i++) {
            hc_status s = hc_pretok_parse(&p->children[i], &list->u.items[i], src);
            p->n_children = (int)i + 1;
            if (s) return s;
        }
    } else if (!strcmp(type, "Split")) {
        p->type = PRE_SPLIT;
        const char *b = hc_json_str(j, "behavior", "Removed");
        if (!strcmp(b, "Removed")) p->behavior = SPLIT_REMOVED;
        else if (!strcmp(b, "Isolated")) p->behavior = SPLIT_ISOLATED;
        else if (!strcmp(b, "MergedWithPrevious")) p->behavior = SPLIT_MERGED_PREV;
        else if (!strcmp(b, "MergedWithNext")) p->behavior = SPLIT_MERGED_NEXT;
        else if (!strcmp(b, "Contiguous")) p->behavior = SPLIT_CONTIGUOUS;
        else return hc_fail(HC_ERR_UNSUPPORTED, "%s: unsupported Split behavior '%s'", src, b);
        p->invert = json_bool(j, "invert", false);
        return hc_regex_from_json(&p->pattern, hc_json_get(j, "pattern"), src, "Split");
    } else if (!strcmp(type, "ByteLevel")) {
        p->type = PRE_BYTELEVEL;
        p->add_prefix_space = json_bool(j, "add_prefix_space", true);
        p->use_regex = json_bool(j, "use_regex", true);
        if (p->use_regex) return hc_regex_compile(&p->pattern, GPT2_PATTERN, false, src);
    } else if (!strcmp(type, "Metaspace")) {
        p->type = PRE_METASPACE;
        hc_status s = hc_parse_replacement(j, p->replacement, src);
        if (!s) s = hc_parse_prepend_scheme(j, &p->prepend, src);
        p->split = json_bool(j, "split", true);
        return s;
    } else if (!strcmp(type, "Whitespace")) {
        p->type = PRE_WHITESPACE;
        return hc_regex_compile(&p->pattern, "\\w+|[^\\w\\s]+", false, src);
    } else if (!strcmp(type, "WhitespaceSplit")) p->type = PRE_WHITESPACE_SPLIT;
    else if (!strcmp(type, "Digits")) {
        p->type = PRE_DIGITS;
        p->individual_digits = json_bool(j, "individual_digits", false);
    } else if (!strcmp(type, "Punctuation")) {
        p->type = PRE_PUNCTUATION;
        const char *b = hc_json_str(j, "behavior", "Isolated");
        if (strcmp(b, "Isolated")) return hc_fail(HC_ERR_UNSUPPORTED, "%s: unsupported Punctuation behavior '%s'", src, b);
    } else if (!strcmp(type, "BertPreTokenizer")) p->type = PRE_BERT;
    else
        return hc_fail(HC_ERR_UNSUPPORTED,
                       "%s: unsupported pre_tokenizer '%s' (supported: Sequence, Split, ByteLevel, Metaspace, "
                       "Whitespace, WhitespaceSplit, Digits, Punctuation, BertPreTokenizer)",
                       src, type);
    return HC_OK;
}

void hc_pretok_free(hc_pretok *p) {
    if (!p) return;
    for (int i = 0; i < p->n_children; i++) hc_pretok_free(&p->children[i]);
    free(p->children);
    hc_regex_free(&p->pattern);
}

/* ---- splitting ------------------------------------------------------------------------- */

typedef struct {
    size_t s, e;
    bool match;
} span;

typedef struct {
    span *v;
    size_t n, cap;
} spans;

static bool spans_push(spans *sp, size_t s, size_t e, bool match) {
    if (sp->n == sp->cap) {
        size_t cap = sp->cap ? sp->cap * 2 : 32;
        span *nv = realloc(sp->v, cap * sizeof *nv);
        if (!nv) return false;
        sp->v = nv;
        sp->cap = cap;
    }
    sp->v[sp->n++] = (span){s, e, match};
    return true;
}

typedef enum { CHARS_WHITESPACE, CHARS_NUMERIC, CHARS_PUNCT, CHARS_BERT_PUNCT } char_class;

static bool in_class(int32_t c, char_class cls) {
    const utf8proc_property_t *p = utf8proc_get_property(c);
    switch (cls) {
    case CHARS_WHITESPACE:
        return c == ' ' || (c >= 0x09 && c <= 0x0d) || c == 0x85 || p->category == UTF8PROC_CATEGORY_ZS ||
               p->category == UTF8PROC_CATEGORY_ZL || p->category == UTF8PROC_CATEGORY_ZP;
    case CHARS_NUMERIC:
        return p->category == UTF8PROC_CATEGORY_ND || p->category == UTF8PROC_CATEGORY_NL ||
               p->category == UTF8PROC_CATEGORY_NO;
    case CHARS_PUNCT:
    case CHARS_BERT_PUNCT: {
        bool ascii = c < 128 && ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126));
        return ascii || (p->category >= UTF8PROC_CATEGORY_PC && p->category <= UTF8PROC_CATEGORY_PO);
    }
    }
    return false;
}

/* Matches of a regex (or of single characters of a class) with the gaps between, covering s. */
static bool find_matches(hc_regex *re, int cls, const char *s, size_t n, spans *out) {
    out->n = 0;
    size_t prev = 0;
    if (re) {
        size_t ms, me, from = 0;
        while (from <= n && hc_regex_next(re, s, n, from, &ms, &me)) {
            if (ms > prev && !spans_push(out, prev, ms, false)) return false;
            if (!spans_push(out, ms, me, true)) return false;
            prev = from = me;
        }
    } else {
        size_t i = 0;
        while (i < n) {
            int32_t c;
            utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
            if (k <= 0) k = 1, c = 0xFFFD;
            if (in_class(c, (char_class)cls)) {
                if (i > prev && !spans_push(out, prev, i, false)) return false;
                if (!spans_push(out, i, i + (size_t)k, true)) return false;
                prev = i + (size_t)k;
            }
            i += (size_t)k;
        }
    }
    if (prev < n && !spans_push(out, prev, n, false)) return false;
    return true;
}

/* Applies a split behavior to the spans of one piece and emits the resulting pieces. */
static bool emit_split(const char *s, spans *sp, hc_split_behavior b, bool invert, int32_t flag, hc_pieces *out) {
    if (invert)
        for (size_t i = 0; i < sp->n; i++) sp->v[i].match = !sp->v[i].match;
    spans res = {0};
    bool ok = true, prev_match = false;
    switch (b) {
    case SPLIT_REMOVED:
        for (size_t i = 0; ok && i < sp->n; i++)
            if (!sp->v[i].match) ok = spans_push(&res, sp->v[i].s, sp->v[i].e, false);
        break;
    case SPLIT_ISOLATED:
        for (size_t i = 0; ok && i < sp->n; i++) ok = spans_push(&res, sp->v[i].s, sp->v[i].e, false);
        break;
    case SPLIT_MERGED_PREV:
        for (size_t i = 0; ok && i < sp->n; i++) {
            if (sp->v[i].match && !prev_match && res.n) res.v[res.n - 1].e = sp->v[i].e;
            else ok = spans_push(&res, sp->v[i].s, sp->v[i].e, false);
            prev_match = sp->v[i].match;
        }
        break;
    case SPLIT_MERGED_NEXT:
        for (size_t i = sp->n; ok && i-- > 0;) {
            if (sp->v[i].match && !prev_match && res.n) res.v[res.n - 1].s = sp->v[i].s;
            else ok = spans_push(&res, sp->v[i].s, sp->v[i].e, false);
            prev_match = sp->v[i].match;
        }
        for (size_t i = 0; i < res.n / 2; i++) {
            span t = res.v[i];
            res.v[i] = res.v[res.n - 1 - i];
            res.v[res.n - 1 - i] = t;
        }
        break;
    case SPLIT_CONTIGUOUS:
        for (size_t i = 0; ok && i < sp->n; i++) {
            if (sp->v[i].match == prev_match && res.n) res.v[res.n - 1].e = sp->v[i].e;
            else ok = spans_push(&res, sp->v[i].s, sp->v[i].e, false);
            prev_match = sp->v[i].match;
        }
        break;
    }
    bool first = true;
    for (size_t i = 0; ok && i < res.n; i++) {
        if (res.v[i].e == res.v[i].s) continue;
        /* Only the first piece of a text-start piece still starts the text. */
        int32_t f = (first && flag == HC_PIECE_TEXT_START && res.v[i].s == 0) ? HC_PIECE_TEXT_START : HC_PIECE_TEXT;
        ok = hc_pieces_add(out, s + res.v[i].s, res.v[i].e - res.v[i].s, f);
        first = false;
    }
    free(res.v);
    return ok;
}

static bool split_piece(hc_regex *re, int cls, const char *s, size_t n, hc_split_behavior b, bool invert,
                        int32_t flag, hc_pieces *out) {
    spans sp = {0};
    bool ok = find_matches(re, cls, s, n, &sp) && emit_split(s, &sp, b, invert, flag, out);
    free(sp.v);
    return ok;
}

static bool bytelevel_piece(const hc_pretok *p, const char *s, size_t n, int32_t flag, hc_pieces *out) {
    hc_str buf = {0};
    bool ok = true;
    if (p->add_prefix_space && (n == 0 || s[0] != ' ')) ok = hc_str_putc(&buf, ' ');
    ok = ok && hc_str_put(&buf, s, n);
    hc_pieces words = {0};
    if (ok) {
        if (p->use_regex) ok = split_piece((hc_regex *)&p->pattern, 0, buf.data, buf.len, SPLIT_ISOLATED, false, flag, &words);
        else ok = hc_pieces_add(&words, buf.data, buf.len, flag);
    }
    hc_str mapped = {0};
    for (size_t i = 0; ok && i < words.n; i++) {
        mapped.len = 0;
        const unsigned char *w = (const unsigned char *)words.text.data + words.start[i];
        for (size_t k = 0; ok && k < words.len[i]; k++) {
            size_t cl;
            const char *c = hc_byte_char(w[k], &cl);
            ok = hc_str_put(&mapped, c, cl);
        }
        ok = ok && hc_pieces_add(out, mapped.data ? mapped.data : "", mapped.len, words.token[i]);
    }
    hc_str_free(&mapped);
    hc_pieces_free(&words);
    hc_str_free(&buf);
    return ok;
}

static bool metaspace_piece(const hc_pretok *p, const char *s, size_t n, int32_t flag, hc_pieces *out) {
    hc_str buf = {0};
    const size_t rl = strlen(p->replacement);
    bool ok = hc_str_put(&buf, "", 0);
    for (size_t i = 0; ok && i < n; i++) ok = s[i] == ' ' ? hc_str_put(&buf, p->replacement, rl) : hc_str_putc(&buf, s[i]);
    bool starts = buf.len >= rl && memcmp(buf.data, p->replacement, rl) == 0;
    if (ok && !starts && (p->prepend == PREPEND_ALWAYS || (p->prepend == PREPEND_FIRST && flag == HC_PIECE_TEXT_START))) {
        hc_str pre = {0};
        ok = hc_str_put(&pre, p->replacement, rl) && hc_str_put(&pre, buf.data, buf.len);
        hc_str_free(&buf);
        buf = pre;
    }
    if (ok) {
        if (p->split) {
            hc_regex re = {.literal = (char *)p->replacement, .literal_len = rl};
            ok = split_piece(&re, 0, buf.data, buf.len, SPLIT_MERGED_NEXT, false, flag, out);
        } else {
            ok = hc_pieces_add(out, buf.data, buf.len, flag);
        }
    }
    hc_str_free(&buf);
    return ok;
}

static bool pretok_piece(hc_pretok *p, const char *s, size_t n, int32_t flag, hc_pieces *out) {
    switch (p->type) {
    case PRE_SEQUENCE: {
        hc_pieces a = {0}, b = {0};
        bool ok = hc_pieces_add(&a, s, n, flag);
        for (int i = 0; ok && i < p->n_children; i++) {
            hc_pieces_clear(&b);
            ok = hc_pretokenize(&p->children[i], &a, &b);
            hc_pieces t = a;
            a = b;
            b = t;
        }
        for (size_t i = 0; ok && i < a.n; i++) ok = hc_pieces_add(out, a.text.data + a.start[i], a.len[i], a.token[i]);
        hc_pieces_free(&a);
        hc_pieces_free(&b);
        return ok;
    }
    case PRE_SPLIT: return split_piece(&p->pattern, 0, s, n, p->behavior, p->invert, flag, out);
    case PRE_BYTELEVEL: return bytelevel_piece(p, s, n, flag, out);
    case PRE_METASPACE: return metaspace_piece(p, s, n, flag, out);
    case PRE_WHITESPACE: return split_piece(&p->pattern, 0, s, n, SPLIT_REMOVED, true, flag, out);
    case PRE_WHITESPACE_SPLIT: return split_piece(NULL, CHARS_WHITESPACE, s, n, SPLIT_REMOVED, false, flag, out);
    case PRE_DIGITS:
        return split_piece(NULL, CHARS_NUMERIC, s, n, p->individual_digits ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS, false,
                           flag, out);
    case PRE_PUNCTUATION: return split_piece(NULL, CHARS_PUNCT, s, n, SPLIT_ISOLATED, false, flag, out);
    case PRE_BERT: {
        hc_pieces a = {0};
        bool ok = split_piece(NULL, CHARS_WHITESPACE, s, n, SPLIT_REMOVED, false, flag, &a);
        for (size_t i = 0; ok && i < a.n; i++)
            ok = split_piece(NULL, CHARS_BERT_PUNCT, a.text.data + a.start[i], a.len[i], SPLIT_ISOLATED, false,
                             a.token[i], out);
        hc_pieces_free(&a);
        return ok;
    }
    }
    return false;
}

bool hc_pretokenize(hc_pretok *p, const hc_pieces *in, hc_pieces *out) {
    for (size_t i = 0; i < in->n; i++) {
        const char *s = in->text.data + in->start[i];
        if (in->token[i] >= 0) {
            if (!hc_pieces_add(out, s, in->len[i], in->token[i])) return false;
            continue;
        }
        if (!pretok_piece(p, s, in->len[i], in->token[i], out)) return false;
    }
    return true;
}
