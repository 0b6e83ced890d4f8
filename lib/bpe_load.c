/* bpe_load.c: byte-level BPE tokenizers from files: HF tokenizer.json,
 * GPT-2 vocab.json + merges.txt, tiktoken rank files; recognising which one
 * a path is; saving as HF tokenizer.json. Every failure returns NULL with one
 * line naming the file and the place in it (JSON path or line number). */
#include "bpe.h"
#include "bpe_internal.h"
#include "util.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- GPT-2's bytes_to_unicode: each byte is a printable character ----- */

typedef struct {
    uint32_t cp_of[256];      /* byte -> code point */
    int16_t byte_of[324];     /* code point -> byte, -1 if none */
} byte_map;

static void byte_map_init(byte_map *m)
{
    for (int i = 0; i < 324; i++)
        m->byte_of[i] = -1;
    uint32_t extra = 256;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        m->cp_of[b] = printable ? (uint32_t)b : extra++;
        m->byte_of[m->cp_of[b]] = (int16_t)b;
    }
}

/* Byte-level string (UTF-8) -> bytes in out (at least strlen(s) long).
 * Returns the length, or -1 when a character is outside the mapping. */
static long unmap_bytes(const byte_map *m, const char *s, unsigned char *out)
{
    const unsigned char *p = (const unsigned char *)s;
    long n = 0;
    while (*p) {
        uint32_t cp;
        if (p[0] < 0x80) {
            cp = p[0];
            p += 1;
        } else if ((p[0] & 0xE0) == 0xC0 && (p[1] & 0xC0) == 0x80) {
            cp = (uint32_t)(p[0] & 0x1F) << 6 | (p[1] & 0x3F);
            p += 2;
        } else {
            return -1;   /* every mapped code point is below 0x800 */
        }
        if (cp >= 324 || m->byte_of[cp] < 0)
            return -1;
        out[n++] = (unsigned char)m->byte_of[cp];
    }
    return n;
}

/* Bytes -> byte-level string (UTF-8), NUL-terminated, in out (3*n+1). */
static void map_bytes(const byte_map *m, const unsigned char *p, size_t n, char *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = m->cp_of[p[i]];
        if (cp < 0x80) {
            out[k++] = (char)cp;
        } else {
            out[k++] = (char)(0xC0 | cp >> 6);
            out[k++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    out[k] = 0;
}

/* ---- a vocabulary being assembled -------------------------------------- */

typedef struct {
    size_t n_tokens;
    unsigned char **bytes;
    uint32_t *lens;
    size_t n_merges;
    uint32_t (*merges)[2];
    size_t n_special;
    char **special;
    uint32_t *special_ids;
} vocab;

static void vocab_free(vocab *v)
{
    for (size_t i = 0; i < v->n_tokens; i++)
        free(v->bytes[i]);
    free(v->bytes);
    free(v->lens);
    free(v->merges);
    for (size_t i = 0; i < v->n_special; i++)
        free(v->special[i]);
    free(v->special);
    free(v->special_ids);
    memset(v, 0, sizeof *v);
}

static void vocab_add_special(vocab *v, const char *s, uint32_t id)
{
    v->special = upc_realloc(v->special, (v->n_special + 1) * sizeof *v->special);
    v->special_ids = upc_realloc(v->special_ids, (v->n_special + 1) * sizeof *v->special_ids);
    v->special[v->n_special] = upc_strdup(s);
    v->special_ids[v->n_special++] = id;
}

/* A special token's id taken away from the ordinary vocabulary (GPT-2 lists
 * <|endoftext|> among its ordinary tokens). */
static void vocab_make_hole(vocab *v, uint32_t id)
{
    if (id < v->n_tokens) {
        free(v->bytes[id]);
        v->bytes[id] = NULL;
        v->lens[id] = 0;
    }
}

static bpe_tokenizer *vocab_build(vocab *v, const char *pattern, bool ignore_merges, bool with_merges,
                                  const char *path, char *err, size_t errlen)
{
    bpe_spec spec = {
        .pattern = pattern,
        .n_tokens = v->n_tokens,
        .bytes = (const unsigned char *const *)v->bytes,
        .lens = v->lens,
        .n_merges = v->n_merges,
        .merges = with_merges ? (const uint32_t(*)[2])v->merges : NULL,
        .n_special = v->n_special,
        .special = (const char *const *)v->special,
        .special_ids = v->special_ids,
        .ignore_merges = ignore_merges,
    };
    char why[512];
    bpe_tokenizer *t = bpe_build(&spec, why, sizeof why);
    if (!t)
        bpe_set_err(err, errlen, "%s: %s", path, why);
    vocab_free(v);
    return t;
}

/* A JSON object of byte-level strings -> ids into v (ids may leave holes). */
static bool vocab_from_json(vocab *v, json_t *obj, const byte_map *bm, const char *path, const char *where,
                            char *err, size_t errlen)
{
    if (!json_is_object(obj)) {
        bpe_set_err(err, errlen, "%s: %s: expected an object of token -> id", path, where);
        return false;
    }
    size_t max = 0;
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val) {
        json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
        if (id < 0 || id >= (json_int_t)UINT32_MAX - 1) {
            bpe_set_err(err, errlen, "%s: %s[\"%.40s\"]: expected a non-negative integer id", path, where, key);
            return false;
        }
        if ((size_t)id + 1 > max)
            max = (size_t)id + 1;
    }
    v->n_tokens = max;
    v->bytes = upc_calloc(max ? max : 1, sizeof *v->bytes);
    v->lens = upc_calloc(max ? max : 1, sizeof *v->lens);
    json_object_foreach(obj, key, val) {
        size_t id = (size_t)json_integer_value(val);
        unsigned char *b = upc_malloc(strlen(key) + 1);
        long n = unmap_bytes(bm, key, b);
        if (n <= 0) {
            free(b);
            bpe_set_err(err, errlen, "%s: %s[\"%.40s\"]: not a byte-level token (characters outside GPT-2's byte mapping)",
                    path, where, key);
            return false;
        }
        if (v->bytes[id]) {
            free(b);
            bpe_set_err(err, errlen, "%s: %s[\"%.40s\"]: id %zu given to two tokens", path, where, key, id);
            return false;
        }
        v->bytes[id] = b;
        v->lens[id] = (uint32_t)n;
    }
    return true;
}

/* ---- HF tokenizer.json ------------------------------------------------- */

static const char *json_type_of(json_t *o)
{
    json_t *ty = json_object_get(o, "type");
    return json_is_string(ty) ? json_string_value(ty) : NULL;
}

static bool json_flag(json_t *o, const char *key, bool dflt)
{
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

/* Byte-level pre-tokenizer: ByteLevel(use_regex) alone, or a Sequence of one
 * Split(Regex, Isolated) then ByteLevel(use_regex false). Sets *pattern. */
static bool hf_pre_tokenizer(json_t *pre, const char **pattern, const char *path, char *err, size_t errlen)
{
    const char *ty = json_type_of(pre);
    if (ty && strcmp(ty, "ByteLevel") == 0) {
        if (json_flag(pre, "add_prefix_space", false)) {
            bpe_set_err(err, errlen, "%s: pre_tokenizer.add_prefix_space is true; not supported", path);
            return false;
        }
        if (!json_flag(pre, "use_regex", true)) {
            bpe_set_err(err, errlen, "%s: pre_tokenizer.use_regex is false with no Split before it; not supported",
                    path);
            return false;
        }
        *pattern = bpe_pattern_named("gpt2");
        return true;
    }
    if (!ty || strcmp(ty, "Sequence") != 0) {
        bpe_set_err(err, errlen, "%s: pre_tokenizer%s%s is not byte-level (expected ByteLevel, or Sequence of Split and ByteLevel)",
                path, ty ? ".type " : " is ", ty ? ty : "missing");
        return false;
    }
    json_t *list = json_object_get(pre, "pretokenizers");
    size_t n = json_array_size(list);
    if (n == 0 || n > 2) {
        bpe_set_err(err, errlen, "%s: pre_tokenizer.pretokenizers: expected [Split, ByteLevel], got %zu entries", path, n);
        return false;
    }
    *pattern = NULL;
    for (size_t i = 0; i < n; i++) {
        json_t *p = json_array_get(list, i);
        const char *pty = json_type_of(p);
        if (pty && strcmp(pty, "Split") == 0 && i == 0 && n == 2) {
            json_t *re = json_object_get(json_object_get(p, "pattern"), "Regex");
            json_t *beh = json_object_get(p, "behavior");
            if (!json_is_string(re)) {
                bpe_set_err(err, errlen, "%s: pre_tokenizer.pretokenizers[0].pattern: expected {\"Regex\": ...}", path);
                return false;
            }
            if (!json_is_string(beh) || strcmp(json_string_value(beh), "Isolated") != 0 ||
                json_flag(p, "invert", false)) {
                bpe_set_err(err, errlen, "%s: pre_tokenizer.pretokenizers[0]: only behavior Isolated, invert false is supported",
                        path);
                return false;
            }
            *pattern = json_string_value(re);
        } else if (pty && strcmp(pty, "ByteLevel") == 0 && i == n - 1) {
            if (json_flag(p, "add_prefix_space", false)) {
                bpe_set_err(err, errlen, "%s: pre_tokenizer.pretokenizers[%zu].add_prefix_space is true; not supported",
                        path, i);
                return false;
            }
            bool use_regex = json_flag(p, "use_regex", true);
            if (use_regex == (*pattern != NULL)) {
                bpe_set_err(err, errlen, "%s: pre_tokenizer.pretokenizers[%zu].use_regex must be %s here", path, i,
                        *pattern ? "false after a Split" : "true without a Split");
                return false;
            }
            if (use_regex)
                *pattern = bpe_pattern_named("gpt2");
        } else {
            bpe_set_err(err, errlen, "%s: pre_tokenizer.pretokenizers[%zu]: %s is not supported (expected [Split, ByteLevel])",
                    path, i, pty ? pty : "an entry without type");
            return false;
        }
    }
    if (!*pattern) {
        bpe_set_err(err, errlen, "%s: pre_tokenizer.pretokenizers: no ByteLevel", path);
        return false;
    }
    return true;
}

static bpe_tokenizer *hf_from_json(json_t *root, const char *path, char *err, size_t errlen)
{
    byte_map bm;
    byte_map_init(&bm);
    vocab v = {0};
    if (!json_is_object(root)) {
        bpe_set_err(err, errlen, "%s: expected a JSON object at the top", path);
        return NULL;
    }
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) {
        bpe_set_err(err, errlen, "%s: model: missing or not an object", path);
        return NULL;
    }
    const char *mty = json_type_of(model);
    if (mty && strcmp(mty, "BPE") != 0) {
        bpe_set_err(err, errlen, "%s: model.type is \"%s\"; only byte-level BPE is supported", path, mty);
        return NULL;
    }
    if (json_flag(model, "byte_fallback", false)) {
        bpe_set_err(err, errlen, "%s: model.byte_fallback is true (SentencePiece-style BPE); only byte-level BPE is supported",
                path);
        return NULL;
    }
    static const char *const must_be_empty[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        json_t *x = json_object_get(model, must_be_empty[i]);
        if (x && !json_is_null(x) && !(json_is_string(x) && json_string_length(x) == 0)) {
            bpe_set_err(err, errlen, "%s: model.%s is set; not supported", path, must_be_empty[i]);
            return NULL;
        }
    }
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && json_number_value(dropout) != 0) {
        bpe_set_err(err, errlen, "%s: model.dropout is set; BPE dropout is not supported", path);
        return NULL;
    }
    json_t *norm = json_object_get(root, "normalizer");
    if (norm && !json_is_null(norm)) {
        const char *nty = json_type_of(norm);
        /* NFC leaves text that is already NFC (nearly all text) unchanged;
         * it is accepted and not applied. Anything else changes the text. */
        if (!nty || strcmp(nty, "NFC") != 0) {
            bpe_set_err(err, errlen, "%s: normalizer.type \"%s\" is not supported (byte-level BPE takes text as is)", path,
                    nty ? nty : "?");
            return NULL;
        }
    }
    const char *pattern;
    json_t *pre = json_object_get(root, "pre_tokenizer");
    if (!pre || json_is_null(pre)) {
        bpe_set_err(err, errlen, "%s: pre_tokenizer is null; not byte-level BPE", path);
        return NULL;
    }
    if (!hf_pre_tokenizer(pre, &pattern, path, err, errlen))
        return NULL;

    if (!vocab_from_json(&v, json_object_get(model, "vocab"), &bm, path, "model.vocab", err, errlen))
        goto fail;

    /* Token strings -> ids for the merges. */
    json_t *vocab_obj = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    if (!json_is_array(merges)) {
        bpe_set_err(err, errlen, "%s: model.merges: missing or not an array", path);
        goto fail;
    }
    v.n_merges = json_array_size(merges);
    v.merges = upc_malloc((v.n_merges ? v.n_merges : 1) * sizeof *v.merges);
    for (size_t r = 0; r < v.n_merges; r++) {
        json_t *m = json_array_get(merges, r);
        const char *parts[2] = {NULL, NULL};
        char *dup = NULL;
        if (json_is_string(m)) {
            dup = upc_strdup(json_string_value(m));
            char *sp = strchr(dup, ' ');
            if (sp && !strchr(sp + 1, ' ')) {
                *sp = 0;
                parts[0] = dup;
                parts[1] = sp + 1;
            }
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            parts[0] = json_string_value(json_array_get(m, 0));
            parts[1] = json_string_value(json_array_get(m, 1));
        }
        if (!parts[0] || !*parts[0] || !*parts[1]) {
            free(dup);
            bpe_set_err(err, errlen, "%s: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", path, r);
            goto fail;
        }
        for (int k = 0; k < 2; k++) {
            json_t *id = json_object_get(vocab_obj, parts[k]);
            if (!id) {
                bpe_set_err(err, errlen, "%s: model.merges[%zu]: unknown token \"%.40s\"", path, r, parts[k]);
                free(dup);
                goto fail;
            }
            v.merges[r][k] = (uint32_t)json_integer_value(id);
        }
        free(dup);
    }

    /* Added tokens: special ones (and any not in the vocabulary) are matched
     * literally; an ordinary one already in the vocabulary changes nothing. */
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_null(added) && !json_is_array(added)) {
        bpe_set_err(err, errlen, "%s: added_tokens: expected an array", path);
        goto fail;
    }
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i);
        json_t *id = json_object_get(a, "id"), *content = json_object_get(a, "content");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= (json_int_t)UINT32_MAX - 1 ||
            !json_is_string(content) || json_string_length(content) == 0) {
            bpe_set_err(err, errlen, "%s: added_tokens[%zu]: expected an id and a non-empty content", path, i);
            goto fail;
        }
        uint32_t tid = (uint32_t)json_integer_value(id);
        const char *text = json_string_value(content);
        json_t *in_vocab = json_object_get(vocab_obj, text);
        bool same = in_vocab && json_integer_value(in_vocab) == (json_int_t)tid;
        if (!json_flag(a, "special", false) && same)
            continue;
        vocab_make_hole(&v, tid);
        vocab_add_special(&v, text, tid);
    }
    return vocab_build(&v, pattern, json_flag(model, "ignore_merges", false), true, path, err, errlen);
fail:
    vocab_free(&v);
    return NULL;
}

static json_t *load_json(const char *path, char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_load_file(path, JSON_ALLOW_NUL, &je);
    if (!root) {
        if (je.line > 0)
            bpe_set_err(err, errlen, "%s: line %d, column %d: %s", path, je.line, je.column, je.text);
        else
            bpe_set_err(err, errlen, "%s: %s", path, je.text);
    }
    return root;
}

bpe_tokenizer *bpe_load_hf_json(const char *path, char *err, size_t errlen)
{
    json_t *root = load_json(path, err, errlen);
    if (!root)
        return NULL;
    bpe_tokenizer *t = hf_from_json(root, path, err, errlen);
    json_decref(root);
    return t;
}

/* ---- GPT-2 vocab.json + merges.txt ------------------------------------- */

/* Read a whole file; NULL with "path: reason" in err. */
static char *slurp(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        bpe_set_err(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *b = upc_malloc(cap);
    for (;;) {
        if (n + 1 >= cap) {
            cap *= 2;
            b = upc_realloc(b, cap);
        }
        size_t got = fread(b + n, 1, cap - n - 1, fp);
        n += got;
        if (got == 0)
            break;
    }
    bool bad = ferror(fp);
    int e = errno;
    fclose(fp);
    if (bad) {
        bpe_set_err(err, errlen, "%s: %s", path, strerror(e));
        free(b);
        return NULL;
    }
    b[n] = 0;
    *len = n;
    return b;
}

/* Next line of [*p, end) without its newline (and CR); false at the end. */
static bool next_line(char **p, char *end, char **line, size_t *n)
{
    if (*p >= end)
        return false;
    char *nl = memchr(*p, '\n', (size_t)(end - *p));
    char *stop = nl ? nl : end;
    *line = *p;
    *n = (size_t)(stop - *p);
    if (*n > 0 && (*line)[*n - 1] == '\r')
        (*n)--;
    *p = nl ? nl + 1 : end;
    return true;
}

bpe_tokenizer *bpe_load_gpt2(const char *vocab_json, const char *merges_txt, char *err, size_t errlen)
{
    byte_map bm;
    byte_map_init(&bm);
    vocab v = {0};
    json_t *root = load_json(vocab_json, err, errlen);
    if (!root)
        return NULL;
    size_t len = 0;
    char *text = NULL;
    if (!vocab_from_json(&v, root, &bm, vocab_json, "vocab", err, errlen))
        goto fail;
    text = slurp(merges_txt, &len, err, errlen);
    if (!text)
        goto fail;
    size_t cap = 0, lineno = 0, n;
    char *p = text, *line;
    while (next_line(&p, text + len, &line, &n)) {
        lineno++;
        if (n == 0 || (lineno == 1 && n >= 8 && memcmp(line, "#version", 8) == 0))
            continue;
        line[n] = 0;
        char *sp = strchr(line, ' ');
        if (!sp || sp == line || !sp[1] || strchr(sp + 1, ' ') || strlen(line) != n) {
            bpe_set_err(err, errlen, "%s: line %zu: expected two tokens separated by one space", merges_txt, lineno);
            goto fail;
        }
        *sp = 0;
        upc_grow((void **)&v.merges, &cap, v.n_merges + 1, sizeof *v.merges);
        for (int k = 0; k < 2; k++) {
            const char *tok = k ? sp + 1 : line;
            json_t *id = json_object_get(root, tok);
            if (!id) {
                bpe_set_err(err, errlen, "%s: line %zu: unknown token \"%.40s\" (not in %s)", merges_txt, lineno, tok,
                        vocab_json);
                goto fail;
            }
            v.merges[v.n_merges][k] = (uint32_t)json_integer_value(id);
        }
        v.n_merges++;
    }
    if (!v.merges)
        v.merges = upc_malloc(sizeof *v.merges);
    json_t *eot = json_object_get(root, "<|endoftext|>");
    if (eot) {
        vocab_make_hole(&v, (uint32_t)json_integer_value(eot));
        vocab_add_special(&v, "<|endoftext|>", (uint32_t)json_integer_value(eot));
    }
    free(text);
    json_decref(root);
    return vocab_build(&v, bpe_pattern_named("gpt2"), false, true, vocab_json, err, errlen);
fail:
    free(text);
    json_decref(root);
    vocab_free(&v);
    return NULL;
}

/* ---- tiktoken rank files ----------------------------------------------- */

static const struct {
    const char *name;
    const char *pattern;     /* bpe_pattern_named */
    size_t n_ranks;          /* lines in the official file, for guessing */
    struct { const char *text; uint32_t id; } special[6];
} encodings[] = {
    {"cl100k_base", "cl100k", 100256,
     {{"<|endoftext|>", 100257}, {"<|fim_prefix|>", 100258}, {"<|fim_middle|>", 100259},
      {"<|fim_suffix|>", 100260}, {"<|endofprompt|>", 100276}}},
    {"o200k_base", "o200k", 199998, {{"<|endoftext|>", 199999}, {"<|endofprompt|>", 200018}}},
    {"r50k_base", "gpt2", 50256, {{"<|endoftext|>", 50256}}},
    {"gpt2", "gpt2", 50256, {{"<|endoftext|>", 50256}}},
    {"p50k_base", "gpt2", 50280, {{"<|endoftext|>", 50256}}},
};
#define N_ENCODINGS (sizeof encodings / sizeof encodings[0])

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Standard base64 with padding; returns the length or -1. */
static long b64_decode(const char *s, size_t n, unsigned char *out)
{
    if (n == 0 || n % 4 != 0)
        return -1;
    long k = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int j = 0; j < 4; j++) {
            if (s[i + j] == '=' && i + 4 == n && j >= 2) {
                v[j] = 0;
                pad++;
            } else if (pad || (v[j] = b64_value((unsigned char)s[i + j])) < 0) {
                return -1;
            }
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[k++] = (unsigned char)(w >> 16);
        if (pad < 2)
            out[k++] = (unsigned char)(w >> 8);
        if (pad < 1)
            out[k++] = (unsigned char)w;
    }
    return k;
}

bpe_tokenizer *bpe_load_tiktoken(const char *path, const char *encoding, char *err, size_t errlen)
{
    size_t len;
    char *text = slurp(path, &len, err, errlen);
    if (!text)
        return NULL;
    vocab v = {0};
    size_t cap = 0, lineno = 0, n, lines = 0;
    char *p = text, *line;
    unsigned char *tmp = NULL;
    size_t tmpcap = 0;
    while (next_line(&p, text + len, &line, &n)) {
        lineno++;
        if (n == 0)
            continue;
        char *sp = memchr(line, ' ', n);
        char *end = NULL;
        unsigned long long rank = 0;
        long blen = -1;
        if (sp && sp + 1 < line + n && sp[1] >= '0' && sp[1] <= '9') {
            errno = 0;
            rank = strtoull(sp + 1, &end, 10);
            upc_grow((void **)&tmp, &tmpcap, (size_t)(sp - line) + 1, 1);
            blen = b64_decode(line, (size_t)(sp - line), tmp);
        }
        if (blen <= 0 || end != line + n || errno || rank >= UINT32_MAX - 1) {
            bpe_set_err(err, errlen, "%s: line %zu: expected \"<base64 token> <rank>\"", path, lineno);
            goto fail;
        }
        if (rank >= v.n_tokens) {
            size_t old = cap;
            upc_grow((void **)&v.bytes, &cap, (size_t)rank + 1, sizeof *v.bytes);
            if (cap != old) {   /* grown: lens follows, new slots empty */
                v.lens = upc_realloc(v.lens, cap * sizeof *v.lens);
                memset(v.bytes + old, 0, (cap - old) * sizeof *v.bytes);
                memset(v.lens + old, 0, (cap - old) * sizeof *v.lens);
            }
            v.n_tokens = (size_t)rank + 1;
        }
        if (v.bytes[rank]) {
            bpe_set_err(err, errlen, "%s: line %zu: rank %llu given twice", path, lineno, rank);
            goto fail;
        }
        v.bytes[rank] = upc_malloc((size_t)blen);
        memcpy(v.bytes[rank], tmp, (size_t)blen);
        v.lens[rank] = (uint32_t)blen;
        lines++;
    }
    free(tmp);
    tmp = NULL;
    free(text);
    text = NULL;

    size_t e = N_ENCODINGS;
    for (size_t i = 0; i < N_ENCODINGS; i++)
        if (encoding ? strcmp(encoding, encodings[i].name) == 0 : lines == encodings[i].n_ranks) {
            e = i;
            break;
        }
    if (e == N_ENCODINGS) {
        if (encoding)
            bpe_set_err(err, errlen, "%s: unknown encoding \"%s\" (known: cl100k_base, o200k_base, r50k_base, p50k_base)",
                    path, encoding);
        else
            bpe_set_err(err, errlen, "%s: %zu ranks match no known encoding; name it (cl100k_base, o200k_base, ...)", path,
                    lines);
        goto fail;
    }
    for (size_t i = 0; i < 6 && encodings[e].special[i].text; i++)
        vocab_add_special(&v, encodings[e].special[i].text, encodings[e].special[i].id);
    return vocab_build(&v, bpe_pattern_named(encodings[e].pattern), true, false, path, err, errlen);
fail:
    free(tmp);
    free(text);
    vocab_free(&v);
    return NULL;
}

/* ---- recognise by content ---------------------------------------------- */

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

bpe_tokenizer *bpe_load(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        bpe_set_err(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    if (S_ISDIR(st.st_mode)) {
        char *tj = upc_path_join(path, "tokenizer.json");
        bpe_tokenizer *t = NULL;
        if (file_exists(tj)) {
            t = bpe_load_hf_json(tj, err, errlen);
        } else {
            char *vj = upc_path_join(path, "vocab.json"), *mt = upc_path_join(path, "merges.txt");
            if (file_exists(vj) && file_exists(mt))
                t = bpe_load_gpt2(vj, mt, err, errlen);
            else
                bpe_set_err(err, errlen, "%s: directory holds no tokenizer.json (nor vocab.json + merges.txt)", path);
            free(vj);
            free(mt);
        }
        free(tj);
        return t;
    }
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        bpe_set_err(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    int c;
    while ((c = getc(fp)) == ' ' || c == '\t' || c == '\n' || c == '\r')
        ;
    fclose(fp);
    if (c != '{') {
        /* tiktoken: named after its encoding (cl100k_base.tiktoken) or
         * recognised by its number of ranks. */
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        const char *name = NULL;
        for (size_t i = 0; i < N_ENCODINGS; i++)
            if (strncmp(base, encodings[i].name, strlen(encodings[i].name)) == 0 &&
                strcmp(encodings[i].name, "gpt2") != 0)
                name = encodings[i].name;
        return bpe_load_tiktoken(path, name, err, errlen);
    }
    json_t *root = load_json(path, err, errlen);
    if (!root)
        return NULL;
    bpe_tokenizer *t = NULL;
    /* GPT-2's vocab.json has a token "model" too, mapped to a number. */
    if (json_is_object(json_object_get(root, "model"))) {
        t = hf_from_json(root, path, err, errlen);
    } else {
        /* A GPT-2 vocab.json: merges.txt or vocab.bpe beside it. */
        char *dir = upc_strdup(path);
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = 0;
        else
            strcpy(dir, ".");
        char *mt = upc_path_join(dir, "merges.txt"), *vb = upc_path_join(dir, "vocab.bpe");
        const char *merges = file_exists(mt) ? mt : file_exists(vb) ? vb : NULL;
        if (merges)
            t = bpe_load_gpt2(path, merges, err, errlen);
        else
            bpe_set_err(err, errlen, "%s: JSON without \"model\" and no merges.txt or vocab.bpe beside it; not a tokenizer",
                    path);
        free(dir);
        free(mt);
        free(vb);
    }
    json_decref(root);
    return t;
}

/* ---- save as HF tokenizer.json ------------------------------------------ */

static void put_json_string(FILE *fp, const char *s, size_t n)
{
    putc('"', fp);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(fp, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", fp);
        else if (c == '\r')
            fputs("\\r", fp);
        else if (c == '\t')
            fputs("\\t", fp);
        else if (c < 0x20)
            fprintf(fp, "\\u%04x", c);
        else
            putc(c, fp);
    }
    putc('"', fp);
}

static bool write_hf_json(const bpe_tokenizer *t, FILE *fp)
{
    byte_map bm;
    byte_map_init(&bm);
    fputs("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [", fp);
    for (size_t i = 0; i < bpe_n_special(t); i++) {
        uint32_t id;
        const char *s = bpe_special_at(t, i, &id);
        fprintf(fp, "%s\n    {\"id\": %u, \"content\": ", i ? "," : "", id);
        put_json_string(fp, s, strlen(s));
        fputs(", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}",
              fp);
    }
    fputs("\n  ],\n  \"normalizer\": null,\n"
          "  \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [\n"
          "    {\"type\": \"Split\", \"pattern\": {\"Regex\": ",
          fp);
    put_json_string(fp, bpe_pattern(t), strlen(bpe_pattern(t)));
    fputs("}, \"behavior\": \"Isolated\", \"invert\": false},\n"
          "    {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": false}]},\n"
          "  \"post_processor\": null,\n"
          "  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true},\n"
          "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n"
          "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n"
          "    \"fuse_unk\": false,\n    \"byte_fallback\": false,\n",
          fp);
    fprintf(fp, "    \"ignore_merges\": %s,\n    \"vocab\": {", bpe_ignores_merges(t) ? "true" : "false");
    char *s = NULL;
    size_t scap = 0;
    bool first = true;
    for (uint32_t id = 0; id < bpe_n_ordinary(t); id++) {
        if (!bpe_is_ordinary(t, id))
            continue;
        uint32_t n;
        const unsigned char *b = bpe_token_bytes(t, id, &n);
        upc_grow((void **)&s, &scap, 2 * (size_t)n + 1, 1);
        map_bytes(&bm, b, n, s);
        fputs(first ? "\n      " : ",\n      ", fp);
        put_json_string(fp, s, strlen(s));
        fprintf(fp, ": %u", id);
        first = false;
    }
    fputs("\n    },\n    \"merges\": [", fp);
    size_t nm;
    uint32_t(*m)[2] = bpe_merge_list(t, &nm);
    for (size_t r = 0; r < nm; r++) {
        fputs(r ? ",\n      " : "\n      ", fp);
        uint32_t na, nb;
        const unsigned char *a = bpe_token_bytes(t, m[r][0], &na), *b = bpe_token_bytes(t, m[r][1], &nb);
        upc_grow((void **)&s, &scap, 2 * (size_t)(na + nb) + 2, 1);
        map_bytes(&bm, a, na, s);
        size_t k = strlen(s);
        s[k++] = ' ';
        map_bytes(&bm, b, nb, s + k);
        put_json_string(fp, s, strlen(s));
    }
    free(m);
    free(s);
    fputs("\n    ]\n  }\n}\n", fp);
    return !ferror(fp);
}

void bpe_save_hf_json(const bpe_tokenizer *t, const char *path)
{
    upc_out o;
    upc_out_open(&o, path);
    if (!write_hf_json(t, o.fp))
        upc_fail(EX_IOERR, "%s: write failed: %s", path, strerror(errno));
    upc_out_commit(&o);
}
