/* cuda_attention_bf16.cu: causal GQA attention on tensor cores, the bf16
 * table's attention_fwd and attention_bwd (a model uses them with
 * UPC_BF16_ATTENTION=flash, model.h). FlashAttention-2 with WMMA: blocks of
 * 4 warps take 64 rows (queries, or keys in dK/dV), a warp 16 of them, and
 * stream 64-row tiles of the other side through shared memory:
 *
 *   forward  S = Q K^T, the online softmax of each row in fp32 (running
 *            max m, sum l), O = O alpha + P V with P = exp(S scale - m);
 *            out = O / l, lse = m + log l (as the fp32 kernel saves it)
 *   dK, dV   per key tile, over its query heads and the query tiles at or
 *            below the diagonal: P^T = exp(K Q^T scale - lse), dP^T = V dO^T,
 *            dS^T = P^T (dP^T - D) scale; dV += P^T dO, dK += dS^T Q
 *   dQ       per query tile, over the key tiles: dQ += dS K
 *
 * with D = rowsum(dout * out). Every product has bf16 operands (rounded as
 * upc_round_bf16) and fp32 sums; no atomics, so the bits do not depend on
 * scheduling. Accumulators (O, dK, dV, dQ) live in shared memory: a WMMA
 * accumulator's elements cannot be addressed by row, so each step loads
 * one, adds a product and stores it back. The scores never reach global
 * memory. Q, K, V, dout are rounded as the GEMM path (attention_gemm.h)
 * rounds them; P is rounded before normalisation in the forward, and
 * D comes from out rather than from P dP: differences of bf16's resolution
 * from that reference. The backward needs head dims up to 128 (shared
 * memory); above, it is the fp32 kernel's. */
#include "cuda_internal.cuh"

#include <math.h>
#include <mma.h>

using namespace nvcuda;

enum { FB_ROWS = 64, FB_WARPS = 4, FB_THREADS = FB_WARPS * 32, FB_BWD_MAX_HD = 128 };

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc_frag;

/* Shared-memory layout for head dim hd: `tiles` bf16 tiles of 64 rows, then
 * per warp two fp32 score blocks [16][64], two bf16 ones and `accs` fp32
 * accumulators [16][hdp], then 64 lse and 64 D values. Leading dimensions
 * are padded against bank conflicts and keep every WMMA pointer 32-byte
 * aligned. */
struct fb_layout {
    int hdp, ldh, lds, ldp, ldo;
    size_t s, p, acc, rows, bytes;   /* byte offsets; tile i at i * tile */
    size_t tile;
};

static __host__ __device__ fb_layout fb_layout_for(int hd, int tiles, int accs)
{
    fb_layout L;
    L.hdp = (hd + 15) / 16 * 16;
    L.ldh = L.hdp + 8;
    L.lds = FB_ROWS + 4;
    L.ldp = FB_ROWS + 8;
    L.ldo = L.hdp + 4;
    L.tile = (size_t)FB_ROWS * L.ldh * 2;
    L.s = (size_t)tiles * L.tile;
    L.p = L.s + (size_t)FB_WARPS * 2 * 16 * L.lds * 4;
    L.acc = L.p + (size_t)FB_WARPS * 2 * 16 * L.ldp * 2;
    L.rows = L.acc + (size_t)FB_WARPS * accs * 16 * L.ldo * 4;
    L.bytes = L.rows + 2 * FB_ROWS * 4;
    return L;
}

/* A block's views of its shared memory. */
struct fb_smem {
    __nv_bfloat16 *tile[4];
    float *s0, *s1;             /* this warp's [16][lds] score blocks */
    __nv_bfloat16 *p0, *p1;     /* this warp's [16][ldp] bf16 blocks */
    float *acc0, *acc1;         /* this warp's [16][ldo] accumulators */
    float *lse, *D;             /* [64] per row of the block's query tile */
};

static __device__ fb_smem fb_views(float *sm, const fb_layout &L, int tiles, int accs)
{
    char *base = (char *)sm;
    int warp = threadIdx.x / 32;
    fb_smem v;
    for (int i = 0; i < 4; i++)
        v.tile[i] = i < tiles ? (__nv_bfloat16 *)(base + i * L.tile) : NULL;
    v.s0 = (float *)(base + L.s) + (size_t)warp * 2 * 16 * L.lds;
    v.s1 = v.s0 + 16 * L.lds;
    v.p0 = (__nv_bfloat16 *)(base + L.p) + (size_t)warp * 2 * 16 * L.ldp;
    v.p1 = v.p0 + 16 * L.ldp;
    v.acc0 = (float *)(base + L.acc) + (size_t)warp * accs * 16 * L.ldo;
    v.acc1 = accs > 1 ? v.acc0 + 16 * L.ldo : NULL;
    v.lse = (float *)(base + L.rows);
    v.D = v.lse + FB_ROWS;
    return v;
}

/* rows [t0, t0 + 64) of a [T][stride] head slice, rounded to bf16, into sh
 * [64][ldh]; zeros past T and in the columns hd..hdp */
static __device__ void load_tile_bf16(__nv_bfloat16 *sh, const float *src, size_t stride, int t0, int T, int hd,
                                      const fb_layout &L)
{
    for (int e = threadIdx.x; e < FB_ROWS * L.hdp; e += blockDim.x) {
        int r = e / L.hdp, c = e % L.hdp;
        sh[r * L.ldh + c] = cuda_to_bf16(t0 + r < T && c < hd ? src[(size_t)(t0 + r) * stride + c] : 0.0f);
    }
}

/* out [16][64] (fp32, ld lds) = A [16][hdp] B^T: A the warp's 16 rows of a
 * tile, B a whole tile [64][hdp] (both bf16, ld ldh) */
static __device__ void warp_abt(float *out, const __nv_bfloat16 *A, const __nv_bfloat16 *Bt, const fb_layout &L)
{
    acc_frag acc[FB_ROWS / 16];
    for (int j = 0; j < FB_ROWS / 16; j++)
        wmma::fill_fragment(acc[j], 0.0f);
    for (int kk = 0; kk < L.hdp; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, A + kk, L.ldh);
        for (int j = 0; j < FB_ROWS / 16; j++) {
            /* B^T as a column-major 16x16 block: element (c, n) at B[n][c] */
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
            wmma::load_matrix_sync(fb, Bt + (size_t)j * 16 * L.ldh + kk, L.ldh);
            wmma::mma_sync(acc[j], fa, fb, acc[j]);
        }
    }
    for (int j = 0; j < FB_ROWS / 16; j++)
        wmma::store_matrix_sync(out + j * 16, acc[j], L.lds, wmma::mem_row_major);
}

/* acc [16][hdp] (fp32, ld ldo) += P [16][64] (bf16, ld ldp) X, X a tile
 * [64][hdp] (bf16, ld ldh) */
static __device__ void warp_acc_px(float *acc, const __nv_bfloat16 *P, const __nv_bfloat16 *X, const fb_layout &L)
{
    for (int jn = 0; jn < L.hdp; jn += 16) {
        acc_frag a;
        wmma::load_matrix_sync(a, acc + jn, L.ldo, wmma::mem_row_major);
        for (int kk = 0; kk < FB_ROWS; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fp;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fx;
            wmma::load_matrix_sync(fp, P + kk, L.ldp);
            wmma::load_matrix_sync(fx, X + (size_t)kk * L.ldh + jn, L.ldh);
            wmma::mma_sync(a, fp, fx, a);
        }
        wmma::store_matrix_sync(acc + jn, a, L.ldo, wmma::mem_row_major);
    }
}

/* Lanes 2r and 2r+1 own row r of a warp's 16: columns [half * n/2, (half+1) * n/2). */
#define FOR_MY_HALF(c, n) \
    for (int c = (int)(threadIdx.x % 2) * ((n) / 2); c < (int)(threadIdx.x % 2 + 1) * ((n) / 2); c++)

static __device__ void zero_my_rows(float *acc, const fb_layout &L)
{
    int r = threadIdx.x % 32 / 2;
    FOR_MY_HALF(c, L.hdp)
    acc[r * L.ldo + c] = 0.0f;
}

/* row r of acc (its first hd columns) times `mul` into dst[0..hd) */
static __device__ void write_my_row(float *dst, const float *acc, float mul, int hd, const fb_layout &L)
{
    int r = threadIdx.x % 32 / 2;
    FOR_MY_HALF(c, L.hdp)
    if (c < hd)
        dst[c] = acc[r * L.ldo + c] * mul;
}

/* ---- forward --------------------------------------------------------------------- */

static __global__ void __launch_bounds__(FB_THREADS)
    attn_fwd_bf16_kernel(const float *q, const float *k, const float *v, float *out, float *lse, int T, int Hq,
                         int Hkv, int hd, float scale)
{
    extern __shared__ float sm[];
    const fb_layout L = fb_layout_for(hd, 3, 1);
    const fb_smem S = fb_views(sm, L, 3, 1);
    __nv_bfloat16 *Qs = S.tile[0], *Ks = S.tile[1], *Vs = S.tile[2];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.y / Hq, h = blockIdx.y % Hq, hk = h / (Hq / Hkv);
    const int q0 = blockIdx.x * FB_ROWS;
    const size_t qs = (size_t)Hq * hd, ks = (size_t)Hkv * hd;
    const float *kb = k + (size_t)b * T * ks + (size_t)hk * hd;
    const float *vb = v + (size_t)b * T * ks + (size_t)hk * hd;
    const int r = lane / 2, half = lane % 2, tq = q0 + warp * 16 + r;

    load_tile_bf16(Qs, q + (size_t)b * T * qs + (size_t)h * hd, qs, q0, T, hd, L);
    zero_my_rows(S.acc0, L);
    float m = -INFINITY, l = 0.0f;
    const int kend = min(T, q0 + FB_ROWS);
    for (int k0 = 0; k0 < kend; k0 += FB_ROWS) {
        __syncthreads();   /* the previous K and V tiles are no longer read */
        load_tile_bf16(Ks, kb, ks, k0, T, hd, L);
        load_tile_bf16(Vs, vb, ks, k0, T, hd, L);
        __syncthreads();
        warp_abt(S.s0, Qs + (size_t)warp * 16 * L.ldh, Ks, L);
        __syncwarp();
        /* the online softmax of row r over this tile: 32 scores per lane */
        float s[FB_ROWS / 2], tmax = -INFINITY;
#pragma unroll
        for (int u = 0; u < FB_ROWS / 2; u++) {
            int c = half * (FB_ROWS / 2) + u, tk = k0 + c;
            s[u] = tq < T && tk <= tq ? S.s0[r * L.lds + c] * scale : -INFINITY;
            tmax = fmaxf(tmax, s[u]);
        }
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
        float mnew = fmaxf(m, tmax);
        float alpha = mnew == -INFINITY ? 1.0f : expf(m - mnew);
        float psum = 0.0f;
#pragma unroll
        for (int u = 0; u < FB_ROWS / 2; u++) {
            float p = s[u] == -INFINITY ? 0.0f : expf(s[u] - mnew);
            S.p0[r * L.ldp + half * (FB_ROWS / 2) + u] = cuda_to_bf16(p);
            psum += p;
        }
        psum += __shfl_xor_sync(0xffffffffu, psum, 1);
        l = l * alpha + psum;
        m = mnew;
        FOR_MY_HALF(c, L.hdp)
        S.acc0[r * L.ldo + c] *= alpha;
        __syncwarp();
        warp_acc_px(S.acc0, S.p0, Vs, L);
        __syncwarp();
    }
    if (tq < T) {   /* key 0 is visible to every row: l > 0 */
        write_my_row(out + ((size_t)b * T + tq) * qs + (size_t)h * hd, S.acc0, 1.0f / l, hd, L);
        if (half == 0)
            lse[((size_t)b * Hq + h) * T + tq] = m + logf(l);
    }
}

/* ---- backward -------------------------------------------------------------------- */

/* lse and D of the 64 rows from q0 of one (batch, head) into shared memory */
static __device__ void load_rows(float *lse_s, float *D_s, const float *lse_bh, const float *D_bh, int q0, int T)
{
    for (int i = threadIdx.x; i < FB_ROWS; i += blockDim.x) {
        lse_s[i] = q0 + i < T ? lse_bh[q0 + i] : 0.0f;
        D_s[i] = q0 + i < T ? D_bh[q0 + i] : 0.0f;
    }
}

static __global__ void __launch_bounds__(FB_THREADS)
    attn_dkdv_bf16_kernel(const float *q, const float *k, const float *v, const float *lse, const float *D,
                          const float *dout, float *dk, float *dv, int T, int Hq, int Hkv, int hd, float scale)
{
    extern __shared__ float sm[];
    const fb_layout L = fb_layout_for(hd, 4, 2);
    const fb_smem S = fb_views(sm, L, 4, 2);
    __nv_bfloat16 *Ks = S.tile[0], *Vs = S.tile[1], *Qs = S.tile[2], *dOs = S.tile[3];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.y / Hkv, hk = blockIdx.y % Hkv, group = Hq / Hkv;
    const int k0 = blockIdx.x * FB_ROWS;
    const size_t qs = (size_t)Hq * hd, ks = (size_t)Hkv * hd;
    const int r = lane / 2, tk = k0 + warp * 16 + r;

    load_tile_bf16(Ks, k + (size_t)b * T * ks + (size_t)hk * hd, ks, k0, T, hd, L);
    load_tile_bf16(Vs, v + (size_t)b * T * ks + (size_t)hk * hd, ks, k0, T, hd, L);
    zero_my_rows(S.acc0, L);
    zero_my_rows(S.acc1, L);
    for (int g = 0; g < group; g++) {
        const int h = hk * group + g;
        const size_t bh = (size_t)b * Hq + h;
        for (int q0 = k0; q0 < T; q0 += FB_ROWS) {   /* tiles at or below the diagonal */
            __syncthreads();
            load_tile_bf16(Qs, q + (size_t)b * T * qs + (size_t)h * hd, qs, q0, T, hd, L);
            load_tile_bf16(dOs, dout + (size_t)b * T * qs + (size_t)h * hd, qs, q0, T, hd, L);
            load_rows(S.lse, S.D, lse + bh * T, D + bh * T, q0, T);
            __syncthreads();
            warp_abt(S.s0, Ks + (size_t)warp * 16 * L.ldh, Qs, L);    /* S^T */
            warp_abt(S.s1, Vs + (size_t)warp * 16 * L.ldh, dOs, L);   /* dP^T */
            __syncwarp();
            FOR_MY_HALF(c, FB_ROWS) {
                int tq = q0 + c;
                float p = tq < T && tk <= tq ? expf(S.s0[r * L.lds + c] * scale - S.lse[c]) : 0.0f;
                S.p0[r * L.ldp + c] = cuda_to_bf16(p);
                S.p1[r * L.ldp + c] = cuda_to_bf16(p * (S.s1[r * L.lds + c] - S.D[c]) * scale);
            }
            __syncwarp();
            warp_acc_px(S.acc1, S.p0, dOs, L);   /* dV += P^T dO */
            warp_acc_px(S.acc0, S.p1, Qs, L);    /* dK += dS^T Q */
            __syncwarp();
        }
    }
    if (tk < T) {
        size_t row = ((size_t)b * T + tk) * ks + (size_t)hk * hd;
        write_my_row(dk + row, S.acc0, 1.0f, hd, L);
        write_my_row(dv + row, S.acc1, 1.0f, hd, L);
    }
}

static __global__ void __launch_bounds__(FB_THREADS)
    attn_dq_bf16_kernel(const float *q, const float *k, const float *v, const float *lse, const float *D,
                        const float *dout, float *dq, int T, int Hq, int Hkv, int hd, float scale)
{
    extern __shared__ float sm[];
    const fb_layout L = fb_layout_for(hd, 4, 1);
    const fb_smem S = fb_views(sm, L, 4, 1);
    __nv_bfloat16 *Qs = S.tile[0], *dOs = S.tile[1], *Ks = S.tile[2], *Vs = S.tile[3];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.y / Hq, h = blockIdx.y % Hq, hk = h / (Hq / Hkv);
    const int q0 = blockIdx.x * FB_ROWS;
    const size_t qs = (size_t)Hq * hd, ks = (size_t)Hkv * hd, bh = (size_t)b * Hq + h;
    const float *kb = k + (size_t)b * T * ks + (size_t)hk * hd;
    const float *vb = v + (size_t)b * T * ks + (size_t)hk * hd;
    const int r = lane / 2, row = warp * 16 + r, tq = q0 + row;

    load_tile_bf16(Qs, q + (size_t)b * T * qs + (size_t)h * hd, qs, q0, T, hd, L);
    load_tile_bf16(dOs, dout + (size_t)b * T * qs + (size_t)h * hd, qs, q0, T, hd, L);
    load_rows(S.lse, S.D, lse + bh * T, D + bh * T, q0, T);
    zero_my_rows(S.acc0, L);
    const int kend = min(T, q0 + FB_ROWS);
    for (int k0 = 0; k0 < kend; k0 += FB_ROWS) {
        __syncthreads();
        load_tile_bf16(Ks, kb, ks, k0, T, hd, L);
        load_tile_bf16(Vs, vb, ks, k0, T, hd, L);
        __syncthreads();
        warp_abt(S.s0, Qs + (size_t)warp * 16 * L.ldh, Ks, L);    /* S */
        warp_abt(S.s1, dOs + (size_t)warp * 16 * L.ldh, Vs, L);   /* dP */
        __syncwarp();
        FOR_MY_HALF(c, FB_ROWS) {
            int tk = k0 + c;
            float p = tq < T && tk <= tq ? expf(S.s0[r * L.lds + c] * scale - S.lse[row]) : 0.0f;
            S.p1[r * L.ldp + c] = cuda_to_bf16(p * (S.s1[r * L.lds + c] - S.D[row]) * scale);
        }
        __syncwarp();
        warp_acc_px(S.acc0, S.p1, Ks, L);   /* dQ += dS K */
        __syncwarp();
    }
    if (tq < T)
        write_my_row(dq + ((size_t)b * T + tq) * qs + (size_t)h * hd, S.acc0, 1.0f, hd, L);
}

/* ---- entry points ------------------------------------------------------------------ */

void cu_attention_fwd_bf16(const upc_kernels *K, const float *q, const float *k, const float *v, float *out,
                           float *lse, int B, int T, int Hq, int Hkv, int hd)
{
    const char *kernel = "attention_fwd";
    cuda_attention_check_shape(kernel, B, T, Hq, Hkv, hd);
    if (B == 0 || T == 0)
        return;
    const fb_layout L = fb_layout_for(hd, 3, 1);
    dim3 grid((unsigned)((T + FB_ROWS - 1) / FB_ROWS), (unsigned)(B * Hq));
    cuda_allow_smem(kernel, attn_fwd_bf16_kernel, L.bytes);
    attn_fwd_bf16_kernel<<<grid, FB_THREADS, L.bytes>>>(q, k, v, out, lse, T, Hq, Hkv, hd, 1.0f / sqrtf((float)hd));
    cuda_after_launch(K, kernel);
}

void cu_attention_bwd_bf16(const upc_kernels *K, const float *q, const float *k, const float *v, const float *out,
                           const float *lse, const float *dout, float *dq, float *dk, float *dv, int B, int T,
                           int Hq, int Hkv, int hd)
{
    const char *kernel = "attention_bwd";
    cuda_attention_check_shape(kernel, B, T, Hq, Hkv, hd);
    if (hd > FB_BWD_MAX_HD) {   /* its tiles would not fit in shared memory */
        cu_attention_bwd(K, q, k, v, out, lse, dout, dq, dk, dv, B, T, Hq, Hkv, hd);
        return;
    }
    if (B == 0 || T == 0)
        return;
    const float scale = 1.0f / sqrtf((float)hd);
    const float *D = cuda_attention_delta(K, kernel, out, dout, B, T, Hq, hd);
    unsigned tiles = (unsigned)((T + FB_ROWS - 1) / FB_ROWS);
    const fb_layout Lkv = fb_layout_for(hd, 4, 2), Lq = fb_layout_for(hd, 4, 1);
    cuda_allow_smem(kernel, attn_dkdv_bf16_kernel, Lkv.bytes);
    attn_dkdv_bf16_kernel<<<dim3(tiles, (unsigned)(B * Hkv)), FB_THREADS, Lkv.bytes>>>(q, k, v, lse, D, dout, dk, dv,
                                                                                       T, Hq, Hkv, hd, scale);
    cuda_after_launch(K, kernel);
    cuda_allow_smem(kernel, attn_dq_bf16_kernel, Lq.bytes);
    attn_dq_bf16_kernel<<<dim3(tiles, (unsigned)(B * Hq)), FB_THREADS, Lq.bytes>>>(q, k, v, lse, D, dout, dq, T, Hq,
                                                                                   Hkv, hd, scale);
    cuda_after_launch(K, kernel);
}
