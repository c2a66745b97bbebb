/*
 * hubcap.h - run Hugging Face checkpoints as they are, from C.
 *
 * The one public header. Every object is an opaque handle; every call that can fail returns
 * an hc_status and leaves a one-line message for hc_last_error(). hc_*_free(NULL) is a no-op.
 *
 * Usage:
 *
 *     hc_model_params mp = hc_model_default_params();
 *     hc_model *model;
 *     if (hc_model_load("models/stories260K", &mp, &model) != HC_OK) {
 *         fprintf(stderr, "%s\n", hc_last_error());
 *         return 1;
 *     }
 *     hc_session *s;
 *     hc_session_new(model, 256, &s);                  // one sequence, KV cache for 256 tokens
 *     int32_t ids[] = {1, 403, 407};
 *     float *logits = malloc(sizeof(float) * hc_model_vocab_size(model));
 *     hc_session_forward(s, ids, 3, logits, 0);        // logits of the last position, [V]
 *     ...
 *     hc_session_free(s);
 *     hc_model_free(model);
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
    X(ERR_RANGE, 7, "value out of range")

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
} hc_rope_type;

typedef struct {
    hc_rope_type type;
    double theta;
    double factor;
    double low_freq_factor, high_freq_factor;     /* llama3 */
    int64_t original_max_position_embeddings;     /* llama3, yarn, dynamic (0 = absent) */
    double attention_factor;                      /* yarn (0 = derive from factor) */
    double beta_fast, beta_slow, mscale, mscale_all_dim; /* yarn (0 = default/absent) */
    bool truncate;                                /* yarn */
} hc_rope_config;

typedef enum { HC_ACT_SILU, HC_ACT_GELU_TANH, HC_ACT_GELU, HC_ACT_RELU } hc_activation;

#define HC_MAX_LAYERS 512

typedef struct {
    char model_type[32];   /* as config.json says, e.g. "gemma3_text" */
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
    double attn_softcap, final_softcap; /* 0 = none */
    double query_pre_attn_scalar;       /* 0 = head_dim */
    int64_t n_experts, n_experts_per_tok; /* 0 = dense */
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

typedef struct {
    hc_device device;
    int n_threads; /* 0 = all available cores */
    bool use_mmap;
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

#ifdef __cplusplus
}
#endif
#endif /* HUBCAP_H */
