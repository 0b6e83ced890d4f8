/* lm_score.c: continuation log-likelihoods and greedy decoding on the
 * inference engine, and held-out loss on the training forward (lm_score.h). */
#include "lm_score.h"
#include "engine.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct lm_scorer {
    model *m;
    engine *e;
    int max_len, batch, block;
    float *logits;                  /* host [LM_SCORE_ROWS][V] */
    int seqs[LM_SCORE_ROWS];        /* a step's rows: engine sequence, */
    int32_t ids[LM_SCORE_ROWS];     /* token, */
    bool want[LM_SCORE_ROWS];       /* whether its logits are needed, */
    size_t job[LM_SCORE_ROWS];      /* which job (scoring) */
    int pos[LM_SCORE_ROWS];         /* and its position */
    lm_scorer_stats stats;
};

lm_scorer *lm_scorer_create(model *m, int max_len, int batch)
{
    if (max_len < 1 || batch < 1)
        upc_fail(EX_SOFTWARE, "lm_score: a window of %d tokens and %d sequences in flight", max_len, batch);
    lm_scorer *s = upc_calloc(1, sizeof *s);
    s->m = m;
    s->max_len = max_len;
    s->batch = batch;
    engine_config c;
    engine_config_default(&c);
    s->block = c.block_size;
    c.max_len = max_len;
    c.max_rows = LM_SCORE_ROWS;
    /* running sequences, the finished one whose blocks the next will fork,
     * and one spare */
    c.max_seqs = batch + 2;
    c.n_blocks = (size_t)c.max_seqs * (size_t)((max_len + c.block_size - 1) / c.block_size);
    s->e = engine_create(m, &c);
    s->logits = upc_malloc((size_t)LM_SCORE_ROWS * m->V * sizeof *s->logits);
    return s;
}

void lm_scorer_free(lm_scorer *s)
{
    if (!s)
        return;
    engine_free(s->e);
    free(s->logits);
    free(s);
}

lm_scorer_stats lm_scorer_get_stats(const lm_scorer *s)
{
    return s->stats;
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

/* One sequence being scored. Its window w[0..n) is the tokens kept
 * (the last max_len + 1); positions 0..n-2 run through the model, and
 * those from p0 on predict the continuation. */
typedef struct {
    const int32_t *w;
    int n, p0;
    int shared;         /* leading positions forked from the job before */
    int seq;            /* engine sequence while open, else -1 */
    int placed;         /* positions in the cache */
    bool started, done;
    size_t out;         /* its index in the caller's arrays */
} job;

static int cmp_window(const void *a, const void *b)
{
    const job *x = a, *y = b;
    int n = x->n < y->n ? x->n : y->n;
    for (int i = 0; i < n; i++)
        if (x->w[i] != y->w[i])
            return x->w[i] < y->w[i] ? -1 : 1;
    if (x->n != y->n)
        return x->n < y->n ? -1 : 1;
    return (x->out > y->out) - (x->out < y->out);
}

static int common_prefix(const job *a, const job *b)
{
    int n = a->n < b->n ? a->n : b->n, i = 0;
    while (i < n && a->w[i] == b->w[i])
        i++;
    return i;
}

/* Sorted by window, a job's longest common prefix with any earlier job is
 * the one with the job just before it; it forks those positions (whole
 * blocks, before its first needed position, and cached by that job). */
static job *plan_jobs(lm_scorer *s, const lm_seq *seqs, size_t n)
{
    job *jobs = upc_malloc(n * sizeof *jobs);
    for (size_t i = 0; i < n; i++) {
        const lm_seq *q = &seqs[i];
        if (q->start < 1 || q->start >= q->len)
            upc_fail(EX_SOFTWARE, "lm_score: sequence %zu: continuation [%d, %d) is empty or has no context", i,
                     q->start, q->len);
        if (q->len - q->start > s->max_len)
            upc_fail(EX_DATAERR, "a continuation of %d tokens does not fit the model's context of %d",
                     q->len - q->start, s->max_len);
        int first = q->len - (s->max_len + 1) > 0 ? q->len - (s->max_len + 1) : 0;
        jobs[i] = (job){.w = q->ids + first, .n = q->len - first, .p0 = q->start - 1 - first, .seq = -1, .out = i};
    }
    qsort(jobs, n, sizeof *jobs, cmp_window);
    for (size_t i = 1; i < n; i++) {
        int f = common_prefix(&jobs[i], &jobs[i - 1]);
        f = f < jobs[i].p0 ? f : jobs[i].p0;
        f = f < jobs[i - 1].n - 1 ? f : jobs[i - 1].n - 1;
        jobs[i].shared = f / s->block * s->block;
    }
    return jobs;
}

/* Rows the engine can take for seq now: room in its last block and the
 * free blocks. */
static int rows_that_fit(const lm_scorer *s, int seq, int want)
{
    int len = engine_seq_len(s->e, seq);
    size_t room = engine_blocks_for(s->e, len) * (size_t)s->block - (size_t)len +
                  engine_free_blocks(s->e) * (size_t)s->block;
    return (size_t)want < room ? want : (int)room;
}

/* A finished job keeps its blocks until the job after it has forked them. */
static void close_if_unneeded(lm_scorer *s, job *jobs, size_t n, size_t j)
{
    job *x = &jobs[j];
    if (x->done && x->seq >= 0 && (j + 1 == n || jobs[j + 1].shared == 0 || jobs[j + 1].started)) {
        engine_close(s->e, x->seq);
        x->seq = -1;
    }
}

/* Open job j (forking its shared prefix); false when it must wait. */
static bool start_job(lm_scorer *s, job *jobs, size_t j)
{
    job *x = &jobs[j];
    if (x->shared && jobs[j - 1].placed < x->shared)
        return false;
    x->seq = x->shared ? engine_fork(s->e, jobs[j - 1].seq, x->shared) : engine_open(s->e);
    if (x->seq < 0)
        return false;
    x->started = true;
    x->placed = x->shared;
    s->stats.tokens_shared += x->shared;
    return true;
}

void lm_score_seqs(lm_scorer *s, const lm_seq *seqs, size_t n, lm_seq_score *out)
{
    if (n == 0)
        return;
    job *jobs = plan_jobs(s, seqs, n);
    for (size_t i = 0; i < n; i++)
        out[i] = (lm_seq_score){0.0, 0, true};
    int V = s->m->V, running = 0;
    size_t oldest = 0;
    while (oldest < n) {
        int rows = 0;
        for (size_t j = oldest; j < n && rows < LM_SCORE_ROWS; j++) {
            job *x = &jobs[j];
            if (!x->started) {
                if (running >= s->batch || !start_job(s, jobs, j))
                    break;
                running++;
                if (j > 0)
                    close_if_unneeded(s, jobs, n, j - 1);
            }
            if (x->done)
                continue;
            int left = x->n - 1 - x->placed, room = LM_SCORE_ROWS - rows;
            int chunk = rows_that_fit(s, x->seq, left < room ? left : room);
            for (int p = x->placed; p < x->placed + chunk; p++, rows++) {
                s->seqs[rows] = x->seq;
                s->ids[rows] = x->w[p];
                s->want[rows] = p >= x->p0;
                s->job[rows] = j;
                s->pos[rows] = p;
            }
        }
        if (rows == 0)
            upc_fail(EX_SOFTWARE, "lm_score: no sequence can advance (KV pool too small)");
        engine_step(s->e, s->seqs, s->ids, rows, s->want, s->logits);
        s->stats.tokens_run += rows;
        const float *row = s->logits;
        for (int r = 0; r < rows; r++) {
            job *x = &jobs[s->job[r]];
            x->placed++;
            if (s->want[r]) {
                lm_seq_score *o = &out[x->out];
                bool top;
                o->logprob += row_logprob(row, V, x->w[s->pos[r] + 1], &top);
                o->greedy &= top;
                o->n_tokens++;
                row += V;
            }
            if (x->placed == x->n - 1 && !x->done) {
                x->done = true;
                running--;
                close_if_unneeded(s, jobs, n, s->job[r]);
            }
        }
        while (oldest < n && jobs[oldest].done)
            oldest++;
    }
    for (size_t j = 0; j < n; j++)
        if (jobs[j].seq >= 0)
            engine_close(s->e, jobs[j].seq);
    free(jobs);
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

/* Run ids[0..n) into seq (chunks of LM_SCORE_ROWS) and leave the logits
 * after the last in s->logits. */
static void prefill(lm_scorer *s, int seq, const int32_t *ids, int n)
{
    for (int at = 0; at < n;) {
        int rows = n - at < LM_SCORE_ROWS ? n - at : LM_SCORE_ROWS;
        for (int r = 0; r < rows; r++) {
            s->seqs[r] = seq;
            s->ids[r] = ids[at + r];
            s->want[r] = at + r == n - 1;
        }
        engine_step(s->e, s->seqs, s->ids, rows, s->want, s->logits);
        s->stats.tokens_run += rows;
        at += rows;
    }
}

size_t lm_greedy(lm_scorer *s, const int32_t *ids, int len, int max_new,
                 bool (*stop)(void *ctx, const int32_t *out, size_t count), void *ctx, int32_t *out)
{
    int V = s->m->V;
    int32_t *buf = upc_malloc((size_t)(len + max_new) * sizeof *buf);
    memcpy(buf, ids, (size_t)len * sizeof *buf);
    int seq = -1;
    size_t count = 0;
    while ((int)count < max_new) {
        int total = len + (int)count;
        if (seq >= 0 && total <= s->max_len) {
            prefill(s, seq, buf + total - 1, 1);
        } else {
            /* the first token, or a window that slid: prefill it anew */
            if (seq >= 0)
                engine_close(s->e, seq);
            seq = engine_open(s->e);
            int first = total > s->max_len ? total - s->max_len : 0;
            prefill(s, seq, buf + first, total - first);
        }
        int arg = 0;
        for (int i = 1; i < V; i++)
            if (s->logits[i] > s->logits[arg])
                arg = i;
        buf[total] = arg;
        out[count++] = arg;
        if (stop && stop(ctx, out, count))
            break;
    }
    if (seq >= 0)
        engine_close(s->e, seq);
    free(buf);
    return count;
}
