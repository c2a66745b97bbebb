/* The backend interface: every op a model is composed of, as a table of function pointers
 * (one table per backend, as ggml-backend does). The CPU table in cpu/ is the reference; fast
 * kernels and the CUDA backend are checked against it op by op.
 *
 * Conventions, stated once:
 *   T   rows (tokens) in this call          C   hidden size (channels)
 *   H   query heads, KVH key/value heads    D   head dim (rotary part: R <= D)
 *   N,K output and input features of a matmul; weights are [N, K] (= HF Linear [out, in])
 *   S   KV cache capacity (positions)       V   vocabulary
 * Activations are f32, row-major, contiguous. Weights stay in their stored dtype (F32, BF16,
 * F16) and are widened inside the kernels. Pointers are backend memory (host memory on the
 * CPU, device memory on CUDA). Ops write their outputs (=) unless named *_add / accumulate,
 * never allocate, and keep no state, so a training forward can keep any input it needs for
 * the backward pass (issue "fine-tuning" adds the *_backward entries to this table).
 */
#ifndef HC_BACKEND_H
#define HC_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hubcap.h"

/* A matrix view [rows=N, cols=K] in its stored dtype. Element (n, k) is at
 * data[n*ld + k], or data[k*ld + n] when `transposed` (GPT-2 Conv1D stores [K, N]).
 * Views into fused tensors (qkv_proj, gate_up_proj, c_attn) are offsets with the parent's ld. */
typedef struct {
    const void *data;
    hc_dtype dtype;
    int64_t rows, cols, ld;
    bool transposed;
    int quant; /* 0: dtype as stored; else HC_QUANT_* blocks (backend/cpu/quant.h), rows of
                  cols/32 blocks back to back, quantized on load */
} hc_mat;

/* A vector [n] in its stored dtype; data == NULL means absent (no bias). */
typedef struct {
    const void *data;
    hc_dtype dtype;
    int64_t n;
} hc_vec;

typedef enum { HC_NORM_RMS, HC_NORM_RMS_PLUS1 /* Gemma: x * (1 + w) */, HC_NORM_LAYER } hc_norm_kind;

typedef struct hc_backend hc_backend;

struct hc_backend {
    const char *name;
    bool device; /* its memory is not the host's: ids and positions go up, logits come down */

    /* memory */
    void *(*alloc)(hc_backend *be, size_t bytes); /* zeroed; NULL when out of memory */
    void (*free)(hc_backend *be, void *p);
    void (*upload)(hc_backend *be, void *dst, const void *src, size_t bytes);   /* host -> backend */
    void (*download)(hc_backend *be, void *dst, const void *src, size_t bytes); /* backend -> host, synchronous */
    /* The layout this backend computes a quantized format (HC_QUANT_*) fastest in, which
     * quantize on load then stores (the CPU's q4_0x4 for q4_0 where VNNI is); NULL: the
     * format itself. */
    int (*quant_layout)(hc_backend *be, int quant);
    /* x[n] = v */
    void (*fill)(hc_backend *be, float *x, float v, int64_t n);
    /* out[n] = x[n], both backend memory */
    void (*copy)(hc_backend *be, float *out, const float *x, int64_t n);

    /* out[T,C] (=, or += when accumulate) = table[ids[t], :] * scale */
    void (*embedding)(hc_backend *be, float *out, const hc_mat *table, const int32_t *ids, int64_t T, float scale,
                      bool accumulate);

    /* out[T,N] = x[T,K] @ W[N,K]^T + bias[N] */
    void (*matmul)(hc_backend *be, float *out, const float *x, const hc_mat *w, const hc_vec *bias, int64_t T);

    /* out[T,C] = norm(x[T,C]) * w (+ b for LayerNorm). Used per head with T=rows*heads, C=D. */
    void (*norm)(hc_backend *be, float *out, const float *x, const hc_vec *w, const hc_vec *b, hc_norm_kind kind,
                 float eps, int64_t T, int64_t C);

    /* In place on x[T, nh, D]: rotate-half rope on the first R dims of each head with angles
     * pos[t] * inv_freq[i] (i < R/2); cos and sin are multiplied by attn_factor. */
    void (*rope)(hc_backend *be, float *x, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T,
                 int64_t nh, int64_t D, int64_t R);

    /* out[T,H,D] = softmax(mask(softcap(q . k * scale))) @ v over the cache rows of this
     * sequence: query t sees positions j with pos[t]-window < j <= pos[t] (window 0 = all).
     * k_cache, v_cache: [S, KVH, D] of kv_dtype (F32, F16 or BF16); query head h reads kv head
     * h / (H / KVH). S: the cache's capacity (every pos[t] < S); scratch: [S] floats.
     * softcap 0 = none. */
    void (*attention)(hc_backend *be, float *out, const float *q, const void *k_cache, const void *v_cache,
                      hc_dtype kv_dtype, const int32_t *pos, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale,
                      int64_t window, float softcap, int64_t S, float *scratch);

    /* dst[pos[t], :] = src[t, :] for rows of `width` values, stored as dst_dtype (F32, F16 or
     * BF16): the KV cache stores. */
    void (*set_rows)(hc_backend *be, void *dst, hc_dtype dst_dtype, const float *src, const int32_t *pos, int64_t T,
                     int64_t width);

    /* out[n] = act(gate[n]) * up[n]  (gated MLPs) */
    void (*glu)(hc_backend *be, float *out, const float *gate, const float *up, hc_activation act, int64_t n);
    /* x[n] = act(x[n]) */
    void (*activate)(hc_backend *be, float *x, hc_activation act, int64_t n);
    /* out[n] = a[n] + b[n] */
    void (*add)(hc_backend *be, float *out, const float *a, const float *b, int64_t n);
    /* out[n] += alpha * x[n] */
    void (*add_scaled)(hc_backend *be, float *out, const float *x, float alpha, int64_t n);
    /* x[n] = cap * tanh(x[n] / cap) */
    void (*softcap)(hc_backend *be, float *x, float cap, int64_t n);

    /* MoE routing: for each row of logits[T,E], the k largest softmax probabilities
     * (renormalised to sum 1 when renorm) -> weights[T,k], experts[T,k] (descending). */
    void (*topk_route)(hc_backend *be, float *weights, int32_t *experts, const float *logits, int64_t T, int64_t E,
                       int64_t k, bool renorm);

    /* Fused ops. Each computes exactly what the sequence of ops it names computes; the CPU runs
     * that sequence (backend/fused.c), a GPU saves launches and passes over memory.
     *
     * matmul_n: out_i = matmul(x, w_i, b_i) for i < n (n <= 3): several matmuls of one input
     * (q, k and v). */
    void (*matmul_n)(hc_backend *be, float *const *outs, const float *x, const hc_mat *const *ws,
                     const hc_vec *const *bs, int n, int64_t T);
    /* out[T, I] = act(matmul(x, gate, bg)) * matmul(x, up, bu), as matmul, matmul, glu.
     * tmp: [T, I] scratch. */
    void (*gated_matmul)(hc_backend *be, float *out, float *tmp, const float *x, const hc_mat *gate,
                         const hc_vec *bg, const hc_mat *up, const hc_vec *bu, hc_activation act, int64_t T);
    /* The gated MLP: out[T, C] = matmul(gated_matmul(x, gate, bg, up, bu), down, bd), with
     * a[T, I] and b[T, I] as scratch (the CPU leaves the glu's output in a). A GPU computing in
     * 16 bits may keep gate, up and their product in that dtype, as transformers does in a
     * bf16 model. */
    void (*ffn)(hc_backend *be, float *out, float *a, float *b, const float *x, const hc_mat *gate, const hc_vec *bg,
                const hc_mat *up, const hc_vec *bu, const hc_mat *down, const hc_vec *bd, hc_activation act, int64_t T);
    /* out[T, N] += alpha * (x @ W^T), as matmul(tmp, x, w) then add_scaled(out, tmp, alpha);
     * tmp: [T, N] scratch. A LoRA adapter's product added onto the base projection's output. */
    void (*matmul_add)(hc_backend *be, float *out, float *tmp, const float *x, const hc_mat *w, float alpha, int64_t T);
    /* The training forward's attention: B sequences of T rows (q [B*T, H, D]; k, v [B*T, KVH, D],
     * f32), each row attending over its own sequence's rows, the rows at positions pos[0..T)
     * = 0..T-1: per sequence, attention with the sequence's k and v as the cache (S = T).
     * reserve: [B*T*H] floats for attention_backward, filled as the backend likes (a GPU keeps
     * each row's log-sum-exp; the CPU nothing). scratch: [T] floats. */
    void (*attention_train)(hc_backend *be, float *out, float *reserve, const float *q, const float *k, const float *v,
                            const int32_t *pos, int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale,
                            int64_t window, float softcap, float *scratch);
    /* The training forward of a gated MLP: out[T, C] = matmul(act(x Wg^T + bg) * (x Wu^T + bu),
     * down, bd), keeping in keep [T, 3I] floats what ffn_backward reads, laid out as the backend
     * likes: the op sequence keeps gate, up and their product in f32 (matmul, matmul, glu,
     * matmul); a GPU computing in 16 bits may keep x, gate, up and the product in that dtype,
     * rounded where transformers' bf16 autocast rounds them. */
    void (*ffn_train)(hc_backend *be, float *out, float *keep, const float *x, const hc_mat *gate, const hc_vec *bg,
                      const hc_mat *up, const hc_vec *bu, const hc_mat *down, const hc_vec *bd, hc_activation act,
                      int64_t T);
    /* x[T, C] += o, then h = norm(x): the residual add and the next block's norm. */
    void (*add_norm)(hc_backend *be, float *h, float *x, const float *o, const hc_vec *w, const hc_vec *b,
                     hc_norm_kind kind, float eps, int64_t T, int64_t C);
    /* A block's last projection, its residual add and the next norm: o[T, C] = matmul(a, w,
     * bias), then add_norm(h, x, o, nw, nb) (C = w->rows), or add(x, x, o) when h is NULL.
     * o is scratch: a GPU computing a prompt in 16 bits adds the product into x inside the GEMM
     * (beta 1) and leaves o as it was, which saves writing o and reading it back.
     * h_matmul_only: the caller reads h, until it writes h again, only whole and only as the
     * input of matmul-family ops (matmul, matmul_n, gated_matmul, ffn, ffn_add_norm,
     * matmul_add); a GPU computing a prompt in 16 bits then keeps h in that dtype alone, and
     * widens it back for a matmul that reads f32. */
    void (*matmul_add_norm)(hc_backend *be, float *h, float *x, float *o, const float *a, const hc_mat *w,
                            const hc_vec *bias, const hc_vec *nw, const hc_vec *nb, hc_norm_kind kind, float eps,
                            bool h_matmul_only, int64_t T);
    /* The same for the gated MLP: ffn(o, fa, fb, in, ...) (C = down->rows), then add_norm(h, x,
     * o, nw, nb), or add(x, x, o) when h is NULL. in may be h (the ffn reads it first). */
    void (*ffn_add_norm)(hc_backend *be, float *h, float *x, float *o, float *fa, float *fb, const float *in,
                         const hc_mat *gate, const hc_vec *bg, const hc_mat *up, const hc_vec *bu, const hc_mat *down,
                         const hc_vec *bd, hc_activation act, const hc_vec *nw, const hc_vec *nb, hc_norm_kind kind,
                         float eps, bool h_matmul_only, int64_t T);
    /* rope on q[T, H, D] and k[T, KVH, D] (none when inv_freq is NULL), then the KV store of k
     * and v ([T, KVH*D] each) at pos: rope, rope, set_rows, set_rows. */
    void (*rope_store)(hc_backend *be, float *q, float *k, const float *v, void *k_cache, void *v_cache,
                       hc_dtype kv_dtype, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T,
                       int64_t H, int64_t KVH, int64_t D, int64_t R);

    /* Rows of several sequences in one call, each row with its own caches: k_rows[t] and
     * v_rows[t] (backend memory, [T] pointers) are row t's layer caches. rope_store_rows is
     * rope_store row by row; attention_rows is attention row by row (T = 1 each), so a row sees
     * its own sequence's keys up to pos[t]. S: the largest capacity among the caches. */
    void (*rope_store_rows)(hc_backend *be, float *q, float *k, const float *v, void *const *k_rows,
                            void *const *v_rows, hc_dtype kv_dtype, const int32_t *pos, const float *inv_freq,
                            float attn_factor, int64_t T, int64_t H, int64_t KVH, int64_t D, int64_t R);
    void (*attention_rows)(hc_backend *be, float *out, const float *q, void *const *k_rows, void *const *v_rows,
                           hc_dtype kv_dtype, const int32_t *pos, int64_t T, int64_t H, int64_t KVH, int64_t D,
                           float scale, int64_t window, float softcap, int64_t S, float *scratch);

    /* Backward, for training (NULL where a backend has none yet). Activation gradients are
     * written (=); parameter gradients accumulate (+=) in f32, laid out as the weights they
     * belong to (a matrix's gradient has the matrix's ld and orientation). Any gradient
     * pointer may be NULL when it is not wanted. */
    /* dtable[ids[t], :] += dout[t, :] * scale */
    void (*embedding_backward)(hc_backend *be, float *dtable, const hc_mat *table, const float *dout, const int32_t *ids,
                               int64_t T, float scale);
    /* out = x @ W^T + b: dx[T,K] = dout @ W; dW += dout^T x; db += sum_t dout */
    void (*matmul_backward)(hc_backend *be, float *dx, float *dw, float *db, const float *dout, const float *x,
                            const hc_mat *w, int64_t T);
    /* out = norm(x) * w (+ b): dx (=, or += when accumulate: the residual stream's gradient
     * taking the block's), and dw, db accumulated */
    void (*norm_backward)(hc_backend *be, float *dx, float *dw, float *db, const float *dout, const float *x,
                          const hc_vec *w, const hc_vec *b, hc_norm_kind kind, float eps, int64_t T, int64_t C,
                          bool accumulate);
    /* In place on dx[T, nh, D]: the gradient through rope (the inverse rotation). */
    void (*rope_backward)(hc_backend *be, float *dx, const int32_t *pos, const float *inv_freq, float attn_factor,
                          int64_t T, int64_t nh, int64_t D, int64_t R);
    /* attention_train's backward, for the same B sequences: dq (=) [B*T, H, D], dk and dv (=)
     * [B*T, KVH, D]. out is the forward's output and reserve what it left there (a backend may
     * take rowsum(dout * out) and each row's log-sum-exp from them; the reference reads
     * neither). scratch: [2T] floats. */
    void (*attention_backward)(hc_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                               const float *reserve, const float *q, const float *k, const float *v, const int32_t *pos,
                               int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale, int64_t window,
                               float softcap, float *scratch);
    /* matmul_n's backward: dx (=) [T, K] = sum_i douts[i] W_i, and dws[i], dbs[i] (+=; any may
     * be NULL) as matmul_backward's, in that order: matmul_backward, then for i > 0 into tmp
     * [T, K] and add. A GPU rounds x to 16 bits once for all n.
     *
     * overwrite (here, in ffn_backward and in lm_loss): the weights' gradients (contiguous
     * [N, K] each) are written (=) instead of accumulated, as the step's first contribution to
     * them, so they need no clearing; the op sequence clears them first. Biases' still add. */
    void (*matmul_n_backward)(hc_backend *be, float *dx, float *const *dws, float *const *dbs, const float *const *douts,
                              const float *x, const hc_mat *const *ws, int n, int64_t T, float *tmp, bool overwrite);
    /* ffn_train's backward: dx (=) [T, C]; the weights' gradients dgate, dup, ddown and the
     * biases' (+=; NULL: not wanted); x, keep, weights and biases as the forward had them. The
     * op sequence: matmul_backward through down, glu_backward, matmul_backward through gate
     * into dx and through up into [T, C] scratch, add. scratch: [T, 3I + C] floats. */
    void (*ffn_backward)(hc_backend *be, float *dx, float *dgate, float *dbg, float *dup, float *dbu, float *ddown,
                         float *dbd, const float *dout, const float *x, const float *keep, const hc_mat *gate,
                         const hc_vec *bg, const hc_mat *up, const hc_vec *bu, const hc_mat *down, const hc_vec *bd,
                         hc_activation act, int64_t T, float *scratch, bool overwrite);
    /* out = act(gate) * up: dgate, dup (=) */
    void (*glu_backward)(hc_backend *be, float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                         hc_activation act, int64_t n);
    /* topk_route's backward: dlogits[T, E] (=) from dweights[T, k], given the experts it chose
     * and its logits. Without renorm w_j = p(e_j), p = softmax(logits), so dl_i = p_i (g_i -
     * sum_j dw_j w_j) with g_i = dw_j where i = e_j, else 0; with renorm w is the softmax of
     * the chosen logits alone: dl_(e_j) = w_j (dw_j - sum_k dw_k w_k), the others 0. */
    void (*topk_route_backward)(hc_backend *be, float *dlogits, const float *dweights, const int32_t *experts,
                                const float *logits, int64_t T, int64_t E, int64_t k, bool renorm);
    /* y = cap * tanh(x / cap), given y: dx = dy * (1 - (y / cap)^2) */
    void (*softcap_backward)(hc_backend *be, float *dx, const float *dy, const float *y, float cap, int64_t n);
    /* The training loss, forward and backward together: for each row of logits[T, V] with a
     * target (targets[t] >= 0; -1: none), loss[t] = logsumexp(logits[t]) - logits[t, y], hit[t] =
     * 1 when y is the first argmax, and dlogits[t] = (softmax(logits[t]) - onehot(y)) * scale;
     * rows without a target get 0 in all three. dlogits may be NULL (evaluation). */
    void (*cross_entropy)(hc_backend *be, float *dlogits, float *loss, float *hit, const float *logits,
                          const int32_t *targets, int64_t T, int64_t V, double scale);
    /* The LM head and the loss in one: logits [T, V] = matmul(x, w) (V = w->rows), soft-capped
     * when softcap > 0, cross_entropy's loss and hit per row, and with dx the backward: dx (=)
     * [T, C] and dw (+=; NULL: not wanted). scratch: [2 T V] floats. The op sequence: matmul,
     * softcap, cross_entropy, softcap_backward, matmul_backward, the logits and their gradient
     * in scratch's halves; a GPU computing in 16 bits may keep both in that dtype, as
     * transformers' autocast rounds the LM head's output. */
    void (*lm_loss)(hc_backend *be, float *dx, float *dw, float *loss, float *hit, const float *x, const hc_mat *w,
                    float softcap, const int32_t *targets, int64_t T, double scale, float *scratch, bool overwrite);
    /* out[t] = the first index of the largest of x[t, :] ([T, V]): greedy decoding without
     * bringing the logits back. */
    void (*argmax_rows)(hc_backend *be, int32_t *out, const float *x, int64_t T, int64_t V);
    /* The optimizer, for weights kept in backend memory. sum_squares: *acc += sum of x[i]^2, acc
     * one double in backend memory (the global gradient norm, summed over every tensor before
     * one download). adamw: one step of torch.optim.AdamW (the
     * order of operations of hc_adamw_update) on f32 master weights w[n] with moments m1, m2 and
     * the gradient g * g_scale (clipping and accumulation folded in); the new weights are also
     * written to out in out_dtype (F32, BF16 or F16; out NULL: not), the copy the model reads. */
    void (*sum_squares)(hc_backend *be, double *acc, const float *x, int64_t n);
    void (*adamw)(hc_backend *be, float *w, float *m1, float *m2, const float *g, float g_scale, int64_t n,
                  const hc_adamw_params *p, int64_t step, void *out, hc_dtype out_dtype);

    /* Optional (NULL on the CPU). check: waits for queued work and reports the first failure of
     * any op since the backend was made (ops return nothing; a device can fail later).
     * mem_info: free and total device memory. graph_run: runs fn(arg), the ops of one decode
     * step; a backend may record them the first times and replay the recording for the same
     * key (the buffers and flags the step was made with). */
    hc_status (*check)(hc_backend *be);
    void (*mem_info)(hc_backend *be, size_t *free_bytes, size_t *total_bytes);
    void (*graph_run)(hc_backend *be, const void *key, size_t key_len, void (*fn)(void *arg), void *arg);

    void *ctx; /* backend-private state */
    void (*destroy)(hc_backend *be); /* NULL for static tables */
};

/* The fused ops as their op sequences, for any backend's table. */
void hc_fused_matmul_n(hc_backend *be, float *const *outs, const float *x, const hc_mat *const *ws,
                       const hc_vec *const *bs, int n, int64_t T);
void hc_fused_gated_matmul(hc_backend *be, float *out, float *tmp, const float *x, const hc_mat *gate, const hc_vec *bg,
                           const hc_mat *up, const hc_vec *bu, hc_activation act, int64_t T);
void hc_fused_ffn(hc_backend *be, float *out, float *a, float *b, const float *x, const hc_mat *gate, const hc_vec *bg,
                  const hc_mat *up, const hc_vec *bu, const hc_mat *down, const hc_vec *bd, hc_activation act, int64_t T);
void hc_fused_attention_train(hc_backend *be, float *out, float *reserve, const float *q, const float *k, const float *v,
                              const int32_t *pos, int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, float scale,
                              int64_t window, float softcap, float *scratch);
void hc_fused_matmul_add(hc_backend *be, float *out, float *tmp, const float *x, const hc_mat *w, float alpha, int64_t T);
void hc_fused_ffn_train(hc_backend *be, float *out, float *keep, const float *x, const hc_mat *gate, const hc_vec *bg,
                        const hc_mat *up, const hc_vec *bu, const hc_mat *down, const hc_vec *bd, hc_activation act,
                        int64_t T);
void hc_fused_matmul_n_backward(hc_backend *be, float *dx, float *const *dws, float *const *dbs,
                                const float *const *douts, const float *x, const hc_mat *const *ws, int n, int64_t T,
                                float *tmp, bool overwrite);
void hc_fused_ffn_backward(hc_backend *be, float *dx, float *dgate, float *dbg, float *dup, float *dbu, float *ddown,
                           float *dbd, const float *dout, const float *x, const float *keep, const hc_mat *gate,
                           const hc_vec *bg, const hc_mat *up, const hc_vec *bu, const hc_mat *down, const hc_vec *bd,
                           hc_activation act, int64_t T, float *scratch, bool overwrite);
void hc_fused_lm_loss(hc_backend *be, float *dx, float *dw, float *loss, float *hit, const float *x, const hc_mat *w,
                      float softcap, const int32_t *targets, int64_t T, double scale, float *scratch, bool overwrite);
void hc_fused_add_norm(hc_backend *be, float *h, float *x, const float *o, const hc_vec *w, const hc_vec *b,
                       hc_norm_kind kind, float eps, int64_t T, int64_t C);
void hc_fused_matmul_add_norm(hc_backend *be, float *h, float *x, float *o, const float *a, const hc_mat *w,
                              const hc_vec *bias, const hc_vec *nw, const hc_vec *nb, hc_norm_kind kind, float eps,
                              bool h_matmul_only, int64_t T);
void hc_fused_ffn_add_norm(hc_backend *be, float *h, float *x, float *o, float *fa, float *fb, const float *in,
                           const hc_mat *gate, const hc_vec *bg, const hc_mat *up, const hc_vec *bu, const hc_mat *down,
                           const hc_vec *bd, hc_activation act, const hc_vec *nw, const hc_vec *nb, hc_norm_kind kind,
                           float eps, bool h_matmul_only, int64_t T);
void hc_fused_rope_store(hc_backend *be, float *q, float *k, const float *v, void *k_cache, void *v_cache,
                         hc_dtype kv_dtype, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T,
                         int64_t H, int64_t KVH, int64_t D, int64_t R);

void hc_fused_rope_store_rows(hc_backend *be, float *q, float *k, const float *v, void *const *k_rows, void *const *v_rows,
                              hc_dtype kv_dtype, const int32_t *pos, const float *inv_freq, float attn_factor, int64_t T,
                              int64_t H, int64_t KVH, int64_t D, int64_t R);
void hc_fused_attention_rows(hc_backend *be, float *out, const float *q, void *const *k_rows, void *const *v_rows,
                             hc_dtype kv_dtype, const int32_t *pos, int64_t T, int64_t H, int64_t KVH, int64_t D,
                             float scale, int64_t window, float softcap, int64_t S, float *scratch);

/* The reference CPU backend: plain scalar ops, one thread (a static table; needs no free). */
hc_backend *hc_backend_cpu(void);

/* The fast CPU backend: SIMD kernels chosen at run time (AVX-512, AVX2+FMA+F16C, else the
 * reference) and a pool of n_threads (0: all cores). Free with be->destroy(be). */
hc_status hc_backend_cpu_fast_new(int n_threads, hc_backend **out);

/* On a fast CPU backend: every matmul on bf16 weights (decode and prompts) rounds the activations
 * to bf16 and uses vdpbf16ps where the CPU has AVX512_BF16. About 1.7x the prompt speed and
 * faster decode, but the logits then differ from f32 by ~1e-2 (and, in the last bits, with how
 * many tokens a call carries). Returns whether it is on: false where the CPU lacks AVX512_BF16
 * (or HUBCAP_KERNELS turned AVX-512 off), which keeps f32 activations. */
bool hc_backend_cpu_fast_bf16_compute(hc_backend *be, bool on);



#endif
