#include "tokenizer/strlist.h"

#include <stdlib.h>
#include <string.h>

bool hc_pieces_add(hc_pieces *p, const char *s, size_t n, int32_t token) {
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16;
        size_t *st = realloc(p->start, cap * sizeof *st);
        if (!st) return false;
        p->start = st;
        size_t *ln = realloc(p->len, cap * sizeof *ln);
        if (!ln) return false;
        p->len = ln;
        int32_t *tk = realloc(p->token, cap * sizeof *tk);
        if (!tk) return false;
        p->token = tk;
        p->cap = cap;
    }
    p->start[p->n] = p->text.len;
    p->len[p->n] = n;
    p->token[p->n] = token;
    if (!hc_str_put(&p->text, s, n)) return false;
    p->n++;
    return true;
}

void hc_pieces_clear(hc_pieces *p) {
    p->n = 0;
    p->text.len = 0;
}

void hc_pieces_free(hc_pieces *p) {
    hc_str_free(&p->text);
    free(p->start);
    free(p->len);
    free(p->token);
    memset(p, 0, sizeof *p);
}
