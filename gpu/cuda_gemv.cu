/* cuda_gemv.cu: GEMMs of decode's shape, C[m][n] = alpha X[m][k] W^T + beta C
 * for a few rows (m <= GEMV_MAX_ROWS tokens) against a weight matrix W[n][k]
 * (row-major, leading dimension ldw): the weights are read once, in 16-byte
 * loads, so the product runs at memory bandwidth; cuBLAS's tensor-core
 * tiles waste most of their work at m = 1.
 *
 * One warp per output column j: each lane walks row j of W in 16-byte
 * chunks and multiplies them with the same columns of every row of X (a
 * few KB, served from cache), accumulating in fp32 registers; a fixed
 * shuffle tree sums the lanes, so the result does not depend on timing.
 * W is fp32 (the fp32 table) or, on the bf16 table, the registered bf16
 * copy of the weights, X then rounded as upc_round_bf16 rounds: the same
 * products as cuBLAS's bf16 path and the CPU reference, summed in another
 * order. UPC_GEMV=cublas leaves every GEMM to cuBLAS (bench/gpu compares). */
#include "cuda_internal.cuh"

#include <stdlib.h>
#include <string.h>

enum { GEMV_WARPS = 4, GEMV_THREADS = GEMV_WARPS * 32 };

/* The floats of one 16-byte chunk of W: 4 fp32 or 8 bf16 (a bf16 is the
 * high half of its float; the lower-addressed one is the low half word). */
static __device__ __forceinline__ void unpack16(uint4 raw, float *out, float)
{
    out[0] = __uint_as_float(raw.x), out[1] = __uint_as_float(raw.y);
    out[2] = __uint_as_float(raw.z), out[3] = __uint_as_float(raw.w);
}

static __device__ __forceinline__ void unpack16(uint4 raw, float *out, __nv_bfloat16)
{
    out[0] = __uint_as_float(raw.x << 16), out[1] = __uint_as_float(raw.x & 0xffff0000u);
    out[2] = __uint_as_float(raw.y << 16), out[3] = __uint_as_float(raw.y & 0xffff0000u);
    out[4] = __uint_as_float(raw.z << 16), out[5] = __uint_as_float(raw.z & 0xffff0000u);
    out[6] = __uint_as_float(raw.w << 16), out[7] = __uint_as_float(raw.w & 0xffff0000u);
}

static __device__ __forceinline__ float weight_float(float w)
{
    return w;
}

static __device__ __forceinline__ float weight_float(__nv_bfloat16 w)
{
    return __bfloat162float(w);
}

/* An element of X as the product sees it: rounded to bf16 against bf16 weights. */
template <typename W>
static __device__ __forceinline__ float x_value(float x)
{
    return sizeof(W) == 2 ? upc_round_bf16(x) : x;
}

/* acc[r] += the V columns from c of row r of X times one chunk of W */
template <typename W, int M>
static __device__ __forceinline__ void dot_chunk(uint4 raw, const float *X, int ldx, int c, float *acc)
{
    constexpr int V = 16 / sizeof(W);
    float wf[V];
    unpack16(raw, wf, W());
    for (int r = 0; r < M; r++) {
        const uint4 *xr = (const uint4 *)(X + (size_t)r * ldx + c);
        for (int q = 0; q < V / 4; q++) {
            float xf[4];
            unpack16(__ldg(xr + q), xf, 0.0f);
            for (int e = 0; e < 4; e++)
                acc[r] += wf[4 * q + e] * x_value<W>(xf[e]);
        }
    }
}

/* `vec`: W's rows and X's rows start 16-byte aligned, so the first k - k % V
 * columns go in 16-byte chunks (V elements), two loads in flight per lane;
 * the rest one element per lane. */
template <typename W, int M>
static __global__ void gemv_kernel(int n, int k, float alpha, const float *X, int ldx, const W *Wm, int ldw,
                                   float beta, float *C, int ldc, int vec)
{
    constexpr int V = 16 / sizeof(W);
    int lane = threadIdx.x % 32, j = blockIdx.x * GEMV_WARPS + threadIdx.x / 32;
    if (j >= n)   /* a whole warp leaves together; no barrier below */
        return;
    const W *w = Wm + (size_t)j * ldw;
    float acc[M];
    for (int r = 0; r < M; r++)
        acc[r] = 0.0f;
    int kv = vec ? k - k % V : 0;
    for (int c = lane * V; c < kv; c += 64 * V) {
        int c2 = c + 32 * V;
        uint4 first = __ldg((const uint4 *)(w + c)), second = {0, 0, 0, 0};
        if (c2 < kv)
            second = __ldg((const uint4 *)(w + c2));
        dot_chunk<W, M>(first, X, ldx, c, acc);
        if (c2 < kv)
            dot_chunk<W, M>(second, X, ldx, c2, acc);
    }
    for (int c = kv + lane; c < k; c += 32) {
        float wc = weight_float(w[c]);
        for (int r = 0; r < M; r++)
            acc[r] += wc * x_value<W>(X[(size_t)r * ldx + c]);
    }
    for (int r = 0; r < M; r++) {
        float s = acc[r];
        for (int off = 16; off > 0; off >>= 1)
            s += __shfl_xor_sync(0xffffffffu, s, off);
        if (lane == 0) {
            float *out = C + (size_t)r * ldc + j;
            *out = alpha * s + (beta == 0.0f ? 0.0f : beta * *out);
        }
    }
}

template <typename W, int M>
static void launch(int n, int k, float alpha, const float *X, int ldx, const W *Wm, int ldw, float beta, float *C,
                   int ldc, int vec)
{
    unsigned blocks = (unsigned)((n + GEMV_WARPS - 1) / GEMV_WARPS);
    gemv_kernel<W, M><<<blocks, GEMV_THREADS>>>(n, k, alpha, X, ldx, Wm, ldw, beta, C, ldc, vec);
}

template <typename W>
static void launch_rows(int m, int n, int k, float alpha, const float *X, int ldx, const W *Wm, int ldw,
                        float beta, float *C, int ldc)
{
    /* 16-byte chunks need every row of W and X to start on a 16-byte boundary */
    int vec = (uintptr_t)Wm % 16 == 0 && ((size_t)ldw * sizeof(W)) % 16 == 0 && (uintptr_t)X % 16 == 0 &&
              ldx % 4 == 0;
    switch (m) {
    case 1: launch<W, 1>(n, k, alpha, X, ldx, Wm, ldw, beta, C, ldc, vec); break;
    case 2: launch<W, 2>(n, k, alpha, X, ldx, Wm, ldw, beta, C, ldc, vec); break;
    case 3: launch<W, 3>(n, k, alpha, X, ldx, Wm, ldw, beta, C, ldc, vec); break;
    case 4: launch<W, 4>(n, k, alpha, X, ldx, Wm, ldw, beta, C, ldc, vec); break;
    case 5: launch<W, 5>(n, k, alpha, X, ldx, Wm, ldw, beta, C, ldc, vec); break;
    case 6: launch<W, 6>(n, k, alpha, X, ldx, Wm, ldw, beta, C, ldc, vec); break;
    case 7: launch<W, 7>(n, k, alpha, X, ldx, Wm, ldw, beta, C, ldc, vec); break;
    default: launch<W, 8>(n, k, alpha, X, ldx, Wm, ldw, beta, C, ldc, vec); break;
    }
}

static bool gemv_enabled(void)
{
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("UPC_GEMV");
        on = !(v && strcmp(v, "cublas") == 0);
    }
    return on;
}

bool cuda_gemv(const upc_kernels *K, const char *kernel, bool bf16, int m, int n, int k, float alpha,
               const float *X, int ldx, const float *W, int ldw, float beta, float *C, int ldc)
{
    if (m < 1 || m > GEMV_MAX_ROWS || n < 1 || k < 1 || !gemv_enabled())
        return false;
    if (!bf16) {
        launch_rows<float>(m, n, k, alpha, X, ldx, W, ldw, beta, C, ldc);
    } else {
        /* activations against activations (no registered copy) stay on cuBLAS */
        const void *w16 = cuda_registered_bf16(K, W, (size_t)(n - 1) * ldw + k);
        if (!w16)
            return false;
        launch_rows<__nv_bfloat16>(m, n, k, alpha, X, ldx, (const __nv_bfloat16 *)w16, ldw, beta, C, ldc);
    }
    cuda_after_launch(K, kernel);
    return true;
}
