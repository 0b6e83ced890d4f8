/* bpe.h: byte-level BPE tokenizers: build, load (HF tokenizer.json, GPT-2
 * vocab.json + merges.txt, tiktoken rank files), save (HF tokenizer.json),
 * encode, decode. A built tokenizer is immutable and safe to share across
 * threads; encoding needs only a per-thread bpe_scratch. */
#ifndef UPCYC_BPE_H
#define UPCYC_BPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct bpe_tokenizer bpe_tokenizer;

/* Named pre-tokenization patterns (PCRE2 syntax): "gpt2", "cl100k", "o200k".
 * Returns NULL for an unknown name. */
const char *bpe_pattern_named(const char *name);

/* What a tokenizer is made of. Ordinary token ids are 0..n_tokens-1, with
 * their bytes; merges in rank order (lower index merges first). With
 * merges == NULL the rank of a pair is the id of its concatenation, which is
 * how tiktoken rank files work (rank == id). Special tokens are matched
 * literally in text (when allowed) before pre-tokenization. */
typedef struct {
    const char *pattern;                /* PCRE2 pre-tokenization regex */
    size_t n_tokens;
    const unsigned char *const *bytes;  /* bytes[i]: token i's bytes */
    const uint32_t *lens;               /* lens[i]: their length */
    size_t n_merges;
    const uint32_t (*merges)[2];        /* merges[r] = {left id, right id} */
    size_t n_special;
    const char *const *special;         /* special token strings */
    const uint32_t *special_ids;        /* their ids (any unused id) */
    /* Look a whole pre-token up in the vocabulary before merging (tiktoken,
     * Llama 3 "ignore_merges"). */
    bool ignore_merges;
} bpe_spec;

/* Build from a spec (copies everything). NULL with a message in err when the
 * spec is inconsistent (a merge of unknown ids, a bad regex, ...). */
bpe_tokenizer *bpe_build(const bpe_spec *s, char *err, size_t errlen);
void bpe_free(bpe_tokenizer *t);

/* Loading. Each returns NULL with a one-line reason in err (naming the file
 * and the place in it) on bad input. */
bpe_tokenizer *bpe_load_hf_json(const char *path, char *err, size_t errlen);
bpe_tokenizer *bpe_load_gpt2(const char *vocab_json, const char *merges_txt, char *err, size_t errlen);
/* A tiktoken rank file; encoding names "cl100k_base" or "o200k_base" give the
 * pattern and special tokens (NULL: guessed from the file's size). */
bpe_tokenizer *bpe_load_tiktoken(const char *path, const char *encoding, char *err, size_t errlen);
/* Any of the above, recognised by content: a tokenizer.json, a tiktoken
 * rank file, a GPT-2 vocab.json (merges.txt or vocab.bpe beside it), or a
 * directory holding tokenizer.json. */
bpe_tokenizer *bpe_load(const char *path, char *err, size_t errlen);

/* Write HF tokenizer.json (model BPE, byte-level pre-tokenizer and decoder,
 * special tokens as added_tokens), atomically (upc_out). An I/O error fails
 * the tool (EX_CANTCREAT, EX_IOERR) and leaves nothing behind. */
void bpe_save_hf_json(const bpe_tokenizer *t, const char *path);

/* Sizes and names. */
size_t bpe_vocab_size(const bpe_tokenizer *t);   /* max id + 1, specials included */
const char *bpe_pattern(const bpe_tokenizer *t);
/* Id of a special token string, or -1. */
int64_t bpe_special_id(const bpe_tokenizer *t, const char *s);
/* The end-of-text id: the first special among <|endoftext|>, <|end_of_text|>,
 * </s>, <eos>; -1 if none. */
int64_t bpe_eos_id(const bpe_tokenizer *t);
/* Bytes of a token (special tokens: their string). */
const unsigned char *bpe_token_bytes(const bpe_tokenizer *t, uint32_t id, uint32_t *len);
/* A digest of everything that decides encoding: "xxh64:<16 hex digits>". */
void bpe_digest(const bpe_tokenizer *t, char out[32]);

/* Per-thread working memory for encoding. */
typedef struct bpe_scratch bpe_scratch;
bpe_scratch *bpe_scratch_new(const bpe_tokenizer *t);
void bpe_scratch_free(bpe_scratch *s);

/* Append the ids of text[0..len) to *ids (grown as needed, *n updated).
 * Any bytes at all are accepted (invalid UTF-8, NUL): bytes no pattern
 * alternative matches are encoded as their own pre-tokens, so decoding gives
 * the input back exactly. With allow_special, special token strings in the
 * text become their ids; otherwise they are encoded as ordinary text. */
void bpe_encode(const bpe_tokenizer *t, bpe_scratch *s, const char *text, size_t len,
                bool allow_special, uint32_t **ids, size_t *n, size_t *cap);

/* Append the bytes of ids to *out (grown as needed). Returns false (and
 * stops) at an id outside the vocabulary, setting *bad to its index. */
bool bpe_decode(const bpe_tokenizer *t, const uint32_t *ids, size_t n,
                char **out, size_t *len, size_t *cap, size_t *bad);

#endif
