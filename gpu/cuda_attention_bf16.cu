/* cuda_attention_bf16.cu: causal GQA attention forward on tensor cores, the
 * bf16 table's attention_fwd (the model uses it with
 * UPC_BF16_ATTENTION=flash, model.h; its backward stays on the GEMMs, which
 * recompute). FlashAttention-2's forward with WMMA: a block of 4 warps
 * takes 64 query rows of one (batch, head), a warp 16 of them, and for
 * each 64-key tile up to the diagonal
 *
 *   S = Q K^T            bf16 operands (rounded as upc_round_bf16), fp32 sums
 *   m, l                 the online softmax of each row, in fp32
 *   O = O alpha + P V    P = exp(S scale - m) rounded to bf16, V likewise
 *
 * then out = O / l and lse = m + log l, as the fp32 kernel saves it. The
 * scores never reach global memory. O lives in shared memory: a WMMA
 * accumulator's elements cannot be addressed by row for the rescale, so
 * each step loads O into the accumulator, adds P V and stores it back.
 * Q, K and V are rounded as the GEMM path rounds them; P is rounded before
 * normalisation instead of after, a difference of bf16's resolution. */
#include "cuda_internal.cuh"

#include <math.h>
#include <mma.h>

using namespace nvcuda;

enum { FB_Q = 64, FB_K = 64, FB_WARPS = 4, FB_THREADS = FB_WARPS * 32 };

/* Shared-memory layout for head dim hd: bf16 Q, K, V tiles; per warp fp32
 * scores, bf16 P and fp32 O. Leading dimensions are padded against bank
 * conflicts and keep every WMMA pointer 32-byte aligned. */
struct fb_layout {
    int hdp, ldh, lds, ldp, ldo;
    size_t k, v, s, p, o, bytes;   /* byte offsets; Q at 0 */
};

static __host__ __device__ fb_layout fb_layout_for(int hd)
{
    fb_layout L;
    L.hdp = (hd + 15) / 16 * 16;
    L.ldh = L.hdp + 8;
    L.lds = FB_K + 4;
    L.ldp = FB_K + 8;
    L.ldo = L.hdp + 4;
    L.k = (size_t)FB_Q * L.ldh * 2;
    L.v = L.k + (size_t)FB_K * L.ldh * 2;
    L.s = L.v + (size_t)FB_K * L.ldh * 2;
    L.p = L.s + (size_t)FB_WARPS * 16 * L.lds * 4;
    L.o = L.p + (size_t)FB_WARPS * 16 * L.ldp * 2;
    L.bytes = L.o + (size_t)FB_WARPS * 16 * L.ldo * 4;
    return L;
}

/* rows [t0, t0 + n) of a [T][stride] head slice, rounded to bf16, into sh
 * [n][ld]; zeros past T and in the columns hd..hdp */
static __device__ void load_tile_bf16(__nv_bfloat16 *sh, const float *src, size_t stride, int t0, int n, int T,
                                      int hd, int hdp, int ld)
{
    for (int e = threadIdx.x; e < n * hdp; e += blockDim.x) {
        int r = e / hdp, c = e % hdp;
        sh[r * ld + c] = cuda_to_bf16(t0 + r < T && c < hd ? src[(size_t)(t0 + r) * stride + c] : 0.0f);
    }
}

static __global__ void __launch_bounds__(FB_THREADS)
    attn_fwd_bf16_kernel(const float *q, const float *k, const float *v, float *out, float *lse, int T, int Hq,
                         int Hkv, int hd, float scale)
{
    extern __shared__ float sm[];
    const fb_layout L = fb_layout_for(hd);
    char *base = (char *)sm;
    __nv_bfloat16 *Qs = (__nv_bfloat16 *)base, *Ks = (__nv_bfloat16 *)(base + L.k), *Vs = (__nv_bfloat16 *)(base + L.v);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float *Ss = (float *)(base + L.s) + (size_t)warp * 16 * L.lds;
    __nv_bfloat16 *Ps = (__nv_bfloat16 *)(base + L.p) + (size_t)warp * 16 * L.ldp;
    float *Os = (float *)(base + L.o) + (size_t)warp * 16 * L.ldo;

    const int b = blockIdx.y / Hq, h = blockIdx.y % Hq, hk = h / (Hq / Hkv);
    const int q0 = blockIdx.x * FB_Q;
    const size_t qs = (size_t)Hq * hd, ks = (size_t)Hkv * hd;
    const float *kb = k + (size_t)b * T * ks + (size_t)hk * hd;
    const float *vb = v + (size_t)b * T * ks + (size_t)hk * hd;
    /* lanes 2r and 2r+1 own row r of the warp's 16: half of its scores and of O */
    const int r = lane / 2, half = lane % 2, tq = q0 + warp * 16 + r;
    const int ohalf = L.hdp / 2;

    load_tile_bf16(Qs, q + (size_t)b * T * qs + (size_t)h * hd, qs, q0, FB_Q, T, hd, L.hdp, L.ldh);
    for (int c = half * ohalf; c < (half + 1) * ohalf; c++)
        Os[r * L.ldo + c] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    const int kend = min(T, q0 + FB_Q);
    for (int k0 = 0; k0 < kend; k0 += FB_K) {
        __syncthreads();   /* the previous K and V tiles are no longer read */
        load_tile_bf16(Ks, kb, ks, k0, FB_K, T, hd, L.hdp, L.ldh);
        load_tile_bf16(Vs, vb, ks, k0, FB_K, T, hd, L.hdp, L.ldh);
        __syncthreads();

        /* S = Q K^T for the warp's 16 rows and the tile's 64 keys */
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> sacc[FB_K / 16];
        for (int j = 0; j < FB_K / 16; j++)
            wmma::fill_fragment(sacc[j], 0.0f);
        for (int kk = 0; kk < L.hdp; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fq;
            wmma::load_matrix_sync(fq, Qs + (size_t)warp * 16 * L.ldh + kk, L.ldh);
            for (int j = 0; j < FB_K / 16; j++) {
                /* K^T as a column-major 16x16 block: element (c, n) at Ks[n][c] */
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fk;
                wmma::load_matrix_sync(fk, Ks + (size_t)j * 16 * L.ldh + kk, L.ldh);
                wmma::mma_sync(sacc[j], fq, fk, sacc[j]);
            }
        }
        for (int j = 0; j < FB_K / 16; j++)
            wmma::store_matrix_sync(Ss + j * 16, sacc[j], L.lds, wmma::mem_row_major);
        __syncwarp();

        /* the online softmax of row r over this tile: 32 scores per lane */
        float s[FB_K / 2], tmax = -INFINITY;
#pragma unroll
        for (int u = 0; u < FB_K / 2; u++) {
            int tk = k0 + half * (FB_K / 2) + u;
            s[u] = tq < T && tk <= tq ? Ss[r * L.lds + half * (FB_K / 2) + u] * scale : -INFINITY;
            tmax = fmaxf(tmax, s[u]);
        }
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
        float mnew = fmaxf(m, tmax);
        float alpha = mnew == -INFINITY ? 1.0f : expf(m - mnew);
        float psum = 0.0f;
#pragma unroll
        for (int u = 0; u < FB_K / 2; u++) {
            float p = s[u] == -INFINITY ? 0.0f : expf(s[u] - mnew);
            Ps[r * L.ldp + half * (FB_K / 2) + u] = cuda_to_bf16(p);
            psum += p;
        }
        psum += __shfl_xor_sync(0xffffffffu, psum, 1);
        l = l * alpha + psum;
        m = mnew;
        for (int c = half * ohalf; c < (half + 1) * ohalf; c++)
            Os[r * L.ldo + c] *= alpha;
        __syncwarp();

        /* O += P V, a 16-column block of O at a time */
        for (int jn = 0; jn < L.hdp; jn += 16) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> oacc;
            wmma::load_matrix_sync(oacc, Os + jn, L.ldo, wmma::mem_row_major);
            for (int kk = 0; kk < FB_K; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fp;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fv;
                wmma::load_matrix_sync(fp, Ps + kk, L.ldp);
                wmma::load_matrix_sync(fv, Vs + (size_t)kk * L.ldh + jn, L.ldh);
                wmma::mma_sync(oacc, fp, fv, oacc);
            }
            wmma::store_matrix_sync(Os + jn, oacc, L.ldo, wmma::mem_row_major);
        }
        __syncwarp();
    }
    if (tq < T) {   /* key 0 is visible to every row: l > 0 */
        float inv = 1.0f / l;
        float *o = out + ((size_t)b * T + tq) * qs + (size_t)h * hd;
        for (int c = half * ohalf; c < (half + 1) * ohalf && c < hd; c++)
            o[c] = Os[r * L.ldo + c] * inv;
        if (half == 0)
            lse[((size_t)b * Hq + h) * T + tq] = m + logf(l);
    }
}

void cu_attention_fwd_bf16(const upc_kernels *K, const float *q, const float *k, const float *v, float *out,
                           float *lse, int B, int T, int Hq, int Hkv, int hd)
{
    const char *kernel = "attention_fwd";
    cuda_attention_check_shape(kernel, B, T, Hq, Hkv, hd);
    if (B == 0 || T == 0)
        return;
    const fb_layout L = fb_layout_for(hd);
    dim3 grid((unsigned)((T + FB_Q - 1) / FB_Q), (unsigned)(B * Hq));
    cuda_allow_smem(kernel, attn_fwd_bf16_kernel, L.bytes);
    attn_fwd_bf16_kernel<<<grid, FB_THREADS, L.bytes>>>(q, k, v, out, lse, T, Hq, Hkv, hd, 1.0f / sqrtf((float)hd));
    cuda_after_launch(K, kernel);
}
