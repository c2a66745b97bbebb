/* A growable, NUL-terminated byte string. */
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

#endif
