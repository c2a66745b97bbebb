/* Sessions and workspaces.
 *
 * A session is one sequence: its KV cache and rope state, allocated once. A workspace holds
 * the scratch buffers of a forward pass for up to `rows` tokens, also allocated once; each
 * session owns one for its own forward calls, and batched generation uses a shared one to run
 * rows of several sessions through the model together. Decoding a token allocates nothing. */
#ifndef HC_RUN_SESSION_H
#define HC_RUN_SESSION_H

#include "model/model.h"

/* Rows a session's own workspace holds; longer prompts go through in chunks of this size. A GPU
 * takes bigger chunks: its matmuls need more rows to reach their speed. */
#define HC_MAX_BATCH 512
#define HC_MAX_BATCH_DEVICE 2048
static inline int64_t hc_max_batch(const hc_model *m) { return m->be->device ? HC_MAX_BATCH_DEVICE : HC_MAX_BATCH; }

typedef struct {
    hc_model *m;
    int64_t rows;    /* B: rows it holds */
    int64_t ctx;     /* S: the longest KV cache it can attend over */
    float *x;        /* [B, C] residual stream */
    float *h;        /* [B, C] normed input of a block */
    float *q;        /* [B, H*D] */
    float *k, *v;    /* [B, KVH*D] */
    float *att;      /* [B, H*D] attention output */
    float *o;        /* [B, C] block output */
    float *ff_a;     /* [B, I] gate (or up for ungated MLPs) */
    float *ff_b;     /* [B, I] up */
    float *scores;   /* [S] attention scratch */
    float *router;   /* [B, E] router logits */
    float *route_w;  /* [B, k] */
    int32_t *route_e;/* [B, k] */
    float *e_x;      /* [B*k, C] the rows each expert takes, gathered expert by expert */
    float *e_a, *e_b;/* [B*k, I] their gate and up */
    float *e_o;      /* [B*k, C] their outputs */
    int32_t *pos;    /* [B] positions of the rows */
    /* Host-side copies where the backend's memory is not the host's (CUDA): */
    int32_t *pos_host;      /* [B] */
    int32_t *ids;           /* [B] backend memory for the token ids (device backends) */
    int32_t *route_e_host;  /* [B, k] */
    float *route_w_host;    /* [B, k] */
    int32_t *route_slot_host; /* [B, k] where each (row, chosen expert) sits in e_x / e_o */
    int32_t *slot_row_host;   /* [B*k] the inverse: which (row, choice) a slot holds */
    int32_t *expert_at_host;  /* [2, E + 1] where each expert's slots start; a cursor */
    float *sh_a, *sh_b;       /* [B, IS] Qwen2-MoE's shared expert: gate and up */
    float *sh_o;              /* [B, C] its output */
    float *sh_g, *sh_g_host;  /* [B] its gate's logit (and on the host, where the sigmoid is taken) */
    float *logits;          /* [B, V] backend memory for logits (device backends) */
    int32_t *argmax;        /* [B] backend memory for greedy tokens (device backends) */
    /* Rows of several sequences: each row's layer caches, [2][L][B] pointers (k, then v). */
    void **kv_rows_host;
    void **kv_rows;         /* the same in backend memory */
    float *lora_r;          /* [B, r] and [B, max N]: a LoRA adapter's intermediate and delta */
    float *lora_n;
} hc_workspace;

hc_status hc_workspace_init(hc_workspace *ws, hc_model *m, int64_t rows, int64_t ctx);
void hc_workspace_free(hc_workspace *ws);

struct hc_session {
    hc_model *m;
    int64_t n_ctx;   /* S: KV capacity */
    int64_t pos;     /* positions filled */
    void *k_cache, *v_cache;  /* [L, S, KVH*D] of kv_dtype */
    hc_dtype kv_dtype;        /* F32, F16 or BF16 */
    float *inv_freq[2];   /* [R/2] global and local rope tables (backend memory) */
    float *inv_freq_host[2]; /* [R/2] the same tables on the host, where they are computed */
    float attn_factor[2];
    int64_t rope_cached_len; /* dynamic rope and longrope: the length their table was made for */
    int64_t rope_end;        /* longrope: where the sequence being fed ends (0: where this pass ends) */
    int32_t *history;        /* longrope: [S] the id at each position, to run them again with the long factors */
    float *greedy_logits;    /* [V] host: hc_session_forward_greedy on the CPU (made on first use) */
    hc_workspace ws;
};

/* A run of consecutive rows belonging to one session (its next n positions). */
typedef struct {
    hc_session *s;
    int64_t n;
} hc_group;

/* Computes the rope tables for a sequence of seq_len (dynamic rope, longrope) and uploads them. */
void hc_session_set_rope(hc_session *s, int64_t seq_len);

/* Validates ids and room in the context before a forward pass. */
hc_status hc_session_check(const hc_session *s, const int32_t *ids, int64_t n);

/* Runs the rows of every group through the model in one pass (at most ws->rows rows in all).
 * ids: [sum n] concatenated by group. logits: [sum n, V] when all_logits, else [n_groups, V]
 * for the last row of each group; NULL for none. */
void hc_decoder_forward_groups(hc_workspace *ws, const hc_group *groups, int n_groups, const int32_t *ids,
                               float *logits, bool all_logits, float *hidden, int32_t *argmax);
/* True when the sampler takes the plain argmax (temperature 0, no penalties): its token can be
 * picked where the logits are, by the backend's argmax_rows. */
bool hc_sampler_is_greedy(const hc_sampler *s);

/* Generation over given sessions (NULL: one new session per prompt). A given session may hold
 * a prefix of its prompt already (session->pos ids); only the rest is run. */
hc_status hc_generate_core(hc_model *m, hc_session **given, const int32_t *const *ids, const int64_t *lens, int64_t n,
                           const hc_generate_params *params, hc_generation *out, hc_timings *timings);

#endif
