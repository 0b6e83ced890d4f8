/* attention_gemm.c: causal GQA attention through batched GEMMs (see
 * attention_gemm.h).
 *
 * Layouts: q, out, dq [B][T][Hq][hd]; k, v, dk, dv [B][T][Hkv][hd]; score
 * matrices [B][Hq][T][T]. Query head h = hk * G + g reads KV head hk (G =
 * Hq / Hkv). For a fixed batch b and group member g, the heads hk = 0 ..
 * Hkv-1 sit at constant strides in every buffer (q: G*hd, k and v: hd,
 * scores: G*T*T), so each (b, g) is one strided-batched GEMM over hk. */
#include "attention_gemm.h"
#include "util.h"

#include <math.h>

size_t attention_gemm_scratch_floats(int B, int T, int Hq)
{
    size_t n = (size_t)B * Hq * T;
    return 2 * n * (size_t)T + n;
}

typedef struct {
    int B, T, Hq, Hkv, hd, G;
    long long qs, ks, tt;        /* row strides of q and k, floats per score matrix */
} dims;

static dims dims_of(int B, int T, int Hq, int Hkv, int hd)
{
    if (B < 0 || T < 0 || Hq <= 0 || Hkv <= 0 || hd <= 0 || Hq % Hkv)
        upc_fail(EX_SOFTWARE, "attention_gemm: bad shape B=%d T=%d Hq=%d Hkv=%d hd=%d", B, T, Hq, Hkv, hd);
    return (dims){B, T, Hq, Hkv, hd, Hq / Hkv, (long long)Hq * hd, (long long)Hkv * hd, (long long)T * T};
}

/* Offsets of batch b, group member g: into q-shaped, k-shaped and score buffers. */
static size_t q_at(const dims *s, int b, int g)
{
    return (size_t)b * s->T * s->qs + (size_t)g * s->hd;
}

static size_t k_at(const dims *s, int b)
{
    return (size_t)b * s->T * s->ks;
}

static size_t s_at(const dims *s, int b, int g)
{
    return ((size_t)b * s->Hq + g) * (size_t)s->tt;
}

/* S = Q K^T / sqrt(hd), then the causal softmax in place (lse [B][Hq][T]). */
static void probabilities(const upc_kernels *K, const dims *s, const float *q, const float *k, float *S, float *lse)
{
    float scale = 1.0f / sqrtf((float)s->hd);
    for (int b = 0; b < s->B; b++)
        for (int g = 0; g < s->G; g++)
            K->gemm_strided_batched(K, 0, 1, s->T, s->T, s->hd, scale, q + q_at(s, b, g), (int)s->qs,
                                    (long long)s->G * s->hd, k + k_at(s, b), (int)s->ks, s->hd, 0.0f,
                                    S + s_at(s, b, g), s->T, (long long)s->G * s->tt, s->Hkv);
    K->attn_softmax_fwd(K, S, lse, s->B * s->Hq, s->T);
}

void attention_gemm_fwd(const upc_kernels *K, const float *q, const float *k, const float *v, float *out,
                        float *lse, float *scratch, int B, int T, int Hq, int Hkv, int hd)
{
    dims s = dims_of(B, T, Hq, Hkv, hd);
    if (B == 0 || T == 0)
        return;
    float *P = scratch;
    probabilities(K, &s, q, k, P, lse);
    for (int b = 0; b < B; b++)
        for (int g = 0; g < s.G; g++)
            K->gemm_strided_batched(K, 0, 0, T, hd, T, 1.0f, P + s_at(&s, b, g), T, (long long)s.G * s.tt,
                                    v + k_at(&s, b), (int)s.ks, hd, 0.0f, out + q_at(&s, b, g), (int)s.qs,
                                    (long long)s.G * hd, Hkv);
}

void attention_gemm_bwd(const upc_kernels *K, const float *q, const float *k, const float *v, const float *dout,
                        float *dq, float *dk, float *dv, float *scratch, int B, int T, int Hq, int Hkv, int hd)
{
    dims s = dims_of(B, T, Hq, Hkv, hd);
    if (B == 0 || T == 0)
        return;
    size_t n = (size_t)B * Hq * s.tt;
    float *P = scratch, *dS = scratch + n, *lse = scratch + 2 * n;
    /* the forward's P again: the same kernels on the same inputs, the same bits */
    probabilities(K, &s, q, k, P, lse);
    for (int b = 0; b < B; b++)
        for (int g = 0; g < s.G; g++)
            K->gemm_strided_batched(K, 0, 1, T, T, hd, 1.0f, dout + q_at(&s, b, g), (int)s.qs, (long long)s.G * hd,
                                    v + k_at(&s, b), (int)s.ks, hd, 0.0f, dS + s_at(&s, b, g), T,
                                    (long long)s.G * s.tt, Hkv);
    K->attn_softmax_bwd(K, P, dS, B * Hq, T, 1.0f / sqrtf((float)hd));
    for (int b = 0; b < B; b++)
        for (int g = 0; g < s.G; g++) {
            long long sq = (long long)s.G * hd, ss = (long long)s.G * s.tt;
            const float *dSb = dS + s_at(&s, b, g), *Pb = P + s_at(&s, b, g);
            /* dQ = dS K */
            K->gemm_strided_batched(K, 0, 0, T, hd, T, 1.0f, dSb, T, ss, k + k_at(&s, b), (int)s.ks, hd, 0.0f,
                                    dq + q_at(&s, b, g), (int)s.qs, sq, Hkv);
            /* dK, dV: the group's query heads add up (the first overwrites) */
            float beta = g ? 1.0f : 0.0f;
            K->gemm_strided_batched(K, 1, 0, T, hd, T, 1.0f, dSb, T, ss, q + q_at(&s, b, g), (int)s.qs, sq, beta,
                                    dk + k_at(&s, b), (int)s.ks, hd, Hkv);
            K->gemm_strided_batched(K, 1, 0, T, hd, T, 1.0f, Pb, T, ss, dout + q_at(&s, b, g), (int)s.qs, sq, beta,
                                    dv + k_at(&s, b), (int)s.ks, hd, Hkv);
        }
}
