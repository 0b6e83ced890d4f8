/* backend.h: picking the kernel backend (lib/kernels.h) by name, for the
 * tools' --device option:
 *
 *   const upc_kernels *K = upc_backend(name);     "cpu", "cuda" or "auto"
 *
 * "auto" is CUDA when this build has it and a device answers, else the CPU.
 * The CUDA backend lives in gpu/ (build/libupcyc_gpu.a); it is linked into
 * the tools only when built with CUDA=1, so libupcyc.a never needs it: the
 * references to kernels_cuda and kernels_cuda_allreduce_sum here are weak,
 * and the Makefile forces the GPU library's definitions in
 * (-Wl,--undefined=...) when it links it. */
#ifndef UPCYC_BACKEND_H
#define UPCYC_BACKEND_H

#include "kernels.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The backend for name, or fail (EX_USAGE) with one line: an unknown name,
 * "upcyc was built without CUDA (rebuild with make CUDA=1)", or
 * "no CUDA device: REASON". */
const upc_kernels *upc_backend(const char *name);

/* Backend K's table of the given GEMM precision (kernels.h): "fp32" or
 * "bf16"; fails (EX_USAGE) naming --precision on any other. */
const upc_kernels *upc_backend_precision(const upc_kernels *K, const char *precision);

/* The same without failing: NULL and the reason in why[n]. */
const upc_kernels *upc_backend_find(const char *name, char *why, size_t n);

/* Whether this build has the CUDA backend linked in (a device may still be
 * missing: upc_backend_find("cuda", ...) says). */
bool upc_backend_has_cuda(void);

/* The names --device accepts, for usage text: "cpu, cuda, auto". */
const char *upc_backend_names(void);

/* What K runs on, for logs: "cpu", or "cuda: NVIDIA H200 (sm_90, 132 SMs,
 * 139.8 GiB)". */
const char *upc_backend_describe(const upc_kernels *K);

/* The host collectives of a data-parallel job (train passes dist.h's),
 * handed to the backend so that the kernel libraries never link MPI. */
typedef struct {
    int rank, world;
    void (*sum_f32)(float *buf, size_t n);       /* in place, over every rank */
    void (*sum_i64)(int64_t *buf, size_t n);
    void (*broadcast)(void *buf, size_t n, int root);
} upc_collectives;

/* Sum backend K's buffer x[0..n) over the job's processes, in place, the
 * same result on every process; nothing in a world of one. CPU: c's host
 * sum on x. CUDA: an NCCL all-reduce of the device buffer when every
 * process can load libnccl.so.2 (at the first call, which decides for the
 * job; rank 0 says on stderr when it cannot), else a copy through pinned
 * host memory and c's sum. UPC_NCCL=0 never uses NCCL; UPC_NCCL=1 requires
 * it, even in a world of one (a test on one GPU). */
void upc_backend_allreduce_sum(const upc_kernels *K, float *x, size_t n, const upc_collectives *c);

/* Defined by gpu/ (CUDA builds only): the CUDA backend, or NULL with the
 * reason (no device, no driver) in why[n]. Call through upc_backend. */
const upc_kernels *kernels_cuda(char *why, size_t n);
/* Its bf16 table, once kernels_cuda succeeded (gpu/ only). */
const upc_kernels *kernels_cuda_bf16(void);
/* "NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB)" once kernels_cuda succeeded
 * (gpu/ only: call upc_backend_describe). */
const char *kernels_cuda_device_name(void);
/* upc_backend_allreduce_sum on a CUDA buffer (gpu/ only). */
void kernels_cuda_allreduce_sum(float *x, size_t n, const upc_collectives *c);

#endif
