/* bpe_internal.h: what the tokenizer's loaders and saver (bpe_load.c) need
 * from a built tokenizer (bpe.c) beyond the public API of bpe.h. Not for
 * tools. */
#ifndef UPCYC_BPE_INTERNAL_H
#define UPCYC_BPE_INTERNAL_H

#include "bpe.h"

#include <stddef.h>

/* Write a message into the caller's error buffer (err may be NULL). */
void bpe_set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Ordinary ids are 0..bpe_n_ordinary()-1; some may be unused (holes: an id
 * given to a special token in the source file). bpe_build accepts holes as
 * bytes[i] == NULL with lens[i] == 0. */
size_t bpe_n_ordinary(const bpe_tokenizer *t);
bool bpe_is_ordinary(const bpe_tokenizer *t, uint32_t id);

bool bpe_ignores_merges(const bpe_tokenizer *t);

/* The merges in rank order. A tokenizer built from ranks (tiktoken, no
 * merges) gets them derived: for each token in rank order, the pair its
 * bytes merge into using only lower ranks (tokens no pair reaches are left
 * out). Caller frees the array. */
uint32_t (*bpe_merge_list(const bpe_tokenizer *t, size_t *n))[2];

size_t bpe_n_special(const bpe_tokenizer *t);
/* The i-th special token (in id order) and its id. */
const char *bpe_special_at(const bpe_tokenizer *t, size_t i, uint32_t *id);

#endif
