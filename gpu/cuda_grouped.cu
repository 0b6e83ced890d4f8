/* cuda_grouped.cu: the bf16 table's expert-grouped GEMMs as one kernel
 * launch each that reads the group offsets on the device, so a MoE layer
 * has no host round trip (cuda_gemm.cu's cuBLAS version copies the offsets
 * to the host on every call and runs one GEMM per expert; UPC_GROUPED=cublas
 * selects it for the bf16 table too, for comparison).
 *
 * Tensor cores through WMMA (m16n16k16, bf16 operands, fp32 accumulators):
 * a block of 4 warps computes a 64 x 64 tile of C, each warp 32 x 32 (2 x 2
 * fragments), over BK = 32 slices of the inner dimension staged in shared
 * memory. Operands are read as fp32 and rounded to bf16 on the way into
 * shared memory with upc_round_bf16 (expert weights registered with
 * bf16_weights are read from their bf16 copy instead), so the products are
 * those of the CPU's bf16 table (kernels_cpu_bf16) and only the order of the
 * fp32 sums differs.
 *
 *   fwd  Y[r][n]   = X[r][k] W_g^T      rows r of group g; tiles of 64 rows
 *   dx   dX[r][k]  = dY[r][n] W_g       never straddle two groups
 *   dw   dW_g[n][k] (+)= dY_g^T X_g     a tile per (g, 64 x 64 of [n][k]),
 *                                       summing over the group's rows
 *
 * fwd and dx do not know how many row tiles there are (the offsets are on
 * the device): a fixed grid of blocks walks the tiles, each block counting
 * them from the offsets. */
#include "cuda_internal.cuh"

#include <mma.h>
#include <stdlib.h>
#include <string.h>

using namespace nvcuda;

enum { GB_M = 64, GB_N = 64, GB_K = 32, GB_THREADS = 128, GB_PAD = 8 };

/* One operand of a tile product: element (i, kk) of A or (kk, j) of B, the
 * pointer already at the tile's origin. kk_contig: consecutive kk are
 * adjacent in memory (else consecutive i or j are); reads past the valid
 * extents give 0. h, when set, is the registered bf16 copy of p (the expert
 * weights, cuda_gemm.cu's bf16_weights) at the same place: read instead,
 * half the bytes and already rounded. */
typedef struct {
    const float *p;
    long long ld;
    int kk_contig;
    int outer_valid, kk_valid;   /* rows of A / columns of B; the inner extent */
    const __nv_bfloat16 *h;
} operand;

static __device__ __forceinline__ __nv_bfloat16 operand_at(const operand &o, int outer, int kk)
{
    if (outer >= o.outer_valid || kk >= o.kk_valid)
        return cuda_to_bf16(0.0f);
    long long i = o.kk_contig ? (long long)outer * o.ld + kk : (long long)kk * o.ld + outer;
    return o.h ? o.h[i] : cuda_to_bf16(o.p[i]);
}

/* Stage a GB_M x GB_K slice of A (as As[i][kk]) or GB_K x GB_N of B (as
 * Bs[kk][j]), threads walking the operand's contiguous direction. */
static __device__ __forceinline__ void stage_a(__nv_bfloat16 (*As)[GB_K + GB_PAD], const operand &a, int kk0)
{
    for (int e = threadIdx.x; e < GB_M * GB_K; e += GB_THREADS) {
        int i = a.kk_contig ? e / GB_K : e % GB_M, kk = a.kk_contig ? e % GB_K : e / GB_M;
        As[i][kk] = operand_at(a, i, kk0 + kk);
    }
}

static __device__ __forceinline__ void stage_b(__nv_bfloat16 (*Bs)[GB_N + GB_PAD], const operand &b, int kk0)
{
    for (int e = threadIdx.x; e < GB_K * GB_N; e += GB_THREADS) {
        int j = b.kk_contig ? e / GB_K : e % GB_N, kk = b.kk_contig ? e % GB_K : e / GB_N;
        Bs[kk][j] = operand_at(b, j, kk0 + kk);
    }
}

/* C[i][j] = sum_kk A(i, kk) B(kk, j) + beta C[i][j] for the valid part of a
 * 64 x 64 tile (beta == 0 overwrites, NaN included). */
static __device__ void tile_product(const operand &a, const operand &b, float *C, long long ldc, int rows_valid,
                                    int cols_valid, float beta)
{
    __shared__ __align__(32) __nv_bfloat16 As[GB_M][GB_K + GB_PAD];
    __shared__ __align__(32) __nv_bfloat16 Bs[GB_K][GB_N + GB_PAD];
    __shared__ __align__(32) float Cs[GB_M][GB_N + 4];
    const int warp = threadIdx.x / 32, wr = (warp / 2) * 32, wc = (warp % 2) * 32;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
    for (int x = 0; x < 2; x++)
        for (int y = 0; y < 2; y++)
            wmma::fill_fragment(acc[x][y], 0.0f);
    for (int kk0 = 0; kk0 < a.kk_valid; kk0 += GB_K) {
        stage_a(As, a, kk0);
        stage_b(Bs, b, kk0);
        __syncthreads();
        for (int kk = 0; kk < GB_K; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb[2];
            for (int x = 0; x < 2; x++)
                wmma::load_matrix_sync(fa[x], &As[wr + 16 * x][kk], GB_K + GB_PAD);
            for (int y = 0; y < 2; y++)
                wmma::load_matrix_sync(fb[y], &Bs[kk][wc + 16 * y], GB_N + GB_PAD);
            for (int x = 0; x < 2; x++)
                for (int y = 0; y < 2; y++)
                    wmma::mma_sync(acc[x][y], fa[x], fb[y], acc[x][y]);
        }
        __syncthreads();
    }
    for (int x = 0; x < 2; x++)
        for (int y = 0; y < 2; y++)
            wmma::store_matrix_sync(&Cs[wr + 16 * x][wc + 16 * y], acc[x][y], GB_N + 4, wmma::mem_row_major);
    __syncthreads();
    for (int e = threadIdx.x; e < GB_M * GB_N; e += GB_THREADS) {
        int i = e / GB_N, j = e % GB_N;
        if (i < rows_valid && j < cols_valid) {
            float *c = C + (long long)i * ldc + j;
            *c = Cs[i][j] + (beta == 0.0f ? 0.0f : beta * *c);
        }
    }
    __syncthreads();   /* the shared tiles are reused by the block's next tile */
}

/* Rows of group e; offsets that do not start at 0 or that decrease are
 * flagged (the device error word) and read as empty groups. */
static __device__ __forceinline__ int group_rows(const int32_t *offs, int e, int *err)
{
    int rows = offs[e + 1] - offs[e];
    if (rows < 0 || offs[0] != 0) {
        cuda_flag(err, CUDA_ERR_GROUP_OFFS);
        return 0;
    }
    return rows;
}

/* Tile t of the row-tiled product (fwd, dx): its group, first row and
 * column tile; false past the last tile. */
static __device__ bool find_row_tile(const int32_t *offs, int E, int col_tiles, long long t, int *g, int *row0,
                                     int *col_tile, int *err)
{
    long long base = 0;
    for (int e = 0; e < E; e++) {
        int rows = group_rows(offs, e, err);
        long long tiles = (long long)((rows + GB_M - 1) / GB_M) * col_tiles;
        if (t < base + tiles) {
            long long local = t - base;
            *g = e;
            *row0 = offs[e] + (int)(local / col_tiles) * GB_M;
            *col_tile = (int)(local % col_tiles);
            return true;
        }
        base += tiles;
    }
    return false;
}

/* fwd (dx = 0): Y = X W_g^T, inner k; dx (dx = 1): dX = dY W_g, inner n. */
static __global__ void __launch_bounds__(GB_THREADS)
grouped_rows_kernel(int dx, int E, const int32_t *offs, int n, int k, const float *A, const float *W,
                    const __nv_bfloat16 *W16, float beta, float *C, int *err)
{
    const int out_cols = dx ? k : n, inner = dx ? n : k, col_tiles = (out_cols + GB_N - 1) / GB_N;
    int g, row0, ct;
    for (long long t = blockIdx.x; find_row_tile(offs, E, col_tiles, t, &g, &row0, &ct, err); t += gridDim.x) {
        int rows_valid = min(GB_M, offs[g + 1] - row0), col0 = ct * GB_N, cols_valid = min(GB_N, out_cols - col0);
        operand a = {A + (long long)row0 * inner, inner, 1, rows_valid, inner, NULL};
        long long wg = (long long)g * n * k, at = dx ? col0 : (long long)col0 * k;
        operand b = dx ? operand{W + wg + at, k, 0, cols_valid, n, NULL} : operand{W + wg + at, k, 1, cols_valid, k, NULL};
        b.h = W16 ? W16 + wg + at : NULL;
        tile_product(a, b, C + (long long)row0 * out_cols + col0, out_cols, rows_valid, cols_valid, beta);
    }
}

/* dW_g[n][k] = dY_g^T X_g + beta dW_g: block (tile of [n][k], g). */
static __global__ void __launch_bounds__(GB_THREADS)
grouped_dw_kernel(const int32_t *offs, int n, int k, const float *dY, const float *X, float beta, float *dW,
                  int *err)
{
    const int g = blockIdx.y, col_tiles = (k + GB_N - 1) / GB_N;
    const int r0 = (blockIdx.x / col_tiles) * GB_M, c0 = (blockIdx.x % col_tiles) * GB_N;
    const int o = offs[g], rows = group_rows(offs, g, err);
    const int rows_valid = min(GB_M, n - r0), cols_valid = min(GB_N, k - c0);
    operand a = {dY + (long long)o * n + r0, n, 0, rows_valid, rows, NULL};
    operand b = {X + (long long)o * k + c0, k, 0, cols_valid, rows, NULL};
    tile_product(a, b, dW + (long long)g * n * k + (long long)r0 * k + c0, k, rows_valid, cols_valid, beta);
}

/* The device kernels unless UPC_GROUPED=cublas. */
bool cuda_grouped_on_device(void)
{
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("UPC_GROUPED");
        on = !(v && strcmp(v, "cublas") == 0);
    }
    return on;
}

/* Enough blocks to fill the device a few times over; each walks its tiles. */
static unsigned row_grid(void)
{
    static unsigned blocks;
    if (!blocks) {
        int dev = 0, sms = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
        blocks = (unsigned)(sms > 0 ? sms : 80) * 8;
    }
    return blocks;
}

void cuda_grouped_rows_bf16(const upc_kernels *K, const char *kernel, int dx, int E, const int32_t *offs, int n,
                            int k, const float *A, const float *W, float beta, float *C)
{
    CUDA_REQUIRE(E >= 0 && n > 0 && k > 0, kernel, "sizes must be positive (the caller takes the others)");
    if (E == 0)
        return;
    const __nv_bfloat16 *W16 = (const __nv_bfloat16 *)cuda_registered_bf16(K, W, (size_t)E * n * k);
    grouped_rows_kernel<<<row_grid(), GB_THREADS>>>(dx, E, offs, n, k, A, W, W16, beta, C, CTX(K)->err);
    cuda_after_launch(K, kernel);
}

void cuda_grouped_dw_bf16(const upc_kernels *K, const char *kernel, int E, const int32_t *offs, int n, int k,
                          const float *dY, const float *X, float beta, float *dW)
{
    CUDA_REQUIRE(E >= 0 && n > 0 && k > 0, kernel, "sizes must be positive (the caller takes the others)");
    if (E == 0)
        return;
    CUDA_REQUIRE(E < 65536, kernel, "more than 65535 groups");
    dim3 grid((unsigned)(((n + GB_M - 1) / GB_M) * ((k + GB_N - 1) / GB_N)), (unsigned)E);
    grouped_dw_kernel<<<grid, GB_THREADS>>>(offs, n, k, dY, X, beta, dW, CTX(K)->err);
    cuda_after_launch(K, kernel);
}
