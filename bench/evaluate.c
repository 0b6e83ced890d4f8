/* bench/evaluate.c: evaluation's scoring path (lib/lm_score.h: the
 * inference engine, LM head only at the continuation positions, shared
 * prefixes run once) against the training forward (forward with targets,
 * which keeps every activation) on the same model and the same number of
 * tokens, in one process, for two workloads: B distinct sequences, and
 * B/4 multiple-choice items whose 4 choices share a context of 3/4 of the
 * window. Built and run by bench/evaluate; never part of make test.
 *
 *   bench-evaluate CONFIG B T REPEATS    prints one line of key=value pairs */
#include "bench.h"
#include "lm_score.h"
#include "model.h"
#include "model_config.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv)
{
    kernels_cpu_prepare_process(argv);
    upc_init("bench-evaluate");
    if (argc != 5)
        upc_usage_fail("usage: bench-evaluate CONFIG B T REPEATS");
    model_config cfg;
    mc_load(&cfg, argv[1]);
    int B = (int)upc_parse_int("B", argv[2], 1, 4096), T = (int)upc_parse_int("T", argv[3], 2, 1 << 16);
    int R = (int)upc_parse_int("REPEATS", argv[4], 1, 100);
    model *m = model_create(kernels_cpu(), &cfg);
    model_init_weights(m, 1);
    size_t N = (size_t)B * (T + 1);
    int32_t *tok = upc_malloc(N * sizeof *tok), *ids = upc_malloc((size_t)B * T * sizeof *ids),
            *tg = upc_malloc((size_t)B * T * sizeof *tg);
    uint64_t rng = 7;
    for (size_t i = 0; i < N; i++)
        tok[i] = (int32_t)(upc_splitmix64(&rng) % (uint64_t)cfg.vocab_size);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            ids[b * T + t] = tok[(size_t)b * (T + 1) + t];
            tg[b * T + t] = tok[(size_t)b * (T + 1) + t + 1];
        }
    /* scoring: each row is a sequence of T + 1 tokens whose last quarter is
     * the continuation (the log-softmax is taken there only) */
    lm_seq *seqs = upc_malloc((size_t)B * sizeof *seqs), *mc = upc_malloc((size_t)B * sizeof *mc);
    for (int b = 0; b < B; b++)
        seqs[b] = (lm_seq){tok + (size_t)b * (T + 1), T + 1, T + 1 - (T + 1) / 4};
    /* choices: the item's first choice's context, then their own tokens */
    int32_t *mct = upc_malloc(N * sizeof *mct);
    int ctx = T + 1 - (T + 1) / 4;
    for (int b = 0; b < B; b++) {
        int32_t *w = mct + (size_t)b * (T + 1);
        memcpy(w, tok + (size_t)(b / 4 * 4) * (T + 1), (size_t)ctx * sizeof *w);
        memcpy(w + ctx, tok + (size_t)b * (T + 1) + ctx, (size_t)(T + 1 - ctx) * sizeof *w);
        mc[b] = (lm_seq){w, T + 1, ctx};
    }
    lm_seq_score *sc = upc_malloc((size_t)B * sizeof *sc);
    lm_scorer *scorer = lm_scorer_create(m, T, B);
    double *tf = upc_malloc((size_t)(R + 1) * sizeof *tf), *ts = upc_malloc((size_t)(R + 1) * sizeof *ts),
           *tm = upc_malloc((size_t)(R + 1) * sizeof *tm);
    for (int r = 0; r <= R; r++) {   /* r == 0 warms up; alternate the three */
        double t0 = upc_now();
        model_loss l;
        model_forward(m, ids, tg, B, T, &l);
        tf[r] = upc_now() - t0;
        t0 = upc_now();
        lm_score_seqs(scorer, seqs, (size_t)B, sc);
        ts[r] = upc_now() - t0;
        t0 = upc_now();
        lm_score_seqs(scorer, mc, (size_t)B, sc);
        tm[r] = upc_now() - t0;
    }
    qsort(tf + 1, (size_t)R, sizeof *tf, cmp_double);
    qsort(ts + 1, (size_t)R, sizeof *ts, cmp_double);
    qsort(tm + 1, (size_t)R, sizeof *tm, cmp_double);
    double f = tf[1 + R / 2], s = ts[1 + R / 2], c = tm[1 + R / 2], tokens = (double)B * T;
    printf("train_forward_tokens_per_s=%.1f score_tokens_per_s=%.1f ratio=%.3f "
           "choice_tokens_per_s=%.1f choice_ratio=%.3f\n",
           tokens / f, tokens / s, f / s, tokens / c, f / c);
    lm_scorer_free(scorer);
    free(tok), free(ids), free(tg), free(seqs), free(mc), free(mct), free(sc), free(tf), free(ts), free(tm);
    model_free(m);
    mc_free(&cfg);
    return 0;
}
