/* bpe_train.h: learn a byte-level BPE tokenizer from text, with incremental
 * pair counts (a priority queue of pairs and a pair -> words index), so each
 * merge touches only the words that contain the merged pair. Deterministic:
 * ties in pair count are broken by the pair's bytes, never by hash order. */
#ifndef UPCYC_BPE_TRAIN_H
#define UPCYC_BPE_TRAIN_H

#include "bpe.h"

typedef struct {
    size_t vocab_size;            /* total: 256 byte tokens + merges + specials */
    const char *pattern;          /* PCRE2 pre-tokenization regex */
    size_t n_special;
    const char *const *special;   /* ids vocab_size-n_special .. vocab_size-1 */
    uint64_t min_frequency;       /* stop when the best pair is rarer (default 2) */
    bool verbose;                 /* progress on stderr */
} bpe_train_opts;

typedef struct bpe_trainer bpe_trainer;

bpe_trainer *bpe_trainer_new(const bpe_train_opts *o, char *err, size_t errlen);
/* Count the pre-tokens of one document (pre-tokens never cross documents). */
void bpe_trainer_feed(bpe_trainer *tr, const char *text, size_t len);
/* Run the merges and build the tokenizer (ids 0..255 are the bytes 0..255,
 * then merges in order, then the special tokens). Frees the trainer. When the
 * corpus runs out of pairs before vocab_size, the vocabulary is smaller and a
 * warning says so. */
bpe_tokenizer *bpe_trainer_finish(bpe_trainer *tr, char *err, size_t errlen);

/* Details of the training, mostly for tests. Pre-tokens are the pieces
 * bpe_encode makes: regex matches and the runs of bytes between them;
 * special token strings in fed text split it and are not counted.
 * min_frequency 0 means the default, 2. Equal counts: the pair whose left
 * token's bytes sort first (bytewise, a prefix before its extensions), then
 * whose right token's. A merge whose bytes are already a token (reached by
 * another split) reuses that id, as HF does, so there can be more merges
 * than new tokens. */

/* Each of these runs the merges if they have not run yet (no more feeding
 * after that); bpe_trainer_finish still builds the tokenizer. */
/* The merges in order, as {left id, right id} pairs (2 * *n_merges ids);
 * owned by the trainer. */
const uint32_t *bpe_trainer_merges(bpe_trainer *tr, size_t *n_merges);
/* Ordinary tokens: 256 bytes + new tokens. */
size_t bpe_trainer_n_tokens(bpe_trainer *tr);
/* Bytes of ordinary token id (NULL when id >= bpe_trainer_n_tokens). */
const unsigned char *bpe_trainer_token(bpe_trainer *tr, uint32_t id, uint32_t *len);
/* Length of the fed text in tokens after the merges (specials left out):
 * what encoding it with the finished tokenizer gives. */
uint64_t bpe_trainer_corpus_tokens(bpe_trainer *tr);
/* Free without building (bpe_trainer_finish frees it otherwise). */
void bpe_trainer_free(bpe_trainer *tr);

#endif
