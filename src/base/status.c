#include "base/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[1024];

const char *hc_status_name(hc_status st) {
    switch (st) {
#define NAME_CASE(name, code, desc) case HC_##name: return "HC_" #name;
        HC_STATUS_MAP(NAME_CASE)
#undef NAME_CASE
    }
    return "HC_UNKNOWN";
}

const char *hc_status_describe(hc_status st) {
    switch (st) {
#define DESC_CASE(name, code, desc) case HC_##name: return desc;
        HC_STATUS_MAP(DESC_CASE)
#undef DESC_CASE
    }
    return "unknown status";
}

const char *hc_last_error(void) { return last_error; }

void hc_error_clear(void) { last_error[0] = 0; }

hc_status hc_fail(hc_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return st;
}
