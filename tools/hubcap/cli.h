/* Shared pieces of the hubcap subcommands: argument helpers, model defaults, errors. */
#ifndef HUBCAP_CLI_H
#define HUBCAP_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "hubcap.h"

/* Exit codes: 0 ok, 1 runtime error (bad file, bad model), 2 usage error (bad flag). */
enum { EXIT_OK = 0, EXIT_ERROR = 1, EXIT_USAGE = 2 };

/* The bundled model, used when -m is not given (HUBCAP_MODEL overrides). */
const char *cli_default_model(void);

/* Prints "hubcap <cmd>: <message>" for a failed library call and returns EXIT_ERROR. */
int cli_fail(const char *cmd, hc_status st);
/* Prints a usage error and returns EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...);
/* EXIT_OK when text[0, n) is UTF-8 without NUL bytes; else prints "hubcap <cmd>: <what>:LINE:COL:
 * invalid UTF-8" (or "a NUL byte") and returns EXIT_ERROR. Input is text, as transformers' is. */
int cli_check_text(const char *cmd, const char *what, const char *text, size_t n);

/* Takes the value of option argv[*i] (e.g. "-m DIR"), advancing *i; NULL (and a message) when
 * it is missing. */
const char *cli_value(int argc, char **argv, int *i, const char *cmd);

/* Parses "1 2 3" or "1,2,3" into a malloc'd array. Returns false with a message on bad input. */
bool cli_parse_ids(const char *text, int32_t **ids, int64_t *n, const char *cmd);
bool cli_parse_int(const char *text, int64_t lo, int64_t hi, int64_t *out);
bool cli_parse_float(const char *text, double *out);
bool cli_parse_device(const char *text, hc_device *out);

/* The model flags every model command takes: --device, --threads, --quantize, --no-mmap,
 * --mlock. Returns 1 if argv[*i] was one (advancing *i), 0 if not, -1 after a usage error. */
int cli_model_flag(int argc, char **argv, int *i, const char *cmd, hc_model_params *mp);
/* hc_model_default_params() with the device from $HUBCAP_DEVICE; false (after saying why)
 * when that variable holds no device. */
bool cli_model_defaults(hc_model_params *mp, const char *cmd);
/* Sampling flags given on the command line; unset ones keep the model's defaults. */
typedef struct {
    double temperature, top_p, min_p, repeat_penalty, frequency_penalty, presence_penalty; /* < 0 / NAN: unset */
    int64_t top_k, seed;                                                                    /* -1: unset */
    bool has_frequency, has_presence;
} cli_sampling;

void cli_sampling_init(cli_sampling *cs);
/* --temperature --top-k --top-p --min-p --repeat-penalty --frequency-penalty --presence-penalty
 * --seed: 1 if argv[*i] was one (advancing *i), 0 if not, -1 after a usage error. */
int cli_sampling_flag(int argc, char **argv, int *i, const char *cmd, cli_sampling *cs);
/* Overrides p with the flags given; an unset seed becomes a random one. */
void cli_sampling_apply(const cli_sampling *cs, hc_sampler_params *p);

#define CLI_MODEL_FLAGS_HELP                                                                                          \
    "  --threads N              CPU threads (default: all cores)\n"                                                  \
    "  --quantize F             quantize weights on load: q8_0, q4_0 or q4_k\n"                                            \
    "  --kv-dtype T             KV cache dtype: f32, f16 or bf16 (default: f32 on the CPU, the\n"                    \
    "                           compute dtype on CUDA)\n"                                                           \
    "  --dtype T                matmul compute dtype: f32, bf16 or f16 (CUDA). CPU default: bf16 for\n"          \
    "                           bf16 weights (AVX512_BF16), else f32; CUDA default: bf16. Alias --compute-dtype\n" \
    "  --device D               cpu (default, or $HUBCAP_DEVICE), cuda or auto\n"                                    \
    "  --no-mmap                read weights into RAM (huge pages) instead of mapping them; on a CPU\n"           \
    "                           with AVX-512 bf16 matrices are then repacked, 16 rows interleaved\n"              \
    "  --no-repack              keep the stored layout in RAM\n"                                                   \
    "  --mlock                  lock the weights in RAM\n"                                                          \
    "  --lora DIR               apply a LoRA adapter (PEFT's adapter_config.json + adapter_model.safetensors)\n"

int cmd_info(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_save(int argc, char **argv);
int cmd_grad(int argc, char **argv);
int cmd_finetune(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_template(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_download(int argc, char **argv);
int cmd_cache(int argc, char **argv);
int cmd_bench(int argc, char **argv);

/* Shows download progress on stderr when it is a terminal (and not quiet). */
void cli_setup_progress(bool quiet);

#endif
