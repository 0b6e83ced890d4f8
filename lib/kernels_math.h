/* kernels_math.h: the per-element math every backend shares (CPU here, CUDA
 * in gpu/), so the CPU tests cover the formulas the GPU kernels run. Plain C
 * that nvcc also accepts; UPC_HD marks the helpers for host and device. */
#ifndef UPCYC_KERNELS_MATH_H
#define UPCYC_KERNELS_MATH_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
/* `static inline` is already on every helper (a second inline would be a
 * duplicate specifier for nvcc); always_inline keeps them in registers. */
#define UPC_HD __host__ __device__ __attribute__((always_inline))
#else
#define UPC_HD
#endif

/* ---- activations --------------------------------------------------------- */

/* sigmoid(x) from e = expf(-x), for callers that take many exponentials at
 * once (the CPU backend's vector expf) */
static inline UPC_HD float upc_sigmoid_of_exp(float e)
{
    return 1.0f / (1.0f + e);
}

static inline UPC_HD float upc_sigmoid(float x)
{
    return upc_sigmoid_of_exp(expf(-x));
}

/* silu(x) = x * sigmoid(x) = x * s */
static inline UPC_HD float upc_silu_s(float x, float s)
{
    return x * s;
}

static inline UPC_HD float upc_silu(float x)
{
    return upc_silu_s(x, upc_sigmoid(x));
}

/* d silu / dx = s * (1 + x * (1 - s)), s = sigmoid(x) */
static inline UPC_HD float upc_silu_grad_s(float x, float s)
{
    return s * (1.0f + x * (1.0f - s));
}

static inline UPC_HD float upc_silu_grad(float x)
{
    return upc_silu_grad_s(x, upc_sigmoid(x));
}

/* SwiGLU backward for one element: out = silu(g) * u, s = sigmoid(g). */
static inline UPC_HD void upc_swiglu_bwd_elem_s(float g, float u, float dout, float s,
                                                float *dg, float *du)
{
    *dg = dout * u * upc_silu_grad_s(g, s);
    *du = dout * upc_silu_s(g, s);
}

static inline UPC_HD void upc_swiglu_bwd_elem(float g, float u, float dout,
                                              float *dg, float *du)
{
    upc_swiglu_bwd_elem_s(g, u, dout, upc_sigmoid(g), dg, du);
}

/* ---- bfloat16 ----------------------------------------------------------------
 * x rounded to the nearest bfloat16 (ties to even), kept as a float: what a
 * bf16 GEMM reads of an fp32 operand. Infinities stay; NaN stays NaN. The
 * top 16 bits of the result are the bf16 value. */
static inline UPC_HD float upc_round_bf16(float x)
{
    union { float f; uint32_t u; } v;
    v.f = x;
    if ((v.u & 0x7fffffffu) > 0x7f800000u)
        return x;
    v.u = (v.u + 0x7fffu + ((v.u >> 16) & 1u)) & 0xffff0000u;
    return v.f;
}

/* ---- router jitter ---------------------------------------------------------
 * The factor element i of a jittered tensor is multiplied by: uniform in
 * [1 - eps, 1 + eps), hashed from (key, i) (splitmix64's finaliser over a
 * counter), so it needs no state, the backward can draw it again, and every
 * backend draws the same factors. */
static inline UPC_HD float upc_jitter_factor(uint64_t key, uint64_t i, float eps)
{
    uint64_t z = key + (i + 1) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    float u = (float)(z >> 40) * 0x1.0p-24f;   /* 24 bits: exact in a float */
    return (1.0f - eps) + (2.0f * eps) * u;
}

/* ---- RMSNorm (one row of d elements) ------------------------------------
 * ss is the sum of squares of the row (accumulated by the caller in its own
 * order; the CPU uses double). */
static inline UPC_HD float upc_rmsnorm_rstd(double ss, int d, float eps)
{
    return (float)(1.0 / sqrt(ss / d + (double)eps));
}

/* dx_i = rstd * (w_i dy_i - x_i * rstd^2 * dot / d), dot = sum_j w_j dy_j x_j */
static inline UPC_HD float upc_rmsnorm_dx(float x, float w, float dy, float rstd,
                                          double dot, int d)
{
    float c = (float)(dot / d) * rstd * rstd;
    return rstd * (w * dy - x * c);
}

/* ---- RoPE ----------------------------------------------------------------
 * HF rotate-half: element i (< hd/2) pairs with i + hd/2; computed in fp32
 * as transformers does, so logits match HF checkpoints. */
static inline UPC_HD float upc_rope_inv_freq(int i, int hd, float theta)
{
    return 1.0f / powf(theta, (float)(2 * i) / (float)hd);
}

/* Rotate (a, b) = (x_i, x_{i+hd/2}) by the angle; sign -1 rotates back
 * (the backward pass: the transpose of a rotation is its inverse). */
static inline UPC_HD void upc_rope_pair(float *a, float *b, float cosv, float sinv,
                                        float sign)
{
    float x0 = *a, x1 = *b, s = sign * sinv;
    *a = x0 * cosv - x1 * s;
    *b = x1 * cosv + x0 * s;
}

/* ---- softmax ---------------------------------------------------------------
 * Online softmax: a running max m and sum l of exp(x - m); fold in one value
 * at a time (or a whole block with upc_softmax_merge), logsumexp = m + log(l).
 * Start from m = -INFINITY, l = 0. */
static inline UPC_HD void upc_softmax_step(float *m, float *l, float x)
{
    if (x == -INFINITY)   /* adds exp(-inf) = 0; -inf - -inf would be NaN while *m is -inf */
        return;
    if (x > *m) {
        *l = *l * expf(*m - x) + 1.0f;
        *m = x;
    } else {
        *l += expf(x - *m);
    }
}

/* Merge the state (m2, l2) of another block into (m, l). */
static inline UPC_HD void upc_softmax_merge(float *m, float *l, float m2, float l2)
{
    if (m2 == -INFINITY)
        return;
    if (m2 > *m) {
        *l = *l * expf(*m - m2) + l2;
        *m = m2;
    } else {
        *l += l2 * expf(m2 - *m);
    }
}

/* Softmax backward through p = softmax(z): dz_e = p_e * (g_e - sum_f p_f g_f);
 * dot is that sum. */
static inline UPC_HD float upc_softmax_bwd_elem(float p, float g, float dot)
{
    return p * (g - dot);
}

/* p = softmax(x) over E (p may be NULL); returns logsumexp(x). */
static inline UPC_HD float upc_softmax_row(const float *x, float *p, int E)
{
    float m = x[0];
    for (int e = 1; e < E; e++)
        m = x[e] > m ? x[e] : m;
    double l = 0.0;
    for (int e = 0; e < E; e++)
        l += exp((double)(x[e] - m));
    float lse = m + (float)log(l);
    if (p)
        for (int e = 0; e < E; e++)
            p[e] = expf(x[e] - lse);
    return lse;
}

/* One token's top-k experts by probability p [E] (kernels.h router_fwd):
 * k passes of "largest not yet taken", strict > keeping the lower index on
 * ties (probabilities decide, as in HF); w [kk] their probabilities,
 * divided by their sum when renorm. */
static inline UPC_HD void upc_router_topk_row(const float *p, int E, int kk, int renorm, int32_t *idx, float *w)
{
    double sum = 0.0;
    for (int j = 0; j < kk; j++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int i = 0; i < j; i++)
                taken |= idx[i] == e;
            if (!taken && (best < 0 || p[e] > p[best]))
                best = e;
        }
        idx[j] = best;
        w[j] = p[best];
        sum += p[best];
    }
    if (renorm)
        for (int j = 0; j < kk; j++)
            w[j] = (float)(w[j] / sum);
}

/* One token's router backward (kernels.h router_bwd): the gradients dw
 * [kk] of its combine weights w [kk] (experts idx [kk], softmax probs p
 * [E]) to its router logits dl [E], overwritten. */
static inline UPC_HD void upc_router_bwd_row(const float *p, const int32_t *idx, const float *w, const float *dw,
                                             float *dl, int E, int kk, int renorm)
{
    double dot = 0.0;
    if (renorm) {
        /* w = softmax over the chosen logits: the others get nothing */
        for (int e = 0; e < E; e++)
            dl[e] = 0.0f;
        for (int j = 0; j < kk; j++)
            dot += (double)w[j] * dw[j];
        for (int j = 0; j < kk; j++)
            dl[idx[j]] = upc_softmax_bwd_elem(w[j], dw[j], (float)dot);
    } else {
        /* w = the chosen entries of the full softmax */
        for (int j = 0; j < kk; j++)
            dot += (double)p[idx[j]] * dw[j];
        for (int e = 0; e < E; e++)
            dl[e] = upc_softmax_bwd_elem(p[e], 0.0f, (float)dot);
        for (int j = 0; j < kk; j++)
            dl[idx[j]] = upc_softmax_bwd_elem(p[idx[j]], dw[j], (float)dot);
    }
}

/* ---- optimizers (one element) ---------------------------------------------
 * AdamW, PyTorch order: decay, moments, bias-corrected step. */
static inline UPC_HD void upc_adamw_elem(float *p, float *m, float *v, float g,
                                         float lr, float beta1, float beta2,
                                         float eps, float wd, float bc1, float bc2)
{
    float pv = *p * (1.0f - lr * wd);
    float mv = beta1 * *m + (1.0f - beta1) * g;
    float vv = beta2 * *v + (1.0f - beta2) * g * g;
    float denom = sqrtf(vv / bc2) + eps;
    *p = pv - lr * (mv / bc1) / denom;
    *m = mv;
    *v = vv;
}

static inline UPC_HD float upc_signf(float x)
{
    return (float)((x > 0.0f) - (x < 0.0f));
}

/* Lion (Chen et al. 2023): the sign of an interpolation steps, the moment
 * tracks with beta2. */
static inline UPC_HD void upc_lion_elem(float *p, float *m, float g, float lr,
                                        float beta1, float beta2, float wd)
{
    float c = beta1 * *m + (1.0f - beta1) * g;
    *p = *p * (1.0f - lr * wd) - lr * upc_signf(c);
    *m = beta2 * *m + (1.0f - beta2) * g;
}

#endif
