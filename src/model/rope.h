/* Rope frequency tables for every rope_type hubcap supports, as transformers computes them. */
#ifndef HC_MODEL_ROPE_H
#define HC_MODEL_ROPE_H

#include "hubcap.h"

/* Fills inv_freq[R/2] and *attn_factor for rotary dim R. seq_len (max position + 1) matters only
 * for "dynamic" (the longest sequence so far) and "longrope" (the current forward's; 0 at load,
 * which takes the short factors as transformers does). max_pos: config max_position_embeddings. */
void hc_rope_inv_freq(float *inv_freq, float *attn_factor, const hc_rope_config *r, int64_t R, int64_t max_pos,
                      int64_t seq_len);

#endif
