#define _GNU_SOURCE
#include "base/file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/status.h"

void *hc_alloc_huge(size_t size) {
    const size_t huge = 2u << 20, cap = (size + huge - 1) / huge * huge;
    void *buf = aligned_alloc(huge, cap ? cap : huge);
    if (buf) madvise(buf, cap ? cap : huge, MADV_HUGEPAGE);
    return buf;
}

bool hc_release_pages(const void *p, size_t n) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = ((uintptr_t)p + page - 1) / page * page,
                    b = ((uintptr_t)p + n) / page * page;
    return b > a && madvise((void *)a, b - a, MADV_DONTNEED) == 0;
}

hc_status hc_file_map_open(hc_file_map *out, const char *path, bool use_mmap, size_t align_at) {
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return hc_fail(HC_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return hc_fail(HC_ERR_IO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return hc_fail(HC_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    if (size == 0) {
        close(fd);
        out->data = (const uint8_t *)"";
        return HC_OK;
    }
    if (use_mmap) {
        void *p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (p == MAP_FAILED) return hc_fail(HC_ERR_IO, "%s: mmap: %s", path, strerror(errno));
        out->data = p;
        out->size = size;
        out->mapped = true;
        return HC_OK;
    }
    /* Anonymous memory, 2 MiB aligned and asking for huge pages: fewer faults and TLB misses, and
     * nothing the page-cache reclaimer can take away mid-run. The file starts pad bytes in, so
     * its byte align_at is 64-byte aligned. */
    const size_t pad = (64 - align_at % 64) % 64;
    uint8_t *alloc = hc_alloc_huge(size + pad), *buf = alloc + pad;
    if (!alloc) {
        close(fd);
        return hc_fail(HC_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, size);
    }
    size_t done = 0;
    while (done < size) {
        ssize_t r = read(fd, buf + done, size - done);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = errno;
            free(alloc);
            close(fd);
            return hc_fail(HC_ERR_IO, "%s: read failed: %s", path, r == 0 ? "file shrank" : strerror(e));
        }
        done += (size_t)r;
    }
    close(fd);
    out->data = buf;
    out->size = size;
    out->alloc = alloc;
    return HC_OK;
}

void hc_file_map_close(hc_file_map *m) {
    if (!m || !m->data) return;
    if (m->mapped) munmap((void *)m->data, m->size);
    else free(m->alloc);
    memset(m, 0, sizeof *m);
}

hc_status hc_file_read_all(const char *path, char **out, size_t *out_size) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return hc_fail(HC_ERR_IO, "%s: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return hc_fail(HC_ERR_NOMEM, "%s: out of memory", path);
    }
    for (;;) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                fclose(f);
                return hc_fail(HC_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return hc_fail(HC_ERR_IO, "%s: read error", path);
    }
    buf[n] = 0;
    *out = buf;
    if (out_size) *out_size = n;
    return HC_OK;
}

bool hc_path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

bool hc_path_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

hc_status hc_path_join(char *out, size_t cap, const char *dir, const char *name) {
    size_t dl = strlen(dir);
    const char *sep = (dl > 0 && dir[dl - 1] == '/') ? "" : "/";
    int n = snprintf(out, cap, "%s%s%s", dir, sep, name);
    if (n < 0 || (size_t)n >= cap) return hc_fail(HC_ERR_INVALID_ARG, "path too long: %s/%s", dir, name);
    return HC_OK;
}

bool hc_mkdirs(const char *path) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        errno = ENAMETOOLONG;
        return false;
    }
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return false;
        *p = '/';
    }
    return mkdir(buf, 0755) == 0 || errno == EEXIST;
}

static bool dir_is_empty(const char *path) {
    DIR *d = opendir(path);
    if (!d) return false;
    struct dirent *e;
    bool empty = true;
    while (empty && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = false;
    closedir(d);
    return empty;
}

/* Removes the files of a staging folder (it holds no subfolders), then the folder. */
static void remove_flat(const char *path) {
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *e;
    char p[4096];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && hc_path_join(p, sizeof p, path, e->d_name) == HC_OK)
            unlink(p);
    closedir(d);
    rmdir(path);
}

hc_status hc_dir_stage(const char *out_dir, char *tmp, size_t cap) {
    if (hc_path_exists(out_dir) && !(hc_path_is_dir(out_dir) && dir_is_empty(out_dir)))
        return hc_fail(HC_ERR_INVALID_ARG, "%s already exists and is not an empty folder (nothing was written)", out_dir);
    const int n = snprintf(tmp, cap, "%s.tmp.%ld", out_dir, (long)getpid());
    if (n < 0 || (size_t)n >= cap) return hc_fail(HC_ERR_INVALID_ARG, "path too long: %s", out_dir);
    remove_flat(tmp); /* a leftover of an earlier crash under the same pid */
    if (!hc_mkdirs(tmp)) return hc_fail(HC_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    return HC_OK;
}

hc_status hc_dir_publish(const char *tmp, const char *out_dir, hc_status st) {
    if (!st && hc_path_exists(out_dir)) rmdir(out_dir); /* the empty folder it replaces */
    if (!st && rename(tmp, out_dir) != 0)
        st = hc_fail(HC_ERR_IO, "cannot rename %s to %s: %s", tmp, out_dir, strerror(errno));
    if (st) remove_flat(tmp);
    return st;
}
