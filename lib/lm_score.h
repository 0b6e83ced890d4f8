/* lm_score.h: what evaluation asks of a model: the log-likelihood of a
 * continuation after a context, whether greedy decoding would have produced
 * it, and greedy generation. Both run on the inference engine (engine.h),
 * so a token's keys and values are computed once:
 *
 * - Scoring sorts the sequences by their tokens; each sequence forks the
 *   KV blocks of the longest prefix it shares with the one before it
 *   (whole blocks, up to the last context token), so the choices of a
 *   multiple-choice item run their shared context once, and few-shot
 *   prefixes common to items are reused as far as they match. Up to
 *   `batch` sequences are in flight at once; their rows share the engine's
 *   steps (up to LM_SCORE_ROWS tokens a step), and only rows whose logits
 *   are needed reach the LM head.
 * - Generation prefills the prompt once and decodes a token at a time.
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

enum { LM_SCORE_ROWS = 512 };

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

/* What the scorer computed since it was created: positions run through the
 * model, and positions whose keys and values came from a shared prefix. */
typedef struct {
    long long tokens_run, tokens_shared;
} lm_scorer_stats;

typedef struct lm_scorer lm_scorer;

/* A scorer over model m with windows of at most max_len tokens (the
 * model's context) and up to batch sequences in flight. It owns an engine
 * whose KV pool holds (batch + 2) windows. */
lm_scorer *lm_scorer_create(model *m, int max_len, int batch);
void lm_scorer_free(lm_scorer *s);
lm_scorer_stats lm_scorer_get_stats(const lm_scorer *s);

/* Score n sequences. */
void lm_score_seqs(lm_scorer *s, const lm_seq *seqs, size_t n, lm_seq_score *out);

/* Greedy decoding after ids[0..len): appends up to max_new tokens into out
 * and returns how many; stops early after a token for which stop(ctx, out,
 * count) says so (stop may be NULL). Past max_len tokens the window slides:
 * each later token is predicted from the last max_len tokens alone, which
 * the engine then prefills anew. */
size_t lm_greedy(lm_scorer *s, const int32_t *ids, int len, int max_new,
                 bool (*stop)(void *ctx, const int32_t *out, size_t count), void *ctx, int32_t *out);

/* Held-out cross-entropy: the mean over every target token of the first
 * batches of epoch 0 of L (a loader of B windows of T tokens, pad_tail so
 * the whole split counts) up to about max_tokens targets (0: the whole
 * epoch; rounded up to whole batches). The same windows every call (the
 * loader is rewound). *n_targets gets the tokens scored; NAN when none.
 * Runs the training forward (no engine). */
double lm_heldout_loss(model *m, loader *L, size_t B, size_t T, uint64_t max_tokens, long long *n_targets);

#endif
