/* Patterns of tokenizer.json: {"String": literal} or {"Regex": pcre}. HF tokenizers uses
 * Oniguruma; PCRE2 with UTF and UCP agrees on the patterns real tokenizers use (\p{L}, \p{N},
 * (?i:...), lookahead). */
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "tokenizer/tokenizer_internal.h"

hc_status hc_regex_compile(hc_regex *re, const char *pattern, bool literal, const char *src) {
    memset(re, 0, sizeof *re);
    if (literal) {
        re->literal_len = strlen(pattern);
        re->literal = malloc(re->literal_len + 1);
        if (!re->literal) return hc_fail(HC_ERR_NOMEM, "out of memory");
        memcpy(re->literal, pattern, re->literal_len + 1);
        return HC_OK;
    }
    int err;
    PCRE2_SIZE off;
    re->code = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK,
                             &err, &off, NULL);
    if (!re->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return hc_fail(HC_ERR_UNSUPPORTED, "%s: regex /%s/ does not compile at offset %zu: %s", src, pattern,
                       (size_t)off, (const char *)msg);
    }
    pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE); /* optional: falls back to the interpreter */
    return HC_OK;
}

bool hc_regex_next(hc_regex *re, const char *s, size_t n, size_t from, size_t *ms, size_t *me) {
    if (re->literal) {
        if (re->literal_len == 0) return false;
        for (size_t i = from; i + re->literal_len <= n; i++) {
            if (memcmp(s + i, re->literal, re->literal_len) == 0) {
                *ms = i;
                *me = i + re->literal_len;
                return true;
            }
        }
        return false;
    }
    /* Match data is per thread, so one tokenizer can encode on several threads at once. */
    static _Thread_local pcre2_match_data *md;
    if (!md && !(md = pcre2_match_data_create(32, NULL))) return false;
    while (from <= n) {
        int rc = pcre2_match(re->code, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc < 0) return false;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] > ov[0]) {
            *ms = ov[0];
            *me = ov[1];
            return true;
        }
        /* An empty match: step over one character and look again. */
        from = ov[0] + 1;
        while (from < n && ((unsigned char)s[from] & 0xC0) == 0x80) from++;
    }
    return false;
}

void hc_regex_free(hc_regex *re) {
    if (re->code) pcre2_code_free(re->code);
    free(re->literal);
    memset(re, 0, sizeof *re);
}

hc_status hc_regex_from_json(hc_regex *re, const hc_json *pattern, const char *src, const char *where) {
    const char *lit = hc_json_str(pattern, "String", NULL);
    if (lit) return hc_regex_compile(re, lit, true, src);
    const char *rx = hc_json_str(pattern, "Regex", NULL);
    if (rx) return hc_regex_compile(re, rx, false, src);
    return hc_fail(HC_ERR_FORMAT, "%s: %s.pattern must be {\"String\": ...} or {\"Regex\": ...}", src, where);
}
