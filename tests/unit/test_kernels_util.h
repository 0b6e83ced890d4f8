/* test_kernels_util.h: what the kernel tests share: a seeded generator,
 * device buffers filled from the host, comparisons that name the failing
 * check (CHECK_MSG, from test_harness.h), and a central-difference gradient
 * checker. Tests go through the kernel table only (upload/download), so they
 * can run on any backend. */
#ifndef TEST_KERNELS_UTIL_H
#define TEST_KERNELS_UTIL_H

#include "kernels.h"
#include "test_harness.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const upc_kernels *K;
static uint64_t rng_state = 12345;

/* Uniform in [lo, hi). */
static inline double urand(double lo, double hi)
{
    return lo + (hi - lo) * (double)(upc_splitmix64(&rng_state) >> 11) / 9007199254740992.0;
}

static inline float *host_rand(size_t n, double lo, double hi)
{
    float *h = upc_malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++)
        h[i] = (float)urand(lo, hi);
    return h;
}

static inline float *dev_from(const float *h, size_t n)
{
    float *d = K->alloc(K, (n ? n : 1) * sizeof(float));
    if (!d)
        upc_fail(EX_OSERR, "device alloc failed");
    K->upload(K, d, h, n * sizeof(float));
    return d;
}

static inline float *dev_rand(size_t n, double lo, double hi)
{
    float *h = host_rand(n, lo, hi);
    float *d = dev_from(h, n);
    free(h);
    return d;
}

static inline float *dev_zeros(size_t n)
{
    float *d = K->alloc(K, (n ? n : 1) * sizeof(float));
    if (!d)
        upc_fail(EX_OSERR, "device alloc failed");
    return d;
}

static inline int32_t *dev_ids(const int32_t *h, size_t n)
{
    int32_t *d = K->alloc(K, (n ? n : 1) * sizeof(int32_t));
    if (!d)
        upc_fail(EX_OSERR, "device alloc failed");
    K->upload(K, d, h, n * sizeof(int32_t));
    return d;
}

static inline float *host_of(const float *d, size_t n)
{
    float *h = upc_malloc((n ? n : 1) * sizeof(float));
    K->download(K, h, d, n * sizeof(float));
    return h;
}

static inline int32_t *host_ids(const int32_t *d, size_t n)
{
    int32_t *h = upc_malloc((n ? n : 1) * sizeof(int32_t));
    K->download(K, h, d, n * sizeof(int32_t));
    return h;
}

/* Device buffer got against a double reference: |got - ref| <= atol + rtol|ref|. */
static inline void expect_close(const char *what, const float *got_dev, const double *ref,
                         size_t n, double atol, double rtol)
{
    float *got = host_of(got_dev, n);
    size_t bad = 0, worst = 0;
    double worst_err = -1.0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - ref[i]);
        if (!(err <= atol + rtol * fabs(ref[i]))) {
            bad++;
            if (!(err <= worst_err)) {
                worst_err = err;
                worst = i;
            }
        }
    }
    CHECK_MSG(bad == 0, "%s: %zu of %zu elements off; worst [%zu] got %.8g want %.8g", what,
          bad, n, worst, (double)got[worst], ref[worst]);
    free(got);
}

/* Two device buffers with the same bits. */
static inline void expect_same_bits(const char *what, const void *a_dev, const void *b_dev,
                             size_t bytes)
{
    char *a = upc_malloc(bytes ? bytes : 1), *b = upc_malloc(bytes ? bytes : 1);
    K->download(K, a, a_dev, bytes);
    K->download(K, b, b_dev, bytes);
    CHECK_MSG(memcmp(a, b, bytes) == 0, "%s: bits differ", what);
    free(a);
    free(b);
}

/* sum_i r[i] * out[i] in double, out on the device. */
static inline double weighted_sum(const float *out_dev, const float *r, size_t n)
{
    float *o = host_of(out_dev, n);
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)r[i] * o[i];
    free(o);
    return s;
}

/* Central differences of loss() against the analytic gradient grad_dev of
 * the device buffer x_dev (n floats), at up to 48 spread elements. Passes
 * when ||num - ana|| <= tol * ||num|| (+ a floor for all-zero gradients). */
typedef double (*loss_fn)(void *ctx);

static inline void expect_grad(const char *what, float *x_dev, size_t n, const float *grad_dev,
                        loss_fn loss, void *ctx, double h, double tol)
{
    float *ana = host_of(grad_dev, n);
    size_t step = n > 48 ? n / 48 : 1;
    double diff2 = 0.0, num2 = 0.0, worst = 0.0;
    size_t worst_i = 0;
    double worst_num = 0.0;
    for (size_t i = 0; i < n; i += step) {
        float x0;
        K->download(K, &x0, x_dev + i, sizeof(float));
        float xp = (float)(x0 + h), xm = (float)(x0 - h);
        K->upload(K, x_dev + i, &xp, sizeof(float));
        double lp = loss(ctx);
        K->upload(K, x_dev + i, &xm, sizeof(float));
        double lm = loss(ctx);
        K->upload(K, x_dev + i, &x0, sizeof(float));
        double num = (lp - lm) / ((double)xp - xm);
        double d = num - ana[i];
        diff2 += d * d;
        num2 += num * num;
        if (fabs(d) > worst) {
            worst = fabs(d);
            worst_i = i;
            worst_num = num;
        }
    }
    double rel = sqrt(diff2) / (sqrt(num2) + 1e-6);
    CHECK_MSG(rel <= tol, "%s: gradient relative error %.3g > %.3g; worst [%zu] analytic %.6g numeric %.6g",
          what, rel, tol, worst_i, (double)ana[worst_i], worst_num);
    free(ana);
}

static inline int finish(const char *name)
{
    if (failures) {
        fprintf(stderr, "%s: %d checks failed\n", name, failures);
        return 1;
    }
    printf("%s: all checks passed\n", name);
    return 0;
}

#endif
