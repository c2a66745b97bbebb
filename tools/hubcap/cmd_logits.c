/* hubcap logits: one forward pass over given ids, every position's logits to a file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char help[] =
    "usage: hubcap logits [-m DIR] --ids \"1 2 3\" --out FILE.safetensors [--no-mmap]\n"
    "\n"
    "Runs the ids through the model in one forward pass and writes tensor 'logits', f32 [T, V].\n"
    "\n"
    "  -m, --model DIR   the snapshot folder (default: the bundled stories260K)\n"
    "  --ids LIST        token ids, separated by spaces or commas\n"
    "  --out FILE        the .safetensors file to write (written whole or not at all)\n"
    CLI_MODEL_FLAGS_HELP;

int cmd_logits(int argc, char **argv) {
    const char *model = NULL, *ids_text = NULL, *out_path = NULL;
    hc_model_params mp;
    if (!cli_model_defaults(&mp, "logits")) return EXIT_USAGE;
    for (int i = 1; i < argc; i++) {
        int mf;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(help, stdout);
            return EXIT_OK;
        } else if (!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) {
            if (!(model = cli_value(argc, argv, &i, "logits"))) return EXIT_USAGE;
        } else if (!strcmp(argv[i], "--ids")) {
            if (!(ids_text = cli_value(argc, argv, &i, "logits"))) return EXIT_USAGE;
        } else if (!strcmp(argv[i], "--out")) {
            if (!(out_path = cli_value(argc, argv, &i, "logits"))) return EXIT_USAGE;
        } else if ((mf = cli_model_flag(argc, argv, &i, "logits", &mp)) != 0) {
            if (mf < 0) return EXIT_USAGE;
        } else {
            return cli_usage_error("logits", "unknown option '%s'", argv[i]);
        }
    }
    if (!ids_text) return cli_usage_error("logits", "--ids is required");
    if (!out_path) return cli_usage_error("logits", "--out is required");
    int32_t *ids;
    int64_t n;
    if (!cli_parse_ids(ids_text, &ids, &n, "logits")) return EXIT_USAGE;
    if (n == 0) {
        free(ids);
        return cli_usage_error("logits", "--ids is empty: give at least one token id");
    }
    if (!model) model = cli_default_model();
    hc_model *m = NULL;
    hc_session *s = NULL;
    float *logits = NULL;
    int rc = EXIT_OK;
    hc_status st = hc_model_load(model, &mp, &m);
    if (!st) st = hc_session_new(m, n, &s);
    const int64_t V = m ? hc_model_vocab_size(m) : 0;
    if (!st) {
        logits = malloc((size_t)n * (size_t)V * sizeof *logits);
        if (!logits) {
            fprintf(stderr, "hubcap logits: out of memory for %lld x %lld logits\n", (long long)n, (long long)V);
            rc = EXIT_ERROR;
        }
    }
    if (!st && !rc) st = hc_session_forward(s, ids, n, logits, true);
    if (!st && !rc) {
        hc_tensor_write t = {.name = "logits", .dtype = HC_DTYPE_F32, .n_dims = 2, .shape = {n, V}, .data = logits};
        st = hc_safetensors_write(out_path, &t, 1, NULL, 0);
    }
    if (st) rc = cli_fail("logits", st);
    free(logits);
    free(ids);
    hc_session_free(s);
    hc_model_free(m);
    return rc;
}
