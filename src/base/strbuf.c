#include "base/strbuf.h"

#include <stdlib.h>
#include <string.h>

bool hc_str_put(hc_str *s, const char *p, size_t n) {
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 64;
        while (cap < s->len + n + 1) cap *= 2;
        char *d = realloc(s->data, cap);
        if (!d) return false;
        s->data = d;
        s->cap = cap;
    }
    if (n) memcpy(s->data + s->len, p, n);
    s->len += n;
    s->data[s->len] = 0;
    return true;
}

bool hc_str_putc(hc_str *s, char c) { return hc_str_put(s, &c, 1); }

void hc_str_free(hc_str *s) {
    free(s->data);
    memset(s, 0, sizeof *s);
}
