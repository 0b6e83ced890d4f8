/* cuda_gemm.cu: dense, strided-batched and expert-grouped GEMMs on cuBLAS.
 * Called through the fp32 table they run SGEMM (fp32 in, fp32 accumulate,
 * no TF32); through the bf16 table (upc_kernels_bf16) they round both
 * operands into bf16 copies (upc_round_bf16, as the CPU reference does) and
 * run cublasGemmEx on tensor cores with fp32 accumulation and an fp32 C;
 * operands inside the weights registered with bf16_weights are read from
 * their rounded copy instead (same values, rounded once per change).
 * cuBLAS is column-major: a row-major C[m][n] is a column-major C^T, and
 * C^T = op(B)^T op(A)^T, so every call swaps the operands (B first) and the
 * sizes (n, m).
 *
 * A few rows times a weight matrix (decode) go to cuda_gemv.cu instead.
 *
 * The fp32 grouped GEMMs read the E+1 group offsets back to the host (one
 * synchronous copy per call, into a pinned buffer) and run one GEMM per
 * non-empty group (cublasGemmGroupedBatchedEx would want host sizes too).
 * The bf16 ones run cuda_grouped.cu's single launch, which reads the
 * offsets on the device, unless UPC_GROUPED=cublas. */
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

/* ---- bf16 operands ------------------------------------------------------------- */

/* `batch` matrices of rows x cols (leading dimension ld, `stride` apart) as
 * one contiguous bf16 array, each element rounded as upc_round_bf16 rounds. */
static __global__ void pack_bf16_kernel(const float *X, int rows, int cols, int ld, long long stride,
                                        size_t total, __nv_bfloat16 *out)
{
    size_t per = (size_t)rows * cols;
    GRID_STRIDE(i, total) {
        size_t b = i / per, r = (i % per) / cols, c = i % cols;
        out[i] = cuda_to_bf16(X[b * stride + r * (size_t)ld + c]);
    }
}

static __global__ void round_bf16_kernel(const float *x, size_t n, __nv_bfloat16 *out)
{
    GRID_STRIDE(i, n)
        out[i] = cuda_to_bf16(x[i]);
}

void cu_bf16_weights(const upc_kernels *K, const float *w, size_t n)
{
    const char *kernel = "bf16_weights";
    cuda_ctx *c = CTX(K);
    if (!upc_kernels_bf16(K) || (n == 0 && w != c->bf16_w))
        return;
    if (n != c->bf16_n) {
        if (c->bf16_copy)
            CUDA_CHECK(cudaFree(c->bf16_copy), kernel, "freeing the bf16 weights");
        c->bf16_w = NULL;
        c->bf16_copy = NULL;
        c->bf16_n = 0;
        if (n == 0)
            return;
        cudaError_t e = cudaMalloc(&c->bf16_copy, n * sizeof(__nv_bfloat16));
        if (e != cudaSuccess)
            upc_fail(EX_OSERR, "cuda: %s: out of device memory for a bf16 copy of %zu weights (%s)", kernel, n,
                     cudaGetErrorString(e));
    }
    c->bf16_w = w;
    c->bf16_n = n;
    round_bf16_kernel<<<cuda_blocks(n), CUDA_THREADS>>>(w, n, (__nv_bfloat16 *)c->bf16_copy);
    cuda_after_launch(K, kernel);
}

const void *cuda_registered_bf16(const upc_kernels *K, const float *x, size_t span)
{
    const cuda_ctx *c = CTX(K);
    size_t at = upc_float_offset_within(c->bf16_w, c->bf16_n, x, span);
    return at == SIZE_MAX ? NULL : (const __nv_bfloat16 *)c->bf16_copy + at;
}

/* The registered copy of `batch` matrices of rows x cols (leading dimension
 * ld, `stride` apart; every size > 0), or NULL. */
static const __nv_bfloat16 *registered_bf16(const upc_kernels *K, const float *X, int rows, int cols, int ld,
                                            long long stride, int batch)
{
    if (stride < 0)
        return NULL;
    size_t span = (size_t)(batch - 1) * (size_t)stride + (size_t)(rows - 1) * ld + cols;
    return (const __nv_bfloat16 *)cuda_registered_bf16(K, X, span);
}

/* X (as pack_bf16_kernel reads it) rounded to bf16: the registered copy
 * (leading dimension and stride unchanged) or a packed one in scratch
 * `slot` (*ld becomes cols, *stride rows * cols). */
static const __nv_bfloat16 *bf16_operand(const upc_kernels *K, const char *kernel, int slot, const float *X,
                                         int rows, int cols, int *ld, long long *stride, int batch)
{
    const __nv_bfloat16 *registered = registered_bf16(K, X, rows, cols, *ld, *stride, batch);
    if (registered)
        return registered;
    size_t total = (size_t)rows * cols * batch;
    __nv_bfloat16 *out = (__nv_bfloat16 *)cuda_scratch(K, slot, total * sizeof(__nv_bfloat16), kernel);
    if (total > 0) {
        pack_bf16_kernel<<<cuda_blocks(total), CUDA_THREADS>>>(X, rows, cols, *ld, *stride, total, out);
        cuda_after_launch(K, kernel);
    }
    *ld = cols;
    *stride = (long long)rows * cols;
    return out;
}

/* UPC_BF16_GEMM=fast: the bf16 table's GEMMs hand cuBLAS the fp32 operands
 * with CUBLAS_COMPUTE_32F_FAST_16BF instead of packing rounded copies first
 * (a read and a write of every activation operand per GEMM). cuBLAS decides
 * whether to round: on an H200 small GEMMs came out as fp32 ones, so this
 * is near the CPU's bf16 emulation, not equal to it, and stays opt-in
 * (there it made the 436m dense training step 0.71 of the default's time);
 * "pack" (the default) packs. */
bool cuda_bf16_gemm_fast(void)
{
    static int fast = -1;
    if (fast < 0)
        fast = upc_env_choice("UPC_BF16_GEMM", "pack,fast");
    return fast;
}

/* Row-major C = alpha op(A) op(B) + beta C, fp32 operands rounded to bf16
 * by cuBLAS (UPC_BF16_GEMM=fast), fp32 accumulation and C; `batch` matrices
 * `stride_*` apart. */
static void gemm_fast(const upc_kernels *K, const char *kernel, int trans_a, int trans_b, int m, int n, int k,
                      float alpha, const float *A, int lda, long long stride_a, const float *B, int ldb,
                      long long stride_b, float beta, float *C, int ldc, long long stride_c, int batch)
{
    cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (batch == 1)
        BLAS_CHECK(cublasGemmEx(CTX(K)->blas, op_b, op_a, n, m, k, &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda,
                                &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT),
                   kernel);
    else
        BLAS_CHECK(cublasGemmStridedBatchedEx(CTX(K)->blas, op_b, op_a, n, m, k, &alpha, B, CUDA_R_32F, ldb, stride_b, A,
                                              CUDA_R_32F, lda, stride_a, &beta, C, CUDA_R_32F, ldc, stride_c, batch,
                                              CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT),
                   kernel);
    if (CTX(K)->debug_sync)
        cuda_after_launch(K, kernel);
}

/* Row-major C = alpha op(A) op(B) + beta C on packed bf16 operands (leading
 * dimensions their column counts), fp32 accumulation and C. */
static void gemm_ex(const upc_kernels *K, const char *kernel, int trans_a, int trans_b, int m, int n, int k,
                    float alpha, const __nv_bfloat16 *A, int lda, const __nv_bfloat16 *B, int ldb, float beta,
                    float *C, int ldc)
{
    BLAS_CHECK(cublasGemmEx(CTX(K)->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                            n, m, k, &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda, &beta, C, CUDA_R_32F, ldc,
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               kernel);
    if (CTX(K)->debug_sync)
        cuda_after_launch(K, kernel);
}

/* sgemm, or with bf16 set the same product on bf16-rounded operands. */
static void mm(const upc_kernels *K, const char *kernel, bool bf16, int trans_a, int trans_b, int m, int n,
               int k, float alpha, const float *A, int lda, const float *B, int ldb, float beta, float *C,
               int ldc)
{
    /* decode's shape (a few tokens times a weight matrix): cuda_gemv.cu */
    if (!trans_a && trans_b && alpha != 0.0f && cuda_gemv(K, kernel, bf16, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc))
        return;
    if (!bf16 || m == 0 || n == 0 || k == 0 || alpha == 0.0f) {
        sgemm(K, kernel, trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    if (cuda_bf16_gemm_fast()) {
        gemm_fast(K, kernel, trans_a, trans_b, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
        return;
    }
    long long stride_a = 0, stride_b = 0;   /* one matrix each */
    const __nv_bfloat16 *a =
        bf16_operand(K, kernel, SCRATCH_BF16_A, A, trans_a ? k : m, trans_a ? m : k, &lda, &stride_a, 1);
    const __nv_bfloat16 *b =
        bf16_operand(K, kernel, SCRATCH_BF16_B, B, trans_b ? n : k, trans_b ? k : n, &ldb, &stride_b, 1);
    gemm_ex(K, kernel, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, C, ldc);
}

/* ---- dense and strided-batched --------------------------------------------------- */

void cu_gemm(const upc_kernels *K, int trans_a, int trans_b, int m, int n, int k, float alpha, const float *A,
             int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    check_gemm("gemm", trans_a, trans_b, m, n, k, lda, ldb, ldc);
    mm(K, "gemm", upc_kernels_bf16(K), trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

void cu_gemm_strided_batched(const upc_kernels *K, int trans_a, int trans_b, int m, int n, int k, float alpha,
                             const float *A, int lda, long long stride_a, const float *B, int ldb,
                             long long stride_b, float beta, float *C, int ldc, long long stride_c, int batch)
{
    bool bf16 = upc_kernels_bf16(K);
    const char *kernel = "gemm_strided_batched";
    check_gemm(kernel, trans_a, trans_b, m, n, k, lda, ldb, ldc);
    CUDA_REQUIRE(batch >= 0, kernel, "negative batch");
    if (m == 0 || n == 0 || batch == 0)
        return;
    if (k == 0 || alpha == 0.0f) {
        scale_matrix(K, kernel, m, n, beta, C, ldc, stride_c, batch);
        return;
    }
    cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (bf16 && cuda_bf16_gemm_fast()) {
        gemm_fast(K, kernel, trans_a, trans_b, m, n, k, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc,
                  stride_c, batch);
        return;
    }
    if (!bf16) {
        BLAS_CHECK(cublasSgemmStridedBatched(CTX(K)->blas, op_b, op_a, n, m, k, &alpha, B, ldb, stride_b, A, lda,
                                             stride_a, &beta, C, ldc, stride_c, batch),
                   kernel);
    } else {
        const __nv_bfloat16 *a =
            bf16_operand(K, kernel, SCRATCH_BF16_A, A, trans_a ? k : m, trans_a ? m : k, &lda, &stride_a, batch);
        const __nv_bfloat16 *b =
            bf16_operand(K, kernel, SCRATCH_BF16_B, B, trans_b ? n : k, trans_b ? k : n, &ldb, &stride_b, batch);
        BLAS_CHECK(cublasGemmStridedBatchedEx(CTX(K)->blas, op_b, op_a, n, m, k, &alpha, b, CUDA_R_16BF, ldb,
                                              stride_b, a, CUDA_R_16BF, lda, stride_a, &beta, C, CUDA_R_32F, ldc,
                                              stride_c, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                   kernel);
    }
    if (CTX(K)->debug_sync)
        cuda_after_launch(K, kernel);
}

/* ---- expert-grouped -------------------------------------------------------------- */

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

/* One product per group g, rows o[g] .. o[g+1] of the row-wise operands;
 * in bf16 every operand is rounded once, whole, before the groups run. The
 * three shapes: */
enum grouped_kind {
    GROUPED_FWD,   /* Y[rows][n] = X[rows][k] W_g^T + beta Y   (a = X, b = W [E][n][k]) */
    GROUPED_DX,    /* dX[rows][k] = dY[rows][n] W_g + beta dX  (a = dY, b = W) */
    GROUPED_DW     /* dW_g[n][k] = dY^T X + beta dW_g          (a = dY [rows][n], b = X [rows][k]) */
};

static void grouped(const upc_kernels *K, const char *kernel, enum grouped_kind kind, int E, const int32_t *offs,
                    int n, int k, const float *a, const float *b, float beta, float *out)
{
    bool bf16 = upc_kernels_bf16(K);
    /* bf16: one launch that reads the offsets on the device (cuda_grouped.cu) */
    if (bf16 && n > 0 && k > 0 && cuda_grouped_on_device()) {
        if (kind == GROUPED_DW)
            cuda_grouped_dw_bf16(K, kernel, E, offs, n, k, a, b, beta, out);
        else
            cuda_grouped_rows_bf16(K, kernel, kind == GROUPED_DX, E, offs, n, k, a, b, beta, out);
        return;
    }
    const int32_t *o = host_offsets(K, kernel, E, offs, n, k);
    int total = o[E], kn = k > 0 ? k : 1, nn = n > 0 ? n : 1;
    const __nv_bfloat16 *a16 = NULL, *b16 = NULL;
    if (bf16 && n > 0 && k > 0 && total > 0) {
        /* contiguous operands: the leading dimensions stay kn / nn */
        int lda = kind == GROUPED_FWD ? k : n, ldb = k;
        long long stride_a = 0, stride_b = 0;
        a16 = bf16_operand(K, kernel, SCRATCH_BF16_A, a, total, lda, &lda, &stride_a, 1);
        b16 = bf16_operand(K, kernel, SCRATCH_BF16_B, b, kind == GROUPED_DW ? total : E * n, k, &ldb, &stride_b, 1);
    }
    /* every group, empty ones included: beta scales an unused expert's dW */
    for (int g = 0; g < E; g++) {
        int r0 = o[g], rows = o[g + 1] - o[g];
        size_t w = (size_t)g * n * k;
        switch (kind) {
        case GROUPED_FWD:
            if (a16 && rows > 0)
                gemm_ex(K, kernel, 0, 1, rows, n, k, 1.0f, a16 + (size_t)r0 * k, kn, b16 + w, kn, beta,
                        out + (size_t)r0 * n, nn);
            else
                sgemm(K, kernel, 0, 1, rows, n, k, 1.0f, a + (size_t)r0 * k, kn, b + w, kn, beta, out + (size_t)r0 * n,
                      nn);
            break;
        case GROUPED_DX:
            if (a16 && rows > 0)
                gemm_ex(K, kernel, 0, 0, rows, k, n, 1.0f, a16 + (size_t)r0 * n, nn, b16 + w, kn, beta,
                        out + (size_t)r0 * k, kn);
            else
                sgemm(K, kernel, 0, 0, rows, k, n, 1.0f, a + (size_t)r0 * n, nn, b + w, kn, beta, out + (size_t)r0 * k,
                      kn);
            break;
        case GROUPED_DW:
            if (a16 && rows > 0)
                gemm_ex(K, kernel, 1, 0, n, k, rows, 1.0f, a16 + (size_t)r0 * n, nn, b16 + (size_t)r0 * k, kn, beta,
                        out + w, kn);
            else
                sgemm(K, kernel, 1, 0, n, k, rows, 1.0f, a + (size_t)r0 * n, nn, b + (size_t)r0 * k, kn, beta, out + w,
                      kn);
            break;
        }
    }
}

/* ---- the grouped entry points -------------------------------------------------- */

void cu_grouped_gemm_fwd(const upc_kernels *K, int E, const int32_t *offs, int n, int k, const float *X,
                         const float *W, float beta, float *Y)
{
    grouped(K, "grouped_gemm_fwd", GROUPED_FWD, E, offs, n, k, X, W, beta, Y);
}

void cu_grouped_gemm_dx(const upc_kernels *K, int E, const int32_t *offs, int n, int k, const float *dY,
                        const float *W, float beta, float *dX)
{
    grouped(K, "grouped_gemm_dx", GROUPED_DX, E, offs, n, k, dY, W, beta, dX);
}

void cu_grouped_gemm_dw(const upc_kernels *K, int E, const int32_t *offs, int n, int k, const float *dY,
                        const float *X, float beta, float *dW)
{
    grouped(K, "grouped_gemm_dw", GROUPED_DW, E, offs, n, k, dY, X, beta, dW);
}
