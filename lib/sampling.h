/* sampling.h: the next token from a row of logits: greedy (temperature 0),
 * or softmax(logits / temperature) restricted to the smallest set of most
 * likely tokens whose probability reaches top_p (nucleus sampling; 1 = all),
 * drawn with a splitmix64 stream, so a seed gives the same tokens. */
#ifndef UPCYC_SAMPLING_H
#define UPCYC_SAMPLING_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    double temperature;   /* 0: greedy */
    double top_p;         /* (0, 1] */
} sampling;

/* Ties in greedy go to the lowest id. scratch: V floats and V ints of
 * caller memory (sampling_scratch_bytes), so the hot path allocates nothing. */
int32_t sample_token(const float *logits, int V, const sampling *s, uint64_t *rng, void *scratch);
size_t sampling_scratch_bytes(int V);

#endif
