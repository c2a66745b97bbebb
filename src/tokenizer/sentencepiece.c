/* tokenizer.model: a SentencePiece ModelProto (protobuf), turned into the same pipeline that
 * transformers' slow-to-fast converter builds from it: Prepend/Replace "▁" normalizers, a BPE
 * model whose merges are ranked by piece score (or a Unigram model), byte fallback, and the
 * Replace/ByteFallback/Fuse/Strip decoders. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/status.h"
#include "tokenizer/tokenizer_internal.h"

typedef struct {
    const uint8_t *p, *end;
} pb;

static bool pb_varint(pb *b, uint64_t *v) {
    *v = 0;
    for (int shift = 0; shift < 64 && b->p < b->end; shift += 7) {
        uint8_t c = *b->p++;
        *v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) return true;
    }
    return false;
}

/* Reads one field: its number, wire type, and value (varint) or bytes (length-delimited). */
static bool pb_field(pb *b, uint32_t *field, int *wire, uint64_t *v, pb *sub) {
    uint64_t key;
    if (!pb_varint(b, &key)) return false;
    *field = (uint32_t)(key >> 3);
    *wire = (int)(key & 7);
    switch (*wire) {
    case 0: return pb_varint(b, v);
    case 1:
        if (b->end - b->p < 8) return false;
        memcpy(v, b->p, 8);
        b->p += 8;
        return true;
    case 5: {
        if (b->end - b->p < 4) return false;
        uint32_t x;
        memcpy(&x, b->p, 4);
        *v = x;
        b->p += 4;
        return true;
    }
    case 2: {
        uint64_t n;
        if (!pb_varint(b, &n) || n > (uint64_t)(b->end - b->p)) return false;
        sub->p = b->p;
        sub->end = b->p + n;
        b->p += n;
        return true;
    }
    default: return false;
    }
}

enum { SP_NORMAL = 1, SP_UNKNOWN = 2, SP_CONTROL = 3, SP_USER_DEFINED = 4, SP_UNUSED = 5, SP_BYTE = 6 };

typedef struct {
    const char *s;
    size_t n;
    float score;
    int type;
} sp_piece;

typedef struct {
    int32_t l, r, merged;
    float score;
} sp_merge;

static int cmp_merge(const void *a, const void *b) {
    const sp_merge *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1; /* higher score first */
    if (x->merged != y->merged) return x->merged < y->merged ? -1 : 1;
    if (x->l != y->l) return x->l < y->l ? -1 : 1;
    return x->r < y->r ? -1 : x->r > y->r;
}

static hc_status add_normalizers(hc_tokenizer *t, bool dummy_prefix, bool remove_extra) {
    int n = (dummy_prefix ? 1 : 0) + 1 + (remove_extra ? 2 : 0);
    t->normalizer = calloc(1, sizeof *t->normalizer);
    if (!t->normalizer || !(t->normalizer->children = calloc((size_t)n, sizeof(hc_normalizer))))
        return hc_fail(HC_ERR_NOMEM, "out of memory");
    t->normalizer->type = NORM_SEQUENCE;
    hc_normalizer *c = t->normalizer->children;
    int k = 0;
    hc_status s = HC_OK;
    if (remove_extra) {
        c[k].type = NORM_STRIP;
        c[k].left = c[k].right = true;
        k++;
        c[k].type = NORM_REPLACE;
        c[k].text = strdup(" ");
        s = hc_regex_compile(&c[k].pattern, " {2,}", false, "tokenizer.model");
        k++;
    }
    if (!s && dummy_prefix) {
        c[k].type = NORM_PREPEND;
        c[k].text = strdup("\xe2\x96\x81");
        k++;
    }
    if (!s) {
        c[k].type = NORM_REPLACE;
        c[k].text = strdup("\xe2\x96\x81");
        s = hc_regex_compile(&c[k].pattern, " ", true, "tokenizer.model");
        k++;
    }
    t->normalizer->n_children = k;
    for (int i = 0; i < k; i++)
        if (!s && c[i].type != NORM_STRIP && !c[i].text) s = hc_fail(HC_ERR_NOMEM, "out of memory");
    return s;
}

hc_status hc_sentencepiece_load(hc_tokenizer *t, const char *path) {
    hc_file_map map;
    hc_status s = hc_file_map_open(&map, path, false, 0);
    if (s) return s;
    pb b = {map.data, map.data + map.size};
    sp_piece *pieces = NULL;
    size_t n_pieces = 0, cap = 0;
    uint64_t model_type = 1, unk_id = 0;
    bool byte_fallback = false, dummy_prefix = true, remove_extra = true;
    char norm_name[64] = "";
    bool has_charsmap = false;
    while (b.p < b.end) {
        uint32_t f;
        int w;
        uint64_t v = 0;
        pb sub = {0};
        if (!pb_field(&b, &f, &w, &v, &sub)) {
            s = hc_fail(HC_ERR_FORMAT, "%s: not a SentencePiece model (bad protobuf)", path);
            goto out;
        }
        if (f == 1 && w == 2) {
            sp_piece p = {.type = SP_NORMAL};
            while (sub.p < sub.end) {
                uint32_t pf;
                int pw;
                uint64_t pv = 0;
                pb ps = {0};
                if (!pb_field(&sub, &pf, &pw, &pv, &ps)) {
                    s = hc_fail(HC_ERR_FORMAT, "%s: bad SentencePiece entry", path);
                    goto out;
                }
                if (pf == 1 && pw == 2) p.s = (const char *)ps.p, p.n = (size_t)(ps.end - ps.p);
                else if (pf == 2 && pw == 5) {
                    uint32_t bits = (uint32_t)pv;
                    memcpy(&p.score, &bits, 4);
                } else if (pf == 3 && pw == 0) p.type = (int)pv;
            }
            if (!p.s) {
                s = hc_fail(HC_ERR_FORMAT, "%s: SentencePiece entry %zu has no piece", path, n_pieces);
                goto out;
            }
            if (n_pieces == cap) {
                cap = cap ? cap * 2 : 1024;
                sp_piece *np = realloc(pieces, cap * sizeof *np);
                if (!np) {
                    s = hc_fail(HC_ERR_NOMEM, "out of memory");
                    goto out;
                }
                pieces = np;
            }
            pieces[n_pieces++] = p;
        } else if (f == 2 && w == 2) { /* TrainerSpec */
            while (sub.p < sub.end) {
                uint32_t tf;
                int tw;
                uint64_t tv = 0;
                pb ts = {0};
                if (!pb_field(&sub, &tf, &tw, &tv, &ts)) break;
                if (tf == 3 && tw == 0) model_type = tv;
                else if (tf == 35 && tw == 0) byte_fallback = tv != 0;
                else if (tf == 40 && tw == 0) unk_id = tv;
            }
        } else if (f == 3 && w == 2) { /* NormalizerSpec */
            while (sub.p < sub.end) {
                uint32_t nf;
                int nw;
                uint64_t nv = 0;
                pb ns = {0};
                if (!pb_field(&sub, &nf, &nw, &nv, &ns)) break;
                if (nf == 1 && nw == 2) {
                    size_t l = (size_t)(ns.end - ns.p);
                    if (l >= sizeof norm_name) l = sizeof norm_name - 1;
                    memcpy(norm_name, ns.p, l);
                    norm_name[l] = 0;
                } else if (nf == 2 && nw == 2) has_charsmap = ns.end > ns.p;
                else if (nf == 3 && nw == 0) dummy_prefix = nv != 0;
                else if (nf == 4 && nw == 0) remove_extra = nv != 0;
            }
        }
    }
    if (n_pieces == 0) {
        s = hc_fail(HC_ERR_FORMAT, "%s: SentencePiece model with no pieces", path);
        goto out;
    }
    if (model_type != 1 && model_type != 2) {
        s = hc_fail(HC_ERR_UNSUPPORTED, "%s: SentencePiece model_type %llu (hubcap reads BPE and Unigram)", path,
                    (unsigned long long)model_type);
        goto out;
    }
    if (has_charsmap && strcmp(norm_name, "identity") != 0) {
        s = hc_fail(HC_ERR_UNSUPPORTED,
                    "%s: SentencePiece normalizer '%s' (a precompiled charsmap) is not supported; use tokenizer.json",
                    path, norm_name);
        goto out;
    }
    /* The vocab, with control and unknown pieces as special added tokens. */
    hc_tok_model *m = &t->model;
    m->kind = model_type == 2 ? MODEL_BPE : MODEL_UNIGRAM;
    if (!hc_vocab_init(&m->vocab, (int64_t)n_pieces) ||
        !(t->added = calloc(n_pieces, sizeof *t->added)) || !(m->scores = malloc(n_pieces * sizeof *m->scores))) {
        s = hc_fail(HC_ERR_NOMEM, "out of memory");
        goto out;
    }
    m->min_score = 0;
    for (size_t i = 0; i < n_pieces; i++) {
        if (!hc_vocab_add(&m->vocab, pieces[i].s, pieces[i].n, (int32_t)i)) {
            s = hc_fail(HC_ERR_NOMEM, "out of memory");
            goto out;
        }
        m->scores[i] = pieces[i].score;
        if (pieces[i].score < m->min_score || i == 0) m->min_score = pieces[i].score;
        if (pieces[i].type == SP_CONTROL || pieces[i].type == SP_UNKNOWN || pieces[i].type == SP_USER_DEFINED) {
            hc_added_token *a = &t->added[t->n_added++];
            a->id = (int32_t)i;
            a->len = pieces[i].n;
            a->special = pieces[i].type != SP_USER_DEFINED;
            if (!(a->content = malloc(a->len + 1))) {
                s = hc_fail(HC_ERR_NOMEM, "out of memory");
                goto out;
            }
            memcpy(a->content, pieces[i].s, a->len);
            a->content[a->len] = 0;
        }
    }
    m->unk_id = unk_id < n_pieces ? (int32_t)unk_id : -1;
    m->byte_fallback = byte_fallback;
    m->fuse_unk = true;
    for (int bte = 0; bte < 256; bte++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", bte);
        m->byte_ids[bte] = hc_vocab_find(&m->vocab, name, 6);
    }
    if (m->kind == MODEL_BPE) {
        /* Merges as transformers' SentencePieceExtractor makes them: every split of a piece into
         * two pieces, ranked by the merged piece's score (higher first). */
        sp_merge *merges = NULL;
        size_t nm = 0, mcap = 0;
        for (size_t i = 0; i < n_pieces && !s; i++) {
            for (size_t k = 1; k < pieces[i].n; k++) {
                if (((unsigned char)pieces[i].s[k] & 0xC0) == 0x80) continue;
                int32_t l = hc_vocab_find(&m->vocab, pieces[i].s, k);
                int32_t r = hc_vocab_find(&m->vocab, pieces[i].s + k, pieces[i].n - k);
                if (l < 0 || r < 0) continue;
                if (nm == mcap) {
                    mcap = mcap ? mcap * 2 : 4096;
                    sp_merge *nmg = realloc(merges, mcap * sizeof *nmg);
                    if (!nmg) {
                        s = hc_fail(HC_ERR_NOMEM, "out of memory");
                        break;
                    }
                    merges = nmg;
                }
                merges[nm++] = (sp_merge){l, r, (int32_t)i, pieces[i].score};
            }
        }
        if (!s) {
            if (nm) qsort(merges, nm, sizeof *merges, cmp_merge); /* merges is NULL when there are none */
            if (!hc_bpe_init_merges(m, (int64_t)nm)) s = hc_fail(HC_ERR_NOMEM, "out of memory");
            for (size_t i = 0; !s && i < nm; i++) hc_bpe_add_merge(m, merges[i].l, merges[i].r, (int32_t)i, merges[i].merged);
        }
        free(merges);
        if (s) goto out;
    }
    if ((s = add_normalizers(t, dummy_prefix, remove_extra))) goto out;
    if ((s = hc_decoder_llama(&t->decoder, dummy_prefix))) goto out;
    /* BOS by default, as LlamaTokenizer; tokenizer_config.json may say otherwise. */
    for (int i = 0; i < t->n_added && !t->post; i++) { /* the first "<s>" (a file may list it twice) */
        if (!strcmp(t->added[i].content, "<s>")) {
            if (!(t->post = calloc(2, sizeof *t->post))) {
                s = hc_fail(HC_ERR_NOMEM, "out of memory");
                goto out;
            }
            t->post[0] = (hc_template_item){{t->added[i].id}, 1};
            t->n_post = 2;
        }
    }
out:
    free(pieces);
    hc_file_map_close(&map);
    return s;
}
