/* kernels_cpu_layers.c: embedding, RMSNorm, RoPE and SwiGLU on the CPU.
 * Weight gradients that sum over tokens split the *columns* among threads and
 * add tokens in order, so the bits do not depend on the thread count. */
#include "kernels_cpu.h"
#include "kernels_math.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* This thread's share [*c0, *c1) of d columns inside a parallel region. */
static void my_columns(int d, int *c0, int *c1)
{
    int nth = omp_get_num_threads(), tid = omp_get_thread_num();
    *c0 = (int)((long long)d * tid / nth);
    *c1 = (int)((long long)d * (tid + 1) / nth);
}

void cpu_embedding_fwd(const upc_kernels *K, const int32_t *ids, int rows,
                       const float *table, int V, int d, float *out)
{
    CPU_REQUIRE(rows >= 0 && V > 0 && d >= 0, "embedding_fwd", "bad size");
    for (int i = 0; i < rows; i++)
        CPU_REQUIRE(ids[i] >= 0 && ids[i] < V, "embedding_fwd", "token id out of range");
#pragma omp parallel for schedule(static) if ((size_t)rows * d >= CPU_PARALLEL_MIN)
    for (int i = 0; i < rows; i++)
        memcpy(out + (size_t)i * d, table + (size_t)ids[i] * d, (size_t)d * sizeof(float));
}

void cpu_embedding_bwd(const upc_kernels *K, const int32_t *ids, int rows,
                       const float *dout, int V, int d, float *dtable)
{
    CPU_REQUIRE(rows >= 0 && V > 0 && d >= 0, "embedding_bwd", "bad size");
    for (int i = 0; i < rows; i++)
        CPU_REQUIRE(ids[i] >= 0 && ids[i] < V, "embedding_bwd", "token id out of range");
#pragma omp parallel
    {
        int c0, c1;
        my_columns(d, &c0, &c1);
        for (int i = 0; i < rows; i++) {
            float *dst = dtable + (size_t)ids[i] * d;
            const float *src = dout + (size_t)i * d;
            for (int c = c0; c < c1; c++)
                dst[c] += src[c];
        }
    }
}

void cpu_rmsnorm_fwd(const upc_kernels *K, const float *x, const float *w, float *y,
                     float *rstd, int rows, int d, float eps)
{
    CPU_REQUIRE(rows >= 0 && d > 0, "rmsnorm_fwd", "bad size");
#pragma omp parallel for schedule(static) if ((size_t)rows * d >= CPU_PARALLEL_MIN)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * d;
        float *yr = y + (size_t)r * d;
        double ss = 0.0;
        for (int j = 0; j < d; j++)
            ss += (double)xr[j] * xr[j];
        float rs = upc_rmsnorm_rstd(ss, d, eps);
        for (int j = 0; j < d; j++)
            yr[j] = (xr[j] * rs) * w[j];
        if (rstd)
            rstd[r] = rs;
    }
}

void cpu_rmsnorm_bwd(const upc_kernels *K, const float *dy, const float *x,
                     const float *w, const float *rstd, float *dx, float *dw,
                     int rows, int d)
{
    CPU_REQUIRE(rows >= 0 && d > 0, "rmsnorm_bwd", "bad size");
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * d, *dyr = dy + (size_t)r * d;
        float *dxr = dx + (size_t)r * d;
        double dot = 0.0;
        for (int j = 0; j < d; j++)
            dot += (double)w[j] * dyr[j] * xr[j];
        for (int j = 0; j < d; j++)
            dxr[j] = upc_rmsnorm_dx(xr[j], w[j], dyr[j], rstd[r], dot, d);
    }
#pragma omp parallel
    {
        int c0, c1;
        my_columns(d, &c0, &c1);
        if (c1 > c0) {
            double *acc = upc_calloc((size_t)(c1 - c0), sizeof(double));
            for (int r = 0; r < rows; r++) {
                const float *xr = x + (size_t)r * d, *dyr = dy + (size_t)r * d;
                double rs = rstd[r];
                for (int c = c0; c < c1; c++)
                    acc[c - c0] += (double)dyr[c] * xr[c] * rs;
            }
            for (int c = c0; c < c1; c++)
                dw[c] += (float)acc[c - c0];
            free(acc);
        }
    }
}

/* Rotate every head of every (b, t) by its position; sign -1 undoes it. */
static void rope_apply(const char *kernel, const float *x, float *y, int B, int T,
                       int H, int hd, int pos0, const int32_t *pos, float theta,
                       float sign)
{
    CPU_REQUIRE(B >= 0 && T >= 0 && H >= 0 && hd > 0 && hd % 2 == 0, kernel,
                "bad size (head dim must be even)");
    int half = hd / 2;
#pragma omp parallel for schedule(static) if ((size_t)B * T * H * hd >= CPU_PARALLEL_MIN)
    for (long long bt = 0; bt < (long long)B * T; bt++) {
        int p = pos ? pos[bt] : pos0 + (int)(bt % T);
        const float *xs = x + (size_t)bt * H * hd;
        float *ys = y + (size_t)bt * H * hd;
        for (int i = 0; i < half; i++) {
            float ang = (float)p * upc_rope_inv_freq(i, hd, theta);
            float c = cosf(ang), s = sinf(ang);
            for (int h = 0; h < H; h++) {
                float a = xs[h * hd + i], b = xs[h * hd + i + half];
                upc_rope_pair(&a, &b, c, s, sign);
                ys[h * hd + i] = a;
                ys[h * hd + i + half] = b;
            }
        }
    }
}

void cpu_rope_fwd(const upc_kernels *K, const float *x, float *y, int B, int T, int H,
                  int hd, int pos0, const int32_t *pos, float theta)
{
    rope_apply("rope_fwd", x, y, B, T, H, hd, pos0, pos, theta, 1.0f);
}

void cpu_rope_bwd(const upc_kernels *K, const float *dy, float *dx, int B, int T,
                  int H, int hd, int pos0, const int32_t *pos, float theta)
{
    rope_apply("rope_bwd", dy, dx, B, T, H, hd, pos0, pos, theta, -1.0f);
}

/* s[i] = sigmoid(g[i]) for a chunk of at most CPU_EXP_CHUNK, the
 * exponentials in one vector pass */
static void sigmoids(const float *g, size_t len, float *s)
{
    for (size_t i = 0; i < len; i++)
        s[i] = -g[i];
    cpu_expf_inplace(s, len);
    for (size_t i = 0; i < len; i++)
        s[i] = upc_sigmoid_of_exp(s[i]);
}

void cpu_swiglu_fwd(const upc_kernels *K, const float *gate, const float *up,
                    float *out, size_t n)
{
#pragma omp parallel for schedule(static) if (n >= CPU_PARALLEL_MIN)
    for (size_t i0 = 0; i0 < n; i0 += CPU_EXP_CHUNK) {
        size_t len = n - i0 < CPU_EXP_CHUNK ? n - i0 : CPU_EXP_CHUNK;
        float s[CPU_EXP_CHUNK];
        sigmoids(gate + i0, len, s);
        for (size_t i = 0; i < len; i++)   /* out may be gate or up: read first */
            out[i0 + i] = upc_silu_s(gate[i0 + i], s[i]) * up[i0 + i];
    }
}

void cpu_jitter_scale(const upc_kernels *K, float *x, size_t n, float eps, uint64_t key)
{
#pragma omp parallel for schedule(static) if (n >= CPU_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++)
        x[i] *= upc_jitter_factor(key, i, eps);
}

void cpu_swiglu_bwd(const upc_kernels *K, const float *gate, const float *up,
                    const float *dout, float *dgate, float *dup, size_t n)
{
#pragma omp parallel for schedule(static) if (n >= CPU_PARALLEL_MIN)
    for (size_t i0 = 0; i0 < n; i0 += CPU_EXP_CHUNK) {
        size_t len = n - i0 < CPU_EXP_CHUNK ? n - i0 : CPU_EXP_CHUNK;
        float s[CPU_EXP_CHUNK];
        sigmoids(gate + i0, len, s);
        for (size_t i = 0; i < len; i++)
            upc_swiglu_bwd_elem_s(gate[i0 + i], up[i0 + i], dout[i0 + i], s[i], &dgate[i0 + i], &dup[i0 + i]);
    }
}
