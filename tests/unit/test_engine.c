/* test_engine: the inference engine (lib/engine.h) against the training
 * forward (model_forward): a whole-prompt prefill, chunked prefill and
 * token-by-token decode give the logits of a full forward over the same
 * tokens, for dense and MoE models; sequences batched in one step equal
 * each alone; a paged cache (block size 1) equals a contiguous one (one
 * block per sequence) bit for bit; blocks return to the pool on close;
 * greedy decoding through the engine follows the training forward's argmax;
 * a forked sequence shares its parent's blocks and continues with the
 * logits of a sequence run alone, whichever of the two closes first. */
#include "engine.h"
#include "model.h"
#include "test_harness.h"
#include "tiny_model.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { V = 53, LEN = 37 };

/* Full-forward logits of ids[0..n): host [n][V]. */
static float *reference(model *m, const int32_t *ids, int n)
{
    model_forward(m, ids, NULL, 1, n, NULL);
    float *out = upc_malloc((size_t)n * V * sizeof *out);
    model_get_logits(m, out);
    return out;
}

static double worst_diff(const float *a, const float *b, size_t n)
{
    double w = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / (1.0 + fabs((double)b[i]));
        w = d > w ? d : w;
    }
    return w;
}

/* Run seq's tokens [from, to) as chunks of `chunk` rows, logits of every row. */
static void run_chunks(engine *e, int seq, const int32_t *ids, int from, int to, int chunk, float *out)
{
    int seqs[LEN];
    bool want[LEN];
    for (int i = 0; i < LEN; i++)
        seqs[i] = seq, want[i] = true;
    for (int p = from; p < to; p += chunk) {
        int n = p + chunk < to ? chunk : to - p;
        engine_step(e, seqs, ids + p, n, want, out + (size_t)p * V);
    }
}

static void check_model(const char *label, model *m)
{
    int32_t ids[3][LEN];
    uint64_t rng = 5;
    for (int s = 0; s < 3; s++)
        for (int i = 0; i < LEN; i++)
            ids[s][i] = (int32_t)(upc_splitmix64(&rng) % V);
    float *ref[3];
    for (int s = 0; s < 3; s++)
        ref[s] = reference(m, ids[s], LEN);
    engine_config c;
    engine_config_default(&c);
    c.block_size = 4;
    c.n_blocks = 64;
    c.max_seqs = 4;
    c.max_rows = 64;
    engine *e = engine_create(m, &c);
    size_t all_free = engine_free_blocks(e);
    float *got = upc_malloc((size_t)LEN * V * sizeof *got);
    int chunks[] = {LEN, 10, 1};
    for (size_t k = 0; k < 3; k++) {
        int s = engine_open(e);
        run_chunks(e, s, ids[0], 0, LEN, chunks[k], got);
        double w = worst_diff(got, ref[0], (size_t)LEN * V);
        CHECK_MSG(w < 1e-4, "%s: chunks of %d: logits differ from the training forward by %.3g", label, chunks[k], w);
        CHECK(engine_seq_len(e, s) == LEN);
        engine_close(e, s);
        CHECK_MSG(engine_free_blocks(e) == all_free, "%s: blocks not returned on close", label);
    }

    /* three sequences in the same steps: a prefill chunk of one beside
     * decode tokens of the others, continuous-batching style */
    int sq[3] = {engine_open(e), engine_open(e), engine_open(e)};
    float *out[3];
    for (int s = 0; s < 3; s++)
        out[s] = upc_calloc((size_t)LEN * V, sizeof(float));
    int at[3] = {0, 0, 0};
    float *step_logits = upc_malloc((size_t)64 * V * sizeof(float));
    while (at[0] < LEN || at[1] < LEN || at[2] < LEN) {
        int seqs[64], n = 0, who[64], pos[64];
        int32_t tok[64];
        bool want[64];
        for (int s = 0; s < 3; s++) {
            int take = s == 0 ? 7 : 1;   /* seq 0 prefills in chunks, others decode */
            for (int j = 0; j < take && at[s] < LEN; j++, at[s]++) {
                seqs[n] = sq[s], tok[n] = ids[s][at[s]], want[n] = true, who[n] = s, pos[n] = at[s];
                n++;
            }
        }
        CHECK(engine_can_append(e, sq[0], 1));
        engine_step(e, seqs, tok, n, want, step_logits);
        for (int r = 0; r < n; r++)
            memcpy(out[who[r]] + (size_t)pos[r] * V, step_logits + (size_t)r * V, V * sizeof(float));
    }
    for (int s = 0; s < 3; s++) {
        double w = worst_diff(out[s], ref[s], (size_t)LEN * V);
        CHECK_MSG(w < 1e-4, "%s: batched sequence %d differs from its own forward by %.3g", label, s, w);
        engine_close(e, sq[s]);
        free(out[s]);
    }
    if (m->n_moe_layers) {
        const int32_t *t = engine_experts_touched(e);
        for (int l = 0; l < m->L; l++)
            CHECK_MSG(t[l] >= 1 && t[l] <= m->E, "%s: layer %d touched %d experts", label, l, t[l]);
    }
    free(step_logits);
    engine_free(e);

    /* paged (block size 1) and contiguous (one block) caches: same bits */
    float *paged = upc_malloc((size_t)LEN * V * sizeof *paged);
    for (int bs = 1; bs <= 64; bs += 63) {
        engine_config pc = c;
        pc.block_size = bs;
        pc.n_blocks = (size_t)(bs == 1 ? 64 : 1);
        engine *pe = engine_create(m, &pc);
        int s = engine_open(pe);
        run_chunks(pe, s, ids[1], 0, LEN, 5, bs == 1 ? paged : got);
        engine_free(pe);
    }
    CHECK_MSG(memcmp(paged, got, (size_t)LEN * V * sizeof *got) == 0, "%s: paged and contiguous caches differ", label);
    free(paged);
    free(got);
    for (int s = 0; s < 3; s++)
        free(ref[s]);
}

/* Greedy decoding through the engine follows the training forward's argmax
 * chain (a full forward per token). */
static void check_greedy(model *m)
{
    int32_t prompt[5] = {3, 1, 4, 1, 5}, want_ids[12], got_ids[12], chain[17];
    memcpy(chain, prompt, sizeof prompt);
    for (int i = 0; i < 12; i++) {
        float *all = reference(m, chain, 5 + i);
        const float *last = all + (size_t)(4 + i) * V;
        int arg = 0;
        for (int v = 1; v < V; v++)
            if (last[v] > last[arg])
                arg = v;
        chain[5 + i] = want_ids[i] = arg;
        free(all);
    }
    engine_config c;
    engine_config_default(&c);
    c.n_blocks = 8;
    engine *e = engine_create(m, &c);
    int s = engine_open(e), seqs[5] = {s, s, s, s, s};
    bool want[5] = {false, false, false, false, true};
    float *lg = upc_malloc(V * sizeof *lg);
    engine_step(e, seqs, prompt, 5, want, lg);
    for (int i = 0; i < 12; i++) {
        int arg = 0;
        for (int v = 1; v < V; v++)
            if (lg[v] > lg[arg])
                arg = v;
        got_ids[i] = arg;
        bool w = true;
        engine_step(e, &s, &got_ids[i], 1, &w, lg);
    }
    CHECK_MSG(memcmp(want_ids, got_ids, sizeof got_ids) == 0, "greedy decode through the engine differs");
    /* the pool runs out: 8 blocks of 16 tokens hold 128 tokens */
    CHECK(!engine_can_append(e, s, 128 - 17 + 1) && engine_can_append(e, s, 128 - 17));
    free(lg);
    engine_free(e);
}

/* Two sequences fork a 32-token prefix (two blocks of 16) of a parent and
 * go on with different tokens; their logits equal full forwards, the shared
 * blocks are counted once, and they stay valid after the parent closes. */
static void check_fork(const char *label, model *m)
{
    enum { BS = 16, PRE = 32, N = 45 };
    int32_t a[N], b[N];
    uint64_t rng = 11;
    for (int i = 0; i < N; i++)
        a[i] = b[i] = (int32_t)(upc_splitmix64(&rng) % V);
    for (int i = PRE; i < N; i++)
        b[i] = (int32_t)(upc_splitmix64(&rng) % V);
    engine_config c;
    engine_config_default(&c);
    c.block_size = BS;
    c.n_blocks = 16;
    engine *e = engine_create(m, &c);
    float *got = upc_malloc((size_t)N * V * sizeof *got), *ra = reference(m, a, N), *rb = reference(m, b, N);
    int parent = engine_open(e);
    run_chunks(e, parent, a, 0, PRE + 3, 7, got);       /* the parent runs past the fork point */
    CHECK(engine_free_blocks(e) == 16 - 3);
    int ca = engine_fork(e, parent, PRE), cb = engine_fork(e, parent, PRE);
    CHECK_MSG(ca >= 0 && cb >= 0 && engine_seq_len(e, ca) == PRE && engine_free_blocks(e) == 16 - 3,
              "%s: forks take no blocks of their own (%zu free)", label, engine_free_blocks(e));
    engine_close(e, parent);
    CHECK_MSG(engine_free_blocks(e) == 16 - 2, "%s: the parent's own block returns, shared ones stay (%zu free)",
              label, engine_free_blocks(e));
    run_chunks(e, ca, a, PRE, N, 5, got);
    CHECK_MSG(worst_diff(got + (size_t)PRE * V, ra + (size_t)PRE * V, (size_t)(N - PRE) * V) < 1e-4,
              "%s: a fork continuing the parent's tokens differs from a full forward", label);
    run_chunks(e, cb, b, PRE, N, 13, got);
    CHECK_MSG(worst_diff(got + (size_t)PRE * V, rb + (size_t)PRE * V, (size_t)(N - PRE) * V) < 1e-4,
              "%s: a fork going on with other tokens differs from a full forward", label);
    engine_close(e, ca);
    engine_close(e, cb);
    CHECK_MSG(engine_free_blocks(e) == 16, "%s: every block back after the last close (%zu free)", label,
              engine_free_blocks(e));
    free(got), free(ra), free(rb);
    engine_free(e);
}

int main(void)
{
    upc_init("test_engine");
    model *dense = tiny_random_model(V, 0, 0, 3, 15.0f), *moe = tiny_random_model(V, 4, 2, 4, 15.0f);
    check_model("dense", dense);
    check_model("moe E4 k2", moe);
    check_greedy(dense);
    check_fork("dense", dense);
    check_fork("moe E4 k2", moe);
    model_free(dense);
    model_free(moe);
    if (failures) {
        fprintf(stderr, "test_engine: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("test_engine: all checks passed (%d checks)\n", checks);
    return 0;
}
