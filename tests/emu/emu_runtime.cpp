/* emu_runtime.cpp: the CUDA emulation's runtime (tests/emu/README.md):
 * launches (every CUDA thread a fiber, a block on one worker thread, the
 * blocks of a launch over a pool of workers), barriers and shuffles,
 * device memory, the runtime API, cuBLAS over OpenBLAS and CUB's radix
 * sort. Environment: EMU_WORKERS (worker threads, default the cores),
 * EMU_ORDER=reverse (run a block's threads in reverse order between
 * barriers: an intra-block race then shows as a different result),
 * EMU_STACK_KB (fiber stack, default 256). */
#include "cuda_runtime.h"
#include "cublas_v2.h"
#include "cuda_bf16.h"
#include "cub/device/device_radix_sort.cuh"

#include <cblas.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

extern "C" {
#include "util.h"
}

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

EMU_TLS uint3 threadIdx, blockIdx, blockDim, gridDim;

[[noreturn]] static void emu_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emu_fail(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    upc_fail(EX_SOFTWARE, "cuda emulation: %s", msg);
}

/* ---- fibers --------------------------------------------------------------------------- */

#if defined(__x86_64__)
/* emu_ctx_swap(save, to): save the callee-saved registers on this stack,
 * store its pointer in *save, continue on `to`. MXCSR and the x87 control
 * word are not switched: nothing here changes them. */
extern "C" void emu_ctx_swap(void **save, void *to);
__asm__(".text\n"
        ".globl emu_ctx_swap\n"
        ".type emu_ctx_swap,@function\n"
        "emu_ctx_swap:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size emu_ctx_swap, .-emu_ctx_swap\n"
        ".section .note.GNU-stack,\"\",@progbits\n"
        ".text\n");
#endif

enum fiber_state { RUNNABLE, WAIT_BLOCK, WAIT_WARP, DONE };

struct fiber {
#if defined(__x86_64__)
    void *sp;
#else
    ucontext_t uc;
#endif
    char *stack;          /* usable stack, above a guard page */
    size_t stack_size;
    uint3 tid;
    unsigned lin;         /* linear thread index in the block */
    fiber_state state;
    unsigned shfl_parity;
    unsigned mma_seq;     /* mma_sync calls since the lane's last warp or block barrier */
};

struct worker {
    std::vector<fiber *> fibers;
#if defined(__x86_64__)
    void *sched_sp;
#else
    ucontext_t sched_uc;
#endif
    const void *sched_bottom;   /* the worker thread's own stack (AddressSanitizer) */
    size_t sched_size;
    fiber *cur;
    const emu_launch_info *launch;
    unsigned nthreads, live, arrived;
    unsigned warp_live[32], warp_arrived[32];
    unsigned char *smem;
    size_t smem_cap;
    uint64_t shfl[2][32][32];
    struct wmma_memo *wmma;     /* [32 warps][EMU_WMMA_MEMO] */
};

enum { EMU_WMMA_MEMO = 16 };
struct wmma_memo {
    float a[256], b[256], c[256], d[256];
    bool valid;
};

static thread_local worker *W;
static std::mutex workers_mutex;
static std::vector<worker *> all_workers;   /* every worker, so nothing of theirs looks leaked */

static size_t stack_bytes(void)
{
    static size_t bytes;
    if (!bytes) {
        const char *e = getenv("EMU_STACK_KB");
        long kb = e && *e ? strtol(e, NULL, 10) : 0;
        bytes = (size_t)(kb >= 16 ? kb : 256) * 1024;
    }
    return bytes;
}

static bool reverse_order(void)
{
    static int rev = -1;
    if (rev < 0) {
        const char *e = getenv("EMU_ORDER");
        rev = e && strcmp(e, "reverse") == 0;
    }
    return rev;
}

/* Switch from the running context to another (AddressSanitizer told which
 * stack it moves to). */
#if defined(__x86_64__)
static inline void swap_to(void **save, void *to, const void *to_bottom, size_t to_size)
#else
static inline void swap_to(ucontext_t *save, ucontext_t *to, const void *to_bottom, size_t to_size)
#endif
{
#if EMU_ASAN
    void *fake = NULL;
    __sanitizer_start_switch_fiber(&fake, to_bottom, to_size);
#else
    (void)to_bottom, (void)to_size;
#endif
#if defined(__x86_64__)
    emu_ctx_swap(save, to);
#else
    swapcontext(save, to);
#endif
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
}

static void to_scheduler(fiber *f)
{
    worker *w = W;
#if defined(__x86_64__)
    swap_to(&f->sp, w->sched_sp, w->sched_bottom, w->sched_size);
#else
    swap_to(&f->uc, &w->sched_uc, w->sched_bottom, w->sched_size);
#endif
}

static void release_block(worker *w)
{
    w->arrived = 0;
    for (unsigned i = 0; i < w->nthreads; i++)
        if (w->fibers[i]->state == WAIT_BLOCK)
            w->fibers[i]->state = RUNNABLE;
}

static void release_warp(worker *w, unsigned warp)
{
    w->warp_arrived[warp] = 0;
    unsigned end = std::min(w->nthreads, 32 * warp + 32);
    for (unsigned i = 32 * warp; i < end; i++)
        if (w->fibers[i]->state == WAIT_WARP)
            w->fibers[i]->state = RUNNABLE;
}

static void thread_exit(void)
{
    worker *w = W;
    fiber *f = w->cur;
    unsigned warp = f->lin / 32;
    f->state = DONE;
    w->live--;
    w->warp_live[warp]--;
    if (w->arrived > 0 && w->arrived == w->live)
        release_block(w);
    if (w->warp_arrived[warp] > 0 && w->warp_arrived[warp] == w->warp_live[warp])
        release_warp(w, warp);
}

/* A fiber runs one CUDA thread after another: the scheduler sets it up for
 * the next thread and switches to it. */
static void fiber_main(void)
{
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(NULL, &W->sched_bottom, &W->sched_size);
#endif
    for (;;) {
        const emu_launch_info *l = W->launch;
        l->run(l->bound);
        thread_exit();
        to_scheduler(W->cur);
    }
}

static fiber *new_fiber(unsigned index)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), size = stack_bytes();
    char *mem = (char *)mmap(NULL, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                             -1, 0);
    if (mem == MAP_FAILED)
        emu_fail("no memory for a thread's stack: %s", strerror(errno));
    mprotect(mem, page, PROT_NONE);   /* guard: an overflow faults */
    fiber *f = new fiber();
    f->stack = mem + page;
    f->stack_size = size;
#if defined(__x86_64__)
    /* the frame emu_ctx_swap pops: six registers, then `ret` into fiber_main
     * with the stack as after a call. The tops of the stacks are staggered
     * (coloured) so that the fibers' hot frames do not all fall into the
     * same cache sets. */
    uint64_t *top = (uint64_t *)(f->stack + size - (index * 17 % 64) * 64);
    uint64_t *sp = top - 8;
    for (int i = 0; i < 6; i++)
        sp[i] = 0;
    sp[6] = (uint64_t)(uintptr_t)fiber_main;
    sp[7] = 0;
    f->sp = sp;
#else
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->stack;
    f->uc.uc_stack.ss_size = size;
    f->uc.uc_link = NULL;
    makecontext(&f->uc, fiber_main, 0);
#endif
    return f;
}

static worker *this_worker(void)
{
    if (!W) {
        W = new worker();
        std::lock_guard<std::mutex> g(workers_mutex);
        all_workers.push_back(W);
    }
    return W;
}

static void deadlock(worker *w)
{
    unsigned at_block = 0, at_warp = 0, done = 0;
    for (unsigned i = 0; i < w->nthreads; i++) {
        at_block += w->fibers[i]->state == WAIT_BLOCK;
        at_warp += w->fibers[i]->state == WAIT_WARP;
        done += w->fibers[i]->state == DONE;
    }
    emu_fail("kernel %s, block (%u,%u,%u): deadlock: of %u threads %u wait at __syncthreads, %u at a warp "
             "barrier (__syncwarp, a shuffle or WMMA), %u have returned: a barrier in divergent code",
             w->launch->name, blockIdx.x, blockIdx.y, blockIdx.z, w->nthreads, at_block, at_warp, done);
}

static void run_block(worker *w, const emu_launch_info *l, uint64_t b)
{
    const dim3 g = l->grid, bd = l->block;
    blockIdx.x = (unsigned)(b % g.x);
    blockIdx.y = (unsigned)(b / g.x % g.y);
    blockIdx.z = (unsigned)(b / ((uint64_t)g.x * g.y));
    if (l->smem)
        memset(w->smem, 0xff, l->smem);   /* NaN as floats and doubles, -1 as integers */
    unsigned n = w->nthreads;
    for (unsigned i = 0; i < n; i++) {
        fiber *f = w->fibers[i];
        f->state = RUNNABLE;
        f->lin = i;
        f->tid.x = i % bd.x;
        f->tid.y = i / bd.x % bd.y;
        f->tid.z = i / (bd.x * bd.y);
        f->shfl_parity = 0;
        f->mma_seq = 0;
    }
    w->live = n;
    w->arrived = 0;
    for (unsigned k = 0; k < 32; k++) {
        w->warp_live[k] = k * 32 < n ? std::min(32u, n - k * 32) : 0;
        w->warp_arrived[k] = 0;
    }
    const bool rev = reverse_order();
    for (;;) {
        bool progress = false;
        for (unsigned j = 0; j < n; j++) {
            fiber *f = w->fibers[rev ? n - 1 - j : j];
            if (f->state != RUNNABLE)
                continue;
            progress = true;
            w->cur = f;
            threadIdx = f->tid;
#if defined(__x86_64__)
            swap_to(&w->sched_sp, f->sp, f->stack, f->stack_size);
#else
            swap_to(&w->sched_uc, &f->uc, f->stack, f->stack_size);
#endif
        }
        if (w->live == 0)
            return;
        if (!progress)
            deadlock(w);
    }
}

/* Run blocks of the current launch until none is left. */
static void run_blocks(const emu_launch_info *l, std::atomic<uint64_t> *next, uint64_t nblocks)
{
    worker *w = this_worker();
    unsigned n = l->block.x * l->block.y * l->block.z;
    while (w->fibers.size() < n)
        w->fibers.push_back(new_fiber((unsigned)w->fibers.size()));
    if (l->smem > w->smem_cap) {
        free(w->smem);
        w->smem = (unsigned char *)upc_malloc(l->smem);
        w->smem_cap = l->smem;
    }
    w->launch = l;
    w->nthreads = n;
    blockDim = uint3{l->block.x, l->block.y, l->block.z};
    gridDim = uint3{l->grid.x, l->grid.y, l->grid.z};
    for (uint64_t b; (b = next->fetch_add(1)) < nblocks;)
        run_block(w, l, b);
    w->launch = NULL;
#if EMU_ASAN
    /* exactly the launch's dynamic shared memory, so an overrun is caught */
    free(w->smem);
    w->smem = NULL;
    w->smem_cap = 0;
#endif
}

/* ---- the worker pool -------------------------------------------------------------------- */

static struct pool {
    std::mutex m;
    std::condition_variable go, done;
    uint64_t generation;
    const emu_launch_info *launch;
    std::atomic<uint64_t> next;
    uint64_t nblocks;
    unsigned wanted, running;   /* helpers asked to join this launch, still running */
    unsigned helpers;
    bool started;
} *P;

static unsigned worker_count(void)
{
    static unsigned n;
    if (!n) {
        const char *e = getenv("EMU_WORKERS");
        long v = e && *e ? strtol(e, NULL, 10) : 0;
        if (v < 1) {
            unsigned hc = std::thread::hardware_concurrency();
            v = hc ? hc : 1;
        }
        n = (unsigned)std::min(v, 64L);
    }
    return n;
}

static void helper_main(unsigned id)
{
    uint64_t seen = 0;
    for (;;) {
        const emu_launch_info *l;
        {
            std::unique_lock<std::mutex> lk(P->m);
            P->go.wait(lk, [&] { return P->generation != seen && id < P->wanted; });
            seen = P->generation;
            l = P->launch;
        }
        run_blocks(l, &P->next, P->nblocks);
        std::lock_guard<std::mutex> lk(P->m);
        if (--P->running == 0)
            P->done.notify_all();
    }
}

static std::mutex launch_mutex;
static std::map<const void *, size_t> smem_limit;   /* cudaFuncSetAttribute's opt-ins */
static thread_local cudaError_t last_error = cudaSuccess;

void emu_launch_run(const emu_launch_info *l)
{
    const dim3 g = l->grid, b = l->block;
    uint64_t threads = (uint64_t)b.x * b.y * b.z;
    if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535 || threads == 0 ||
        threads > EMU_MAX_THREADS || b.z > 64) {
        last_error = cudaErrorInvalidConfiguration;
        return;
    }
    size_t limit = EMU_SMEM_DEFAULT;
    {
        std::lock_guard<std::mutex> lk(launch_mutex);
        auto it = smem_limit.find(l->fn);
        if (it != smem_limit.end())
            limit = it->second;
    }
    if (l->smem > limit) {
        last_error = cudaErrorInvalidValue;
        return;
    }
    std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex);
    uint64_t nblocks = (uint64_t)g.x * g.y * g.z;
    unsigned helpers = (unsigned)std::min<uint64_t>(worker_count() - 1, nblocks - 1);
    if (helpers == 0) {
        std::atomic<uint64_t> next(0);
        run_blocks(l, &next, nblocks);
        return;
    }
    if (!P)
        P = new pool();
    while (P->helpers < helpers)
        std::thread(helper_main, P->helpers++).detach();
    {
        std::lock_guard<std::mutex> lk(P->m);
        P->launch = l;
        P->next = 0;
        P->nblocks = nblocks;
        P->wanted = helpers;
        P->running = helpers;
        P->generation++;
    }
    P->go.notify_all();
    run_blocks(l, &P->next, nblocks);
    std::unique_lock<std::mutex> lk(P->m);
    P->done.wait(lk, [] { return P->running == 0; });
}

void emu_sync_block(void)
{
    worker *w = W;
    fiber *f = w->cur;
    f->mma_seq = 0;
    if (++w->arrived == w->live) {
        release_block(w);
        return;
    }
    f->state = WAIT_BLOCK;
    to_scheduler(f);
}

void emu_sync_warp(void)
{
    worker *w = W;
    fiber *f = w->cur;
    f->mma_seq = 0;
    unsigned warp = f->lin / 32;
    if (++w->warp_arrived[warp] == w->warp_live[warp]) {
        release_warp(w, warp);
        return;
    }
    f->state = WAIT_WARP;
    to_scheduler(f);
}

const float *emu_wmma_memo(const float *a, const float *b, const float *c, float **keep)
{
    worker *w = W;
    fiber *f = w->cur;
    if (!w->wmma)
        w->wmma = new wmma_memo[32 * EMU_WMMA_MEMO]();
    wmma_memo *m = &w->wmma[(f->lin / 32) * EMU_WMMA_MEMO + f->mma_seq++ % EMU_WMMA_MEMO];
    if (m->valid && memcmp(m->a, a, sizeof m->a) == 0 && memcmp(m->b, b, sizeof m->b) == 0 &&
        memcmp(m->c, c, sizeof m->c) == 0)
        return m->d;
    memcpy(m->a, a, sizeof m->a);
    memcpy(m->b, b, sizeof m->b);
    memcpy(m->c, c, sizeof m->c);
    m->valid = true;
    *keep = m->d;
    return NULL;
}

void *emu_dyn_smem(void)
{
    return W->smem;
}

uint64_t *emu_shfl_slots(int *lane)
{
    fiber *f = W->cur;
    f->shfl_parity ^= 1;
    *lane = (int)(f->lin % 32);
    return W->shfl[f->shfl_parity][f->lin / 32];
}

void emu_device_trap(const char *what)
{
    emu_fail("kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s", W && W->launch ? W->launch->name : "?",
             blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z, what);
}

/* ---- device memory ------------------------------------------------------------------------ */

static std::mutex mem_mutex;
static std::map<uintptr_t, size_t> allocations;   /* cudaMalloc'ed: start -> bytes */
static size_t allocated;

static size_t device_memory(void)
{
    static size_t total;
    if (!total) {
        const char *e = getenv("EMU_DEVICE_MB");
        long mb = e && *e ? strtol(e, NULL, 10) : 0;
        if (mb > 0)
            total = (size_t)mb << 20;
        else {
            long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
            total = pages > 0 && page > 0 ? (size_t)pages * (size_t)page / 2 : (size_t)8 << 30;
        }
    }
    return total;
}

bool emu_is_device_range(const void *p, size_t bytes)
{
    uintptr_t a = (uintptr_t)p;
    std::lock_guard<std::mutex> lk(mem_mutex);
    auto it = allocations.upper_bound(a);
    if (it == allocations.begin())
        return false;
    --it;
    return a >= it->first && bytes <= it->second && a - it->first <= it->second - bytes;
}

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    if (!p)
        return last_error = cudaErrorInvalidValue;
    *p = NULL;
    if (bytes == 0)
        return cudaSuccess;
    std::lock_guard<std::mutex> lk(mem_mutex);
    if (bytes > device_memory() - allocated)
        return last_error = cudaErrorMemoryAllocation;
    void *q = NULL;
    if (posix_memalign(&q, 256, bytes) != 0)
        return last_error = cudaErrorMemoryAllocation;
    memset(q, 0xa5, bytes);   /* not zero: device memory is not cleared */
    allocations[(uintptr_t)q] = bytes;
    allocated += bytes;
    *p = q;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    if (!p)
        return cudaSuccess;
    std::lock_guard<std::mutex> lk(mem_mutex);
    auto it = allocations.find((uintptr_t)p);
    if (it == allocations.end())
        return last_error = cudaErrorInvalidValue;
    allocated -= it->second;
    allocations.erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t bytes)
{
    if (!p)
        return last_error = cudaErrorInvalidValue;
    *p = malloc(bytes ? bytes : 1);
    return *p ? cudaSuccess : (last_error = cudaErrorMemoryAllocation);
}

cudaError_t cudaFreeHost(void *p)
{
    free(p);
    return cudaSuccess;
}

static cudaError_t check_copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    bool dev_dst = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    bool dev_src = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if ((unsigned)kind > cudaMemcpyDefault)
        return cudaErrorInvalidMemcpyDirection;
    if ((dev_dst && !emu_is_device_range(dst, bytes)) || (dev_src && !emu_is_device_range(src, bytes))) {
        fprintf(stderr, "cuda emulation: cudaMemcpy of %zu bytes %p -> %p (kind %d): %s not inside one cudaMalloc "
                        "allocation\n",
                bytes, src, dst, (int)kind, dev_dst && !emu_is_device_range(dst, bytes) ? "destination" : "source");
        return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    if (bytes == 0)
        return cudaSuccess;
    cudaError_t e = check_copy(dst, src, bytes, kind);
    if (e != cudaSuccess)
        return last_error = e;
    memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t)
{
    return cudaMemcpy(dst, src, bytes, kind);
}

cudaError_t cudaMemset(void *p, int value, size_t bytes)
{
    if (bytes == 0)
        return cudaSuccess;
    if (!emu_is_device_range(p, bytes)) {
        fprintf(stderr, "cuda emulation: cudaMemset of %zu bytes at %p: not inside one cudaMalloc allocation\n",
                bytes, p);
        return last_error = cudaErrorInvalidValue;
    }
    memset(p, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t)
{
    return cudaMemset(p, value, bytes);
}

/* ---- device, errors ---------------------------------------------------------------------- */

static const char *const emu_device_name = "emulated CUDA device (host threads)";

cudaError_t cudaGetDeviceCount(int *count)
{
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device)
{
    return device == 0 ? cudaSuccess : (last_error = cudaErrorInvalidDevice);
}

cudaError_t cudaGetDevice(int *device)
{
    *device = 0;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device)
{
    if (device != 0)
        return last_error = cudaErrorInvalidDevice;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", emu_device_name);
    p->totalGlobalMem = device_memory();
    p->sharedMemPerBlock = EMU_SMEM_DEFAULT;
    p->sharedMemPerBlockOptin = EMU_SMEM_OPTIN;
    p->warpSize = 32;
    p->maxThreadsPerBlock = EMU_MAX_THREADS;
    p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 0x7fffffff;
    p->maxGridSize[1] = p->maxGridSize[2] = 65535;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = (int)worker_count();
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device)
{
    if (device != 0)
        return last_error = cudaErrorInvalidDevice;
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = EMU_MAX_THREADS; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = EMU_SMEM_DEFAULT; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMultiProcessorCount: *value = (int)worker_count(); break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = EMU_SMEM_OPTIN; break;
    default: return last_error = cudaErrorInvalidValue;
    }
    return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void *fn, cudaFuncAttribute attr, int value)
{
    if (!fn)
        return last_error = cudaErrorInvalidValue;   /* cudaErrorInvalidDeviceFunction on the device */
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || value > EMU_SMEM_OPTIN)
            return last_error = cudaErrorInvalidValue;
        std::lock_guard<std::mutex> lk(launch_mutex);
        smem_limit[fn] = (size_t)value;
        return cudaSuccess;
    }
    if (attr == cudaFuncAttributePreferredSharedMemoryCarveout)
        return cudaSuccess;
    return last_error = cudaErrorInvalidValue;
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceReset(void) { return cudaSuccess; }

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return last_error; }

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    }
    return "unrecognized error code";
}

/* ---- cuBLAS ------------------------------------------------------------------------------- */

struct cublasContext {
    cublasMath_t math;
    cublasPointerMode_t pointer_mode;
};

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    if (!h)
        return CUBLAS_STATUS_INVALID_VALUE;
    *h = new cublasContext{CUBLAS_DEFAULT_MATH, CUBLAS_POINTER_MODE_HOST};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((unsigned)mode > CUBLAS_TF32_TENSOR_OP_MATH)
        return CUBLAS_STATUS_INVALID_VALUE;
    h->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode(cublasHandle_t h, cublasPointerMode_t mode)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((unsigned)mode > CUBLAS_POINTER_MODE_DEVICE)
        return CUBLAS_STATUS_INVALID_VALUE;
    h->pointer_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t) { return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED; }

const char *cublasGetStatusName(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

const char *cublasGetStatusString(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "an error was detected when checking the current licensing";
    }
    return "unknown error";
}

/* One column-major operand of a GEMM: `rows` x `cols` at leading dimension
 * ld, of type CUDA_R_32F or CUDA_R_16BF. */
struct blas_operand {
    const void *p;
    cudaDataType type;
    int rows, cols, ld;
};

static size_t elem_size(cudaDataType t)
{
    return t == CUDA_R_16BF ? 2 : 4;
}

/* Is every element the GEMM reads inside one cudaMalloc allocation? */
static bool operand_on_device(const char *fn, const char *name, const void *p, int rows, int cols, int ld,
                              size_t esize)
{
    if (rows == 0 || cols == 0)
        return true;
    size_t span = ((size_t)(cols - 1) * (size_t)ld + (size_t)rows) * esize;
    if (emu_is_device_range(p, span))
        return true;
    fprintf(stderr, "cuda emulation: %s: %s (%d x %d, ld %d, %zu bytes from %p) is not inside one cudaMalloc "
                    "allocation\n",
            fn, name, rows, cols, ld, span, p);
    return false;
}

/* The operand as fp32 (bf16 expanded exactly; only the elements the GEMM
 * reads are read); with round16 (CUBLAS_COMPUTE_32F_FAST_16BF) an fp32
 * operand rounded to bf16 first, to nearest even, as its tensor cores are
 * fed (an assumption a real device checks: tests/gpu.bats). */
static const float *as_float(const blas_operand &o, std::vector<float> &tmp, bool round16)
{
    if (o.type == CUDA_R_32F && !round16)
        return (const float *)o.p;
    size_t span = o.rows && o.cols ? (size_t)(o.cols - 1) * (size_t)o.ld + (size_t)o.rows : 0;
    tmp.assign(span, 0.0f);
    const uint16_t *h = (const uint16_t *)o.p;
    const float *f = (const float *)o.p;
    for (int c = 0; c < o.cols; c++)
        for (int r = 0; r < o.rows; r++) {
            size_t i = (size_t)c * o.ld + r;
            tmp[i] = o.type == CUDA_R_32F ? __bfloat162float(__float2bfloat16(f[i]))
                                          : __uint_as_float((unsigned)h[i] << 16);
        }
    return tmp.data();
}

static cublasStatus_t gemm_batched(const char *fn, cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                   int m, int n, int k, const float *alpha_p, const void *A, cudaDataType at, int lda,
                                   long long sa, const void *B, cudaDataType bt, int ldb, long long sb,
                                   const float *beta_p, float *C, int ldc, long long sc, int batch,
                                   bool round16 = false)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((unsigned)ta > CUBLAS_OP_C || (unsigned)tb > CUBLAS_OP_C || m < 0 || n < 0 || k < 0 || batch < 0 ||
        !alpha_p || !beta_p)
        return CUBLAS_STATUS_INVALID_VALUE;
    int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
    int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    if (lda < std::max(1, ar) || ldb < std::max(1, br) || ldc < std::max(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0 || batch == 0)
        return CUBLAS_STATUS_SUCCESS;
    const float alpha = *alpha_p, beta = *beta_p;   /* host or device pointer: the same memory here */
    const bool products = k > 0 && alpha != 0.0f;
    std::vector<float> ta_buf, tb_buf;
    for (int b = 0; b < batch; b++) {
        const char *a = (const char *)A + (ptrdiff_t)(b * sa) * (ptrdiff_t)elem_size(at);
        const char *bb = (const char *)B + (ptrdiff_t)(b * sb) * (ptrdiff_t)elem_size(bt);
        float *c = C + b * sc;
        if (!operand_on_device(fn, "C", c, m, n, ldc, 4) ||
            (products && (!operand_on_device(fn, "A", a, ar, ac, lda, elem_size(at)) ||
                          !operand_on_device(fn, "B", bb, br, bc, ldb, elem_size(bt)))))
            return CUBLAS_STATUS_EXECUTION_FAILED;
        /* C = beta C first, beta == 0 without reading C (NaN included), as cuBLAS */
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                float *x = c + (size_t)j * ldc + i;
                *x = beta == 0.0f ? 0.0f : beta * *x;
            }
        if (!products)
            continue;
        const float *fa = as_float(blas_operand{a, at, ar, ac, lda}, ta_buf, round16);
        const float *fb = as_float(blas_operand{bb, bt, br, bc, ldb}, tb_buf, round16);
        cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                    tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, alpha, fa, lda, fb, ldb, 1.0f, c, ldc);
    }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc)
{
    return gemm_batched("cublasSgemm", h, ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, 0, B, CUDA_R_32F, ldb, 0, beta,
                        C, ldc, 0, 1);
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                         int k, const float *alpha, const float *A, int lda, long long sa,
                                         const float *B, int ldb, long long sb, const float *beta, float *C, int ldc,
                                         long long sc, int batch)
{
    return gemm_batched("cublasSgemmStridedBatched", h, ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, sa, B,
                        CUDA_R_32F, ldb, sb, beta, C, ldc, sc, batch);
}

static bool ex_types_supported(cudaDataType at, cudaDataType bt, cudaDataType ct, cublasComputeType_t compute)
{
    bool in_ok = (at == CUDA_R_16BF || at == CUDA_R_32F) && bt == at;
    bool compute_ok = compute == CUBLAS_COMPUTE_32F || compute == CUBLAS_COMPUTE_32F_FAST_16BF ||
                      compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    return in_ok && ct == CUDA_R_32F && compute_ok;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt,
                            int ldb, const void *beta, void *C, cudaDataType ct, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t)
{
    if (!ex_types_supported(at, bt, ct, compute))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    return gemm_batched("cublasGemmEx", h, ta, tb, m, n, k, (const float *)alpha, A, at, lda, 0, B, bt, ldb, 0,
                        (const float *)beta, (float *)C, ldc, 0, 1, compute == CUBLAS_COMPUTE_32F_FAST_16BF);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                          int k, const void *alpha, const void *A, cudaDataType at, int lda,
                                          long long sa, const void *B, cudaDataType bt, int ldb, long long sb,
                                          const void *beta, void *C, cudaDataType ct, int ldc, long long sc,
                                          int batch, cublasComputeType_t compute, cublasGemmAlgo_t)
{
    if (!ex_types_supported(at, bt, ct, compute))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    return gemm_batched("cublasGemmStridedBatchedEx", h, ta, tb, m, n, k, (const float *)alpha, A, at, lda, sa, B, bt,
                        ldb, sb, (const float *)beta, (float *)C, ldc, sc, batch, compute == CUBLAS_COMPUTE_32F_FAST_16BF);
}

/* ---- CUB radix sort --------------------------------------------------------------------------- */

/* The temporary storage: the permutation (n uint32) and a margin. */
static size_t sort_temp_bytes(size_t n)
{
    return n * sizeof(uint32_t) + 512;
}

cudaError_t emu_radix_sort_perm(void *temp, size_t *temp_bytes, const uint64_t *digits, size_t n,
                                uint32_t **perm_out)
{
    if (!temp) {
        *temp_bytes = sort_temp_bytes(n);
        return cudaSuccess;
    }
    if (*temp_bytes < sort_temp_bytes(n) || !emu_is_device_range(temp, *temp_bytes)) {
        fprintf(stderr, "cuda emulation: DeviceRadixSort::SortPairs: temporary storage of %zu bytes at %p: %s\n",
                *temp_bytes, temp,
                *temp_bytes < sort_temp_bytes(n) ? "smaller than the size query said"
                                                 : "not inside one cudaMalloc allocation");
        return last_error = cudaErrorInvalidValue;
    }
    memset(temp, 0xff, *temp_bytes);   /* CUB scribbles over all of it */
    uint32_t *perm = (uint32_t *)temp;
    for (size_t i = 0; i < n; i++)
        perm[i] = (uint32_t)i;
    std::stable_sort(perm, perm + n, [digits](uint32_t a, uint32_t b) { return digits[a] < digits[b]; });
    *perm_out = perm;
    return cudaSuccess;
}

cudaError_t emu_radix_sort_check(const void *in, const void *out, size_t bytes, const char *what)
{
    if (!emu_is_device_range(in, bytes) || !emu_is_device_range(out, bytes)) {
        fprintf(stderr, "cuda emulation: DeviceRadixSort::SortPairs: %s (%zu bytes, %p -> %p) not inside one "
                        "cudaMalloc allocation\n",
                what, bytes, in, out);
        return last_error = cudaErrorInvalidValue;
    }
    uintptr_t a = (uintptr_t)in, b = (uintptr_t)out;
    if (a < b + bytes && b < a + bytes) {
        fprintf(stderr, "cuda emulation: DeviceRadixSort::SortPairs: %s input and output overlap\n", what);
        return last_error = cudaErrorInvalidValue;
    }
    return cudaSuccess;
}
