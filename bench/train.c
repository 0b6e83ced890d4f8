/* bench/train.c: one model's training step on the CPU backend: median step
 * time, tokens/s, achieved GFLOP/s (mc_train_flops_per_token), peak RSS
 * against the bytes it must hold, and, with --sgemm, OpenBLAS SGEMM
 * GFLOP/s on a square product and on the model's FFN shape in the same
 * process. Built and run by bench/train; never part of make test.
 *
 *   bench-train CONFIG B T STEPS [--moe E K] [--sgemm]
 * prints one line of key=value pairs. */
#include "bench.h"
#include "model.h"
#include "model_config.h"
#include "optim.h"
#include "upcycle.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

/* GFLOP/s of C[m][n] = A[m][k] B[n][k]^T (an HF linear), median of 5. */
static double sgemm_gflops(const upc_kernels *K, int m, int n, int k)
{
    float *A = K->alloc(K, (size_t)m * k * 4), *B = K->alloc(K, (size_t)n * k * 4), *C = K->alloc(K, (size_t)m * n * 4);
    if (!A || !B || !C)
        upc_fail(EX_OSERR, "out of memory for the SGEMM baseline");
    K->fill(K, A, (size_t)m * k, 0.01f);
    K->fill(K, B, (size_t)n * k, 0.01f);
    double t[5];
    K->gemm(K, 0, 1, m, n, k, 1.0f, A, k, B, k, 0.0f, C, n);
    for (int r = 0; r < 5; r++) {
        double t0 = upc_now();
        K->gemm(K, 0, 1, m, n, k, 1.0f, A, k, B, k, 0.0f, C, n);
        t[r] = upc_now() - t0;
    }
    qsort(t, 5, sizeof *t, cmp_double);
    K->free(K, A), K->free(K, B), K->free(K, C);
    return 2.0 * m * n * k / t[2] * 1e-9;
}

int main(int argc, char **argv)
{
    kernels_cpu_prepare_process(argv);
    upc_init("bench-train");
    if (argc < 5)
        upc_usage_fail("usage: bench-train CONFIG B T STEPS [--moe E K] [--sgemm]");
    model_config dense, cfg;
    mc_load(&dense, argv[1]);
    int B = (int)upc_parse_int("B", argv[2], 1, 1 << 16), T = (int)upc_parse_int("T", argv[3], 1, 1 << 20);
    int steps = (int)upc_parse_int("STEPS", argv[4], 1, 1000);
    int E = 0, kk = 0;
    bool sgemm = false;
    for (int i = 5; i < argc; i++) {
        if (strcmp(argv[i], "--moe") == 0 && i + 2 < argc) {
            E = (int)upc_parse_int("E", argv[++i], 1, 1024);
            kk = (int)upc_parse_int("K", argv[++i], 1, E);
        } else if (strcmp(argv[i], "--sgemm") == 0) {
            sgemm = true;
        } else {
            upc_usage_fail("unknown argument '%s'", argv[i]);
        }
    }
    if (E) {
        upcycle_options o;
        upcycle_options_init(&o);
        o.experts = E;
        o.top_k = kk;
        upcycle_config(&dense, &o, &cfg, argv[1]);
    } else {
        mc_copy(&cfg, &dense);
    }
    const upc_kernels *K = kernels_cpu();
    model *m = model_create(K, &cfg);
    model_init_weights(m, 1);
    optim_config oc;
    optim_config_default(&oc, OPTIM_ADAMW);
    optim *opt = optim_create(m, &oc);
    size_t N = (size_t)B * T;
    int32_t *ids = upc_malloc(N * sizeof *ids), *tg = upc_malloc(N * sizeof *tg);
    uint64_t rng = 42;
    for (size_t i = 0; i < N; i++) {
        ids[i] = (int32_t)(upc_splitmix64(&rng) % (uint64_t)cfg.vocab_size);
        tg[i] = (int32_t)(upc_splitmix64(&rng) % (uint64_t)cfg.vocab_size);
    }
    double *t = upc_malloc((size_t)(steps + 1) * sizeof *t);
    for (int s = 0; s <= steps; s++) {   /* step 0 warms up */
        double t0 = upc_now();
        model_zero_grads(m);
        model_loss l;
        model_forward(m, ids, tg, B, T, &l);
        model_backward(m, 1.0f);
        double gn = optim_grad_norm(opt, m);
        optim_step(opt, m, 1e-4, gn > 1.0 ? 1.0 / gn : 1.0);
        t[s] = upc_now() - t0;
    }
    qsort(t + 1, (size_t)steps, sizeof *t, cmp_double);
    double step_s = t[1 + steps / 2];
    double flops = mc_train_flops_per_token(&cfg, T) * (double)N;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    size_t state = m->n_floats * sizeof(float) * (oc.kind == OPTIM_ADAMW ? 4 : 3);
    size_t need = state + model_activation_bytes(m);
    mc_params p = mc_param_count(&cfg);
    printf("params=%lld active=%lld step_s=%.4f tokens_per_s=%.1f gflops=%.2f peak_rss_mb=%.1f "
           "state_mb=%.1f activations_mb=%.1f need_mb=%.1f rss_ratio=%.3f",
           (long long)p.total, (long long)p.active, step_s, (double)N / step_s, flops / step_s * 1e-9,
           ru.ru_maxrss / 1024.0, state / 1048576.0, model_activation_bytes(m) / 1048576.0, need / 1048576.0,
           ru.ru_maxrss * 1024.0 / (double)need);
    if (sgemm)
        printf(" sgemm_square_gflops=%.2f sgemm_ffn_gflops=%.2f", sgemm_gflops(K, 2048, 2048, 2048),
               sgemm_gflops(K, (int)N, (int)cfg.intermediate_size, (int)cfg.hidden_size));
    printf("\n");
    free(t), free(ids), free(tg);
    optim_free(opt);
    model_free(m);
    mc_free(&cfg);
    mc_free(&dense);
    return 0;
}
