/* kernels_cpu_loss.c: softmax cross-entropy over the vocabulary, one row per
 * token, rows in parallel; row sums in double; the exponentials a chunk at a
 * time through the vector expf (kernels_cpu_expf.c). */
#include "kernels_cpu.h"
#include "kernels_math.h"

static float row_logsumexp(const float *x, int V)
{
    float m = x[0];
#pragma omp simd reduction(max : m)
    for (int j = 1; j < V; j++)
        m = x[j] > m ? x[j] : m;
    double l = 0.0;
    float e[CPU_EXP_CHUNK];
    for (int j0 = 0; j0 < V; j0 += CPU_EXP_CHUNK) {
        int len = V - j0 < CPU_EXP_CHUNK ? V - j0 : CPU_EXP_CHUNK;
        for (int j = 0; j < len; j++)
            e[j] = x[j0 + j] - m;
        cpu_expf_inplace(e, (size_t)len);
#pragma omp simd reduction(+ : l)
        for (int j = 0; j < len; j++)
            l += e[j];
    }
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
        float e[CPU_EXP_CHUNK];
        for (int j0 = 0; j0 < V; j0 += CPU_EXP_CHUNK) {
            int len = V - j0 < CPU_EXP_CHUNK ? V - j0 : CPU_EXP_CHUNK;
            for (int j = 0; j < len; j++)   /* dx may be x: read before write */
                e[j] = x[j0 + j] - l;
            cpu_expf_inplace(e, (size_t)len);
            for (int j = 0; j < len; j++)
                dx[j0 + j] = e[j] * scale;
        }
        dx[t] -= scale;
    }
}
