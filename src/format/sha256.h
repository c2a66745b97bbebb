/* SHA-256 (FIPS 180-4), for verifying downloaded LFS files against their etag. */
#ifndef HC_FORMAT_SHA256_H
#define HC_FORMAT_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t bits;
    uint8_t buf[64];
    size_t n;
} hc_sha256;

void hc_sha256_init(hc_sha256 *s);
void hc_sha256_update(hc_sha256 *s, const void *data, size_t len);
void hc_sha256_final(hc_sha256 *s, char hex[65]); /* lowercase hex, NUL-terminated */

#endif
