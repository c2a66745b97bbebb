/* hubcap: the command-line tool. One file per subcommand; this one dispatches. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} commands[] = {
    {"info", cmd_info, "show what a checkpoint holds (architecture, sizes, tensors)"},
    {"logits", cmd_logits, "write the logits of every position to a .safetensors file"},
    {"generate", cmd_generate, "continue a prompt (or a batch of prompts)"},
    {"tokenize", cmd_tokenize, "text -> token ids with the model's tokenizer"},
    {"detokenize", cmd_detokenize, "token ids -> text"},
    {"template", cmd_template, "render a chat template over messages, as transformers does"},
    {"chat", cmd_chat, "talk with a model, turn by turn"},
    {"bench", cmd_bench, "measure prompt and decode speed, memory and bytes per token"},
    {"finetune", cmd_finetune, "fine-tune every weight on a text or JSONL file, then save the checkpoint"},
    {"grad", cmd_grad, "the loss of a batch and every parameter's gradient, to a .safetensors file"},
    {"save", cmd_save, "write a checkpoint folder out again (another dtype, shards), as transformers does"},
    {"download", cmd_download, "fetch hf://org/name into the Hugging Face cache"},
    {"cache", cmd_cache, "list the models in the Hugging Face cache (cache ls)"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: hubcap <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n'hubcap <command> --help' shows a command's options. Without -m, the bundled\n"
               "model %s is used. -m also takes hf://org/name[@revision].\n",
            cli_default_model());
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return EXIT_OK;
    }
    cli_setup_progress(false); /* hf:// models show their download on a terminal */
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "hubcap: unknown command '%s' (see 'hubcap --help')\n", argv[1]);
    return EXIT_USAGE;
}
