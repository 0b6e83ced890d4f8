/* test_kernels: the dense kernels of the CPU backend (GEMM, embedding,
 * RMSNorm, RoPE, attention, SwiGLU, cross-entropy, optimizers, reductions)
 * against naive double-precision loops, backwards against central
 * differences, and determinism. Exits non-zero naming each failed check. */
#include "attention_gemm.h"
#include "kernels.h"
#include "kernels_math.h"
#include "safetensors.h"
#include "test_kernels_util.h"

#include <omp.h>

/* ---- GEMM ----------------------------------------------------------------
 * Run twice: on the fp32 table, and on the bf16 table (kernels_cpu_bf16)
 * against references whose operands are rounded to bf16 first. */

static bool round_inputs;

static double in(float x)
{
    return round_inputs ? upc_round_bf16(x) : x;
}

static double at(const float *M, int ld, int trans, int i, int j)
{
    return in(trans ? M[(size_t)j * ld + i] : M[(size_t)i * ld + j]);
}

static void test_gemm_shape(int m, int n, int k)
{
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int bi = 0; bi < 2; bi++) {
                float beta = bi ? 0.5f : 0.0f, alpha = 1.25f;
                int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 1;
                size_t na = (size_t)(ta ? k : m) * lda, nb = (size_t)(tb ? n : k) * ldb,
                       nc = (size_t)m * ldc;
                float *A = host_rand(na, -1, 1), *B = host_rand(nb, -1, 1),
                      *C = host_rand(nc, -1, 1);
                if (!bi) /* beta = 0 must overwrite, NaN included */
                    for (size_t i = 0; i < nc; i++)
                        if (i % ldc != (size_t)n)
                            C[i] = NAN;
                double *ref = upc_malloc(nc * sizeof(double));
                for (int i = 0; i < m; i++)
                    for (int j = 0; j < ldc; j++) {
                        size_t c = (size_t)i * ldc + j;
                        if (j >= n) {
                            ref[c] = C[c]; /* padding untouched */
                            continue;
                        }
                        double s = 0.0;
                        for (int p = 0; p < k; p++)
                            s += at(A, lda, ta, i, p) * at(B, ldb, tb, p, j);
                        ref[c] = alpha * s + (bi ? beta * C[c] : 0.0);
                    }
                float *dA = dev_from(A, na), *dB = dev_from(B, nb), *dC = dev_from(C, nc);
                K->gemm(K, ta, tb, m, n, k, alpha, dA, lda, dB, ldb, beta, dC, ldc);
                char what[64];
                snprintf(what, sizeof what, "gemm %s %dx%dx%d ta=%d tb=%d beta=%g", K->precision, m, n, k, ta, tb,
                         beta);
                expect_close(what, dC, ref, nc, 1e-5, 1e-5);
                free(A), free(B), free(C), free(ref);
                K->free(K, dA), K->free(K, dB), K->free(K, dC);
            }
}

static void test_gemm(void)
{
    const int m = 7, n = 5, k = 9;
    test_gemm_shape(m, n, k);
    test_gemm_shape(1, 100, 37);   /* decode's skinny products (own kernel) */
    test_gemm_shape(3, 70, 129);

    /* strided batched: 3 products C_i = A_i^T B_i with gaps between them */
    const int batch = 3;
    long long sa = (long long)k * m + 4, sb = (long long)k * n + 1, sc = (long long)m * n + 2;
    float *A = host_rand((size_t)batch * sa, -1, 1), *B = host_rand((size_t)batch * sb, -1, 1);
    double *ref = upc_calloc((size_t)batch * sc, sizeof(double));
    for (int b = 0; b < batch; b++)
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double s = 0.0;
                for (int p = 0; p < k; p++)
                    s += in(A[b * sa + (size_t)p * m + i]) * in(B[b * sb + (size_t)p * n + j]);
                ref[b * sc + (size_t)i * n + j] = s;
            }
    float *dA = dev_from(A, (size_t)batch * sa), *dB = dev_from(B, (size_t)batch * sb);
    float *dC = dev_zeros((size_t)batch * sc);
    K->gemm_strided_batched(K, 1, 0, m, n, k, 1.0f, dA, m, sa, dB, n, sb, 0.0f, dC, n, sc,
                            batch);
    expect_close("gemm_strided_batched", dC, ref, (size_t)batch * sc, 1e-5, 1e-5);
    free(A), free(B), free(ref);
    K->free(K, dA), K->free(K, dB), K->free(K, dC);
}

/* bf16 rounding: the bits safetensors writes for bf16, ties to even, the
 * extremes; and the bf16 table's GEMM really rounds (it differs from fp32
 * by about bf16's precision, 2^-8 relative per operand). */
static void test_bf16(void)
{
    const float cases[] = {0.0f, -0.0f, 1.0f, 1.00390625f /* tie: 1 + 2^-8, rounds to even 1 */,
                           1.01171875f /* tie: rounds up to 1.015625 */, 3.14159265f, -2.5e-20f, 6e37f,
                           3.4e38f /* rounds to infinity */, INFINITY, -INFINITY, 1e-40f /* subnormal */};
    const float want[] = {0.0f, -0.0f, 1.0f, 1.0f, 1.015625f, 3.140625f, NAN, NAN, INFINITY, INFINITY, -INFINITY, NAN};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        float r = upc_round_bf16(cases[i]);
        uint32_t bits;
        memcpy(&bits, &r, 4);
        CHECK_MSG((bits & 0xffffu) == 0 && (uint16_t)(bits >> 16) == st_f32_to_bf16(cases[i]),
                  "upc_round_bf16(%g) = %g, safetensors' bf16 of it %#06x", cases[i], r, st_f32_to_bf16(cases[i]));
        CHECK_MSG(isnan(want[i]) || r == want[i], "upc_round_bf16(%.9g) = %.9g, expected %.9g", cases[i], r, want[i]);
    }
    CHECK(isnan(upc_round_bf16(NAN)));
    uint64_t s = 5;
    double worst = 0;
    for (int i = 0; i < 100000; i++) {
        float x = (float)((double)(upc_splitmix64(&s) >> 11) * 0x1.0p-53 * 200.0 - 100.0);
        float r = upc_round_bf16(x);
        uint32_t bits;
        memcpy(&bits, &r, 4);
        CHECK_MSG((uint16_t)(bits >> 16) == st_f32_to_bf16(x), "upc_round_bf16(%.9g) disagrees with safetensors", x);
        worst = fmax(worst, fabs(r - x) / fabs(x));
    }
    CHECK_MSG(worst <= 0x1.0p-8 && worst > 0x1.0p-9, "bf16 rounding: worst relative error %g, expected 2^-8 (half of 7 mantissa bits)", worst);

    const int m = 16, n = 16, k = 64;
    float *A = host_rand((size_t)m * k, -1, 1), *B = host_rand((size_t)k * n, -1, 1);
    const upc_kernels *F = kernels_cpu(), *H = kernels_cpu_bf16();
    CHECK(strcmp(F->precision, "fp32") == 0 && strcmp(H->precision, "bf16") == 0);
    float *dA = dev_from(A, (size_t)m * k), *dB = dev_from(B, (size_t)k * n);
    float *c32 = dev_zeros((size_t)m * n), *c16 = dev_zeros((size_t)m * n);
    F->gemm(F, 0, 0, m, n, k, 1.0f, dA, k, dB, n, 0.0f, c32, n);
    H->gemm(H, 0, 0, m, n, k, 1.0f, dA, k, dB, n, 0.0f, c16, n);
    double diff = 0;
    for (int i = 0; i < m * n; i++)
        diff = fmax(diff, fabs(c32[i] - c16[i]));
    CHECK_MSG(diff > 1e-4 && diff < 0.1, "bf16 GEMM differs from fp32 by %g, expected about 1e-2", diff);
    free(A), free(B);
    K->free(K, dA), K->free(K, dB), K->free(K, c32), K->free(K, c16);
}

/* bf16_weights: GEMM operands inside the registered range are read from
 * the copy rounded at registration (the same bits as rounding per call);
 * operands reaching past it, and every operand of an fp32 table, are read
 * as they are now; forgetting another pointer keeps the range. Writing the
 * weights without registering again shows which copy a GEMM read. */
static bool same_floats(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof(float)) == 0;
}

static void test_bf16_weights(void)
{
    const upc_kernels *H = kernels_cpu_bf16(), *F = kernels_cpu();
    const int m = 3, n = 40, k = 24, batch = 2;
    const size_t nw = (size_t)batch * n * k + 16;   /* two [n][k] weights, then padding */
    float *w = dev_rand(nw, -1, 1), *x = dev_rand((size_t)m * k, -1, 1);
    float *fresh = host_rand(nw, -1, 1);
    float *c_plain = dev_zeros((size_t)m * n * batch), *c = dev_zeros((size_t)m * n * batch);

    /* registered or not: the same bits, for gemm and gemm_strided_batched */
    H->gemm(H, 0, 1, m, n, k, 1.0f, x, k, w + n * k, k, 0.0f, c_plain, n);
    H->bf16_weights(H, w, nw);
    H->gemm(H, 0, 1, m, n, k, 1.0f, x, k, w + n * k, k, 0.0f, c, n);
    CHECK_MSG(same_floats(c, c_plain, (size_t)m * n), "gemm on registered weights differs from rounding per call");
    H->gemm_strided_batched(H, 0, 1, m, n, k, 1.0f, x, k, 0, w, k, (long long)n * k, 0.0f, c, n, (long long)m * n,
                            batch);
    H->bf16_weights(H, w, 0);
    H->gemm_strided_batched(H, 0, 1, m, n, k, 1.0f, x, k, 0, w, k, (long long)n * k, 0.0f, c_plain, n,
                            (long long)m * n, batch);
    CHECK_MSG(same_floats(c, c_plain, (size_t)m * n * batch), "strided-batched GEMM on registered weights differs");

    /* the copy is what a registered GEMM reads: new weights are not seen
     * until registered again; an operand reaching past the range is */
    float *old = dev_zeros((size_t)m * n);
    H->gemm(H, 0, 1, m, n, k, 1.0f, x, k, w, k, 0.0f, old, n);
    H->bf16_weights(H, w, (size_t)n * k);   /* exactly the first weight */
    H->upload(H, w, fresh, nw * sizeof(float));
    H->gemm(H, 0, 1, m, n, k, 1.0f, x, k, w, k, 0.0f, c, n);
    CHECK_MSG(same_floats(c, old, (size_t)m * n), "a GEMM inside the registered range did not read the copy");
    H->bf16_weights(H, x, 0);               /* forgetting another range keeps this one */
    H->gemm(H, 0, 1, m, n, k, 1.0f, x, k, w, k, 0.0f, c, n);
    CHECK_MSG(same_floats(c, old, (size_t)m * n), "forgetting another pointer dropped the registered range");
    H->gemm(H, 0, 1, m, n + 1, k, 1.0f, x, k, w, k, 0.0f, c, n + 1);   /* one row past it */
    H->bf16_weights(H, w, 0);
    H->gemm(H, 0, 1, m, n + 1, k, 1.0f, x, k, w, k, 0.0f, c_plain, n + 1);
    CHECK_MSG(same_floats(c, c_plain, (size_t)m * (n + 1)), "an operand reaching past the range read the stale copy");
    CHECK_MSG(!same_floats(c_plain, old, (size_t)m * n), "new weights gave the old product: the test proves nothing");

    /* fp32 tables ignore registration: after new weights, w gives what an
     * unregistered copy of them gives */
    F->bf16_weights(F, w, nw);
    float *newer = host_rand(nw, -1, 1), *w2 = dev_from(newer, nw);
    F->upload(F, w, newer, nw * sizeof(float));
    F->gemm(F, 0, 1, m, n, k, 1.0f, x, k, w2, k, 0.0f, c_plain, n);
    F->gemm(F, 0, 1, m, n, k, 1.0f, x, k, w, k, 0.0f, c, n);
    CHECK_MSG(same_floats(c, c_plain, (size_t)m * n), "the fp32 table used registered weights");
    F->bf16_weights(F, w, 0);
    free(fresh), free(newer);
    F->free(F, w2);
    H->free(H, w), H->free(H, x), H->free(H, c_plain), H->free(H, c), H->free(H, old);
}

/* ---- embedding ------------------------------------------------------------ */

struct emb_ctx {
    const int32_t *ids;
    int rows, V, d;
    float *table, *out;
    const float *r;
};

static double emb_loss(void *p)
{
    struct emb_ctx *c = p;
    K->embedding_fwd(K, c->ids, c->rows, c->table, c->V, c->d, c->out);
    return weighted_sum(c->out, c->r, (size_t)c->rows * c->d);
}

static void test_embedding(void)
{
    const int V = 37, d = 24, rows = 11;
    int32_t ids[11] = {3, 0, 36, 3, 17, 3, 5, 36, 0, 9, 3};
    float *table = host_rand((size_t)V * d, -1, 1);
    int32_t *dids = dev_ids(ids, rows);
    float *dtable = dev_from(table, (size_t)V * d), *out = dev_zeros((size_t)rows * d);
    K->embedding_fwd(K, dids, rows, dtable, V, d, out);
    double *ref = upc_malloc((size_t)V * d * sizeof(double));
    for (int i = 0; i < rows; i++)
        for (int c = 0; c < d; c++)
            ref[(size_t)i * d + c] = table[(size_t)ids[i] * d + c];
    expect_close("embedding_fwd", out, ref, (size_t)rows * d, 0, 0);

    /* bwd accumulates onto what dtable held */
    float *r = host_rand((size_t)rows * d, -1, 1), *g0 = host_rand((size_t)V * d, -1, 1);
    float *dr = dev_from(r, (size_t)rows * d), *grad = dev_from(g0, (size_t)V * d);
    K->embedding_bwd(K, dids, rows, dr, V, d, grad);
    for (size_t i = 0; i < (size_t)V * d; i++)
        ref[i] = g0[i];
    for (int i = 0; i < rows; i++)
        for (int c = 0; c < d; c++)
            ref[(size_t)ids[i] * d + c] += r[(size_t)i * d + c];
    expect_close("embedding_bwd accumulates", grad, ref, (size_t)V * d, 1e-6, 1e-6);
    K->memset(K, grad, 0, (size_t)V * d * sizeof(float));
    K->embedding_bwd(K, dids, rows, dr, V, d, grad);
    struct emb_ctx c = {dids, rows, V, d, dtable, out, r};
    expect_grad("embedding_bwd d(table)", dtable, (size_t)V * d, grad, emb_loss, &c, 1e-2, 1e-3);
    free(table), free(r), free(g0), free(ref);
    K->free(K, dids), K->free(K, dtable), K->free(K, out), K->free(K, dr), K->free(K, grad);
}

/* ---- RMSNorm --------------------------------------------------------------- */

struct norm_ctx {
    float *x, *w, *y;
    int rows, d;
    const float *r;
};

static double norm_loss(void *p)
{
    struct norm_ctx *c = p;
    K->rmsnorm_fwd(K, c->x, c->w, c->y, NULL, c->rows, c->d, 1e-5f);
    return weighted_sum(c->y, c->r, (size_t)c->rows * c->d);
}

static void test_rmsnorm(void)
{
    const int rows = 7, d = 24;
    const size_t n = (size_t)rows * d;
    float *x = host_rand(n, -2, 2), *w = host_rand(d, 0.5, 1.5);
    float *dx = dev_from(x, n), *dw = dev_from(w, d), *y = dev_zeros(n),
          *rstd = dev_zeros(rows);
    K->rmsnorm_fwd(K, dx, dw, y, rstd, rows, d, 1e-5f);
    double *ref = upc_malloc(n * sizeof(double)), rref[7];
    for (int i = 0; i < rows; i++) {
        double ss = 0.0;
        for (int j = 0; j < d; j++)
            ss += (double)x[i * d + j] * x[i * d + j];
        rref[i] = 1.0 / sqrt(ss / d + 1e-5);
        for (int j = 0; j < d; j++)
            ref[i * d + j] = x[i * d + j] * rref[i] * w[j];
    }
    expect_close("rmsnorm_fwd y", y, ref, n, 1e-6, 1e-5);
    expect_close("rmsnorm_fwd rstd", rstd, rref, rows, 0, 1e-6);

    /* in place: y may be x */
    float *xin = dev_from(x, n);
    K->rmsnorm_fwd(K, xin, dw, xin, NULL, rows, d, 1e-5f);
    expect_close("rmsnorm_fwd in place", xin, ref, n, 1e-6, 1e-5);

    float *r = host_rand(n, -1, 1), *dr = dev_from(r, n);
    float *gx = dev_zeros(n), *gw = dev_zeros(d);
    K->rmsnorm_bwd(K, dr, dx, dw, rstd, gx, gw, rows, d);
    struct norm_ctx c = {dx, dw, y, rows, d, r};
    expect_grad("rmsnorm_bwd dx", dx, n, gx, norm_loss, &c, 1e-2, 1e-2);
    expect_grad("rmsnorm_bwd dw", dw, d, gw, norm_loss, &c, 1e-2, 1e-2);
    /* dw accumulates: a second call doubles it */
    float *gw1 = host_of(gw, d);
    K->rmsnorm_bwd(K, dr, dx, dw, rstd, gx, gw, rows, d);
    for (int j = 0; j < d; j++)
        ref[j] = 2.0 * gw1[j];
    expect_close("rmsnorm_bwd dw accumulates", gw, ref, d, 1e-6, 1e-6);
    free(x), free(w), free(ref), free(r), free(gw1);
    K->free(K, dx), K->free(K, dw), K->free(K, y), K->free(K, rstd), K->free(K, xin);
    K->free(K, dr), K->free(K, gx), K->free(K, gw);
}

/* ---- RoPE ------------------------------------------------------------------ */

struct rope_ctx {
    float *x, *y;
    int B, T, H, hd, pos0;
    const float *r;
};

static double rope_loss(void *p)
{
    struct rope_ctx *c = p;
    K->rope_fwd(K, c->x, c->y, c->B, c->T, c->H, c->hd, c->pos0, NULL, 10000.0f);
    return weighted_sum(c->y, c->r, (size_t)c->B * c->T * c->H * c->hd);
}

static void rope_ref(const float *x, double *ref, int B, int T, int H, int hd,
                     const int *posv, double theta)
{
    int half = hd / 2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                size_t o = (((size_t)b * T + t) * H + h) * hd;
                double p = posv[b * T + t];
                for (int i = 0; i < half; i++) {
                    double ang = p * pow(theta, -2.0 * i / hd);
                    double x0 = x[o + i], x1 = x[o + i + half];
                    ref[o + i] = x0 * cos(ang) - x1 * sin(ang);
                    ref[o + i + half] = x1 * cos(ang) + x0 * sin(ang);
                }
            }
}

static void test_rope(void)
{
    const int B = 2, T = 7, H = 3, hd = 8, pos0 = 5;
    const size_t n = (size_t)B * T * H * hd;
    float *x = host_rand(n, -1, 1);
    float *dx = dev_from(x, n), *y = dev_zeros(n);
    double *ref = upc_malloc(n * sizeof(double));
    int posv[14];
    for (int i = 0; i < B * T; i++)
        posv[i] = pos0 + i % T;
    K->rope_fwd(K, dx, y, B, T, H, hd, pos0, NULL, 10000.0f);
    rope_ref(x, ref, B, T, H, hd, posv, 10000.0);
    expect_close("rope_fwd offset", y, ref, n, 2e-6, 1e-5);

    /* explicit positions, different per sequence, far along */
    int32_t pos[14];
    for (int i = 0; i < B * T; i++)
        posv[i] = pos[i] = (i / T) * 1000 + 3 * (i % T) + 11;
    int32_t *dpos = dev_ids(pos, (size_t)B * T);
    K->rope_fwd(K, dx, y, B, T, H, hd, 0, dpos, 500000.0f);
    rope_ref(x, ref, B, T, H, hd, posv, 500000.0);
    expect_close("rope_fwd positions", y, ref, n, 2e-4, 1e-4);
    /* bwd is the inverse rotation: in place round trip gives x back */
    K->rope_bwd(K, y, y, B, T, H, hd, 0, dpos, 500000.0f);
    for (size_t i = 0; i < n; i++)
        ref[i] = x[i];
    expect_close("rope fwd then bwd", y, ref, n, 1e-5, 1e-5);

    float *r = host_rand(n, -1, 1), *dr = dev_from(r, n), *g = dev_zeros(n);
    K->rope_bwd(K, dr, g, B, T, H, hd, pos0, NULL, 10000.0f);
    struct rope_ctx c = {dx, y, B, T, H, hd, pos0, r};
    expect_grad("rope_bwd dx", dx, n, g, rope_loss, &c, 1e-2, 1e-3);
    free(x), free(ref), free(r);
    K->free(K, dx), K->free(K, y), K->free(K, dpos), K->free(K, dr), K->free(K, g);
}

/* ---- attention --------------------------------------------------------------- */

struct attn_ctx {
    float *q, *k, *v, *out, *lse;
    int B, T, Hq, Hkv, hd;
    const float *r;
};

static double attn_loss(void *p)
{
    struct attn_ctx *c = p;
    K->attention_fwd(K, c->q, c->k, c->v, c->out, c->lse, c->B, c->T, c->Hq, c->Hkv, c->hd);
    return weighted_sum(c->out, c->r, (size_t)c->B * c->T * c->Hq * c->hd);
}

static void attn_ref(const float *q, const float *k, const float *v, double *out,
                     double *lse, int B, int T, int Hq, int Hkv, int hd)
{
    double *s = upc_malloc((size_t)T * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq; h++) {
            int hk = h / (Hq / Hkv);
            for (int t = 0; t < T; t++) {
                const float *qt = q + (((size_t)b * T + t) * Hq + h) * hd;
                double m = -INFINITY, l = 0.0;
                for (int j = 0; j <= t; j++) {
                    const float *kj = k + (((size_t)b * T + j) * Hkv + hk) * hd;
                    double d = 0.0;
                    for (int i = 0; i < hd; i++)
                        d += (double)qt[i] * kj[i];
                    s[j] = d / sqrt((double)hd);
                    if (s[j] > m)
                        m = s[j];
                }
                for (int j = 0; j <= t; j++)
                    l += exp(s[j] - m);
                double *o = out + (((size_t)b * T + t) * Hq + h) * hd;
                for (int i = 0; i < hd; i++) {
                    double a = 0.0;
                    for (int j = 0; j <= t; j++)
                        a += exp(s[j] - m) / l * v[(((size_t)b * T + j) * Hkv + hk) * hd + i];
                    o[i] = a;
                }
                lse[((size_t)b * Hq + h) * T + t] = m + log(l);
            }
        }
    free(s);
}

static void test_attention_shape(int B, int T, int Hq, int Hkv, int hd)
{
    size_t nq = (size_t)B * T * Hq * hd, nk = (size_t)B * T * Hkv * hd;
    float *q = host_rand(nq, -1.5, 1.5), *k = host_rand(nk, -1.5, 1.5), *v = host_rand(nk, -1, 1);
    float *dq = dev_from(q, nq), *dk = dev_from(k, nk), *dv = dev_from(v, nk);
    float *out = dev_zeros(nq), *lse = dev_zeros((size_t)B * Hq * T);
    double *ref = upc_malloc(nq * sizeof(double)), *lref = upc_malloc((size_t)B * Hq * T * sizeof(double));
    K->attention_fwd(K, dq, dk, dv, out, lse, B, T, Hq, Hkv, hd);
    attn_ref(q, k, v, ref, lref, B, T, Hq, Hkv, hd);
    char what[96];
    snprintf(what, sizeof what, "attention_fwd out B=%d T=%d Hq=%d Hkv=%d hd=%d", B, T, Hq, Hkv, hd);
    expect_close(what, out, ref, nq, 1e-5, 1e-4);
    snprintf(what, sizeof what, "attention_fwd lse Hq=%d Hkv=%d", Hq, Hkv);
    expect_close(what, lse, lref, (size_t)B * Hq * T, 1e-5, 1e-5);

    float *r = host_rand(nq, -1, 1), *dr = dev_from(r, nq);
    float *gq = dev_zeros(nq), *gk = dev_rand(nk, 5, 6), *gv = dev_rand(nk, 5, 6);
    K->attention_bwd(K, dq, dk, dv, out, lse, dr, gq, gk, gv, B, T, Hq, Hkv, hd);
    struct attn_ctx c = {dq, dk, dv, out, lse, B, T, Hq, Hkv, hd, r};
    snprintf(what, sizeof what, "attention_bwd dq Hq=%d Hkv=%d", Hq, Hkv);
    expect_grad(what, dq, nq, gq, attn_loss, &c, 1e-2, 1e-2);
    snprintf(what, sizeof what, "attention_bwd dk Hq=%d Hkv=%d", Hq, Hkv);
    expect_grad(what, dk, nk, gk, attn_loss, &c, 1e-2, 1e-2);
    snprintf(what, sizeof what, "attention_bwd dv Hq=%d Hkv=%d", Hq, Hkv);
    expect_grad(what, dv, nk, gv, attn_loss, &c, 1e-2, 1e-2);
    free(q), free(k), free(v), free(ref), free(lref), free(r);
    K->free(K, dq), K->free(K, dk), K->free(K, dv), K->free(K, out), K->free(K, lse);
    K->free(K, dr), K->free(K, gq), K->free(K, gk), K->free(K, gv);
}

/* Attention through GEMMs (attention_gemm.h): on the fp32 table it is the
 * fused kernels' attention up to rounding (forward against the naive
 * reference, backward against attention_bwd, itself checked by finite
 * differences above); on the bf16 table, within bf16's rounding of them. */
static void test_attention_gemm_shape(int B, int T, int Hq, int Hkv, int hd)
{
    size_t nq = (size_t)B * T * Hq * hd, nk = (size_t)B * T * Hkv * hd, nl = (size_t)B * Hq * T;
    float *q = host_rand(nq, -1.5, 1.5), *k = host_rand(nk, -1.5, 1.5), *v = host_rand(nk, -1, 1);
    float *r = host_rand(nq, -1, 1);
    float *dq = dev_from(q, nq), *dk = dev_from(k, nk), *dv = dev_from(v, nk), *dr = dev_from(r, nq);
    double *ref = upc_malloc(nq * sizeof(double)), *lref = upc_malloc(nl * sizeof(double));
    attn_ref(q, k, v, ref, lref, B, T, Hq, Hkv, hd);
    /* the fused backward, the reference for the gradients */
    float *out = dev_zeros(nq), *lse = dev_zeros(nl);
    float *gq = dev_zeros(nq), *gk = dev_zeros(nk), *gv = dev_zeros(nk);
    K->attention_fwd(K, dq, dk, dv, out, lse, B, T, Hq, Hkv, hd);
    K->attention_bwd(K, dq, dk, dv, out, lse, dr, gq, gk, gv, B, T, Hq, Hkv, hd);
    double *rq = upc_malloc(nq * sizeof(double)), *rk = upc_malloc(nk * sizeof(double)), *rv = upc_malloc(nk * sizeof(double));
    for (size_t i = 0; i < nq; i++)
        rq[i] = gq[i];
    for (size_t i = 0; i < nk; i++)
        rk[i] = gk[i], rv[i] = gv[i];
    float *scratch = dev_zeros(attention_gemm_scratch_floats(B, T, Hq));
    const upc_kernels *tables[2] = {kernels_cpu(), kernels_cpu_bf16()};
    for (int t = 0; t < 2; t++) {
        const upc_kernels *A = tables[t];
        /* fp32: rounding only; bf16: operands rounded to 8 bits (2^-8 relative) */
        double atol = t ? 1e-2 : 1e-5, rtol = t ? 1e-2 : 1e-4;
        float *o2 = dev_rand(nq, 5, 6), *l2 = dev_rand(nl, 5, 6);
        float *q2 = dev_rand(nq, 5, 6), *k2 = dev_rand(nk, 5, 6), *v2 = dev_rand(nk, 5, 6);
        attention_gemm_fwd(A, dq, dk, dv, o2, l2, scratch, B, T, Hq, Hkv, hd);
        attention_gemm_bwd(A, dq, dk, dv, dr, q2, k2, v2, scratch, B, T, Hq, Hkv, hd);
        char what[112];
        snprintf(what, sizeof what, "attention_gemm %s out B=%d T=%d Hq=%d Hkv=%d hd=%d", A->precision, B, T, Hq, Hkv, hd);
        expect_close(what, o2, ref, nq, atol, rtol);
        snprintf(what, sizeof what, "attention_gemm %s lse", A->precision);
        expect_close(what, l2, lref, nl, atol, rtol);
        snprintf(what, sizeof what, "attention_gemm %s dq (vs attention_bwd)", A->precision);
        expect_close(what, q2, rq, nq, 3 * atol, 3 * rtol);
        snprintf(what, sizeof what, "attention_gemm %s dk (vs attention_bwd)", A->precision);
        expect_close(what, k2, rk, nk, 3 * atol, 3 * rtol);
        snprintf(what, sizeof what, "attention_gemm %s dv (vs attention_bwd)", A->precision);
        expect_close(what, v2, rv, nk, 3 * atol, 3 * rtol);
        K->free(K, o2), K->free(K, l2), K->free(K, q2), K->free(K, k2), K->free(K, v2);
    }
    free(q), free(k), free(v), free(r), free(ref), free(lref), free(rq), free(rk), free(rv);
    K->free(K, dq), K->free(K, dk), K->free(K, dv), K->free(K, dr), K->free(K, out), K->free(K, lse);
    K->free(K, gq), K->free(K, gk), K->free(K, gv), K->free(K, scratch);
}

static void test_attention(void)
{
    test_attention_gemm_shape(2, 7, 4, 2, 8);   /* GQA */
    test_attention_gemm_shape(1, 9, 3, 3, 6);   /* MHA */
    test_attention_gemm_shape(2, 33, 6, 2, 16); /* groups of 3 */
    test_attention_shape(2, 7, 4, 2, 8);  /* GQA */
    test_attention_shape(1, 9, 3, 3, 6);  /* MHA */
    test_attention_shape(2, 5, 4, 1, 4);  /* MQA */
    test_attention_shape(1, 150, 2, 1, 2); /* two query blocks, the second partial */
}

/* ---- SwiGLU ------------------------------------------------------------------ */

struct glu_ctx {
    float *g, *u, *out;
    size_t n;
    const float *r;
};

static double glu_loss(void *p)
{
    struct glu_ctx *c = p;
    K->swiglu_fwd(K, c->g, c->u, c->out, c->n);
    return weighted_sum(c->out, c->r, c->n);
}

static void test_swiglu(void)
{
    const size_t n = 7 * 24;
    float *g = host_rand(n, -4, 4), *u = host_rand(n, -2, 2);
    float *dg = dev_from(g, n), *du = dev_from(u, n), *out = dev_zeros(n);
    double *ref = upc_malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        ref[i] = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
    K->swiglu_fwd(K, dg, du, out, n);
    expect_close("swiglu_fwd", out, ref, n, 1e-6, 1e-5);
    float *r = host_rand(n, -1, 1), *dr = dev_from(r, n), *gg = dev_zeros(n), *gu = dev_zeros(n);
    K->swiglu_bwd(K, dg, du, dr, gg, gu, n);
    struct glu_ctx c = {dg, du, out, n, r};
    expect_grad("swiglu_bwd dgate", dg, n, gg, glu_loss, &c, 1e-2, 1e-2);
    expect_grad("swiglu_bwd dup", du, n, gu, glu_loss, &c, 1e-2, 1e-2);
    free(g), free(u), free(ref), free(r);
    K->free(K, dg), K->free(K, du), K->free(K, out), K->free(K, dr), K->free(K, gg), K->free(K, gu);
}

/* The CPU's exponentials go through a vector expf a group at a time
 * (kernels_cpu_expf.c); an element must get the same bits wherever it sits,
 * or the upcycling identity and the thread-count independence would break:
 * SwiGLU of every slice of 19 inputs equals the same elements of the
 * full-length run, bit for bit, and the cross-entropy of a row is the same
 * alone and among others. */
static void test_exp_position(void)
{
    enum { N = 19 };
    float *g = host_rand(N, -8, 8), *u = host_rand(N, -2, 2), full[N], part[N];
    K->swiglu_fwd(K, g, u, full, N);
    int moved = 0;
    for (int n = 1; n <= N; n++)
        for (int off = 0; off + n <= N; off++) {
            K->swiglu_fwd(K, g + off, u + off, part, (size_t)n);
            moved += memcmp(part, full + off, (size_t)n * sizeof *part) != 0;
        }
    CHECK_MSG(moved == 0, "swiglu_fwd: %d slices gave other bits than the full run", moved);
    float dgf[N], duf[N], dgp[N], dup[N];
    K->swiglu_bwd(K, g, u, u, dgf, duf, N);
    K->swiglu_bwd(K, g + 3, u + 3, u + 3, dgp, dup, 5);
    CHECK_MSG(memcmp(dgp, dgf + 3, 5 * sizeof *dgp) == 0 && memcmp(dup, duf + 3, 5 * sizeof *dup) == 0,
              "swiglu_bwd: a slice gave other bits than the full run");
    /* rows of 11 logits: row 2 alone against row 2 of three */
    float *logits = host_rand(3 * 11, -6, 6), loss3[3], lse3[3], loss1, lse1;
    int32_t targets[3] = {4, 0, 10};
    K->cross_entropy_fwd(K, logits, targets, loss3, lse3, 3, 11);
    K->cross_entropy_fwd(K, logits + 22, targets + 2, &loss1, &lse1, 1, 11);
    CHECK_MSG(memcmp(&lse1, &lse3[2], sizeof lse1) == 0 && memcmp(&loss1, &loss3[2], sizeof loss1) == 0,
              "cross_entropy_fwd: a row alone gave other bits");
    free(g), free(u), free(logits);
}

/* Router jitter: factors in [1 - eps, 1 + eps) with the uniform's mean and
 * spread, the same for the same key (so the backward draws the forward's),
 * others for another key, and no change at eps 0. */
static void test_jitter(void)
{
    const size_t n = 100000;     /* above CPU_PARALLEL_MIN: the threaded loop */
    const float eps = 0.25f;
    float *ones = upc_malloc(n * sizeof *ones);
    for (size_t i = 0; i < n; i++)
        ones[i] = 1.0f;
    float *a = dev_from(ones, n), *b = dev_from(ones, n), *c = dev_from(ones, n), *z = dev_from(ones, n);
    K->jitter_scale(K, a, n, eps, 42);
    K->jitter_scale(K, b, n, eps, 42);
    K->jitter_scale(K, c, n, eps, 43);
    K->jitter_scale(K, z, n, 0.0f, 42);
    float *ha = host_of(a, n), *hb = host_of(b, n), *hc = host_of(c, n), *hz = host_of(z, n);
    double sum = 0, sq = 0, lo = 2, hi = 0;
    size_t same_c = 0;
    for (size_t i = 0; i < n; i++) {
        sum += ha[i];
        sq += (ha[i] - 1.0) * (ha[i] - 1.0);
        lo = fmin(lo, ha[i]);
        hi = fmax(hi, ha[i]);
        same_c += ha[i] == hc[i];
    }
    double mean = sum / n, var = sq / n, want_var = (double)eps * eps / 3.0;
    CHECK_MSG(lo >= 1.0 - eps && hi < 1.0 + eps && lo < 1.0 - 0.99 * eps && hi > 1.0 + 0.99 * eps,
              "jitter factors span [%.6f, %.6f], expected [0.75, 1.25)", lo, hi);
    CHECK_MSG(fabs(mean - 1.0) < 0.005 * eps * 4 && fabs(var / want_var - 1.0) < 0.02,
              "jitter factors: mean %.6f (want 1), variance %.6g (want %.6g)", mean, var, want_var);
    CHECK_MSG(memcmp(ha, hb, n * sizeof *ha) == 0, "jitter with the same key differs");
    CHECK_MSG(same_c < n / 1000, "jitter with keys 42 and 43 agrees on %zu of %zu elements", same_c, n);
    CHECK_MSG(memcmp(hz, ones, n * sizeof *hz) == 0, "jitter with eps 0 changed the tensor");
    /* the factor of element i depends on (key, i) only: a prefix gets the same */
    float *p = dev_from(ones, 1000);
    K->jitter_scale(K, p, 1000, eps, 42);
    float *hp = host_of(p, 1000);
    CHECK_MSG(memcmp(hp, ha, 1000 * sizeof *hp) == 0, "jitter of a prefix differs from the whole tensor's");
    free(ones), free(ha), free(hb), free(hc), free(hz), free(hp);
    K->free(K, a), K->free(K, b), K->free(K, c), K->free(K, z), K->free(K, p);
}

/* ---- cross-entropy --------------------------------------------------------------- */

struct ce_ctx {
    float *logits, *loss;
    const int32_t *targets;
    int rows, V;
    float scale;
};

static double ce_loss(void *p)
{
    struct ce_ctx *c = p;
    K->cross_entropy_fwd(K, c->logits, c->targets, c->loss, NULL, c->rows, c->V);
    float *l = host_of(c->loss, c->rows);
    double s = 0.0;
    for (int i = 0; i < c->rows; i++)
        s += l[i];
    free(l);
    return s * c->scale;
}

static void test_cross_entropy(void)
{
    const int rows = 7, V = 37;
    const size_t n = (size_t)rows * V;
    int32_t t[7] = {0, 36, -1, 5, 5, 17, -1};
    float *x = host_rand(n, -4, 4);
    x[3 * V + 5] = 40.0f; /* a confident row: exp must not overflow */
    int32_t *dt = dev_ids(t, rows);
    float *dx = dev_from(x, n), *loss = dev_zeros(rows), *lse = dev_zeros(rows);
    K->cross_entropy_fwd(K, dx, dt, loss, lse, rows, V);
    double ref[7], lref[7];
    for (int i = 0; i < rows; i++) {
        double m = -INFINITY, l = 0.0;
        for (int j = 0; j < V; j++)
            m = fmax(m, x[i * V + j]);
        for (int j = 0; j < V; j++)
            l += exp(x[i * V + j] - m);
        lref[i] = m + log(l);
        ref[i] = t[i] < 0 ? 0.0 : lref[i] - x[i * V + t[i]];
    }
    expect_close("cross_entropy_fwd loss", loss, ref, rows, 1e-5, 1e-5);
    expect_close("cross_entropy_fwd lse", lse, lref, rows, 1e-5, 1e-6);

    const float scale = 0.7f;
    float *g = dev_zeros(n);
    K->cross_entropy_bwd(K, dx, dt, lse, g, rows, V, scale);
    struct ce_ctx c = {dx, loss, dt, rows, V, scale};
    expect_grad("cross_entropy_bwd dlogits", dx, n, g, ce_loss, &c, 1e-2, 1e-2);
    float *gh = host_of(g, n);
    double zero = 0.0;
    for (int j = 0; j < V; j++)
        zero += fabs(gh[2 * V + j]) + fabs(gh[6 * V + j]);
    CHECK_MSG(zero == 0.0, "cross_entropy_bwd: ignored rows have a gradient");
    /* without lse, and in place over the logits: same values */
    float *inplace = dev_from(x, n);
    K->cross_entropy_bwd(K, inplace, dt, NULL, inplace, rows, V, scale);
    double *gref = upc_malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        gref[i] = gh[i];
    expect_close("cross_entropy_bwd in place", inplace, gref, n, 1e-7, 1e-5);
    free(x), free(gh), free(gref);
    K->free(K, dt), K->free(K, dx), K->free(K, loss), K->free(K, lse), K->free(K, g);
    K->free(K, inplace);
}

/* ---- shared per-element math --------------------------------------------------- */

static void test_math(void)
{
    float xs[9] = {0.5f, -3.0f, 2.0f, 7.5f, -1.0f, 7.5f, 0.0f, -20.0f, 3.25f};
    double m = -INFINITY, l = 0.0;
    for (int i = 0; i < 9; i++)
        m = fmax(m, xs[i]);
    for (int i = 0; i < 9; i++)
        l += exp(xs[i] - m);
    double want = m + log(l);
    float om = -INFINITY, ol = 0.0f;
    for (int i = 0; i < 9; i++)
        upc_softmax_step(&om, &ol, xs[i]);
    CHECK_MSG(fabs(om + log(ol) - want) < 1e-5, "online softmax step: lse %g want %g",
          om + log(ol), want);
    float am = -INFINITY, al = 0.0f, bm = -INFINITY, bl = 0.0f;
    for (int i = 0; i < 4; i++)
        upc_softmax_step(&am, &al, xs[i]);
    for (int i = 4; i < 9; i++)
        upc_softmax_step(&bm, &bl, xs[i]);
    upc_softmax_merge(&am, &al, bm, bl);
    CHECK_MSG(fabs(am + log(al) - want) < 1e-5, "online softmax merge: lse %g want %g",
          am + log(al), want);
    /* -inf (a masked logit) adds nothing, also as the first value */
    float im = -INFINITY, il = 0.0f;
    upc_softmax_step(&im, &il, -INFINITY);
    upc_softmax_step(&im, &il, 2.0f);
    upc_softmax_step(&im, &il, -INFINITY);
    CHECK_MSG(im == 2.0f && il == 1.0f, "online softmax with -inf: m %g l %g, want 2 and 1", im, il);
    for (double x = -6; x <= 6; x += 0.75) {
        double h = 1e-3, num = (upc_silu((float)(x + h)) - upc_silu((float)(x - h))) / (2 * h);
        CHECK_MSG(fabs(num - upc_silu_grad((float)x)) < 1e-3, "silu_grad at %g: %g vs %g", x,
              (double)upc_silu_grad((float)x), num);
    }
    CHECK_MSG(upc_rope_inv_freq(0, 8, 10000.0f) == 1.0f, "rope inv_freq(0) is not 1");
    CHECK_MSG(fabs(upc_rope_inv_freq(2, 8, 10000.0f) - 0.01) < 1e-8, "rope inv_freq(2, hd 8) is not 0.01");
}

/* ---- optimizers --------------------------------------------------------------- */

static void test_optim(void)
{
    /* (1 - beta2 in fp32 is off by 1.3e-5 relative, hence v's tolerance.)
     * AdamW by hand: p=1, g=0.5, lr=0.1, wd=0.01, b1=0.9, b2=0.999, eps=1e-8.
     * Step 1: p = 1*(1-0.001) - 0.1 * 0.5/(0.5+1e-8) = 0.899; m = 0.05,
     * v = 0.00025. Step 2, g = -0.25: m = 0.02, v = 0.00031225,
     * p = 0.899*0.999 - 0.1*(0.02/0.19)/(sqrt(0.00031225/0.001999)+1e-8)
     *   = 0.871467...; */
    upc_optim_params hp = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                           .weight_decay = 0.01f, .grad_scale = 1.0f};
    float one = 1.0f, g1 = 0.5f, g2 = -0.25f;
    float *p = dev_from(&one, 1), *m = dev_zeros(1), *v = dev_zeros(1), *g = dev_from(&g1, 1);
    upc_optim_params_at(&hp, 1);
    K->adamw_step(K, p, g, m, v, 1, hp);
    double want_p1 = 0.899, want_m1 = 0.05, want_v1 = 0.00025;
    expect_close("adamw step 1 p", p, &want_p1, 1, 1e-7, 1e-6);
    expect_close("adamw step 1 m", m, &want_m1, 1, 0, 1e-6);
    expect_close("adamw step 1 v", v, &want_v1, 1, 0, 5e-5);
    K->upload(K, g, &g2, sizeof g2);
    upc_optim_params_at(&hp, 2);
    K->adamw_step(K, p, g, m, v, 1, hp);
    double want_p2 = 0.899 * 0.999 - 0.1 * (0.02 / 0.19) / (sqrt(0.00031225 / 0.001999) + 1e-8);
    double want_m2 = 0.02, want_v2 = 0.00031225;
    expect_close("adamw step 2 p", p, &want_p2, 1, 1e-7, 1e-6);
    expect_close("adamw step 2 m", m, &want_m2, 1, 0, 1e-5);
    expect_close("adamw step 2 v", v, &want_v2, 1, 0, 5e-5);
    CHECK_MSG(fabs(want_p2 - 0.871467) < 1e-5, "adamw hand value drifted: %.7f", want_p2);

    /* no decay, grad_scale halves the gradient: p=2, g=4 -> g_eff=2,
     * step 1: p = 2 - 0.1 * 2/(2+1e-8) = 1.9 */
    float two = 2.0f, four = 4.0f;
    float *p2 = dev_from(&two, 1), *m2 = dev_zeros(1), *v2 = dev_zeros(1), *gg = dev_from(&four, 1);
    upc_optim_params hp2 = hp;
    hp2.weight_decay = 0.0f;
    hp2.grad_scale = 0.5f;
    upc_optim_params_at(&hp2, 1);
    K->adamw_step(K, p2, gg, m2, v2, 1, hp2);
    double want = 1.9;
    expect_close("adamw no decay, grad_scale", p2, &want, 1, 1e-7, 1e-6);

    /* Lion by hand: p=1, m=0.2, g=-0.5, b1=0.9, b2=0.99, lr=0.01, wd=0.1:
     * c = 0.18 - 0.05 = 0.13 > 0 -> p = 0.999 - 0.01 = 0.989; m = 0.198 - 0.005.
     * Second element: m = 0, g = 0 -> c = 0, sign 0: only the decay. */
    upc_optim_params lp = {.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.99f,
                           .weight_decay = 0.1f, .grad_scale = 1.0f};
    float lp0[2] = {1.0f, 3.0f}, lm0[2] = {0.2f, 0.0f}, lg0[2] = {-0.5f, 0.0f};
    float *lpd = dev_from(lp0, 2), *lmd = dev_from(lm0, 2), *lgd = dev_from(lg0, 2);
    K->lion_step(K, lpd, lgd, lmd, 2, lp);
    double lwant_p[2] = {0.989, 3.0 * 0.999}, lwant_m[2] = {0.193, 0.0};
    expect_close("lion p", lpd, lwant_p, 2, 1e-7, 1e-6);
    expect_close("lion m", lmd, lwant_m, 2, 1e-8, 1e-6);

    K->free(K, p), K->free(K, m), K->free(K, v), K->free(K, g);
    K->free(K, p2), K->free(K, m2), K->free(K, v2), K->free(K, gg);
    K->free(K, lpd), K->free(K, lmd), K->free(K, lgd);
}

/* ---- reductions and elementwise ---------------------------------------------------- */

static void test_elementwise(void)
{
    const size_t n = 10007; /* several sum blocks, a ragged end */
    float *x = host_rand(n, -1, 1), *y = host_rand(n, -1, 1);
    float *dx = dev_from(x, n), *dy = dev_from(y, n), *out = dev_zeros(n), *s = dev_zeros(1);
    double sum = 0, sumsq = 0, *ref = upc_malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        sum += x[i], sumsq += (double)x[i] * x[i];
    K->sum(K, dx, n, s);
    expect_close("sum", s, &sum, 1, 1e-6, 1e-6);
    K->sumsq(K, dx, n, s);
    expect_close("sumsq", s, &sumsq, 1, 1e-6, 1e-6);
    K->add(K, out, dx, dy, n);
    for (size_t i = 0; i < n; i++)
        ref[i] = (double)x[i] + y[i];
    expect_close("add", out, ref, n, 1e-7, 1e-6);
    K->axpy(K, out, dx, n, -2.0f);
    for (size_t i = 0; i < n; i++)
        ref[i] = (float)((float)x[i] + y[i]) - 2.0 * x[i];
    expect_close("axpy", out, ref, n, 1e-6, 1e-6);
    K->scale(K, dy, n, 3.0f);
    for (size_t i = 0; i < n; i++)
        ref[i] = 3.0 * y[i];
    expect_close("scale", dy, ref, n, 1e-7, 1e-6);
    K->fill(K, dy, n, -0.5f);
    for (size_t i = 0; i < n; i++)
        ref[i] = -0.5;
    expect_close("fill", dy, ref, n, 0, 0);
    K->copy(K, out, dx, n * sizeof(float));
    expect_same_bits("copy", out, dx, n * sizeof(float));
    K->sum(K, dx, 0, s);
    double zero = 0.0;
    expect_close("sum of nothing", s, &zero, 1, 0, 0);
    free(x), free(y), free(ref);
    K->free(K, dx), K->free(K, dy), K->free(K, out), K->free(K, s);
}

/* ---- determinism ------------------------------------------------------------------- */

/* Everything a training step's dense part computes, into one buffer set. */
struct det_run {
    float *out, *lse, *gq, *gk, *gv, *gx, *gw, *gemb, *ss;
};

static void det_step(struct det_run *d, float *q, float *k, float *v, float *dout,
                     float *x, float *w, float *rstd, int32_t *ids)
{
    const int B = 2, T = 160, Hq = 4, Hkv = 2, hd = 16, rows = B * T, D = Hq * hd, V = 37;
    K->attention_fwd(K, q, k, v, d->out, d->lse, B, T, Hq, Hkv, hd);
    K->attention_bwd(K, q, k, v, d->out, d->lse, dout, d->gq, d->gk, d->gv, B, T, Hq, Hkv, hd);
    K->rmsnorm_fwd(K, x, w, d->out, rstd, rows, D, 1e-6f);
    K->rmsnorm_bwd(K, dout, x, w, rstd, d->gx, d->gw, rows, D);
    K->embedding_bwd(K, ids, rows, dout, V, D, d->gemb);
    K->sumsq(K, d->gq, (size_t)rows * D, d->ss);
}

static void test_determinism(void)
{
    const int B = 2, T = 160, Hq = 4, Hkv = 2, hd = 16, rows = B * T, D = Hq * hd, V = 37;
    size_t nq = (size_t)rows * D, nk = (size_t)rows * Hkv * hd;
    float *q = dev_rand(nq, -1, 1), *k = dev_rand(nk, -1, 1), *v = dev_rand(nk, -1, 1);
    float *dout = dev_rand(nq, -1, 1), *x = dev_rand(nq, -1, 1), *w = dev_rand(D, 0, 2);
    float *rstd = dev_zeros(rows);
    int32_t hid[2 * 160];
    for (int i = 0; i < rows; i++)
        hid[i] = (int32_t)(upc_splitmix64(&rng_state) % 5); /* many repeats */
    int32_t *ids = dev_ids(hid, rows);
    struct det_run r[3];
    int threads[3] = {2, 2, 1};
    for (int i = 0; i < 3; i++) {
        r[i] = (struct det_run){dev_zeros(nq), dev_zeros((size_t)B * Hq * T), dev_zeros(nq),
                                dev_zeros(nk), dev_zeros(nk), dev_zeros(nq), dev_zeros(D),
                                dev_zeros((size_t)V * D), dev_zeros(1)};
        omp_set_num_threads(threads[i]);
        det_step(&r[i], q, k, v, dout, x, w, rstd, ids);
    }
    omp_set_num_threads(2);
    /* same thread count: same bits; and these kernels promise the same bits
     * for any thread count */
    for (int i = 1; i < 3; i++) {
        expect_same_bits(i == 1 ? "determinism: attention out" : "thread count: attention out",
                         r[0].out, r[i].out, nq * sizeof(float));
        expect_same_bits("determinism: attention lse", r[0].lse, r[i].lse, (size_t)B * Hq * T * 4);
        expect_same_bits("determinism: attention dq", r[0].gq, r[i].gq, nq * sizeof(float));
        expect_same_bits("determinism: attention dk", r[0].gk, r[i].gk, nk * sizeof(float));
        expect_same_bits("determinism: attention dv", r[0].gv, r[i].gv, nk * sizeof(float));
        expect_same_bits("determinism: rmsnorm dx", r[0].gx, r[i].gx, nq * sizeof(float));
        expect_same_bits("determinism: rmsnorm dw", r[0].gw, r[i].gw, D * sizeof(float));
        expect_same_bits("determinism: embedding dtable", r[0].gemb, r[i].gemb, (size_t)V * D * 4);
        expect_same_bits("determinism: sumsq", r[0].ss, r[i].ss, sizeof(float));
    }
    for (int i = 0; i < 3; i++) {
        float **f = (float **)&r[i];
        for (size_t j = 0; j < sizeof r[i] / sizeof(float *); j++)
            K->free(K, f[j]);
    }
    K->free(K, q), K->free(K, k), K->free(K, v), K->free(K, dout), K->free(K, x);
    K->free(K, w), K->free(K, rstd), K->free(K, ids);
}

int main(void)
{
    upc_init("test_kernels");
    K = kernels_cpu();
    omp_set_num_threads(2);
    test_math();
    test_gemm();
    K = kernels_cpu_bf16();
    round_inputs = true;
    test_gemm();
    K = kernels_cpu();
    round_inputs = false;
    test_bf16();
    test_bf16_weights();
    test_embedding();
    test_rmsnorm();
    test_rope();
    test_attention();
    test_swiglu();
    test_exp_position();
    test_jitter();
    test_cross_entropy();
    test_optim();
    test_elementwise();
    test_determinism();
    return finish("test_kernels");
}
