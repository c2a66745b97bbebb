/* Lists of string pieces, the currency of the tokenizer pipeline. */
#ifndef HC_TOKENIZER_STRLIST_H
#define HC_TOKENIZER_STRLIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/strbuf.h"

/* Pieces of text; each piece also carries a flag (an added token id, or -1). */
typedef struct {
    hc_str text;      /* all pieces, back to back */
    size_t *start;    /* [n] */
    size_t *len;      /* [n] */
    int32_t *token;   /* [n] added-token id of the piece, -1 for ordinary text */
    size_t n, cap;
} hc_pieces;

bool hc_pieces_add(hc_pieces *p, const char *s, size_t n, int32_t token);
void hc_pieces_clear(hc_pieces *p);
void hc_pieces_free(hc_pieces *p);

#endif
