/* Chat templates: the messages and flags transformers passes to a template, rendered with
 * our Jinja interpreter. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "template/jinja.h"
#include "base/strbuf.h"

hc_chat_params hc_chat_default_params(void) {
    hc_chat_params p = {.add_generation_prompt = true};
    return p;
}

/* A messages array must hold objects with a string role. */
static hc_status check_messages(const hc_json *m) {
    if (!m || m->type != HC_JSON_ARRAY) return hc_fail(HC_ERR_INVALID_ARG, "messages must be a JSON array of {role, content}");
    for (size_t i = 0; i < m->len; i++) {
        const hc_json *e = &m->u.items[i];
        if (e->type != HC_JSON_OBJECT) return hc_fail(HC_ERR_INVALID_ARG, "message %zu is not an object", i + 1);
        const hc_json *role = hc_json_get(e, "role");
        if (!role || role->type != HC_JSON_STRING)
            return hc_fail(HC_ERR_INVALID_ARG, "message %zu has no \"role\" string", i + 1);
        const hc_json *content = hc_json_get(e, "content");
        if (content && content->type != HC_JSON_STRING && content->type != HC_JSON_ARRAY &&
            content->type != HC_JSON_NULL)
            return hc_fail(HC_ERR_INVALID_ARG, "message %zu: \"content\" must be a string, a list or null", i + 1);
    }
    return HC_OK;
}


static hc_status render_with(const char *tmpl, const char *source, const char *messages_json, const hc_chat_params *p,
                             const char *bos, const char *eos, char **out, size_t *len) {
    *out = NULL;
    const hc_chat_params pp = p ? *p : hc_chat_default_params();
    /* The context as one JSON object: messages, flags, tokens, then the extra variables. */
    hc_str ctx = {0};
    bool ok = hc_str_put(&ctx, "{\"messages\":", 12) && hc_str_put(&ctx, messages_json, strlen(messages_json));
    ok = ok && hc_str_put(&ctx, ",\"add_generation_prompt\":", 25) &&
         hc_str_put(&ctx, pp.add_generation_prompt ? "true" : "false", pp.add_generation_prompt ? 4 : 5);
    ok = ok && hc_str_put(&ctx, ",\"bos_token\":", 13) && hc_json_put_string(&ctx, pp.bos_token ? pp.bos_token : bos);
    ok = ok && hc_str_put(&ctx, ",\"eos_token\":", 13) && hc_json_put_string(&ctx, pp.eos_token ? pp.eos_token : eos);
    ok = ok && hc_str_putc(&ctx, '}');
    if (!ok) {
        hc_str_free(&ctx);
        return hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    hc_json_doc doc, extra = {0};
    hc_status st = hc_json_parse(&doc, ctx.data, ctx.len, "messages");
    hc_str_free(&ctx);
    if (st) return st;
    st = check_messages(hc_json_get(doc.root, "messages"));
    if (!st && pp.extra_context_json) {
        st = hc_json_parse(&extra, pp.extra_context_json, strlen(pp.extra_context_json), "extra context");
        if (!st && extra.root->type != HC_JSON_OBJECT) st = hc_fail(HC_ERR_INVALID_ARG, "extra context must be a JSON object");
    }
    if (!st) {
        /* Merge: the extra variables come after (and so win over) the standard ones. */
        size_t ne = extra.root ? extra.root->len : 0, nb = doc.root->len;
        hc_json_member *mem = malloc(sizeof *mem * (nb + ne));
        if (!mem) st = hc_fail(HC_ERR_NOMEM, "out of memory");
        else {
            memcpy(mem, doc.root->u.members, sizeof *mem * nb);
            if (ne) memcpy(mem + nb, extra.root->u.members, sizeof *mem * ne);
            hc_json all = {.type = HC_JSON_OBJECT, .len = nb + ne};
            all.u.members = mem;
            st = hc_jinja_render(tmpl, strlen(tmpl), source, &all, out, len);
            free(mem);
        }
    }
    hc_json_free(&extra);
    hc_json_free(&doc);
    return st;
}

hc_status hc_chat_template_render(const char *tmpl, const char *messages_json, const hc_chat_params *p, char **out,
                                  size_t *len) {
    if (!tmpl || !messages_json) return hc_fail(HC_ERR_INVALID_ARG, "no template or no messages");
    return render_with(tmpl, p && p->template_name ? p->template_name : "chat_template", messages_json, p, "", "", out,
                       len);
}

hc_status hc_tokenizer_apply_chat_template(const hc_tokenizer *t, const char *messages_json, const hc_chat_params *p,
                                           char **out, size_t *len) {
    const char *tmpl = hc_tokenizer_chat_template(t);
    if (!tmpl) return hc_fail(HC_ERR_NOT_FOUND, "this tokenizer has no chat template");
    return render_with(tmpl, "chat_template", messages_json, p, hc_tokenizer_bos_token(t), hc_tokenizer_eos_token(t),
                       out, len);
}
