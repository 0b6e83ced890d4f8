/* test_gpu_kernels.c: every kernel of the CUDA backend against the CPU
 * backend (the reference) on the same random inputs, at awkward shapes (odd
 * sizes, padded leading dimensions, GQA, E=8 k=2 with empty experts and
 * capacity drops, V not a multiple of 32, T not a multiple of the attention
 * tile, head dims on each side of the kernels' template bounds). One line
 * per check: ok/FAIL, kernel, shape, max abs and max relative error, the
 * worst element and the tolerance. Also checks that the GPU gives the same
 * bits twice (determinism) for the reductions and the attention backward.
 *
 *   test_gpu_kernels            exit 0 all passed, 1 a check failed,
 *                               77 skipped (no CUDA build or device; the
 *                               reason on stdout)
 *   test_gpu_kernels --bad-id   an out-of-range token id: must fail with
 *                               EX_SOFTWARE naming embedding_fwd
 *   test_gpu_kernels --grouped  the bf16 grouped GEMMs only (with
 *                               UPC_GROUPED=cublas: cuda_gemm.cu's path)
 *   test_gpu_kernels --cpu      the CPU against itself (runs anywhere):
 *                               checks the harness, every error must be 0 */
#include "attention_gemm.h"
#include "backend.h"
#include "kernels.h"
#include "test_harness.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const upc_kernels *C, *G;   /* CPU (reference), CUDA */
static uint64_t rng = 20240601;

static double urand(double lo, double hi)
{
    return lo + (hi - lo) * (double)(upc_splitmix64(&rng) >> 11) / 9007199254740992.0;
}

/* ---- the same buffer on both backends ---------------------------------------- */

typedef struct {
    float *c, *g;
    size_t n;
} twin;

typedef struct {
    int32_t *c, *g;
    size_t n;
} twin_i;

#define P(t) (w ? (t).g : (t).c)
#define BOTH for (int w = 0; w < 2; w++)
#define KK (w ? G : C)

static void *dev_alloc(const upc_kernels *K, size_t bytes)
{
    void *p = K->alloc(K, bytes ? bytes : 4);
    if (!p)
        upc_fail(EX_OSERR, "%s: out of memory for %zu bytes", K->name, bytes);
    return p;
}

static twin tw_from(const float *h, size_t n)
{
    twin t = {dev_alloc(C, n * 4), dev_alloc(G, n * 4), n};
    C->upload(C, t.c, h, n * 4);
    G->upload(G, t.g, h, n * 4);
    return t;
}

static twin tw_rand(size_t n, double lo, double hi)
{
    float *h = upc_malloc((n ? n : 1) * 4);
    for (size_t i = 0; i < n; i++)
        h[i] = (float)urand(lo, hi);
    twin t = tw_from(h, n);
    free(h);
    return t;
}

static twin tw_fill(size_t n, float v)
{
    float *h = upc_malloc((n ? n : 1) * 4);
    for (size_t i = 0; i < n; i++)
        h[i] = v;
    twin t = tw_from(h, n);
    free(h);
    return t;
}

static twin_i tw_ids(const int32_t *h, size_t n)
{
    twin_i t = {dev_alloc(C, n * 4), dev_alloc(G, n * 4), n};
    C->upload(C, t.c, h, n * 4);
    G->upload(G, t.g, h, n * 4);
    return t;
}

static void tw_free(twin t)
{
    C->free(C, t.c);
    G->free(G, t.g);
}

static void tw_free_i(twin_i t)
{
    C->free(C, t.c);
    G->free(G, t.g);
}

/* |cuda - cpu| <= atol + rtol |cpu| everywhere (NaN fails). */
static void compare(const char *kernel, const char *shape, twin t, double atol, double rtol)
{
    float *a = upc_malloc((t.n ? t.n : 1) * 4), *b = upc_malloc((t.n ? t.n : 1) * 4);
    C->download(C, a, t.c, t.n * 4);
    G->download(G, b, t.g, t.n * 4);
    double max_abs = 0, max_rel = 0, worst_excess = -INFINITY;
    size_t bad = 0, worst = 0;
    for (size_t i = 0; i < t.n; i++) {
        double err = fabs((double)b[i] - a[i]);
        if (isnan(b[i]) != isnan(a[i]))
            err = INFINITY;
        else if (isnan(a[i]))
            err = 0;
        double rel = err / (fabs(a[i]) > 1e-30 ? fabs(a[i]) : 1e-30);
        if (err > max_abs)
            max_abs = err;
        if (err > atol && rel > max_rel)
            max_rel = rel;
        double excess = isnan(a[i]) && isnan(b[i]) ? -INFINITY : err - (atol + rtol * fabs(a[i]));
        bad += !(excess <= 0);
        if (excess > worst_excess) {
            worst_excess = excess;
            worst = i;
        }
    }
    checks++;
    if (bad)
        failures++;
    printf("%-4s %-20s %-40s max_abs %.2e max_rel %.2e  worst [%zu] cpu %.8g cuda %.8g  (tol %.0e + %.0e|x|)\n",
           bad ? "FAIL" : "ok", kernel, shape, max_abs, max_rel, worst, t.n ? (double)a[worst] : 0.0,
           t.n ? (double)b[worst] : 0.0, atol, rtol);
    if (bad)
        printf("     %zu of %zu elements outside tolerance\n", bad, t.n);
    free(a);
    free(b);
}

static void compare_i(const char *kernel, const char *shape, twin_i t)
{
    int32_t *a = upc_malloc((t.n ? t.n : 1) * 4), *b = upc_malloc((t.n ? t.n : 1) * 4);
    C->download(C, a, t.c, t.n * 4);
    G->download(G, b, t.g, t.n * 4);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < t.n; i++)
        if (a[i] != b[i] && bad++ == 0)
            first = i;
    checks++;
    if (bad) {
        failures++;
        printf("FAIL %-20s %-40s %zu of %zu int32 differ; first [%zu] cpu %d cuda %d\n", kernel, shape, bad, t.n, first,
               a[first], b[first]);
    } else {
        printf("ok   %-20s %-40s %zu int32 equal\n", kernel, shape, t.n);
    }
    free(a);
    free(b);
}

/* The GPU twice gives the same bits (a buffer downloaded after each run). */
static void same_bits(const char *kernel, const char *shape, const float *first, twin t)
{
    float *b = upc_malloc((t.n ? t.n : 1) * 4);
    G->download(G, b, t.g, t.n * 4);
    size_t bad = 0;
    for (size_t i = 0; i < t.n; i++)
        bad += memcmp(&first[i], &b[i], 4) != 0;
    checks++;
    if (bad)
        failures++;
    printf("%-4s %-20s %-40s deterministic: %zu of %zu floats differ between two runs\n", bad ? "FAIL" : "ok", kernel,
           shape, bad, t.n);
    free(b);
}

static float *gpu_copy(twin t)
{
    float *h = upc_malloc((t.n ? t.n : 1) * 4);
    G->download(G, h, t.g, t.n * 4);
    return h;
}

/* ---- GEMM -----------------------------------------------------------------------
 * Run on the fp32 tables, then on the bf16 ones (the CPU's emulation is the
 * reference: the same rounded operands, so only the fp32 summation order
 * differs). */

/* "gemm", or "gemm bf16" while the bf16 tables run */
static const char *kname(const char *base)
{
    static char name[64];
    snprintf(name, sizeof name, "%s%s", base, upc_kernels_bf16(C) ? " bf16" : "");
    return name;
}

/* With `registered`, B is registered with bf16_weights on both sides first
 * (what the model does with its parameters): read from the rounded copy at
 * its own leading dimension. */
static void test_gemm_on(int ta, int tb, int m, int n, int k, int pad, float alpha, float beta, bool registered)
{
    int lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
    lda = lda > 0 ? lda : 1, ldb = ldb > 0 ? ldb : 1;
    size_t na = (size_t)(ta ? k : m) * (lda ? lda : 1), nb = (size_t)(tb ? n : k) * (ldb ? ldb : 1),
           nc = (size_t)m * ldc;
    twin A = tw_rand(na, -1, 1), B = tw_rand(nb, -1, 1), Cm = beta == 0 ? tw_fill(nc, NAN) : tw_rand(nc, -1, 1);
    if (registered)
        BOTH KK->bf16_weights(KK, P(B), nb);
    BOTH KK->gemm(KK, ta, tb, m, n, k, alpha, P(A), lda, P(B), ldb, beta, P(Cm), ldc);
    if (registered)
        BOTH KK->bf16_weights(KK, P(B), 0);
    char shape[96];
    snprintf(shape, sizeof shape, "%c%c %dx%dx%d ld+%d a=%g b=%g%s%s", ta ? 't' : 'n', tb ? 't' : 'n', m, n, k, pad,
             alpha, beta, beta == 0 ? "(NaN C)" : "", registered ? " B registered" : "");
    /* fp32 sums of k terms in another order: absolute error grows like sqrt(k) */
    compare(kname("gemm"), shape, Cm, 1e-5 * fmax(1.0, sqrt(k / 32.0)), 1e-4);
    tw_free(A), tw_free(B), tw_free(Cm);
}

static void test_gemm(int ta, int tb, int m, int n, int k, int pad, float alpha, float beta)
{
    test_gemm_on(ta, tb, m, n, k, pad, alpha, beta, false);
}

static void test_gemm_batched(int ta, int tb, int m, int n, int k, int batch)
{
    int lda = ta ? m : k, ldb = tb ? k : n, ldc = n;
    long long sa = (long long)m * k + 5, sb = (long long)k * n + 3, sc = (long long)m * n + 7;
    twin A = tw_rand((size_t)sa * batch, -1, 1), B = tw_rand((size_t)sb * batch, -1, 1),
         Cm = tw_rand((size_t)sc * batch, -1, 1);
    BOTH KK->gemm_strided_batched(KK, ta, tb, m, n, k, 0.5f, P(A), lda, sa, P(B), ldb, sb, 1.0f, P(Cm), ldc, sc, batch);
    char shape[96];
    snprintf(shape, sizeof shape, "%c%c %dx%dx%d batch %d", ta ? 't' : 'n', tb ? 't' : 'n', m, n, k, batch);
    compare(kname("gemm_strided_batched"), shape, Cm, 1e-5, 1e-4);
    tw_free(A), tw_free(B), tw_free(Cm);
}

/* Decode's shape, a few rows times a weight matrix (cuda_gemv.cu for m <= 8
 * on the GPU): W sits `w_off` floats into a buffer that the bf16 tables
 * register whole, as the model registers its parameters, so its rows start
 * 16-byte aligned (vector loads) or not (one element per lane). */
static void test_gemv(int m, int n, int k, int pad, int w_off, float alpha, float beta)
{
    int ld = k + pad, ldc = n + pad;
    size_t nw = (size_t)w_off + (size_t)n * ld, nc = (size_t)m * ldc;
    twin X = tw_rand((size_t)m * ld, -1, 1), Wt = tw_rand(nw, -1, 1),
         Y = beta == 0 ? tw_fill(nc, NAN) : tw_rand(nc, -1, 1);
    bool registered = upc_kernels_bf16(C);
    if (registered)
        BOTH KK->bf16_weights(KK, P(Wt), nw);
    BOTH KK->gemm(KK, 0, 1, m, n, k, alpha, P(X), ld, P(Wt) + w_off, ld, beta, P(Y), ldc);
    if (registered)
        BOTH KK->bf16_weights(KK, P(Wt), 0);
    char shape[96];
    snprintf(shape, sizeof shape, "nt %dx%dx%d ld+%d W at +%d a=%g b=%g%s", m, n, k, pad, w_off, alpha, beta,
             beta == 0 ? "(NaN C)" : "");
    compare(kname("gemv"), shape, Y, 1e-5 * fmax(1.0, sqrt(k / 32.0)), 1e-4);
    tw_free(X), tw_free(Wt), tw_free(Y);
}

/* E = 8 groups of `counts` rows: small (one tile of the bf16 device
 * kernels) and large (several tiles, partial ones at every edge) */
static void test_grouped_on(int n, int k, const int32_t counts[8], bool registered)
{
    const int E = 8;
    int32_t offs[9] = {0};
    for (int e = 0; e < E; e++)
        offs[e + 1] = offs[e] + counts[e];
    int R = offs[E];
    twin_i O = tw_ids(offs, E + 1);
    char shape[80];
    snprintf(shape, sizeof shape, "E=8 R=%d n=%d k=%d%s", R, n, k, registered ? " W registered" : "");
    int inner = n > k ? n : k;   /* the longest fp32 sum (dw sums over a group's rows) */
    for (int e = 0; e < E; e++)
        inner = counts[e] > inner ? counts[e] : inner;
    double atol = 1e-5 * fmax(1.0, sqrt(inner / 32.0));
    twin X = tw_rand((size_t)R * k, -1, 1), W = tw_rand((size_t)E * n * k, -1, 1), Y = tw_fill((size_t)R * n, NAN);
    twin dY = tw_rand((size_t)R * n, -1, 1), dX = tw_rand((size_t)R * k, -1, 1), dW = tw_rand((size_t)E * n * k, -1, 1);
    if (registered)   /* the expert weights, as the model registers them */
        BOTH KK->bf16_weights(KK, P(W), (size_t)E * n * k);
    BOTH KK->grouped_gemm_fwd(KK, E, P(O), n, k, P(X), P(W), 0.0f, P(Y));
    compare(kname("grouped_gemm_fwd"), shape, Y, atol, 1e-4);
    BOTH KK->grouped_gemm_dx(KK, E, P(O), n, k, P(dY), P(W), 1.0f, P(dX));
    compare(kname("grouped_gemm_dx"), shape, dX, atol, 1e-4);
    BOTH KK->grouped_gemm_dw(KK, E, P(O), n, k, P(dY), P(X), 1.0f, P(dW));
    compare(kname("grouped_gemm_dw"), shape, dW, atol, 1e-4);
    BOTH KK->grouped_gemm_dw(KK, E, P(O), n, k, P(dY), P(X), 0.0f, P(dW));
    compare(kname("grouped_gemm_dw"), shape, dW, atol, 1e-4);
    if (registered)
        BOTH KK->bf16_weights(KK, P(W), 0);
    tw_free_i(O);
    tw_free(X), tw_free(W), tw_free(Y), tw_free(dY), tw_free(dX), tw_free(dW);
}

static const int32_t groups_small[8] = {5, 0, 17, 1, 0, 9, 3, 0}, groups_large[8] = {150, 0, 64, 1, 200, 65, 0, 7};

/* Every grouped shape, plain and (bf16 tables) with W registered. */
static void test_grouped(void)
{
    for (int registered = 0; registered <= upc_kernels_bf16(C); registered++) {
        test_grouped_on(24, 13, groups_small, registered);
        test_grouped_on(130, 200, groups_large, registered);
    }
}

/* ---- layers --------------------------------------------------------------------- */

static void test_embedding(void)
{
    const int V = 50, d = 33, rows = 77;
    int32_t ids[77];
    for (int i = 0; i < rows; i++)
        ids[i] = (int32_t)(upc_splitmix64(&rng) % (i < 40 ? 7 : V));   /* many repeats */
    twin_i I = tw_ids(ids, rows);
    twin T = tw_rand((size_t)V * d, -1, 1), out = tw_fill((size_t)rows * d, NAN);
    twin dout = tw_rand((size_t)rows * d, -1, 1), dT = tw_rand((size_t)V * d, -1, 1);
    BOTH KK->embedding_fwd(KK, P(I), rows, P(T), V, d, P(out));
    compare("embedding_fwd", "V=50 d=33 rows=77", out, 0, 0);
    float *before = upc_malloc((size_t)V * d * 4);
    G->download(G, before, dT.g, (size_t)V * d * 4);
    BOTH KK->embedding_bwd(KK, P(I), rows, P(dout), V, d, P(dT));
    compare("embedding_bwd", "V=50 d=33 rows=77 (+= token order)", dT, 1e-6, 1e-6);
    float *first = gpu_copy(dT);
    G->upload(G, dT.g, before, (size_t)V * d * 4);
    G->embedding_bwd(G, I.g, rows, dout.g, V, d, dT.g);
    same_bits("embedding_bwd", "second run", first, dT);
    free(first), free(before);
    tw_free_i(I);
    tw_free(T), tw_free(out), tw_free(dout), tw_free(dT);
}

static void test_rmsnorm(int rows, int d)
{
    twin x = tw_rand((size_t)rows * d, -2, 2), wt = tw_rand((size_t)d, 0.5, 1.5), y = tw_fill((size_t)rows * d, NAN);
    twin rstd = tw_fill((size_t)rows, NAN), dy = tw_rand((size_t)rows * d, -1, 1), dx = tw_fill((size_t)rows * d, NAN);
    twin dw = tw_rand((size_t)d, -1, 1);
    char shape[64];
    snprintf(shape, sizeof shape, "rows=%d d=%d", rows, d);
    BOTH KK->rmsnorm_fwd(KK, P(x), P(wt), P(y), P(rstd), rows, d, 1e-5f);
    compare("rmsnorm_fwd y", shape, y, 1e-6, 1e-5);
    compare("rmsnorm_fwd rstd", shape, rstd, 1e-6, 1e-5);
    BOTH KK->rmsnorm_bwd(KK, P(dy), P(x), P(wt), P(rstd), P(dx), P(dw), rows, d);
    compare("rmsnorm_bwd dx", shape, dx, 1e-5, 1e-4);
    compare("rmsnorm_bwd dw", shape, dw, 1e-5, 1e-4);
    BOTH KK->rmsnorm_fwd(KK, P(x), P(wt), P(x), NULL, rows, d, 1e-5f);
    compare("rmsnorm_fwd", "in place, rstd NULL", x, 1e-6, 1e-5);
    tw_free(x), tw_free(wt), tw_free(y), tw_free(rstd), tw_free(dy), tw_free(dx), tw_free(dw);
}

static void test_rope(void)
{
    const int B = 2, T = 13, H = 3, hd = 18;
    size_t n = (size_t)B * T * H * hd;
    int32_t pos[26];
    for (int i = 0; i < B * T; i++)
        pos[i] = (int32_t)(upc_splitmix64(&rng) % 3000);
    twin_i Pp = tw_ids(pos, (size_t)B * T);
    twin x = tw_rand(n, -1, 1), y = tw_fill(n, NAN), dx = tw_fill(n, NAN);
    BOTH KK->rope_fwd(KK, P(x), P(y), B, T, H, hd, 5, NULL, 10000.0f);
    compare("rope_fwd", "B=2 T=13 H=3 hd=18 pos0=5", y, 2e-6, 1e-5);
    BOTH KK->rope_fwd(KK, P(x), P(y), B, T, H, hd, 0, P(Pp), 500000.0f);
    compare("rope_fwd", "positions up to 3000, theta 5e5", y, 1e-5, 1e-4);
    BOTH KK->rope_bwd(KK, P(y), P(dx), B, T, H, hd, 0, P(Pp), 500000.0f);
    compare("rope_bwd", "positions up to 3000", dx, 1e-5, 1e-4);
    BOTH KK->rope_fwd(KK, P(x), P(x), B, T, H, hd, 7, NULL, 10000.0f);
    compare("rope_fwd", "in place", x, 2e-6, 1e-5);
    tw_free_i(Pp);
    tw_free(x), tw_free(y), tw_free(dx);
}

static void test_swiglu(void)
{
    size_t n = 1001;
    twin g = tw_rand(n, -6, 6), u = tw_rand(n, -2, 2), o = tw_fill(n, NAN), d = tw_rand(n, -1, 1);
    twin dg = tw_fill(n, NAN), du = tw_fill(n, NAN);
    BOTH KK->swiglu_fwd(KK, P(g), P(u), P(o), n);
    compare("swiglu_fwd", "n=1001", o, 1e-6, 1e-5);
    BOTH KK->swiglu_bwd(KK, P(g), P(u), P(d), P(dg), P(du), n);
    compare("swiglu_bwd dgate", "n=1001", dg, 1e-6, 1e-5);
    compare("swiglu_bwd dup", "n=1001", du, 1e-6, 1e-5);
    tw_free(g), tw_free(u), tw_free(o), tw_free(d), tw_free(dg), tw_free(du);
}

/* the factors are the same formula (kernels_math.h) on both sides; up to
 * an FMA contraction on the GPU */
static void test_jitter(void)
{
    size_t n = 70001;
    twin x = tw_rand(n, -3, 3);
    BOTH KK->jitter_scale(KK, P(x), n, 0.2f, 0x1234abcdULL);
    compare("jitter_scale", "n=70001 eps=0.2", x, 1e-6, 1e-6);
    tw_free(x);
}

/* ---- attention -------------------------------------------------------------------- */

/* the score-row kernels, and attention through GEMMs on the fp32 and bf16
 * tables (bf16: the same rounded operands on both sides, but a P that
 * differs in its last bits can round to another bf16 value) */
static void test_attention_gemm(int B, int T, int Hq, int Hkv, int hd)
{
    int n = B * Hq;
    size_t nn = (size_t)n * T * T;
    char shape[96];
    snprintf(shape, sizeof shape, "n=%d T=%d", n, T);
    twin S = tw_rand(nn, -6, 6), lse = tw_fill((size_t)n * T, NAN), dP = tw_rand(nn, -1, 1);
    BOTH KK->attn_softmax_fwd(KK, P(S), P(lse), n, T);
    compare("attn_softmax_fwd", shape, S, 1e-6, 1e-5);
    compare("attn_softmax_fwd lse", shape, lse, 1e-5, 1e-5);
    BOTH KK->attn_softmax_bwd(KK, P(S), P(dP), n, T, 0.125f);
    compare("attn_softmax_bwd", shape, dP, 1e-6, 1e-5);
    tw_free(S), tw_free(lse), tw_free(dP);

    size_t nq = (size_t)B * T * Hq * hd, nk = (size_t)B * T * Hkv * hd;
    twin q = tw_rand(nq, -2, 2), k = tw_rand(nk, -2, 2), v = tw_rand(nk, -1, 1), dout = tw_rand(nq, -1, 1);
    twin scratch = tw_fill(attention_gemm_scratch_floats(B, T, Hq), 0.0f);
    const upc_kernels *fp32[2] = {C, G};
    for (int bf16 = 0; bf16 < 2; bf16++) {
        C = upc_backend_precision(fp32[0], bf16 ? "bf16" : "fp32");
        G = upc_backend_precision(fp32[1], bf16 ? "bf16" : "fp32");
        double atol = bf16 ? 2e-3 : 1e-5, rtol = bf16 ? 1e-2 : 1e-4;
        twin out = tw_fill(nq, NAN), l = tw_fill((size_t)n * T, NAN);
        twin dq = tw_fill(nq, NAN), dk = tw_fill(nk, NAN), dv = tw_fill(nk, NAN);
        BOTH attention_gemm_fwd(KK, P(q), P(k), P(v), P(out), P(l), P(scratch), B, T, Hq, Hkv, hd);
        snprintf(shape, sizeof shape, "B=%d T=%d Hq=%d Hkv=%d hd=%d", B, T, Hq, Hkv, hd);
        compare(kname("attention_gemm_fwd out"), shape, out, atol, rtol);
        compare(kname("attention_gemm_fwd lse"), shape, l, atol, rtol);
        BOTH attention_gemm_bwd(KK, P(q), P(k), P(v), P(dout), P(dq), P(dk), P(dv), P(scratch), B, T, Hq, Hkv, hd);
        compare(kname("attention_gemm_bwd dq"), shape, dq, 2 * atol, rtol);
        compare(kname("attention_gemm_bwd dk"), shape, dk, 2 * atol, rtol);
        compare(kname("attention_gemm_bwd dv"), shape, dv, 2 * atol, rtol);
        tw_free(out), tw_free(l), tw_free(dq), tw_free(dk), tw_free(dv);
    }
    C = fp32[0], G = fp32[1];
    tw_free(q), tw_free(k), tw_free(v), tw_free(dout), tw_free(scratch);
}

/* The bf16 tables' attention_fwd and attention_bwd: CUDA's run on tensor
 * cores (flash, bf16 Q, K, V, dout, probabilities and dS); their reference
 * is the CPU's attention through bf16 GEMMs, which rounds Q, K and V alike,
 * the probabilities after normalising instead of before, and takes D from
 * P dP instead of out: out and the gradients within bf16's resolution, lse
 * (fp32 softmax of the same rounded scores) within sums' order. Above
 * head dim 128 the backward is the fp32 kernel's (checked alike). */
static void test_attention_flash_bf16(int B, int T, int Hq, int Hkv, int hd)
{
    if (strcmp(G->name, "cpu") == 0)   /* --cpu: the CPU's bf16 attention_fwd is its fp32 one */
        return;
    const upc_kernels *C32 = C, *G32 = G;
    C = upc_backend_precision(C32, "bf16");
    G = upc_backend_precision(G32, "bf16");
    size_t nq = (size_t)B * T * Hq * hd, nk = (size_t)B * T * Hkv * hd;
    twin q = tw_rand(nq, -2, 2), k = tw_rand(nk, -2, 2), v = tw_rand(nk, -1, 1), out = tw_fill(nq, NAN);
    twin lse = tw_fill((size_t)B * Hq * T, NAN);
    float *scratch = dev_alloc(C, attention_gemm_scratch_floats(B, T, Hq) * sizeof(float));
    attention_gemm_fwd(C, q.c, k.c, v.c, out.c, lse.c, scratch, B, T, Hq, Hkv, hd);
    G->attention_fwd(G, q.g, k.g, v.g, out.g, lse.g, B, T, Hq, Hkv, hd);
    char shape[80];
    snprintf(shape, sizeof shape, "B=%d T=%d Hq=%d Hkv=%d hd=%d", B, T, Hq, Hkv, hd);
    compare("attention_fwd bf16 out", shape, out, 4e-3, 1e-2);
    compare("attention_fwd bf16 lse", shape, lse, 2e-4, 1e-4);
    /* the backward from each side's own forward: D from out here, from P dP there */
    twin dout = tw_rand(nq, -1, 1), dq = tw_fill(nq, NAN), dk = tw_fill(nk, NAN), dv = tw_fill(nk, NAN);
    attention_gemm_bwd(C, q.c, k.c, v.c, dout.c, dq.c, dk.c, dv.c, scratch, B, T, Hq, Hkv, hd);
    G->attention_bwd(G, q.g, k.g, v.g, out.g, lse.g, dout.g, dq.g, dk.g, dv.g, B, T, Hq, Hkv, hd);
    compare("attention_bwd bf16 dq", shape, dq, 1e-2, 2e-2);
    compare("attention_bwd bf16 dk", shape, dk, 1e-2, 2e-2);
    /* dV = P^T dO has no dS in it: on the tensor-core path (hd <= 128) it
     * differs only by P's rounding; above, the fp32 backward runs from the
     * bf16 forward */
    compare("attention_bwd bf16 dv", shape, dv, hd <= 128 ? 1e-3 : 1e-2, hd <= 128 ? 5e-3 : 2e-2);
    float *first = gpu_copy(dk);
    G->attention_bwd(G, q.g, k.g, v.g, out.g, lse.g, dout.g, dq.g, dk.g, dv.g, B, T, Hq, Hkv, hd);
    same_bits("attention_bwd bf16 dk", shape, first, dk);
    free(first);
    C->free(C, scratch);
    tw_free(q), tw_free(k), tw_free(v), tw_free(out), tw_free(lse);
    tw_free(dout), tw_free(dq), tw_free(dk), tw_free(dv);
    C = C32, G = G32;
}

static void test_attention(int B, int T, int Hq, int Hkv, int hd)
{
    size_t nq = (size_t)B * T * Hq * hd, nk = (size_t)B * T * Hkv * hd;
    twin q = tw_rand(nq, -2, 2), k = tw_rand(nk, -2, 2), v = tw_rand(nk, -1, 1), out = tw_fill(nq, NAN);
    twin lse = tw_fill((size_t)B * Hq * T, NAN), dout = tw_rand(nq, -1, 1);
    twin dq = tw_fill(nq, NAN), dk = tw_fill(nk, NAN), dv = tw_fill(nk, NAN);
    char shape[80];
    snprintf(shape, sizeof shape, "B=%d T=%d Hq=%d Hkv=%d hd=%d", B, T, Hq, Hkv, hd);
    BOTH KK->attention_fwd(KK, P(q), P(k), P(v), P(out), P(lse), B, T, Hq, Hkv, hd);
    compare("attention_fwd out", shape, out, 2e-5, 2e-4);
    compare("attention_fwd lse", shape, lse, 2e-5, 2e-5);
    /* both backwards from the CPU's forward, so only the backward differs */
    float *h = upc_malloc(nq * 4);
    C->download(C, h, out.c, nq * 4);
    G->upload(G, out.g, h, nq * 4);
    free(h);
    h = upc_malloc((size_t)B * Hq * T * 4);
    C->download(C, h, lse.c, (size_t)B * Hq * T * 4);
    G->upload(G, lse.g, h, (size_t)B * Hq * T * 4);
    free(h);
    BOTH KK->attention_bwd(KK, P(q), P(k), P(v), P(out), P(lse), P(dout), P(dq), P(dk), P(dv), B, T, Hq, Hkv, hd);
    compare("attention_bwd dq", shape, dq, 5e-5, 5e-4);
    compare("attention_bwd dk", shape, dk, 5e-5, 5e-4);
    compare("attention_bwd dv", shape, dv, 5e-5, 5e-4);
    float *first = gpu_copy(dk);
    G->attention_bwd(G, q.g, k.g, v.g, out.g, lse.g, dout.g, dq.g, dk.g, dv.g, B, T, Hq, Hkv, hd);
    same_bits("attention_bwd dk", shape, first, dk);
    free(first);
    tw_free(q), tw_free(k), tw_free(v), tw_free(out), tw_free(lse), tw_free(dout);
    tw_free(dq), tw_free(dk), tw_free(dv);
}

/* Three sequences in a shuffled block pool; rows at several positions. */
static void test_paged(int Hq, int Hkv, int hd, int block_size)
{
    const int seqs = 3, max_blocks = 6, n_blocks = seqs * max_blocks;
    int len[3] = {block_size * max_blocks, 7, 2 * block_size + 1};
    int32_t table[18];
    for (int i = 0; i < n_blocks; i++)
        table[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = (int)(upc_splitmix64(&rng) % (uint64_t)(i + 1)), t = table[i];
        table[i] = table[j];
        table[j] = t;
    }
    size_t slots_n = (size_t)n_blocks * block_size, width = (size_t)Hkv * hd;
    twin kc = tw_fill(slots_n * width, 0), vc = tw_fill(slots_n * width, 0);
    twin_i Tb = tw_ids(table, (size_t)n_blocks);
    /* write every position of every sequence */
    int total = len[0] + len[1] + len[2];
    int32_t *slots = upc_malloc((size_t)total * 4);
    int r = 0;
    for (int s = 0; s < seqs; s++)
        for (int p = 0; p < len[s]; p++)
            slots[r++] = table[s * max_blocks + p / block_size] * block_size + p % block_size;
    twin_i Sl = tw_ids(slots, (size_t)total);
    twin kk = tw_rand((size_t)total * width, -2, 2), vv = tw_rand((size_t)total * width, -1, 1);
    BOTH KK->kv_cache_write(KK, P(kk), P(vv), P(Sl), total, Hkv, hd, P(kc), P(vc));
    char shape[80];
    snprintf(shape, sizeof shape, "%d rows Hkv=%d hd=%d bs=%d", total, Hkv, hd, block_size);
    compare("kv_cache_write k", shape, kc, 0, 0);
    compare("kv_cache_write v", shape, vc, 0, 0);
    int32_t row_seq[7] = {0, 0, 0, 1, 1, 2, 2}, row_pos[7] = {0, len[0] / 2, len[0] - 1, 3, 6, block_size, len[2] - 1};
    const int rows = 7;
    twin_i Rs = tw_ids(row_seq, rows), Rp = tw_ids(row_pos, rows);
    twin q = tw_rand((size_t)rows * Hq * hd, -2, 2), out = tw_fill((size_t)rows * Hq * hd, NAN);
    BOTH KK->paged_attention(KK, P(q), P(kc), P(vc), P(Tb), max_blocks, block_size, P(Rs), P(Rp), rows, Hq, Hkv, hd,
                             P(out));
    snprintf(shape, sizeof shape, "7 rows Hq=%d Hkv=%d hd=%d bs=%d len<=%d", Hq, Hkv, hd, block_size, len[0]);
    compare("paged_attention", shape, out, 2e-5, 2e-4);
    free(slots);
    tw_free_i(Tb), tw_free_i(Sl), tw_free_i(Rs), tw_free_i(Rp);
    tw_free(kc), tw_free(vc), tw_free(kk), tw_free(vv), tw_free(q), tw_free(out);
}

/* ---- loss -------------------------------------------------------------------------- */

static void test_cross_entropy(int rows, int V)
{
    int32_t *tg = upc_malloc((size_t)rows * 4);
    for (int r = 0; r < rows; r++)
        tg[r] = r % 4 == 3 ? -1 : (int32_t)(upc_splitmix64(&rng) % (uint64_t)V);
    twin_i Tg = tw_ids(tg, (size_t)rows);
    twin lg = tw_rand((size_t)rows * V, -8, 8), loss = tw_fill((size_t)rows, NAN), lse = tw_fill((size_t)rows, NAN);
    twin dl = tw_fill((size_t)rows * V, NAN);
    char shape[64];
    snprintf(shape, sizeof shape, "rows=%d V=%d (every 4th ignored)", rows, V);
    BOTH KK->cross_entropy_fwd(KK, P(lg), P(Tg), P(loss), P(lse), rows, V);
    compare("cross_entropy_fwd", shape, loss, 1e-5, 1e-5);
    compare("cross_entropy_fwd lse", shape, lse, 1e-5, 1e-6);
    BOTH KK->cross_entropy_bwd(KK, P(lg), P(Tg), P(lse), P(dl), rows, V, 0.3f);
    compare("cross_entropy_bwd", shape, dl, 1e-7, 1e-4);
    BOTH KK->cross_entropy_bwd(KK, P(lg), P(Tg), NULL, P(lg), rows, V, 0.3f);
    compare("cross_entropy_bwd", "in place, lse recomputed", lg, 1e-7, 1e-4);
    free(tg);
    tw_free_i(Tg);
    tw_free(lg), tw_free(loss), tw_free(lse), tw_free(dl);
}

/* ---- MoE --------------------------------------------------------------------------- */

static void test_moe(int N, int E, int kk, int d, int renorm, int capacity)
{
    char shape[96];
    snprintf(shape, sizeof shape, "N=%d E=%d k=%d d=%d renorm=%d", N, E, kk, d, renorm);
    size_t A = (size_t)N * kk;
    twin lg = tw_rand((size_t)N * E, -3, 3), probs = tw_fill((size_t)N * E, NAN), tw = tw_fill(A, NAN);
    int32_t *h_idx = upc_calloc(A, 4);
    twin_i idx = tw_ids(h_idx, A);
    BOTH KK->router_fwd(KK, P(lg), P(probs), P(idx), P(tw), N, E, kk, renorm);
    compare("router_fwd probs", shape, probs, 1e-7, 1e-5);
    compare_i("router_fwd topk_idx", shape, idx);
    compare("router_fwd topk_w", shape, tw, 1e-7, 1e-5);
    /* from here both run on the CPU's routing, so a near-tie cannot split them */
    C->download(C, h_idx, idx.c, A * 4);
    G->upload(G, idx.g, h_idx, A * 4);
    float *h = upc_malloc((size_t)N * E * 4);
    C->download(C, h, probs.c, (size_t)N * E * 4);
    G->upload(G, probs.g, h, (size_t)N * E * 4);
    C->download(C, h, tw.c, A * 4);
    G->upload(G, tw.g, h, A * 4);
    free(h);
    twin dtw = tw_rand(A, -1, 1), dlg = tw_fill((size_t)N * E, NAN);
    BOTH KK->router_bwd(KK, P(probs), P(idx), P(tw), P(dtw), P(dlg), N, E, kk, renorm);
    compare("router_bwd", shape, dlg, 1e-7, 1e-5);

    int32_t *zeros = upc_calloc(A + E + 1, 4);
    twin_i counts = tw_ids(zeros, (size_t)E), offs = tw_ids(zeros, (size_t)E + 1), perm = tw_ids(zeros, A),
           pos = tw_ids(zeros, A);
    BOTH KK->moe_dispatch(KK, P(idx), N, kk, E, P(counts), P(offs), P(perm), P(pos));
    compare_i("moe_dispatch counts", shape, counts);
    compare_i("moe_dispatch offs", shape, offs);
    compare_i("moe_dispatch perm", shape, perm);
    compare_i("moe_dispatch pos", shape, pos);

    twin X = tw_rand((size_t)N * d, -1, 1), Xs = tw_fill(A * d, NAN), dXs = tw_rand(A * d, -1, 1);
    twin dX = tw_fill((size_t)N * d, NAN), Ys = tw_rand(A * d, -1, 1), out = tw_rand((size_t)N * d, -1, 1);
    twin dout = tw_rand((size_t)N * d, -1, 1), dYs = tw_fill(A * d, NAN), dw = tw_fill(A, NAN);
    BOTH KK->moe_gather(KK, P(X), P(perm), N, kk, d, P(Xs));
    compare("moe_gather", shape, Xs, 0, 0);
    BOTH KK->moe_gather_bwd(KK, P(dXs), P(pos), N, kk, d, P(dX));
    compare("moe_gather_bwd", shape, dX, 1e-6, 1e-6);
    BOTH KK->moe_combine(KK, P(Ys), P(pos), P(tw), N, kk, d, 1.0f, P(out));
    compare("moe_combine", "beta=1", out, 1e-6, 1e-5);
    BOTH KK->moe_combine(KK, P(Ys), P(pos), P(tw), N, kk, d, 0.0f, P(out));
    compare("moe_combine", "beta=0", out, 1e-6, 1e-5);
    BOTH KK->moe_combine_bwd(KK, P(dout), P(Ys), P(pos), P(tw), N, kk, d, P(dYs), P(dw));
    compare("moe_combine_bwd dYs", shape, dYs, 1e-7, 1e-6);
    compare("moe_combine_bwd dw", shape, dw, 1e-6, 1e-5);

    int32_t minus1 = -1;
    twin_i dropped = tw_ids(&minus1, 1);
    twin kept = tw_rand(A, 0.1, 1);
    BOTH KK->moe_capacity_drop(KK, P(idx), P(pos), P(offs), N, kk, E, capacity, P(kept), P(dropped));
    snprintf(shape, sizeof shape, "N=%d E=%d k=%d capacity=%d", N, E, kk, capacity);
    compare("moe_capacity_drop x", shape, kept, 0, 0);
    compare_i("moe_capacity_drop count", shape, dropped);
    int32_t nd = 0;
    G->download(G, &nd, dropped.g, 4);
    CHECK_MSG(nd > 0, "the capacity test dropped nothing (capacity %d too large for the test)", capacity);

    twin loss = tw_fill(2, NAN), dl2 = tw_rand((size_t)N * E, -1, 1);
    BOTH KK->moe_lb_loss_fwd(KK, P(probs), P(idx), N, E, kk, 0.02f, P(loss));
    BOTH KK->moe_z_loss_fwd(KK, P(lg), N, E, 0.001f, P(loss) + 1);
    compare("moe_lb/z_loss_fwd", shape, loss, 1e-8, 1e-5);
    BOTH KK->moe_lb_loss_bwd(KK, P(probs), P(idx), N, E, kk, 0.02f, 0.5f, P(dl2));
    compare("moe_lb_loss_bwd", shape, dl2, 1e-8, 1e-5);
    BOTH KK->moe_z_loss_bwd(KK, P(lg), N, E, 0.001f, 0.5f, P(dl2));
    compare("moe_z_loss_bwd", shape, dl2, 1e-8, 1e-5);

    free(h_idx), free(zeros);
    tw_free_i(idx), tw_free_i(counts), tw_free_i(offs), tw_free_i(perm), tw_free_i(pos), tw_free_i(dropped);
    tw_free(lg), tw_free(probs), tw_free(tw), tw_free(dtw), tw_free(dlg), tw_free(X), tw_free(Xs), tw_free(dXs);
    tw_free(dX), tw_free(Ys), tw_free(out), tw_free(dout), tw_free(dYs), tw_free(dw), tw_free(kept);
    tw_free(loss), tw_free(dl2);
}

/* ---- optimizers, reductions, elementwise ---------------------------------------- */

static void test_optim(void)
{
    size_t n = 10007;
    twin p = tw_rand(n, -1, 1), g = tw_rand(n, -1, 1), m = tw_rand(n, -0.1, 0.1), v = tw_rand(n, 0, 0.01);
    upc_optim_params hp = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                           .grad_scale = 0.7f};
    upc_optim_params_at(&hp, 3);
    BOTH KK->adamw_step(KK, P(p), P(g), P(m), P(v), n, hp);
    compare("adamw_step param", "n=10007 step 3", p, 1e-7, 1e-6);
    compare("adamw_step m", "n=10007", m, 1e-8, 1e-6);
    compare("adamw_step v", "n=10007", v, 1e-9, 1e-6);
    BOTH KK->lion_step(KK, P(p), P(g), P(m), n, hp);
    compare("lion_step param", "n=10007", p, 1e-7, 1e-6);
    compare("lion_step m", "n=10007", m, 1e-8, 1e-6);

    size_t big = 100003;
    twin x = tw_rand(big, -1, 1), s = tw_fill(2, NAN);
    BOTH KK->sum(KK, P(x), big, P(s));
    BOTH KK->sumsq(KK, P(x), big, P(s) + 1);
    compare("sum, sumsq", "n=100003", s, 1e-6, 1e-6);
    float *first = gpu_copy(s);
    G->sum(G, x.g, big, s.g);
    G->sumsq(G, x.g, big, s.g + 1);
    same_bits("sum, sumsq", "second run", first, s);
    free(first);
    twin y = tw_rand(big, -1, 1), z = tw_fill(big, NAN);
    BOTH KK->scale(KK, P(y), big, -0.37f);
    compare("scale", "n=100003", y, 0, 0);
    BOTH KK->axpy(KK, P(y), P(x), big, 1.7f);
    compare("axpy", "n=100003", y, 1e-7, 1e-6);
    /* add on inputs equal on both sides (axpy's y may differ by an FMA) */
    twin addend = tw_rand(big, -1, 1);
    BOTH KK->add(KK, P(z), P(x), P(addend), big);
    compare("add", "n=100003", z, 0, 0);
    BOTH KK->add(KK, P(z), P(z), P(addend), big);
    compare("add", "out == a", z, 0, 0);
    tw_free(addend);
    BOTH KK->fill(KK, P(z), big - 1, 3.25f);
    compare("fill", "n=100002 of 100003", z, 0, 0);
    BOTH KK->memset(KK, P(z), 0, 40);
    BOTH KK->copy(KK, P(z) + 20, P(x), 400);
    compare("memset, copy", "40 bytes, 400 bytes", z, 0, 0);
    tw_free(p), tw_free(g), tw_free(m), tw_free(v), tw_free(x), tw_free(s), tw_free(y), tw_free(z);
}

static void bad_id(void)
{
    int32_t ids[3] = {1, 9, 2};
    twin_i I = tw_ids(ids, 3);
    twin T = tw_rand(8 * 4, -1, 1), out = tw_fill(12, 0);
    G->embedding_fwd(G, I.g, 3, T.g, 8, 4, out.g);
    float h[12];
    G->download(G, h, out.g, sizeof h);   /* must fail here */
    printf("no failure on an out-of-range id\n");
    exit(1);
}

/* The last line (what gpu.bats looks for) and the exit status. */
static int summary(const char *label)
{
    if (failures) {
        printf("%s: %d of %d checks failed\n", label, failures, checks);
        return 1;
    }
    printf("%s: all %d checks passed\n", label, checks);
    return 0;
}

int main(int argc, char **argv)
{
    upc_init("test_gpu_kernels");
    char why[320];
    C = kernels_cpu();
    bool self = argc > 1 && strcmp(argv[1], "--cpu") == 0;
    G = upc_backend_find(self ? "cpu" : "cuda", why, sizeof why);
    if (!G) {
        printf("%s\n", why);
        return 77;
    }
    if (argc > 1 && strcmp(argv[1], "--bad-id") == 0)
        bad_id();
    if (argc > 1 && strcmp(argv[1], "--grouped") == 0) {
        /* the bf16 grouped GEMMs only: run with UPC_GROUPED=cublas for
         * cuda_gemm.cu's per-expert path (the default is cuda_grouped.cu's) */
        C = upc_backend_precision(C, "bf16");
        G = upc_backend_precision(G, "bf16");
        printf("# bf16 grouped GEMMs (UPC_GROUPED=%s)\n", getenv("UPC_GROUPED") ? getenv("UPC_GROUPED") : "");
        test_grouped();
        return summary("test_gpu_kernels --grouped");
    }
    if (self)
        printf("# the CPU backend against itself (harness check)\n");
    else
        printf("# %s against the CPU backend\n", upc_backend_describe(G));
    const upc_kernels *fp32[2] = {C, G};
    for (int bf16 = 0; bf16 < 2; bf16++) {
        C = upc_backend_precision(fp32[0], bf16 ? "bf16" : "fp32");
        G = upc_backend_precision(fp32[1], bf16 ? "bf16" : "fp32");
        test_gemm(0, 0, 37, 53, 19, 0, 1.0f, 0.0f);
        test_gemm(0, 1, 37, 53, 19, 3, 0.7f, 0.5f);
        test_gemm(1, 0, 37, 53, 19, 1, 1.0f, 1.0f);
        test_gemm(1, 1, 5, 300, 129, 2, -1.0f, 0.0f);
        test_gemm(0, 1, 1, 300, 129, 0, 1.0f, 0.0f);
        test_gemm(0, 1, 64, 512, 1024, 0, 1.0f, 0.0f);   /* big enough for tensor-core tiles */
        test_gemm(0, 0, 7, 9, 0, 0, 1.0f, 0.0f);
        test_gemm(0, 0, 7, 9, 0, 1, 1.0f, 2.0f);
        test_gemm_batched(0, 1, 17, 11, 23, 3);
        test_gemm_batched(1, 0, 17, 11, 23, 2);
        if (bf16) {
            test_gemm_on(0, 1, 37, 53, 19, 3, 1.0f, 0.0f, true);
            test_gemm_on(0, 1, 1, 300, 129, 0, 1.0f, 1.0f, true);   /* decode's shape */
        }
        test_gemv(1, 77, 517, 3, 0, 1.0f, 0.0f);     /* 16-byte loads and a tail; a part-filled block */
        test_gemv(8, 64, 1024, 0, 0, 0.5f, 1.0f);    /* the most rows, no tail */
        test_gemv(3, 33, 130, 1, 0, 1.0f, 0.5f);     /* rows not 16-byte aligned */
        test_gemv(5, 40, 256, 0, 3, 1.0f, 0.0f);     /* W's start not aligned */
        test_gemv(2, 1, 3, 1, 0, 2.0f, 0.0f);        /* k under one 16-byte chunk */
        test_gemv(9, 40, 64, 0, 0, 1.0f, 0.0f);      /* one row too many: cuBLAS */
        test_grouped();
    }
    C = fp32[0], G = fp32[1];
    test_embedding();
    test_rmsnorm(19, 257);
    test_rmsnorm(3, 4096);
    test_rmsnorm(130, 257);   /* several 64-row chunks of the dw sum */
    test_rope();
    test_swiglu();
    test_jitter();
    test_attention_gemm(2, 37, 4, 2, 16);
    test_attention_gemm(1, 300, 8, 2, 64);
    test_attention_flash_bf16(2, 37, 4, 2, 16);
    test_attention_flash_bf16(1, 70, 6, 2, 72);    /* two query blocks, padded head dim */
    test_attention_flash_bf16(1, 129, 8, 2, 64);   /* three key tiles */
    test_attention_flash_bf16(1, 33, 2, 1, 130);
    test_attention_flash_bf16(3, 1, 2, 2, 8);
    test_attention_flash_bf16(1, 40, 2, 1, 256);   /* the largest shared memory */
    test_attention(2, 37, 4, 2, 16);
    test_attention(1, 70, 6, 2, 72);
    test_attention(1, 129, 8, 2, 64);
    test_attention(1, 33, 2, 1, 130);
    test_attention(3, 1, 2, 2, 8);
    test_attention(1, 64, 4, 4, 128);   /* the template bounds, and at 256 */
    test_attention(1, 40, 2, 1, 256);   /* the largest shared-memory opt-in */
    test_paged(4, 2, 40, 5);
    test_paged(8, 1, 128, 16);
    test_cross_entropy(9, 1000);
    test_cross_entropy(5, 32003);
    test_cross_entropy(6, 100);         /* fewer columns than threads */
    test_moe(45, 8, 2, 33, 1, 3);
    test_moe(45, 8, 2, 17, 0, 5);
    test_moe(30, 6, 1, 9, 1, 2);
    test_moe(1000, 8, 2, 300, 1, 200);  /* strided loops that run more than once */
    test_optim();
    return summary("test_gpu_kernels");
}
