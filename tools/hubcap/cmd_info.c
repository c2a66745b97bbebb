/* hubcap info: what a checkpoint holds. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "format/json.h"

static const char help[] =
    "usage: hubcap info [-m DIR] [--tensors] [--json] [--no-mmap]\n"
    "\n"
    "Shows the architecture, parameter count, dtypes, shards and config of a checkpoint\n"
    "folder (or of a single .safetensors file). Only headers are read.\n"
    "\n"
    "  -m, --model DIR   the snapshot folder (default: the bundled stories260K)\n"
    "  --tensors         list every tensor: name, dtype, shape\n"
    "  --json            print the same as one JSON object\n"
    "  --no-mmap         read files into memory instead of mapping them\n";

/* 3.11B parameters, but 6.23G bytes */
static void human_count(char *buf, size_t cap, double v, bool bytes) {
    const char *units[] = {"", "K", "M", bytes ? "G" : "B", "T"};
    int u = 0;
    while (v >= 1000 && u < 4) {
        v /= 1000;
        u++;
    }
    snprintf(buf, cap, u ? "%.2f%s" : "%.0f%s", v, units[u]);
}

static void print_shape(FILE *f, const hc_tensor_info *t) {
    fputc('[', f);
    for (int d = 0; d < t->n_dims; d++) fprintf(f, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    fputc(']', f);
}

int cmd_info(int argc, char **argv) {
    const char *model = NULL;
    bool tensors = false, json = false;
    hc_checkpoint_params cp = hc_checkpoint_default_params();
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(help, stdout);
            return EXIT_OK;
        } else if (!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) {
            if (!(model = cli_value(argc, argv, &i, "info"))) return EXIT_USAGE;
        } else if (!strcmp(argv[i], "--tensors")) {
            tensors = true;
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--no-mmap")) {
            cp.use_mmap = false;
        } else {
            return cli_usage_error("info", "unknown option '%s'", argv[i]);
        }
    }
    if (!model) model = cli_default_model();
    hc_checkpoint *ck;
    hc_status st = hc_checkpoint_open(model, &cp, &ck);
    if (st) return cli_fail("info", st);

    const int64_t n = hc_checkpoint_n_tensors(ck);
    int64_t params = 0;
    int64_t per_dtype[HC_DTYPE_COUNT] = {0};
    for (int64_t i = 0; i < n; i++) {
        const hc_tensor_info *t = hc_checkpoint_tensor(ck, i);
        params += t->n_elements;
        per_dtype[t->dtype] += t->n_elements;
    }
    const hc_model_config *c = hc_checkpoint_config(ck);
    /* a mixture of experts: a token reads K of each layer's E experts (gate, up, down) */
    int64_t active = params;
    if (c && c->n_experts > 0)
        active -= c->n_layers * (c->n_experts - c->n_experts_per_tok) * 3 * c->intermediate_size * c->hidden_size;
    const unsigned long long bytes = (unsigned long long)hc_checkpoint_bytes_on_disk(ck);
    FILE *f = stdout;
    if (json) {
        fprintf(f, "{\"path\":");
        hc_json_write_string(f, model);
        fprintf(f,
                ",\"parameters\":%lld,\"active_parameters\":%lld,\"tensor_count\":%lld,\"shards\":%d,"
                "\"bytes_on_disk\":%llu,\"dtypes\":{",
                (long long)params, (long long)active, (long long)n, hc_checkpoint_n_shards(ck), bytes);
        bool first = true;
        for (int d = 0; d < HC_DTYPE_COUNT; d++) {
            if (!per_dtype[d]) continue;
            fprintf(f, "%s\"%s\":%lld", first ? "" : ",", hc_dtype_name((hc_dtype)d), (long long)per_dtype[d]);
            first = false;
        }
        fprintf(f, "}");
        if (c) {
            fprintf(f, ",\"architecture\":");
            hc_json_write_string(f, c->architecture);
            fprintf(f, ",\"model_type\":");
            hc_json_write_string(f, c->model_type);
            fprintf(f, ",\"text_model_type\":");
            hc_json_write_string(f, c->text_model_type);
            fprintf(f,
                    ",\"context_length\":%lld,\"vocab_size\":%lld,\"hidden_size\":%lld,\"intermediate_size\":%lld,"
                    "\"layers\":%lld,\"heads\":%lld,\"kv_heads\":%lld,\"head_dim\":%lld,\"rope_type\":\"%s\","
                    "\"rope_theta\":%g,\"tied_embeddings\":%s,\"sliding_window\":%lld,\"experts\":%lld,"
                    "\"experts_per_token\":%lld",
                    (long long)c->max_position_embeddings, (long long)c->vocab_size, (long long)c->hidden_size,
                    (long long)c->intermediate_size, (long long)c->n_layers, (long long)c->n_heads,
                    (long long)c->n_kv_heads, (long long)c->head_dim,
                    c->rope.type == HC_ROPE_NONE ? "none" : hc_rope_type_name(c->rope.type), c->rope.theta,
                    c->tie_word_embeddings ? "true" : "false", (long long)c->sliding_window,
                    (long long)c->n_experts, (long long)c->n_experts_per_tok);
        }
        if (tensors) {
            fprintf(f, ",\"tensors\":[");
            for (int64_t i = 0; i < n; i++) {
                const hc_tensor_info *t = hc_checkpoint_tensor(ck, i);
                fprintf(f, "%s{\"name\":", i ? "," : "");
                hc_json_write_string(f, t->name);
                fprintf(f, ",\"dtype\":\"%s\",\"shape\":", hc_dtype_name(t->dtype));
                print_shape(f, t);
                fprintf(f, "}");
            }
            fprintf(f, "]");
        }
        fprintf(f, "}\n");
    } else {
        char buf[64];
        fprintf(f, "path          %s\n", model);
        if (c) {
            fprintf(f, "architecture  %s (model_type %s", *c->architecture ? c->architecture : "?", c->model_type);
            if (strcmp(c->model_type, c->text_model_type)) fprintf(f, "; its language model: %s", c->text_model_type);
            fprintf(f, ")\n");
        }
        human_count(buf, sizeof buf, (double)params, false);
        fprintf(f, "parameters    %s (%lld)", buf, (long long)params);
        if (active != params) {
            human_count(buf, sizeof buf, (double)active, false);
            fprintf(f, ", %s active a token", buf);
        }
        fprintf(f, "\n");
        fprintf(f, "dtypes       ");
        for (int d = 0; d < HC_DTYPE_COUNT; d++)
            if (per_dtype[d]) fprintf(f, " %s (%lld)", hc_dtype_name((hc_dtype)d), (long long)per_dtype[d]);
        fprintf(f, "\ntensors       %lld\n", (long long)n);
        fprintf(f, "shards        %d\n", hc_checkpoint_n_shards(ck));
        human_count(buf, sizeof buf, (double)bytes, true);
        fprintf(f, "on disk       %sB (%llu bytes)\n", buf, bytes);
        if (c) {
            fprintf(f, "context       %lld\n", (long long)c->max_position_embeddings);
            fprintf(f, "vocab         %lld\n", (long long)c->vocab_size);
            fprintf(f, "hidden        %lld\n", (long long)c->hidden_size);
            fprintf(f, "intermediate  %lld\n", (long long)c->intermediate_size);
            fprintf(f, "layers        %lld\n", (long long)c->n_layers);
            fprintf(f, "heads         %lld (kv heads %lld)\n", (long long)c->n_heads, (long long)c->n_kv_heads);
            fprintf(f, "head_dim      %lld\n", (long long)c->head_dim);
            if (c->rope.type == HC_ROPE_NONE)
                fprintf(f, "positions     learned\n");
            else
                fprintf(f, "rope          %s (theta %g%s)\n", hc_rope_type_name(c->rope.type), c->rope.theta,
                        c->has_rope_local ? ", local layers differ" : "");
            if (c->sliding_window) fprintf(f, "sliding       window %lld\n", (long long)c->sliding_window);
            if (c->n_experts) fprintf(f, "experts       %lld (top %lld)\n", (long long)c->n_experts, (long long)c->n_experts_per_tok);
            if (c->embedding_multiplier != 1 || c->residual_multiplier != 1 || c->attention_multiplier > 0 ||
                c->logits_scaling != 1)
                fprintf(f, "multipliers   embedding %g, residual %g, attention %g, logits / %g\n", c->embedding_multiplier,
                        c->residual_multiplier, c->attention_multiplier > 0 ? c->attention_multiplier : 1.0 / sqrt((double)c->head_dim),
                        c->logits_scaling);
            fprintf(f, "tied          %s\n", c->tie_word_embeddings ? "yes" : "no");
        }
        if (tensors) {
            fprintf(f, "\n");
            for (int64_t i = 0; i < n; i++) {
                const hc_tensor_info *t = hc_checkpoint_tensor(ck, i);
                fprintf(f, "%s %s ", t->name, hc_dtype_name(t->dtype));
                print_shape(f, t);
                fputc('\n', f);
            }
        }
    }
    hc_checkpoint_free(ck);
    return EXIT_OK;
}
