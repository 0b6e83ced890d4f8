/* test_lm_score: lib/lm_score.h against the model's own forward on one
 * sequence at a time: scoring on the engine gives each continuation's
 * log-likelihood and greedy flag, whatever the batch; sequences sharing a
 * context fork its blocks (counted in the stats) and still score as if
 * alone; left truncation keeps the last max_len + 1 tokens; greedy decoding
 * follows the argmax chain, also once the window slides. */
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

/* Four items of four choices: a 20-token shared few-shot prefix, an
 * item context, then a choice. Choices of an item share 36 + item tokens,
 * items share the prefix: the scorer must fork, and still score each
 * sequence exactly as alone. */
static void check_shared_contexts(model *m)
{
    enum { ITEMS = 4, CHOICES = 4, PREFIX = 20, CTX = 16, MAXL = 64 };
    int32_t store[ITEMS * CHOICES][PREFIX + CTX + 8 + 5];
    lm_seq seqs[ITEMS * CHOICES];
    uint64_t rng = 3;
    int32_t prefix[PREFIX];
    for (int i = 0; i < PREFIX; i++)
        prefix[i] = (int32_t)(upc_splitmix64(&rng) % V);
    for (int it = 0; it < ITEMS; it++) {
        int32_t ctx[CTX + 8];
        int ctx_len = CTX + it * 2;
        for (int i = 0; i < ctx_len; i++)
            ctx[i] = (int32_t)(upc_splitmix64(&rng) % V);
        for (int c = 0; c < CHOICES; c++) {
            int32_t *w = store[it * CHOICES + c];
            int len = PREFIX + ctx_len, clen = 1 + c;
            memcpy(w, prefix, sizeof prefix);
            memcpy(w + PREFIX, ctx, (size_t)ctx_len * sizeof *ctx);
            for (int i = 0; i < clen; i++)
                w[len + i] = (int32_t)(upc_splitmix64(&rng) % V);
            seqs[it * CHOICES + c] = (lm_seq){w, len + clen, len};
        }
    }
    lm_scorer *sc = lm_scorer_create(m, MAXL, 3);
    lm_seq_score got[ITEMS * CHOICES];
    lm_score_seqs(sc, seqs, ITEMS * CHOICES, got);
    lm_scorer_stats st = lm_scorer_get_stats(sc);
    long long all = 0;
    for (int i = 0; i < ITEMS * CHOICES; i++) {
        all += seqs[i].len - 1;
        lm_seq_score want = reference(m, &seqs[i], MAXL);
        CHECK_MSG(got[i].n_tokens == want.n_tokens && fabs(got[i].logprob - want.logprob) < 1e-4 &&
                      got[i].greedy == want.greedy,
                  "shared contexts, sequence %d: logprob %.6f, reference %.6f", i, got[i].logprob, want.logprob);
    }
    /* every sequence but the first forks at least the 16-token block of the
     * prefix; choices of an item fork 32 */
    CHECK_MSG(st.tokens_run + st.tokens_shared == all && st.tokens_shared >= 16 * 3 + 32 * ITEMS * (CHOICES - 1),
              "shared contexts: %lld tokens run, %lld shared of %lld", st.tokens_run, st.tokens_shared, all);
    lm_scorer_free(sc);
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
    for (int batch = 1; batch <= 8; batch *= 2) {
        lm_scorer *sc = lm_scorer_create(m, MAXLEN, batch);
        lm_seq_score got[N];
        lm_score_seqs(sc, seqs, N, got);
        for (int i = 0; i < N; i++) {
            lm_seq_score want = reference(m, &seqs[i], MAXLEN);
            CHECK_MSG(got[i].n_tokens == want.n_tokens && fabs(got[i].logprob - want.logprob) < 1e-4 &&
                          got[i].greedy == want.greedy,
                      "batch %d, sequence %d (len %d): logprob %.6f over %d, greedy %d; reference %.6f over %d, "
                      "greedy %d",
                      batch, i, lens[i], got[i].logprob, got[i].n_tokens, got[i].greedy, want.logprob,
                      want.n_tokens, want.greedy);
        }
        lm_scorer_free(sc);
    }
    check_shared_contexts(m);
    lm_scorer *sc = lm_scorer_create(m, MAXLEN, 4);
    /* a sequence made of its own greedy continuation is greedy */
    int32_t prompt[6] = {3, 1, 4, 1, 5, 9}, gen[12];
    size_t ng = lm_greedy(sc, prompt, 6, 12, NULL, NULL, gen);
    CHECK(ng == 12);
    int32_t full[18];
    memcpy(full, prompt, sizeof prompt);
    memcpy(full + 6, gen, sizeof gen);
    lm_seq whole = {full, 18, 6};
    lm_seq_score ws;
    lm_score_seqs(sc, &whole, 1, &ws);
    CHECK_MSG(ws.greedy && ws.n_tokens == 12, "greedy decoding is not the argmax chain (greedy %d)", ws.greedy);
    /* past the window, each token comes from the last MAXLEN tokens alone */
    int32_t longp[MAXLEN - 2], lgen[6];
    for (int i = 0; i < MAXLEN - 2; i++)
        longp[i] = (int32_t)(i * 7 % V);
    size_t nl = lm_greedy(sc, longp, MAXLEN - 2, 6, NULL, NULL, lgen);
    CHECK(nl == 6);
    int32_t chain[MAXLEN + 4];
    memcpy(chain, longp, sizeof longp);
    for (int i = 0; i < 6; i++) {
        int total = MAXLEN - 2 + i, first = total > MAXLEN ? total - MAXLEN : 0;
        lm_seq one = {chain + first, total - first + 1, total - first};
        chain[total] = lgen[i];
        lm_seq_score r = reference(m, &one, MAXLEN);
        CHECK_MSG(r.greedy, "sliding-window greedy token %d is not the argmax of the last %d tokens", i, MAXLEN);
    }
    /* a stop rule ends decoding after the token it names */
    size_t ns = lm_greedy(sc, prompt, 6, 12, stop_at_7, NULL, gen);
    size_t first7 = 12;
    for (size_t i = 0; i < 12 && first7 == 12; i++)
        if (full[6 + i] == 7)
            first7 = i;
    CHECK_MSG(ns == (first7 < 12 ? first7 + 1 : 12), "stop rule: %zu tokens, the first 7 is at %zu", ns, first7);
    for (int i = 0; i < N; i++)
        free(store[i]);
    lm_scorer_free(sc);
    model_free(m);
    if (failures) {
        fprintf(stderr, "test_lm_score: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("test_lm_score: all checks passed (%d checks)\n", checks);
    return 0;
}
