/* A session: one sequence, its KV cache and the scratch buffers of a forward pass, all
 * allocated once when the session is made, so decoding a token allocates nothing. */
#ifndef HC_RUN_SESSION_H
#define HC_RUN_SESSION_H

#include "model/model.h"

/* Rows processed per forward chunk; longer prompts go through in chunks of this size. */
#define HC_MAX_BATCH 512

struct hc_session {
    hc_model *m;
    int64_t n_ctx;   /* S: KV capacity */
    int64_t pos;     /* positions filled */
    int64_t n_batch; /* B: rows per chunk */
    float *k_cache, *v_cache; /* [L, S, KVH*D] */
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
    float *e_a, *e_b;/* [I] one expert's gate and up */
    float *e_o;      /* [C] one expert's output */
    int32_t *pos_buf;/* [B] */
    float *inv_freq[2];   /* [R/2] global and local rope tables */
    float attn_factor[2];
    int64_t rope_cached_len; /* dynamic rope: the length its table was made for */
};

/* The decoder: runs T tokens (any T; chunked internally) through the model. */
hc_status hc_decoder_forward(hc_session *s, const int32_t *ids, int64_t T, float *logits, bool all_logits);

#endif
