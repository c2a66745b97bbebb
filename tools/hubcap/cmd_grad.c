/* hubcap grad: the loss of a batch and the gradient of every parameter, to a file (for tests
 * and debugging). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "base/status.h"
#include "format/safetensors.h"

static const char help[] =
    "usage: hubcap grad [-m MODEL] --batch FILE.safetensors --out FILE.safetensors\n"
    "\n"
    "Reads input_ids (int64 [B, T]) from the batch file, computes the mean next-token cross\n"
    "entropy (labels are the ids shifted, as transformers' causal LM loss) and writes 'loss'\n"
    "(f32 [1]) and 'grad.<HF tensor name>' (f32, the tensor's shape) for every parameter the\n"
    "model uses; a tied LM head's gradient is in the embedding's. f32 unless --dtype says.\n"
    "\n"
    "  -m, --model DIR   the model (default: the bundled stories260K)\n"
    "  --batch FILE      the ids\n"
    "  --out FILE        written whole or not at all\n"
    "  --device D        cpu (default), cuda or auto\n"
    "  --dtype T         f32 (default), bf16 or f16: the matmul operands on a GPU\n";

int cmd_grad(int argc, char **argv) {
    const char *model = NULL, *batch = NULL, *out = NULL;
    hc_model_params mp;
    if (!cli_model_defaults(&mp, "grad")) return EXIT_USAGE;
    if (!getenv("HUBCAP_DEVICE")) mp.device = HC_DEVICE_CPU;
    mp.compute_dtype = HC_DTYPE_F32;
    mp.repack = false; /* gradients read the weights in their stored layout */
    for (int i = 1; i < argc; i++) {
        const int mf = cli_model_flag(argc, argv, &i, "grad", &mp);
        if (mf < 0) return EXIT_USAGE;
        if (mf > 0) continue;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(help, stdout);
            return EXIT_OK;
        } else if (!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) {
            if (!(model = cli_value(argc, argv, &i, "grad"))) return EXIT_USAGE;
        } else if (!strcmp(argv[i], "--batch")) {
            if (!(batch = cli_value(argc, argv, &i, "grad"))) return EXIT_USAGE;
        } else if (!strcmp(argv[i], "--out")) {
            if (!(out = cli_value(argc, argv, &i, "grad"))) return EXIT_USAGE;
        } else {
            return cli_usage_error("grad", "unknown option '%s'", argv[i]);
        }
    }
    if (!batch) return cli_usage_error("grad", "--batch is required");
    if (!out) return cli_usage_error("grad", "--out is required");
    if (!model) model = cli_default_model();
    hc_safetensors bf;
    hc_status st = hc_safetensors_open(&bf, batch, true);
    if (st) return cli_fail("grad", st);
    const hc_tensor_info *ti = hc_safetensors_find(&bf, "input_ids");
    if (!ti || ti->dtype != HC_DTYPE_I64 || ti->n_dims != 2) {
        hc_safetensors_close(&bf);
        fprintf(stderr, "hubcap grad: %s: needs a tensor 'input_ids', int64 [B, T]\n", batch);
        return EXIT_ERROR;
    }
    const int64_t B = ti->shape[0], T = ti->shape[1];
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(B * T + 1));
    for (int64_t i = 0; ids && i < B * T; i++) {
        const int64_t v = ((const int64_t *)ti->data)[i];
        ids[i] = v < INT32_MIN || v > INT32_MAX ? -1 : (int32_t)v;
    }
    hc_safetensors_close(&bf);
    hc_model *m = NULL;
    hc_grads *g = NULL;
    double loss = 0;
    st = ids ? HC_OK : hc_fail(HC_ERR_NOMEM, "out of memory");
    if (!st) st = hc_model_load(model, &mp, &m);
    if (!st) st = hc_grads_new(m, &g);
    if (!st) st = hc_model_loss_grad(m, ids, NULL, B, T, g, &loss, NULL);
    if (!st) {
        const int64_t n = hc_grads_count(g);
        hc_tensor_write *w = calloc((size_t)n + 1, sizeof *w);
        char **names = calloc((size_t)n + 1, sizeof *names);
        float loss_f = (float)loss;
        int64_t k = 0;
        if (!w || !names) {
            free(w), free(names), free(ids);
            hc_grads_free(g);
            hc_model_free(m);
            return cli_fail("grad", hc_fail(HC_ERR_NOMEM, "out of memory"));
        }
        w[k].name = "loss";
        w[k].dtype = HC_DTYPE_F32;
        w[k].n_dims = 1;
        w[k].shape[0] = 1;
        w[k++].data = &loss_f;
        for (int64_t i = 0; !st && i < n; i++) {
            const hc_tensor_info *t = hc_grads_tensor(g, i);
            if (!hc_grads_data(g, i)) continue;
            size_t len = strlen(t->name) + 6;
            if (!(names[i] = malloc(len))) {
                st = hc_fail(HC_ERR_NOMEM, "out of memory");
                break;
            }
            snprintf(names[i], len, "grad.%s", t->name);
            w[k].name = names[i];
            w[k].dtype = HC_DTYPE_F32;
            w[k].n_dims = t->n_dims;
            memcpy(w[k].shape, t->shape, sizeof t->shape);
            w[k++].data = hc_grads_data(g, i);
        }
        if (!st) st = hc_safetensors_write(out, w, k, NULL, 0);
        for (int64_t i = 0; names && i < n; i++) free(names[i]);
        free(names);
        free(w);
        if (!st) printf("loss %.6f, %lld gradients -> %s\n", loss, (long long)(k - 1), out);
    }
    free(ids);
    hc_grads_free(g);
    hc_model_free(m);
    return st ? cli_fail("grad", st) : EXIT_OK;
}
