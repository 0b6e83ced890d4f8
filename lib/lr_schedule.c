/* lr_schedule.c: warmup + decay learning-rate schedules (lr_schedule.h). */
#include "lr_schedule.h"

#include <math.h>
#include <string.h>

double lr_at(const lr_schedule *s, long long step)
{
    if (s->warmup > 0 && step <= s->warmup)
        return s->peak * (double)step / (double)s->warmup;
    if (s->shape == LR_CONSTANT)
        return s->peak;
    double floor = s->peak * s->floor_ratio;
    long long span = s->decay_end - s->warmup;
    double p = span > 0 ? (double)(step - s->warmup) / (double)span : 1.0;
    if (p > 1.0)
        p = 1.0;
    if (p < 0.0)
        p = 0.0;
    if (s->shape == LR_LINEAR)
        return s->peak - (s->peak - floor) * p;
    return floor + (s->peak - floor) * 0.5 * (1.0 + cos(M_PI * p));
}

static const char *const names[] = {"cosine", "linear", "constant"};

bool lr_shape_parse(const char *name, lr_shape *out)
{
    for (int i = 0; i < 3; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (lr_shape)i;
            return true;
        }
    return false;
}

const char *lr_shape_name(lr_shape s)
{
    return names[s];
}
