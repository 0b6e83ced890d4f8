/* bench/serve.c: the decode path's speed on the CPU backend, in one process:
 * - read bandwidth (a parallel sum over 1 GiB), the roofline of decoding;
 * - batch-1 decode tokens/s of a dense model and its ratio to the roofline
 *   (weight bytes read per token / bandwidth);
 * - decode throughput as the batch grows, dense and its 8-expert top-2
 *   upcycle, and their ratio;
 * - single-thread OpenBLAS SGEMV against the engine's skinny GEMM on one
 *   FFN weight, as effective GB/s.
 * Built and run by bench/serve; never part of make test.
 *   bench-serve CONFIG   prints key=value lines */
#include "bench.h"
#include "engine.h"
#include "model.h"
#include "model_config.h"
#include "upcycle.h"
#include "util.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void openblas_set_num_threads(int);

/* GB/s of reading a buffer of `bytes` over and over on every thread: the
 * same size as the weights, so the same cache regime as decoding them. */
static double read_bandwidth(size_t bytes)
{
    size_t n = bytes / sizeof(float) / 16 * 16;
    float *a = upc_malloc(n * sizeof *a);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        a[i] = 1.0f;
    double t[5];
    volatile float sink = 0;
    int reps = bytes < (256u << 20) ? 8 : 1;
    for (int r = 0; r < 5; r++) {
        double t0 = upc_now();
        float s = 0;
        for (int k = 0; k < reps; k++) {
#pragma omp parallel reduction(+ : s)
            {
                float acc[16] = {0};   /* 16 independent lanes: vectorised, memory-bound */
#pragma omp for schedule(static)
                for (size_t i = 0; i < n; i += 16)
                    for (int j = 0; j < 16; j++)
                        acc[j] += a[i + j];
                for (int j = 0; j < 16; j++)
                    s += acc[j];
            }
        }
        t[r] = (upc_now() - t0) / reps;
        sink += s;
    }
    free(a);
    return (double)n * sizeof(float) / median(t, 5) / 1e9;
}

/* Decode tokens/s with `batch` sequences, each prefilled 16 tokens. */
static double decode_rate(model *m, int batch, int steps)
{
    engine_config c;
    engine_config_default(&c);
    c.max_seqs = batch;
    c.max_rows = batch * 16 > 64 ? batch * 16 : 64;
    c.n_blocks = (size_t)batch * (size_t)((16 + steps + 16) / 16 + 1);
    engine *e = engine_create(m, &c);
    int *seqs = upc_malloc((size_t)c.max_rows * sizeof *seqs);
    int32_t *ids = upc_malloc((size_t)c.max_rows * sizeof *ids);
    bool *want = upc_malloc((size_t)c.max_rows * sizeof *want);
    float *logits = upc_malloc((size_t)batch * m->V * sizeof *logits);
    int n = 0;
    for (int b = 0; b < batch; b++) {
        int s = engine_open(e);
        for (int t = 0; t < 16; t++, n++)
            seqs[n] = s, ids[n] = (int32_t)((b * 31 + t * 7) % m->V), want[n] = t == 15;
    }
    engine_step(e, seqs, ids, n, want, logits);
    for (int b = 0; b < batch; b++)
        seqs[b] = b, ids[b] = 1, want[b] = true;
    engine_step(e, seqs, ids, batch, want, logits);   /* warm */
    double t0 = upc_now();
    for (int s = 0; s < steps; s++)
        engine_step(e, seqs, ids, batch, want, logits);
    double rate = (double)batch * steps / (upc_now() - t0);
    free(seqs), free(ids), free(want), free(logits);
    engine_free(e);
    return rate;
}

int main(int argc, char **argv)
{
    kernels_cpu_prepare_process(argv);
    upc_init("bench-serve");
    if (argc != 2)
        upc_usage_fail("usage: bench-serve CONFIG");
    model_config dense, moe;
    mc_load(&dense, argv[1]);
    upcycle_options o;
    upcycle_options_init(&o);
    o.experts = 8;
    o.top_k = 2;
    upcycle_config(&dense, &o, &moe, argv[1]);
    model *m = model_create(kernels_cpu(), &dense);
    model_init_weights(m, 1);
    double wbytes = (double)mc_param_count(&dense).total * 4;
    double bw = read_bandwidth((size_t)wbytes), dram = read_bandwidth(1ULL << 30);
    printf("read_bandwidth_gbs=%.2f (a buffer the size of the weights) read_bandwidth_1gib_gbs=%.2f threads=%d\n", bw,
           dram, omp_get_max_threads());
    /* tied embeddings: the embedding row read is negligible, the LM head reads the table once */
    double r1 = decode_rate(m, 1, 64);
    double roof = bw * 1e9 / wbytes;
    printf("dense_weight_mb=%.1f batch1_tokens_per_s=%.2f roofline_tokens_per_s=%.2f roofline_ratio=%.3f\n",
           wbytes / 1e6, r1, roof, r1 / roof);

    model *mm = model_create(kernels_cpu(), &moe);
    model_init_weights(mm, 1);
    int batches[] = {1, 4, 16, 64};
    for (size_t i = 0; i < sizeof batches / sizeof *batches; i++) {
        int steps = batches[i] >= 16 ? 8 : 32;
        double d = decode_rate(m, batches[i], steps), x = decode_rate(mm, batches[i], steps);
        printf("batch=%d dense_tokens_per_s=%.1f moe8x2_tokens_per_s=%.1f moe_over_dense=%.3f\n", batches[i], d, x,
               x / d);
    }

    /* a 64 MB weight (past the caches): single-thread SGEMV against the skinny GEMM */
    int F = 8192, dd = 2048;
    float *W = upc_malloc((size_t)F * dd * sizeof *W), *x = upc_malloc((size_t)dd * sizeof *x),
          *y = upc_malloc((size_t)F * sizeof *y);
    for (size_t i = 0; i < (size_t)F * dd; i++)
        W[i] = 0.01f;
    for (int i = 0; i < dd; i++)
        x[i] = 1.0f;
    const upc_kernels *K = kernels_cpu();
    double t[5];
    for (int r = 0; r < 5; r++) {
        double t0 = upc_now();
        for (int k = 0; k < 20; k++)
            K->gemm(K, 0, 1, 1, F, dd, 1.0f, x, dd, W, dd, 0.0f, y, F);
        t[r] = (upc_now() - t0) / 20;
    }
    double ours = (double)F * dd * 4 / median(t, 5) / 1e9;
    openblas_set_num_threads(1);
    for (int r = 0; r < 5; r++) {
        double t0 = upc_now();
        for (int k = 0; k < 20; k++)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, F, dd, 1.0f, W, dd, x, 1, 0.0f, y, 1);
        t[r] = (upc_now() - t0) / 20;
    }
    double blas1 = (double)F * dd * 4 / median(t, 5) / 1e9;
    printf("weight_%dx%d skinny_gemm_gbs=%.2f openblas_sgemv_1thread_gbs=%.2f\n", F, dd, ours, blas1);
    free(W), free(x), free(y);
    model_free(m);
    model_free(mm);
    mc_free(&dense);
    mc_free(&moe);
    return 0;
}
