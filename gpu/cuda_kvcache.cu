/* cuda_kvcache.cu: the paged KV cache on the GPU: writing a step's keys and
 * values into their slots, and decode attention of each query row over its
 * sequence's cached positions. paged_attention splits each sequence's
 * context into chunks (flash-decoding: a decode step has few rows, and one
 * block walking a whole context left the device idle; on an H200 that was
 * 208 us a layer at 512 positions) and runs a block per (row, query head,
 * chunk): each of its 4 warps walks every 4th position, the 32 lanes of a
 * warp reading one key / value row together (coalesced), keeping an online
 * softmax (running max, sum, output) per warp; the warps' states are merged
 * in warp order, then a second kernel merges the chunks' in chunk order, so
 * the result does not depend on timing. */
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

enum { PA_WARPS = 4, PA_MAXD = 256, PA_PER_LANE = PA_MAXD / 32, PA_MAX_SPLITS = 32, PA_MIN_CHUNK = 32 };

/* The context a sequence may have (max_blocks * block_size) in `splits`
 * chunks of `chunk` positions: at least PA_MIN_CHUNK each, at most
 * PA_MAX_SPLITS of them. */
static void pa_split(int max_blocks, int block_size, int *chunk, int *splits)
{
    long long cap = (long long)max_blocks * block_size;
    long long c = (cap + PA_MAX_SPLITS - 1) / PA_MAX_SPLITS;
    *chunk = (int)(c < (long long)PA_MIN_CHUNK ? (long long)PA_MIN_CHUNK : c);
    *splits = (int)((cap + *chunk - 1) / *chunk);
}

/* Whether row r's position is one its block table can hold; else the error
 * word is set (by split 0's first thread) */
static __device__ bool pa_row_ok(int last, int max_blocks, int block_size, int *err)
{
    if (last >= 0 && last / block_size < max_blocks)
        return true;
    if (threadIdx.x == 0 && blockIdx.z == 0)
        cuda_flag(err, CUDA_ERR_PAGED_POS);
    return false;
}

/* One (row, query head, chunk of positions): the online softmax state
 * (max, sum, unnormalised output) over the chunk's visible positions, into
 * part_m, part_l [rows][Hq][splits] and part_acc [..][hd]. */
static __global__ void __launch_bounds__(PA_WARPS * 32)
paged_attn_split_kernel(const float *q, const float *kcache, const float *vcache, const int32_t *block_table,
                        int max_blocks, int block_size, const int32_t *row_seq, const int32_t *row_pos, int Hq,
                        int Hkv, int hd, float scale, int chunk, float *part_m, float *part_l, float *part_acc,
                        int *err)
{
    __shared__ float qsh[PA_MAXD];
    __shared__ float wm[PA_WARPS], wl[PA_WARPS];
    __shared__ float wacc[PA_WARPS][PA_MAXD];
    const int r = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const size_t at = ((size_t)r * Hq + h) * gridDim.z + split;
    const int last = row_pos[r], p0 = split * chunk;
    if (!pa_row_ok(last, max_blocks, block_size, err) || p0 > last) {   /* uniform over the block */
        if (threadIdx.x == 0)
            part_m[at] = -INFINITY, part_l[at] = 0.0f;
        return;
    }
    const int p1 = min(last + 1, p0 + chunk);
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
    for (int p = p0 + warp; p < p1; p += PA_WARPS) {
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
    /* the warps' states merged in warp order */
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
        part_acc[at * hd + c] = a;
    }
    if (threadIdx.x == 0)
        part_m[at] = M, part_l[at] = L;
}

/* out for one (row, query head): the chunks' states merged in chunk order */
static __global__ void paged_attn_merge_kernel(const float *part_m, const float *part_l, const float *part_acc,
                                               int Hq, int hd, int splits, float *out)
{
    const int r = blockIdx.x, h = blockIdx.y;
    const size_t at = ((size_t)r * Hq + h) * splits;
    float M = -INFINITY;
    for (int i = 0; i < splits; i++)
        M = fmaxf(M, part_m[at + i]);
    float L = 0.0f;
    for (int i = 0; i < splits; i++)
        if (part_m[at + i] != -INFINITY)
            L += part_l[at + i] * expf(part_m[at + i] - M);
    float *o = out + ((size_t)r * Hq + h) * hd;
    for (int c = threadIdx.x; c < hd; c += blockDim.x) {
        float a = 0.0f;
        for (int i = 0; i < splits; i++)
            if (part_m[at + i] != -INFINITY)
                a += part_acc[(at + i) * hd + c] * expf(part_m[at + i] - M);
        o[c] = L > 0.0f ? a / L : 0.0f;   /* 0 for a row whose position was refused */
    }
}

void cu_paged_attention(const upc_kernels *K, const float *q, const float *kcache,
                        const float *vcache, const int32_t *block_table, int max_blocks,
                        int block_size, const int32_t *row_seq, const int32_t *row_pos, int rows,
                        int Hq, int Hkv, int hd, float *out)
{
    const char *kernel = "paged_attention";
    CUDA_REQUIRE(rows >= 0 && Hq > 0 && Hkv > 0 && hd > 0 && Hq % Hkv == 0 && block_size > 0 && max_blocks > 0,
                 kernel, "bad size");
    CUDA_REQUIRE(hd <= PA_MAXD, kernel, "head dim above 256 is not supported by the CUDA kernels");
    CUDA_REQUIRE(Hq <= 65535, kernel, "more than 65535 query heads");
    if (rows == 0)
        return;
    const float scale = 1.0f / sqrtf((float)hd);
    int chunk, splits;
    pa_split(max_blocks, block_size, &chunk, &splits);
    size_t states = (size_t)rows * Hq * splits;
    float *part = (float *)cuda_scratch(K, SCRATCH_KERNEL, states * (2 + (size_t)hd) * sizeof(float), kernel);
    float *part_m = part, *part_l = part + states, *part_acc = part + 2 * states;
    paged_attn_split_kernel<<<dim3((unsigned)rows, (unsigned)Hq, (unsigned)splits), PA_WARPS * 32>>>(
        q, kcache, vcache, block_table, max_blocks, block_size, row_seq, row_pos, Hq, Hkv, hd, scale, chunk, part_m,
        part_l, part_acc, CTX(K)->err);
    cuda_after_launch(K, kernel);
    paged_attn_merge_kernel<<<dim3((unsigned)rows, (unsigned)Hq), 64>>>(part_m, part_l, part_acc, Hq, hd, splits, out);
    cuda_after_launch(K, kernel);
}
