/* A small test harness: CHECK records a failure and goes on; the closing line counts. */
#ifndef HC_TEST_UTIL_H
#define HC_TEST_UTIL_H

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hubcap.h"

static int test_failures, test_checks;

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        test_checks++;                                                                                                 \
        if (!(cond)) {                                                                                                 \
            test_failures++;                                                                                           \
            fprintf(stderr, "%s:%d: FAIL: %s: ", __FILE__, __LINE__, #cond);                                           \
            fprintf(stderr, __VA_ARGS__);                                                                              \
            fprintf(stderr, "\n");                                                                                     \
        }                                                                                                              \
    } while (0)

#define CHECK_OK(expr)                                                                                                 \
    do {                                                                                                               \
        hc_status st_ = (expr);                                                                                        \
        CHECK(st_ == HC_OK, "%s -> %s: %s", #expr, hc_status_name(st_), hc_last_error());                             \
    } while (0)

static inline int test_finish(const char *name) {
    printf("%s: %d checks, %d passed, %d failed\n", name, test_checks, test_checks - test_failures, test_failures);
    return test_failures ? 1 : 0;
}

/* The source tree (for bundled fixtures) and the shared fixtures folder. */
static inline const char *test_source_dir(void) {
    const char *s = getenv("HUBCAP_SOURCE_DIR");
    return s ? s : HUBCAP_SOURCE_DIR_DEFAULT;
}

static inline const char *test_shared_fixtures(void) {
    const char *s = getenv("HUBCAP_FIXTURES");
    return s ? s : HUBCAP_SOURCE_DIR_DEFAULT "/../shared/fixtures";
}

/* Model parameters for tests: the device and compute dtype come from HUBCAP_TEST_DEVICE (cpu,
 * cuda) and HUBCAP_TEST_DTYPE (f32, bf16, f16), so the same tests also run on a GPU (ctest label
 * cuda). Unset: the CPU in f32. bf16 on the CPU reads the weights into RAM, so bf16 checkpoints
 * run repacked (bf16r16), as `hubcap bench` runs them; tests that train turn repack off. */
static inline hc_model_params test_model_params(void) {
    hc_model_params mp = hc_model_default_params();
    const char *dev = getenv("HUBCAP_TEST_DEVICE"), *dt = getenv("HUBCAP_TEST_DTYPE");
    if (dev && !strcmp(dev, "cuda")) mp.device = HC_DEVICE_CUDA;
    mp.compute_dtype = HC_DTYPE_F32;
    if (dt && !strcmp(dt, "bf16")) mp.compute_dtype = HC_DTYPE_BF16;
    if (dt && !strcmp(dt, "bf16") && mp.device == HC_DEVICE_CPU) mp.use_mmap = false, mp.repack = true;
    if (dt && !strcmp(dt, "f16")) mp.compute_dtype = HC_DTYPE_F16;
    return mp;
}

static inline hc_status test_load_model(const char *dir, hc_model **m) {
    hc_model_params mp = test_model_params();
    return hc_model_load(dir, &mp, m);
}

/* True when tests run with a 16-bit compute dtype (tolerances become statistical). */
static inline bool test_low_precision(void) {
    const char *dt = getenv("HUBCAP_TEST_DTYPE");
    return dt && (!strcmp(dt, "bf16") || !strcmp(dt, "f16"));
}

/* Copies a file (tests build broken or partial model folders from fixtures). */
/* Removes a folder of plain files (what the tests write), then the folder. */
static inline void test_rm_dir(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[8400];
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.' && snprintf(p, sizeof p, "%s/%s", dir, e->d_name) < (int)sizeof p) unlink(p);
    if (d) closedir(d);
    rmdir(dir);
}

static inline void test_copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb"), *out = in ? fopen(to, "wb") : NULL;
    char buf[65536];
    size_t n;
    while (in && out && (n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
    if (in) fclose(in);
    if (out) fclose(out);
}

#endif
