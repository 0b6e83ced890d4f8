/* train_state.h: trainer_state.json, what a checkpoint needs beyond weights
 * and optimizer moments to continue a run exactly (formats/checkpoint.md):
 *
 *   {"format": "upcyc.trainer_state", "version": 1,
 *    "step": 120, "tokens": 491520, "elapsed_s": 81.2, "threads": 2,
 *    "data_cursor": {"epoch": 0, "step": 120, "msgpack_hex": "..."},
 *    "settings": {"batch": 8, "lr": 0.0003, ...}}
 *
 * "settings" holds the run's options (the train tool decides which), so a
 * resumed run can take them from here and refuse changes that would make it
 * a different run. The data cursor is the loader's own msgpack record
 * (lib/loader.h), hex-encoded, with its position spelled out for people. */
#ifndef UPCYC_TRAIN_STATE_H
#define UPCYC_TRAIN_STATE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define TRAIN_STATE_FORMAT "upcyc.trainer_state"
#define TRAIN_STATE_VERSION 1
#define TRAIN_STATE_NAME "trainer_state.json"

typedef struct {
    long long step;              /* optimizer steps done */
    long long tokens;            /* tokens trained on (targets) */
    double elapsed_s;            /* wall time of the training loop, over all resumes */
    int threads;                 /* OpenMP threads (bit-exact resume needs the same) */
    uint64_t cursor_epoch, cursor_step;
    unsigned char *cursor;       /* the loader's cursor record (malloc'd) */
    size_t cursor_len;
    json_t *settings;            /* object (owned) */
} train_state;

/* Write atomically to path. */
void train_state_save(const train_state *s, const char *path);
/* Read path; fails (EX_NOINPUT when missing, EX_DATAERR naming the file and
 * field otherwise). */
void train_state_load(train_state *s, const char *path);
void train_state_free(train_state *s);

#endif
