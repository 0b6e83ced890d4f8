/* cuda_layers.cu: embedding, RMSNorm, RoPE and SwiGLU on the GPU, with the
 * per-element math of kernels_math.h. Sums that must not depend on the
 * launch (RMSNorm's row sums, its dw over rows, embedding_bwd over tokens)
 * run in a fixed order: block trees, fixed row chunks, or (embedding_bwd)
 * tokens stably sorted by id and each id's rows added in token order, as
 * the CPU does, so those bits match the CPU's. No float atomics. */
#include "cuda_internal.cuh"

/* ---- embedding -------------------------------------------------------------- */

static __global__ void embedding_fwd_kernel(const int32_t *ids, int rows, const float *table, int V,
                                            int d, float *out, int *err)
{
    size_t n = (size_t)rows * d;
    GRID_STRIDE(i, n) {
        size_t r = i / d, c = i % d;
        int id = ids[r];
        if (id < 0 || id >= V) {
            cuda_flag(err, CUDA_ERR_EMBED_FWD_ID);
            out[i] = 0.0f;
        } else {
            out[i] = table[(size_t)id * d + c];
        }
    }
}

void cu_embedding_fwd(const upc_kernels *K, const int32_t *ids, int rows, const float *table, int V,
                      int d, float *out)
{
    CUDA_REQUIRE(rows >= 0 && V > 0 && d >= 0, "embedding_fwd", "bad size");
    size_t n = (size_t)rows * d;
    if (n == 0)
        return;
    embedding_fwd_kernel<<<cuda_blocks(n), CUDA_THREADS>>>(ids, rows, table, V, d, out, CTX(K)->err);
    cuda_after_launch(K, "embedding_fwd");
}

static __global__ void check_ids_kernel(const int32_t *ids, int rows, int V, int *err, int code)
{
    GRID_STRIDE(i, (size_t)rows) {
        if (ids[i] < 0 || ids[i] >= V)
            cuda_flag(err, code);
    }
}

/* Block x: sorted position s (only the first of each id's run works);
 * threads: columns. dtable[id][c] += dout[tok][c] for the run's tokens in
 * token order (the sort is stable). */
static __global__ void embedding_bwd_kernel(const int32_t *sorted_tok, const int32_t *sorted_id,
                                            int rows, const float *dout, int V, int d, float *dtable)
{
    int s = blockIdx.x;
    int id = sorted_id[s];
    if (s > 0 && sorted_id[s - 1] == id)
        return;
    if (id < 0 || id >= V)
        return;
    for (int c = blockIdx.y * blockDim.x + threadIdx.x; c < d; c += gridDim.y * blockDim.x) {
        float acc = dtable[(size_t)id * d + c];
        for (int t = s; t < rows && sorted_id[t] == id; t++)
            acc += dout[(size_t)sorted_tok[t] * d + c];
        dtable[(size_t)id * d + c] = acc;
    }
}

void cu_embedding_bwd(const upc_kernels *K, const int32_t *ids, int rows, const float *dout, int V,
                      int d, float *dtable)
{
    const char *kernel = "embedding_bwd";
    CUDA_REQUIRE(rows >= 0 && V > 0 && d >= 0, kernel, "bad size");
    if (rows == 0 || d == 0)
        return;
    check_ids_kernel<<<cuda_blocks((size_t)rows), CUDA_THREADS>>>(ids, rows, V, CTX(K)->err,
                                                                  CUDA_ERR_EMBED_BWD_ID);
    cuda_after_launch(K, kernel);
    int32_t *sorted = (int32_t *)cuda_scratch(K, SCRATCH_KERNEL, 2 * (size_t)rows * sizeof(int32_t), kernel);
    int32_t *sorted_tok = sorted, *sorted_id = sorted + rows;
    cuda_stable_sort_indices(K, ids, rows, V, sorted_tok, sorted_id, kernel);
    unsigned col_blocks = (unsigned)((d + 127) / 128);
    embedding_bwd_kernel<<<dim3((unsigned)rows, col_blocks), 128>>>(sorted_tok, sorted_id, rows, dout, V, d,
                                                                     dtable);
    cuda_after_launch(K, kernel);
}

/* ---- RMSNorm ------------------------------------------------------------------ */

static __global__ void rmsnorm_fwd_kernel(const float *x, const float *w, float *y, float *rstd, int d,
                                          float eps)
{
    __shared__ double sh[CUDA_THREADS];
    size_t r = blockIdx.x;
    const float *xr = x + r * d;
    float *yr = y + r * d;
    double ss = 0.0;
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        ss += (double)xr[j] * xr[j];
    ss = block_sum(ss, sh);
    float rs = upc_rmsnorm_rstd(ss, d, eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x)   /* y may be x: each j read then written once */
        yr[j] = (xr[j] * rs) * w[j];
    if (rstd && threadIdx.x == 0)
        rstd[r] = rs;
}

void cu_rmsnorm_fwd(const upc_kernels *K, const float *x, const float *w, float *y, float *rstd,
                    int rows, int d, float eps)
{
    CUDA_REQUIRE(rows >= 0 && d > 0, "rmsnorm_fwd", "bad size");
    if (rows == 0)
        return;
    rmsnorm_fwd_kernel<<<(unsigned)rows, CUDA_THREADS>>>(x, w, y, rstd, d, eps);
    cuda_after_launch(K, "rmsnorm_fwd");
}

static __global__ void rmsnorm_dx_kernel(const float *dy, const float *x, const float *w,
                                         const float *rstd, float *dx, int d)
{
    __shared__ double sh[CUDA_THREADS];
    size_t r = blockIdx.x;
    const float *xr = x + r * d, *dyr = dy + r * d;
    float *dxr = dx + r * d;
    double dot = 0.0;
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        dot += (double)w[j] * dyr[j] * xr[j];
    dot = block_sum(dot, sh);
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        dxr[j] = upc_rmsnorm_dx(xr[j], w[j], dyr[j], rstd[r], dot, d);
}

/* partial[chunk][c] = sum over the chunk's rows of dy x rstd (double);
 * chunk rows depend only on the row count, so the bits do too. */
static __global__ void rmsnorm_dw_partial_kernel(const float *dy, const float *x, const float *rstd,
                                                 int rows, int d, int chunk_rows, double *partial)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d)
        return;
    int r0 = blockIdx.y * chunk_rows, r1 = min(rows, r0 + chunk_rows);
    double acc = 0.0;
    for (int r = r0; r < r1; r++)
        acc += (double)dy[(size_t)r * d + c] * x[(size_t)r * d + c] * (double)rstd[r];
    partial[(size_t)blockIdx.y * d + c] = acc;
}

static __global__ void rmsnorm_dw_finish_kernel(const double *partial, int chunks, int d, float *dw)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d)
        return;
    double acc = 0.0;
    for (int k = 0; k < chunks; k++)
        acc += partial[(size_t)k * d + c];
    dw[c] += (float)acc;
}

void cu_rmsnorm_bwd(const upc_kernels *K, const float *dy, const float *x, const float *w,
                    const float *rstd, float *dx, float *dw, int rows, int d)
{
    const char *kernel = "rmsnorm_bwd";
    CUDA_REQUIRE(rows >= 0 && d > 0, kernel, "bad size");
    if (rows == 0)
        return;
    rmsnorm_dx_kernel<<<(unsigned)rows, CUDA_THREADS>>>(dy, x, w, rstd, dx, d);
    cuda_after_launch(K, kernel);
    int chunk_rows = 64;   /* grid y is at most 65535 chunks */
    if ((rows + chunk_rows - 1) / chunk_rows > 65535)
        chunk_rows = (rows + 65534) / 65535;
    int chunks = (rows + chunk_rows - 1) / chunk_rows;
    double *partial = (double *)cuda_scratch(K, SCRATCH_KERNEL, (size_t)chunks * d * sizeof(double), kernel);
    unsigned cb = (unsigned)((d + CUDA_THREADS - 1) / CUDA_THREADS);
    rmsnorm_dw_partial_kernel<<<dim3(cb, (unsigned)chunks), CUDA_THREADS>>>(dy, x, rstd, rows, d, chunk_rows, partial);
    cuda_after_launch(K, kernel);
    rmsnorm_dw_finish_kernel<<<cb, CUDA_THREADS>>>(partial, chunks, d, dw);
    cuda_after_launch(K, kernel);
}

/* ---- RoPE ----------------------------------------------------------------------- */

/* The inverse frequencies, computed on the host by upc_rope_inv_freq with
 * the same libm powf as the CPU backend and passed by value: the device
 * powf may differ from glibc's in the last bit, and one ulp of inv_freq
 * moves the angle at position 3000 by ~5e-5 rad (output error ~1e-4, past
 * the CPU comparison's tolerance). Head dims above 2 * ROPE_TABLE fall
 * back to the device powf. */
enum { ROPE_TABLE = 256 };
typedef struct {
    float f[ROPE_TABLE];
} rope_inv_freq_table;

/* One thread per (token, head, pair i < hd/2); reads both halves of the
 * pair before writing them, so y may be x. */
static __global__ void rope_kernel(const float *x, float *y, int B, int T, int H, int hd, int pos0,
                                   const int32_t *pos, float theta, float sign, rope_inv_freq_table inv)
{
    int half = hd / 2;
    size_t n = (size_t)B * T * H * half;
    GRID_STRIDE(e, n) {
        int i = (int)(e % half);
        size_t th = e / half;           /* (bt, h) */
        size_t bt = th / H;
        int p = pos ? pos[bt] : pos0 + (int)(bt % T);
        float ang = (float)p * (half <= ROPE_TABLE ? inv.f[i] : upc_rope_inv_freq(i, hd, theta));
        float c = cosf(ang), s = sinf(ang);
        size_t base = th * hd;
        float a = x[base + i], b = x[base + i + half];
        upc_rope_pair(&a, &b, c, s, sign);
        y[base + i] = a;
        y[base + i + half] = b;
    }
}

static void rope_apply(const upc_kernels *K, const char *kernel, const float *x, float *y, int B, int T,
                       int H, int hd, int pos0, const int32_t *pos, float theta, float sign)
{
    CUDA_REQUIRE(B >= 0 && T >= 0 && H >= 0 && hd > 0 && hd % 2 == 0, kernel,
                 "bad size (head dim must be even)");
    size_t n = (size_t)B * T * H * (hd / 2);
    if (n == 0)
        return;
    rope_inv_freq_table inv = {};
    for (int i = 0; i < hd / 2 && i < ROPE_TABLE; i++)
        inv.f[i] = upc_rope_inv_freq(i, hd, theta);   /* host libm: the CPU's bits */
    rope_kernel<<<cuda_blocks(n), CUDA_THREADS>>>(x, y, B, T, H, hd, pos0, pos, theta, sign, inv);
    cuda_after_launch(K, kernel);
}

void cu_rope_fwd(const upc_kernels *K, const float *x, float *y, int B, int T, int H, int hd, int pos0,
                 const int32_t *pos, float theta)
{
    rope_apply(K, "rope_fwd", x, y, B, T, H, hd, pos0, pos, theta, 1.0f);
}

void cu_rope_bwd(const upc_kernels *K, const float *dy, float *dx, int B, int T, int H, int hd, int pos0,
                 const int32_t *pos, float theta)
{
    rope_apply(K, "rope_bwd", dy, dx, B, T, H, hd, pos0, pos, theta, -1.0f);
}

/* ---- SwiGLU ---------------------------------------------------------------------- */

static __global__ void swiglu_fwd_kernel(const float *gate, const float *up, float *out, size_t n)
{
    GRID_STRIDE(i, n)
        out[i] = upc_silu(gate[i]) * up[i];
}

static __global__ void swiglu_bwd_kernel(const float *gate, const float *up, const float *dout,
                                         float *dgate, float *dup, size_t n)
{
    GRID_STRIDE(i, n) {
        float dg, du;
        upc_swiglu_bwd_elem(gate[i], up[i], dout[i], &dg, &du);
        dgate[i] = dg;
        dup[i] = du;
    }
}

static __global__ void jitter_scale_kernel(float *x, size_t n, float eps, uint64_t key)
{
    GRID_STRIDE(i, n)
        x[i] *= upc_jitter_factor(key, i, eps);
}

void cu_jitter_scale(const upc_kernels *K, float *x, size_t n, float eps, uint64_t key)
{
    if (n == 0)
        return;
    jitter_scale_kernel<<<cuda_blocks(n), CUDA_THREADS>>>(x, n, eps, key);
    cuda_after_launch(K, "jitter_scale");
}

void cu_swiglu_fwd(const upc_kernels *K, const float *gate, const float *up, float *out, size_t n)
{
    if (n == 0)
        return;
    swiglu_fwd_kernel<<<cuda_blocks(n), CUDA_THREADS>>>(gate, up, out, n);
    cuda_after_launch(K, "swiglu_fwd");
}

void cu_swiglu_bwd(const upc_kernels *K, const float *gate, const float *up, const float *dout,
                   float *dgate, float *dup, size_t n)
{
    if (n == 0)
        return;
    swiglu_bwd_kernel<<<cuda_blocks(n), CUDA_THREADS>>>(gate, up, dout, dgate, dup, n);
    cuda_after_launch(K, "swiglu_bwd");
}
