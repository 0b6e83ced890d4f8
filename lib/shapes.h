/* shapes.h: named model shapes for serve-bench and benchmarks, so the cost
 * of serving a model can be measured without training it (random weights):
 *   tiny        configs/tiny.json's shape (d 128, 4 layers, vocab 8192)
 *   436m, 1.4b  the paper's dense models (configs/paper-*.json)
 *   llama3-8b   Llama-3-8B (d 4096, 32 layers, GQA 32/8, vocab 128256)
 * and any of them upcycled: NAME-moeExK (E experts, top-K; the paper's are
 * -moe8x1 and -moe8x2), as `upcycle --experts E --top-k K` makes it. */
#ifndef UPCYC_SHAPES_H
#define UPCYC_SHAPES_H

#include "model_config.h"

#include <stdbool.h>

/* Fill c (initialised here) for a shape name; false when unknown. */
bool shape_config(const char *name, model_config *c);
/* The base names, for messages: "tiny, 436m, 1.4b, llama3-8b". */
const char *shape_names(void);

#endif
