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

int hc_utf8_seq_len(const unsigned char *p, const unsigned char *end) {
    unsigned c = p[0];
    if (c < 0x80) return 1;
    int n;
    unsigned min;
    if ((c & 0xE0) == 0xC0) { n = 2; min = 0x80; c &= 0x1F; }
    else if ((c & 0xF0) == 0xE0) { n = 3; min = 0x800; c &= 0x0F; }
    else if ((c & 0xF8) == 0xF0) { n = 4; min = 0x10000; c &= 0x07; }
    else return 0;
    if (end - p < n) return 0;
    for (int i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        c = (c << 6) | (p[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    return n;
}

bool hc_text_check(const char *s, size_t n, size_t *line, size_t *col, const char **why) {
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    int k = 1;
    while (p < end && *p && (k = hc_utf8_seq_len(p, end))) p += k;
    if (p == end) return true;
    *why = *p ? "invalid UTF-8" : "a NUL byte in text";
    *line = 1, *col = 1;
    for (const char *q = s; q < (const char *)p; q++) *line += *q == '\n', *col = *q == '\n' ? 1 : *col + 1;
    return false;
}
