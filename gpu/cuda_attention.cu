/* cuda_attention.cu: causal GQA self-attention, flash-attention style, fp32.
 *
 * Forward: a block per (batch, query head, tile of BQ query rows) streams
 * the key/value tiles up to the diagonal through shared memory, keeping a
 * running max m, sum l and output accumulator per query row (the online
 * softmax of kernels_math.h, by tiles); the scores never reach global
 * memory. It saves lse = m + log l for the backward.
 *
 * Backward (FlashAttention-2's recomputation, without atomics so the bits
 * do not depend on scheduling): D = rowsum(dout * out); then
 *   dkdv: a block per (batch, KV head, key tile) loops over its group's
 *         query heads and the query tiles at or below the diagonal,
 *         recomputing P = exp(S - lse) and dS = P (dP - D) scale, and
 *         accumulates dK += dS^T Q, dV += P^T dout in registers;
 *   dq:   a block per (batch, query head, query tile) loops over key tiles,
 *         recomputing dS, and accumulates dQ += dS K.
 * Every sum runs in a fixed order.
 *
 * Thread layout (128 threads, BQ = BK = 32): 4 threads per tile row, each
 * holding 8 of the row's 32 scores and every 4th element of the row's
 * head-dim accumulator (MAXD/4 registers: templates for hd <= 64, 128, 256).
 * Shared rows are padded by one float against bank conflicts. */
#include "cuda_internal.cuh"

#include <math.h>

enum { BQ = 32, BK = 32, ATT_THREADS = 128, PER_LANE = BK / 4 };

/* Sum / max over the 4 lanes of a tile row (lanes 4r..4r+3 of a warp). */
static __device__ __forceinline__ float row_sum4(float v)
{
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v;
}

static __device__ __forceinline__ float row_max4(float v)
{
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
    return v;
}

static __device__ __forceinline__ float dot_sh(const float *a, const float *b, int hd)
{
    float s = 0.0f;
    for (int c = 0; c < hd; c++)
        s += a[c] * b[c];
    return s;
}

/* rows [t0, t0 + n) of a [T][stride] head slice (zeros past T) into sh [n][sd] */
static __device__ __forceinline__ void load_tile(float *sh, const float *src, size_t stride, int t0, int n,
                                                 int T, int hd, int sd)
{
    for (int e = threadIdx.x; e < n * hd; e += blockDim.x) {
        int r = e / hd, c = e % hd;
        sh[r * sd + c] = t0 + r < T ? src[(size_t)(t0 + r) * stride + c] : 0.0f;
    }
}

template <int MAXD>
static __global__ void __launch_bounds__(ATT_THREADS)
attn_fwd_kernel(const float *q, const float *k, const float *v, float *out, float *lse, int T, int Hq,
                int Hkv, int hd, float scale)
{
    extern __shared__ float sm[];
    const int sd = hd + 1;
    float *Qs = sm, *Ks = Qs + BQ * sd, *Vs = Ks + BK * sd, *Ps = Vs + BK * sd;
    const int b = blockIdx.y / Hq, h = blockIdx.y % Hq, hk = h / (Hq / Hkv);
    const int q0 = blockIdx.x * BQ;
    const size_t qs = (size_t)Hq * hd, ks = (size_t)Hkv * hd;
    const float *qb = q + (size_t)b * T * qs + (size_t)h * hd;
    const float *kb = k + (size_t)b * T * ks + (size_t)hk * hd;
    const float *vb = v + (size_t)b * T * ks + (size_t)hk * hd;
    const int row = threadIdx.x / 4, l4 = threadIdx.x % 4, tq = q0 + row;

    load_tile(Qs, qb, qs, q0, BQ, T, hd, sd);
    float m = -INFINITY, l = 0.0f, acc[MAXD / 4];
#pragma unroll
    for (int w = 0; w < MAXD / 4; w++)
        acc[w] = 0.0f;
    const int kend = min(T, q0 + BQ);
    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();   /* the previous tile is no longer read */
        load_tile(Ks, kb, ks, k0, BK, T, hd, sd);
        load_tile(Vs, vb, ks, k0, BK, T, hd, sd);
        __syncthreads();
        float s[PER_LANE], tmax = -INFINITY;
#pragma unroll
        for (int u = 0; u < PER_LANE; u++) {
            int j = l4 + 4 * u, tk = k0 + j;
            s[u] = tq < T && tk <= tq ? dot_sh(Qs + row * sd, Ks + j * sd, hd) * scale : -INFINITY;
            tmax = fmaxf(tmax, s[u]);
        }
        tmax = row_max4(tmax);
        float mnew = fmaxf(m, tmax);
        float alpha = mnew == -INFINITY ? 1.0f : expf(m - mnew);
        float psum = 0.0f;
#pragma unroll
        for (int u = 0; u < PER_LANE; u++) {
            float p = s[u] == -INFINITY ? 0.0f : expf(s[u] - mnew);
            Ps[row * (BK + 1) + l4 + 4 * u] = p;
            psum += p;
        }
        psum = row_sum4(psum);
        l = l * alpha + psum;
        m = mnew;
        __syncwarp();      /* a row's P is written and read by its own 4 lanes */
#pragma unroll
        for (int w = 0; w < MAXD / 4; w++) {
            int c = l4 + 4 * w;
            if (c < hd) {
                float a = acc[w] * alpha;
                for (int j = 0; j < BK; j++)
                    a += Ps[row * (BK + 1) + j] * Vs[j * sd + c];
                acc[w] = a;
            }
        }
        __syncwarp();
    }
    if (tq < T) {
        float inv = 1.0f / l;
        float *o = out + ((size_t)b * T + tq) * qs + (size_t)h * hd;
#pragma unroll
        for (int w = 0; w < MAXD / 4; w++) {
            int c = l4 + 4 * w;
            if (c < hd)
                o[c] = acc[w] * inv;
        }
        if (l4 == 0)
            lse[((size_t)b * Hq + h) * T + tq] = m + logf(l);
    }
}

/* D[b][h][t] = sum_c dout * out, summed in c order as the CPU does. */
static __global__ void attn_delta_kernel(const float *out, const float *dout, float *D, int B, int T, int Hq,
                                         int hd)
{
    size_t n = (size_t)B * T * Hq;
    GRID_STRIDE(i, n) {
        size_t bt = i / Hq;
        int h = (int)(i % Hq);
        const float *o = out + i * hd, *g = dout + i * hd;
        float s = 0.0f;
        for (int c = 0; c < hd; c++)
            s += g[c] * o[c];
        size_t b = bt / T, t = bt % T;
        D[(b * Hq + h) * T + t] = s;
    }
}

const float *cuda_attention_delta(const upc_kernels *K, const char *kernel, const float *out, const float *dout,
                                  int B, int T, int Hq, int hd)
{
    size_t n = (size_t)B * T * Hq;
    float *D = (float *)cuda_scratch(K, SCRATCH_KERNEL, n * sizeof(float), kernel);
    attn_delta_kernel<<<cuda_blocks(n), CUDA_THREADS>>>(out, dout, D, B, T, Hq, hd);
    cuda_after_launch(K, kernel);
    return D;
}

template <int MAXD>
static __global__ void __launch_bounds__(ATT_THREADS)
attn_dkdv_kernel(const float *q, const float *k, const float *v, const float *lse, const float *D,
                 const float *dout, float *dk, float *dv, int T, int Hq, int Hkv, int hd, float scale)
{
    extern __shared__ float sm[];
    const int sd = hd + 1;
    float *Ks = sm, *Vs = Ks + BK * sd, *Qs = Vs + BK * sd, *dOs = Qs + BQ * sd;
    float *Pt = dOs + BQ * sd, *dSt = Pt + BK * (BQ + 1), *lse_s = dSt + BK * (BQ + 1), *D_s = lse_s + BQ;
    const int b = blockIdx.y / Hkv, hk = blockIdx.y % Hkv, group = Hq / Hkv;
    const int k0 = blockIdx.x * BK;
    const size_t qs = (size_t)Hq * hd, ks = (size_t)Hkv * hd;
    const int row = threadIdx.x / 4, l4 = threadIdx.x % 4, tk = k0 + row;

    load_tile(Ks, k + (size_t)b * T * ks + (size_t)hk * hd, ks, k0, BK, T, hd, sd);
    load_tile(Vs, v + (size_t)b * T * ks + (size_t)hk * hd, ks, k0, BK, T, hd, sd);
    float dka[MAXD / 4], dva[MAXD / 4];
#pragma unroll
    for (int w = 0; w < MAXD / 4; w++)
        dka[w] = dva[w] = 0.0f;
    for (int g = 0; g < group; g++) {
        const int h = hk * group + g;
        const float *qb = q + (size_t)b * T * qs + (size_t)h * hd;
        const float *gb = dout + (size_t)b * T * qs + (size_t)h * hd;
        const float *lb = lse + ((size_t)b * Hq + h) * T, *Db = D + ((size_t)b * Hq + h) * T;
        for (int q0 = (k0 / BQ) * BQ; q0 < T; q0 += BQ) {
            __syncthreads();
            load_tile(Qs, qb, qs, q0, BQ, T, hd, sd);
            load_tile(dOs, gb, qs, q0, BQ, T, hd, sd);
            for (int i = threadIdx.x; i < BQ; i += blockDim.x) {
                lse_s[i] = q0 + i < T ? lb[q0 + i] : 0.0f;
                D_s[i] = q0 + i < T ? Db[q0 + i] : 0.0f;
            }
            __syncthreads();
#pragma unroll
            for (int u = 0; u < PER_LANE; u++) {
                int i = l4 + 4 * u, tq = q0 + i;
                float p = 0.0f, ds = 0.0f;
                if (tq < T && tk < T && tk <= tq) {
                    float s = dot_sh(Qs + i * sd, Ks + row * sd, hd) * scale;
                    p = expf(s - lse_s[i]);
                    float dp = dot_sh(dOs + i * sd, Vs + row * sd, hd);
                    ds = p * (dp - D_s[i]) * scale;
                }
                Pt[row * (BQ + 1) + i] = p;
                dSt[row * (BQ + 1) + i] = ds;
            }
            __syncwarp();
#pragma unroll
            for (int w = 0; w < MAXD / 4; w++) {
                int c = l4 + 4 * w;
                if (c < hd) {
                    float a = dva[w], e = dka[w];
                    for (int i = 0; i < BQ; i++) {
                        a += Pt[row * (BQ + 1) + i] * dOs[i * sd + c];
                        e += dSt[row * (BQ + 1) + i] * Qs[i * sd + c];
                    }
                    dva[w] = a;
                    dka[w] = e;
                }
            }
            __syncwarp();
        }
    }
    if (tk < T) {
        size_t off = ((size_t)b * T + tk) * ks + (size_t)hk * hd;
#pragma unroll
        for (int w = 0; w < MAXD / 4; w++) {
            int c = l4 + 4 * w;
            if (c < hd) {
                dk[off + c] = dka[w];
                dv[off + c] = dva[w];
            }
        }
    }
}

template <int MAXD>
static __global__ void __launch_bounds__(ATT_THREADS)
attn_dq_kernel(const float *q, const float *k, const float *v, const float *lse, const float *D,
               const float *dout, float *dq, int T, int Hq, int Hkv, int hd, float scale)
{
    extern __shared__ float sm[];
    const int sd = hd + 1;
    float *Qs = sm, *dOs = Qs + BQ * sd, *Ks = dOs + BQ * sd, *Vs = Ks + BK * sd, *dSs = Vs + BK * sd;
    const int b = blockIdx.y / Hq, h = blockIdx.y % Hq, hk = h / (Hq / Hkv);
    const int q0 = blockIdx.x * BQ;
    const size_t qs = (size_t)Hq * hd, ks = (size_t)Hkv * hd;
    const int row = threadIdx.x / 4, l4 = threadIdx.x % 4, tq = q0 + row;
    const float *kb = k + (size_t)b * T * ks + (size_t)hk * hd;
    const float *vb = v + (size_t)b * T * ks + (size_t)hk * hd;

    load_tile(Qs, q + (size_t)b * T * qs + (size_t)h * hd, qs, q0, BQ, T, hd, sd);
    load_tile(dOs, dout + (size_t)b * T * qs + (size_t)h * hd, qs, q0, BQ, T, hd, sd);
    const float lse_r = tq < T ? lse[((size_t)b * Hq + h) * T + tq] : 0.0f;
    const float D_r = tq < T ? D[((size_t)b * Hq + h) * T + tq] : 0.0f;
    float acc[MAXD / 4];
#pragma unroll
    for (int w = 0; w < MAXD / 4; w++)
        acc[w] = 0.0f;
    const int kend = min(T, q0 + BQ);
    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();
        load_tile(Ks, kb, ks, k0, BK, T, hd, sd);
        load_tile(Vs, vb, ks, k0, BK, T, hd, sd);
        __syncthreads();
#pragma unroll
        for (int u = 0; u < PER_LANE; u++) {
            int j = l4 + 4 * u, tk = k0 + j;
            float ds = 0.0f;
            if (tq < T && tk <= tq) {
                float s = dot_sh(Qs + row * sd, Ks + j * sd, hd) * scale;
                float p = expf(s - lse_r);
                float dp = dot_sh(dOs + row * sd, Vs + j * sd, hd);
                ds = p * (dp - D_r) * scale;
            }
            dSs[row * (BK + 1) + j] = ds;
        }
        __syncwarp();
#pragma unroll
        for (int w = 0; w < MAXD / 4; w++) {
            int c = l4 + 4 * w;
            if (c < hd) {
                float a = acc[w];
                for (int j = 0; j < BK; j++)
                    a += dSs[row * (BK + 1) + j] * Ks[j * sd + c];
                acc[w] = a;
            }
        }
        __syncwarp();
    }
    if (tq < T) {
        float *o = dq + ((size_t)b * T + tq) * qs + (size_t)h * hd;
#pragma unroll
        for (int w = 0; w < MAXD / 4; w++) {
            int c = l4 + 4 * w;
            if (c < hd)
                o[c] = acc[w];
        }
    }
}

#define PICK_MAXD(hd, call64, call128, call256)                                                 \
    do {                                                                                        \
        if ((hd) <= 64)                                                                         \
            call64;                                                                             \
        else if ((hd) <= 128)                                                                   \
            call128;                                                                            \
        else                                                                                    \
            call256;                                                                            \
    } while (0)

template <int MAXD>
static void run_fwd(const upc_kernels *K, const float *q, const float *k, const float *v, float *out,
                    float *lse, int B, int T, int Hq, int Hkv, int hd, float scale)
{
    int sd = hd + 1;
    size_t smem = ((size_t)(BQ + 2 * BK) * sd + (size_t)BQ * (BK + 1)) * sizeof(float);
    dim3 grid((unsigned)((T + BQ - 1) / BQ), (unsigned)(B * Hq));
    cuda_allow_smem("attention_fwd", attn_fwd_kernel<MAXD>, smem);
    attn_fwd_kernel<MAXD><<<grid, ATT_THREADS, smem>>>(q, k, v, out, lse, T, Hq, Hkv, hd, scale);
    cuda_after_launch(K, "attention_fwd");
}

void cu_attention_fwd(const upc_kernels *K, const float *q, const float *k, const float *v, float *out,
                      float *lse, int B, int T, int Hq, int Hkv, int hd)
{
    cuda_attention_check_shape("attention_fwd", B, T, Hq, Hkv, hd);
    if (B == 0 || T == 0)
        return;
    const float scale = 1.0f / sqrtf((float)hd);
    PICK_MAXD(hd, (run_fwd<64>(K, q, k, v, out, lse, B, T, Hq, Hkv, hd, scale)),
              (run_fwd<128>(K, q, k, v, out, lse, B, T, Hq, Hkv, hd, scale)),
              (run_fwd<256>(K, q, k, v, out, lse, B, T, Hq, Hkv, hd, scale)));
}

template <int MAXD>
static void run_bwd(const upc_kernels *K, const float *q, const float *k, const float *v, const float *lse,
                    const float *D, const float *dout, float *dq, float *dk, float *dv, int B, int T, int Hq,
                    int Hkv, int hd, float scale)
{
    const char *kernel = "attention_bwd";
    int sd = hd + 1;
    unsigned tiles = (unsigned)((T + BQ - 1) / BQ);
    size_t smem_kv = ((size_t)(2 * BK + 2 * BQ) * sd + 2 * (size_t)BK * (BQ + 1) + 2 * BQ) * sizeof(float);
    dim3 grid_kv(tiles, (unsigned)(B * Hkv));
    cuda_allow_smem(kernel, attn_dkdv_kernel<MAXD>, smem_kv);
    attn_dkdv_kernel<MAXD><<<grid_kv, ATT_THREADS, smem_kv>>>(q, k, v, lse, D, dout, dk, dv, T, Hq, Hkv, hd,
                                                              scale);
    cuda_after_launch(K, kernel);
    size_t smem_q = ((size_t)(2 * BQ + 2 * BK) * sd + (size_t)BQ * (BK + 1)) * sizeof(float);
    dim3 grid_q(tiles, (unsigned)(B * Hq));
    cuda_allow_smem(kernel, attn_dq_kernel<MAXD>, smem_q);
    attn_dq_kernel<MAXD><<<grid_q, ATT_THREADS, smem_q>>>(q, k, v, lse, D, dout, dq, T, Hq, Hkv, hd, scale);
    cuda_after_launch(K, kernel);
}

void cu_attention_bwd(const upc_kernels *K, const float *q, const float *k, const float *v,
                      const float *out, const float *lse, const float *dout, float *dq, float *dk,
                      float *dv, int B, int T, int Hq, int Hkv, int hd)
{
    const char *kernel = "attention_bwd";
    cuda_attention_check_shape(kernel, B, T, Hq, Hkv, hd);
    if (B == 0 || T == 0)
        return;
    const float scale = 1.0f / sqrtf((float)hd);
    const float *D = cuda_attention_delta(K, kernel, out, dout, B, T, Hq, hd);
    PICK_MAXD(hd, (run_bwd<64>(K, q, k, v, lse, D, dout, dq, dk, dv, B, T, Hq, Hkv, hd, scale)),
              (run_bwd<128>(K, q, k, v, lse, D, dout, dq, dk, dv, B, T, Hq, Hkv, hd, scale)),
              (run_bwd<256>(K, q, k, v, lse, D, dout, dq, dk, dv, B, T, Hq, Hkv, hd, scale)));
}

/* ---- score-matrix rows (attention through GEMMs, lib/attention_gemm.c) ---------- */

enum { ROW_THREADS = 256 };

/* a block per row r of the n*T rows; its query index is r % T */
static __global__ void __launch_bounds__(ROW_THREADS) attn_softmax_fwd_kernel(float *S, float *lse, int T)
{
    size_t r = blockIdx.x;
    int i = (int)(r % (size_t)T);
    float *x = S + r * T;
    float l = block_logsumexp<ROW_THREADS>(x, i + 1);
    for (int j = threadIdx.x; j < T; j += ROW_THREADS)
        x[j] = j <= i ? expf(x[j] - l) : 0.0f;
    if (threadIdx.x == 0)
        lse[r] = l;
}

static __global__ void __launch_bounds__(ROW_THREADS)
attn_softmax_bwd_kernel(const float *P, float *dP, int T, float scale)
{
    __shared__ double sh[ROW_THREADS];
    size_t r = blockIdx.x;
    int i = (int)(r % (size_t)T);
    const float *p = P + r * T;
    float *g = dP + r * T;
    double dot = 0.0;
    for (int j = threadIdx.x; j <= i; j += ROW_THREADS)
        dot += (double)p[j] * g[j];
    dot = block_sum(dot, sh);
    for (int j = threadIdx.x; j < T; j += ROW_THREADS)
        g[j] = j <= i ? scale * upc_softmax_bwd_elem(p[j], g[j], (float)dot) : 0.0f;
}

void cu_attn_softmax_fwd(const upc_kernels *K, float *S, float *lse, int n, int T)
{
    CUDA_REQUIRE(n >= 0 && T >= 0, "attn_softmax_fwd", "negative size");
    size_t rows = (size_t)n * T;
    CUDA_REQUIRE(rows < 2147483648u, "attn_softmax_fwd", "more than 2^31 rows");
    if (rows == 0)
        return;
    attn_softmax_fwd_kernel<<<(unsigned)rows, ROW_THREADS>>>(S, lse, T);
    cuda_after_launch(K, "attn_softmax_fwd");
}

void cu_attn_softmax_bwd(const upc_kernels *K, const float *P, float *dP, int n, int T, float scale)
{
    CUDA_REQUIRE(n >= 0 && T >= 0, "attn_softmax_bwd", "negative size");
    size_t rows = (size_t)n * T;
    CUDA_REQUIRE(rows < 2147483648u, "attn_softmax_bwd", "more than 2^31 rows");
    if (rows == 0)
        return;
    attn_softmax_bwd_kernel<<<(unsigned)rows, ROW_THREADS>>>(P, dP, T, scale);
    cuda_after_launch(K, "attn_softmax_bwd");
}
