/* kernels_cpu_attention.c: causal self-attention with grouped KV heads on the
 * CPU. Exact two-pass softmax per query row (scores kept in a row buffer);
 * forward parallel over (batch, query head), backward over (batch, KV head)
 * so each thread owns the dk/dv it accumulates: no races, fixed order. */
#include "kernels_cpu.h"
#include "kernels_math.h"

#include <stdlib.h>
#include <string.h>

static float dot(const float *a, const float *b, int n)
{
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void axpy_row(float *y, const float *x, float a, int n)
{
#pragma omp simd
    for (int i = 0; i < n; i++)
        y[i] += a * x[i];
}

static void check_shape(const char *kernel, int B, int T, int Hq, int Hkv, int hd)
{
    CPU_REQUIRE(B >= 0 && T >= 0 && Hq > 0 && Hkv > 0 && hd > 0, kernel, "bad size");
    CPU_REQUIRE(Hq % Hkv == 0, kernel, "query heads not a multiple of KV heads");
}

void cpu_attention_fwd(const upc_kernels *K, const float *q, const float *k,
                       const float *v, float *out, float *lse, int B, int T,
                       int Hq, int Hkv, int hd)
{
    check_shape("attention_fwd", B, T, Hq, Hkv, hd);
    const int group = Hq / Hkv;
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t qs = (size_t)Hq * hd, ks = (size_t)Hkv * hd; /* token strides */
#pragma omp parallel
    {
        float *s = upc_malloc(((size_t)T + 1) * sizeof(float));
        float *acc = upc_malloc((size_t)hd * sizeof(float));
#pragma omp for schedule(static) collapse(2)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < Hq; h++) {
                const int hk = h / group;
                const float *kb = k + (size_t)b * T * ks + (size_t)hk * hd;
                const float *vb = v + (size_t)b * T * ks + (size_t)hk * hd;
                for (int t = 0; t < T; t++) {
                    const float *qt = q + ((size_t)b * T + t) * qs + (size_t)h * hd;
                    float m = -INFINITY;
                    for (int j = 0; j <= t; j++) {
                        s[j] = dot(qt, kb + (size_t)j * ks, hd) * scale;
                        if (s[j] > m)
                            m = s[j];
                    }
                    double l = 0.0;
                    memset(acc, 0, (size_t)hd * sizeof(float));
                    for (int j = 0; j <= t; j++) {
                        float p = expf(s[j] - m);
                        l += p;
                        axpy_row(acc, vb + (size_t)j * ks, p, hd);
                    }
                    float inv = (float)(1.0 / l);
                    float *ot = out + ((size_t)b * T + t) * qs + (size_t)h * hd;
                    for (int i = 0; i < hd; i++)
                        ot[i] = acc[i] * inv;
                    lse[((size_t)b * Hq + h) * T + t] = m + (float)log(l);
                }
            }
        free(acc);
        free(s);
    }
}

void cpu_attention_bwd(const upc_kernels *K, const float *q, const float *k,
                       const float *v, const float *out, const float *lse,
                       const float *dout, float *dq, float *dk, float *dv,
                       int B, int T, int Hq, int Hkv, int hd)
{
    check_shape("attention_bwd", B, T, Hq, Hkv, hd);
    const int group = Hq / Hkv;
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t qs = (size_t)Hq * hd, ks = (size_t)Hkv * hd;
#pragma omp parallel
    {
        float *ds = upc_malloc(((size_t)T + 1) * sizeof(float));
#pragma omp for schedule(static) collapse(2)
        for (int b = 0; b < B; b++)
            for (int hk = 0; hk < Hkv; hk++) {
                const float *kb = k + (size_t)b * T * ks + (size_t)hk * hd;
                const float *vb = v + (size_t)b * T * ks + (size_t)hk * hd;
                float *dkb = dk + (size_t)b * T * ks + (size_t)hk * hd;
                float *dvb = dv + (size_t)b * T * ks + (size_t)hk * hd;
                for (int j = 0; j < T; j++) {
                    memset(dkb + (size_t)j * ks, 0, (size_t)hd * sizeof(float));
                    memset(dvb + (size_t)j * ks, 0, (size_t)hd * sizeof(float));
                }
                for (int h = hk * group; h < (hk + 1) * group; h++)
                    for (int t = 0; t < T; t++) {
                        size_t row = ((size_t)b * T + t) * qs + (size_t)h * hd;
                        const float *qt = q + row, *dot_ = dout + row;
                        float *dqt = dq + row;
                        float L = lse[((size_t)b * Hq + h) * T + t];
                        float D = dot(dot_, out + row, hd);
                        for (int j = 0; j <= t; j++) {
                            float p = expf(dot(qt, kb + (size_t)j * ks, hd) * scale - L);
                            float dp = dot(dot_, vb + (size_t)j * ks, hd);
                            ds[j] = p * (dp - D) * scale;
                            axpy_row(dvb + (size_t)j * ks, dot_, p, hd);
                        }
                        memset(dqt, 0, (size_t)hd * sizeof(float));
                        for (int j = 0; j <= t; j++) {
                            axpy_row(dqt, kb + (size_t)j * ks, ds[j], hd);
                            axpy_row(dkb + (size_t)j * ks, qt, ds[j], hd);
                        }
                    }
            }
        free(ds);
    }
}
