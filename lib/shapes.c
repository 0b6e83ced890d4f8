/* shapes.c: named model shapes (shapes.h). */
#include "shapes.h"
#include "upcycle.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    int64_t vocab, d, ffn, layers, heads, kv_heads, max_pos;
    double theta;
    bool tied;
} shape;

static const shape shapes[] = {
    {"tiny", 8192, 128, 384, 4, 4, 2, 1024, 10000.0, true},
    {"436m", 100352, 1024, 2560, 22, 16, 4, 4096, 10000.0, false},
    {"1.4b", 100352, 2048, 5120, 24, 16, 4, 4096, 10000.0, false},
    {"llama3-8b", 128256, 4096, 14336, 32, 32, 8, 8192, 500000.0, false},
};

const char *shape_names(void)
{
    return "tiny, 436m, 1.4b, llama3-8b (each also as NAME-moeExK)";
}

bool shape_config(const char *name, model_config *c)
{
    char base[64];
    int E = 0, K = 0;
    const char *moe = strstr(name, "-moe");
    size_t n = moe ? (size_t)(moe - name) : strlen(name);
    if (n >= sizeof base)
        return false;
    memcpy(base, name, n);
    base[n] = 0;
    if (moe) {
        char tail;
        if (sscanf(moe, "-moe%dx%d%c", &E, &K, &tail) != 2 || E < 1 || K < 1 || K > E)
            return false;
    }
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const shape *s = &shapes[i];
        if (strcmp(base, s->name) != 0)
            continue;
        model_config dense;
        mc_init(&dense, false);
        dense.vocab_size = s->vocab;
        dense.hidden_size = s->d;
        dense.intermediate_size = s->ffn;
        dense.num_hidden_layers = s->layers;
        dense.num_attention_heads = s->heads;
        dense.num_key_value_heads = s->kv_heads;
        dense.max_position_embeddings = s->max_pos;
        dense.rope_theta = s->theta;
        dense.tie_word_embeddings = s->tied;
        mc_validate(&dense, name);
        if (!E) {
            *c = dense;
            return true;
        }
        upcycle_options o;
        upcycle_options_init(&o);
        o.experts = E;
        o.top_k = K;
        upcycle_config(&dense, &o, c, name);
        mc_free(&dense);
        return true;
    }
    return false;
}
