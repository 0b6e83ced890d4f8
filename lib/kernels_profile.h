/* kernels_profile.h: UPC_PROFILE=1 times every kernel call of the tables
 * backend.h hands out and prints a per-kernel profile on stderr at exit
 * (kernels_profile.c says how to read it). */
#ifndef UPCYC_KERNELS_PROFILE_H
#define UPCYC_KERNELS_PROFILE_H

#include "kernels.h"

#include <stdbool.h>

/* Whether UPC_PROFILE=1 (read once; any value but 1, 0 or empty fails with EX_USAGE). */
bool upc_profile_enabled(void);
/* K wrapped in a timing table while profiling (the same wrapper for the same
 * table), else K itself. */
const upc_kernels *upc_profile_wrap(const upc_kernels *K);
/* The table a wrapper times, or K when it is not one. */
const upc_kernels *upc_profile_unwrap(const upc_kernels *K);

#endif
