/* Files: whole-file reads, mappings that are either mmap'd or read into RAM. */
#ifndef HC_BASE_FILE_H
#define HC_BASE_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hubcap.h"

typedef struct {
    const uint8_t *data; /* the file's bytes */
    size_t size;
    bool mapped;         /* true: munmap on release; false: free(alloc) */
    void *alloc;         /* read into RAM: the allocation data lies in */
} hc_file_map;

/* size bytes, 2 MiB aligned, asking the kernel for transparent huge pages; release with free().
 * For large read-mostly buffers streamed every token. */
void *hc_alloc_huge(size_t size);
/* Drops the whole pages inside [p, p + n) from this process's memory (anonymous pages are freed,
 * a mapped file's pages go back to the page cache; either reads as zeros or the file again if
 * touched). False when there was no whole page or the kernel refused (locked pages). */
bool hc_release_pages(const void *p, size_t n);

/* Maps `path` read-only (use_mmap) or reads it whole into RAM. An empty file gives size 0. Read
 * into RAM, the file's byte align_at lands on a 64-byte boundary: a safetensors file's data
 * section, whose header is padded to 8 bytes only, so the weights' vector loads do not straddle
 * cache lines (a mapping keeps the file's own alignment). */
hc_status hc_file_map_open(hc_file_map *out, const char *path, bool use_mmap, size_t align_at);
void hc_file_map_close(hc_file_map *m);

/* Reads a whole file into a malloc'd, NUL-terminated buffer. */
hc_status hc_file_read_all(const char *path, char **out, size_t *out_size);

bool hc_path_exists(const char *path);
bool hc_path_is_dir(const char *path);

/* Joins dir and name into out (cap bytes); fails with HC_ERR_INVALID_ARG if too long. */
hc_status hc_path_join(char *out, size_t cap, const char *dir, const char *name);

/* Creates path and its missing parents (mkdir -p); false with errno set on failure. */
bool hc_mkdirs(const char *path);

/* Writing a folder whole or not at all: hc_dir_stage checks that out_dir does not exist or is
 * empty, and creates a fresh temporary folder beside it (its name in tmp); the files go there;
 * hc_dir_publish(tmp, out_dir, st) renames it into place when st is HC_OK, else removes it,
 * and returns the outcome. */
hc_status hc_dir_stage(const char *out_dir, char *tmp, size_t cap);
hc_status hc_dir_publish(const char *tmp, const char *out_dir, hc_status st);

#endif
