#include "format/json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/status.h"

#define MAX_DEPTH 512

typedef struct {
    const char *src, *p, *end;
    const char *source;
    hc_arena *arena;
    /* Scratch stack for the children of open arrays/objects; copied to the arena on close. */
    hc_json_member *stack;
    size_t top, cap;
    hc_status st;
} parser;

static hc_status fail_at(parser *ps, const char *at, const char *what) {
    size_t line = 1, col = 1;
    for (const char *q = ps->src; q < at && q < ps->end; q++) {
        if (*q == '\n') {
            line++;
            col = 1;
        } else if (((unsigned char)*q & 0xC0) != 0x80) {
            col++;
        }
    }
    ps->st = hc_fail(HC_ERR_FORMAT, "%s:%zu:%zu: %s", ps->source, line, col, what);
    return ps->st;
}

static void skip_ws(parser *ps) {
    const char *p = ps->p;
    while (p < ps->end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    ps->p = p;
}

static hc_status push(parser *ps, hc_json_member **slot) {
    if (ps->top == ps->cap) {
        size_t ncap = ps->cap ? ps->cap * 2 : 256;
        hc_json_member *ns = realloc(ps->stack, ncap * sizeof *ns);
        if (!ns) return ps->st = hc_fail(HC_ERR_NOMEM, "%s: out of memory", ps->source);
        ps->stack = ns;
        ps->cap = ncap;
    }
    *slot = &ps->stack[ps->top++];
    return HC_OK;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool read_hex4(const char *p, const char *end, unsigned *out) {
    if (end - p < 4) return false;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0) return false;
        v = (v << 4) | (unsigned)h;
    }
    *out = v;
    return true;
}

static char *put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) *o++ = (char)cp;
    else if (cp < 0x800) { *o++ = (char)(0xC0 | (cp >> 6)); *o++ = (char)(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | (cp >> 12)); *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | (cp >> 18)); *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F)); *o++ = (char)(0x80 | (cp & 0x3F));
    }
    return o;
}

/* Parses a string at ps->p (on the opening quote) into the arena. */
static hc_status parse_string(parser *ps, const char **out, size_t *out_len) {
    const char *start = ++ps->p;
    const char *p = start;
    bool has_escape = false;
    /* First pass: find the end and validate, so the copy can be sized exactly. */
    for (;;) {
        if (p >= ps->end) return fail_at(ps, start - 1, "unterminated string");
        unsigned char c = (unsigned char)*p;
        if (c == '"') break;
        if (c == '\\') {
            has_escape = true;
            p++;
            if (p >= ps->end) return fail_at(ps, start - 1, "unterminated string");
            char e = *p;
            if (e == 'u') {
                unsigned cp;
                if (!read_hex4(p + 1, ps->end, &cp)) return fail_at(ps, p - 1, "bad \\u escape");
                p += 5;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    unsigned lo;
                    if (ps->end - p < 6 || p[0] != '\\' || p[1] != 'u' || !read_hex4(p + 2, ps->end, &lo) ||
                        lo < 0xDC00 || lo > 0xDFFF)
                        return fail_at(ps, p - 6, "unpaired UTF-16 surrogate in \\u escape");
                    p += 6;
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    return fail_at(ps, p - 6, "unpaired UTF-16 surrogate in \\u escape");
                }
                continue;
            }
            if (!strchr("\"\\/bfnrt", e) || e == 0) return fail_at(ps, p - 1, "bad escape in string");
            p++;
            continue;
        }
        if (c < 0x20) return fail_at(ps, p, "control character in string (must be escaped)");
        if (c >= 0x80) {
            int n = hc_utf8_seq_len((const unsigned char *)p, (const unsigned char *)ps->end);
            if (!n) return fail_at(ps, p, "invalid UTF-8 in string");
            p += n;
            continue;
        }
        p++;
    }
    size_t raw_len = (size_t)(p - start);
    char *dst = hc_arena_alloc(ps->arena, raw_len + 1);
    if (!dst) return ps->st = hc_fail(HC_ERR_NOMEM, "%s: out of memory", ps->source);
    if (!has_escape) {
        memcpy(dst, start, raw_len);
        dst[raw_len] = 0;
        *out = dst;
        *out_len = raw_len;
        ps->p = p + 1;
        return HC_OK;
    }
    char *o = dst;
    for (const char *q = start; q < p;) {
        if (*q != '\\') {
            *o++ = *q++;
            continue;
        }
        q++;
        char e = *q++;
        switch (e) {
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp = 0, lo = 0;
            read_hex4(q, p, &cp);
            q += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                read_hex4(q + 2, p, &lo);
                q += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            o = put_utf8(o, cp);
            break;
        }
        default: *o++ = e; break;
        }
    }
    *o = 0;
    *out = dst;
    *out_len = (size_t)(o - dst);
    ps->p = p + 1;
    return HC_OK;
}

static hc_status parse_number(parser *ps, hc_json *v) {
    const char *s = ps->p, *p = s;
    if (p < ps->end && *p == '-') p++;
    if (p >= ps->end) return fail_at(ps, s, "bad number");
    if (*p == '0') {
        p++;
        if (p < ps->end && *p >= '0' && *p <= '9') return fail_at(ps, s, "leading zero in number");
    } else if (*p >= '1' && *p <= '9') {
        while (p < ps->end && *p >= '0' && *p <= '9') p++;
    } else {
        return fail_at(ps, s, "bad number");
    }
    bool integral = true;
    if (p < ps->end && *p == '.') {
        integral = false;
        p++;
        if (p >= ps->end || *p < '0' || *p > '9') return fail_at(ps, s, "bad number: digit expected after '.'");
        while (p < ps->end && *p >= '0' && *p <= '9') p++;
    }
    if (p < ps->end && (*p == 'e' || *p == 'E')) {
        integral = false;
        p++;
        if (p < ps->end && (*p == '+' || *p == '-')) p++;
        if (p >= ps->end || *p < '0' || *p > '9') return fail_at(ps, s, "bad number: digit expected in exponent");
        while (p < ps->end && *p >= '0' && *p <= '9') p++;
    }
    size_t n = (size_t)(p - s);
    v->type = HC_JSON_NUMBER;
    v->is_int = false;
    if (integral && n <= 19) {
        /* Exact int64 for ids and sizes; 19 digits may overflow, checked below. */
        const char *q = s;
        bool neg = *q == '-';
        if (neg) q++;
        uint64_t acc = 0;
        for (; q < p; q++) acc = acc * 10 + (uint64_t)(*q - '0');
        if (acc <= (uint64_t)INT64_MAX) {
            v->is_int = true;
            v->u.num.i = neg ? -(int64_t)acc : (int64_t)acc;
            v->u.num.d = (double)v->u.num.i;
            ps->p = p;
            return HC_OK;
        }
    }
    char buf[64];
    char *heap = NULL;
    char *tmp = buf;
    if (n >= sizeof buf) {
        heap = malloc(n + 1);
        if (!heap) return ps->st = hc_fail(HC_ERR_NOMEM, "%s: out of memory", ps->source);
        tmp = heap;
    }
    memcpy(tmp, s, n);
    tmp[n] = 0;
    v->u.num.d = strtod(tmp, NULL);
    free(heap);
    if (!isfinite(v->u.num.d)) return fail_at(ps, s, "number out of range");
    v->u.num.i = (int64_t)0;
    ps->p = p;
    return HC_OK;
}

static bool match_word(parser *ps, const char *w) {
    size_t n = strlen(w);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, w, n) != 0) return false;
    ps->p += n;
    return true;
}

static hc_status parse_value(parser *ps, hc_json *v, int depth);

static hc_status close_container(parser *ps, hc_json *v, size_t base, bool is_obj) {
    size_t n = ps->top - base;
    v->len = n;
    if (is_obj) {
        hc_json_member *m = n ? hc_arena_alloc(ps->arena, n * sizeof *m) : NULL;
        if (n && !m) return ps->st = hc_fail(HC_ERR_NOMEM, "%s: out of memory", ps->source);
        if (n) memcpy(m, ps->stack + base, n * sizeof *m);
        v->u.members = m;
    } else {
        hc_json *items = n ? hc_arena_alloc(ps->arena, n * sizeof *items) : NULL;
        if (n && !items) return ps->st = hc_fail(HC_ERR_NOMEM, "%s: out of memory", ps->source);
        for (size_t i = 0; i < n; i++) items[i] = ps->stack[base + i].value;
        v->u.items = items;
    }
    ps->top = base;
    return HC_OK;
}

static hc_status parse_container(parser *ps, hc_json *v, int depth, bool is_obj) {
    if (depth >= MAX_DEPTH) return fail_at(ps, ps->p, "nesting too deep");
    const char close = is_obj ? '}' : ']';
    v->type = is_obj ? HC_JSON_OBJECT : HC_JSON_ARRAY;
    ps->p++;
    size_t base = ps->top;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return close_container(ps, v, base, is_obj);
    }
    for (;;) {
        hc_json_member *slot = NULL;
        if (push(ps, &slot)) return ps->st;
        memset(slot, 0, sizeof *slot);
        size_t slot_index = ps->top - 1;
        if (is_obj) {
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != '"') return fail_at(ps, ps->p, "expected a string key");
            const char *key;
            size_t key_len;
            if (parse_string(ps, &key, &key_len)) return ps->st;
            ps->stack[slot_index].key = key;
            ps->stack[slot_index].key_len = key_len;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') return fail_at(ps, ps->p, "expected ':'");
            ps->p++;
        }
        hc_json child;
        memset(&child, 0, sizeof child);
        if (parse_value(ps, &child, depth + 1)) return ps->st;
        ps->stack[slot_index].value = child; /* the stack may have moved */
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            return close_container(ps, v, base, is_obj);
        }
        return fail_at(ps, ps->p, is_obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static hc_status parse_value(parser *ps, hc_json *v, int depth) {
    skip_ws(ps);
    if (ps->p >= ps->end) return fail_at(ps, ps->p, "unexpected end of input");
    switch (*ps->p) {
    case '{': return parse_container(ps, v, depth, true);
    case '[': return parse_container(ps, v, depth, false);
    case '"':
        v->type = HC_JSON_STRING;
        return parse_string(ps, &v->u.str, &v->len);
    case 't':
        if (!match_word(ps, "true")) break;
        v->type = HC_JSON_BOOL;
        v->u.b = true;
        return HC_OK;
    case 'f':
        if (!match_word(ps, "false")) break;
        v->type = HC_JSON_BOOL;
        v->u.b = false;
        return HC_OK;
    case 'n':
        if (!match_word(ps, "null")) break;
        v->type = HC_JSON_NULL;
        return HC_OK;
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) return parse_number(ps, v);
        break;
    }
    return fail_at(ps, ps->p, "unexpected character");
}

hc_status hc_json_parse(hc_json_doc *doc, const char *text, size_t len, const char *source) {
    hc_arena_init(&doc->arena, 1 << 16);
    doc->root = NULL;
    parser ps = {.src = text, .p = text, .end = text + len, .source = source ? source : "<json>",
                 .arena = &doc->arena};
    /* A UTF-8 byte order mark is tolerated, as Python's json with utf-8-sig would. */
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) ps.p += 3;
    hc_json *root = hc_arena_alloc(&doc->arena, sizeof *root);
    if (!root) return hc_fail(HC_ERR_NOMEM, "%s: out of memory", ps.source);
    memset(root, 0, sizeof *root);
    hc_status st = parse_value(&ps, root, 0);
    if (st == HC_OK) {
        skip_ws(&ps);
        if (ps.p != ps.end) st = fail_at(&ps, ps.p, "trailing characters after the JSON value");
    }
    free(ps.stack);
    if (st != HC_OK) {
        hc_arena_free(&doc->arena);
        return st;
    }
    doc->root = root;
    return HC_OK;
}

hc_status hc_json_parse_file(hc_json_doc *doc, const char *path) {
    hc_arena_init(&doc->arena, 1 << 16);
    doc->root = NULL;
    char *text;
    size_t n;
    hc_status st = hc_file_read_all(path, &text, &n);
    if (st) return st;
    st = hc_json_parse(doc, text, n, path);
    free(text);
    return st;
}

void hc_json_free(hc_json_doc *doc) {
    if (!doc) return;
    hc_arena_free(&doc->arena);
    doc->root = NULL;
}

const hc_json *hc_json_get(const hc_json *obj, const char *key) {
    if (!obj || obj->type != HC_JSON_OBJECT) return NULL;
    size_t kl = strlen(key);
    for (size_t i = obj->len; i-- > 0;) {
        const hc_json_member *m = &obj->u.members[i];
        if (m->key_len == kl && memcmp(m->key, key, kl) == 0) return &m->value;
    }
    return NULL;
}

const hc_json *hc_json_at(const hc_json *arr, size_t i) {
    if (!arr || arr->type != HC_JSON_ARRAY || i >= arr->len) return NULL;
    return &arr->u.items[i];
}

bool hc_json_is_null(const hc_json *v) { return !v || v->type == HC_JSON_NULL; }

const char *hc_json_str(const hc_json *obj, const char *key, const char *dflt) {
    const hc_json *v = hc_json_get(obj, key);
    return (v && v->type == HC_JSON_STRING) ? v->u.str : dflt;
}

void hc_json_write_string(void *file, const char *s) {
    FILE *f = file;
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (*p < 0x20) fprintf(f, "\\u%04x", *p);
            else fputc(*p, f);
        }
    }
    fputc('"', f);
}

bool hc_json_put_string(hc_str *o, const char *s) {
    bool ok = hc_str_putc(o, '"');
    for (const unsigned char *p = (const unsigned char *)s; ok && *p; p++) {
        char buf[8];
        if (*p == '"' || *p == '\\') {
            buf[0] = '\\';
            buf[1] = (char)*p;
            ok = hc_str_put(o, buf, 2);
        } else if (*p < 0x20) {
            snprintf(buf, sizeof buf, "\\u%04x", *p);
            ok = hc_str_put(o, buf, 6);
        } else {
            ok = hc_str_putc(o, (char)*p);
        }
    }
    return ok && hc_str_putc(o, '"');
}

/* JSON out again, two-space indented as transformers writes it; the top-level keys named in
 * `set` (pairs of key and already-encoded value) are replaced. */
static void write_json(FILE *f, const hc_json *v, int depth, const char *const *set, int n_set) {
    switch (v->type) {
    case HC_JSON_NULL: fputs("null", f); break;
    case HC_JSON_BOOL: fputs(v->u.b ? "true" : "false", f); break;
    case HC_JSON_NUMBER:
        if (v->is_int) {
            fprintf(f, "%lld", (long long)v->u.num.i);
        } else { /* the shortest text that reads back the same, still a float (as Python writes it) */
            char num[40];
            for (int prec = 15; prec <= 17; prec++) {
                snprintf(num, sizeof num, "%.*g", prec, v->u.num.d);
                if (strtod(num, NULL) == v->u.num.d) break;
            }
            fputs(num, f);
            if (!strpbrk(num, ".eEn")) fputs(".0", f);
        }
        break;
    case HC_JSON_STRING: hc_json_write_string(f, v->u.str); break;
    case HC_JSON_ARRAY:
        fputc('[', f);
        for (size_t i = 0; i < v->len; i++) {
            fprintf(f, "%s\n%*s", i ? "," : "", 2 * (depth + 1), "");
            write_json(f, &v->u.items[i], depth + 1, NULL, 0);
        }
        if (v->len) fprintf(f, "\n%*s", 2 * depth, "");
        fputc(']', f);
        break;
    case HC_JSON_OBJECT:
        fputc('{', f);
        for (size_t i = 0; i < v->len; i++) {
            const hc_json_member *m = &v->u.members[i];
            fprintf(f, "%s\n%*s", i ? "," : "", 2 * (depth + 1), "");
            hc_json_write_string(f, m->key);
            fputs(": ", f);
            const char *replaced = NULL;
            for (int k = 0; k < n_set; k++)
                if (!strcmp(m->key, set[2 * k])) replaced = set[2 * k + 1];
            if (replaced) fputs(replaced, f);
            else write_json(f, &m->value, depth + 1, NULL, 0);
        }
        if (v->len) fprintf(f, "\n%*s", 2 * depth, "");
        fputc('}', f);
        break;
    }
}

void hc_json_write(void *file, const hc_json *v, const char *const *set, int n_set) {
    write_json(file, v, 0, set, n_set);
}

