/* test_bpe_train.c: the BPE trainer (lib/bpe_train.h) against a naive
 * reference written here (all pairs recounted from scratch at every step),
 * on seeded random corpora and on fortune text; determinism, the tie-break
 * rule, min_frequency, special tokens, and round trips through the built
 * tokenizer.
 * Usage: test_bpe_train GROUP FIXTURES_DIR [TEXT_FILE]
 * (TEXT_FILE: the larger fortune file for the group fortune-file.)
 * Exit 0 when all checks pass, 1 on a failed check, 2 on a usage error. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "bpe.h"
#include "bpe_train.h"
#include "util.h"

#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
static const char *fixtures;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
            failures++;                                                         \
        }                                                                       \
    } while (0)

/* A pattern that leaves spaces, punctuation and invalid UTF-8 between its
 * matches, so the runs between matches are pieces too. */
#define GAPPY "\\p{L}+|\\p{N}"

typedef struct {
    const char **text;
    size_t *len;
    size_t n;
} corpus;

typedef struct {
    const char *pattern;
    size_t vocab_size;
    uint64_t min_frequency;
    size_t n_special;
    const char *const *special;
} setup;

/* ---- the naive reference trainer ------------------------------------------- */

typedef struct {
    unsigned char *bytes;
    size_t len;
    uint64_t count;
    uint32_t *sym;
    size_t n_sym;
} ref_word;

typedef struct {
    ref_word *w;
    size_t n, cap;
} ref_words;

static void ref_add(ref_words *ws, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < ws->n; i++)
        if (ws->w[i].len == n && memcmp(ws->w[i].bytes, p, n) == 0) {
            ws->w[i].count++;
            return;
        }
    upc_grow((void **)&ws->w, &ws->cap, ws->n + 1, sizeof *ws->w);
    ref_word *x = &ws->w[ws->n++];
    x->bytes = upc_malloc(n);
    memcpy(x->bytes, p, n);
    x->len = n;
    x->count = 1;
}

/* Regex matches and the runs between them, as bpe.h documents encoding. */
static void ref_pretokenize(ref_words *ws, pcre2_code *re, const unsigned char *t, size_t len)
{
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    size_t gap = 0, from = 0;
    while (from < len) {
        int rc = pcre2_match(re, t, len, from, 0, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0 || ov[0] == ov[1]) {
            from = (rc < 0 ? from : ov[0]) + 1;
            continue;
        }
        if (ov[0] > gap)
            ref_add(ws, t + gap, ov[0] - gap);
        ref_add(ws, t + ov[0], ov[1] - ov[0]);
        gap = from = ov[1];
    }
    if (len > gap)
        ref_add(ws, t + gap, len - gap);
    pcre2_match_data_free(md);
}

typedef struct {
    unsigned char **bytes;
    size_t *len;
    size_t n;
    uint32_t (*merges)[2];
    size_t n_merges;
    uint64_t corpus_tokens;
} ref_result;

static int ref_cmp_tok(const ref_result *r, uint32_t a, uint32_t b)
{
    size_t la = r->len[a], lb = r->len[b];
    int c = memcmp(r->bytes[a], r->bytes[b], la < lb ? la : lb);
    return c ? c : la < lb ? -1 : la > lb ? 1 : 0;
}

typedef struct {
    uint32_t a, b;
    uint64_t count;
} ref_occ;

static int cmp_occ(const void *x, const void *y)
{
    const ref_occ *p = x, *q = y;
    if (p->a != q->a)
        return p->a < q->a ? -1 : 1;
    return p->b < q->b ? -1 : p->b > q->b;
}

static void ref_train(const corpus *c, const setup *s, ref_result *r)
{
    int code;
    PCRE2_SIZE at;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)s->pattern, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &code, &at, NULL);
    if (!re) {
        fprintf(stderr, "reference: bad pattern %s\n", s->pattern);
        exit(2);
    }
    ref_words ws = {0};
    for (size_t d = 0; d < c->n; d++) {
        const unsigned char *t = (const unsigned char *)c->text[d];
        size_t len = c->len[d], start = 0, i = 0;
        /* Specials: leftmost, longest at a position, cut out. */
        while (i < len) {
            size_t best = 0;
            for (size_t k = 0; k < s->n_special; k++) {
                size_t n = strlen(s->special[k]);
                if (n <= len - i && n > best && memcmp(t + i, s->special[k], n) == 0)
                    best = n;
            }
            if (best) {
                ref_pretokenize(&ws, re, t + start, i - start);
                i += best;
                start = i;
            } else {
                i++;
            }
        }
        ref_pretokenize(&ws, re, t + start, len - start);
    }
    pcre2_code_free(re);

    memset(r, 0, sizeof *r);
    size_t cap = s->vocab_size + 1;
    r->bytes = upc_calloc(cap, sizeof *r->bytes);
    r->len = upc_calloc(cap, sizeof *r->len);
    for (uint32_t b = 0; b < 256; b++) {
        r->bytes[b] = upc_malloc(1);
        r->bytes[b][0] = (unsigned char)b;
        r->len[b] = 1;
    }
    r->n = 256;
    for (size_t i = 0; i < ws.n; i++) {
        ws.w[i].sym = upc_malloc((ws.w[i].len + 1) * sizeof *ws.w[i].sym);
        for (size_t k = 0; k < ws.w[i].len; k++)
            ws.w[i].sym[k] = ws.w[i].bytes[k];
        ws.w[i].n_sym = ws.w[i].len;
    }
    size_t merges_cap = 0;
    uint64_t min_frequency = s->min_frequency ? s->min_frequency : 2;
    while (r->n < s->vocab_size - s->n_special) {
        /* Recount every pair: all (a, b, count) occurrences, sorted, runs
         * summed. */
        size_t n_occ = 0;
        for (size_t i = 0; i < ws.n; i++)
            n_occ += ws.w[i].n_sym ? ws.w[i].n_sym - 1 : 0;
        ref_occ *occ = upc_malloc((n_occ ? n_occ : 1) * sizeof *occ);
        n_occ = 0;
        for (size_t i = 0; i < ws.n; i++)
            for (size_t k = 0; k + 1 < ws.w[i].n_sym; k++)
                occ[n_occ++] = (ref_occ){ws.w[i].sym[k], ws.w[i].sym[k + 1], ws.w[i].count};
        qsort(occ, n_occ, sizeof *occ, cmp_occ);
        uint32_t best_a = 0, best_b = 0;
        uint64_t best_count = 0;
        for (size_t i = 0; i < n_occ;) {
            uint32_t a = occ[i].a, b = occ[i].b;
            uint64_t count = 0;
            for (; i < n_occ && occ[i].a == a && occ[i].b == b; i++)
                count += occ[i].count;
            int order = best_count == 0 ? -1 : ref_cmp_tok(r, a, best_a);
            if (order == 0)
                order = ref_cmp_tok(r, b, best_b);
            if (count > best_count || (count == best_count && order < 0)) {
                best_count = count;
                best_a = a;
                best_b = b;
            }
        }
        free(occ);
        if (best_count == 0 || best_count < min_frequency)
            break;
        size_t n = r->len[best_a] + r->len[best_b];
        unsigned char *cat = upc_malloc(n);
        memcpy(cat, r->bytes[best_a], r->len[best_a]);
        memcpy(cat + r->len[best_a], r->bytes[best_b], r->len[best_b]);
        uint32_t id = (uint32_t)r->n;
        for (uint32_t t = 0; t < r->n; t++)
            if (r->len[t] == n && memcmp(r->bytes[t], cat, n) == 0)
                id = t;
        if (id == r->n) {
            r->bytes[r->n] = cat;
            r->len[r->n++] = n;
        } else {
            free(cat);
        }
        upc_grow((void **)&r->merges, &merges_cap, r->n_merges + 1, sizeof *r->merges);
        r->merges[r->n_merges][0] = best_a;
        r->merges[r->n_merges][1] = best_b;
        r->n_merges++;
        for (size_t i = 0; i < ws.n; i++) {
            size_t j = 0;
            for (size_t k = 0; k < ws.w[i].n_sym;) {
                if (k + 1 < ws.w[i].n_sym && ws.w[i].sym[k] == best_a && ws.w[i].sym[k + 1] == best_b) {
                    ws.w[i].sym[j++] = id;
                    k += 2;
                } else {
                    ws.w[i].sym[j++] = ws.w[i].sym[k++];
                }
            }
            ws.w[i].n_sym = j;
        }
    }
    for (size_t i = 0; i < ws.n; i++) {
        r->corpus_tokens += ws.w[i].count * ws.w[i].n_sym;
        free(ws.w[i].bytes);
        free(ws.w[i].sym);
    }
    free(ws.w);
}

static void ref_free(ref_result *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->bytes[i]);
    free(r->bytes);
    free(r->len);
    free(r->merges);
}

/* ---- helpers ------------------------------------------------------------------ */

static bpe_trainer *trainer_on(const corpus *c, const setup *s, bool reverse)
{
    char err[256] = "";
    bpe_train_opts o = {.vocab_size = s->vocab_size, .pattern = s->pattern, .n_special = s->n_special,
                        .special = s->special, .min_frequency = s->min_frequency};
    bpe_trainer *tr = bpe_trainer_new(&o, err, sizeof err);
    if (!tr) {
        fprintf(stderr, "FAIL: bpe_trainer_new: %s\n", err);
        exit(1);
    }
    for (size_t d = 0; d < c->n; d++) {
        size_t k = reverse ? c->n - 1 - d : d;
        bpe_trainer_feed(tr, c->text[k], c->len[k]);
    }
    return tr;
}

static char *show(const unsigned char *p, size_t n)
{
    static char buf[8][256];
    static int k;
    char *b = buf[k++ % 8];
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < sizeof buf[0]; i++)
        o += (size_t)snprintf(b + o, sizeof buf[0] - o, p[i] >= 32 && p[i] < 127 ? "%c" : "\\x%02x", p[i]);
    b[o] = 0;
    return b;
}

/* Train, compare with the reference merge by merge (ids and bytes), then
 * build and round-trip every document. Returns the number of merges. */
static size_t compare_with_reference(const char *what, const corpus *c, const setup *s)
{
    ref_result r;
    ref_train(c, s, &r);
    bpe_trainer *tr = trainer_on(c, s, false);
    size_t n;
    const uint32_t *m = bpe_trainer_merges(tr, &n);
    CHECK(n == r.n_merges, "%s: %zu merges, the reference made %zu", what, n, r.n_merges);
    CHECK(bpe_trainer_n_tokens(tr) == r.n, "%s: %zu tokens, the reference has %zu", what,
          bpe_trainer_n_tokens(tr), r.n);
    for (size_t i = 0; i < n && i < r.n_merges; i++) {
        if (m[2 * i] != r.merges[i][0] || m[2 * i + 1] != r.merges[i][1]) {
            uint32_t la, lb;
            const unsigned char *a = bpe_trainer_token(tr, m[2 * i], &la);
            const unsigned char *b = bpe_trainer_token(tr, m[2 * i + 1], &lb);
            CHECK(0, "%s: merge %zu is (%u \"%s\", %u \"%s\"), the reference's is (%u \"%s\", %u \"%s\")", what, i,
                  m[2 * i], show(a, la), m[2 * i + 1], show(b, lb), r.merges[i][0],
                  show(r.bytes[r.merges[i][0]], r.len[r.merges[i][0]]), r.merges[i][1],
                  show(r.bytes[r.merges[i][1]], r.len[r.merges[i][1]]));
            break;
        }
    }
    for (uint32_t id = 256; id < r.n && id < bpe_trainer_n_tokens(tr); id++) {
        uint32_t len;
        const unsigned char *p = bpe_trainer_token(tr, id, &len);
        if (len != r.len[id] || memcmp(p, r.bytes[id], len) != 0) {
            CHECK(0, "%s: token %u is \"%s\", the reference's is \"%s\"", what, id, show(p, len),
                  show(r.bytes[id], r.len[id]));
            break;
        }
    }
    uint64_t corpus_tokens = bpe_trainer_corpus_tokens(tr);
    CHECK(corpus_tokens == r.corpus_tokens, "%s: corpus is %llu tokens, %llu by the reference", what,
          (unsigned long long)corpus_tokens, (unsigned long long)r.corpus_tokens);

    char err[256] = "";
    bpe_tokenizer *t = bpe_trainer_finish(tr, err, sizeof err);
    CHECK(t, "%s: bpe_trainer_finish: %s", what, err);
    if (t) {
        CHECK(bpe_vocab_size(t) == r.n + s->n_special, "%s: vocabulary %zu, expected %zu", what, bpe_vocab_size(t),
              r.n + s->n_special);
        /* Encoding the training text gives exactly the trainer's segmentation
         * (plus one id per special token in the text), and decodes back. */
        bpe_scratch *sc = bpe_scratch_new(t);
        uint32_t *ids = NULL;
        size_t n_ids = 0, cap = 0;
        char *out = NULL;
        size_t out_len = 0, out_cap = 0, bad;
        for (size_t d = 0; d < c->n; d++) {
            size_t before = n_ids;
            bpe_encode(t, sc, c->text[d], c->len[d], s->n_special > 0, &ids, &n_ids, &cap);
            size_t from = out_len;
            CHECK(bpe_decode(t, ids + before, n_ids - before, &out, &out_len, &out_cap, &bad),
                  "%s: doc %zu: decode stopped at %zu", what, d, bad);
            CHECK(out_len - from == c->len[d] && memcmp(out + from, c->text[d], c->len[d]) == 0,
                  "%s: doc %zu does not decode back to itself", what, d);
        }
        size_t n_specials = 0;
        for (size_t i = 0; i < n_ids; i++)
            n_specials += ids[i] >= r.n;
        CHECK(n_ids - n_specials == corpus_tokens,
              "%s: encoding the corpus gives %zu tokens (and %zu specials), training made %llu", what,
              n_ids - n_specials, n_specials, (unsigned long long)corpus_tokens);
        CHECK(s->n_special == 0 || n_specials > 0, "%s: no special token in the corpus, the test needs some", what);
        free(ids);
        free(out);
        bpe_scratch_free(sc);
        bpe_free(t);
    }
    ref_free(&r);
    return n;
}

/* A random document from a small alphabet with skewed odds (many ties,
 * repeated pairs like "aaaa", multibyte letters, invalid bytes). */
static char *random_doc(uint64_t *rng, size_t *len, bool with_specials)
{
    static const char *const alphabet[] = {"a", "a", "a", "b", "b", "c", "d", " ", " ", "\xc3\xa9", "\xe4\xb8\xad",
                                           "1", "2", "!", "\xff", "\n", "aa", "ab",
                                           /* pieces of special tokens */
                                           "<|", "end", "oftext", "|>", "<|endoftext|>", "<|end"};
    size_t n_alpha = sizeof alphabet / sizeof alphabet[0] - (with_specials ? 0 : 6);
    size_t n = upc_splitmix64(rng) % 120;
    char *d = upc_malloc(n * 13 + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *a = alphabet[upc_splitmix64(rng) % n_alpha];
        size_t m = strlen(a);
        memcpy(d + k, a, m);
        k += m;
    }
    d[k] = 0;
    *len = k;
    return d;
}

static void free_corpus(corpus *c)
{
    for (size_t i = 0; i < c->n; i++)
        free((char *)c->text[i]);
    free(c->text);
    free(c->len);
}

static corpus random_corpus(uint64_t seed, size_t n_docs, bool with_specials)
{
    corpus c = {upc_malloc(n_docs * sizeof *c.text), upc_malloc(n_docs * sizeof *c.len), n_docs};
    uint64_t rng = seed;
    for (size_t i = 0; i < n_docs; i++)
        c.text[i] = random_doc(&rng, &c.len[i], with_specials);
    return c;
}

/* Documents from a text split at blank lines ("%" lines in fortune files). */
static corpus text_corpus(const char *path, size_t max_bytes)
{
    size_t len;
    char *all = upc_read_file(path, &len);
    if (len > max_bytes)
        len = max_bytes;
    corpus c = {0};
    size_t cap = 0;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        bool end = i == len || (i + 1 < len && all[i] == '\n' && (all[i + 1] == '\n' || all[i + 1] == '%'));
        if (!end)
            continue;
        size_t stop = i < len ? i + 1 : len;
        upc_grow((void **)&c.text, &cap, c.n + 1, sizeof *c.text);
        c.len = upc_realloc(c.len, cap * sizeof *c.len);
        char *d = upc_malloc(stop - start + 1);
        memcpy(d, all + start, stop - start);
        d[stop - start] = 0;
        c.text[c.n] = d;
        c.len[c.n++] = stop - start;
        start = stop;
    }
    free(all);
    return c;
}

static corpus one_doc_corpus(const char *const *docs, size_t n)
{
    corpus c = {upc_malloc(n * sizeof *c.text), upc_malloc(n * sizeof *c.len), n};
    for (size_t i = 0; i < n; i++) {
        c.text[i] = upc_strdup(docs[i]);
        c.len[i] = strlen(docs[i]);
    }
    return c;
}

static const char *fortune_path(void)
{
    static char p[4096];
    snprintf(p, sizeof p, "%s/fortune.txt", fixtures);
    return p;
}

/* ---- groups ------------------------------------------------------------------ */

static void group_reference(void)
{
    const char *patterns[] = {bpe_pattern_named("gpt2"), GAPPY, bpe_pattern_named("cl100k")};
    for (uint64_t seed = 1; seed <= 12; seed++) {
        corpus c = random_corpus(seed, 20 + seed * 3, false);
        setup s = {.pattern = patterns[seed % 3], .vocab_size = 256 + 10 + seed * 12,
                   .min_frequency = seed % 4 == 0 ? 1 : 0};
        char what[64];
        snprintf(what, sizeof what, "random corpus seed %llu", (unsigned long long)seed);
        size_t n = compare_with_reference(what, &c, &s);
        CHECK(n > 5, "%s: only %zu merges, the test needs more", what, n);
        free_corpus(&c);
    }
    corpus f = text_corpus(fortune_path(), 1 << 20);
    CHECK(f.n > 5, "fortune fixture: only %zu documents", f.n);
    setup s = {.pattern = bpe_pattern_named("gpt2"), .vocab_size = 256 + 300};
    size_t n = compare_with_reference("fortune gpt2", &f, &s);
    CHECK(n > 100, "fortune gpt2: only %zu merges", n);
    s.pattern = bpe_pattern_named("o200k");
    s.min_frequency = 1;
    compare_with_reference("fortune o200k min_frequency 1", &f, &s);
    free_corpus(&f);
}

static void digest_of(const corpus *c, const setup *s, bool reverse, char out[32], size_t *n_merges)
{
    bpe_trainer *tr = trainer_on(c, s, reverse);
    bpe_trainer_merges(tr, n_merges);
    char err[256] = "";
    bpe_tokenizer *t = bpe_trainer_finish(tr, err, sizeof err);
    if (!t) {
        fprintf(stderr, "FAIL: bpe_trainer_finish: %s\n", err);
        exit(1);
    }
    bpe_digest(t, out);
    bpe_free(t);
}

static void group_determinism(void)
{
    corpus f = text_corpus(fortune_path(), 1 << 20);
    setup s = {.pattern = bpe_pattern_named("cl100k"), .vocab_size = 256 + 400, .min_frequency = 1};
    char d1[32], d2[32], d3[32];
    size_t n1, n2, n3;
    digest_of(&f, &s, false, d1, &n1);
    digest_of(&f, &s, false, d2, &n2);
    digest_of(&f, &s, true, d3, &n3);
    CHECK(n1 > 100, "only %zu merges", n1);
    CHECK(strcmp(d1, d2) == 0, "two runs differ: %s vs %s", d1, d2);
    CHECK(strcmp(d1, d3) == 0, "feeding the documents in reverse order changed the result: %s vs %s", d1, d3);
    /* And a different corpus gives a different tokenizer (the digest sees it). */
    f.len[0] = 0;
    char d4[32];
    size_t n4;
    digest_of(&f, &s, false, d4, &n4);
    CHECK(strcmp(d1, d4) != 0, "dropping a document changed nothing: %s", d1);
    free_corpus(&f);
}

/* Expect merges (as token byte strings "left|right") in this order. */
static void expect_merges(const char *what, const char *const *docs, size_t n_docs, setup s, const char *const *want,
                          size_t n_want)
{
    corpus c = one_doc_corpus(docs, n_docs);
    bpe_trainer *tr = trainer_on(&c, &s, false);
    size_t n;
    const uint32_t *m = bpe_trainer_merges(tr, &n);
    CHECK(n == n_want, "%s: %zu merges, expected %zu", what, n, n_want);
    for (size_t i = 0; i < n && i < n_want; i++) {
        uint32_t la, lb;
        const unsigned char *a = bpe_trainer_token(tr, m[2 * i], &la);
        const unsigned char *b = bpe_trainer_token(tr, m[2 * i + 1], &lb);
        char got[600];
        snprintf(got, sizeof got, "%s|%s", show(a, la), show(b, lb));
        CHECK(strcmp(got, want[i]) == 0, "%s: merge %zu is %s, expected %s", what, i, got, want[i]);
    }
    bpe_trainer_free(tr);
    free_corpus(&c);
}

static void group_ties(void)
{
    setup s = {.pattern = "\\S+", .vocab_size = 256 + 10};
    /* Equal counts: the smaller left token's bytes first, whatever the
     * feeding order. */
    expect_merges("left bytes", (const char *const[]){"cd cd cd", "ab ab ab"}, 2, s,
                  (const char *const[]){"a|b", "c|d"}, 2);
    expect_merges("left bytes, other order", (const char *const[]){"ab ab ab", "cd cd cd"}, 2, s,
                  (const char *const[]){"a|b", "c|d"}, 2);
    /* Same left token: the smaller right token's bytes first. */
    expect_merges("right bytes", (const char *const[]){"ac ac ab ab"}, 1, s, (const char *const[]){"a|b", "a|c"},
                  2);
    /* Bytes, not ids: "ba" (id 256) sorts before "c" (id 99). */
    expect_merges("bytes not ids", (const char *const[]){"ba ba ba bax bax cy cy"}, 1, s,
                  (const char *const[]){"b|a", "ba|x", "c|y"}, 3);
    /* A prefix sorts before its extensions: "b" before "ba". */
    expect_merges("prefix first", (const char *const[]){"ba ba ba bax bax by by"}, 1, s,
                  (const char *const[]){"b|a", "b|y", "ba|x"}, 3);
    /* Higher count beats the order. */
    expect_merges("count first", (const char *const[]){"ab zz zz"}, 1, s, (const char *const[]){"z|z"}, 1);
    /* Overlapping pairs count at each position: "aaa" holds (a,a) twice,
     * tying with (b,c) seen twice (counted once, (b,c) would win alone). */
    expect_merges("overlaps counted", (const char *const[]){"aaa bc bc"}, 1, s,
                  (const char *const[]){"a|a", "b|c"}, 2);
}

static void group_min_frequency(void)
{
    const char *const docs[] = {"ab ab ab cd"};
    setup s = {.pattern = "\\S+", .vocab_size = 256 + 50};
    /* Default 2: (a,b) seen 3 times merges, (c,d) seen once does not. */
    expect_merges("default", docs, 1, s, (const char *const[]){"a|b"}, 1);
    s.min_frequency = 1;
    expect_merges("min_frequency 1", docs, 1, s, (const char *const[]){"a|b", "c|d"}, 2);
    s.min_frequency = 3;
    expect_merges("min_frequency 3", docs, 1, s, (const char *const[]){"a|b"}, 1);
    s.min_frequency = 4;
    expect_merges("min_frequency 4", docs, 1, s, NULL, 0);
    /* The vocabulary came out smaller: the tokenizer has what was learned
     * (a warning on stderr says so; the bats test checks it). */
    corpus c = one_doc_corpus(docs, 1);
    s.min_frequency = 0;
    bpe_trainer *tr = trainer_on(&c, &s, false);
    char err[256] = "";
    bpe_tokenizer *t = bpe_trainer_finish(tr, err, sizeof err);
    CHECK(t && bpe_vocab_size(t) == 257, "vocabulary %zu, expected 257", t ? bpe_vocab_size(t) : 0);
    bpe_free(t);
    /* Exactly full: stops at vocab_size even with pairs left. */
    s.vocab_size = 257;
    s.min_frequency = 1;
    expect_merges("vocab_size reached", docs, 1, s, (const char *const[]){"a|b"}, 1);
    free_corpus(&c);
}

static void group_special(void)
{
    const char *const special[] = {"<|endoftext|>", "<|pad|>", "<|end"};
    corpus f = text_corpus(fortune_path(), 1 << 20);
    setup s = {.pattern = bpe_pattern_named("gpt2"), .vocab_size = 256 + 200 + 3, .n_special = 3,
               .special = special};
    bpe_trainer *tr = trainer_on(&f, &s, false);
    char err[256] = "";
    bpe_tokenizer *t = bpe_trainer_finish(tr, err, sizeof err);
    CHECK(t, "finish: %s", err);
    if (t) {
        CHECK(bpe_vocab_size(t) == s.vocab_size, "vocabulary %zu, expected %zu", bpe_vocab_size(t), s.vocab_size);
        for (size_t i = 0; i < 3; i++)
            CHECK(bpe_special_id(t, special[i]) == (int64_t)(s.vocab_size - 3 + i), "%s has id %lld, expected %zu",
                  special[i], (long long)bpe_special_id(t, special[i]), s.vocab_size - 3 + i);
        CHECK(bpe_eos_id(t) == (int64_t)(s.vocab_size - 3), "eos id %lld", (long long)bpe_eos_id(t));
        bpe_free(t);
    }
    free_corpus(&f);

    /* Special strings in the text are not training data: only the text
     * around them is counted ("<|endoftext|>" would merge otherwise). */
    const char *const docs[] = {"<|endoftext|><|endoftext|>xy<|endoftext|>xy<|end|>"};
    setup s2 = {.pattern = bpe_pattern_named("gpt2"), .vocab_size = 256 + 50 + 1, .n_special = 1,
                .special = special};
    expect_merges("specials cut out", docs, 1, s2, (const char *const[]){"x|y"}, 1);
    /* Random text full of specials and pieces of them, against the
     * reference. */
    for (uint64_t seed = 100; seed < 106; seed++) {
        corpus c = random_corpus(seed, 30, true);
        setup sr = {.pattern = seed % 2 ? bpe_pattern_named("gpt2") : GAPPY, .vocab_size = 256 + 60 + 3,
                    .n_special = 3, .special = special, .min_frequency = 1};
        char what[64];
        snprintf(what, sizeof what, "random corpus with specials, seed %llu", (unsigned long long)seed);
        compare_with_reference(what, &c, &sr);
        free_corpus(&c);
    }
    /* Leftmost, then longest: "<|end" and "<|endoftext|>" both start at 0
     * (cutting "<|end" would leave "oftext|>" twice to merge). */
    const char *const overlapping[] = {"<|end", "<|endoftext|>"};
    setup s3 = {.pattern = bpe_pattern_named("gpt2"), .vocab_size = 256 + 50 + 2, .n_special = 2,
                .special = overlapping};
    expect_merges("longest special", (const char *const[]){"<|endoftext|>ab<|endoftext|>ab"}, 1, s3,
                  (const char *const[]){"a|b"}, 1);
}

static void group_errors(void)
{
    char err[256];
    const char *const special[] = {"<|endoftext|>", "<|pad|>"};
    bpe_train_opts o = {.vocab_size = 257, .pattern = "\\S+", .n_special = 2, .special = special};
    err[0] = 0;
    CHECK(!bpe_trainer_new(&o, err, sizeof err), "vocab_size 257 with 2 specials accepted");
    CHECK(strstr(err, "258"), "the message should say 258 are needed: %s", err);
    o.vocab_size = 255;
    o.n_special = 0;
    err[0] = 0;
    CHECK(!bpe_trainer_new(&o, err, sizeof err), "vocab_size 255 accepted");
    CHECK(strstr(err, "too small"), "message: %s", err);
    o.vocab_size = 300;
    o.pattern = "(unclosed";
    err[0] = 0;
    CHECK(!bpe_trainer_new(&o, err, sizeof err), "bad regex accepted");
    CHECK(strstr(err, "regex"), "message: %s", err);
    o.pattern = NULL;
    CHECK(!bpe_trainer_new(&o, err, sizeof err), "no pattern accepted");
    o.pattern = "\\S+";
    o.n_special = 2;
    o.special = (const char *const[]){"<s>", "<s>"};
    err[0] = 0;
    CHECK(!bpe_trainer_new(&o, err, sizeof err), "duplicate specials accepted");
    CHECK(strstr(err, "twice"), "message: %s", err);
    o.special = (const char *const[]){"<s>", ""};
    CHECK(!bpe_trainer_new(&o, err, sizeof err), "empty special accepted");

    /* Exactly 256 + specials: no merges, a valid tokenizer. */
    o.special = special;
    o.vocab_size = 258;
    bpe_trainer *tr = bpe_trainer_new(&o, err, sizeof err);
    CHECK(tr, "vocab_size 258 with 2 specials refused: %s", err);
    if (tr) {
        bpe_trainer_feed(tr, "aaaa aaaa", 9);
        bpe_tokenizer *t = bpe_trainer_finish(tr, err, sizeof err);
        CHECK(t && bpe_vocab_size(t) == 258, "258-token tokenizer: %s", t ? "wrong size" : err);
        bpe_free(t);
    }
    /* Nothing fed at all. */
    o.vocab_size = 1000;
    tr = bpe_trainer_new(&o, err, sizeof err);
    bpe_tokenizer *t = tr ? bpe_trainer_finish(tr, err, sizeof err) : NULL;
    CHECK(t && bpe_vocab_size(t) == 258, "empty corpus: %s", t ? "wrong size" : err);
    bpe_free(t);
}

/* Long pre-tokens (runs of one byte, a long gap of invalid UTF-8) against
 * the reference too. */
static void group_long(void)
{
    size_t n = 5000;
    char *a = upc_malloc(n + 1), *b = upc_malloc(n + 1);
    uint64_t rng = 7;
    for (size_t i = 0; i < n; i++) {
        a[i] = 'x';
        b[i] = (char)(0x80 + upc_splitmix64(&rng) % 4);   /* continuation bytes: never valid UTF-8 */
    }
    a[n] = b[n] = 0;
    const char *const docs[] = {a, b, "x xx xxx"};
    corpus c = one_doc_corpus(docs, 3);
    setup s = {.pattern = GAPPY, .vocab_size = 256 + 40};
    compare_with_reference("long pre-tokens", &c, &s);
    free_corpus(&c);
    free(a);
    free(b);
}

/* A larger chunk of fortune text (the first 128 KB of a file). */
static void group_fortune_file(const char *path)
{
    corpus f = text_corpus(path, 128 << 10);
    CHECK(f.n > 100, "%s: only %zu documents", path, f.n);
    setup s = {.pattern = bpe_pattern_named("gpt2"), .vocab_size = 256 + 1000};
    size_t n = compare_with_reference("fortune file gpt2", &f, &s);
    CHECK(n == 1000, "fortune file gpt2: %zu merges, expected all 1000", n);
    s.pattern = bpe_pattern_named("cl100k");
    s.min_frequency = 1;
    s.vocab_size = 256 + 400;
    compare_with_reference("fortune file cl100k", &f, &s);
    free_corpus(&f);
}

/* Training pre-tokenizes as encoding does, including where PCRE2 and
 * tiktoken disagree (U+180E is \s to PCRE2, not to tiktoken): the trained
 * segmentation of the corpus is what encoding it gives. */
static void group_consistency(void)
{
    const char *const docs[] = {"a\xe1\xa0\x8e b \xe1\xa0\x8e\xe1\xa0\x8e  x\xe1\xa0\x8e\n",
                                "x \xe1\xa0\x8e\xe1\xa0\x8e y\t\xe1\xa0\x8e z \xe1\xa0\x8e \xe1\xa0\x8e",
                                "\xe1\xa0\x8e\xe1\xa0\x8e\xe1\xa0\x8e a b \xe1\xa0\x8e\xe1\xa0\x8e\n\n"};
    corpus c = one_doc_corpus(docs, 3);
    const char *patterns[] = {"gpt2", "cl100k", "o200k"};
    for (size_t k = 0; k < 3; k++) {
        setup s = {.pattern = bpe_pattern_named(patterns[k]), .vocab_size = 256 + 100, .min_frequency = 1};
        bpe_trainer *tr = trainer_on(&c, &s, false);
        uint64_t want = bpe_trainer_corpus_tokens(tr);
        char err[256] = "";
        bpe_tokenizer *t = bpe_trainer_finish(tr, err, sizeof err);
        CHECK(t, "%s: %s", patterns[k], err);
        if (!t)
            continue;
        bpe_scratch *sc = bpe_scratch_new(t);
        uint32_t *ids = NULL;
        size_t n = 0, cap = 0;
        for (size_t d = 0; d < c.n; d++)
            bpe_encode(t, sc, c.text[d], c.len[d], false, &ids, &n, &cap);
        CHECK(n == want, "%s: encoding gives %zu tokens, training made %llu", patterns[k], n,
              (unsigned long long)want);
        free(ids);
        bpe_scratch_free(sc);
        bpe_free(t);
    }
    free_corpus(&c);
}

int main(int argc, char **argv)
{
    upc_init("test_bpe_train");
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: test_bpe_train GROUP FIXTURES_DIR [TEXT_FILE]\n");
        return 2;
    }
    fixtures = argv[2];
    const char *g = argv[1];
    if (strcmp(g, "reference") == 0)
        group_reference();
    else if (strcmp(g, "determinism") == 0)
        group_determinism();
    else if (strcmp(g, "ties") == 0)
        group_ties();
    else if (strcmp(g, "min-frequency") == 0)
        group_min_frequency();
    else if (strcmp(g, "special") == 0)
        group_special();
    else if (strcmp(g, "errors") == 0)
        group_errors();
    else if (strcmp(g, "long") == 0)
        group_long();
    else if (strcmp(g, "consistency") == 0)
        group_consistency();
    else if (strcmp(g, "fortune-file") == 0 && argc == 4)
        group_fortune_file(argv[3]);
    else {
        fprintf(stderr, "test_bpe_train: unknown group %s\n", g);
        return 2;
    }
    if (failures) {
        fprintf(stderr, "test_bpe_train %s: %d check%s failed\n", g, failures, failures == 1 ? "" : "s");
        return 1;
    }
    printf("test_bpe_train %s: ok\n", g);
    return 0;
}
