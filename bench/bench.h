/* bench.h: what every benchmark harness (the C files in bench/) times with:
 * the median of repeated timings (of upc_now, util.h). */
#ifndef UPCYC_BENCH_H
#define UPCYC_BENCH_H

#include <stdlib.h>

static inline int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of t[0..n) (sorts t). */
static inline double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

#endif
