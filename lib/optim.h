/* optim.h: AdamW and Lion over a model's parameter buffer. The moments
 * mirror the parameter layout (one buffer each), so a step is one kernel
 * call per tensor: per tensor only because weight decay skips the norms
 * (model_tensor.decay). Saved as optimizer.safetensors beside the model:
 * per parameter NAME the tensors "NAME.exp_avg" (AdamW and Lion) and
 * "NAME.exp_avg_sq" (AdamW), F32, the names PyTorch's optimizers use for
 * their state; __metadata__ holds "optimizer" and "step". */
#ifndef UPCYC_OPTIM_H
#define UPCYC_OPTIM_H

#include "model.h"
#include "safetensors.h"

#include <stdbool.h>

typedef enum { OPTIM_ADAMW, OPTIM_LION } optim_kind;

typedef struct {
    optim_kind kind;
    double beta1, beta2, eps, weight_decay;
} optim_config;

typedef struct {
    optim_config cfg;
    const upc_kernels *K;
    size_t n_floats;
    float *exp_avg;       /* device, the model's layout */
    float *exp_avg_sq;    /* device; NULL for Lion */
    long long step;       /* optimizer steps taken */
    float *scratch;       /* device float for reductions */
} optim;

/* Defaults: AdamW betas (0.9, 0.95), eps 1e-8, weight decay 0.1; Lion betas
 * (0.9, 0.99), weight decay 1.0 (Lion wants about 10x AdamW's, at a 3-10x
 * smaller lr). */
void optim_config_default(optim_config *c, optim_kind kind);
bool optim_kind_parse(const char *name, optim_kind *out);
const char *optim_kind_name(optim_kind k);

/* Zeroed moments for m (EX_OSERR when memory runs out). */
optim *optim_create(const model *m, const optim_config *c);
void optim_free(optim *o);

/* The global L2 norm of m's gradients (the padding is zero). */
double optim_grad_norm(optim *o, const model *m);

/* One step at learning rate lr; every gradient is multiplied by grad_scale
 * first (clipping). Increments o->step before the update (bias corrections
 * use the 1-based step). */
void optim_step(optim *o, model *m, double lr, double grad_scale);

/* Write the moments to path (a .safetensors file), atomically. */
void optim_save(const optim *o, const model *m, const char *path);
/* Read them back; fails (EX_DATAERR) naming the file when it was written
 * by another optimizer or for another model (a missing or misshapen
 * tensor). Sets o->step from the metadata. */
void optim_load(optim *o, const model *m, const st_reader *r);

#endif
