/* cuda_loss.cu: softmax cross-entropy over the vocabulary, a block per row:
 * one pass of the online softmax (upc_softmax_step per thread, then
 * upc_softmax_merge over the block in a fixed tree), so a row of logits is
 * read once for the loss and twice for the gradient. */
#include "cuda_internal.cuh"

enum { CE_THREADS = 256 };

static __global__ void __launch_bounds__(CE_THREADS)
ce_fwd_kernel(const float *logits, const int32_t *targets, float *loss, float *lse, int V, int *err)
{
    size_t r = blockIdx.x;
    const float *x = logits + r * V;
    float l = block_logsumexp<CE_THREADS>(x, V);
    if (threadIdx.x == 0) {
        int t = targets[r];
        if (t < -1 || t >= V) {
            cuda_flag(err, CUDA_ERR_CE_FWD_TARGET);
            t = -1;
        }
        if (lse)
            lse[r] = l;
        loss[r] = t < 0 ? 0.0f : l - x[t];
    }
}

static __global__ void __launch_bounds__(CE_THREADS)
ce_bwd_kernel(const float *logits, const int32_t *targets, const float *lse, float *dlogits, int V,
              float scale, int *err)
{
    size_t r = blockIdx.x;
    const float *x = logits + r * V;
    float *dx = dlogits + r * V;
    int t = targets[r];
    if (t < -1 || t >= V) {
        if (threadIdx.x == 0)
            cuda_flag(err, CUDA_ERR_CE_BWD_TARGET);
        t = -1;
    }
    if (t < 0) {
        for (int j = threadIdx.x; j < V; j += blockDim.x)
            dx[j] = 0.0f;
        return;
    }
    /* in place (dx == x): the whole row is read before any write */
    float l = lse ? lse[r] : block_logsumexp<CE_THREADS>(x, V);
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float g = expf(x[j] - l) * scale;
        if (j == t)
            g -= scale;
        dx[j] = g;
    }
}

void cu_cross_entropy_fwd(const upc_kernels *K, const float *logits, const int32_t *targets,
                          float *loss, float *lse, int rows, int V)
{
    CUDA_REQUIRE(rows >= 0 && V > 0, "cross_entropy_fwd", "bad size");
    if (rows == 0)
        return;
    ce_fwd_kernel<<<(unsigned)rows, CE_THREADS>>>(logits, targets, loss, lse, V, CTX(K)->err);
    cuda_after_launch(K, "cross_entropy_fwd");
}

void cu_cross_entropy_bwd(const upc_kernels *K, const float *logits, const int32_t *targets,
                          const float *lse, float *dlogits, int rows, int V, float scale)
{
    CUDA_REQUIRE(rows >= 0 && V > 0, "cross_entropy_bwd", "bad size");
    if (rows == 0)
        return;
    ce_bwd_kernel<<<(unsigned)rows, CE_THREADS>>>(logits, targets, lse, dlogits, V, scale, CTX(K)->err);
    cuda_after_launch(K, "cross_entropy_bwd");
}
