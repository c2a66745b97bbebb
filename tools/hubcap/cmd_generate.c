/* hubcap generate: continue a prompt with the KV cache, one token at a time. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

static const char help[] =
    "usage: hubcap generate [-m DIR] --ids \"1 2 3\" [options]\n"
    "\n"
    "Runs the prompt, then decodes one token at a time with the KV cache (greedy).\n"
    "\n"
    "  -m, --model DIR        the snapshot folder (default: the bundled stories260K)\n"
    "  --ids LIST             prompt token ids, separated by spaces or commas\n"
    "  --max-new-tokens N     how many tokens to generate (default 32)\n"
    "  --temperature T        0 = greedy (the only mode until sampling lands)\n"
    "  --ignore-eos           do not stop at the model's EOS ids\n"
    "  --output-ids           print the new ids, space separated, on one line (default: the\n"
    "                         new text, when the folder has a tokenizer)\n"
    "  --timings              print load, prompt and decode times to stderr\n"
    "  --ctx N                context length (default: the model's max_position_embeddings)\n"
    "  --device D             cpu (default), cuda or auto\n"
    "  --no-mmap              read weights into memory instead of mapping them\n";

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int32_t argmax(const float *x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i; /* the first maximum wins, as torch.argmax */
    return (int32_t)best;
}

int cmd_generate(int argc, char **argv) {
    const char *model = NULL, *ids_text = NULL;
    int64_t max_new = 32, ctx = 0;
    double temperature = 0;
    bool ignore_eos = false, output_ids = false, timings = false;
    hc_model_params mp = hc_model_default_params();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(help, stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(model = cli_value(argc, argv, &i, "generate"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--ids")) {
            if (!(ids_text = cli_value(argc, argv, &i, "generate"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--max-new-tokens")) {
            if (!(v = cli_value(argc, argv, &i, "generate"))) return EXIT_USAGE;
            if (!cli_parse_int(v, 0, INT32_MAX, &max_new))
                return cli_usage_error("generate", "--max-new-tokens must be a non-negative integer");
        } else if (!strcmp(a, "--ctx")) {
            if (!(v = cli_value(argc, argv, &i, "generate"))) return EXIT_USAGE;
            if (!cli_parse_int(v, 1, INT32_MAX, &ctx)) return cli_usage_error("generate", "--ctx must be a positive integer");
        } else if (!strcmp(a, "--temperature")) {
            if (!(v = cli_value(argc, argv, &i, "generate"))) return EXIT_USAGE;
            if (!cli_parse_float(v, &temperature) || temperature < 0)
                return cli_usage_error("generate", "--temperature must be a number >= 0");
        } else if (!strcmp(a, "--device")) {
            if (!(v = cli_value(argc, argv, &i, "generate"))) return EXIT_USAGE;
            if (!cli_parse_device(v, &mp.device)) return cli_usage_error("generate", "--device must be cpu, cuda or auto");
        } else if (!strcmp(a, "--ignore-eos")) {
            ignore_eos = true;
        } else if (!strcmp(a, "--timings")) {
            timings = true;
        } else if (!strcmp(a, "--output-ids")) {
            output_ids = true;
        } else if (!strcmp(a, "--no-mmap")) {
            mp.use_mmap = false;
        } else if (a[0] == '-') {
            return cli_usage_error("generate", "unknown option '%s'", a);
        } else {
            return cli_usage_error("generate", "text prompts need the tokenizer, which is not built yet: use --ids");
        }
    }
    if (temperature != 0)
        return cli_usage_error("generate", "only greedy decoding (--temperature 0) exists so far");
    if (!ids_text) return cli_usage_error("generate", "--ids is required");
    int32_t *ids;
    int64_t n;
    if (!cli_parse_ids(ids_text, &ids, &n, "generate")) return EXIT_USAGE;
    if (n == 0) {
        free(ids);
        return cli_usage_error("generate", "--ids is empty: give at least one token id");
    }
    if (!model) model = cli_default_model();
    hc_model *m = NULL;
    hc_session *s = NULL;
    float *logits = NULL;
    int rc = EXIT_OK;
    const double t0 = now_s();
    hc_status st = hc_model_load(model, &mp, &m);
    if (st) {
        free(ids);
        return cli_fail("generate", st);
    }
    const hc_model_config *c = hc_model_get_config(m);
    /* Text output when the folder has a tokenizer; ids otherwise. */
    hc_tokenizer *tok = NULL;
    hc_detokenizer *detok = NULL;
    if (!output_ids && hc_tokenizer_load(model, NULL, &tok) == HC_OK && hc_detokenizer_new(tok, true, &detok) != HC_OK) {
        hc_tokenizer_free(tok);
        tok = NULL;
    }
    if (!ctx) ctx = c->max_position_embeddings;
    if (c->rope.type == HC_ROPE_NONE && ctx > c->max_position_embeddings) {
        fprintf(stderr, "hubcap generate: --ctx %lld exceeds the model's %lld learned positions\n", (long long)ctx,
                (long long)c->max_position_embeddings);
        rc = EXIT_ERROR;
        goto out;
    }
    if (n + max_new > ctx) {
        fprintf(stderr, "hubcap generate: prompt (%lld tokens) plus --max-new-tokens %lld exceeds the context of %lld\n",
                (long long)n, (long long)max_new, (long long)ctx);
        rc = EXIT_ERROR;
        goto out;
    }
    const int64_t V = c->vocab_size;
    logits = malloc((size_t)V * sizeof *logits);
    st = logits ? hc_session_new(m, n + max_new, &s) : HC_ERR_NOMEM;
    const double t1 = now_s();
    if (!st) st = hc_session_forward(s, ids, n, logits, false);
    const double t2 = now_s();
    int64_t n_decoded = 0;
    for (int64_t i = 0; !st && i < max_new; i++) {
        int32_t next = argmax(logits, V);
        if (detok) {
            const char *piece;
            size_t plen;
            st = hc_detokenizer_push(detok, next, &piece, &plen);
            if (st) break;
            fwrite(piece, 1, plen, stdout);
        } else {
            printf(i ? " %d" : "%d", next);
        }
        fflush(stdout);
        bool eos = false;
        for (int e = 0; e < c->n_eos; e++) eos |= next == c->eos_token_ids[e];
        if (eos && !ignore_eos) break;
        if (i + 1 < max_new) {
            st = hc_session_forward(s, &next, 1, logits, false);
            n_decoded++;
        }
    }
    const double t3 = now_s();
    if (!st && detok) {
        const char *piece;
        size_t plen;
        st = hc_detokenizer_flush(detok, &piece, &plen);
        if (!st) fwrite(piece, 1, plen, stdout);
    }
    if (st) rc = cli_fail("generate", st);
    else printf("\n");
    fflush(stdout);
    if (!st && timings)
        fprintf(stderr,
                "timings: load %.3f s, first token after %.3f s, prompt %lld tokens in %.3f s (%.2f tok/s), "
                "decode %lld tokens in %.3f s (%.2f tok/s)\n",
                t1 - t0, t2 - t0, (long long)n, t2 - t1, (double)n / (t2 - t1), (long long)n_decoded, t3 - t2,
                n_decoded ? (double)n_decoded / (t3 - t2) : 0.0);
out:
    hc_detokenizer_free(detok);
    hc_tokenizer_free(tok);
    free(logits);
    free(ids);
    hc_session_free(s);
    hc_model_free(m);
    return rc;
}
