/* A growable, NUL-terminated byte string, and UTF-8 validation. */
#ifndef HC_BASE_STRBUF_H
#define HC_BASE_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char *data;
    size_t len, cap;
} hc_str;

bool hc_str_put(hc_str *s, const char *p, size_t n); /* false when out of memory */
bool hc_str_putc(hc_str *s, char c);
void hc_str_free(hc_str *s);

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if it is not one (overlong forms,
 * surrogates and code points past U+10FFFF included). */
int hc_utf8_seq_len(const unsigned char *p, const unsigned char *end);
/* Whether s[0, n) is text: UTF-8 without NUL bytes. When not, the first bad byte's 1-based line
 * and column (in bytes) and why ("invalid UTF-8" or "a NUL byte in text"). */
bool hc_text_check(const char *s, size_t n, size_t *line, size_t *col, const char **why);

#endif
