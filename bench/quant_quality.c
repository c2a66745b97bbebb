/* The quality cost of quantizing on load: for each model and reference prompt, the mean KL
 * divergence of next-token distributions from the unquantized model, and how many of 20
 * greedy tokens agree.  usage: bench_quant_quality DIR... */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/safetensors.h"
#include "hubcap.h"

static void softmax(double *p, const float *l, int64_t V) {
    double mx = -INFINITY, s = 0;
    for (int64_t i = 0; i < V; i++) mx = fmax(mx, l[i]);
    for (int64_t i = 0; i < V; i++) s += (p[i] = exp(l[i] - mx));
    for (int64_t i = 0; i < V; i++) p[i] /= s;
}

int main(int argc, char **argv) {
    printf("%-14s %-6s %10s %10s\n", "model", "format", "mean KL", "greedy");
    for (int a = 1; a < argc; a++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/reference.safetensors", argv[a]);
        hc_safetensors ref;
        if (hc_safetensors_open(&ref, path, true)) {
            fprintf(stderr, "%s\n", hc_last_error());
            continue;
        }
        const char *name = strrchr(argv[a], '/') ? strrchr(argv[a], '/') + 1 : argv[a];
        hc_model *base;
        hc_model_params mp = hc_model_default_params();
        mp.compute_dtype = HC_DTYPE_F32; /* the unquantized model in f32, as HF's references */
        if (hc_model_load(argv[a], &mp, &base)) {
            fprintf(stderr, "%s\n", hc_last_error());
            continue;
        }
        const int64_t V = hc_model_vocab_size(base);
        for (int q = 1; q <= 3; q++) {
            mp.weights = (hc_weight_format)q;
            hc_model *m;
            if (hc_model_load(argv[a], &mp, &m)) continue;
            double kl = 0;
            int64_t positions = 0, agree = 0, total = 0;
            for (int i = 0; i < 8; i++) {
                char key[32];
                snprintf(key, sizeof key, "prompt%d", i);
                const hc_tensor_info *tp = hc_safetensors_find(&ref, key);
                if (!tp) break;
                const int64_t T = tp->shape[1];
                int32_t *ids = malloc(sizeof(int32_t) * (size_t)T);
                for (int64_t t = 0; t < T; t++) ids[t] = (int32_t)((const int64_t *)tp->data)[t];
                float *la = malloc(sizeof(float) * (size_t)(T * V)), *lb = malloc(sizeof(float) * (size_t)(T * V));
                double *pa = malloc(sizeof(double) * (size_t)V), *pb = malloc(sizeof(double) * (size_t)V);
                hc_session *sa, *sb;
                hc_session_new(base, T, &sa);
                hc_session_new(m, T, &sb);
                hc_session_forward(sa, ids, T, la, true);
                hc_session_forward(sb, ids, T, lb, true);
                for (int64_t t = 0; t < T; t++) {
                    softmax(pa, la + t * V, V);
                    softmax(pb, lb + t * V, V);
                    double d = 0;
                    for (int64_t v = 0; v < V; v++)
                        if (pa[v] > 0) d += pa[v] * log(pa[v] / fmax(pb[v], 1e-300));
                    kl += d;
                    positions++;
                }
                hc_generate_params gp = hc_generate_default_params(base);
                gp.max_new_tokens = 20;
                gp.ignore_eos = true;
                gp.sampling = hc_sampler_default_params();
                hc_generation ga, gb;
                const int32_t *pid = ids;
                hc_generate_ids(base, &pid, &T, 1, &gp, &ga, NULL);
                hc_generate_ids(m, &pid, &T, 1, &gp, &gb, NULL);
                for (int64_t k = 0; k < ga.n_ids && k < gb.n_ids; k++) agree += ga.ids[k] == gb.ids[k];
                total += ga.n_ids;
                hc_generation_free(&ga);
                hc_generation_free(&gb);
                hc_session_free(sa);
                hc_session_free(sb);
                free(ids), free(la), free(lb), free(pa), free(pb);
            }
            printf("%-14s %-6s %10.5f %6lld/%lld\n", name, q == 1 ? "q8_0" : q == 2 ? "q4_0" : "q4_k", kl / (double)positions,
                   (long long)agree, (long long)total);
            hc_model_free(m);
        }
        hc_model_free(base);
        hc_safetensors_close(&ref);
    }
    return 0;
}
