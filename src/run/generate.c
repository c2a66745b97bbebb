/* Generation: batched prompts, each with its own session (KV cache and positions), decoded
 * together through one workspace; sampling, EOS and stop strings, streamed text. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/status.h"
#include "run/session.h"
#include "base/strbuf.h"

const char *hc_finish_reason_name(hc_finish_reason r) {
    switch (r) {
    case HC_FINISH_LENGTH: return "length";
    case HC_FINISH_EOS: return "eos";
    case HC_FINISH_STOP: return "stop";
    case HC_FINISH_CANCELLED: return "cancelled";
    }
    return "?";
}

hc_generate_params hc_generate_default_params(const hc_model *m) {
    hc_generate_params p = {.max_new_tokens = 128, .add_special = true};
    p.sampling = m ? hc_model_sampler_params(m) : hc_sampler_default_params();
    return p;
}

void hc_generation_free(hc_generation *g) {
    if (!g) return;
    free(g->text);
    free(g->ids);
    memset(g, 0, sizeof *g);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
    hc_session *s;
    hc_sampler *sampler;
    hc_detokenizer *detok;
    int32_t *hist;         /* prompt + generated ids */
    int64_t n_hist, n_prompt, fed; /* fed: prompt ids already run */
    hc_str text;           /* generated text */
    size_t emitted;        /* bytes of text handed to the callback */
    bool done;
    hc_finish_reason finish;
} seq_state;

/* Length of the longest suffix of text that begins some stop string: held back from the
 * stream until it is clear it does not start a stop. */
static size_t stop_holdback(const hc_generate_params *p, const char *text, size_t len) {
    size_t hold = 0;
    for (int i = 0; i < p->n_stop; i++) {
        size_t sl = strlen(p->stop[i]);
        for (size_t k = sl > len ? len : sl - 1; k > hold; k--)
            if (!memcmp(text + len - k, p->stop[i], k)) {
                hold = k;
                break;
            }
    }
    return hold;
}

static void emit(seq_state *q, const hc_generate_params *p, int64_t idx, size_t upto) {
    if (upto <= q->emitted) return;
    if (p->on_text && !p->on_text(p->user, idx, q->text.data + q->emitted, upto - q->emitted) && !q->done) {
        q->done = true;
        q->finish = HC_FINISH_CANCELLED;
    }
    q->emitted = upto;
}

/* Appends new text, ends the sequence at a stop string, streams what is safe to show. */
static hc_status add_text(seq_state *q, const hc_generate_params *p, int64_t idx, const char *piece, size_t n,
                          bool final) {
    size_t before = q->text.len;
    if (!hc_str_put(&q->text, piece, n)) return hc_fail(HC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < p->n_stop && !q->done; i++) {
        size_t sl = strlen(p->stop[i]);
        if (!sl) continue;
        size_t from = before >= sl ? before - sl + 1 : 0;
        for (size_t k = from; k + sl <= q->text.len; k++) {
            if (!memcmp(q->text.data + k, p->stop[i], sl)) {
                q->text.len = k;
                q->text.data[k] = 0;
                q->done = true;
                q->finish = HC_FINISH_STOP;
                break;
            }
        }
    }
    size_t safe = (q->done || final) ? q->text.len : q->text.len - stop_holdback(p, q->text.data, q->text.len);
    emit(q, p, idx, safe);
    return HC_OK;
}

hc_status hc_generate_core(hc_model *m, hc_session **given, const int32_t *const *ids, const int64_t *lens, int64_t n,
                           const hc_generate_params *params, hc_generation *out, hc_timings *timings) {
    if (n <= 0) return hc_fail(HC_ERR_INVALID_ARG, "no prompts given");
    const hc_generate_params p = params ? *params : hc_generate_default_params(m);
    if (p.max_new_tokens < 0) return hc_fail(HC_ERR_INVALID_ARG, "max_new_tokens must be >= 0");
    hc_status st = hc_sampler_params_check(&p.sampling);
    if (st) return st;
    const hc_model_config *c = &m->cfg;
    const int64_t V = c->vocab_size;
    const hc_tokenizer *tok = hc_model_tokenizer(m);
    int32_t eos[9];
    int n_eos = 0;
    for (int i = 0; i < c->n_eos; i++) eos[n_eos++] = (int32_t)c->eos_token_ids[i];
    if (!n_eos && tok && hc_tokenizer_eos(tok) >= 0) eos[n_eos++] = hc_tokenizer_eos(tok);

    memset(out, 0, sizeof *out * (size_t)n);
    seq_state *q = calloc((size_t)n, sizeof *q);
    float *logits = malloc(sizeof(float) * (size_t)(n * V)); /* [n, V] */
    hc_group *groups = malloc(sizeof *groups * (size_t)n);
    int64_t *order = malloc(sizeof *order * (size_t)n); /* seq of each group */
    int32_t *batch_ids = NULL;
    int32_t *picked = NULL; /* [2n] greedy ids taken on the device: per sequence, then per group */
    hc_workspace ws = {0};
    if (!q || !logits || !groups || !order) {
        st = hc_fail(HC_ERR_NOMEM, "out of memory");
        goto out;
    }
    int64_t total_prompt = 0, max_ctx = 0;
    for (int64_t i = 0; i < n && !st; i++) {
        if (lens[i] <= 0) {
            st = hc_fail(HC_ERR_INVALID_ARG, "prompt %lld is empty", (long long)i);
            break;
        }
        const int64_t ctx = given ? given[i]->n_ctx : lens[i] + p.max_new_tokens;
        if (lens[i] + p.max_new_tokens > (given ? ctx : m->n_ctx)) {
            st = hc_fail(HC_ERR_RANGE, "prompt %lld (%lld tokens) plus %lld new tokens exceeds the context of %lld",
                         (long long)i, (long long)lens[i], (long long)p.max_new_tokens, (long long)(given ? ctx : m->n_ctx));
            break;
        }
        if (!(q[i].hist = malloc(sizeof(int32_t) * (size_t)ctx))) st = hc_fail(HC_ERR_NOMEM, "out of memory");
        if (!st && given) {
            /* A session that already holds a prefix of this prompt (a chat turn): feed the rest. */
            q[i].s = given[i];
            q[i].fed = given[i]->pos;
            if (q[i].fed >= lens[i]) st = hc_fail(HC_ERR_INVALID_ARG, "the session already holds the whole prompt");
        }
        if (!st && !given) st = hc_session_new(m, ctx, &q[i].s);
        if (!st) st = hc_session_check(q[i].s, ids[i] + q[i].fed, lens[i] - q[i].fed);
        if (!st) st = hc_sampler_new(&p.sampling, V, &q[i].sampler);
        if (!st && tok) st = hc_detokenizer_new(tok, true, &q[i].detok);
        if (st) break;
        memcpy(q[i].hist, ids[i], sizeof(int32_t) * (size_t)lens[i]);
        q[i].n_hist = q[i].n_prompt = lens[i];
        if (!hc_str_put(&q[i].text, "", 0)) st = hc_fail(HC_ERR_NOMEM, "out of memory");
        /* The prompt gives the detokenizer its context (a leading space, a split character). */
        for (int64_t k = 0; k < lens[i] && !st && q[i].detok; k++) {
            const char *piece;
            size_t pl;
            st = hc_detokenizer_push(q[i].detok, ids[i][k], &piece, &pl);
        }
        total_prompt += lens[i] - q[i].fed;
        if (ctx > max_ctx) max_ctx = ctx;
    }
    if (st) goto out;
    /* Rows per pass: the prompts (up to HC_MAX_BATCH at a time), and at least one per sequence. */
    const int64_t prompt_rows = total_prompt < hc_max_batch(m) ? total_prompt : hc_max_batch(m);
    const int64_t rows = n > prompt_rows ? n : prompt_rows;
    if ((st = hc_workspace_init(&ws, m, rows, max_ctx))) goto out;
    if (!(batch_ids = malloc(sizeof(int32_t) * (size_t)rows))) {
        st = hc_fail(HC_ERR_NOMEM, "out of memory");
        goto out;
    }

    /* Prefill: pack prompt rows of several sequences into each pass. Each prompt is one sequence
     * to longrope, whatever passes it is cut into. */
    const double t0 = now_s();
    for (int64_t i = 0; i < n; i++) q[i].s->rope_end = q[i].s->pos + q[i].n_prompt - q[i].fed;
    for (;;) {
        int ng = 0;
        int64_t used = 0;
        for (int64_t i = 0; i < n && used < rows; i++) {
            int64_t left = q[i].n_prompt - q[i].fed;
            if (left <= 0) continue;
            int64_t take = left < rows - used ? left : rows - used;
            memcpy(batch_ids + used, ids[i] + q[i].fed, sizeof(int32_t) * (size_t)take);
            groups[ng] = (hc_group){q[i].s, take};
            order[ng++] = i;
            q[i].fed += take;
            used += take;
        }
        if (!ng) break;
        float *tmp = malloc(sizeof(float) * (size_t)(ng * V));
        if (!tmp) {
            st = hc_fail(HC_ERR_NOMEM, "out of memory");
            goto out;
        }
        hc_decoder_forward_groups(&ws, groups, ng, batch_ids, tmp, false, NULL, NULL);
        if (m->be->check && (st = m->be->check(m->be))) {
            free(tmp);
            goto out;
        }
        for (int g = 0; g < ng; g++)
            if (q[order[g]].fed == q[order[g]].n_prompt)
                memcpy(logits + order[g] * V, tmp + (int64_t)g * V, sizeof(float) * (size_t)V);
        free(tmp);
    }
    const double t1 = now_s();
    for (int64_t i = 0; i < n; i++) q[i].s->rope_end = 0;

    /* Decode: sample for every live sequence, then run their new tokens together. On a GPU, when
     * every sequence decodes greedily, the argmax is taken there and only the ids come back
     * instead of [n, V] logits. */
    bool device_greedy = m->be->device && m->be->argmax_rows;
    for (int64_t i = 0; i < n; i++) device_greedy &= hc_sampler_is_greedy(q[i].sampler);
    if (device_greedy && !(picked = malloc(sizeof(int32_t) * (size_t)(2 * n)))) {
        st = hc_fail(HC_ERR_NOMEM, "out of memory");
        goto out;
    }
    bool have_picked = false;
    int64_t new_tokens = 0;
    for (int64_t step = 0;; step++) {
        int ng = 0;
        for (int64_t i = 0; i < n; i++) {
            seq_state *s = &q[i];
            if (s->done) continue;
            if (step >= p.max_new_tokens) {
                s->done = true;
                s->finish = HC_FINISH_LENGTH;
                continue;
            }
            int32_t next = have_picked ? picked[i] : hc_sampler_sample(s->sampler, logits + i * V, s->hist, s->n_hist);
            s->hist[s->n_hist++] = next;
            new_tokens++;
            bool is_eos = false;
            for (int e = 0; e < n_eos; e++) is_eos |= next == eos[e];
            if (s->detok) {
                const char *piece;
                size_t pl;
                if ((st = hc_detokenizer_push(s->detok, next, &piece, &pl))) goto out;
                if ((st = add_text(s, &p, i, piece, pl, false))) goto out;
            }
            if (s->done) continue; /* a stop string, or the callback said stop */
            if (is_eos && !p.ignore_eos) {
                s->done = true;
                s->finish = HC_FINISH_EOS;
                continue;
            }
            if (step + 1 >= p.max_new_tokens) {
                s->done = true;
                s->finish = HC_FINISH_LENGTH;
                continue;
            }
            batch_ids[ng] = next;
            groups[ng] = (hc_group){s->s, 1};
            order[ng++] = i;
        }
        if (!ng) break;
        if (device_greedy) {
            int32_t *ids_back = picked + n; /* [ng] in group order */
            hc_decoder_forward_groups(&ws, groups, ng, batch_ids, NULL, false, NULL, ids_back);
            if (m->be->check && (st = m->be->check(m->be))) goto out;
            for (int g = 0; g < ng; g++) picked[order[g]] = ids_back[g];
            have_picked = true;
            continue;
        }
        /* Rows come back in group order; every row was sampled from already, so they may be reused. */
        hc_decoder_forward_groups(&ws, groups, ng, batch_ids, logits, false, NULL, NULL);
        if (m->be->check && (st = m->be->check(m->be))) goto out;
        /* Move row g to its sequence's row, from the last so nothing is overwritten first. */
        for (int g = ng - 1; g >= 0; g--)
            if (order[g] != g) memmove(logits + order[g] * V, logits + (int64_t)g * V, sizeof(float) * (size_t)V);
    }
    const double t2 = now_s();

    for (int64_t i = 0; i < n; i++) {
        seq_state *s = &q[i];
        if (s->detok && s->finish != HC_FINISH_STOP) {
            const char *piece;
            size_t pl;
            if ((st = hc_detokenizer_flush(s->detok, &piece, &pl))) goto out;
            if ((st = add_text(s, &p, i, piece, pl, true))) goto out;
        }
        emit(s, &p, i, s->text.len);
        hc_generation *g = &out[i];
        g->n_prompt = s->n_prompt;
        g->n_ids = s->n_hist - s->n_prompt;
        g->ids = malloc(sizeof(int32_t) * (size_t)(g->n_ids ? g->n_ids : 1));
        if (!g->ids) {
            st = hc_fail(HC_ERR_NOMEM, "out of memory");
            goto out;
        }
        memcpy(g->ids, s->hist + s->n_prompt, sizeof(int32_t) * (size_t)g->n_ids);
        g->text = s->text.data;
        g->text_len = s->text.len;
        s->text.data = NULL;
        g->finish = s->finish;
    }
    if (timings) {
        timings->prompt_tokens = total_prompt;
        timings->new_tokens = new_tokens;
        timings->prompt_s = t1 - t0;
        timings->decode_s = t2 - t1;
    }
out:
    for (int64_t i = 0; q && i < n; i++) {
        if (q[i].s) q[i].s->rope_end = 0;
        if (!given) hc_session_free(q[i].s);
        hc_sampler_free(q[i].sampler);
        hc_detokenizer_free(q[i].detok);
        free(q[i].hist);
        hc_str_free(&q[i].text);
    }
    if (st)
        for (int64_t i = 0; i < n; i++) hc_generation_free(&out[i]);
    hc_workspace_free(&ws);
    free(q);
    free(logits);
    free(groups);
    free(order);
    free(batch_ids);
    free(picked);
    return st;
}

hc_status hc_generate_ids(hc_model *m, const int32_t *const *ids, const int64_t *lens, int64_t n,
                          const hc_generate_params *params, hc_generation *out, hc_timings *timings) {
    return hc_generate_core(m, NULL, ids, lens, n, params, out, timings);
}

hc_status hc_generate(hc_model *m, const char *const *prompts, int64_t n, const hc_generate_params *params,
                      hc_generation *out, hc_timings *timings) {
    const hc_tokenizer *tok = hc_model_tokenizer(m);
    if (!tok) return hc_fail(HC_ERR_NOT_FOUND, "%s: text prompts need a tokenizer, and this model folder has none (%s)",
                             hc_checkpoint_path(m->ck), *m->tokenizer_error ? m->tokenizer_error : "no tokenizer file");
    const bool add_special = params ? params->add_special : true;
    hc_tokens *enc = calloc((size_t)(n > 0 ? n : 1), sizeof *enc);
    const int32_t **ids = malloc(sizeof *ids * (size_t)(n > 0 ? n : 1));
    int64_t *lens = malloc(sizeof *lens * (size_t)(n > 0 ? n : 1));
    hc_status st = (enc && ids && lens) ? HC_OK : hc_fail(HC_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < n && !st; i++) {
        st = hc_tokenizer_encode(tok, prompts[i], strlen(prompts[i]), add_special, &enc[i]);
        ids[i] = enc[i].ids;
        lens[i] = enc[i].n;
        if (!st && lens[i] == 0) st = hc_fail(HC_ERR_INVALID_ARG, "prompt %lld is empty", (long long)i);
    }
    if (!st) st = hc_generate_ids(m, ids, lens, n, params, out, timings);
    for (int64_t i = 0; enc && i < n; i++) hc_tokens_free(&enc[i]);
    free(enc);
    free(ids);
    free(lens);
    return st;
}
