/* safetensors: the reader (zero-copy views into a mapping) and the writer.
 *
 * File layout: u64 little-endian N, then N bytes of JSON header, then the data buffer.
 * The header maps names to {dtype, shape, data_offsets: [begin, end]} relative to the data
 * buffer, plus an optional "__metadata__" of string values. */
#ifndef HC_FORMAT_SAFETENSORS_H
#define HC_FORMAT_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/file.h"
#include "format/json.h"
#include "hubcap.h"

/* The largest header we accept, as the reference implementation does. */
#define HC_SAFETENSORS_MAX_HEADER 100000000u

typedef struct {
    char *path;
    hc_file_map map;
    hc_json_doc header;       /* owns the tensor names */
    const hc_json *metadata;  /* "__metadata__" object, or NULL */
    hc_tensor_info *tensors;  /* sorted by name */
    int64_t n_tensors;
} hc_safetensors;

/* Maps and validates a file. On failure nothing is held. */
hc_status hc_safetensors_open(hc_safetensors *st, const char *path, bool use_mmap);

/* Validates bytes[0..size) as a whole safetensors file and fills tensors (views into bytes).
 * `source` names it in errors. Used by open() and by the fuzzer. */
hc_status hc_safetensors_parse(hc_safetensors *st, const uint8_t *bytes, size_t size, const char *source);

void hc_safetensors_close(hc_safetensors *st);

const hc_tensor_info *hc_safetensors_find(const hc_safetensors *st, const char *name);

/* Parses a dtype name ("BF16"); false if unknown. */
bool hc_dtype_from_name(const char *name, hc_dtype *out);

#endif
