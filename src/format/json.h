/* A strict JSON (RFC 8259) parser into an arena-backed tree.
 *
 * Strict: no trailing commas, comments, NaN, leading zeros or raw control characters; strings
 * must be valid UTF-8 (escaped surrogates must pair). Errors name the file, line and column.
 * Duplicate object keys are kept; hc_json_get returns the last one, as Python's json does. */
#ifndef HC_FORMAT_JSON_H
#define HC_FORMAT_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/arena.h"
#include "base/strbuf.h"
#include "hubcap.h"

typedef enum { HC_JSON_NULL, HC_JSON_BOOL, HC_JSON_NUMBER, HC_JSON_STRING, HC_JSON_ARRAY, HC_JSON_OBJECT } hc_json_type;

typedef struct hc_json hc_json;
typedef struct hc_json_member hc_json_member;

struct hc_json {
    hc_json_type type;
    bool is_int;  /* NUMBER written without fraction or exponent, and fits int64 */
    size_t len;   /* STRING: bytes (NUL-terminated too); ARRAY/OBJECT: entries */
    union {
        bool b;
        struct {
            double d;
            int64_t i;
        } num;
        const char *str;
        hc_json *items;           /* ARRAY */
        hc_json_member *members;  /* OBJECT, in file order */
    } u;
};

struct hc_json_member {
    const char *key;
    size_t key_len;
    hc_json value;
};

typedef struct {
    hc_arena arena;
    hc_json *root;
} hc_json_doc;

/* Parses text[0..len). `source` names the input in errors ("config.json"). On failure the
 * doc holds nothing and needs no free, but freeing it is harmless. */
hc_status hc_json_parse(hc_json_doc *doc, const char *text, size_t len, const char *source);
/* Reads and parses a file. */
hc_status hc_json_parse_file(hc_json_doc *doc, const char *path);
void hc_json_free(hc_json_doc *doc);

/* Lookups: NULL when absent or of another type. */
const hc_json *hc_json_get(const hc_json *obj, const char *key);
const hc_json *hc_json_at(const hc_json *arr, size_t i);
bool hc_json_is_null(const hc_json *v); /* true also for NULL (absent) */

/* Typed reads with defaults for absent or null values. */
const char *hc_json_str(const hc_json *obj, const char *key, const char *dflt);

/* Text of a JSON string with escapes for the output of `hubcap ... --json`. */
void hc_json_write_string(void *file /* FILE* */, const char *s);
/* Appends s as a quoted JSON string; false when out of memory. */
bool hc_json_put_string(hc_str *o, const char *s);
/* Writes v as JSON to a FILE*, two-space indented as Python's json.dumps(indent=2); the
 * top-level object keys named in `set` (n_set pairs of key and already-encoded JSON value) get
 * those values instead. Floats print as the shortest text that reads back the same. */
void hc_json_write(void *file, const hc_json *v, const char *const *set, int n_set);

#endif
