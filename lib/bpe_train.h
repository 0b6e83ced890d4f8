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

#endif
