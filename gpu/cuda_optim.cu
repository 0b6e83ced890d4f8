/* cuda_optim.cu: optimizer steps (the per-element math of kernels_math.h),
 * reductions and elementwise ops over flat buffers. sum / sumsq add fixed
 * chunks in double (a block tree each), then the chunk sums in order in one
 * block: the bits depend only on n, never on timing. */
#include "cuda_internal.cuh"

static __global__ void adamw_kernel(float *param, const float *grad, float *m, float *v, size_t n,
                                    upc_optim_params hp)
{
    GRID_STRIDE(i, n) {
        float p = param[i], mm = m[i], vv = v[i];
        upc_adamw_elem(&p, &mm, &vv, grad[i] * hp.grad_scale, hp.lr, hp.beta1, hp.beta2, hp.eps,
                       hp.weight_decay, hp.bias_correction1, hp.bias_correction2);
        param[i] = p;
        m[i] = mm;
        v[i] = vv;
    }
}

void cu_adamw_step(const upc_kernels *K, float *param, const float *grad, float *m, float *v, size_t n,
                   upc_optim_params hp)
{
    CUDA_REQUIRE(hp.bias_correction1 > 0.0f && hp.bias_correction2 > 0.0f, "adamw_step",
                 "bias corrections not set (upc_optim_params_at)");
    if (n == 0)
        return;
    adamw_kernel<<<cuda_blocks(n), CUDA_THREADS>>>(param, grad, m, v, n, hp);
    cuda_after_launch(K, "adamw_step");
}

static __global__ void lion_kernel(float *param, const float *grad, float *m, size_t n, upc_optim_params hp)
{
    GRID_STRIDE(i, n) {
        float p = param[i], mm = m[i];
        upc_lion_elem(&p, &mm, grad[i] * hp.grad_scale, hp.lr, hp.beta1, hp.beta2, hp.weight_decay);
        param[i] = p;
        m[i] = mm;
    }
}

void cu_lion_step(const upc_kernels *K, float *param, const float *grad, float *m, size_t n,
                  upc_optim_params hp)
{
    if (n == 0)
        return;
    lion_kernel<<<cuda_blocks(n), CUDA_THREADS>>>(param, grad, m, n, hp);
    cuda_after_launch(K, "lion_step");
}

enum { SUM_CHUNK = 8192, SUM_FINISH_THREADS = 1024 };

static __global__ void __launch_bounds__(CUDA_THREADS)
sum_chunks_kernel(const float *x, size_t n, int squares, double *part)
{
    __shared__ double sh[CUDA_THREADS];
    size_t i0 = (size_t)blockIdx.x * SUM_CHUNK, i1 = i0 + SUM_CHUNK < n ? i0 + SUM_CHUNK : n;
    double s = 0.0;
    for (size_t i = i0 + threadIdx.x; i < i1; i += blockDim.x)
        s += squares ? (double)x[i] * x[i] : (double)x[i];
    s = block_sum(s, sh);
    if (threadIdx.x == 0)
        part[blockIdx.x] = s;
}

static __global__ void __launch_bounds__(SUM_FINISH_THREADS)
sum_finish_kernel(const double *part, size_t nb, float *out)
{
    __shared__ double sh[SUM_FINISH_THREADS];
    double s = 0.0;
    for (size_t b = threadIdx.x; b < nb; b += blockDim.x)
        s += part[b];
    s = block_sum(s, sh);
    if (threadIdx.x == 0)
        *out = (float)s;
}

static void block_sum_of(const upc_kernels *K, const char *kernel, const float *x, size_t n, float *out,
                         int squares)
{
    size_t nb = (n + SUM_CHUNK - 1) / SUM_CHUNK;
    if (nb == 0) {
        CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(float), 0), kernel, "zeroing the sum");
        return;
    }
    CUDA_REQUIRE(nb <= 0x7fffffffu, kernel, "buffer too long");
    double *part = (double *)cuda_scratch(K, SCRATCH_KERNEL, nb * sizeof(double), kernel);
    sum_chunks_kernel<<<(unsigned)nb, CUDA_THREADS>>>(x, n, squares, part);
    cuda_after_launch(K, kernel);
    sum_finish_kernel<<<1, SUM_FINISH_THREADS>>>(part, nb, out);
    cuda_after_launch(K, kernel);
}

void cu_sum(const upc_kernels *K, const float *x, size_t n, float *out)
{
    block_sum_of(K, "sum", x, n, out, 0);
}

void cu_sumsq(const upc_kernels *K, const float *x, size_t n, float *out)
{
    block_sum_of(K, "sumsq", x, n, out, 1);
}

static __global__ void scale_kernel(float *x, size_t n, float a)
{
    GRID_STRIDE(i, n)
        x[i] *= a;
}

static __global__ void axpy_kernel(float *y, const float *x, size_t n, float a)
{
    GRID_STRIDE(i, n)
        y[i] += a * x[i];
}

static __global__ void fill_kernel(float *x, size_t n, float value)
{
    GRID_STRIDE(i, n)
        x[i] = value;
}

static __global__ void add_kernel(float *out, const float *a, const float *b, size_t n)
{
    GRID_STRIDE(i, n)
        out[i] = a[i] + b[i];
}

void cu_scale(const upc_kernels *K, float *x, size_t n, float a)
{
    if (n == 0)
        return;
    scale_kernel<<<cuda_blocks(n), CUDA_THREADS>>>(x, n, a);
    cuda_after_launch(K, "scale");
}

void cu_axpy(const upc_kernels *K, float *y, const float *x, size_t n, float a)
{
    if (n == 0)
        return;
    axpy_kernel<<<cuda_blocks(n), CUDA_THREADS>>>(y, x, n, a);
    cuda_after_launch(K, "axpy");
}

void cu_fill(const upc_kernels *K, float *x, size_t n, float value)
{
    if (n == 0)
        return;
    fill_kernel<<<cuda_blocks(n), CUDA_THREADS>>>(x, n, value);
    cuda_after_launch(K, "fill");
}

void cu_add(const upc_kernels *K, float *out, const float *a, const float *b, size_t n)
{
    if (n == 0)
        return;
    add_kernel<<<cuda_blocks(n), CUDA_THREADS>>>(out, a, b, n);
    cuda_after_launch(K, "add");
}
