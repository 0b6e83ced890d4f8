/* optim.c: AdamW and Lion steps over the model's tensors, gradient norm,
 * and the optimizer.safetensors file (optim.h). */
#include "optim.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_names[] = {"adamw", "lion"};

bool optim_kind_parse(const char *name, optim_kind *out)
{
    for (int i = 0; i < 2; i++)
        if (strcmp(name, kind_names[i]) == 0) {
            *out = (optim_kind)i;
            return true;
        }
    return false;
}

const char *optim_kind_name(optim_kind k)
{
    return kind_names[k];
}

void optim_config_default(optim_config *c, optim_kind kind)
{
    c->kind = kind;
    c->beta1 = 0.9;
    c->beta2 = kind == OPTIM_LION ? 0.99 : 0.95;
    c->eps = 1e-8;
    c->weight_decay = kind == OPTIM_LION ? 1.0 : 0.1;
}

static float *alloc_floats(const upc_kernels *K, size_t n, const char *what)
{
    float *p = K->alloc(K, n * sizeof(float));
    if (!p)
        upc_fail(EX_OSERR, "optimizer: out of memory for %s (%.3f GB)", what, (double)n * 4 / 1e9);
    return p;
}

optim *optim_create(const model *m, const optim_config *c)
{
    optim *o = upc_calloc(1, sizeof *o);
    o->cfg = *c;
    o->K = m->K;
    o->n_floats = m->n_floats;
    o->exp_avg = alloc_floats(m->K, m->n_floats, "the first moments");
    if (c->kind == OPTIM_ADAMW)
        o->exp_avg_sq = alloc_floats(m->K, m->n_floats, "the second moments");
    o->scratch = alloc_floats(m->K, 1, "a reduction");
    return o;
}

void optim_free(optim *o)
{
    if (!o)
        return;
    o->K->free(o->K, o->exp_avg);
    o->K->free(o->K, o->exp_avg_sq);
    o->K->free(o->K, o->scratch);
    free(o);
}

double optim_grad_norm(optim *o, const model *m)
{
    const upc_kernels *K = o->K;
    float sumsq;
    K->sumsq(K, m->grads, m->n_floats, o->scratch);
    K->download(K, &sumsq, o->scratch, sizeof sumsq);
    return sqrt((double)sumsq);
}

void optim_step(optim *o, model *m, double lr, double grad_scale)
{
    const upc_kernels *K = o->K;
    o->step++;
    upc_optim_params hp = {
        .lr = (float)lr,
        .beta1 = (float)o->cfg.beta1,
        .beta2 = (float)o->cfg.beta2,
        .eps = (float)o->cfg.eps,
        .grad_scale = (float)grad_scale,
    };
    upc_optim_params_at(&hp, o->step);
    for (size_t i = 0; i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        hp.weight_decay = t->decay ? (float)o->cfg.weight_decay : 0.0f;
        size_t off = t->offset;
        if (o->cfg.kind == OPTIM_ADAMW)
            K->adamw_step(K, m->params + off, m->grads + off, o->exp_avg + off, o->exp_avg_sq + off, t->numel, hp);
        else
            K->lion_step(K, m->params + off, m->grads + off, o->exp_avg + off, t->numel, hp);
    }
    model_params_changed(m);
}

static const char *const moment_suffix[] = {".exp_avg", ".exp_avg_sq"};

static float *moment(const optim *o, int which)
{
    return which ? o->exp_avg_sq : o->exp_avg;
}

void optim_save(const optim *o, const model *m, const char *path)
{
    const upc_kernels *K = o->K;
    int moments = o->cfg.kind == OPTIM_ADAMW ? 2 : 1;
    st_writer *w = st_writer_file(path);
    char step[32], name[128];
    snprintf(step, sizeof step, "%lld", o->step);
    st_writer_meta(w, "optimizer", optim_kind_name(o->cfg.kind));
    st_writer_meta(w, "step", step);
    for (int k = 0; k < moments; k++)
        for (size_t i = 0; i < m->n_tensors; i++) {
            const model_tensor *t = &m->tensors[i];
            uint64_t shape[2] = {(uint64_t)t->shape[0], (uint64_t)t->shape[1]};
            snprintf(name, sizeof name, "%s%s", t->name, moment_suffix[k]);
            st_writer_add(w, name, ST_F32, t->ndim, shape);
        }
    st_writer_begin_data(w);
    float *host = upc_malloc(model_largest_tensor(m) * sizeof(float));
    for (int k = 0; k < moments; k++)
        for (size_t i = 0; i < m->n_tensors; i++) {
            const model_tensor *t = &m->tensors[i];
            K->download(K, host, moment(o, k) + t->offset, t->numel * sizeof(float));
            st_writer_write_f32(w, host, t->numel);
        }
    free(host);
    st_writer_commit(w);
}

void optim_load(optim *o, const model *m, const st_reader *r)
{
    const char *kind = st_meta(r, "optimizer"), *step = st_meta(r, "step");
    if (!kind || strcmp(kind, optim_kind_name(o->cfg.kind)) != 0)
        upc_fail(EX_DATAERR, "%s: optimizer state is for %s, this run uses %s", st_path(r), kind ? kind : "(unnamed)",
                 optim_kind_name(o->cfg.kind));
    char *end;
    long long s = step ? strtoll(step, &end, 10) : -1;
    if (!step || *end || s < 0)
        upc_fail(EX_DATAERR, "%s: metadata \"step\" missing or not a count", st_path(r));
    int moments = o->cfg.kind == OPTIM_ADAMW ? 2 : 1;
    char name[128];
    /* names and shapes first: a bad file changes nothing */
    for (int k = 0; k < moments; k++)
        for (size_t i = 0; i < m->n_tensors; i++) {
            const model_tensor *t = &m->tensors[i];
            snprintf(name, sizeof name, "%s%s", t->name, moment_suffix[k]);
            const st_tensor *st = st_find(r, name);
            if (!st)
                upc_fail(EX_DATAERR, "%s: tensor %s missing", st_path(r), name);
            uint64_t numel = 1;
            for (int d = 0; d < st->ndim; d++)
                numel *= st->shape[d];
            if (st->ndim != t->ndim || numel != t->numel || st->dtype != ST_F32)
                upc_fail(EX_DATAERR, "%s: tensor %s is not F32 of the parameter's shape", st_path(r), name);
        }
    float *host = upc_malloc(model_largest_tensor(m) * sizeof(float));
    for (int k = 0; k < moments; k++)
        for (size_t i = 0; i < m->n_tensors; i++) {
            const model_tensor *t = &m->tensors[i];
            snprintf(name, sizeof name, "%s%s", t->name, moment_suffix[k]);
            st_get_f32(r, name, host, t->numel);
            o->K->upload(o->K, moment(o, k) + t->offset, host, t->numel * sizeof(float));
        }
    free(host);
    o->step = s;
}
