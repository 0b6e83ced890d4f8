/* kernels_cpu_loss.c: softmax cross-entropy over the vocabulary, one row per
 * token, rows in parallel; row sums in double. */
#include "kernels_cpu.h"
#include "kernels_math.h"

static float row_logsumexp(const float *x, int V)
{
    float m = x[0];
    for (int j = 1; j < V; j++)
        if (x[j] > m)
            m = x[j];
    double l = 0.0;
    for (int j = 0; j < V; j++)
        l += exp((double)(x[j] - m));
    return m + (float)log(l);
}

static void check_targets(const char *kernel, const int32_t *targets, int rows, int V)
{
    CPU_REQUIRE(rows >= 0 && V > 0, kernel, "bad size");
    for (int r = 0; r < rows; r++)
        CPU_REQUIRE(targets[r] >= -1 && targets[r] < V, kernel, "target out of range");
}

void cpu_cross_entropy_fwd(const upc_kernels *K, const float *logits,
                           const int32_t *targets, float *loss, float *lse,
                           int rows, int V)
{
    check_targets("cross_entropy_fwd", targets, rows, V);
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *x = logits + (size_t)r * V;
        float l = row_logsumexp(x, V);
        if (lse)
            lse[r] = l;
        loss[r] = targets[r] < 0 ? 0.0f : l - x[targets[r]];
    }
}

void cpu_cross_entropy_bwd(const upc_kernels *K, const float *logits,
                           const int32_t *targets, const float *lse,
                           float *dlogits, int rows, int V, float scale)
{
    check_targets("cross_entropy_bwd", targets, rows, V);
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *x = logits + (size_t)r * V;
        float *dx = dlogits + (size_t)r * V;
        int t = targets[r];
        if (t < 0) {
            for (int j = 0; j < V; j++)
                dx[j] = 0.0f;
            continue;
        }
        float l = lse ? lse[r] : row_logsumexp(x, V);
        for (int j = 0; j < V; j++) /* dx may be x: read before write */
            dx[j] = expf(x[j] - l) * scale;
        dx[t] -= scale;
    }
}
