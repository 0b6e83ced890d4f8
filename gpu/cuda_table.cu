/* cuda_table.cu: the CUDA backend's state and memory, and the table of
 * kernels_cuda(): device pick (UPC_CUDA_DEVICE, default 0), cuBLAS handle
 * (fp32, TF32 off), the device error word, scratch workspaces. Memory ops
 * run on the legacy default stream: upload and download are synchronous
 * cudaMemcpy (download also waits for every queued kernel), copy and
 * memset are queued. */
#include "cuda_internal.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const err_text[CUDA_ERR_COUNT] = {
    "no error",
    "embedding_fwd: token id out of range",
    "embedding_bwd: token id out of range",
    "cross_entropy_fwd: target out of range",
    "cross_entropy_bwd: target out of range",
    "router_bwd: expert index out of range",
    "moe_dispatch: expert index out of range",
    "moe_gather: perm entry out of range",
    "moe_lb_loss: expert index out of range",
    "kv_cache_write: negative slot",
    "paged_attention: position past the block table",
    "moe_capacity_drop: expert index out of range",
    "grouped_gemm: group offsets do not start at 0 or decrease",
};

void cuda_after_launch(const upc_kernels *K, const char *kernel)
{
    CUDA_CHECK(cudaGetLastError(), kernel, "kernel launch");
    if (CTX(K)->debug_sync) {
        CUDA_CHECK(cudaDeviceSynchronize(), kernel, "kernel run (UPC_CUDA_SYNC)");
        cuda_check_device_error(K, kernel);
    }
}

void cuda_check_device_error(const upc_kernels *K, const char *where)
{
    int code = 0;
    CUDA_CHECK(cudaMemcpy(&code, CTX(K)->err, sizeof code, cudaMemcpyDeviceToHost), where,
               "reading the device error word (rerun with UPC_CUDA_SYNC=1 to name the kernel)");
    if (code != 0) {
        const char *text = code > 0 && code < CUDA_ERR_COUNT ? err_text[code] : "unknown device error";
        upc_fail(EX_SOFTWARE, "cuda: %s (found at %s)", text, where);
    }
}

void *cuda_scratch(const upc_kernels *K, int slot, size_t bytes, const char *kernel)
{
    cuda_ctx *c = CTX(K);
    if (bytes <= c->scratch_bytes[slot])
        return c->scratch[slot];
    size_t want = bytes + bytes / 4 + 4096;
    if (c->scratch[slot])
        CUDA_CHECK(cudaFree(c->scratch[slot]), kernel, "freeing scratch");
    c->scratch[slot] = NULL;
    c->scratch_bytes[slot] = 0;
    cudaError_t e = cudaMalloc(&c->scratch[slot], want);
    if (e != cudaSuccess)
        upc_fail(EX_OSERR, "cuda: %s: out of device memory for %zu bytes of scratch (%s)", kernel, want,
                 cudaGetErrorString(e));
    c->scratch_bytes[slot] = want;
    return c->scratch[slot];
}

/* ---- memory -------------------------------------------------------------- */

static void *cu_alloc(const upc_kernels *K, size_t bytes)
{
    size_t rounded = (bytes + 255) / 256 * 256;
    if (rounded < bytes)
        return NULL;
    if (rounded == 0)
        rounded = 256;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, rounded);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();   /* not sticky: clear it, the caller reports */
        return NULL;
    }
    CUDA_CHECK(e, "alloc", "cudaMalloc");
    CUDA_CHECK(cudaMemset(p, 0, rounded), "alloc", "zero-filling");
    return p;
}

static void cu_free(const upc_kernels *K, void *p)
{
    if (p)
        CUDA_CHECK(cudaFree(p), "free", "cudaFree");
}

static void cu_upload(const upc_kernels *K, void *dst, const void *src, size_t bytes)
{
    if (bytes)
        CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "upload", "cudaMemcpy");
}

static void cu_download(const upc_kernels *K, void *dst, const void *src, size_t bytes)
{
    if (bytes)
        CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "download",
                   "cudaMemcpy (a fault here may come from any queued kernel: rerun with UPC_CUDA_SYNC=1)");
    cuda_check_device_error(K, "download");
}

static void cu_copy(const upc_kernels *K, void *dst, const void *src, size_t bytes)
{
    if (bytes && dst != src)
        CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0), "copy",
                   "cudaMemcpyAsync");
}

static void cu_memset(const upc_kernels *K, void *dst, int value, size_t bytes)
{
    if (bytes)
        CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, 0), "memset", "cudaMemsetAsync");
}

static void cu_sync(const upc_kernels *K)
{
    CUDA_CHECK(cudaDeviceSynchronize(), "sync",
               "cudaDeviceSynchronize (a fault of a queued kernel: rerun with UPC_CUDA_SYNC=1)");
    cuda_check_device_error(K, "sync");
}

/* ---- the table ------------------------------------------------------------ */

static cuda_ctx the_ctx;
static upc_kernels the_table;
static int init_state;          /* 0 not tried, 1 ready, -1 failed */
static char init_why[256];

static void fill_table(upc_kernels *t)
{
    t->name = "cuda";
    t->ctx = &the_ctx;
    t->precision = "fp32";
    t->alloc = cu_alloc;
    t->free = cu_free;
    t->upload = cu_upload;
    t->download = cu_download;
    t->copy = cu_copy;
    t->memset = cu_memset;
    t->sync = cu_sync;
    t->gemm = cu_gemm;
    t->gemm_strided_batched = cu_gemm_strided_batched;
    t->bf16_weights = cu_bf16_weights;
    t->grouped_gemm_fwd = cu_grouped_gemm_fwd;
    t->grouped_gemm_dx = cu_grouped_gemm_dx;
    t->grouped_gemm_dw = cu_grouped_gemm_dw;
    t->embedding_fwd = cu_embedding_fwd;
    t->embedding_bwd = cu_embedding_bwd;
    t->rmsnorm_fwd = cu_rmsnorm_fwd;
    t->rmsnorm_bwd = cu_rmsnorm_bwd;
    t->rope_fwd = cu_rope_fwd;
    t->rope_bwd = cu_rope_bwd;
    t->attention_fwd = cu_attention_fwd;
    t->attention_bwd = cu_attention_bwd;
    t->attn_softmax_fwd = cu_attn_softmax_fwd;
    t->attn_softmax_bwd = cu_attn_softmax_bwd;
    t->kv_cache_write = cu_kv_cache_write;
    t->paged_attention = cu_paged_attention;
    t->swiglu_fwd = cu_swiglu_fwd;
    t->jitter_scale = cu_jitter_scale;
    t->swiglu_bwd = cu_swiglu_bwd;
    t->cross_entropy_fwd = cu_cross_entropy_fwd;
    t->cross_entropy_bwd = cu_cross_entropy_bwd;
    t->router_fwd = cu_router_fwd;
    t->router_bwd = cu_router_bwd;
    t->moe_dispatch = cu_moe_dispatch;
    t->moe_gather = cu_moe_gather;
    t->moe_gather_bwd = cu_moe_gather_bwd;
    t->moe_combine = cu_moe_combine;
    t->moe_combine_bwd = cu_moe_combine_bwd;
    t->moe_capacity_drop = cu_moe_capacity_drop;
    t->moe_lb_loss_fwd = cu_moe_lb_loss_fwd;
    t->moe_lb_loss_bwd = cu_moe_lb_loss_bwd;
    t->moe_z_loss_fwd = cu_moe_z_loss_fwd;
    t->moe_z_loss_bwd = cu_moe_z_loss_bwd;
    t->adamw_step = cu_adamw_step;
    t->lion_step = cu_lion_step;
    t->sum = cu_sum;
    t->sumsq = cu_sumsq;
    t->scale = cu_scale;
    t->axpy = cu_axpy;
    t->fill = cu_fill;
    t->add = cu_add;
}

/* Bring the device up; on failure say why in init_why. */
static int init_device(void)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        snprintf(init_why, sizeof init_why, "cudaGetDeviceCount: %s%s", cudaGetErrorString(e),
                 e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice ? " (no NVIDIA GPU or driver here)" : "");
        return -1;
    }
    if (count == 0) {
        snprintf(init_why, sizeof init_why, "cudaGetDeviceCount found no device");
        return -1;
    }
    /* one GPU per process of a job on a node: the local rank picks it */
    int dev = 0;
    const char *local[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"};
    for (size_t i = 0; i < sizeof local / sizeof *local; i++) {
        const char *lr = getenv(local[i]);
        if (lr && *lr) {
            dev = atoi(lr) % count;
            break;
        }
    }
    const char *env = getenv("UPC_CUDA_DEVICE");
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end || v < 0 || v >= count) {
            snprintf(init_why, sizeof init_why, "UPC_CUDA_DEVICE=%s: not a device number below %d", env, count);
            return -1;
        }
        dev = (int)v;
    }
    if ((e = cudaSetDevice(dev)) != cudaSuccess || (e = cudaFree(0)) != cudaSuccess) {
        snprintf(init_why, sizeof init_why, "device %d: %s", dev, cudaGetErrorString(e));
        return -1;
    }
    cuda_ctx *c = &the_ctx;
    c->device = dev;
    cublasStatus_t s = cublasCreate(&c->blas);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(init_why, sizeof init_why, "cublasCreate: %s", cublasGetStatusString(s));
        return -1;
    }
    /* fp32 GEMMs in fp32: no TF32, so results track the CPU backend. */
    if ((s = cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS ||
        (s = cublasSetPointerMode(c->blas, CUBLAS_POINTER_MODE_HOST)) != CUBLAS_STATUS_SUCCESS) {
        snprintf(init_why, sizeof init_why, "cuBLAS setup: %s", cublasGetStatusString(s));
        return -1;
    }
    if ((e = cudaMalloc(&c->err, sizeof(int))) != cudaSuccess || (e = cudaMemset(c->err, 0, sizeof(int))) != cudaSuccess) {
        snprintf(init_why, sizeof init_why, "allocating the error word: %s", cudaGetErrorString(e));
        return -1;
    }
    const char *dbg = getenv("UPC_CUDA_SYNC");
    c->debug_sync = dbg && *dbg && strcmp(dbg, "0") != 0;
    cuda_bf16_gemm_fast();   /* a bad UPC_BF16_GEMM fails now, not at the first bf16 GEMM */
    fill_table(&the_table);
    return 1;
}

extern "C" const upc_kernels *kernels_cuda(char *why, size_t n)
{
    if (init_state == 0)
        init_state = init_device();
    if (init_state > 0)
        return &the_table;
    if (why && n)
        snprintf(why, n, "%s", init_why);
    return NULL;
}

extern "C" const upc_kernels *kernels_cuda_bf16(void)
{
    static upc_kernels t;
    if (init_state <= 0)
        return NULL;
    if (!t.name) {
        t = the_table;
        t.precision = "bf16";   /* the GEMMs ask it (upc_kernels_bf16) */
        t.attention_fwd = cu_attention_fwd_bf16;   /* tensor cores (UPC_BF16_ATTENTION=flash) */
        t.attention_bwd = cu_attention_bwd_bf16;
    }
    return &t;
}

extern "C" const char *kernels_cuda_device_name(void)
{
    static char name[512];
    cudaDeviceProp p;
    if (init_state <= 0 || cudaGetDeviceProperties(&p, the_ctx.device) != cudaSuccess)
        return "no CUDA device";
    snprintf(name, sizeof name, "%.255s (sm_%d%d, %d SMs, %.1f GiB)", p.name, p.major, p.minor, p.multiProcessorCount,
             p.totalGlobalMem / 1073741824.0);
    return name;
}
