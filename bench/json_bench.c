/* Times the JSON parser on a file (the 33 MB Gemma 3 tokenizer.json is the target).
 * usage: bench_json FILE [REPEATS] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "base/file.h"
#include "format/json.h"

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [REPEATS]\n", argv[0]);
        return 2;
    }
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    char *text;
    size_t n;
    if (hc_file_read_all(argv[1], &text, &n)) {
        fprintf(stderr, "%s\n", hc_last_error());
        return 1;
    }
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        hc_json_doc doc;
        if (hc_json_parse(&doc, text, n, argv[1])) {
            fprintf(stderr, "%s\n", hc_last_error());
            return 1;
        }
        hc_json_free(&doc);
        clock_gettime(CLOCK_MONOTONIC, &b);
        double s = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
        if (s < best) best = s;
    }
    printf("hubcap json: %.1f MB in %.3f s (%.0f MB/s, best of %d)\n", (double)n / 1e6, best, (double)n / 1e6 / best,
           reps);
    free(text);
    return 0;
}
