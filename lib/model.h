/* model.h: the Llama / Mixtral model on any backend (lib/kernels.h): one
 * contiguous parameter buffer with named views (the HF tensor names and
 * shapes of mc_tensors, so checkpoints map 1:1), a gradient buffer of the
 * same layout, seeded init, safetensors load/save, and forward + backward
 * over a batch of token ids.
 *
 *   model *m = model_create(kernels_cpu(), &cfg);
 *   model_init_weights(m, seed);             (or model_load_weights(m, st))
 *   model_zero_grads(m);
 *   model_forward(m, ids, targets, B, T, &loss);  ids/targets: host int32 [B][T]
 *   model_backward(m, 1.0f);                 grads += d(loss)/d(params)
 *
 * Semantics are those of HF transformers' LlamaForCausalLM and
 * MixtralForCausalLM (same weights, same logits): RMSNorm with rms_norm_eps,
 * RoPE rotate-half with rope_theta, causal GQA attention, SwiGLU FFN
 * (gate/w1, up/w3, down/w2), LM head tied to the embedding when
 * tie_word_embeddings. MoE: router linear -> softmax -> top-k (renormalised
 * unless norm_topk_prob is false) -> dropless dispatch -> grouped expert
 * GEMMs -> weighted combine. With upcyc.capacity_factor > 0 each expert
 * keeps its first ceil(cf * N * k / E) assignments in token order and the
 * rest are dropped (their combine weight is 0; counts in dropped_counts).
 * router_jitter_noise j > 0 multiplies each MoE block's input by uniform
 * noise in [1 - j, 1 + j) in training forwards only (model_jitter_next), as
 * HF Mixtral does in training mode: router and experts see the jittered
 * input.
 *
 * Loss = ce + router_aux_loss_coef * lb + router_z_loss_coef * z, where
 *   ce: mean cross-entropy over targets != -1;
 *   lb: HF Mixtral's load-balancing loss E * sum_i (count_i / N) * P_i per
 *       MoE layer (count_i: top-k assignments to expert i, so this is k times
 *       the Switch f_i of kernels.h), averaged over the MoE layers. HF pools
 *       the router outputs of all layers before taking f and P (a product of
 *       means); upcyc takes the mean over layers of each layer's loss, as
 *       MegaBlocks does. They agree for one MoE layer.
 *   z:  mean over tokens of logsumexp(router logits)^2, averaged over MoE
 *       layers.
 * Every token of the batch (ignored targets included) is routed and counts
 * in lb and z.
 *
 * Layout: tensors in mc_tensors order, each at an offset aligned to 16
 * floats, except that a MoE layer's experts are stored as three stacked
 * blocks w1 [E][ffn][d], w3 [E][ffn][d], w2 [E][d][ffn] (what the grouped
 * GEMM reads); each expert's HF tensor is a view into its block. Padding
 * floats are zero in both buffers. */
#ifndef UPCYC_MODEL_H
#define UPCYC_MODEL_H

#include "kernels.h"
#include "model_config.h"
#include "safetensors.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One named view into the parameter (and gradient) buffer. */
typedef struct {
    char name[96];                /* HF tensor name */
    int ndim;
    int64_t shape[2];
    size_t offset;                /* in floats from the buffer start */
    size_t numel;
    int64_t layer;                /* -1 outside the blocks */
    int64_t expert;               /* -1 unless an expert's weight */
    bool matmul;                  /* a matrix-product weight */
    bool decay;                   /* weight decay applies (not norms) */
} model_tensor;

/* The views of one block (offsets in floats; SIZE_MAX when absent). */
typedef struct {
    bool moe;
    size_t ln1, wq, wk, wv, wo, ln2;
    size_t w_gate, w_up, w_down;  /* dense: mlp.{gate,up,down}_proj */
    size_t router;                /* moe: block_sparse_moe.gate [E][d] */
    size_t w1, w3, w2;            /* moe: stacked expert blocks */
} model_layer;

/* Loss of the last forward, its parts (lb and z unweighted, see above). */
typedef struct {
    double total;                 /* ce + aux_coef*lb + z_coef*z */
    double ce;
    double lb;
    double z;
    long long n_targets;          /* targets != -1 */
} model_loss;

typedef struct model_workspace model_workspace;

typedef struct model {
    const upc_kernels *K;
    model_config cfg;             /* own copy */
    int L, V, d, Hq, Hkv, hd, F, E, kk, n_moe_layers;
    float eps, theta, aux_coef, z_coef;
    bool renorm, tied;

    model_tensor *tensors;        /* in mc_tensors order */
    size_t n_tensors;
    size_t n_floats;              /* buffer length, padding included */
    float *params;                /* device, n_floats */
    float *grads;                 /* device, n_floats, same layout */
    model_layer *layers;          /* L */
    size_t embed, final_norm, lm_head;   /* lm_head == embed when tied */

    /* After a forward: tokens routed to each expert, [L][E] host int32
     * (rows of dense layers zero; NULL for a model without MoE layers). */
    int32_t *expert_counts;
    /* After a forward in capacity mode: assignments dropped per block, [L]
     * host int32 (0 for dense blocks; NULL without MoE layers). */
    int32_t *dropped_counts;
    double capacity_factor;       /* 0: dropless */
    /* Training attention through GEMMs (attention_gemm.h) instead of the
     * fused attention kernels: on for bf16 tables, whose GEMMs run on
     * tensor cores, unless UPC_BF16_ATTENTION=flash (CUDA's bf16 table has
     * tensor-core flash kernels of its own); tests may set it before the
     * first forward. */
    bool attention_gemm;
    float jitter;                 /* router_jitter_noise (0: none) */
    bool jitter_armed;            /* model_jitter_next: the next training forward jitters */
    uint64_t jitter_key;

    /* bf16 tables: the backend holds a rounded copy of params (kernels.h
     * bf16_weights) as they are now; model_params_changed clears it, the
     * next forward makes it again. Off with UPC_BF16_WEIGHTS=0 (each GEMM
     * then rounds its weights itself: the same values, slower). */
    bool round_weights;
    bool weights_rounded;

    model_workspace *ws;          /* activations, sized for (B, T) */
} model;

/* Build the model for a validated config on backend K: tensor table,
 * zeroed parameter and gradient buffers. Fails (EX_DATAERR) on a config
 * feature the model does not implement, EX_OSERR when memory runs out. */
model *model_create(const upc_kernels *K, const model_config *cfg);
void model_free(model *m);

/* The view named `name`, or NULL. */
const model_tensor *model_find(const model *m, const char *name);

/* Seeded init: every matmul weight and the embedding ~ normal(0, std) with
 * std = initializer_range from the config (default 0.02), norms 1. Each
 * tensor draws from its own splitmix64 stream keyed by seed and its name
 * (Box-Muller), so the same seed gives the same bits on every backend and a
 * tensor's values do not depend on the others. */
void model_init_weights(model *m, uint64_t seed);

/* Copy every tensor in from a checkpoint by name (F32/BF16/F16), checking
 * shapes; fails (EX_DATAERR) naming the checkpoint and the missing or
 * misshapen tensor. With tied embeddings a stored lm_head.weight is ignored
 * (as transformers does). */
void model_load_weights(model *m, const st_reader *r);
/* Write every tensor as `dtype` (ST_F32 or ST_BF16): to `path` itself when
 * it ends in ".safetensors", else to path/model.safetensors (path a
 * directory that exists; sharded at max_shard_bytes, 0 = one file).
 * Atomic (temporary name, rename). */
void model_save_weights(const model *m, const char *path, st_dtype dtype,
                        uint64_t max_shard_bytes);

/* Elements of the largest tensor (a host buffer that holds any one). */
size_t model_largest_tensor(const model *m);

/* Host copies of one tensor's parameters / gradients (numel floats), and
 * upload of new parameters. */
void model_get_param(const model *m, const model_tensor *t, float *host);
void model_set_param(model *m, const model_tensor *t, const float *host);
void model_get_grad(const model *m, const model_tensor *t, float *host);

void model_zero_grads(model *m);

/* Say that m->params changed (model_set_param and optim_step do): a bf16
 * table's rounded copy of the weights is made again before the next
 * forward. Anything else that writes m->params must call it. */
void model_params_changed(model *m);
/* Make that copy now if it is out of date (model_forward and engine_step
 * call it; nothing happens on fp32 tables). */
void model_round_weights(model *m);

/* Capacity of each expert for a batch of N tokens in capacity mode:
 * ceil(capacity_factor * N * k / E), at most N * k. */
int model_expert_capacity(const model *m, int N);

/* Size the workspace for batches of B x T tokens (model_forward does it
 * on demand; the allocation is kept until the shape changes). */
void model_reserve(model *m, int B, int T);

/* Bytes of the workspace model_reserve sized last (activations kept for
 * backward and backward scratch); 0 before any. */
size_t model_activation_bytes(const model *m);

/* Forward over ids [B][T] (host int32, in [0, vocab)). With targets (host
 * int32 [B][T], -1 = ignored) the loss is computed into *loss (may be NULL)
 * and the activations kept for model_backward; without, only the logits.
 * Fails (EX_DATAERR) on an id or target outside the vocabulary. */
void model_forward(model *m, const int32_t *ids, const int32_t *targets, int B, int T,
                   model_loss *loss);
/* Router jitter for the next forward with targets only (a training
 * micro-batch; validation and scoring forwards are never jittered): its
 * noise is drawn from key (and the block), so the same key gives the same
 * noise on every backend, and its backward follows it. Nothing happens
 * when router_jitter_noise is 0. */
void model_jitter_next(model *m, uint64_t key);
/* Logits of the last forward, host [B*T][V]; valid until model_backward
 * (which reuses their memory). */
void model_get_logits(const model *m, float *host);
/* Rows [row0, row0 + nrows) of them (row b*T + t), host [nrows][V]. */
void model_get_logits_rows(const model *m, size_t row0, size_t nrows, float *host);
/* The experts chosen for each token by MoE block `layer` in the last
 * forward: host int32 [B*T][k], by descending router probability. */
void model_get_routing(const model *m, int layer, int32_t *host);
/* Gradients of loss_scale * total loss of the last forward (with targets)
 * ADDED to m->grads (micro-batches accumulate; the caller zeroes). */
void model_backward(model *m, float loss_scale);

#endif
