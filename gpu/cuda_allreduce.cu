/* cuda_allreduce.cu: the gradient sum of a data-parallel job on CUDA
 * buffers (upc_backend_allreduce_sum). NCCL sums the device buffer where
 * it lies; it is loaded at run time (dlopen of libnccl.so.2), so that the
 * tools neither link nor ship it and a machine without it still trains,
 * through host memory: the buffer is copied to pinned memory, summed by the
 * job's host collective (MPI), and copied back.
 *
 * The first call decides for the whole job, since every process must make
 * the same calls: each says whether it loaded NCCL, the answers are summed,
 * and NCCL is used only if all did. Rank 0 then makes the NCCL id and
 * broadcasts it over the host collective. The all-reduce runs on the legacy
 * default stream, in order with every kernel (cuda_internal.cuh). */
#include "cuda_internal.cuh"

#include <dlfcn.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "backend.h"
}

/* The NCCL entry points this file calls, found with dlsym. */
typedef struct {
    ncclResult_t (*get_unique_id)(ncclUniqueId *id);
    ncclResult_t (*comm_init_rank)(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank);
    ncclResult_t (*all_reduce)(const void *send, void *recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t stream);
    const char *(*error_string)(ncclResult_t r);
} nccl_api;

enum sum_mode { UNDECIDED, SUM_NCCL, SUM_HOST };

static struct {
    enum sum_mode mode;
    nccl_api api;
    ncclComm_t comm;
    float *host;          /* pinned buffer of the host path */
    size_t host_cap;
} dp;

#define NCCL_CHECK(call, what)                                                                   \
    do {                                                                                         \
        ncclResult_t r_ = (call);                                                                \
        if (r_ != ncclSuccess)                                                                   \
            upc_fail(EX_OSERR, "cuda: allreduce: %s: %s", (what), dp.api.error_string(r_));      \
    } while (0)

/* Load libnccl.so.2 into dp.api; false with the reason in why[n]. */
static bool load_nccl(char *why, size_t n)
{
    void *lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(why, n, "%s", dlerror());
        return false;
    }
    struct {
        const char *name;
        void **slot;
    } syms[] = {
        {"ncclGetUniqueId", (void **)&dp.api.get_unique_id},
        {"ncclCommInitRank", (void **)&dp.api.comm_init_rank},
        {"ncclAllReduce", (void **)&dp.api.all_reduce},
        {"ncclGetErrorString", (void **)&dp.api.error_string},
    };
    for (size_t i = 0; i < sizeof syms / sizeof *syms; i++) {
        *syms[i].slot = dlsym(lib, syms[i].name);
        if (!*syms[i].slot) {
            snprintf(why, n, "libnccl.so.2 has no %s", syms[i].name);
            return false;
        }
    }
    return true;
}

/* UPC_NCCL: 0 never, 1 required (even in a world of one), else -1: auto. */
static int nccl_setting(void)
{
    static int setting = -2;
    if (setting == -2) {
        const char *env = getenv("UPC_NCCL");
        setting = env && strcmp(env, "0") == 0 ? 0 : env && strcmp(env, "1") == 0 ? 1 : -1;
    }
    return setting;
}

static enum sum_mode decide(const upc_collectives *c)
{
    bool never = nccl_setting() == 0, required = nccl_setting() == 1;
    char why[512] = "UPC_NCCL=0";
    bool loaded = !never && load_nccl(why, sizeof why);
    if (required && !loaded)
        upc_fail(EX_UNAVAILABLE, "cuda: allreduce: UPC_NCCL=1, but NCCL cannot be loaded: %s", why);
    int64_t all = loaded;
    if (c->world > 1)
        c->sum_i64(&all, 1);
    if (all != c->world) {
        if (c->rank == 0)
            upc_warn("gradients are summed through host memory, not NCCL: %s",
                     loaded ? "another process cannot load libnccl.so.2" : why);
        return SUM_HOST;
    }
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (c->rank == 0)
        NCCL_CHECK(dp.api.get_unique_id(&id), "ncclGetUniqueId");
    if (c->world > 1)
        c->broadcast(&id, sizeof id, 0);
    NCCL_CHECK(dp.api.comm_init_rank(&dp.comm, c->world, id, c->rank), "ncclCommInitRank");
    return SUM_NCCL;
}

static void sum_through_host(float *x, size_t n, const upc_collectives *c)
{
    const char *kernel = "allreduce";
    if (n > dp.host_cap) {
        if (dp.host)
            CUDA_CHECK(cudaFreeHost(dp.host), kernel, "cudaFreeHost");
        dp.host = NULL;
        dp.host_cap = 0;
        CUDA_CHECK(cudaMallocHost((void **)&dp.host, n * sizeof(float)), kernel, "cudaMallocHost");
        dp.host_cap = n;
    }
    CUDA_CHECK(cudaMemcpy(dp.host, x, n * sizeof(float), cudaMemcpyDeviceToHost), kernel, "copy to the host");
    c->sum_f32(dp.host, n);
    CUDA_CHECK(cudaMemcpy(x, dp.host, n * sizeof(float), cudaMemcpyHostToDevice), kernel, "copy to the device");
}

extern "C" void kernels_cuda_allreduce_sum(float *x, size_t n, const upc_collectives *c)
{
    if ((c->world <= 1 && nccl_setting() != 1) || n == 0)
        return;
    if (dp.mode == UNDECIDED)
        dp.mode = decide(c);
    if (dp.mode == SUM_HOST) {
        sum_through_host(x, n, c);
        return;
    }
    NCCL_CHECK(dp.api.all_reduce(x, x, n, ncclFloat32, ncclSum, dp.comm, 0), "ncclAllReduce");
}
