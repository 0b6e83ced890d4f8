/* upcycle.h: sparse upcycling of a dense Llama checkpoint into a Mixtral
 * (MoE) checkpoint: the MoE config a dense config and the options imply,
 * and the streaming transformation of the tensors (copied, sliced, noised,
 * partly re-initialised experts; a new router per MoE layer).
 *
 * Expert e of a MoE layer with granularity G belongs to virtual group
 * e / G and holds slice s = e % G of the dense FFN's intermediate
 * dimension f (f / G rows of gate/up, f / G columns of down):
 *   dense:  y = W2 h,  h = silu(W1 x) * (W3 x)  =  sum_s W2[:, s] h[s]
 *   expert (g, s): w1 = W1[s], w3 = W3[s], w2 = G * W2[:, s]
 * The router's rows are E / G random rows, each repeated G times, so the G
 * experts of a group score alike. With renormalised top-k and K a multiple
 * of G, top-k picks K / G whole groups with weights q_g (each of a group's G
 * experts gets q_g, sum_g G q_g = 1), so the output is
 *   sum_g q_g sum_s G W2[:, s] h[s] = G (sum_g q_g) y = y:
 * the MoE reproduces the dense parent exactly (G = 1 is plain copying).
 *
 * Every problem fails the tool (upc_fail): EX_USAGE for options that do not
 * fit the model, EX_DATAERR for a checkpoint that is not a dense Llama
 * checkpoint of its config's shapes. */
#ifndef UPCYC_UPCYCLE_H
#define UPCYC_UPCYCLE_H

#include "model_config.h"
#include "safetensors.h"

#include <stdbool.h>
#include <stdint.h>

typedef enum { UPCYCLE_ROUTER_NORMAL, UPCYCLE_ROUTER_ZEROS, UPCYCLE_ROUTER_UNIFORM } upcycle_router_init;

typedef struct {
    int64_t experts;              /* E >= 1 */
    int64_t top_k;                /* 1 <= K <= E */
    int64_t granularity;          /* G >= 1, divides E and the intermediate size */
    uint64_t seed;
    upcycle_router_init router_init;
    double router_std;            /* normal: std; uniform: on [-std*sqrt3, std*sqrt3] */
    double aux_loss_coef;         /* router_aux_loss_coef (default 0.01) */
    bool softmax_topk;            /* softmax then top-k without renormalising */
    double expert_noise;          /* std of N(0, s) added to every copied weight; 0 = none */
    double drop_ratio;            /* Drop-Upcycling: share of intermediate dims re-initialised per expert */
    const bool *moe_layers;       /* num_hidden_layers flags; NULL = every layer */
    int out_dtype;                /* an st_dtype (F32, BF16, F16), or -1: each tensor's own */
} upcycle_options;

void upcycle_options_init(upcycle_options *o);

/* Parse a --layers spec for L layers into flags[L]: "all", "every:N"
 * (layers N-1, 2N-1, ...: every N-th counting from 1), or a comma list of
 * layer numbers and ranges A-B. Returns false and an explanation in err on
 * a bad spec or one that selects no layer. */
bool upcycle_parse_layers(const char *spec, int64_t L, bool *flags, char *err, size_t errlen);

/* The MoE config for `dense` (fails EX_DATAERR when dense is already MoE,
 * EX_USAGE when the options do not fit the model). moe is initialised here;
 * mc_free it. */
void upcycle_config(const model_config *dense, const upcycle_options *o, model_config *moe, const char *name);

/* Check that r holds every tensor of `dense` with its shape and a float
 * dtype (fails EX_DATAERR naming the checkpoint and tensor); *bytes gets
 * their size. Returns how many tensors of r the config does not know (they
 * are not copied). */
size_t upcycle_check_checkpoint(const st_reader *r, const model_config *dense, uint64_t *bytes);

/* Declare every tensor of `moe` on w, begin the data and write them all, in
 * storage order, reading r tensor by tensor; returns the bytes of weights
 * written. Memory: a row buffer; pages of r are released after use so the
 * resident set stays bounded. Call st_writer_commit after it. */
uint64_t upcycle_write(const st_reader *r, const model_config *dense, const model_config *moe,
                       const upcycle_options *o, st_writer *w);

#endif
