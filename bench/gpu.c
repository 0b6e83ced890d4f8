/* bench/gpu.c: the CUDA backend's speed on one GPU, for bench/gpu (never
 * part of make test). One line of key=value pairs per run:
 *
 *   bench-gpu probe                        exit 77 and the reason without a device
 *   bench-gpu train SHAPE B T STEPS        median training step (forward,
 *                                          backward, clip, AdamW): tokens/s,
 *                                          achieved TFLOP/s (mc_train_flops_per_token),
 *                                          MFU against PEAK_TFLOPS (default 989,
 *                                          H100/H200 SXM dense bf16); GEMMs in
 *                                          PRECISION (fp32, the default, or bf16)
 *   bench-gpu decode SHAPE CONTEXT STEPS   batch-1 engine decode after a
 *                                          CONTEXT-token prefill: tokens/s and
 *                                          GB/s (weights + KV read per token)
 *                                          against a device-to-device copy's
 *                                          GB/s measured in the same process;
 *                                          PRECISION=bf16: weights read from
 *                                          their bf16 copy (2 bytes each)
 * SHAPE is a lib/shapes.h name (436m, 436m-moe8x2, ...), random weights. */
#include "bench.h"
#include "backend.h"
#include "engine.h"
#include "model.h"
#include "model_config.h"
#include "optim.h"
#include "shapes.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const upc_kernels *cuda_or_skip(void)
{
    char why[320];
    const upc_kernels *K = upc_backend_find("cuda", why, sizeof why);
    if (!K) {
        printf("%s\n", why);
        exit(77);
    }
    return K;
}

static void shape(const char *name, model_config *c)
{
    if (!shape_config(name, c))
        upc_usage_fail("unknown shape '%s' (known: %s)", name, shape_names());
}

static void bench_train(const char *name, int B, int T, int steps)
{
    const upc_kernels *K = cuda_or_skip();
    K = upc_backend_precision(K, getenv("PRECISION") ? getenv("PRECISION") : "fp32");
    model_config cfg;
    shape(name, &cfg);
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
    double *t = upc_malloc((size_t)(steps + 1) * sizeof *t), loss = 0;
    for (int s = 0; s <= steps; s++) {   /* step 0 warms up */
        K->sync(K);
        double t0 = upc_now();
        model_zero_grads(m);
        model_loss l;
        model_forward(m, ids, tg, B, T, &l);
        model_backward(m, 1.0f);
        double gn = optim_grad_norm(opt, m);
        optim_step(opt, m, 1e-4, gn > 1.0 ? 1.0 / gn : 1.0);
        K->sync(K);
        t[s] = upc_now() - t0;
        loss = l.total;
    }
    double step_s = median(t + 1, steps);
    double flops = mc_train_flops_per_token(&cfg, T) * (double)N;
    double peak = getenv("PEAK_TFLOPS") ? atof(getenv("PEAK_TFLOPS")) : 989.0;
    mc_params p = mc_param_count(&cfg);
    printf("shape=%s precision=%s params=%lld active=%lld B=%d T=%d step_s=%.4f tokens_per_s=%.0f tflops=%.2f "
           "mfu_bf16_peak=%.4f peak_tflops=%.0f loss=%.4f activations_gb=%.2f\n",
           name, K->precision, (long long)p.total, (long long)p.active, B, T, step_s, (double)N / step_s, flops / step_s * 1e-12,
           flops / step_s * 1e-12 / peak, peak, loss, model_activation_bytes(m) / 1e9);
    free(t), free(ids), free(tg);
    optim_free(opt);
    model_free(m);
    mc_free(&cfg);
}

/* GB/s of a device-to-device copy (bytes read + bytes written), median of 5. */
static double copy_gbs(const upc_kernels *K, size_t bytes)
{
    void *a = K->alloc(K, bytes), *b = K->alloc(K, bytes);
    if (!a || !b)
        upc_fail(EX_OSERR, "out of device memory for the copy baseline");
    double t[5];
    K->copy(K, b, a, bytes);
    K->sync(K);
    for (int r = 0; r < 5; r++) {
        double t0 = upc_now();
        K->copy(K, b, a, bytes);
        K->sync(K);
        t[r] = upc_now() - t0;
    }
    K->free(K, a), K->free(K, b);
    return 2.0 * bytes / median(t, 5) * 1e-9;
}

static void bench_decode(const char *name, int context, int steps)
{
    const upc_kernels *K = cuda_or_skip();
    K = upc_backend_precision(K, getenv("PRECISION") ? getenv("PRECISION") : "fp32");
    model_config cfg;
    shape(name, &cfg);
    model *m = model_create(K, &cfg);
    model_init_weights(m, 1);
    engine_config ec;
    engine_config_default(&ec);
    ec.max_seqs = 2;
    ec.max_rows = context;
    ec.max_len = context + steps + 8;
    ec.n_blocks = (size_t)(context + steps + 8 + ec.block_size - 1) / ec.block_size + 2;
    engine *e = engine_create(m, &ec);
    int V = (int)cfg.vocab_size;
    int32_t *ids = upc_malloc((size_t)context * sizeof *ids);
    int *seqs = upc_malloc((size_t)context * sizeof *seqs);
    bool *want = upc_calloc((size_t)context, sizeof *want);
    uint64_t rng = 3;
    int s = engine_open(e);
    for (int i = 0; i < context; i++)
        ids[i] = (int32_t)(upc_splitmix64(&rng) % (uint64_t)V), seqs[i] = s;
    want[context - 1] = true;
    float *lg = upc_malloc((size_t)V * sizeof *lg);
    engine_step(e, seqs, ids, context, want, lg);
    double *t = upc_malloc((size_t)steps * sizeof *t);
    bool w1 = true;
    for (int i = 0; i < steps; i++) {
        int32_t tok = (int32_t)(upc_splitmix64(&rng) % (uint64_t)V);
        K->sync(K);
        double t0 = upc_now();
        engine_step(e, &s, &tok, 1, &w1, lg);   /* logits downloaded: waits for the device */
        t[i] = upc_now() - t0;
    }
    double step_s = median(t, steps);
    mc_params p = mc_param_count(&cfg);
    /* bytes a decode step must read: the active weights (fp32, or their
     * bf16 copy) and the KV cache up to the current length */
    double kv = (double)engine_kv_bytes_per_token(m) * (context + steps / 2);
    double weights = (double)p.active * (m->round_weights ? 2.0 : 4.0);
    double gbs = (weights + kv) / step_s * 1e-9;
    double copy = copy_gbs(K, (size_t)1 << 30);
    printf("shape=%s precision=%s active_params=%lld context=%d step_ms=%.3f tokens_per_s=%.1f read_gb_per_token=%.3f gbs=%.1f "
           "copy_gbs=%.1f ratio=%.3f\n",
           name, K->precision, (long long)p.active, context, step_s * 1e3, 1.0 / step_s, (weights + kv) * 1e-9, gbs, copy, gbs / copy);
    free(t), free(lg), free(ids), free(seqs), free(want);
    engine_free(e);
    model_free(m);
    mc_free(&cfg);
}

int main(int argc, char **argv)
{
    upc_init("bench-gpu");
    if (argc >= 2 && strcmp(argv[1], "probe") == 0) {
        printf("%s\n", upc_backend_describe(cuda_or_skip()));
        return 0;
    }
    if (argc == 6 && strcmp(argv[1], "train") == 0) {
        bench_train(argv[2], (int)upc_parse_int("B", argv[3], 1, 1 << 16), (int)upc_parse_int("T", argv[4], 1, 1 << 20),
                    (int)upc_parse_int("STEPS", argv[5], 1, 1000));
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "decode") == 0) {
        bench_decode(argv[2], (int)upc_parse_int("CONTEXT", argv[3], 1, 1 << 20),
                     (int)upc_parse_int("STEPS", argv[4], 1, 100000));
        return 0;
    }
    upc_usage_fail("usage: bench-gpu probe | train SHAPE B T STEPS | decode SHAPE CONTEXT STEPS");
}
