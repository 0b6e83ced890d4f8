/* bench/gemm.c: SGEMM throughput of the CPU kernel backend on a square
 * baseline and on the shapes a Llama/MoE layer runs, as GFLOP/s and as a
 * ratio to the square baseline measured in the same run (medians of 5).
 * Built and run by bench/gemm; never part of make test. */
#include "bench.h"
#include "kernels.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static const upc_kernels *K;

static float *buffer(size_t n)
{
    float *d = K->alloc(K, n * sizeof(float));
    if (!d)
        upc_fail(EX_OSERR, "out of memory for %zu floats", n);
    K->fill(K, d, n, 0.01f);
    return d;
}

/* Median seconds of 5 timed runs after one warm-up. */
#define MEDIAN_OF_5(secs, call)                                                \
    do {                                                                       \
        double t_[5];                                                          \
        call;                                                                  \
        for (int r_ = 0; r_ < 5; r_++) {                                       \
            double t0_ = upc_now();                                                \
            call;                                                              \
            t_[r_] = upc_now() - t0_;                                              \
        }                                                                      \
        qsort(t_, 5, sizeof t_[0], cmp_double);                                \
        secs = t_[2];                                                          \
    } while (0)

static double baseline_gflops;

static void report(const char *name, double flops, double secs)
{
    double g = flops / secs * 1e-9;
    if (baseline_gflops == 0.0)
        baseline_gflops = g;
    printf("%-44s %8.1f GFLOP/s  %5.2fx baseline\n", name, g, g / baseline_gflops);
}

/* C[m][n] = op(A) op(B) with an HF linear's layout (NT) or a weight
 * gradient's (TN). */
static void bench_gemm(const char *name, int ta, int tb, int m, int n, int k)
{
    float *A = buffer((size_t)m * k), *B = buffer((size_t)k * n), *C = buffer((size_t)m * n);
    int lda = ta ? m : k, ldb = tb ? k : n;
    double secs;
    MEDIAN_OF_5(secs, K->gemm(K, ta, tb, m, n, k, 1.0f, A, lda, B, ldb, 0.0f, C, n));
    report(name, 2.0 * m * n * k, secs);
    K->free(K, A), K->free(K, B), K->free(K, C);
}

/* A top-2 MoE up projection: rows = 2*tokens spread unevenly over E
 * experts, one SGEMM per expert. */
static void bench_grouped(int tokens, int E, int d, int ffn)
{
    int rows = 2 * tokens;
    int32_t *offs_h = upc_malloc((size_t)(E + 1) * sizeof(int32_t));
    offs_h[0] = 0;
    for (int e = 0; e < E; e++) /* sizes ~ (1 + e%3) shares */
        offs_h[e + 1] = offs_h[e] + (int)((long long)rows * (1 + e % 3) / (E * 2));
    offs_h[E] = rows;
    int32_t *offs = K->alloc(K, (size_t)(E + 1) * sizeof(int32_t));
    K->upload(K, offs, offs_h, (size_t)(E + 1) * sizeof(int32_t));
    float *X = buffer((size_t)rows * d), *W = buffer((size_t)E * ffn * d), *Y = buffer((size_t)rows * ffn);
    double secs;
    MEDIAN_OF_5(secs, K->grouped_gemm_fwd(K, E, offs, ffn, d, X, W, 0.0f, Y));
    char name[96];
    snprintf(name, sizeof name, "grouped fwd E=%d rows=%d %dx%d", E, rows, ffn, d);
    report(name, 2.0 * rows * ffn * d, secs);
    MEDIAN_OF_5(secs, K->grouped_gemm_dw(K, E, offs, ffn, d, Y, X, 1.0f, W));
    snprintf(name, sizeof name, "grouped dW E=%d rows=%d %dx%d", E, rows, ffn, d);
    report(name, 2.0 * rows * ffn * d, secs);
    free(offs_h);
    K->free(K, offs), K->free(K, X), K->free(K, W), K->free(K, Y);
}

int main(int argc, char **argv)
{
    upc_init("bench-gemm");
    int tokens = argc > 1 ? (int)upc_parse_int("tokens", argv[1], 16, 1 << 20) : 512;
    K = kernels_cpu();
    const int d = 1024, ffn = 2560, kv = 256, vocab = 32000;
    printf("# CPU backend SGEMM, %d tokens, 436M-model shapes (d %d, ffn %d)\n", tokens, d, ffn);
    bench_gemm("baseline: square 1024^3 NN", 0, 0, 1024, 1024, 1024);
    bench_gemm("qkv proj  X[t,d] W[d+2kv,d]^T", 0, 1, tokens, d + 2 * kv, d);
    bench_gemm("ffn up    X[t,d] W[ffn,d]^T", 0, 1, tokens, ffn, d);
    bench_gemm("ffn down  A[t,ffn] W[d,ffn]^T", 0, 1, tokens, d, ffn);
    bench_gemm("ffn up dX dY[t,ffn] W[ffn,d]", 0, 0, tokens, d, ffn);
    bench_gemm("ffn up dW dY^T[ffn,t] X[t,d]", 1, 0, ffn, d, tokens);
    bench_gemm("lm head   X[t,d] E[V,d]^T", 0, 1, tokens, vocab, d);
    bench_gemm("decode    x[1,d] W[ffn,d]^T", 0, 1, 1, ffn, d);
    bench_grouped(tokens, 8, d, ffn);
    return 0;
}
