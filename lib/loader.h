/* loader.h: the training data loader over one shard split directory.
 *
 * Each epoch the split's chunks are shuffled with (seed, epoch) and dealt to
 * the ranks round robin (chunk i of the shuffled order goes to rank i mod
 * world). A rank reads its chunks in that order as one token stream and cuts
 * it into windows of T+1 tokens that overlap by one token (window k holds
 * stream positions kT .. kT+T), so every token after the first is a target
 * exactly once. A step is B consecutive windows; every rank runs the same
 * number of steps per epoch (computed from the index alone, no messages):
 *
 *   pad_tail = false: steps = min over ranks of floor(windows / B), only full
 *     windows; a rank's leftover tokens that epoch are skipped (reshuffled
 *     next epoch).
 *   pad_tail = true: steps = max over ranks of ceil(windows / B), the last
 *     window may be short and the last steps may be padded; valid[b] says how
 *     many leading tokens of window b are data (the rest are EOS padding).
 *     Every target token of the split is then seen exactly once per epoch.
 *
 * Chunks are decompressed ahead of use on background threads into a small
 * ring. The position (epoch, step) is a cursor that can be saved as msgpack
 * bytes and restored, so a resumed run sees exactly the tokens it would have. */
#ifndef UPCYC_LOADER_H
#define UPCYC_LOADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "shard.h"

#define LOADER_CURSOR_FORMAT "upcyc.loader.cursor"
#define LOADER_CURSOR_VERSION 1

typedef struct {
    size_t batch;          /* B: windows per step */
    size_t seq;            /* T: each window holds T+1 tokens */
    uint64_t seed;         /* chunk shuffle seed */
    uint32_t rank, world;  /* data-parallel position, rank < world */
    bool pad_tail;         /* see above */
    size_t ring;           /* decompressed chunks kept ahead, >= 2 (0: 8) */
    size_t threads;        /* decompression threads (0: 2); chunks still arrive in order */
} loader_config;

typedef struct {
    uint32_t *tokens;      /* batch x (seq + 1) token ids, row-major */
    uint32_t *valid;       /* per window: leading tokens that are data */
    uint64_t epoch, step;  /* which batch this is */
} loader_batch;

typedef struct {
    uint64_t epoch, step;  /* the batch loader_next returns next */
} loader_cursor;

typedef struct loader loader;

/* Open a split directory; fails (upc_fail) on a bad index or configuration,
 * or when the split is too small for one step. */
loader *loader_open(const char *dir, const loader_config *cfg);
void loader_close(loader *L);
const shard_index *loader_index(const loader *L);
/* Steps in an epoch (the same on every rank). */
uint64_t loader_steps(const loader *L, uint64_t epoch);
/* The next batch, owned by the loader, valid until the next call. A corrupt
 * chunk fails the tool with EX_DATAERR naming the file, frame and offset. */
const loader_batch *loader_next(loader *L);

/* Model inputs of windows [first, first + n) of a batch of T-token windows:
 * ids [n][T] the window's first T tokens, targets [n][T] the next ones, -1
 * past the window's valid tokens (pad_tail). Returns the targets that are
 * not -1. */
size_t loader_batch_windows(const loader_batch *b, size_t T, size_t first, size_t n, int32_t *ids,
                            int32_t *targets);

loader_cursor loader_tell(const loader *L);
void loader_seek(loader *L, loader_cursor c);
/* The cursor with what it depends on (seed, B, T, rank, world, the split's
 * chunk and token counts), as msgpack; *out is malloc'd. */
size_t loader_cursor_save(const loader *L, unsigned char **out);
/* Restore a saved cursor; fails with EX_DATAERR when it was made for another
 * configuration or split. */
void loader_cursor_load(loader *L, const void *buf, size_t n);

#endif
