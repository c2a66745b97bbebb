/* The tokenizer pipeline as HF tokenizers defines it: added tokens are split off first, then
 * normalizer -> pre-tokenizer -> model (BPE or Unigram) -> post-processor; decoding runs the
 * decoder chain over the tokens' strings. Each stage is a small tagged struct read from
 * tokenizer.json (or built from tokenizer.model). */
#ifndef HC_TOKENIZER_INTERNAL_H
#define HC_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "format/json.h"
#include "hubcap.h"
#include "tokenizer/strlist.h"
#include "tokenizer/vocab.h"

/* ---- regex (PCRE2 with UTF and UCP, JIT-compiled) ---------------------------------------- */

typedef struct {
    pcre2_code *code;
    char *literal; /* a String pattern: matched literally instead */
    size_t literal_len;
} hc_regex;

hc_status hc_regex_compile(hc_regex *re, const char *pattern, bool literal, const char *src);
/* Next match at or after `from` in s[0..n): true with [*ms, *me). Empty matches are skipped. */
bool hc_regex_next(hc_regex *re, const char *s, size_t n, size_t from, size_t *ms, size_t *me);
void hc_regex_free(hc_regex *re);
/* Reads {"String": s} or {"Regex": r}. */
hc_status hc_regex_from_json(hc_regex *re, const hc_json *pattern, const char *src, const char *where);

/* ---- normalizers ------------------------------------------------------------------------ */

typedef enum {
    NORM_SEQUENCE, NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD, NORM_LOWERCASE, NORM_PREPEND, NORM_REPLACE,
    NORM_STRIP, NORM_STRIP_ACCENTS, NORM_BERT
} hc_norm_type;

typedef struct hc_normalizer hc_normalizer;
struct hc_normalizer {
    hc_norm_type type;
    hc_normalizer *children; /* SEQUENCE */
    int n_children;
    char *text;              /* PREPEND: the prefix; REPLACE: the content */
    hc_regex pattern;        /* REPLACE */
    bool left, right;        /* STRIP */
    bool clean_text, handle_chinese, strip_accents, lowercase; /* BERT */
};

hc_status hc_normalizer_parse(hc_normalizer *n, const hc_json *j, const char *src);
/* out = normalize(in); false when out of memory. */
bool hc_normalize(const hc_normalizer *n, const char *in, size_t len, hc_str *out);
void hc_normalizer_free(hc_normalizer *n);

/* ---- pre-tokenizers --------------------------------------------------------------------- */

typedef enum {
    PRE_SEQUENCE, PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE, PRE_WHITESPACE, PRE_WHITESPACE_SPLIT, PRE_DIGITS,
    PRE_PUNCTUATION, PRE_BERT
} hc_pretok_type;

typedef enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS } hc_split_behavior;

typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } hc_prepend_scheme;

typedef struct hc_pretok hc_pretok;
struct hc_pretok {
    hc_pretok_type type;
    hc_pretok *children;
    int n_children;
    hc_regex pattern;             /* SPLIT; BYTELEVEL with use_regex; WHITESPACE */
    hc_split_behavior behavior;
    bool invert;
    bool add_prefix_space, use_regex; /* BYTELEVEL */
    char replacement[8];          /* METASPACE (UTF-8) */
    hc_prepend_scheme prepend;    /* METASPACE */
    bool split;                   /* METASPACE */
    bool individual_digits;       /* DIGITS */
};

hc_status hc_pretok_parse(hc_pretok *p, const hc_json *j, const char *src);
/* Splits every text piece of `in` into `out`; added-token pieces pass through. */
bool hc_pretokenize(hc_pretok *p, const hc_pieces *in, hc_pieces *out);
void hc_pretok_free(hc_pretok *p);
/* Metaspace settings, shared with the Metaspace decoder. */
hc_status hc_parse_prepend_scheme(const hc_json *j, hc_prepend_scheme *out, const char *src);
hc_status hc_parse_replacement(const hc_json *j, char out[8], const char *src);

/* Piece flags in hc_pieces.token for ordinary text: -2 marks the piece that starts the text
 * (Metaspace's prepend_scheme "first" looks at it); ids >= 0 are added tokens. */
#define HC_PIECE_TEXT (-1)
#define HC_PIECE_TEXT_START (-2)

/* GPT-2's byte <-> printable character map (ByteLevel). */
const char *hc_byte_char(uint8_t b, size_t *len); /* UTF-8 of the char standing for byte b */
int hc_unicode_to_byte(int32_t cp);               /* -1 when cp stands for no byte */

/* ---- models ----------------------------------------------------------------------------- */

typedef enum { MODEL_BPE, MODEL_UNIGRAM, MODEL_WORDPIECE } hc_model_kind;

typedef struct {
    uint64_t key;   /* left << 32 | right */
    int32_t rank;
    int32_t merged; /* id of left+right */
} hc_merge;

typedef struct {
    hc_model_kind kind;
    hc_vocab vocab;
    /* BPE */
    hc_merge *merges;   /* open-addressed table, key 0 = empty (id pairs are never 0,0 ... see bpe.c) */
    uint64_t n_merge_slots;
    bool byte_fallback, fuse_unk, ignore_merges;
    int32_t byte_ids[256]; /* <0xXX> tokens, -1 if absent */
    char *continuing_subword_prefix, *end_of_word_suffix;
    int32_t unk_id;       /* -1: none */
    /* Unigram */
    float *scores;        /* [n_ids] */
    float min_score;
    /* WordPiece */
    int32_t max_input_chars_per_word;
} hc_tok_model;

hc_status hc_bpe_parse(hc_tok_model *m, const hc_json *j, const char *src);
bool hc_bpe_add_merge(hc_tok_model *m, int32_t left, int32_t right, int32_t rank, int32_t merged);
bool hc_bpe_init_merges(hc_tok_model *m, int64_t expected);
bool hc_bpe_encode(const hc_tok_model *m, const char *word, size_t n, hc_tokens *out);
hc_status hc_unigram_parse(hc_tok_model *m, const hc_json *j, const char *src);
bool hc_unigram_encode(const hc_tok_model *m, const char *word, size_t n, hc_tokens *out);
hc_status hc_wordpiece_parse(hc_tok_model *m, const hc_json *j, const char *src);
bool hc_wordpiece_encode(const hc_tok_model *m, const char *word, size_t n, hc_tokens *out);
void hc_tok_model_free(hc_tok_model *m);
bool hc_tokens_push(hc_tokens *t, int32_t id);

/* ---- decoders --------------------------------------------------------------------------- */

typedef enum {
    DEC_SEQUENCE, DEC_BYTELEVEL, DEC_METASPACE, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_WORDPIECE,
    DEC_BPE
} hc_decoder_type;

typedef struct hc_decoder hc_decoder;
struct hc_decoder {
    hc_decoder_type type;
    hc_decoder *children;
    int n_children;
    hc_regex pattern;       /* REPLACE */
    char *text;             /* REPLACE content; STRIP content char; WORDPIECE prefix; BPE suffix */
    char replacement[8];    /* METASPACE */
    hc_prepend_scheme prepend;
    int start, stop;        /* STRIP */
    bool cleanup;           /* WORDPIECE */
};

hc_status hc_decoder_parse(hc_decoder *d, const hc_json *j, const char *src);
/* Runs the decoder over the token strings in `tokens`, in place. */
bool hc_decode_tokens(const hc_decoder *d, hc_pieces *tokens);
void hc_decoder_free(hc_decoder *d);
/* The Llama/SentencePiece decoder: Replace("▁", " "), ByteFallback, Fuse, and Strip(" ", 1)
 * when the encoder prepends a space. *out is malloc'd (free with hc_decoder_free + free). */
hc_status hc_decoder_llama(hc_decoder **out, bool strip_space);
/* Appends s with invalid UTF-8 replaced by U+FFFD (maximal subparts, as Rust and Python). */
bool hc_utf8_lossy(hc_str *out, const char *s, size_t n);
/* transformers' clean_up_tokenization: no space before . ? ! , and contractions. In place. */
void hc_clean_up_spaces(hc_str *s);

/* ---- the tokenizer ---------------------------------------------------------------------- */

typedef struct {
    int32_t id;
    char *content;
    size_t len;
    bool special, lstrip, rstrip, single_word, normalized;
} hc_added_token;

typedef struct {
    int32_t ids[8];
    int n;
} hc_template_item; /* one special token's ids; n == 0 marks the sequence $A */

struct hc_tokenizer {
    char *path;
    hc_normalizer *normalizer; /* NULL: none */
    hc_pretok *pretok;
    hc_tok_model model;
    hc_decoder *decoder;
    hc_added_token *added;
    int n_added;
    /* Byte trie over added tokens' contents for leftmost-longest matching. */
    int32_t (*trie)[256]; /* [n_nodes][256] child node, 0 = none */
    int32_t *trie_token;  /* [n_nodes] index into added, -1 */
    int n_nodes;
    hc_template_item *post; /* the single-sequence template; NULL: no post-processing */
    int n_post;
    int64_t vocab_size;     /* max id + 1 over model and added tokens */
    int32_t bos_id, eos_id, pad_id, unk_id;
    char *chat_template;
    char *bos_token, *eos_token;
    bool clean_up_spaces;
};

/* Builds a tokenizer from a SentencePiece tokenizer.model (BPE or Unigram). */
hc_status hc_sentencepiece_load(hc_tokenizer *t, const char *path);

#endif
