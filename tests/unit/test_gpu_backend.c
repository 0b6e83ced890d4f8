/* test_gpu_backend.c: lib/backend.h on any machine: "cpu" works (a GEMM
 * through it), an unknown name fails with EX_USAGE naming it, "cuda" either
 * gives the CUDA table (a device answered) or fails with EX_USAGE and the
 * reason ("built without CUDA" or "no CUDA device: ..."), and "auto" falls
 * back to the CPU when CUDA is not usable. Prints which case it saw. */
#include "backend.h"
#include "test_harness.h"

#include <string.h>

static void pick(const void *arg)
{
    upc_backend((const char *)arg);
}

int main(void)
{
    upc_init("test_gpu_backend");
    const upc_kernels *K = upc_backend("cpu");
    CHECK(K && strcmp(K->name, "cpu") == 0);
    float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {1, 0, 0, 1, 1, 1}, c[4];
    float *dA = K->alloc(K, sizeof a), *dB = K->alloc(K, sizeof b), *dC = K->alloc(K, sizeof c);
    K->upload(K, dA, a, sizeof a);
    K->upload(K, dB, b, sizeof b);
    K->gemm(K, 0, 0, 2, 2, 3, 1.0f, dA, 3, dB, 2, 0.0f, dC, 2);   /* [2x3][3x2] */
    K->download(K, c, dC, sizeof c);
    CHECK_MSG(c[0] == 4 && c[1] == 5 && c[2] == 10 && c[3] == 11, "cpu gemm gave %g %g %g %g", c[0], c[1], c[2], c[3]);
    K->free(K, dA), K->free(K, dB), K->free(K, dC);

    EXPECT_FAIL(pick, "tpu", EX_USAGE, "--device tpu", "unknown device 'tpu'", "cpu, cuda, auto");

    char why[320];
    const upc_kernels *G = upc_backend_find("cuda", why, sizeof why);
    if (!upc_backend_has_cuda()) {
        CHECK(G == NULL && strstr(why, "built without CUDA"));
        EXPECT_FAIL(pick, "cuda", EX_USAGE, "--device cuda: upcyc was built without CUDA");
        printf("cuda: not in this build (%s)\n", why);
    } else if (!G) {
        CHECK_MSG(strncmp(why, "no CUDA device: ", 16) == 0 && strlen(why) > 16, "reason: %s", why);
        EXPECT_FAIL(pick, "cuda", EX_USAGE, "--device cuda: no CUDA device: ");
        printf("cuda: built in, %s\n", why);
    } else {
        CHECK(strcmp(G->name, "cuda") == 0);
        printf("cuda: device %s\n", upc_backend_describe(G));
    }
    const upc_kernels *A = upc_backend("auto");
    CHECK(A == (G ? G : kernels_cpu()));
    if (failures) {
        fprintf(stderr, "test_gpu_backend: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("test_gpu_backend: all checks passed\n");
    return 0;
}
