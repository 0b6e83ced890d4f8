/* cuda_internal.cuh: what the CUDA backend's files share: the backend state
 * (cuBLAS handle, scratch memory, the device error word), checked calls
 * that fail the tool naming the kernel, launch helpers, deterministic block
 * reductions, and the entry points gathered into the table by
 * cuda_table.cu. Internal to gpu/: tools use lib/backend.h.
 *
 * Everything runs on the legacy default stream, in order, so a kernel's
 * scratch may be reused by the next kernel without a sync. */
#ifndef UPCYC_CUDA_INTERNAL_CUH
#define UPCYC_CUDA_INTERNAL_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "kernels.h"
#include "util.h"
}
#include "kernels_math.h"

/* Bad data that only the device sees (a token id or expert index out of
 * range) sets the device error word to one of these (the first wins, an
 * integer atomicCAS); download and sync check it and fail the tool naming
 * the kernel. */
enum cuda_err_code {
    CUDA_ERR_NONE = 0,
    CUDA_ERR_EMBED_FWD_ID,
    CUDA_ERR_EMBED_BWD_ID,
    CUDA_ERR_CE_FWD_TARGET,
    CUDA_ERR_CE_BWD_TARGET,
    CUDA_ERR_ROUTER_BWD_IDX,
    CUDA_ERR_DISPATCH_IDX,
    CUDA_ERR_GATHER_PERM,
    CUDA_ERR_LB_IDX,
    CUDA_ERR_KV_SLOT,
    CUDA_ERR_PAGED_POS,
    CUDA_ERR_CAPACITY_IDX,
    CUDA_ERR_GROUP_OFFS,
    CUDA_ERR_COUNT
};

typedef struct {
    int device;
    cublasHandle_t blas;
    int *err;                 /* device int: a cuda_err_code */
    void *scratch[4];         /* grow-only device workspaces (see cuda_scratch) */
    size_t scratch_bytes[4];
    int32_t *host_offs;       /* pinned host copy of grouped-GEMM offsets */
    size_t host_offs_cap;
    int debug_sync;           /* UPC_CUDA_SYNC=1: sync + check after every kernel */
    size_t attn_smem_set;     /* dynamic shared memory the attention kernels may use */
    const float *bf16_w;      /* weights registered with bf16_weights (cuda_gemm.cu), */
    size_t bf16_n;            /* their length in floats */
    void *bf16_copy;          /* and their rounded copy, __nv_bfloat16 [bf16_n] */
} cuda_ctx;

static inline cuda_ctx *CTX(const upc_kernels *K)
{
    return (cuda_ctx *)K->ctx;
}

/* Fail the tool: "cuda: KERNEL: what: cuda error text". */
#define CUDA_CHECK(call, kernel, what)                                                          \
    do {                                                                                        \
        cudaError_t e_ = (call);                                                                \
        if (e_ != cudaSuccess)                                                                  \
            upc_fail(EX_OSERR, "cuda: %s: %s: %s", (kernel), (what), cudaGetErrorString(e_));    \
    } while (0)

#define BLAS_CHECK(call, kernel)                                                                \
    do {                                                                                        \
        cublasStatus_t s_ = (call);                                                             \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                        \
            upc_fail(EX_SOFTWARE, "cuda: %s: cuBLAS: %s (%s)", (kernel),                        \
                     cublasGetStatusString(s_), cublasGetStatusName(s_));                       \
    } while (0)

/* Programming errors the host can see (sizes), as the CPU backend's. */
#define CUDA_REQUIRE(cond, kernel, what)                                                        \
    do {                                                                                        \
        if (!(cond))                                                                            \
            upc_fail(EX_SOFTWARE, "cuda: %s: %s", (kernel), (what));                            \
    } while (0)

/* After a launch: a launch error fails at once; with UPC_CUDA_SYNC=1 the
 * kernel is also waited for, so an asynchronous fault names it. */
void cuda_after_launch(const upc_kernels *K, const char *kernel);
/* Fail when a device-side check set the error word (waits for the device). */
void cuda_check_device_error(const upc_kernels *K, const char *where);
/* The backend's scratch workspace `slot`, at least `bytes` long (grow-only;
 * growing waits for the device, as cudaFree does). Valid until the next
 * cuda_scratch call for the same slot. Slot 0 is the kernels', slot 1 the
 * sort's (cuda_stable_sort_indices), so a kernel may keep slot 0 across a
 * sort; slots 2 and 3 hold the bf16 GEMMs' rounded operands. */
enum { SCRATCH_KERNEL = 0, SCRATCH_SORT = 1, SCRATCH_BF16_A = 2, SCRATCH_BF16_B = 3 };
void *cuda_scratch(const upc_kernels *K, int slot, size_t bytes, const char *kernel);

/* x rounded as upc_round_bf16 rounds (the CPU reference), as a bf16. */
static __device__ __forceinline__ __nv_bfloat16 cuda_to_bf16(float x)
{
    __nv_bfloat16_raw raw;
    raw.x = (unsigned short)(__float_as_uint(upc_round_bf16(x)) >> 16);
    return raw;
}

/* Record a device-side error (the first one wins). */
static __device__ __forceinline__ void cuda_flag(int *err, int code)
{
    atomicCAS(err, 0, code);
}

enum { CUDA_THREADS = 256 };

/* Blocks for a grid-stride loop over n elements. */
static inline unsigned cuda_blocks(size_t n, unsigned threads = CUDA_THREADS)
{
    size_t b = (n + threads - 1) / threads;
    if (b < 1)
        b = 1;
    if (b > 65536)
        b = 65536;
    return (unsigned)b;
}

#define GRID_STRIDE(i, n)                                                                       \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                     \
         i += (size_t)gridDim.x * blockDim.x)

/* Sum of one value per thread over the block (blockDim.x a power of two,
 * at most 1024), as a fixed tree: same inputs, same bits. Every thread
 * gets the total. `sh` holds blockDim.x elements. */
template <typename T>
static __device__ __forceinline__ T block_sum(T v, T *sh)
{
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s)
            sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    T total = sh[0];
    __syncthreads();
    return total;
}

/* logsumexp of x[0..n) by a block of THREADS threads: one pass of the
 * online softmax per thread (upc_softmax_step), merged in a fixed tree
 * (upc_softmax_merge). Every thread gets it. */
template <int THREADS>
static __device__ float block_logsumexp(const float *x, int n)
{
    __shared__ float shm[THREADS], shl[THREADS];
    float m = -INFINITY, l = 0.0f;
    for (int j = threadIdx.x; j < n; j += THREADS)
        upc_softmax_step(&m, &l, x[j]);
    shm[threadIdx.x] = m;
    shl[threadIdx.x] = l;
    __syncthreads();
    for (unsigned s = THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float mm = shm[threadIdx.x], ll = shl[threadIdx.x];
            upc_softmax_merge(&mm, &ll, shm[threadIdx.x + s], shl[threadIdx.x + s]);
            shm[threadIdx.x] = mm;
            shl[threadIdx.x] = ll;
        }
        __syncthreads();
    }
    float lse = shm[0] + logf(shl[0]);
    __syncthreads();
    return lse;
}

template <typename T>
static __device__ __forceinline__ T block_max(T v, T *sh)
{
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s)
            sh[threadIdx.x] = sh[threadIdx.x + s] > sh[threadIdx.x] ? sh[threadIdx.x + s] : sh[threadIdx.x];
        __syncthreads();
    }
    T m = sh[0];
    __syncthreads();
    return m;
}

/* Attention's shape limits, shared by the fp32 and bf16 kernels: EX_SOFTWARE
 * naming the kernel otherwise. */
static inline void cuda_attention_check_shape(const char *kernel, int B, int T, int Hq, int Hkv, int hd)
{
    CUDA_REQUIRE(B >= 0 && T >= 0 && Hq > 0 && Hkv > 0 && hd > 0, kernel, "bad size");
    CUDA_REQUIRE(Hq % Hkv == 0, kernel, "query heads not a multiple of KV heads");
    CUDA_REQUIRE(hd <= 256, kernel, "head dim above 256 is not supported by the CUDA kernels");
    CUDA_REQUIRE((long long)B * Hq <= 65535 && (long long)B * Hkv <= 65535, kernel,
                 "batch x heads above 65535 (grid y limit)");
}

/* Let kernel fn use `smem` bytes of dynamic shared memory (opting in above
 * the 48 KiB default; at most 227 KiB on sm_90). */
template <typename F>
static void cuda_allow_smem(const char *kernel, F *fn, size_t smem)
{
    if (smem > 48 * 1024)
        CUDA_CHECK(cudaFuncSetAttribute((const void *)fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                   kernel, "raising the shared-memory limit");
}

/* ---- entry points (one file per concern) ---------------------------------- */

/* cuda_gemm.cu */
void cu_gemm(const upc_kernels *K, int trans_a, int trans_b, int m, int n, int k, float alpha,
             const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
void cu_gemm_strided_batched(const upc_kernels *K, int trans_a, int trans_b, int m, int n, int k,
                             float alpha, const float *A, int lda, long long stride_a, const float *B,
                             int ldb, long long stride_b, float beta, float *C, int ldc,
                             long long stride_c, int batch);
void cu_bf16_weights(const upc_kernels *K, const float *w, size_t n);
/* UPC_BF16_GEMM=fast: bf16 GEMMs on fp32 operands with cuBLAS's
 * CUBLAS_COMPUTE_32F_FAST_16BF instead of packed bf16 copies (read once;
 * a value other than pack or fast fails with EX_USAGE) */
bool cuda_bf16_gemm_fast(void);
/* The bf16 copy (__nv_bfloat16) of x[0..span) when it lies inside the
 * weights registered with bf16_weights, else NULL. */
const void *cuda_registered_bf16(const upc_kernels *K, const float *x, size_t span);
void cu_grouped_gemm_fwd(const upc_kernels *K, int E, const int32_t *offs, int n, int k,
                         const float *X, const float *W, float beta, float *Y);
void cu_grouped_gemm_dx(const upc_kernels *K, int E, const int32_t *offs, int n, int k,
                        const float *dY, const float *W, float beta, float *dX);
void cu_grouped_gemm_dw(const upc_kernels *K, int E, const int32_t *offs, int n, int k,
                        const float *dY, const float *X, float beta, float *dW);
/* cuda_grouped.cu: the bf16 grouped GEMMs on the device (offsets read there;
 * n, k > 0), unless UPC_GROUPED=cublas (cuda_grouped_on_device) */
bool cuda_grouped_on_device(void);
void cuda_grouped_rows_bf16(const upc_kernels *K, const char *kernel, int dx, int E, const int32_t *offs, int n,
                            int k, const float *A, const float *W, float beta, float *C);
void cuda_grouped_dw_bf16(const upc_kernels *K, const char *kernel, int E, const int32_t *offs, int n, int k,
                          const float *dY, const float *X, float beta, float *dW);
/* cuda_gemv.cu: C[m][n] = alpha X[m][k] W^T + beta C for m <= GEMV_MAX_ROWS
 * as warp-per-column dot products streaming W (fp32, or on the bf16 table
 * its registered copy); false, nothing launched, where it does not apply
 * (bf16 W not registered, UPC_GEMV=cublas, an empty size): use cuBLAS */
enum { GEMV_MAX_ROWS = 8 };
bool cuda_gemv(const upc_kernels *K, const char *kernel, bool bf16, int m, int n, int k, float alpha,
               const float *X, int ldx, const float *W, int ldw, float beta, float *C, int ldc);

/* cuda_layers.cu */
void cu_embedding_fwd(const upc_kernels *K, const int32_t *ids, int rows, const float *table, int V,
                      int d, float *out);
void cu_embedding_bwd(const upc_kernels *K, const int32_t *ids, int rows, const float *dout, int V,
                      int d, float *dtable);
void cu_rmsnorm_fwd(const upc_kernels *K, const float *x, const float *w, float *y, float *rstd,
                    int rows, int d, float eps);
void cu_rmsnorm_bwd(const upc_kernels *K, const float *dy, const float *x, const float *w,
                    const float *rstd, float *dx, float *dw, int rows, int d);
void cu_rope_fwd(const upc_kernels *K, const float *x, float *y, int B, int T, int H, int hd,
                 int pos0, const int32_t *pos, float theta);
void cu_rope_bwd(const upc_kernels *K, const float *dy, float *dx, int B, int T, int H, int hd,
                 int pos0, const int32_t *pos, float theta);
void cu_swiglu_fwd(const upc_kernels *K, const float *gate, const float *up, float *out, size_t n);
void cu_jitter_scale(const upc_kernels *K, float *x, size_t n, float eps, uint64_t key);
void cu_swiglu_bwd(const upc_kernels *K, const float *gate, const float *up, const float *dout,
                   float *dgate, float *dup, size_t n);

/* cuda_attention.cu */
void cu_attention_fwd(const upc_kernels *K, const float *q, const float *k, const float *v,
                      float *out, float *lse, int B, int T, int Hq, int Hkv, int hd);
void cu_attn_softmax_fwd(const upc_kernels *K, float *S, float *lse, int n, int T);
void cu_attn_softmax_bwd(const upc_kernels *K, const float *P, float *dP, int n, int T, float scale);
/* D[b][h][t] = dout . out per row, for the attention backwards, in scratch
 * slot SCRATCH_KERNEL (cuda_attention.cu) */
const float *cuda_attention_delta(const upc_kernels *K, const char *kernel, const float *out, const float *dout,
                                  int B, int T, int Hq, int hd);
/* cuda_attention_bf16.cu: the bf16 table's attention, on tensor cores */
void cu_attention_fwd_bf16(const upc_kernels *K, const float *q, const float *k, const float *v, float *out,
                           float *lse, int B, int T, int Hq, int Hkv, int hd);
void cu_attention_bwd_bf16(const upc_kernels *K, const float *q, const float *k, const float *v, const float *out,
                           const float *lse, const float *dout, float *dq, float *dk, float *dv, int B, int T,
                           int Hq, int Hkv, int hd);
void cu_attention_bwd(const upc_kernels *K, const float *q, const float *k, const float *v,
                      const float *out, const float *lse, const float *dout, float *dq, float *dk,
                      float *dv, int B, int T, int Hq, int Hkv, int hd);

/* cuda_kvcache.cu */
void cu_kv_cache_write(const upc_kernels *K, const float *k, const float *v, const int32_t *slots,
                       int rows, int Hkv, int hd, float *kcache, float *vcache);
void cu_paged_attention(const upc_kernels *K, const float *q, const float *kcache,
                        const float *vcache, const int32_t *block_table, int max_blocks,
                        int block_size, const int32_t *row_seq, const int32_t *row_pos, int rows,
                        int Hq, int Hkv, int hd, float *out);

/* cuda_loss.cu */
void cu_cross_entropy_fwd(const upc_kernels *K, const float *logits, const int32_t *targets,
                          float *loss, float *lse, int rows, int V);
void cu_cross_entropy_bwd(const upc_kernels *K, const float *logits, const int32_t *targets,
                          const float *lse, float *dlogits, int rows, int V, float scale);

/* cuda_moe.cu */
void cu_router_fwd(const upc_kernels *K, const float *logits, float *probs, int32_t *topk_idx,
                   float *topk_w, int N, int E, int kk, int renorm);
void cu_router_bwd(const upc_kernels *K, const float *probs, const int32_t *topk_idx,
                   const float *topk_w, const float *dtopk_w, float *dlogits, int N, int E, int kk,
                   int renorm);
void cu_moe_dispatch(const upc_kernels *K, const int32_t *topk_idx, int N, int kk, int E,
                     int32_t *counts, int32_t *offs, int32_t *perm, int32_t *pos);
void cu_moe_gather(const upc_kernels *K, const float *X, const int32_t *perm, int N, int kk, int d,
                   float *Xs);
void cu_moe_gather_bwd(const upc_kernels *K, const float *dXs, const int32_t *pos, int N, int kk,
                       int d, float *dX);
void cu_moe_combine(const upc_kernels *K, const float *Ys, const int32_t *pos, const float *w, int N,
                    int kk, int d, float beta, float *out);
void cu_moe_combine_bwd(const upc_kernels *K, const float *dout, const float *Ys,
                        const int32_t *pos, const float *w, int N, int kk, int d, float *dYs,
                        float *dw);
void cu_moe_capacity_drop(const upc_kernels *K, const int32_t *topk_idx, const int32_t *pos,
                          const int32_t *offs, int N, int kk, int E, int capacity, float *x,
                          int32_t *dropped);

/* cuda_moe_loss.cu */
void cu_moe_lb_loss_fwd(const upc_kernels *K, const float *probs, const int32_t *topk_idx, int N,
                        int E, int kk, float alpha, float *loss);
void cu_moe_lb_loss_bwd(const upc_kernels *K, const float *probs, const int32_t *topk_idx, int N,
                        int E, int kk, float alpha, float scale, float *dlogits);
void cu_moe_z_loss_fwd(const upc_kernels *K, const float *logits, int N, int E, float coef,
                       float *loss);
void cu_moe_z_loss_bwd(const upc_kernels *K, const float *logits, int N, int E, float coef,
                       float scale, float *dlogits);

/* cuda_sort.cu: a stable sort of n int32 keys in [0, key_limit) with their
 * indices 0..n-1 (CUB radix sort): sorted_idx[s] is the index of the s-th
 * smallest key (ties in index order); sorted_keys may be NULL. Uses the
 * scratch. */
void cuda_stable_sort_indices(const upc_kernels *K, const int32_t *keys, int n, int key_limit,
                              int32_t *sorted_idx, int32_t *sorted_keys, const char *kernel);

/* cuda_optim.cu */
void cu_adamw_step(const upc_kernels *K, float *param, const float *grad, float *m, float *v,
                   size_t n, upc_optim_params hp);
void cu_lion_step(const upc_kernels *K, float *param, const float *grad, float *m, size_t n,
                  upc_optim_params hp);
void cu_sum(const upc_kernels *K, const float *x, size_t n, float *out);
void cu_sumsq(const upc_kernels *K, const float *x, size_t n, float *out);
void cu_scale(const upc_kernels *K, float *x, size_t n, float a);
void cu_axpy(const upc_kernels *K, float *y, const float *x, size_t n, float a);
void cu_fill(const upc_kernels *K, float *x, size_t n, float value);
void cu_add(const upc_kernels *K, float *out, const float *a, const float *b, size_t n);

#endif
