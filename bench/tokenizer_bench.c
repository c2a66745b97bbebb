/* Tokenizer speed: load time of a tokenizer folder, and encode throughput on mixed text.
 * usage: bench_tokenizer DIR [TEXTFILE] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/file.h"
#include "hubcap.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* About 1 MB of mixed text: English prose, code, numbers, CJK, Cyrillic, emoji. */
static char *mixed_text(size_t *n) {
    static const char *parts[] = {
        "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times. ",
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n",
        "In 2023, revenue grew 14.7% to $3,141,592.65 (vs. 2,718,281 in 2022). ",
        "東京は日本の首都です。人口は約1400万人です。 ",
        "Привет, как дела? Всё хорошо, спасибо. ",
        "Emoji time 🎉🚀 — naïve café résumé, ¿qué tal? ",
        "    for (int i = 0; i < n; i++) { sum += a[i] * b[i]; }\n",
    };
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap + 512);
    for (unsigned i = 0; len < cap; i = (i * 7 + 3) % 7) {
        size_t l = strlen(parts[i]);
        memcpy(buf + len, parts[i], l);
        len += l;
    }
    buf[len] = 0;
    *n = len;
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [TEXTFILE]\n", argv[0]);
        return 2;
    }
    double t0 = now();
    hc_tokenizer *t;
    if (hc_tokenizer_load(argv[1], NULL, &t)) {
        fprintf(stderr, "%s\n", hc_last_error());
        return 1;
    }
    double load = now() - t0;
    size_t n;
    char *text;
    if (argc > 2) {
        if (hc_file_read_all(argv[2], &text, &n)) {
            fprintf(stderr, "%s\n", hc_last_error());
            return 1;
        }
    } else {
        text = mixed_text(&n);
    }
    hc_tokens ids = {0};
    double best = 1e9;
    for (int r = 0; r < 3; r++) {
        double a = now();
        if (hc_tokenizer_encode(t, text, n, false, &ids)) {
            fprintf(stderr, "%s\n", hc_last_error());
            return 1;
        }
        double s = now() - a;
        if (s < best) best = s;
    }
    printf("tokenizer %s: load %.3f s; encode %.2f MB -> %lld tokens in %.3f s (%.2f MB/s, best of 3)\n", argv[1], load,
           (double)n / 1e6, (long long)ids.n, best, (double)n / 1e6 / best);
    hc_tokens_free(&ids);
    hc_tokenizer_free(t);
    free(text);
    return 0;
}
