/* kernels_cpu.c: the CPU backend's table and its memory: "device memory" is
 * host memory, so upload, download and copy are memcpy. */
#include "kernels_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void upc_optim_params_at(upc_optim_params *p, long long step)
{
    if (step < 1)
        upc_fail(EX_SOFTWARE, "optimizer step %lld: steps count from 1", step);
    p->bias_correction1 = (float)(1.0 - pow((double)p->beta1, (double)step));
    p->bias_correction2 = (float)(1.0 - pow((double)p->beta2, (double)step));
}

static void *cpu_alloc(const upc_kernels *K, size_t bytes)
{
    /* Whole cache lines, at least one, so every allocation is distinct. */
    size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded < bytes)
        return NULL;
    if (rounded == 0)
        rounded = 64;
    void *p = aligned_alloc(64, rounded);
    if (p)
        memset(p, 0, rounded);
    return p;
}

static void cpu_free(const upc_kernels *K, void *p)
{
    free(p);
}

static void cpu_upload(const upc_kernels *K, void *dst, const void *src, size_t bytes)
{
    if (bytes)
        memcpy(dst, src, bytes);
}

static void cpu_copy(const upc_kernels *K, void *dst, const void *src, size_t bytes)
{
    if (bytes)
        memmove(dst, src, bytes);
}

static void cpu_memset(const upc_kernels *K, void *dst, int value, size_t bytes)
{
    if (bytes)
        memset(dst, value, bytes);
}

static void cpu_sync(const upc_kernels *K)
{
}

static const upc_kernels cpu_table = {
    .name = "cpu",
    .ctx = NULL,
    .precision = "fp32",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_upload,
    .copy = cpu_copy,
    .memset = cpu_memset,
    .sync = cpu_sync,
    .gemm = cpu_gemm,
    .gemm_strided_batched = cpu_gemm_strided_batched,
    .bf16_weights = cpu_bf16_weights,
    .grouped_gemm_fwd = cpu_grouped_gemm_fwd,
    .grouped_gemm_dx = cpu_grouped_gemm_dx,
    .grouped_gemm_dw = cpu_grouped_gemm_dw,
    .embedding_fwd = cpu_embedding_fwd,
    .embedding_bwd = cpu_embedding_bwd,
    .rmsnorm_fwd = cpu_rmsnorm_fwd,
    .rmsnorm_bwd = cpu_rmsnorm_bwd,
    .rope_fwd = cpu_rope_fwd,
    .rope_bwd = cpu_rope_bwd,
    .attention_fwd = cpu_attention_fwd,
    .attention_bwd = cpu_attention_bwd,
    .attn_softmax_fwd = cpu_attn_softmax_fwd,
    .attn_softmax_bwd = cpu_attn_softmax_bwd,
    .swiglu_fwd = cpu_swiglu_fwd,
    .jitter_scale = cpu_jitter_scale,
    .swiglu_bwd = cpu_swiglu_bwd,
    .cross_entropy_fwd = cpu_cross_entropy_fwd,
    .cross_entropy_bwd = cpu_cross_entropy_bwd,
    .router_fwd = cpu_router_fwd,
    .router_bwd = cpu_router_bwd,
    .moe_dispatch = cpu_moe_dispatch,
    .moe_gather = cpu_moe_gather,
    .moe_gather_bwd = cpu_moe_gather_bwd,
    .moe_combine = cpu_moe_combine,
    .moe_combine_bwd = cpu_moe_combine_bwd,
    .moe_capacity_drop = cpu_moe_capacity_drop,
    .kv_cache_write = cpu_kv_cache_write,
    .paged_attention = cpu_paged_attention,
    .moe_lb_loss_fwd = cpu_moe_lb_loss_fwd,
    .moe_lb_loss_bwd = cpu_moe_lb_loss_bwd,
    .moe_z_loss_fwd = cpu_moe_z_loss_fwd,
    .moe_z_loss_bwd = cpu_moe_z_loss_bwd,
    .adamw_step = cpu_adamw_step,
    .lion_step = cpu_lion_step,
    .sum = cpu_sum,
    .sumsq = cpu_sumsq,
    .scale = cpu_scale,
    .axpy = cpu_axpy,
    .fill = cpu_fill,
    .add = cpu_add,
};

const upc_kernels *kernels_cpu(void)
{
    return &cpu_table;
}

const upc_kernels *kernels_cpu_bf16(void)
{
    static upc_kernels t;
    if (!t.name) {
        t = cpu_table;
        t.precision = "bf16";   /* the GEMMs ask it (upc_kernels_bf16) */
    }
    return &t;
}

void kernels_cpu_prepare_process(char **argv)
{
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT"))
        return;
    /* libgomp reads its settings when it loads, before main: only a fresh
     * image of the program sees them. On failure, run as we are. */
    if (setenv("OMP_WAIT_POLICY", "PASSIVE", 1) == 0 && setenv("GOMP_SPINCOUNT", "10000", 1) == 0)
        execv("/proc/self/exe", argv);
}
