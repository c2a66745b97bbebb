/* hubcap finetune: full fine-tuning on a text or JSONL file, with a Keras-style progress line,
 * then the trained checkpoint written as a standard HF folder. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/status.h"
#include "cli.h"

static const char help[] =
    "usage: hubcap finetune [-m MODEL] --data FILE --out DIR [options]\n"
    "\n"
    "Fine-tunes every weight of MODEL (default: the bundled stories260K) on FILE: plain text\n"
    "(the whole file chunked to --seq-len, or --lines: one example a line) or JSONL with a\n"
    "\"text\" field or \"messages\" (chat template; the loss only on assistant turns). AdamW with linear warmup and cosine decay, clipping by global norm. Each\n"
    "epoch prints a progress line; held-out rows are evaluated at each epoch's end. The result\n"
    "is written to DIR as a standard Hugging Face checkpoint (CPU, f32 master weights).\n"
    "\n"
    "  --epochs N          passes over the data (default 1)\n"
    "  --steps N           optimizer steps in all (overrides --epochs)\n"
    "  --batch-size N      rows a micro-batch (default 8)\n"
    "  --grad-accum N      micro-batches a step (default 1)\n"
    "  --seq-len N         tokens a row (default 128)\n"
    "  --lr X              peak learning rate (default 1e-3)\n"
    "  --warmup N          warmup steps (default 0)\n"
    "  --weight-decay X    AdamW's decoupled decay (default 0.01)\n"
    "  --clip X            clip gradients to this global norm (default 1, 0: off)\n"
    "  --eval-fraction X   rows held out for evaluation (default 0.1)\n"
    "  --lines             one example a line (text files)\n"
    "  --checkpointing     keep only each layer's input and recompute the rest in the backward\n"
    "  --seed N            shuffling (default 42)\n"
    "  --lora-rank R       train a LoRA adapter of rank R instead of every weight (the base stays\n"
    "                      mapped and frozen); DIR then receives the adapter in PEFT's format\n"
    "  --lora-alpha A      LoRA scale numerator (default 2 x rank)\n"
    "  --lora-targets L    the checkpoint's module names (q_proj,k_proj,v_proj,o_proj,gate_proj,\n"
    "                      up_proj,down_proj; Phi-3 qkv_proj,o_proj,gate_up_proj,down_proj; Phi-2\n"
    "                      q_proj,k_proj,v_proj,dense,fc1,fc2; GPT-2 c_attn,c_proj,c_fc) or\n"
    "                      all-linear (default: the attention projections)\n"
    "  --resume DIR        continue a run that Ctrl-C stopped: DIR is what it saved (its weights\n"
    "                      and trainer_state.safetensors); give the same data and options\n"
    "\n"
    "Ctrl-C stops after the current step and saves DIR with trainer_state.safetensors, which\n"
    "--resume DIR continues from.\n"
    "  --device D          cpu (default), cuda or auto: on a GPU the forward and backward run\n"
    "                      there (matmul operands in --dtype, bf16 by default) and AdamW on the\n"
    "                      host over f32 master weights\n"
    "  --dtype T           f32, bf16 or f16 (GPU matmul operands)\n";

static volatile int stop_requested;
static void on_sigint(int sig) {
    (void)sig;
    stop_requested = 1;
}

static void bar(int64_t done, int64_t total, char *out, size_t cap) {
    const int width = 20, full = total ? (int)(width * done / total) : width;
    size_t o = 0;
    for (int i = 0; i < width && o + 4 < cap; i++) {
        const char *c = i < full ? "\u2501" : "\u2500"; /* ━ and ─, as Keras draws them */
        memcpy(out + o, c, strlen(c));
        o += strlen(c);
    }
    out[o] = 0;
}

static void progress(void *user, const hc_train_progress *p) {
    (void)user;
    char b[128];
    bar(p->step_in_epoch, p->steps_per_epoch, b, sizeof b);
    const bool tty = isatty(fileno(stdout));
    if (!tty && !p->epoch_end) return;
    if (p->step_in_epoch == 1 || !tty) printf("Epoch %lld/%lld\n", (long long)p->epoch, (long long)p->epochs);
    printf("%s%lld/%lld %s %.0fs %.0fms/step - loss: %.4f - sparse_categorical_accuracy: %.4f", tty ? "\r" : "",
           (long long)p->step_in_epoch, (long long)p->steps_per_epoch, b, p->elapsed_s,
           1000.0 * p->elapsed_s / (double)p->step_in_epoch, p->loss, p->accuracy);
    if (p->epoch_end && p->val_loss >= 0)
        printf(" - val_loss: %.4f - val_sparse_categorical_accuracy: %.4f", p->val_loss, p->val_accuracy);
    if (p->epoch_end) printf("\n");
    fflush(stdout);
}

int cmd_finetune(int argc, char **argv) {
    const char *model = NULL, *data = NULL, *out = NULL, *resume = NULL, *lora_targets = NULL;
    int64_t lora_rank = 0;
    double lora_alpha = -1;
    hc_finetune_params fp = hc_finetune_default_params();
    hc_model_params mp;
    if (!cli_model_defaults(&mp, "finetune")) return EXIT_USAGE;
    if (!getenv("HUBCAP_DEVICE")) mp.device = HC_DEVICE_CPU;
    hc_dtype compute = HC_DTYPE_AUTO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int64_t n;
        double x;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(help, stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(model = cli_value(argc, argv, &i, "finetune"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--data")) {
            if (!(data = cli_value(argc, argv, &i, "finetune"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--out")) {
            if (!(out = cli_value(argc, argv, &i, "finetune"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--lora-rank")) {
            if (!(v = cli_value(argc, argv, &i, "finetune"))) return EXIT_USAGE;
            if (!cli_parse_int(v, 1, 4096, &lora_rank)) return cli_usage_error("finetune", "--lora-rank must be an integer from 1 to 4096");
        } else if (!strcmp(a, "--lora-alpha")) {
            if (!(v = cli_value(argc, argv, &i, "finetune"))) return EXIT_USAGE;
            if (!cli_parse_float(v, &lora_alpha) || !(lora_alpha > 0)) return cli_usage_error("finetune", "--lora-alpha must be > 0");
        } else if (!strcmp(a, "--lora-targets")) {
            if (!(lora_targets = cli_value(argc, argv, &i, "finetune"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--resume")) {
            if (!(resume = cli_value(argc, argv, &i, "finetune"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--lines")) {
            fp.lines = true;
        } else if (!strcmp(a, "--checkpointing")) {
            fp.checkpointing = true;
        } else if (!strcmp(a, "--device")) {
            if (!(v = cli_value(argc, argv, &i, "finetune"))) return EXIT_USAGE;
            if (!cli_parse_device(v, &mp.device)) return cli_usage_error("finetune", "--device must be cpu, cuda or auto");
        } else if (!strcmp(a, "--dtype") || !strcmp(a, "--compute-dtype")) {
            if (!(v = cli_value(argc, argv, &i, "finetune"))) return EXIT_USAGE;
            if (!strcmp(v, "f32")) compute = HC_DTYPE_F32;
            else if (!strcmp(v, "bf16")) compute = HC_DTYPE_BF16;
            else if (!strcmp(v, "f16")) compute = HC_DTYPE_F16;
            else return cli_usage_error("finetune", "%s must be f32, bf16 or f16", a);
        } else if (!strcmp(a, "--epochs") || !strcmp(a, "--steps") || !strcmp(a, "--batch-size") ||
                   !strcmp(a, "--grad-accum") || !strcmp(a, "--seq-len") || !strcmp(a, "--warmup") ||
                   !strcmp(a, "--seed")) {
            if (!(v = cli_value(argc, argv, &i, "finetune"))) return EXIT_USAGE;
            const int64_t lo = !strcmp(a, "--warmup") || !strcmp(a, "--seed") ? 0 : !strcmp(a, "--seq-len") ? 2 : 1;
            if (!cli_parse_int(v, lo, INT32_MAX, &n)) return cli_usage_error("finetune", "%s must be an integer >= %lld", a, (long long)lo);
            if (!strcmp(a, "--epochs")) fp.epochs = n;
            else if (!strcmp(a, "--steps")) fp.steps = n;
            else if (!strcmp(a, "--batch-size")) fp.batch_size = n;
            else if (!strcmp(a, "--grad-accum")) fp.grad_accum = n;
            else if (!strcmp(a, "--seq-len")) fp.seq_len = n;
            else if (!strcmp(a, "--warmup")) fp.warmup_steps = n;
            else fp.seed = (uint64_t)n;
        } else if (!strcmp(a, "--lr") || !strcmp(a, "--weight-decay") || !strcmp(a, "--clip") ||
                   !strcmp(a, "--eval-fraction")) {
            if (!(v = cli_value(argc, argv, &i, "finetune"))) return EXIT_USAGE;
            if (!cli_parse_float(v, &x) || !(x >= 0) || (!strcmp(a, "--lr") && !(x > 0)) ||
                (!strcmp(a, "--eval-fraction") && !(x < 1)))
                return cli_usage_error("finetune", "%s: '%s' is out of range", a, v);
            if (!strcmp(a, "--lr")) fp.lr = x;
            else if (!strcmp(a, "--weight-decay")) fp.weight_decay = x;
            else if (!strcmp(a, "--clip")) fp.clip_norm = x;
            else fp.eval_fraction = x;
        } else if (!strcmp(a, "--threads")) {
            int mf = cli_model_flag(argc, argv, &i, "finetune", &mp);
            if (mf < 0) return EXIT_USAGE;
        } else {
            return cli_usage_error("finetune", "unknown option '%s'", a);
        }
    }
    if (!data) return cli_usage_error("finetune", "--data is required");
    if (!out) return cli_usage_error("finetune", "--out is required");
    char resume_state[4200], state_tmp[4200], state_final[4300];
    if (resume) {
        /* full fine-tuning resumes from the saved weights; LoRA from the saved adapter on -m */
        if (model && !lora_rank) return cli_usage_error("finetune", "--resume DIR loads the model from DIR: leave out -m");
        if (!lora_rank) model = resume;
        snprintf(resume_state, sizeof resume_state, "%s/trainer_state.safetensors", resume);
        fp.resume_state = resume_state;
    }
    if (!model) model = cli_default_model();
    mp.use_mmap = lora_rank > 0; /* full fine-tuning updates the weights in place */
    mp.repack = false;           /* training reads the weights in their stored layout */
    mp.compute_dtype = compute != HC_DTYPE_AUTO ? compute : mp.device == HC_DEVICE_CPU ? HC_DTYPE_F32 : HC_DTYPE_AUTO;
    fp.on_progress = progress;
    fp.stop = &stop_requested;
    snprintf(state_tmp, sizeof state_tmp, "%s.trainer_state.tmp", out);
    snprintf(state_final, sizeof state_final, "%s/trainer_state.safetensors", out);
    fp.save_state = state_tmp;
    signal(SIGINT, on_sigint);
    hc_model *m = NULL;
    hc_train_progress last = {0};
    hc_status st = hc_model_load(model, &mp, &m);
    if (!st && lora_rank && resume) st = hc_model_lora_load(m, resume);
    else if (!st && lora_rank) st = hc_model_lora_init(m, lora_rank, lora_alpha > 0 ? lora_alpha : 2.0 * (double)lora_rank,
                                                       lora_targets, fp.seed);
    if (!st) st = hc_finetune(m, data, &fp, &last);
    signal(SIGINT, SIG_DFL);
    if (!st && last.step_s > 0)
        printf("speed: %.1f ms/step after the first, %.0f tokens/s\n", 1000.0 * last.step_s,
               (double)last.tokens_per_step / last.step_s);
    if (!st && last.stopped) printf("\nstopped at step %lld of %lld\n", (long long)last.step, (long long)last.total_steps);
    else if (!st && last.val_loss >= 0)
        printf("eval loss %.4f, perplexity %.2f, accuracy %.4f\n", last.val_loss, exp(last.val_loss), last.val_accuracy);
    if (!st) st = lora_rank ? hc_model_lora_save(m, out) : hc_checkpoint_save(hc_model_checkpoint(m), out, NULL);
    /* A stopped run keeps its optimizer state beside its weights, for --resume. */
    if (!st && last.stopped && rename(state_tmp, state_final) != 0)
        st = hc_fail(HC_ERR_IO, "%s: cannot move the trainer state into place", state_final);
    remove(state_tmp);
    if (!st) printf("saved %s%s\n", out, last.stopped ? " (resume with --resume)" : "");
    hc_model_free(m);
    return st ? cli_fail("finetune", st) : EXIT_OK;
}
