/* cuda_moe_loss.cu: the MoE auxiliary losses on the GPU. Load balancing: a
 * block per expert counts its assignments and sums its probabilities over
 * tokens (double, block tree), one thread combines the experts in order.
 * z-loss: a thread per token, then a one-block double sum. Fixed orders, no
 * float atomics. */
#include "cuda_internal.cuh"

enum { LB_THREADS = 256 };

/* f[e] = share of the N*kk assignments that went to e; P[e] = mean prob. */
static __global__ void __launch_bounds__(LB_THREADS)
lb_terms_kernel(const float *probs, const int32_t *topk_idx, int N, int E, int kk, double *f, double *P, int *err)
{
    __shared__ double sh[LB_THREADS];
    const int e = blockIdx.x;
    size_t A = (size_t)N * kk;
    double count = 0.0, psum = 0.0;
    for (size_t a = threadIdx.x; a < A; a += blockDim.x) {
        int x = topk_idx[a];
        if (x < 0 || x >= E)
            cuda_flag(err, CUDA_ERR_LB_IDX);
        count += x == e;
    }
    for (size_t n = threadIdx.x; n < (size_t)N; n += blockDim.x)
        psum += probs[n * E + e];
    count = block_sum(count, sh);
    psum = block_sum(psum, sh);
    if (threadIdx.x == 0) {
        f[e] = count / ((double)N * kk);
        P[e] = psum / N;
    }
}

static __global__ void lb_loss_kernel(const double *f, const double *P, int E, float alpha, float *loss)
{
    double sum = 0.0;
    for (int e = 0; e < E; e++)
        sum += f[e] * P[e];
    *loss = (float)(alpha * (double)E * sum);
}

static double *lb_terms(const upc_kernels *K, const char *kernel, const float *probs, const int32_t *topk_idx,
                        int N, int E, int kk)
{
    double *f = (double *)cuda_scratch(K, SCRATCH_KERNEL, 2 * (size_t)E * sizeof(double), kernel);
    lb_terms_kernel<<<(unsigned)E, LB_THREADS>>>(probs, topk_idx, N, E, kk, f, f + E, CTX(K)->err);
    cuda_after_launch(K, kernel);
    return f;
}

static void check_router(const char *kernel, int N, int E, int kk)
{
    CUDA_REQUIRE(N >= 0 && E > 0, kernel, "bad size");
    CUDA_REQUIRE(kk >= 1 && kk <= E, kernel, "top-k must be in 1..E");
}

void cu_moe_lb_loss_fwd(const upc_kernels *K, const float *probs, const int32_t *topk_idx, int N, int E,
                        int kk, float alpha, float *loss)
{
    const char *kernel = "moe_lb_loss_fwd";
    check_router(kernel, N, E, kk);
    if (N == 0) {
        CUDA_CHECK(cudaMemsetAsync(loss, 0, sizeof(float), 0), kernel, "zeroing the loss");
        return;
    }
    double *f = lb_terms(K, kernel, probs, topk_idx, N, E, kk);
    lb_loss_kernel<<<1, 1>>>(f, f + E, E, alpha, loss);
    cuda_after_launch(K, kernel);
}

/* dlogits[n] += softmax bwd of g (g_e = scale alpha E f_e / N) at probs[n]. */
static __global__ void lb_bwd_kernel(const float *probs, const double *f, int N, int E, float alpha, float scale,
                                     float *dlogits)
{
    GRID_STRIDE(n, (size_t)N) {
        const float *p = probs + n * E;
        float *dl = dlogits + n * E;
        double dot = 0.0;
        for (int e = 0; e < E; e++)
            dot += (double)p[e] * (float)((double)scale * alpha * E * f[e] / N);
        for (int e = 0; e < E; e++) {
            float g = (float)((double)scale * alpha * E * f[e] / N);
            dl[e] += upc_softmax_bwd_elem(p[e], g, (float)dot);
        }
    }
}

void cu_moe_lb_loss_bwd(const upc_kernels *K, const float *probs, const int32_t *topk_idx, int N, int E,
                        int kk, float alpha, float scale, float *dlogits)
{
    const char *kernel = "moe_lb_loss_bwd";
    check_router(kernel, N, E, kk);
    if (N == 0)
        return;
    double *f = lb_terms(K, kernel, probs, topk_idx, N, E, kk);
    lb_bwd_kernel<<<cuda_blocks((size_t)N, 128), 128>>>(probs, f, N, E, alpha, scale, dlogits);
    cuda_after_launch(K, kernel);
}

static __global__ void z_terms_kernel(const float *logits, int N, int E, double *sq)
{
    GRID_STRIDE(n, (size_t)N) {
        double l = upc_softmax_row(logits + n * E, NULL, E);
        sq[n] = l * l;
    }
}

static __global__ void __launch_bounds__(1024)
z_sum_kernel(const double *sq, int N, float coef, float *loss)
{
    __shared__ double sh[1024];
    double s = 0.0;
    for (int n = threadIdx.x; n < N; n += blockDim.x)
        s += sq[n];
    s = block_sum(s, sh);
    if (threadIdx.x == 0)
        *loss = (float)(coef * s / N);
}

void cu_moe_z_loss_fwd(const upc_kernels *K, const float *logits, int N, int E, float coef, float *loss)
{
    const char *kernel = "moe_z_loss_fwd";
    CUDA_REQUIRE(N >= 0 && E > 0, kernel, "bad size");
    if (N == 0) {
        CUDA_CHECK(cudaMemsetAsync(loss, 0, sizeof(float), 0), kernel, "zeroing the loss");
        return;
    }
    double *sq = (double *)cuda_scratch(K, SCRATCH_KERNEL, (size_t)N * sizeof(double), kernel);
    z_terms_kernel<<<cuda_blocks((size_t)N, 128), 128>>>(logits, N, E, sq);
    cuda_after_launch(K, kernel);
    z_sum_kernel<<<1, 1024>>>(sq, N, coef, loss);
    cuda_after_launch(K, kernel);
}

static __global__ void z_bwd_kernel(const float *logits, int N, int E, float coef, float scale, float *dlogits)
{
    GRID_STRIDE(n, (size_t)N) {
        const float *x = logits + n * E;
        float *dl = dlogits + n * E;
        float lse = upc_softmax_row(x, NULL, E);
        float c = (float)(2.0 * scale * coef * lse / N);
        for (int e = 0; e < E; e++)
            dl[e] += c * expf(x[e] - lse);
    }
}

void cu_moe_z_loss_bwd(const upc_kernels *K, const float *logits, int N, int E, float coef, float scale,
                       float *dlogits)
{
    CUDA_REQUIRE(N >= 0 && E > 0, "moe_z_loss_bwd", "bad size");
    if (N == 0)
        return;
    z_bwd_kernel<<<cuda_blocks((size_t)N, 128), 128>>>(logits, N, E, coef, scale, dlogits);
    cuda_after_launch(K, "moe_z_loss_bwd");
}
