/* model_moe.c: the Mixtral MoE FFN of one block, forward and backward:
 * router linear -> softmax -> top-k -> dropless dispatch (rows sorted by
 * expert) -> grouped expert GEMMs (w1 gate, w3 up, w2 down) -> weighted
 * combine; and the router's auxiliary losses.
 *
 * Capacity mode (upcyc.capacity_factor > 0): the combine weights of the
 * assignments past each expert's capacity are zeroed after routing (the
 * top-k weights are renormalised before, as in GShard and Switch), so a
 * dropped token slot adds nothing and passes no gradient; the expert GEMMs
 * still run over every row, so the FLOPs are those of dropless routing. */
#include "model.h"
#include "model_internal.h"
#include "util.h"

#include <math.h>

#define P(m, off) ((m)->params + (off))
#define G(m, off) ((m)->grads + (off))

int model_expert_capacity(const model *m, int N)
{
    double c = ceil(m->capacity_factor * (double)N * m->kk / m->E);
    return c > (double)N * m->kk ? N * m->kk : (int)c;
}

/* Block l's own jitter stream: the batch's key moved by a large odd
 * multiple of the block number. */
static uint64_t jitter_key(const model *m, int l)
{
    return m->ws->jitter_key + 0xd1342543de82ef95ULL * (uint64_t)(l + 1);
}

void model_moe_forward(model *m, int l, const float *x_mid, float *x_out)
{
    const upc_kernels *K = m->K;
    const model_layer *ly = &m->layers[l];
    ws_layer *y = &m->ws->layer[l];
    int N = m->ws->N, d = m->d, F = m->F, E = m->E, kk = m->kk;
    int Nk = N * kk;
    /* router jitter: the block's input h2 itself is scaled (the backward
     * reads it as the router's and experts' input) */
    if (m->ws->jittered)
        K->jitter_scale(K, y->h2, (size_t)N * d, m->jitter, jitter_key(m, l));
    K->gemm(K, 0, 1, N, E, d, 1.0f, y->h2, d, P(m, ly->router), d, 0.0f, y->router_logits, E);
    K->router_fwd(K, y->router_logits, y->probs, y->topk_idx, y->topk_w, N, E, kk, m->renorm);
    K->moe_dispatch(K, y->topk_idx, N, kk, E, y->counts, y->offs, y->perm, y->pos);
    if (m->capacity_factor > 0) {
        K->copy(K, y->kept_w, y->topk_w, (size_t)Nk * sizeof(float));
        K->moe_capacity_drop(K, y->topk_idx, y->pos, y->offs, N, kk, E, model_expert_capacity(m, N), y->kept_w,
                             y->dropped);
    }
    K->moe_gather(K, y->h2, y->perm, N, kk, d, y->xs);
    K->grouped_gemm_fwd(K, E, y->offs, F, d, y->xs, P(m, ly->w1), 0.0f, y->gate_s);
    K->grouped_gemm_fwd(K, E, y->offs, F, d, y->xs, P(m, ly->w3), 0.0f, y->up_s);
    K->swiglu_fwd(K, y->gate_s, y->up_s, y->act_s, (size_t)Nk * F);
    K->grouped_gemm_fwd(K, E, y->offs, d, F, y->act_s, P(m, ly->w2), 0.0f, y->ys);
    K->copy(K, x_out, x_mid, (size_t)N * d * sizeof(float));
    K->moe_combine(K, y->ys, y->pos, y->kept_w, N, kk, d, 1.0f, x_out);
}

/* The forward's expert counts and drops of every MoE block to the host, in
 * one go after the blocks ran: a download waits for the device, and one
 * per block would stall it once per layer. */
void model_moe_download_counts(model *m)
{
    const upc_kernels *K = m->K;
    for (int l = 0; l < m->L; l++) {
        if (!m->layers[l].moe)
            continue;
        ws_layer *y = &m->ws->layer[l];
        K->download(K, m->expert_counts + (size_t)l * m->E, y->counts, (size_t)m->E * sizeof(int32_t));
        if (m->capacity_factor > 0)
            K->download(K, m->dropped_counts + l, y->dropped, sizeof(int32_t));
    }
}

/* lb with alpha = kk: kernels.h's Switch f_i is count_i/(N*kk); HF Mixtral
 * uses count_i/N. */
void model_moe_aux_losses(model *m, int l, double *lb, double *z)
{
    const upc_kernels *K = m->K;
    ws_layer *y = &m->ws->layer[l];
    float *s = m->ws->scalars;
    float got[2];
    K->moe_lb_loss_fwd(K, y->probs, y->topk_idx, m->ws->N, m->E, m->kk, (float)m->kk, s + 1);
    K->moe_z_loss_fwd(K, y->router_logits, m->ws->N, m->E, 1.0f, s + 2);
    K->download(K, got, s + 1, sizeof got);
    *lb = got[0];
    *z = got[1];
}

void model_moe_backward(model *m, int l, const float *dres, float aux_scale, float z_scale)
{
    const upc_kernels *K = m->K;
    const model_layer *ly = &m->layers[l];
    model_workspace *w = m->ws;
    ws_layer *y = &w->layer[l];
    int N = w->N, d = m->d, F = m->F, E = m->E, kk = m->kk;
    int Nk = N * kk;
    float *dact = w->df1, *dgate = w->df2, *dup = w->df3;

    K->moe_combine_bwd(K, dres, y->ys, y->pos, y->kept_w, N, kk, d, w->dys, w->dtopk_w);
    /* a dropped slot's weight is a constant 0: no gradient reaches the router */
    if (m->capacity_factor > 0)
        K->moe_capacity_drop(K, y->topk_idx, y->pos, y->offs, N, kk, E, model_expert_capacity(m, N), w->dtopk_w,
                             NULL);
    K->grouped_gemm_dx(K, E, y->offs, d, F, w->dys, P(m, ly->w2), 0.0f, dact);
    K->grouped_gemm_dw(K, E, y->offs, d, F, w->dys, y->act_s, 1.0f, G(m, ly->w2));
    K->swiglu_bwd(K, y->gate_s, y->up_s, dact, dgate, dup, (size_t)Nk * F);
    K->grouped_gemm_dx(K, E, y->offs, F, d, dgate, P(m, ly->w1), 0.0f, w->dxs);
    K->grouped_gemm_dx(K, E, y->offs, F, d, dup, P(m, ly->w3), 1.0f, w->dxs);
    K->grouped_gemm_dw(K, E, y->offs, F, d, dgate, y->xs, 1.0f, G(m, ly->w1));
    K->grouped_gemm_dw(K, E, y->offs, F, d, dup, y->xs, 1.0f, G(m, ly->w3));
    K->moe_gather_bwd(K, w->dxs, y->pos, N, kk, d, w->dh);

    K->router_bwd(K, y->probs, y->topk_idx, y->topk_w, w->dtopk_w, w->drouter, N, E, kk, m->renorm);
    if (aux_scale != 0.0f)
        K->moe_lb_loss_bwd(K, y->probs, y->topk_idx, N, E, kk, (float)kk, aux_scale, w->drouter);
    if (z_scale != 0.0f)
        K->moe_z_loss_bwd(K, y->router_logits, N, E, 1.0f, z_scale, w->drouter);
    K->gemm(K, 1, 0, E, d, N, 1.0f, w->drouter, E, y->h2, d, 1.0f, G(m, ly->router), d);
    K->gemm(K, 0, 0, N, d, E, 1.0f, w->drouter, E, P(m, ly->router), d, 1.0f, w->dh, d);
    /* d loss / d h2 = the jittered input's gradient times the same factors */
    if (w->jittered)
        K->jitter_scale(K, w->dh, (size_t)N * d, m->jitter, jitter_key(m, l));
}
