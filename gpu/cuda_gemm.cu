/* cuda_gemm.cu: dense, strided-batched and expert-grouped GEMMs on cuBLAS
 * SGEMM (fp32 in, fp32 accumulate, no TF32). cuBLAS is column-major: a
 * row-major C[m][n] is a column-major C^T, and C^T = op(B)^T op(A)^T, so
 * every call swaps the operands (B first) and the sizes (n, m).
 *
 * The grouped GEMMs read the E+1 group offsets back to the host (one
 * synchronous copy per call, into a pinned buffer) and run one SGEMM per
 * non-empty group. This is the first version the issue allows; the
 * alternatives (cublasSgemmGroupedBatched, which also wants host sizes, or
 * a device-side grouped kernel reading offs on the device) are left. */
#include "cuda_internal.cuh"

#include <string.h>

/* C[m][n] = beta * C, beta == 0 overwriting (NaN included). */
static __global__ void scale_matrix_kernel(int m, int n, float beta, float *C, int ldc,
                                           long long stride_c, int batch)
{
    size_t total = (size_t)m * n * batch;
    GRID_STRIDE(i, total) {
        size_t b = i / ((size_t)m * n), r = (i / n) % m, c = i % n;
        float *p = C + (size_t)b * stride_c + r * (size_t)ldc + c;
        *p = beta == 0.0f ? 0.0f : beta * *p;
    }
}

static void scale_matrix(const upc_kernels *K, const char *kernel, int m, int n, float beta, float *C,
                         int ldc, long long stride_c, int batch)
{
    if (beta == 1.0f || m == 0 || n == 0 || batch == 0)
        return;
    size_t total = (size_t)m * n * batch;
    scale_matrix_kernel<<<cuda_blocks(total), CUDA_THREADS>>>(m, n, beta, C, ldc, stride_c, batch);
    cuda_after_launch(K, kernel);
}

static void check_gemm(const char *kernel, int trans_a, int trans_b, int m, int n, int k, int lda,
                       int ldb, int ldc)
{
    CUDA_REQUIRE(m >= 0 && n >= 0 && k >= 0, kernel, "negative matrix size");
    int a_cols = trans_a ? m : k, b_cols = trans_b ? k : n;
    CUDA_REQUIRE(lda >= (a_cols > 1 ? a_cols : 1), kernel, "lda smaller than a row of A");
    CUDA_REQUIRE(ldb >= (b_cols > 1 ? b_cols : 1), kernel, "ldb smaller than a row of B");
    CUDA_REQUIRE(ldc >= (n > 1 ? n : 1), kernel, "ldc smaller than a row of C");
}

/* Row-major SGEMM, arguments already checked. */
static void sgemm(const upc_kernels *K, const char *kernel, int trans_a, int trans_b, int m, int n,
                  int k, float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                  float *C, int ldc)
{
    if (m == 0 || n == 0)
        return;
    if (k == 0 || alpha == 0.0f) {
        scale_matrix(K, kernel, m, n, beta, C, ldc, 0, 1);
        return;
    }
    BLAS_CHECK(cublasSgemm(CTX(K)->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                           trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, B, ldb, A, lda, &beta,
                           C, ldc),
               kernel);
    if (CTX(K)->debug_sync)
        cuda_after_launch(K, kernel);
}

void cu_gemm(const upc_kernels *K, int trans_a, int trans_b, int m, int n, int k, float alpha,
             const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    check_gemm("gemm", trans_a, trans_b, m, n, k, lda, ldb, ldc);
    sgemm(K, "gemm", trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

void cu_gemm_strided_batched(const upc_kernels *K, int trans_a, int trans_b, int m, int n, int k,
                             float alpha, const float *A, int lda, long long stride_a, const float *B,
                             int ldb, long long stride_b, float beta, float *C, int ldc,
                             long long stride_c, int batch)
{
    const char *kernel = "gemm_strided_batched";
    check_gemm(kernel, trans_a, trans_b, m, n, k, lda, ldb, ldc);
    CUDA_REQUIRE(batch >= 0, kernel, "negative batch");
    if (m == 0 || n == 0 || batch == 0)
        return;
    if (k == 0 || alpha == 0.0f) {
        scale_matrix(K, kernel, m, n, beta, C, ldc, stride_c, batch);
        return;
    }
    BLAS_CHECK(cublasSgemmStridedBatched(CTX(K)->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                         trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, B, ldb,
                                         stride_b, A, lda, stride_a, &beta, C, ldc, stride_c, batch),
               kernel);
    if (CTX(K)->debug_sync)
        cuda_after_launch(K, kernel);
}

/* The group offsets on the host, checked as the CPU backend checks them. */
static const int32_t *host_offsets(const upc_kernels *K, const char *kernel, int E, const int32_t *offs,
                                   int n, int k)
{
    CUDA_REQUIRE(E >= 0 && n >= 0 && k >= 0, kernel, "negative size");
    cuda_ctx *c = CTX(K);
    size_t need = (size_t)E + 1;
    if (need > c->host_offs_cap) {
        if (c->host_offs)
            CUDA_CHECK(cudaFreeHost(c->host_offs), kernel, "cudaFreeHost");
        c->host_offs = NULL;
        c->host_offs_cap = 0;
        CUDA_CHECK(cudaMallocHost((void **)&c->host_offs, need * sizeof(int32_t)), kernel, "cudaMallocHost");
        c->host_offs_cap = need;
    }
    CUDA_CHECK(cudaMemcpy(c->host_offs, offs, need * sizeof(int32_t), cudaMemcpyDeviceToHost), kernel,
               "reading the group offsets");
    cuda_check_device_error(K, kernel);
    CUDA_REQUIRE(c->host_offs[0] == 0, kernel, "offs[0] is not 0");
    for (int g = 0; g < E; g++)
        CUDA_REQUIRE(c->host_offs[g + 1] >= c->host_offs[g], kernel, "offsets decrease");
    return c->host_offs;
}

void cu_grouped_gemm_fwd(const upc_kernels *K, int E, const int32_t *offs, int n, int k,
                         const float *X, const float *W, float beta, float *Y)
{
    const char *kernel = "grouped_gemm_fwd";
    const int32_t *o = host_offsets(K, kernel, E, offs, n, k);
    for (int g = 0; g < E; g++) {
        int r0 = o[g], rows = o[g + 1] - o[g];
        sgemm(K, kernel, 0, 1, rows, n, k, 1.0f, X + (size_t)r0 * k, k > 0 ? k : 1, W + (size_t)g * n * k,
              k > 0 ? k : 1, beta, Y + (size_t)r0 * n, n > 0 ? n : 1);
    }
}

void cu_grouped_gemm_dx(const upc_kernels *K, int E, const int32_t *offs, int n, int k,
                        const float *dY, const float *W, float beta, float *dX)
{
    const char *kernel = "grouped_gemm_dx";
    const int32_t *o = host_offsets(K, kernel, E, offs, n, k);
    for (int g = 0; g < E; g++) {
        int r0 = o[g], rows = o[g + 1] - o[g];
        sgemm(K, kernel, 0, 0, rows, k, n, 1.0f, dY + (size_t)r0 * n, n > 0 ? n : 1, W + (size_t)g * n * k,
              k > 0 ? k : 1, beta, dX + (size_t)r0 * k, k > 0 ? k : 1);
    }
}

void cu_grouped_gemm_dw(const upc_kernels *K, int E, const int32_t *offs, int n, int k,
                        const float *dY, const float *X, float beta, float *dW)
{
    const char *kernel = "grouped_gemm_dw";
    const int32_t *o = host_offsets(K, kernel, E, offs, n, k);
    /* every group, empty ones included: beta scales an unused expert */
    for (int g = 0; g < E; g++) {
        int r0 = o[g], rows = o[g + 1] - o[g];
        sgemm(K, kernel, 1, 0, n, k, rows, 1.0f, dY + (size_t)r0 * n, n > 0 ? n : 1, X + (size_t)r0 * k,
              k > 0 ? k : 1, beta, dW + (size_t)g * n * k, k > 0 ? k : 1);
    }
}
