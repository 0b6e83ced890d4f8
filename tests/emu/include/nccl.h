/* nccl.h (emulation): the types gpu/cuda_allreduce.cu names. The emulation
 * has no libnccl.so.2, so the file takes its host-memory path. */
#ifndef UPCYC_EMU_NCCL_H
#define UPCYC_EMU_NCCL_H

#include "cuda_runtime.h"

typedef struct ncclComm *ncclComm_t;
typedef struct {
    char internal[128];
} ncclUniqueId;
typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5
} ncclResult_t;
typedef enum { ncclInt32 = 2, ncclFloat32 = 7, ncclFloat64 = 8 } ncclDataType_t;
typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3 } ncclRedOp_t;

#endif
