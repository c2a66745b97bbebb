/* Arena: many small allocations released together (JSON documents, headers). */
#ifndef HC_BASE_ARENA_H
#define HC_BASE_ARENA_H

#include <stddef.h>

typedef struct hc_arena_block hc_arena_block;

typedef struct {
    hc_arena_block *head;
    size_t block_size; /* bytes in a new block; grows for large requests */
} hc_arena;

void hc_arena_init(hc_arena *a, size_t block_size);
/* 16-byte aligned memory, or NULL when out of memory. */
void *hc_arena_alloc(hc_arena *a, size_t n);
char *hc_arena_strndup(hc_arena *a, const char *s, size_t n);
void hc_arena_free(hc_arena *a);

#endif
