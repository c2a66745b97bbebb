/* A Jinja2 interpreter for chat templates.
 *
 * The template is cut into text and tags (with trim_blocks, lstrip_blocks and the -/+ markers
 * applied there), parsed into a tree of statements and expressions, and evaluated with Python's
 * semantics for the values chat templates handle: None, bools, ints, floats, strings, lists,
 * dicts (insertion ordered), namespaces, macros and the loop object. Every allocation of a render
 * lives in one arena; errors unwind with longjmp to the top, which frees it. */
#include "template/jinja.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

#include "base/arena.h"
#include "base/status.h"

/* ======================================================================================== */
/* values                                                                                    */
/* ======================================================================================== */

typedef enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_NS, V_MACRO, V_FUNC, V_LOOP } vtype;

typedef struct jstr {
    size_t len;
    char s[];
} jstr;

typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jmacro jmacro;
typedef struct jloop jloop;

typedef struct {
    vtype t;
    bool is_tuple; /* V_LIST: a tuple (printed with parentheses) */
    union {
        bool b;
        int64_t i;
        double f;
        jstr *s;   /* V_STR; V_UNDEF: the name (or NULL) */
        jlist *l;
        jdict *d;  /* V_DICT, V_NS */
        jmacro *m;
        jloop *loop;
        struct {
            int id;      /* builtin function or method */
            void *self;  /* bound object for methods: a heap copy of the value */
        } fn;
    } u;
} jv;

struct jlist {
    jv *v;
    size_t n, cap;
};

struct jdict {
    jv *k, *v;
    size_t n, cap;
};

typedef struct node node;
typedef struct scope scope;

struct jmacro {
    node *def;
    scope *closure;
    node *caller_body; /* for the `caller` of a {% call %} block */
    scope *caller_scope;
};

struct jloop {
    int64_t index0, length;
    jv prev, next;
    bool has_prev, has_next;
};

/* ======================================================================================== */
/* the interpreter state                                                                      */
/* ======================================================================================== */

struct scope {
    scope *parent;
    jdict vars;
};

typedef struct {
    hc_arena arena;
    jmp_buf fail;
    hc_status status;
    const char *src, *source;
    size_t src_len;
    scope *globals;
    int depth;
    int brk;        /* 1 break, 2 continue */
    int nest;       /* nest_in's depth: parentheses, brackets, unary operators, blocks */
    int eval_depth; /* eval, exec_node and value-walk frames on the stack */
    int loop_steps; /* for-loop iterations so far */
} jctx;

static _Noreturn void fail_at(jctx *c, size_t pos, hc_status st, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (pos != (size_t)-1) {
        size_t line = 1, col = 1;
        for (size_t i = 0; i < pos && i < c->src_len; i++) {
            if (c->src[i] == '\n') line++, col = 1;
            else if (((unsigned char)c->src[i] & 0xC0) != 0x80) col++;
        }
        c->status = hc_fail(st, "%s:%zu:%zu: %s", c->source, line, col, msg);
    } else {
        c->status = hc_fail(st, "%s: %s", c->source, msg);
    }
    longjmp(c->fail, 1);
}

#define FAIL(c, ...) fail_at(c, (size_t)-1, HC_ERR_FORMAT, __VA_ARGS__)

/* The parser and the evaluator recurse as deep as a template nests, and a template comes from
 * whoever published the model: past these depths it is refused, not allowed to overflow the
 * stack. Real chat templates nest under 20 levels. A left-leaning chain such as 1 + 1 + ... + 1
 * parses in a loop but is a tree as deep as it is long: MAX_TREE_DEPTH bounds the walks over the
 * tree, and MAX_EVAL_DEPTH the evaluator's frames (macro calls add theirs). */
#define MAX_NEST 100
#define MAX_TREE_DEPTH 1000
#define MAX_EVAL_DEPTH 2000
/* Loops nest, so range()'s million-element bound does not bound the work: two nested loops over
 * range(1000000) would run for hours and fill the arena with their scopes. A conversation of
 * thousands of messages, each with its parts and tool calls, takes thousands of iterations. */
#define MAX_LOOP_STEPS 2000000

static void nest_in(jctx *c, size_t pos) {
    if (++c->nest > MAX_NEST) fail_at(c, pos, HC_ERR_FORMAT, "nested more than %d levels deep", MAX_NEST);
}

/* The walks over values (==, comparison, printing, tojson) recurse as deep as a value nests; a
 * template can build a list a million levels deep in a loop. */
static void value_in(jctx *c) {
    if (++c->eval_depth > MAX_EVAL_DEPTH) FAIL(c, "a value nested more than %d levels deep", MAX_EVAL_DEPTH);
}

/* Python's integers have no bounds; ours are 64-bit, and an operation past them fails rather than
 * wrap (or, for INT64_MIN // -1, trap). */
static int64_t int_checked(jctx *c, size_t pos, bool overflow, int64_t r) {
    if (overflow) fail_at(c, pos, HC_ERR_FORMAT, "integer overflow (integers here are 64-bit)");
    return r;
}

/* A float as an integer, truncated toward zero as int() truncates: NaN, infinities and values
 * past 64 bits fail (a C cast of them is undefined). */
static int64_t float_to_int(jctx *c, size_t pos, double f) {
    if (isnan(f)) fail_at(c, pos, HC_ERR_FORMAT, "cannot convert float NaN to integer");
    if (!(f > -9223372036854775808.0 && f < 9223372036854775808.0))
        fail_at(c, pos, HC_ERR_FORMAT, "cannot convert float %g to a 64-bit integer", f);
    return (int64_t)f;
}

static void eval_in(jctx *c, size_t pos) {
    if (++c->eval_depth > MAX_EVAL_DEPTH)
        fail_at(c, pos, HC_ERR_FORMAT, "expression or block more than %d levels deep", MAX_EVAL_DEPTH);
}

/* A growing string in the arena: an error's longjmp can leave any number of them half-built, and
 * the arena frees them all. */
typedef struct {
    char *data;
    size_t len, cap;
} jbuf;

static void *alloc(jctx *c, size_t n) {
    void *p = hc_arena_alloc(&c->arena, n);
    if (!p) {
        c->status = hc_fail(HC_ERR_NOMEM, "out of memory rendering a template");
        longjmp(c->fail, 1);
    }
    return p;
}

static jstr *mkstr(jctx *c, const char *s, size_t n) {
    jstr *r = alloc(c, sizeof(jstr) + n + 1);
    r->len = n;
    if (n) memcpy(r->s, s, n);
    r->s[n] = 0;
    return r;
}

static jv v_str(jctx *c, const char *s, size_t n) {
    jv v = {.t = V_STR};
    v.u.s = mkstr(c, s, n);
    return v;
}
static jv v_cstr(jctx *c, const char *s) { return v_str(c, s, strlen(s)); }
static jv v_int(int64_t i) { return (jv){.t = V_INT, .u.i = i}; }
static jv v_float(double f) { return (jv){.t = V_FLOAT, .u.f = f}; }
static jv v_bool(bool b) { return (jv){.t = V_BOOL, .u.b = b}; }
static jv v_none(void) { return (jv){.t = V_NONE}; }
static jv v_undef(jctx *c, const char *name) {
    jv v = {.t = V_UNDEF};
    v.u.s = name ? mkstr(c, name, strlen(name)) : NULL;
    return v;
}

static jv v_list(jctx *c, size_t cap) {
    jv v = {.t = V_LIST};
    v.u.l = alloc(c, sizeof(jlist));
    v.u.l->n = 0;
    v.u.l->cap = cap ? cap : 4;
    v.u.l->v = alloc(c, sizeof(jv) * v.u.l->cap);
    return v;
}

static void list_push(jctx *c, jlist *l, jv x) {
    if (l->n == l->cap) {
        jv *nv = alloc(c, sizeof(jv) * l->cap * 2);
        memcpy(nv, l->v, sizeof(jv) * l->n);
        l->v = nv;
        l->cap *= 2;
    }
    l->v[l->n++] = x;
}

static jv v_dict(jctx *c, vtype t) {
    jv v = {.t = t};
    v.u.d = alloc(c, sizeof(jdict));
    memset(v.u.d, 0, sizeof(jdict));
    return v;
}

static bool str_eq(const jstr *a, const char *b, size_t n) { return a->len == n && !memcmp(a->s, b, n); }

static bool value_eq(jctx *c, const jv *a, const jv *b);

static jv *dict_find(jctx *c, jdict *d, const jv *key) {
    for (size_t i = 0; i < d->n; i++)
        if (value_eq(c, &d->k[i], key)) return &d->v[i];
    return NULL;
}

static jv *dict_find_s(jdict *d, const char *key, size_t n) {
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == V_STR && str_eq(d->k[i].u.s, key, n)) return &d->v[i];
    return NULL;
}

static void dict_set(jctx *c, jdict *d, jv key, jv val) {
    jv *slot = dict_find(c, d, &key);
    if (slot) {
        *slot = val;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        jv *nk = alloc(c, sizeof(jv) * cap), *nv = alloc(c, sizeof(jv) * cap);
        if (d->n) {
            memcpy(nk, d->k, sizeof(jv) * d->n);
            memcpy(nv, d->v, sizeof(jv) * d->n);
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = key;
    d->v[d->n++] = val;
}

static const char *type_name(const jv *v) {
    switch (v->t) {
    case V_UNDEF: return "Undefined";
    case V_NONE: return "NoneType";
    case V_BOOL: return "bool";
    case V_INT: return "int";
    case V_FLOAT: return "float";
    case V_STR: return "str";
    case V_LIST: return v->is_tuple ? "tuple" : "list";
    case V_DICT: return "dict";
    case V_NS: return "Namespace";
    case V_MACRO: return "Macro";
    case V_FUNC: return "builtin_function_or_method";
    case V_LOOP: return "LoopContext";
    }
    return "object";
}

static bool truthy(const jv *v) {
    switch (v->t) {
    case V_UNDEF:
    case V_NONE: return false;
    case V_BOOL: return v->u.b;
    case V_INT: return v->u.i != 0;
    case V_FLOAT: return v->u.f != 0;
    case V_STR: return v->u.s->len > 0;
    case V_LIST: return v->u.l->n > 0;
    case V_DICT: return v->u.d->n > 0;
    default: return true;
    }
}

static bool is_num(const jv *v) { return v->t == V_INT || v->t == V_FLOAT || v->t == V_BOOL; }
static double num(const jv *v) { return v->t == V_FLOAT ? v->u.f : v->t == V_INT ? (double)v->u.i : v->u.b; }

/* An integer argument: ints as they are, floats as int() truncates them. */
static int64_t int_arg(jctx *c, size_t pos, const jv *v) {
    if (!is_num(v)) fail_at(c, pos, HC_ERR_FORMAT, "'%s' object cannot be interpreted as an integer", type_name(v));
    return v->t == V_INT ? v->u.i : v->t == V_BOOL ? v->u.b : float_to_int(c, pos, num(v));
}

static bool values_equal(jctx *c, const jv *a, const jv *b);

static bool value_eq(jctx *c, const jv *a, const jv *b) {
    value_in(c);
    const bool r = values_equal(c, a, b);
    c->eval_depth--;
    return r;
}

static bool values_equal(jctx *c, const jv *a, const jv *b) {
    if (is_num(a) && is_num(b)) {
        if (a->t != V_FLOAT && b->t != V_FLOAT) return (a->t == V_INT ? a->u.i : a->u.b) == (b->t == V_INT ? b->u.i : b->u.b);
        return num(a) == num(b);
    }
    if (a->t != b->t) return false;
    switch (a->t) {
    case V_UNDEF:
    case V_NONE: return true;
    case V_STR: return a->u.s->len == b->u.s->len && !memcmp(a->u.s->s, b->u.s->s, a->u.s->len);
    case V_LIST:
        if (a->u.l->n != b->u.l->n) return false;
        for (size_t i = 0; i < a->u.l->n; i++)
            if (!value_eq(c, &a->u.l->v[i], &b->u.l->v[i])) return false;
        return true;
    case V_DICT:
        if (a->u.d->n != b->u.d->n) return false;
        for (size_t i = 0; i < a->u.d->n; i++) {
            jv *o = dict_find(c, b->u.d, &a->u.d->k[i]);
            if (!o || !value_eq(c, &a->u.d->v[i], o)) return false;
        }
        return true;
    default: return a->u.d == b->u.d;
    }
}

/* ---- printing: Python's str() and repr() --------------------------------------------------- */

/* No string a template builds, its output included, may pass this: a chat prompt is kilobytes,
 * and a template that asks for gigabytes ("" * 10**12, a padded format) fails instead of
 * exhausting memory or time. */
#define MAX_STR_BYTES ((size_t)64 << 20)

static void put(jctx *c, jbuf *o, const char *s, size_t n) {
    if (n > MAX_STR_BYTES - o->len) FAIL(c, "a string longer than %zu MiB", MAX_STR_BYTES >> 20);
    if (o->len + n + 1 > o->cap) {
        size_t cap = o->cap ? 2 * o->cap : 64;
        while (cap < o->len + n + 1) cap *= 2;
        char *d = alloc(c, cap);
        if (o->len) memcpy(d, o->data, o->len);
        o->data = d;
        o->cap = cap;
    }
    if (n) memcpy(o->data + o->len, s, n);
    o->len += n;
    o->data[o->len] = 0;
}
static void puts_(jctx *c, jbuf *o, const char *s) { put(c, o, s, strlen(s)); }

/* repr(float): the shortest digits that round-trip, fixed notation for 1e-4 <= |x| < 1e16. */
static void float_repr(char *buf, size_t cap, double f) {
    if (isnan(f)) {
        snprintf(buf, cap, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(buf, cap, f < 0 ? "-inf" : "inf");
        return;
    }
    char e[40];
    int p;
    for (p = 1; p <= 17; p++) {
        snprintf(e, sizeof e, "%.*e", p - 1, f);
        if (strtod(e, NULL) == f) break;
    }
    /* e = "-d.ddde+XX": digits and exponent */
    char digits[24];
    int nd = 0;
    const char *q = e;
    bool neg = *q == '-';
    if (neg) q++;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9') digits[nd++] = *q;
    int exp10 = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    size_t o = 0;
    if (neg) buf[o++] = '-';
    if (exp10 >= -5 && exp10 < 16) {
        if (exp10 < 0) {
            o += (size_t)snprintf(buf + o, cap - o, "0.");
            for (int i = 0; i < -exp10 - 1; i++) buf[o++] = '0';
            o += (size_t)snprintf(buf + o, cap - o, "%s", digits);
        } else {
            for (int i = 0; i <= exp10; i++) buf[o++] = i < nd ? digits[i] : '0';
            buf[o++] = '.';
            if (nd > exp10 + 1) o += (size_t)snprintf(buf + o, cap - o, "%s", digits + exp10 + 1);
            else buf[o++] = '0';
        }
        buf[o] = 0;
        if (exp10 == -5) { /* Python switches to exponent below 1e-4 */
            o = neg ? 1 : 0;
            buf[o++] = digits[0];
            if (nd > 1) {
                buf[o++] = '.';
                o += (size_t)snprintf(buf + o, cap - o, "%s", digits + 1);
            }
            snprintf(buf + o, cap - o, "e-05");
        }
    } else {
        buf[o++] = digits[0];
        if (nd > 1) {
            buf[o++] = '.';
            o += (size_t)snprintf(buf + o, cap - o, "%s", digits + 1);
        }
        snprintf(buf + o, cap - o, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    }
}

static void repr(jctx *c, jbuf *o, const jv *v);

static void str_repr(jctx *c, jbuf *o, const jstr *s) {
    bool has_sq = memchr(s->s, '\'', s->len) != NULL, has_dq = memchr(s->s, '"', s->len) != NULL;
    char q = (has_sq && !has_dq) ? '"' : '\'';
    put(c, o, &q, 1);
    for (size_t i = 0; i < s->len; i++) {
        unsigned char ch = (unsigned char)s->s[i];
        char buf[8];
        if (ch == '\\') puts_(c, o, "\\\\");
        else if (ch == (unsigned char)q) {
            buf[0] = '\\';
            buf[1] = q;
            put(c, o, buf, 2);
        } else if (ch == '\n') puts_(c, o, "\\n");
        else if (ch == '\r') puts_(c, o, "\\r");
        else if (ch == '\t') puts_(c, o, "\\t");
        else if (ch < 0x20 || ch == 0x7f) {
            snprintf(buf, sizeof buf, "\\x%02x", ch);
            puts_(c, o, buf);
        } else put(c, o, (const char *)&ch, 1);
    }
    put(c, o, &q, 1);
}

static void to_str(jctx *c, jbuf *o, const jv *v) {
    char buf[64];
    switch (v->t) {
    case V_UNDEF: return;
    case V_NONE: puts_(c, o, "None"); return;
    case V_BOOL: puts_(c, o, v->u.b ? "True" : "False"); return;
    case V_INT:
        snprintf(buf, sizeof buf, "%lld", (long long)v->u.i);
        puts_(c, o, buf);
        return;
    case V_FLOAT:
        float_repr(buf, sizeof buf, v->u.f);
        puts_(c, o, buf);
        return;
    case V_STR: put(c, o, v->u.s->s, v->u.s->len); return;
    default: repr(c, o, v); return;
    }
}

static void repr_value(jctx *c, jbuf *o, const jv *v);

static void repr(jctx *c, jbuf *o, const jv *v) {
    value_in(c);
    repr_value(c, o, v);
    c->eval_depth--;
}

static void repr_value(jctx *c, jbuf *o, const jv *v) {
    switch (v->t) {
    case V_STR: str_repr(c, o, v->u.s); return;
    case V_LIST:
        puts_(c, o, v->is_tuple ? "(" : "[");
        for (size_t i = 0; i < v->u.l->n; i++) {
            if (i) puts_(c, o, ", ");
            repr(c, o, &v->u.l->v[i]);
        }
        if (v->is_tuple && v->u.l->n == 1) puts_(c, o, ",");
        puts_(c, o, v->is_tuple ? ")" : "]");
        return;
    case V_DICT:
        puts_(c, o, "{");
        for (size_t i = 0; i < v->u.d->n; i++) {
            if (i) puts_(c, o, ", ");
            repr(c, o, &v->u.d->k[i]);
            puts_(c, o, ": ");
            repr(c, o, &v->u.d->v[i]);
        }
        puts_(c, o, "}");
        return;
    case V_NS: puts_(c, o, "<Namespace>"); return;
    case V_MACRO: puts_(c, o, "<Macro>"); return;
    case V_FUNC: puts_(c, o, "<built-in function>"); return;
    case V_LOOP: puts_(c, o, "<LoopContext>"); return;
    default: to_str(c, o, v); return;
    }
}

static jv stringify(jctx *c, const jv *v) {
    if (v->t == V_STR) return *v;
    jbuf o = {0};
    to_str(c, &o, v);
    jv r = v_str(c, o.data ? o.data : "", o.len);
    return r;
}

/* json.dumps(ensure_ascii=False) */
static void json_value(jctx *c, jbuf *o, const jv *v, int indent, int level, bool sort_keys);

static void to_json(jctx *c, jbuf *o, const jv *v, int indent, int level, bool sort_keys) {
    value_in(c);
    json_value(c, o, v, indent, level, sort_keys);
    c->eval_depth--;
}

static void json_value(jctx *c, jbuf *o, const jv *v, int indent, int level, bool sort_keys) {
    char buf[64];
    switch (v->t) {
    case V_NONE: puts_(c, o, "null"); return;
    case V_BOOL: puts_(c, o, v->u.b ? "true" : "false"); return;
    case V_INT:
    case V_FLOAT: to_str(c, o, v); return;
    case V_STR:
        puts_(c, o, "\"");
        for (size_t i = 0; i < v->u.s->len; i++) {
            unsigned char ch = (unsigned char)v->u.s->s[i];
            switch (ch) {
            case '"': puts_(c, o, "\\\""); break;
            case '\\': puts_(c, o, "\\\\"); break;
            case '\n': puts_(c, o, "\\n"); break;
            case '\r': puts_(c, o, "\\r"); break;
            case '\t': puts_(c, o, "\\t"); break;
            case '\b': puts_(c, o, "\\b"); break;
            case '\f': puts_(c, o, "\\f"); break;
            default:
                if (ch < 0x20) {
                    snprintf(buf, sizeof buf, "\\u%04x", ch);
                    puts_(c, o, buf);
                } else {
                    put(c, o, (const char *)&ch, 1);
                }
            }
        }
        puts_(c, o, "\"");
        return;
    case V_LIST: {
        if (!v->u.l->n) {
            puts_(c, o, "[]");
            return;
        }
        puts_(c, o, "[");
        for (size_t i = 0; i < v->u.l->n; i++) {
            if (i) puts_(c, o, indent >= 0 ? "," : ", ");
            if (indent >= 0) {
                puts_(c, o, "\n");
                for (int k = 0; k < indent * (level + 1); k++) puts_(c, o, " ");
            }
            to_json(c, o, &v->u.l->v[i], indent, level + 1, sort_keys);
        }
        if (indent >= 0) {
            puts_(c, o, "\n");
            for (int k = 0; k < indent * level; k++) puts_(c, o, " ");
        }
        puts_(c, o, "]");
        return;
    }
    case V_DICT:
    case V_NS: {
        jdict *d = v->u.d;
        if (!d->n) {
            puts_(c, o, "{}");
            return;
        }
        size_t *order = alloc(c, sizeof(size_t) * d->n);
        for (size_t i = 0; i < d->n; i++) order[i] = i;
        if (sort_keys) /* insertion sort by key (keys are strings in practice) */
            for (size_t i = 1; i < d->n; i++)
                for (size_t j = i; j > 0; j--) {
                    const jv *a = &d->k[order[j - 1]], *b = &d->k[order[j]];
                    if (a->t == V_STR && b->t == V_STR && strcmp(a->u.s->s, b->u.s->s) > 0) {
                        size_t t = order[j];
                        order[j] = order[j - 1];
                        order[j - 1] = t;
                    } else break;
                }
        puts_(c, o, "{");
        for (size_t i = 0; i < d->n; i++) {
            if (i) puts_(c, o, indent >= 0 ? "," : ", ");
            if (indent >= 0) {
                puts_(c, o, "\n");
                for (int k = 0; k < indent * (level + 1); k++) puts_(c, o, " ");
            }
            const jv *k = &d->k[order[i]];
            if (k->t == V_STR) to_json(c, o, k, indent, level + 1, sort_keys);
            else {
                jv ks = stringify(c, k);
                to_json(c, o, &ks, indent, level + 1, sort_keys);
            }
            puts_(c, o, ": ");
            to_json(c, o, &d->v[order[i]], indent, level + 1, sort_keys);
        }
        if (indent >= 0) {
            puts_(c, o, "\n");
            for (int k = 0; k < indent * level; k++) puts_(c, o, " ");
        }
        puts_(c, o, "}");
        return;
    }
    default: FAIL(c, "Object of type %s is not JSON serializable", type_name(v));
    }
}

static jv from_hc_json(jctx *c, const hc_json *j) {
    switch (j->type) {
    case HC_JSON_NULL: return v_none();
    case HC_JSON_BOOL: return v_bool(j->u.b);
    case HC_JSON_NUMBER: return j->is_int ? v_int(j->u.num.i) : v_float(j->u.num.d);
    case HC_JSON_STRING: return v_str(c, j->u.str, j->len);
    case HC_JSON_ARRAY: {
        jv l = v_list(c, j->len);
        for (size_t i = 0; i < j->len; i++) list_push(c, l.u.l, from_hc_json(c, &j->u.items[i]));
        return l;
    }
    case HC_JSON_OBJECT: {
        jv d = v_dict(c, V_DICT);
        for (size_t i = 0; i < j->len; i++)
            dict_set(c, d.u.d, v_str(c, j->u.members[i].key, j->u.members[i].key_len),
                     from_hc_json(c, &j->u.members[i].value));
        return d;
    }
    }
    return v_none();
}

/* ======================================================================================== */
/* the template lexer: text and tags                                                         */
/* ======================================================================================== */

typedef enum { SEG_TEXT, SEG_VAR, SEG_STMT } segtype;

typedef struct {
    segtype t;
    size_t start, end; /* the text, or the tag's inside (between the delimiters and markers) */
} seg;

typedef struct {
    seg *v;
    size_t n, cap;
} segs;

static void seg_push(jctx *c, segs *s, segtype t, size_t a, size_t b) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        seg *nv = alloc(c, sizeof(seg) * cap);
        if (s->n) memcpy(nv, s->v, sizeof(seg) * s->n);
        s->v = nv;
        s->cap = cap;
    }
    s->v[s->n++] = (seg){t, a, b};
}

/* Finds the end of a tag that starts at `from`, skipping quoted strings. Returns the index of
 * the closer's first char, or (size_t)-1. */
static size_t find_close(const char *s, size_t n, size_t from, char closer) {
    char quote = 0;
    for (size_t i = from; i + 1 < n; i++) {
        char ch = s[i];
        if (quote) {
            if (ch == '\\') i++;
            else if (ch == quote) quote = 0;
            continue;
        }
        if (ch == '\'' || ch == '"') quote = ch;
        else if (ch == closer && s[i + 1] == '}') return i;
    }
    return (size_t)-1;
}

static bool is_ws(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v'; }

static void lex_template(jctx *c, segs *out) {
    const char *s = c->src;
    const size_t n = c->src_len;
    size_t pos = 0;
    bool strip_next = false;     /* the previous tag ended with '-' */
    bool trim_newline = false;   /* the previous tag was a block or comment (trim_blocks) */
    while (pos <= n) {
        /* the next tag opener */
        size_t open = (size_t)-1;
        for (size_t i = pos; i + 1 < n; i++)
            if (s[i] == '{' && (s[i + 1] == '{' || s[i + 1] == '%' || s[i + 1] == '#')) {
                open = i;
                break;
            }
        size_t text_end = open == (size_t)-1 ? n : open;
        size_t ts = pos, te = text_end;
        if (trim_newline && ts < te && s[ts] == '\n') ts++;
        else if (trim_newline && ts + 1 < te && s[ts] == '\r' && s[ts + 1] == '\n') ts += 2;
        if (strip_next)
            while (ts < te && is_ws(s[ts])) ts++;
        if (open == (size_t)-1) {
            if (te > ts) seg_push(c, out, SEG_TEXT, ts, te);
            break;
        }
        char kind = s[open + 1];
        size_t inner = open + 2;
        bool minus_l = inner < n && s[inner] == '-', plus_l = inner < n && s[inner] == '+';
        if (minus_l || plus_l) inner++;
        if (minus_l) {
            while (te > ts && is_ws(s[te - 1])) te--;
        } else if (kind != '{' && !plus_l) {
            /* lstrip_blocks: drop spaces and tabs between the line start and a block or comment */
            size_t k = te;
            while (k > ts && (s[k - 1] == ' ' || s[k - 1] == '\t')) k--;
            if (k == 0 || s[k - 1] == '\n') te = k;
        }
        if (te > ts) seg_push(c, out, SEG_TEXT, ts, te);
        if (kind == '#') {
            size_t close = (size_t)-1;
            for (size_t i = inner; i + 1 < n; i++)
                if (s[i] == '#' && s[i + 1] == '}') {
                    close = i;
                    break;
                }
            if (close == (size_t)-1) fail_at(c, open, HC_ERR_FORMAT, "unterminated comment");
            strip_next = close > inner && s[close - 1] == '-';
            trim_newline = true;
            pos = close + 2;
            continue;
        }
        char closer = kind == '{' ? '}' : '%';
        size_t close = find_close(s, n, inner, closer);
        if (close == (size_t)-1) fail_at(c, open, HC_ERR_FORMAT, kind == '{' ? "unterminated '{{'" : "unterminated '{%%'");
        size_t ie = close;
        strip_next = ie > inner && s[ie - 1] == '-';
        if (strip_next || (ie > inner && s[ie - 1] == '+')) ie--;
        trim_newline = kind == '%';
        /* {% raw %} ... {% endraw %} is text */
        size_t a = inner, b = ie;
        while (a < b && is_ws(s[a])) a++;
        while (b > a && is_ws(s[b - 1])) b--;
        if (kind == '%' && b - a == 3 && !memcmp(s + a, "raw", 3)) {
            size_t body = close + 2, i;
            for (i = body; i + 1 < n; i++) {
                if (s[i] != '{' || s[i + 1] != '%') continue;
                size_t j = i + 2;
                bool m = j < n && s[j] == '-';
                if (m) j++;
                while (j < n && is_ws(s[j])) j++;
                if (n - j >= 6 && !memcmp(s + j, "endraw", 6)) {
                    size_t be = i;
                    if (m)
                        while (be > body && is_ws(s[be - 1])) be--;
                    size_t bs = body;
                    if (strip_next)
                        while (bs < be && is_ws(s[bs])) bs++;
                    if (be > bs) seg_push(c, out, SEG_TEXT, bs, be);
                    size_t cl = find_close(s, n, j, '%');
                    if (cl == (size_t)-1) fail_at(c, i, HC_ERR_FORMAT, "unterminated '{%%'");
                    strip_next = s[cl - 1] == '-';
                    pos = cl + 2;
                    break;
                }
            }
            if (i + 1 >= n) fail_at(c, open, HC_ERR_FORMAT, "missing endraw");
            continue;
        }
        seg_push(c, out, kind == '{' ? SEG_VAR : SEG_STMT, inner, ie);
        pos = close + 2;
    }
}

/* ======================================================================================== */
/* expression tokens                                                                          */
/* ======================================================================================== */

typedef enum { T_END, T_NAME, T_INT, T_FLOAT, T_STR, T_OP } ttype;

typedef struct {
    ttype t;
    size_t pos; /* in the template source */
    const char *s;
    size_t len;
    int64_t i;
    double f;
    jstr *str;  /* T_STR: the decoded literal */
} tok;

typedef struct {
    jctx *c;
    tok *v;
    size_t n, i;
} tokens;

static void tokenize(jctx *c, size_t a, size_t b, tokens *out) {
    const char *s = c->src;
    size_t cap = 16;
    out->c = c;
    out->v = alloc(c, sizeof(tok) * cap);
    out->n = out->i = 0;
    size_t p = a;
    for (;;) {
        while (p < b && is_ws(s[p])) p++;
        if (out->n + 1 >= cap) {
            tok *nv = alloc(c, sizeof(tok) * cap * 2);
            memcpy(nv, out->v, sizeof(tok) * out->n);
            out->v = nv;
            cap *= 2;
        }
        tok *t = &out->v[out->n];
        memset(t, 0, sizeof *t);
        t->pos = p;
        if (p >= b) {
            t->t = T_END;
            out->n++;
            return;
        }
        char ch = s[p];
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_') {
            size_t q = p;
            while (q < b && ((s[q] >= 'a' && s[q] <= 'z') || (s[q] >= 'A' && s[q] <= 'Z') || s[q] == '_' ||
                             (s[q] >= '0' && s[q] <= '9')))
                q++;
            t->t = T_NAME;
            t->s = s + p;
            t->len = q - p;
            p = q;
        } else if (ch >= '0' && ch <= '9') {
            size_t q = p;
            bool is_float = false;
            while (q < b && ((s[q] >= '0' && s[q] <= '9') || s[q] == '_')) q++;
            if (q + 1 < b && s[q] == '.' && s[q + 1] >= '0' && s[q + 1] <= '9') {
                is_float = true;
                q++;
                while (q < b && s[q] >= '0' && s[q] <= '9') q++;
            }
            if (q < b && (s[q] == 'e' || s[q] == 'E')) {
                size_t r = q + 1;
                if (r < b && (s[r] == '+' || s[r] == '-')) r++;
                if (r < b && s[r] >= '0' && s[r] <= '9') {
                    is_float = true;
                    q = r;
                    while (q < b && s[q] >= '0' && s[q] <= '9') q++;
                }
            }
            char buf[64];
            size_t k = 0;
            for (size_t i = p; i < q && k + 1 < sizeof buf; i++)
                if (s[i] != '_') buf[k++] = s[i];
            buf[k] = 0;
            if (is_float) {
                t->t = T_FLOAT;
                t->f = strtod(buf, NULL);
            } else {
                t->t = T_INT;
                t->i = strtoll(buf, NULL, 10);
            }
            p = q;
        } else if (ch == '\'' || ch == '"') {
            jbuf lit = {0};
            size_t q = p + 1;
            for (; q < b && s[q] != ch; q++) {
                if (s[q] != '\\' || q + 1 >= b) {
                    put(c, &lit, s + q, 1);
                    continue;
                }
                char e = s[++q];
                char one;
                switch (e) {
                case 'n': one = '\n'; break;
                case 't': one = '\t'; break;
                case 'r': one = '\r'; break;
                case '0': one = '\0'; break;
                case 'b': one = '\b'; break;
                case 'f': one = '\f'; break;
                case '\\': one = '\\'; break;
                case '\'': one = '\''; break;
                case '"': one = '"'; break;
                case 'u':
                case 'x':
                case 'U': {
                    int digits = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                    uint32_t cp = 0;
                    int k = 0;
                    for (; k < digits && q + 1 < b; k++) {
                        char h = s[q + 1];
                        int v = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                        if (v < 0) break;
                        cp = cp * 16 + (uint32_t)v;
                        q++;
                    }
                    utf8proc_uint8_t enc[4];
                    utf8proc_ssize_t l = utf8proc_encode_char((utf8proc_int32_t)cp, enc);
                    put(c, &lit, (const char *)enc, (size_t)l);
                    continue;
                }
                default: /* unknown escapes keep the backslash, as Python does */
                    put(c, &lit, "\\", 1);
                    one = e;
                }
                put(c, &lit, &one, 1);
            }
            if (q >= b) {
                fail_at(c, p, HC_ERR_FORMAT, "unterminated string");
            }
            t->t = T_STR;
            t->str = mkstr(c, lit.data ? lit.data : "", lit.len);
            p = q + 1;
        } else {
            static const char *ops[] = {"==", "!=", "<=", ">=", "//", "**", NULL};
            t->t = T_OP;
            t->s = s + p;
            t->len = 1;
            for (int k = 0; ops[k]; k++)
                if (p + 1 < b && s[p] == ops[k][0] && s[p + 1] == ops[k][1]) t->len = 2;
            if (!strchr("+-*/%~()[]{}.,:|<>=!", ch))
                fail_at(c, p, HC_ERR_FORMAT, "unexpected character '%c'", ch);
            p += t->len;
        }
        out->n++;
    }
}

static tok *peek(tokens *ts) { return &ts->v[ts->i]; }
static tok *next(tokens *ts) {
    tok *t = &ts->v[ts->i];
    if (t->t != T_END) ts->i++;
    return t;
}
static bool is_op(const tok *t, const char *op) { return t->t == T_OP && t->len == strlen(op) && !memcmp(t->s, op, t->len); }
static bool is_name(const tok *t, const char *name) {
    return t->t == T_NAME && t->len == strlen(name) && !memcmp(t->s, name, t->len);
}
static bool accept_op(tokens *ts, const char *op) {
    if (!is_op(peek(ts), op)) return false;
    next(ts);
    return true;
}
static bool accept_name(tokens *ts, const char *name) {
    if (!is_name(peek(ts), name)) return false;
    next(ts);
    return true;
}
/* Steps back over t, the token next() just returned (next() stays on the end token). */
static void unread(tokens *ts, const tok *t) {
    if (t->t != T_END) ts->i--;
}
static _Noreturn void unexpected(tokens *ts, const char *wanted) {
    tok *t = peek(ts);
    if (t->t == T_END) fail_at(ts->c, t->pos, HC_ERR_FORMAT, "unexpected end of tag, expected %s", wanted);
    fail_at(ts->c, t->pos, HC_ERR_FORMAT, "unexpected '%.*s', expected %s", (int)(t->t == T_STR ? 1 : t->len),
            t->t == T_STR ? "\"" : t->s, wanted);
}
static void expect_op(tokens *ts, const char *op) {
    if (!accept_op(ts, op)) {
        char w[16];
        snprintf(w, sizeof w, "'%s'", op);
        unexpected(ts, w);
    }
}

/* ======================================================================================== */
/* the tree                                                                                   */
/* ======================================================================================== */

typedef enum {
    /* expressions */
    N_LIT, N_NAME, N_LIST, N_TUPLE, N_DICT, N_ATTR, N_ITEM, N_SLICE, N_CALL, N_FILTER, N_TEST, N_NEG, N_POS, N_NOT,
    N_BIN, N_AND, N_OR, N_COND, N_CMP,
    /* statements */
    N_TEXT, N_OUT, N_IF, N_FOR, N_SET, N_SETBLOCK, N_MACRO, N_CALLBLOCK, N_FILTERBLOCK, N_BREAK, N_CONTINUE, N_BODY
} ntype;

struct node {
    ntype t;
    size_t pos;
    jv lit;              /* N_LIT; N_TEXT */
    const char *name;    /* N_NAME, N_ATTR, N_FILTER, N_TEST, N_BIN/N_CMP operator, N_MACRO */
    node *a, *b, *cnd;   /* operands; N_COND: a if cnd else b */
    node **args;         /* N_CALL/N_FILTER/N_TEST args; N_LIST items; N_DICT keys; N_IF conditions */
    node **vals;         /* N_DICT values; N_IF bodies; macro defaults */
    const char **kw;     /* keyword names of args (NULL for positional) */
    size_t n;            /* count of args/items/branches */
    node *body, *else_body;
    const char **targets; /* N_FOR / N_SET names; N_MACRO params */
    size_t n_targets;
    bool negate;          /* N_TEST: is not */
};

typedef struct {
    node **v;
    size_t n, cap;
} nodelist;

static node *mk(jctx *c, ntype t, size_t pos) {
    node *n = alloc(c, sizeof(node));
    memset(n, 0, sizeof *n);
    n->t = t;
    n->pos = pos;
    return n;
}

static void nl_push(jctx *c, nodelist *l, node *x) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        node **nv = alloc(c, sizeof(node *) * cap);
        if (l->n) memcpy(nv, l->v, sizeof(node *) * l->n);
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = x;
}

static const char *tok_name(jctx *c, const tok *t) {
    char *s = alloc(c, t->len + 1);
    memcpy(s, t->s, t->len);
    s[t->len] = 0;
    return s;
}

/* ---- expressions -------------------------------------------------------------------------- */

static node *parse_expr(tokens *ts);
static node *parse_or(tokens *ts);
static node *parse_unary(tokens *ts, bool with_filter);

static void parse_call_args(tokens *ts, node *n, const char *close) {
    nodelist args = {0};
    const char **kw = NULL;
    size_t kwcap = 0;
    while (!accept_op(ts, close)) {
        const char *name = NULL;
        if (peek(ts)->t == T_NAME && is_op(&ts->v[ts->i + 1], "=")) {
            name = tok_name(ts->c, next(ts));
            next(ts);
        }
        nl_push(ts->c, &args, parse_expr(ts));
        if (args.n > kwcap) {
            size_t cap = kwcap ? kwcap * 2 : 8;
            const char **nk = alloc(ts->c, sizeof(char *) * cap);
            if (kwcap) memcpy(nk, kw, sizeof(char *) * kwcap);
            kw = nk;
            kwcap = cap;
        }
        kw[args.n - 1] = name;
        if (!accept_op(ts, ",")) {
            expect_op(ts, close);
            break;
        }
    }
    n->args = args.v;
    n->kw = kw;
    n->n = args.n;
}

static node *parse_primary(tokens *ts) {
    jctx *c = ts->c;
    tok *t = next(ts);
    node *n;
    switch (t->t) {
    case T_INT:
        n = mk(c, N_LIT, t->pos);
        n->lit = v_int(t->i);
        return n;
    case T_FLOAT:
        n = mk(c, N_LIT, t->pos);
        n->lit = v_float(t->f);
        return n;
    case T_STR: {
        n = mk(c, N_LIT, t->pos);
        jbuf s = {0};
        put(c, &s, t->str->s, t->str->len);
        while (peek(ts)->t == T_STR) { /* adjacent literals concatenate */
            tok *u = next(ts);
            put(c, &s, u->str->s, u->str->len);
        }
        n->lit = v_str(c, s.data ? s.data : "", s.len);
        return n;
    }
    case T_NAME:
        n = mk(c, N_LIT, t->pos);
        if (is_name(t, "true") || is_name(t, "True")) n->lit = v_bool(true);
        else if (is_name(t, "false") || is_name(t, "False")) n->lit = v_bool(false);
        else if (is_name(t, "none") || is_name(t, "None")) n->lit = v_none();
        else {
            n->t = N_NAME;
            n->name = tok_name(c, t);
        }
        return n;
    case T_OP:
        if (is_op(t, "(")) {
            if (accept_op(ts, ")")) {
                n = mk(c, N_TUPLE, t->pos);
                return n;
            }
            node *e = parse_expr(ts);
            if (accept_op(ts, ",")) { /* a tuple */
                nodelist items = {0};
                nl_push(c, &items, e);
                while (!is_op(peek(ts), ")")) {
                    nl_push(c, &items, parse_expr(ts));
                    if (!accept_op(ts, ",")) break;
                }
                expect_op(ts, ")");
                n = mk(c, N_TUPLE, t->pos);
                n->args = items.v;
                n->n = items.n;
                return n;
            }
            expect_op(ts, ")");
            return e;
        }
        if (is_op(t, "[")) {
            nodelist items = {0};
            while (!accept_op(ts, "]")) {
                nl_push(c, &items, parse_expr(ts));
                if (!accept_op(ts, ",")) {
                    expect_op(ts, "]");
                    break;
                }
            }
            n = mk(c, N_LIST, t->pos);
            n->args = items.v;
            n->n = items.n;
            return n;
        }
        if (is_op(t, "{")) {
            nodelist keys = {0}, vals = {0};
            while (!accept_op(ts, "}")) {
                nl_push(c, &keys, parse_expr(ts));
                expect_op(ts, ":");
                nl_push(c, &vals, parse_expr(ts));
                if (!accept_op(ts, ",")) {
                    expect_op(ts, "}");
                    break;
                }
            }
            n = mk(c, N_DICT, t->pos);
            n->args = keys.v;
            n->vals = vals.v;
            n->n = keys.n;
            return n;
        }
        break;
    default: break;
    }
    unread(ts, t);
    unexpected(ts, "an expression");
}

static node *parse_postfix(tokens *ts, node *n) {
    jctx *c = ts->c;
    for (;;) {
        tok *t = peek(ts);
        if (is_op(t, ".")) {
            next(ts);
            tok *name = next(ts);
            node *a = mk(c, N_ATTR, name->pos);
            if (name->t == T_NAME) a->name = tok_name(c, name);
            else if (name->t == T_INT) { /* x.0 means x[0] */
                a->t = N_ITEM;
                a->b = mk(c, N_LIT, name->pos);
                a->b->lit = v_int(name->i);
            } else {
                unread(ts, name);
                unexpected(ts, "an attribute name");
            }
            a->a = n;
            n = a;
        } else if (is_op(t, "[")) {
            next(ts);
            node *start = NULL, *stop = NULL, *step = NULL;
            bool slice = false;
            if (!is_op(peek(ts), ":")) start = parse_expr(ts);
            if (accept_op(ts, ":")) {
                slice = true;
                if (!is_op(peek(ts), "]") && !is_op(peek(ts), ":")) stop = parse_expr(ts);
                if (accept_op(ts, ":") && !is_op(peek(ts), "]")) step = parse_expr(ts);
            }
            expect_op(ts, "]");
            node *a = mk(c, slice ? N_SLICE : N_ITEM, t->pos);
            a->a = n;
            if (slice) {
                a->args = alloc(c, sizeof(node *) * 3);
                a->args[0] = start;
                a->args[1] = stop;
                a->args[2] = step;
            } else {
                a->b = start;
            }
            n = a;
        } else if (is_op(t, "(")) {
            next(ts);
            node *a = mk(c, N_CALL, t->pos);
            a->a = n;
            parse_call_args(ts, a, ")");
            n = a;
        } else {
            return n;
        }
    }
}

static node *parse_filters(tokens *ts, node *n) {
    jctx *c = ts->c;
    for (;;) {
        if (accept_op(ts, "|")) {
            tok *name = next(ts);
            if (name->t != T_NAME) {
                unread(ts, name);
                unexpected(ts, "a filter name");
            }
            node *f = mk(c, N_FILTER, name->pos);
            f->name = tok_name(c, name);
            /* dotted filter names are not used by templates; a call follows optionally */
            if (accept_op(ts, "(")) parse_call_args(ts, f, ")");
            f->a = n;
            n = f;
        } else if (is_name(peek(ts), "is")) {
            next(ts);
            bool neg = accept_name(ts, "not");
            tok *name = next(ts);
            if (name->t != T_NAME && !(name->t == T_OP)) {
                unread(ts, name);
                unexpected(ts, "a test name");
            }
            node *f = mk(c, N_TEST, name->pos);
            f->negate = neg;
            if (name->t == T_NAME) {
                f->name = is_name(name, "none") || is_name(name, "None") ? "none"
                          : is_name(name, "true") || is_name(name, "True") ? "true"
                          : is_name(name, "false") || is_name(name, "False") ? "false"
                                                                              : tok_name(c, name);
            } else {
                f->name = tok_name(c, name); /* == etc. */
            }
            if (accept_op(ts, "(")) {
                parse_call_args(ts, f, ")");
            } else {
                /* `is divisibleby 3`, `is sameas x`: one argument without parentheses */
                tok *nt = peek(ts);
                if (nt->t == T_INT || nt->t == T_FLOAT || nt->t == T_STR ||
                    (nt->t == T_NAME && !is_name(nt, "and") && !is_name(nt, "or") && !is_name(nt, "else") &&
                     !is_name(nt, "if") && !is_name(nt, "in") && !is_name(nt, "is") && !is_name(nt, "not"))) {
                    f->args = alloc(c, sizeof(node *));
                    f->kw = alloc(c, sizeof(char *));
                    f->args[0] = parse_unary(ts, false);
                    f->kw[0] = NULL;
                    f->n = 1;
                }
            }
            f->a = n;
            n = f;
        } else {
            return n;
        }
    }
}

static node *parse_unary(tokens *ts, bool with_filter) {
    jctx *c = ts->c;
    tok *t = peek(ts);
    nest_in(c, t->pos);
    node *n;
    if (is_op(t, "-") || is_op(t, "+")) {
        next(ts);
        n = mk(c, is_op(t, "-") ? N_NEG : N_POS, t->pos);
        n->a = parse_unary(ts, false);
    } else {
        n = parse_postfix(ts, parse_primary(ts));
    }
    if (with_filter) n = parse_filters(ts, n);
    c->nest--;
    return n;
}

/* One left-associative level of binary operators: symbols (N_BIN, the operator kept as the
 * node's name) or words (and/or, with their own node types). */
typedef node *(*parse_fn)(tokens *ts);

static node *left_assoc(tokens *ts, parse_fn operand, const char *const *ops, ntype type) {
    node *n = operand(ts);
    for (;;) {
        tok *t = peek(ts);
        const char *op = NULL;
        for (int i = 0; ops[i] && !op; i++)
            if (type == N_BIN ? is_op(t, ops[i]) : is_name(t, ops[i])) op = ops[i];
        if (!op) return n;
        next(ts);
        node *b = mk(ts->c, type, t->pos);
        b->name = op;
        b->a = n;
        b->b = operand(ts);
        n = b;
    }
}

static node *parse_filtered_unary(tokens *ts) { return parse_unary(ts, true); }
static node *parse_pow(tokens *ts) { return left_assoc(ts, parse_filtered_unary, (const char *const[]){"**", NULL}, N_BIN); }
static node *parse_math2(tokens *ts) {
    return left_assoc(ts, parse_pow, (const char *const[]){"*", "/", "//", "%", NULL}, N_BIN);
}
static node *parse_concat(tokens *ts) { return left_assoc(ts, parse_math2, (const char *const[]){"~", NULL}, N_BIN); }
static node *parse_math1(tokens *ts) { return left_assoc(ts, parse_concat, (const char *const[]){"+", "-", NULL}, N_BIN); }

static node *parse_compare(tokens *ts) {
    node *n = parse_math1(ts);
    for (;;) {
        tok *t = peek(ts);
        const char *op = NULL;
        if (is_op(t, "==") || is_op(t, "!=") || is_op(t, "<") || is_op(t, ">") || is_op(t, "<=") || is_op(t, ">=")) {
            next(ts);
            op = tok_name(ts->c, t);
        } else if (is_name(t, "in")) {
            next(ts);
            op = "in";
        } else if (is_name(t, "not") && is_name(&ts->v[ts->i + 1], "in")) {
            next(ts);
            next(ts);
            op = "not in";
        } else {
            return n;
        }
        node *b = mk(ts->c, N_CMP, t->pos);
        b->name = op;
        b->a = n;
        b->b = parse_math1(ts);
        n = b;
    }
}

static node *parse_not(tokens *ts) {
    tok *t = peek(ts);
    if (is_name(t, "not")) {
        next(ts);
        nest_in(ts->c, t->pos);
        node *n = mk(ts->c, N_NOT, t->pos);
        n->a = parse_not(ts);
        ts->c->nest--;
        return n;
    }
    return parse_compare(ts);
}

static node *parse_and(tokens *ts) { return left_assoc(ts, parse_not, (const char *const[]){"and", NULL}, N_AND); }
static node *parse_or(tokens *ts) { return left_assoc(ts, parse_and, (const char *const[]){"or", NULL}, N_OR); }

static node *parse_expr(tokens *ts) {
    node *n = parse_or(ts);
    while (is_name(peek(ts), "if")) {
        tok *t = next(ts);
        node *cnd = mk(ts->c, N_COND, t->pos);
        cnd->cnd = parse_or(ts);
        cnd->a = n;
        if (accept_name(ts, "else")) cnd->b = parse_expr(ts);
        n = cnd;
    }
    return n;
}

/* A tuple without parentheses where a statement allows one: `for a, b in`, `set a, b =`. */
static node *parse_tuple_expr(tokens *ts) {
    node *e = parse_expr(ts);
    if (!is_op(peek(ts), ",")) return e;
    nodelist items = {0};
    nl_push(ts->c, &items, e);
    while (accept_op(ts, ",")) {
        if (peek(ts)->t == T_END) break;
        nl_push(ts->c, &items, parse_expr(ts));
    }
    node *n = mk(ts->c, N_TUPLE, e->pos);
    n->args = items.v;
    n->n = items.n;
    return n;
}

static void expect_end(tokens *ts) {
    if (peek(ts)->t != T_END) unexpected(ts, "the end of the tag");
}

/* ---- statements --------------------------------------------------------------------------- */

typedef struct {
    jctx *c;
    segs *s;
    size_t i;
} parser;

/* Parses statements until one of the `ends` tags (space-separated names); returns the body
 * and leaves p->i on the terminating tag (its name in *which). */
static node *parse_body(parser *p, const char *ends, const char **which, tokens *end_tokens);

static void names_list(tokens *ts, const char ***out, size_t *n) {
    const char **v = NULL;
    size_t cap = 0;
    *n = 0;
    do {
        tok *t = next(ts);
        if (t->t != T_NAME) {
            unread(ts, t);
            unexpected(ts, "a name");
        }
        if (*n == cap) {
            cap = cap ? cap * 2 : 4;
            const char **nv = alloc(ts->c, sizeof(char *) * cap);
            if (*n) memcpy(nv, v, sizeof(char *) * *n);
            v = nv;
        }
        v[(*n)++] = tok_name(ts->c, t);
    } while (accept_op(ts, ","));
    *out = v;
}

static bool in_list(const char *word, size_t len, const char *list) {
    for (const char *q = list; *q;) {
        const char *sp = strchr(q, ' ');
        size_t l = sp ? (size_t)(sp - q) : strlen(q);
        if (l == len && !memcmp(q, word, len)) return true;
        if (!sp) break;
        q = sp + 1;
    }
    return false;
}

/* A parameter list after its "(": names into n->targets / n->n_targets and, with defaults, the
 * `= expr` of each (NULL where absent) into n->vals. Consumes the ")". */
static void parse_params(tokens *ts, node *n, bool defaults) {
    jctx *c = ts->c;
    nodelist vals = {0};
    const char **params = NULL;
    size_t cap = 0;
    while (!accept_op(ts, ")")) {
        tok *pn = next(ts);
        if (pn->t != T_NAME) unexpected(ts, "a parameter name");
        if (n->n_targets == cap) {
            cap = cap ? cap * 2 : 4;
            const char **nv = alloc(c, sizeof(char *) * cap);
            if (n->n_targets) memcpy(nv, params, sizeof(char *) * n->n_targets);
            params = nv;
        }
        params[n->n_targets++] = tok_name(c, pn);
        if (defaults) nl_push(c, &vals, accept_op(ts, "=") ? parse_expr(ts) : NULL);
        if (!accept_op(ts, ",")) {
            expect_op(ts, ")");
            break;
        }
    }
    n->targets = params;
    if (defaults) n->vals = vals.v;
}

static node *parse_stmt(parser *p, tokens *ts) {
    jctx *c = p->c;
    tok *t = next(ts);
    if (t->t != T_NAME) {
        unread(ts, t);
        unexpected(ts, "a statement name");
    }
    node *n;
    const char *which;
    tokens et;
    if (is_name(t, "if")) {
        n = mk(c, N_IF, t->pos);
        nodelist conds = {0}, bodies = {0};
        nl_push(c, &conds, parse_expr(ts));
        expect_end(ts);
        for (;;) {
            nl_push(c, &bodies, parse_body(p, "elif else endif", &which, &et));
            if (!strcmp(which, "elif")) {
                nl_push(c, &conds, parse_expr(&et));
                expect_end(&et);
            } else if (!strcmp(which, "else")) {
                expect_end(&et);
                n->else_body = parse_body(p, "endif", &which, &et);
                expect_end(&et);
                break;
            } else {
                expect_end(&et);
                break;
            }
        }
        n->args = conds.v;
        n->vals = bodies.v;
        n->n = conds.n;
        return n;
    }
    if (is_name(t, "for")) {
        n = mk(c, N_FOR, t->pos);
        names_list(ts, &n->targets, &n->n_targets);
        if (!accept_name(ts, "in")) unexpected(ts, "'in'");
        n->a = parse_or(ts);
        if (accept_name(ts, "if")) n->cnd = parse_expr(ts);
        accept_name(ts, "recursive");
        expect_end(ts);
        n->body = parse_body(p, "else endfor", &which, &et);
        expect_end(&et);
        if (!strcmp(which, "else")) {
            n->else_body = parse_body(p, "endfor", &which, &et);
            expect_end(&et);
        }
        return n;
    }
    if (is_name(t, "set")) {
        size_t save = ts->i;
        tok *nt = next(ts);
        if (nt->t == T_NAME && is_op(peek(ts), ".")) { /* set ns.attr = value */
            next(ts);
            tok *attr = next(ts);
            if (attr->t != T_NAME) unexpected(ts, "an attribute name");
            expect_op(ts, "=");
            n = mk(c, N_SET, t->pos);
            n->targets = alloc(c, sizeof(char *) * 2);
            n->targets[0] = tok_name(c, nt);
            n->targets[1] = tok_name(c, attr);
            n->n_targets = 2;
            n->name = "attr";
            n->a = parse_tuple_expr(ts);
            expect_end(ts);
            return n;
        }
        ts->i = save;
        n = mk(c, N_SET, t->pos);
        names_list(ts, &n->targets, &n->n_targets);
        if (accept_op(ts, "=")) {
            n->a = parse_tuple_expr(ts);
            expect_end(ts);
            return n;
        }
        /* {% set x %}...{% endset %}, optionally with filters */
        n->t = N_SETBLOCK;
        node *holder = mk(c, N_LIT, t->pos);
        n->a = parse_filters(ts, holder);
        n->cnd = holder;
        expect_end(ts);
        n->body = parse_body(p, "endset", &which, &et);
        expect_end(&et);
        return n;
    }
    if (is_name(t, "macro")) {
        n = mk(c, N_MACRO, t->pos);
        tok *name = next(ts);
        if (name->t != T_NAME) unexpected(ts, "a macro name");
        n->name = tok_name(c, name);
        expect_op(ts, "(");
        parse_params(ts, n, true);
        expect_end(ts);
        n->body = parse_body(p, "endmacro", &which, &et);
        return n;
    }
    if (is_name(t, "call")) {
        n = mk(c, N_CALLBLOCK, t->pos);
        if (accept_op(ts, "(")) parse_params(ts, n, false); /* caller parameters */
        n->a = parse_expr(ts);
        if (n->a->t != N_CALL) fail_at(c, t->pos, HC_ERR_FORMAT, "{%% call %%} needs a macro call");
        expect_end(ts);
        n->body = parse_body(p, "endcall", &which, &et);
        return n;
    }
    if (is_name(t, "filter")) {
        n = mk(c, N_FILTERBLOCK, t->pos);
        node *holder = mk(c, N_LIT, t->pos);
        /* reuse the filter-chain parser: `filter upper` == `x | upper` */
        ts->i--;
        ts->v[ts->i].t = T_OP;
        ts->v[ts->i].s = "|";
        ts->v[ts->i].len = 1;
        n->a = parse_filters(ts, holder);
        n->cnd = holder;
        expect_end(ts);
        n->body = parse_body(p, "endfilter", &which, &et);
        return n;
    }
    if (is_name(t, "generation")) { /* transformers' assistant-mask marker: renders its body */
        expect_end(ts);
        n = parse_body(p, "endgeneration", &which, &et);
        return n;
    }
    if (is_name(t, "break") || is_name(t, "continue")) {
        n = mk(c, is_name(t, "break") ? N_BREAK : N_CONTINUE, t->pos);
        expect_end(ts);
        return n;
    }
    fail_at(c, t->pos, HC_ERR_FORMAT, "unknown tag '%.*s'", (int)t->len, t->s);
}

static node *parse_body(parser *p, const char *ends, const char **which, tokens *end_tokens) {
    jctx *c = p->c;
    nodelist body = {0};
    while (p->i < p->s->n) {
        seg *sg = &p->s->v[p->i++];
        if (sg->t == SEG_TEXT) {
            node *n = mk(c, N_TEXT, sg->start);
            n->lit = v_str(c, c->src + sg->start, sg->end - sg->start);
            nl_push(c, &body, n);
        } else if (sg->t == SEG_VAR) {
            tokens ts;
            tokenize(c, sg->start, sg->end, &ts);
            node *n = mk(c, N_OUT, sg->start);
            n->a = parse_expr(&ts);
            expect_end(&ts);
            nl_push(c, &body, n);
        } else {
            tokens ts;
            tokenize(c, sg->start, sg->end, &ts);
            tok *t = peek(&ts);
            if (t->t == T_NAME && ends && in_list(t->s, t->len, ends)) {
                next(&ts);
                *which = tok_name(c, t);
                *end_tokens = ts;
                node *b = mk(c, N_BODY, sg->start);
                b->args = body.v;
                b->n = body.n;
                return b;
            }
            if (t->t == T_NAME && (is_name(t, "endif") || is_name(t, "endfor") || is_name(t, "else") ||
                                   is_name(t, "elif") || is_name(t, "endmacro") || is_name(t, "endset") ||
                                   is_name(t, "endcall") || is_name(t, "endfilter") || is_name(t, "endgeneration")))
                fail_at(c, t->pos, HC_ERR_FORMAT, "unexpected '%.*s'%s%s", (int)t->len, t->s,
                        ends ? ", expected one of: " : "", ends ? ends : "");
            nest_in(c, t->pos);
            nl_push(c, &body, parse_stmt(p, &ts));
            c->nest--;
        }
    }
    if (ends) fail_at(c, c->src_len, HC_ERR_FORMAT, "unexpected end of template, expected one of: %s", ends);
    node *b = mk(c, N_BODY, 0);
    b->args = body.v;
    b->n = body.n;
    return b;
}

/* ======================================================================================== */
/* evaluation                                                                                 */
/* ======================================================================================== */

static jv eval(jctx *c, scope *sc, node *n);
static void exec_body(jctx *c, scope *sc, node *body, jbuf *out);

static scope *new_scope(jctx *c, scope *parent) {
    scope *s = alloc(c, sizeof(scope));
    memset(s, 0, sizeof *s);
    s->parent = parent;
    return s;
}

static jv lookup(jctx *c, scope *sc, const char *name) {
    size_t n = strlen(name);
    for (scope *s = sc; s; s = s->parent) {
        jv *v = dict_find_s(&s->vars, name, n);
        if (v) return *v;
    }
    return v_undef(c, name);
}

static void assign(jctx *c, scope *sc, const char *name, jv v) { dict_set(c, &sc->vars, v_cstr(c, name), v); }

static _Noreturn void undefined_error(jctx *c, node *n, const jv *v) {
    if (v->u.s) fail_at(c, n->pos, HC_ERR_FORMAT, "'%s' is undefined", v->u.s->s);
    fail_at(c, n->pos, HC_ERR_FORMAT, "undefined value");
}

/* builtin functions and methods */
enum {
    F_RAISE, F_STRFTIME, F_NAMESPACE, F_RANGE, F_DICT, F_CALLER,
    /* str methods */
    M_STRIP, M_LSTRIP, M_RSTRIP, M_SPLIT, M_RSPLIT, M_STARTSWITH, M_ENDSWITH, M_REPLACE, M_UPPER, M_LOWER, M_TITLE,
    M_CAPITALIZE, M_FORMAT, M_FIND, M_COUNT, M_JOIN, M_SPLITLINES, M_ISDIGIT, M_ISALPHA, M_ISSPACE,
    /* dict methods */
    M_GET, M_ITEMS, M_KEYS, M_VALUES,
    /* unsafe in the immutable sandbox */
    M_UNSAFE,
    /* loop.cycle */
    M_CYCLE
};

static jv bound(jctx *c, int id, const jv *self) {
    jv v = {.t = V_FUNC};
    v.u.fn.id = id;
    if (self) {
        jv *copy = alloc(c, sizeof(jv));
        *copy = *self;
        v.u.fn.self = copy;
    }
    return v;
}

static jv get_attr(jctx *c, node *at, const jv *obj, const char *name) {
    size_t n = strlen(name);
    switch (obj->t) {
    case V_UNDEF: undefined_error(c, at, obj);
    case V_DICT: {
        static const struct {
            const char *n;
            int id;
        } dm[] = {{"get", M_GET}, {"items", M_ITEMS}, {"keys", M_KEYS}, {"values", M_VALUES},
                  {"update", M_UNSAFE}, {"pop", M_UNSAFE}, {"setdefault", M_UNSAFE}, {"clear", M_UNSAFE},
                  {"popitem", M_UNSAFE}};
        for (size_t i = 0; i < sizeof dm / sizeof dm[0]; i++)
            if (!strcmp(name, dm[i].n)) {
                jv b = bound(c, dm[i].id, obj);
                return b;
            }
        jv *v = dict_find_s(obj->u.d, name, n);
        if (v) return *v;
        return v_undef(c, NULL);
    }
    case V_NS: {
        jv *v = dict_find_s(obj->u.d, name, n);
        return v ? *v : v_undef(c, NULL);
    }
    case V_STR: {
        static const struct {
            const char *n;
            int id;
        } sm[] = {{"strip", M_STRIP}, {"lstrip", M_LSTRIP}, {"rstrip", M_RSTRIP}, {"split", M_SPLIT},
                  {"rsplit", M_RSPLIT}, {"startswith", M_STARTSWITH}, {"endswith", M_ENDSWITH},
                  {"replace", M_REPLACE}, {"upper", M_UPPER}, {"lower", M_LOWER}, {"title", M_TITLE},
                  {"capitalize", M_CAPITALIZE}, {"format", M_FORMAT}, {"find", M_FIND}, {"count", M_COUNT},
                  {"join", M_JOIN}, {"splitlines", M_SPLITLINES}, {"isdigit", M_ISDIGIT}, {"isalpha", M_ISALPHA},
                  {"isspace", M_ISSPACE}};
        for (size_t i = 0; i < sizeof sm / sizeof sm[0]; i++)
            if (!strcmp(name, sm[i].n)) return bound(c, sm[i].id, obj);
        return v_undef(c, NULL);
    }
    case V_LIST:
        if (!strcmp(name, "append") || !strcmp(name, "pop") || !strcmp(name, "extend") || !strcmp(name, "insert") ||
            !strcmp(name, "remove") || !strcmp(name, "sort") || !strcmp(name, "reverse") || !strcmp(name, "clear")) {
            jv b = bound(c, M_UNSAFE, obj);
            b.u.fn.self = (void *)name; /* the method name, for the error */
            b.is_tuple = true;
            return b;
        }
        if (!strcmp(name, "count")) return bound(c, M_COUNT, obj);
        return v_undef(c, NULL);
    case V_LOOP: {
        jloop *l = obj->u.loop;
        if (!strcmp(name, "index")) return v_int(l->index0 + 1);
        if (!strcmp(name, "index0")) return v_int(l->index0);
        if (!strcmp(name, "revindex")) return v_int(l->length - l->index0);
        if (!strcmp(name, "revindex0")) return v_int(l->length - l->index0 - 1);
        if (!strcmp(name, "first")) return v_bool(l->index0 == 0);
        if (!strcmp(name, "last")) return v_bool(l->index0 == l->length - 1);
        if (!strcmp(name, "length")) return v_int(l->length);
        if (!strcmp(name, "depth")) return v_int(1);
        if (!strcmp(name, "depth0")) return v_int(0);
        if (!strcmp(name, "previtem")) return l->has_prev ? l->prev : v_undef(c, NULL);
        if (!strcmp(name, "nextitem")) return l->has_next ? l->next : v_undef(c, NULL);
        if (!strcmp(name, "cycle")) return bound(c, M_CYCLE, obj);
        return v_undef(c, NULL);
    }
    default: return v_undef(c, NULL);
    }
}

/* Characters of a UTF-8 string, for indexing and slicing by code point. */
static size_t utf8_count(const jstr *s) {
    size_t n = 0;
    for (size_t i = 0; i < s->len; i++) n += ((unsigned char)s->s[i] & 0xC0) != 0x80;
    return n;
}

static size_t utf8_offset(const jstr *s, size_t chars) {
    size_t i = 0, k = 0;
    while (i < s->len && k < chars) {
        i++;
        while (i < s->len && ((unsigned char)s->s[i] & 0xC0) == 0x80) i++;
        k++;
    }
    return i;
}

static jv get_item(jctx *c, node *at, const jv *obj, const jv *key) {
    switch (obj->t) {
    case V_UNDEF: undefined_error(c, at, obj);
    case V_DICT:
    case V_NS: {
        jv *v = dict_find(c, obj->u.d, key);
        if (v) return *v;
        if (key->t == V_STR) return get_attr(c, at, obj, key->u.s->s);
        return v_undef(c, NULL);
    }
    case V_LIST: {
        if (key->t != V_INT && key->t != V_BOOL) {
            if (key->t == V_STR) return get_attr(c, at, obj, key->u.s->s);
            fail_at(c, at->pos, HC_ERR_FORMAT, "list indices must be integers, not %s", type_name(key));
        }
        int64_t i = key->t == V_INT ? key->u.i : key->u.b;
        if (i < 0) i += (int64_t)obj->u.l->n;
        if (i < 0 || i >= (int64_t)obj->u.l->n) return v_undef(c, NULL);
        return obj->u.l->v[i];
    }
    case V_STR: {
        if (key->t == V_STR) return get_attr(c, at, obj, key->u.s->s);
        if (key->t != V_INT) fail_at(c, at->pos, HC_ERR_FORMAT, "string indices must be integers");
        int64_t n = (int64_t)utf8_count(obj->u.s), i = key->u.i;
        if (i < 0) i += n;
        if (i < 0 || i >= n) return v_undef(c, NULL);
        size_t a = utf8_offset(obj->u.s, (size_t)i), b = utf8_offset(obj->u.s, (size_t)i + 1);
        return v_str(c, obj->u.s->s + a, b - a);
    }
    default:
        if (key->t == V_STR) return get_attr(c, at, obj, key->u.s->s);
        return v_undef(c, NULL);
    }
}

/* Python slice bounds for a sequence of length n. */
static void slice_bounds(int64_t n, const jv *a, const jv *b, const jv *s, int64_t *start, int64_t *stop,
                         int64_t *step) {
    *step = (s->t == V_INT) ? s->u.i : 1;
    if (*step == 0) *step = 1;
    if (*step > 0) {
        *start = a->t == V_INT ? a->u.i : 0;
        *stop = b->t == V_INT ? b->u.i : n;
        if (*start < 0) *start += n;
        if (*stop < 0) *stop += n;
        if (*start < 0) *start = 0;
        if (*stop > n) *stop = n;
    } else {
        *start = a->t == V_INT ? a->u.i : n - 1;
        *stop = b->t == V_INT ? b->u.i : -n - 1;
        if (*start < 0) *start += n;
        if (*stop < 0) *stop += n;
        if (*start >= n) *start = n - 1;
        if (*stop < -1) *stop = -1;
    }
}

static jv do_slice(jctx *c, node *at, const jv *obj, const jv *a, const jv *b, const jv *s) {
    int64_t start, stop, step;
    if (obj->t == V_LIST) {
        slice_bounds((int64_t)obj->u.l->n, a, b, s, &start, &stop, &step);
        jv r = v_list(c, 0);
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) list_push(c, r.u.l, obj->u.l->v[i]);
        r.is_tuple = obj->is_tuple;
        return r;
    }
    if (obj->t == V_STR) {
        int64_t n = (int64_t)utf8_count(obj->u.s);
        slice_bounds(n, a, b, s, &start, &stop, &step);
        jbuf o = {0};
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
            size_t x = utf8_offset(obj->u.s, (size_t)i), y = utf8_offset(obj->u.s, (size_t)i + 1);
            put(c, &o, obj->u.s->s + x, y - x);
        }
        jv r = v_str(c, o.data ? o.data : "", o.len);
        return r;
    }
    if (obj->t == V_UNDEF) undefined_error(c, at, obj);
    fail_at(c, at->pos, HC_ERR_FORMAT, "'%s' object is not subscriptable", type_name(obj));
}

/* Iterating a value: lists, tuples, dict keys, string characters; undefined is empty. */
static jv iterate(jctx *c, node *at, const jv *v) {
    switch (v->t) {
    case V_LIST: return *v;
    case V_UNDEF: return v_list(c, 0);
    case V_DICT: {
        jv l = v_list(c, v->u.d->n);
        for (size_t i = 0; i < v->u.d->n; i++) list_push(c, l.u.l, v->u.d->k[i]);
        return l;
    }
    case V_STR: {
        jv l = v_list(c, v->u.s->len);
        for (size_t i = 0; i < v->u.s->len;) {
            size_t j = i + 1;
            while (j < v->u.s->len && ((unsigned char)v->u.s->s[j] & 0xC0) == 0x80) j++;
            list_push(c, l.u.l, v_str(c, v->u.s->s + i, j - i));
            i = j;
        }
        return l;
    }
    default: fail_at(c, at->pos, HC_ERR_FORMAT, "'%s' object is not iterable", type_name(v));
    }
}

static int compare_values(jctx *c, node *at, const jv *a, const jv *b);

static int compare(jctx *c, node *at, const jv *a, const jv *b) {
    value_in(c);
    const int r = compare_values(c, at, a, b);
    c->eval_depth--;
    return r;
}

static int compare_values(jctx *c, node *at, const jv *a, const jv *b) {
    if (is_num(a) && is_num(b)) {
        double x = num(a), y = num(b);
        return x < y ? -1 : x > y;
    }
    if (a->t == V_STR && b->t == V_STR) {
        size_t n = a->u.s->len < b->u.s->len ? a->u.s->len : b->u.s->len;
        int r = memcmp(a->u.s->s, b->u.s->s, n);
        if (r) return r < 0 ? -1 : 1;
        return a->u.s->len < b->u.s->len ? -1 : a->u.s->len > b->u.s->len;
    }
    if (a->t == V_LIST && b->t == V_LIST) {
        for (size_t i = 0; i < a->u.l->n && i < b->u.l->n; i++) {
            int r = compare(c, at, &a->u.l->v[i], &b->u.l->v[i]);
            if (r) return r;
        }
        return a->u.l->n < b->u.l->n ? -1 : a->u.l->n > b->u.l->n;
    }
    if (a->t == V_UNDEF) undefined_error(c, at, a);
    if (b->t == V_UNDEF) undefined_error(c, at, b);
    fail_at(c, at->pos, HC_ERR_FORMAT, "'<' not supported between instances of '%s' and '%s'", type_name(a), type_name(b));
}

static bool contains(jctx *c, node *at, const jv *needle, const jv *hay) {
    switch (hay->t) {
    case V_STR:
        if (needle->t != V_STR)
            fail_at(c, at->pos, HC_ERR_FORMAT, "'in <string>' requires string as left operand, not %s", type_name(needle));
        if (!needle->u.s->len) return true;
        for (size_t i = 0; i + needle->u.s->len <= hay->u.s->len; i++)
            if (!memcmp(hay->u.s->s + i, needle->u.s->s, needle->u.s->len)) return true;
        return false;
    case V_LIST:
        for (size_t i = 0; i < hay->u.l->n; i++)
            if (value_eq(c, needle, &hay->u.l->v[i])) return true;
        return false;
    case V_DICT:
    case V_NS: return dict_find(c, hay->u.d, needle) != NULL;
    case V_UNDEF: return false; /* Undefined iterates as empty */
    default: fail_at(c, at->pos, HC_ERR_FORMAT, "argument of type '%s' is not iterable", type_name(hay));
    }
}

/* printf-style "%s" % value */
/* Pads body (blen bytes, chars code points) to width code points, as %-format pads: spaces on
 * the left, or on the right with '-'. */
static void put_padded(jctx *c, jbuf *o, const char *body, size_t blen, size_t chars, int64_t width, bool left) {
    const size_t pad = width > (int64_t)chars ? (size_t)width - chars : 0; /* width <= MAX_STR_BYTES */
    if (!left)
        for (size_t i = 0; i < pad; i++) put(c, o, " ", 1);
    put(c, o, body, blen);
    if (left)
        for (size_t i = 0; i < pad; i++) put(c, o, " ", 1);
}

/* Python's printf-style formatting, str % args: flags - + space 0 #, a width and a precision
 * (digits or *), and the conversions d i u x X o e E f F g G c s r %. Integers are formatted by
 * hand (Python writes a negative hex number as -ff and %#o as 0o17, C does not); floats by C,
 * whose output Python's matches. */
static jv percent_format(jctx *c, node *at, const jv *fmt, const jv *args) {
    jbuf o = {0};
    size_t ai = 0;
    const bool tuple = args->t == V_LIST && args->is_tuple;
    const jstr *f = fmt->u.s;
    const size_t n = f->len;
#define NEXT_ARG()                                                                                                 \
    (tuple ? (ai < args->u.l->n ? &args->u.l->v[ai++] : NULL) : (ai++ ? NULL : args))
    for (size_t i = 0; i < n; i++) {
        if (f->s[i] != '%') {
            put(c, &o, f->s + i, 1);
            continue;
        }
        if (++i >= n) fail_at(c, at->pos, HC_ERR_FORMAT, "incomplete format");
        if (f->s[i] == '(') fail_at(c, at->pos, HC_ERR_FORMAT, "%%(name) formats are not supported");
        bool minus = false, plus = false, space = false, zero = false, alt = false;
        for (; i < n && strchr("-+ 0#", f->s[i]); i++) {
            const char fl = f->s[i];
            minus |= fl == '-', plus |= fl == '+', space |= fl == ' ', zero |= fl == '0', alt |= fl == '#';
        }
        int64_t width = 0, prec = -1;
        if (i < n && f->s[i] == '*') {
            const jv *w = NEXT_ARG();
            if (!w || w->t != V_INT) fail_at(c, at->pos, HC_ERR_FORMAT, "* wants int");
            width = w->u.i;
            if (width < 0) minus = true, width = width == INT64_MIN ? INT64_MAX : -width;
            i++;
        } else {
            for (; i < n && f->s[i] >= '0' && f->s[i] <= '9'; i++)
                if ((width = width * 10 + (f->s[i] - '0')) > (int64_t)MAX_STR_BYTES) width = (int64_t)MAX_STR_BYTES + 1;
        }
        if (i < n && f->s[i] == '.') {
            i++;
            prec = 0;
            if (i < n && f->s[i] == '*') {
                const jv *p = NEXT_ARG();
                if (!p || p->t != V_INT) fail_at(c, at->pos, HC_ERR_FORMAT, "* wants int");
                prec = p->u.i < 0 ? 0 : p->u.i;
                i++;
            } else {
                for (; i < n && f->s[i] >= '0' && f->s[i] <= '9'; i++)
                    if ((prec = prec * 10 + (f->s[i] - '0')) > (int64_t)MAX_STR_BYTES) prec = (int64_t)MAX_STR_BYTES + 1;
            }
        }
        while (i < n && strchr("hlL", f->s[i])) i++; /* length modifiers: Python accepts and ignores them */
        if (i >= n) fail_at(c, at->pos, HC_ERR_FORMAT, "incomplete format");
        const char k = f->s[i];
        if (k == '%') {
            put(c, &o, "%", 1);
            continue;
        }
        if (width > (int64_t)MAX_STR_BYTES || prec > (int64_t)MAX_STR_BYTES)
            FAIL(c, "a string longer than %zu MiB", MAX_STR_BYTES >> 20);
        const jv *a = NEXT_ARG();
        if (!a) fail_at(c, at->pos, HC_ERR_FORMAT, "not enough arguments for format string");
        if (strchr("diuxXo", k)) {
            if (!is_num(a)) fail_at(c, at->pos, HC_ERR_FORMAT, "%%%c format: a real number is required, not %s", k, type_name(a));
            const int64_t v = a->t == V_INT ? a->u.i : a->t == V_BOOL ? a->u.b : float_to_int(c, at->pos, num(a));
            const uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
            char digits[32], head[4] = {0};
            snprintf(digits, sizeof digits, k == 'x' ? "%llx" : k == 'X' ? "%llX" : k == 'o' ? "%llo" : "%llu",
                     (unsigned long long)mag);
            size_t hl = 0;
            if (v < 0) head[hl++] = '-';
            else if (plus) head[hl++] = '+';
            else if (space) head[hl++] = ' ';
            if (alt && (k == 'x' || k == 'X' || k == 'o')) head[hl++] = '0', head[hl++] = k == 'o' ? 'o' : k;
            const size_t dl = strlen(digits), zeros_prec = prec > (int64_t)dl ? (size_t)prec - dl : 0;
            size_t body = hl + zeros_prec + dl;
            const size_t zeros_width = zero && !minus && width > (int64_t)body ? (size_t)width - body : 0;
            jbuf num_s = {0};
            put(c, &num_s, head, hl);
            for (size_t z = 0; z < zeros_prec + zeros_width; z++) put(c, &num_s, "0", 1);
            put(c, &num_s, digits, dl);
            put_padded(c, &o, num_s.data, num_s.len, num_s.len, width, minus);
        } else if (strchr("eEfFgG", k)) {
            if (!is_num(a)) fail_at(c, at->pos, HC_ERR_FORMAT, "%%%c format: a real number is required, not %s", k, type_name(a));
            char spec[16], *q = spec;
            *q++ = '%';
            if (minus) *q++ = '-';
            if (plus) *q++ = '+';
            if (space) *q++ = ' ';
            if (zero) *q++ = '0';
            if (alt) *q++ = '#';
            memcpy(q, "*.*", 4);
            q += 3;
            *q++ = k;
            *q = 0;
            const double x = num(a);
            const int w = (int)width, pr = prec < 0 ? 6 : (int)prec;
            const int len = snprintf(NULL, 0, spec, w, pr, x);
            if (len < 0 || (size_t)len > MAX_STR_BYTES) FAIL(c, "a string longer than %zu MiB", MAX_STR_BYTES >> 20);
            char *text = alloc(c, (size_t)len + 1);
            snprintf(text, (size_t)len + 1, spec, w, pr, x);
            put(c, &o, text, (size_t)len);
        } else if (k == 'c') {
            char enc[8];
            size_t el;
            if (a->t == V_STR && utf8_count(a->u.s) == 1) {
                el = a->u.s->len;
                memcpy(enc, a->u.s->s, el);
            } else if (a->t == V_INT) {
                if (a->u.i < 0 || a->u.i > 0x10FFFF) fail_at(c, at->pos, HC_ERR_FORMAT, "%%c arg not in range(0x110000)");
                el = (size_t)utf8proc_encode_char((utf8proc_int32_t)a->u.i, (utf8proc_uint8_t *)enc);
            } else {
                fail_at(c, at->pos, HC_ERR_FORMAT, "%%c requires an int or a unicode character, not %s", type_name(a));
            }
            put_padded(c, &o, enc, el, 1, width, minus);
        } else if (k == 's' || k == 'r') {
            jbuf t = {0};
            if (k == 'r') repr(c, &t, a);
            else to_str(c, &t, a);
            size_t len = t.len;
            if (prec >= 0) { /* at most prec code points */
                size_t chars = 0, b = 0;
                while (b < t.len && chars < (size_t)prec) {
                    b++;
                    while (b < t.len && ((unsigned char)t.data[b] & 0xC0) == 0x80) b++;
                    chars++;
                }
                len = b;
            }
            size_t chars = 0;
            for (size_t b = 0; b < len; b++) chars += ((unsigned char)t.data[b] & 0xC0) != 0x80;
            put_padded(c, &o, t.data ? t.data : "", len, chars, width, minus);
        } else {
            fail_at(c, at->pos, HC_ERR_FORMAT, "unsupported format character '%c' (0x%x)", k, (unsigned char)k);
        }
    }
#undef NEXT_ARG
    if (tuple ? ai < args->u.l->n : (ai == 0 && args->t != V_DICT))
        fail_at(c, at->pos, HC_ERR_FORMAT, "not all arguments converted during string formatting");
    jv r = v_str(c, o.data ? o.data : "", o.len);
    return r;
}

static jv binary(jctx *c, node *n, jv a, jv b) {
    const char *op = n->name;
    if (!strcmp(op, "~")) {
        jbuf o = {0};
        to_str(c, &o, &a);
        to_str(c, &o, &b);
        jv r = v_str(c, o.data ? o.data : "", o.len);
        return r;
    }
    if (a.t == V_UNDEF) undefined_error(c, n, &a);
    if (b.t == V_UNDEF) undefined_error(c, n, &b);
    if (!strcmp(op, "+")) {
        if (a.t == V_STR && b.t == V_STR) {
            jstr *s = alloc(c, sizeof(jstr) + a.u.s->len + b.u.s->len + 1);
            s->len = a.u.s->len + b.u.s->len;
            memcpy(s->s, a.u.s->s, a.u.s->len);
            memcpy(s->s + a.u.s->len, b.u.s->s, b.u.s->len);
            s->s[s->len] = 0;
            jv r = {.t = V_STR};
            r.u.s = s;
            return r;
        }
        if (a.t == V_LIST && b.t == V_LIST) {
            jv r = v_list(c, a.u.l->n + b.u.l->n);
            for (size_t i = 0; i < a.u.l->n; i++) list_push(c, r.u.l, a.u.l->v[i]);
            for (size_t i = 0; i < b.u.l->n; i++) list_push(c, r.u.l, b.u.l->v[i]);
            return r;
        }
    }
    if (!strcmp(op, "%") && a.t == V_STR) return percent_format(c, n, &a, &b);
    if (!strcmp(op, "*") && ((a.t == V_STR && b.t == V_INT) || (a.t == V_INT && b.t == V_STR))) {
        const jv *s = a.t == V_STR ? &a : &b;
        int64_t k = a.t == V_INT ? a.u.i : b.u.i;
        if (s->u.s->len == 0) k = 0; /* "" * k is "" for any k, without k steps */
        jbuf o = {0};
        for (int64_t i = 0; i < k; i++) put(c, &o, s->u.s->s, s->u.s->len);
        jv r = v_str(c, o.data ? o.data : "", o.len);
        return r;
    }
    if (!is_num(&a) || !is_num(&b)) {
        if (!strcmp(op, "+") && a.t == V_STR)
            fail_at(c, n->pos, HC_ERR_FORMAT, "can only concatenate str (not \"%s\") to str", type_name(&b));
        fail_at(c, n->pos, HC_ERR_FORMAT, "unsupported operand type(s) for %s: '%s' and '%s'", op, type_name(&a),
                type_name(&b));
    }
    const bool ints = a.t != V_FLOAT && b.t != V_FLOAT;
    const int64_t x = a.t == V_INT ? a.u.i : a.t == V_BOOL ? a.u.b : 0;
    const int64_t y = b.t == V_INT ? b.u.i : b.t == V_BOOL ? b.u.b : 0;
    const double fx = num(&a), fy = num(&b);
    int64_t r = 0;
    bool over = false;
    if (!strcmp(op, "+")) {
        if (ints) over = __builtin_add_overflow(x, y, &r);
        return ints ? v_int(int_checked(c, n->pos, over, r)) : v_float(fx + fy);
    }
    if (!strcmp(op, "-")) {
        if (ints) over = __builtin_sub_overflow(x, y, &r);
        return ints ? v_int(int_checked(c, n->pos, over, r)) : v_float(fx - fy);
    }
    if (!strcmp(op, "*")) {
        if (ints) over = __builtin_mul_overflow(x, y, &r);
        return ints ? v_int(int_checked(c, n->pos, over, r)) : v_float(fx * fy);
    }
    if (!strcmp(op, "/")) {
        if (fy == 0) fail_at(c, n->pos, HC_ERR_FORMAT, "division by zero");
        return v_float(fx / fy);
    }
    if (!strcmp(op, "//")) {
        if (fy == 0) fail_at(c, n->pos, HC_ERR_FORMAT, "integer division or modulo by zero");
        if (ints) {
            int_checked(c, n->pos, x == INT64_MIN && y == -1, 0);
            int64_t q = x / y;
            if ((x % y != 0) && ((x < 0) != (y < 0))) q--;
            return v_int(q);
        }
        return v_float(floor(fx / fy));
    }
    if (!strcmp(op, "%")) {
        if (fy == 0) fail_at(c, n->pos, HC_ERR_FORMAT, "integer division or modulo by zero");
        if (ints) {
            if (y == -1) return v_int(0); /* and INT64_MIN % -1 would trap */
            r = x % y;
            if (r != 0 && ((r < 0) != (y < 0))) r += y;
            return v_int(r);
        }
        double fr = fmod(fx, fy);
        if (fr != 0 && ((fr < 0) != (fy < 0))) fr += fy;
        return v_float(fr);
    }
    if (!strcmp(op, "**")) {
        if (ints && y >= 0) { /* by squaring: y may be 2**62 (and 1 ** y, 0 ** y, (-1) ** y are fine) */
            int64_t base = x;
            r = 1;
            for (int64_t e = y; e; e >>= 1) {
                if (e & 1) int_checked(c, n->pos, __builtin_mul_overflow(r, base, &r), 0);
                if (e > 1) int_checked(c, n->pos, __builtin_mul_overflow(base, base, &base), 0);
            }
            return v_int(r);
        }
        return v_float(pow(fx, fy));
    }
    fail_at(c, n->pos, HC_ERR_FORMAT, "unknown operator %s", op);
}

/* ---- calls: arguments by position or keyword ---------------------------------------------- */

typedef struct {
    jv *pos;
    size_t n_pos;
    const char **kw;
    jv *kwv;
    size_t n_kw;
} argv_t;

static argv_t eval_args(jctx *c, scope *sc, node *n) {
    argv_t a = {0};
    a.pos = alloc(c, sizeof(jv) * (n->n + 1));
    a.kw = alloc(c, sizeof(char *) * (n->n + 1));
    a.kwv = alloc(c, sizeof(jv) * (n->n + 1));
    for (size_t i = 0; i < n->n; i++) {
        jv v = eval(c, sc, n->args[i]);
        if (n->kw && n->kw[i]) {
            a.kw[a.n_kw] = n->kw[i];
            a.kwv[a.n_kw++] = v;
        } else {
            a.pos[a.n_pos++] = v;
        }
    }
    return a;
}

/* The i-th positional argument, or the keyword `name`, or NULL. */
static const jv *arg(const argv_t *a, size_t i, const char *name) {
    if (i < a->n_pos) return &a->pos[i];
    for (size_t k = 0; name && k < a->n_kw; k++)
        if (!strcmp(a->kw[k], name)) return &a->kwv[k];
    return NULL;
}

static jv call_macro(jctx *c, node *at, jmacro *m, const argv_t *a) {
    node *def = m->def;
    scope *sc = new_scope(c, m->closure);
    for (size_t i = 0; i < def->n_targets; i++) {
        const jv *v = arg(a, i, def->targets[i]);
        if (v) assign(c, sc, def->targets[i], *v);
        else if (def->vals && def->vals[i]) assign(c, sc, def->targets[i], eval(c, m->closure, def->vals[i]));
        else assign(c, sc, def->targets[i], v_undef(c, def->targets[i]));
    }
    /* extra positional arguments are varargs, unknown keywords kwargs */
    jv varargs = v_list(c, 0);
    varargs.is_tuple = true;
    for (size_t i = def->n_targets; i < a->n_pos; i++) list_push(c, varargs.u.l, a->pos[i]);
    assign(c, sc, "varargs", varargs);
    jv kwargs = v_dict(c, V_DICT);
    for (size_t k = 0; k < a->n_kw; k++) {
        bool known = false;
        for (size_t i = 0; i < def->n_targets; i++) known |= !strcmp(a->kw[k], def->targets[i]);
        if (!known) dict_set(c, kwargs.u.d, v_cstr(c, a->kw[k]), a->kwv[k]);
    }
    assign(c, sc, "kwargs", kwargs);
    if (m->caller_body) {
        jv cv = {.t = V_MACRO};
        cv.u.m = alloc(c, sizeof(jmacro));
        *cv.u.m = (jmacro){.def = NULL, .closure = m->caller_scope, .caller_body = m->caller_body};
        assign(c, sc, "caller", cv);
    }
    if (++c->depth > 200) fail_at(c, at->pos, HC_ERR_FORMAT, "macro recursion too deep");
    jbuf out = {0};
    exec_body(c, sc, def->body, &out);
    c->depth--;
    jv r = v_str(c, out.data ? out.data : "", out.len);
    return r;
}

static const char *split_ws_next(const char *p, const char *end, const char **word_end) {
    while (p < end && is_ws(*p)) p++;
    if (p >= end) return NULL;
    const char *q = p;
    while (q < end && !is_ws(*q)) q++;
    *word_end = q;
    return p;
}

static jv str_strip(jctx *c, const jv *s, const jv *chars, bool left, bool right) {
    const char *p = s->u.s->s, *e = p + s->u.s->len;
    const char *set = chars && chars->t == V_STR ? chars->u.s->s : NULL;
    size_t setlen = set ? chars->u.s->len : 0;
    if (left)
        while (p < e && (set ? memchr(set, *p, setlen) != NULL : is_ws(*p))) p++;
    if (right)
        while (e > p && (set ? memchr(set, e[-1], setlen) != NULL : is_ws(e[-1]))) e--;
    return v_str(c, p, (size_t)(e - p));
}

static bool starts_or_ends(const jv *s, const jv *what, bool end) {
    if (what->t == V_LIST) {
        for (size_t i = 0; i < what->u.l->n; i++)
            if (starts_or_ends(s, &what->u.l->v[i], end)) return true;
        return false;
    }
    if (what->t != V_STR || what->u.s->len > s->u.s->len) return false;
    const char *at = end ? s->u.s->s + s->u.s->len - what->u.s->len : s->u.s->s;
    return !memcmp(at, what->u.s->s, what->u.s->len);
}

static jv str_replace(jctx *c, const jv *s, const jv *old, const jv *new_, int64_t count) {
    jbuf o = {0};
    const jstr *src = s->u.s, *ol = old->u.s, *nw = new_->u.s;
    size_t i = 0;
    int64_t done = 0;
    if (ol->len == 0) {
        jv r = *s;
        return r;
    }
    while (i < src->len) {
        if ((count < 0 || done < count) && i + ol->len <= src->len && !memcmp(src->s + i, ol->s, ol->len)) {
            put(c, &o, nw->s, nw->len);
            i += ol->len;
            done++;
        } else {
            put(c, &o, src->s + i, 1);
            i++;
        }
    }
    jv r = v_str(c, o.data ? o.data : "", o.len);
    return r;
}

static jv case_map(jctx *c, const jv *s, int mode) { /* 0 upper, 1 lower, 2 title, 3 capitalize */
    jbuf o = {0};
    bool word_start = true;
    size_t i = 0, k = 0;
    while (i < s->u.s->len) {
        int32_t cp;
        utf8proc_ssize_t l = utf8proc_iterate((const utf8proc_uint8_t *)s->u.s->s + i, (utf8proc_ssize_t)(s->u.s->len - i), &cp);
        if (l <= 0) {
            put(c, &o, s->u.s->s + i, 1);
            i++;
            continue;
        }
        int32_t m = cp;
        if (mode == 0) m = utf8proc_toupper(cp);
        else if (mode == 1) m = utf8proc_tolower(cp);
        else if (mode == 2) m = word_start ? utf8proc_totitle(cp) : utf8proc_tolower(cp);
        else m = k == 0 ? utf8proc_toupper(cp) : utf8proc_tolower(cp);
        utf8proc_category_t cat = utf8proc_category(cp);
        word_start = !(cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO);
        utf8proc_uint8_t enc[4];
        utf8proc_ssize_t el = utf8proc_encode_char(m, enc);
        put(c, &o, (const char *)enc, (size_t)el);
        i += (size_t)l;
        k++;
    }
    jv r = v_str(c, o.data ? o.data : "", o.len);
    return r;
}

static jv str_split(jctx *c, const jv *s, const jv *sep, int64_t maxsplit, bool from_right) {
    jv out = v_list(c, 0);
    const char *p = s->u.s->s, *e = p + s->u.s->len;
    if (!sep || sep->t == V_NONE || sep->t == V_UNDEF) {
        const char *we;
        int64_t done = 0;
        while ((p = split_ws_next(p, e, &we))) {
            if (maxsplit >= 0 && done == maxsplit) {
                const char *te = e;
                while (te > p && is_ws(te[-1])) te--;
                list_push(c, out.u.l, v_str(c, p, (size_t)(te - p)));
                break;
            }
            list_push(c, out.u.l, v_str(c, p, (size_t)(we - p)));
            p = we;
            done++;
        }
        return out;
    }
    if (sep->t != V_STR || !sep->u.s->len) FAIL(c, "empty separator");
    const size_t sl = sep->u.s->len;
    if (!from_right) {
        int64_t done = 0;
        for (;;) {
            const char *hit = NULL;
            if (maxsplit < 0 || done < maxsplit)
                for (const char *q = p; q + sl <= e; q++)
                    if (!memcmp(q, sep->u.s->s, sl)) {
                        hit = q;
                        break;
                    }
            if (!hit) {
                list_push(c, out.u.l, v_str(c, p, (size_t)(e - p)));
                return out;
            }
            list_push(c, out.u.l, v_str(c, p, (size_t)(hit - p)));
            p = hit + sl;
            done++;
        }
    }
    /* rsplit: collect from the right, then reverse */
    jv rev = v_list(c, 0);
    int64_t done = 0;
    const char *end = e;
    for (;;) {
        const char *hit = NULL;
        if (maxsplit < 0 || done < maxsplit)
            for (const char *q = end - sl; q >= p; q--)
                if (!memcmp(q, sep->u.s->s, sl)) {
                    hit = q;
                    break;
                }
        if (!hit) {
            list_push(c, rev.u.l, v_str(c, p, (size_t)(end - p)));
            break;
        }
        list_push(c, rev.u.l, v_str(c, hit + sl, (size_t)(end - hit - sl)));
        end = hit;
        done++;
    }
    for (size_t i = rev.u.l->n; i-- > 0;) list_push(c, out.u.l, rev.u.l->v[i]);
    return out;
}

/* str.format with {} / {0} / {name} fields */
static jv str_format(jctx *c, node *at, const jv *fmt, const argv_t *a) {
    jbuf o = {0};
    const jstr *f = fmt->u.s;
    size_t auto_i = 0;
    for (size_t i = 0; i < f->len; i++) {
        char ch = f->s[i];
        if (ch == '{' && i + 1 < f->len && f->s[i + 1] == '{') {
            put(c, &o, "{", 1);
            i++;
            continue;
        }
        if (ch == '}' && i + 1 < f->len && f->s[i + 1] == '}') {
            put(c, &o, "}", 1);
            i++;
            continue;
        }
        if (ch != '{') {
            put(c, &o, &ch, 1);
            continue;
        }
        size_t j = i + 1;
        while (j < f->len && f->s[j] != '}' && f->s[j] != ':') j++;
        size_t name_end = j;
        while (j < f->len && f->s[j] != '}') j++;
        const jv *v = NULL;
        if (name_end == i + 1) v = arg(a, auto_i++, NULL);
        else if (f->s[i + 1] >= '0' && f->s[i + 1] <= '9') v = arg(a, (size_t)atoi(f->s + i + 1), NULL);
        else {
            char key[64];
            snprintf(key, sizeof key, "%.*s", (int)(name_end - i - 1), f->s + i + 1);
            for (size_t k = 0; k < a->n_kw; k++)
                if (!strcmp(a->kw[k], key)) v = &a->kwv[k];
        }
        if (!v) {
            fail_at(c, at->pos, HC_ERR_FORMAT, "format: missing argument");
        }
        to_str(c, &o, v);
        i = j;
    }
    jv r = v_str(c, o.data ? o.data : "", o.len);
    return r;
}

static jv call_value(jctx *c, scope *sc, node *at, jv f, const argv_t *a);

static jv call_builtin(jctx *c, scope *sc, node *at, jv f, const argv_t *a) {
    const jv *self = f.u.fn.self;
    switch (f.u.fn.id) {
    case F_RAISE: {
        const jv *m = arg(a, 0, NULL);
        jv s = m ? stringify(c, m) : v_cstr(c, "");
        c->status = hc_fail(HC_ERR_FORMAT, "%s", s.u.s->s);
        longjmp(c->fail, 1);
    }
    case F_STRFTIME: {
        const jv *fmt = arg(a, 0, "format");
        if (!fmt || fmt->t != V_STR) fail_at(c, at->pos, HC_ERR_FORMAT, "strftime_now needs a format string");
        const char *sde = getenv("SOURCE_DATE_EPOCH");
        time_t t = sde && *sde ? (time_t)strtoll(sde, NULL, 10) : time(NULL);
        struct tm tm;
        if (sde && *sde) gmtime_r(&t, &tm);
        else localtime_r(&t, &tm);
        char buf[256];
        size_t n = strftime(buf, sizeof buf, fmt->u.s->s, &tm);
        return v_str(c, buf, n);
    }
    case F_NAMESPACE: {
        jv ns = v_dict(c, V_NS);
        if (a->n_pos && a->pos[0].t == V_DICT)
            for (size_t i = 0; i < a->pos[0].u.d->n; i++) dict_set(c, ns.u.d, a->pos[0].u.d->k[i], a->pos[0].u.d->v[i]);
        for (size_t k = 0; k < a->n_kw; k++) dict_set(c, ns.u.d, v_cstr(c, a->kw[k]), a->kwv[k]);
        return ns;
    }
    case F_DICT: {
        jv d = v_dict(c, V_DICT);
        if (a->n_pos && a->pos[0].t == V_DICT)
            for (size_t i = 0; i < a->pos[0].u.d->n; i++) dict_set(c, d.u.d, a->pos[0].u.d->k[i], a->pos[0].u.d->v[i]);
        for (size_t k = 0; k < a->n_kw; k++) dict_set(c, d.u.d, v_cstr(c, a->kw[k]), a->kwv[k]);
        return d;
    }
    case F_RANGE: {
        int64_t start = 0, stop, step = 1;
        if (a->n_pos == 1) stop = int_arg(c, at->pos, &a->pos[0]);
        else if (a->n_pos >= 2) {
            start = int_arg(c, at->pos, &a->pos[0]);
            stop = int_arg(c, at->pos, &a->pos[1]);
            if (a->n_pos > 2) step = int_arg(c, at->pos, &a->pos[2]);
        } else fail_at(c, at->pos, HC_ERR_FORMAT, "range expected at least 1 argument");
        if (step == 0) fail_at(c, at->pos, HC_ERR_FORMAT, "range() arg 3 must not be zero");
        jv l = v_list(c, 0);
        for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
            list_push(c, l.u.l, v_int(i));
            if (l.u.l->n > 1000000) fail_at(c, at->pos, HC_ERR_FORMAT, "range too large");
            if (__builtin_add_overflow(i, step, &i)) break; /* past INT64_MAX: past stop too */
        }
        return l;
    }
    case M_STRIP: return str_strip(c, self, arg(a, 0, "chars"), true, true);
    case M_LSTRIP: return str_strip(c, self, arg(a, 0, "chars"), true, false);
    case M_RSTRIP: return str_strip(c, self, arg(a, 0, "chars"), false, true);
    case M_SPLIT:
    case M_RSPLIT: {
        const jv *ms = arg(a, 1, "maxsplit");
        return str_split(c, self, arg(a, 0, "sep"), ms && ms->t == V_INT ? ms->u.i : -1, f.u.fn.id == M_RSPLIT);
    }
    case M_STARTSWITH:
    case M_ENDSWITH: {
        const jv *w = arg(a, 0, NULL);
        if (!w) fail_at(c, at->pos, HC_ERR_FORMAT, "startswith/endswith need an argument");
        return v_bool(starts_or_ends(self, w, f.u.fn.id == M_ENDSWITH));
    }
    case M_REPLACE: {
        const jv *o = arg(a, 0, NULL), *n = arg(a, 1, NULL), *k = arg(a, 2, "count");
        if (!o || !n || o->t != V_STR || n->t != V_STR) fail_at(c, at->pos, HC_ERR_FORMAT, "replace needs two strings");
        return str_replace(c, self, o, n, k && k->t == V_INT ? k->u.i : -1);
    }
    case M_UPPER: return case_map(c, self, 0);
    case M_LOWER: return case_map(c, self, 1);
    case M_TITLE: return case_map(c, self, 2);
    case M_CAPITALIZE: return case_map(c, self, 3);
    case M_FORMAT: return str_format(c, at, self, a);
    case M_FIND: {
        const jv *w = arg(a, 0, NULL);
        if (!w || w->t != V_STR) fail_at(c, at->pos, HC_ERR_FORMAT, "find needs a string");
        for (size_t i = 0; i + w->u.s->len <= self->u.s->len; i++)
            if (!memcmp(self->u.s->s + i, w->u.s->s, w->u.s->len)) {
                jv tmp = v_str(c, self->u.s->s, i);
                return v_int((int64_t)utf8_count(tmp.u.s));
            }
        return v_int(-1);
    }
    case M_COUNT: {
        const jv *w = arg(a, 0, NULL);
        if (!w) fail_at(c, at->pos, HC_ERR_FORMAT, "count needs an argument");
        int64_t k = 0;
        if (self->t == V_LIST) {
            for (size_t i = 0; i < self->u.l->n; i++) k += value_eq(c, &self->u.l->v[i], w);
            return v_int(k);
        }
        if (w->t != V_STR || !w->u.s->len) return v_int((int64_t)utf8_count(self->u.s) + 1);
        for (size_t i = 0; i + w->u.s->len <= self->u.s->len;) {
            if (!memcmp(self->u.s->s + i, w->u.s->s, w->u.s->len)) k++, i += w->u.s->len;
            else i++;
        }
        return v_int(k);
    }
    case M_JOIN: {
        const jv *items = arg(a, 0, NULL);
        if (!items) fail_at(c, at->pos, HC_ERR_FORMAT, "join needs an iterable");
        jv l = iterate(c, at, items);
        jbuf o = {0};
        for (size_t i = 0; i < l.u.l->n; i++) {
            if (i) put(c, &o, self->u.s->s, self->u.s->len);
            if (l.u.l->v[i].t != V_STR) {
                fail_at(c, at->pos, HC_ERR_FORMAT, "sequence item %zu: expected str instance, %s found", i,
                        type_name(&l.u.l->v[i]));
            }
            put(c, &o, l.u.l->v[i].u.s->s, l.u.l->v[i].u.s->len);
        }
        jv r = v_str(c, o.data ? o.data : "", o.len);
        return r;
    }
    case M_SPLITLINES: {
        jv out = v_list(c, 0);
        const char *p = self->u.s->s, *e = p + self->u.s->len;
        while (p < e) {
            const char *q = p;
            while (q < e && *q != '\n' && *q != '\r') q++;
            list_push(c, out.u.l, v_str(c, p, (size_t)(q - p)));
            if (q < e && *q == '\r' && q + 1 < e && q[1] == '\n') q++;
            p = q + 1;
        }
        return out;
    }
    case M_ISDIGIT:
    case M_ISALPHA:
    case M_ISSPACE: {
        if (!self->u.s->len) return v_bool(false);
        for (size_t i = 0; i < self->u.s->len; i++) {
            char ch = self->u.s->s[i];
            bool ok = f.u.fn.id == M_ISDIGIT ? (ch >= '0' && ch <= '9')
                      : f.u.fn.id == M_ISSPACE ? is_ws(ch)
                                                : ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (unsigned char)ch >= 0x80);
            if (!ok) return v_bool(false);
        }
        return v_bool(true);
    }
    case M_GET: {
        const jv *k = arg(a, 0, NULL), *d = arg(a, 1, "default");
        if (!k) fail_at(c, at->pos, HC_ERR_FORMAT, "get needs a key");
        jv *v = dict_find(c, self->u.d, k);
        return v ? *v : d ? *d : v_none();
    }
    case M_ITEMS: {
        jv l = v_list(c, self->u.d->n);
        for (size_t i = 0; i < self->u.d->n; i++) {
            jv pair = v_list(c, 2);
            pair.is_tuple = true;
            list_push(c, pair.u.l, self->u.d->k[i]);
            list_push(c, pair.u.l, self->u.d->v[i]);
            list_push(c, l.u.l, pair);
        }
        return l;
    }
    case M_KEYS:
    case M_VALUES: {
        jv l = v_list(c, self->u.d->n);
        for (size_t i = 0; i < self->u.d->n; i++)
            list_push(c, l.u.l, f.u.fn.id == M_KEYS ? self->u.d->k[i] : self->u.d->v[i]);
        return l;
    }
    case M_CYCLE: {
        if (!a->n_pos) fail_at(c, at->pos, HC_ERR_FORMAT, "no items for cycling given");
        return a->pos[self->u.loop->index0 % (int64_t)a->n_pos];
    }
    case M_UNSAFE:
        fail_at(c, at->pos, HC_ERR_FORMAT, "access to attribute '%s' of '%s' object is unsafe.",
                f.is_tuple ? (const char *)self : "method", f.is_tuple ? "list" : "dict");
    }
    (void)sc;
    fail_at(c, at->pos, HC_ERR_FORMAT, "not callable");
}

static jv call_value(jctx *c, scope *sc, node *at, jv f, const argv_t *a) {
    if (f.t == V_MACRO) {
        if (!f.u.m->def) { /* caller() of a call block */
            scope *s2 = new_scope(c, f.u.m->closure);
            node *cb = f.u.m->caller_body;
            for (size_t i = 0; cb && i < a->n_pos && i < cb->n_targets; i++) assign(c, s2, cb->targets[i], a->pos[i]);
            jbuf out = {0};
            exec_body(c, s2, cb->body, &out);
            jv r = v_str(c, out.data ? out.data : "", out.len);
            return r;
        }
        return call_macro(c, at, f.u.m, a);
    }
    if (f.t == V_FUNC) return call_builtin(c, sc, at, f, a);
    if (f.t == V_UNDEF) undefined_error(c, at, &f);
    fail_at(c, at->pos, HC_ERR_FORMAT, "'%s' object is not callable", type_name(&f));
}

/* ---- tests and filters --------------------------------------------------------------------- */

static bool run_test(jctx *c, node *at, const char *name, const jv *v, const argv_t *a) {
    if (!strcmp(name, "defined")) return v->t != V_UNDEF;
    if (!strcmp(name, "undefined")) return v->t == V_UNDEF;
    if (!strcmp(name, "none")) return v->t == V_NONE;
    if (!strcmp(name, "string")) return v->t == V_STR;
    if (!strcmp(name, "mapping")) return v->t == V_DICT || v->t == V_NS;
    if (!strcmp(name, "sequence")) return v->t == V_LIST || v->t == V_STR || v->t == V_DICT;
    if (!strcmp(name, "iterable")) return v->t == V_LIST || v->t == V_STR || v->t == V_DICT || v->t == V_UNDEF;
    if (!strcmp(name, "boolean")) return v->t == V_BOOL;
    if (!strcmp(name, "true")) return v->t == V_BOOL && v->u.b;
    if (!strcmp(name, "false")) return v->t == V_BOOL && !v->u.b;
    if (!strcmp(name, "number")) return v->t == V_INT || v->t == V_FLOAT;
    if (!strcmp(name, "integer")) return v->t == V_INT;
    if (!strcmp(name, "float")) return v->t == V_FLOAT;
    if (!strcmp(name, "callable")) return v->t == V_MACRO || v->t == V_FUNC;
    if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        if (v->t != V_STR) return false;
        jv m = case_map(c, v, !strcmp(name, "lower") ? 1 : 0);
        return value_eq(c, &m, v);
    }
    if (!strcmp(name, "odd") || !strcmp(name, "even")) {
        if (v->t != V_INT) return false;
        return (v->u.i % 2 != 0) == !strcmp(name, "odd");
    }
    const jv *x = arg(a, 0, NULL);
    if (!strcmp(name, "divisibleby")) return x && v->t == V_INT && x->t == V_INT && x->u.i && v->u.i % x->u.i == 0;
    if (!x) fail_at(c, at->pos, HC_ERR_FORMAT, "test '%s' needs an argument, or no test named '%s'", name, name);
    if (!strcmp(name, "eq") || !strcmp(name, "equalto") || !strcmp(name, "==") || !strcmp(name, "sameas"))
        return value_eq(c, v, x);
    if (!strcmp(name, "ne") || !strcmp(name, "!=")) return !value_eq(c, v, x);
    if (!strcmp(name, "lt") || !strcmp(name, "lessthan") || !strcmp(name, "<")) return compare(c, at, v, x) < 0;
    if (!strcmp(name, "le") || !strcmp(name, "<=")) return compare(c, at, v, x) <= 0;
    if (!strcmp(name, "gt") || !strcmp(name, "greaterthan") || !strcmp(name, ">")) return compare(c, at, v, x) > 0;
    if (!strcmp(name, "ge") || !strcmp(name, ">=")) return compare(c, at, v, x) >= 0;
    if (!strcmp(name, "in")) return contains(c, at, v, x);
    fail_at(c, at->pos, HC_ERR_FORMAT, "no test named '%s'", name);
}

static const char *const known_tests[] = {"defined", "undefined", "none", "string", "mapping", "sequence", "iterable",
                                          "boolean", "true", "false", "number", "integer", "float", "callable",
                                          "lower", "upper", "odd", "even", "divisibleby", "eq", "equalto", "==",
                                          "sameas", "ne", "!=", "lt", "lessthan", "<", "le", "<=", "gt",
                                          "greaterthan", ">", "ge", ">=", "in", NULL};

static jv attr_path(jctx *c, node *at, const jv *v, const jv *attr) {
    if (attr->t != V_STR) return get_item(c, at, v, attr);
    /* "a.b" looks up nested attributes, as jinja's attribute filters do */
    jv cur = *v;
    const char *p = attr->u.s->s;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        char key[128];
        snprintf(key, sizeof key, "%.*s", (int)n, p);
        jv k;
        bool digits = n > 0;
        for (size_t i = 0; i < n; i++) digits &= p[i] >= '0' && p[i] <= '9';
        if (digits) k = v_int(atoll(key));
        else k = v_cstr(c, key);
        if (cur.t == V_UNDEF) return cur;
        cur = get_item(c, at, &cur, &k);
        if (!dot) return cur;
        p = dot + 1;
    }
}

static jv apply_filter(jctx *c, scope *sc, node *at, const char *name, jv v, const argv_t *a);

static int cmp_for_sort(jctx *c, node *at, const jv *x, const jv *y, bool case_sensitive) {
    if (!case_sensitive && x->t == V_STR && y->t == V_STR) {
        jv lx = case_map(c, x, 1), ly = case_map(c, y, 1);
        return compare(c, at, &lx, &ly);
    }
    return compare(c, at, x, y);
}

static void sort_values(jctx *c, node *at, jv *items, const jv *keys, size_t n, bool reverse, bool case_sensitive) {
    /* insertion sort: stable, and lists in templates are short */
    size_t *idx = alloc(c, sizeof(size_t) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) idx[i] = i;
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0; j--) {
            int r = cmp_for_sort(c, at, &keys[idx[j - 1]], &keys[idx[j]], case_sensitive);
            if (reverse ? r < 0 : r > 0) {
                size_t t = idx[j];
                idx[j] = idx[j - 1];
                idx[j - 1] = t;
            } else break;
        }
    jv *copy = alloc(c, sizeof(jv) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) copy[i] = items[idx[i]];
    memcpy(items, copy, sizeof(jv) * n);
}

static jv apply_filter(jctx *c, scope *sc, node *at, const char *name, jv v, const argv_t *a) {
    const jv *a0 = arg(a, 0, NULL);
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        const jv *b = arg(a, 1, "boolean");
        bool use_default = v.t == V_UNDEF || (b && truthy(b) && !truthy(&v));
        if (use_default) return a0 ? *a0 : (arg(a, 0, "default_value") ? *arg(a, 0, "default_value") : v_cstr(c, ""));
        return v;
    }
    if (!strcmp(name, "tojson")) {
        const jv *ind = arg(a, 0, "indent"), *sk = arg(a, 99, "sort_keys");
        jbuf o = {0};
        to_json(c, &o, &v, ind && ind->t == V_INT ? (int)ind->u.i : -1, 0, sk && truthy(sk));
        jv r = v_str(c, o.data ? o.data : "", o.len);
        return r;
    }
    if (!strcmp(name, "from_json")) {
        if (v.t != V_STR) fail_at(c, at->pos, HC_ERR_FORMAT, "from_json needs a string");
        hc_json_doc d;
        if (hc_json_parse(&d, v.u.s->s, v.u.s->len, "from_json")) {
            char msg[256];
            snprintf(msg, sizeof msg, "%s", hc_last_error());
            fail_at(c, at->pos, HC_ERR_FORMAT, "%s", msg);
        }
        jv r = from_hc_json(c, d.root);
        hc_json_free(&d);
        return r;
    }
    if (v.t == V_UNDEF && strcmp(name, "string") && strcmp(name, "length") && strcmp(name, "count") &&
        strcmp(name, "list") && strcmp(name, "safe") && strcmp(name, "trim") && strcmp(name, "join") &&
        strcmp(name, "lower") && strcmp(name, "upper") && strcmp(name, "e") && strcmp(name, "escape") &&
        strcmp(name, "map") && strcmp(name, "select") && strcmp(name, "reject") && strcmp(name, "selectattr") &&
        strcmp(name, "rejectattr") && strcmp(name, "first") && strcmp(name, "last"))
        undefined_error(c, at, &v);
    if (!strcmp(name, "length") || !strcmp(name, "count")) {
        switch (v.t) {
        case V_STR: return v_int((int64_t)utf8_count(v.u.s));
        case V_LIST: return v_int((int64_t)v.u.l->n);
        case V_DICT:
        case V_NS: return v_int((int64_t)v.u.d->n);
        case V_UNDEF: return v_int(0);
        default: fail_at(c, at->pos, HC_ERR_FORMAT, "object of type '%s' has no len()", type_name(&v));
        }
    }
    if (!strcmp(name, "string")) return v.t == V_UNDEF ? v_cstr(c, "") : stringify(c, &v);
    if (!strcmp(name, "safe")) return v;
    if (!strcmp(name, "e") || !strcmp(name, "escape")) {
        jv s = stringify(c, &v);
        jbuf o = {0};
        for (size_t i = 0; i < s.u.s->len; i++) {
            char ch = s.u.s->s[i];
            const char *rep = ch == '&' ? "&amp;" : ch == '<' ? "&lt;" : ch == '>' ? "&gt;" : ch == '"' ? "&#34;" : ch == '\'' ? "&#39;" : NULL;
            if (rep) puts_(c, &o, rep);
            else put(c, &o, &ch, 1);
        }
        jv r = v_str(c, o.data ? o.data : "", o.len);
        return r;
    }
    if (!strcmp(name, "trim")) {
        if (v.t == V_UNDEF) return v_cstr(c, "");
        jv s = stringify(c, &v);
        return str_strip(c, &s, arg(a, 0, "chars"), true, true);
    }
    if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "title") || !strcmp(name, "capitalize")) {
        jv s = v.t == V_UNDEF ? v_cstr(c, "") : stringify(c, &v);
        return case_map(c, &s, !strcmp(name, "upper") ? 0 : !strcmp(name, "lower") ? 1 : !strcmp(name, "title") ? 2 : 3);
    }
    if (!strcmp(name, "replace")) {
        const jv *b = arg(a, 1, "new"), *k = arg(a, 2, "count");
        jv s = stringify(c, &v);
        if (!a0 || !b) fail_at(c, at->pos, HC_ERR_FORMAT, "replace needs two arguments");
        jv x = stringify(c, a0), y = stringify(c, b);
        return str_replace(c, &s, &x, &y, k && k->t == V_INT ? k->u.i : -1);
    }
    if (!strcmp(name, "join")) {
        if (v.t == V_UNDEF) return v_cstr(c, "");
        const jv *attr = arg(a, 1, "attribute");
        const jv *sep = a0 ? a0 : arg(a, 0, "d");
        jv l = iterate(c, at, &v);
        jbuf o = {0};
        for (size_t i = 0; i < l.u.l->n; i++) {
            if (i && sep) to_str(c, &o, sep);
            jv item = attr ? attr_path(c, at, &l.u.l->v[i], attr) : l.u.l->v[i];
            to_str(c, &o, &item);
        }
        jv r = v_str(c, o.data ? o.data : "", o.len);
        return r;
    }
    if (!strcmp(name, "list")) {
        jv l = iterate(c, at, &v);
        jv r = v_list(c, l.u.l->n);
        for (size_t i = 0; i < l.u.l->n; i++) list_push(c, r.u.l, l.u.l->v[i]);
        return r;
    }
    if (!strcmp(name, "items")) {
        if (v.t != V_DICT && v.t != V_NS) fail_at(c, at->pos, HC_ERR_FORMAT, "items needs a mapping");
        jv f = bound(c, M_ITEMS, &v);
        argv_t none = {0};
        return call_builtin(c, sc, at, f, &none);
    }
    if (!strcmp(name, "dictsort")) {
        if (v.t != V_DICT) fail_at(c, at->pos, HC_ERR_FORMAT, "dictsort needs a mapping");
        const jv *cs = arg(a, 0, "case_sensitive"), *by = arg(a, 1, "by"), *rev = arg(a, 2, "reverse");
        bool by_value = by && by->t == V_STR && !strcmp(by->u.s->s, "value");
        jv f = bound(c, M_ITEMS, &v);
        argv_t none = {0};
        jv items = call_builtin(c, sc, at, f, &none);
        jv *keys = alloc(c, sizeof(jv) * (items.u.l->n + 1));
        for (size_t i = 0; i < items.u.l->n; i++) keys[i] = items.u.l->v[i].u.l->v[by_value ? 1 : 0];
        sort_values(c, at, items.u.l->v, keys, items.u.l->n, rev && truthy(rev), cs && truthy(cs));
        return items;
    }
    if (!strcmp(name, "sort")) {
        const jv *rev = arg(a, 0, "reverse"), *cs = arg(a, 1, "case_sensitive"), *attr = arg(a, 2, "attribute");
        jv l = iterate(c, at, &v);
        jv r = v_list(c, l.u.l->n);
        for (size_t i = 0; i < l.u.l->n; i++) list_push(c, r.u.l, l.u.l->v[i]);
        jv *keys = alloc(c, sizeof(jv) * (r.u.l->n + 1));
        for (size_t i = 0; i < r.u.l->n; i++) keys[i] = attr ? attr_path(c, at, &r.u.l->v[i], attr) : r.u.l->v[i];
        sort_values(c, at, r.u.l->v, keys, r.u.l->n, rev && truthy(rev), cs && truthy(cs));
        return r;
    }
    if (!strcmp(name, "reverse")) {
        if (v.t == V_STR) {
            jv none = v_none(), step = v_int(-1);
            return do_slice(c, at, &v, &none, &none, &step);
        }
        jv l = iterate(c, at, &v);
        jv r = v_list(c, l.u.l->n);
        for (size_t i = l.u.l->n; i-- > 0;) list_push(c, r.u.l, l.u.l->v[i]);
        return r;
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        jv l = iterate(c, at, &v);
        if (!l.u.l->n) return v_undef(c, NULL);
        return !strcmp(name, "first") ? l.u.l->v[0] : l.u.l->v[l.u.l->n - 1];
    }
    if (!strcmp(name, "unique")) {
        jv l = iterate(c, at, &v);
        jv r = v_list(c, l.u.l->n);
        for (size_t i = 0; i < l.u.l->n; i++) {
            bool seen = false;
            for (size_t k = 0; k < r.u.l->n && !seen; k++) seen = value_eq(c, &r.u.l->v[k], &l.u.l->v[i]);
            if (!seen) list_push(c, r.u.l, l.u.l->v[i]);
        }
        return r;
    }
    if (!strcmp(name, "min") || !strcmp(name, "max") || !strcmp(name, "sum")) {
        jv l = iterate(c, at, &v);
        const jv *attr = arg(a, 0, "attribute");
        if (!strcmp(name, "sum")) {
            jv acc = v_int(0);
            const jv *start = arg(a, 1, "start");
            if (start) acc = *start;
            for (size_t i = 0; i < l.u.l->n; i++) {
                jv item = attr && !start ? attr_path(c, at, &l.u.l->v[i], attr) : l.u.l->v[i];
                node op = {.t = N_BIN, .pos = at->pos, .name = "+"};
                acc = binary(c, &op, acc, item);
            }
            return acc;
        }
        if (!l.u.l->n) return v_undef(c, NULL);
        jv best = l.u.l->v[0];
        for (size_t i = 1; i < l.u.l->n; i++) {
            int r = compare(c, at, &l.u.l->v[i], &best);
            if (!strcmp(name, "min") ? r < 0 : r > 0) best = l.u.l->v[i];
        }
        return best;
    }
    if (!strcmp(name, "int")) {
        const jv *d = arg(a, 0, "default");
        if (v.t == V_INT) return v;
        if (v.t == V_BOOL) return v_int(v.u.b);
        /* jinja2's int: NaN gives the default (ValueError), an infinity fails (OverflowError) */
        if (v.t == V_FLOAT) return isnan(v.u.f) && d ? *d : isnan(v.u.f) ? v_int(0) : v_int(float_to_int(c, at->pos, v.u.f));
        if (v.t == V_STR) {
            char *end;
            errno = 0;
            long long x = strtoll(v.u.s->s, &end, 10);
            if (end != v.u.s->s && !*end) return v_int(int_checked(c, at->pos, errno == ERANGE, x));
            double f = strtod(v.u.s->s, &end);
            if (end != v.u.s->s && !*end) return isnan(f) ? (d ? *d : v_int(0)) : v_int(float_to_int(c, at->pos, f));
        }
        return d ? *d : v_int(0);
    }
    if (!strcmp(name, "float")) {
        const jv *d = arg(a, 0, "default");
        if (is_num(&v)) return v_float(num(&v));
        if (v.t == V_STR) {
            char *end;
            double f = strtod(v.u.s->s, &end);
            if (end != v.u.s->s && !*end) return v_float(f);
        }
        return d ? *d : v_float(0);
    }
    if (!strcmp(name, "abs")) {
        if (v.t == V_INT) {
            int_checked(c, at->pos, v.u.i == INT64_MIN, 0);
            return v_int(v.u.i < 0 ? -v.u.i : v.u.i);
        }
        if (v.t == V_FLOAT) return v_float(fabs(v.u.f));
        fail_at(c, at->pos, HC_ERR_FORMAT, "bad operand type for abs(): '%s'", type_name(&v));
    }
    if (!strcmp(name, "round")) {
        const jv *prec = arg(a, 0, "precision");
        double p = pow(10, prec && prec->t == V_INT ? (double)prec->u.i : 0);
        if (!is_num(&v)) fail_at(c, at->pos, HC_ERR_FORMAT, "round needs a number, not '%s'", type_name(&v));
        return v_float(round(num(&v) * p) / p);
    }
    if (!strcmp(name, "indent")) {
        const jv *width = arg(a, 0, "width"), *first = arg(a, 1, "first"), *blank = arg(a, 2, "blank");
        jbuf pad = {0};
        if (width && width->t == V_STR) put(c, &pad, width->u.s->s, width->u.s->len);
        else
            for (int64_t i = 0; i < (width && width->t == V_INT ? width->u.i : 4); i++) put(c, &pad, " ", 1);
        jv s = stringify(c, &v);
        jbuf o = {0};
        const char *p = s.u.s->s, *e = p + s.u.s->len;
        bool first_line = true;
        while (p <= e) {
            const char *nl = memchr(p, '\n', (size_t)(e - p));
            const char *le = nl ? nl : e;
            bool empty = le == p;
            if ((!first_line || (first && truthy(first))) && (!empty || (blank && truthy(blank))))
                put(c, &o, pad.data ? pad.data : "", pad.len);
            put(c, &o, p, (size_t)(le - p));
            if (!nl) break;
            put(c, &o, "\n", 1);
            p = nl + 1;
            first_line = false;
        }
        jv r = v_str(c, o.data ? o.data : "", o.len);
        return r;
    }
    if (!strcmp(name, "wordcount")) {
        jv s = stringify(c, &v);
        int64_t k = 0;
        const char *p = s.u.s->s, *e = p + s.u.s->len, *we;
        while ((p = split_ws_next(p, e, &we))) k++, p = we;
        return v_int(k);
    }
    if (!strcmp(name, "attr")) {
        if (!a0 || a0->t != V_STR) fail_at(c, at->pos, HC_ERR_FORMAT, "attr needs a name");
        return get_attr(c, at, &v, a0->u.s->s);
    }
    if (!strcmp(name, "map")) {
        jv l = truthy(&v) ? iterate(c, at, &v) : v_list(c, 0); /* jinja maps nothing over a falsy value */
        jv r = v_list(c, l.u.l->n);
        const jv *attr = arg(a, 99, "attribute");
        const jv *dflt = arg(a, 99, "default");
        for (size_t i = 0; i < l.u.l->n; i++) {
            if (attr) {
                jv x = attr_path(c, at, &l.u.l->v[i], attr);
                if (x.t == V_UNDEF && dflt) x = *dflt;
                list_push(c, r.u.l, x);
            } else {
                if (!a0 || a0->t != V_STR) fail_at(c, at->pos, HC_ERR_FORMAT, "map needs a filter name or attribute=");
                argv_t rest = *a;
                rest.pos++;
                rest.n_pos--;
                list_push(c, r.u.l, apply_filter(c, sc, at, a0->u.s->s, l.u.l->v[i], &rest));
            }
        }
        return r;
    }
    if (!strcmp(name, "select") || !strcmp(name, "reject") || !strcmp(name, "selectattr") || !strcmp(name, "rejectattr")) {
        const bool by_attr = !strcmp(name, "selectattr") || !strcmp(name, "rejectattr");
        const bool keep_if = !strcmp(name, "select") || !strcmp(name, "selectattr");
        jv l = truthy(&v) ? iterate(c, at, &v) : v_list(c, 0); /* jinja selects nothing from a falsy value */
        jv r = v_list(c, l.u.l->n);
        size_t ti = by_attr ? 1 : 0;
        const jv *test = arg(a, ti, NULL);
        argv_t targs = *a;
        targs.pos += ti + 1;
        targs.n_pos = a->n_pos > ti + 1 ? a->n_pos - ti - 1 : 0;
        for (size_t i = 0; i < l.u.l->n; i++) {
            jv x = l.u.l->v[i];
            if (by_attr) {
                if (!a0) fail_at(c, at->pos, HC_ERR_FORMAT, "%s needs an attribute", name);
                x = attr_path(c, at, &x, a0);
            }
            bool ok = test ? run_test(c, at, test->u.s->s, &x, &targs) : truthy(&x);
            if (ok == keep_if) list_push(c, r.u.l, l.u.l->v[i]);
        }
        return r;
    }
    if (!strcmp(name, "batch")) {
        int64_t k = a0 && a0->t == V_INT && a0->u.i > 0 ? a0->u.i : 1;
        jv l = iterate(c, at, &v);
        jv r = v_list(c, 0);
        for (size_t i = 0; i < l.u.l->n; i += (size_t)k) {
            jv chunk = v_list(c, (size_t)k);
            for (size_t j = i; j < l.u.l->n && j < i + (size_t)k; j++) list_push(c, chunk.u.l, l.u.l->v[j]);
            list_push(c, r.u.l, chunk);
        }
        return r;
    }
    if (!strcmp(name, "format")) {
        jv s = stringify(c, &v);
        jv args = v_list(c, a->n_pos);
        args.is_tuple = true;
        for (size_t i = 0; i < a->n_pos; i++) list_push(c, args.u.l, a->pos[i]);
        return percent_format(c, at, &s, &args);
    }
    if (!strcmp(name, "center")) {
        jv s = stringify(c, &v);
        int64_t w = a0 && a0->t == V_INT ? a0->u.i : 80, n = (int64_t)utf8_count(s.u.s);
        if (w <= n) return s;
        int64_t left = (w - n) / 2, right = w - n - left;
        jbuf o = {0};
        for (int64_t i = 0; i < left; i++) put(c, &o, " ", 1);
        put(c, &o, s.u.s->s, s.u.s->len);
        for (int64_t i = 0; i < right; i++) put(c, &o, " ", 1);
        jv r = v_str(c, o.data, o.len);
        return r;
    }
    fail_at(c, at->pos, HC_ERR_FORMAT, "no filter named '%s'", name);
}

static const char *const known_filters[] = {
    "default", "d", "tojson", "from_json", "length", "count", "string", "safe", "e", "escape", "trim", "upper",
    "lower", "title", "capitalize", "replace", "join", "list", "items", "dictsort", "sort", "reverse", "first",
    "last", "unique", "min", "max", "sum", "int", "float", "abs", "round", "indent", "wordcount", "attr", "map",
    "select", "reject", "selectattr", "rejectattr", "batch", "format", "center", NULL};

/* ---- expressions -------------------------------------------------------------------------- */

static jv eval_node(jctx *c, scope *sc, node *n);

static jv eval(jctx *c, scope *sc, node *n) {
    eval_in(c, n->pos);
    const jv v = eval_node(c, sc, n);
    c->eval_depth--;
    return v;
}

static jv eval_node(jctx *c, scope *sc, node *n) {
    switch (n->t) {
    case N_LIT: return n->lit;
    case N_NAME: return lookup(c, sc, n->name);
    case N_LIST:
    case N_TUPLE: {
        jv l = v_list(c, n->n);
        l.is_tuple = n->t == N_TUPLE;
        for (size_t i = 0; i < n->n; i++) list_push(c, l.u.l, eval(c, sc, n->args[i]));
        return l;
    }
    case N_DICT: {
        jv d = v_dict(c, V_DICT);
        for (size_t i = 0; i < n->n; i++) dict_set(c, d.u.d, eval(c, sc, n->args[i]), eval(c, sc, n->vals[i]));
        return d;
    }
    case N_ATTR: {
        jv o = eval(c, sc, n->a);
        return get_attr(c, n, &o, n->name);
    }
    case N_ITEM: {
        jv o = eval(c, sc, n->a);
        jv k = eval(c, sc, n->b);
        return get_item(c, n, &o, &k);
    }
    case N_SLICE: {
        jv o = eval(c, sc, n->a);
        jv a = n->args[0] ? eval(c, sc, n->args[0]) : v_none();
        jv b = n->args[1] ? eval(c, sc, n->args[1]) : v_none();
        jv s = n->args[2] ? eval(c, sc, n->args[2]) : v_none();
        return do_slice(c, n, &o, &a, &b, &s);
    }
    case N_CALL: {
        jv f = eval(c, sc, n->a);
        argv_t a = eval_args(c, sc, n);
        return call_value(c, sc, n, f, &a);
    }
    case N_FILTER: {
        jv v = eval(c, sc, n->a);
        argv_t a = eval_args(c, sc, n);
        return apply_filter(c, sc, n, n->name, v, &a);
    }
    case N_TEST: {
        jv v = eval(c, sc, n->a);
        argv_t a = eval_args(c, sc, n);
        bool r = run_test(c, n, n->name, &v, &a);
        return v_bool(n->negate ? !r : r);
    }
    case N_NEG:
    case N_POS: {
        jv v = eval(c, sc, n->a);
        if (v.t == V_INT) {
            if (n->t == N_POS) return v;
            int_checked(c, n->pos, v.u.i == INT64_MIN, 0);
            return v_int(-v.u.i);
        }
        if (v.t == V_FLOAT) return v_float(n->t == N_NEG ? -v.u.f : v.u.f);
        if (v.t == V_BOOL) return v_int(n->t == N_NEG ? -(int64_t)v.u.b : v.u.b);
        if (v.t == V_UNDEF) undefined_error(c, n, &v);
        fail_at(c, n->pos, HC_ERR_FORMAT, "bad operand type for unary -: '%s'", type_name(&v));
    }
    case N_NOT: {
        jv v = eval(c, sc, n->a);
        return v_bool(!truthy(&v));
    }
    case N_AND: {
        jv a = eval(c, sc, n->a);
        return truthy(&a) ? eval(c, sc, n->b) : a;
    }
    case N_OR: {
        jv a = eval(c, sc, n->a);
        return truthy(&a) ? a : eval(c, sc, n->b);
    }
    case N_COND: {
        jv cnd = eval(c, sc, n->cnd);
        if (truthy(&cnd)) return eval(c, sc, n->a);
        return n->b ? eval(c, sc, n->b) : v_undef(c, NULL);
    }
    case N_BIN: return binary(c, n, eval(c, sc, n->a), eval(c, sc, n->b));
    case N_CMP: {
        jv a = eval(c, sc, n->a), b = eval(c, sc, n->b);
        const char *op = n->name;
        if (!strcmp(op, "==")) return v_bool(value_eq(c, &a, &b));
        if (!strcmp(op, "!=")) return v_bool(!value_eq(c, &a, &b));
        if (!strcmp(op, "in")) return v_bool(contains(c, n, &a, &b));
        if (!strcmp(op, "not in")) return v_bool(!contains(c, n, &a, &b));
        int r = compare(c, n, &a, &b);
        if (!strcmp(op, "<")) return v_bool(r < 0);
        if (!strcmp(op, "<=")) return v_bool(r <= 0);
        if (!strcmp(op, ">")) return v_bool(r > 0);
        return v_bool(r >= 0);
    }
    default: fail_at(c, n->pos, HC_ERR_FORMAT, "not an expression");
    }
}

/* ---- statements --------------------------------------------------------------------------- */

static void assign_targets(jctx *c, node *at, scope *sc, const char **targets, size_t n, jv v) {
    if (n == 1) {
        assign(c, sc, targets[0], v);
        return;
    }
    if (v.t != V_LIST) fail_at(c, at->pos, HC_ERR_FORMAT, "cannot unpack non-iterable %s object", type_name(&v));
    if (v.u.l->n != n)
        fail_at(c, at->pos, HC_ERR_FORMAT, "%s values to unpack (expected %zu, got %zu)",
                v.u.l->n > n ? "too many" : "not enough", n, v.u.l->n);
    for (size_t i = 0; i < n; i++) assign(c, sc, targets[i], v.u.l->v[i]);
}

static void exec_one(jctx *c, scope *sc, node *n, jbuf *out);

static void exec_node(jctx *c, scope *sc, node *n, jbuf *out) {
    eval_in(c, n->pos);
    exec_one(c, sc, n, out);
    c->eval_depth--;
}

static void exec_one(jctx *c, scope *sc, node *n, jbuf *out) {
    switch (n->t) {
    case N_TEXT: put(c, out, n->lit.u.s->s, n->lit.u.s->len); return;
    case N_OUT: {
        jv v = eval(c, sc, n->a);
        to_str(c, out, &v);
        return;
    }
    case N_BODY: exec_body(c, sc, n, out); return;
    case N_IF:
        for (size_t i = 0; i < n->n; i++) {
            jv cnd = eval(c, sc, n->args[i]);
            if (truthy(&cnd)) {
                exec_body(c, sc, n->vals[i], out);
                return;
            }
        }
        if (n->else_body) exec_body(c, sc, n->else_body, out);
        return;
    case N_FOR: {
        jv it = eval(c, sc, n->a);
        jv items = iterate(c, n->a, &it);
        if (n->cnd) { /* `for x in xs if cond` filters before the loop counts */
            jv kept = v_list(c, items.u.l->n);
            for (size_t i = 0; i < items.u.l->n; i++) {
                scope *s2 = new_scope(c, sc);
                assign_targets(c, n, s2, n->targets, n->n_targets, items.u.l->v[i]);
                jv ok = eval(c, s2, n->cnd);
                if (truthy(&ok)) list_push(c, kept.u.l, items.u.l->v[i]);
            }
            items = kept;
        }
        if (!items.u.l->n) {
            if (n->else_body) exec_body(c, sc, n->else_body, out);
            return;
        }
        jloop *lp = alloc(c, sizeof(jloop));
        jv loopv = {.t = V_LOOP};
        loopv.u.loop = lp;
        lp->length = (int64_t)items.u.l->n;
        for (size_t i = 0; i < items.u.l->n; i++) {
            if (++c->loop_steps > MAX_LOOP_STEPS)
                fail_at(c, n->pos, HC_ERR_FORMAT, "more than %d loop iterations in one render", MAX_LOOP_STEPS);
            scope *s2 = new_scope(c, sc);
            lp->index0 = (int64_t)i;
            lp->has_prev = i > 0;
            lp->has_next = i + 1 < items.u.l->n;
            if (lp->has_prev) lp->prev = items.u.l->v[i - 1];
            if (lp->has_next) lp->next = items.u.l->v[i + 1];
            assign(c, s2, "loop", loopv);
            assign_targets(c, n, s2, n->targets, n->n_targets, items.u.l->v[i]);
            exec_body(c, s2, n->body, out);
            if (c->brk == 1) {
                c->brk = 0;
                break;
            }
            c->brk = 0;
        }
        return;
    }
    case N_SET: {
        jv v = eval(c, sc, n->a);
        if (n->name && !strcmp(n->name, "attr")) {
            jv ns = lookup(c, sc, n->targets[0]);
            if (ns.t != V_NS) fail_at(c, n->pos, HC_ERR_FORMAT, "cannot assign attribute on non-namespace object");
            dict_set(c, ns.u.d, v_cstr(c, n->targets[1]), v);
            return;
        }
        assign_targets(c, n, sc, n->targets, n->n_targets, v);
        return;
    }
    case N_SETBLOCK: {
        jbuf body = {0};
        exec_body(c, sc, n->body, &body);
        jv v = v_str(c, body.data ? body.data : "", body.len);
        n->cnd->lit = v; /* the filter chain's input */
        assign(c, sc, n->targets[0], eval(c, sc, n->a));
        return;
    }
    case N_MACRO: {
        jv m = {.t = V_MACRO};
        m.u.m = alloc(c, sizeof(jmacro));
        *m.u.m = (jmacro){.def = n, .closure = sc};
        assign(c, sc, n->name, m);
        return;
    }
    case N_CALLBLOCK: {
        node *call = n->a;
        jv f = eval(c, sc, call->a);
        if (f.t != V_MACRO || !f.u.m->def) fail_at(c, n->pos, HC_ERR_FORMAT, "{%% call %%} needs a macro");
        argv_t a = eval_args(c, sc, call);
        jmacro m = *f.u.m;
        m.caller_body = n;
        m.caller_scope = sc;
        jv r = call_macro(c, n, &m, &a);
        put(c, out, r.u.s->s, r.u.s->len);
        return;
    }
    case N_FILTERBLOCK: {
        jbuf body = {0};
        exec_body(c, sc, n->body, &body);
        n->cnd->lit = v_str(c, body.data ? body.data : "", body.len);
        jv r = eval(c, sc, n->a);
        to_str(c, out, &r);
        return;
    }
    case N_BREAK: c->brk = 1; return;
    case N_CONTINUE: c->brk = 2; return;
    default: fail_at(c, n->pos, HC_ERR_FORMAT, "not a statement");
    }
}

static void exec_body(jctx *c, scope *sc, node *body, jbuf *out) {
    for (size_t i = 0; i < body->n && !c->brk; i++) exec_node(c, sc, body->args[i], out);
}

/* Unknown filters and tests fail when the template is compiled, as in jinja2. */
static void check_names(jctx *c, node *n, int depth) {
    if (!n) return;
    if (depth > MAX_TREE_DEPTH) fail_at(c, n->pos, HC_ERR_FORMAT, "expression or block more than %d levels deep", MAX_TREE_DEPTH);
    if (n->t == N_FILTER) {
        bool ok = false;
        for (int i = 0; known_filters[i]; i++) ok |= !strcmp(n->name, known_filters[i]);
        if (!ok) fail_at(c, n->pos, HC_ERR_FORMAT, "no filter named '%s'", n->name);
    }
    if (n->t == N_TEST) {
        bool ok = false;
        for (int i = 0; known_tests[i]; i++) ok |= !strcmp(n->name, known_tests[i]);
        if (!ok) fail_at(c, n->pos, HC_ERR_FORMAT, "no test named '%s'", n->name);
    }
    check_names(c, n->a, depth + 1);
    check_names(c, n->b, depth + 1);
    check_names(c, n->cnd, depth + 1);
    check_names(c, n->body, depth + 1);
    check_names(c, n->else_body, depth + 1);
    for (size_t i = 0; i < n->n; i++) {
        if (n->args) check_names(c, n->args[i], depth + 1);
        if (n->vals) check_names(c, n->vals[i], depth + 1);
    }
    if (n->t == N_SLICE)
        for (int i = 0; i < 3; i++) check_names(c, n->args[i], depth + 1);
    if (n->t == N_MACRO && n->vals)
        for (size_t i = 0; i < n->n_targets; i++) check_names(c, n->vals[i], depth + 1);
}

hc_status hc_jinja_render(const char *src, size_t len, const char *source, const hc_json *context, char **out,
                          size_t *out_len) {
    *out = NULL;
    jctx *c = calloc(1, sizeof *c);
    if (!c) return hc_fail(HC_ERR_NOMEM, "out of memory");
    hc_arena_init(&c->arena, 1 << 16);
    c->src = src;
    c->src_len = len;
    c->source = source ? source : "template";
    jbuf result = {0};
    hc_status st;
    if (setjmp(c->fail)) {
        st = c->status;
        hc_arena_free(&c->arena);
        free(c);
        return st;
    }
    segs sg = {0};
    lex_template(c, &sg);
    parser p = {c, &sg, 0};
    node *root = parse_body(&p, NULL, NULL, NULL);
    check_names(c, root, 0);
    c->globals = new_scope(c, NULL);
    static const struct {
        const char *name;
        int id;
    } fns[] = {{"raise_exception", F_RAISE}, {"strftime_now", F_STRFTIME}, {"namespace", F_NAMESPACE},
               {"range", F_RANGE}, {"dict", F_DICT}};
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) assign(c, c->globals, fns[i].name, bound(c, fns[i].id, NULL));
    if (context && context->type == HC_JSON_OBJECT)
        for (size_t i = 0; i < context->len; i++)
            assign(c, c->globals, context->u.members[i].key, from_hc_json(c, &context->u.members[i].value));
    scope *top = new_scope(c, c->globals);
    put(c, &result, "", 0);
    exec_body(c, top, root, &result);
    *out = malloc(result.len + 1); /* the caller's copy; the arena goes */
    if (*out) memcpy(*out, result.data, result.len + 1);
    hc_arena_free(&c->arena);
    free(c);
    if (!*out) return hc_fail(HC_ERR_NOMEM, "out of memory rendering a template");
    if (out_len) *out_len = result.len;
    return HC_OK;
}
