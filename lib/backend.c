/* backend.c: the backend by name, and the all-reduce of a backend's
 * buffer. kernels_cuda is a weak reference: in a build without CUDA it
 * stays NULL and "cuda" is refused with a reason; a CUDA build links
 * build/libupcyc_gpu.a with -Wl,--undefined=kernels_cuda (and
 * kernels_cuda_allreduce_sum), which pulls the definitions in (see
 * backend.h). */
#include "backend.h"
#include "kernels_profile.h"
#include "util.h"

#include <stdio.h>
#include <string.h>

#pragma weak kernels_cuda
#pragma weak kernels_cuda_bf16
#pragma weak kernels_cuda_device_name
#pragma weak kernels_cuda_allreduce_sum

bool upc_backend_has_cuda(void)
{
    return kernels_cuda != NULL;
}

const char *upc_backend_names(void)
{
    return "cpu, cuda, auto";
}

const char *upc_backend_describe(const upc_kernels *K)
{
    static char text[400];
    if (!K || strcmp(K->name, "cuda") != 0 || !kernels_cuda_device_name)
        return K ? K->name : "none";
    snprintf(text, sizeof text, "cuda: %s", kernels_cuda_device_name());
    return text;
}

static const upc_kernels *find(const char *name, char *why, size_t n)
{
    char dummy[1];
    if (!why || n == 0) {
        why = dummy;
        n = sizeof dummy;
    }
    why[0] = 0;
    if (!name || strcmp(name, "cpu") == 0)
        return kernels_cpu();
    bool want_cuda = strcmp(name, "cuda") == 0, want_auto = strcmp(name, "auto") == 0;
    if (!want_cuda && !want_auto) {
        snprintf(why, n, "unknown device '%s' (expected one of: %s)", name, upc_backend_names());
        return NULL;
    }
    if (!upc_backend_has_cuda()) {
        if (want_auto)
            return kernels_cpu();
        snprintf(why, n, "upcyc was built without CUDA (rebuild with make CUDA=1)");
        return NULL;
    }
    char reason[256];
    const upc_kernels *K = kernels_cuda(reason, sizeof reason);
    if (K)
        return K;
    if (want_auto)
        return kernels_cpu();
    snprintf(why, n, "no CUDA device: %s", reason);
    return NULL;
}

/* Every table handed out is wrapped in kernels_profile.c's timer while UPC_PROFILE=1. */
const upc_kernels *upc_backend_find(const char *name, char *why, size_t n)
{
    return upc_profile_wrap(find(name, why, n));
}

static const upc_kernels *precision_table(const upc_kernels *K, const char *precision)
{
    bool bf16 = strcmp(precision, "bf16") == 0;
    if (!bf16 && strcmp(precision, "fp32") != 0)
        upc_fail(EX_USAGE, "--precision %s: expected fp32 or bf16", precision);
    if (strcmp(K->precision, precision) == 0)
        return K;
    if (strcmp(K->name, "cpu") == 0)
        return bf16 ? kernels_cpu_bf16() : kernels_cpu();
    /* a CUDA table exists only once kernels_cuda succeeded */
    char why[256];
    const upc_kernels *C = bf16 ? kernels_cuda_bf16() : kernels_cuda(why, sizeof why);
    if (!C)
        upc_fail(EX_SOFTWARE, "--precision %s: no %s table of the %s backend", precision, precision, K->name);
    return C;
}

const upc_kernels *upc_backend_precision(const upc_kernels *K, const char *precision)
{
    return upc_profile_wrap(precision_table(upc_profile_unwrap(K), precision));
}

const upc_kernels *upc_backend(const char *name)
{
    char why[320];
    const upc_kernels *K = upc_backend_find(name, why, sizeof why);
    if (!K)
        upc_fail(EX_USAGE, "--device %s: %s", name, why);
    return K;
}

void upc_backend_allreduce_sum(const upc_kernels *K, float *x, size_t n, const upc_collectives *c)
{
    if (strcmp(K->name, "cpu") == 0) {
        if (c->world > 1)
            c->sum_f32(x, n);
        return;
    }
    if (!kernels_cuda_allreduce_sum)
        upc_fail(EX_SOFTWARE, "allreduce: no %s backend in this build", K->name);
    kernels_cuda_allreduce_sum(x, n, c);
}
