/* test_sampling: greedy picks the argmax (ties to the lowest id);
 * temperature sampling follows softmax(logits / T) (frequencies of 40000
 * draws within 4 standard errors); top-p keeps the smallest most-likely set
 * reaching p; the same seed gives the same draws. */
#include "sampling.h"
#include "test_harness.h"

#include <math.h>

int main(void)
{
    upc_init("test_sampling");
    enum { V = 5, DRAWS = 40000 };
    float logits[V] = {1.0f, 3.0f, 3.0f, 0.0f, 2.0f};
    char scratch[256];
    uint64_t rng = 1;
    sampling greedy = {0, 1};
    CHECK_MSG(sample_token(logits, V, &greedy, &rng, scratch) == 1, "greedy: not the lowest argmax");
    for (int t = 0; t < 2; t++) {
        double T = t ? 2.0 : 0.7, z = 0, p[V];
        for (int i = 0; i < V; i++)
            z += exp(logits[i] / T);
        for (int i = 0; i < V; i++)
            p[i] = exp(logits[i] / T) / z;
        int count[V] = {0};
        sampling s = {T, 1};
        for (int k = 0; k < DRAWS; k++)
            count[sample_token(logits, V, &s, &rng, scratch)]++;
        for (int i = 0; i < V; i++) {
            double se = sqrt(p[i] * (1 - p[i]) / DRAWS), f = (double)count[i] / DRAWS;
            CHECK_MSG(fabs(f - p[i]) < 4 * se + 1e-9, "T=%.1f: token %d drawn %.4f of the time, expected %.4f", T, i,
                      f, p[i]);
        }
    }
    /* top-p: the two tied most likely tokens hold ~0.59 at T=1: p = 0.5 keeps both, never the others */
    sampling nucleus = {1.0, 0.5};
    int outside = 0, seen1 = 0, seen2 = 0;
    for (int k = 0; k < 4000; k++) {
        int32_t t = sample_token(logits, V, &nucleus, &rng, scratch);
        outside += t != 1 && t != 2;
        seen1 += t == 1;
        seen2 += t == 2;
    }
    CHECK_MSG(!outside && seen1 > 1500 && seen2 > 1500, "top-p 0.5: %d outside the nucleus, %d / %d inside", outside,
              seen1, seen2);
    uint64_t a = 9, b = 9;
    sampling s = {1.0, 0.9};
    int same = 1;
    for (int k = 0; k < 200; k++)
        same &= sample_token(logits, V, &s, &a, scratch) == sample_token(logits, V, &s, &b, scratch);
    CHECK_MSG(same, "the same seed gave other draws");
    if (failures) {
        fprintf(stderr, "test_sampling: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("test_sampling: all checks passed (%d checks)\n", checks);
    return 0;
}
