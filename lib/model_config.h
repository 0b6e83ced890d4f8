/* model_config.h: a Hugging Face config.json for LlamaForCausalLM and
 * MixtralForCausalLM (formats/checkpoint.md): parse, validate, write; and
 * what a config implies: its tensors (HF names and shapes), parameter counts
 * and training FLOPs per token.
 *
 * Problems fail the tool (upc_fail, EX_DATAERR; EX_NOINPUT for a missing
 * file) with one line naming the file and the field. */
#ifndef UPCYC_MODEL_CONFIG_H
#define UPCYC_MODEL_CONFIG_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#define MC_MAX_EOS 8

typedef struct {
    bool moe;                     /* Mixtral (true) or Llama (false) */
    int64_t vocab_size;
    int64_t hidden_size;
    int64_t intermediate_size;    /* per expert for MoE */
    int64_t num_hidden_layers;
    int64_t num_attention_heads;
    int64_t num_key_value_heads;  /* default: num_attention_heads */
    int64_t head_dim;             /* default: hidden_size / num_attention_heads */
    int64_t max_position_embeddings;
    double rms_norm_eps;
    double rope_theta;
    bool tie_word_embeddings;
    int64_t bos_token_id;         /* -1: none */
    int64_t eos_token_ids[MC_MAX_EOS];
    int n_eos;                    /* 0: none; >1 written as a list */
    char torch_dtype[16];         /* "float32", "bfloat16", "float16" or "" */

    /* MoE (moe only). */
    int64_t num_local_experts;
    int64_t num_experts_per_tok;
    double router_aux_loss_coef;
    double router_jitter_noise;
    bool norm_topk_prob;          /* renormalise top-k weights; default true */
    bool output_router_logits;

    /* upcyc's own settings (the "upcyc" object), parsed leniently: the known
     * keys below are checked, anything else is kept for other readers. */
    bool *layer_is_moe;           /* num_hidden_layers flags (moe only); from
                                     upcyc.moe_layers, default every layer */
    double router_z_loss_coef;    /* upcyc.router_z_loss_coef, default 0 */
    double capacity_factor;       /* upcyc.capacity_factor, default 0 = dropless */
    json_t *upcyc;                /* the whole object (owned), or NULL */

    /* Top-level keys upcyc does not interpret (attention_bias, rope_scaling,
     * initializer_range, ...), kept so a config read and written again
     * loses nothing. Owned, never NULL after parse. */
    json_t *extra;
} model_config;

/* Defaults of HF's LlamaConfig / MixtralConfig for every optional field, the
 * five size fields zero (set them, then mc_validate). */
void mc_init(model_config *c, bool moe);
/* Parse config.json text; `name` is used in messages. Validates. */
void mc_parse(model_config *c, const char *json_text, size_t len, const char *name);
/* Read path, or DIR/config.json when path is a directory. */
void mc_load(model_config *c, const char *path);
/* Fill derived defaults (num_key_value_heads = heads when 0, head_dim =
 * hidden_size / heads when 0), then check sizes and relations; fails naming
 * the field. mc_parse calls it. */
void mc_validate(model_config *c, const char *name);
/* The config as JSON text (HF field names, keys sorted like transformers
 * writes them, 2-space indent, newline at the end). Caller frees. */
char *mc_to_json(const model_config *c);
/* Write it atomically to path (a file; DIR/config.json for a directory). */
void mc_save(const model_config *c, const char *path);
void mc_free(model_config *c);
/* Make `dst` an independent copy of `src`. */
void mc_copy(model_config *dst, const model_config *src);

/* The first feature in the config that the upcyc model does not implement
 * (a non-null rope_scaling, attention_bias, mlp_bias, a sliding_window), or
 * NULL. Parsing accepts these so shapes can be read from any such config;
 * tools that run the model refuse them with this text. */
const char *mc_unsupported(const model_config *c);

bool mc_layer_is_moe(const model_config *c, int64_t layer);

/* The tensors the config implies, in HF names, in storage order: embed, per
 * layer (input_layernorm, q, k, v, o, post_attention_layernorm, then
 * mlp.{gate,up,down}_proj or block_sparse_moe.gate and experts.E.{w1,w3,w2}),
 * model.norm, lm_head (absent when tied). Shapes are [out, in] for linears. */
typedef struct {
    char name[96];
    int ndim;
    int64_t shape[2];
    int64_t layer;                /* -1 outside the blocks */
    int64_t expert;               /* -1 unless an expert's weight */
    bool matmul;                  /* a weight of a matrix product (not a norm, not the embedding) */
} mc_tensor;

/* Array of *n tensors; caller frees. */
mc_tensor *mc_tensors(const model_config *c, size_t *n);

/* Parameters: total, and active per token (top-k of the experts). */
typedef struct {
    int64_t total;
    int64_t active;
    int64_t embedding;            /* embed_tokens (and lm_head when untied) */
    int64_t active_matmul;        /* active matmul weights incl. lm_head (tied or not) */
} mc_params;
mc_params mc_param_count(const model_config *c);

/* Training FLOPs per token at sequence length seq_len, as in PaLM (Chowdhery
 * et al. 2022, appendix B): 6 * active_matmul + 12 * L * H * head_dim * T.
 * The first term is forward (2) + backward (4) per matmul weight; the second
 * is QK^T and attention x V, counted over the full T x T matrix. */
double mc_train_flops_per_token(const model_config *c, int64_t seq_len);

#endif
