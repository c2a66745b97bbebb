/* hubcap tokenize / detokenize: text <-> ids with the model's own tokenizer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "format/json.h"

static const char tokenize_help[] =
    "usage: hubcap tokenize [-m DIR] [--no-special] [--json] (--text STR | --file PATH | < stdin)\n"
    "\n"
    "Prints the token ids of the text, space separated, on one line.\n"
    "\n"
    "  -m, --model DIR   a model folder, or a folder holding only tokenizer files\n"
    "  --text STR        the text (else --file, else standard input)\n"
    "  --file PATH       read the text from a file\n"
    "  --no-special      do not add BOS/EOS (HF add_special_tokens=False)\n"
    "  --json            print {\"ids\": [...], \"tokens\": [...]}\n"
    "  --raw             run tokenizer.json exactly as written (as the tokenizers library), without\n"
    "                    transformers' per-class rules from tokenizer_config.json\n";

static const char detokenize_help[] =
    "usage: hubcap detokenize [-m DIR] --ids \"1 2 3\" [--skip-special]\n"
    "\n"
    "Prints the text of the ids (no newline is added).\n"
    "\n"
    "  -m, --model DIR   a model folder, or a folder holding only tokenizer files\n"
    "  --ids LIST        token ids, separated by spaces or commas\n"
    "  --skip-special    leave special tokens out\n";

static char *read_stream(FILE *f, size_t *n) {
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf) return NULL;
    size_t r;
    while ((r = fread(buf + len, 1, cap - len, f)) > 0) {
        len += r;
        if (len == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
        }
    }
    if (ferror(f)) {
        free(buf);
        return NULL;
    }
    *n = len;
    return buf;
}

int cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *text = NULL, *file = NULL;
    bool special = true, json = false;
    hc_tokenizer_params tp = hc_tokenizer_default_params();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(tokenize_help, stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(model = cli_value(argc, argv, &i, "tokenize"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--text")) {
            if (!(text = cli_value(argc, argv, &i, "tokenize"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--file")) {
            if (!(file = cli_value(argc, argv, &i, "tokenize"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--no-special")) {
            special = false;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--raw")) {
            tp.raw_tokenizer_json = true;
        } else {
            return cli_usage_error("tokenize", "unknown option '%s'", a);
        }
    }
    if (text && file) return cli_usage_error("tokenize", "give --text or --file, not both");
    char *owned = NULL;
    size_t len = 0;
    if (text) {
        len = strlen(text);
    } else {
        FILE *f = file ? fopen(file, "rb") : stdin;
        if (!f) {
            perror(file);
            return cli_usage_error("tokenize", "cannot read '%s'", file);
        }
        owned = read_stream(f, &len);
        if (file) fclose(f);
        if (!owned) return cli_usage_error("tokenize", "cannot read '%s'", file ? file : "standard input");
        text = owned;
    }
    if (cli_check_text("tokenize", owned ? (file ? file : "standard input") : "--text", text, len)) {
        free(owned);
        return EXIT_ERROR;
    }
    if (!model) model = cli_default_model();
    hc_tokenizer *t;
    hc_status st = hc_tokenizer_load(model, &tp, &t);
    if (st) {
        free(owned);
        return cli_fail("tokenize", st);
    }
    hc_tokens ids = {0};
    st = hc_tokenizer_encode(t, text, len, special, &ids);
    if (st) {
        free(owned);
        hc_tokenizer_free(t);
        return cli_fail("tokenize", st);
    }
    if (json) {
        printf("{\"ids\":[");
        for (int64_t i = 0; i < ids.n; i++) printf(i ? ",%d" : "%d", ids.ids[i]);
        printf("],\"tokens\":[");
        for (int64_t i = 0; i < ids.n; i++) {
            if (i) putchar(',');
            hc_json_write_string(stdout, hc_tokenizer_token(t, ids.ids[i]));
        }
        printf("]}\n");
    } else {
        for (int64_t i = 0; i < ids.n; i++) printf(i ? " %d" : "%d", ids.ids[i]);
        printf("\n");
    }
    hc_tokens_free(&ids);
    hc_tokenizer_free(t);
    free(owned);
    return EXIT_OK;
}

int cmd_detokenize(int argc, char **argv) {
    const char *model = NULL, *ids_text = NULL;
    bool skip = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(detokenize_help, stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(model = cli_value(argc, argv, &i, "detokenize"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--ids")) {
            if (!(ids_text = cli_value(argc, argv, &i, "detokenize"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--skip-special")) {
            skip = true;
        } else {
            return cli_usage_error("detokenize", "unknown option '%s'", a);
        }
    }
    if (!ids_text) return cli_usage_error("detokenize", "--ids is required");
    int32_t *ids;
    int64_t n;
    if (!cli_parse_ids(ids_text, &ids, &n, "detokenize")) return EXIT_USAGE;
    if (!model) model = cli_default_model();
    hc_tokenizer *t = NULL;
    hc_status st = hc_tokenizer_load(model, NULL, &t);
    char *text = NULL;
    size_t len = 0;
    if (!st) st = hc_tokenizer_decode(t, ids, n, skip, &text, &len);
    int rc = st ? cli_fail("detokenize", st) : EXIT_OK;
    if (!st) fwrite(text, 1, len, stdout);
    hc_free(text);
    free(ids);
    hc_tokenizer_free(t);
    return rc;
}
