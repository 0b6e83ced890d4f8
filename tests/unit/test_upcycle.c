/* test_upcycle: dense -> MoE upcycling (lib/upcycle.h) on tiny checkpoints
 * built here, and the parameter/FLOP arithmetic on full-size configs.
 *
 *   test_upcycle FIXTURE_DIR SCRATCH_DIR      all checks; exit 1 on a failure
 *                                            (exactness: the MoE's logits equal
 *                                            the dense parent's, lib/model.h, CPU)
 *   test_upcycle make-dense DIR f32|bf16 [tied]
 *                                            write a tiny dense checkpoint
 *                                            (config, weights, tokenizer.json)
 *                                            for the bats suite */
#include "kernels.h"
#include "model.h"
#include "model_config.h"
#include "safetensors.h"
#include "test_harness.h"
#include "upcycle.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *fixtures, *scratch;

/* The tiny shape: f = 24 splits into G = 2, 3, 4, 6 slices. */
static void tiny_config(model_config *c, bool tied)
{
    mc_init(c, false);
    c->vocab_size = 64;
    c->hidden_size = 16;
    c->intermediate_size = 24;
    c->num_hidden_layers = 3;
    c->num_attention_heads = 4;
    c->num_key_value_heads = 2;
    c->max_position_embeddings = 64;
    c->tie_word_embeddings = tied;
    mc_validate(c, "tiny");
}

static void make_dense(const char *dir, st_dtype dtype, bool tied)
{
    upc_mkdirs(dir);
    model_config c;
    tiny_config(&c, tied);
    mc_save(&c, dir);
    size_t n;
    mc_tensor *t = mc_tensors(&c, &n);
    st_writer *w = st_writer_dir(dir, "model", 0);
    for (size_t i = 0; i < n; i++) {
        uint64_t shape[2] = {(uint64_t)t[i].shape[0], (uint64_t)t[i].shape[1]};
        st_writer_add(w, t[i].name, dtype, t[i].ndim, shape);
    }
    st_writer_begin_data(w);
    uint64_t state = 12345;
    for (size_t i = 0; i < n; i++) {
        size_t numel = (size_t)t[i].shape[0] * (size_t)(t[i].ndim == 2 ? t[i].shape[1] : 1);
        float *v = upc_malloc(numel * sizeof *v);
        /* Norms near 1, matmuls uniform with std 1/sqrt(in), embedding std
         * about 0.6: activations and logits of order one, so the FFN
         * matters to the logits the exactness check compares. */
        double scale = t[i].ndim == 1 ? 0.5 : t[i].matmul ? 2 * sqrt(3.0 / (double)t[i].shape[1]) : 2.0;
        double base = t[i].ndim == 1 ? 1.0 : 0.0;
        for (size_t j = 0; j < numel; j++)
            v[j] = (float)(base + ((double)(upc_splitmix64(&state) >> 11) * 0x1.0p-53 - 0.5) * scale);
        st_writer_write_f32(w, v, numel);
        free(v);
    }
    st_writer_commit(w);
    free(t);
    mc_free(&c);
    char *tok = upc_path_join(dir, "tokenizer.json");
    upc_out o;
    upc_out_open(&o, tok);
    upc_out_write(&o, "{\"model\":{}}\n", 13);
    upc_out_commit(&o);
    free(tok);
}

/* Upcycle dense_dir into out_dir through the library, as the tool does. */
static void run_upcycle(const char *dense_dir, const char *out_dir, const upcycle_options *o, model_config *moe)
{
    model_config dense;
    mc_load(&dense, dense_dir);
    upcycle_config(&dense, o, moe, "tiny");
    st_reader *r = st_open(dense_dir);
    uint64_t bytes;
    CHECK(upcycle_check_checkpoint(r, &dense, &bytes) == 0);
    upc_rm_rf(out_dir);
    upc_mkdirs(out_dir);
    st_writer *w = st_writer_dir(out_dir, "model", 0);
    upcycle_write(r, &dense, moe, o, w);
    st_writer_commit(w);
    mc_save(moe, out_dir);
    st_close(r);
    mc_free(&dense);
}

static char *scratch_path(const char *name) { return upc_path_join(scratch, name); }

static float *get(const st_reader *r, const char *name, size_t *n)
{
    const st_tensor *t = st_need(r, name);
    *n = (size_t)t->numel;
    float *v = upc_malloc(*n * sizeof *v);
    st_get_f32(r, name, v, *n);
    return v;
}

static bool same_bytes(const st_reader *a, const char *na, const st_reader *b, const char *nb)
{
    const st_tensor *x = st_need(a, na), *y = st_need(b, nb);
    return x->dtype == y->dtype && x->nbytes == y->nbytes && memcmp(x->data, y->data, x->nbytes) == 0;
}

static const char *ffn_name(char *buf, int64_t l, const char *proj)
{
    snprintf(buf, 128, "model.layers.%lld.mlp.%s.weight", (long long)l, proj);
    return buf;
}

static const char *expert_name(char *buf, int64_t l, int64_t e, const char *w)
{
    snprintf(buf, 128, "model.layers.%lld.block_sparse_moe.experts.%lld.%s.weight", (long long)l, (long long)e, w);
    return buf;
}

static const char *router_name(char *buf, int64_t l)
{
    snprintf(buf, 128, "model.layers.%lld.block_sparse_moe.gate.weight", (long long)l);
    return buf;
}

/* Plain copies: every expert equals its dense source bit for bit, the
 * rest is copied unchanged, the config says what was done. */
static void test_copies(const char *dense_dir)
{
    char *out = scratch_path("moe-copy");
    upcycle_options o;
    upcycle_options_init(&o);
    o.experts = 4;
    o.top_k = 2;
    o.seed = 7;
    model_config moe;
    run_upcycle(dense_dir, out, &o, &moe);
    st_reader *d = st_open(dense_dir), *m = st_open(out);
    char a[128], b[128];
    static const char *proj[3] = {"gate_proj", "up_proj", "down_proj"}, *wn[3] = {"w1", "w3", "w2"};
    for (int64_t l = 0; l < 3; l++) {
        for (int64_t e = 0; e < 4; e++)
            for (int k = 0; k < 3; k++)
                CHECK_MSG(same_bytes(d, ffn_name(a, l, proj[k]), m, expert_name(b, l, e, wn[k])), "%s", b);
        const st_tensor *g = st_need(m, router_name(a, l));
        CHECK(g->ndim == 2 && g->shape[0] == 4 && g->shape[1] == 16 && g->dtype == ST_F32);
        CHECK(st_find(m, ffn_name(a, l, "gate_proj")) == NULL);
    }
    size_t n;
    model_config dense;
    mc_load(&dense, dense_dir);
    mc_tensor *t = mc_tensors(&dense, &n);
    for (size_t i = 0; i < n; i++)
        if (!strstr(t[i].name, ".mlp."))
            CHECK_MSG(same_bytes(d, t[i].name, m, t[i].name), "%s", t[i].name);
    free(t);
    CHECK(st_count(m) == 1 + 3 * (6 + 1 + 3 * 4) + 2);

    model_config back;
    mc_load(&back, out);
    CHECK(back.moe && back.num_local_experts == 4 && back.num_experts_per_tok == 2);
    CHECK(back.norm_topk_prob && back.router_aux_loss_coef == 0.01);
    CHECK(back.intermediate_size == 24 && back.hidden_size == 16 && back.num_hidden_layers == 3);
    json_t *u = json_object_get(back.upcyc, "upcycle");
    CHECK(u && json_integer_value(json_object_get(u, "seed")) == 7);
    CHECK(u && strcmp(json_string_value(json_object_get(u, "routing")), "renorm-topk") == 0);
    CHECK(json_object_get(back.upcyc, "moe_layers") == NULL);
    mc_free(&back);

    /* Router: seeded, same seed same bits, another seed other bits; std near 0.02. */
    char *out2 = scratch_path("moe-copy2");
    model_config moe2;
    run_upcycle(dense_dir, out2, &o, &moe2);
    st_reader *m2 = st_open(out2);
    CHECK(same_bytes(m, router_name(a, 1), m2, router_name(b, 1)));
    CHECK(!same_bytes(m, router_name(a, 0), m, router_name(b, 1)));   /* layers differ */
    st_close(m2);
    mc_free(&moe2);
    o.seed = 8;
    run_upcycle(dense_dir, out2, &o, &moe2);
    m2 = st_open(out2);
    CHECK(!same_bytes(m, router_name(a, 1), m2, router_name(b, 1)));
    st_close(m2);
    mc_free(&moe2);
    double sq = 0;
    size_t cnt = 0;
    for (int64_t l = 0; l < 3; l++) {
        float *v = get(m, router_name(a, l), &n);
        for (size_t i = 0; i < n; i++)
            sq += (double)v[i] * v[i];
        cnt += n;
        free(v);
    }
    double sd = sqrt(sq / (double)cnt);
    CHECK_MSG(sd > 0.015 && sd < 0.025, "router std %g, expected about 0.02", sd);

    st_close(d);
    st_close(m);
    mc_free(&moe);
    mc_free(&dense);
    free(out);
    free(out2);
}

static void test_router_inits(const char *dense_dir)
{
    char *out = scratch_path("moe-router");
    upcycle_options o;
    upcycle_options_init(&o);
    o.experts = 8;
    o.top_k = 8;
    o.router_init = UPCYCLE_ROUTER_ZEROS;
    model_config moe;
    run_upcycle(dense_dir, out, &o, &moe);
    st_reader *m = st_open(out);
    char a[128];
    size_t n;
    float *v = get(m, router_name(a, 2), &n);
    bool zero = n == 8 * 16;
    for (size_t i = 0; i < n; i++)
        zero = zero && v[i] == 0;
    CHECK(zero);
    free(v);
    st_close(m);
    mc_free(&moe);

    o.router_init = UPCYCLE_ROUTER_UNIFORM;
    o.router_std = 0.1;
    run_upcycle(dense_dir, out, &o, &moe);
    m = st_open(out);
    v = get(m, router_name(a, 0), &n);
    float lo = 1, hi = -1;
    for (size_t i = 0; i < n; i++) {
        lo = fminf(lo, v[i]);
        hi = fmaxf(hi, v[i]);
    }
    float bound = (float)(0.1 * sqrt(3.0));
    CHECK_MSG(lo >= -bound && hi <= bound && hi - lo > bound, "uniform in [%g, %g], bound %g", lo, hi, bound);
    free(v);
    st_close(m);
    mc_free(&moe);
    free(out);
}

/* Fine-grained: expert e holds slice e % G; w2 scaled by G; router rows
 * repeated per group of G. */
static void test_granularity(const char *dense_dir)
{
    char *out = scratch_path("moe-fine");
    upcycle_options o;
    upcycle_options_init(&o);
    o.experts = 6;
    o.top_k = 3;
    o.granularity = 3;
    model_config moe;
    run_upcycle(dense_dir, out, &o, &moe);
    CHECK(moe.intermediate_size == 8);
    st_reader *d = st_open(dense_dir), *m = st_open(out);
    char a[128];
    size_t n, ne;
    for (int64_t l = 0; l < 3; l++) {
        float *gate = get(d, ffn_name(a, l, "gate_proj"), &n);
        float *down = get(d, ffn_name(a, l, "down_proj"), &n);
        for (int64_t e = 0; e < 6; e++) {
            int64_t s = e % 3;
            float *w1 = get(m, expert_name(a, l, e, "w1"), &ne);
            CHECK(ne == 8 * 16 && memcmp(w1, gate + s * 8 * 16, ne * sizeof *w1) == 0);
            float *w2 = get(m, expert_name(a, l, e, "w2"), &ne);
            bool ok = ne == 16 * 8;
            for (int64_t i = 0; i < 16; i++)
                for (int64_t j = 0; j < 8; j++)
                    ok = ok && w2[i * 8 + j] == 3.0f * down[i * 24 + s * 8 + j];
            CHECK_MSG(ok, "layer %lld expert %lld: w2 is not 3 x its slice of down_proj", (long long)l,
                      (long long)e);
            free(w1);
            free(w2);
        }
        float *g = get(m, router_name(a, l), &ne);
        CHECK(ne == 6 * 16);
        CHECK(memcmp(g, g + 16, 16 * sizeof *g) == 0 && memcmp(g, g + 32, 16 * sizeof *g) == 0);
        CHECK(memcmp(g + 48, g + 64, 16 * sizeof *g) == 0 && memcmp(g, g + 48, 16 * sizeof *g) != 0);
        free(g);
        free(gate);
        free(down);
    }
    st_close(d);
    st_close(m);
    mc_free(&moe);
    free(out);
}

/* Drop-Upcycling: per expert round(r * f) intermediate dims re-drawn, the
 * same dims in w1 rows, w3 rows and w2 columns; the rest copied. Noise:
 * everything moves by about the given std. */
static void test_drop_and_noise(const char *dense_dir)
{
    char *out = scratch_path("moe-drop");
    upcycle_options o;
    upcycle_options_init(&o);
    o.experts = 4;
    o.top_k = 2;
    o.drop_ratio = 0.25;   /* 6 of 24 dims */
    model_config moe;
    run_upcycle(dense_dir, out, &o, &moe);
    st_reader *d = st_open(dense_dir), *m = st_open(out);
    char a[128];
    size_t n;
    float *gate = get(d, ffn_name(a, 1, "gate_proj"), &n);
    float *up = get(d, ffn_name(a, 1, "up_proj"), &n);
    float *down = get(d, ffn_name(a, 1, "down_proj"), &n);
    bool sets_differ = false;
    bool prev[24] = {0};
    for (int64_t e = 0; e < 4; e++) {
        float *w1 = get(m, expert_name(a, 1, e, "w1"), &n);
        float *w3 = get(m, expert_name(a, 1, e, "w3"), &n);
        float *w2 = get(m, expert_name(a, 1, e, "w2"), &n);
        bool changed[24];
        int nchanged = 0, consistent = 1;
        for (int i = 0; i < 24; i++) {
            changed[i] = memcmp(w1 + i * 16, gate + i * 16, 16 * sizeof(float)) != 0;
            bool c3 = memcmp(w3 + i * 16, up + i * 16, 16 * sizeof(float)) != 0;
            bool c2 = false;
            for (int r = 0; r < 16; r++)
                c2 = c2 || w2[r * 24 + i] != down[r * 24 + i];
            consistent = consistent && changed[i] == c3 && changed[i] == c2;
            nchanged += changed[i];
            if (e > 0 && changed[i] != prev[i])
                sets_differ = true;
            prev[i] = changed[i];
        }
        CHECK_MSG(nchanged == 6, "expert %lld: %d dims re-drawn, expected 6", (long long)e, nchanged);
        CHECK_MSG(consistent, "expert %lld: w1, w3 and w2 re-drew different dims", (long long)e);
        free(w1);
        free(w3);
        free(w2);
    }
    CHECK(sets_differ);
    free(gate);
    free(up);
    free(down);
    st_close(m);
    mc_free(&moe);

    o.drop_ratio = 0;
    o.expert_noise = 0.01;
    run_upcycle(dense_dir, out, &o, &moe);
    m = st_open(out);
    double sq = 0;
    size_t cnt = 0;
    const char *proj[3] = {"gate_proj", "up_proj", "down_proj"}, *wn[3] = {"w1", "w3", "w2"};
    for (int k = 0; k < 3; k++) {
        float *src = get(d, ffn_name(a, 0, proj[k]), &n);
        for (int64_t e = 0; e < 4; e++) {
            float *w = get(m, expert_name(a, 0, e, wn[k]), &n);
            for (size_t i = 0; i < n; i++)
                sq += ((double)w[i] - src[i]) * ((double)w[i] - src[i]);
            cnt += n;
            free(w);
        }
        free(src);
    }
    double sd = sqrt(sq / (double)cnt);
    CHECK_MSG(sd > 0.009 && sd < 0.011, "noise std %g, expected about 0.01", sd);
    st_close(d);
    st_close(m);
    mc_free(&moe);
    free(out);
}

/* A subset of layers: the others keep their dense FFN; config lists them. */
static void test_layers(const char *dense_dir)
{
    bool f[3];
    char err[200];
    CHECK(upcycle_parse_layers("all", 3, f, err, sizeof err) && f[0] && f[1] && f[2]);
    CHECK(upcycle_parse_layers("every:2", 3, f, err, sizeof err) && !f[0] && f[1] && !f[2]);
    CHECK(upcycle_parse_layers("0,2", 3, f, err, sizeof err) && f[0] && !f[1] && f[2]);
    CHECK(upcycle_parse_layers("1-2", 3, f, err, sizeof err) && !f[0] && f[1] && f[2]);
    CHECK(!upcycle_parse_layers("3", 3, f, err, sizeof err) && strstr(err, "out of range"));
    CHECK(!upcycle_parse_layers("1,1", 3, f, err, sizeof err) && strstr(err, "twice"));
    CHECK(!upcycle_parse_layers("every:0", 3, f, err, sizeof err));
    CHECK(!upcycle_parse_layers("every:4", 3, f, err, sizeof err));
    CHECK(!upcycle_parse_layers("x", 3, f, err, sizeof err));
    CHECK(!upcycle_parse_layers("1,", 3, f, err, sizeof err));
    CHECK(!upcycle_parse_layers("2-1", 3, f, err, sizeof err));

    char *out = scratch_path("moe-layers");
    upcycle_options o;
    upcycle_options_init(&o);
    o.experts = 2;
    o.top_k = 1;
    upcycle_parse_layers("0,2", 3, f, err, sizeof err);
    o.moe_layers = f;
    model_config moe;
    run_upcycle(dense_dir, out, &o, &moe);
    st_reader *d = st_open(dense_dir), *m = st_open(out);
    char a[128], b[128];
    CHECK(same_bytes(d, ffn_name(a, 1, "down_proj"), m, ffn_name(b, 1, "down_proj")));
    CHECK(st_find(m, router_name(a, 1)) == NULL && st_find(m, router_name(a, 2)) != NULL);
    CHECK(same_bytes(d, ffn_name(a, 2, "up_proj"), m, expert_name(b, 2, 1, "w3")));
    model_config back;
    mc_load(&back, out);
    json_t *ml = json_object_get(back.upcyc, "moe_layers");
    CHECK(ml && json_array_size(ml) == 2 && json_integer_value(json_array_get(ml, 0)) == 0 &&
          json_integer_value(json_array_get(ml, 1)) == 2);
    CHECK(!mc_layer_is_moe(&back, 1) && mc_layer_is_moe(&back, 2));
    mc_free(&back);
    st_close(d);
    st_close(m);
    mc_free(&moe);
    free(out);
}

/* dtype: bf16 in, f32 out is exact; f32 in, bf16 out rounds like st_f32_to_bf16. */
static void test_dtypes(const char *dense_dir, const char *bf16_dir)
{
    char *out = scratch_path("moe-dtype");
    upcycle_options o;
    upcycle_options_init(&o);
    o.experts = 2;
    o.top_k = 2;
    o.out_dtype = ST_F32;
    model_config moe;
    run_upcycle(bf16_dir, out, &o, &moe);
    CHECK(strcmp(moe.torch_dtype, "float32") == 0);
    st_reader *d = st_open(bf16_dir), *m = st_open(out);
    char a[128];
    size_t n, ne;
    float *src = get(d, ffn_name(a, 0, "down_proj"), &n);
    CHECK(st_need(m, expert_name(a, 0, 1, "w2"))->dtype == ST_F32);
    float *w = get(m, expert_name(a, 0, 1, "w2"), &ne);
    CHECK(n == ne && memcmp(src, w, n * sizeof *w) == 0);
    free(src);
    free(w);
    st_close(d);
    st_close(m);
    mc_free(&moe);

    o.out_dtype = ST_BF16;
    run_upcycle(dense_dir, out, &o, &moe);
    d = st_open(dense_dir);
    m = st_open(out);
    src = get(d, ffn_name(a, 2, "gate_proj"), &n);
    const st_tensor *t = st_need(m, expert_name(a, 2, 0, "w1"));
    bool ok = t->dtype == ST_BF16 && t->numel == n;
    for (size_t i = 0; ok && i < n; i++) {
        uint16_t h;
        memcpy(&h, t->data + 2 * i, 2);
        ok = h == st_f32_to_bf16(src[i]);
    }
    CHECK(ok);
    CHECK(st_need(m, router_name(a, 2))->dtype == ST_BF16);
    CHECK(st_need(m, "model.embed_tokens.weight")->dtype == ST_BF16);
    free(src);
    st_close(d);
    st_close(m);
    mc_free(&moe);
    free(out);
}

/* Full-size arithmetic: Mistral-7B's shapes upcycled to 8 experts, top-2,
 * are Mixtral-8x7B (published 46.7B total, 12.9B active). */
static void test_mixtral_numbers(void)
{
    char *path = upc_path_join(fixtures, "mixtral-8x7b.config.json");
    model_config mixtral, dense, moe;
    mc_load(&mixtral, path);
    mc_copy(&dense, &mixtral);
    dense.moe = false;
    json_decref(dense.upcyc);
    dense.upcyc = NULL;
    upcycle_options o;
    upcycle_options_init(&o);
    o.experts = 8;
    o.top_k = 2;
    upcycle_config(&dense, &o, &moe, "mistral");
    mc_params pm = mc_param_count(&moe), px = mc_param_count(&mixtral), pd = mc_param_count(&dense);
    CHECK(pm.total == px.total && pm.active == px.active);
    CHECK_MSG(fabs(pm.total / 1e9 - 46.7) < 0.05, "total %.3fB, published 46.7B", pm.total / 1e9);
    CHECK_MSG(fabs(pm.active / 1e9 - 12.9) < 0.05, "active %.3fB, published 12.9B", pm.active / 1e9);
    /* By hand: d=4096, f=14336, 32 layers, kv 1024, V=32000. */
    int64_t d = 4096, f = 14336, L = 32, kv = 1024, V = 32000;
    int64_t attn = 2 * d * d + 2 * d * kv, ffn = 3 * d * f;
    CHECK(pd.total == 2 * V * d + L * (attn + ffn + 2 * d) + d);
    CHECK(pm.total == 2 * V * d + L * (attn + 8 * ffn + 8 * d + 2 * d) + d);
    CHECK(pm.active == 2 * V * d + L * (attn + 2 * ffn + 8 * d + 2 * d) + d);
    double T = 4096, attn_flops = 12.0 * L * 32 * 128 * T;
    double fd = 6.0 * (double)(V * d + L * (attn + ffn)) + attn_flops;
    double fm = 6.0 * (double)(V * d + L * (attn + 2 * ffn + 8 * d)) + attn_flops;
    CHECK(fabs(mc_train_flops_per_token(&dense, 4096) - fd) < 1);
    CHECK(fabs(mc_train_flops_per_token(&moe, 4096) - fm) < 1);
    double mult = fd / fm;
    CHECK_MSG(mult > 0.55 && mult < 0.6, "iso-FLOP multiplier %g", mult);
    mc_free(&moe);

    /* Fine-grained at the same size: 32 experts of a quarter FFN, top-8,
     * has the total of 8 full copies and the active of 2. */
    o.experts = 32;
    o.top_k = 8;
    o.granularity = 4;
    upcycle_config(&dense, &o, &moe, "mistral");
    mc_params pg = mc_param_count(&moe);
    CHECK(pg.total == pm.total + L * 24 * d && pg.active == pm.active + L * 24 * d);
    mc_free(&moe);
    mc_free(&dense);
    mc_free(&mixtral);
    free(path);
}


/* ---------------------------------------------------------- exactness */

/* Logits of the checkpoint in dir on fixed ids, [B*T][V]. */
static float *logits_of(const char *dir, int B, int T)
{
    model_config c;
    mc_load(&c, dir);
    model *m = model_create(kernels_cpu(), &c);
    st_reader *r = st_open(dir);
    model_load_weights(m, r);
    st_close(r);
    int32_t *ids = upc_malloc((size_t)B * T * sizeof *ids);
    uint64_t s = 99;
    for (int i = 0; i < B * T; i++)
        ids[i] = (int32_t)(upc_splitmix64(&s) % (uint64_t)c.vocab_size);
    model_forward(m, ids, NULL, B, T, NULL);
    float *lg = upc_malloc((size_t)B * T * (size_t)c.vocab_size * sizeof *lg);
    model_get_logits(m, lg);
    free(ids);
    model_free(m);
    mc_free(&c);
    return lg;
}

typedef struct {
    int64_t E, K, G;
    const char *layers;
    upcycle_router_init init;
    double std;
    bool softmax_topk;
} exact_case;

/* With identical experts and renormalised top-k (or the scaled virtual
 * groups) the MoE computes the dense function: max |dlogit| <= 1e-5. The
 * softmax-then-top-k order does not (weights sum to less than one): the
 * check must see the difference. */
static void test_exactness(const char *dense_dir)
{
    const int B = 2, T = 8, V = 64;
    float *ref = logits_of(dense_dir, B, T);
    static const exact_case cases[] = {
        {4, 2, 1, "all", UPCYCLE_ROUTER_NORMAL, 0.02, false},
        {8, 1, 1, "all", UPCYCLE_ROUTER_NORMAL, 1.0, false},
        {2, 2, 1, "all", UPCYCLE_ROUTER_UNIFORM, 1.0, false},
        {8, 8, 1, "all", UPCYCLE_ROUTER_ZEROS, 0, false},
        {6, 3, 3, "all", UPCYCLE_ROUTER_NORMAL, 1.0, false},
        {8, 4, 2, "all", UPCYCLE_ROUTER_NORMAL, 0.5, false},
        {4, 4, 4, "all", UPCYCLE_ROUTER_ZEROS, 0, false},
        {4, 2, 1, "0,2", UPCYCLE_ROUTER_NORMAL, 1.0, false},
        {4, 1, 1, "every:2", UPCYCLE_ROUTER_NORMAL, 1.0, false},
        {4, 2, 1, "all", UPCYCLE_ROUTER_NORMAL, 1.0, true},
    };
    char *out = scratch_path("moe-exact");
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const exact_case *x = &cases[i];
        upcycle_options o;
        upcycle_options_init(&o);
        o.experts = x->E;
        o.top_k = x->K;
        o.granularity = x->G;
        o.router_init = x->init;
        o.router_std = x->std;
        o.softmax_topk = x->softmax_topk;
        o.seed = i;
        bool flags[3];
        char err[200];
        upcycle_parse_layers(x->layers, 3, flags, err, sizeof err);
        o.moe_layers = flags;
        model_config moe;
        run_upcycle(dense_dir, out, &o, &moe);
        mc_free(&moe);
        float *lg = logits_of(out, B, T);
        double worst = 0;
        for (int j = 0; j < B * T * V; j++)
            worst = fmax(worst, fabs((double)lg[j] - ref[j]));
        if (x->softmax_topk)
            CHECK_MSG(worst > 1e-3, "softmax-topk E=%lld K=%lld: max |dlogit| %g, expected a visible difference",
                      (long long)x->E, (long long)x->K, worst);
        else
            CHECK_MSG(worst <= 1e-5, "E=%lld K=%lld G=%lld layers %s: max |dlogit| %g > 1e-5", (long long)x->E,
                      (long long)x->K, (long long)x->G, x->layers, worst);
        free(lg);
    }
    free(out);
    free(ref);
}

/* ---------------------------------------------------------- bad input */

static const char *bad_dense;

static void config_with(const void *arg)
{
    const upcycle_options *o = arg;
    model_config dense, moe;
    mc_load(&dense, bad_dense);
    upcycle_config(&dense, o, &moe, "tiny");
}

static void upcycle_moe(const void *arg)
{
    model_config mixtral, moe;
    mc_load(&mixtral, arg);
    upcycle_options o;
    upcycle_options_init(&o);
    upcycle_config(&mixtral, &o, &moe, "mixtral");
}

static void check_against(const void *arg)
{
    const model_config *c = arg;
    st_reader *r = st_open(bad_dense);
    uint64_t bytes;
    upcycle_check_checkpoint(r, c, &bytes);
}

static void test_bad(const char *dense_dir)
{
    bad_dense = dense_dir;
    upcycle_options o;
    upcycle_options_init(&o);
    o.top_k = 9;
    EXPECT_FAIL(config_with, &o, EX_USAGE, "--top-k");
    o.top_k = 2;
    o.experts = 0;
    EXPECT_FAIL(config_with, &o, EX_USAGE, "--experts");
    o.experts = 8;
    o.granularity = 3;
    EXPECT_FAIL(config_with, &o, EX_USAGE, "--granularity 3 must divide --experts 8");
    o.experts = 10;
    o.granularity = 5;
    EXPECT_FAIL(config_with, &o, EX_USAGE, "intermediate size 24");
    o.experts = 4;
    o.granularity = 2;
    bool f[3] = {true, false, true};
    o.moe_layers = f;
    EXPECT_FAIL(config_with, &o, EX_USAGE, "every layer");
    char *mix = upc_path_join(fixtures, "mixtral-8x7b.config.json");
    EXPECT_FAIL(upcycle_moe, mix, EX_DATAERR, "re-upcycling is not supported");
    free(mix);

    /* The checkpoint against a config of another shape / with more layers. */
    model_config c;
    tiny_config(&c, false);
    c.intermediate_size = 32;
    EXPECT_FAIL(check_against, &c, EX_DATAERR, "model.layers.0.mlp.gate_proj.weight", "shape [24, 16]",
                "expected [32, 16]");
    c.intermediate_size = 24;
    c.num_hidden_layers = 4;
    EXPECT_FAIL(check_against, &c, EX_DATAERR, "model.layers.3.input_layernorm.weight", "missing");
    mc_free(&c);
}

int main(int argc, char **argv)
{
    upc_init("test_upcycle");
    if (argc >= 4 && strcmp(argv[1], "make-dense") == 0) {
        bool bf16 = strcmp(argv[3], "bf16") == 0;
        make_dense(argv[2], bf16 ? ST_BF16 : ST_F32, argc > 4 && strcmp(argv[4], "tied") == 0);
        return 0;
    }
    if (argc != 3) {
        fprintf(stderr, "usage: test_upcycle FIXTURE_DIR SCRATCH_DIR | make-dense DIR f32|bf16 [tied]\n");
        return 64;
    }
    fixtures = argv[1];
    scratch = argv[2];
    char *dense = scratch_path("dense-f32"), *dense_bf16 = scratch_path("dense-bf16");
    make_dense(dense, ST_F32, false);
    make_dense(dense_bf16, ST_BF16, true);
    test_copies(dense);
    test_router_inits(dense);
    test_granularity(dense);
    test_drop_and_noise(dense);
    test_layers(dense);
    test_dtypes(dense, dense_bf16);
    test_mixtral_numbers();
    test_bad(dense);
    test_exactness(dense);   /* last: the forks of test_bad must not inherit BLAS/OpenMP threads */
    free(dense);
    free(dense_bf16);
    printf("test_upcycle: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
