/* emu_device.h: the device side of the CUDA emulation (tests/emu/README.md).
 * Every CUDA thread of a block runs as a cooperative fiber on one host
 * thread (a worker); __syncthreads and the warp-level operations switch
 * fibers, so a block's threads interleave only at barriers, in a fixed
 * order. Blocks of a launch are spread over a pool of workers. */
#ifndef UPCYC_EMU_DEVICE_H
#define UPCYC_EMU_DEVICE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <tuple>
#include <utility>

/* ---- qualifiers ------------------------------------------------------------------ */

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
/* static shared memory: one copy per worker (a worker runs one block at a
 * time); NOT poisoned between blocks, unlike the dynamic shared memory */
#define __shared__ static thread_local
#define __constant__ static

struct uint3 {
    unsigned x, y, z;
};

/* CUDA's 16-byte vector type (one 128-bit load) */
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

/* Per worker thread; the scheduler sets threadIdx before it switches to a
 * thread. All four of the trivial type uint3 (CUDA's blockDim and gridDim
 * are dim3, which converts from it), so no TLS wrapper calls. local-exec:
 * the emulation is linked into the executable, and with the default
 * initial-exec model ld rewrites GCC's flag-setting `add` of the TLS
 * offset into a `lea`, after which UBSan's null check reads stale flags
 * (a false "member access within null pointer" on every access). */
#define EMU_TLS thread_local __attribute__((tls_model("local-exec")))
extern EMU_TLS uint3 threadIdx, blockIdx, blockDim, gridDim;
static constexpr int warpSize = 32;

/* ---- barriers, shuffles, shared memory (emu_runtime.cpp) ------------------------- */

void emu_sync_block(void);          /* __syncthreads: the block's live threads */
void emu_sync_warp(void);           /* __syncwarp: the warp's live threads */
void *emu_dyn_smem(void);           /* this block's dynamic shared memory (bytes 0xff) */
/* The calling lane's shuffle buffer: 32 slots of 8 bytes of its warp
 * (alternating between two buffers on each shuffle, so one barrier a
 * shuffle suffices), and its lane. */
uint64_t *emu_shfl_slots(int *lane);
[[noreturn]] void emu_device_trap(const char *what);

static inline void __syncthreads(void) { emu_sync_block(); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { (void)mask; emu_sync_warp(); }
static inline void __threadfence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
[[noreturn]] static inline void __trap(void) { emu_device_trap("__trap()"); }

enum emu_shfl_kind { EMU_SHFL_IDX, EMU_SHFL_UP, EMU_SHFL_DOWN, EMU_SHFL_XOR };

template <typename T>
static inline T emu_shfl(T v, int arg, int width, emu_shfl_kind kind)
{
    static_assert(sizeof(T) <= 8, "shuffle of more than 8 bytes");
    int lane;
    uint64_t *slots = emu_shfl_slots(&lane);
    memcpy(&slots[lane], &v, sizeof v);
    emu_sync_warp();
    int seg = lane & ~(width - 1), src = lane;
    switch (kind) {
    case EMU_SHFL_IDX: src = seg + (arg & (width - 1)); break;
    case EMU_SHFL_UP: src = lane - arg >= seg ? lane - arg : lane; break;
    case EMU_SHFL_DOWN: src = lane + arg < seg + width ? lane + arg : lane; break;
    case EMU_SHFL_XOR: src = ((lane ^ arg) & ~(width - 1)) <= seg ? (lane ^ arg) : lane; break;
    }
    T r;
    memcpy(&r, &slots[src & 31], sizeof r);
    return r;
}

template <typename T>
static inline T __shfl_sync(unsigned, T v, int src, int width = 32) { return emu_shfl(v, src, width, EMU_SHFL_IDX); }
template <typename T>
static inline T __shfl_up_sync(unsigned, T v, unsigned d, int width = 32) { return emu_shfl(v, (int)d, width, EMU_SHFL_UP); }
template <typename T>
static inline T __shfl_down_sync(unsigned, T v, unsigned d, int width = 32) { return emu_shfl(v, (int)d, width, EMU_SHFL_DOWN); }
template <typename T>
static inline T __shfl_xor_sync(unsigned, T v, int m, int width = 32) { return emu_shfl(v, m, width, EMU_SHFL_XOR); }

/* ---- atomics (real host atomics: blocks run on several workers) -------------------- */

template <typename T>
static inline T atomicCAS(T *p, T cmp, T val)
{
    __atomic_compare_exchange_n(p, &cmp, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
static inline int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicAdd(unsigned *p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
static inline int atomicSub(int *p, int v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
static inline int atomicExch(int *p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
static inline int atomicMax(int *p, int v)
{
    int old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
static inline int atomicMin(int *p, int v)
{
    int old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (old > v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
static inline float atomicAdd(float *p, float v)   /* a CAS loop, as CUDA's is for doubles */
{
    float old = *p, want;
    do
        want = old + v;
    while (!__atomic_compare_exchange(p, &old, &want, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old;
}
static inline double atomicAdd(double *p, double v)
{
    double old = *p, want;
    do
        want = old + v;
    while (!__atomic_compare_exchange(p, &old, &want, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old;
}

/* ---- bit casts, intrinsics, integer min/max ------------------------------------------ */

static inline unsigned __float_as_uint(float x) { unsigned u; memcpy(&u, &x, 4); return u; }
static inline float __uint_as_float(unsigned u) { float x; memcpy(&x, &u, 4); return x; }
static inline int __float_as_int(float x) { int u; memcpy(&u, &x, 4); return u; }
static inline float __int_as_float(int u) { float x; memcpy(&x, &u, 4); return x; }
static inline long long __double_as_longlong(double x) { long long u; memcpy(&u, &x, 8); return u; }
static inline double __longlong_as_double(long long u) { double x; memcpy(&x, &u, 8); return x; }
/* the fast-math intrinsics are the plain libm functions here: glibc's
 * <math.h> already declares __expf, __logf, __sinf, __cosf, __powf as
 * its expf, logf, ... */
static inline float __fdividef(float x, float y) { return x / y; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
static inline int __ffs(int x) { return __builtin_ffs(x); }
template <typename T>
static inline T __ldg(const T *p) { return *p; }

#define EMU_MINMAX(T)                                                                                  \
    static inline T min(T a, T b) { return b < a ? b : a; }                                           \
    static inline T max(T a, T b) { return a < b ? b : a; }
EMU_MINMAX(int)
EMU_MINMAX(unsigned)
EMU_MINMAX(long)
EMU_MINMAX(unsigned long)
EMU_MINMAX(long long)
EMU_MINMAX(unsigned long long)
#undef EMU_MINMAX
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

/* ---- launches ------------------------------------------------------------------------ */

/* What the launch transform (tests/emu/xform.py) turns
 *     kernel<<<grid, block, smem>>>(args);
 * into:
 *     emu_launch("kernel", dim3(grid), dim3(block), smem, emu_bind(kernel)(args));
 * emu_bind(kernel)(args) converts the arguments to the kernel's parameter
 * types once, at the launch (as CUDA copies them); each thread then calls
 * the kernel on its own copy. */
template <typename... P>
struct emu_bound {
    void (*fn)(P...);
    std::tuple<P...> args;
};

template <typename... P>
struct emu_binder {
    void (*fn)(P...);
    emu_bound<P...> operator()(P... a) const { return emu_bound<P...>{fn, std::tuple<P...>(a...)}; }
};

template <typename... P>
static inline emu_binder<P...> emu_bind(void (*fn)(P...))
{
    return emu_binder<P...>{fn};
}

struct emu_launch_info {
    const char *name;
    const void *fn;                   /* the kernel, for cudaFuncSetAttribute's limit */
    void (*run)(const void *bound);   /* one thread's body */
    const void *bound;
    dim3 grid, block;
    size_t smem;
};

void emu_launch_run(const emu_launch_info *launch);

template <typename... P>
static void emu_run_bound(const void *b)
{
    const emu_bound<P...> *k = (const emu_bound<P...> *)b;
    std::apply(k->fn, k->args);
}

template <typename... P>
static inline void emu_launch(const char *name, dim3 grid, dim3 block, size_t smem, const emu_bound<P...> &k)
{
    emu_launch_info info = {name, (const void *)k.fn, emu_run_bound<P...>, &k, grid, block, smem};
    emu_launch_run(&info);
}

#endif
