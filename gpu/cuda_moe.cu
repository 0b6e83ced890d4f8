/* cuda_moe.cu: MoE routing on the GPU: router softmax + top-k (a thread per
 * token, as the CPU's loops), the dropless dispatch (a stable radix sort of
 * the assignments by expert: cuda_sort.cu; group offsets by binary search
 * over the sorted experts), gather/combine with their backwards (every
 * per-token sum over slots in slot order) and capacity drops. The only
 * atomics are integer ones (the device error word, the dropped count),
 * whose results do not depend on order. */
#include "cuda_internal.cuh"

static void check_router(const char *kernel, int N, int E, int kk)
{
    CUDA_REQUIRE(N >= 0 && E > 0, kernel, "bad size");
    CUDA_REQUIRE(kk >= 1 && kk <= E, kernel, "top-k must be in 1..E");
}

/* ---- router ------------------------------------------------------------------ */

static __global__ void router_fwd_kernel(const float *logits, float *probs, int32_t *topk_idx, float *topk_w,
                                         int N, int E, int kk, int renorm)
{
    GRID_STRIDE(n, (size_t)N) {
        const float *x = logits + n * E;
        float *p = probs + n * E;
        int32_t *idx = topk_idx + n * kk;
        float *w = topk_w + n * kk;
        upc_softmax_row(x, p, E);
        upc_router_topk_row(p, E, kk, renorm, idx, w);
    }
}

void cu_router_fwd(const upc_kernels *K, const float *logits, float *probs, int32_t *topk_idx,
                   float *topk_w, int N, int E, int kk, int renorm)
{
    check_router("router_fwd", N, E, kk);
    if (N == 0)
        return;
    router_fwd_kernel<<<cuda_blocks((size_t)N, 128), 128>>>(logits, probs, topk_idx, topk_w, N, E, kk, renorm);
    cuda_after_launch(K, "router_fwd");
}

static __global__ void router_bwd_kernel(const float *probs, const int32_t *topk_idx, const float *topk_w,
                                         const float *dtopk_w, float *dlogits, int N, int E, int kk,
                                         int renorm, int *err)
{
    GRID_STRIDE(n, (size_t)N) {
        const float *p = probs + n * E;
        const int32_t *idx = topk_idx + n * kk;
        const float *w = topk_w + n * kk, *dw = dtopk_w + n * kk;
        float *dl = dlogits + n * E;
        for (int e = 0; e < E; e++)
            dl[e] = 0.0f;
        bool ok = true;
        for (int j = 0; j < kk; j++)
            ok = ok && idx[j] >= 0 && idx[j] < E;
        if (!ok) {
            cuda_flag(err, CUDA_ERR_ROUTER_BWD_IDX);
            continue;
        }
        upc_router_bwd_row(p, idx, w, dw, dl, E, kk, renorm);
    }
}

void cu_router_bwd(const upc_kernels *K, const float *probs, const int32_t *topk_idx,
                   const float *topk_w, const float *dtopk_w, float *dlogits, int N, int E, int kk,
                   int renorm)
{
    check_router("router_bwd", N, E, kk);
    if (N == 0)
        return;
    router_bwd_kernel<<<cuda_blocks((size_t)N, 128), 128>>>(probs, topk_idx, topk_w, dtopk_w, dlogits, N, E, kk,
                                                            renorm, CTX(K)->err);
    cuda_after_launch(K, "router_bwd");
}

/* ---- dispatch ------------------------------------------------------------------ */

static __global__ void check_experts_kernel(const int32_t *idx, size_t n, int E, int *err, int code)
{
    GRID_STRIDE(a, n) {
        if (idx[a] < 0 || idx[a] >= E)
            cuda_flag(err, code);
    }
}

/* offs[e] = first sorted position whose expert is >= e (e = 0..E), counts. */
static __global__ void offsets_kernel(const int32_t *sorted_keys, int A, int E, int32_t *counts, int32_t *offs)
{
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e > E)
        return;
    int lo = 0, hi = A;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (sorted_keys[mid] < e)
            lo = mid + 1;
        else
            hi = mid;
    }
    offs[e] = lo;
}

static __global__ void counts_kernel(const int32_t *offs, int E, int32_t *counts)
{
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e < E)
        counts[e] = offs[e + 1] - offs[e];
}

static __global__ void inverse_perm_kernel(const int32_t *perm, int A, int32_t *pos)
{
    GRID_STRIDE(s, (size_t)A) {
        int32_t a = perm[s];
        if (a >= 0 && a < A)
            pos[a] = (int32_t)s;
    }
}

void cu_moe_dispatch(const upc_kernels *K, const int32_t *topk_idx, int N, int kk, int E,
                     int32_t *counts, int32_t *offs, int32_t *perm, int32_t *pos)
{
    const char *kernel = "moe_dispatch";
    check_router(kernel, N, E, kk);
    long long A = (long long)N * kk;
    CUDA_REQUIRE(A <= INT32_MAX, kernel, "more than 2^31 assignments");
    if (A == 0) {
        CUDA_CHECK(cudaMemsetAsync(counts, 0, (size_t)E * sizeof(int32_t), 0), kernel, "zeroing counts");
        CUDA_CHECK(cudaMemsetAsync(offs, 0, ((size_t)E + 1) * sizeof(int32_t), 0), kernel, "zeroing offsets");
        return;
    }
    check_experts_kernel<<<cuda_blocks((size_t)A), CUDA_THREADS>>>(topk_idx, (size_t)A, E, CTX(K)->err,
                                                                   CUDA_ERR_DISPATCH_IDX);
    cuda_after_launch(K, kernel);
    int32_t *sorted_keys = (int32_t *)cuda_scratch(K, SCRATCH_KERNEL, (size_t)A * sizeof(int32_t), kernel);
    cuda_stable_sort_indices(K, topk_idx, (int)A, E, perm, sorted_keys, kernel);
    unsigned eb = (unsigned)((E + 1 + 127) / 128);
    offsets_kernel<<<eb, 128>>>(sorted_keys, (int)A, E, counts, offs);
    cuda_after_launch(K, kernel);
    counts_kernel<<<eb, 128>>>(offs, E, counts);
    cuda_after_launch(K, kernel);
    inverse_perm_kernel<<<cuda_blocks((size_t)A), CUDA_THREADS>>>(perm, (int)A, pos);
    cuda_after_launch(K, kernel);
}

/* ---- gather / combine ---------------------------------------------------------------- */

static __global__ void gather_kernel(const float *X, const int32_t *perm, int N, int kk, int d, float *Xs,
                                     int *err)
{
    size_t A = (size_t)N * kk, n = A * d;
    GRID_STRIDE(i, n) {
        size_t s = i / d, c = i % d;
        int32_t a = perm[s];
        if (a < 0 || (size_t)a >= A) {
            cuda_flag(err, CUDA_ERR_GATHER_PERM);
            Xs[i] = 0.0f;
        } else {
            Xs[i] = X[(size_t)(a / kk) * d + c];
        }
    }
}

void cu_moe_gather(const upc_kernels *K, const float *X, const int32_t *perm, int N, int kk, int d,
                   float *Xs)
{
    CUDA_REQUIRE(N >= 0 && kk >= 1 && d >= 0, "moe_gather", "bad size");
    size_t n = (size_t)N * kk * d;
    if (n == 0)
        return;
    gather_kernel<<<cuda_blocks(n), CUDA_THREADS>>>(X, perm, N, kk, d, Xs, CTX(K)->err);
    cuda_after_launch(K, "moe_gather");
}

static __global__ void gather_bwd_kernel(const float *dXs, const int32_t *pos, int N, int kk, int d, float *dX,
                                         int *err)
{
    size_t A = (size_t)N * kk, n = (size_t)N * d;
    GRID_STRIDE(i, n) {
        size_t tok = i / d, c = i % d;
        float acc = 0.0f;
        for (int j = 0; j < kk; j++) {
            int32_t s = pos[tok * kk + j];
            if (s < 0 || (size_t)s >= A) {
                cuda_flag(err, CUDA_ERR_GATHER_PERM);
                continue;
            }
            float v = dXs[(size_t)s * d + c];
            acc = j == 0 ? v : acc + v;   /* the CPU copies slot 0, then adds */
        }
        dX[i] = acc;
    }
}

void cu_moe_gather_bwd(const upc_kernels *K, const float *dXs, const int32_t *pos, int N, int kk, int d,
                       float *dX)
{
    CUDA_REQUIRE(N >= 0 && kk >= 1 && d >= 0, "moe_gather_bwd", "bad size");
    size_t n = (size_t)N * d;
    if (n == 0)
        return;
    gather_bwd_kernel<<<cuda_blocks(n), CUDA_THREADS>>>(dXs, pos, N, kk, d, dX, CTX(K)->err);
    cuda_after_launch(K, "moe_gather_bwd");
}

static __global__ void combine_kernel(const float *Ys, const int32_t *pos, const float *w, int N, int kk, int d,
                                      float beta, float *out, int *err)
{
    size_t A = (size_t)N * kk, n = (size_t)N * d;
    GRID_STRIDE(i, n) {
        size_t tok = i / d, c = i % d;
        float o = beta == 0.0f ? 0.0f : beta * out[i];
        for (int j = 0; j < kk; j++) {
            size_t a = tok * kk + j;
            int32_t s = pos[a];
            if (s < 0 || (size_t)s >= A) {
                cuda_flag(err, CUDA_ERR_GATHER_PERM);
                continue;
            }
            o += w[a] * Ys[(size_t)s * d + c];
        }
        out[i] = o;
    }
}

void cu_moe_combine(const upc_kernels *K, const float *Ys, const int32_t *pos, const float *w, int N, int kk,
                    int d, float beta, float *out)
{
    CUDA_REQUIRE(N >= 0 && kk >= 1 && d >= 0, "moe_combine", "bad size");
    size_t n = (size_t)N * d;
    if (n == 0)
        return;
    combine_kernel<<<cuda_blocks(n), CUDA_THREADS>>>(Ys, pos, w, N, kk, d, beta, out, CTX(K)->err);
    cuda_after_launch(K, "moe_combine");
}

enum { COMBINE_BWD_THREADS = 128 };

/* A block per assignment a: dYs[pos[a]] = w[a] dout[n]; dw[a] = dout[n] . Ys[pos[a]]
 * (double, block tree). */
static __global__ void __launch_bounds__(COMBINE_BWD_THREADS)
combine_bwd_kernel(const float *dout, const float *Ys, const int32_t *pos, const float *w, int N, int kk, int d,
                   float *dYs, float *dw, int *err)
{
    __shared__ double sh[COMBINE_BWD_THREADS];
    size_t a = blockIdx.x, A = (size_t)N * kk;
    int32_t s = pos[a];
    if (s < 0 || (size_t)s >= A) {      /* uniform over the block */
        if (threadIdx.x == 0) {
            cuda_flag(err, CUDA_ERR_GATHER_PERM);
            dw[a] = 0.0f;
        }
        return;
    }
    const float *g = dout + (a / kk) * d, *y = Ys + (size_t)s * d;
    float *dy = dYs + (size_t)s * d;
    float wa = w[a];
    double acc = 0.0;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        acc += (double)g[c] * y[c];
        dy[c] = wa * g[c];
    }
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0)
        dw[a] = (float)acc;
}

void cu_moe_combine_bwd(const upc_kernels *K, const float *dout, const float *Ys, const int32_t *pos,
                        const float *w, int N, int kk, int d, float *dYs, float *dw)
{
    CUDA_REQUIRE(N >= 0 && kk >= 1 && d >= 0, "moe_combine_bwd", "bad size");
    size_t A = (size_t)N * kk;
    if (A == 0)
        return;
    combine_bwd_kernel<<<(unsigned)A, COMBINE_BWD_THREADS>>>(dout, Ys, pos, w, N, kk, d, dYs, dw, CTX(K)->err);
    cuda_after_launch(K, "moe_combine_bwd");
}

/* ---- capacity ------------------------------------------------------------------------ */

static __global__ void capacity_kernel(const int32_t *topk_idx, const int32_t *pos, const int32_t *offs,
                                       size_t A, int E, int capacity, float *x, int32_t *dropped, int *err)
{
    GRID_STRIDE(a, A) {
        int e = topk_idx[a];
        if (e < 0 || e >= E) {
            cuda_flag(err, CUDA_ERR_CAPACITY_IDX);
            continue;
        }
        if (pos[a] - offs[e] >= capacity) {
            x[a] = 0.0f;
            if (dropped)
                atomicAdd(dropped, 1);   /* integer: the total does not depend on order */
        }
    }
}

void cu_moe_capacity_drop(const upc_kernels *K, const int32_t *topk_idx, const int32_t *pos,
                          const int32_t *offs, int N, int kk, int E, int capacity, float *x, int32_t *dropped)
{
    const char *kernel = "moe_capacity_drop";
    CUDA_REQUIRE(N >= 0 && kk >= 1 && E >= 1 && capacity >= 0, kernel, "bad size");
    if (dropped)
        CUDA_CHECK(cudaMemsetAsync(dropped, 0, sizeof(int32_t), 0), kernel, "zeroing the count");
    size_t A = (size_t)N * kk;
    if (A == 0)
        return;
    capacity_kernel<<<cuda_blocks(A), CUDA_THREADS>>>(topk_idx, pos, offs, A, E, capacity, x, dropped, CTX(K)->err);
    cuda_after_launch(K, kernel);
}
