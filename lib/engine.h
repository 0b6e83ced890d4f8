/* engine.h: the inference engine over a model (lib/model.h) on any backend:
 * a paged KV cache (a pool of fixed-size blocks, a block table per
 * sequence), and a step that appends tokens to any mix of sequences at once
 * (prefill chunks and single decode tokens together: continuous batching is
 * the caller choosing, every step, which rows to run).
 *
 *   engine *e = engine_create(m, &cfg);
 *   int s = engine_open(e);                       a sequence slot
 *   engine_step(e, seqs, ids, n, want, logits);   rows append ids[r] to seqs[r]
 *   engine_close(e, s);                           its blocks back to the pool
 *
 * Semantics are the training forward's (model_forward): the logits of a row
 * equal those of the same position in a full forward over the sequence. The
 * MoE FFN runs every row of the step through one dispatch (tokens grouped by
 * expert); engine_experts_touched says how many distinct experts each layer
 * used in the last step. Memory: weights (the model's), the KV pool (2 * L
 * * Hkv * hd floats per token slot) and a workspace for max_rows rows. */
#ifndef UPCYC_ENGINE_H
#define UPCYC_ENGINE_H

#include "model.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int block_size;     /* tokens per KV block (default 16) */
    size_t n_blocks;    /* blocks in the pool; 0: as many as kv_bytes holds */
    size_t kv_bytes;    /* KV budget when n_blocks is 0 (default 256 MiB) */
    int max_seqs;       /* sequence slots (default 64) */
    int max_rows;       /* tokens per step (default 512) */
    int max_len;        /* tokens per sequence (default max_position_embeddings, else 4096) */
} engine_config;

typedef struct engine engine;

void engine_config_default(engine_config *c);
/* Fails (EX_OSERR naming the bytes) when the pool or workspace does not fit. */
engine *engine_create(model *m, const engine_config *c);
void engine_free(engine *e);

/* KV cache bytes per token of context: 2 * layers * kv heads * head_dim * 4. */
size_t engine_kv_bytes_per_token(const model *m);
size_t engine_kv_bytes(const engine *e);
size_t engine_capacity_tokens(const engine *e);   /* blocks * block_size */
size_t engine_free_blocks(const engine *e);

/* A free sequence slot (length 0), or -1 when all max_seqs are in use. */
int engine_open(engine *e);
/* A new sequence whose first n tokens are those of parent: it shares the
 * parent's first n / block_size blocks (n a multiple of block_size, at most
 * the parent's length), so they are neither recomputed nor copied. Shared
 * blocks are full, and every later write goes to a block of its own, so no
 * copy-on-write is needed; a block returns to the pool when the last
 * sequence holding it closes. -1 when all max_seqs slots are in use. */
int engine_fork(engine *e, int parent, int n);
void engine_close(engine *e, int seq);
int engine_seq_len(const engine *e, int seq);
/* Whether seq can take n more tokens now (free blocks, max_len). */
bool engine_can_append(const engine *e, int seq, int n);
/* Blocks a sequence of n tokens holds. */
size_t engine_blocks_for(const engine *e, int n);

/* Run one step: row r appends ids[r] to sequence seqs[r] at its next
 * position (a sequence's rows in order, at most max_rows rows). For each r
 * with want[r] the logits after row r go to the next row of logits (host
 * [count][V]). Returns count. Fails (EX_SOFTWARE) when a sequence has no
 * room: check engine_can_append first. */
int engine_step(engine *e, const int *seqs, const int32_t *ids, int n, const bool *want, float *logits);

/* After a step: distinct experts that received a token, per layer [L]
 * (0 for dense layers); NULL for a model without MoE layers. */
const int32_t *engine_experts_touched(const engine *e);

#endif
