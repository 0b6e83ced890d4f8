/* bpe_train.c: byte-level BPE training, the way HF tokenizers' BpeTrainer
 * does it. Feeding pre-tokenizes each document (PCRE2, the same pieces
 * bpe_encode makes) and counts unique pre-tokens ("words"). Finishing turns
 * each word into a symbol sequence, counts every adjacent pair weighted by
 * the word's count, and merges the best pair until the vocabulary is full:
 * a max-heap of pairs with lazy invalidation picks it, and a pair -> words
 * index sends each merge only to the words that contain the pair, which are
 * updated in place with local count changes. The corpus is never rescanned.
 *
 * Order of pairs: higher count first; equal counts by the left token's
 * bytes, then the right token's (bytewise, a prefix before its extensions).
 * Token bytes are unique (a merge that makes existing bytes reuses that id,
 * as HF does), so this is a total order and the result never depends on
 * hashes or feeding order. */
#include "bpe_train.h"
#include "bpe_internal.h"
#include "pretok.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define NONE UINT32_MAX
/* Ids must stay below bpe.c's "no id" marker. */
#define MAX_VOCAB ((size_t)1 << 31)

typedef struct {
    size_t off;         /* feeding: bytes in word_bytes; merging: symbols in syms */
    uint32_t len;       /* bytes, then symbols (shrinks as merges apply) */
    uint32_t hash;      /* low half of the bytes' hash, for table growth */
    uint64_t count;     /* occurrences in the corpus */
} word;

typedef struct {
    uint32_t left, right;
    int64_t count;      /* weighted occurrences now */
    int64_t before;     /* count when this merge step first touched it */
    uint32_t stamp;     /* merge step that last touched it */
    bool merged;
    uint32_t *words;    /* words that contain (or once contained) the pair */
    uint32_t n_words, cap_words;
} pair_rec;

typedef struct {
    uint64_t count;
    uint32_t pair;
} heap_entry;

struct bpe_trainer {
    /* options */
    char *pattern;
    size_t vocab_size, n_special;
    char **special;
    size_t *special_len;
    size_t *special_next;       /* feeding: next occurrence of each */
    uint64_t min_frequency;
    bool verbose;

    /* pre-tokenization */
    pretok_pattern pre;
    pretok_matcher m;

    /* unique words: bytes -> count */
    unsigned char *word_bytes;
    size_t n_word_bytes, cap_word_bytes;
    word *words;
    size_t n_words, cap_words;
    uint32_t *word_tab;         /* open addressing, NONE = empty */
    size_t word_mask;
    uint64_t bytes_fed, docs_fed, pieces_fed;

    /* merging */
    bool trained;
    uint32_t *syms;
    unsigned char *tok_bytes;   /* every token's bytes, back to back */
    size_t n_tok_bytes, cap_tok_bytes;
    size_t *tok_off;
    uint32_t *tok_len;
    size_t n_tokens, cap_tokens;
    uint32_t *tok_tab;          /* bytes -> id, NONE = empty */
    size_t tok_mask;

    pair_rec *pairs;
    size_t n_pairs, cap_pairs;
    uint32_t *pair_tab;         /* (left, right) -> pair index, NONE = empty */
    size_t pair_mask;

    heap_entry *heap;
    size_t n_heap, cap_heap;

    uint32_t (*merges)[2];      /* {left, right} in merge order */
    size_t n_merges, cap_merges;
    uint64_t single_tokens;     /* occurrences of one-byte words */
    uint32_t *touched;
    size_t n_touched, cap_touched;
    uint32_t step;
};

static void trainer_free(bpe_trainer *tr)
{
    if (!tr)
        return;
    free(tr->pattern);
    for (size_t i = 0; i < tr->n_special; i++)
        free(tr->special[i]);
    free(tr->special);
    free(tr->special_len);
    free(tr->special_next);
    if (tr->m.p)
        pretok_matcher_free(&tr->m);
    pretok_free(&tr->pre);
    free(tr->word_bytes);
    free(tr->words);
    free(tr->word_tab);
    free(tr->syms);
    free(tr->tok_bytes);
    free(tr->tok_off);
    free(tr->tok_len);
    free(tr->tok_tab);
    for (size_t i = 0; i < tr->n_pairs; i++)
        free(tr->pairs[i].words);
    free(tr->pairs);
    free(tr->pair_tab);
    free(tr->heap);
    free(tr->merges);
    free(tr->touched);
    free(tr);
}

void bpe_trainer_free(bpe_trainer *tr)
{
    trainer_free(tr);
}

/* ---- pre-tokenization ---------------------------------------------------- */

bpe_trainer *bpe_trainer_new(const bpe_train_opts *o, char *err, size_t errlen)
{
    if (!o->pattern) {
        bpe_set_err(err, errlen, "no pre-tokenization pattern");
        return NULL;
    }
    if (o->vocab_size < 256 + o->n_special) {
        bpe_set_err(err, errlen, "vocabulary size %zu is too small: the 256 byte tokens and %zu special token%s need %zu",
                o->vocab_size, o->n_special, o->n_special == 1 ? "" : "s", 256 + o->n_special);
        return NULL;
    }
    if (o->vocab_size > MAX_VOCAB) {
        bpe_set_err(err, errlen, "vocabulary size %zu is too large (at most %zu)", o->vocab_size, MAX_VOCAB);
        return NULL;
    }
    for (size_t i = 0; i < o->n_special; i++) {
        if (!o->special[i] || !o->special[i][0]) {
            bpe_set_err(err, errlen, "special token %zu is empty", i);
            return NULL;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(o->special[i], o->special[j]) == 0) {
                bpe_set_err(err, errlen, "special token \"%s\" given twice", o->special[i]);
                return NULL;
            }
    }

    bpe_trainer *tr = upc_calloc(1, sizeof *tr);
    tr->pattern = upc_strdup(o->pattern);
    tr->vocab_size = o->vocab_size;
    tr->min_frequency = o->min_frequency ? o->min_frequency : 2;
    tr->verbose = o->verbose;
    tr->special = upc_calloc(o->n_special ? o->n_special : 1, sizeof *tr->special);
    tr->special_len = upc_calloc(o->n_special ? o->n_special : 1, sizeof *tr->special_len);
    tr->special_next = upc_calloc(o->n_special ? o->n_special : 1, sizeof *tr->special_next);
    for (size_t i = 0; i < o->n_special; i++) {
        tr->special[i] = upc_strdup(o->special[i]);
        tr->special_len[i] = strlen(o->special[i]);
    }
    tr->n_special = o->n_special;

    if (!pretok_compile(&tr->pre, o->pattern, err, errlen)) {
        trainer_free(tr);
        return NULL;
    }
    pretok_matcher_init(&tr->m, &tr->pre);

    tr->word_mask = 1024 - 1;
    tr->word_tab = upc_malloc((tr->word_mask + 1) * sizeof *tr->word_tab);
    memset(tr->word_tab, 0xff, (tr->word_mask + 1) * sizeof *tr->word_tab);
    return tr;
}

static void word_tab_grow(bpe_trainer *tr)
{
    size_t mask = (tr->word_mask + 1) * 2 - 1;
    uint32_t *tab = upc_malloc((mask + 1) * sizeof *tab);
    memset(tab, 0xff, (mask + 1) * sizeof *tab);
    for (size_t w = 0; w < tr->n_words; w++) {
        size_t i = tr->words[w].hash & mask;
        while (tab[i] != NONE)
            i = (i + 1) & mask;
        tab[i] = (uint32_t)w;
    }
    free(tr->word_tab);
    tr->word_tab = tab;
    tr->word_mask = mask;
}

static void count_word(bpe_trainer *tr, const unsigned char *p, size_t n)
{
    if (n >= UINT32_MAX)
        upc_fail(EX_DATAERR, "a pre-token of %zu bytes is too long to train on", n);
    tr->pieces_fed++;
    uint64_t h = XXH3_64bits(p, n);
    size_t i = h & tr->word_mask;
    for (;; i = (i + 1) & tr->word_mask) {
        uint32_t w = tr->word_tab[i];
        if (w == NONE)
            break;
        word *x = &tr->words[w];
        if (x->hash == (uint32_t)h && x->len == n && memcmp(tr->word_bytes + x->off, p, n) == 0) {
            x->count++;
            return;
        }
    }
    if (tr->n_words >= UINT32_MAX - 1)
        upc_fail(EX_SOFTWARE, "too many distinct pre-tokens to train on");
    upc_grow((void **)&tr->words, &tr->cap_words, tr->n_words + 1, sizeof *tr->words);
    upc_grow((void **)&tr->word_bytes, &tr->cap_word_bytes, tr->n_word_bytes + n, 1);
    memcpy(tr->word_bytes + tr->n_word_bytes, p, n);
    tr->words[tr->n_words] = (word){tr->n_word_bytes, (uint32_t)n, (uint32_t)h, 1};
    tr->n_word_bytes += n;
    tr->word_tab[i] = (uint32_t)tr->n_words++;
    if (tr->n_words * 2 > tr->word_mask)
        word_tab_grow(tr);
}

static void count_word_cb(void *tr, const unsigned char *p, size_t n)
{
    count_word(tr, p, n);
}

/* The same pieces encoding makes (pretok.h). */
static void feed_ordinary(bpe_trainer *tr, const unsigned char *text, size_t len)
{
    pretok_split(&tr->m, text, len, count_word_cb, tr);
}

/* Where special k next occurs in text at or after from (len: nowhere). */
static size_t special_from(const bpe_trainer *tr, size_t k, const unsigned char *text, size_t len, size_t from)
{
    const unsigned char *q = memmem(text + from, len - from, tr->special[k], tr->special_len[k]);
    return q ? (size_t)(q - text) : len;
}

void bpe_trainer_feed(bpe_trainer *tr, const char *text, size_t len)
{
    if (tr->trained)
        upc_fail(EX_SOFTWARE, "bpe_trainer_feed after the merges ran");
    const unsigned char *p = (const unsigned char *)text;
    tr->bytes_fed += len;
    tr->docs_fed++;
    /* Special token strings in the text are not training data: they split
     * it the way bpe_encode splits it when specials are allowed (leftmost,
     * longest where several start there). Each special's next occurrence is
     * kept, so the text is searched once per special. */
    size_t pos = 0;
    for (size_t k = 0; k < tr->n_special; k++)
        tr->special_next[k] = special_from(tr, k, p, len, 0);
    for (;;) {
        size_t best = tr->n_special;
        for (size_t k = 0; k < tr->n_special; k++)
            if (tr->special_next[k] < len &&
                (best == tr->n_special || tr->special_next[k] < tr->special_next[best] ||
                 (tr->special_next[k] == tr->special_next[best] && tr->special_len[k] > tr->special_len[best])))
                best = k;
        if (best == tr->n_special)
            break;
        size_t at = tr->special_next[best];
        feed_ordinary(tr, p + pos, at - pos);
        pos = at + tr->special_len[best];
        for (size_t k = 0; k < tr->n_special; k++)
            if (tr->special_next[k] < pos)
                tr->special_next[k] = special_from(tr, k, p, len, pos);
    }
    feed_ordinary(tr, p + pos, len - pos);
}

/* ---- tokens ----------------------------------------------------------------- */

static int64_t token_find(const bpe_trainer *tr, const unsigned char *p, size_t n, uint64_t h)
{
    for (size_t i = h & tr->tok_mask;; i = (i + 1) & tr->tok_mask) {
        uint32_t id = tr->tok_tab[i];
        if (id == NONE)
            return -1;
        if (tr->tok_len[id] == n && memcmp(tr->tok_bytes + tr->tok_off[id], p, n) == 0)
            return id;
    }
}

static void token_tab_insert(bpe_trainer *tr, uint32_t id)
{
    const unsigned char *p = tr->tok_bytes + tr->tok_off[id];
    size_t i = XXH3_64bits(p, tr->tok_len[id]) & tr->tok_mask;
    while (tr->tok_tab[i] != NONE)
        i = (i + 1) & tr->tok_mask;
    tr->tok_tab[i] = id;
}

/* The id of left's bytes followed by right's: an existing token with those
 * bytes, or a new one. */
static uint32_t token_join(bpe_trainer *tr, uint32_t left, uint32_t right)
{
    size_t la = tr->tok_len[left], lb = tr->tok_len[right];
    upc_grow((void **)&tr->tok_bytes, &tr->cap_tok_bytes, tr->n_tok_bytes + la + lb, 1);
    unsigned char *p = tr->tok_bytes + tr->n_tok_bytes;
    memmove(p, tr->tok_bytes + tr->tok_off[left], la);
    memmove(p + la, tr->tok_bytes + tr->tok_off[right], lb);
    int64_t old = token_find(tr, p, la + lb, XXH3_64bits(p, la + lb));
    if (old >= 0)
        return (uint32_t)old;
    upc_grow((void **)&tr->tok_off, &tr->cap_tokens, tr->n_tokens + 1, sizeof *tr->tok_off);
    tr->tok_len = upc_realloc(tr->tok_len, tr->cap_tokens * sizeof *tr->tok_len);
    uint32_t id = (uint32_t)tr->n_tokens++;
    tr->tok_off[id] = tr->n_tok_bytes;
    tr->tok_len[id] = (uint32_t)(la + lb);
    tr->n_tok_bytes += la + lb;
    if (tr->n_tokens * 2 > tr->tok_mask) {
        tr->tok_mask = tr->tok_mask * 2 + 1;
        tr->tok_tab = upc_realloc(tr->tok_tab, (tr->tok_mask + 1) * sizeof *tr->tok_tab);
        memset(tr->tok_tab, 0xff, (tr->tok_mask + 1) * sizeof *tr->tok_tab);
        for (uint32_t t = 0; t < tr->n_tokens; t++)
            token_tab_insert(tr, t);
    } else {
        token_tab_insert(tr, id);
    }
    return id;
}

static int cmp_tokens(const bpe_trainer *tr, uint32_t a, uint32_t b)
{
    if (a == b)
        return 0;
    size_t la = tr->tok_len[a], lb = tr->tok_len[b];
    int c = memcmp(tr->tok_bytes + tr->tok_off[a], tr->tok_bytes + tr->tok_off[b], la < lb ? la : lb);
    if (c)
        return c;
    return la < lb ? -1 : la > lb ? 1 : 0;
}

/* ---- pairs ------------------------------------------------------------------ */

static inline size_t pair_slot(uint64_t key, size_t mask)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 32) & mask;
}

static void pair_tab_grow(bpe_trainer *tr)
{
    size_t mask = tr->pair_mask ? tr->pair_mask * 2 + 1 : 4095;
    uint32_t *tab = upc_malloc((mask + 1) * sizeof *tab);
    memset(tab, 0xff, (mask + 1) * sizeof *tab);
    for (size_t k = 0; k < tr->n_pairs; k++) {
        uint64_t key = (uint64_t)tr->pairs[k].left << 32 | tr->pairs[k].right;
        size_t i = pair_slot(key, mask);
        while (tab[i] != NONE)
            i = (i + 1) & mask;
        tab[i] = (uint32_t)k;
    }
    free(tr->pair_tab);
    tr->pair_tab = tab;
    tr->pair_mask = mask;
}

static uint32_t pair_get(bpe_trainer *tr, uint32_t left, uint32_t right)
{
    uint64_t key = (uint64_t)left << 32 | right;
    size_t i = pair_slot(key, tr->pair_mask);
    for (;; i = (i + 1) & tr->pair_mask) {
        uint32_t k = tr->pair_tab[i];
        if (k == NONE)
            break;
        if (tr->pairs[k].left == left && tr->pairs[k].right == right)
            return k;
    }
    if (tr->n_pairs >= UINT32_MAX - 1)
        upc_fail(EX_SOFTWARE, "too many distinct token pairs to train on");
    upc_grow((void **)&tr->pairs, &tr->cap_pairs, tr->n_pairs + 1, sizeof *tr->pairs);
    uint32_t k = (uint32_t)tr->n_pairs++;
    tr->pairs[k] = (pair_rec){.left = left, .right = right, .stamp = UINT32_MAX};
    tr->pair_tab[i] = k;
    if (tr->n_pairs * 2 > tr->pair_mask)
        pair_tab_grow(tr);
    return k;
}

static void pair_add_word(pair_rec *p, uint32_t w)
{
    if (p->n_words && p->words[p->n_words - 1] == w)
        return;
    if (p->n_words == p->cap_words) {
        p->cap_words = p->cap_words ? p->cap_words * 2 : 2;
        p->words = upc_realloc(p->words, p->cap_words * sizeof *p->words);
    }
    p->words[p->n_words++] = w;
}

/* ---- heap: best pair on top --------------------------------------------- */

/* Is entry x better than y: higher count, then the smaller pair. */
static bool heap_better(const bpe_trainer *tr, const heap_entry *x, const heap_entry *y)
{
    if (x->count != y->count)
        return x->count > y->count;
    const pair_rec *a = &tr->pairs[x->pair], *b = &tr->pairs[y->pair];
    int c = cmp_tokens(tr, a->left, b->left);
    if (!c)
        c = cmp_tokens(tr, a->right, b->right);
    return c < 0;
}

static void heap_sift_down(bpe_trainer *tr, size_t i)
{
    heap_entry *h = tr->heap;
    size_t n = tr->n_heap;
    heap_entry x = h[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && heap_better(tr, &h[c + 1], &h[c]))
            c++;
        if (!heap_better(tr, &h[c], &x))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

static void heap_push(bpe_trainer *tr, uint64_t count, uint32_t pair)
{
    upc_grow((void **)&tr->heap, &tr->cap_heap, tr->n_heap + 1, sizeof *tr->heap);
    heap_entry x = {count, pair};
    size_t i = tr->n_heap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_better(tr, &x, &tr->heap[parent]))
            break;
        tr->heap[i] = tr->heap[parent];
        i = parent;
    }
    tr->heap[i] = x;
}

static heap_entry heap_pop(bpe_trainer *tr)
{
    heap_entry top = tr->heap[0];
    tr->heap[0] = tr->heap[--tr->n_heap];
    if (tr->n_heap)
        heap_sift_down(tr, 0);
    return top;
}

/* The best live pair, or NONE. A stale entry (the pair's count changed
 * since it was pushed) is dropped; when the count fell, the pair goes back
 * in with its current count. A pair whose count rose was pushed again then. */
static uint32_t best_pair(bpe_trainer *tr)
{
    while (tr->n_heap) {
        heap_entry top = heap_pop(tr);
        pair_rec *p = &tr->pairs[top.pair];
        if (p->merged || p->count <= 0)
            continue;
        if ((uint64_t)p->count == top.count)
            return top.pair;
        if ((uint64_t)p->count < top.count)
            heap_push(tr, (uint64_t)p->count, top.pair);
    }
    return NONE;
}

/* ---- merging ---------------------------------------------------------------- */

static void change(bpe_trainer *tr, uint32_t left, uint32_t right, int64_t delta, uint32_t w)
{
    uint32_t k = pair_get(tr, left, right);
    pair_rec *p = &tr->pairs[k];
    if (p->stamp != tr->step) {
        p->stamp = tr->step;
        p->before = p->count;
        upc_grow((void **)&tr->touched, &tr->cap_touched, tr->n_touched + 1, sizeof *tr->touched);
        tr->touched[tr->n_touched++] = k;
    }
    p->count += delta;
    if (delta > 0)
        pair_add_word(p, w);
}

/* Replace each (a, b) in word w by c, left to right, and apply the pair
 * count changes around each replacement. */
static void merge_word(bpe_trainer *tr, uint32_t w, uint32_t a, uint32_t b, uint32_t c)
{
    word *x = &tr->words[w];
    uint32_t *s = tr->syms + x->off;
    size_t n = x->len, i = 0, j = 0;
    int64_t wc = (int64_t)x->count;
    while (i < n) {
        if (i + 1 < n && s[i] == a && s[i + 1] == b) {
            /* Around each replacement (prev, a) and (b, next) go, (prev, c)
             * and (c, next) come; prev is already a c when the previous
             * pair was replaced. Changes to (a, b) itself (when a == b) are
             * skipped: that pair is gone. */
            if (j > 0) {
                uint32_t prev = s[j - 1];
                if (!(prev == a && a == b))
                    change(tr, prev, a, -wc, w);
                change(tr, prev, c, wc, w);
            }
            if (i + 2 < n) {
                uint32_t next = s[i + 2];
                if (!(next == b && a == b))
                    change(tr, b, next, -wc, w);
                change(tr, c, next, wc, w);
            }
            s[j++] = c;
            i += 2;
        } else {
            s[j++] = s[i++];
        }
    }
    x->len = (uint32_t)j;
}

/* Words become symbol sequences (byte ids), every adjacent pair is counted,
 * and the pair index and heap are built. */
static void start_merging(bpe_trainer *tr)
{
    size_t n_syms = 0, kept = 0;
    for (size_t w = 0; w < tr->n_words; w++)
        if (tr->words[w].len >= 2)
            n_syms += tr->words[w].len;
    tr->syms = upc_malloc((n_syms ? n_syms : 1) * sizeof *tr->syms);
    size_t at = 0;
    uint64_t single = 0;
    for (size_t w = 0; w < tr->n_words; w++) {
        word x = tr->words[w];
        if (x.len < 2) {
            single += x.count;
            continue;
        }
        const unsigned char *p = tr->word_bytes + x.off;
        for (uint32_t i = 0; i < x.len; i++)
            tr->syms[at + i] = p[i];
        tr->words[kept++] = (word){at, x.len, 0, x.count};
        at += x.len;
    }
    tr->n_words = kept;
    free(tr->word_bytes);
    tr->word_bytes = NULL;
    free(tr->word_tab);
    tr->word_tab = NULL;
    /* One-byte words have no pairs; they count only as tokens. */
    tr->single_tokens = single;

    tr->cap_tokens = 1024;
    tr->tok_off = upc_malloc(tr->cap_tokens * sizeof *tr->tok_off);
    tr->tok_len = upc_malloc(tr->cap_tokens * sizeof *tr->tok_len);
    tr->cap_tok_bytes = 4096;
    tr->tok_bytes = upc_malloc(tr->cap_tok_bytes);
    tr->tok_mask = 1023;
    tr->tok_tab = upc_malloc((tr->tok_mask + 1) * sizeof *tr->tok_tab);
    memset(tr->tok_tab, 0xff, (tr->tok_mask + 1) * sizeof *tr->tok_tab);
    for (uint32_t b = 0; b < 256; b++) {
        tr->tok_bytes[b] = (unsigned char)b;
        tr->tok_off[b] = b;
        tr->tok_len[b] = 1;
        token_tab_insert(tr, b);
    }
    tr->n_tokens = 256;
    tr->n_tok_bytes = 256;

    pair_tab_grow(tr);
    for (size_t w = 0; w < tr->n_words; w++) {
        const word *x = &tr->words[w];
        const uint32_t *s = tr->syms + x->off;
        for (uint32_t i = 0; i + 1 < x->len; i++) {
            uint32_t k = pair_get(tr, s[i], s[i + 1]);
            tr->pairs[k].count += (int64_t)x->count;
            pair_add_word(&tr->pairs[k], (uint32_t)w);
        }
    }
    tr->cap_heap = tr->n_pairs + 16;
    tr->heap = upc_malloc(tr->cap_heap * sizeof *tr->heap);
    for (size_t k = 0; k < tr->n_pairs; k++)
        tr->heap[tr->n_heap++] = (heap_entry){(uint64_t)tr->pairs[k].count, (uint32_t)k};
    for (size_t i = tr->n_heap / 2; i-- > 0;)
        heap_sift_down(tr, i);
}

static void train(bpe_trainer *tr)
{
    if (tr->trained)
        return;
    tr->trained = true;
    if (tr->verbose)
        upc_warn("BPE training: %llu bytes in %llu documents, %llu pre-tokens, %zu distinct",
                 (unsigned long long)tr->bytes_fed, (unsigned long long)tr->docs_fed,
                 (unsigned long long)tr->pieces_fed, tr->n_words);
    start_merging(tr);
    size_t target = tr->vocab_size - tr->n_special;
    uint64_t last_count = 0;
    bool too_rare = false;
    while (tr->n_tokens < target) {
        uint32_t k = best_pair(tr);
        if (k == NONE)
            break;
        pair_rec *p = &tr->pairs[k];
        if ((uint64_t)p->count < tr->min_frequency) {
            too_rare = true;
            break;
        }
        uint32_t a = p->left, b = p->right;
        uint32_t c = token_join(tr, a, b);
        upc_grow((void **)&tr->merges, &tr->cap_merges, tr->n_merges + 1, sizeof *tr->merges);
        tr->merges[tr->n_merges][0] = a;
        tr->merges[tr->n_merges][1] = b;
        tr->n_merges++;
        last_count = (uint64_t)p->count;

        p->merged = true;
        p->count = 0;
        uint32_t *list = p->words, n_list = p->n_words;
        p->words = NULL;
        p->n_words = p->cap_words = 0;
        tr->step++;
        tr->n_touched = 0;
        for (uint32_t i = 0; i < n_list; i++)
            merge_word(tr, list[i], a, b, c);
        free(list);
        for (size_t t = 0; t < tr->n_touched; t++) {
            pair_rec *q = &tr->pairs[tr->touched[t]];
            if (!q->merged && q->count > q->before)
                heap_push(tr, (uint64_t)q->count, tr->touched[t]);
        }
        if (tr->verbose && tr->n_merges % 1000 == 0)
            upc_warn("BPE training: %zu merges, %zu tokens, last pair seen %llu times", tr->n_merges,
                     tr->n_tokens, (unsigned long long)last_count);
    }
    if (tr->n_tokens < target && too_rare)
        upc_warn("BPE training: the vocabulary has %zu tokens, not the %zu asked for: no pair left occurs "
                 "min_frequency (%llu) times or more",
                 tr->n_tokens + tr->n_special, tr->vocab_size, (unsigned long long)tr->min_frequency);
    else if (tr->n_tokens < target)
        upc_warn("BPE training: the vocabulary has %zu tokens, not the %zu asked for: the corpus has no pairs "
                 "left to merge",
                 tr->n_tokens + tr->n_special, tr->vocab_size);
    else if (tr->verbose)
        upc_warn("BPE training: done, %zu merges, %zu tokens", tr->n_merges, tr->n_tokens + tr->n_special);
}

/* ---- results ---------------------------------------------------------------- */

const uint32_t *bpe_trainer_merges(bpe_trainer *tr, size_t *n_merges)
{
    train(tr);
    *n_merges = tr->n_merges;
    return tr->merges ? &tr->merges[0][0] : NULL;
}

size_t bpe_trainer_n_tokens(bpe_trainer *tr)
{
    train(tr);
    return tr->n_tokens;
}

const unsigned char *bpe_trainer_token(bpe_trainer *tr, uint32_t id, uint32_t *len)
{
    train(tr);
    if (id >= tr->n_tokens)
        return NULL;
    *len = tr->tok_len[id];
    return tr->tok_bytes + tr->tok_off[id];
}

uint64_t bpe_trainer_corpus_tokens(bpe_trainer *tr)
{
    train(tr);
    uint64_t total = tr->single_tokens;
    for (size_t w = 0; w < tr->n_words; w++)
        total += tr->words[w].count * tr->words[w].len;
    return total;
}

bpe_tokenizer *bpe_trainer_finish(bpe_trainer *tr, char *err, size_t errlen)
{
    train(tr);
    const unsigned char **bytes = upc_malloc(tr->n_tokens * sizeof *bytes);
    for (size_t i = 0; i < tr->n_tokens; i++)
        bytes[i] = tr->tok_bytes + tr->tok_off[i];
    uint32_t *special_ids = upc_malloc((tr->n_special ? tr->n_special : 1) * sizeof *special_ids);
    for (size_t i = 0; i < tr->n_special; i++)
        special_ids[i] = (uint32_t)(tr->n_tokens + i);
    bpe_spec spec = {
        .pattern = tr->pattern,
        .n_tokens = tr->n_tokens,
        .bytes = bytes,
        .lens = tr->tok_len,
        .n_merges = tr->n_merges,
        .merges = (const uint32_t(*)[2])tr->merges,
        .n_special = tr->n_special,
        .special = (const char *const *)tr->special,
        .special_ids = special_ids,
    };
    uint32_t no_merges[1][2];
    if (!spec.merges)
        spec.merges = (const uint32_t(*)[2])no_merges;   /* NULL would mean tiktoken ranks */
    bpe_tokenizer *t = bpe_build(&spec, err, errlen);
    free(bytes);
    free(special_ids);
    trainer_free(tr);
    return t;
}
