/* model.c: the parameter buffer of the model: tensor table and layout,
 * creation, seeded init, safetensors load/save and host access to views.
 * Forward and backward live in model_forward.c, the MoE FFN in model_moe.c. */
#include "model.h"
#include "model_internal.h"
#include "util.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALIGN_FLOATS 16        /* 64 bytes: every view starts on a cache line */

static size_t align_up(size_t n)
{
    return (n + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
}

/* UPC_BF16_ATTENTION: "gemm" (the default: bf16 tables run attention
 * through GEMMs) or "flash" (through the table's attention kernels, on
 * CUDA tensor-core flash attention; experimental until a GPU run times
 * both). */
static bool bf16_attention_flash(void)
{
    static int flash = -1;
    if (flash < 0)
        flash = upc_env_choice("UPC_BF16_ATTENTION", "gemm,flash");
    return flash;
}

/* 0, 1, 2 for an expert's w1, w3, w2 tensor (its place in the stacked
 * blocks), -1 otherwise. */
static int expert_kind(const char *name)
{
    size_t n = strlen(name);
    const char *suffix[3] = {".w1.weight", ".w3.weight", ".w2.weight"};
    for (int i = 0; i < 3; i++)
        if (n > 10 && strcmp(name + n - 10, suffix[i]) == 0)
            return i;
    return -1;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Offsets of every view; the per-layer index; the buffer length. */
static void plan_layout(model *m)
{
    size_t off = 0;
    for (int l = 0; l < m->L; l++) {
        model_layer *ly = &m->layers[l];
        ly->ln1 = ly->wq = ly->wk = ly->wv = ly->wo = ly->ln2 = SIZE_MAX;
        ly->w_gate = ly->w_up = ly->w_down = ly->router = ly->w1 = ly->w3 = ly->w2 = SIZE_MAX;
        ly->moe = mc_layer_is_moe(&m->cfg, l);
    }
    m->lm_head = SIZE_MAX;
    for (size_t i = 0; i < m->n_tensors; i++) {
        model_tensor *t = &m->tensors[i];
        int kind = t->expert >= 0 ? expert_kind(t->name) : -1;
        if (kind >= 0) {
            model_layer *ly = &m->layers[t->layer];
            size_t one = (size_t)m->F * (size_t)m->d;     /* every expert matrix is F x d */
            if (ly->w1 == SIZE_MAX) {                     /* first expert tensor: reserve the blocks */
                ly->w1 = off;
                ly->w3 = off + (size_t)m->E * one;
                ly->w2 = off + 2 * (size_t)m->E * one;
                off = align_up(off + 3 * (size_t)m->E * one);
            }
            size_t base = kind == 0 ? ly->w1 : kind == 1 ? ly->w3 : ly->w2;
            t->offset = base + (size_t)t->expert * one;
            continue;
        }
        t->offset = off;
        off = align_up(off + t->numel);
        if (t->layer < 0) {
            if (strcmp(t->name, "model.embed_tokens.weight") == 0)
                m->embed = t->offset;
            else if (strcmp(t->name, "model.norm.weight") == 0)
                m->final_norm = t->offset;
            else if (strcmp(t->name, "lm_head.weight") == 0)
                m->lm_head = t->offset;
            continue;
        }
        model_layer *ly = &m->layers[t->layer];
        static const struct { const char *suffix; size_t offsetof_field; } fields[] = {
            {".input_layernorm.weight", offsetof(model_layer, ln1)},
            {".self_attn.q_proj.weight", offsetof(model_layer, wq)},
            {".self_attn.k_proj.weight", offsetof(model_layer, wk)},
            {".self_attn.v_proj.weight", offsetof(model_layer, wv)},
            {".self_attn.o_proj.weight", offsetof(model_layer, wo)},
            {".post_attention_layernorm.weight", offsetof(model_layer, ln2)},
            {".mlp.gate_proj.weight", offsetof(model_layer, w_gate)},
            {".mlp.up_proj.weight", offsetof(model_layer, w_up)},
            {".mlp.down_proj.weight", offsetof(model_layer, w_down)},
            {".block_sparse_moe.gate.weight", offsetof(model_layer, router)},
        };
        bool known = false;
        for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++)
            if (ends_with(t->name, fields[f].suffix)) {
                *(size_t *)((char *)ly + fields[f].offsetof_field) = t->offset;
                known = true;
            }
        if (!known)
            upc_fail(EX_SOFTWARE, "model: tensor %s has no place in the model", t->name);
    }
    if (m->tied)
        m->lm_head = m->embed;
    m->n_floats = off;
}

static int as_int(int64_t v, const char *what)
{
    if (v < 0 || v > INT32_MAX)
        upc_fail(EX_DATAERR, "model: %s %lld out of range", what, (long long)v);
    return (int)v;
}

model *model_create(const upc_kernels *K, const model_config *cfg)
{
    const char *unsupported = mc_unsupported(cfg);
    if (unsupported)
        upc_fail(EX_DATAERR, "model: config not supported: %s", unsupported);
    model *m = upc_calloc(1, sizeof *m);
    m->K = K;
    mc_copy(&m->cfg, cfg);
    const model_config *c = &m->cfg;
    m->L = as_int(c->num_hidden_layers, "num_hidden_layers");
    m->capacity_factor = c->moe ? c->capacity_factor : 0.0;
    m->jitter = c->moe ? (float)c->router_jitter_noise : 0.0f;
    m->attention_gemm = strcmp(K->precision, "bf16") == 0 && !bf16_attention_flash();
    m->V = as_int(c->vocab_size, "vocab_size");
    m->d = as_int(c->hidden_size, "hidden_size");
    m->Hq = as_int(c->num_attention_heads, "num_attention_heads");
    m->Hkv = as_int(c->num_key_value_heads ? c->num_key_value_heads : c->num_attention_heads,
                    "num_key_value_heads");
    m->hd = as_int(c->head_dim ? c->head_dim : c->hidden_size / c->num_attention_heads, "head_dim");
    m->F = as_int(c->intermediate_size, "intermediate_size");
    m->E = c->moe ? as_int(c->num_local_experts, "num_local_experts") : 0;
    m->kk = c->moe ? as_int(c->num_experts_per_tok, "num_experts_per_tok") : 0;
    m->eps = (float)c->rms_norm_eps;
    m->theta = (float)c->rope_theta;
    m->aux_coef = c->moe ? (float)c->router_aux_loss_coef : 0.0f;
    m->z_coef = c->moe ? (float)c->router_z_loss_coef : 0.0f;
    m->renorm = c->norm_topk_prob;
    m->tied = c->tie_word_embeddings;
    if (m->hd % 2)
        upc_fail(EX_DATAERR, "model: head_dim %d must be even for RoPE", m->hd);

    mc_tensor *mt = mc_tensors(c, &m->n_tensors);
    m->tensors = upc_calloc(m->n_tensors, sizeof *m->tensors);
    for (size_t i = 0; i < m->n_tensors; i++) {
        model_tensor *t = &m->tensors[i];
        snprintf(t->name, sizeof t->name, "%s", mt[i].name);
        t->ndim = mt[i].ndim;
        t->shape[0] = mt[i].shape[0];
        t->shape[1] = mt[i].ndim == 2 ? mt[i].shape[1] : 0;
        t->numel = (size_t)mt[i].shape[0] * (mt[i].ndim == 2 ? (size_t)mt[i].shape[1] : 1);
        t->layer = mt[i].layer;
        t->expert = mt[i].expert;
        t->matmul = mt[i].matmul;
        t->decay = mt[i].ndim == 2;
    }
    free(mt);
    m->layers = upc_calloc((size_t)m->L, sizeof *m->layers);
    plan_layout(m);
    for (int l = 0; l < m->L; l++)
        m->n_moe_layers += m->layers[l].moe;
    if (m->n_moe_layers) {
        m->expert_counts = upc_calloc((size_t)m->L * (size_t)m->E, sizeof *m->expert_counts);
        m->dropped_counts = upc_calloc((size_t)m->L, sizeof *m->dropped_counts);
    }

    size_t bytes = m->n_floats * sizeof(float);
    m->params = K->alloc(K, bytes);
    m->grads = K->alloc(K, bytes);
    if (!m->params || !m->grads)
        upc_fail(EX_OSERR, "model: out of %s memory for %zu parameters and their gradients",
                 K->name, m->n_floats);
    const char *round = getenv("UPC_BF16_WEIGHTS");
    m->round_weights = upc_kernels_bf16(K) && !(round && strcmp(round, "0") == 0);
    return m;
}

void model_free(model *m)
{
    if (!m)
        return;
    model_release_workspace(m);
    if (m->weights_rounded)
        m->K->bf16_weights(m->K, m->params, 0);
    m->K->free(m->K, m->params);
    m->K->free(m->K, m->grads);
    free(m->tensors);
    free(m->layers);
    free(m->expert_counts);
    free(m->dropped_counts);
    mc_free(&m->cfg);
    free(m);
}

const model_tensor *model_find(const model *m, const char *name)
{
    for (size_t i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0)
            return &m->tensors[i];
    return NULL;
}

void model_get_param(const model *m, const model_tensor *t, float *host)
{
    m->K->download(m->K, host, m->params + t->offset, t->numel * sizeof(float));
}

void model_set_param(model *m, const model_tensor *t, const float *host)
{
    m->K->upload(m->K, m->params + t->offset, host, t->numel * sizeof(float));
    model_params_changed(m);
}

void model_params_changed(model *m)
{
    m->weights_rounded = false;
}

void model_round_weights(model *m)
{
    if (!m->round_weights || m->weights_rounded)
        return;
    m->K->bf16_weights(m->K, m->params, m->n_floats);
    m->weights_rounded = true;
}

void model_get_grad(const model *m, const model_tensor *t, float *host)
{
    m->K->download(m->K, host, m->grads + t->offset, t->numel * sizeof(float));
}

void model_zero_grads(model *m)
{
    m->K->memset(m->K, m->grads, 0, m->n_floats * sizeof(float));
}

size_t model_largest_tensor(const model *m)
{
    size_t n = 0;
    for (size_t i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].numel > n)
            n = m->tensors[i].numel;
    return n;
}

/* ---- init ---------------------------------------------------------------- */

/* A double in (0, 1]: never 0, so log() in Box-Muller stays finite. */
static double uniform_open0(uint64_t *state)
{
    return ((double)(upc_splitmix64(state) >> 11) + 1.0) * 0x1.0p-53;
}

void model_init_weights(model *m, uint64_t seed)
{
    double std = 0.02;
    json_t *ir = json_object_get(m->cfg.extra, "initializer_range");
    if (ir && json_is_number(ir) && json_number_value(ir) > 0)
        std = json_number_value(ir);
    float *host = upc_malloc(model_largest_tensor(m) * sizeof(float));
    for (size_t i = 0; i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        if (t->ndim == 1) {
            for (size_t j = 0; j < t->numel; j++)
                host[j] = 1.0f;
        } else {
            uint64_t state = upc_hash64(t->name, strlen(t->name), seed);
            for (size_t j = 0; j < t->numel; j += 2) {
                double r = sqrt(-2.0 * log(uniform_open0(&state)));
                double a = 2.0 * M_PI * uniform_open0(&state);
                host[j] = (float)(std * r * cos(a));
                if (j + 1 < t->numel)
                    host[j + 1] = (float)(std * r * sin(a));
            }
        }
        model_set_param(m, t, host);
    }
    free(host);
}

/* ---- safetensors ----------------------------------------------------------- */

/* Fails naming the checkpoint and the tensor unless `t` is in r with its shape. */
static void check_stored(const st_reader *r, const model_tensor *t)
{
    const st_tensor *s = st_find(r, t->name);
    if (!s)
        upc_fail(EX_DATAERR, "%s: tensor %s missing", st_path(r), t->name);
    bool same = s->ndim == t->ndim && s->shape[0] == (uint64_t)t->shape[0] &&
                (t->ndim == 1 || s->shape[1] == (uint64_t)t->shape[1]);
    if (same)
        return;
    char got[128] = "";
    size_t len = 0;
    for (int k = 0; k < s->ndim && len < sizeof got - 24; k++)
        len += (size_t)snprintf(got + len, sizeof got - len, "%s%llu", k ? ", " : "",
                                (unsigned long long)s->shape[k]);
    if (t->ndim == 1)
        upc_fail(EX_DATAERR, "%s: tensor %s has shape [%s], expected [%lld]", st_path(r), t->name, got,
                 (long long)t->shape[0]);
    upc_fail(EX_DATAERR, "%s: tensor %s has shape [%s], expected [%lld, %lld]", st_path(r), t->name, got,
             (long long)t->shape[0], (long long)t->shape[1]);
}

void model_load_weights(model *m, const st_reader *r)
{
    /* every name and shape first: a bad checkpoint changes nothing */
    for (size_t i = 0; i < m->n_tensors; i++)
        check_stored(r, &m->tensors[i]);
    float *host = upc_malloc(model_largest_tensor(m) * sizeof(float));
    for (size_t i = 0; i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        st_get_f32(r, t->name, host, t->numel);
        model_set_param(m, t, host);
    }
    free(host);
}

void model_save_weights(const model *m, const char *path, st_dtype dtype, uint64_t max_shard_bytes)
{
    if (dtype != ST_F32 && dtype != ST_BF16)
        upc_fail(EX_SOFTWARE, "model: weights are saved as F32 or BF16, not %s", st_dtype_name(dtype));
    st_writer *w = ends_with(path, ".safetensors") ? st_writer_file(path)
                                                   : st_writer_dir(path, "model", max_shard_bytes);
    for (size_t i = 0; i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        uint64_t shape[2] = {(uint64_t)t->shape[0], (uint64_t)t->shape[1]};
        st_writer_add(w, t->name, dtype, t->ndim, shape);
    }
    st_writer_begin_data(w);
    float *host = upc_malloc(model_largest_tensor(m) * sizeof(float));
    for (size_t i = 0; i < m->n_tensors; i++) {
        model_get_param(m, &m->tensors[i], host);
        st_writer_write_f32(w, host, m->tensors[i].numel);
    }
    free(host);
    st_writer_commit(w);
}
