/* mma.h (emulation): WMMA m16n16k16 with bf16 (or fp32) operands and fp32
 * accumulators. Every lane's fragment holds the whole
 * 16x16 tile; the collective calls meet at a warp barrier, so a divergent
 * call deadlocks (reported) as it is undefined on the device. mma_sync adds
 * the products of each (i, j) in k order onto C, in fp32. Stores are spread
 * over the lanes (lane l writes elements l, l + 32, ...), as on the device
 * the tile is written by the whole warp (no barrier after: reading another
 * lane's elements needs the kernel's own __syncwarp or __syncthreads). */
#ifndef UPCYC_EMU_MMA_H
#define UPCYC_EMU_MMA_H

#include "cuda_bf16.h"
#include "cuda_runtime.h"

/* emu_runtime.cpp: the product of the lane's previous lanes in its warp, if
 * they multiplied the same fragments (a pure function, memoized per warp:
 * the 32 lanes of a convergent warp hold equal fragments), else NULL and
 * where to keep this one. */
const float *emu_wmma_memo(const float *a, const float *b, const float *c, float **keep);

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

static inline float emu_elem_to_float(float x) { return x; }
static inline float emu_elem_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulation has m16n16k16 only");
    static constexpr int rows = 16, cols = 16;
    enum { num_elements = 256 };
    float x[256];   /* [row][col] of the tile, every lane the whole of it */
};

template <typename Use, int M, int N, int K, typename T, typename L>
static inline void fill_fragment(fragment<Use, M, N, K, T, L> &f, float v)
{
    for (int i = 0; i < 256; i++)
        f.x[i] = v;
}

template <typename Use, int M, int N, int K, typename T, typename L, typename S>
static inline void emu_load(fragment<Use, M, N, K, T, L> &f, const S *p, unsigned ldm, bool col_major)
{
    emu_sync_warp();
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            f.x[r * 16 + c] = emu_elem_to_float(col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c]);
}

template <typename M_, int M, int N, int K, typename T, typename S>
static inline void load_matrix_sync(fragment<M_, M, N, K, T, row_major> &f, const S *p, unsigned ldm)
{
    emu_load(f, p, ldm, false);
}
template <typename M_, int M, int N, int K, typename T, typename S>
static inline void load_matrix_sync(fragment<M_, M, N, K, T, col_major> &f, const S *p, unsigned ldm)
{
    emu_load(f, p, ldm, true);
}
template <int M, int N, int K, typename T>
static inline void load_matrix_sync(fragment<accumulator, M, N, K, T, void> &f, const T *p, unsigned ldm,
                                    layout_t layout)
{
    emu_load(f, p, ldm, layout == mem_col_major);
}

template <int M, int N, int K, typename T>
static inline void store_matrix_sync(T *p, const fragment<accumulator, M, N, K, T, void> &f, unsigned ldm,
                                     layout_t layout)
{
    emu_sync_warp();
    unsigned lane = (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32;
    for (unsigned e = lane; e < 256; e += 32) {
        unsigned r = e / 16, c = e % 16;
        p[layout == mem_col_major ? (size_t)c * ldm + r : (size_t)r * ldm + c] = f.x[e];
    }
}


template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC>
static inline void mma_sync(fragment<accumulator, M, N, K, TC, void> &d, const fragment<matrix_a, M, N, K, TA, LA> &a,
                            const fragment<matrix_b, M, N, K, TB, LB> &b,
                            const fragment<accumulator, M, N, K, TC, void> &c)
{
    float *keep;
    const float *memo = emu_wmma_memo(a.x, b.x, c.x, &keep);
    if (memo) {
        memcpy(d.x, memo, sizeof d.x);
        return;
    }
    /* each element is c + a0 b0 + a1 b1 + ... in k order; the loop over j
     * innermost so that it vectorizes */
    float out[256];
    memcpy(out, c.x, sizeof out);
    for (int i = 0; i < 16; i++)
        for (int k = 0; k < 16; k++) {
            const float aik = a.x[i * 16 + k];
            for (int j = 0; j < 16; j++)
                out[i * 16 + j] += aik * b.x[k * 16 + j];
        }
    memcpy(keep, out, sizeof out);
    memcpy(d.x, out, sizeof out);
}

}   // namespace wmma
}   // namespace nvcuda

#endif
