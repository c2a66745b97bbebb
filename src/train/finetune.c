/* The fine-tuning loop: data into rows, shuffled and split, then AdamW steps over f32 master
 * weights written back into the model's (writable, read-into-RAM) weights after each step. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/file.h"
#include "base/half.h"
#include "base/strbuf.h"
#include "base/status.h"
#include "format/json.h"
#include "format/safetensors.h"
#include "train/lora.h"
#include "train/train.h"

hc_finetune_params hc_finetune_default_params(void) {
    hc_finetune_params p = {.epochs = 1, .batch_size = 8, .grad_accum = 1, .seq_len = 128, .lr = 1e-3,
                            .weight_decay = 0.01, .clip_norm = 1.0, .eval_fraction = 0.1, .seed = 42};
    return p;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Rows of seq_len ids with their target masks. */
typedef struct {
    int32_t *ids;  /* [n, L] */
    uint8_t *mask; /* [n, L]: 1 where the token is real (a target when it is not the first) */
    int64_t n, cap, L;
} rows;

/* A row of n tokens (padded to L); tmask: which are targets (NULL: all real tokens). */
static bool rows_add(rows *r, const int32_t *ids, const uint8_t *tmask, int64_t n) {
    if (r->n == r->cap) {
        int64_t cap = r->cap ? r->cap * 2 : 64;
        int32_t *a = realloc(r->ids, sizeof(int32_t) * (size_t)(cap * r->L));
        if (a) r->ids = a;
        uint8_t *b = realloc(r->mask, (size_t)(cap * r->L));
        if (b) r->mask = b;
        if (!a || !b) return false;
        r->cap = cap;
    }
    int32_t *dst = r->ids + r->n * r->L;
    uint8_t *mk = r->mask + r->n * r->L;
    for (int64_t i = 0; i < r->L; i++) {
        dst[i] = i < n ? ids[i] : 0;
        mk[i] = i < n && (!tmask || tmask[i]);
    }
    r->n++;
    return true;
}

/* One example: rows of at most L tokens (a longer one is cut into several). */
static bool add_example(rows *r, const int32_t *ids, const uint8_t *tmask, int64_t n) {
    for (int64_t at = 0; at < n; at += r->L)
        if (n - at >= 2 && !rows_add(r, ids + at, tmask ? tmask + at : NULL, n - at < r->L ? n - at : r->L)) return false;
    return true;
}

/* Appends the tokens of text[0..len) to t and their target flag to *mask. */
static hc_status append_piece(const hc_tokenizer *tok, const char *text, size_t len, uint8_t flag, hc_tokens *t,
                              uint8_t **mask, int64_t *mask_cap) {
    hc_tokens piece = {0};
    hc_status st = hc_tokenizer_encode(tok, text, len, false, &piece);
    for (int64_t i = 0; !st && i < piece.n; i++) {
        if (t->n == t->cap) {
            int64_t cap = t->cap ? t->cap * 2 : 256;
            int32_t *ids = realloc(t->ids, sizeof(int32_t) * (size_t)cap);
            if (!ids) {
                st = hc_fail(HC_ERR_NOMEM, "out of memory");
                break;
            }
            t->ids = ids;
            t->cap = cap;
        }
        if (t->n >= *mask_cap) {
            int64_t cap = *mask_cap ? *mask_cap * 2 : 256;
            uint8_t *m = realloc(*mask, (size_t)cap);
            if (!m) {
                st = hc_fail(HC_ERR_NOMEM, "out of memory");
                break;
            }
            *mask = m;
            *mask_cap = cap;
        }
        (*mask)[t->n] = flag;
        t->ids[t->n++] = piece.ids[i];
    }
    hc_tokens_free(&piece);
    return st;
}

/* The first k messages as a JSON array, rendered with the tokenizer's chat template. */
static hc_status render_prefix(const hc_tokenizer *tok, const hc_json *msgs, size_t k, bool gen_prompt, char **out,
                               size_t *len) {
    char *json = NULL;
    size_t jlen = 0;
    FILE *f = open_memstream(&json, &jlen);
    if (!f) return hc_fail(HC_ERR_NOMEM, "out of memory");
    fputc('[', f);
    for (size_t i = 0; i < k; i++) {
        if (i) fputc(',', f);
        hc_json_write(f, &msgs->u.items[i], NULL, 0);
    }
    fputc(']', f);
    fclose(f);
    hc_chat_params cp = hc_chat_default_params();
    cp.add_generation_prompt = gen_prompt;
    hc_status st = hc_tokenizer_apply_chat_template(tok, json, &cp, out, len);
    free(json);
    return st;
}

/* A conversation: rendered with the chat template; only the assistants' turns are targets.
 * Each assistant turn is the text its rendering adds to the rendering of the conversation
 * before it with the generation prompt (as TRL's assistant-only loss finds it). */
static hc_status add_conversation(rows *r, const hc_tokenizer *tok, const hc_json *msgs, const char *where) {
    hc_tokens t = {0};
    uint8_t *mask = NULL;
    int64_t mask_cap = 0;
    hc_status st = HC_OK;
    size_t done = 0; /* characters of the full rendering already tokenized */
    char *prev = NULL;
    size_t prev_len = 0;
    for (size_t i = 0; !st && i < msgs->len; i++) {
        const hc_json *role = hc_json_get(&msgs->u.items[i], "role");
        if (!role || role->type != HC_JSON_STRING) {
            st = hc_fail(HC_ERR_FORMAT, "%s: message %zu has no \"role\"", where, i);
            break;
        }
        if (strcmp(role->u.str, "assistant")) continue;
        char *before = NULL, *with = NULL;
        size_t blen = 0, wlen = 0;
        st = render_prefix(tok, msgs, i, true, &before, &blen);
        if (!st) st = render_prefix(tok, msgs, i + 1, false, &with, &wlen);
        if (!st && (blen < done || wlen < blen || memcmp(with, before, blen) || (prev && memcmp(before, prev, done))))
            st = hc_fail(HC_ERR_FORMAT, "%s: the chat template does not render message %zu as an extension of the "
                                        "conversation before it; cannot find the assistant's tokens", where, i);
        if (!st) st = append_piece(tok, before + done, blen - done, 0, &t, &mask, &mask_cap);
        if (!st) st = append_piece(tok, with + blen, wlen - blen, 1, &t, &mask, &mask_cap);
        done = wlen;
        free(prev);
        prev = with;
        prev_len = wlen;
        free(before);
    }
    (void)prev_len;
    free(prev);
    if (!st && t.n && !add_example(r, t.ids, mask, t.n)) st = hc_fail(HC_ERR_NOMEM, "out of memory");
    hc_tokens_free(&t);
    free(mask);
    return st;
}

static hc_status load_rows(const hc_tokenizer *tok, const char *path, const hc_finetune_params *p, rows *r) {
    char *text;
    size_t size;
    hc_status st = hc_file_read_all(path, &text, &size);
    if (st) return st;
    /* Training data is text: a byte that is not UTF-8 (or a NUL, which would end a line early)
     * is refused with its line, as Python's open() would refuse it, not tokenized as bytes. */
    size_t bad_line, bad_col;
    const char *why;
    if (!hc_text_check(text, size, &bad_line, &bad_col, &why)) {
        free(text);
        return hc_fail(HC_ERR_FORMAT, "%s:%zu:%zu: %s", path, bad_line, bad_col, why);
    }
    const size_t plen = strlen(path);
    const bool jsonl = plen > 6 && !strcmp(path + plen - 6, ".jsonl");
    hc_tokens t = {0};
    if (!jsonl && !p->lines) { /* the whole file, chunked */
        st = hc_tokenizer_encode(tok, text, size, true, &t);
        if (!st && !add_example(r, t.ids, NULL, t.n)) st = hc_fail(HC_ERR_NOMEM, "out of memory");
    } else {
        int64_t line_no = 0;
        for (char *line = text, *next; !st && line && *line; line = next) {
            next = strchr(line, '\n');
            if (next) *next++ = 0;
            line_no++;
            size_t len = strlen(line);
            if (len && line[len - 1] == '\r') line[--len] = 0;
            if (!len) continue;
            const char *body = line;
            hc_json_doc doc = {0};
            if (jsonl) {
                char src[4200];
                snprintf(src, sizeof src, "%s:%lld", path, (long long)line_no);
                if ((st = hc_json_parse(&doc, line, len, src))) break;
                const hc_json *tv = hc_json_get(doc.root, "text"), *mv = hc_json_get(doc.root, "messages");
                if (mv && mv->type == HC_JSON_ARRAY) {
                    st = add_conversation(r, tok, mv, src);
                    hc_json_free(&doc);
                    continue;
                }
                if (!tv || tv->type != HC_JSON_STRING) {
                    hc_json_free(&doc);
                    st = hc_fail(HC_ERR_FORMAT, "%s:%lld: each line needs a \"text\" string or a \"messages\" array",
                                 path, (long long)line_no);
                    break;
                }
                body = tv->u.str;
                len = tv->len;
            }
            t.n = 0;
            st = hc_tokenizer_encode(tok, body, len, true, &t);
            if (!st && !add_example(r, t.ids, NULL, t.n)) st = hc_fail(HC_ERR_NOMEM, "out of memory");
            hc_json_free(&doc);
        }
    }
    hc_tokens_free(&t);
    free(text);
    if (!st && r->n < 1) st = hc_fail(HC_ERR_INVALID_ARG, "%s: no example of two or more tokens", path);
    return st;
}

static uint64_t next_rand(uint64_t *s) {
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

/* Shuffles row order in place (Fisher-Yates). */
static void shuffle(int64_t *order, int64_t n, uint64_t *seed) {
    for (int64_t i = n - 1; i > 0; i--) {
        const int64_t j = (int64_t)(next_rand(seed) % (uint64_t)(i + 1));
        const int64_t t = order[i];
        order[i] = order[j], order[j] = t;
    }
}

/* Mean loss and accuracy over rows order[0..n), in batches. */
static hc_status evaluate(hc_model *m, const rows *r, const int64_t *order, int64_t n, int64_t B, int32_t *ids,
                          uint8_t *mask, double *loss, double *acc) {
    double ls = 0, as = 0, w = 0;
    for (int64_t i = 0; i < n; i += B) {
        const int64_t b = n - i < B ? n - i : B;
        int64_t targets = 0;
        for (int64_t k = 0; k < b; k++) {
            memcpy(ids + k * r->L, r->ids + order[i + k] * r->L, sizeof(int32_t) * (size_t)r->L);
            memcpy(mask + k * r->L, r->mask + order[i + k] * r->L, (size_t)r->L);
            for (int64_t t = 1; t < r->L; t++) targets += mask[k * r->L + t];
        }
        double l, a;
        hc_status st = hc_model_loss_grad(m, ids, mask, b, r->L, NULL, &l, &a);
        if (st) return st;
        ls += l * (double)targets, as += a * (double)targets, w += (double)targets;
    }
    *loss = ls / w;
    *acc = as / w;
    return HC_OK;
}

/* What the optimizer updates: a checkpoint tensor (f32 master copy, written back into the
 * model's weights in their dtype after each step) or one matrix of a LoRA adapter (trained in
 * place). */
typedef struct {
    char name[600];
    float *w, *g, *m1, *m2; /* [n] each, host */
    int64_t n;
    const hc_tensor_info *t; /* write-back target, or NULL */
    bool owns_w;
    /* Full fine-tuning on a GPU keeps the optimizer there: master weights and moments in
     * device memory, the gradient the backward wrote, and the model's device copy of the
     * tensor that each step rewrites (the host arrays above are synced for saving). */
    float *w_dev, *m1_dev, *m2_dev, *g_dev;
    void *out_dev;
    hc_dtype out_dtype; /* out_dev's: the tensor's stored dtype; F32 for a LoRA matrix */
} param;

static void free_params(hc_backend *be, param *ps, int64_t n) {
    for (int64_t i = 0; ps && i < n; i++) {
        if (ps[i].owns_w) free(ps[i].w);
        free(ps[i].m1), free(ps[i].m2);
        if (ps[i].w_dev) be->free(be, ps[i].w_dev);
        if (ps[i].m1_dev) be->free(be, ps[i].m1_dev);
        if (ps[i].m2_dev) be->free(be, ps[i].m2_dev);
    }
    free(ps);
}

/* Host weights in their stored dtype from the f32 masters, and the device copy with them. */
static void write_back(hc_model *m, const param *q) {
    void *w = (void *)q->t->data;
    for (int64_t k = 0; k < q->n; k++) {
        if (q->t->dtype == HC_DTYPE_F32) ((float *)w)[k] = q->w[k];
        else if (q->t->dtype == HC_DTYPE_BF16) ((uint16_t *)w)[k] = hc_f32_to_bf16(q->w[k]);
        else ((uint16_t *)w)[k] = hc_f32_to_f16(q->w[k]);
    }
    hc_model_update_device(m, w, (size_t)q->t->n_bytes);
}

/* The device optimizer state to the host (to save it, or the weights), or back. */
static void params_sync(hc_model *m, param *ps, int64_t n, bool to_host) {
    hc_backend *be = m->be;
    for (int64_t i = 0; i < n; i++) {
        param *q = &ps[i];
        if (!q->w_dev) continue;
        const size_t bytes = sizeof(float) * (size_t)q->n;
        if (to_host) {
            be->download(be, q->w, q->w_dev, bytes), be->download(be, q->m1, q->m1_dev, bytes);
            be->download(be, q->m2, q->m2_dev, bytes);
            if (q->t) write_back(m, q);
        } else {
            be->upload(be, q->w_dev, q->w, bytes), be->upload(be, q->m1_dev, q->m1, bytes);
            be->upload(be, q->m2_dev, q->m2, bytes);
            if (q->t) write_back(m, q);
        }
    }
}

static hc_status make_params(hc_model *m, const hc_grads *g, param **out, int64_t *n_out) {
    const hc_lora *lo = m->lora;
    int64_t n = 0;
    if (lo)
        for (int64_t i = 0; i < m->cfg.n_layers * HC_LORA_MODULES; i++) n += lo->pairs[i].a ? 2 : 0;
    else
        for (int64_t i = 0; i < g->n; i++) n += g->g[i] != NULL;
    param *ps = calloc((size_t)n + 1, sizeof *ps);
    if (!ps) return hc_fail(HC_ERR_NOMEM, "out of memory");
    int64_t k = 0;
    if (lo) {
        for (int64_t i = 0; i < m->cfg.n_layers * HC_LORA_MODULES; i++) {
            hc_lora_pair *pr = &lo->pairs[i];
            if (!pr->a) continue;
            for (int ab = 0; ab < 2; ab++, k++) {
                param *q = &ps[k];
                snprintf(q->name, sizeof q->name, "lora.%lld.%d.%c", (long long)(i / HC_LORA_MODULES), (int)(i % HC_LORA_MODULES),
                         ab ? 'B' : 'A');
                q->w = ab ? pr->b : pr->a;
                q->g = ab ? pr->db_h : pr->da_h;
                q->n = ab ? pr->n * lo->r : lo->r * pr->k;
                if (m->be->device) { /* the step updates the adapter's device copy in place */
                    q->g_dev = ab ? pr->db : pr->da;
                    q->out_dev = ab ? pr->b_dev : pr->a_dev;
                    q->out_dtype = HC_DTYPE_F32;
                }
            }
        }
    } else {
        for (int64_t i = 0; i < g->n; i++) {
            if (!g->g[i]) continue;
            const hc_tensor_info *t = g->tensors[i];
            param *q = &ps[k++];
            snprintf(q->name, sizeof q->name, "%s", t->name);
            q->g = g->gh[i];
            q->g_dev = g->g[i];
            q->n = t->n_elements;
            q->t = t;
            q->out_dtype = t->dtype;
            q->owns_w = true;
            if (!(q->w = malloc(sizeof(float) * (size_t)t->n_elements))) break;
            for (int64_t j = 0; j < t->n_elements; j++) {
                uint16_t h;
                if (t->dtype == HC_DTYPE_F32) memcpy(&q->w[j], (const char *)t->data + 4 * j, 4);
                else {
                    memcpy(&h, (const char *)t->data + 2 * j, 2);
                    q->w[j] = t->dtype == HC_DTYPE_BF16 ? hc_bf16_to_f32(h) : hc_f16_to_f32(h);
                }
            }
        }
    }
    hc_status st = HC_OK;
    for (int64_t i = 0; i < n; i++)
        if (!ps[i].w || !(ps[i].m1 = calloc((size_t)ps[i].n, sizeof(float))) || !(ps[i].m2 = calloc((size_t)ps[i].n, sizeof(float))))
            st = hc_fail(HC_ERR_NOMEM, "out of memory for the optimizer state");
    hc_backend *be = m->be;
    for (int64_t i = 0; !st && be->device && i < n; i++) {
        param *q = &ps[i];
        const size_t bytes = sizeof(float) * (size_t)q->n;
        if (q->t) q->out_dev = hc_model_device_address(m, q->t->data, (size_t)q->t->n_bytes);
        if (!q->out_dev || !q->g_dev || !(q->w_dev = be->alloc(be, bytes)) || !(q->m1_dev = be->alloc(be, bytes)) ||
            !(q->m2_dev = be->alloc(be, bytes)))
            st = hc_fail(HC_ERR_NOMEM, "out of GPU memory for the optimizer state of '%s'", q->name);
        else be->upload(be, q->w_dev, q->w, bytes);
    }
    if (st) {
        free_params(be, ps, n);
        return st;
    }
    *out = ps;
    *n_out = n;
    return HC_OK;
}

/* The optimizer's state beside a saved checkpoint: step, shuffling state, and per parameter its
 * f32 weights and moments. */
static hc_status save_state(const char *path, const param *ps, int64_t n, int64_t step, uint64_t epoch_seed,
                            uint64_t seed) {
    hc_tensor_write *w = calloc((size_t)(3 * n + 1), sizeof *w);
    char (*names)[640] = calloc((size_t)(3 * n + 1), sizeof *names);
    int64_t header[3] = {step, (int64_t)epoch_seed, (int64_t)seed};
    hc_status st = w && names ? HC_OK : hc_fail(HC_ERR_NOMEM, "out of memory");
    int64_t k = 0;
    if (!st) {
        w[k].name = "state";
        w[k].dtype = HC_DTYPE_I64;
        w[k].n_dims = 1;
        w[k].shape[0] = 3;
        w[k++].data = header;
    }
    static const char *const kind[3] = {"master", "exp_avg", "exp_avg_sq"};
    for (int64_t i = 0; !st && i < n; i++)
        for (int j = 0; j < 3; j++, k++) {
            snprintf(names[k], sizeof names[k], "%s.%s", kind[j], ps[i].name);
            w[k].name = names[k];
            w[k].dtype = HC_DTYPE_F32;
            w[k].n_dims = 1;
            w[k].shape[0] = ps[i].n;
            w[k].data = j == 0 ? ps[i].w : j == 1 ? ps[i].m1 : ps[i].m2;
        }
    if (!st) st = hc_safetensors_write(path, w, k, NULL, 0);
    free(names);
    free(w);
    return st;
}

static hc_status load_state(const char *path, param *ps, int64_t n, int64_t *step, uint64_t *epoch_seed, uint64_t *seed) {
    hc_safetensors f;
    hc_status st = hc_safetensors_open(&f, path, true);
    if (st) return st;
    const hc_tensor_info *h = hc_safetensors_find(&f, "state");
    if (!h || h->dtype != HC_DTYPE_I64 || h->n_elements != 3) st = hc_fail(HC_ERR_FORMAT, "%s: no trainer state", path);
    if (!st) {
        const int64_t *v = h->data;
        *step = v[0], *epoch_seed = (uint64_t)v[1], *seed = (uint64_t)v[2];
    }
    static const char *const kind[3] = {"master", "exp_avg", "exp_avg_sq"};
    for (int64_t i = 0; !st && i < n; i++)
        for (int j = 0; j < 3 && !st; j++) {
            char name[700];
            snprintf(name, sizeof name, "%s.%s", kind[j], ps[i].name);
            const hc_tensor_info *s = hc_safetensors_find(&f, name);
            if (!s || s->dtype != HC_DTYPE_F32 || s->n_elements != ps[i].n)
                st = hc_fail(HC_ERR_FORMAT, "%s: '%s' is missing or has the wrong size for this model", path, name);
            else memcpy(j == 0 ? ps[i].w : j == 1 ? ps[i].m1 : ps[i].m2, s->data, sizeof(float) * (size_t)ps[i].n);
        }
    hc_safetensors_close(&f);
    return st;
}

hc_status hc_finetune(hc_model *m, const char *data_path, const hc_finetune_params *params, hc_train_progress *last) {
    hc_finetune_params p = params ? *params : hc_finetune_default_params();
    if (m->use_mmap && !m->lora)
        return hc_fail(HC_ERR_INVALID_ARG, "fine-tuning updates the weights in place: load the model with --no-mmap");
    if (!m->tokenizer) return hc_fail(HC_ERR_INVALID_ARG, "fine-tuning needs the model's tokenizer: %s", m->tokenizer_error);
    if (p.batch_size < 1 || p.grad_accum < 1 || p.seq_len < 2 || p.epochs < 1 || p.steps < 0 || !(p.lr > 0) ||
        p.eval_fraction < 0 || p.eval_fraction >= 1)
        return hc_fail(HC_ERR_INVALID_ARG, "fine-tuning: batch size, accumulation, epochs >= 1, seq len >= 2, lr > 0, eval "
                                           "fraction in [0, 1)");
    rows r = {.L = p.seq_len};
    hc_grads *g = NULL;
    int64_t *order = NULL;
    param *ps = NULL;
    int64_t n_ps = 0;
    double *norm_acc = NULL; /* one double in GPU memory: the gradient norm, summed there */
    int32_t *ids = NULL;
    uint8_t *mask = NULL;
    hc_status st = load_rows(m->tokenizer, data_path, &p, &r);
    if (!st) st = hc_grads_new(m, &g);
    if (st) goto out;
    order = malloc(sizeof(int64_t) * (size_t)r.n);
    ids = malloc(sizeof(int32_t) * (size_t)(p.batch_size * r.L));
    mask = malloc((size_t)(p.batch_size * r.L));
    if (!order || !ids || !mask) {
        st = hc_fail(HC_ERR_NOMEM, "out of memory");
        goto out;
    }
    if ((st = make_params(m, g, &ps, &n_ps))) goto out;
    /* full fine-tuning on a GPU: the optimizer runs there (else on the host, over f32 masters) */
    const bool on_device = n_ps > 0 && ps[0].w_dev;
    if (on_device && !(norm_acc = m->be->alloc(m->be, sizeof(double)))) {
        st = hc_fail(HC_ERR_NOMEM, "out of GPU memory");
        goto out;
    }
    hc_grads_set_checkpointing(g, p.checkpointing);
    uint64_t seed = p.seed ? p.seed : 0x9E3779B97F4A7C15ull;
    for (int64_t i = 0; i < r.n; i++) order[i] = i;
    shuffle(order, r.n, &seed);
    int64_t n_eval = (int64_t)floor((double)r.n * p.eval_fraction);
    if (p.eval_fraction > 0 && n_eval == 0 && r.n >= 2) n_eval = 1;
    const int64_t n_train = r.n - n_eval, per_step = p.batch_size * p.grad_accum;
    const int64_t steps_per_epoch = (n_train + per_step - 1) / per_step;
    const int64_t total = p.steps > 0 ? p.steps : steps_per_epoch * p.epochs;
    const int64_t epochs = (total + steps_per_epoch - 1) / steps_per_epoch;
    const hc_adamw_params ap = {.lr = p.lr, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = p.weight_decay};
    hc_train_progress pr = {.epochs = epochs, .steps_per_epoch = steps_per_epoch, .total_steps = total, .val_loss = -1,
                            .val_accuracy = -1};
    int64_t step = 0, first_epoch = 1, first_s = 1;
    uint64_t epoch_seed = seed;
    if (p.resume_state) { /* where a stopped run left off: its step, moments and shuffling */
        if ((st = load_state(p.resume_state, ps, n_ps, &step, &epoch_seed, &seed))) goto out;
        if (m->lora && (st = hc_lora_sync(m))) goto out;
        params_sync(m, ps, n_ps, false);
        first_epoch = step / steps_per_epoch + 1;
        first_s = step % steps_per_epoch + 1;
        if (first_s == 1) epoch_seed = seed; /* stopped at an epoch's end: the next epoch's shuffle follows */
        else seed = epoch_seed;              /* inside an epoch: the same shuffle again, its done rows skipped */
    }
    bool stopped = false;
    double timed_s = 0; /* the steps after this run's first */
    int64_t run_steps = 0;
    pr.tokens_per_step = p.batch_size * p.grad_accum * r.L;
    for (int64_t e = first_epoch; e <= epochs && step < total && !stopped; e++) {
        int64_t *train = order + n_eval;
        epoch_seed = seed;
        shuffle(train, n_train, &seed);
        const double t0 = now_s();
        double loss_sum = 0, acc_sum = 0;
        const int64_t s0 = e == first_epoch ? first_s : 1;
        int64_t at = (s0 - 1) * per_step;
        pr.epoch = e;
        pr.epoch_end = false;
        pr.val_loss = pr.val_accuracy = -1;
        for (int64_t s = s0; s <= steps_per_epoch && step < total; s++) {
            if (p.stop && *p.stop) {
                stopped = true;
                break;
            }
            step++;
            const double step_t0 = now_s();
            hc_grads_zero(g);
            double step_loss = 0, step_acc = 0;
            for (int64_t a = 0; a < p.grad_accum; a++) {
                const int64_t b = n_train - at < p.batch_size ? n_train - at : p.batch_size;
                if (b <= 0) break;
                for (int64_t k = 0; k < b; k++) {
                    memcpy(ids + k * r.L, r.ids + train[at + k] * r.L, sizeof(int32_t) * (size_t)r.L);
                    memcpy(mask + k * r.L, r.mask + train[at + k] * r.L, (size_t)r.L);
                }
                at += b;
                double l, acc;
                if ((st = hc_model_loss_grad(m, ids, mask, b, r.L, g, &l, &acc))) goto out;
                step_loss += l / (double)p.grad_accum, step_acc += acc / (double)p.grad_accum;
            }
            /* the mean over micro-batches, clipped by global norm */
            hc_grads_settle(g); /* (a step without a batch leaves the lazy gradients to clear) */
            double norm = 0;
            if (on_device) {
                m->be->upload(m->be, norm_acc, &norm, sizeof norm);
                if (!m->lora && g->arena) /* every parameter's gradient, in one pass (the gaps are zero) */
                    m->be->sum_squares(m->be, norm_acc, g->arena, g->arena_n);
                else
                    for (int64_t i = 0; i < n_ps; i++) m->be->sum_squares(m->be, norm_acc, ps[i].g_dev, ps[i].n);
                m->be->download(m->be, &norm, norm_acc, sizeof norm);
                norm /= (double)p.grad_accum * p.grad_accum;
            } else {
                hc_grads_download(g);
                for (int64_t i = 0; i < n_ps; i++)
                    for (int64_t k = 0; k < ps[i].n; k++) {
                        ps[i].g[k] /= (float)p.grad_accum;
                        norm += (double)ps[i].g[k] * ps[i].g[k];
                    }
            }
            norm = sqrt(norm);
            const float clip = p.clip_norm > 0 && norm > p.clip_norm ? (float)(p.clip_norm / (norm + 1e-6)) : 1.0f;
            /* linear warmup, then cosine decay to 0 */
            double lr = p.lr;
            if (step <= p.warmup_steps) lr = p.lr * (double)step / (double)p.warmup_steps;
            else if (total > p.warmup_steps)
                lr = p.lr * 0.5 * (1.0 + cos(3.14159265358979323846 * (double)(step - p.warmup_steps) / (double)(total - p.warmup_steps + 1)));
            hc_adamw_params sp = ap;
            sp.lr = lr;
            for (int64_t i = 0; i < n_ps; i++) {
                param *q = &ps[i];
                if (q->w_dev) {
                    m->be->adamw(m->be, q->w_dev, q->m1_dev, q->m2_dev, q->g_dev, clip / (float)p.grad_accum, q->n, &sp,
                                 step, q->out_dev, q->out_dtype);
                    continue;
                }
                if (clip != 1.0f)
                    for (int64_t k = 0; k < q->n; k++) q->g[k] *= clip;
                hc_adamw_update(q->w, q->m1, q->m2, q->g, q->n, &sp, step);
                if (q->t) write_back(m, q); /* back into the weights the forward reads, in their stored dtype */
            }
            if (m->lora && !on_device && (st = hc_lora_sync(m))) goto out;
            loss_sum += step_loss, acc_sum += step_acc;
            pr.step_in_epoch = s;
            pr.step = step;
            pr.loss = loss_sum / (double)(s - s0 + 1);
            pr.accuracy = acc_sum / (double)(s - s0 + 1);
            pr.lr = lr;
            pr.elapsed_s = now_s() - t0;
            if (run_steps++ > 0) { /* the loss came back: the step's work is done */
                timed_s += now_s() - step_t0;
                pr.step_s = timed_s / (double)(run_steps - 1);
            }
            pr.epoch_end = s == steps_per_epoch || step == total;
            if (pr.epoch_end && n_eval > 0 &&
                (st = evaluate(m, &r, order, n_eval, p.batch_size, ids, mask, &pr.val_loss, &pr.val_accuracy)))
                goto out;
            if (p.on_progress) p.on_progress(p.user, &pr);
        }
    }
    pr.stopped = stopped;
    params_sync(m, ps, n_ps, true); /* the weights (and the state) from the GPU, for saving */
    if (m->be->check && !st) st = m->be->check(m->be);
    if (!st && p.save_state && (st = save_state(p.save_state, ps, n_ps, step, epoch_seed, seed))) goto out;
    if (last) *last = pr;
out:
    if (norm_acc) m->be->free(m->be, norm_acc);
    free_params(m->be, ps, n_ps);
    free(order), free(ids), free(mask), free(r.ids), free(r.mask);
    hc_grads_free(g);
    return st;
}
