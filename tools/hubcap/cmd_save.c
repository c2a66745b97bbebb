/* hubcap save: a checkpoint folder written out again as transformers writes one, optionally
 * in another dtype. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "base/status.h"
#include "format/hub.h"

static const char help[] =
    "usage: hubcap save [-m MODEL] OUTDIR [--dtype bf16|f16|f32] [--max-shard-size BYTES] [--merge-lora DIR]\n"
    "\n"
    "Writes MODEL (a folder or hf://org/name) to OUTDIR as a standard Hugging Face checkpoint:\n"
    "model.safetensors (or shards with model.safetensors.index.json past 5 GB), config.json\n"
    "with torch_dtype set, generation_config.json and the tokenizer files. A tied LM head is\n"
    "written once. OUTDIR must not exist or be empty; it appears whole or not at all.\n"
    "\n"
    "  -m, --model DIR         the model (default: the bundled stories260K)\n"
    "  --dtype T               write float tensors as bf16, f16 or f32 (default: as stored)\n"
    "  --max-shard-size BYTES  the largest shard (default 5000000000)\n"
    "  --merge-lora DIR        add a LoRA adapter (PEFT format) into the weights before writing\n";

int cmd_save(int argc, char **argv) {
    const char *model = NULL, *out = NULL, *merge = NULL;
    hc_save_params sp = hc_save_default_params();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(help, stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(model = cli_value(argc, argv, &i, "save"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--dtype")) {
            if (!(v = cli_value(argc, argv, &i, "save"))) return EXIT_USAGE;
            if (!strcmp(v, "bf16")) sp.dtype = HC_DTYPE_BF16;
            else if (!strcmp(v, "f16")) sp.dtype = HC_DTYPE_F16;
            else if (!strcmp(v, "f32")) sp.dtype = HC_DTYPE_F32;
            else return cli_usage_error("save", "--dtype must be bf16, f16 or f32");
        } else if (!strcmp(a, "--merge-lora")) {
            if (!(merge = cli_value(argc, argv, &i, "save"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--max-shard-size")) {
            if (!(v = cli_value(argc, argv, &i, "save"))) return EXIT_USAGE;
            if (!cli_parse_int(v, 1, INT64_MAX, &sp.max_shard_bytes))
                return cli_usage_error("save", "--max-shard-size must be a positive number of bytes");
        } else if (a[0] == '-' && a[1]) {
            return cli_usage_error("save", "unknown option '%s'", a);
        } else if (!out) {
            out = a;
        } else {
            return cli_usage_error("save", "one output folder, please ('%s' is a second)", a);
        }
    }
    if (!out) return cli_usage_error("save", "give the output folder");
    if (!model) model = cli_default_model();
    if (merge) { /* the model with its adapter, merged in RAM, then written */
        hc_model_params mp = hc_model_default_params();
        mp.use_mmap = false;
        mp.repack = false; /* merging writes the weights in their stored layout */
        mp.lora_path = merge;
        hc_model *m = NULL;
        hc_status st = hc_model_load(model, &mp, &m);
        if (!st) st = hc_model_lora_merge(m);
        if (!st) st = hc_checkpoint_save(hc_model_checkpoint(m), out, &sp);
        hc_model_free(m);
        if (st) return cli_fail("save", st);
        printf("%s\n", out);
        return EXIT_OK;
    }
    char *local = NULL;
    hc_checkpoint *ck = NULL;
    hc_status st = hc_resolve_model_path(model, &local);
    if (!st) st = hc_checkpoint_open(local, NULL, &ck);
    if (!st && !hc_checkpoint_config(ck))
        st = hc_fail(HC_ERR_INVALID_ARG, "%s: save needs a checkpoint folder with config.json", local);
    if (!st) st = hc_checkpoint_save(ck, out, &sp);
    hc_checkpoint_free(ck);
    free(local);
    if (st) return cli_fail("save", st);
    printf("%s\n", out);
    return EXIT_OK;
}
