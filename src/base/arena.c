#include "base/arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct hc_arena_block {
    hc_arena_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

void hc_arena_init(hc_arena *a, size_t block_size) {
    a->head = NULL;
    a->block_size = block_size ? block_size : 65536;
}

void *hc_arena_alloc(hc_arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    hc_arena_block *b = a->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = a->block_size;
        if (cap < n) cap = n;
        if (cap > SIZE_MAX - sizeof(hc_arena_block)) return NULL;
        b = malloc(sizeof(hc_arena_block) + cap);
        if (!b) return NULL;
        b->used = 0;
        b->cap = cap;
        b->next = a->head;
        a->head = b;
        /* Blocks double up to 16 MiB so large documents need few mallocs. */
        if (a->block_size < (16u << 20)) a->block_size *= 2;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

char *hc_arena_strndup(hc_arena *a, const char *s, size_t n) {
    char *p = hc_arena_alloc(a, n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

void hc_arena_free(hc_arena *a) {
    hc_arena_block *b = a->head;
    while (b) {
        hc_arena_block *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
}
