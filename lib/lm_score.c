/* lm_score.c: continuation log-likelihoods and greedy decoding on the
 * model's forward pass (lm_score.h). */
#include "lm_score.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { LEN_QUANTUM = 32 };

/* The tokens a sequence's window keeps: the last max_len + 1. */
static int first_kept(const lm_seq *s, int max_len)
{
    int first = s->len - (max_len + 1);
    return first > 0 ? first : 0;
}

static int cmp_len(const void *a, const void *b, void *ctx)
{
    const lm_seq *s = ctx;
    int x = *(const int *)a, y = *(const int *)b;
    return (s[x].len > s[y].len) - (s[x].len < s[y].len);
}

/* log softmax(row)[target] in double, and whether target is the argmax
 * (ties to the lowest id, as torch.argmax). */
static double row_logprob(const float *row, int V, int target, bool *is_argmax)
{
    float mx = row[0];
    int arg = 0;
    for (int i = 1; i < V; i++)
        if (row[i] > mx) {
            mx = row[i];
            arg = i;
        }
    double sum = 0.0;
    for (int i = 0; i < V; i++)
        sum += exp((double)row[i] - mx);
    *is_argmax = arg == target;
    return (double)row[target] - mx - log(sum);
}

void lm_score_seqs(model *m, const lm_seq *seqs, size_t n, int batch, int max_len, lm_seq_score *out)
{
    if (n == 0)
        return;
    int *order = upc_malloc(n * sizeof *order);
    for (size_t i = 0; i < n; i++) {
        const lm_seq *s = &seqs[i];
        if (s->start < 1 || s->start >= s->len)
            upc_fail(EX_SOFTWARE, "lm_score: sequence %zu: continuation [%d, %d) is empty or has no context", i,
                     s->start, s->len);
        if (s->len - s->start > max_len)
            upc_fail(EX_DATAERR, "a continuation of %d tokens does not fit the model's context of %d",
                     s->len - s->start, max_len);
        order[i] = (int)i;
    }
    qsort_r(order, n, sizeof *order, cmp_len, (void *)seqs);
    int V = m->V;
    float *logits = upc_malloc((size_t)max_len * V * sizeof *logits);
    int32_t *ids = NULL;
    for (size_t b0 = 0; b0 < n; b0 += (size_t)batch) {
        size_t rows = n - b0 < (size_t)batch ? n - b0 : (size_t)batch;
        int T = 0;
        for (size_t r = 0; r < rows; r++) {
            const lm_seq *s = &seqs[order[b0 + r]];
            int t = s->len - 1 - first_kept(s, max_len);
            T = t > T ? t : T;
        }
        T = (T + LEN_QUANTUM - 1) / LEN_QUANTUM * LEN_QUANTUM;
        if (T > max_len)
            T = max_len;
        ids = upc_realloc(ids, (size_t)batch * T * sizeof *ids);
        memset(ids, 0, (size_t)batch * T * sizeof *ids);
        for (size_t r = 0; r < rows; r++) {
            const lm_seq *s = &seqs[order[b0 + r]];
            int first = first_kept(s, max_len);
            memcpy(ids + r * T, s->ids + first, (size_t)(s->len - 1 - first) * sizeof *ids);
        }
        /* full batches keep one shape; the last may be short */
        model_forward(m, ids, NULL, (int)rows, T, NULL);
        for (size_t r = 0; r < rows; r++) {
            const lm_seq *s = &seqs[order[b0 + r]];
            int first = first_kept(s, max_len);
            /* position p of the row predicts token first + p + 1 */
            int p0 = s->start - 1 - first, p1 = s->len - 1 - first;
            model_get_logits_rows(m, r * T + (size_t)p0, (size_t)(p1 - p0), logits);
            lm_seq_score *o = &out[order[b0 + r]];
            o->logprob = 0.0;
            o->n_tokens = p1 - p0;
            o->greedy = true;
            for (int p = p0; p < p1; p++) {
                bool top;
                o->logprob += row_logprob(logits + (size_t)(p - p0) * V, V, s->ids[first + p + 1], &top);
                o->greedy &= top;
            }
        }
    }
    free(ids);
    free(logits);
    free(order);
}

double lm_heldout_loss(model *m, loader *L, size_t B, size_t T, uint64_t max_tokens, long long *n_targets)
{
    uint64_t steps = loader_steps(L, 0);
    if (max_tokens > 0) {
        uint64_t want = (max_tokens + B * T - 1) / (B * T);
        steps = want < steps ? want : steps;
    }
    loader_seek(L, (loader_cursor){0, 0});
    int32_t *ids = upc_malloc(B * T * sizeof *ids), *targets = upc_malloc(B * T * sizeof *targets);
    double sum = 0;
    long long n = 0;
    for (uint64_t s = 0; s < steps; s++) {
        if (!loader_batch_windows(loader_next(L), T, 0, B, ids, targets))
            continue;
        model_loss l;
        model_forward(m, ids, targets, (int)B, (int)T, &l);
        sum += l.ce * (double)l.n_targets;
        n += l.n_targets;
    }
    free(ids);
    free(targets);
    *n_targets = n;
    return n ? sum / (double)n : NAN;
}

size_t lm_greedy(model *m, const int32_t *ids, int len, int max_len, int max_new,
                 bool (*stop)(void *ctx, const int32_t *out, size_t count), void *ctx, int32_t *out)
{
    int V = m->V;
    int32_t *buf = upc_malloc((size_t)(len + max_new) * sizeof *buf);
    memcpy(buf, ids, (size_t)len * sizeof *buf);
    float *row = upc_malloc((size_t)V * sizeof *row);
    size_t count = 0;
    while ((int)count < max_new) {
        int total = len + (int)count;
        int first = total > max_len ? total - max_len : 0;
        model_forward(m, buf + first, NULL, 1, total - first, NULL);
        model_get_logits_rows(m, (size_t)(total - first - 1), 1, row);
        int arg = 0;
        for (int i = 1; i < V; i++)
            if (row[i] > row[arg])
                arg = i;
        buf[total] = arg;
        out[count++] = arg;
        if (stop && stop(ctx, out, count))
            break;
    }
    free(row);
    free(buf);
    return count;
}
