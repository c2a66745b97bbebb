/*
 * hubcap.h - run Hugging Face checkpoints as they are, from C.
 *
 * The one public header. Every object is an opaque handle; every call that can fail returns
 * an hc_status and leaves a one-line message for hc_last_error(). hc_*_free(NULL) is a no-op.
 *
 * Usage:
 *
 *     hc_model *model;
 *     if (hc_model_load("models/stories260K", NULL, &model) != HC_OK) {   // weights, tokenizer,
 *         fprintf(stderr, "%s\n", hc_last_error());                       // generation config
 *         return 1;
 *     }
 *     hc_generate_params gp = hc_generate_default_params(model);  // sampling from the model
 *     gp.max_new_tokens = 40;
 *     const char *prompt = "Once upon a time";
 *     hc_generation out;
 *     if (hc_generate(model, &prompt, 1, &gp, &out, NULL) == HC_OK) {
 *         printf("%s%s\n", prompt, out.text);       // ", there was a little girl named Lily..."
 *         hc_generation_free(&out);
 *     }
 *     hc_model_free(model);
 *
 * Lower down: hc_model_tokenizer() encodes and decodes, an hc_session holds one sequence's
 * KV cache and runs forward passes to logits or hidden states, hc_sampler picks tokens.
 *
 * Ownership: a pointer returned by an hc_* getter belongs to the object it came from and lives
 * as long as that object. An object created by hc_*_new / _open / _load belongs to the caller,
 * who releases it with the matching hc_*_free. A session must be freed before its model.
 */
#ifndef HUBCAP_H
#define HUBCAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status ------------------------------------------------------------------------------ */

/* X(name, code, description): the one list of statuses. */
#define HC_STATUS_MAP(X)                                                                      \
    X(OK, 0, "success")                                                                       \
    X(ERR_IO, 1, "input/output error")                                                        \
    X(ERR_FORMAT, 2, "malformed file")                                                        \
    X(ERR_UNSUPPORTED, 3, "unsupported feature")                                              \
    X(ERR_INVALID_ARG, 4, "invalid argument")                                                 \
    X(ERR_NOT_FOUND, 5, "not found")                                                          \
    X(ERR_NOMEM, 6, "out of memory")                                                          \
    X(ERR_RANGE, 7, "value out of range")                                                     \
    X(ERR_DEVICE, 8, "GPU or driver error")

typedef enum {
#define HC_STATUS_ENUM_(name, code, desc) HC_##name = code,
    HC_STATUS_MAP(HC_STATUS_ENUM_)
#undef HC_STATUS_ENUM_
} hc_status;

/* "HC_ERR_FORMAT" style name and a short description of a status. Static strings. */
const char *hc_status_name(hc_status st);
const char *hc_status_describe(hc_status st);

/* The message of the last failed call on this thread, e.g.
 * "models/x/model.safetensors: tensor 'a' ends at byte 900 past the data end 512".
 * Empty when nothing has failed. Thread-local; valid until the next failing call. */
const char *hc_last_error(void);

/* ---- dtypes ------------------------------------------------------------------------------ */

/* Every dtype the safetensors format defines with a whole number of bytes per element. */
#define HC_DTYPE_MAP(X)                                                                       \
    X(F64, "F64", 8) X(F32, "F32", 4) X(F16, "F16", 2) X(BF16, "BF16", 2)                      \
    X(I64, "I64", 8) X(I32, "I32", 4) X(I16, "I16", 2) X(I8, "I8", 1)                          \
    X(U64, "U64", 8) X(U32, "U32", 4) X(U16, "U16", 2) X(U8, "U8", 1)                          \
    X(BOOL, "BOOL", 1) X(F8_E4M3, "F8_E4M3", 1) X(F8_E5M2, "F8_E5M2", 1)                      \
    X(F8_E8M0, "F8_E8M0", 1)

typedef enum {
#define HC_DTYPE_ENUM_(name, str, size) HC_DTYPE_##name,
    HC_DTYPE_MAP(HC_DTYPE_ENUM_)
#undef HC_DTYPE_ENUM_
    HC_DTYPE_COUNT
} hc_dtype;

const char *hc_dtype_name(hc_dtype dt); /* "BF16" */
size_t hc_dtype_size(hc_dtype dt);      /* bytes per element */

/* ---- checkpoints: a folder with config.json and *.safetensors ----------------------------- */

#define HC_MAX_DIMS 8

typedef struct hc_checkpoint hc_checkpoint;

typedef struct {
    bool use_mmap; /* true: map the files; false: read them into RAM (--no-mmap) */
} hc_checkpoint_params;

hc_checkpoint_params hc_checkpoint_default_params(void);

/* Opens a snapshot folder (config.json + model.safetensors or a sharded index), or a single
 * .safetensors file (then no config is read). Only headers are read: O(header). */
hc_status hc_checkpoint_open(const char *path, const hc_checkpoint_params *params,
                             hc_checkpoint **out);
void hc_checkpoint_free(hc_checkpoint *ck);

typedef struct {
    const char *name;
    hc_dtype dtype;
    int n_dims;
    int64_t shape[HC_MAX_DIMS];
    int64_t n_elements;
    size_t n_bytes;
    const void *data; /* zero-copy view into the mapped (or read) file */
    int shard;        /* index into the checkpoint's shard list */
} hc_tensor_info;

int64_t hc_checkpoint_n_tensors(const hc_checkpoint *ck);
const hc_tensor_info *hc_checkpoint_tensor(const hc_checkpoint *ck, int64_t i); /* sorted by name */
const hc_tensor_info *hc_checkpoint_find(const hc_checkpoint *ck, const char *name); /* NULL if absent */
int hc_checkpoint_n_shards(const hc_checkpoint *ck);
const char *hc_checkpoint_shard_path(const hc_checkpoint *ck, int i);
uint64_t hc_checkpoint_bytes_on_disk(const hc_checkpoint *ck);
const char *hc_checkpoint_path(const hc_checkpoint *ck);

/* ---- model configuration (from config.json, with transformers' defaults applied) ---------- */

typedef enum {
    HC_ROPE_NONE,    /* learned absolute positions (GPT-2) */
    HC_ROPE_DEFAULT,
    HC_ROPE_LINEAR,
    HC_ROPE_DYNAMIC,
    HC_ROPE_YARN,
    HC_ROPE_LLAMA3,
    HC_ROPE_LONGROPE, /* Phi-3.5, Phi-4-mini: per-frequency factors, short or long by sequence length */
} hc_rope_type;

#define HC_MAX_ROPE_FACTORS 256 /* longrope: at most rotary_dim / 2 factors each */

typedef struct {
    hc_rope_type type;
    double theta;
    double factor;
    double low_freq_factor, high_freq_factor;     /* llama3 */
    int64_t original_max_position_embeddings;     /* llama3, yarn, longrope (0 = absent) */
    double attention_factor;                      /* yarn, longrope (0 = derive from factor) */
    double beta_fast, beta_slow, mscale, mscale_all_dim; /* yarn (0 = default/absent) */
    bool truncate;                                /* yarn */
    int n_factors;                                /* longrope: rotary_dim / 2 */
    float short_factor[HC_MAX_ROPE_FACTORS];      /* longrope: sequences up to original_max_position_embeddings */
    float long_factor[HC_MAX_ROPE_FACTORS];       /* longrope: longer ones */
} hc_rope_config;

typedef enum { HC_ACT_SILU, HC_ACT_GELU_TANH, HC_ACT_GELU, HC_ACT_RELU } hc_activation;

#define HC_MAX_LAYERS 512

typedef struct {
    char model_type[32];   /* as config.json says, e.g. "gemma3_text" */
    char text_model_type[32]; /* the language model's: text_config's in a multimodal checkpoint
                                 (gemma3 -> gemma3_text, mistral3 -> mistral), else model_type */
    char architecture[64]; /* architectures[0], e.g. "LlamaForCausalLM" ("" if absent) */
    int64_t vocab_size, hidden_size, intermediate_size, n_layers, n_heads, n_kv_heads, head_dim;
    int64_t max_position_embeddings;
    double norm_eps;
    hc_activation act;
    bool tie_word_embeddings;
    bool qkv_bias, o_bias, mlp_bias; /* which projections carry a bias */
    int64_t rotary_dim;         /* head_dim * partial_rotary_factor */
    hc_rope_config rope;        /* global (full-attention) layers */
    hc_rope_config rope_local;  /* sliding layers, when they differ (Gemma 3) */
    bool has_rope_local;
    int64_t sliding_window;     /* 0 = none */
    bool layer_sliding[HC_MAX_LAYERS];
    bool layer_nope[HC_MAX_LAYERS];     /* SmolLM3: layers without rope (no_rope_layers[i] == 0) */
    double attn_softcap, final_softcap; /* 0 = none */
    double query_pre_attn_scalar;       /* 0 = head_dim */
    /* Granite's multipliers: embeddings times embedding_multiplier; each block's attention and MLP
     * outputs times residual_multiplier before the residual add; attention_multiplier as the
     * attention scale (0 = 1/sqrt(head_dim)); logits divided by logits_scaling. 1 = none. */
    double embedding_multiplier, residual_multiplier, attention_multiplier, logits_scaling;
    int64_t n_experts, n_experts_per_tok; /* 0 = dense */
    int64_t shared_intermediate_size;     /* qwen2_moe: its shared expert's (0 = none) */
    bool norm_topk_prob;
    bool scale_attn_weights;              /* GPT-2 (true elsewhere) */
    bool scale_attn_by_inverse_layer_idx; /* GPT-2 */
    char torch_dtype[16];
    /* generation_config.json */
    int64_t bos_token_id, pad_token_id; /* -1 = absent */
    int64_t eos_token_ids[8];
    int n_eos;
    double gen_temperature, gen_top_p, gen_repetition_penalty; /* -1 = absent */
    int64_t gen_top_k, gen_max_new_tokens;                     /* -1 = absent */
    int gen_do_sample;                                         /* -1 = absent */
} hc_model_config;

/* The typed config of an opened checkpoint; NULL when it was opened from a bare file. */
const hc_model_config *hc_checkpoint_config(const hc_checkpoint *ck);
const char *hc_rope_type_name(hc_rope_type t);
const char *hc_activation_name(hc_activation a);

/* ---- models and sessions ------------------------------------------------------------------ */

typedef enum { HC_DEVICE_CPU, HC_DEVICE_CUDA, HC_DEVICE_AUTO } hc_device;

typedef struct hc_model hc_model;
typedef struct hc_session hc_session;

/* compute_dtype: the device's own default. */
#define HC_DTYPE_AUTO HC_DTYPE_COUNT

/* Weight formats: as stored, or block-quantized when the model loads (embeddings, norms and the
 * LM head keep their stored precision). */
typedef enum { HC_WEIGHTS_AS_STORED = 0, HC_WEIGHTS_Q8_0 = 1, HC_WEIGHTS_Q4_0 = 2, HC_WEIGHTS_Q4_K = 3 } hc_weight_format;

typedef struct {
    hc_device device;
    hc_weight_format weights; /* quantize on load (--quantize) */
    bool mlock;               /* lock the weights in RAM (--mlock) */
    hc_dtype compute_dtype; /* HC_DTYPE_AUTO (default): on the CPU, BF16 for weights stored in
                               bf16 (as transformers 5 runs a checkpoint in its stored dtype) and
                               F32 otherwise; BF16 on CUDA.
                               CPU: F32 (f32 activations everywhere) or BF16: matmuls on bf16
                               weights, decode and prompts, round activations to bf16 and use
                               AVX512_BF16 (llama.cpp's numerics, faster). A CPU without
                               AVX512_BF16 computes in F32 whatever is asked.
                               hc_model_compute_dtype says what a model got.
                               CUDA: the operand type of prompt matmuls (BF16, F16 or F32; f32
                               accumulation always). --dtype / --compute-dtype */
    hc_dtype kv_dtype;      /* KV cache: F32, F16 or BF16 (half the memory); HC_DTYPE_AUTO (default):
                               F32 on the CPU, the compute dtype on CUDA */
    int n_threads;          /* 0 = all available cores */
    int64_t n_ctx;          /* the longest sequence generate() accepts; 0 = max_position_embeddings */
    bool use_mmap;
    const char *lora_path;  /* a LoRA adapter folder (PEFT) to apply, or NULL (--lora) */
    bool quant_cache;       /* with `weights` quantized: keep them in a file beside the snapshot
                               (hubcap-<format>-<key>.qcache, keyed by the shards' names, sizes and
                               times) and load that instead of quantizing again (--quant-cache) */
    bool repack;            /* for inference: on a CPU with the AVX-512 kernels, with the weights
                               read into RAM (use_mmap false), bf16 matrices are interleaved 16
                               rows at a time (the same values), so a decode reads each
                               activation once for 16 rows. Such a model cannot train, merge a
                               LoRA adapter or save its checkpoint (the stored layout is gone).
                               Default false; the CLI's inference commands turn it on
                               (--no-repack turns it off). */
} hc_model_params;

hc_model_params hc_model_default_params(void);

/* Loads a snapshot folder: config, weights (kept in their stored dtype), generation config. */
hc_status hc_model_load(const char *path, const hc_model_params *params, hc_model **out);
void hc_model_free(hc_model *m);
const hc_model_config *hc_model_get_config(const hc_model *m);
const hc_checkpoint *hc_model_checkpoint(const hc_model *m);
int64_t hc_model_vocab_size(const hc_model *m);

/* One sequence and its KV cache, allocated once for n_ctx positions (0 = the model's
 * max_position_embeddings). */
hc_status hc_session_new(hc_model *m, int64_t n_ctx, hc_session **out);
void hc_session_free(hc_session *s);
void hc_session_reset(hc_session *s);     /* forget every position */
int64_t hc_session_pos(const hc_session *s); /* positions filled so far */
int64_t hc_session_n_ctx(const hc_session *s);

/* Appends n tokens to the sequence. Writes logits f32 to `logits`: [n, V] when all_logits,
 * else [V] for the last token only. `logits` may be NULL. */
hc_status hc_session_forward(hc_session *s, const int32_t *ids, int64_t n, float *logits,
                             bool all_logits);
/* Appends n tokens and writes to *next the greedy choice after the last one: the first index of
 * its largest logit (as torch.argmax). On a GPU it is taken there and only the id comes back,
 * where hc_session_forward brings back [V] logits for the host to scan. */
hc_status hc_session_forward_greedy(hc_session *s, const int32_t *ids, int64_t n, int32_t *next);
/* The same, but writes the last hidden states (after the final norm, as transformers'
 * last_hidden_state) of every position: hidden [n, C]. */
hc_status hc_session_forward_hidden(hc_session *s, const int32_t *ids, int64_t n, float *hidden);
int64_t hc_model_hidden_size(const hc_model *m);
/* "cpu-fast" or "cuda"; the resolved compute dtype; bytes of weights copied to the GPU (0 on
 * the CPU). */
const char *hc_model_device_name(const hc_model *m);
hc_dtype hc_model_compute_dtype(const hc_model *m);
/* Whether the bf16 matrices were repacked for the CPU's bf16 kernels (hc_model_params.repack). */
bool hc_model_repacked(const hc_model *m);
int64_t hc_model_device_weight_bytes(const hc_model *m);
/* Weight bytes one decoded token reads (every matrix once, the selected experts only). */
int64_t hc_model_weight_bytes_per_token(const hc_model *m);
/* KV cache bytes a token reads when it attends to n_pos positions (itself included): keys and
 * values of every layer, sliding layers only their window, in the model's KV cache dtype. */
int64_t hc_model_kv_bytes_per_token(const hc_model *m, int64_t n_pos);
/* The CPU kernels in use: "avx512", "avx2" or "scalar". */
const char *hc_cpu_kernels(void);

/* ---- tokenizers: tokenizer.json (or tokenizer.model) + tokenizer_config.json ------------- */

typedef struct hc_tokenizer hc_tokenizer;

/* A growable list of token ids. Zero-initialise it; the library grows it; release it with
 * hc_tokens_free. */
typedef struct {
    int32_t *ids;
    int64_t n, cap;
} hc_tokens;

void hc_tokens_free(hc_tokens *t);
/* Frees memory the library returned (decoded text). */
void hc_free(void *p);

typedef struct {
    /* false (default): behave as transformers' AutoTokenizer, which for some tokenizer classes
     * (LlamaTokenizer) builds its own pipeline and BOS/EOS rules from tokenizer_config.json.
     * true: run tokenizer.json exactly as written, as the `tokenizers` library does. */
    bool raw_tokenizer_json;
} hc_tokenizer_params;

hc_tokenizer_params hc_tokenizer_default_params(void);

/* Loads the tokenizer of a model folder, or of a folder holding only tokenizer files:
 * tokenizer.json (preferred) or tokenizer.model, with tokenizer_config.json and
 * chat_template.jinja when present. params may be NULL (defaults). */
hc_status hc_tokenizer_load(const char *dir, const hc_tokenizer_params *params, hc_tokenizer **out);
void hc_tokenizer_free(hc_tokenizer *t);

/* text (len bytes; invalid UTF-8 becomes U+FFFD) -> ids, replacing out's contents.
 * add_special: add BOS/EOS as the tokenizer's rules say (HF encode(text)); false matches
 * add_special_tokens=False. Special tokens written in the text are recognised either way. */
hc_status hc_tokenizer_encode(const hc_tokenizer *t, const char *text, size_t len, bool add_special, hc_tokens *out);

/* ids -> text, malloc'd and NUL-terminated (free with hc_free); *len may be NULL. */
hc_status hc_tokenizer_decode(const hc_tokenizer *t, const int32_t *ids, int64_t n, bool skip_special, char **text,
                              size_t *len);

/* A padded batch for a model: ids [n, T] and attention mask [n, T] (1 = token, 0 = padding),
 * T the longest sequence. Release with hc_batch_free. */
typedef struct {
    int32_t *ids;
    uint8_t *mask;
    int64_t n, T;
    int64_t *lens; /* [n] real lengths */
} hc_batch;

/* Encodes n texts (BOS/EOS as the tokenizer says when add_special) and pads them with pad_id
 * (-1: the tokenizer's pad token, else its EOS, else 0) on the left (padding_left) or right. */
hc_status hc_tokenizer_encode_batch(const hc_tokenizer *t, const char *const *texts, int64_t n, bool add_special,
                                    int32_t pad_id, bool padding_left, hc_batch *out);
void hc_batch_free(hc_batch *b);

int64_t hc_tokenizer_vocab_size(const hc_tokenizer *t);
const char *hc_tokenizer_token(const hc_tokenizer *t, int32_t id); /* the token's string, or NULL */
bool hc_tokenizer_is_special(const hc_tokenizer *t, int32_t id);
int32_t hc_tokenizer_bos(const hc_tokenizer *t); /* -1 when there is none */
int32_t hc_tokenizer_eos(const hc_tokenizer *t);
const char *hc_tokenizer_chat_template(const hc_tokenizer *t); /* NULL when there is none */
const char *hc_tokenizer_bos_token(const hc_tokenizer *t);     /* "" when none */
const char *hc_tokenizer_eos_token(const hc_tokenizer *t);

/* Streaming decode: text as ids arrive, never splitting a UTF-8 character. */
typedef struct hc_detokenizer hc_detokenizer;
hc_status hc_detokenizer_new(const hc_tokenizer *t, bool skip_special, hc_detokenizer **out);
/* Adds one id; text and len receive the new text (possibly empty), valid until the next call. */
hc_status hc_detokenizer_push(hc_detokenizer *d, int32_t id, const char **text, size_t *len);
/* The text still held back at the end of a stream (an incomplete character). */
hc_status hc_detokenizer_flush(hc_detokenizer *d, const char **text, size_t *len);
void hc_detokenizer_free(hc_detokenizer *d);

/* ---- sampling -------------------------------------------------------------------------- */

/* A sampler is a chain, applied in transformers' order: repetition / frequency / presence
 * penalties, temperature, top-k, top-p, min-p, then a draw from the remaining distribution.
 * temperature 0 means greedy (argmax after the penalties). */
typedef struct {
    float temperature;        /* 0 = greedy */
    int32_t top_k;            /* 0 = off */
    float top_p;              /* 1 = off; in (0, 1] */
    float min_p;              /* 0 = off; in [0, 1) */
    float repetition_penalty; /* 1 = off; HF's: logits of seen tokens divided (or multiplied if < 0) */
    float frequency_penalty;  /* 0 = off; minus count * f */
    float presence_penalty;   /* 0 = off; minus p if seen */
    int32_t penalty_last_n;   /* how many recent tokens the penalties look at; -1 = all */
    uint64_t seed;
} hc_sampler_params;

/* Greedy, no penalties, seed 0. */
hc_sampler_params hc_sampler_default_params(void);
/* The defaults of a model's generation_config.json (greedy unless it says do_sample). */
hc_sampler_params hc_model_sampler_params(const hc_model *m);
/* Checks ranges; HC_ERR_INVALID_ARG with a message naming the parameter. */
hc_status hc_sampler_params_check(const hc_sampler_params *p);

typedef struct hc_sampler hc_sampler;
hc_status hc_sampler_new(const hc_sampler_params *p, int64_t vocab_size, hc_sampler **out);
void hc_sampler_free(hc_sampler *s);
/* Picks the next token from logits [V] (modified in place), given the sequence so far
 * (prompt and generated ids) for the penalties. */
int32_t hc_sampler_sample(hc_sampler *s, float *logits, const int32_t *history, int64_t n_history);

/* ---- generation ------------------------------------------------------------------------ */

typedef enum { HC_FINISH_LENGTH, HC_FINISH_EOS, HC_FINISH_STOP, HC_FINISH_CANCELLED } hc_finish_reason;
const char *hc_finish_reason_name(hc_finish_reason r); /* "length", "eos", "stop", "cancelled" */

/* Called with each new piece of text of sequence `seq` (its index in the batch); return false
 * to stop that sequence (finish reason "cancelled"). */
typedef bool (*hc_text_callback)(void *user, int64_t seq, const char *text, size_t len);

typedef struct {
    int64_t max_new_tokens;
    hc_sampler_params sampling;
    const char *const *stop; /* stop strings (n_stop of them); the text ends before the match */
    int n_stop;
    bool ignore_eos;         /* do not stop at the model's EOS ids */
    bool add_special;        /* text prompts: add BOS/EOS as the tokenizer says (default true) */
    hc_text_callback on_text;
    void *user;
} hc_generate_params;

/* max_new_tokens 128, the model's sampling defaults, add_special true. */
hc_generate_params hc_generate_default_params(const hc_model *m);

typedef struct {
    char *text;             /* the new text (NUL-terminated; "" when the model has no tokenizer) */
    size_t text_len;
    int32_t *ids;           /* the new ids */
    int64_t n_ids;
    int64_t n_prompt;       /* prompt tokens */
    hc_finish_reason finish;
} hc_generation;

typedef struct {
    int64_t prompt_tokens, new_tokens;
    double prompt_s, decode_s; /* wall time of prompt processing and of decoding */
} hc_timings;

/* Generates from n prompts together, as one batch: prompts[i] is text, encoded with the
 * model's tokenizer. out: [n], filled; release each with hc_generation_free. timings may be
 * NULL. Each prompt's greedy output is the same as it would be alone. */
hc_status hc_generate(hc_model *m, const char *const *prompts, int64_t n, const hc_generate_params *p,
                      hc_generation *out, hc_timings *timings);
/* The same from token ids: ids[i] holds lens[i] ids. */
hc_status hc_generate_ids(hc_model *m, const int32_t *const *ids, const int64_t *lens, int64_t n,
                          const hc_generate_params *p, hc_generation *out, hc_timings *timings);
void hc_generation_free(hc_generation *g);

/* The tokenizer in the model's folder, loaded with the model; NULL when it has none. */
const hc_tokenizer *hc_model_tokenizer(const hc_model *m);

/* ---- chat templates and chat sessions ------------------------------------------------- */

typedef struct {
    bool add_generation_prompt;
    const char *bos_token;          /* NULL: the tokenizer's */
    const char *eos_token;          /* NULL: the tokenizer's */
    const char *extra_context_json; /* more template variables (tools, date_string, ...): a JSON
                                       object, or NULL */
    const char *template_name;      /* names the template in errors (default "chat_template") */
} hc_chat_params;

hc_chat_params hc_chat_default_params(void); /* add_generation_prompt true */

/* Renders a chat template (Jinja, as transformers renders it) over messages_json, a JSON array
 * of {"role", "content", ...}. *out is malloc'd (hc_free). A template error - a syntax error with
 * its line and column, or raise_exception's message - fails with HC_ERR_FORMAT. */
hc_status hc_chat_template_render(const char *tmpl, const char *messages_json, const hc_chat_params *p, char **out,
                                  size_t *len);
/* The same with the tokenizer's own template (HC_ERR_NOT_FOUND when it has none) and tokens. */
hc_status hc_tokenizer_apply_chat_template(const hc_tokenizer *t, const char *messages_json, const hc_chat_params *p,
                                           char **out, size_t *len);

/* A conversation with a model: each turn renders the whole conversation with the chat
 * template, and only the tokens not already in the KV cache are run, so the history costs
 * nothing to re-send. */
typedef struct hc_chat hc_chat;

/* tmpl: the template to use, or NULL for the tokenizer's. system: a system message, or NULL.
 * n_ctx: the conversation's context (0: the model's, at most 4096). */
hc_status hc_chat_new(hc_model *m, const char *tmpl, const char *system, int64_t n_ctx, hc_chat **out);
void hc_chat_free(hc_chat *c);
/* Adds a user message, generates the assistant's answer (streamed through p->on_text) and adds
 * it to the conversation. out receives the answer; release it with hc_generation_free. */
hc_status hc_chat_send(hc_chat *c, const char *user_text, const hc_generate_params *p, hc_generation *out);
void hc_chat_reset(hc_chat *c); /* forget the conversation (the system message stays) */
int64_t hc_chat_cached_tokens(const hc_chat *c); /* tokens held in the KV cache */

/* ---- the Hugging Face Hub ------------------------------------------------------------------ */

/* Everywhere a model folder is accepted, "hf://org/name[@revision]" is too: the files a model
 * needs are fetched into the cache huggingface_hub uses ($HF_HUB_CACHE, else $HF_HOME/hub,
 * else ~/.cache/huggingface/hub), and the snapshot folder is used. HF_ENDPOINT, HF_TOKEN (or
 * the token file under HF_HOME) and HF_HUB_OFFLINE are honoured. A revision that has a
 * complete snapshot in the cache costs no request. */
typedef struct {
    const char *include; /* a glob of repo files to fetch; NULL: what a model needs */
    bool refresh;        /* ask the Hub even when the cache holds a complete snapshot */
} hc_hub_params;

hc_hub_params hc_hub_default_params(void);
/* Resolves a handle to its local snapshot folder (*snapshot malloc'd; hc_free). */
hc_status hc_hub_resolve(const char *handle, const hc_hub_params *p, char **snapshot);
/* The cache folder (malloc'd). */
char *hc_hub_cache_dir(void);

/* Download progress: called as bytes arrive (done may be == total at the end, with finished). */
typedef void (*hc_progress_fn)(void *user, const char *file, int64_t done, int64_t total, double seconds,
                               bool finished);
void hc_set_progress_callback(hc_progress_fn fn, void *user);

/* ---- safetensors writer ------------------------------------------------------------------- */

typedef struct {
    const char *name;
    hc_dtype dtype;
    int n_dims;
    int64_t shape[HC_MAX_DIMS];
    const void *data; /* n_elements * dtype size bytes */
} hc_tensor_write;

/* Writes a .safetensors file whole or not at all (temp file, fsync, rename). `metadata` holds
 * n_metadata key/value string pairs for __metadata__ (may be NULL). */
hc_status hc_safetensors_write(const char *path, const hc_tensor_write *tensors, int64_t n,
                               const char *const *metadata, int n_metadata);

/* ---- training ---------------------------------------------------------------------------- */

/* Gradients: one f32 buffer per checkpoint tensor the model uses (as many values as the tensor
 * has elements), zeroed when made. CPU only so far. */
typedef struct hc_grads hc_grads;
hc_status hc_grads_new(hc_model *m, hc_grads **out);
void hc_grads_free(hc_grads *g);
void hc_grads_zero(hc_grads *g);
int64_t hc_grads_count(const hc_grads *g);                      /* the checkpoint's tensors */
const hc_tensor_info *hc_grads_tensor(const hc_grads *g, int64_t i);
const float *hc_grads_data(hc_grads *g, int64_t i);       /* NULL: the model does not use it */
/* Activation checkpointing: keep each layer's input only and recompute the layer in the
 * backward (the same gradients, bit for bit, for about a third more compute). */
void hc_grads_set_checkpointing(hc_grads *g, bool on);

/* The mean next-token cross entropy of B sequences of T ids (labels are the ids shifted, as
 * transformers' causal LM loss) and its gradients added (+=) into g (NULL: the loss alone).
 * mask [B, T] (NULL: all): 1 where the token is a target (padding and prompt tokens are 0);
 * the mean is over targets. accuracy (may be NULL): the share of targets that are the argmax. */
hc_status hc_model_loss_grad(hc_model *m, const int32_t *ids, const uint8_t *mask, int64_t B, int64_t T, hc_grads *g,
                             double *loss, double *accuracy);

typedef struct {
    double lr, beta1, beta2, eps, weight_decay;
} hc_adamw_params;
/* One AdamW step (torch.optim.AdamW: decoupled decay, bias correction) on n weights w with
 * moments m1, m2 (zero at step 1); step counts from 1. */
void hc_adamw_update(float *w, float *m1, float *m2, const float *g, int64_t n, const hc_adamw_params *p, int64_t step);

/* Full fine-tuning (CPU or GPU, f32 master weights): AdamW with linear warmup and cosine decay,
 * clipping by global norm, gradient accumulation. The model must be loaded with use_mmap false
 * (its weights are updated in place, in their stored dtype; hc_checkpoint_save of
 * hc_model_checkpoint(m) then writes the trained weights). */
typedef struct {
    int64_t epoch, epochs;                  /* from 1 */
    int64_t step_in_epoch, steps_per_epoch; /* from 1 */
    int64_t step, total_steps;
    double loss, accuracy;                  /* the epoch's running means */
    double lr, elapsed_s;                   /* elapsed within the epoch */
    bool epoch_end;
    double val_loss, val_accuracy;          /* at epoch ends, on the held-out rows (-1: none) */
    bool stopped;                           /* ended early because *stop was set */
    double step_s;                          /* mean seconds an optimizer step, over this run's steps
                                               after its first (warm-up) one; 0 until there is one */
    int64_t tokens_per_step;                /* token positions a step (batch x accumulation x length) */
} hc_train_progress;

typedef struct {
    int64_t epochs;         /* 1 */
    int64_t steps;          /* 0: as the epochs say; else the total optimizer steps */
    int64_t batch_size;     /* 8 rows a micro-batch */
    int64_t grad_accum;     /* 1 micro-batch a step */
    int64_t seq_len;        /* 128 tokens a row */
    double lr;              /* 1e-3, after warmup_steps of linear warmup, cosine to 0 */
    int64_t warmup_steps;   /* 0 */
    double weight_decay;    /* 0.01 */
    double clip_norm;       /* 1.0 (0: none) */
    double eval_fraction;   /* 0.1 of the rows held out */
    bool lines;             /* text files: one example a line instead of the file chunked */
    bool checkpointing;     /* recompute activations per layer (less memory, more compute) */
    uint64_t seed;          /* shuffling */
    void (*on_progress)(void *user, const hc_train_progress *p);
    void *user;
    volatile const int *stop;  /* when it becomes non-zero (Ctrl-C), training ends after the step */
    const char *save_state;    /* write the optimizer state here at the end (NULL: none) */
    const char *resume_state;  /* continue from this state; the model must hold that run's weights */
} hc_finetune_params;

hc_finetune_params hc_finetune_default_params(void);
/* Trains on data_path: text (chunked to seq_len, or a line an example), or JSONL of
 * {"text": ...}. Rows shorter than seq_len are padded and masked. last: the final progress. */
hc_status hc_finetune(hc_model *m, const char *data_path, const hc_finetune_params *p, hc_train_progress *last);

/* LoRA (PEFT's format). init: a new adapter of rank r on the named modules ("q_proj,v_proj";
 * Phi-3's "qkv_proj", GPT-2's "c_attn"; "all-linear"; NULL: the attention projections as the
 * checkpoint stores them), A random, B zero; fine-tuning then trains only the adapter. load: an
 * adapter folder (adapter_config.json + adapter_model.safetensors) applied at inference. save:
 * the adapter to a folder that PEFT loads (it must not exist or be empty; it appears whole). */
hc_status hc_model_lora_init(hc_model *m, int64_t r, double alpha, const char *targets, uint64_t seed);
hc_status hc_model_lora_load(hc_model *m, const char *dir);
hc_status hc_model_lora_save(const hc_model *m, const char *dir);
/* Adds the adapter into the weights (W += scale B A, in their dtype) and drops it; the model
 * must be on the CPU and read into RAM (use_mmap false). */
hc_status hc_model_lora_merge(hc_model *m);

/* ---- saving ------------------------------------------------------------------------------ */

typedef struct {
    hc_dtype dtype;          /* float tensors written as F32, BF16 or F16; HC_DTYPE_AUTO: as stored */
    int64_t max_shard_bytes; /* 0: 5 GB (transformers' default); larger weights go to shards */
} hc_save_params;

hc_save_params hc_save_default_params(void);
/* Writes the checkpoint folder to out_dir as transformers' save_pretrained would: weights
 * (sharded with an index past max_shard_bytes, a tied LM head once), config.json with
 * torch_dtype set, generation config and tokenizer files copied. out_dir must not exist or be
 * empty; it appears whole or not at all. */
hc_status hc_checkpoint_save(const hc_checkpoint *ck, const char *out_dir, const hc_save_params *params);

#ifdef __cplusplus
}
#endif
#endif /* HUBCAP_H */
