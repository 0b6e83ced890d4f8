/* upcycle.c: dense Llama checkpoint -> Mixtral checkpoint, tensor by tensor
 * (the math of the fine-grained variant is in upcycle.h). */
#include "upcycle.h"

#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void upcycle_options_init(upcycle_options *o)
{
    memset(o, 0, sizeof *o);
    o->experts = 8;
    o->top_k = 2;
    o->granularity = 1;
    o->router_init = UPCYCLE_ROUTER_NORMAL;
    o->router_std = 0.02;
    o->aux_loss_coef = 0.01;
    o->out_dtype = -1;
}

/* ------------------------------------------------------------- layers */

static bool parse_num(const char **p, int64_t *out)
{
    if (!isdigit((unsigned char)**p))
        return false;
    char *end;
    errno = 0;
    long long v = strtoll(*p, &end, 10);
    if (errno)
        return false;
    *out = v;
    *p = end;
    return true;
}

bool upcycle_parse_layers(const char *spec, int64_t L, bool *flags, char *err, size_t errlen)
{
    memset(flags, 0, (size_t)L * sizeof *flags);
    if (strcmp(spec, "all") == 0) {
        for (int64_t l = 0; l < L; l++)
            flags[l] = true;
        return true;
    }
    if (strncmp(spec, "every:", 6) == 0) {
        const char *p = spec + 6;
        int64_t n;
        if (!parse_num(&p, &n) || *p || n < 1) {
            snprintf(err, errlen, "'%s': expected every:N with N >= 1", spec);
            return false;
        }
        if (n > L) {
            snprintf(err, errlen, "'%s': the model has only %lld layers", spec, (long long)L);
            return false;
        }
        for (int64_t l = n - 1; l < L; l += n)
            flags[l] = true;
        return true;
    }
    const char *p = spec;
    for (;;) {
        int64_t a, b;
        if (!parse_num(&p, &a)) {
            snprintf(err, errlen, "'%s': expected all, every:N or a list like 0,2,4-7", spec);
            return false;
        }
        b = a;
        if (*p == '-') {
            p++;
            if (!parse_num(&p, &b) || b < a) {
                snprintf(err, errlen, "'%s': expected a range A-B with A <= B", spec);
                return false;
            }
        }
        if (b >= L) {
            snprintf(err, errlen, "'%s': layer %lld out of range, the model has layers 0 to %lld", spec,
                     (long long)b, (long long)L - 1);
            return false;
        }
        for (int64_t l = a; l <= b; l++) {
            if (flags[l]) {
                snprintf(err, errlen, "'%s': layer %lld listed twice", spec, (long long)l);
                return false;
            }
            flags[l] = true;
        }
        if (*p == 0)
            return true;
        if (*p != ',') {
            snprintf(err, errlen, "'%s': expected all, every:N or a list like 0,2,4-7", spec);
            return false;
        }
        p++;
    }
}

/* ------------------------------------------------------------- config */

static const char *router_init_name(upcycle_router_init r)
{
    return r == UPCYCLE_ROUTER_ZEROS ? "zeros" : r == UPCYCLE_ROUTER_UNIFORM ? "uniform" : "normal";
}

void upcycle_config(const model_config *dense, const upcycle_options *o, model_config *moe, const char *name)
{
    if (dense->moe)
        upc_fail(EX_DATAERR, "%s: already a MoE model (MixtralForCausalLM); re-upcycling is not supported yet",
                 name);
    const char *unsup = mc_unsupported(dense);
    if (unsup)
        upc_fail(EX_DATAERR, "%s: %s is not supported by the upcyc model", name, unsup);
    int64_t E = o->experts, K = o->top_k, G = o->granularity, f = dense->intermediate_size;
    if (E < 1)
        upc_usage_fail("--experts must be at least 1, got %lld", (long long)E);
    if (K < 1 || K > E)
        upc_usage_fail("--top-k must be between 1 and --experts (%lld), got %lld", (long long)E, (long long)K);
    if (G < 1 || E % G != 0)
        upc_usage_fail("--granularity %lld must divide --experts %lld", (long long)G, (long long)E);
    if (f % G != 0)
        upc_usage_fail("--granularity %lld must divide the intermediate size %lld of %s", (long long)G,
                       (long long)f, name);
    bool all = true;
    for (int64_t l = 0; o->moe_layers && l < dense->num_hidden_layers; l++)
        all = all && o->moe_layers[l];
    if (G > 1 && !all)
        upc_usage_fail("--granularity > 1 needs every layer as MoE: the config has one intermediate size");
    if (o->drop_ratio < 0 || o->drop_ratio > 1)
        upc_usage_fail("--drop-ratio must be in [0, 1], got %g", o->drop_ratio);

    mc_copy(moe, dense);
    moe->moe = true;
    moe->intermediate_size = f / G;
    moe->num_local_experts = E;
    moe->num_experts_per_tok = K;
    moe->router_aux_loss_coef = o->aux_loss_coef;
    moe->router_jitter_noise = 0;
    moe->norm_topk_prob = !o->softmax_topk;
    moe->output_router_logits = false;
    free(moe->layer_is_moe);
    moe->layer_is_moe = NULL;
    if (!all) {
        moe->layer_is_moe = upc_malloc((size_t)dense->num_hidden_layers * sizeof *moe->layer_is_moe);
        memcpy(moe->layer_is_moe, o->moe_layers, (size_t)dense->num_hidden_layers * sizeof *moe->layer_is_moe);
    }
    if (o->out_dtype == ST_F32)
        snprintf(moe->torch_dtype, sizeof moe->torch_dtype, "float32");
    else if (o->out_dtype == ST_BF16)
        snprintf(moe->torch_dtype, sizeof moe->torch_dtype, "bfloat16");
    else if (o->out_dtype == ST_F16)
        snprintf(moe->torch_dtype, sizeof moe->torch_dtype, "float16");

    /* How it was made, for whoever reads the checkpoint later. */
    if (!moe->upcyc)
        moe->upcyc = json_object();
    json_t *u = json_object();
    json_object_set_new(u, "granularity", json_integer(G));
    json_object_set_new(u, "seed", json_integer((json_int_t)o->seed));
    json_object_set_new(u, "router_init", json_string(router_init_name(o->router_init)));
    json_object_set_new(u, "router_std", json_real(o->router_std));
    json_object_set_new(u, "expert_noise", json_real(o->expert_noise));
    json_object_set_new(u, "drop_ratio", json_real(o->drop_ratio));
    json_object_set_new(u, "routing", json_string(o->softmax_topk ? "softmax-topk" : "renorm-topk"));
    json_object_set_new(u, "dense_intermediate_size", json_integer(f));
    json_object_set_new(moe->upcyc, "upcycle", u);
    mc_validate(moe, name);
}

/* ------------------------------------------------------------- checks */

static bool shape_is(const st_tensor *t, const mc_tensor *m)
{
    if (t->ndim != m->ndim)
        return false;
    for (int i = 0; i < m->ndim; i++)
        if (t->shape[i] != (uint64_t)m->shape[i])
            return false;
    return true;
}

static void shape_text(char *buf, size_t n, int ndim, const uint64_t *shape)
{
    size_t at = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && at < n; i++)
        at += (size_t)snprintf(buf + at, n - at, i ? ", %llu" : "%llu", (unsigned long long)shape[i]);
    if (at < n)
        snprintf(buf + at, n - at, "]");
}

size_t upcycle_check_checkpoint(const st_reader *r, const model_config *dense, uint64_t *bytes)
{
    *bytes = 0;
    size_t n;
    mc_tensor *want = mc_tensors(dense, &n);
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_find(r, want[i].name);
        if (!t)
            upc_fail(EX_DATAERR, "%s: tensor %s: missing (the config implies it)", st_path(r), want[i].name);
        if (!st_dtype_is_float(t->dtype))
            upc_fail(EX_DATAERR, "%s: tensor %s: dtype %s, expected F32, BF16 or F16", st_path(r), t->name,
                     st_dtype_name(t->dtype));
        if (!shape_is(t, &want[i])) {
            char got[96], exp[96];
            uint64_t ws[2] = {(uint64_t)want[i].shape[0], (uint64_t)want[i].shape[1]};
            shape_text(got, sizeof got, t->ndim, t->shape);
            shape_text(exp, sizeof exp, want[i].ndim, ws);
            upc_fail(EX_DATAERR, "%s: tensor %s: shape %s, expected %s from the config", st_path(r), t->name, got,
                     exp);
        }
        *bytes += t->nbytes;
    }
    size_t extra = st_count(r) - n;
    free(want);
    return extra;
}

/* ------------------------------------------------------------- random */

/* One independent stream per (layer, index, purpose), so the values do not
 * depend on the order or chunking of the writes. */
enum { RNG_ROUTER = 1, RNG_NOISE, RNG_DROP_SET, RNG_DROP_VALUES };

typedef struct {
    uint64_t s;
} rng;

static rng rng_for(uint64_t seed, int64_t layer, int64_t index, int purpose, int kind)
{
    int64_t key[4] = {layer, index, purpose, kind};
    rng g = {upc_hash64(key, sizeof key, seed)};
    return g;
}

static double rng_unit(rng *g)   /* (0, 1] */
{
    return (double)((upc_splitmix64(&g->s) >> 11) + 1) * 0x1.0p-53;
}

static double rng_normal(rng *g)  /* Box-Muller, one value per two draws */
{
    double u1 = rng_unit(g), u2 = rng_unit(g);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* ------------------------------------------------------------- writing */

/* Drop this tensor's pages from the resident set: the mapping is private and
 * read-only, so they come back from the page cache if read again. */
static void release_pages(const st_tensor *t)
{
    if (!t->nbytes)
        return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)t->data & ~(page - 1);
    uintptr_t b = ((uintptr_t)t->data + t->nbytes + page - 1) & ~(page - 1);
    madvise((void *)a, b - a, MADV_DONTNEED);
}

static st_dtype out_dtype(const upcycle_options *o, st_dtype src)
{
    return o->out_dtype < 0 ? src : (st_dtype)o->out_dtype;
}

enum { KIND_W1, KIND_W3, KIND_W2 };

typedef struct {
    const st_reader *r;
    const upcycle_options *o;
    st_writer *w;
    float *buf;
    size_t buf_cap;               /* floats */
    int64_t d, f, fe, G;          /* hidden, dense intermediate, per expert, granularity */
    /* The drop set of the current expert (flags over its fe dims). */
    int64_t drop_layer, drop_expert;
    bool *dropped;
    int64_t *perm;
    int64_t ndrop;
} ctx;

static void need_buf(ctx *c, size_t n)
{
    if (n > c->buf_cap) {
        free(c->buf);
        c->buf = upc_malloc(n * sizeof *c->buf);
        c->buf_cap = n;
    }
}

static void drop_set(ctx *c, int64_t layer, int64_t e)
{
    if (c->drop_layer == layer && c->drop_expert == e)
        return;
    c->drop_layer = layer;
    c->drop_expert = e;
    int64_t fe = c->fe;
    c->ndrop = (int64_t)llround(c->o->drop_ratio * (double)fe);
    memset(c->dropped, 0, (size_t)fe * sizeof *c->dropped);
    for (int64_t i = 0; i < fe; i++)
        c->perm[i] = i;
    rng g = rng_for(c->o->seed, layer, e, RNG_DROP_SET, 0);
    for (int64_t i = 0; i < c->ndrop; i++) {   /* partial Fisher-Yates */
        int64_t j = i + (int64_t)(upc_splitmix64(&g.s) % (uint64_t)(fe - i));
        int64_t t = c->perm[i];
        c->perm[i] = c->perm[j];
        c->perm[j] = t;
        c->dropped[c->perm[i]] = true;
    }
}

/* Row `row` of the expert tensor (before noise/drop): w1/w3 rows are dense
 * rows s*fe + row; w2 rows are dense rows with columns [s*fe, s*fe + fe),
 * scaled by G (see upcycle.h). */
static void expert_row(ctx *c, const st_tensor *src, int kind, int64_t s, int64_t row, float *dst)
{
    if (kind == KIND_W2) {
        st_tensor_f32(c->r, src, (uint64_t)(row * c->f + s * c->fe), (size_t)c->fe, dst);
        if (c->G > 1)
            for (int64_t j = 0; j < c->fe; j++)
                dst[j] *= (float)c->G;
    } else {
        st_tensor_f32(c->r, src, (uint64_t)((s * c->fe + row) * c->d), (size_t)c->d, dst);
    }
}

static bool is_dropped(const ctx *c, int kind, int64_t row, int64_t col)
{
    return c->ndrop > 0 && c->dropped[kind == KIND_W2 ? col : row];
}

static void write_expert(ctx *c, const st_tensor *src, st_dtype out, int kind, int64_t layer, int64_t e)
{
    const upcycle_options *o = c->o;
    int64_t s = e % c->G;
    int64_t rows = kind == KIND_W2 ? c->d : c->fe, cols = kind == KIND_W2 ? c->fe : c->d;
    if (o->drop_ratio > 0)
        drop_set(c, layer, e);
    else
        c->ndrop = 0;
    bool plain = o->expert_noise == 0 && c->ndrop == 0 && out == src->dtype && (kind != KIND_W2 || c->G == 1);
    if (plain) {   /* a contiguous run of the source, byte for byte */
        size_t es = st_dtype_size(src->dtype);
        size_t first = kind == KIND_W2 ? 0 : (size_t)(s * c->fe * c->d);
        st_writer_write_raw(c->w, src->data + first * es, (size_t)(rows * cols) * es);
        return;
    }
    /* Mean and std of the slice that Drop-Upcycling replaces. */
    double mean = 0, std = 0;
    need_buf(c, (size_t)cols);
    if (c->ndrop > 0) {
        double sum = 0, sq = 0, n = 0;
        for (int64_t i = 0; i < rows; i++) {
            if (kind != KIND_W2 && !c->dropped[i])
                continue;
            expert_row(c, src, kind, s, i, c->buf);
            for (int64_t j = 0; j < cols; j++)
                if (is_dropped(c, kind, i, j)) {
                    sum += c->buf[j];
                    sq += (double)c->buf[j] * c->buf[j];
                    n++;
                }
        }
        mean = sum / n;
        std = sqrt(fmax(sq / n - mean * mean, 0));
    }
    rng noise = rng_for(o->seed, layer, e, RNG_NOISE, kind);
    rng fresh = rng_for(o->seed, layer, e, RNG_DROP_VALUES, kind);
    for (int64_t i = 0; i < rows; i++) {
        expert_row(c, src, kind, s, i, c->buf);
        for (int64_t j = 0; j < cols; j++) {
            if (is_dropped(c, kind, i, j))
                c->buf[j] = (float)(mean + std * rng_normal(&fresh));
            else if (o->expert_noise > 0)
                c->buf[j] += (float)(o->expert_noise * rng_normal(&noise));
        }
        st_writer_write_f32(c->w, c->buf, (size_t)cols);
    }
}

static void write_router(ctx *c, int64_t layer, int64_t E)
{
    const upcycle_options *o = c->o;
    need_buf(c, (size_t)c->d);
    for (int64_t g = 0; g < E / c->G; g++) {
        rng r = rng_for(o->seed, layer, g, RNG_ROUTER, 0);
        for (int64_t j = 0; j < c->d; j++) {
            double v = 0;
            if (o->router_init == UPCYCLE_ROUTER_NORMAL)
                v = o->router_std * rng_normal(&r);
            else if (o->router_init == UPCYCLE_ROUTER_UNIFORM)
                v = o->router_std * sqrt(3.0) * (2 * rng_unit(&r) - 1);
            c->buf[j] = (float)v;
        }
        for (int64_t k = 0; k < c->G; k++)   /* the group's experts score alike */
            st_writer_write_f32(c->w, c->buf, (size_t)c->d);
    }
}

static const st_tensor *dense_ffn(const st_reader *r, int64_t layer, int kind)
{
    static const char *proj[] = {"gate_proj", "up_proj", "down_proj"};
    char name[128];
    snprintf(name, sizeof name, "model.layers.%lld.mlp.%s.weight", (long long)layer, proj[kind]);
    return st_need(r, name);
}

uint64_t upcycle_write(const st_reader *r, const model_config *dense, const model_config *moe,
                       const upcycle_options *o, st_writer *w)
{
    uint64_t bytes = 0;
    size_t n;
    mc_tensor *ts = mc_tensors(moe, &n);
    const st_tensor **src = upc_calloc(n, sizeof *src);
    int *kind = upc_calloc(n, sizeof *kind);
    for (size_t i = 0; i < n; i++) {
        const mc_tensor *m = &ts[i];
        static const char router[] = "block_sparse_moe.gate.weight";
        size_t len = strlen(m->name), rlen = sizeof router - 1;
        if (m->expert >= 0) {
            kind[i] = strstr(m->name, ".w1.") ? KIND_W1 : strstr(m->name, ".w3.") ? KIND_W3 : KIND_W2;
            src[i] = dense_ffn(r, m->layer, kind[i]);
        } else if (len > rlen && strcmp(m->name + len - rlen, router) == 0) {
            src[i] = dense_ffn(r, m->layer, KIND_W1);   /* for its dtype only */
            kind[i] = -1;
        } else {
            src[i] = st_need(r, m->name);
            kind[i] = -2;
        }
        uint64_t shape[2] = {(uint64_t)m->shape[0], (uint64_t)m->shape[1]};
        st_dtype out = out_dtype(o, src[i]->dtype);
        st_writer_add(w, m->name, out, m->ndim, shape);
        bytes += shape[0] * (m->ndim == 2 ? shape[1] : 1) * st_dtype_size(out);
    }
    st_writer_begin_data(w);

    ctx c = {.r = r, .o = o, .w = w, .d = dense->hidden_size, .f = dense->intermediate_size,
             .fe = moe->intermediate_size, .G = o->granularity, .drop_layer = -1, .drop_expert = -1};
    c.dropped = upc_calloc((size_t)c.fe, sizeof *c.dropped);
    c.perm = upc_calloc((size_t)c.fe, sizeof *c.perm);
    for (size_t i = 0; i < n; i++) {
        st_dtype out = out_dtype(o, src[i]->dtype);
        if (kind[i] == -2) {
            st_writer_write_tensor(w, r, src[i]);
            release_pages(src[i]);
        } else if (kind[i] == -1) {
            write_router(&c, ts[i].layer, moe->num_local_experts);
        } else {
            write_expert(&c, src[i], out, kind[i], ts[i].layer, ts[i].expert);
            if (ts[i].expert == moe->num_local_experts - 1)   /* its last reader */
                release_pages(src[i]);
        }
    }
    free(c.buf);
    free(c.dropped);
    free(c.perm);
    free(src);
    free(kind);
    free(ts);
    return bytes;
}
