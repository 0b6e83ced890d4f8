/* cuda_kvcache.cu: the paged KV cache on the GPU: writing a step's keys and
 * values into their slots, and decode attention of each query row over its
 * sequence's cached positions. paged_attention runs a block per (row, query
 * head): each of its 4 warps walks every 4th position, the 32 lanes of a
 * warp reading one key / value row together (coalesced), keeping an online
 * softmax (running max, sum, output) per warp; the warps' states are merged
 * in warp order at the end, so the result does not depend on timing. */
#include "cuda_internal.cuh"

#include <math.h>

static __global__ void kv_write_kernel(const float *k, const float *v, const int32_t *slots, int rows,
                                       size_t w, float *kcache, float *vcache, int *err)
{
    size_t n = (size_t)rows * w;
    GRID_STRIDE(i, n) {
        size_t r = i / w, e = i % w;
        int32_t slot = slots[r];
        if (slot < 0) {
            cuda_flag(err, CUDA_ERR_KV_SLOT);
            continue;
        }
        kcache[(size_t)slot * w + e] = k[i];
        vcache[(size_t)slot * w + e] = v[i];
    }
}

void cu_kv_cache_write(const upc_kernels *K, const float *k, const float *v, const int32_t *slots,
                       int rows, int Hkv, int hd, float *kcache, float *vcache)
{
    CUDA_REQUIRE(rows >= 0 && Hkv > 0 && hd > 0, "kv_cache_write", "bad size");
    size_t w = (size_t)Hkv * hd, n = (size_t)rows * w;
    if (n == 0)
        return;
    kv_write_kernel<<<cuda_blocks(n), CUDA_THREADS>>>(k, v, slots, rows, w, kcache, vcache, CTX(K)->err);
    cuda_after_launch(K, "kv_cache_write");
}

enum { PA_WARPS = 4, PA_MAXD = 256, PA_PER_LANE = PA_MAXD / 32 };

static __global__ void __launch_bounds__(PA_WARPS * 32)
paged_attn_kernel(const float *q, const float *kcache, const float *vcache, const int32_t *block_table,
                  int max_blocks, int block_size, const int32_t *row_seq, const int32_t *row_pos, int Hq,
                  int Hkv, int hd, float scale, float *out, int *err)
{
    __shared__ float qsh[PA_MAXD];
    __shared__ float wm[PA_WARPS], wl[PA_WARPS];
    __shared__ float wacc[PA_WARPS][PA_MAXD];
    const int r = blockIdx.x, h = blockIdx.y;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float *o = out + ((size_t)r * Hq + h) * hd;
    const int last = row_pos[r];
    if (last < 0 || last / block_size >= max_blocks) {   /* uniform over the block */
        if (threadIdx.x == 0)
            cuda_flag(err, CUDA_ERR_PAGED_POS);
        for (int c = threadIdx.x; c < hd; c += blockDim.x)
            o[c] = 0.0f;
        return;
    }
    const float *qr = q + ((size_t)r * Hq + h) * hd;
    for (int c = threadIdx.x; c < hd; c += blockDim.x)
        qsh[c] = qr[c];
    __syncthreads();
    const int32_t *table = block_table + (size_t)row_seq[r] * max_blocks;
    const size_t w = (size_t)Hkv * hd, head = (size_t)(h / (Hq / Hkv)) * hd;
    float m = -INFINITY, l = 0.0f, acc[PA_PER_LANE];
#pragma unroll
    for (int u = 0; u < PA_PER_LANE; u++)
        acc[u] = 0.0f;
    for (int p = warp; p <= last; p += PA_WARPS) {
        size_t slot = (size_t)table[p / block_size] * block_size + (size_t)(p % block_size);
        const float *kp = kcache + slot * w + head, *vp = vcache + slot * w + head;
        float part = 0.0f;
#pragma unroll
        for (int u = 0; u < PA_PER_LANE; u++) {
            int c = lane + 32 * u;
            if (c < hd)
                part += qsh[c] * kp[c];
        }
        for (int off = 16; off > 0; off >>= 1)
            part += __shfl_down_sync(0xffffffffu, part, off);
        float s = __shfl_sync(0xffffffffu, part, 0) * scale;   /* lane 0's sum, same in every lane */
        float f, e;
        if (s > m) {          /* upc_softmax_step, with the factor the output needs */
            f = expf(m - s);
            e = 1.0f;
            m = s;
        } else {
            f = 1.0f;
            e = expf(s - m);
        }
        l = l * f + e;
#pragma unroll
        for (int u = 0; u < PA_PER_LANE; u++) {
            int c = lane + 32 * u;
            if (c < hd)
                acc[u] = acc[u] * f + e * vp[c];
        }
    }
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
#pragma unroll
    for (int u = 0; u < PA_PER_LANE; u++) {
        int c = lane + 32 * u;
        if (c < hd)
            wacc[warp][c] = acc[u];
    }
    __syncthreads();
    float M = -INFINITY;
    for (int i = 0; i < PA_WARPS; i++)
        M = fmaxf(M, wm[i]);
    float L = 0.0f;
    for (int i = 0; i < PA_WARPS; i++)
        if (wm[i] != -INFINITY)
            L += wl[i] * expf(wm[i] - M);
    for (int c = threadIdx.x; c < hd; c += blockDim.x) {
        float a = 0.0f;
        for (int i = 0; i < PA_WARPS; i++)
            if (wm[i] != -INFINITY)
                a += wacc[i][c] * expf(wm[i] - M);
        o[c] = a / L;
    }
}

void cu_paged_attention(const upc_kernels *K, const float *q, const float *kcache,
                        const float *vcache, const int32_t *block_table, int max_blocks,
                        int block_size, const int32_t *row_seq, const int32_t *row_pos, int rows,
                        int Hq, int Hkv, int hd, float *out)
{
    const char *kernel = "paged_attention";
    CUDA_REQUIRE(rows >= 0 && Hq > 0 && Hkv > 0 && hd > 0 && Hq % Hkv == 0 && block_size > 0, kernel, "bad size");
    CUDA_REQUIRE(hd <= PA_MAXD, kernel, "head dim above 256 is not supported by the CUDA kernels");
    CUDA_REQUIRE(Hq <= 65535, kernel, "more than 65535 query heads");
    if (rows == 0)
        return;
    const float scale = 1.0f / sqrtf((float)hd);
    paged_attn_kernel<<<dim3((unsigned)rows, (unsigned)Hq), PA_WARPS * 32>>>(
        q, kcache, vcache, block_table, max_blocks, block_size, row_seq, row_pos, Hq, Hkv, hd, scale, out,
        CTX(K)->err);
    cuda_after_launch(K, kernel);
}
