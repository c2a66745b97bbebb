/* hubcap generate: continue one prompt, or a batch of prompts decoded together. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

static const char help[] =
    "usage: hubcap generate [-m MODEL] [PROMPT | --file F | --ids LIST | --batch-file F] [options]\n"
    "\n"
    "Continues the prompt with the model, streaming the new text to stdout. A summary goes to\n"
    "stderr. Sampling defaults come from the model's generation_config.json (greedy unless it\n"
    "says do_sample).\n"
    "\n"
    "  -m, --model DIR          the model folder (default: the bundled stories260K)\n"
    "  PROMPT                   the prompt text\n"
    "  --file F                 read the prompt text from a file\n"
    "  --ids LIST               the prompt as token ids, separated by spaces or commas\n"
    "  --batch-file F           one prompt a line; all decode together as one batch\n"
    "  --max-new-tokens N       tokens to generate at most (default 128)\n"
    "  --temperature T          0 = greedy; > 0 samples\n"
    "  --top-k K                keep the K most likely tokens (0 = off)\n"
    "  --top-p P                keep the smallest set with probability >= P, in (0, 1]\n"
    "  --min-p P                keep tokens at least P times as likely as the best, in [0, 1)\n"
    "  --repeat-penalty R       divide seen tokens' logits by R (1 = off)\n"
    "  --frequency-penalty F    subtract F times each seen token's count\n"
    "  --presence-penalty F     subtract F from each seen token\n"
    "  --seed S                 random seed (default: random)\n"
    "  --stop S                 stop before the text S (repeatable)\n"
    "  --ignore-eos             do not stop at the model's EOS ids\n"
    "  --no-special             do not add BOS/EOS to text prompts\n"
    "  --output-ids             print the new ids instead of text: one line per prompt\n"
    "  --ctx N                  context length limit (default: the model's max_position_embeddings)\n"
    CLI_MODEL_FLAGS_HELP;

#define MAX_STOPS 16

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static bool stream_text(void *user, int64_t seq, const char *text, size_t len) {
    (void)user;
    (void)seq;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return true;
}

static char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, len = 0, r;
    char *buf = malloc(cap + 1);
    while (buf && (r = fread(buf + len, 1, cap - len, f)) > 0) {
        len += r;
        if (len == cap) {
            char *nb = realloc(buf, (cap *= 2) + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
            } else {
                buf = nb;
            }
        }
    }
    bool err = ferror(f);
    fclose(f);
    if (!buf || err) {
        free(buf);
        return NULL;
    }
    buf[len] = 0;
    *n = len;
    return buf;
}

int cmd_generate(int argc, char **argv) {
    const char *model = NULL, *ids_text = NULL, *prompt = NULL, *prompt_file = NULL, *batch_file = NULL;
    const char *stops[MAX_STOPS];
    int n_stops = 0;
    int64_t max_new = 128, ctx = 0;
    cli_sampling cs;
    cli_sampling_init(&cs);
    bool ignore_eos = false, output_ids = false, no_special = false;
    hc_model_params mp;
    if (!cli_model_defaults(&mp, "generate")) return EXIT_USAGE;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v;
        int mf;
#define VALUE()                                                                                                        \
    if (!(v = cli_value(argc, argv, &i, "generate"))) return EXIT_USAGE
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(help, stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            VALUE();
            model = v;
        } else if (!strcmp(a, "--ids")) {
            VALUE();
            ids_text = v;
        } else if (!strcmp(a, "--file")) {
            VALUE();
            prompt_file = v;
        } else if (!strcmp(a, "--batch-file")) {
            VALUE();
            batch_file = v;
        } else if (!strcmp(a, "--max-new-tokens")) {
            VALUE();
            if (!cli_parse_int(v, 0, INT32_MAX, &max_new))
                return cli_usage_error("generate", "--max-new-tokens must be a non-negative integer");
        } else if (!strcmp(a, "--ctx")) {
            VALUE();
            if (!cli_parse_int(v, 1, INT32_MAX, &ctx)) return cli_usage_error("generate", "--ctx must be a positive integer");
        } else if ((mf = cli_sampling_flag(argc, argv, &i, "generate", &cs)) != 0) {
            if (mf < 0) return EXIT_USAGE;
        } else if (!strcmp(a, "--stop")) {
            VALUE();
            if (!*v) return cli_usage_error("generate", "--stop needs a non-empty string");
            if (n_stops == MAX_STOPS) return cli_usage_error("generate", "at most %d --stop strings", MAX_STOPS);
            stops[n_stops++] = v;
        } else if ((mf = cli_model_flag(argc, argv, &i, "generate", &mp)) != 0) {
            if (mf < 0) return EXIT_USAGE;
        } else if (!strcmp(a, "--ignore-eos")) {
            ignore_eos = true;
        } else if (!strcmp(a, "--output-ids")) {
            output_ids = true;
        } else if (!strcmp(a, "--no-special")) {
            no_special = true;
        } else if (!strcmp(a, "--timings")) {
            /* the summary line is always printed; kept for compatibility */
        } else if (a[0] == '-' && a[1]) {
            return cli_usage_error("generate", "unknown option '%s'", a);
        } else {
            if (prompt) return cli_usage_error("generate", "give one prompt (quote it), or use --batch-file");
            prompt = a;
        }
#undef VALUE
    }
    int sources = (prompt != NULL) + (prompt_file != NULL) + (ids_text != NULL) + (batch_file != NULL);
    if (sources == 0) return cli_usage_error("generate", "give a PROMPT, --file, --ids or --batch-file");
    if (sources > 1) return cli_usage_error("generate", "give only one of PROMPT, --file, --ids and --batch-file");

    /* The prompts, as text or ids. */
    char *file_text = NULL;
    const char **texts = NULL;
    int64_t n_prompts = 1;
    int32_t *ids = NULL;
    int64_t n_ids = 0;
    if (ids_text) {
        if (!cli_parse_ids(ids_text, &ids, &n_ids, "generate")) return EXIT_USAGE;
        if (n_ids == 0) {
            free(ids);
            return cli_usage_error("generate", "--ids is empty: give at least one token id");
        }
    } else {
        const char *path = prompt_file ? prompt_file : batch_file;
        size_t len = 0;
        if (path && !(file_text = read_file(path, &len))) return cli_usage_error("generate", "cannot read '%s'", path);
        if (path && cli_check_text("generate", path, file_text, len)) {
            free(file_text);
            return EXIT_ERROR;
        }
        if (!path && prompt && cli_check_text("generate", "the prompt", prompt, strlen(prompt))) return EXIT_ERROR;
        texts = malloc(sizeof *texts * (len / 1 + 2));
        if (!texts) return EXIT_ERROR;
        if (batch_file) {
            n_prompts = 0;
            for (char *line = file_text; line && *line;) {
                char *nl = strchr(line, '\n');
                if (nl) *nl = 0;
                if (nl && nl > line && nl[-1] == '\r') nl[-1] = 0;
                if (*line) texts[n_prompts++] = line;
                line = nl ? nl + 1 : NULL;
            }
            if (!n_prompts) {
                free(texts);
                free(file_text);
                return cli_usage_error("generate", "%s holds no prompts", batch_file);
            }
        } else {
            texts[0] = prompt ? prompt : file_text;
            if (!*texts[0]) {
                free(texts);
                free(file_text);
                return cli_usage_error("generate", "the prompt is empty");
            }
        }
    }

    if (!model) model = cli_default_model();
    int rc = EXIT_OK;
    hc_model *m = NULL;
    hc_generation *gens = NULL;
    const double t0 = now_s();
    hc_status st = hc_model_load(model, &mp, &m);
    if (st) {
        rc = cli_fail("generate", st);
        goto out;
    }
    const double load_s = now_s() - t0;
    const hc_model_config *c = hc_model_get_config(m);
    hc_generate_params gp = hc_generate_default_params(m);
    gp.max_new_tokens = max_new;
    gp.ignore_eos = ignore_eos;
    gp.add_special = !no_special;
    gp.stop = stops;
    gp.n_stop = n_stops;
    cli_sampling_apply(&cs, &gp.sampling);
    const bool streaming = !output_ids && !batch_file;
    if (streaming) gp.on_text = stream_text;

    /* Text prompts are tokenized here so that length errors can name the context. */
    if (!ctx) ctx = c->max_position_embeddings;
    if (c->rope.type == HC_ROPE_NONE && ctx > c->max_position_embeddings) {
        fprintf(stderr, "hubcap generate: --ctx %lld exceeds the model's %lld learned positions\n", (long long)ctx,
                (long long)c->max_position_embeddings);
        rc = EXIT_ERROR;
        goto out;
    }
    hc_tokens *enc = calloc((size_t)n_prompts, sizeof *enc);
    const int32_t **pid = malloc(sizeof *pid * (size_t)n_prompts);
    int64_t *plen = malloc(sizeof *plen * (size_t)n_prompts);
    gens = calloc((size_t)n_prompts, sizeof *gens);
    if (!enc || !pid || !plen || !gens) {
        st = HC_ERR_NOMEM;
    } else if (ids) {
        pid[0] = ids;
        plen[0] = n_ids;
    } else if (!hc_model_tokenizer(m)) {
        st = hc_generate(m, texts, n_prompts, &gp, gens, NULL); /* reports the missing tokenizer */
    } else {
        for (int64_t i = 0; i < n_prompts && !st; i++) {
            st = hc_tokenizer_encode(hc_model_tokenizer(m), texts[i], strlen(texts[i]), gp.add_special, &enc[i]);
            pid[i] = enc[i].ids;
            plen[i] = enc[i].n;
            if (!st && plen[i] == 0) {
                fprintf(stderr, "hubcap generate: prompt %lld is empty after tokenization\n", (long long)i + 1);
                rc = EXIT_USAGE;
            }
        }
    }
    for (int64_t i = 0; !st && !rc && i < n_prompts; i++) {
        if (plen[i] + max_new > ctx) {
            fprintf(stderr, "hubcap generate: prompt (%lld tokens) plus --max-new-tokens %lld exceeds the context of %lld\n",
                    (long long)plen[i], (long long)max_new, (long long)ctx);
            rc = EXIT_ERROR;
        }
    }
    hc_timings tm = {0};
    if (!st && !rc) {
        if (streaming && texts) fputs(texts[0], stdout); /* the story reads on from its prompt */
        st = hc_generate_ids(m, pid, plen, n_prompts, &gp, gens, &tm);
    }
    if (!st && !rc) {
        if (output_ids) {
            for (int64_t i = 0; i < n_prompts; i++) {
                for (int64_t k = 0; k < gens[i].n_ids; k++) printf(k ? " %d" : "%d", gens[i].ids[k]);
                printf("\n");
            }
        } else if (batch_file) {
            for (int64_t i = 0; i < n_prompts; i++) printf("%s%s%s", i ? "\n" : "", texts[i], gens[i].text);
            printf("\n");
        } else {
            printf("\n");
        }
        fflush(stdout);
        fprintf(stderr,
                "hubcap generate: load %.2f s, prompt %lld tokens (%.1f tok/s), new %lld tokens (%.1f tok/s), "
                "finish %s\n",
                load_s, (long long)tm.prompt_tokens, tm.prompt_s > 0 ? (double)tm.prompt_tokens / tm.prompt_s : 0.0,
                (long long)tm.new_tokens, tm.decode_s > 0 ? (double)tm.new_tokens / tm.decode_s : 0.0,
                hc_finish_reason_name(gens[0].finish));
    }
    if (st) rc = cli_fail("generate", st);
    for (int64_t i = 0; gens && i < n_prompts; i++) hc_generation_free(&gens[i]);
    for (int64_t i = 0; enc && i < n_prompts; i++) hc_tokens_free(&enc[i]);
    free(enc);
    free(pid);
    free(plen);
out:
    free(gens);
    free(texts);
    free(file_text);
    free(ids);
    hc_model_free(m);
    return rc;
}
