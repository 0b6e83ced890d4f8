/* kernels_cpu_gemm.c: dense, strided-batched and expert-grouped GEMMs on
 * OpenBLAS SGEMM (row-major). OpenBLAS threads each call itself, so batches
 * and groups run one after another.
 *
 * Called through the bf16 table (kernels_cpu_bf16), they round copies of
 * both operands to bfloat16 first: a product of two bf16 values is exact in
 * fp32, so this is what a bf16 tensor-core GEMM computes, up to the order
 * of the fp32 sums. It is the reference the GPU's bf16 GEMMs are checked
 * against, and shows on a CPU what bf16 does to a training run; it is
 * slower than SGEMM (each call rounds its operands). */
#include "kernels_cpu.h"
#include "kernels_math.h"

#include <cblas.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* C[m][n] = beta * C for the k == 0 case BLAS may not define; beta == 0
 * overwrites (NaN in C included; OpenBLAS does the same for k > 0, which
 * the tests check). */
static void scale_matrix(int m, int n, float beta, float *C, int ldc)
{
    for (int i = 0; i < m; i++) {
        float *row = C + (size_t)i * ldc;
        if (beta == 0.0f)
            memset(row, 0, (size_t)n * sizeof(float));
        else if (beta != 1.0f)
            for (int j = 0; j < n; j++)
                row[j] *= beta;
    }
}

static void check_gemm(const char *kernel, int trans_a, int trans_b, int m, int n,
                       int k, int lda, int ldb, int ldc)
{
    CPU_REQUIRE(m >= 0 && n >= 0 && k >= 0, kernel, "negative matrix size");
    int a_cols = trans_a ? m : k, b_cols = trans_b ? k : n;
    CPU_REQUIRE(lda >= (a_cols > 1 ? a_cols : 1), kernel, "lda smaller than a row of A");
    CPU_REQUIRE(ldb >= (b_cols > 1 ? b_cols : 1), kernel, "ldb smaller than a row of B");
    CPU_REQUIRE(ldc >= (n > 1 ? n : 1), kernel, "ldc smaller than a row of C");
}

/* A few rows times an HF weight (C = A B^T, B [n][k]): decode's shape.
 * OpenBLAS runs these on one thread at a fraction of memory bandwidth; here
 * every thread streams its own rows of B once, at bandwidth, each output a
 * plain dot product over k (summed in a fixed order, any thread count). */
enum { SKINNY_ROWS = 4 };

static void skinny_nt(int m, int n, int k, float alpha, const float *A, int lda, const float *B,
                      int ldb, float beta, float *C, int ldc)
{
#pragma omp parallel for schedule(static)
    for (int j = 0; j < n; j++) {
        const float *b = B + (size_t)j * ldb;
        float acc[SKINNY_ROWS] = {0};
        for (int i = 0; i < m; i++) {
            const float *a = A + (size_t)i * lda;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int t = 0; t < k; t++)
                s += a[t] * b[t];
            acc[i] = s;
        }
        for (int i = 0; i < m; i++) {
            float *c = C + (size_t)i * ldc + j;
            *c = alpha * acc[i] + (beta == 0.0f ? 0.0f : beta * *c);
        }
    }
}

/* The one SGEMM every entry point ends in; arguments already checked. */
static void sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha,
                  const float *A, int lda, const float *B, int ldb, float beta,
                  float *C, int ldc)
{
    if (m == 0 || n == 0)
        return;
    if (k == 0 || alpha == 0.0f) {
        scale_matrix(m, n, beta, C, ldc);
        return;
    }
    if (!trans_a && trans_b && m <= SKINNY_ROWS && n >= 64) {
        skinny_nt(m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, A, lda, B, ldb,
                beta, C, ldc);
}

/* The weights registered with bf16_weights and their rounded copy (one
 * range for the backend; floats holding bf16 values, what SGEMM reads). */
static struct {
    const float *w;
    size_t n;
    float *rounded;
} weights;

void cpu_bf16_weights(const upc_kernels *K, const float *w, size_t n)
{
    if (!upc_kernels_bf16(K))
        return;
    if (n == 0) {
        if (w == weights.w) {
            free(weights.rounded);
            weights.w = weights.rounded = NULL;
            weights.n = 0;
        }
        return;
    }
    if (n != weights.n) {
        free(weights.rounded);
        weights.rounded = upc_malloc(n * sizeof(float));
    }
    weights.w = w;
    weights.n = n;
#pragma omp parallel for schedule(static) if (n >= CPU_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++)
        weights.rounded[i] = upc_round_bf16(w[i]);
}

/* The rounded copy of X (rows x cols, leading dimension ld, both > 0) when
 * it lies inside the registered weights, else NULL. */
static const float *registered_rounded(const float *X, int rows, int cols, int ld)
{
    size_t at = upc_float_offset_within(weights.w, weights.n, X, (size_t)(rows - 1) * ld + cols);
    return at == SIZE_MAX ? NULL : weights.rounded + at;
}

/* The rows x cols matrix X (leading dimension *ld) rounded to bf16: the
 * registered copy, or packed (*ld becomes cols) into grow-only buffer
 * `slot` (0: A, 1: B). The CPU backend runs on one thread (OpenMP inside),
 * so static buffers do. */
static const float *rounded_bf16(int slot, const float *X, int rows, int cols, int *ld)
{
    const float *registered = registered_rounded(X, rows, cols, *ld);
    if (registered)
        return registered;
    static float *buf[2];
    static size_t cap[2];
    size_t need = (size_t)rows * cols;
    if (need > cap[slot]) {
        free(buf[slot]);
        buf[slot] = upc_malloc(need * sizeof(float));
        cap[slot] = need;
    }
    float *out = buf[slot];
    int from = *ld;
#pragma omp parallel for schedule(static) if (need >= CPU_PARALLEL_MIN)
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            out[(size_t)r * cols + c] = upc_round_bf16(X[(size_t)r * from + c]);
    *ld = cols;
    return out;
}

/* sgemm, with both operands rounded to bf16 first when bf16 is set. */
static void mm(bool bf16, int trans_a, int trans_b, int m, int n, int k, float alpha,
               const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (bf16 && m > 0 && n > 0 && k > 0 && alpha != 0.0f) {
        A = rounded_bf16(0, A, trans_a ? k : m, trans_a ? m : k, &lda);
        B = rounded_bf16(1, B, trans_b ? n : k, trans_b ? k : n, &ldb);
    }
    sgemm(trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

void cpu_gemm(const upc_kernels *K, int trans_a, int trans_b, int m, int n, int k, float alpha, const float *A,
              int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    check_gemm("gemm", trans_a, trans_b, m, n, k, lda, ldb, ldc);
    mm(upc_kernels_bf16(K), trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

void cpu_gemm_strided_batched(const upc_kernels *K, int trans_a, int trans_b, int m, int n, int k, float alpha,
                              const float *A, int lda, long long stride_a, const float *B, int ldb,
                              long long stride_b, float beta, float *C, int ldc, long long stride_c, int batch)
{
    bool bf16 = upc_kernels_bf16(K);
    check_gemm("gemm_strided_batched", trans_a, trans_b, m, n, k, lda, ldb, ldc);
    CPU_REQUIRE(batch >= 0, "gemm_strided_batched", "negative batch");
    for (int i = 0; i < batch; i++)
        mm(bf16, trans_a, trans_b, m, n, k, alpha, A + i * stride_a, lda, B + i * stride_b, ldb, beta,
           C + i * stride_c, ldc);
}

static void check_groups(const char *kernel, int E, const int32_t *offs, int n, int k)
{
    CPU_REQUIRE(E >= 0 && n >= 0 && k >= 0, kernel, "negative size");
    CPU_REQUIRE(offs[0] == 0, kernel, "offs[0] is not 0");
    for (int g = 0; g < E; g++)
        CPU_REQUIRE(offs[g + 1] >= offs[g], kernel, "offsets decrease");
}

void cpu_grouped_gemm_fwd(const upc_kernels *K, int E, const int32_t *offs, int n, int k, const float *X,
                          const float *W, float beta, float *Y)
{
    bool bf16 = upc_kernels_bf16(K);
    check_groups("grouped_gemm_fwd", E, offs, n, k);
    for (int g = 0; g < E; g++) {
        int r0 = offs[g], rows = offs[g + 1] - offs[g];
        mm(bf16, 0, 1, rows, n, k, 1.0f, X + (size_t)r0 * k, k > 0 ? k : 1,
              W + (size_t)g * n * k, k > 0 ? k : 1, beta, Y + (size_t)r0 * n,
              n > 0 ? n : 1);
    }
}

void cpu_grouped_gemm_dx(const upc_kernels *K, int E, const int32_t *offs, int n, int k, const float *dY,
                         const float *W, float beta, float *dX)
{
    bool bf16 = upc_kernels_bf16(K);
    check_groups("grouped_gemm_dx", E, offs, n, k);
    for (int g = 0; g < E; g++) {
        int r0 = offs[g], rows = offs[g + 1] - offs[g];
        mm(bf16, 0, 0, rows, k, n, 1.0f, dY + (size_t)r0 * n, n > 0 ? n : 1,
              W + (size_t)g * n * k, k > 0 ? k : 1, beta, dX + (size_t)r0 * k,
              k > 0 ? k : 1);
    }
}

void cpu_grouped_gemm_dw(const upc_kernels *K, int E, const int32_t *offs, int n, int k, const float *dY,
                         const float *X, float beta, float *dW)
{
    bool bf16 = upc_kernels_bf16(K);
    check_groups("grouped_gemm_dw", E, offs, n, k);
    for (int g = 0; g < E; g++) {
        int r0 = offs[g], rows = offs[g + 1] - offs[g];
        mm(bf16, 1, 0, n, k, rows, 1.0f, dY + (size_t)r0 * n, n > 0 ? n : 1,
              X + (size_t)r0 * k, k > 0 ? k : 1, beta, dW + (size_t)g * n * k,
              k > 0 ? k : 1);
    }
}
