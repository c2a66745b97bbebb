/* hubcap template: render a chat template exactly as transformers would. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "cli.h"

static const char help[] =
    "usage: hubcap template [-m DIR | --template FILE.jinja] --messages FILE.json\n"
    "                       [--add-generation-prompt] [--bos-token S] [--eos-token S] [--context FILE.json]\n"
    "\n"
    "Prints the chat template rendered over the messages, byte for byte as transformers'\n"
    "apply_chat_template(tokenize=False) renders it, with no newline added.\n"
    "\n"
    "  -m, --model DIR           use the template of this model (tokenizer_config.json or\n"
    "                            chat_template.jinja), and its BOS/EOS tokens\n"
    "  --template FILE           use this Jinja file instead\n"
    "  --messages FILE           a JSON array of {\"role\", \"content\"} (- for stdin)\n"
    "  --add-generation-prompt   end with the assistant's turn opener\n"
    "  --bos-token S, --eos-token S   the tokens the template sees\n"
    "  --context FILE            a JSON object of more variables (tools, date_string, ...)\n"
    "\n"
    "strftime_now uses SOURCE_DATE_EPOCH when it is set. A template error exits 1 with the\n"
    "template's message.\n";

static char *slurp(const char *path) {
    char *text = NULL;
    if (!strcmp(path, "-")) {
        size_t cap = 4096, n = 0, r;
        text = malloc(cap);
        while (text && (r = fread(text + n, 1, cap - n - 1, stdin)) > 0) {
            n += r;
            if (n + 1 == cap) {
                char *t = realloc(text, cap *= 2);
                if (!t) {
                    free(text);
                    return NULL;
                }
                text = t;
            }
        }
        if (text) text[n] = 0;
        return text;
    }
    if (hc_file_read_all(path, &text, NULL)) return NULL;
    return text;
}

int cmd_template(int argc, char **argv) {
    const char *model = NULL, *tmpl_path = NULL, *msgs_path = NULL, *ctx_path = NULL, *bos = NULL, *eos = NULL;
    bool agp = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(help, stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(model = cli_value(argc, argv, &i, "template"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--template")) {
            if (!(tmpl_path = cli_value(argc, argv, &i, "template"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--messages")) {
            if (!(msgs_path = cli_value(argc, argv, &i, "template"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--context")) {
            if (!(ctx_path = cli_value(argc, argv, &i, "template"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--bos-token")) {
            if (!(bos = cli_value(argc, argv, &i, "template"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--eos-token")) {
            if (!(eos = cli_value(argc, argv, &i, "template"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--add-generation-prompt")) {
            agp = true;
        } else {
            return cli_usage_error("template", "unknown option '%s'", a);
        }
    }
    if (!msgs_path) return cli_usage_error("template", "--messages is required");
    if (model && tmpl_path) return cli_usage_error("template", "give -m or --template, not both");
    char *msgs = slurp(msgs_path);
    if (!msgs) return cli_usage_error("template", "cannot read '%s'", msgs_path);
    char *ctx = NULL, *tmpl = NULL, *out = NULL;
    size_t len = 0;
    int rc = EXIT_OK;
    if (ctx_path && !(ctx = slurp(ctx_path))) {
        rc = cli_usage_error("template", "cannot read '%s'", ctx_path);
        goto done;
    }
    hc_chat_params p = hc_chat_default_params();
    p.add_generation_prompt = agp;
    p.bos_token = bos;
    p.eos_token = eos;
    p.extra_context_json = ctx;
    hc_status st;
    if (tmpl_path) {
        if (!(tmpl = slurp(tmpl_path))) {
            rc = cli_usage_error("template", "cannot read '%s'", tmpl_path);
            goto done;
        }
        p.template_name = tmpl_path;
        if (!p.bos_token) p.bos_token = "";
        if (!p.eos_token) p.eos_token = "";
        st = hc_chat_template_render(tmpl, msgs, &p, &out, &len);
    } else {
        hc_tokenizer *t;
        st = hc_tokenizer_load(model ? model : cli_default_model(), NULL, &t);
        if (!st) {
            st = hc_tokenizer_apply_chat_template(t, msgs, &p, &out, &len);
            if (st == HC_ERR_NOT_FOUND) {
                fprintf(stderr, "hubcap template: %s has no chat template; pass one with --template FILE.jinja\n",
                        model ? model : cli_default_model());
                hc_tokenizer_free(t);
                rc = EXIT_ERROR;
                goto done;
            }
            hc_tokenizer_free(t);
        }
    }
    if (st) rc = cli_fail("template", st);
    else fwrite(out, 1, len, stdout);
done:
    hc_free(out);
    free(tmpl);
    free(ctx);
    free(msgs);
    return rc;
}
