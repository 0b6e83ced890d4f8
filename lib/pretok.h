/* pretok.h: pre-tokenization, shared by encoding (bpe.c) and training
 * (bpe_train.c) so both cut text into exactly the same pieces: the regex's
 * matches, and each run of bytes between matches (invalid UTF-8, characters
 * a pattern leaves out) as a piece of its own. */
#ifndef UPCYC_PRETOK_H
#define UPCYC_PRETOK_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct {
    pcre2_code *re;
    bool jit;             /* JIT-compiled (else the slower interpreter) */
} pretok_pattern;

/* Compile a PCRE2 pattern (UTF, UCP, any bytes accepted). False with a
 * message in err on a bad regex. */
bool pretok_compile(pretok_pattern *p, const char *pattern, char *err, size_t errlen);
void pretok_free(pretok_pattern *p);

/* Per-thread matching state for one pattern. */
typedef struct {
    const pretok_pattern *p;
    pcre2_match_data *md;
    pcre2_match_context *mc;
    pcre2_jit_stack *js;
} pretok_matcher;

void pretok_matcher_init(pretok_matcher *m, const pretok_pattern *p);
void pretok_matcher_free(pretok_matcher *m);

/* Call fn for each piece of text[0..len), in order. */
typedef void (*pretok_fn)(void *ctx, const unsigned char *piece, size_t n);
void pretok_split(pretok_matcher *m, const unsigned char *text, size_t len, pretok_fn fn, void *ctx);

#endif
