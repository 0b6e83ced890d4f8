/* test_model: the model of lib/model.h on the CPU backend.
 *
 *   test_model SCRATCH_DIR     all checks; exit 1 naming each failed check
 *
 * - finite differences against the backward for every parameter tensor
 *   (sampled elements and a random direction over the whole tensor): dense
 *   untied and tied; MoE E4 k2 renormalised and tied; MoE with raw top-k
 *   probs; MoE with every target ignored (only the aux losses drive the
 *   gradient); dense and MoE blocks mixed (upcyc.moe_layers);
 * - every tensor gets a gradient; gradients accumulate across backwards;
 * - E=1 k=1 MoE = the dense model (bit for bit here); an upcycled model
 *   (identical experts, random router) = its dense parent within 1e-5 for
 *   E4 k2 and E8 k1 renormalised and E4 k4 raw, and differs for E4 k2 raw;
 * - a fixed-seed golden loss at init, cross-checked against ln(vocab) and a
 *   cross-entropy recomputed from the logits; determinism; init statistics;
 * - save/load: F32 bit-exact, BF16 sharded, one file; a digest of one
 *   step's gradient bits (compared across thread counts by model.bats);
 * - bad checkpoints (missing, misshapen tensor), token ids and targets out of
 *   range, backward before forward, capacity factor: one line, right code. */
#include "kernels.h"
#include "model.h"
#include "model_config.h"
#include "safetensors.h"
#include "test_harness.h"
#include "util.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *scratch;
enum { B = 2, T = 5, VOCAB = 37 };

/* The tiny config of the brief: vocab 37, d 16, 2 layers, 4 heads, 2 kv
 * heads, ffn 24; E experts top-k (E = 0: dense). */
static void tiny_config(model_config *c, int E, int kk, bool tied)
{
    mc_init(c, E > 0);
    c->vocab_size = VOCAB;
    c->hidden_size = 16;
    c->intermediate_size = 24;
    c->num_hidden_layers = 2;
    c->num_attention_heads = 4;
    c->num_key_value_heads = 2;
    c->max_position_embeddings = 64;
    c->tie_word_embeddings = tied;
    c->rope_theta = 10000.0;                    /* Llama's defaults for both kinds */
    c->rms_norm_eps = 1e-6;
    if (E > 0) {
        c->num_local_experts = E;
        c->num_experts_per_tok = kk;
    }
    mc_validate(c, "tiny");
}

static void batch(uint64_t seed, int32_t *ids, int32_t *targets)
{
    uint64_t s = seed;
    for (int i = 0; i < B * T; i++) {
        ids[i] = (int32_t)(upc_splitmix64(&s) % VOCAB);
        targets[i] = (int32_t)(upc_splitmix64(&s) % VOCAB);
    }
    targets[3] = -1;            /* an ignored target in every batch */
}

/* The forwards of the gradient checks. With jitter_test set each one
 * jitters its MoE inputs with the same key, so the loss stays a smooth
 * function of the parameters that finite differences can follow. */
static bool jitter_test;
static const uint64_t jitter_test_key = 5;
static void forward(model *m, const int32_t *ids, const int32_t *targets, int b, int t, model_loss *l)
{
    if (jitter_test)
        model_jitter_next(m, jitter_test_key);
    model_forward(m, ids, targets, b, t, l);
}

/* Multiply every matmul weight by `gain` (bigger weights, gradients well
 * above fp32 noise for the finite differences) and perturb the norms. */
static void scale_weights(model *m, float gain, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        float *h = upc_malloc(t->numel * sizeof *h);
        model_get_param(m, t, h);
        for (size_t j = 0; j < t->numel; j++)
            h[j] = t->ndim == 1 ? 1.0f + 0.3f * ((float)(upc_splitmix64(&s) >> 40) / 16777216.0f - 0.5f)
                                : h[j] * gain;
        model_set_param(m, t, h);
        free(h);
    }
}

/* The top-k choices of every MoE block of the last forward, [L][N*kk]. */
static void routing(const model *m, int32_t *out)
{
    for (int l = 0; l < m->L; l++)
        if (m->layers[l].moe)
            model_get_routing(m, l, out + (size_t)l * B * T * m->kk);
}

static bool same_routing(const model *m, const int32_t *a)
{
    if (!m->n_moe_layers)
        return true;
    size_t n = (size_t)m->L * B * T * m->kk;
    int32_t *now = upc_calloc(n, sizeof *now);
    routing(m, now);
    bool same = memcmp(a, now, n * sizeof *a) == 0;
    free(now);
    return same;
}

/* Loss with tensor t set to p + h*dir (restored after); *flip is set when
 * the routing differs from route0 (the loss is not smooth across that). */
static double loss_along(model *m, const model_tensor *t, const float *p, const float *dir, double h,
                         const int32_t *ids, const int32_t *targets, const int32_t *route0, bool *flip)
{
    float *q = upc_malloc(t->numel * sizeof *q);
    for (size_t j = 0; j < t->numel; j++)
        q[j] = (float)(p[j] + h * dir[j]);
    model_set_param(m, t, q);
    model_loss l;
    forward(m, ids, targets, B, T, &l);
    *flip = *flip || !same_routing(m, route0);
    model_set_param(m, t, p);
    free(q);
    return l.total;
}

/* d loss / dh along dir by central differences, Richardson-extrapolated
 * ((4 D(h) - D(2h)) / 3 cancels the h^2 term). The step is shrunk (3 tries)
 * while it changes the routing; false when every try did. */
static bool fd_along(model *m, const model_tensor *t, const float *p, const float *dir, double h,
                     const int32_t *ids, const int32_t *targets, const int32_t *route0, double *fd,
                     double *h_used)
{
    for (int attempt = 0; attempt < 3; attempt++, h /= 3.0) {
        bool flip = false;
        double d1 = (loss_along(m, t, p, dir, h, ids, targets, route0, &flip) -
                     loss_along(m, t, p, dir, -h, ids, targets, route0, &flip)) / (2.0 * h);
        double d2 = (loss_along(m, t, p, dir, 2 * h, ids, targets, route0, &flip) -
                     loss_along(m, t, p, dir, -2 * h, ids, targets, route0, &flip)) / (4.0 * h);
        if (!flip) {
            *fd = (4.0 * d1 - d2) / 3.0;
            *h_used = h;
            return true;
        }
    }
    return false;
}

/* Finite differences against model_backward for every tensor, two ways:
 * (1) a handful of single elements, step 1e-2; (2) the derivative along a
 * random +-1 direction over the whole tensor, step 3e-3, where every
 * element takes part and the signal (about |g|) stands far above the fp32
 * noise of the loss. Tolerance: 1e-2 relative plus an absolute floor for
 * that noise (loss resolution over the step). Every tensor must pass (2);
 * only a step whose routing never stops changing is skipped, and counted. */
static void gradcheck(const char *label, model *m, const int32_t *ids, const int32_t *targets)
{
    const int samples = 4;
    model_loss base;
    model_zero_grads(m);
    forward(m, ids, targets, B, T, &base);
    model_backward(m, 1.0f);
    size_t nroute = m->n_moe_layers ? (size_t)m->L * B * T * m->kk : 1;
    int32_t *route0 = upc_calloc(nroute, sizeof *route0);
    routing(m, route0);
    uint64_t s = 99;
    int el_checked = 0, el_skipped = 0, dir_skipped = 0;
    double el_worst = 0, dir_worst = 0;
    for (size_t i = 0; i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        float *p = upc_malloc(t->numel * sizeof *p), *g = upc_malloc(t->numel * sizeof *g);
        float *dir = upc_calloc(t->numel, sizeof *dir);
        model_get_param(m, t, p);
        model_get_grad(m, t, g);
        double fd, h;
        for (int k = 0; k < samples; k++) {
            size_t j = (size_t)(upc_splitmix64(&s) % t->numel);
            dir[j] = 1.0f;
            bool ok = fd_along(m, t, p, dir, 1e-2, ids, targets, route0, &fd, &h);
            dir[j] = 0.0f;
            if (!ok) {
                el_skipped++;
                continue;
            }
            el_checked++;
            double an = g[j], err = fabs(fd - an), scale = fmax(fabs(fd), fabs(an));
            if (scale > 1e-3)
                el_worst = fmax(el_worst, err / scale);
            CHECK_MSG(err <= 1e-2 * scale + 2e-7 / h, "%s: d loss / d %s[%zu]: backward %.7g, finite difference %.7g",
                      label, t->name, j, an, fd);
        }
        double an = 0;
        for (size_t j = 0; j < t->numel; j++) {
            dir[j] = (upc_splitmix64(&s) & 1) ? 1.0f : -1.0f;
            an += (double)g[j] * dir[j];
        }
        if (fd_along(m, t, p, dir, 3e-3, ids, targets, route0, &fd, &h)) {
            double err = fabs(fd - an), scale = fmax(fabs(fd), fabs(an));
            dir_worst = fmax(dir_worst, err / fmax(scale, 1e-30));
            CHECK_MSG(err <= 1e-2 * scale + 1e-7 / h,
                      "%s: derivative along a random direction of %s: backward %.7g, finite difference %.7g",
                      label, t->name, an, fd);
        } else {
            dir_skipped++;
        }
        free(p);
        free(g);
        free(dir);
    }
    CHECK_MSG(el_skipped <= (el_checked + el_skipped) / 4 && dir_skipped <= (int)m->n_tensors / 4,
              "%s: the routing changed under %d element and %d direction steps", label, el_skipped, dir_skipped);
    printf("gradcheck %s: loss %.6f (ce %.6f lb %.6f z %.6f); %zu tensors: %d elements (%d skipped, "
           "worst relative error %.2e), %zu directions (%d skipped, worst %.2e)\n",
           label, base.total, base.ce, base.lb, base.z, m->n_tensors, el_checked, el_skipped, el_worst,
           m->n_tensors, dir_skipped, dir_worst);
    free(route0);
}

/* Every tensor's analytic gradient must also be nonzero somewhere (a
 * tensor the backward forgot would pass the sampled check where the
 * finite difference is tiny too). */
static void all_grads_reach(const char *label, model *m, const int32_t *ids, const int32_t *targets_in)
{
    /* every target counts here: in the last block a token with an ignored
     * target has no gradient, and it may be an expert's only token */
    int32_t targets[B * T];
    for (int i = 0; i < B * T; i++)
        targets[i] = targets_in[i] < 0 ? 0 : targets_in[i];
    model_zero_grads(m);
    forward(m, ids, targets, B, T, NULL);
    model_backward(m, 1.0f);
    for (size_t i = 0; i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        float *g = upc_malloc(t->numel * sizeof *g);
        model_get_grad(m, t, g);
        double sq = 0;
        for (size_t j = 0; j < t->numel; j++)
            sq += (double)g[j] * g[j];
        /* an expert that got no token has no gradient: allowed */
        bool idle_expert = false;
        if (t->expert >= 0)
            idle_expert = m->expert_counts[t->layer * m->E + t->expert] == 0;
        CHECK_MSG(sq > 0 || idle_expert, "%s: gradient of %s is all zero", label, t->name);
        free(g);
    }
}

/* tiny_model on backend K, with router jitter noise `jitter` */
static model *tiny_model_on(const upc_kernels *K, int E, int kk, bool tied, uint64_t seed, double jitter)
{
    model_config c;
    tiny_config(&c, E, kk, tied);
    c.router_aux_loss_coef = 0.1;           /* large, so the aux gradients matter */
    c.router_z_loss_coef = 0.05;
    c.router_jitter_noise = jitter;
    model *m = model_create(K, &c);
    mc_free(&c);
    model_init_weights(m, seed);
    return m;
}

static model *tiny_model(int E, int kk, bool tied, uint64_t seed)
{
    return tiny_model_on(kernels_cpu(), E, kk, tied, seed, 0.0);
}

static void test_layout(void)
{
    model *m = tiny_model(4, 2, false, 1);
    size_t n;
    mc_tensor *mt = mc_tensors(&m->cfg, &n);
    CHECK(n == m->n_tensors);
    char *used = upc_calloc(m->n_floats, 1);
    for (size_t i = 0; i < n && i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        CHECK_MSG(strcmp(t->name, mt[i].name) == 0 && t->ndim == mt[i].ndim && t->shape[0] == mt[i].shape[0] &&
                      (t->ndim == 1 || t->shape[1] == mt[i].shape[1]),
                  "tensor %zu: %s differs from mc_tensors' %s", i, t->name, mt[i].name);
        CHECK_MSG(t->offset + t->numel <= m->n_floats, "%s past the end of the buffer", t->name);
        for (size_t j = t->offset; j < t->offset + t->numel && j < m->n_floats; j++) {
            CHECK_MSG(!used[j], "%s overlaps another view at float %zu", t->name, j);
            if (used[j])
                break;
            used[j] = 1;
        }
        CHECK(model_find(m, t->name) == t);
        CHECK_MSG(t->decay == (t->ndim == 2), "%s: weight decay flag %d", t->name, t->decay);
    }
    /* stacked expert blocks: expert e's w1 sits at block + e * F*d */
    const model_tensor *w1_2 = model_find(m, "model.layers.1.block_sparse_moe.experts.2.w1.weight");
    CHECK(w1_2 && w1_2->offset == m->layers[1].w1 + 2 * (size_t)m->F * m->d);
    CHECK(model_find(m, "lm_head.weight") != NULL && model_find(m, "nope") == NULL);
    free(used);
    free(mt);
    model_free(m);
}

static void check_accumulation(const char *label, model *raw, const int32_t *ids, const int32_t *targets)
{
    /* Gradients accumulate, in every tensor: backward(1) then backward(0.5)
     * of the same batch gives 1.5 times one backward. */
    size_t nf = raw->n_floats;
    float *g1 = upc_malloc(nf * sizeof *g1), *g2 = upc_malloc(nf * sizeof *g2);
    model_zero_grads(raw);
    model_forward(raw, ids, targets, B, T, NULL);
    model_backward(raw, 1.0f);
    kernels_cpu()->download(kernels_cpu(), g1, raw->grads, nf * sizeof *g1);
    model_forward(raw, ids, targets, B, T, NULL);
    model_backward(raw, 0.5f);
    kernels_cpu()->download(kernels_cpu(), g2, raw->grads, nf * sizeof *g2);
    for (size_t i = 0; i < raw->n_tensors; i++) {
        const model_tensor *t = &raw->tensors[i];
        double worst = 0;
        for (size_t j = t->offset; j < t->offset + t->numel; j++)
            worst = fmax(worst, fabs(g2[j] - 1.5 * g1[j]) / (fabs(g1[j]) + 1e-6));
        CHECK_MSG(worst < 1e-5, "%s: %s: gradient after backward(1) + backward(0.5) is not 1.5x one: worst %.3g",
                  label, t->name, worst);
    }
    free(g1);
    free(g2);
}

/* A tiny E=4, k=2 model in capacity mode, weights as tiny_model(4, 2, true, seed). */
static model *capacity_model(double cf, uint64_t seed)
{
    model_config c;
    tiny_config(&c, 4, 2, true);
    c.router_aux_loss_coef = 0.1;
    c.router_z_loss_coef = 0.05;
    c.capacity_factor = cf;
    model *m = model_create(kernels_cpu(), &c);
    mc_free(&c);
    model_init_weights(m, seed);
    return m;
}

/* Capacity factor: the drops are the assignments past each expert's
 * capacity; a capacity that holds every assignment is dropless exactly;
 * gradients through the dropped slots are checked by finite differences. */
static void test_capacity(const int32_t *ids, const int32_t *targets)
{
    model *free_ = tiny_model(4, 2, true, 21), *roomy = capacity_model(4.0, 21), *tight = capacity_model(0.5, 21);
    scale_weights(free_, 10.0f, 6);
    scale_weights(roomy, 10.0f, 6);
    scale_weights(tight, 10.0f, 6);
    model_loss a, b, c;
    model_forward(free_, ids, targets, B, T, &a);
    model_forward(roomy, ids, targets, B, T, &b);
    model_forward(tight, ids, targets, B, T, &c);
    CHECK_MSG(a.total == b.total, "capacity 4.0 (room for all) loss %.9g differs from dropless %.9g", b.total, a.total);
    int cap = model_expert_capacity(tight, B * T);
    CHECK_MSG(cap == 3, "capacity of 0.5 * 10 tokens * 2 / 4 experts: %d, expected 3", cap);
    for (int l = 0; l < tight->L; l++) {
        int want = 0;
        for (int e = 0; e < tight->E; e++) {
            int n = tight->expert_counts[l * tight->E + e];
            want += n > cap ? n - cap : 0;
        }
        CHECK_MSG(tight->dropped_counts[l] == want && roomy->dropped_counts[l] == 0,
                  "layer %d: %d dropped, expected %d (roomy: %d)", l, tight->dropped_counts[l], want,
                  roomy->dropped_counts[l]);
        CHECK_MSG(want > 0, "layer %d: the tight capacity dropped nothing; the test needs drops", l);
    }
    CHECK_MSG(c.ce != a.ce, "dropping assignments did not change the loss");
    gradcheck("moe E4 k2 capacity 0.5", tight, ids, targets);
    all_grads_reach("moe E4 k2 capacity 0.5", tight, ids, targets);
    model_free(free_);
    model_free(roomy);
    model_free(tight);
}

/* Router jitter: only a forward armed by model_jitter_next jitters (one
 * forward, then it is off again), the same key gives the same loss, a model
 * with router_jitter_noise 0 ignores it, and the backward through the noise
 * matches finite differences. */
static void test_jitter(const int32_t *ids, const int32_t *targets)
{
    model *jit = tiny_model_on(kernels_cpu(), 4, 2, true, 16, 0.3);
    scale_weights(jit, 10.0f, 7);
    model *calm = tiny_model(4, 2, true, 16);
    scale_weights(calm, 10.0f, 7);
    model_loss plain, j1, j2, j3, after, calm_armed;
    model_forward(jit, ids, targets, B, T, &plain);
    model_jitter_next(jit, 5);
    model_forward(jit, ids, targets, B, T, &j1);
    model_jitter_next(jit, 5);
    model_forward(jit, ids, targets, B, T, &j2);
    model_jitter_next(jit, 6);
    model_forward(jit, ids, targets, B, T, &j3);
    model_forward(jit, ids, targets, B, T, &after);
    model_jitter_next(calm, 5);
    model_forward(calm, ids, targets, B, T, &calm_armed);
    CHECK_MSG(j1.total == j2.total, "jitter with the same key: losses %.9g and %.9g", j1.total, j2.total);
    CHECK_MSG(j1.total != plain.total && j3.total != j1.total,
              "jitter changed nothing: plain %.9g, key 5 %.9g, key 6 %.9g", plain.total, j1.total, j3.total);
    CHECK_MSG(after.total == plain.total, "a forward after the jittered one was jittered too: %.9g, plain %.9g",
              after.total, plain.total);
    CHECK_MSG(calm_armed.total == plain.total, "router_jitter_noise 0 jittered: %.9g, plain %.9g",
              calm_armed.total, plain.total);
    jitter_test = true;
    gradcheck("moe E4 k2 jitter 0.3", jit, ids, targets);
    all_grads_reach("moe E4 k2 jitter 0.3", jit, ids, targets);
    jitter_test = false;
    model_free(jit);
    model_free(calm);
}

/* Attention through GEMMs (model->attention_gemm, what bf16 tables use):
 * on the fp32 table the same loss as the fused kernels and gradients that
 * match finite differences; on the bf16 table a loss within bf16's
 * rounding of fp32's, with attention_gemm on by default. */
static void test_attention_gemm(const int32_t *ids, const int32_t *targets)
{
    model *fused = tiny_model(4, 2, true, 17), *viagemm = tiny_model(4, 2, true, 17);
    scale_weights(fused, 10.0f, 8);
    scale_weights(viagemm, 10.0f, 8);
    CHECK(!fused->attention_gemm);
    viagemm->attention_gemm = true;
    model_loss a, b;
    model_forward(fused, ids, targets, B, T, &a);
    model_forward(viagemm, ids, targets, B, T, &b);
    CHECK_MSG(fabs(a.total - b.total) < 1e-5 * a.total, "attention through GEMMs: loss %.9g, fused %.9g", b.total,
              a.total);
    gradcheck("moe E4 k2 attention through GEMMs", viagemm, ids, targets);
    all_grads_reach("moe E4 k2 attention through GEMMs", viagemm, ids, targets);

    model *half = tiny_model_on(kernels_cpu_bf16(), 4, 2, true, 17, 0.0);
    scale_weights(half, 10.0f, 8);
    CHECK(half->attention_gemm);
    model_loss h;
    model_forward(half, ids, targets, B, T, &h);
    CHECK_MSG(fabs(h.total - a.total) < 2e-2 * a.total && h.total != a.total,
              "bf16 GEMMs: loss %.9g, fp32 %.9g (expected within 2%%, not equal)", h.total, a.total);
    all_grads_reach("moe E4 k2 bf16", half, ids, targets);
    model_free(fused);
    model_free(viagemm);
    model_free(half);
}

static void test_gradients(void)
{
    int32_t ids[B * T], targets[B * T], none[B * T];
    batch(7, ids, targets);
    for (int i = 0; i < B * T; i++)
        none[i] = -1;

    model *dense = tiny_model(0, 0, false, 11);
    scale_weights(dense, 10.0f, 1);
    gradcheck("dense untied", dense, ids, targets);
    all_grads_reach("dense untied", dense, ids, targets);
    model_free(dense);

    model *dense_tied = tiny_model(0, 0, true, 12);
    scale_weights(dense_tied, 10.0f, 2);
    gradcheck("dense tied", dense_tied, ids, targets);
    model_free(dense_tied);

    model *moe = tiny_model(4, 2, true, 13);
    scale_weights(moe, 10.0f, 3);
    gradcheck("moe E4 k2 renorm tied", moe, ids, targets);
    all_grads_reach("moe E4 k2 renorm tied", moe, ids, targets);
    gradcheck("moe E4 k2 aux losses only", moe, ids, none);
    check_accumulation("moe E4 k2 renorm tied", moe, ids, targets);
    model_free(moe);

    model_config c;
    tiny_config(&c, 4, 2, false);
    c.norm_topk_prob = false;
    c.router_aux_loss_coef = 0.1;
    c.router_z_loss_coef = 0.05;
    model *raw = model_create(kernels_cpu(), &c);
    mc_free(&c);
    model_init_weights(raw, 14);
    scale_weights(raw, 10.0f, 4);
    gradcheck("moe E4 k2 raw probs untied", raw, ids, targets);

    /* upcyc.moe_layers: block 0 dense, block 1 MoE */
    tiny_config(&c, 4, 2, false);
    c.layer_is_moe = upc_calloc(2, sizeof *c.layer_is_moe);
    c.layer_is_moe[1] = true;
    c.router_aux_loss_coef = 0.1;
    c.router_z_loss_coef = 0.05;
    model *mixed = model_create(kernels_cpu(), &c);
    mc_free(&c);
    CHECK(mixed->n_moe_layers == 1 && !mixed->layers[0].moe && mixed->layers[1].moe);
    model_init_weights(mixed, 15);
    scale_weights(mixed, 10.0f, 5);
    gradcheck("mixed dense+moe blocks", mixed, ids, targets);
    all_grads_reach("mixed dense+moe blocks", mixed, ids, targets);
    CHECK(mixed->expert_counts[0] == 0 && mixed->expert_counts[4] + mixed->expert_counts[5] +
                                              mixed->expert_counts[6] + mixed->expert_counts[7] == 2 * B * T);
    model_free(mixed);
    all_grads_reach("moe E4 k2 raw probs untied", raw, ids, targets);

    check_accumulation("moe E4 k2 raw probs untied", raw, ids, targets);
    model_free(raw);
    test_capacity(ids, targets);
    test_jitter(ids, targets);
    test_attention_gemm(ids, targets);
}

/* Copy the dense model's tensors into `moe`: same names, each FFN into
 * every expert; the router gets `router_gain` * normal noise. */
static void upcycle_into(model *moe, const model *dense, uint64_t seed)
{
    model_init_weights(moe, seed);              /* routers: random */
    for (size_t i = 0; i < dense->n_tensors; i++) {
        const model_tensor *t = &dense->tensors[i];
        float *h = upc_malloc(t->numel * sizeof *h);
        model_get_param(dense, t, h);
        const char *ffn = strstr(t->name, ".mlp.");
        if (!ffn) {
            model_set_param(moe, model_find(moe, t->name), h);
        } else {
            const char *w = strstr(ffn, "gate_proj") ? "w1" : strstr(ffn, "up_proj") ? "w3" : "w2";
            for (int e = 0; e < moe->E; e++) {
                char name[96];
                snprintf(name, sizeof name, "model.layers.%lld.block_sparse_moe.experts.%d.%s.weight",
                         (long long)t->layer, e, w);
                const model_tensor *u = model_find(moe, name);
                CHECK_MSG(u != NULL, "no tensor %s", name);
                if (u)
                    model_set_param(moe, u, h);
            }
        }
        free(h);
    }
}

/* tol >= 0: the MoE must match the parent within tol; tol < 0: it must
 * differ by more than -tol (raw top-k probs with k < E scale the FFN). */
static void compare_parent(const char *label, int E, int kk, bool renorm, double tol)
{
    int32_t ids[B * T], targets[B * T];
    batch(21, ids, targets);
    model *dense = tiny_model(0, 0, false, 5);
    scale_weights(dense, 5.0f, 6);
    model_config c;
    tiny_config(&c, E, kk, false);
    c.norm_topk_prob = renorm;
    model *moe = model_create(kernels_cpu(), &c);
    mc_free(&c);
    upcycle_into(moe, dense, 8);
    model_loss ld, lm;
    model_forward(dense, ids, targets, B, T, &ld);
    model_forward(moe, ids, targets, B, T, &lm);
    size_t n = (size_t)B * T * VOCAB;
    float *a = upc_malloc(n * sizeof *a), *b = upc_malloc(n * sizeof *b);
    model_get_logits(dense, a);
    model_get_logits(moe, b);
    double worst = 0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)a[i] - b[i]));
    if (tol >= 0) {
        CHECK_MSG(worst <= tol, "%s: logits differ from the dense parent by %.3g", label, worst);
        CHECK_MSG(fabs(ld.ce - lm.ce) <= tol, "%s: ce %.9g, dense parent %.9g", label, lm.ce, ld.ce);
    } else {
        CHECK_MSG(worst > -tol, "%s: logits differ from the dense parent by only %.3g", label, worst);
    }
    /* the routing is real: tokens spread over more than one expert */
    int used = 0;
    for (int e = 0; e < E; e++)
        used += moe->expert_counts[e] > 0;
    CHECK_MSG(E == 1 || used > 1, "%s: every token went to one expert", label);
    long long total = 0;
    for (int l = 0; l < moe->L; l++)
        for (int e = 0; e < E; e++)
            total += moe->expert_counts[l * E + e];
    CHECK_MSG(total == (long long)moe->L * B * T * kk, "%s: expert counts add up to %lld", label, total);
    printf("%s: ce %.9f vs dense %.9f, max |logit diff| %.3g, lb %.6f\n", label, lm.ce, ld.ce, worst, lm.lb);
    if (E == 1) {
        CHECK_MSG(lm.lb == 1.0, "E=1: lb %.9g, expected exactly 1", lm.lb);
    }
    free(a);
    free(b);
    model_free(dense);
    model_free(moe);
}

static double loss_at_init(uint64_t seed, float *first_param)
{
    int32_t ids[B * T], targets[B * T];
    batch(3, ids, targets);
    model *m = tiny_model(0, 0, false, seed);
    model_loss l;
    model_forward(m, ids, targets, B, T, &l);
    /* the loss is the mean cross-entropy of the logits over the 9 targets
     * that are not ignored, recomputed here in double */
    float *logits = upc_malloc((size_t)B * T * VOCAB * sizeof *logits);
    model_get_logits(m, logits);
    double sum = 0;
    int n = 0;
    for (int r = 0; r < B * T; r++) {
        if (targets[r] < 0)
            continue;
        const float *z = logits + (size_t)r * VOCAB;
        double mx = z[0], se = 0;
        for (int v = 1; v < VOCAB; v++)
            mx = fmax(mx, z[v]);
        for (int v = 0; v < VOCAB; v++)
            se += exp(z[v] - mx);
        sum += mx + log(se) - z[targets[r]];
        n++;
    }
    CHECK_MSG(n == 9 && l.n_targets == 9 && fabs(sum / n - l.ce) < 1e-6 && l.total == l.ce,
              "loss %.9g (%lld targets), recomputed from the logits %.9g (%d)", l.ce, l.n_targets, sum / n, n);
    free(logits);
    if (first_param)
        model_get_param(m, &m->tensors[0], first_param);
    model_free(m);
    return l.total;
}

/* Golden value of the tiny dense model's loss at seed 1234 on batch(3),
 * computed once with this code; its cross-check is ln(37) = 3.6109: with
 * std 0.02 weights the logits are nearly zero, so the loss is nearly that. */
#define GOLDEN_LOSS 3.5992220

static void test_golden_and_determinism(void)
{
    size_t n = (size_t)VOCAB * 16;
    float *p1 = upc_malloc(n * sizeof *p1), *p2 = upc_malloc(n * sizeof *p2), *p3 = upc_malloc(n * sizeof *p3);
    double l1 = loss_at_init(1234, p1), l2 = loss_at_init(1234, p2), l3 = loss_at_init(1235, p3);
    printf("golden: tiny dense loss at seed 1234 = %.7f (ln %d = %.7f)\n", l1, VOCAB, log((double)VOCAB));
    CHECK_MSG(fabs(l1 - GOLDEN_LOSS) <= 2e-6, "golden loss %.7f, expected %.7f", l1, GOLDEN_LOSS);
    CHECK_MSG(fabs(l1 - log((double)VOCAB)) < 0.02, "loss at init %.5f is not near ln(vocab) %.5f", l1,
              log((double)VOCAB));
    CHECK_MSG(memcmp(&l1, &l2, sizeof l1) == 0 && memcmp(p1, p2, n * sizeof *p1) == 0,
              "same seed gave different bits");
    CHECK_MSG(l1 != l3 && memcmp(p1, p3, n * sizeof *p1) != 0, "another seed gave the same model");
    /* the init has the asked std (0.02) and mean 0 */
    double s = 0, sq = 0;
    for (size_t i = 0; i < n; i++) {
        s += p1[i];
        sq += (double)p1[i] * p1[i];
    }
    double mean = s / n, sd = sqrt(sq / n - mean * mean);
    CHECK_MSG(fabs(mean) < 0.003 && fabs(sd - 0.02) < 0.002, "embedding init mean %.4g std %.4g", mean, sd);
    free(p1);
    free(p2);
    free(p3);
}

/* A digest of the loss and every gradient bit of one MoE step, printed so
 * runs on different thread counts can be compared (tests/model.bats). */
static void print_digest(void)
{
    int32_t ids[B * T], targets[B * T];
    batch(5, ids, targets);
    model *m = tiny_model(4, 2, true, 41);
    scale_weights(m, 5.0f, 10);
    model_loss l;
    model_zero_grads(m);
    model_forward(m, ids, targets, B, T, &l);
    model_backward(m, 1.0f);
    float *g = upc_malloc(m->n_floats * sizeof *g);
    m->K->download(m->K, g, m->grads, m->n_floats * sizeof *g);
    uint64_t h = upc_hash64(g, m->n_floats * sizeof *g, upc_hash64(&l, sizeof l, 0));
    printf("digest: loss %.9f, loss and gradient bits %016llx\n", l.total, (unsigned long long)h);
    free(g);
    model_free(m);
}

static void test_save_load(void)
{
    int32_t ids[B * T], targets[B * T];
    batch(4, ids, targets);
    model *a = tiny_model(4, 2, false, 31);
    scale_weights(a, 5.0f, 9);
    model_loss la, lb16, lr, ls;
    model_forward(a, ids, targets, B, T, &la);

    char *dir = upc_path_join(scratch, "ckpt");
    upc_mkdirs(dir);
    model_save_weights(a, dir, ST_F32, 0);
    st_reader *r = st_open(dir);
    CHECK(st_count(r) == a->n_tensors);
    model *b = tiny_model(4, 2, false, 32);
    model_load_weights(b, r);
    st_close(r);
    model_forward(b, ids, targets, B, T, &lr);
    CHECK_MSG(memcmp(&la.total, &lr.total, sizeof la.total) == 0, "F32 round trip: loss %.9g, before %.9g",
              lr.total, la.total);
    CHECK(memcmp(a->expert_counts, b->expert_counts, (size_t)a->L * a->E * sizeof(int32_t)) == 0);

    /* sharded (tiny shard limit) and BF16 */
    char *sdir = upc_path_join(scratch, "sharded");
    upc_mkdirs(sdir);
    model_save_weights(a, sdir, ST_BF16, 4096);
    r = st_open(sdir);
    CHECK_MSG(st_file_count(r) > 1, "expected several shards, got %zu", st_file_count(r));
    model_load_weights(b, r);
    st_close(r);
    const model_tensor *t = model_find(a, "model.layers.1.block_sparse_moe.experts.3.w2.weight");
    float *pa = upc_malloc(t->numel * sizeof *pa), *pb = upc_malloc(t->numel * sizeof *pb);
    model_get_param(a, t, pa);
    model_get_param(b, model_find(b, t->name), pb);
    bool rounded = true;
    for (size_t j = 0; j < t->numel; j++)
        rounded = rounded && pb[j] == st_bf16_to_f32(st_f32_to_bf16(pa[j]));
    CHECK_MSG(rounded, "BF16 round trip of %s is not the bf16 rounding of the weights", t->name);
    model_forward(b, ids, targets, B, T, &lb16);
    CHECK_MSG(fabs(lb16.total - la.total) < 2e-2, "BF16 round trip: loss %.6g, before %.6g", lb16.total, la.total);

    /* one file by path */
    char *file = upc_path_join(scratch, "w.safetensors");
    model_save_weights(a, file, ST_F32, 0);
    r = st_open(file);
    model_load_weights(b, r);
    st_close(r);
    model_forward(b, ids, targets, B, T, &ls);
    CHECK(memcmp(&la.total, &ls.total, sizeof la.total) == 0);
    free(pa);
    free(pb);
    free(file);
    free(sdir);
    free(dir);
    model_free(a);
    model_free(b);
}

/* ---- bad input (children) ---------------------------------------------------- */

static void write_bad(const char *path, const char *skip, const char *reshape)
{
    model *m = tiny_model(0, 0, false, 1);
    st_writer *w = st_writer_file(path);
    for (size_t i = 0; i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        if (strcmp(t->name, skip) == 0)
            continue;
        uint64_t shape[2] = {(uint64_t)t->shape[0], (uint64_t)t->shape[1]};
        if (strcmp(t->name, reshape) == 0)
            shape[0] -= 1;
        st_writer_add(w, t->name, ST_F32, t->ndim, shape);
    }
    st_writer_begin_data(w);
    float *h = upc_calloc(VOCAB * 64, sizeof *h);
    for (size_t i = 0; i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        if (strcmp(t->name, skip) == 0)
            continue;
        size_t n = t->numel;
        if (strcmp(t->name, reshape) == 0)
            n -= t->ndim == 2 ? (size_t)t->shape[1] : 1;
        st_writer_write_f32(w, h, n);
    }
    st_writer_commit(w);
    free(h);
    model_free(m);
}

static void load_into_tiny(const void *path)
{
    model *m = tiny_model(0, 0, false, 1);
    st_reader *r = st_open(path);
    model_load_weights(m, r);
    st_close(r);
    model_free(m);
}

static void forward_bad_id(const void *which)
{
    model *m = tiny_model(0, 0, false, 1);
    int32_t ids[B * T], targets[B * T];
    batch(1, ids, targets);
    if (strcmp(which, "id") == 0)
        ids[7] = VOCAB;
    else
        targets[2] = -2;
    model_forward(m, ids, targets, B, T, NULL);
    model_free(m);
}

static void backward_first(const void *unused)
{
    model *m = tiny_model(0, 0, false, 1);
    model_backward(m, 1.0f);
    model_free(m);
}

static void test_bad_input(void)
{
    char *missing = upc_path_join(scratch, "missing.safetensors");
    char *misshapen = upc_path_join(scratch, "misshapen.safetensors");
    write_bad(missing, "model.layers.1.mlp.up_proj.weight", "");
    write_bad(misshapen, "", "model.layers.0.self_attn.k_proj.weight");
    EXPECT_FAIL(load_into_tiny, missing, 65, "missing.safetensors", "model.layers.1.mlp.up_proj.weight",
                "missing");
    EXPECT_FAIL(load_into_tiny, misshapen, 65, "misshapen.safetensors",
                "model.layers.0.self_attn.k_proj.weight", "[7, 16]", "expected [8, 16]");
    EXPECT_FAIL(forward_bad_id, "id", 65, "token id 37", "position 7", "vocabulary of 37");
    EXPECT_FAIL(forward_bad_id, "target", 65, "target -2", "position 2");
    EXPECT_FAIL(backward_first, NULL, 70, "backward without a forward");
    free(missing);
    free(misshapen);
}

/* test_model --dump DIR: for tests/model_reference.py, an independent
 * pure-Python HF Llama/Mixtral forward: three tiny models (dense tied; MoE
 * renormalised; MoE raw probs, untied) as DIR/NAME/{config.json,
 * model.safetensors, forward.txt} with the batch, the losses and the
 * logits. */
static void dump_one(const char *dir, const char *name, int E, int kk, bool renorm, bool tied, uint64_t seed)
{
    model_config c;
    tiny_config(&c, E, kk, tied);
    c.norm_topk_prob = renorm;
    c.router_aux_loss_coef = 0.1;
    c.router_z_loss_coef = 0.05;
    model *m = model_create(kernels_cpu(), &c);
    model_init_weights(m, seed);
    scale_weights(m, 10.0f, seed);
    char *sub = upc_path_join(dir, name);
    upc_mkdirs(sub);
    mc_save(&c, sub);
    model_save_weights(m, sub, ST_F32, 0);
    int32_t ids[B * T], targets[B * T];
    batch(seed, ids, targets);
    model_loss l;
    model_forward(m, ids, targets, B, T, &l);
    float *logits = upc_malloc((size_t)B * T * VOCAB * sizeof *logits);
    model_get_logits(m, logits);
    char *path = upc_path_join(sub, "forward.txt");
    FILE *f = fopen(path, "w");
    if (!f)
        upc_fail(EX_CANTCREAT, "%s: cannot create", path);
    fprintf(f, "batch %d %d\nids", B, T);
    for (int i = 0; i < B * T; i++)
        fprintf(f, " %d", ids[i]);
    fprintf(f, "\ntargets");
    for (int i = 0; i < B * T; i++)
        fprintf(f, " %d", targets[i]);
    fprintf(f, "\nloss %.9g %.9g %.9g %.9g\n", l.total, l.ce, l.lb, l.z);
    for (int r = 0; r < B * T; r++) {
        fprintf(f, "logits");
        for (int v = 0; v < VOCAB; v++)
            fprintf(f, " %.9g", logits[(size_t)r * VOCAB + v]);
        fputc('\n', f);
    }
    if (fclose(f) != 0)
        upc_fail(EX_IOERR, "%s: write failed", path);
    free(path);
    free(logits);
    free(sub);
    model_free(m);
    mc_free(&c);
}

int main(int argc, char **argv)
{
    upc_init("test_model");
    if (argc == 3 && strcmp(argv[1], "--dump") == 0) {
        dump_one(argv[2], "dense", 0, 0, true, true, 51);
        dump_one(argv[2], "moe", 4, 2, true, false, 52);
        dump_one(argv[2], "moe_raw", 4, 2, false, false, 53);
        return 0;
    }
    if (argc != 2) {
        fprintf(stderr, "usage: test_model SCRATCH_DIR | test_model --dump DIR\n");
        return 64;
    }
    scratch = argv[1];
    /* first, while the process has one thread: the children fork()ed by
     * EXPECT_FAIL inherit no OpenMP pool (LeakSanitizer and libgomp both
     * dislike forking a process whose worker threads are running) */
    test_bad_input();
    test_layout();
    test_gradients();
    compare_parent("E=1 k=1 vs dense", 1, 1, true, 0.0);   /* exact on the CPU backend */
    compare_parent("upcycled E=4 k=2 vs dense", 4, 2, true, 1e-5);
    compare_parent("upcycled E=8 k=1 vs dense", 8, 1, true, 1e-5);
    compare_parent("upcycled E=4 k=4 raw probs vs dense", 4, 4, false, 1e-5);
    compare_parent("upcycled E=4 k=2 raw probs vs dense", 4, 2, false, -1e-3);
    test_golden_and_determinism();
    print_digest();
    test_save_load();
    if (failures) {
        fprintf(stderr, "test_model: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("test_model: all checks passed (%d checks)\n", checks);
    return 0;
}
