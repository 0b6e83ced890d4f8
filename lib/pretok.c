/* pretok.c: compile pre-tokenization patterns and cut text into pieces. */
#include "pretok.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe_internal.h"
#include "util.h"

/* PCRE2's \s (with UCP) also matches U+180E, which tiktoken's regex engine
 * (Rust, Unicode White_Space) does not; spell \s and \S as the property so
 * pre-tokens agree. Escapes are copied pairwise, \Q...\E verbatim. */
static char *whitespace_as_property(const char *pat)
{
    size_t n = strlen(pat);
    char *out = upc_malloc(n * 8 + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        if (pat[i] != '\\' || i + 1 == n) {
            *o++ = pat[i];
            continue;
        }
        char c = pat[++i];
        if (c == 's' || c == 'S') {
            o += sprintf(o, "\\%c{White_Space}", c == 's' ? 'p' : 'P');
        } else if (c == 'Q') {
            const char *e = strstr(pat + i + 1, "\\E");
            size_t k = e ? (size_t)(e - pat) + 1 : n - 1;
            memcpy(o, pat + i - 1, k - i + 2);
            o += k - i + 2;
            i = k;
        } else {
            *o++ = '\\';
            *o++ = c;
        }
    }
    *o = 0;
    return out;
}

bool pretok_compile(pretok_pattern *p, const char *pattern, char *err, size_t errlen)
{
    int code;
    PCRE2_SIZE at;
    char *pat = whitespace_as_property(pattern);
    p->re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &code, &at, NULL);
    free(pat);
    if (!p->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        bpe_set_err(err, errlen, "bad pre-tokenization regex at offset %zu: %s", (size_t)at, (char *)msg);
        return false;
    }
    /* Without JIT (unsupported CPU) the interpreter still gives the same
     * pieces, only slower. */
    p->jit = pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE) == 0;
    return true;
}

void pretok_free(pretok_pattern *p)
{
    pcre2_code_free(p->re);
    p->re = NULL;
}

void pretok_matcher_init(pretok_matcher *m, const pretok_pattern *p)
{
    memset(m, 0, sizeof *m);
    m->p = p;
    m->md = pcre2_match_data_create_from_pattern(p->re, NULL);
    m->mc = pcre2_match_context_create(NULL);
    if (!m->md || !m->mc)
        upc_fail(EX_OSERR, "out of memory");
    if (p->jit) {
        /* Room for deep backtracking on long runs of one character class. */
        m->js = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
        if (!m->js)
            upc_fail(EX_OSERR, "out of memory");
        pcre2_jit_stack_assign(m->mc, NULL, m->js);
    }
}

void pretok_matcher_free(pretok_matcher *m)
{
    pcre2_match_data_free(m->md);
    pcre2_match_context_free(m->mc);
    pcre2_jit_stack_free(m->js);
    memset(m, 0, sizeof *m);
}

void pretok_split(pretok_matcher *m, const unsigned char *text, size_t len, pretok_fn fn, void *ctx)
{
    const pretok_pattern *p = m->p;
    size_t gap = 0, from = 0;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(m->md);
    while (from < len) {
        int rc = p->jit ? pcre2_jit_match(p->re, text, len, from, 0, m->md, m->mc)
                        : pcre2_match(p->re, text, len, from, 0, m->md, m->mc);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0 || ov[1] == ov[0]) {
            /* A match error (resource limit) or an empty match: the byte
             * joins the unmatched run and the search goes on after it. */
            from = (rc < 0 ? from : ov[0]) + 1;
            continue;
        }
        if (ov[0] > gap)
            fn(ctx, text + gap, ov[0] - gap);
        fn(ctx, text + ov[0], ov[1] - ov[0]);
        gap = from = ov[1];
    }
    if (len > gap)
        fn(ctx, text + gap, len - gap);
}
