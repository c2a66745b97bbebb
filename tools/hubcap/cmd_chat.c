/* hubcap chat: an interactive conversation, rendered by the model's chat template. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <editline/readline.h>

#include "base/file.h"
#include "cli.h"

static const char help[] =
    "usage: hubcap chat [-m MODEL] [--system S] [--template FILE.jinja] [options]\n"
    "\n"
    "Talks with the model. Each line you type is a user turn; the answer streams as it is made.\n"
    "The conversation is rendered with the model's chat template (or --template), and the KV\n"
    "cache keeps the history, so earlier turns are not run again.\n"
    "Commands: /reset forgets the conversation, /exit (or Ctrl-D) leaves. Ctrl-C stops an answer.\n"
    "With standard input not a terminal, each input line is one turn (for scripts and tests).\n"
    "\n"
    "  -m, --model DIR          the model folder (default: the bundled stories260K)\n"
    "  --system S               a system message\n"
    "  --template FILE          a Jinja chat template to use instead of the model's\n"
    "  --max-new-tokens N       answer length limit (default 256)\n"
    "  --temperature T, --top-k K, --top-p P, --min-p P, --repeat-penalty R,\n"
    "  --frequency-penalty F, --presence-penalty F, --seed S   sampling, as for generate\n"
    "  --ctx N                  the conversation's context length (default: the model's, at most 4096)\n"
    CLI_MODEL_FLAGS_HELP;

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

static bool stream(void *user, int64_t seq, const char *text, size_t len) {
    (void)user;
    (void)seq;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return !interrupted;
}

int cmd_chat(int argc, char **argv) {
    const char *model = NULL, *system = NULL, *tmpl_path = NULL;
    int64_t max_new = 256, ctx = 0;
    hc_model_params mp;
    if (!cli_model_defaults(&mp, "chat")) return EXIT_USAGE;
    cli_sampling cs;
    cli_sampling_init(&cs);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int mf;
#define VALUE()                                                                                                        \
    if (!(v = cli_value(argc, argv, &i, "chat"))) return EXIT_USAGE
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(help, stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            VALUE();
            model = v;
        } else if (!strcmp(a, "--system")) {
            VALUE();
            system = v;
        } else if (!strcmp(a, "--template")) {
            VALUE();
            tmpl_path = v;
        } else if (!strcmp(a, "--max-new-tokens")) {
            VALUE();
            if (!cli_parse_int(v, 1, INT32_MAX, &max_new)) return cli_usage_error("chat", "--max-new-tokens must be a positive integer");
        } else if (!strcmp(a, "--ctx")) {
            VALUE();
            if (!cli_parse_int(v, 1, INT32_MAX, &ctx)) return cli_usage_error("chat", "--ctx must be a positive integer");
        } else if ((mf = cli_sampling_flag(argc, argv, &i, "chat", &cs)) != 0) {
            if (mf < 0) return EXIT_USAGE;
        } else if ((mf = cli_model_flag(argc, argv, &i, "chat", &mp)) != 0) {
            if (mf < 0) return EXIT_USAGE;
        } else {
            return cli_usage_error("chat", "unknown option '%s'", a);
        }
#undef VALUE
    }
    if (system && cli_check_text("chat", "--system", system, strlen(system))) return EXIT_ERROR;
    char *tmpl = NULL;
    if (tmpl_path && hc_file_read_all(tmpl_path, &tmpl, NULL)) return cli_usage_error("chat", "cannot read '%s'", tmpl_path);
    if (!model) model = cli_default_model();
    hc_model *m = NULL;
    hc_chat *chat = NULL;
    int rc = EXIT_OK;
    hc_status st = hc_model_load(model, &mp, &m);
    if (!st) st = hc_chat_new(m, tmpl, system, ctx, &chat);
    if (st) {
        rc = cli_fail("chat", st);
        goto out;
    }
    hc_generate_params gp = hc_generate_default_params(m);
    gp.max_new_tokens = max_new;
    gp.on_text = stream;
    cli_sampling_apply(&cs, &gp.sampling);

    const bool tty = isatty(STDIN_FILENO);
    struct sigaction sa = {0};
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    if (tty) fprintf(stderr, "hubcap chat: %s. /reset to start over, /exit or Ctrl-D to leave.\n", model);
    for (;;) {
        char *line = NULL;
        size_t cap = 0;
        interrupted = 0;
        if (tty) {
            line = readline("> ");
            if (!line && interrupted) { /* Ctrl-C at the prompt: a fresh line, not an exit */
                fputc('\n', stdout);
                continue;
            }
            if (!line) break;
            if (*line) add_history(line);
        } else {
            ssize_t n = getline(&line, &cap, stdin);
            if (n < 0) {
                free(line);
                break;
            }
            while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        }
        if (cli_check_text("chat", "input", line, strlen(line))) { /* this line only: the chat goes on */
            free(line);
            continue;
        }
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) {
            free(line);
            break;
        }
        if (!strcmp(line, "/reset")) {
            hc_chat_reset(chat);
            if (tty) fprintf(stderr, "(conversation reset)\n");
            free(line);
            continue;
        }
        if (!*line) {
            free(line);
            continue;
        }
        hc_generation g;
        st = hc_chat_send(chat, line, &gp, &g);
        free(line);
        if (st) {
            fprintf(stderr, "hubcap chat: %s\n", hc_last_error());
            if (!tty) {
                rc = EXIT_ERROR;
                break;
            }
            continue;
        }
        printf("\n");
        fflush(stdout);
        if (interrupted && tty) fprintf(stderr, "(stopped)\n");
        hc_generation_free(&g);
    }
out:
    hc_chat_free(chat);
    hc_model_free(m);
    free(tmpl);
    return rc;
}
