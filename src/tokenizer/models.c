/* Tokenization models: BPE (merges by rank, byte fallback, unk fusing, ignore_merges),
 * Unigram (Viterbi over piece scores) and WordPiece (greedy longest match). */
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "tokenizer/tokenizer_internal.h"

bool hc_tokens_push(hc_tokens *t, int32_t id) {
    if (t->n == t->cap) {
        int64_t cap = t->cap ? t->cap * 2 : 64;
        int32_t *ids = realloc(t->ids, (size_t)cap * sizeof *ids);
        if (!ids) return false;
        t->ids = ids;
        t->cap = cap;
    }
    t->ids[t->n++] = id;
    return true;
}

void hc_tokens_free(hc_tokens *t) {
    if (!t) return;
    free(t->ids);
    memset(t, 0, sizeof *t);
}

static size_t utf8_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

static char *dup_json_str(const hc_json *j, const char *key) {
    const char *s = hc_json_str(j, key, NULL);
    if (!s) return NULL;
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

static void find_byte_tokens(hc_tok_model *m) {
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->byte_ids[b] = hc_vocab_find(&m->vocab, name, 6);
    }
}

/* ---- BPE --------------------------------------------------------------------------------- */

bool hc_bpe_init_merges(hc_tok_model *m, int64_t expected) {
    uint64_t n = 64;
    while (n < (uint64_t)expected * 2) n *= 2;
    m->merges = malloc(n * sizeof *m->merges);
    if (!m->merges) return false;
    for (uint64_t i = 0; i < n; i++) m->merges[i].merged = -1;
    m->n_merge_slots = n;
    return true;
}

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

bool hc_bpe_add_merge(hc_tok_model *m, int32_t left, int32_t right, int32_t rank, int32_t merged) {
    const uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    uint64_t h = mix64(key) & (m->n_merge_slots - 1);
    while (m->merges[h].merged >= 0) {
        if (m->merges[h].key == key) return true; /* the first (best ranked) merge of a pair wins */
        h = (h + 1) & (m->n_merge_slots - 1);
    }
    m->merges[h] = (hc_merge){key, rank, merged};
    return true;
}

static const hc_merge *find_merge(const hc_tok_model *m, int32_t left, int32_t right) {
    const uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    uint64_t h = mix64(key) & (m->n_merge_slots - 1);
    while (m->merges[h].merged >= 0) {
        if (m->merges[h].key == key) return &m->merges[h];
        h = (h + 1) & (m->n_merge_slots - 1);
    }
    return NULL;
}

hc_status hc_bpe_parse(hc_tok_model *m, const hc_json *j, const char *src) {
    m->kind = MODEL_BPE;
    const hc_json *vocab = hc_json_get(j, "vocab"), *merges = hc_json_get(j, "merges");
    if (!vocab || vocab->type != HC_JSON_OBJECT) return hc_fail(HC_ERR_FORMAT, "%s: BPE model needs a 'vocab' object", src);
    const hc_json *dropout = hc_json_get(j, "dropout");
    if (dropout && dropout->type == HC_JSON_NUMBER && dropout->u.num.d > 0)
        return hc_fail(HC_ERR_UNSUPPORTED, "%s: BPE dropout=%g is not supported (inference needs null)", src, dropout->u.num.d);
    if (!hc_vocab_init(&m->vocab, (int64_t)vocab->len)) return hc_fail(HC_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < vocab->len; i++) {
        const hc_json_member *e = &vocab->u.members[i];
        if (e->value.type != HC_JSON_NUMBER || !e->value.is_int || !hc_vocab_id_ok(e->value.u.num.i, vocab->len))
            return hc_fail(HC_ERR_FORMAT, "%s: vocab entry '%s' has no valid id (0 to about the vocabulary's %zu entries)",
                           src, e->key, vocab->len);
        if (!hc_vocab_add(&m->vocab, e->key, e->key_len, (int32_t)e->value.u.num.i))
            return hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    const hc_json *v;
    m->byte_fallback = (v = hc_json_get(j, "byte_fallback")) && v->type == HC_JSON_BOOL && v->u.b;
    m->fuse_unk = (v = hc_json_get(j, "fuse_unk")) && v->type == HC_JSON_BOOL && v->u.b;
    m->ignore_merges = (v = hc_json_get(j, "ignore_merges")) && v->type == HC_JSON_BOOL && v->u.b;
    m->continuing_subword_prefix = dup_json_str(j, "continuing_subword_prefix");
    m->end_of_word_suffix = dup_json_str(j, "end_of_word_suffix");
    m->unk_id = -1;
    const char *unk = hc_json_str(j, "unk_token", NULL);
    if (unk && (m->unk_id = hc_vocab_find(&m->vocab, unk, strlen(unk))) < 0)
        return hc_fail(HC_ERR_FORMAT, "%s: unk_token '%s' is not in the vocab", src, unk);
    find_byte_tokens(m);
    size_t n_merges = (merges && merges->type == HC_JSON_ARRAY) ? merges->len : 0;
    if (!hc_bpe_init_merges(m, (int64_t)n_merges)) return hc_fail(HC_ERR_NOMEM, "out of memory");
    hc_str joined = {0};
    for (size_t r = 0; r < n_merges; r++) {
        const hc_json *e = &merges->u.items[r];
        const char *a, *b;
        size_t al, bl;
        if (e->type == HC_JSON_STRING) {
            const char *sp = memchr(e->u.str, ' ', e->len);
            if (!sp) {
                hc_str_free(&joined);
                return hc_fail(HC_ERR_FORMAT, "%s: merges[%zu] '%s' is not two tokens", src, r, e->u.str);
            }
            a = e->u.str;
            al = (size_t)(sp - a);
            b = sp + 1;
            bl = e->len - al - 1;
        } else if (e->type == HC_JSON_ARRAY && e->len == 2 && e->u.items[0].type == HC_JSON_STRING &&
                   e->u.items[1].type == HC_JSON_STRING) {
            a = e->u.items[0].u.str;
            al = e->u.items[0].len;
            b = e->u.items[1].u.str;
            bl = e->u.items[1].len;
        } else {
            hc_str_free(&joined);
            return hc_fail(HC_ERR_FORMAT, "%s: merges[%zu] must be \"a b\" or [\"a\", \"b\"]", src, r);
        }
        int32_t ia = hc_vocab_find(&m->vocab, a, al), ib = hc_vocab_find(&m->vocab, b, bl);
        joined.len = 0;
        if (!hc_str_put(&joined, a, al) || !hc_str_put(&joined, b, bl)) return hc_fail(HC_ERR_NOMEM, "out of memory");
        int32_t im = hc_vocab_find(&m->vocab, joined.data, joined.len);
        if (ia < 0 || ib < 0 || im < 0) {
            hc_str_free(&joined);
            return hc_fail(HC_ERR_FORMAT, "%s: merges[%zu] uses a token missing from the vocab", src, r);
        }
        hc_bpe_add_merge(m, ia, ib, (int32_t)r, im);
    }
    hc_str_free(&joined);
    return HC_OK;
}

typedef struct {
    int32_t rank, pos, merged;
} heap_item;

static bool heap_less(heap_item a, heap_item b) { return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos; }

static void heap_push(heap_item *h, int *n, heap_item x) {
    int i = (*n)++;
    h[i] = x;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!heap_less(h[i], h[p])) break;
        heap_item t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

static heap_item heap_pop(heap_item *h, int *n) {
    heap_item top = h[0];
    h[0] = h[--*n];
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && heap_less(h[l], h[m])) m = l;
        if (r < *n && heap_less(h[r], h[m])) m = r;
        if (m == i) break;
        heap_item t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
    return top;
}

bool hc_bpe_encode(const hc_tok_model *m, const char *word, size_t n, hc_tokens *out) {
    if (n == 0) return true;
    if (m->ignore_merges) {
        int32_t id = hc_vocab_find(&m->vocab, word, n);
        if (id >= 0) return hc_tokens_push(out, id);
    }
    /* Symbols: at most one per byte. */
    int32_t *id = malloc(n * sizeof *id), *prev = malloc(n * sizeof *prev), *next = malloc(n * sizeof *next);
    heap_item *heap = malloc((3 * n + 1) * sizeof *heap); /* n-1 pairs, then at most 2 per merge */
    hc_str tmp = {0};
    bool ok = id && prev && next && heap;
    int ns = 0;
    const size_t pl = m->continuing_subword_prefix ? strlen(m->continuing_subword_prefix) : 0;
    const size_t sl = m->end_of_word_suffix ? strlen(m->end_of_word_suffix) : 0;
    for (size_t i = 0; ok && i < n;) {
        size_t cl = utf8_len((unsigned char)word[i]);
        if (i + cl > n) cl = n - i;
        tmp.len = 0;
        ok = (i > 0 && pl ? hc_str_put(&tmp, m->continuing_subword_prefix, pl) : hc_str_put(&tmp, "", 0)) &&
             hc_str_put(&tmp, word + i, cl) && (i + cl == n && sl ? hc_str_put(&tmp, m->end_of_word_suffix, sl) : true);
        if (!ok) break;
        int32_t t = hc_vocab_find(&m->vocab, tmp.data, tmp.len);
        if (t >= 0) {
            id[ns++] = t;
        } else {
            bool bytes = m->byte_fallback;
            for (size_t k = 0; bytes && k < cl; k++) bytes = m->byte_ids[(unsigned char)word[i + k]] >= 0;
            if (bytes) {
                for (size_t k = 0; k < cl; k++) id[ns++] = m->byte_ids[(unsigned char)word[i + k]];
            } else if (m->unk_id >= 0) {
                if (!(m->fuse_unk && ns > 0 && id[ns - 1] == m->unk_id)) id[ns++] = m->unk_id;
            }
        }
        i += cl;
    }
    for (int i = 0; i < ns; i++) {
        prev[i] = i - 1;
        next[i] = i + 1 < ns ? i + 1 : -1;
    }
    int hn = 0;
    for (int i = 0; ok && i + 1 < ns; i++) {
        const hc_merge *mg = find_merge(m, id[i], id[i + 1]);
        if (mg) heap_push(heap, &hn, (heap_item){mg->rank, i, mg->merged});
    }
    while (ok && hn > 0) {
        heap_item top = heap_pop(heap, &hn);
        int p = top.pos;
        if (id[p] < 0 || next[p] < 0) continue; /* merged away */
        int q = next[p];
        const hc_merge *mg = find_merge(m, id[p], id[q]);
        if (!mg || mg->merged != top.merged) continue; /* an expired entry */
        id[p] = top.merged;
        id[q] = -1;
        next[p] = next[q];
        if (next[q] >= 0) prev[next[q]] = p;
        if (prev[p] >= 0) {
            const hc_merge *a = find_merge(m, id[prev[p]], id[p]);
            if (a) heap_push(heap, &hn, (heap_item){a->rank, prev[p], a->merged});
        }
        if (next[p] >= 0) {
            const hc_merge *b = find_merge(m, id[p], id[next[p]]);
            if (b) heap_push(heap, &hn, (heap_item){b->rank, p, b->merged});
        }
    }
    for (int i = 0; ok && ns > 0 && i >= 0; i = next[i]) ok = hc_tokens_push(out, id[i]);
    free(id);
    free(prev);
    free(next);
    free(heap);
    hc_str_free(&tmp);
    return ok;
}

/* ---- Unigram ------------------------------------------------------------------------------ */

hc_status hc_unigram_parse(hc_tok_model *m, const hc_json *j, const char *src) {
    m->kind = MODEL_UNIGRAM;
    const hc_json *vocab = hc_json_get(j, "vocab");
    if (!vocab || vocab->type != HC_JSON_ARRAY) return hc_fail(HC_ERR_FORMAT, "%s: Unigram model needs a 'vocab' list", src);
    if (!hc_vocab_init(&m->vocab, (int64_t)vocab->len)) return hc_fail(HC_ERR_NOMEM, "out of memory");
    m->scores = malloc((vocab->len ? vocab->len : 1) * sizeof *m->scores);
    if (!m->scores) return hc_fail(HC_ERR_NOMEM, "out of memory");
    m->min_score = FLT_MAX;
    for (size_t i = 0; i < vocab->len; i++) {
        const hc_json *e = &vocab->u.items[i];
        if (e->type != HC_JSON_ARRAY || e->len != 2 || e->u.items[0].type != HC_JSON_STRING ||
            e->u.items[1].type != HC_JSON_NUMBER)
            return hc_fail(HC_ERR_FORMAT, "%s: Unigram vocab[%zu] must be [piece, score]", src, i);
        if (!hc_vocab_add(&m->vocab, e->u.items[0].u.str, e->u.items[0].len, (int32_t)i))
            return hc_fail(HC_ERR_NOMEM, "out of memory");
        m->scores[i] = (float)e->u.items[1].u.num.d;
        if (m->scores[i] < m->min_score) m->min_score = m->scores[i];
    }
    const hc_json *v;
    m->unk_id = ((v = hc_json_get(j, "unk_id")) && v->type == HC_JSON_NUMBER) ? (int32_t)v->u.num.i : -1;
    if (m->unk_id >= (int32_t)vocab->len) return hc_fail(HC_ERR_FORMAT, "%s: unk_id is outside the vocab", src);
    m->byte_fallback = (v = hc_json_get(j, "byte_fallback")) && v->type == HC_JSON_BOOL && v->u.b;
    find_byte_tokens(m);
    return HC_OK;
}

/* Viterbi: the segmentation of highest total score; a character no piece covers becomes unk
 * with the lowest score minus 10, as sentencepiece does. Consecutive unks are fused. */
bool hc_unigram_encode(const hc_tok_model *m, const char *word, size_t n, hc_tokens *out) {
    if (n == 0) return true;
    double *best = malloc((n + 1) * sizeof *best);
    int32_t *from = malloc((n + 1) * sizeof *from), *tok = malloc((n + 1) * sizeof *tok);
    bool ok = best && from && tok;
    const double unk_score = (double)m->min_score - 10.0;
    for (size_t i = 0; ok && i <= n; i++) best[i] = -DBL_MAX, from[i] = -1, tok[i] = -1;
    if (ok) best[0] = 0;
    for (size_t i = 0; ok && i < n; i++) {
        if (best[i] == -DBL_MAX) continue;
        if (((unsigned char)word[i] & 0xC0) == 0x80) continue;
        size_t cl = utf8_len((unsigned char)word[i]);
        if (i + cl > n) cl = n - i;
        bool covered = false;
        for (size_t e = i + 1; e <= n; e++) {
            if (e < n && ((unsigned char)word[e] & 0xC0) == 0x80) continue;
            int32_t id = hc_vocab_find(&m->vocab, word + i, e - i);
            if (id < 0) {
                if (e - i > 256) break;
                continue;
            }
            if (e == i + cl) covered = true;
            double s = best[i] + m->scores[id];
            if (s > best[e]) best[e] = s, from[e] = (int32_t)i, tok[e] = id;
        }
        if (!covered) {
            double s = best[i] + unk_score;
            if (s > best[i + cl]) best[i + cl] = s, from[i + cl] = (int32_t)i, tok[i + cl] = -2;
        }
    }
    /* Walk back, then emit in order. */
    int64_t count = 0;
    for (int64_t e = (int64_t)n; ok && e > 0; e = from[e]) count++;
    int64_t *ends = malloc((size_t)(count ? count : 1) * sizeof *ends);
    ok = ok && ends;
    int64_t k = count;
    for (int64_t e = (int64_t)n; ok && e > 0; e = from[e]) ends[--k] = e;
    bool prev_unk = false;
    for (int64_t i = 0; ok && i < count; i++) {
        int64_t e = ends[i], s = from[e];
        int32_t id = tok[e];
        if (id == -2 || id == m->unk_id) {
            if (m->byte_fallback) {
                for (int64_t b = s; ok && b < e; b++) {
                    int32_t bid = m->byte_ids[(unsigned char)word[b]];
                    ok = hc_tokens_push(out, bid >= 0 ? bid : m->unk_id);
                }
                continue;
            }
            if (!prev_unk && m->unk_id >= 0) ok = hc_tokens_push(out, m->unk_id);
            prev_unk = true;
            continue;
        }
        prev_unk = false;
        ok = hc_tokens_push(out, id);
    }
    free(ends);
    free(best);
    free(from);
    free(tok);
    return ok;
}

/* ---- WordPiece ---------------------------------------------------------------------------- */

hc_status hc_wordpiece_parse(hc_tok_model *m, const hc_json *j, const char *src) {
    m->kind = MODEL_WORDPIECE;
    const hc_json *vocab = hc_json_get(j, "vocab");
    if (!vocab || vocab->type != HC_JSON_OBJECT) return hc_fail(HC_ERR_FORMAT, "%s: WordPiece model needs a 'vocab' object", src);
    if (!hc_vocab_init(&m->vocab, (int64_t)vocab->len)) return hc_fail(HC_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < vocab->len; i++) {
        const hc_json_member *e = &vocab->u.members[i];
        if (e->value.type != HC_JSON_NUMBER || !e->value.is_int || !hc_vocab_id_ok(e->value.u.num.i, vocab->len))
            return hc_fail(HC_ERR_FORMAT, "%s: vocab entry '%s' has no valid id (0 to about the vocabulary's %zu entries)",
                           src, e->key, vocab->len);
        if (!hc_vocab_add(&m->vocab, e->key, e->key_len, (int32_t)e->value.u.num.i)) return hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    const char *unk = hc_json_str(j, "unk_token", "[UNK]");
    m->unk_id = hc_vocab_find(&m->vocab, unk, strlen(unk));
    m->continuing_subword_prefix = dup_json_str(j, "continuing_subword_prefix");
    if (!m->continuing_subword_prefix) {
        m->continuing_subword_prefix = malloc(3);
        if (m->continuing_subword_prefix) memcpy(m->continuing_subword_prefix, "##", 3);
    }
    const hc_json *v = hc_json_get(j, "max_input_chars_per_word");
    m->max_input_chars_per_word = (v && v->type == HC_JSON_NUMBER) ? (int32_t)v->u.num.i : 100;
    return HC_OK;
}

bool hc_wordpiece_encode(const hc_tok_model *m, const char *word, size_t n, hc_tokens *out) {
    size_t chars = 0;
    for (size_t i = 0; i < n; i++) chars += ((unsigned char)word[i] & 0xC0) != 0x80;
    if ((int64_t)chars > m->max_input_chars_per_word) return m->unk_id < 0 || hc_tokens_push(out, m->unk_id);
    const int64_t mark = out->n;
    hc_str tmp = {0};
    const size_t pl = strlen(m->continuing_subword_prefix);
    bool ok = true;
    for (size_t s = 0; ok && s < n;) {
        int32_t found = -1;
        size_t fe = 0;
        for (size_t e = n; e > s; e--) {
            if (e < n && ((unsigned char)word[e] & 0xC0) == 0x80) continue;
            tmp.len = 0;
            ok = (s > 0 ? hc_str_put(&tmp, m->continuing_subword_prefix, pl) : hc_str_put(&tmp, "", 0)) &&
                 hc_str_put(&tmp, word + s, e - s);
            if (!ok) break;
            int32_t id = hc_vocab_find(&m->vocab, tmp.data, tmp.len);
            if (id >= 0) {
                found = id;
                fe = e;
                break;
            }
        }
        if (found < 0) { /* the whole word becomes unk */
            out->n = mark;
            ok = m->unk_id < 0 || hc_tokens_push(out, m->unk_id);
            break;
        }
        ok = ok && hc_tokens_push(out, found);
        s = fe;
    }
    hc_str_free(&tmp);
    return ok;
}

void hc_tok_model_free(hc_tok_model *m) {
    hc_vocab_free(&m->vocab);
    free(m->merges);
    free(m->scores);
    free(m->continuing_subword_prefix);
    free(m->end_of_word_suffix);
    memset(m, 0, sizeof *m);
}
