/* lm_score.h: what evaluation asks of a model: the log-likelihood of a
 * continuation after a context, whether greedy decoding would have produced
 * it, and greedy generation. Sequences are batched by length (rows of one
 * forward share a length rounded up to a multiple of 32, so the model's
 * workspace is reused across batches); every row is scored independently.
 *
 * A sequence longer than the window T + 1 loses tokens from the left (as
 * LLM Foundry truncates contexts); a continuation that alone does not fit
 * fails the tool (EX_DATAERR). */
#ifndef UPCYC_LM_SCORE_H
#define UPCYC_LM_SCORE_H

#include "loader.h"
#include "model.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const int32_t *ids;   /* context then continuation */
    int len;              /* tokens in all */
    int start;            /* the continuation is ids[start..len), start >= 1 */
} lm_seq;

typedef struct {
    double logprob;       /* sum over the continuation of log p(token | everything before) */
    int n_tokens;         /* continuation tokens scored */
    bool greedy;          /* every continuation token was the argmax of its distribution */
} lm_seq_score;

/* Score n sequences, at most `batch` per forward, windows of at most
 * max_len tokens (the model's context). */
void lm_score_seqs(model *m, const lm_seq *seqs, size_t n, int batch, int max_len, lm_seq_score *out);

/* Held-out cross-entropy: the mean over every target token of the first
 * batches of epoch 0 of L (a loader of B windows of T tokens, pad_tail so
 * the whole split counts) up to about max_tokens targets (0: the whole
 * epoch; rounded up to whole batches). The same windows every call (the
 * loader is rewound). *n_targets gets the tokens scored; NAN when none. */
double lm_heldout_loss(model *m, loader *L, size_t B, size_t T, uint64_t max_tokens, long long *n_targets);

/* Greedy decoding after ids[0..len): appends up to max_new tokens into out
 * and returns how many; stops early after a token for which stop(ctx, out,
 * count) says so (stop may be NULL). One forward per token (no KV cache:
 * the serving engine has one). */
size_t lm_greedy(model *m, const int32_t *ids, int len, int max_len, int max_new,
                 bool (*stop)(void *ctx, const int32_t *out, size_t count), void *ctx, int32_t *out);

#endif
