/* kernels_cpu_attention.c: causal self-attention with grouped KV heads on the
 * CPU, as blocks of SGEMM: for each (batch, query head) and each block of
 * query rows [t0, t1), the scores against keys [0, t1) are one product, the
 * causal softmax runs row by row (exact, two passes, sums in double), and
 * the output is a second product (the exponentials a row at a time through
 * the vector expf); the backward recomputes the scores from
 * the saved logsumexp and uses four products. The block stops at t1, so
 * about half of the masked upper triangle is never computed. OpenBLAS
 * threads each product, OpenMP the row-wise softmax; neither splits a sum,
 * so the bits do not depend on the thread count. */
#include "kernels_cpu.h"
#include "kernels_math.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

static void check_shape(const char *kernel, int B, int T, int Hq, int Hkv, int hd)
{
    CPU_REQUIRE(B >= 0 && T >= 0 && Hq > 0 && Hkv > 0 && hd > 0, kernel, "bad size");
    CPU_REQUIRE(Hq % Hkv == 0, kernel, "query heads not a multiple of KV heads");
}

/* C[m][n] = alpha op(A) op(B) + beta C, row-major, plain BLAS. */
static void mm(int ta, int tb, int m, int n, int k, float alpha, const float *A, size_t lda,
               const float *B, size_t ldb, float beta, float *C, size_t ldc)
{
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k,
                alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

/* x[0..n) becomes softmax(x) (n >= 1); returns logsumexp(x). The exponentials
 * in one vector pass (kernels_cpu_expf.c), the sum in double. */
static float softmax_row_inplace(float *x, int n)
{
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int j = 0; j < n; j++)
        m = x[j] > m ? x[j] : m;
    for (int j = 0; j < n; j++)
        x[j] -= m;
    cpu_expf_inplace(x, (size_t)n);
    double l = 0.0;
#pragma omp simd reduction(+ : l)
    for (int j = 0; j < n; j++)
        l += x[j];
    float inv = (float)(1.0 / l);
    for (int j = 0; j < n; j++)
        x[j] *= inv;
    return m + (float)log(l);
}

void cpu_attention_causal_head(const float *q, size_t qs, const float *k, const float *v, size_t ks, int pos0,
                               int rows, int hd, float scale, float *out, float *lse, float *S)
{
    for (int t0 = 0; t0 < rows; t0 += CPU_ATTENTION_ROWS) {
        int t1 = t0 + CPU_ATTENTION_ROWS < rows ? t0 + CPU_ATTENTION_ROWS : rows, nr = t1 - t0;
        int keys = pos0 + t1;
        mm(0, 1, nr, keys, hd, scale, q + (size_t)t0 * qs, qs, k, ks, 0.0f, S, (size_t)keys);
#pragma omp parallel for schedule(static)
        for (int r = 0; r < nr; r++) {
            float *s = S + (size_t)r * keys;
            int last = pos0 + t0 + r;   /* keys 0..last are visible */
            float l = softmax_row_inplace(s, last + 1);
            memset(s + last + 1, 0, (size_t)(keys - last - 1) * sizeof(float));
            if (lse)
                lse[t0 + r] = l;
        }
        mm(0, 0, nr, hd, keys, 1.0f, S, (size_t)keys, v, ks, 0.0f, out + (size_t)t0 * qs, qs);
    }
}

void cpu_attention_fwd(const upc_kernels *K, const float *q, const float *k,
                       const float *v, float *out, float *lse, int B, int T,
                       int Hq, int Hkv, int hd)
{
    check_shape("attention_fwd", B, T, Hq, Hkv, hd);
    if (B == 0 || T == 0)
        return;
    const int group = Hq / Hkv;
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t qs = (size_t)Hq * hd, ks = (size_t)Hkv * hd; /* token strides */
    float *S = upc_malloc((size_t)CPU_ATTENTION_ROWS * T * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq; h++) {
            const float *kb = k + (size_t)b * T * ks + (size_t)(h / group) * hd;
            const float *vb = v + (size_t)b * T * ks + (size_t)(h / group) * hd;
            cpu_attention_causal_head(q + (size_t)b * T * qs + (size_t)h * hd, qs, kb, vb, ks, 0, T, hd, scale,
                                      out + (size_t)b * T * qs + (size_t)h * hd, lse + ((size_t)b * Hq + h) * T, S);
        }
    free(S);
}

void cpu_attention_bwd(const upc_kernels *K, const float *q, const float *k,
                       const float *v, const float *out, const float *lse,
                       const float *dout, float *dq, float *dk, float *dv,
                       int B, int T, int Hq, int Hkv, int hd)
{
    check_shape("attention_bwd", B, T, Hq, Hkv, hd);
    if (B == 0 || T == 0)
        return;
    const int group = Hq / Hkv;
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t qs = (size_t)Hq * hd, ks = (size_t)Hkv * hd;
    float *P = upc_malloc((size_t)CPU_ATTENTION_ROWS * T * sizeof(float));
    float *dS = upc_malloc((size_t)CPU_ATTENTION_ROWS * T * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int hk = 0; hk < Hkv; hk++)
            for (int j = 0; j < T; j++) {
                memset(dk + ((size_t)b * T + j) * ks + (size_t)hk * hd, 0, (size_t)hd * sizeof(float));
                memset(dv + ((size_t)b * T + j) * ks + (size_t)hk * hd, 0, (size_t)hd * sizeof(float));
            }
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq; h++) {
            size_t kv_off = (size_t)b * T * ks + (size_t)(h / group) * hd;
            const float *kb = k + kv_off, *vb = v + kv_off;
            float *dkb = dk + kv_off, *dvb = dv + kv_off;
            for (int t0 = 0; t0 < T; t0 += CPU_ATTENTION_ROWS) {
                int t1 = t0 + CPU_ATTENTION_ROWS < T ? t0 + CPU_ATTENTION_ROWS : T, rows = t1 - t0;
                size_t row0 = ((size_t)b * T + t0) * qs + (size_t)h * hd;
                const float *qb = q + row0, *ob = out + row0, *dob = dout + row0;
                const float *lb = lse + ((size_t)b * Hq + h) * T + t0;
                mm(0, 1, rows, t1, hd, scale, qb, qs, kb, ks, 0.0f, P, (size_t)t1);
                mm(0, 1, rows, t1, hd, 1.0f, dob, qs, vb, ks, 0.0f, dS, (size_t)t1);
#pragma omp parallel for schedule(static)
                for (int r = 0; r < rows; r++) {
                    float *p = P + (size_t)r * t1, *ds = dS + (size_t)r * t1;
                    const float *o = ob + (size_t)r * qs, *g = dob + (size_t)r * qs;
                    float Dr = 0.0f;
                    for (int i = 0; i < hd; i++)
                        Dr += g[i] * o[i];
                    int last = t0 + r;
                    for (int j = 0; j <= last; j++)
                        p[j] -= lb[r];
                    cpu_expf_inplace(p, (size_t)last + 1);
                    for (int j = 0; j <= last; j++)
                        ds[j] = p[j] * (ds[j] - Dr) * scale;
                    size_t rest = (size_t)(t1 - last - 1) * sizeof(float);
                    memset(p + last + 1, 0, rest);
                    memset(ds + last + 1, 0, rest);
                }
                mm(0, 0, rows, hd, t1, 1.0f, dS, (size_t)t1, kb, ks, 0.0f, dq + row0, qs);
                mm(1, 0, t1, hd, rows, 1.0f, dS, (size_t)t1, qb, qs, 1.0f, dkb, ks);
                mm(1, 0, t1, hd, rows, 1.0f, P, (size_t)t1, dob, qs, 1.0f, dvb, ks);
            }
        }
    free(dS);
    free(P);
}

/* ---- score-matrix rows (attention through GEMMs) ---------------------------- */

void cpu_attn_softmax_fwd(const upc_kernels *K, float *S, float *lse, int n, int T)
{
    CPU_REQUIRE(n >= 0 && T >= 0, "attn_softmax_fwd", "negative size");
    size_t rows = (size_t)n * T;
#pragma omp parallel for schedule(static) if (rows * T >= CPU_PARALLEL_MIN)
    for (size_t r = 0; r < rows; r++) {
        int i = (int)(r % (size_t)T);
        float *x = S + r * T;
        lse[r] = softmax_row_inplace(x, i + 1);
        memset(x + i + 1, 0, (size_t)(T - i - 1) * sizeof(float));
    }
}

void cpu_attn_softmax_bwd(const upc_kernels *K, const float *P, float *dP, int n, int T, float scale)
{
    CPU_REQUIRE(n >= 0 && T >= 0, "attn_softmax_bwd", "negative size");
    size_t rows = (size_t)n * T;
#pragma omp parallel for schedule(static) if (rows * T >= CPU_PARALLEL_MIN)
    for (size_t r = 0; r < rows; r++) {
        int i = (int)(r % (size_t)T);
        const float *p = P + r * T;
        float *g = dP + r * T;
        double dot = 0.0;
        for (int j = 0; j <= i; j++)
            dot += (double)p[j] * g[j];
        for (int j = 0; j <= i; j++)
            g[j] = scale * upc_softmax_bwd_elem(p[j], g[j], (float)dot);
        memset(g + i + 1, 0, (size_t)(T - i - 1) * sizeof(float));
    }
}
