/* test_kernels_moe: the MoE kernels of the CPU backend (router, dispatch,
 * gather/combine, grouped GEMM, auxiliary losses) against naive loops,
 * backwards against central differences, the upcycling identity, a whole MoE
 * FFN's gradient, and determinism. Exits non-zero naming each failed check. */
#include "kernels.h"
#include "kernels_math.h"
#include "test_kernels_util.h"

#include <omp.h>

enum { N = 7, E = 4, KK = 2, D = 24, F = 10 };

/* Logits whose experts are well separated (gaps >= 0.4), so a finite
 * difference step never changes the top-k. */
static float *separated_logits(int rows, int experts)
{
    float *x = upc_malloc((size_t)rows * experts * sizeof(float));
    for (int n = 0; n < rows; n++) {
        int *order = upc_malloc((size_t)experts * sizeof(int));
        for (int e = 0; e < experts; e++)
            order[e] = e;
        for (int e = experts - 1; e > 0; e--) {
            int j = (int)(upc_splitmix64(&rng_state) % (uint64_t)(e + 1)), t = order[e];
            order[e] = order[j], order[j] = t;
        }
        for (int e = 0; e < experts; e++)
            x[n * experts + order[e]] = (float)(0.6 * e - 1.0 + urand(-0.1, 0.1));
        free(order);
    }
    return x;
}

/* ---- router ------------------------------------------------------------------ */

static void router_ref(const float *x, int rows, int experts, int kk, int renorm,
                       double *p, int *idx, double *w)
{
    for (int n = 0; n < rows; n++) {
        double m = -INFINITY, l = 0.0;
        for (int e = 0; e < experts; e++)
            m = fmax(m, x[n * experts + e]);
        for (int e = 0; e < experts; e++)
            l += exp(x[n * experts + e] - m);
        for (int e = 0; e < experts; e++)
            p[n * experts + e] = exp(x[n * experts + e] - m) / l;
        double s = 0.0;
        for (int j = 0; j < kk; j++) { /* best by (logit desc, index asc) */
            int best = -1;
            for (int e = 0; e < experts; e++) {
                int taken = 0;
                for (int i = 0; i < j; i++)
                    taken |= idx[n * kk + i] == e;
                if (!taken && (best < 0 || x[n * experts + e] > x[n * experts + best]))
                    best = e;
            }
            idx[n * kk + j] = best;
            w[n * kk + j] = p[n * experts + best];
            s += w[n * kk + j];
        }
        if (renorm)
            for (int j = 0; j < kk; j++)
                w[n * kk + j] /= s;
    }
}

struct router_ctx {
    float *logits, *probs, *w;
    int32_t *idx;
    int renorm;
    const float *r;
};

static double router_loss(void *p)
{
    struct router_ctx *c = p;
    K->router_fwd(K, c->logits, c->probs, c->idx, c->w, N, E, KK, c->renorm);
    return weighted_sum(c->w, c->r, N * KK);
}

static void test_router(void)
{
    float *x = separated_logits(N, E);
    /* ties go to the lower expert index */
    float tie1[E] = {3.0f, 1.0f, 0.0f, 1.0f}, tie2[E] = {0.5f, 0.5f, 0.5f, 0.5f};
    memcpy(x + 2 * E, tie1, sizeof tie1);
    memcpy(x + 5 * E, tie2, sizeof tie2);
    for (int renorm = 0; renorm < 2; renorm++) {
        float *dx = dev_from(x, N * E), *probs = dev_zeros(N * E), *w = dev_zeros(N * KK);
        int32_t *idx = K->alloc(K, N * KK * sizeof(int32_t));
        K->router_fwd(K, dx, probs, idx, w, N, E, KK, renorm);
        double pref[N * E], wref[N * KK];
        int iref[N * KK];
        router_ref(x, N, E, KK, renorm, pref, iref, wref);
        expect_close("router_fwd probs", probs, pref, N * E, 1e-7, 1e-5);
        expect_close(renorm ? "router_fwd renormalised weights" : "router_fwd raw weights",
                     w, wref, N * KK, 1e-7, 1e-5);
        int32_t *ih = host_ids(idx, N * KK);
        int same = 1;
        for (int i = 0; i < N * KK; i++)
            same &= ih[i] == iref[i];
        CHECK_MSG(same, "router_fwd top-k indices (ties to the lower index): row 2 got %d,%d want %d,%d",
              ih[4], ih[5], iref[4], iref[5]);
        free(ih);
        K->free(K, dx), K->free(K, probs), K->free(K, w), K->free(K, idx);
    }
    free(x);

    /* bwd, both modes, on separated logits */
    for (int renorm = 0; renorm < 2; renorm++) {
        float *xs = separated_logits(N, E);
        float *dx = dev_from(xs, N * E), *probs = dev_zeros(N * E), *w = dev_zeros(N * KK);
        int32_t *idx = K->alloc(K, N * KK * sizeof(int32_t));
        float *r = host_rand(N * KK, -1, 1), *dr = dev_from(r, N * KK);
        float *g = dev_rand(N * E, 7, 8); /* overwritten */
        K->router_fwd(K, dx, probs, idx, w, N, E, KK, renorm);
        K->router_bwd(K, probs, idx, w, dr, g, N, E, KK, renorm);
        struct router_ctx c = {dx, probs, w, idx, renorm, r};
        expect_grad(renorm ? "router_bwd renorm dlogits" : "router_bwd raw dlogits", dx,
                    N * E, g, router_loss, &c, 1e-3, 1e-2);
        free(xs), free(r);
        K->free(K, dx), K->free(K, probs), K->free(K, w), K->free(K, idx), K->free(K, dr);
        K->free(K, g);
    }
}

/* ---- dispatch, gather, combine ------------------------------------------------------ */

/* Expert 3 of 5 gets nothing; expert 1 gets both slots of no token. */
static const int32_t hand_idx[N * KK] = {1, 0, 4, 1, 0, 2, 1, 4, 2, 0, 4, 2, 0, 1};
enum { HE = 5 };

/* An expert index >= E reaching moe_capacity_drop: a programming error
 * (EX_SOFTWARE), never a read past offs. */
static void capacity_bad_expert(const void *arg)
{
    int32_t idx[2] = {0, 3}, pos[2] = {0, 1}, offs[4] = {0, 1, 1, 1};
    float x[2] = {1, 1};
    K->moe_capacity_drop(K, idx, pos, offs, 1, 2, 3, 1, x, NULL);
}

static void test_dispatch(void)
{
    int32_t *idx = dev_ids(hand_idx, N * KK);
    int32_t *counts = K->alloc(K, HE * 4), *offs = K->alloc(K, (HE + 1) * 4);
    int32_t *perm = K->alloc(K, N * KK * 4), *pos = K->alloc(K, N * KK * 4);
    K->moe_dispatch(K, idx, N, KK, HE, counts, offs, perm, pos);
    int32_t *c = host_ids(counts, HE), *o = host_ids(offs, HE + 1);
    int32_t *pm = host_ids(perm, N * KK), *ps = host_ids(pos, N * KK);
    int want_counts[HE] = {0};
    for (int a = 0; a < N * KK; a++)
        want_counts[hand_idx[a]]++;
    int ok = o[0] == 0;
    for (int e = 0; e < HE; e++)
        ok &= c[e] == want_counts[e] && o[e + 1] == o[e] + want_counts[e];
    CHECK_MSG(ok, "moe_dispatch counts/offsets wrong");
    /* perm: expert-sorted, and within an expert by assignment (token, slot) */
    int sorted = 1, inverse = 1;
    for (int s = 0; s < N * KK; s++) {
        if (s > 0) {
            int ea = hand_idx[pm[s - 1]], eb = hand_idx[pm[s]];
            sorted &= ea < eb || (ea == eb && pm[s - 1] < pm[s]);
        }
        inverse &= ps[pm[s]] == s;
    }
    CHECK_MSG(sorted, "moe_dispatch perm is not sorted by (expert, token, slot)");
    CHECK_MSG(inverse, "moe_dispatch pos is not the inverse of perm");
    for (int e = 0; e < HE; e++)
        for (int s = o[e]; s < o[e + 1]; s++)
            CHECK_MSG(hand_idx[pm[s]] == e, "moe_dispatch row %d is not expert %d's", s, e);

    /* capacity: each expert keeps its first `cap` assignments in index
     * (token, slot) order, counted here without the dispatch */
    for (int cap = 0; cap <= 4; cap++) {
        float ones[N * KK], *x;
        for (int a = 0; a < N * KK; a++)
            ones[a] = 1.0f;
        x = dev_from(ones, N * KK);
        int32_t *dropped = K->alloc(K, 4), seen[HE] = {0}, want_dropped = 0, got_dropped;
        K->moe_capacity_drop(K, idx, pos, offs, N, KK, HE, cap, x, dropped);
        float *h = host_of(x, N * KK);
        K->download(K, &got_dropped, dropped, 4);
        int right = 1;
        for (int a = 0; a < N * KK; a++) {
            int keep = seen[hand_idx[a]]++ < cap;
            want_dropped += !keep;
            right &= h[a] == (keep ? 1.0f : 0.0f);
        }
        CHECK_MSG(right && got_dropped == want_dropped, "moe_capacity_drop capacity %d: %d dropped, expected %d%s",
                  cap, got_dropped, want_dropped, right ? "" : "; wrong slots zeroed");
        free(h);
        K->free(K, x), K->free(K, dropped);
    }
    free(c), free(o), free(pm), free(ps);

    /* gather: Xs[s] = X[perm[s]/k]; round trip through pos gives X back */
    float *X = host_rand(N * D, -1, 1), *dX = dev_from(X, N * D), *Xs = dev_zeros(N * KK * D);
    K->moe_gather(K, dX, perm, N, KK, D, Xs);
    float *xs = host_of(Xs, N * KK * D);
    int32_t *psh = host_ids(pos, N * KK);
    int round = 1;
    for (int a = 0; a < N * KK; a++)
        round &= memcmp(xs + (size_t)psh[a] * D, X + (size_t)(a / KK) * D, D * sizeof(float)) == 0;
    CHECK_MSG(round, "moe_gather then pos: rows do not come back to their tokens");

    /* gather bwd: the gradient of sum r.Xs w.r.t. X */
    float *r = host_rand(N * KK * D, -1, 1), *dr = dev_from(r, N * KK * D), *g = dev_zeros(N * D);
    K->moe_gather_bwd(K, dr, pos, N, KK, D, g);
    double *ref = upc_calloc(N * D, sizeof(double));
    for (int a = 0; a < N * KK; a++)
        for (int j = 0; j < D; j++)
            ref[(a / KK) * D + j] += r[(size_t)psh[a] * D + j];
    expect_close("moe_gather_bwd", g, ref, N * D, 1e-6, 1e-6);

    /* combine: out = beta*out + sum_j w Ys[pos] */
    float *Ys = host_rand(N * KK * D, -1, 1), *w = host_rand(N * KK, 0, 1), *o0 = host_rand(N * D, -1, 1);
    float *dYs = dev_from(Ys, N * KK * D), *dw = dev_from(w, N * KK), *out = dev_from(o0, N * D);
    K->moe_combine(K, dYs, pos, dw, N, KK, D, 0.5f, out);
    for (int n = 0; n < N; n++)
        for (int j = 0; j < D; j++) {
            double s = 0.5 * o0[n * D + j];
            for (int q = 0; q < KK; q++)
                s += (double)w[n * KK + q] * Ys[(size_t)psh[n * KK + q] * D + j];
            ref[n * D + j] = s;
        }
    expect_close("moe_combine beta 0.5", out, ref, N * D, 1e-6, 1e-5);
    /* combine bwd: dYs and dw against the naive chain rule */
    float *go = host_rand(N * D, -1, 1), *dgo = dev_from(go, N * D);
    float *gYs = dev_zeros(N * KK * D), *gw = dev_zeros(N * KK);
    K->moe_combine_bwd(K, dgo, dYs, pos, dw, N, KK, D, gYs, gw);
    double *rYs = upc_calloc(N * KK * D, sizeof(double)), rw[N * KK];
    for (int a = 0; a < N * KK; a++) {
        double s = 0.0;
        for (int j = 0; j < D; j++) {
            rYs[(size_t)psh[a] * D + j] = (double)w[a] * go[(a / KK) * D + j];
            s += (double)go[(a / KK) * D + j] * Ys[(size_t)psh[a] * D + j];
        }
        rw[a] = s;
    }
    expect_close("moe_combine_bwd dYs", gYs, rYs, N * KK * D, 1e-6, 1e-5);
    expect_close("moe_combine_bwd dw", gw, rw, N * KK, 1e-5, 1e-5);
    free(X), free(xs), free(psh), free(r), free(ref), free(Ys), free(w), free(o0), free(go), free(rYs);
    K->free(K, idx), K->free(K, counts), K->free(K, offs), K->free(K, perm), K->free(K, pos);
    K->free(K, dX), K->free(K, Xs), K->free(K, dr), K->free(K, g), K->free(K, dYs);
    K->free(K, dw), K->free(K, out), K->free(K, dgo), K->free(K, gYs), K->free(K, gw);
}

/* ---- grouped GEMM ------------------------------------------------------------------- */

struct gg_ctx {
    const int32_t *offs;
    float *X, *W, *Y;
    int rows;
    const float *r;
};

static double gg_loss(void *p)
{
    struct gg_ctx *c = p;
    K->grouped_gemm_fwd(K, HE, c->offs, F, D, c->X, c->W, 0.0f, c->Y);
    return weighted_sum(c->Y, c->r, (size_t)c->rows * F);
}

static void test_grouped_gemm(void)
{
    /* 5 groups: sizes 3, 0, 4, 1, 6 (one empty) */
    const int32_t offs_h[HE + 1] = {0, 3, 3, 7, 8, 14};
    const int rows = 14;
    int32_t *offs = dev_ids(offs_h, HE + 1);
    float *X = host_rand(rows * D, -1, 1), *W = host_rand(HE * F * D, -1, 1);
    float *dX = dev_from(X, rows * D), *dW = dev_from(W, HE * F * D), *Y = dev_zeros(rows * F);
    K->grouped_gemm_fwd(K, HE, offs, F, D, dX, dW, 0.0f, Y);
    double *ref = upc_calloc(HE * F * D, sizeof(double));
    for (int g = 0; g < HE; g++)
        for (int i = offs_h[g]; i < offs_h[g + 1]; i++)
            for (int o = 0; o < F; o++) {
                double s = 0.0;
                for (int c = 0; c < D; c++)
                    s += (double)X[i * D + c] * W[(g * F + o) * D + c];
                ref[i * F + o] = s;
            }
    expect_close("grouped_gemm_fwd vs naive", Y, ref, rows * F, 1e-5, 1e-5);
    /* the same as one plain GEMM per group */
    float *Yg = dev_zeros(rows * F);
    for (int g = 0; g < HE; g++)
        if (offs_h[g + 1] > offs_h[g])
            K->gemm(K, 0, 1, offs_h[g + 1] - offs_h[g], F, D, 1.0f, dX + offs_h[g] * D, D,
                    dW + g * F * D, D, 0.0f, Yg + offs_h[g] * F, F);
    expect_same_bits("grouped_gemm_fwd vs per-group gemm", Y, Yg, rows * F * sizeof(float));

    /* dx and dw are the gradients of sum r.Y */
    float *r = host_rand(rows * F, -1, 1), *dr = dev_from(r, rows * F);
    float *gX = dev_rand(rows * D, 9, 10), *gW = dev_rand(HE * F * D, 9, 10);
    K->grouped_gemm_dx(K, HE, offs, F, D, dr, dW, 0.0f, gX);
    K->grouped_gemm_dw(K, HE, offs, F, D, dr, dX, 0.0f, gW);
    float *gwh = host_of(gW, HE * F * D);
    int empty_zero = 1;
    for (int i = 1 * F * D; i < 2 * F * D; i++)
        empty_zero &= gwh[i] == 0.0f;
    CHECK_MSG(empty_zero, "grouped_gemm_dw beta 0 did not zero the empty group");
    struct gg_ctx c = {offs, dX, dW, Y, rows, r};
    expect_grad("grouped_gemm_dx", dX, rows * D, gX, gg_loss, &c, 1e-2, 1e-3);
    expect_grad("grouped_gemm_dw", dW, HE * F * D, gW, gg_loss, &c, 1e-2, 1e-3);
    /* beta 1 accumulates */
    K->grouped_gemm_dw(K, HE, offs, F, D, dr, dX, 1.0f, gW);
    K->grouped_gemm_dx(K, HE, offs, F, D, dr, dW, 1.0f, gX);
    for (int i = 0; i < HE * F * D; i++)
        ref[i] = 2.0 * gwh[i];
    expect_close("grouped_gemm_dw beta 1 accumulates", gW, ref, HE * F * D, 1e-6, 1e-6);
    float *gxh = host_of(gX, rows * D);
    K->grouped_gemm_dx(K, HE, offs, F, D, dr, dW, 0.0f, gX);
    float *gx1 = host_of(gX, rows * D);
    for (int i = 0; i < rows * D; i++)
        ref[i] = 2.0 * gx1[i];
    free(gx1);
    gx1 = NULL;
    float *gxd = dev_from(gxh, rows * D);
    expect_close("grouped_gemm_dx beta 1 accumulates", gxd, ref, rows * D, 1e-6, 1e-6);
    free(X), free(W), free(ref), free(r), free(gwh), free(gxh);
    K->free(K, offs), K->free(K, dX), K->free(K, dW), K->free(K, Y), K->free(K, Yg);
    K->free(K, dr), K->free(K, gX), K->free(K, gW), K->free(K, gxd);
}

/* The bf16 table's grouped GEMMs: forward, dx and dw against naive sums of
 * bf16-rounded operands, beta 1 accumulating into dw, and the same bits as
 * one bf16 GEMM per group. */
static void test_grouped_gemm_bf16(void)
{
    const upc_kernels *H = kernels_cpu_bf16();
    const int32_t offs_h[HE + 1] = {0, 2, 2, 9, 10, 14};
    const int rows = 14;
    int32_t *offs = dev_ids(offs_h, HE + 1);
    float *X = host_rand(rows * D, -1, 1), *W = host_rand(HE * F * D, -1, 1), *G = host_rand(rows * F, -1, 1);
    float *dX = dev_from(X, rows * D), *dW = dev_from(W, HE * F * D), *dG = dev_from(G, rows * F);
    float *Y = dev_zeros(rows * F), *gX = dev_zeros(rows * D), *gW = dev_rand(HE * F * D, 9, 10);
    float *gW0 = host_of(gW, HE * F * D);
    H->grouped_gemm_fwd(H, HE, offs, F, D, dX, dW, 0.0f, Y);
    H->grouped_gemm_dx(H, HE, offs, F, D, dG, dW, 0.0f, gX);
    H->grouped_gemm_dw(H, HE, offs, F, D, dG, dX, 1.0f, gW);
    double *ry = upc_calloc(rows * F, sizeof(double)), *rx = upc_calloc(rows * D, sizeof(double));
    double *rw = upc_calloc(HE * F * D, sizeof(double));
    for (int i = 0; i < HE * F * D; i++)
        rw[i] = gW0[i];
    for (int g = 0; g < HE; g++)
        for (int i = offs_h[g]; i < offs_h[g + 1]; i++)
            for (int o = 0; o < F; o++)
                for (int c = 0; c < D; c++) {
                    double x = upc_round_bf16(X[i * D + c]), w = upc_round_bf16(W[(g * F + o) * D + c]);
                    double gy = upc_round_bf16(G[i * F + o]);
                    ry[i * F + o] += x * w;
                    rx[i * D + c] += gy * w;
                    rw[(g * F + o) * D + c] += gy * x;
                }
    expect_close("grouped_gemm_fwd bf16 vs naive on rounded operands", Y, ry, rows * F, 1e-5, 1e-5);
    expect_close("grouped_gemm_dx bf16 vs naive on rounded operands", gX, rx, rows * D, 1e-5, 1e-5);
    expect_close("grouped_gemm_dw bf16 (beta 1) vs naive on rounded operands", gW, rw, HE * F * D, 1e-5, 1e-5);
    float *Yg = dev_zeros(rows * F);
    for (int g = 0; g < HE; g++)
        if (offs_h[g + 1] > offs_h[g])
            H->gemm(H, 0, 1, offs_h[g + 1] - offs_h[g], F, D, 1.0f, dX + offs_h[g] * D, D, dW + g * F * D, D, 0.0f,
                    Yg + offs_h[g] * F, F);
    expect_same_bits("grouped_gemm_fwd bf16 vs per-group bf16 gemm", Y, Yg, rows * F * sizeof(float));
    free(X), free(W), free(G), free(gW0), free(ry), free(rx), free(rw);
    K->free(K, offs), K->free(K, dX), K->free(K, dW), K->free(K, dG), K->free(K, Y), K->free(K, gX);
    K->free(K, gW), K->free(K, Yg);
}

/* ---- a whole MoE FFN: forward, backward, identity ---------------------------------- */

/* Buffers of one MoE FFN (experts W1 gate, W3 up [E][F][D], W2 down [E][D][F],
 * router Wr [E][D]) and what its backward needs. */
struct moe {
    float *X, *Wr, *W1, *W3, *W2;
    float *logits, *probs, *w, *Xs, *H1, *H3, *A, *Ys, *out;
    int32_t *idx, *counts, *offs, *perm, *pos;
    /* gradients */
    float *dX, *dWr, *dW1, *dW3, *dW2, *dlogits, *dw, *dYs, *dA, *dH1, *dH3, *dXs, *dXe;
    const float *r;
    int renorm;
};

static void moe_alloc(struct moe *m)
{
    m->logits = dev_zeros(N * E), m->probs = dev_zeros(N * E), m->w = dev_zeros(N * KK);
    m->Xs = dev_zeros(N * KK * D), m->H1 = dev_zeros(N * KK * F), m->H3 = dev_zeros(N * KK * F);
    m->A = dev_zeros(N * KK * F), m->Ys = dev_zeros(N * KK * D), m->out = dev_zeros(N * D);
    m->idx = K->alloc(K, N * KK * 4), m->counts = K->alloc(K, E * 4);
    m->offs = K->alloc(K, (E + 1) * 4), m->perm = K->alloc(K, N * KK * 4);
    m->pos = K->alloc(K, N * KK * 4);
    m->dX = dev_zeros(N * D), m->dWr = dev_zeros(E * D), m->dW1 = dev_zeros(E * F * D);
    m->dW3 = dev_zeros(E * F * D), m->dW2 = dev_zeros(E * D * F), m->dlogits = dev_zeros(N * E);
    m->dw = dev_zeros(N * KK), m->dYs = dev_zeros(N * KK * D), m->dA = dev_zeros(N * KK * F);
    m->dH1 = dev_zeros(N * KK * F), m->dH3 = dev_zeros(N * KK * F);
    m->dXs = dev_zeros(N * KK * D), m->dXe = dev_zeros(N * D);
}

static void moe_free(struct moe *m)
{
    float *f[] = {m->X, m->Wr, m->W1, m->W3, m->W2, m->logits, m->probs, m->w, m->Xs, m->H1,
                  m->H3, m->A, m->Ys, m->out, m->dX, m->dWr, m->dW1, m->dW3, m->dW2,
                  m->dlogits, m->dw, m->dYs, m->dA, m->dH1, m->dH3, m->dXs, m->dXe};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        K->free(K, f[i]);
    int32_t *g[] = {m->idx, m->counts, m->offs, m->perm, m->pos};
    for (size_t i = 0; i < sizeof g / sizeof g[0]; i++)
        K->free(K, g[i]);
}

static void moe_forward(struct moe *m)
{
    K->gemm(K, 0, 1, N, E, D, 1.0f, m->X, D, m->Wr, D, 0.0f, m->logits, E);
    K->router_fwd(K, m->logits, m->probs, m->idx, m->w, N, E, KK, m->renorm);
    K->moe_dispatch(K, m->idx, N, KK, E, m->counts, m->offs, m->perm, m->pos);
    K->moe_gather(K, m->X, m->perm, N, KK, D, m->Xs);
    K->grouped_gemm_fwd(K, E, m->offs, F, D, m->Xs, m->W1, 0.0f, m->H1);
    K->grouped_gemm_fwd(K, E, m->offs, F, D, m->Xs, m->W3, 0.0f, m->H3);
    K->swiglu_fwd(K, m->H1, m->H3, m->A, N * KK * F);
    K->grouped_gemm_fwd(K, E, m->offs, D, F, m->A, m->W2, 0.0f, m->Ys);
    K->moe_combine(K, m->Ys, m->pos, m->w, N, KK, D, 0.0f, m->out);
}

/* d(sum r.out) into every input, as the model will chain it. */
static void moe_backward(struct moe *m, const float *dout)
{
    K->moe_combine_bwd(K, dout, m->Ys, m->pos, m->w, N, KK, D, m->dYs, m->dw);
    K->grouped_gemm_dw(K, E, m->offs, D, F, m->dYs, m->A, 0.0f, m->dW2);
    K->grouped_gemm_dx(K, E, m->offs, D, F, m->dYs, m->W2, 0.0f, m->dA);
    K->swiglu_bwd(K, m->H1, m->H3, m->dA, m->dH1, m->dH3, N * KK * F);
    K->grouped_gemm_dw(K, E, m->offs, F, D, m->dH1, m->Xs, 0.0f, m->dW1);
    K->grouped_gemm_dw(K, E, m->offs, F, D, m->dH3, m->Xs, 0.0f, m->dW3);
    K->grouped_gemm_dx(K, E, m->offs, F, D, m->dH1, m->W1, 0.0f, m->dXs);
    K->grouped_gemm_dx(K, E, m->offs, F, D, m->dH3, m->W3, 1.0f, m->dXs);
    K->moe_gather_bwd(K, m->dXs, m->pos, N, KK, D, m->dXe);
    K->router_bwd(K, m->probs, m->idx, m->w, m->dw, m->dlogits, N, E, KK, m->renorm);
    K->gemm(K, 1, 0, E, D, N, 1.0f, m->dlogits, E, m->X, D, 0.0f, m->dWr, D);
    K->copy(K, m->dX, m->dXe, N * D * sizeof(float));
    K->gemm(K, 0, 0, N, D, E, 1.0f, m->dlogits, E, m->Wr, D, 1.0f, m->dX, D);
}

static double moe_loss(void *p)
{
    struct moe *m = p;
    moe_forward(m);
    return weighted_sum(m->out, m->r, N * D);
}

static void test_moe_identity(void)
{
    /* An upcycled layer: every expert a copy of one FFN, renormalised top-k:
     * the MoE output equals the dense FFN's. */
    struct moe m = {0};
    moe_alloc(&m);
    m.renorm = 1;
    float *w1 = host_rand(F * D, -0.5, 0.5), *w3 = host_rand(F * D, -0.5, 0.5),
          *w2 = host_rand(D * F, -0.5, 0.5);
    float *W1 = upc_malloc(E * F * D * sizeof(float)), *W3 = upc_malloc(E * F * D * sizeof(float)),
          *W2 = upc_malloc(E * D * F * sizeof(float));
    for (int e = 0; e < E; e++) {
        memcpy(W1 + e * F * D, w1, F * D * sizeof(float));
        memcpy(W3 + e * F * D, w3, F * D * sizeof(float));
        memcpy(W2 + e * D * F, w2, D * F * sizeof(float));
    }
    m.X = dev_rand(N * D, -1, 1), m.Wr = dev_rand(E * D, -1, 1);
    m.W1 = dev_from(W1, E * F * D), m.W3 = dev_from(W3, E * F * D), m.W2 = dev_from(W2, E * D * F);
    moe_forward(&m);
    /* the dense FFN on the same tokens */
    float *d1 = dev_from(w1, F * D), *d3 = dev_from(w3, F * D), *d2 = dev_from(w2, D * F);
    float *h1 = dev_zeros(N * F), *h3 = dev_zeros(N * F), *a = dev_zeros(N * F), *y = dev_zeros(N * D);
    K->gemm(K, 0, 1, N, F, D, 1.0f, m.X, D, d1, D, 0.0f, h1, F);
    K->gemm(K, 0, 1, N, F, D, 1.0f, m.X, D, d3, D, 0.0f, h3, F);
    K->swiglu_fwd(K, h1, h3, a, N * F);
    K->gemm(K, 0, 1, N, D, F, 1.0f, a, F, d2, F, 0.0f, y, D);
    float *yh = host_of(y, N * D);
    double *ref = upc_malloc(N * D * sizeof(double));
    for (int i = 0; i < N * D; i++)
        ref[i] = yh[i];
    expect_close("upcycled MoE equals its dense FFN", m.out, ref, N * D, 1e-5, 0);
    free(w1), free(w3), free(w2), free(W1), free(W3), free(W2), free(yh), free(ref);
    K->free(K, d1), K->free(K, d3), K->free(K, d2), K->free(K, h1), K->free(K, h3);
    K->free(K, a), K->free(K, y);
    moe_free(&m);
}

static void test_moe_backward(void)
{
    for (int renorm = 0; renorm < 2; renorm++) {
        struct moe m = {0};
        moe_alloc(&m);
        m.renorm = renorm;
        /* router weights that separate the experts clearly for every token */
        float *X = host_rand(N * D, -1, 1), *Wr = host_rand(E * D, -1, 1);
        for (int i = 0; i < E * D; i++)
            Wr[i] *= 3.0f;
        m.X = dev_from(X, N * D), m.Wr = dev_from(Wr, E * D);
        m.W1 = dev_rand(E * F * D, -0.5, 0.5), m.W3 = dev_rand(E * F * D, -0.5, 0.5);
        m.W2 = dev_rand(E * D * F, -0.5, 0.5);
        float *r = host_rand(N * D, -1, 1), *dr = dev_from(r, N * D);
        m.r = r;
        moe_forward(&m);
        moe_backward(&m, dr);
        const char *mode = renorm ? "renorm" : "raw";
        char what[80];
        struct { const char *name; float *x, *g; size_t n; } in[] = {
            {"X", m.X, m.dX, N * D}, {"router W", m.Wr, m.dWr, E * D},
            {"W1 gate", m.W1, m.dW1, E * F * D}, {"W3 up", m.W3, m.dW3, E * F * D},
            {"W2 down", m.W2, m.dW2, E * D * F}};
        for (size_t i = 0; i < sizeof in / sizeof in[0]; i++) {
            snprintf(what, sizeof what, "MoE FFN (%s) d%s", mode, in[i].name);
            expect_grad(what, in[i].x, in[i].n, in[i].g, moe_loss, &m, 1e-3, 2e-2);
        }
        /* determinism: the same step again gives the same bits */
        float *keep = host_of(m.dX, N * D), *keepw = host_of(m.dW1, E * F * D);
        float *k1 = dev_from(keep, N * D), *k2 = dev_from(keepw, E * F * D);
        moe_forward(&m);
        moe_backward(&m, dr);
        expect_same_bits("determinism: MoE dX", k1, m.dX, N * D * sizeof(float));
        expect_same_bits("determinism: MoE dW1", k2, m.dW1, E * F * D * sizeof(float));
        free(X), free(Wr), free(r), free(keep), free(keepw);
        K->free(K, dr), K->free(K, k1), K->free(K, k2);
        moe_free(&m);
    }
}

/* ---- auxiliary losses ------------------------------------------------------------------ */

struct aux_ctx {
    float *logits, *probs, *w, *loss;
    int32_t *idx;
    float alpha, scale;
    int z;
};

static double aux_loss(void *p)
{
    struct aux_ctx *c = p;
    float l;
    if (c->z) {
        K->moe_z_loss_fwd(K, c->logits, N, E, c->alpha, c->loss);
    } else {
        K->router_fwd(K, c->logits, c->probs, c->idx, c->w, N, E, KK, 1);
        K->moe_lb_loss_fwd(K, c->probs, c->idx, N, E, KK, c->alpha, c->loss);
    }
    K->download(K, &l, c->loss, sizeof l);
    return (double)l * c->scale;
}

static void test_aux_losses(void)
{
    float *x = separated_logits(N, E);
    float *dx = dev_from(x, N * E), *probs = dev_zeros(N * E), *w = dev_zeros(N * KK);
    float *loss = dev_zeros(1);
    int32_t *idx = K->alloc(K, N * KK * 4);
    K->router_fwd(K, dx, probs, idx, w, N, E, KK, 1);
    const float alpha = 0.01f, scale = 1.3f;
    K->moe_lb_loss_fwd(K, probs, idx, N, E, KK, alpha, loss);
    double p[N * E], wr[N * KK], f[E] = {0}, P[E] = {0}, want = 0.0;
    int ir[N * KK];
    router_ref(x, N, E, KK, 1, p, ir, wr);
    for (int a = 0; a < N * KK; a++)
        f[ir[a]] += 1.0 / (N * KK);
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++)
            P[e] += p[n * E + e] / N;
    for (int e = 0; e < E; e++)
        want += alpha * E * f[e] * P[e];
    expect_close("moe_lb_loss_fwd", loss, &want, 1, 1e-9, 1e-5);

    /* bwd adds into dlogits: start from known values, subtract them after */
    float *g0 = host_rand(N * E, -1, 1), *g = dev_from(g0, N * E);
    K->moe_lb_loss_bwd(K, probs, idx, N, E, KK, alpha, scale, g);
    float *g0d = dev_from(g0, N * E);
    K->axpy(K, g, g0d, N * E, -1.0f);
    struct aux_ctx c = {dx, probs, w, loss, idx, alpha, scale, 0};
    expect_grad("moe_lb_loss_bwd dlogits (accumulated)", dx, N * E, g, aux_loss, &c, 1e-3, 1e-2);

    /* z-loss: coef * mean lse^2 */
    float *raw = host_rand(N * E, -3, 3), *dz = dev_from(raw, N * E);
    K->moe_z_loss_fwd(K, dz, N, E, 0.001f, loss);
    double zwant = 0.0;
    for (int n = 0; n < N; n++) {
        double m = -INFINITY, l = 0.0;
        for (int e = 0; e < E; e++)
            m = fmax(m, raw[n * E + e]);
        for (int e = 0; e < E; e++)
            l += exp(raw[n * E + e] - m);
        zwant += 0.001 * (m + log(l)) * (m + log(l)) / N;
    }
    expect_close("moe_z_loss_fwd", loss, &zwant, 1, 1e-10, 1e-5);
    float *gz = dev_from(g0, N * E);
    K->moe_z_loss_bwd(K, dz, N, E, 0.001f, scale, gz);
    K->axpy(K, gz, g0d, N * E, -1.0f);
    struct aux_ctx cz = {dz, probs, w, loss, idx, 0.001f, scale, 1};
    expect_grad("moe_z_loss_bwd dlogits (accumulated)", dz, N * E, gz, aux_loss, &cz, 1e-2, 1e-2);
    free(x), free(g0), free(raw);
    K->free(K, dx), K->free(K, probs), K->free(K, w), K->free(K, loss), K->free(K, idx);
    K->free(K, g), K->free(K, dz), K->free(K, gz), K->free(K, g0d);
}

int main(void)
{
    upc_init("test_kernels_moe");
    K = kernels_cpu();
    /* first, before OpenMP starts threads: a forked child of a threaded
     * process draws LeakSanitizer's "thread was not suspended" line */
    EXPECT_FAIL(capacity_bad_expert, NULL, EX_SOFTWARE, "moe_capacity_drop", "expert index out of range");
    omp_set_num_threads(2);
    test_router();
    test_dispatch();
    test_grouped_gemm();
    test_grouped_gemm_bf16();
    test_moe_identity();
    test_moe_backward();
    test_aux_losses();
    return finish("test_kernels_moe");
}
