/* A string -> id hash table (open addressing) with the id -> string array beside it. */
#ifndef HC_TOKENIZER_VOCAB_H
#define HC_TOKENIZER_VOCAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/arena.h"

typedef struct {
    hc_arena arena;     /* owns the strings */
    const char **str;   /* [n_ids] id -> token (NULL for holes) */
    uint32_t *str_len;  /* [n_ids] */
    int64_t n_ids;      /* max id + 1 */
    int32_t *slots;     /* hash slots holding ids, -1 empty */
    uint64_t n_slots;   /* power of two */
    int64_t count;
} hc_vocab;

bool hc_vocab_init(hc_vocab *v, int64_t expected);
/* Whether a vocabulary of `entries` tokens may hold `id`. Ids run from 0 to about the number of
 * tokens (a few gaps at most), and the id table is indexed by them, so an id far past that is a
 * corrupt or lying tokenizer.json (a fuzzer's 2^31 asked for an 8 GB table), refused instead. */
static inline bool hc_vocab_id_ok(int64_t id, size_t entries) {
    return id >= 0 && id <= INT32_MAX && id < (int64_t)entries * 2 + 65536;
}

/* Adds (token, id); an existing id or token is replaced. false when out of memory. */
bool hc_vocab_add(hc_vocab *v, const char *s, size_t n, int32_t id);
/* The id of a token, or -1. */
int32_t hc_vocab_find(const hc_vocab *v, const char *s, size_t n);
void hc_vocab_free(hc_vocab *v);

/* 64-bit FNV-1a. */
uint64_t hc_hash_bytes(const void *p, size_t n);

#endif
