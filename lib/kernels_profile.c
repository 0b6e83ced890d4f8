/* kernels_profile.c: UPC_PROFILE=1, a kernel table that times every call
 * of the table it wraps and, when the process exits, prints on stderr where
 * the time went: calls, total and mean time, share, and the achieved
 * GFLOP/s of the GEMMs, per kernel, busiest first.
 *
 * Each call is timed to completion (the wrapper syncs after it), so a
 * device's kernels no longer overlap the host and a short kernel's time
 * includes its launch and the sync: read small kernels' figures as upper
 * bounds, and time whole steps without UPC_PROFILE. Results do not change:
 * the wrapped table computes exactly what it computes alone.
 *
 * backend.c wraps every table it hands out while UPC_PROFILE=1; the
 * wrapper forwards each call to the inner table (which its kernels see as
 * K, so their ctx is theirs). */
#include "kernels_profile.h"
#include "util.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every kernel of upc_kernels, in table order: the profile's rows. */
#define KERNEL_NAMES(X) \
    X(alloc) X(free) X(upload) X(download) X(copy) X(memset) X(sync) X(gemm) X(gemm_strided_batched) \
    X(bf16_weights) X(grouped_gemm_fwd) X(grouped_gemm_dx) X(grouped_gemm_dw) X(embedding_fwd) \
    X(embedding_bwd) X(rmsnorm_fwd) X(rmsnorm_bwd) X(rope_fwd) X(rope_bwd) X(attention_fwd) \
    X(attention_bwd) X(attn_softmax_fwd) X(attn_softmax_bwd) X(kv_cache_write) X(paged_attention) \
    X(swiglu_fwd) X(swiglu_bwd) X(jitter_scale) X(cross_entropy_fwd) X(cross_entropy_bwd) \
    X(router_fwd) X(router_bwd) X(moe_dispatch) X(moe_gather) X(moe_gather_bwd) X(moe_combine) \
    X(moe_combine_bwd) X(moe_capacity_drop) X(moe_lb_loss_fwd) X(moe_lb_loss_bwd) X(moe_z_loss_fwd) \
    X(moe_z_loss_bwd) X(adamw_step) X(lion_step) X(sum) X(sumsq) X(scale) X(axpy) X(fill) X(add)

enum {
#define AS_ID(name) PK_##name,
    KERNEL_NAMES(AS_ID)
#undef AS_ID
    PK_COUNT
};

static const char *const kernel_names[PK_COUNT] = {
#define AS_NAME(name) #name,
    KERNEL_NAMES(AS_NAME)
#undef AS_NAME
};

/* A wrapper table: its ctx points back here, to the table it times. */
typedef struct {
    const upc_kernels *inner;
    upc_kernels table;
    long long calls;
} wrapper;

enum { MAX_WRAPPERS = 8 };   /* a process uses at most a table per backend and precision */
static wrapper wrappers[MAX_WRAPPERS];
static int n_wrappers;

static struct {
    long long calls;
    double seconds, flops;
} stats[PK_COUNT];
static double first_call = -1;

static const upc_kernels *inner(const upc_kernels *K)
{
    return ((const wrapper *)K->ctx)->inner;
}

static void record(const upc_kernels *K, int id, double seconds, double flops)
{
    stats[id].calls++;
    stats[id].seconds += seconds;
    stats[id].flops += flops;
    ((wrapper *)K->ctx)->calls++;
}

/* Run IN->call, wait for it, and charge the time to kernel id. `flops` is
 * evaluated after the timing stops (grouped_flops reads the device). */
#define TIMED(id, flops, call)                                                                  \
    do {                                                                                        \
        const upc_kernels *IN = inner(K);                                                       \
        double t0_ = upc_now();                                                                 \
        if (first_call < 0)                                                                     \
            first_call = t0_;                                                                   \
        IN->call;                                                                               \
        IN->sync(IN);                                                                           \
        double dt_ = upc_now() - t0_;                                                           \
        record(K, id, dt_, flops);                                                              \
    } while (0)

/* 2 rows n k over the rows of every group (offs[E] on the device). */
static double grouped_flops(const upc_kernels *IN, int E, const int32_t *offs, int n, int k)
{
    int32_t rows = 0;
    if (E > 0)
        IN->download(IN, &rows, offs + E, sizeof rows);
    return 2.0 * rows * n * k;
}
#define GROUPED_FLOPS grouped_flops(IN, E, offs, n, k)

static void *p_alloc(const upc_kernels *K, size_t bytes)
{
    const upc_kernels *IN = inner(K);
    double t0 = upc_now();
    void *r = IN->alloc(IN, bytes);
    record(K, PK_alloc, upc_now() - t0, 0);
    return r;
}

static void p_free(const upc_kernels *K, void *p)
{
    TIMED(PK_free, 0, free(IN, p));
}

static void p_upload(const upc_kernels *K, void *dst, const void *host_src, size_t bytes)
{
    TIMED(PK_upload, 0, upload(IN, dst, host_src, bytes));
}

static void p_download(const upc_kernels *K, void *host_dst, const void *src, size_t bytes)
{
    TIMED(PK_download, 0, download(IN, host_dst, src, bytes));
}

static void p_copy(const upc_kernels *K, void *dst, const void *src, size_t bytes)
{
    TIMED(PK_copy, 0, copy(IN, dst, src, bytes));
}

static void p_memset(const upc_kernels *K, void *dst, int value, size_t bytes)
{
    TIMED(PK_memset, 0, memset(IN, dst, value, bytes));
}

static void p_sync(const upc_kernels *K)
{
    TIMED(PK_sync, 0, sync(IN));
}

static void p_gemm(const upc_kernels *K, int trans_a, int trans_b, int m, int n, int k, float alpha, const float *A,
                   int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    TIMED(PK_gemm, 2.0 * m * n * k, gemm(IN, trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc));
}

static void p_gemm_strided_batched(const upc_kernels *K, int trans_a, int trans_b, int m, int n, int k, float alpha,
                                   const float *A, int lda, long long stride_a, const float *B, int ldb,
                                   long long stride_b, float beta, float *C, int ldc, long long stride_c, int batch)
{
    TIMED(PK_gemm_strided_batched, 2.0 * m * n * k * batch,
          gemm_strided_batched(IN, trans_a, trans_b, m, n, k, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc,
                               stride_c, batch));
}

static void p_bf16_weights(const upc_kernels *K, const float *w, size_t n)
{
    TIMED(PK_bf16_weights, 0, bf16_weights(IN, w, n));
}

static void p_grouped_gemm_fwd(const upc_kernels *K, int E, const int32_t *offs, int n, int k, const float *X,
                               const float *W, float beta, float *Y)
{
    TIMED(PK_grouped_gemm_fwd, GROUPED_FLOPS, grouped_gemm_fwd(IN, E, offs, n, k, X, W, beta, Y));
}

static void p_grouped_gemm_dx(const upc_kernels *K, int E, const int32_t *offs, int n, int k, const float *dY,
                              const float *W, float beta, float *dX)
{
    TIMED(PK_grouped_gemm_dx, GROUPED_FLOPS, grouped_gemm_dx(IN, E, offs, n, k, dY, W, beta, dX));
}

static void p_grouped_gemm_dw(const upc_kernels *K, int E, const int32_t *offs, int n, int k, const float *dY,
                              const float *X, float beta, float *dW)
{
    TIMED(PK_grouped_gemm_dw, GROUPED_FLOPS, grouped_gemm_dw(IN, E, offs, n, k, dY, X, beta, dW));
}

static void p_embedding_fwd(const upc_kernels *K, const int32_t *ids, int rows, const float *table, int V, int d,
                            float *out)
{
    TIMED(PK_embedding_fwd, 0, embedding_fwd(IN, ids, rows, table, V, d, out));
}

static void p_embedding_bwd(const upc_kernels *K, const int32_t *ids, int rows, const float *dout, int V, int d,
                            float *dtable)
{
    TIMED(PK_embedding_bwd, 0, embedding_bwd(IN, ids, rows, dout, V, d, dtable));
}

static void p_rmsnorm_fwd(const upc_kernels *K, const float *x, const float *w, float *y, float *rstd, int rows, int d,
                          float eps)
{
    TIMED(PK_rmsnorm_fwd, 0, rmsnorm_fwd(IN, x, w, y, rstd, rows, d, eps));
}

static void p_rmsnorm_bwd(const upc_kernels *K, const float *dy, const float *x, const float *w, const float *rstd,
                          float *dx, float *dw, int rows, int d)
{
    TIMED(PK_rmsnorm_bwd, 0, rmsnorm_bwd(IN, dy, x, w, rstd, dx, dw, rows, d));
}

static void p_rope_fwd(const upc_kernels *K, const float *x, float *y, int B, int T, int H, int hd, int pos0,
                       const int32_t *pos, float theta)
{
    TIMED(PK_rope_fwd, 0, rope_fwd(IN, x, y, B, T, H, hd, pos0, pos, theta));
}

static void p_rope_bwd(const upc_kernels *K, const float *dy, float *dx, int B, int T, int H, int hd, int pos0,
                       const int32_t *pos, float theta)
{
    TIMED(PK_rope_bwd, 0, rope_bwd(IN, dy, dx, B, T, H, hd, pos0, pos, theta));
}

static void p_attention_fwd(const upc_kernels *K, const float *q, const float *k, const float *v, float *out,
                            float *lse, int B, int T, int Hq, int Hkv, int hd)
{
    TIMED(PK_attention_fwd, 0, attention_fwd(IN, q, k, v, out, lse, B, T, Hq, Hkv, hd));
}

static void p_attention_bwd(const upc_kernels *K, const float *q, const float *k, const float *v, const float *out,
                            const float *lse, const float *dout, float *dq, float *dk, float *dv, int B, int T, int Hq,
                            int Hkv, int hd)
{
    TIMED(PK_attention_bwd, 0, attention_bwd(IN, q, k, v, out, lse, dout, dq, dk, dv, B, T, Hq, Hkv, hd));
}

static void p_attn_softmax_fwd(const upc_kernels *K, float *S, float *lse, int n, int T)
{
    TIMED(PK_attn_softmax_fwd, 0, attn_softmax_fwd(IN, S, lse, n, T));
}

static void p_attn_softmax_bwd(const upc_kernels *K, const float *P, float *dP, int n, int T, float scale)
{
    TIMED(PK_attn_softmax_bwd, 0, attn_softmax_bwd(IN, P, dP, n, T, scale));
}

static void p_kv_cache_write(const upc_kernels *K, const float *k, const float *v, const int32_t *slots, int rows,
                             int Hkv, int hd, float *kcache, float *vcache)
{
    TIMED(PK_kv_cache_write, 0, kv_cache_write(IN, k, v, slots, rows, Hkv, hd, kcache, vcache));
}

static void p_paged_attention(const upc_kernels *K, const float *q, const float *kcache, const float *vcache,
                              const int32_t *block_table, int max_blocks, int block_size, const int32_t *row_seq,
                              const int32_t *row_pos, int rows, int Hq, int Hkv, int hd, float *out)
{
    TIMED(PK_paged_attention, 0,
          paged_attention(IN, q, kcache, vcache, block_table, max_blocks, block_size, row_seq, row_pos, rows, Hq, Hkv,
                          hd, out));
}

static void p_swiglu_fwd(const upc_kernels *K, const float *gate, const float *up, float *out, size_t n)
{
    TIMED(PK_swiglu_fwd, 0, swiglu_fwd(IN, gate, up, out, n));
}

static void p_swiglu_bwd(const upc_kernels *K, const float *gate, const float *up, const float *dout, float *dgate,
                         float *dup, size_t n)
{
    TIMED(PK_swiglu_bwd, 0, swiglu_bwd(IN, gate, up, dout, dgate, dup, n));
}

static void p_jitter_scale(const upc_kernels *K, float *x, size_t n, float eps, uint64_t key)
{
    TIMED(PK_jitter_scale, 0, jitter_scale(IN, x, n, eps, key));
}

static void p_cross_entropy_fwd(const upc_kernels *K, const float *logits, const int32_t *targets, float *loss,
                                float *lse, int rows, int V)
{
    TIMED(PK_cross_entropy_fwd, 0, cross_entropy_fwd(IN, logits, targets, loss, lse, rows, V));
}

static void p_cross_entropy_bwd(const upc_kernels *K, const float *logits, const int32_t *targets, const float *lse,
                                float *dlogits, int rows, int V, float scale)
{
    TIMED(PK_cross_entropy_bwd, 0, cross_entropy_bwd(IN, logits, targets, lse, dlogits, rows, V, scale));
}

static void p_router_fwd(const upc_kernels *K, const float *logits, float *probs, int32_t *topk_idx, float *topk_w,
                         int N, int E, int kk, int renorm)
{
    TIMED(PK_router_fwd, 0, router_fwd(IN, logits, probs, topk_idx, topk_w, N, E, kk, renorm));
}

static void p_router_bwd(const upc_kernels *K, const float *probs, const int32_t *topk_idx, const float *topk_w,
                         const float *dtopk_w, float *dlogits, int N, int E, int kk, int renorm)
{
    TIMED(PK_router_bwd, 0, router_bwd(IN, probs, topk_idx, topk_w, dtopk_w, dlogits, N, E, kk, renorm));
}

static void p_moe_dispatch(const upc_kernels *K, const int32_t *topk_idx, int N, int kk, int E, int32_t *counts,
                           int32_t *offs, int32_t *perm, int32_t *pos)
{
    TIMED(PK_moe_dispatch, 0, moe_dispatch(IN, topk_idx, N, kk, E, counts, offs, perm, pos));
}

static void p_moe_gather(const upc_kernels *K, const float *X, const int32_t *perm, int N, int kk, int d, float *Xs)
{
    TIMED(PK_moe_gather, 0, moe_gather(IN, X, perm, N, kk, d, Xs));
}

static void p_moe_gather_bwd(const upc_kernels *K, const float *dXs, const int32_t *pos, int N, int kk, int d,
                             float *dX)
{
    TIMED(PK_moe_gather_bwd, 0, moe_gather_bwd(IN, dXs, pos, N, kk, d, dX));
}

static void p_moe_combine(const upc_kernels *K, const float *Ys, const int32_t *pos, const float *w, int N, int kk,
                          int d, float beta, float *out)
{
    TIMED(PK_moe_combine, 0, moe_combine(IN, Ys, pos, w, N, kk, d, beta, out));
}

static void p_moe_combine_bwd(const upc_kernels *K, const float *dout, const float *Ys, const int32_t *pos,
                              const float *w, int N, int kk, int d, float *dYs, float *dw)
{
    TIMED(PK_moe_combine_bwd, 0, moe_combine_bwd(IN, dout, Ys, pos, w, N, kk, d, dYs, dw));
}

static void p_moe_capacity_drop(const upc_kernels *K, const int32_t *topk_idx, const int32_t *pos, const int32_t *offs,
                                int N, int kk, int E, int capacity, float *x, int32_t *dropped)
{
    TIMED(PK_moe_capacity_drop, 0, moe_capacity_drop(IN, topk_idx, pos, offs, N, kk, E, capacity, x, dropped));
}

static void p_moe_lb_loss_fwd(const upc_kernels *K, const float *probs, const int32_t *topk_idx, int N, int E, int kk,
                              float alpha, float *loss)
{
    TIMED(PK_moe_lb_loss_fwd, 0, moe_lb_loss_fwd(IN, probs, topk_idx, N, E, kk, alpha, loss));
}

static void p_moe_lb_loss_bwd(const upc_kernels *K, const float *probs, const int32_t *topk_idx, int N, int E, int kk,
                              float alpha, float scale, float *dlogits)
{
    TIMED(PK_moe_lb_loss_bwd, 0, moe_lb_loss_bwd(IN, probs, topk_idx, N, E, kk, alpha, scale, dlogits));
}

static void p_moe_z_loss_fwd(const upc_kernels *K, const float *logits, int N, int E, float coef, float *loss)
{
    TIMED(PK_moe_z_loss_fwd, 0, moe_z_loss_fwd(IN, logits, N, E, coef, loss));
}

static void p_moe_z_loss_bwd(const upc_kernels *K, const float *logits, int N, int E, float coef, float scale,
                             float *dlogits)
{
    TIMED(PK_moe_z_loss_bwd, 0, moe_z_loss_bwd(IN, logits, N, E, coef, scale, dlogits));
}

static void p_adamw_step(const upc_kernels *K, float *param, const float *grad, float *m, float *v, size_t n,
                         upc_optim_params hp)
{
    TIMED(PK_adamw_step, 0, adamw_step(IN, param, grad, m, v, n, hp));
}

static void p_lion_step(const upc_kernels *K, float *param, const float *grad, float *m, size_t n, upc_optim_params hp)
{
    TIMED(PK_lion_step, 0, lion_step(IN, param, grad, m, n, hp));
}

static void p_sum(const upc_kernels *K, const float *x, size_t n, float *out)
{
    TIMED(PK_sum, 0, sum(IN, x, n, out));
}

static void p_sumsq(const upc_kernels *K, const float *x, size_t n, float *out)
{
    TIMED(PK_sumsq, 0, sumsq(IN, x, n, out));
}

static void p_scale(const upc_kernels *K, float *x, size_t n, float a)
{
    TIMED(PK_scale, 0, scale(IN, x, n, a));
}

static void p_axpy(const upc_kernels *K, float *y, const float *x, size_t n, float a)
{
    TIMED(PK_axpy, 0, axpy(IN, y, x, n, a));
}

static void p_fill(const upc_kernels *K, float *x, size_t n, float value)
{
    TIMED(PK_fill, 0, fill(IN, x, n, value));
}

static void p_add(const upc_kernels *K, float *out, const float *a, const float *b, size_t n)
{
    TIMED(PK_add, 0, add(IN, out, a, b, n));
}

/* a kernel added to kernels.h without a wrapper here fails this assert */
_Static_assert(sizeof(upc_kernels) == 3 * sizeof(void *) + PK_COUNT * sizeof(void (*)(void)),
               "kernels_profile.c: wrap every kernel of upc_kernels");

static void fill_table(upc_kernels *t)
{
    t->alloc = p_alloc;
    t->free = p_free;
    t->upload = p_upload;
    t->download = p_download;
    t->copy = p_copy;
    t->memset = p_memset;
    t->sync = p_sync;
    t->gemm = p_gemm;
    t->gemm_strided_batched = p_gemm_strided_batched;
    t->bf16_weights = p_bf16_weights;
    t->grouped_gemm_fwd = p_grouped_gemm_fwd;
    t->grouped_gemm_dx = p_grouped_gemm_dx;
    t->grouped_gemm_dw = p_grouped_gemm_dw;
    t->embedding_fwd = p_embedding_fwd;
    t->embedding_bwd = p_embedding_bwd;
    t->rmsnorm_fwd = p_rmsnorm_fwd;
    t->rmsnorm_bwd = p_rmsnorm_bwd;
    t->rope_fwd = p_rope_fwd;
    t->rope_bwd = p_rope_bwd;
    t->attention_fwd = p_attention_fwd;
    t->attention_bwd = p_attention_bwd;
    t->attn_softmax_fwd = p_attn_softmax_fwd;
    t->attn_softmax_bwd = p_attn_softmax_bwd;
    t->kv_cache_write = p_kv_cache_write;
    t->paged_attention = p_paged_attention;
    t->swiglu_fwd = p_swiglu_fwd;
    t->swiglu_bwd = p_swiglu_bwd;
    t->jitter_scale = p_jitter_scale;
    t->cross_entropy_fwd = p_cross_entropy_fwd;
    t->cross_entropy_bwd = p_cross_entropy_bwd;
    t->router_fwd = p_router_fwd;
    t->router_bwd = p_router_bwd;
    t->moe_dispatch = p_moe_dispatch;
    t->moe_gather = p_moe_gather;
    t->moe_gather_bwd = p_moe_gather_bwd;
    t->moe_combine = p_moe_combine;
    t->moe_combine_bwd = p_moe_combine_bwd;
    t->moe_capacity_drop = p_moe_capacity_drop;
    t->moe_lb_loss_fwd = p_moe_lb_loss_fwd;
    t->moe_lb_loss_bwd = p_moe_lb_loss_bwd;
    t->moe_z_loss_fwd = p_moe_z_loss_fwd;
    t->moe_z_loss_bwd = p_moe_z_loss_bwd;
    t->adamw_step = p_adamw_step;
    t->lion_step = p_lion_step;
    t->sum = p_sum;
    t->sumsq = p_sumsq;
    t->scale = p_scale;
    t->axpy = p_axpy;
    t->fill = p_fill;
    t->add = p_add;
}

static int by_time(const void *a, const void *b)
{
    double ta = stats[*(const int *)a].seconds, tb = stats[*(const int *)b].seconds;
    return (ta < tb) - (ta > tb);
}

static void print_profile(void)
{
    double total = 0, wall = first_call < 0 ? 0 : upc_now() - first_call;
    long long calls = 0;
    int order[PK_COUNT], n = 0;
    for (int i = 0; i < PK_COUNT; i++) {
        total += stats[i].seconds;
        calls += stats[i].calls;
        if (stats[i].calls)
            order[n++] = i;
    }
    qsort(order, (size_t)n, sizeof *order, by_time);
    fprintf(stderr, "%s: kernel profile (UPC_PROFILE=1; every call synced, so short kernels include launch and sync):",
            upc_progname);
    for (int w = 0; w < n_wrappers; w++)
        if (wrappers[w].calls)
            fprintf(stderr, " %s %s", wrappers[w].table.name, wrappers[w].table.precision);
    fprintf(stderr, "\n%s: %lld calls, %.1f ms in kernels of %.1f ms since the first call\n", upc_progname, calls,
            total * 1e3, wall * 1e3);
    fprintf(stderr, "%-22s %10s %12s %7s %11s %10s\n", "kernel", "calls", "total_ms", "share", "mean_us", "GFLOP/s");
    for (int j = 0; j < n; j++) {
        int i = order[j];
        char gflops[32] = "-";
        if (stats[i].flops > 0 && stats[i].seconds > 0)
            snprintf(gflops, sizeof gflops, "%.1f", stats[i].flops / stats[i].seconds * 1e-9);
        fprintf(stderr, "%-22s %10lld %12.3f %6.1f%% %11.1f %10s\n", kernel_names[i], stats[i].calls,
                stats[i].seconds * 1e3, total > 0 ? 100.0 * stats[i].seconds / total : 0.0,
                stats[i].seconds / (double)stats[i].calls * 1e6, gflops);
    }
}

bool upc_profile_enabled(void)
{
    static int on = -1;
    if (on < 0)
        on = upc_env_choice("UPC_PROFILE", "0,1");
    return on;
}

const upc_kernels *upc_profile_wrap(const upc_kernels *K)
{
    if (!K || !upc_profile_enabled())
        return K;
    for (int w = 0; w < n_wrappers; w++)
        if (K == &wrappers[w].table || K == wrappers[w].inner)
            return &wrappers[w].table;
    if (n_wrappers == MAX_WRAPPERS)
        upc_fail(EX_SOFTWARE, "UPC_PROFILE: more than %d kernel tables", MAX_WRAPPERS);
    if (n_wrappers == 0)
        atexit(print_profile);
    wrapper *w = &wrappers[n_wrappers++];
    w->inner = K;
    w->table = *K;   /* name and precision */
    w->table.ctx = w;
    fill_table(&w->table);
    return &w->table;
}

const upc_kernels *upc_profile_unwrap(const upc_kernels *K)
{
    for (int w = 0; K && w < n_wrappers; w++)
        if (K == &wrappers[w].table)
            return wrappers[w].inner;
    return K;
}
