/* Per-token cost of the sampler chain on a 262,144-token vocabulary (Gemma 3's size).
 * usage: bench_sampler [VOCAB] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hubcap.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    const int64_t V = argc > 1 ? atoll(argv[1]) : 262144;
    float *base = malloc(sizeof(float) * (size_t)V), *l = malloc(sizeof(float) * (size_t)V);
    uint64_t x = 1;
    for (int64_t i = 0; i < V; i++) { /* a peaked, realistic-looking distribution */
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        double u = (double)(x >> 11) / 9007199254740992.0;
        base[i] = (float)(4.0 * log(u + 1e-12) / 3.0);
    }
    int32_t hist[256];
    for (int i = 0; i < 256; i++) hist[i] = (int32_t)((i * 7919) % V);
    struct {
        const char *name;
        hc_sampler_params p;
    } cases[6];
    for (int i = 0; i < 6; i++) cases[i].p = hc_sampler_default_params();
    cases[0].name = "greedy";
    cases[1].name = "temperature 0.8";
    cases[1].p.temperature = 0.8f;
    cases[2].name = "top-k 40";
    cases[2].p.temperature = 0.8f, cases[2].p.top_k = 40;
    cases[3].name = "top-p 0.9 (no top-k)";
    cases[3].p.temperature = 0.8f, cases[3].p.top_p = 0.9f;
    cases[4].name = "min-p 0.05";
    cases[4].p.temperature = 0.8f, cases[4].p.min_p = 0.05f;
    cases[5].name = "penalties + top-k 50 + top-p 0.9 + min-p";
    cases[5].p.temperature = 0.8f, cases[5].p.top_k = 50, cases[5].p.top_p = 0.9f, cases[5].p.min_p = 0.05f;
    cases[5].p.repetition_penalty = 1.1f, cases[5].p.presence_penalty = 0.1f;
    for (int c = 0; c < 6; c++) {
        hc_sampler *s;
        if (hc_sampler_new(&cases[c].p, V, &s)) {
            fprintf(stderr, "%s\n", hc_last_error());
            return 1;
        }
        const int reps = 200;
        double t0 = now();
        for (int r = 0; r < reps; r++) {
            memcpy(l, base, sizeof(float) * (size_t)V);
            hc_sampler_sample(s, l, hist, 256);
        }
        double us = (now() - t0) / reps * 1e6;
        printf("sampler V=%lld %-42s %8.1f us/token\n", (long long)V, cases[c].name, us);
        hc_sampler_free(s);
    }
    free(base);
    free(l);
    return 0;
}
