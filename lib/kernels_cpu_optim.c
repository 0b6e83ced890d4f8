/* kernels_cpu_optim.c: optimizer steps, reductions and elementwise ops over
 * flat buffers. Sums run over fixed blocks added in block order, so their
 * bits do not depend on the thread count. */
#include "kernels_cpu.h"
#include "kernels_math.h"

#include <stdlib.h>

void cpu_adamw_step(const upc_kernels *K, float *param, const float *grad, float *m,
                    float *v, size_t n, upc_optim_params hp)
{
    CPU_REQUIRE(hp.bias_correction1 > 0.0f && hp.bias_correction2 > 0.0f, "adamw_step",
                "bias corrections not set (upc_optim_params_at)");
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        upc_adamw_elem(&param[i], &m[i], &v[i], grad[i] * hp.grad_scale, hp.lr,
                       hp.beta1, hp.beta2, hp.eps, hp.weight_decay,
                       hp.bias_correction1, hp.bias_correction2);
}

void cpu_lion_step(const upc_kernels *K, float *param, const float *grad, float *m,
                   size_t n, upc_optim_params hp)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        upc_lion_elem(&param[i], &m[i], grad[i] * hp.grad_scale, hp.lr, hp.beta1,
                      hp.beta2, hp.weight_decay);
}

enum { SUM_BLOCK = 4096 };

static void block_sum(const float *x, size_t n, float *out, int squares)
{
    size_t nb = (n + SUM_BLOCK - 1) / SUM_BLOCK;
    double *part = upc_malloc((nb ? nb : 1) * sizeof(double));
#pragma omp parallel for schedule(static)
    for (size_t b = 0; b < nb; b++) {
        size_t i0 = b * SUM_BLOCK, i1 = i0 + SUM_BLOCK < n ? i0 + SUM_BLOCK : n;
        double s = 0.0;
        if (squares)
            for (size_t i = i0; i < i1; i++)
                s += (double)x[i] * x[i];
        else
            for (size_t i = i0; i < i1; i++)
                s += x[i];
        part[b] = s;
    }
    double total = 0.0;
    for (size_t b = 0; b < nb; b++)
        total += part[b];
    *out = (float)total;
    free(part);
}

void cpu_sum(const upc_kernels *K, const float *x, size_t n, float *out)
{
    block_sum(x, n, out, 0);
}

void cpu_sumsq(const upc_kernels *K, const float *x, size_t n, float *out)
{
    block_sum(x, n, out, 1);
}

void cpu_scale(const upc_kernels *K, float *x, size_t n, float a)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        x[i] *= a;
}

void cpu_axpy(const upc_kernels *K, float *y, const float *x, size_t n, float a)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

void cpu_fill(const upc_kernels *K, float *x, size_t n, float value)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        x[i] = value;
}

void cpu_add(const upc_kernels *K, float *out, const float *a, const float *b, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}
