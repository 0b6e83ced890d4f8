/* lr_schedule.h: the learning rate at each optimizer step: linear warmup
 * from 0, then cosine, linear or constant decay to a floor.
 *
 *   step s (1-based), warmup W, decay end D (>= W), peak P, floor F = ratio*P:
 *   s <= W:      P * s / W
 *   otherwise:   p = min(1, (s - W) / (D - W))
 *     cosine:    F + (P - F) * (1 + cos(pi p)) / 2
 *     linear:    P - (P - F) * p
 *     constant:  P
 * After D the rate stays at F (cosine, linear), so a run extended past its
 * planned length trains on at the floor. */
#ifndef UPCYC_LR_SCHEDULE_H
#define UPCYC_LR_SCHEDULE_H

#include <stdbool.h>

typedef enum { LR_COSINE, LR_LINEAR, LR_CONSTANT } lr_shape;

typedef struct {
    lr_shape shape;
    double peak;          /* P */
    double floor_ratio;   /* F / P, in [0, 1] */
    long long warmup;     /* W steps */
    long long decay_end;  /* D: the step where the decay reaches the floor */
} lr_schedule;

double lr_at(const lr_schedule *s, long long step);

/* "cosine", "linear", "constant" <-> lr_shape. */
bool lr_shape_parse(const char *name, lr_shape *out);
const char *lr_shape_name(lr_shape s);

#endif
