/* model_internal.h: what model.c, model_forward.c and model_moe.c share:
 * the workspace of saved activations and backward scratch. Not for tools. */
#ifndef UPCYC_MODEL_INTERNAL_H
#define UPCYC_MODEL_INTERNAL_H

#include "model.h"

/* Saved activations of one block. x_in is the block's input (the residual
 * stream), x_mid the stream after attention. */
typedef struct {
    float *rstd1, *h1, *q, *k, *v, *att, *lse, *x_mid, *rstd2, *h2;
    float *gate, *up, *act;                      /* dense FFN [N][F] */
    /* MoE FFN: router logits and probs [N][E], top-k [N][kk], dispatch,
     * expert-sorted rows [N*kk][...]. */
    float *router_logits, *probs, *topk_w;
    float *kept_w;                               /* capacity mode: topk_w, dropped slots 0 */
    int32_t *topk_idx, *counts, *offs, *perm, *pos, *dropped;
    float *xs, *gate_s, *up_s, *act_s, *ys;
} ws_layer;

struct model_workspace {
    int B, T, N;
    void *arena;                                 /* one device allocation */
    size_t arena_bytes;
    int32_t *ids, *targets;
    float **x;                                   /* L+1 residual streams [N][d] */
    ws_layer *layer;
    float *rstd_f, *hf, *logits, *lse_ce, *loss_rows, *scalars;
    /* backward scratch */
    float *dres, *dtmp, *dh, *dq, *dk, *dv, *datt, *df1, *df2, *df3, *dxs, *dys, *dtopk_w, *drouter;
    float *att_scratch;                          /* model->attention_gemm: score matrices */
    bool att_gemm;                               /* the workspace was planned with them */
    bool ready;                                  /* a forward with targets awaits its backward */
    bool jittered;                               /* that forward jittered its MoE inputs (with jitter_key) */
    uint64_t jitter_key;
    long long n_targets;
    float *host_rows;                            /* host [N]: per-row losses */
};

void model_release_workspace(model *m);

/* The MoE FFN of block l: x_out = x_mid + moe(h2); and its backward, which
 * turns dres (d loss / d x_out) into ws->dh (d loss / d h2). */
void model_moe_forward(model *m, int l, const float *x_mid, float *x_out);
void model_moe_backward(model *m, int l, const float *dres, float aux_scale, float z_scale);
/* m->expert_counts and dropped_counts of the last forward, from the device. */
void model_moe_download_counts(model *m);
/* Unweighted lb (HF Mixtral scale) and z losses of block l's router. */
void model_moe_aux_losses(model *m, int l, double *lb, double *z);

#endif
