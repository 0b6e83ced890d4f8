/* model_forward.c: the workspace (saved activations, sized once per batch
 * shape), forward with losses, and backward, all through upc_kernels. */
#include "attention_gemm.h"
#include "model.h"
#include "model_internal.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

#define P(m, off) ((m)->params + (off))
#define G(m, off) ((m)->grads + (off))

/* ---- workspace --------------------------------------------------------------
 * One device allocation carved into named pieces: plan_workspace runs twice,
 * first to add up the sizes (base NULL), then to hand out the pointers. */

typedef struct {
    char *base;
    size_t used;
} carver;

static void *carve(carver *c, size_t bytes)
{
    size_t at = c->used;
    c->used += (bytes + 63) / 64 * 64;
    return c->base ? c->base + at : NULL;
}
#define CARVE_F(c, n) ((float *)carve((c), (size_t)(n) * sizeof(float)))
#define CARVE_I(c, n) ((int32_t *)carve((c), (size_t)(n) * sizeof(int32_t)))

static void plan_workspace(const model *m, model_workspace *w, carver *c)
{
    size_t N = (size_t)w->N, d = (size_t)m->d, F = (size_t)m->F, V = (size_t)m->V;
    size_t qd = (size_t)m->Hq * m->hd, kvd = (size_t)m->Hkv * m->hd;
    size_t E = (size_t)m->E, kk = (size_t)m->kk, Nk = N * kk;
    w->ids = CARVE_I(c, N);
    w->targets = CARVE_I(c, N);
    for (int l = 0; l <= m->L; l++)
        w->x[l] = CARVE_F(c, N * d);
    for (int l = 0; l < m->L; l++) {
        ws_layer *y = &w->layer[l];
        y->rstd1 = CARVE_F(c, N);
        y->h1 = CARVE_F(c, N * d);
        y->q = CARVE_F(c, N * qd);
        y->k = CARVE_F(c, N * kvd);
        y->v = CARVE_F(c, N * kvd);
        y->att = CARVE_F(c, N * qd);
        y->lse = CARVE_F(c, N * (size_t)m->Hq);
        y->x_mid = CARVE_F(c, N * d);
        y->rstd2 = CARVE_F(c, N);
        y->h2 = CARVE_F(c, N * d);
        if (!m->layers[l].moe) {
            y->gate = CARVE_F(c, N * F);
            y->up = CARVE_F(c, N * F);
            y->act = CARVE_F(c, N * F);
            continue;
        }
        y->router_logits = CARVE_F(c, N * E);
        y->probs = CARVE_F(c, N * E);
        y->topk_w = CARVE_F(c, Nk);
        y->kept_w = m->capacity_factor > 0 ? CARVE_F(c, Nk) : y->topk_w;
        y->dropped = CARVE_I(c, 1);
        y->topk_idx = CARVE_I(c, Nk);
        y->counts = CARVE_I(c, E);
        y->offs = CARVE_I(c, E + 1);
        y->perm = CARVE_I(c, Nk);
        y->pos = CARVE_I(c, Nk);
        y->xs = CARVE_F(c, Nk * d);
        y->gate_s = CARVE_F(c, Nk * F);
        y->up_s = CARVE_F(c, Nk * F);
        y->act_s = CARVE_F(c, Nk * F);
        y->ys = CARVE_F(c, Nk * d);
    }
    w->rstd_f = CARVE_F(c, N);
    w->hf = CARVE_F(c, N * d);
    w->logits = CARVE_F(c, N * V);
    w->lse_ce = CARVE_F(c, N);
    w->loss_rows = CARVE_F(c, N);
    w->scalars = CARVE_F(c, 4);
    size_t rows_ffn = m->n_moe_layers && kk > 1 ? Nk : N;
    w->dres = CARVE_F(c, N * d);
    w->dtmp = CARVE_F(c, N * d);
    w->dh = CARVE_F(c, N * d);
    w->dq = CARVE_F(c, N * qd);
    w->dk = CARVE_F(c, N * kvd);
    w->dv = CARVE_F(c, N * kvd);
    w->datt = CARVE_F(c, N * qd);
    w->df1 = CARVE_F(c, rows_ffn * F);
    w->df2 = CARVE_F(c, rows_ffn * F);
    w->df3 = CARVE_F(c, rows_ffn * F);
    w->att_gemm = m->attention_gemm;
    if (m->attention_gemm)
        w->att_scratch = CARVE_F(c, attention_gemm_scratch_floats(w->B, w->T, m->Hq));
    if (m->n_moe_layers) {
        w->dxs = CARVE_F(c, Nk * d);
        w->dys = CARVE_F(c, Nk * d);
        w->dtopk_w = CARVE_F(c, Nk);
        w->drouter = CARVE_F(c, N * E);
    }
}

void model_release_workspace(model *m)
{
    model_workspace *w = m->ws;
    if (!w)
        return;
    m->K->free(m->K, w->arena);
    free(w->x);
    free(w->layer);
    free(w->host_rows);
    free(w);
    m->ws = NULL;
}

void model_reserve(model *m, int B, int T)
{
    if (B <= 0 || T <= 0)
        upc_fail(EX_SOFTWARE, "model: batch shape %d x %d", B, T);
    if (m->ws && m->ws->B == B && m->ws->T == T && m->ws->att_gemm == m->attention_gemm)
        return;
    model_release_workspace(m);
    model_workspace *w = upc_calloc(1, sizeof *w);
    w->B = B;
    w->T = T;
    if ((long long)B * T > INT32_MAX / (m->kk > 1 ? m->kk : 1))
        upc_fail(EX_SOFTWARE, "model: batch of %d x %d tokens is too large", B, T);
    w->N = B * T;
    w->x = upc_calloc((size_t)m->L + 1, sizeof *w->x);
    w->layer = upc_calloc((size_t)m->L, sizeof *w->layer);
    w->host_rows = upc_calloc((size_t)w->N, sizeof *w->host_rows);
    carver c = {NULL, 0};
    plan_workspace(m, w, &c);
    w->arena = m->K->alloc(m->K, c.used);
    w->arena_bytes = c.used;
    if (!w->arena)
        upc_fail(EX_OSERR, "model: out of %s memory for the activations of a %d x %d batch (%zu bytes)",
                 m->K->name, B, T, c.used);
    c = (carver){w->arena, 0};
    plan_workspace(m, w, &c);
    m->ws = w;
}

size_t model_activation_bytes(const model *m)
{
    return m->ws ? m->ws->arena_bytes : 0;
}

/* ---- forward --------------------------------------------------------------- */

static void check_ids(const model *m, const int32_t *ids, size_t n, const char *what, bool allow_ignore)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= m->V || (ids[i] < 0 && !(allow_ignore && ids[i] == -1)))
            upc_fail(EX_DATAERR, "model: %s %d at position %zu is outside the vocabulary of %d",
                     what, (int)ids[i], i, m->V);
}

/* x_out = x_in + attention(rmsnorm(x_in)), saving what backward needs. */
static void attention_forward(model *m, int l, const float *x_in)
{
    const upc_kernels *K = m->K;
    model_workspace *w = m->ws;
    const model_layer *ly = &m->layers[l];
    ws_layer *y = &w->layer[l];
    int N = w->N, d = m->d, qd = m->Hq * m->hd, kvd = m->Hkv * m->hd;
    K->rmsnorm_fwd(K, x_in, P(m, ly->ln1), y->h1, y->rstd1, N, d, m->eps);
    K->gemm(K, 0, 1, N, qd, d, 1.0f, y->h1, d, P(m, ly->wq), d, 0.0f, y->q, qd);
    K->gemm(K, 0, 1, N, kvd, d, 1.0f, y->h1, d, P(m, ly->wk), d, 0.0f, y->k, kvd);
    K->gemm(K, 0, 1, N, kvd, d, 1.0f, y->h1, d, P(m, ly->wv), d, 0.0f, y->v, kvd);
    K->rope_fwd(K, y->q, y->q, w->B, w->T, m->Hq, m->hd, 0, NULL, m->theta);
    K->rope_fwd(K, y->k, y->k, w->B, w->T, m->Hkv, m->hd, 0, NULL, m->theta);
    if (w->att_gemm)
        attention_gemm_fwd(K, y->q, y->k, y->v, y->att, y->lse, w->att_scratch, w->B, w->T, m->Hq, m->Hkv, m->hd);
    else
        K->attention_fwd(K, y->q, y->k, y->v, y->att, y->lse, w->B, w->T, m->Hq, m->Hkv, m->hd);
    K->copy(K, y->x_mid, x_in, (size_t)N * d * sizeof(float));
    K->gemm(K, 0, 1, N, d, qd, 1.0f, y->att, qd, P(m, ly->wo), qd, 1.0f, y->x_mid, d);
}

/* x_out = x_mid + swiglu_ffn(h2). */
static void dense_ffn_forward(model *m, int l, const float *x_mid, float *x_out)
{
    const upc_kernels *K = m->K;
    const model_layer *ly = &m->layers[l];
    ws_layer *y = &m->ws->layer[l];
    int N = m->ws->N, d = m->d, F = m->F;
    K->gemm(K, 0, 1, N, F, d, 1.0f, y->h2, d, P(m, ly->w_gate), d, 0.0f, y->gate, F);
    K->gemm(K, 0, 1, N, F, d, 1.0f, y->h2, d, P(m, ly->w_up), d, 0.0f, y->up, F);
    K->swiglu_fwd(K, y->gate, y->up, y->act, (size_t)N * F);
    K->copy(K, x_out, x_mid, (size_t)N * d * sizeof(float));
    K->gemm(K, 0, 1, N, d, F, 1.0f, y->act, F, P(m, ly->w_down), F, 1.0f, x_out, d);
}

void model_forward(model *m, const int32_t *ids, const int32_t *targets, int B, int T,
                   model_loss *loss)
{
    const upc_kernels *K = m->K;
    model_reserve(m, B, T);
    model_round_weights(m);
    model_workspace *w = m->ws;
    size_t N = (size_t)w->N;
    int d = m->d;
    check_ids(m, ids, N, "token id", false);
    K->upload(K, w->ids, ids, N * sizeof(int32_t));
    w->ready = false;
    w->n_targets = 0;
    if (targets) {
        check_ids(m, targets, N, "target", true);
        K->upload(K, w->targets, targets, N * sizeof(int32_t));
        for (size_t i = 0; i < N; i++)
            w->n_targets += targets[i] != -1;
    }

    w->jittered = m->jitter_armed && m->jitter > 0.0f && targets;
    w->jitter_key = m->jitter_key;
    m->jitter_armed = false;
    K->embedding_fwd(K, w->ids, (int)N, P(m, m->embed), m->V, d, w->x[0]);
    for (int l = 0; l < m->L; l++) {
        ws_layer *y = &w->layer[l];
        attention_forward(m, l, w->x[l]);
        K->rmsnorm_fwd(K, y->x_mid, P(m, m->layers[l].ln2), y->h2, y->rstd2, (int)N, d, m->eps);
        if (m->layers[l].moe)
            model_moe_forward(m, l, y->x_mid, w->x[l + 1]);
        else
            dense_ffn_forward(m, l, y->x_mid, w->x[l + 1]);
    }
    K->rmsnorm_fwd(K, w->x[m->L], P(m, m->final_norm), w->hf, w->rstd_f, (int)N, d, m->eps);
    K->gemm(K, 0, 1, (int)N, m->V, d, 1.0f, w->hf, d, P(m, m->lm_head), d, 0.0f, w->logits, m->V);
    if (m->n_moe_layers)   /* after every kernel is queued: the one wait comes last */
        model_moe_download_counts(m);
    if (!targets) {
        if (loss)
            memset(loss, 0, sizeof *loss);
        return;
    }

    model_loss out = {0};
    K->cross_entropy_fwd(K, w->logits, w->targets, w->loss_rows, w->lse_ce, (int)N, m->V);
    /* summed on the host in double: N floats, and a loss precise enough for
     * finite differences */
    K->download(K, w->host_rows, w->loss_rows, N * sizeof(float));
    double ce_sum = 0.0;
    for (size_t i = 0; i < N; i++)
        ce_sum += w->host_rows[i];
    out.n_targets = w->n_targets;
    out.ce = w->n_targets ? ce_sum / (double)w->n_targets : 0.0;
    for (int l = 0; l < m->L; l++)
        if (m->layers[l].moe) {
            double lb, z;
            model_moe_aux_losses(m, l, &lb, &z);
            out.lb += lb / m->n_moe_layers;
            out.z += z / m->n_moe_layers;
        }
    out.total = out.ce + (double)m->aux_coef * out.lb + (double)m->z_coef * out.z;
    w->ready = true;
    if (loss)
        *loss = out;
}

void model_jitter_next(model *m, uint64_t key)
{
    m->jitter_armed = true;
    m->jitter_key = key;
}

void model_get_logits(const model *m, float *host)
{
    if (!m->ws)
        upc_fail(EX_SOFTWARE, "model: logits asked for before any forward");
    m->K->download(m->K, host, m->ws->logits, (size_t)m->ws->N * m->V * sizeof(float));
}

void model_get_logits_rows(const model *m, size_t row0, size_t nrows, float *host)
{
    if (!m->ws || row0 + nrows > (size_t)m->ws->N)
        upc_fail(EX_SOFTWARE, "model: logits rows %zu..%zu asked for, the last forward had %d", row0, row0 + nrows,
                 m->ws ? m->ws->N : 0);
    m->K->download(m->K, host, m->ws->logits + row0 * m->V, nrows * m->V * sizeof(float));
}

void model_get_routing(const model *m, int layer, int32_t *host)
{
    if (!m->ws || layer < 0 || layer >= m->L || !m->layers[layer].moe)
        upc_fail(EX_SOFTWARE, "model: no routing of block %d to give", layer);
    m->K->download(m->K, host, m->ws->layer[layer].topk_idx,
                   (size_t)m->ws->N * m->kk * sizeof(int32_t));
}

/* ---- backward -------------------------------------------------------------- */

/* w->dh = d loss / d h2 of a dense FFN, weight gradients added. */
static void dense_ffn_backward(model *m, int l, const float *dres)
{
    const upc_kernels *K = m->K;
    const model_layer *ly = &m->layers[l];
    model_workspace *w = m->ws;
    ws_layer *y = &w->layer[l];
    int N = w->N, d = m->d, F = m->F;
    float *dact = w->df1, *dgate = w->df2, *dup = w->df3;
    K->gemm(K, 0, 0, N, F, d, 1.0f, dres, d, P(m, ly->w_down), F, 0.0f, dact, F);
    K->gemm(K, 1, 0, d, F, N, 1.0f, dres, d, y->act, F, 1.0f, G(m, ly->w_down), F);
    K->swiglu_bwd(K, y->gate, y->up, dact, dgate, dup, (size_t)N * F);
    K->gemm(K, 0, 0, N, d, F, 1.0f, dgate, F, P(m, ly->w_gate), d, 0.0f, w->dh, d);
    K->gemm(K, 0, 0, N, d, F, 1.0f, dup, F, P(m, ly->w_up), d, 1.0f, w->dh, d);
    K->gemm(K, 1, 0, F, d, N, 1.0f, dgate, F, y->h2, d, 1.0f, G(m, ly->w_gate), d);
    K->gemm(K, 1, 0, F, d, N, 1.0f, dup, F, y->h2, d, 1.0f, G(m, ly->w_up), d);
}

/* On entry w->dres = d loss / d (block output); on return d loss / d
 * (block input). */
static void block_backward(model *m, int l, float aux_scale, float z_scale)
{
    const upc_kernels *K = m->K;
    const model_layer *ly = &m->layers[l];
    model_workspace *w = m->ws;
    ws_layer *y = &w->layer[l];
    int N = w->N, d = m->d, qd = m->Hq * m->hd, kvd = m->Hkv * m->hd;
    size_t nd = (size_t)N * d;

    if (ly->moe)
        model_moe_backward(m, l, w->dres, aux_scale, z_scale);
    else
        dense_ffn_backward(m, l, w->dres);
    K->rmsnorm_bwd(K, w->dh, y->x_mid, P(m, ly->ln2), y->rstd2, w->dtmp, G(m, ly->ln2), N, d);
    K->add(K, w->dres, w->dres, w->dtmp, nd);

    K->gemm(K, 0, 0, N, qd, d, 1.0f, w->dres, d, P(m, ly->wo), qd, 0.0f, w->datt, qd);
    K->gemm(K, 1, 0, d, qd, N, 1.0f, w->dres, d, y->att, qd, 1.0f, G(m, ly->wo), qd);
    if (w->att_gemm)
        attention_gemm_bwd(K, y->q, y->k, y->v, w->datt, w->dq, w->dk, w->dv, w->att_scratch, w->B, w->T, m->Hq,
                           m->Hkv, m->hd);
    else
        K->attention_bwd(K, y->q, y->k, y->v, y->att, y->lse, w->datt, w->dq, w->dk, w->dv, w->B, w->T, m->Hq,
                         m->Hkv, m->hd);
    K->rope_bwd(K, w->dq, w->dq, w->B, w->T, m->Hq, m->hd, 0, NULL, m->theta);
    K->rope_bwd(K, w->dk, w->dk, w->B, w->T, m->Hkv, m->hd, 0, NULL, m->theta);
    K->gemm(K, 0, 0, N, d, qd, 1.0f, w->dq, qd, P(m, ly->wq), d, 0.0f, w->dh, d);
    K->gemm(K, 0, 0, N, d, kvd, 1.0f, w->dk, kvd, P(m, ly->wk), d, 1.0f, w->dh, d);
    K->gemm(K, 0, 0, N, d, kvd, 1.0f, w->dv, kvd, P(m, ly->wv), d, 1.0f, w->dh, d);
    K->gemm(K, 1, 0, qd, d, N, 1.0f, w->dq, qd, y->h1, d, 1.0f, G(m, ly->wq), d);
    K->gemm(K, 1, 0, kvd, d, N, 1.0f, w->dk, kvd, y->h1, d, 1.0f, G(m, ly->wk), d);
    K->gemm(K, 1, 0, kvd, d, N, 1.0f, w->dv, kvd, y->h1, d, 1.0f, G(m, ly->wv), d);
    K->rmsnorm_bwd(K, w->dh, w->x[l], P(m, ly->ln1), y->rstd1, w->dtmp, G(m, ly->ln1), N, d);
    K->add(K, w->dres, w->dres, w->dtmp, nd);
}

void model_backward(model *m, float loss_scale)
{
    const upc_kernels *K = m->K;
    model_workspace *w = m->ws;
    if (!w || !w->ready)
        upc_fail(EX_SOFTWARE, "model: backward without a forward with targets before it");
    int N = w->N, d = m->d, V = m->V;
    float ce_scale = w->n_targets ? loss_scale / (float)w->n_targets : 0.0f;
    /* dlogits in place of the logits: they are not needed again. */
    float *dlogits = w->logits;
    K->cross_entropy_bwd(K, w->logits, w->targets, w->lse_ce, dlogits, N, V, ce_scale);
    K->gemm(K, 0, 0, N, d, V, 1.0f, dlogits, V, P(m, m->lm_head), d, 0.0f, w->dh, d);
    K->gemm(K, 1, 0, V, d, N, 1.0f, dlogits, V, w->hf, d, 1.0f, G(m, m->lm_head), d);
    K->rmsnorm_bwd(K, w->dh, w->x[m->L], P(m, m->final_norm), w->rstd_f, w->dres,
                   G(m, m->final_norm), N, d);
    float aux_scale = m->n_moe_layers ? loss_scale * m->aux_coef / (float)m->n_moe_layers : 0.0f;
    float z_scale = m->n_moe_layers ? loss_scale * m->z_coef / (float)m->n_moe_layers : 0.0f;
    for (int l = m->L - 1; l >= 0; l--)
        block_backward(m, l, aux_scale, z_scale);
    K->embedding_bwd(K, w->ids, N, w->dres, V, d, G(m, m->embed));
    w->ready = false;
}
