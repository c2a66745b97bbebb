/* hubcap bench: prompt and decode speed, peak memory and bytes read per token. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "cli.h"
#include "base/status.h"
#include "format/json.h"

static const char help[] =
    "usage: hubcap bench [-m MODEL] [--prompt N] [--gen N] [--batch N] [--device cpu|cuda] [--threads N]\n"
    "                    [--quantize q8_0|q4_0|q4_k] [--mmap] [--no-repack] [--json]\n"
    "\n"
    "Runs a prompt of N random tokens, then decodes --gen tokens greedily, and prints prompt\n"
    "tok/s, decode tok/s, peak RSS and the weight bytes read per decoded token. The weights are\n"
    "read into RAM (--no-mmap) unless --mmap: a page-cache reclaimer can otherwise evict mapped\n"
    "weights mid-run.\n"
    "\n"
    "  -m, --model DIR    the model (default: the bundled stories260K)\n"
    "  --prompt N         prompt length (default 512)\n"
    "  --gen N            tokens to decode (default 128)\n"
    "  --batch N          decode N sequences together through generation (each with its own\n"
    "                     N-token prompt; greedy ids are picked on a GPU) and report their\n"
    "                     total decode tok/s; without it, one session's raw forward loop\n"
    "  --json             print one JSON object\n" CLI_MODEL_FLAGS_HELP
    "  --mmap             map the weights instead of reading them\n";

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const char *dtype_lower(hc_dtype dt) {
    return dt == HC_DTYPE_BF16 ? "bf16" : dt == HC_DTYPE_F16 ? "f16" : "f32";
}

/* --batch N: N sequences through hc_generate_ids, greedy, none stopping early. */
static hc_status bench_batch(hc_model *m, const char *model, int64_t n_prompt, int64_t n_gen, int64_t n_batch,
                             double load_s, bool json) {
    const int64_t V = hc_model_vocab_size(m);
    int32_t *all = malloc(sizeof(int32_t) * (size_t)(n_prompt * n_batch));
    const int32_t **ids = malloc(sizeof *ids * (size_t)n_batch);
    int64_t *lens = malloc(sizeof *lens * (size_t)n_batch);
    hc_generation *out = calloc((size_t)n_batch, sizeof *out);
    if (!all || !ids || !lens || !out) {
        free(all), free(ids), free(lens), free(out);
        return hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    uint64_t x = 42;
    for (int64_t i = 0; i < n_prompt * n_batch; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        all[i] = (int32_t)((x >> 33) % (uint64_t)V);
    }
    for (int64_t b = 0; b < n_batch; b++) ids[b] = all + b * n_prompt, lens[b] = n_prompt;
    hc_generate_params p = hc_generate_default_params(m);
    p.sampling = hc_sampler_default_params();
    p.max_new_tokens = n_gen;
    p.ignore_eos = true;
    hc_timings tm = {0};
    hc_status st = HC_OK;
    /* On a GPU the first run also loads kernels and picks GEMM algorithms: it warms up, untimed. */
    for (int run = hc_model_device_weight_bytes(m) > 0 ? 0 : 1; !st && run < 2; run++) {
        memset(&tm, 0, sizeof tm);
        st = hc_generate_ids(m, ids, lens, n_batch, &p, out, &tm);
        for (int64_t b = 0; !st && b < n_batch; b++) hc_generation_free(&out[b]);
    }
    free(all), free(ids), free(lens), free(out);
    if (st) return st;
    const double ptps = (double)tm.prompt_tokens / tm.prompt_s, dtps = (double)tm.new_tokens / tm.decode_s;
    if (json) {
        hc_str mj = {0};
        if (!hc_json_put_string(&mj, model)) return hc_fail(HC_ERR_NOMEM, "out of memory");
        printf("{\"model\":%s,\"device\":\"%s\",\"compute_dtype\":\"%s\",\"batch\":%lld,\"load_s\":%.3f,"
               "\"prompt_tokens\":%lld,\"gen_tokens\":%lld,\"prompt_tok_s\":%.2f,\"decode_tok_s\":%.2f,"
               "\"decode_tok_s_per_seq\":%.2f}\n",
               mj.data, hc_model_device_name(m), dtype_lower(hc_model_compute_dtype(m)), (long long)n_batch, load_s,
               (long long)tm.prompt_tokens, (long long)tm.new_tokens, ptps, dtps, dtps / (double)n_batch);
        hc_str_free(&mj);
    } else {
        printf("batch %lld | prompt %lld tokens: %.1f tok/s | decode %lld tokens: %.1f tok/s (%.1f per sequence) | %s %s\n",
               (long long)n_batch, (long long)tm.prompt_tokens, ptps, (long long)tm.new_tokens, dtps,
               dtps / (double)n_batch, hc_model_device_name(m), dtype_lower(hc_model_compute_dtype(m)));
    }
    return HC_OK;
}

int cmd_bench(int argc, char **argv) {
    const char *model = NULL;
    int64_t n_prompt = 512, n_gen = 128, n_batch = 1;
    bool batch_given = false; /* --batch N, even 1: through hc_generate_ids, as applications decode */
    bool json = false;
    hc_model_params mp;
    if (!cli_model_defaults(&mp, "bench")) return EXIT_USAGE;
    mp.use_mmap = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int mf;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(help, stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(model = cli_value(argc, argv, &i, "bench"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--prompt")) {
            if (!(v = cli_value(argc, argv, &i, "bench"))) return EXIT_USAGE;
            if (!cli_parse_int(v, 1, 1 << 20, &n_prompt)) return cli_usage_error("bench", "--prompt must be a positive integer");
        } else if (!strcmp(a, "--gen")) {
            if (!(v = cli_value(argc, argv, &i, "bench"))) return EXIT_USAGE;
            if (!cli_parse_int(v, 0, 1 << 20, &n_gen)) return cli_usage_error("bench", "--gen must be an integer >= 0");
        } else if (!strcmp(a, "--batch")) {
            if (!(v = cli_value(argc, argv, &i, "bench"))) return EXIT_USAGE;
            if (!cli_parse_int(v, 1, 4096, &n_batch)) return cli_usage_error("bench", "--batch must be an integer from 1 to 4096");
            batch_given = true;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if ((mf = cli_model_flag(argc, argv, &i, "bench", &mp)) != 0) {
            if (mf < 0) return EXIT_USAGE;
        } else {
            return cli_usage_error("bench", "unknown option '%s'", a);
        }
    }
    if (!model) model = cli_default_model();
    double t0 = now_s();
    hc_model *m;
    hc_status st = hc_model_load(model, &mp, &m);
    if (st) return cli_fail("bench", st);
    const double load_s = now_s() - t0;
    const int64_t V = hc_model_vocab_size(m);
    if (batch_given) {
        st = bench_batch(m, model, n_prompt, n_gen, n_batch, load_s, json);
        hc_model_free(m);
        return st ? cli_fail("bench", st) : EXIT_OK;
    }
    hc_session *s;
    st = hc_session_new(m, n_prompt + n_gen, &s);
    if (st) {
        hc_model_free(m);
        return cli_fail("bench", st);
    }
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n_prompt);
    float *logits = malloc(sizeof(float) * (size_t)V);
    uint64_t x = 42;
    for (int64_t i = 0; i < n_prompt; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((x >> 33) % (uint64_t)V);
    }
    const bool on_gpu = hc_model_device_weight_bytes(m) > 0;
    if (!json && on_gpu)
        fprintf(stderr, "hubcap bench: %s on %s, %.2f GB of weights on the GPU, %s compute\n", model,
                hc_model_device_name(m), (double)hc_model_device_weight_bytes(m) / 1e9,
                dtype_lower(hc_model_compute_dtype(m)));
    else if (!json)
        fprintf(stderr, "hubcap bench: %s, weights %s, %s kernels\n", model,
                mp.weights != HC_WEIGHTS_AS_STORED ? "quantized into RAM (read from a mapping, which is given back)"
                : mp.use_mmap                      ? "mapped"
                : hc_model_repacked(m)             ? "read into RAM, bf16 rows interleaved in 16s"
                                                   : "read into RAM",
                hc_cpu_kernels());
    /* Warm-up, untimed: on a GPU the first prompt also loads kernels and picks GEMM algorithms,
     * so it runs once first and the median of three timed runs counts (as transformers' bench
     * does); on the CPU a few tokens fault the buffers in. */
    const int reps = on_gpu ? 3 : 1;
    st = hc_session_forward(s, ids, on_gpu ? n_prompt : (n_prompt < 8 ? n_prompt : 8), logits, false);
    double runs[3] = {0};
    for (int r = 0; !st && r < reps; r++) {
        hc_session_reset(s);
        t0 = now_s();
        st = hc_session_forward(s, ids, n_prompt, logits, false);
        runs[r] = now_s() - t0;
    }
    if (reps == 3) { /* the median */
        for (int a = 0; a < 2; a++)
            for (int b = a + 1; b < 3; b++)
                if (runs[b] < runs[a]) {
                    const double tmp = runs[a];
                    runs[a] = runs[b], runs[b] = tmp;
                }
    }
    const double prompt_s = runs[reps / 2];
    t0 = now_s();
    /* greedy: on a GPU the argmax is taken there, as hubcap generate does, and only ids come back */
    int32_t best = 0;
    for (int64_t v = 1; v < V; v++)
        if (logits[v] > logits[best]) best = (int32_t)v;
    for (int64_t i = 0; !st && i < n_gen; i++) st = hc_session_forward_greedy(s, &best, 1, &best);
    const double gen_s = now_s() - t0;
    free(ids);
    free(logits);
    if (st) {
        hc_session_free(s);
        hc_model_free(m);
        return cli_fail("bench", st);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    const long long rss = (long long)ru.ru_maxrss * 1024;
    const long long bpt = (long long)hc_model_weight_bytes_per_token(m);
    /* the KV cache a decoded token reads besides, on average over the decode: token i attends to
     * the prompt and i + 1 generated positions */
    double kv = 0;
    for (int64_t i = 0; i < n_gen; i++) kv += (double)hc_model_kv_bytes_per_token(m, n_prompt + i + 1);
    const long long kvpt = n_gen ? (long long)(kv / (double)n_gen) : 0;
    const double ptps = (double)n_prompt / prompt_s, dtps = n_gen ? (double)n_gen / gen_s : 0;
    const char *fmt = mp.weights == HC_WEIGHTS_Q8_0   ? "q8_0"
                      : mp.weights == HC_WEIGHTS_Q4_0 ? "q4_0"
                      : mp.weights == HC_WEIGHTS_Q4_K ? "q4_k"
                                                      : "as stored";
    hc_str model_json = {0}; /* the path as a JSON string, quotes included */
    if (json && !hc_json_put_string(&model_json, model)) {
        hc_str_free(&model_json);
        hc_session_free(s);
        hc_model_free(m);
        fprintf(stderr, "hubcap bench: out of memory\n");
        return EXIT_ERROR;
    }
    if (json)
        printf("{\"model\":%s,\"device\":\"%s\",\"weights\":\"%s\",\"kernels\":\"%s\",\"compute_dtype\":\"%s\",\"mmap\":%s,\"repacked\":%s,\"load_s\":%.3f,\"prompt_tokens\":%lld,"
               "\"gen_tokens\":%lld,\"prompt_tok_s\":%.2f,\"decode_tok_s\":%.2f,\"peak_rss_bytes\":%lld,"
               "\"bytes_per_token\":%lld,\"decode_read_gb_s\":%.2f,\"kv_bytes_per_token\":%lld,\"decode_read_with_kv_gb_s\":%.2f}\n",
               model_json.data, hc_model_device_name(m), fmt, on_gpu ? "cuda" : hc_cpu_kernels(),
               dtype_lower(hc_model_compute_dtype(m)), mp.use_mmap ? "true" : "false", hc_model_repacked(m) ? "true" : "false", load_s, (long long)n_prompt,
               (long long)n_gen, ptps, dtps, rss, bpt, dtps * (double)bpt / 1e9, kvpt, dtps * (double)(bpt + kvpt) / 1e9);
    else
        printf("load %.2f s | prompt %lld tokens: %.1f tok/s | decode %lld tokens: %.2f tok/s | peak RSS %.2f GB | "
               "%.1f MB of weights read per token (%.1f GB/s), %.1f MB of KV cache | weights %s\n",
               load_s, (long long)n_prompt, ptps, (long long)n_gen, dtps, (double)rss / 1e9, (double)bpt / 1e6,
               dtps * (double)bpt / 1e9, (double)kvpt / 1e6, fmt);
    hc_str_free(&model_json);
    hc_session_free(s);
    hc_model_free(m);
    return EXIT_OK;
}
