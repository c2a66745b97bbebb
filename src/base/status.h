/* Status and messages: every failing library call records one line here. */
#ifndef HC_BASE_STATUS_H
#define HC_BASE_STATUS_H

#include "hubcap.h"

#if defined(__GNUC__)
#define HC_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define HC_PRINTF(a, b)
#endif

/* Records the message for hc_last_error() and returns st, so callers write
 * `return hc_fail(HC_ERR_FORMAT, "%s: bad header", path);`. */
hc_status hc_fail(hc_status st, const char *fmt, ...) HC_PRINTF(2, 3);

void hc_error_clear(void);

#endif
