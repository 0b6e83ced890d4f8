/* bpe.c: byte-level BPE: build a tokenizer from a spec, encode, decode,
 * digest. Pre-tokenization is a PCRE2 (JIT) regex; each pre-token is then
 * either found whole in the vocabulary (ignore_merges) or merged pair by pair,
 * lowest rank first, leftmost on ties, the way GPT-2, tiktoken and HF
 * tokenizers do it. Lookups go through open-addressing hash tables: token
 * bytes -> id and (left id, right id) -> (rank, merged id). */
#include "bpe.h"
#include "bpe_internal.h"
#include "pretok.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define NO_ID UINT32_MAX
#define NO_RANK UINT32_MAX

enum { KIND_ABSENT = 0, KIND_ORDINARY = 1, KIND_SPECIAL = 2 };

typedef struct {
    uint32_t hash;   /* high half of the 64-bit hash, to skip most memcmp */
    uint32_t id;     /* NO_ID: empty slot */
} token_slot;

typedef struct {
    uint64_t key;    /* left << 32 | right; PAIR_EMPTY: empty slot */
    uint32_t rank;
    uint32_t merged;
} pair_slot;
#define PAIR_EMPTY UINT64_MAX

typedef struct {
    char *text;
    uint32_t len;
    uint32_t id;
} special_token;

struct bpe_tokenizer {
    char *pattern;
    pretok_pattern pre;

    size_t n_ordinary;          /* ordinary id range */
    size_t vocab_size;          /* max id + 1, specials included */
    unsigned char *blob;        /* every token's bytes, back to back */
    size_t *off;                /* per id: offset in blob */
    uint32_t *len;              /* per id: length */
    uint8_t *kind;              /* per id: KIND_* */
    uint32_t byte_id[256];

    token_slot *tok_tab;
    size_t tok_mask;
    pair_slot *pair_tab;
    unsigned pair_shift;        /* 64 - log2(table size) */

    bool rank_is_id;            /* built without merges (tiktoken) */
    size_t n_merges;
    uint32_t (*merges)[2];

    size_t n_special;
    special_token *specials;    /* in id order */
    special_token **by_length;  /* longest first, for leftmost-longest match */
    uint8_t special_first[32];  /* bitmap of first bytes */
    int special_single_first;   /* the one first byte all share, or -1 */

    bool ignore_merges;
    int64_t eos;
    char digest[32];
};

void bpe_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static inline uint64_t hash_bytes(const void *p, size_t n)
{
    return XXH3_64bits(p, n);
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

/* ---- token bytes -> id ---------------------------------------------- */

static int64_t token_find(const bpe_tokenizer *t, const void *p, size_t n, uint64_t h)
{
    uint32_t h32 = (uint32_t)(h >> 32);
    for (size_t i = h & t->tok_mask;; i = (i + 1) & t->tok_mask) {
        const token_slot *s = &t->tok_tab[i];
        if (s->id == NO_ID)
            return -1;
        if (s->hash == h32 && t->len[s->id] == n && memcmp(t->blob + t->off[s->id], p, n) == 0)
            return s->id;
    }
}

static int64_t token_lookup(const bpe_tokenizer *t, const void *p, size_t n)
{
    return token_find(t, p, n, hash_bytes(p, n));
}

/* Insert id; returns the id already holding the same bytes, or -1. */
static int64_t token_insert(bpe_tokenizer *t, uint32_t id)
{
    const unsigned char *p = t->blob + t->off[id];
    uint64_t h = hash_bytes(p, t->len[id]);
    int64_t old = token_find(t, p, t->len[id], h);
    if (old >= 0)
        return old;
    size_t i = h & t->tok_mask;
    while (t->tok_tab[i].id != NO_ID)
        i = (i + 1) & t->tok_mask;
    t->tok_tab[i].hash = (uint32_t)(h >> 32);
    t->tok_tab[i].id = id;
    return -1;
}

/* ---- (left, right) -> (rank, merged) ---------------------------------- */

static inline size_t pair_slot_of(const bpe_tokenizer *t, uint64_t key)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ULL) >> t->pair_shift);
}

static inline uint32_t pair_rank(const bpe_tokenizer *t, uint32_t a, uint32_t b, uint32_t *merged)
{
    uint64_t key = (uint64_t)a << 32 | b;
    size_t mask = ((size_t)1 << (64 - t->pair_shift)) - 1;
    for (size_t i = pair_slot_of(t, key);; i = (i + 1) & mask) {
        const pair_slot *s = &t->pair_tab[i];
        if (s->key == key) {
            *merged = s->merged;
            return s->rank;
        }
        if (s->key == PAIR_EMPTY)
            return NO_RANK;
    }
}

/* Insert unless present (the first, lowest-rank entry wins). */
static void pair_insert(bpe_tokenizer *t, uint32_t a, uint32_t b, uint32_t rank, uint32_t merged)
{
    uint64_t key = (uint64_t)a << 32 | b;
    size_t mask = ((size_t)1 << (64 - t->pair_shift)) - 1;
    size_t i = pair_slot_of(t, key);
    while (t->pair_tab[i].key != PAIR_EMPTY) {
        if (t->pair_tab[i].key == key)
            return;
        i = (i + 1) & mask;
    }
    t->pair_tab[i] = (pair_slot){key, rank, merged};
}

static void pair_table_alloc(bpe_tokenizer *t, size_t entries)
{
    size_t cap = pow2_at_least(entries * 2 + 1);
    unsigned bits = 0;
    while (((size_t)1 << bits) < cap)
        bits++;
    t->pair_shift = 64 - bits;
    t->pair_tab = upc_malloc(cap * sizeof *t->pair_tab);
    for (size_t i = 0; i < cap; i++)
        t->pair_tab[i].key = PAIR_EMPTY;
}

/* ---- build ------------------------------------------------------------ */

static int cmp_special_by_length(const void *a, const void *b)
{
    const special_token *x = *(special_token *const *)a, *y = *(special_token *const *)b;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int cmp_special_by_id(const void *a, const void *b)
{
    const special_token *x = a, *y = b;
    return x->id < y->id ? -1 : x->id > y->id;
}

static void compute_digest(bpe_tokenizer *t);

/* Byte string of bytes as "<hex>" for messages (first 16 bytes). */
static const char *show_bytes(const unsigned char *p, size_t n, char buf[64])
{
    size_t k = 0;
    for (size_t i = 0; i < n && i < 16; i++)
        k += (size_t)snprintf(buf + k, 64 - k, "%02x", p[i]);
    if (n > 16)
        snprintf(buf + k, 64 - k, "...");
    return buf;
}

bpe_tokenizer *bpe_build(const bpe_spec *s, char *err, size_t errlen)
{
    char hex[64];
    if (!s->pattern) {
        bpe_set_err(err, errlen, "no pre-tokenization pattern");
        return NULL;
    }
    if (s->n_tokens == 0 || s->n_tokens >= NO_ID) {
        bpe_set_err(err, errlen, "vocabulary size %zu out of range", s->n_tokens);
        return NULL;
    }
    bpe_tokenizer *t = upc_calloc(1, sizeof *t);
    t->pattern = upc_strdup(s->pattern);
    t->ignore_merges = s->ignore_merges;
    t->n_ordinary = s->n_tokens;
    t->vocab_size = s->n_tokens;
    if (!pretok_compile(&t->pre, t->pattern, err, errlen))
        goto fail;

    for (size_t i = 0; i < s->n_special; i++) {
        if (s->special_ids[i] >= NO_ID - 1) {
            bpe_set_err(err, errlen, "special token %zu has id %u, out of range", i, s->special_ids[i]);
            goto fail;
        }
        if ((size_t)s->special_ids[i] + 1 > t->vocab_size)
            t->vocab_size = (size_t)s->special_ids[i] + 1;
    }

    /* Token bytes: ordinary tokens, then special strings, in one blob. */
    size_t total = 0;
    for (size_t i = 0; i < s->n_tokens; i++)
        total += s->bytes[i] ? s->lens[i] : 0;
    for (size_t i = 0; i < s->n_special; i++)
        total += strlen(s->special[i]);
    t->blob = upc_malloc(total ? total : 1);
    t->off = upc_calloc(t->vocab_size, sizeof *t->off);
    t->len = upc_calloc(t->vocab_size, sizeof *t->len);
    t->kind = upc_calloc(t->vocab_size, 1);
    size_t used = 0, present = 0;
    for (size_t i = 0; i < s->n_tokens; i++) {
        if (!s->bytes[i])
            continue;
        if (s->lens[i] == 0) {
            bpe_set_err(err, errlen, "token %zu is empty", i);
            goto fail;
        }
        memcpy(t->blob + used, s->bytes[i], s->lens[i]);
        t->off[i] = used;
        t->len[i] = s->lens[i];
        t->kind[i] = KIND_ORDINARY;
        used += s->lens[i];
        present++;
    }
    /* Holes at the end are no ids at all (a file that lists a special
     * among its ordinary tokens, saved without it, stays the same). */
    while (t->n_ordinary > 0 && t->kind[t->n_ordinary - 1] != KIND_ORDINARY)
        t->n_ordinary--;
    t->tok_mask = pow2_at_least(present * 2 + 1) - 1;
    t->tok_tab = upc_malloc((t->tok_mask + 1) * sizeof *t->tok_tab);
    for (size_t i = 0; i <= t->tok_mask; i++)
        t->tok_tab[i].id = NO_ID;
    for (size_t i = 0; i < s->n_tokens; i++) {
        if (t->kind[i] != KIND_ORDINARY)
            continue;
        int64_t old = token_insert(t, (uint32_t)i);
        if (old >= 0) {
            bpe_set_err(err, errlen, "tokens %lld and %zu have the same bytes %s", (long long)old, i,
                    show_bytes(t->blob + t->off[i], t->len[i], hex));
            goto fail;
        }
    }
    for (int b = 0; b < 256; b++) {
        unsigned char c = (unsigned char)b;
        int64_t id = token_lookup(t, &c, 1);
        if (id < 0) {
            bpe_set_err(err, errlen, "not byte-level: byte 0x%02x has no token", b);
            goto fail;
        }
        t->byte_id[b] = (uint32_t)id;
    }

    /* Specials. */
    t->n_special = s->n_special;
    t->specials = upc_calloc(s->n_special ? s->n_special : 1, sizeof *t->specials);
    t->by_length = upc_calloc(s->n_special ? s->n_special : 1, sizeof *t->by_length);
    for (size_t i = 0; i < s->n_special; i++) {
        size_t n = strlen(s->special[i]);
        uint32_t id = s->special_ids[i];
        if (n == 0 || n >= UINT32_MAX) {
            bpe_set_err(err, errlen, "special token %u has an empty string", id);
            goto fail;
        }
        if (t->kind[id] == KIND_ORDINARY) {
            bpe_set_err(err, errlen, "special token \"%s\" has id %u, which is an ordinary token", s->special[i], id);
            goto fail;
        }
        if (t->kind[id] == KIND_SPECIAL) {
            bpe_set_err(err, errlen, "two special tokens have id %u", id);
            goto fail;
        }
        t->kind[id] = KIND_SPECIAL;
        t->specials[i] = (special_token){upc_strdup(s->special[i]), (uint32_t)n, id};
    }
    qsort(t->specials, t->n_special, sizeof *t->specials, cmp_special_by_id);
    t->special_single_first = -1;
    for (size_t i = 0; i < t->n_special; i++) {
        special_token *sp = &t->specials[i];
        for (size_t j = 0; j < i; j++)
            if (strcmp(t->specials[j].text, sp->text) == 0) {
                bpe_set_err(err, errlen, "special token \"%s\" given twice (ids %u and %u)", sp->text,
                        t->specials[j].id, sp->id);
                goto fail;
            }
        memcpy(t->blob + used, sp->text, sp->len);
        t->off[sp->id] = used;
        t->len[sp->id] = sp->len;
        used += sp->len;
        t->by_length[i] = sp;
        unsigned char f = (unsigned char)sp->text[0];
        t->special_first[f >> 3] |= (uint8_t)(1u << (f & 7));
        if (i == 0)
            t->special_single_first = f;
        else if (t->special_single_first != f)
            t->special_single_first = -2;
    }
    if (t->special_single_first == -2)
        t->special_single_first = -1;
    qsort(t->by_length, t->n_special, sizeof *t->by_length, cmp_special_by_length);
    t->vocab_size = t->n_ordinary;
    for (size_t i = 0; i < t->n_special; i++)
        if ((size_t)t->specials[i].id + 1 > t->vocab_size)
            t->vocab_size = (size_t)t->specials[i].id + 1;

    /* Pairs. */
    if (s->merges) {
        t->n_merges = s->n_merges;
        t->merges = upc_malloc((s->n_merges ? s->n_merges : 1) * sizeof *t->merges);
        memcpy(t->merges, s->merges, s->n_merges * sizeof *t->merges);
        pair_table_alloc(t, s->n_merges);
        unsigned char *cat = NULL;
        size_t catcap = 0;
        for (size_t r = 0; r < s->n_merges; r++) {
            uint32_t a = s->merges[r][0], b = s->merges[r][1];
            if (a >= t->n_ordinary || b >= t->n_ordinary || t->kind[a] != KIND_ORDINARY ||
                t->kind[b] != KIND_ORDINARY) {
                bpe_set_err(err, errlen, "merge %zu joins unknown token ids %u and %u", r, a, b);
                free(cat);
                goto fail;
            }
            size_t n = (size_t)t->len[a] + t->len[b];
            upc_grow((void **)&cat, &catcap, n, 1);
            memcpy(cat, t->blob + t->off[a], t->len[a]);
            memcpy(cat + t->len[a], t->blob + t->off[b], t->len[b]);
            int64_t m = token_lookup(t, cat, n);
            if (m < 0) {
                bpe_set_err(err, errlen, "merge %zu (tokens %u + %u) makes %s, which is not a token", r, a, b,
                        show_bytes(cat, n, hex));
                free(cat);
                goto fail;
            }
            pair_insert(t, a, b, (uint32_t)r, (uint32_t)m);
        }
        free(cat);
    } else {
        /* Rank of a pair = id of its concatenation: every split of every
         * token into two tokens is a pair (tiktoken's byte_pair_merge). */
        t->rank_is_id = true;
        size_t pairs = 0;
        for (size_t i = 0; i < s->n_tokens; i++)
            if (t->kind[i] == KIND_ORDINARY)
                pairs += t->len[i] - 1;
        pair_table_alloc(t, pairs);
        for (size_t i = 0; i < s->n_tokens; i++) {
            if (t->kind[i] != KIND_ORDINARY)
                continue;
            const unsigned char *p = t->blob + t->off[i];
            for (uint32_t k = 1; k < t->len[i]; k++) {
                int64_t a = token_lookup(t, p, k);
                if (a < 0)
                    continue;
                int64_t b = token_lookup(t, p + k, t->len[i] - k);
                if (b >= 0)
                    pair_insert(t, (uint32_t)a, (uint32_t)b, (uint32_t)i, (uint32_t)i);
            }
        }
    }

    static const char *const eos_names[] = {"<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"};
    t->eos = -1;
    for (size_t k = 0; k < 4 && t->eos < 0; k++)
        t->eos = bpe_special_id(t, eos_names[k]);
    compute_digest(t);
    return t;
fail:
    bpe_free(t);
    return NULL;
}

void bpe_free(bpe_tokenizer *t)
{
    if (!t)
        return;
    free(t->pattern);
    pretok_free(&t->pre);
    free(t->blob);
    free(t->off);
    free(t->len);
    free(t->kind);
    free(t->tok_tab);
    free(t->pair_tab);
    free(t->merges);
    for (size_t i = 0; t->specials && i < t->n_special; i++)
        free(t->specials[i].text);
    free(t->specials);
    free(t->by_length);
    free(t);
}

/* ---- digest ------------------------------------------------------------ */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} buf;

static void buf_put(buf *b, const void *p, size_t n)
{
    upc_grow((void **)&b->p, &b->cap, b->n + n, 1);
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void buf_u64(buf *b, uint64_t v)
{
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(v >> (8 * i));
    buf_put(b, le, 8);
}

/* Canonical: a version tag, the pattern, every ordinary id's bytes (holes
 * as length 0), the pair mode with merges, specials in id order,
 * ignore_merges. Integers are little-endian 64-bit, strings length-prefixed. */
static void compute_digest(bpe_tokenizer *t)
{
    buf b = {0};
    buf_put(&b, "upcyc-bpe-1", 11);
    buf_u64(&b, strlen(t->pattern));
    buf_put(&b, t->pattern, strlen(t->pattern));
    buf_u64(&b, t->n_ordinary);
    for (size_t i = 0; i < t->n_ordinary; i++) {
        bool here = t->kind[i] == KIND_ORDINARY;
        buf_u64(&b, here ? t->len[i] : 0);
        if (here)
            buf_put(&b, t->blob + t->off[i], t->len[i]);
    }
    buf_u64(&b, t->rank_is_id ? 0 : 1);
    if (!t->rank_is_id) {
        buf_u64(&b, t->n_merges);
        for (size_t r = 0; r < t->n_merges; r++) {
            buf_u64(&b, t->merges[r][0]);
            buf_u64(&b, t->merges[r][1]);
        }
    }
    buf_u64(&b, t->n_special);
    for (size_t i = 0; i < t->n_special; i++) {
        buf_u64(&b, t->specials[i].id);
        buf_u64(&b, t->specials[i].len);
        buf_put(&b, t->specials[i].text, t->specials[i].len);
    }
    buf_u64(&b, t->ignore_merges);
    snprintf(t->digest, sizeof t->digest, "xxh64:%016llx", (unsigned long long)upc_hash64(b.p, b.n, 0));
    free(b.p);
}

void bpe_digest(const bpe_tokenizer *t, char out[32])
{
    memcpy(out, t->digest, sizeof t->digest);
}

/* ---- accessors --------------------------------------------------------- */

size_t bpe_vocab_size(const bpe_tokenizer *t) { return t->vocab_size; }
const char *bpe_pattern(const bpe_tokenizer *t) { return t->pattern; }
int64_t bpe_eos_id(const bpe_tokenizer *t) { return t->eos; }
size_t bpe_n_ordinary(const bpe_tokenizer *t) { return t->n_ordinary; }
bool bpe_ignores_merges(const bpe_tokenizer *t) { return t->ignore_merges; }
size_t bpe_n_special(const bpe_tokenizer *t) { return t->n_special; }

bool bpe_is_ordinary(const bpe_tokenizer *t, uint32_t id)
{
    return id < t->n_ordinary && t->kind[id] == KIND_ORDINARY;
}

const char *bpe_special_at(const bpe_tokenizer *t, size_t i, uint32_t *id)
{
    *id = t->specials[i].id;
    return t->specials[i].text;
}

int64_t bpe_special_id(const bpe_tokenizer *t, const char *s)
{
    for (size_t i = 0; i < t->n_special; i++)
        if (strcmp(t->specials[i].text, s) == 0)
            return t->specials[i].id;
    return -1;
}

const unsigned char *bpe_token_bytes(const bpe_tokenizer *t, uint32_t id, uint32_t *len)
{
    if (id >= t->vocab_size || t->kind[id] == KIND_ABSENT) {
        *len = 0;
        return NULL;
    }
    *len = t->len[id];
    return t->blob + t->off[id];
}

/* ---- scratch ----------------------------------------------------------- */

#define SHORT_PIECE 64      /* longer pre-tokens merge with a heap */
#define CACHE_SLOTS 4096    /* direct-mapped cache of recent pre-tokens */
#define CACHE_BYTES 22
#define CACHE_IDS 8

typedef struct {
    uint64_t hash;
    uint8_t len;            /* 0: empty */
    uint8_t n_ids;
    unsigned char bytes[CACHE_BYTES];
    uint32_t ids[CACHE_IDS];
} cache_entry;

struct bpe_scratch {
    const bpe_tokenizer *t;
    pretok_matcher m;
    /* Long-piece merging: per byte position, the part starting there. */
    uint32_t *id, *rank, *merged, *next, *prev;
    size_t cap;
    uint64_t *heap;
    size_t heap_cap;
    cache_entry *cache;
};

bpe_scratch *bpe_scratch_new(const bpe_tokenizer *t)
{
    bpe_scratch *s = upc_calloc(1, sizeof *s);
    s->t = t;
    pretok_matcher_init(&s->m, &t->pre);
    s->cache = upc_calloc(CACHE_SLOTS, sizeof *s->cache);
    return s;
}

void bpe_scratch_free(bpe_scratch *s)
{
    if (!s)
        return;
    pretok_matcher_free(&s->m);
    free(s->id);
    free(s->rank);
    free(s->merged);
    free(s->next);
    free(s->prev);
    free(s->heap);
    free(s->cache);
    free(s);
}

/* ---- encode ------------------------------------------------------------ */

typedef struct {
    uint32_t **ids;
    size_t *n, *cap;
} out_ids;

static inline void emit(out_ids *o, uint32_t id)
{
    if (*o->n == *o->cap) {
        size_t want = *o->cap ? *o->cap * 2 : 256;
        upc_grow((void **)o->ids, o->cap, want, sizeof **o->ids);
    }
    (*o->ids)[(*o->n)++] = id;
}

/* Short pieces: arrays with memmove; O(n^2) but n is small. Returns the
 * number of parts left in ids. */
static size_t merge_short(const bpe_tokenizer *t, const unsigned char *p, size_t n, uint32_t *ids)
{
    uint32_t ranks[SHORT_PIECE], merged[SHORT_PIECE];
    for (size_t i = 0; i < n; i++)
        ids[i] = t->byte_id[p[i]];
    size_t m = n;
    for (size_t i = 0; i + 1 < m; i++)
        ranks[i] = pair_rank(t, ids[i], ids[i + 1], &merged[i]);
    while (m > 1) {
        uint32_t best = NO_RANK;
        size_t bi = 0;
        for (size_t i = 0; i + 1 < m; i++)
            if (ranks[i] < best) {
                best = ranks[i];
                bi = i;
            }
        if (best == NO_RANK)
            break;
        ids[bi] = merged[bi];
        size_t tail = m - bi - 2;
        memmove(ids + bi + 1, ids + bi + 2, tail * sizeof *ids);
        memmove(ranks + bi + 1, ranks + bi + 2, tail * sizeof *ranks);
        memmove(merged + bi + 1, merged + bi + 2, tail * sizeof *merged);
        m--;
        if (bi > 0)
            ranks[bi - 1] = pair_rank(t, ids[bi - 1], ids[bi], &merged[bi - 1]);
        if (bi + 1 < m)
            ranks[bi] = pair_rank(t, ids[bi], ids[bi + 1], &merged[bi]);
    }
    return m;
}

/* Binary min-heap of (rank << 32 | start position). */
static void heap_push(bpe_scratch *s, size_t *hn, uint64_t v)
{
    upc_grow((void **)&s->heap, &s->heap_cap, *hn + 1, sizeof *s->heap);
    size_t i = (*hn)++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (s->heap[up] <= v)
            break;
        s->heap[i] = s->heap[up];
        i = up;
    }
    s->heap[i] = v;
}

static uint64_t heap_pop(bpe_scratch *s, size_t *hn)
{
    uint64_t top = s->heap[0], v = s->heap[--(*hn)];
    size_t i = 0, n = *hn;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && s->heap[c + 1] < s->heap[c])
            c++;
        if (v <= s->heap[c])
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    s->heap[i] = v;
    return top;
}

/* Long pieces: a linked list of parts keyed by start byte, and a heap of
 * candidate pairs with stale entries skipped when popped. Same result as
 * merge_short: lowest rank first, then leftmost. n < 2^32. */
static void merge_long(const bpe_tokenizer *t, bpe_scratch *s, const unsigned char *p, size_t n, out_ids *o)
{
    if (n > s->cap) {
        size_t c = s->cap;
        upc_grow((void **)&s->id, &c, n, sizeof *s->id);
        c = s->cap;
        upc_grow((void **)&s->rank, &c, n, sizeof *s->rank);
        c = s->cap;
        upc_grow((void **)&s->merged, &c, n, sizeof *s->merged);
        c = s->cap;
        upc_grow((void **)&s->next, &c, n, sizeof *s->next);
        c = s->cap;
        upc_grow((void **)&s->prev, &c, n, sizeof *s->prev);
        s->cap = c;
    }
    uint32_t *id = s->id, *rank = s->rank, *merged = s->merged, *next = s->next, *prev = s->prev;
    uint32_t end = (uint32_t)n;
    size_t hn = 0;
    for (uint32_t i = 0; i < end; i++) {
        id[i] = t->byte_id[p[i]];
        next[i] = i + 1;
        prev[i] = i - 1;   /* wraps for 0; never read */
    }
    for (uint32_t i = 0; i + 1 < end; i++) {
        rank[i] = pair_rank(t, id[i], id[i + 1], &merged[i]);
        if (rank[i] != NO_RANK)
            heap_push(s, &hn, (uint64_t)rank[i] << 32 | i);
    }
    rank[end - 1] = NO_RANK;
    while (hn > 0) {
        uint64_t top = heap_pop(s, &hn);
        uint32_t r = (uint32_t)(top >> 32), i = (uint32_t)top;
        if (id[i] == NO_ID || rank[i] != r)
            continue;   /* stale */
        uint32_t j = next[i];
        id[i] = merged[i];
        id[j] = NO_ID;
        next[i] = next[j];
        if (next[j] < end)
            prev[next[j]] = i;
        rank[i] = NO_RANK;
        if (next[i] < end) {
            rank[i] = pair_rank(t, id[i], id[next[i]], &merged[i]);
            if (rank[i] != NO_RANK)
                heap_push(s, &hn, (uint64_t)rank[i] << 32 | i);
        }
        if (i > 0) {
            uint32_t h = prev[i];
            rank[h] = pair_rank(t, id[h], id[i], &merged[h]);
            if (rank[h] != NO_RANK)
                heap_push(s, &hn, (uint64_t)rank[h] << 32 | h);
        }
    }
    for (uint32_t i = 0; i < end; i = next[i])
        emit(o, id[i]);
}

static void encode_piece(const bpe_tokenizer *t, bpe_scratch *s, const unsigned char *p, size_t n, out_ids *o)
{
    if (n == 1) {
        emit(o, t->byte_id[p[0]]);
        return;
    }
    uint64_t h = hash_bytes(p, n);
    if (t->ignore_merges) {
        int64_t whole = token_find(t, p, n, h);
        if (whole >= 0) {
            emit(o, (uint32_t)whole);
            return;
        }
    }
    if (n > SHORT_PIECE) {
        /* Pieces over 2^32 bytes are merged in 2^31-byte parts. */
        while (n > ((size_t)1 << 31)) {
            merge_long(t, s, p, (size_t)1 << 31, o);
            p += (size_t)1 << 31;
            n -= (size_t)1 << 31;
        }
        merge_long(t, s, p, n, o);
        return;
    }
    cache_entry *c = NULL;
    if (n <= CACHE_BYTES) {
        c = &s->cache[h & (CACHE_SLOTS - 1)];
        if (c->hash == h && c->len == n && memcmp(c->bytes, p, n) == 0) {
            for (size_t i = 0; i < c->n_ids; i++)
                emit(o, c->ids[i]);
            return;
        }
    }
    uint32_t ids[SHORT_PIECE];
    size_t m = merge_short(t, p, n, ids);
    for (size_t i = 0; i < m; i++)
        emit(o, ids[i]);
    if (c && m <= CACHE_IDS) {
        c->hash = h;
        c->len = (uint8_t)n;
        c->n_ids = (uint8_t)m;
        memcpy(c->bytes, p, n);
        memcpy(c->ids, ids, m * sizeof *ids);
    }
}

typedef struct {
    const bpe_tokenizer *t;
    bpe_scratch *s;
    out_ids *o;
} piece_sink;

static void encode_piece_cb(void *ctx, const unsigned char *p, size_t n)
{
    piece_sink *k = ctx;
    encode_piece(k->t, k->s, p, n, k->o);
}

static void encode_ordinary(const bpe_tokenizer *t, bpe_scratch *s, const unsigned char *text, size_t len,
                            out_ids *o)
{
    piece_sink k = {t, s, o};
    pretok_split(&s->m, text, len, encode_piece_cb, &k);
}

/* The leftmost special token in text (longest when several start there). */
static const special_token *find_special(const bpe_tokenizer *t, const unsigned char *text, size_t len,
                                         size_t *at)
{
    size_t i = 0;
    while (i < len) {
        if (t->special_single_first >= 0) {
            const unsigned char *q = memchr(text + i, t->special_single_first, len - i);
            if (!q)
                return NULL;
            i = (size_t)(q - text);
        } else if (!(t->special_first[text[i] >> 3] & (1u << (text[i] & 7)))) {
            i++;
            continue;
        }
        for (size_t k = 0; k < t->n_special; k++) {
            const special_token *sp = t->by_length[k];
            if (sp->len <= len - i && memcmp(text + i, sp->text, sp->len) == 0) {
                *at = i;
                return sp;
            }
        }
        i++;
    }
    return NULL;
}

void bpe_encode(const bpe_tokenizer *t, bpe_scratch *s, const char *text, size_t len, bool allow_special,
                uint32_t **ids, size_t *n, size_t *cap)
{
    out_ids o = {ids, n, cap};
    const unsigned char *p = (const unsigned char *)text;
    if (allow_special && t->n_special > 0) {
        size_t at;
        const special_token *sp;
        while ((sp = find_special(t, p, len, &at)) != NULL) {
            encode_ordinary(t, s, p, at, &o);
            emit(&o, sp->id);
            p += at + sp->len;
            len -= at + sp->len;
        }
    }
    encode_ordinary(t, s, p, len, &o);
}

/* ---- decode ------------------------------------------------------------ */

bool bpe_decode(const bpe_tokenizer *t, const uint32_t *ids, size_t n, char **out, size_t *len, size_t *cap,
                size_t *bad)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t id = ids[i];
        if (id >= t->vocab_size || t->kind[id] == KIND_ABSENT) {
            if (bad)
                *bad = i;
            return false;
        }
        uint32_t k = t->len[id];
        if (*len + k > *cap)
            upc_grow((void **)out, cap, *len + k > 2 * *cap ? *len + k : 2 * *cap, 1);
        memcpy(*out + *len, t->blob + t->off[id], k);
        *len += k;
    }
    return true;
}

/* ---- merges for saving ---------------------------------------------- */

uint32_t (*bpe_merge_list(const bpe_tokenizer *t, size_t *n))[2]
{
    if (!t->rank_is_id) {
        uint32_t(*m)[2] = upc_malloc((t->n_merges ? t->n_merges : 1) * sizeof *m);
        memcpy(m, t->merges, t->n_merges * sizeof *m);
        *n = t->n_merges;
        return m;
    }
    /* For each token in rank order, merge its bytes using only lower ranks;
     * the two parts left are its merge (as tiktoken's converters do). */
    uint32_t(*m)[2] = upc_malloc(t->n_ordinary * sizeof *m);
    size_t k = 0;
    uint32_t *ids = NULL;
    size_t cap = 0;
    for (size_t tok = 0; tok < t->n_ordinary; tok++) {
        if (t->kind[tok] != KIND_ORDINARY || t->len[tok] < 2)
            continue;
        const unsigned char *p = t->blob + t->off[tok];
        size_t len = t->len[tok];
        upc_grow((void **)&ids, &cap, len, sizeof *ids);
        size_t parts = len;
        for (size_t i = 0; i < len; i++)
            ids[i] = t->byte_id[p[i]];
        for (;;) {
            uint32_t best = (uint32_t)tok, mid = 0, best_mid = 0;
            size_t bi = 0;
            for (size_t i = 0; i + 1 < parts; i++) {
                uint32_t r = pair_rank(t, ids[i], ids[i + 1], &mid);
                if (r < best) {
                    best = r;
                    bi = i;
                    best_mid = mid;
                }
            }
            if (best == (uint32_t)tok)
                break;
            ids[bi] = best_mid;
            memmove(ids + bi + 1, ids + bi + 2, (parts - bi - 2) * sizeof *ids);
            parts--;
        }
        if (parts == 2) {
            m[k][0] = ids[0];
            m[k][1] = ids[1];
            k++;
        }
    }
    free(ids);
    *n = k;
    return m;
}
