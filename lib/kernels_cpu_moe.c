/* kernels_cpu_moe.c: MoE routing on the CPU: router softmax + top-k, the
 * dropless dispatch (a stable counting sort of the assignments by expert),
 * gather/combine with their backwards, and the auxiliary losses. Every
 * per-token sum runs over slots in order, so no two threads write one row. */
#include "kernels_cpu.h"
#include "kernels_math.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void check_router(const char *kernel, int N, int E, int kk)
{
    CPU_REQUIRE(N >= 0 && E > 0, kernel, "bad size");
    CPU_REQUIRE(kk >= 1 && kk <= E, kernel, "top-k must be in 1..E");
}

static void check_assignments(const char *kernel, const int32_t *idx, size_t n, int E)
{
    for (size_t a = 0; a < n; a++)
        CPU_REQUIRE(idx[a] >= 0 && idx[a] < E, kernel, "expert index out of range");
}

void cpu_router_fwd(const upc_kernels *K, const float *logits, float *probs,
                    int32_t *topk_idx, float *topk_w, int N, int E, int kk, int renorm)
{
    check_router("router_fwd", N, E, kk);
#pragma omp parallel for schedule(static) if ((size_t)N * E >= CPU_PARALLEL_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * E;
        float *p = probs + (size_t)n * E;
        int32_t *idx = topk_idx + (size_t)n * kk;
        float *w = topk_w + (size_t)n * kk;
        upc_softmax_row(x, p, E);
        upc_router_topk_row(p, E, kk, renorm, idx, w);
    }
}

void cpu_router_bwd(const upc_kernels *K, const float *probs, const int32_t *topk_idx,
                    const float *topk_w, const float *dtopk_w, float *dlogits,
                    int N, int E, int kk, int renorm)
{
    check_router("router_bwd", N, E, kk);
    check_assignments("router_bwd", topk_idx, (size_t)N * kk, E);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * E;
        const int32_t *idx = topk_idx + (size_t)n * kk;
        const float *w = topk_w + (size_t)n * kk, *dw = dtopk_w + (size_t)n * kk;
        upc_router_bwd_row(p, idx, w, dw, dlogits + (size_t)n * E, E, kk, renorm);
    }
}

void cpu_moe_dispatch(const upc_kernels *K, const int32_t *topk_idx, int N, int kk,
                      int E, int32_t *counts, int32_t *offs, int32_t *perm,
                      int32_t *pos)
{
    check_router("moe_dispatch", N, E, kk);
    size_t A = (size_t)N * kk;
    CPU_REQUIRE(A <= INT32_MAX, "moe_dispatch", "more than 2^31 assignments");
    check_assignments("moe_dispatch", topk_idx, A, E);
    memset(counts, 0, (size_t)E * sizeof(int32_t));
    for (size_t a = 0; a < A; a++)
        counts[topk_idx[a]]++;
    offs[0] = 0;
    for (int e = 0; e < E; e++)
        offs[e + 1] = offs[e] + counts[e];
    /* Stable counting sort: assignments in index order are (token, slot)
     * order, so each expert's rows keep it. */
    int32_t *cursor = upc_malloc((size_t)E * sizeof(int32_t));
    memcpy(cursor, offs, (size_t)E * sizeof(int32_t));
    for (size_t a = 0; a < A; a++) {
        int32_t s = cursor[topk_idx[a]]++;
        perm[s] = (int32_t)a;
        pos[a] = s;
    }
    free(cursor);
}

void cpu_moe_capacity_drop(const upc_kernels *K, const int32_t *topk_idx,
                           const int32_t *pos, const int32_t *offs, int N, int kk, int E,
                           int capacity, float *x, int32_t *dropped)
{
    CPU_REQUIRE(N >= 0 && kk >= 1 && E >= 1 && capacity >= 0, "moe_capacity_drop", "bad size");
    size_t A = (size_t)N * kk;
    int32_t n = 0;
    for (size_t a = 0; a < A; a++) {
        CPU_REQUIRE(topk_idx[a] >= 0 && topk_idx[a] < E, "moe_capacity_drop", "expert index out of range");
        if (pos[a] - offs[topk_idx[a]] >= capacity) {
            x[a] = 0.0f;
            n++;
        }
    }
    if (dropped)
        *dropped = n;
}

void cpu_moe_gather(const upc_kernels *K, const float *X, const int32_t *perm, int N,
                    int kk, int d, float *Xs)
{
    CPU_REQUIRE(N >= 0 && kk >= 1 && d >= 0, "moe_gather", "bad size");
    long long A = (long long)N * kk;
#pragma omp parallel for schedule(static) if ((size_t)A * d >= CPU_PARALLEL_MIN)
    for (long long s = 0; s < A; s++)
        memcpy(Xs + (size_t)s * d, X + (size_t)(perm[s] / kk) * d, (size_t)d * sizeof(float));
}

void cpu_moe_gather_bwd(const upc_kernels *K, const float *dXs, const int32_t *pos,
                        int N, int kk, int d, float *dX)
{
    CPU_REQUIRE(N >= 0 && kk >= 1 && d >= 0, "moe_gather_bwd", "bad size");
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *dst = dX + (size_t)n * d;
        memcpy(dst, dXs + (size_t)pos[(size_t)n * kk] * d, (size_t)d * sizeof(float));
        for (int j = 1; j < kk; j++) {
            const float *src = dXs + (size_t)pos[(size_t)n * kk + j] * d;
            for (int c = 0; c < d; c++)
                dst[c] += src[c];
        }
    }
}

void cpu_moe_combine(const upc_kernels *K, const float *Ys, const int32_t *pos,
                     const float *w, int N, int kk, int d, float beta, float *out)
{
    CPU_REQUIRE(N >= 0 && kk >= 1 && d >= 0, "moe_combine", "bad size");
#pragma omp parallel for schedule(static) if ((size_t)N * kk * d >= CPU_PARALLEL_MIN)
    for (int n = 0; n < N; n++) {
        float *o = out + (size_t)n * d;
        for (int c = 0; c < d; c++)
            o[c] = beta == 0.0f ? 0.0f : beta * o[c];
        for (int j = 0; j < kk; j++) {
            size_t a = (size_t)n * kk + j;
            const float *y = Ys + (size_t)pos[a] * d;
            float wj = w[a];
            for (int c = 0; c < d; c++)
                o[c] += wj * y[c];
        }
    }
}

void cpu_moe_combine_bwd(const upc_kernels *K, const float *dout, const float *Ys,
                         const int32_t *pos, const float *w, int N, int kk, int d,
                         float *dYs, float *dw)
{
    CPU_REQUIRE(N >= 0 && kk >= 1 && d >= 0, "moe_combine_bwd", "bad size");
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *g = dout + (size_t)n * d;
        for (int j = 0; j < kk; j++) {
            size_t a = (size_t)n * kk + j;
            const float *y = Ys + (size_t)pos[a] * d;
            float *dy = dYs + (size_t)pos[a] * d;
            double acc = 0.0;
            for (int c = 0; c < d; c++) {
                acc += (double)g[c] * y[c];
                dy[c] = w[a] * g[c];
            }
            dw[a] = (float)acc;
        }
    }
}

/* Per-expert gradient of the load-balancing loss w.r.t. probs[n][i]:
 * alpha * E * f_i / N (the same for every token). */
static void lb_terms(const float *probs, const int32_t *topk_idx, int N, int E, int kk,
                     double *f, double *P)
{
    for (int e = 0; e < E; e++)
        f[e] = P[e] = 0.0;
    for (size_t a = 0; a < (size_t)N * kk; a++)
        f[topk_idx[a]] += 1.0;
    for (int e = 0; e < E; e++)
        f[e] /= (double)N * kk;
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++)
            P[e] += probs[(size_t)n * E + e];
    for (int e = 0; e < E; e++)
        P[e] /= N;
}

void cpu_moe_lb_loss_fwd(const upc_kernels *K, const float *probs,
                         const int32_t *topk_idx, int N, int E, int kk, float alpha,
                         float *loss)
{
    check_router("moe_lb_loss_fwd", N, E, kk);
    check_assignments("moe_lb_loss_fwd", topk_idx, (size_t)N * kk, E);
    if (N == 0) {
        *loss = 0.0f;
        return;
    }
    double *f = upc_malloc(2 * (size_t)E * sizeof(double)), *P = f + E, sum = 0.0;
    lb_terms(probs, topk_idx, N, E, kk, f, P);
    for (int e = 0; e < E; e++)
        sum += f[e] * P[e];
    *loss = (float)(alpha * (double)E * sum);
    free(f);
}

void cpu_moe_lb_loss_bwd(const upc_kernels *K, const float *probs,
                         const int32_t *topk_idx, int N, int E, int kk, float alpha,
                         float scale, float *dlogits)
{
    check_router("moe_lb_loss_bwd", N, E, kk);
    check_assignments("moe_lb_loss_bwd", topk_idx, (size_t)N * kk, E);
    if (N == 0)
        return;
    double *f = upc_malloc(2 * (size_t)E * sizeof(double)), *P = f + E;
    float *g = upc_malloc((size_t)E * sizeof(float));
    lb_terms(probs, topk_idx, N, E, kk, f, P);
    for (int e = 0; e < E; e++)
        g[e] = (float)((double)scale * alpha * E * f[e] / N);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * E;
        float *dl = dlogits + (size_t)n * E;
        double dot = 0.0;
        for (int e = 0; e < E; e++)
            dot += (double)p[e] * g[e];
        for (int e = 0; e < E; e++)
            dl[e] += upc_softmax_bwd_elem(p[e], g[e], (float)dot);
    }
    free(g);
    free(f);
}

void cpu_moe_z_loss_fwd(const upc_kernels *K, const float *logits, int N, int E,
                        float coef, float *loss)
{
    CPU_REQUIRE(N >= 0 && E > 0, "moe_z_loss_fwd", "bad size");
    double sum = 0.0;
    for (int n = 0; n < N; n++) {
        double l = upc_softmax_row(logits + (size_t)n * E, NULL, E);
        sum += l * l;
    }
    *loss = N ? (float)(coef * sum / N) : 0.0f;
}

void cpu_moe_z_loss_bwd(const upc_kernels *K, const float *logits, int N, int E,
                        float coef, float scale, float *dlogits)
{
    CPU_REQUIRE(N >= 0 && E > 0, "moe_z_loss_bwd", "bad size");
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * E;
        float *dl = dlogits + (size_t)n * E;
        float lse = upc_softmax_row(x, NULL, E);
        float c = (float)(2.0 * scale * coef * lse / N);
        for (int e = 0; e < E; e++)
            dl[e] += c * expf(x[e] - lse);
    }
}
