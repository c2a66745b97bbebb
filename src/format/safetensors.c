#include "format/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/status.h"

static const struct {
    const char *name;
    size_t size;
} dtype_table[HC_DTYPE_COUNT] = {
#define DTYPE_ROW(e, str, sz) {str, sz},
    HC_DTYPE_MAP(DTYPE_ROW)
#undef DTYPE_ROW
};

const char *hc_dtype_name(hc_dtype dt) { return (unsigned)dt < HC_DTYPE_COUNT ? dtype_table[dt].name : "?"; }
size_t hc_dtype_size(hc_dtype dt) { return (unsigned)dt < HC_DTYPE_COUNT ? dtype_table[dt].size : 0; }

bool hc_dtype_from_name(const char *name, hc_dtype *out) {
    for (int i = 0; i < HC_DTYPE_COUNT; i++) {
        if (strcmp(dtype_table[i].name, name) == 0) {
            *out = (hc_dtype)i;
            return true;
        }
    }
    return false;
}

/* A file's first 8 bytes: its header's length, little-endian. */
static uint64_t header_len(const uint8_t *bytes) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | bytes[i];
    return n;
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp(((const hc_tensor_info *)a)->name, ((const hc_tensor_info *)b)->name);
}

static int cmp_by_offset(const void *a, const void *b) {
    const hc_tensor_info *x = *(const hc_tensor_info *const *)a, *y = *(const hc_tensor_info *const *)b;
    if (x->data != y->data) return (const uint8_t *)x->data < (const uint8_t *)y->data ? -1 : 1;
    return x->n_bytes < y->n_bytes ? -1 : x->n_bytes > y->n_bytes;
}

static bool json_u64(const hc_json *v, uint64_t *out) {
    if (!v || v->type != HC_JSON_NUMBER || !v->is_int || v->u.num.i < 0) return false;
    *out = (uint64_t)v->u.num.i;
    return true;
}

static hc_status parse_entry(const hc_json_member *m, hc_tensor_info *t, const uint8_t *data, uint64_t data_size,
                             const char *src) {
    const char *name = m->key;
    if (strlen(name) != m->key_len) return hc_fail(HC_ERR_FORMAT, "%s: tensor name with a NUL byte", src);
    if (m->value.type != HC_JSON_OBJECT)
        return hc_fail(HC_ERR_FORMAT, "%s: header entry '%s' is not an object", src, name);
    const hc_json *dt = hc_json_get(&m->value, "dtype");
    const hc_json *shape = hc_json_get(&m->value, "shape");
    const hc_json *offs = hc_json_get(&m->value, "data_offsets");
    if (!dt || dt->type != HC_JSON_STRING) return hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' has no dtype string", src, name);
    if (!shape || shape->type != HC_JSON_ARRAY) return hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' has no shape array", src, name);
    if (!offs || offs->type != HC_JSON_ARRAY || offs->len != 2)
        return hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' needs data_offsets [begin, end]", src, name);
    if (!hc_dtype_from_name(dt->u.str, &t->dtype)) {
        if (!strcmp(dt->u.str, "F4") || !strncmp(dt->u.str, "F6_", 3))
            return hc_fail(HC_ERR_UNSUPPORTED, "%s: tensor '%s' has sub-byte dtype %s, which hubcap does not read", src,
                           name, dt->u.str);
        return hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' has unknown dtype '%s'", src, name, dt->u.str);
    }
    if (shape->len > HC_MAX_DIMS)
        return hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' has %zu dimensions (at most %d)", src, name, shape->len, HC_MAX_DIMS);
    t->name = name;
    t->n_dims = (int)shape->len;
    uint64_t n = 1;
    for (size_t i = 0; i < shape->len; i++) {
        uint64_t d;
        if (!json_u64(&shape->u.items[i], &d))
            return hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' has a shape entry that is not a non-negative integer", src, name);
        if (__builtin_mul_overflow(n, d, &n) || n > (uint64_t)INT64_MAX)
            return hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' shape overflows", src, name);
        t->shape[i] = (int64_t)d;
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(n, (uint64_t)hc_dtype_size(t->dtype), &nbytes))
        return hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' byte size overflows", src, name);
    uint64_t begin, end;
    if (!json_u64(&offs->u.items[0], &begin) || !json_u64(&offs->u.items[1], &end))
        return hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' data_offsets are not non-negative integers", src, name);
    if (begin > end)
        return hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' data_offsets begin %llu > end %llu", src, name,
                       (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' ends at byte %llu, past the data end %llu (truncated file?)", src,
                       name, (unsigned long long)end, (unsigned long long)data_size);
    if (end - begin != nbytes)
        return hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' has %llu bytes but dtype %s and its shape need %llu", src, name,
                       (unsigned long long)(end - begin), dt->u.str, (unsigned long long)nbytes);
    t->n_elements = (int64_t)n;
    t->n_bytes = (size_t)nbytes;
    t->data = data + begin;
    t->shard = 0;
    return HC_OK;
}

hc_status hc_safetensors_parse(hc_safetensors *st, const uint8_t *bytes, size_t size, const char *src) {
    memset(st, 0, sizeof *st);
    hc_arena_init(&st->header.arena, 4096);
    if (size < 8) return hc_fail(HC_ERR_FORMAT, "%s: file of %zu bytes is too small for a safetensors header", src, size);
    const uint64_t hlen = header_len(bytes);
    if (hlen > size - 8)
        return hc_fail(HC_ERR_FORMAT, "%s: header length %llu runs past the end of the file (%zu bytes; truncated?)",
                       src, (unsigned long long)hlen, size);
    if (hlen > HC_SAFETENSORS_MAX_HEADER)
        return hc_fail(HC_ERR_FORMAT, "%s: header length %llu exceeds the limit of %u bytes", src,
                       (unsigned long long)hlen, HC_SAFETENSORS_MAX_HEADER);
    if (hlen < 2 || bytes[8] != '{') return hc_fail(HC_ERR_FORMAT, "%s: header does not start with '{'", src);
    hc_status s = hc_json_parse(&st->header, (const char *)bytes + 8, (size_t)hlen, src);
    if (s) return s; /* the JSON error already names the file, line and column */
    const hc_json *root = st->header.root;
    if (root->type != HC_JSON_OBJECT) {
        hc_json_free(&st->header);
        return hc_fail(HC_ERR_FORMAT, "%s: header is not a JSON object", src);
    }
    const uint8_t *data = bytes + 8 + hlen;
    uint64_t data_size = size - 8 - hlen;
    size_t n = 0;
    for (size_t i = 0; i < root->len; i++)
        if (strcmp(root->u.members[i].key, "__metadata__") != 0) n++;
    st->tensors = calloc(n ? n : 1, sizeof *st->tensors);
    hc_tensor_info **by_off = calloc(n ? n : 1, sizeof *by_off);
    if (!st->tensors || !by_off) {
        free(by_off);
        hc_safetensors_close(st);
        return hc_fail(HC_ERR_NOMEM, "%s: out of memory", src);
    }
    size_t k = 0;
    for (size_t i = 0; i < root->len; i++) {
        const hc_json_member *m = &root->u.members[i];
        if (strcmp(m->key, "__metadata__") == 0) {
            if (m->value.type != HC_JSON_OBJECT) {
                s = hc_fail(HC_ERR_FORMAT, "%s: __metadata__ is not an object", src);
                goto fail;
            }
            for (size_t j = 0; j < m->value.len; j++) {
                if (m->value.u.members[j].value.type != HC_JSON_STRING) {
                    s = hc_fail(HC_ERR_FORMAT, "%s: __metadata__ value '%s' is not a string", src,
                                m->value.u.members[j].key);
                    goto fail;
                }
            }
            st->metadata = &m->value;
            continue;
        }
        s = parse_entry(m, &st->tensors[k], data, data_size, src);
        if (s) goto fail;
        by_off[k] = &st->tensors[k];
        k++;
    }
    st->n_tensors = (int64_t)n;
    /* The data buffer must be covered exactly: no overlap, no hole, nothing after the last. */
    qsort(by_off, n, sizeof *by_off, cmp_by_offset);
    const uint8_t *expect = data;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *b = by_off[i]->data;
        if (b < expect) {
            s = hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' overlaps the tensor before it (offset %lld)", src,
                        by_off[i]->name, (long long)(b - data));
            goto fail;
        }
        if (b > expect) {
            s = hc_fail(HC_ERR_FORMAT, "%s: %lld unused bytes before tensor '%s' (offsets must be contiguous)", src,
                        (long long)(b - expect), by_off[i]->name);
            goto fail;
        }
        expect = b + by_off[i]->n_bytes;
    }
    if ((uint64_t)(expect - data) != data_size) {
        s = hc_fail(HC_ERR_FORMAT, "%s: data buffer is %llu bytes but the tensors cover %llu", src,
                    (unsigned long long)data_size, (unsigned long long)(expect - data));
        goto fail;
    }
    qsort(st->tensors, n, sizeof *st->tensors, cmp_by_name);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0) {
            s = hc_fail(HC_ERR_FORMAT, "%s: tensor '%s' appears twice in the header", src, st->tensors[i].name);
            goto fail;
        }
    }
    free(by_off);
    return HC_OK;
fail:
    free(by_off);
    free(st->tensors);
    st->tensors = NULL;
    st->n_tensors = 0;
    hc_json_free(&st->header);
    return s;
}

/* Where a safetensors file's data section starts (8 + its header's length), or 0 when the first 8
 * bytes cannot be read (hc_safetensors_parse then says what is wrong). */
static size_t data_start(const char *path) {
    FILE *f = fopen(path, "rb");
    uint8_t b[8];
    const bool ok = f && fread(b, 1, 8, f) == 8;
    if (f) fclose(f);
    const uint64_t n = ok ? header_len(b) : 0;
    return ok && n <= HC_SAFETENSORS_MAX_HEADER ? (size_t)(8 + n) : 0;
}

hc_status hc_safetensors_open(hc_safetensors *st, const char *path, bool use_mmap) {
    memset(st, 0, sizeof *st);
    hc_file_map map;
    hc_status s = hc_file_map_open(&map, path, use_mmap, use_mmap ? 0 : data_start(path));
    if (s) return s;
    s = hc_safetensors_parse(st, map.data, map.size, path);
    if (s) {
        hc_file_map_close(&map);
        return s;
    }
    st->map = map;
    st->path = strdup(path);
    if (!st->path) {
        hc_safetensors_close(st);
        return hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    return HC_OK;
}

void hc_safetensors_close(hc_safetensors *st) {
    if (!st) return;
    free(st->tensors);
    hc_json_free(&st->header);
    hc_file_map_close(&st->map);
    free(st->path);
    memset(st, 0, sizeof *st);
}

const hc_tensor_info *hc_safetensors_find(const hc_safetensors *st, const char *name) {
    hc_tensor_info key = {.name = name};
    return bsearch(&key, st->tensors, (size_t)st->n_tensors, sizeof key, cmp_by_name);
}

/* ---- writer ---------------------------------------------------------------------------- */

static bool write_all(int fd, const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

typedef struct {
    char *buf;
    size_t len, cap;
    bool oom;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1) cap *= 2;
        char *nb = realloc(b->buf, cap);
        if (!nb) {
            b->oom = true;
            return;
        }
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = 0;
}

static void sb_puts(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_json_string(strbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            sb_put(b, esc, 2);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            sb_put(b, esc, 6);
        } else {
            sb_put(b, (const char *)p, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static int cmp_write_name(const void *a, const void *b) {
    return strcmp((*(const hc_tensor_write *const *)a)->name, (*(const hc_tensor_write *const *)b)->name);
}

hc_status hc_safetensors_write(const char *path, const hc_tensor_write *tensors, int64_t n,
                               const char *const *metadata, int n_metadata) {
    if (n < 0 || (n > 0 && !tensors)) return hc_fail(HC_ERR_INVALID_ARG, "%s: bad tensor list", path);
    /* Tensors are laid out in name order, as the reference writer does. */
    const hc_tensor_write **order = calloc(n ? (size_t)n : 1, sizeof *order);
    if (!order) return hc_fail(HC_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++) order[i] = &tensors[i];
    qsort(order, (size_t)n, sizeof *order, cmp_write_name);
    for (int64_t i = 1; i < n; i++) {
        if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
            hc_status s = hc_fail(HC_ERR_INVALID_ARG, "%s: tensor '%s' given twice", path, order[i]->name);
            free(order);
            return s;
        }
    }
    strbuf h = {0};
    sb_puts(&h, "{");
    bool first = true;
    if (n_metadata > 0) {
        sb_puts(&h, "\"__metadata__\":{");
        for (int i = 0; i < n_metadata; i++) {
            if (i) sb_puts(&h, ",");
            sb_json_string(&h, metadata[2 * i]);
            sb_puts(&h, ":");
            sb_json_string(&h, metadata[2 * i + 1]);
        }
        sb_puts(&h, "}");
        first = false;
    }
    uint64_t off = 0;
    hc_status s = HC_OK;
    for (int64_t i = 0; i < n; i++) {
        const hc_tensor_write *t = order[i];
        if ((unsigned)t->dtype >= HC_DTYPE_COUNT || t->n_dims < 0 || t->n_dims > HC_MAX_DIMS) {
            s = hc_fail(HC_ERR_INVALID_ARG, "%s: tensor '%s' has a bad dtype or rank", path, t->name);
            break;
        }
        uint64_t nb = hc_dtype_size(t->dtype);
        char num[64];
        if (!first) sb_puts(&h, ",");
        first = false;
        sb_json_string(&h, t->name);
        sb_puts(&h, ":{\"dtype\":\"");
        sb_puts(&h, hc_dtype_name(t->dtype));
        sb_puts(&h, "\",\"shape\":[");
        for (int d = 0; d < t->n_dims; d++) {
            if (t->shape[d] < 0) {
                s = hc_fail(HC_ERR_INVALID_ARG, "%s: tensor '%s' has a negative dimension", path, t->name);
                break;
            }
            nb *= (uint64_t)t->shape[d];
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)t->shape[d]);
            sb_puts(&h, num);
        }
        if (s) break;
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)(off + nb));
        sb_puts(&h, num);
        off += nb;
    }
    sb_puts(&h, "}");
    /* Pad with spaces so the data buffer starts 64-byte aligned (the format asks for 8): mapped,
     * the weights' vector loads then do not straddle cache lines. */
    while (!h.oom && (8 + h.len) % 64 != 0) sb_puts(&h, " ");
    if (!s && h.oom) s = hc_fail(HC_ERR_NOMEM, "out of memory");
    if (s) {
        free(h.buf);
        free(order);
        return s;
    }
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    if (!tmp) {
        free(h.buf);
        free(order);
        return hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    snprintf(tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        s = hc_fail(HC_ERR_IO, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    uint8_t len8[8];
    uint64_t hl = h.len;
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)(hl >> (8 * i));
    bool ok = write_all(fd, len8, 8) && write_all(fd, h.buf, h.len);
    for (int64_t i = 0; ok && i < n; i++) {
        uint64_t nb = hc_dtype_size(order[i]->dtype);
        for (int d = 0; d < order[i]->n_dims; d++) nb *= (uint64_t)order[i]->shape[d];
        if (nb) ok = write_all(fd, order[i]->data, (size_t)nb);
    }
    if (ok) ok = fsync(fd) == 0;
    int e = errno;
    if (close(fd) != 0) ok = false;
    if (!ok) {
        unlink(tmp);
        s = hc_fail(HC_ERR_IO, "%s: write failed: %s", path, strerror(e));
        goto out;
    }
    if (rename(tmp, path) != 0) {
        e = errno;
        unlink(tmp);
        s = hc_fail(HC_ERR_IO, "%s: rename failed: %s", path, strerror(e));
    }
out:
    free(tmp);
    free(h.buf);
    free(order);
    return s;
}
