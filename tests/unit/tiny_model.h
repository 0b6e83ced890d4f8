/* tiny_model.h: a tiny random model for the inference-side unit tests (d 16,
 * 2 layers, 4 heads over 2 KV heads, ffn 24, context 128; E experts top-kk
 * when E > 0), its matrix weights multiplied by gain so the next-token
 * distributions are peaked and argmax and log-likelihood sums are tested. */
#ifndef TEST_TINY_MODEL_H
#define TEST_TINY_MODEL_H

#include "model.h"
#include "util.h"

#include <stdlib.h>

static inline model *tiny_random_model(int V, int E, int kk, uint64_t seed, float gain)
{
    model_config c;
    mc_init(&c, E > 0);
    c.vocab_size = V;
    c.hidden_size = 16;
    c.intermediate_size = 24;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.max_position_embeddings = 128;
    if (E) {
        c.num_local_experts = E;
        c.num_experts_per_tok = kk;
    }
    mc_validate(&c, "tiny");
    model *m = model_create(kernels_cpu(), &c);
    mc_free(&c);
    model_init_weights(m, seed);
    for (size_t i = 0; i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        if (t->ndim < 2)
            continue;
        float *h = upc_malloc(t->numel * sizeof *h);
        model_get_param(m, t, h);
        for (size_t j = 0; j < t->numel; j++)
            h[j] *= gain;
        model_set_param(m, t, h);
        free(h);
    }
    return m;
}

#endif
