/* test_gpu_backend.c: lib/backend.h on any machine: "cpu" works (a GEMM
 * through it), an unknown name fails with EX_USAGE naming it, "cuda" either
 * gives the CUDA table (a device answered) or fails with EX_USAGE and the
 * reason ("built without CUDA" or "no CUDA device: ..."), and "auto" falls
 * back to the CPU when CUDA is not usable; the all-reduce of a backend's
 * buffer (upc_backend_allreduce_sum). Prints which case it saw.
 * `test_gpu_backend nccl`: NCCL in a world of one (exit 77 without a GPU
 * or NCCL, saying which). */
#include "backend.h"
#include "test_harness.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

static void pick(const void *arg)
{
    upc_backend((const char *)arg);
}

/* A fake job of two whose host sum doubles: what the backends hand it. */
static void twice_f32(float *buf, size_t n)
{
    for (size_t i = 0; i < n; i++)
        buf[i] *= 2;
}

static void twice_i64(int64_t *buf, size_t n)
{
    for (size_t i = 0; i < n; i++)
        buf[i] *= 2;
}

/* upc_backend_allreduce_sum: the CPU hands its buffer to the host sum in a
 * job of two and leaves it alone in a world of one; on a GPU, the host
 * path (UPC_NCCL=0) goes through the same sum, and NCCL in a world of one
 * (UPC_NCCL=1) leaves the buffer as it was, where libnccl.so.2 is there. */
static void allreduce_on(const upc_kernels *K, int world, float want_scale)
{
    enum { N = 1000 };
    float h[N], back[N];
    for (int i = 0; i < N; i++)
        h[i] = (float)i - 500.25f;
    float *d = K->alloc(K, sizeof h);
    K->upload(K, d, h, sizeof h);
    upc_collectives c = {.rank = 0, .world = world, .sum_f32 = twice_f32, .sum_i64 = twice_i64};
    upc_backend_allreduce_sum(K, d, N, &c);
    K->download(K, back, d, sizeof back);
    int bad = 0;
    for (int i = 0; i < N; i++)
        bad += back[i] != want_scale * h[i];
    CHECK_MSG(bad == 0, "%s allreduce in a world of %d: %d of %d elements wrong", K->name, world, bad, N);
    K->free(K, d);
}

static void test_allreduce(const upc_kernels *C, const upc_kernels *G)
{
    allreduce_on(C, 1, 1.0f);
    allreduce_on(C, 2, 2.0f);
    if (!G)
        return;
    setenv("UPC_NCCL", "0", 1);
    allreduce_on(G, 2, 2.0f);
    /* the host path is chosen once for the job: NCCL needs a fresh process */
    void *lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        printf("nccl: not loadable here (%s): training sums gradients through host memory\n", dlerror());
        return;
    }
    dlclose(lib);
    printf("nccl: libnccl.so.2 loads (test_gpu_backend nccl checks it)\n");
}

/* test_gpu_backend nccl: NCCL in a world of one sums in place. */
static int test_nccl(void)
{
    char why[320];
    const upc_kernels *G = upc_backend_find("cuda", why, sizeof why);
    if (!G) {
        printf("%s\n", why);   /* "upcyc was built without CUDA ..." or "no CUDA device: ..." */
        return 77;
    }
    void *lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        printf("libnccl.so.2 is not loadable here: %s\n", dlerror());
        return 77;
    }
    dlclose(lib);
    setenv("UPC_NCCL", "1", 1);
    allreduce_on(G, 1, 1.0f);
    if (failures)
        return 1;
    printf("test_gpu_backend nccl: a communicator of one leaves the buffer as it was\n");
    return 0;
}

int main(int argc, char **argv)
{
    upc_init("test_gpu_backend");
    if (argc == 2 && strcmp(argv[1], "nccl") == 0)
        return test_nccl();
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
    test_allreduce(K, G);
    const upc_kernels *A = upc_backend("auto");
    CHECK(A == (G ? G : kernels_cpu()));
    if (failures) {
        fprintf(stderr, "test_gpu_backend: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("test_gpu_backend: all checks passed\n");
    return 0;
}
