#include "cli.h"

#include "base/strbuf.h"

#include <errno.h>
#include <math.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef HUBCAP_DEFAULT_MODEL
#define HUBCAP_DEFAULT_MODEL "models/stories260K"
#endif

const char *cli_default_model(void) {
    const char *env = getenv("HUBCAP_MODEL");
    return (env && *env) ? env : HUBCAP_DEFAULT_MODEL;
}

int cli_fail(const char *cmd, hc_status st) {
    const char *msg = hc_last_error();
    fprintf(stderr, "hubcap %s: %s\n", cmd, *msg ? msg : hc_status_describe(st));
    return EXIT_ERROR;
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "hubcap %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see 'hubcap %s --help')\n", cmd);
    va_end(ap);
    return EXIT_USAGE;
}

const char *cli_value(int argc, char **argv, int *i, const char *cmd) {
    if (*i + 1 >= argc) {
        cli_usage_error(cmd, "option %s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

bool cli_parse_int(const char *text, int64_t lo, int64_t hi, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool cli_parse_float(const char *text, double *out) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !isfinite(v)) return false; /* no option takes inf or nan */
    *out = v;
    return true;
}

bool cli_parse_device(const char *text, hc_device *out) {
    if (!strcmp(text, "cpu")) *out = HC_DEVICE_CPU;
    else if (!strcmp(text, "cuda")) *out = HC_DEVICE_CUDA;
    else if (!strcmp(text, "auto")) *out = HC_DEVICE_AUTO;
    else return false;
    return true;
}

bool cli_parse_ids(const char *text, int32_t **ids, int64_t *n, const char *cmd) {
    size_t cap = 16;
    int64_t count = 0;
    int32_t *out = malloc(cap * sizeof *out);
    if (!out) return false;
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || v < INT32_MIN || v > INT32_MAX ||
            (*end && *end != ' ' && *end != ',' && *end != '\t' && *end != '\n')) {
            free(out);
            cli_usage_error(cmd, "--ids: '%s' is not a list of integers", text);
            return false;
        }
        if ((size_t)count == cap) {
            int32_t *nb = realloc(out, cap * 2 * sizeof *out);
            if (!nb) {
                free(out);
                return false;
            }
            out = nb;
            cap *= 2;
        }
        out[count++] = (int32_t)v;
        p = end;
    }
    *ids = out;
    *n = count;
    return true;
}

bool cli_model_defaults(hc_model_params *mp, const char *cmd) {
    *mp = hc_model_default_params();
    mp->repack = true; /* inference: bf16 weights read into RAM are repacked (finetune turns it off) */
    const char *env = getenv("HUBCAP_DEVICE");
    if (env && *env && !cli_parse_device(env, &mp->device)) {
        cli_usage_error(cmd, "HUBCAP_DEVICE='%s': use cpu, cuda or auto", env);
        return false;
    }
    return true;
}

int cli_model_flag(int argc, char **argv, int *i, const char *cmd, hc_model_params *mp) {
    const char *a = argv[*i];
    if (!strcmp(a, "--no-mmap")) {
        mp->use_mmap = false;
        return 1;
    }
    if (!strcmp(a, "--mmap")) {
        mp->use_mmap = true;
        return 1;
    }
    if (!strcmp(a, "--no-repack")) {
        mp->repack = false;
        return 1;
    }
    if (!strcmp(a, "--mlock")) {
        mp->mlock = true;
        return 1;
    }
    if (!strcmp(a, "--quant-cache")) {
        mp->quant_cache = true;
        return 1;
    }
    if (strcmp(a, "--threads") && strcmp(a, "--quantize") && strcmp(a, "--device") && strcmp(a, "--kv-dtype") &&
        strcmp(a, "--compute-dtype") && strcmp(a, "--dtype") && strcmp(a, "--lora"))
        return 0;
    const char *v = cli_value(argc, argv, i, cmd);
    if (!v) return -1;
    if (!strcmp(a, "--threads")) {
        int64_t n;
        if (!cli_parse_int(v, 1, 1024, &n)) return cli_usage_error(cmd, "--threads must be a positive integer"), -1;
        mp->n_threads = (int)n;
    } else if (!strcmp(a, "--lora")) {
        mp->lora_path = v;
    } else if (!strcmp(a, "--quantize")) {
        if (!strcmp(v, "q8_0")) mp->weights = HC_WEIGHTS_Q8_0;
        else if (!strcmp(v, "q4_0")) mp->weights = HC_WEIGHTS_Q4_0;
        else if (!strcmp(v, "q4_k")) mp->weights = HC_WEIGHTS_Q4_K;
        else if (!strcmp(v, "none")) mp->weights = HC_WEIGHTS_AS_STORED;
        else return cli_usage_error(cmd, "--quantize must be q8_0, q4_0, q4_k or none"), -1;
    } else if (!strcmp(a, "--compute-dtype") || !strcmp(a, "--dtype")) {
        if (!strcmp(v, "f32")) mp->compute_dtype = HC_DTYPE_F32;
        else if (!strcmp(v, "bf16")) mp->compute_dtype = HC_DTYPE_BF16;
        else if (!strcmp(v, "f16")) mp->compute_dtype = HC_DTYPE_F16;
        else return cli_usage_error(cmd, "%s must be f32, bf16 or f16", a), -1;
    } else if (!strcmp(a, "--kv-dtype")) {
        if (!strcmp(v, "f32")) mp->kv_dtype = HC_DTYPE_F32;
        else if (!strcmp(v, "f16")) mp->kv_dtype = HC_DTYPE_F16;
        else if (!strcmp(v, "bf16")) mp->kv_dtype = HC_DTYPE_BF16;
        else return cli_usage_error(cmd, "--kv-dtype must be f32, f16 or bf16"), -1;
    } else {
        if (!cli_parse_device(v, &mp->device)) return cli_usage_error(cmd, "--device must be cpu, cuda or auto"), -1;
    }
    return 1;
}

void cli_sampling_init(cli_sampling *cs) {
    memset(cs, 0, sizeof *cs);
    cs->temperature = cs->top_p = cs->min_p = cs->repeat_penalty = -1;
    cs->top_k = cs->seed = -1;
}

int cli_sampling_flag(int argc, char **argv, int *i, const char *cmd, cli_sampling *cs) {
    static const char *const names[] = {"--temperature", "--top-k", "--top-p", "--min-p", "--repeat-penalty",
                                        "--frequency-penalty", "--presence-penalty", "--seed", NULL};
    const char *a = argv[*i];
    int which = -1;
    for (int k = 0; names[k]; k++)
        if (!strcmp(a, names[k])) which = k;
    if (which < 0) return 0;
    const char *v = cli_value(argc, argv, i, cmd);
    if (!v) return -1;
    double f;
    switch (which) {
    case 0:
        if (!cli_parse_float(v, &cs->temperature) || !(cs->temperature >= 0))
            return cli_usage_error(cmd, "--temperature must be a number >= 0"), -1;
        break;
    case 1:
        if (!cli_parse_int(v, 0, INT32_MAX, &cs->top_k)) return cli_usage_error(cmd, "--top-k must be an integer >= 0"), -1;
        break;
    case 2:
        if (!cli_parse_float(v, &cs->top_p) || !(cs->top_p > 0 && cs->top_p <= 1))
            return cli_usage_error(cmd, "--top-p must be in (0, 1]"), -1;
        break;
    case 3:
        if (!cli_parse_float(v, &cs->min_p) || !(cs->min_p >= 0 && cs->min_p < 1))
            return cli_usage_error(cmd, "--min-p must be in [0, 1)"), -1;
        break;
    case 4:
        if (!cli_parse_float(v, &cs->repeat_penalty) || !(cs->repeat_penalty > 0))
            return cli_usage_error(cmd, "--repeat-penalty must be > 0"), -1;
        break;
    case 5:
    case 6:
        if (!cli_parse_float(v, &f)) return cli_usage_error(cmd, "%s must be a number", a), -1;
        if (which == 5) cs->frequency_penalty = f, cs->has_frequency = true;
        else cs->presence_penalty = f, cs->has_presence = true;
        break;
    default:
        if (!cli_parse_int(v, 0, INT64_MAX, &cs->seed)) return cli_usage_error(cmd, "--seed must be an integer >= 0"), -1;
    }
    return 1;
}

void cli_sampling_apply(const cli_sampling *cs, hc_sampler_params *p) {
    if (cs->temperature >= 0) p->temperature = (float)cs->temperature;
    if (cs->top_k >= 0) p->top_k = (int32_t)cs->top_k;
    if (cs->top_p > 0) p->top_p = (float)cs->top_p;
    if (cs->min_p >= 0) p->min_p = (float)cs->min_p;
    if (cs->repeat_penalty > 0) p->repetition_penalty = (float)cs->repeat_penalty;
    if (cs->has_frequency) p->frequency_penalty = (float)cs->frequency_penalty;
    if (cs->has_presence) p->presence_penalty = (float)cs->presence_penalty;
    p->seed = cs->seed >= 0 ? (uint64_t)cs->seed : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
}

int cli_check_text(const char *cmd, const char *what, const char *text, size_t n) {
    size_t line, col;
    const char *why;
    if (hc_text_check(text, n, &line, &col, &why)) return EXIT_OK;
    fprintf(stderr, "hubcap %s: %s:%zu:%zu: %s\n", cmd, what, line, col, why);
    return EXIT_ERROR;
}
