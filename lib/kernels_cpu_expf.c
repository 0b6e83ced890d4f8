/* kernels_cpu_expf.c: expf over arrays for the CPU backend's exponential-
 * heavy loops (cross-entropy, SiLU), through glibc's vector expf (libmvec)
 * on x86-64: 8 lanes with AVX2 (_ZGVdN8v_expf), else 4 of SSE2
 * (_ZGVbN4v_expf); 4-9 times the speed of a call per element. glibc's
 * math.h declares its vector functions only under -ffast-math, which would
 * also let the compiler reassociate every sum, so this calls the two it
 * needs by their vector-ABI names.
 *
 * Every element goes through the same function wherever it sits (the last,
 * partial group is padded), so an element's bits depend only on its value
 * (and the CPU's AVX2, decided once per process): not on the array's
 * length, nor on how threads split it. That keeps the identities the tests
 * hold bit for bit (an E=1 MoE is its dense model, one thread or several
 * give the same step). Elsewhere: scalar expf. */
#include "kernels_cpu.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GLIBC__) && defined(__GNUC__)
#include <immintrin.h>

__m128 _ZGVbN4v_expf(__m128 x);
__m256 _ZGVdN8v_expf(__m256 x);

static void expf_sse2(float *x, size_t n)
{
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        _mm_storeu_ps(x + i, _ZGVbN4v_expf(_mm_loadu_ps(x + i)));
    if (i < n) {
        float pad[4] = {0};
        memcpy(pad, x + i, (n - i) * sizeof *x);
        _mm_storeu_ps(pad, _ZGVbN4v_expf(_mm_loadu_ps(pad)));
        memcpy(x + i, pad, (n - i) * sizeof *x);
    }
}

__attribute__((target("avx2"))) static void expf_avx2(float *x, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _ZGVdN8v_expf(_mm256_loadu_ps(x + i)));
    if (i < n) {
        float pad[8] = {0};
        memcpy(pad, x + i, (n - i) * sizeof *x);
        _mm256_storeu_ps(pad, _ZGVdN8v_expf(_mm256_loadu_ps(pad)));
        memcpy(x + i, pad, (n - i) * sizeof *x);
    }
}

void cpu_expf_inplace(float *x, size_t n)
{
    /* the same answer for every call of a process (a load of libgcc's CPU
     * model, set up before main), so threads need no cached flag */
    if (__builtin_cpu_supports("avx2"))
        expf_avx2(x, n);
    else
        expf_sse2(x, n);
}
#else
void cpu_expf_inplace(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = expf(x[i]);
}
#endif
