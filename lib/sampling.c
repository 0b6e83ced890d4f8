/* sampling.c: greedy, temperature and top-p sampling (sampling.h). */
#include "sampling.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>

size_t sampling_scratch_bytes(int V)
{
    return (size_t)V * (sizeof(float) + sizeof(int32_t));
}

static int32_t greedy(const float *logits, int V)
{
    int32_t arg = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[arg])
            arg = i;
    return arg;
}

static int by_prob_desc(const void *a, const void *b, void *ctx)
{
    const float *p = ctx;
    float x = p[*(const int32_t *)a], y = p[*(const int32_t *)b];
    if (x != y)
        return x < y ? 1 : -1;
    return *(const int32_t *)a - *(const int32_t *)b;
}

int32_t sample_token(const float *logits, int V, const sampling *s, uint64_t *rng, void *scratch)
{
    if (s->temperature <= 0)
        return greedy(logits, V);
    float *p = scratch;
    int32_t *order = (int32_t *)(p + V);
    float mx = logits[greedy(logits, V)];
    double sum = 0;
    for (int i = 0; i < V; i++) {
        p[i] = (float)exp((logits[i] - mx) / s->temperature);
        sum += p[i];
    }
    for (int i = 0; i < V; i++) {
        p[i] = (float)(p[i] / sum);
        order[i] = i;
    }
    int keep = V;
    if (s->top_p < 1.0) {
        qsort_r(order, (size_t)V, sizeof *order, by_prob_desc, p);
        double c = 0;
        for (keep = 0; keep < V;) {
            c += p[order[keep++]];
            if (c >= s->top_p)
                break;
        }
    }
    double mass = 0;
    for (int i = 0; i < keep; i++)
        mass += p[order[i]];
    double u = (double)(upc_splitmix64(rng) >> 11) * 0x1.0p-53 * mass, c = 0;
    for (int i = 0; i < keep; i++) {
        c += p[order[i]];
        if (u < c)
            return order[i];
    }
    return order[keep - 1];
}
