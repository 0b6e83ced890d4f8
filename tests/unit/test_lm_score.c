/* test_lm_score: lib/lm_score.h against the model's own forward on one
 * sequence at a time: batched, length-sorted, padded scoring gives each
 * continuation's log-likelihood and greedy flag; left truncation keeps the
 * last max_len + 1 tokens; greedy decoding follows the argmax chain. */
#include "lm_score.h"
#include "model.h"
#include "test_harness.h"
#include "tiny_model.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { V = 41 };

/* The reference: one forward over exactly the kept tokens, full logits. */
static lm_seq_score reference(model *m, const lm_seq *s, int max_len)
{
    int first = s->len - (max_len + 1) > 0 ? s->len - (max_len + 1) : 0;
    int T = s->len - 1 - first;
    model_forward(m, s->ids + first, NULL, 1, T, NULL);
    float *logits = upc_malloc((size_t)T * V * sizeof *logits);
    model_get_logits(m, logits);
    lm_seq_score r = {0.0, 0, true};
    for (int i = s->start; i < s->len; i++) {
        const float *row = logits + (size_t)(i - 1 - first) * V;
        double mx = row[0], sum = 0.0;
        int arg = 0;
        for (int v = 1; v < V; v++)
            if (row[v] > mx)
                mx = row[v], arg = v;
        for (int v = 0; v < V; v++)
            sum += exp(row[v] - mx);
        r.logprob += row[s->ids[i]] - mx - log(sum);
        r.n_tokens++;
        r.greedy &= arg == s->ids[i];
    }
    free(logits);
    return r;
}

static bool stop_at_7(void *ctx, const int32_t *out, size_t n)
{
    (void)ctx;
    return out[n - 1] == 7;
}

int main(void)
{
    upc_init("test_lm_score");
    model *m = tiny_random_model(V, 0, 0, 5, 20.0f);
    enum { N = 9, MAXLEN = 40 };
    int lens[N] = {2, 5, 17, 33, 40, 41, 60, 8, 23};
    lm_seq seqs[N];
    int32_t *store[N];
    uint64_t rng = 99;
    for (int i = 0; i < N; i++) {
        store[i] = upc_malloc((size_t)lens[i] * sizeof(int32_t));
        for (int j = 0; j < lens[i]; j++)
            store[i][j] = (int32_t)(upc_splitmix64(&rng) % V);
        int cont = 1 + i % 4 < lens[i] - 1 ? 1 + i % 4 : lens[i] - 1;
        seqs[i] = (lm_seq){store[i], lens[i], lens[i] - cont};
    }
    lm_seq_score got[N];
    lm_score_seqs(m, seqs, N, 4, MAXLEN, got);
    for (int i = 0; i < N; i++) {
        lm_seq_score want = reference(m, &seqs[i], MAXLEN);
        CHECK_MSG(got[i].n_tokens == want.n_tokens && fabs(got[i].logprob - want.logprob) < 1e-4 &&
                      got[i].greedy == want.greedy,
                  "sequence %d (len %d): logprob %.6f over %d, greedy %d; reference %.6f over %d, greedy %d", i,
                  lens[i], got[i].logprob, got[i].n_tokens, got[i].greedy, want.logprob, want.n_tokens, want.greedy);
    }
    /* a sequence made of its own greedy continuation is greedy */
    int32_t prompt[6] = {3, 1, 4, 1, 5, 9}, gen[12];
    size_t ng = lm_greedy(m, prompt, 6, MAXLEN, 12, NULL, NULL, gen);
    CHECK(ng == 12);
    int32_t full[18];
    memcpy(full, prompt, sizeof prompt);
    memcpy(full + 6, gen, sizeof gen);
    lm_seq whole = {full, 18, 6};
    lm_seq_score sc;
    lm_score_seqs(m, &whole, 1, 1, MAXLEN, &sc);
    CHECK_MSG(sc.greedy && sc.n_tokens == 12, "greedy decoding is not the argmax chain (greedy %d)", sc.greedy);
    /* a stop rule ends decoding after the token it names */
    size_t ns = lm_greedy(m, prompt, 6, MAXLEN, 12, stop_at_7, NULL, gen);
    size_t first7 = 12;
    for (size_t i = 0; i < 12 && first7 == 12; i++)
        if (full[6 + i] == 7)
            first7 = i;
    CHECK_MSG(ns == (first7 < 12 ? first7 + 1 : 12), "stop rule: %zu tokens, the first 7 is at %zu", ns, first7);
    for (int i = 0; i < N; i++)
        free(store[i]);
    model_free(m);
    if (failures) {
        fprintf(stderr, "test_lm_score: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("test_lm_score: all checks passed (%d checks)\n", checks);
    return 0;
}
