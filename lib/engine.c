/* engine.c: paged KV cache and the inference step (engine.h). */
#include "engine.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

#define P(m, off) ((m)->params + (off))

struct engine {
    model *m;
    engine_config c;
    int max_blocks;                 /* block-table entries per sequence */
    size_t n_slots;
    float **kc, **vc;               /* per layer: [n_slots][Hkv][hd] */
    int32_t *table;                 /* host [max_seqs][max_blocks], -1 = none */
    int32_t *d_table;               /* device copy */
    int *len;                       /* host: tokens in each sequence */
    bool *open;
    int32_t *free_blocks;           /* stack */
    size_t n_free;
    int32_t *refs;                  /* host [n_blocks]: sequences holding each block */
    /* step workspace (device), max_rows rows */
    int32_t *ids, *slots, *row_seq, *row_pos;
    float *x, *h, *q, *k, *v, *att, *rstd, *gate, *up, *act, *sel, *logits;
    float *router, *probs, *topk_w, *xs, *gate_s, *up_s, *act_s, *ys;
    int32_t *topk_idx, *counts, *offs, *perm, *pos;
    int32_t *h_slots, *h_pos;       /* host staging */
    int32_t *touched;               /* host [L] */
};

void engine_config_default(engine_config *c)
{
    *c = (engine_config){.block_size = 16, .kv_bytes = 256u << 20, .max_seqs = 64, .max_rows = 512};
}

size_t engine_kv_bytes_per_token(const model *m)
{
    return 2 * (size_t)m->L * m->Hkv * m->hd * sizeof(float);
}

static void *dev(engine *e, size_t bytes, const char *what)
{
    void *p = e->m->K->alloc(e->m->K, bytes ? bytes : 1);
    if (!p)
        upc_fail(EX_OSERR, "engine: out of %s memory for %s (%.3f GB)", e->m->K->name, what, (double)bytes / 1e9);
    return p;
}

engine *engine_create(model *m, const engine_config *cfg)
{
    engine *e = upc_calloc(1, sizeof *e);
    e->m = m;
    e->c = *cfg;
    engine_config *c = &e->c;
    if (c->block_size <= 0 || c->max_seqs <= 0 || c->max_rows <= 0)
        upc_fail(EX_SOFTWARE, "engine: block size, sequences and rows must be positive");
    if (!c->max_len)
        c->max_len = m->cfg.max_position_embeddings > 0 ? (int)m->cfg.max_position_embeddings : 4096;
    size_t per_block = engine_kv_bytes_per_token(m) * (size_t)c->block_size;
    if (!c->n_blocks)
        c->n_blocks = c->kv_bytes / per_block;
    if (c->n_blocks == 0)
        upc_fail(EX_USAGE, "engine: a KV budget of %zu bytes holds no block of %d tokens (%zu bytes)", c->kv_bytes,
                 c->block_size, per_block);
    e->max_blocks = (c->max_len + c->block_size - 1) / c->block_size;
    e->n_slots = c->n_blocks * (size_t)c->block_size;
    size_t kvw = (size_t)m->Hkv * m->hd;
    e->kc = upc_calloc((size_t)m->L, sizeof *e->kc);
    e->vc = upc_calloc((size_t)m->L, sizeof *e->vc);
    for (int l = 0; l < m->L; l++) {
        e->kc[l] = dev(e, e->n_slots * kvw * sizeof(float), "the KV cache");
        e->vc[l] = dev(e, e->n_slots * kvw * sizeof(float), "the KV cache");
    }
    size_t tsize = (size_t)c->max_seqs * e->max_blocks;
    e->table = upc_malloc(tsize * sizeof *e->table);
    for (size_t i = 0; i < tsize; i++)
        e->table[i] = -1;
    e->d_table = dev(e, tsize * sizeof(int32_t), "block tables");
    e->len = upc_calloc((size_t)c->max_seqs, sizeof *e->len);
    e->open = upc_calloc((size_t)c->max_seqs, sizeof *e->open);
    e->free_blocks = upc_malloc(c->n_blocks * sizeof *e->free_blocks);
    for (size_t b = 0; b < c->n_blocks; b++)
        e->free_blocks[b] = (int32_t)(c->n_blocks - 1 - b);
    e->n_free = c->n_blocks;
    e->refs = upc_calloc(c->n_blocks, sizeof *e->refs);

    size_t R = (size_t)c->max_rows, d = (size_t)m->d, F = (size_t)m->F, V = (size_t)m->V;
    size_t qd = (size_t)m->Hq * m->hd, E = (size_t)(m->E > 0 ? m->E : 1), kk = (size_t)(m->kk > 0 ? m->kk : 1);
    e->ids = dev(e, R * 4, "the workspace");
    e->slots = dev(e, R * 4, "the workspace");
    e->row_seq = dev(e, R * 4, "the workspace");
    e->row_pos = dev(e, R * 4, "the workspace");
    e->x = dev(e, R * d * 4, "the workspace");
    e->h = dev(e, R * d * 4, "the workspace");
    e->q = dev(e, R * qd * 4, "the workspace");
    e->k = dev(e, R * kvw * 4, "the workspace");
    e->v = dev(e, R * kvw * 4, "the workspace");
    e->att = dev(e, R * qd * 4, "the workspace");
    e->rstd = dev(e, R * 4, "the workspace");
    e->sel = dev(e, R * d * 4, "the workspace");
    e->logits = dev(e, R * V * 4, "the logits");
    if (m->n_moe_layers < m->L) {
        e->gate = dev(e, R * F * 4, "the workspace");
        e->up = dev(e, R * F * 4, "the workspace");
        e->act = dev(e, R * F * 4, "the workspace");
    }
    if (m->n_moe_layers) {
        e->router = dev(e, R * E * 4, "the workspace");
        e->probs = dev(e, R * E * 4, "the workspace");
        e->topk_w = dev(e, R * kk * 4, "the workspace");
        e->topk_idx = dev(e, R * kk * 4, "the workspace");
        e->counts = dev(e, E * 4, "the workspace");
        e->offs = dev(e, (E + 1) * 4, "the workspace");
        e->perm = dev(e, R * kk * 4, "the workspace");
        e->pos = dev(e, R * kk * 4, "the workspace");
        e->xs = dev(e, R * kk * d * 4, "the workspace");
        e->gate_s = dev(e, R * kk * F * 4, "the workspace");
        e->up_s = dev(e, R * kk * F * 4, "the workspace");
        e->act_s = dev(e, R * kk * F * 4, "the workspace");
        e->ys = dev(e, R * kk * d * 4, "the workspace");
        e->touched = upc_calloc((size_t)m->L, sizeof *e->touched);
    }
    e->h_slots = upc_malloc(R * sizeof *e->h_slots);
    e->h_pos = upc_malloc(R * sizeof *e->h_pos);
    return e;
}

void engine_free(engine *e)
{
    if (!e)
        return;
    const upc_kernels *K = e->m->K;
    for (int l = 0; l < e->m->L; l++) {
        K->free(K, e->kc[l]);
        K->free(K, e->vc[l]);
    }
    void *devs[] = {e->d_table, e->ids, e->slots, e->row_seq, e->row_pos, e->x, e->h, e->q, e->k, e->v, e->att,
                    e->rstd, e->sel, e->logits, e->gate, e->up, e->act, e->router, e->probs, e->topk_w,
                    e->topk_idx, e->counts, e->offs, e->perm, e->pos, e->xs, e->gate_s, e->up_s, e->act_s, e->ys};
    for (size_t i = 0; i < sizeof devs / sizeof *devs; i++)
        K->free(K, devs[i]);
    free(e->kc), free(e->vc), free(e->table), free(e->len), free(e->open), free(e->free_blocks), free(e->refs);
    free(e->h_slots), free(e->h_pos), free(e->touched);
    free(e);
}

size_t engine_kv_bytes(const engine *e)
{
    return engine_kv_bytes_per_token(e->m) * e->n_slots;
}

size_t engine_capacity_tokens(const engine *e)
{
    return e->n_slots;
}

size_t engine_free_blocks(const engine *e)
{
    return e->n_free;
}

size_t engine_blocks_for(const engine *e, int n)
{
    return ((size_t)n + (size_t)e->c.block_size - 1) / (size_t)e->c.block_size;
}

int engine_open(engine *e)
{
    for (int s = 0; s < e->c.max_seqs; s++)
        if (!e->open[s]) {
            e->open[s] = true;
            e->len[s] = 0;
            return s;
        }
    return -1;
}

int engine_fork(engine *e, int parent, int n)
{
    if (parent < 0 || parent >= e->c.max_seqs || !e->open[parent])
        upc_fail(EX_SOFTWARE, "engine: forking sequence %d, which is not open", parent);
    if (n < 0 || n > e->len[parent] || n % e->c.block_size)
        upc_fail(EX_SOFTWARE, "engine: forking %d tokens of sequence %d (length %d, blocks of %d)", n, parent,
                 e->len[parent], e->c.block_size);
    int s = engine_open(e);
    if (s < 0)
        return -1;
    const int32_t *from = e->table + (size_t)parent * e->max_blocks;
    int32_t *to = e->table + (size_t)s * e->max_blocks;
    for (int b = 0; b < n / e->c.block_size; b++) {
        to[b] = from[b];
        e->refs[to[b]]++;
    }
    e->len[s] = n;
    return s;
}

void engine_close(engine *e, int seq)
{
    if (seq < 0 || seq >= e->c.max_seqs || !e->open[seq])
        upc_fail(EX_SOFTWARE, "engine: closing sequence %d, which is not open", seq);
    int32_t *t = e->table + (size_t)seq * e->max_blocks;
    for (int b = 0; b < e->max_blocks; b++)
        if (t[b] >= 0) {
            if (--e->refs[t[b]] == 0)
                e->free_blocks[e->n_free++] = t[b];
            t[b] = -1;
        }
    e->open[seq] = false;
    e->len[seq] = 0;
}

int engine_seq_len(const engine *e, int seq)
{
    return e->len[seq];
}

bool engine_can_append(const engine *e, int seq, int n)
{
    int len = e->len[seq] + n;
    if (len > e->c.max_len)
        return false;
    return engine_blocks_for(e, len) - engine_blocks_for(e, e->len[seq]) <= e->n_free;
}

const int32_t *engine_experts_touched(const engine *e)
{
    return e->touched;
}

/* Slots and positions of the step's rows, allocating blocks as needed. */
static void place_rows(engine *e, const int *seqs, int n)
{
    for (int r = 0; r < n; r++) {
        int s = seqs[r];
        if (s < 0 || s >= e->c.max_seqs || !e->open[s])
            upc_fail(EX_SOFTWARE, "engine: row %d names sequence %d, which is not open", r, s);
        int p = e->len[s]++;
        if (p >= e->c.max_len)
            upc_fail(EX_SOFTWARE, "engine: sequence %d passes max_len %d", s, e->c.max_len);
        int32_t *entry = e->table + (size_t)s * e->max_blocks + p / e->c.block_size;
        if (*entry < 0) {
            if (!e->n_free)
                upc_fail(EX_SOFTWARE, "engine: out of KV blocks (check engine_can_append)");
            *entry = e->free_blocks[--e->n_free];
            e->refs[*entry] = 1;
        } else if (e->refs[*entry] > 1) {
            upc_fail(EX_SOFTWARE, "engine: sequence %d writes position %d into a block it shares", s, p);
        }
        e->h_slots[r] = *entry * e->c.block_size + p % e->c.block_size;
        e->h_pos[r] = p;
    }
}

static void moe_ffn(engine *e, int l, int n)
{
    model *m = e->m;
    const upc_kernels *K = m->K;
    const model_layer *ly = &m->layers[l];
    int d = m->d, F = m->F, E = m->E, kk = m->kk, Nk = n * kk;
    K->gemm(K, 0, 1, n, E, d, 1.0f, e->h, d, P(m, ly->router), d, 0.0f, e->router, E);
    K->router_fwd(K, e->router, e->probs, e->topk_idx, e->topk_w, n, E, kk, m->renorm);
    K->moe_dispatch(K, e->topk_idx, n, kk, E, e->counts, e->offs, e->perm, e->pos);
    int32_t counts[E];
    K->download(K, counts, e->counts, sizeof counts);
    e->touched[l] = 0;
    for (int i = 0; i < E; i++)
        e->touched[l] += counts[i] > 0;
    K->moe_gather(K, e->h, e->perm, n, kk, d, e->xs);
    K->grouped_gemm_fwd(K, E, e->offs, F, d, e->xs, P(m, ly->w1), 0.0f, e->gate_s);
    K->grouped_gemm_fwd(K, E, e->offs, F, d, e->xs, P(m, ly->w3), 0.0f, e->up_s);
    K->swiglu_fwd(K, e->gate_s, e->up_s, e->act_s, (size_t)Nk * F);
    K->grouped_gemm_fwd(K, E, e->offs, d, F, e->act_s, P(m, ly->w2), 0.0f, e->ys);
    K->moe_combine(K, e->ys, e->pos, e->topk_w, n, kk, d, 1.0f, e->x);
}

int engine_step(engine *e, const int *seqs, const int32_t *ids, int n, const bool *want, float *logits)
{
    model *m = e->m;
    const upc_kernels *K = m->K;
    if (n <= 0 || n > e->c.max_rows)
        upc_fail(EX_SOFTWARE, "engine: a step of %d rows (at most %d)", n, e->c.max_rows);
    for (int r = 0; r < n; r++)
        if (ids[r] < 0 || ids[r] >= m->V)
            upc_fail(EX_DATAERR, "engine: token id %d is outside the vocabulary of %d", (int)ids[r], m->V);
    place_rows(e, seqs, n);
    model_round_weights(m);
    int d = m->d, qd = m->Hq * m->hd, kvd = m->Hkv * m->hd, F = m->F;
    K->upload(K, e->ids, ids, (size_t)n * 4);
    K->upload(K, e->slots, e->h_slots, (size_t)n * 4);
    K->upload(K, e->row_pos, e->h_pos, (size_t)n * 4);
    K->upload(K, e->row_seq, seqs, (size_t)n * 4);
    K->upload(K, e->d_table, e->table, (size_t)e->c.max_seqs * e->max_blocks * 4);

    K->embedding_fwd(K, e->ids, n, P(m, m->embed), m->V, d, e->x);
    for (int l = 0; l < m->L; l++) {
        const model_layer *ly = &m->layers[l];
        K->rmsnorm_fwd(K, e->x, P(m, ly->ln1), e->h, NULL, n, d, m->eps);
        K->gemm(K, 0, 1, n, qd, d, 1.0f, e->h, d, P(m, ly->wq), d, 0.0f, e->q, qd);
        K->gemm(K, 0, 1, n, kvd, d, 1.0f, e->h, d, P(m, ly->wk), d, 0.0f, e->k, kvd);
        K->gemm(K, 0, 1, n, kvd, d, 1.0f, e->h, d, P(m, ly->wv), d, 0.0f, e->v, kvd);
        K->rope_fwd(K, e->q, e->q, 1, n, m->Hq, m->hd, 0, e->row_pos, m->theta);
        K->rope_fwd(K, e->k, e->k, 1, n, m->Hkv, m->hd, 0, e->row_pos, m->theta);
        K->kv_cache_write(K, e->k, e->v, e->slots, n, m->Hkv, m->hd, e->kc[l], e->vc[l]);
        K->paged_attention(K, e->q, e->kc[l], e->vc[l], e->d_table, e->max_blocks, e->c.block_size, e->row_seq,
                           e->row_pos, n, m->Hq, m->Hkv, m->hd, e->att);
        K->gemm(K, 0, 1, n, d, qd, 1.0f, e->att, qd, P(m, ly->wo), qd, 1.0f, e->x, d);
        K->rmsnorm_fwd(K, e->x, P(m, ly->ln2), e->h, NULL, n, d, m->eps);
        if (ly->moe) {
            moe_ffn(e, l, n);
        } else {
            K->gemm(K, 0, 1, n, F, d, 1.0f, e->h, d, P(m, ly->w_gate), d, 0.0f, e->gate, F);
            K->gemm(K, 0, 1, n, F, d, 1.0f, e->h, d, P(m, ly->w_up), d, 0.0f, e->up, F);
            K->swiglu_fwd(K, e->gate, e->up, e->act, (size_t)n * F);
            K->gemm(K, 0, 1, n, d, F, 1.0f, e->act, F, P(m, ly->w_down), F, 1.0f, e->x, d);
        }
    }
    /* the LM head only for the rows whose logits are wanted */
    int count = 0;
    for (int r = 0; r < n; r++)
        if (want[r])
            K->copy(K, e->sel + (size_t)count++ * d, e->x + (size_t)r * d, (size_t)d * sizeof(float));
    if (!count)
        return 0;
    K->rmsnorm_fwd(K, e->sel, P(m, m->final_norm), e->sel, NULL, count, d, m->eps);
    K->gemm(K, 0, 1, count, m->V, d, 1.0f, e->sel, d, P(m, m->lm_head), d, 0.0f, e->logits, m->V);
    K->download(K, logits, e->logits, (size_t)count * m->V * sizeof(float));
    return count;
}
