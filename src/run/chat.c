/* Chat sessions: the conversation as JSON messages, re-rendered every turn with the chat
 * template; the KV cache keeps the longest prefix the new rendering shares with what it
 * holds, so only new tokens are run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "run/session.h"
#include "base/strbuf.h"
#include "format/json.h"

struct hc_chat {
    hc_model *m;
    char *tmpl;
    hc_str messages;  /* a JSON array, without its closing ']' */
    size_t system_len; /* the part of `messages` that /reset keeps */
    hc_session *s;
    int32_t *cached;  /* [n_cached] the ids in the KV cache */
    int64_t n_cached, cap;
};


static bool add_message(hc_str *msgs, const char *role, const char *content) {
    return (msgs->len > 1 ? hc_str_putc(msgs, ',') : true) && hc_str_put(msgs, "{\"role\":", 8) &&
           hc_json_put_string(msgs, role) && hc_str_put(msgs, ",\"content\":", 11) && hc_json_put_string(msgs, content) &&
           hc_str_putc(msgs, '}');
}

hc_status hc_chat_new(hc_model *m, const char *tmpl, const char *system, int64_t n_ctx, hc_chat **out) {
    *out = NULL;
    const hc_tokenizer *tok = hc_model_tokenizer(m);
    if (!tok) return hc_fail(HC_ERR_NOT_FOUND, "%s: chat needs a tokenizer, and this model folder has none",
                             hc_checkpoint_path(m->ck));
    if (!tmpl) tmpl = hc_tokenizer_chat_template(tok);
    if (!tmpl)
        return hc_fail(HC_ERR_NOT_FOUND, "%s: the model has no chat template; pass one with --template FILE.jinja",
                       hc_checkpoint_path(m->ck));
    hc_chat *c = calloc(1, sizeof *c);
    if (!c) return hc_fail(HC_ERR_NOMEM, "out of memory");
    c->m = m;
    if (!n_ctx) n_ctx = m->n_ctx < 4096 ? m->n_ctx : 4096;
    hc_status st = HC_OK;
    if (!(c->tmpl = strdup(tmpl)) || !hc_str_putc(&c->messages, '[') ||
        (system && *system && !add_message(&c->messages, "system", system)))
        st = hc_fail(HC_ERR_NOMEM, "out of memory");
    c->system_len = c->messages.len;
    if (!st) st = hc_session_new(m, n_ctx, &c->s);
    if (st) {
        hc_chat_free(c);
        return st;
    }
    *out = c;
    return HC_OK;
}

void hc_chat_free(hc_chat *c) {
    if (!c) return;
    hc_session_free(c->s);
    hc_str_free(&c->messages);
    free(c->tmpl);
    free(c->cached);
    free(c);
}

void hc_chat_reset(hc_chat *c) {
    c->messages.len = c->system_len;
    c->messages.data[c->messages.len] = 0;
    c->n_cached = 0;
    hc_session_reset(c->s);
}

int64_t hc_chat_cached_tokens(const hc_chat *c) { return c->n_cached; }

hc_status hc_chat_send(hc_chat *c, const char *user_text, const hc_generate_params *params, hc_generation *out) {
    memset(out, 0, sizeof *out);
    const hc_tokenizer *tok = hc_model_tokenizer(c->m);
    const size_t mark = c->messages.len;
    if (!add_message(&c->messages, "user", user_text)) return hc_fail(HC_ERR_NOMEM, "out of memory");
    hc_chat_params cp = hc_chat_default_params();
    cp.bos_token = hc_tokenizer_bos_token(tok);
    cp.eos_token = hc_tokenizer_eos_token(tok);
    char *prompt = NULL;
    hc_tokens ids = {0};
    hc_status st = hc_str_putc(&c->messages, ']') ? HC_OK : hc_fail(HC_ERR_NOMEM, "out of memory");
    if (!st) {
        st = hc_chat_template_render(c->tmpl, c->messages.data, &cp, &prompt, NULL);
        c->messages.len--; /* drop the ']' again */
        c->messages.data[c->messages.len] = 0;
    }
    /* The template writes BOS itself where the model wants one, as apply_chat_template assumes. */
    if (!st) st = hc_tokenizer_encode(tok, prompt, strlen(prompt), false, &ids);
    hc_generate_params p = params ? *params : hc_generate_default_params(c->m);
    if (!st && ids.n + p.max_new_tokens > c->s->n_ctx)
        st = hc_fail(HC_ERR_RANGE, "the conversation (%lld tokens) plus %lld new tokens exceeds the context of %lld; "
                     "start over with /reset", (long long)ids.n, (long long)p.max_new_tokens, (long long)c->s->n_ctx);
    if (!st && ids.n == 0) st = hc_fail(HC_ERR_INVALID_ARG, "the chat template rendered nothing");
    if (!st) {
        /* Keep the longest common prefix in the KV cache (at least one token is always run). */
        int64_t keep = 0;
        while (keep < c->n_cached && keep < ids.n - 1 && c->cached[keep] == ids.ids[keep]) keep++;
        c->s->pos = keep;
        const int32_t *pid = ids.ids;
        st = hc_generate_core(c->m, &c->s, &pid, &ids.n, 1, &p, out, NULL);
    }
    if (!st) {
        /* Remember what the cache holds now: the prompt and all but the last generated token. */
        int64_t n = ids.n + (out->n_ids > 0 ? out->n_ids - 1 : 0);
        if (n > c->cap) {
            int32_t *nc = realloc(c->cached, sizeof(int32_t) * (size_t)n);
            if (!nc) st = hc_fail(HC_ERR_NOMEM, "out of memory");
            else {
                c->cached = nc;
                c->cap = n;
            }
        }
        if (!st) {
            memcpy(c->cached, ids.ids, sizeof(int32_t) * (size_t)ids.n);
            if (out->n_ids > 1) memcpy(c->cached + ids.n, out->ids, sizeof(int32_t) * (size_t)(out->n_ids - 1));
            c->n_cached = c->s->pos < n ? c->s->pos : n;
        }
        if (!st && !add_message(&c->messages, "assistant", out->text ? out->text : ""))
            st = hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    if (st) {
        /* The failed turn leaves no trace in the conversation. */
        c->messages.len = mark;
        c->messages.data[mark] = 0;
        hc_generation_free(out);
    }
    free(prompt);
    hc_tokens_free(&ids);
    return st;
}
