/* test_bpe.c: the byte-level BPE tokenizer (lib/bpe.h): golden ids from
 * tiktoken, loaders and saver, round trips on any bytes, special tokens,
 * loader and build errors, heap merging against a naive reference.
 * Usage: test_bpe GROUP FIXTURES_DIR SHARED_DATA_DIR TMP_DIR
 * Exit 0 when all checks pass, 1 on a failed check, 77 when the group needs
 * reference files that are absent (the message says which). */
#include "bpe.h"
#include "test_harness.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *fixtures, *shared, *tmpdir;

/* dir/name in one of 32 rotating buffers: copy it to keep it. */
static char *path_of(const char *dir, const char *name)
{
    static char buf[32][4096];
    static int k;
    char *p = buf[k++ % 32];
    snprintf(p, 4096, "%s/%s", dir, name);
    return p;
}

static bool exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "wb");
    if (!fp || fputs(text, fp) == EOF || fclose(fp) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
}

static uint32_t *read_ids(const char *path, size_t *n)
{
    size_t len;
    char *text = upc_read_file(path, &len);
    size_t cap = 0;
    uint32_t *ids = NULL;
    *n = 0;
    char *p = text, *end;
    for (;;) {
        unsigned long v = strtoul(p, &end, 10);
        if (end == p)
            break;
        upc_grow((void **)&ids, &cap, *n + 1, sizeof *ids);
        ids[(*n)++] = (uint32_t)v;
        p = end;
    }
    free(text);
    return ids;
}

/* Encode, compare with expected, decode back. */
static void check_ids(const bpe_tokenizer *t, const char *what, const char *text, size_t len, bool allow_special,
                      const uint32_t *want, size_t nwant)
{
    bpe_scratch *s = bpe_scratch_new(t);
    uint32_t *ids = NULL;
    size_t n = 0, cap = 0;
    bpe_encode(t, s, text, len, allow_special, &ids, &n, &cap);
    size_t i = 0;
    while (i < n && i < nwant && ids[i] == want[i])
        i++;
    CHECK_MSG(n == nwant && i == n, "%s: %zu ids, expected %zu; first difference at %zu (got %u, want %u)", what, n,
          nwant, i, i < n ? ids[i] : 0, i < nwant ? want[i] : 0);
    char *out = NULL;
    size_t olen = 0, ocap = 0, bad;
    CHECK_MSG(bpe_decode(t, ids, n, &out, &olen, &ocap, &bad), "%s: decode failed at %zu", what, bad);
    CHECK_MSG(olen == len && memcmp(out, text, len) == 0, "%s: decode(encode(x)) != x", what);
    free(out);
    free(ids);
    bpe_scratch_free(s);
}

static const char *const golden_names[] = {"english", "code",  "numbers", "whitespace", "crlf",
                                           "contractions", "scripts", "emoji", "special", "fortune",
                                           "unicode_spaces"};

static void check_golden(const bpe_tokenizer *t, const char *tag, const char *via)
{
    char name[256], what[300];
    for (size_t k = 0; k < sizeof golden_names / sizeof *golden_names; k++) {
        size_t len, n;
        snprintf(name, sizeof name, "%s.txt", golden_names[k]);
        char *text = upc_read_file(path_of(fixtures, name), &len);
        snprintf(name, sizeof name, "%s.%s.ids", golden_names[k], tag);
        uint32_t *want = read_ids(path_of(fixtures, name), &n);
        snprintf(what, sizeof what, "%s %s (%s)", tag, golden_names[k], via);
        check_ids(t, what, text, len, false, want, n);
        free(want);
        snprintf(name, sizeof name, "%s.%s.special.ids", golden_names[k], tag);
        if (exists(path_of(fixtures, name))) {
            want = read_ids(path_of(fixtures, name), &n);
            snprintf(what, sizeof what, "%s %s allowing specials (%s)", tag, golden_names[k], via);
            check_ids(t, what, text, len, true, want, n);
            free(want);
        }
        free(text);
    }
}

static bpe_tokenizer *must_load(bpe_tokenizer *t, const char *err)
{
    if (!t) {
        fprintf(stderr, "FAIL: load: %s\n", err);
        exit(1);
    }
    return t;
}

static bool need_shared(const char *file)
{
    if (exists(path_of(shared, file)))
        return true;
    printf("skip: reference file %s not found in %s\n", file, shared);
    return false;
}

/* ---- a small tokenizer built in memory --------------------------------- */

/* 256 byte tokens (id = byte), then the merges listed as "left|right" strings
 * of existing tokens; with_merges false builds the same vocabulary ranked by
 * id (tiktoken style). */
static bpe_tokenizer *small_tokenizer(const char *pattern, const char *const *merges, size_t n_merges,
                                      bool with_merges, bool ignore_merges, size_t n_special,
                                      const char *const *special, const uint32_t *special_ids, char *err,
                                      size_t errlen)
{
    size_t n = 256 + n_merges;
    unsigned char **bytes = upc_calloc(n, sizeof *bytes);
    uint32_t *lens = upc_calloc(n, sizeof *lens);
    uint32_t(*pairs)[2] = upc_calloc(n_merges + 1, sizeof *pairs);
    for (int b = 0; b < 256; b++) {
        bytes[b] = upc_malloc(1);
        bytes[b][0] = (unsigned char)b;
        lens[b] = 1;
    }
    for (size_t r = 0; r < n_merges; r++) {
        const char *sp = strchr(merges[r], '|');
        size_t la = (size_t)(sp - merges[r]);
        const char *rb = sp + 1;
        size_t lb = strlen(rb);
        int64_t ia = -1, ib = -1;
        for (size_t i = 0; i < 256 + r; i++) {
            if (lens[i] == la && memcmp(bytes[i], merges[r], la) == 0)
                ia = (int64_t)i;
            if (lens[i] == lb && memcmp(bytes[i], rb, lb) == 0)
                ib = (int64_t)i;
        }
        if (ia < 0 || ib < 0) {
            fprintf(stderr, "test bug: merge %s\n", merges[r]);
            exit(2);
        }
        pairs[r][0] = (uint32_t)ia;
        pairs[r][1] = (uint32_t)ib;
        bytes[256 + r] = upc_malloc(la + lb);
        memcpy(bytes[256 + r], merges[r], la);
        memcpy(bytes[256 + r] + la, rb, lb);
        lens[256 + r] = (uint32_t)(la + lb);
    }
    bpe_spec spec = {pattern, n, (const unsigned char *const *)bytes, lens, n_merges,
                     with_merges ? (const uint32_t(*)[2])pairs : NULL, n_special, special, special_ids,
                     ignore_merges};
    bpe_tokenizer *t = bpe_build(&spec, err, errlen);
    for (size_t i = 0; i < n; i++)
        free(bytes[i]);
    free(bytes);
    free(lens);
    free(pairs);
    return t;
}

/* "left|right" */
static const char *const small_merges[] = {"a|b", "ab|c", "a|a", "aa|a", "b|c", "c|c", "cc|c", "abc|abc", "h|e",
                                           "l|l", "he|ll", "hell|o", " |w", "o|r", "or|l", "orl|d", " w|orld"};
#define N_SMALL (sizeof small_merges / sizeof *small_merges)

static void encode_all(const bpe_tokenizer *t, const char *text, size_t len, bool allow, uint32_t **ids,
                       size_t *n)
{
    bpe_scratch *s = bpe_scratch_new(t);
    size_t cap = 0;
    *ids = NULL;
    *n = 0;
    bpe_encode(t, s, text, len, allow, ids, n, &cap);
    bpe_scratch_free(s);
}

static bool roundtrips(const bpe_tokenizer *t, bpe_scratch *s, const char *text, size_t len)
{
    uint32_t *ids = NULL;
    size_t n = 0, cap = 0, olen = 0, ocap = 0, bad;
    char *out = NULL;
    bpe_encode(t, s, text, len, false, &ids, &n, &cap);
    bool ok = bpe_decode(t, ids, n, &out, &olen, &ocap, &bad) && olen == len && (len == 0 || memcmp(out, text, len) == 0);
    if (len == 0)
        ok = ok && n == 0;
    free(ids);
    free(out);
    return ok;
}

static void roundtrip_suite(const bpe_tokenizer *t, const char *name)
{
    bpe_scratch *s = bpe_scratch_new(t);
    uint64_t seed = 12345;
    char *buf = upc_malloc(1 << 20);
    for (int k = 0; k < 200; k++) {
        size_t len = upc_splitmix64(&seed) % 4096;
        for (size_t i = 0; i < len; i++)
            buf[i] = (char)upc_splitmix64(&seed);
        CHECK_MSG(roundtrips(t, s, buf, len), "%s: random bytes #%d (%zu bytes) do not round-trip", name, k, len);
    }
#define CASE(what, text) {what, text, sizeof text - 1}
    static const struct { const char *what; const char *text; size_t len; } cases[] = {
        CASE("empty", ""),
        CASE("invalid UTF-8", "ab\xff\xfe cd \xc3 \xe2\x82 x\x80\x80y \xf0\x9f\x98"),
        CASE("overlong and surrogate", "\xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80!"),
        CASE("NUL bytes", "a\0b\0\0 c\0"),
        CASE("CRLF", "one\r\ntwo\r\n\r\n  \r\n\r"),
        CASE("emoji ZWJ", "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7 ok"),
        CASE("special text", "<|endoftext|> and <|fim_prefix|>"),
        CASE("lone bytes", "\x80"),
        CASE("trailing invalid", "hello \xff"),
    };
#undef CASE
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++)
        CHECK_MSG(roundtrips(t, s, cases[k].text, cases[k].len), "%s: %s does not round-trip", name, cases[k].what);
    /* 1 MB lines: one letter run, spaces, digits, punctuation, mixed. */
    const size_t mb = 1 << 20;
    const char fills[] = {'a', ' ', '7', '!', 0};
    for (int k = 0; k < 5; k++) {
        for (size_t i = 0; i < mb; i++)
            buf[i] = fills[k] ? fills[k] : "ab c1\t?\xc3\xa9"[i % 9];
        CHECK_MSG(roundtrips(t, s, buf, mb), "%s: 1 MB line #%d does not round-trip", name, k);
    }
    free(buf);
    bpe_scratch_free(s);
}

/* ---- naive reference BPE, for the heap path ----------------------------- */

/* Merge bytes with the small tokenizer's rules directly: lowest rank first,
 * leftmost on ties; rank = merge index, or (by_id) the merged token's id. */
static size_t naive_bpe(const char *p, size_t n, bool by_id, uint32_t *out)
{
    /* parts as (offset, length) */
    size_t *off = upc_malloc(n * sizeof *off), *len = upc_malloc(n * sizeof *len), m = n;
    for (size_t i = 0; i < n; i++) {
        off[i] = i;
        len[i] = 1;
    }
    for (;;) {
        size_t best = SIZE_MAX, bi = 0;
        for (size_t i = 0; i + 1 < m; i++) {
            for (size_t r = 0; r < N_SMALL; r++) {
                const char *mr = small_merges[r], *sp = strchr(mr, '|');
                size_t la = (size_t)(sp - mr), lb = strlen(sp + 1);
                bool match;
                if (by_id) /* any split of the concatenation */
                    match = len[i] + len[i + 1] == la + lb && memcmp(p + off[i], mr, la) == 0 &&
                            memcmp(p + off[i] + la, sp + 1, lb) == 0;
                else
                    match = len[i] == la && len[i + 1] == lb && memcmp(p + off[i], mr, la) == 0 &&
                            memcmp(p + off[i + 1], sp + 1, lb) == 0;
                if (match && r < best) {
                    best = r;
                    bi = i;
                }
            }
        }
        if (best == SIZE_MAX)
            break;
        len[bi] += len[bi + 1];
        memmove(off + bi + 1, off + bi + 2, (m - bi - 2) * sizeof *off);
        memmove(len + bi + 1, len + bi + 2, (m - bi - 2) * sizeof *len);
        m--;
    }
    for (size_t i = 0; i < m; i++) {
        if (len[i] == 1) {
            out[i] = (unsigned char)p[off[i]];
            continue;
        }
        /* The id of the merge whose concatenation this part is. */
        out[i] = UINT32_MAX;
        for (size_t r = 0; r < N_SMALL; r++) {
            const char *mr = small_merges[r], *sp = strchr(mr, '|');
            size_t la = (size_t)(sp - mr), lb = strlen(sp + 1);
            if (la + lb == len[i] && memcmp(p + off[i], mr, la) == 0 && memcmp(p + off[i] + la, sp + 1, lb) == 0) {
                out[i] = (uint32_t)(256 + r);
                break;
            }
        }
    }
    free(off);
    free(len);
    return m;
}

static void group_merging(void)
{
    char err[512];
    for (int by_id = 0; by_id < 2; by_id++) {
        bpe_tokenizer *t = small_tokenizer("[a-c]+", small_merges, N_SMALL, !by_id, false, 0, NULL, NULL, err,
                                           sizeof err);
        if (!t) {
            CHECK_MSG(0, "build: %s", err);
            continue;
        }
        uint64_t seed = 99 + (uint64_t)by_id;
        char text[400];
        uint32_t want[400];
        for (int k = 0; k < 300; k++) {
            size_t len = 1 + upc_splitmix64(&seed) % (k < 150 ? 60 : 399);
            for (size_t i = 0; i < len; i++)
                text[i] = "aabc"[upc_splitmix64(&seed) % 4];
            size_t nw = naive_bpe(text, len, by_id, want);
            uint32_t *ids;
            size_t n;
            encode_all(t, text, len, false, &ids, &n);
            bool same = n == nw && memcmp(ids, want, n * sizeof *ids) == 0;
            CHECK_MSG(same, "%s: %zu-byte piece %.*s: ids differ from the naive reference", by_id ? "ranks" : "merges",
                  len, (int)(len < 60 ? len : 60), text);
            free(ids);
        }
        bpe_free(t);
    }
    /* Leftmost on ties: a a a a a -> aa a a a -> aa aa a -> aa aaa. */
    bpe_tokenizer *t = must_load(small_tokenizer("[a-z]+| ?[a-z]+|\\s+", small_merges, N_SMALL, true, false, 0,
                                                 NULL, NULL, err, sizeof err), err);
    uint32_t *ids;
    size_t n;
    encode_all(t, "aaaaa", 5, false, &ids, &n);
    CHECK_MSG(n == 2 && ids[0] == 258 && ids[1] == 259, "aaaaa: expected [aa(258), aaa(259)], got %zu ids", n);
    free(ids);
    encode_all(t, "hello world", 11, false, &ids, &n);
    CHECK_MSG(n == 2 && ids[0] == 267 && ids[1] == 272, "hello world: expected [267, 272], got %zu ids (%u ...)", n,
          n ? ids[0] : 0);
    free(ids);
    bpe_free(t);
}

/* ---- groups ------------------------------------------------------------- */

static void group_roundtrip(void)
{
    char err[512];
    bpe_tokenizer *t = must_load(small_tokenizer(bpe_pattern_named("cl100k"), small_merges, N_SMALL, true, false,
                                                 0, NULL, NULL, err, sizeof err), err);
    roundtrip_suite(t, "small");
    bpe_free(t);
    /* A pattern that leaves characters unmatched: they still round-trip. */
    t = must_load(small_tokenizer("[a-z]+", small_merges, N_SMALL, true, false, 0, NULL, NULL, err, sizeof err),
                  err);
    roundtrip_suite(t, "letters-only pattern");
    bpe_free(t);
    if (need_shared("cl100k_base.tiktoken")) {
        t = must_load(bpe_load_tiktoken(path_of(shared, "cl100k_base.tiktoken"), NULL, err, sizeof err), err);
        roundtrip_suite(t, "cl100k");
        bpe_free(t);
    }
}

static void group_golden_cl100k(void)
{
    char err[512];
    if (!need_shared("cl100k_base.tiktoken"))
        exit(77);
    bpe_tokenizer *t = must_load(bpe_load_tiktoken(path_of(shared, "cl100k_base.tiktoken"), "cl100k_base", err,
                                                   sizeof err), err);
    check_golden(t, "cl100k", "tiktoken file");
    CHECK_MSG(bpe_vocab_size(t) == 100277, "cl100k vocab size %zu", bpe_vocab_size(t));
    CHECK_MSG(bpe_eos_id(t) == 100257, "cl100k eos %lld", (long long)bpe_eos_id(t));
    CHECK_MSG(bpe_special_id(t, "<|endofprompt|>") == 100276, "endofprompt id");
    CHECK_MSG(strcmp(bpe_pattern(t), bpe_pattern_named("cl100k")) == 0, "pattern");
    char d1[32], d2[32];
    bpe_digest(t, d1);
    CHECK_MSG(strncmp(d1, "xxh64:", 6) == 0 && strlen(d1) == 22, "digest format %s", d1);

    /* Auto-detected (by name), and saved as tokenizer.json then loaded back:
     * same ids (derived merges + ignore_merges). */
    bpe_tokenizer *a = must_load(bpe_load(path_of(shared, "cl100k_base.tiktoken"), err, sizeof err), err);
    bpe_digest(a, d2);
    CHECK_MSG(strcmp(d1, d2) == 0, "digest differs between loads: %s %s", d1, d2);
    bpe_free(a);
    char json[4096];
    snprintf(json, sizeof json, "%s/cl100k.tokenizer.json", tmpdir);
    bpe_save_hf_json(t, json);
    bpe_tokenizer *h = must_load(bpe_load(json, err, sizeof err), err);
    check_golden(h, "cl100k", "saved tokenizer.json");
    CHECK_MSG(bpe_vocab_size(h) == 100277, "reloaded vocab size %zu", bpe_vocab_size(h));
    bpe_free(h);
    bpe_free(t);
}

static void group_golden_gpt2(void)
{
    char err[512];
    if (!need_shared("gpt2-encoder.json") || !need_shared("gpt2-vocab.bpe"))
        exit(77);
    bpe_tokenizer *t = must_load(bpe_load_gpt2(path_of(shared, "gpt2-encoder.json"), path_of(shared, "gpt2-vocab.bpe"),
                                               err, sizeof err), err);
    check_golden(t, "gpt2", "vocab.json + merges");
    CHECK_MSG(bpe_vocab_size(t) == 50257, "gpt2 vocab size %zu", bpe_vocab_size(t));
    CHECK_MSG(bpe_eos_id(t) == 50256, "gpt2 eos %lld", (long long)bpe_eos_id(t));
    char json[4096], json2[4096];
    snprintf(json, sizeof json, "%s/gpt2.tokenizer.json", tmpdir);
    snprintf(json2, sizeof json2, "%s/gpt2.again.json", tmpdir);
    bpe_save_hf_json(t, json);
    bpe_tokenizer *h = must_load(bpe_load_hf_json(json, err, sizeof err), err);
    check_golden(h, "gpt2", "saved tokenizer.json");
    char d1[32], d2[32];
    bpe_digest(t, d1);
    bpe_digest(h, d2);
    CHECK_MSG(strcmp(d1, d2) == 0, "save/load changed the digest: %s %s", d1, d2);
    /* Saved again from the loaded one: the same file. */
    bpe_save_hf_json(h, json2);
    size_t l1, l2;
    char *f1 = upc_read_file(json, &l1), *f2 = upc_read_file(json2, &l2);
    CHECK_MSG(l1 == l2 && memcmp(f1, f2, l1) == 0, "saving twice gives different files");
    free(f1);
    free(f2);
    bpe_free(h);
    /* A directory with vocab.json + merges.txt is recognised too. */
    bpe_free(t);
}

static void group_special(void)
{
    char err[512];
    const char *sp[] = {"<|eot|>", "<|eot|>x", "<s>"};
    uint32_t sid[] = {300, 301, 290};
    bpe_tokenizer *t = must_load(small_tokenizer(bpe_pattern_named("gpt2"), small_merges, N_SMALL, true, false, 3,
                                                 sp, sid, err, sizeof err), err);
    CHECK_MSG(bpe_vocab_size(t) == 302, "vocab size with specials %zu", bpe_vocab_size(t));
    CHECK_MSG(bpe_special_id(t, "<s>") == 290 && bpe_special_id(t, "<|eot|>") == 300 && bpe_special_id(t, "nope") == -1,
          "special ids");
    CHECK_MSG(bpe_eos_id(t) == -1, "no eos among these specials");
    const char *text = "ab<|eot|>xc<s><|eot|>";
    uint32_t *ids;
    size_t n;
    encode_all(t, text, strlen(text), true, &ids, &n);
    /* "ab" then the longest special "<|eot|>x", "c", "<s>", "<|eot|>". */
    uint32_t want[] = {256, 301, 'c', 290, 300};
    CHECK_MSG(n == 5 && memcmp(ids, want, sizeof want) == 0, "allowed specials: got %zu ids", n);
    char *out = NULL;
    size_t olen = 0, ocap = 0, bad;
    CHECK_MSG(bpe_decode(t, ids, n, &out, &olen, &ocap, &bad) && olen == strlen(text) && memcmp(out, text, olen) == 0,
          "specials decode back to their strings");
    free(ids);
    encode_all(t, text, strlen(text), false, &ids, &n);
    bool none = true;
    for (size_t i = 0; i < n; i++)
        none = none && ids[i] < 290;
    CHECK_MSG(none && n > 5, "specials not allowed: encoded as text (%zu ids)", n);
    olen = 0;
    CHECK_MSG(bpe_decode(t, ids, n, &out, &olen, &ocap, &bad) && olen == strlen(text) && memcmp(out, text, olen) == 0,
          "specials as text decode back");
    free(ids);
    /* Ids outside the vocabulary (and holes) stop decoding. */
    uint32_t badids[] = {'a', 280, 'b'};
    CHECK_MSG(!bpe_decode(t, badids, 3, &out, &olen, &ocap, &bad) && bad == 1, "hole id 280 must fail at index 1");
    uint32_t big[] = {'a', 'b', 5000};
    CHECK_MSG(!bpe_decode(t, big, 3, &out, &olen, &ocap, &bad) && bad == 2, "id 5000 must fail at index 2");
    uint32_t len;
    CHECK_MSG(bpe_token_bytes(t, 280, &len) == NULL && len == 0, "hole has no bytes");
    const unsigned char *b = bpe_token_bytes(t, 290, &len);
    CHECK_MSG(b && len == 3 && memcmp(b, "<s>", 3) == 0, "special bytes");
    free(out);
    bpe_free(t);
}

static void expect_load_error(bpe_tokenizer *t, const char *err, const char *file, const char *also, const char *what)
{
    CHECK_MSG(t == NULL, "%s: loaded, expected an error", what);
    bpe_free(t);
    CHECK_MSG(strstr(err, file) != NULL, "%s: message does not name %s: %s", what, file, err);
    CHECK_MSG(!also || strstr(err, also) != NULL, "%s: message lacks \"%s\": %s", what, also, err);
    CHECK_MSG(strchr(err, '\n') == NULL, "%s: message is not one line: %s", what, err);
}

static const char *hf_doc(const char *model, const char *pre, const char *added)
{
    static char buf[16384];
    snprintf(buf, sizeof buf,
             "{\"version\":\"1.0\",\"added_tokens\":%s,\"normalizer\":null,\"pre_tokenizer\":%s,"
             "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":%s}",
             added, pre, model);
    return buf;
}

/* vocab: the 256 byte characters in GPT-2's mapping plus "ab" (256), "abc" (257). */
static char *byte_vocab_json(const char *extra)
{
    static char buf[8192];
    size_t k = 0;
    k += (size_t)snprintf(buf + k, sizeof buf - k, "{");
    int extra_cp = 256;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        int cp = printable ? b : extra_cp++;
        char ch[4];
        if (cp < 0x80) {
            ch[0] = (char)cp;
            ch[1] = 0;
        } else {
            ch[0] = (char)(0xC0 | cp >> 6);
            ch[1] = (char)(0x80 | (cp & 0x3F));
            ch[2] = 0;
        }
        if (cp == '"' || cp == '\\')
            k += (size_t)snprintf(buf + k, sizeof buf - k, "\"\\%s\":%d,", ch, b);
        else
            k += (size_t)snprintf(buf + k, sizeof buf - k, "\"%s\":%d,", ch, b);
    }
    snprintf(buf + k, sizeof buf - k, "\"ab\":256,\"abc\":257%s}", extra);
    return buf;
}

static void group_hf_json(void)
{
    char err[512], model[9000];
    const char *seq = "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
                      "\"[a-z]+|[^a-z]+\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\","
                      "\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":false}]}";
    const char *bl = "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true}";
    const char *added = "[{\"id\":258,\"content\":\"<|end|>\",\"special\":true}]";
    const char *p = path_of(tmpdir, "hf.json");
    char d[3][32];
    /* Merges as strings, as arrays; ByteLevel alone; ignore_merges. */
    const char *merges[] = {"[\"a b\",\"ab c\"]", "[[\"a\",\"b\"],[\"ab\",\"c\"]]"};
    for (int k = 0; k < 2; k++) {
        snprintf(model, sizeof model, "{\"type\":\"BPE\",\"vocab\":%s,\"merges\":%s}", byte_vocab_json(""),
                 merges[k]);
        write_file(p, hf_doc(model, k ? bl : seq, added));
        bpe_tokenizer *t = must_load(bpe_load(p, err, sizeof err), err);
        uint32_t *ids;
        size_t n;
        encode_all(t, "abcab<|end|>", 12, true, &ids, &n);
        CHECK_MSG(n == 3 && ids[0] == 257 && ids[1] == 256 && ids[2] == 258, "hf json #%d: got %zu ids", k, n);
        free(ids);
        CHECK_MSG(strcmp(bpe_pattern(t), k ? bpe_pattern_named("gpt2") : "[a-z]+|[^a-z]+") == 0, "pattern #%d", k);
        bpe_digest(t, d[k]);
        bpe_free(t);
    }
    CHECK_MSG(strcmp(d[0], d[1]) != 0, "different patterns, same digest");
    /* ignore_merges: "abc" is found whole although no merge chain reaches
     * it; without the flag it is "ab" + "c"... here no merge makes abc. */
    snprintf(model, sizeof model, "{\"type\":\"BPE\",\"ignore_merges\":%%s,\"vocab\":%s,\"merges\":[\"a b\"]}",
             byte_vocab_json(""));
    for (int k = 0; k < 2; k++) {
        char m2[9000];
        snprintf(m2, sizeof m2, model, k ? "true" : "false");
        write_file(p, hf_doc(m2, seq, "[]"));
        bpe_tokenizer *t = must_load(bpe_load_hf_json(p, err, sizeof err), err);
        uint32_t *ids;
        size_t n;
        encode_all(t, "abc", 3, false, &ids, &n);
        CHECK_MSG(k ? (n == 1 && ids[0] == 257) : (n == 2 && ids[0] == 256 && ids[1] == 'c'),
              "ignore_merges %d: got %zu ids", k, n);
        free(ids);
        bpe_digest(t, d[k]);
        bpe_free(t);
    }
    CHECK_MSG(strcmp(d[0], d[1]) != 0, "ignore_merges does not change the digest");
    /* A directory holding tokenizer.json. */
    const char *dir = path_of(tmpdir, "tokdir");
    mkdir(dir, 0755);
    snprintf(model, sizeof model, "{\"type\":\"BPE\",\"vocab\":%s,\"merges\":[\"a b\"]}", byte_vocab_json(""));
    write_file(path_of(dir, "tokenizer.json"), hf_doc(model, seq, "[]"));
    bpe_tokenizer *t = bpe_load(dir, err, sizeof err);
    CHECK_MSG(t != NULL, "directory: %s", err);
    bpe_free(t);
}


static const bpe_tokenizer *save_target;
static void save_to(const void *path)
{
    bpe_save_hf_json(save_target, path);
}

static void group_errors(void)
{
    char err[512], model[9000];
    const char *p = path_of(tmpdir, "bad.json");
    const char *seq = "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
                      "\"[a-z]+\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\","
                      "\"use_regex\":false}]}";
    /* Truncated JSON. */
    snprintf(model, sizeof model, "{\"type\":\"BPE\",\"vocab\":%s,\"merges\":[\"a b\"]}", byte_vocab_json(""));
    char *doc = upc_strdup(hf_doc(model, seq, "[]"));
    doc[strlen(doc) / 2] = 0;
    write_file(p, doc);
    free(doc);
    expect_load_error(bpe_load_hf_json(p, err, sizeof err), err, p, "line", "truncated JSON");
    expect_load_error(bpe_load(p, err, sizeof err), err, p, NULL, "truncated JSON (auto)");
    /* Not BPE: WordPiece; SentencePiece-style (Metaspace, byte_fallback). */
    write_file(p, hf_doc("{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}", seq, "[]"));
    expect_load_error(bpe_load_hf_json(p, err, sizeof err), err, p, "WordPiece", "WordPiece model");
    write_file(p, hf_doc(model, "{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\"}", "[]"));
    expect_load_error(bpe_load(p, err, sizeof err), err, p, "pre_tokenizer", "Metaspace pre-tokenizer");
    snprintf(model, sizeof model, "{\"type\":\"BPE\",\"byte_fallback\":true,\"vocab\":%s,\"merges\":[]}",
             byte_vocab_json(""));
    write_file(p, hf_doc(model, seq, "[]"));
    expect_load_error(bpe_load(p, err, sizeof err), err, p, "byte_fallback", "byte_fallback");
    /* Vocabulary not byte-level (a "▁" token); a byte missing. */
    snprintf(model, sizeof model, "{\"type\":\"BPE\",\"vocab\":%s,\"merges\":[]}",
             byte_vocab_json(",\"\xe2\x96\x81the\":258"));
    write_file(p, hf_doc(model, seq, "[]"));
    expect_load_error(bpe_load(p, err, sizeof err), err, p, "model.vocab", "non-byte-level token");
    write_file(p, hf_doc("{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[]}", seq, "[]"));
    expect_load_error(bpe_load(p, err, sizeof err), err, p, "byte", "missing byte tokens");
    /* Merge of unknown tokens (HF, merges.txt); malformed merge. */
    snprintf(model, sizeof model, "{\"type\":\"BPE\",\"vocab\":%s,\"merges\":[\"a b\",\"ab zz\"]}",
             byte_vocab_json(""));
    write_file(p, hf_doc(model, seq, "[]"));
    expect_load_error(bpe_load(p, err, sizeof err), err, p, "model.merges[1]", "HF merge of unknown token");
    snprintf(model, sizeof model, "{\"type\":\"BPE\",\"vocab\":%s,\"merges\":[\"a b c\"]}", byte_vocab_json(""));
    write_file(p, hf_doc(model, seq, "[]"));
    expect_load_error(bpe_load(p, err, sizeof err), err, p, "model.merges[0]", "HF malformed merge");
    const char *vj = path_of(tmpdir, "vocab.json"), *mt = path_of(tmpdir, "merges.txt");
    write_file(vj, byte_vocab_json(""));
    write_file(mt, "#version: 0.2\na b\nab q\nab qq\n");
    expect_load_error(bpe_load_gpt2(vj, mt, err, sizeof err), err, mt, "line 4", "merges.txt unknown token");
    expect_load_error(bpe_load(vj, err, sizeof err), err, mt, "line 4", "merges.txt via vocab.json (auto)");
    write_file(mt, "#version: 0.2\na b\nabc\n");
    expect_load_error(bpe_load_gpt2(vj, mt, err, sizeof err), err, mt, "line 3", "merges.txt malformed line");
    /* A merge whose result is not a token. */
    write_file(mt, "a b\nb a\n");
    expect_load_error(bpe_load_gpt2(vj, mt, err, sizeof err), err, vj, "not a token", "merge makes no token");
    write_file(mt, "a b\nab c\n");
    bpe_tokenizer *ok = bpe_load_gpt2(vj, mt, err, sizeof err);
    CHECK_MSG(ok != NULL, "good vocab.json + merges.txt: %s", err);
    bpe_free(ok);
    /* tiktoken: bad base64, bad rank, rank twice, unknown encoding. */
    const char *tk = path_of(tmpdir, "bad.tiktoken");
    char tkt[8192];
    size_t k = 0;
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int b = 0; b < 256; b++)
        k += (size_t)snprintf(tkt + k, sizeof tkt - k, "%c%c== %d\n", b64[b >> 2], b64[(b & 3) << 4], b);
    snprintf(tkt + k, sizeof tkt - k, "YWI= 256\nYW*j 257\n");
    write_file(tk, tkt);
    expect_load_error(bpe_load_tiktoken(tk, "cl100k_base", err, sizeof err), err, tk, "line 258", "bad base64");
    snprintf(tkt + k, sizeof tkt - k, "YWI= 256\nYWJj x\n");
    write_file(tk, tkt);
    expect_load_error(bpe_load_tiktoken(tk, "cl100k_base", err, sizeof err), err, tk, "line 258", "bad rank");
    snprintf(tkt + k, sizeof tkt - k, "YWI= 256\nYWJj 256\n");
    write_file(tk, tkt);
    expect_load_error(bpe_load_tiktoken(tk, "cl100k_base", err, sizeof err), err, tk, "line 258", "rank twice");
    snprintf(tkt + k, sizeof tkt - k, "YWI= 256\nYWJj 257\n");
    write_file(tk, tkt);
    expect_load_error(bpe_load_tiktoken(tk, "k9_base", err, sizeof err), err, tk, "k9_base", "unknown encoding");
    expect_load_error(bpe_load(tk, err, sizeof err), err, tk, "258 ranks", "unguessable encoding");
    bpe_tokenizer *small = bpe_load_tiktoken(tk, "r50k_base", err, sizeof err);
    CHECK_MSG(small != NULL, "small rank file as r50k_base: %s", err);
    if (small) {
        uint32_t *ids;
        size_t n;
        encode_all(small, "abc ab", 6, false, &ids, &n);
        CHECK_MSG(n == 3 && ids[0] == 257 && ids[1] == ' ' && ids[2] == 256, "rank-file encode: %zu ids", n);
        free(ids);
        bpe_free(small);
    }
    /* Missing files; a directory without a tokenizer; not a tokenizer. */
    const char *missing = path_of(tmpdir, "no-such-file.json");
    expect_load_error(bpe_load(missing, err, sizeof err), err, missing, NULL, "missing file");
    expect_load_error(bpe_load_hf_json(missing, err, sizeof err), err, missing, NULL, "missing file (hf)");
    expect_load_error(bpe_load_tiktoken(missing, NULL, err, sizeof err), err, missing, NULL, "missing file (tiktoken)");
    const char *empty_dir = path_of(tmpdir, "emptydir");
    mkdir(empty_dir, 0755);
    expect_load_error(bpe_load(empty_dir, err, sizeof err), err, empty_dir, NULL, "empty directory");
    const char *junk = path_of(tmpdir, "junk.txt");
    write_file(junk, "hello world\n");
    expect_load_error(bpe_load(junk, err, sizeof err), err, junk, "line 1", "plain text file");

    /* Build errors. */
    bpe_tokenizer *t = small_tokenizer("([a-z", small_merges, N_SMALL, true, false, 0, NULL, NULL, err, sizeof err);
    CHECK_MSG(!t && strstr(err, "regex"), "bad regex: %s", err);
    bpe_free(t);
    const char *sp[] = {"<x>"};
    uint32_t sid[] = {'a'};
    t = small_tokenizer("[a-z]+", small_merges, N_SMALL, true, false, 1, sp, sid, err, sizeof err);
    CHECK_MSG(!t && strstr(err, "ordinary"), "special on an ordinary id: %s", err);
    bpe_free(t);
    /* Saving to an unwritable place fails the tool with EX_CANTCREAT. */
    t = must_load(small_tokenizer("[a-z]+", small_merges, N_SMALL, true, false, 0, NULL, NULL, err, sizeof err), err);
    save_target = t;
    EXPECT_FAIL(save_to, path_of(missing, "x.json"), EX_CANTCREAT, "x.json", "cannot create");
    bpe_free(t);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: test_bpe GROUP FIXTURES_DIR SHARED_DATA_DIR TMP_DIR\n");
        return 2;
    }
    upc_init("test_bpe");
    fixtures = argv[2];
    shared = argv[3];
    tmpdir = argv[4];
    const char *g = argv[1];
    if (strcmp(g, "merging") == 0)
        group_merging();
    else if (strcmp(g, "roundtrip") == 0)
        group_roundtrip();
    else if (strcmp(g, "golden-cl100k") == 0)
        group_golden_cl100k();
    else if (strcmp(g, "golden-gpt2") == 0)
        group_golden_gpt2();
    else if (strcmp(g, "special") == 0)
        group_special();
    else if (strcmp(g, "hf-json") == 0)
        group_hf_json();
    else if (strcmp(g, "errors") == 0)
        group_errors();
    else {
        fprintf(stderr, "test_bpe: unknown group %s\n", g);
        return 2;
    }
    if (failures) {
        fprintf(stderr, "test_bpe %s: %d check(s) failed\n", g, failures);
        return 1;
    }
    printf("test_bpe %s: ok\n", g);
    return 0;
}
