#include "tokenizer/vocab.h"

#include <stdlib.h>
#include <string.h>

uint64_t hc_hash_bytes(const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

bool hc_vocab_init(hc_vocab *v, int64_t expected) {
    memset(v, 0, sizeof *v);
    hc_arena_init(&v->arena, 1 << 16);
    uint64_t n = 64;
    while (n < (uint64_t)expected * 2) n *= 2;
    v->slots = malloc(n * sizeof *v->slots);
    if (!v->slots) return false;
    memset(v->slots, 0xff, n * sizeof *v->slots);
    v->n_slots = n;
    return true;
}

static bool grow_ids(hc_vocab *v, int64_t id) {
    if (id < v->n_ids) return true;
    int64_t cap = v->n_ids ? v->n_ids : 256;
    while (cap <= id) cap *= 2;
    const char **s = realloc(v->str, (size_t)cap * sizeof *s);
    if (!s) return false;
    v->str = s;
    uint32_t *l = realloc(v->str_len, (size_t)cap * sizeof *l);
    if (!l) return false;
    v->str_len = l;
    for (int64_t i = v->n_ids; i < cap; i++) {
        v->str[i] = NULL;
        v->str_len[i] = 0;
    }
    v->n_ids = cap;
    return true;
}

static bool rehash(hc_vocab *v) {
    uint64_t n = v->n_slots * 2;
    int32_t *slots = malloc(n * sizeof *slots);
    if (!slots) return false;
    memset(slots, 0xff, n * sizeof *slots);
    for (uint64_t i = 0; i < v->n_slots; i++) {
        int32_t id = v->slots[i];
        if (id < 0) continue;
        uint64_t h = hc_hash_bytes(v->str[id], v->str_len[id]) & (n - 1);
        while (slots[h] >= 0) h = (h + 1) & (n - 1);
        slots[h] = id;
    }
    free(v->slots);
    v->slots = slots;
    v->n_slots = n;
    return true;
}

bool hc_vocab_add(hc_vocab *v, const char *s, size_t n, int32_t id) {
    if (id < 0 || n > UINT32_MAX) return false;
    if ((uint64_t)(v->count + 1) * 2 > v->n_slots && !rehash(v)) return false;
    if (!grow_ids(v, id)) return false;
    uint64_t h = hc_hash_bytes(s, n) & (v->n_slots - 1);
    while (v->slots[h] >= 0) {
        int32_t other = v->slots[h];
        if (v->str_len[other] == n && memcmp(v->str[other], s, n) == 0) {
            /* Same token under another id: the later definition wins, as a JSON map would. */
            v->slots[h] = id;
            if (other != id) {
                char *copy = hc_arena_strndup(&v->arena, s, n);
                if (!copy) return false;
                v->str[id] = copy;
                v->str_len[id] = (uint32_t)n;
            }
            return true;
        }
        h = (h + 1) & (v->n_slots - 1);
    }
    char *copy = hc_arena_strndup(&v->arena, s, n);
    if (!copy) return false;
    v->slots[h] = id;
    v->str[id] = copy;
    v->str_len[id] = (uint32_t)n;
    v->count++;
    return true;
}

int32_t hc_vocab_find(const hc_vocab *v, const char *s, size_t n) {
    uint64_t h = hc_hash_bytes(s, n) & (v->n_slots - 1);
    for (;;) {
        int32_t id = v->slots[h];
        if (id < 0) return -1;
        if (v->str_len[id] == n && memcmp(v->str[id], s, n) == 0) return id;
        h = (h + 1) & (v->n_slots - 1);
    }
}

void hc_vocab_free(hc_vocab *v) {
    hc_arena_free(&v->arena);
    free(v->str);
    free(v->str_len);
    free(v->slots);
    memset(v, 0, sizeof *v);
}
