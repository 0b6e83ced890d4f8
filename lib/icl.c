/* icl.c: Foundry's ICL task files, few-shot prompt assembly and generation
 * answer matching (see icl.h for the rules; the suite and gauntlet YAML are
 * in icl_suite.c). */
#include "icl.h"
#include "util.h"

#include <errno.h>
#include <stdarg.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const type_names[] = {
    [ICL_LANGUAGE_MODELING] = "language_modeling",
    [ICL_MULTIPLE_CHOICE] = "multiple_choice",
    [ICL_SCHEMA] = "schema",
    [ICL_GENERATION] = "generation_task_with_answers",
};

bool icl_type_parse(const char *name, icl_type *out)
{
    for (int t = 0; t < 4; t++)
        if (strcmp(name, type_names[t]) == 0) {
            *out = (icl_type)t;
            return true;
        }
    /* builders.py: 'question_answering' is the deprecated name of
     * 'generation_task_with_answers'. */
    if (strcmp(name, "question_answering") == 0) {
        *out = ICL_GENERATION;
        return true;
    }
    return false;
}

const char *icl_type_name(icl_type t)
{
    return (unsigned)t < 4 ? type_names[t] : "unknown";
}

/* ---- whitespace (Python's str.isspace, which strip/split/rstrip use) ---- */

/* Decodes one UTF-8 code point at s (valid UTF-8 assumed: jansson and libyaml
 * checked it); *len gets its byte length. */
static unsigned decode_utf8(const unsigned char *s, size_t *len)
{
    if (s[0] < 0x80) {
        *len = 1;
        return s[0];
    }
    if ((s[0] & 0xe0) == 0xc0 && s[1]) {
        *len = 2;
        return ((s[0] & 0x1fu) << 6) | (s[1] & 0x3fu);
    }
    if ((s[0] & 0xf0) == 0xe0 && s[1] && s[2]) {
        *len = 3;
        return ((s[0] & 0x0fu) << 12) | ((s[1] & 0x3fu) << 6) | (s[2] & 0x3fu);
    }
    if ((s[0] & 0xf8) == 0xf0 && s[1] && s[2] && s[3]) {
        *len = 4;
        return ((s[0] & 0x07u) << 18) | ((s[1] & 0x3fu) << 12) | ((s[2] & 0x3fu) << 6) | (s[3] & 0x3fu);
    }
    *len = 1;
    return s[0];
}

static size_t encode_utf8(unsigned c, char *out)
{
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (char)(0xc0 | (c >> 6));
        out[1] = (char)(0x80 | (c & 0x3f));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (char)(0xe0 | (c >> 12));
        out[1] = (char)(0x80 | ((c >> 6) & 0x3f));
        out[2] = (char)(0x80 | (c & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (c >> 18));
    out[1] = (char)(0x80 | ((c >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((c >> 6) & 0x3f));
    out[3] = (char)(0x80 | (c & 0x3f));
    return 4;
}

static bool is_py_space(unsigned c)
{
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
           c == 0x3000;
}

/* Length of the whitespace code point at s, 0 if s does not start with one. */
static size_t space_at(const char *s)
{
    size_t len;
    if (!*s)
        return 0;
    return is_py_space(decode_utf8((const unsigned char *)s, &len)) ? len : 0;
}

/* Length of s without its trailing whitespace (Python's rstrip()). */
static size_t rstrip_len(const char *s, size_t n)
{
    size_t keep = 0;
    for (size_t i = 0; i < n;) {
        size_t sp = space_at(s + i);
        if (sp) {
            i += sp;
        } else {
            size_t len;
            decode_utf8((const unsigned char *)s + i, &len);
            i += len;
            keep = i;
        }
    }
    return keep;
}

/* Python's strip(), newly allocated. */
static char *strip_dup(const char *s)
{
    size_t sp;
    while ((sp = space_at(s)))
        s += sp;
    size_t n = rstrip_len(s, strlen(s));
    char *out = upc_malloc(n + 1);
    memcpy(out, s, n);
    out[n] = 0;
    return out;
}

/* ---- loading ---- */

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

typedef struct {
    const char *path;
    size_t line;
    icl_type type;
    json_t *obj;    /* the line being read, released before failing */
} load_ctx;

/* Fails with "PATH:LINE: message", releasing the parsed line first so that a
 * failure leaks nothing. */
static void item_fail(const load_ctx *c, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void item_fail(const load_ctx *c, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_decref(c->obj);
    upc_fail(EX_DATAERR, "%s:%zu: %s", c->path, c->line, msg);
}

static json_t *need_field(const load_ctx *c, json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        item_fail(c, "missing field \"%s\" (%s item)", key, icl_type_name(c->type));
    return v;
}

/* A string field, stripped as Foundry's strip_data does. */
static char *get_string(const load_ctx *c, json_t *obj, const char *key)
{
    json_t *v = need_field(c, obj, key);
    if (!json_is_string(v))
        item_fail(c, "field \"%s\": expected a string, got %s", key, json_kind(v));
    return strip_dup(json_string_value(v));
}

/* A list of strings, kept as written (strip_data leaves lists alone). */
static char **get_string_list(const load_ctx *c, json_t *v, const char *key, size_t *n, bool need_nonempty)
{
    if (!json_is_array(v))
        item_fail(c, "field \"%s\": expected a list of strings, got %s", key, json_kind(v));
    size_t len = json_array_size(v);
    if (len == 0 && need_nonempty)
        item_fail(c, "field \"%s\": empty list, expected at least one choice", key);
    for (size_t i = 0; i < len; i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_string(e))
            item_fail(c, "field \"%s\"[%zu]: expected a string, got %s", key, i, json_kind(e));
    }
    char **out = upc_calloc(len ? len : 1, sizeof *out);
    for (size_t i = 0; i < len; i++)
        out[i] = upc_strdup(json_string_value(json_array_get(v, i)));
    *n = len;
    return out;
}

static int get_gold(const load_ctx *c, json_t *obj, size_t n_choices, const char *choices_key)
{
    json_t *v = need_field(c, obj, "gold");
    if (!json_is_integer(v))
        item_fail(c, "field \"gold\": expected an integer, got %s", json_kind(v));
    json_int_t g = json_integer_value(v);
    if (g < 0 || (uint64_t)g >= n_choices)
        item_fail(c, "field \"gold\": %lld is out of range for %zu %s", (long long)g, n_choices,
                  strcmp(choices_key, "choices") == 0 ? "choices" : "context options");
    return (int)g;
}

static void parse_item(const load_ctx *c, json_t *obj, icl_item *it)
{
    memset(it, 0, sizeof *it);
    it->line = c->line;
    switch (c->type) {
    case ICL_LANGUAGE_MODELING:
        it->context = get_string(c, obj, "context");
        it->continuation = get_string(c, obj, "continuation");
        break;
    case ICL_MULTIPLE_CHOICE:
        it->context = get_string(c, obj, "query");
        it->choices = get_string_list(c, need_field(c, obj, "choices"), "choices", &it->n_choices, true);
        it->gold = get_gold(c, obj, it->n_choices, "choices");
        break;
    case ICL_SCHEMA:
        it->choices = get_string_list(c, need_field(c, obj, "context_options"), "context_options",
                                      &it->n_choices, true);
        it->continuation = get_string(c, obj, "continuation");
        it->gold = get_gold(c, obj, it->n_choices, "context_options");
        break;
    case ICL_GENERATION: {
        it->context = get_string(c, obj, "context");
        it->answer = get_string(c, obj, "answer");
        json_t *al = json_object_get(obj, "aliases");   /* examples.get('aliases', []) */
        if (al && !json_is_null(al))
            it->aliases = get_string_list(c, al, "aliases", &it->n_aliases, false);
        break;
    }
    }
}

static bool blank_line(const char *s)
{
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n')
            return false;
    return true;
}

void icl_dataset_load(icl_dataset *d, const char *path, icl_type type)
{
    memset(d, 0, sizeof *d);
    FILE *fp = fopen(path, "rb");
    if (!fp)
        upc_fail(EX_NOINPUT, "%s: cannot open: %s", path, strerror(errno));
    d->type = type;
    d->path = upc_strdup(path);
    size_t cap = 0;
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t got;
    load_ctx c = {path, 0, type, NULL};
    while ((got = getline(&line, &line_cap, fp)) >= 0) {
        c.line++;
        if ((size_t)got != strlen(line))
            upc_fail(EX_DATAERR, "%s:%zu: NUL byte in line, expected one JSON object", path, c.line);
        if (blank_line(line))
            continue;
        json_error_t err;
        json_t *obj = json_loadb(line, (size_t)got, 0, &err);
        if (!obj)
            upc_fail(EX_DATAERR, "%s:%zu: malformed JSON at byte %d of the line: %s", path, c.line, err.position,
                     err.text);
        c.obj = obj;
        if (!json_is_object(obj))
            item_fail(&c, "expected a JSON object, got %s", json_kind(obj));
        upc_grow((void **)&d->items, &cap, d->n + 1, sizeof *d->items);
        parse_item(&c, obj, &d->items[d->n]);
        d->n++;
        json_decref(obj);
    }
    if (ferror(fp))
        upc_fail(EX_IOERR, "%s: read failed: %s", path, strerror(errno));
    free(line);
    fclose(fp);
    if (d->n == 0)
        upc_fail(EX_DATAERR, "%s: empty file, expected JSON lines of %s items", path, icl_type_name(type));
}

static void free_strings(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void icl_dataset_free(icl_dataset *d)
{
    for (size_t i = 0; i < d->n; i++) {
        icl_item *it = &d->items[i];
        free(it->context);
        free(it->continuation);
        free_strings(it->choices, it->n_choices);
        free(it->answer);
        free_strings(it->aliases, it->n_aliases);
    }
    free(d->items);
    free(d->path);
    memset(d, 0, sizeof *d);
}

/* ---- few-shot sampling ---- */

/* Uniform in [0, n) without modulo bias. */
static size_t draw_below(uint64_t *state, size_t n)
{
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t r;
    do
        r = upc_splitmix64(state);
    while (r >= limit);
    return (size_t)(r % n);
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return (x > y) - (x < y);
}

/* utils.py get_fewshot_sample_idxs: k = min(n - 1, num_fewshot) drawn without
 * replacement from range(n); if the item itself was drawn it is removed and
 * (unless that already leaves n - 1) replaced by a uniform draw that is
 * neither the item nor already chosen. Returns the count; out[] ascending. */
static size_t fewshot_indices(size_t n, size_t want, size_t item, uint64_t seed, size_t *out)
{
    size_t k = want < n - 1 ? want : n - 1;
    if (k == 0)
        return 0;
    uint64_t state = upc_hash64(&item, sizeof item, seed);
    /* Partial Fisher-Yates over a lazily materialised permutation: swaps are
     * recorded in out-of-line pairs only for touched positions, so cost is
     * O(k^2) time and O(k) memory whatever n is. */
    size_t *pos = upc_malloc(2 * k * sizeof *pos);   /* pos[2j]=index, pos[2j+1]=value */
    size_t n_pos = 0;
    for (size_t i = 0; i < k; i++) {
        size_t j = i + draw_below(&state, n - i);
        size_t vi = i, vj = j;
        size_t *pi = NULL, *pj = NULL;
        for (size_t t = 0; t < n_pos; t++) {
            if (pos[2 * t] == i)
                pi = &pos[2 * t + 1];
            if (pos[2 * t] == j)
                pj = &pos[2 * t + 1];
        }
        if (pi)
            vi = *pi;
        if (pj)
            vj = *pj;
        out[i] = vj;
        /* position j now holds what position i held */
        if (j != i) {
            if (pj)
                *pj = vi;
            else {
                pos[2 * n_pos] = j;
                pos[2 * n_pos + 1] = vi;
                n_pos++;
            }
        }
    }
    free(pos);
    size_t m = k;
    for (size_t i = 0; i < m; i++)
        if (out[i] == item) {
            out[i] = out[--m];
            if (m >= n - 1)
                break;
            for (;;) {
                size_t r = draw_below(&state, n);
                bool taken = r == item;
                for (size_t t = 0; t < m && !taken; t++)
                    taken = out[t] == r;
                if (!taken) {
                    out[m++] = r;
                    break;
                }
            }
            break;
        }
    qsort(out, m, sizeof *out, cmp_size);
    return m;
}

/* ---- prompt assembly ---- */

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
    upc_grow((void **)&b->p, &b->cap, b->n + n + 1, 1);
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

static char *dup_n(const char *s, size_t n)
{
    char *out = upc_malloc(n + 1);
    memcpy(out, s, n);
    out[n] = 0;
    return out;
}

/* The answer a few-shot example shows (get_answer_from_example with
 * in_context=True: no prefix space). */
static const char *example_answer(icl_type type, const icl_item *it)
{
    switch (type) {
    case ICL_LANGUAGE_MODELING: return it->continuation;
    case ICL_MULTIPLE_CHOICE: return it->choices[it->gold];
    case ICL_SCHEMA: return it->continuation;
    case ICL_GENERATION: return it->answer;
    }
    return "";
}

/* get_answer_from_example / the choice loop in tokenize_example: a prefix
 * space unless the text has one or the tokenizer does not want it. */
static char *scored_text(const char *s, const icl_prompt_opts *o)
{
    if (o->no_prefix_space || s[0] == ' ') /* Python's startswith(' '): a plain space only */
        return upc_strdup(s);
    size_t n = strlen(s);
    char *out = upc_malloc(n + 2);
    out[0] = ' ';
    memcpy(out + 1, s, n + 1);
    return out;
}

void icl_build_query(const icl_dataset *d, size_t item, const icl_prompt_opts *o, icl_query *q)
{
    memset(q, 0, sizeof *q);
    if (item >= d->n)
        upc_fail(EX_SOFTWARE, "icl_build_query: item %zu out of range for %zu items", item, d->n);
    const char *ps = o->prompt_string ? o->prompt_string : ICL_DEFAULT_PROMPT_STRING;
    const char *cd = o->continuation_delimiter ? o->continuation_delimiter : ICL_DEFAULT_CONTINUATION_DELIMITER;
    const char *ed = o->example_delimiter ? o->example_delimiter : ICL_DEFAULT_EXAMPLE_DELIMITER;
    const char *pre = o->prelimiter ? o->prelimiter : ICL_DEFAULT_PRELIMITER;
    const icl_item *it = &d->items[item];

    /* _generate_few_shot_prompt: the prompt string, then each example built
     * by construct_context(add_answer=True) against the text so far. */
    sbuf pf = {0};
    sb_str(&pf, ps);
    size_t want = o->num_fewshot > 0 ? (size_t)o->num_fewshot : 0;
    if (want > 0 && d->n > 1) {
        q->fewshot = upc_malloc((want < d->n - 1 ? want : d->n - 1) * sizeof *q->fewshot);
        q->n_fewshot = fewshot_indices(d->n, want, item, o->seed, q->fewshot);
    }
    for (size_t f = 0; f < q->n_fewshot; f++) {
        const icl_item *ex = &d->items[q->fewshot[f]];
        bool delim = pf.n > 0;
        if (d->type == ICL_SCHEMA) {
            /* Schema construct_context: delimiter first, then the prelimiter
             * is put in front of both. */
            sb_str(&pf, pre);
            if (delim)
                sb_str(&pf, ed);
            sb_str(&pf, ex->choices[ex->gold]);
        } else {
            if (delim)
                sb_str(&pf, ed);
            sb_str(&pf, pre);
            sb_str(&pf, ex->context);
        }
        sb_str(&pf, cd);
        sb_str(&pf, example_answer(d->type, ex));
    }
    q->preamble_len = pf.n;
    q->gold = d->type == ICL_MULTIPLE_CHOICE || d->type == ICL_SCHEMA ? it->gold : 0;

    if (d->type == ICL_SCHEMA) {
        /* _construct_multiple_contexts; strip_data rstrips the delimiter. */
        q->n = it->n_choices;
        q->cands = upc_calloc(q->n, sizeof *q->cands);
        size_t cd_keep = rstrip_len(cd, strlen(cd));
        for (size_t i = 0; i < q->n; i++) {
            sbuf c = {0};
            sb_add(&c, pf.p, pf.n);
            sb_str(&c, pre);
            if (pf.n > 0) {
                sb_str(&c, ed);
                sb_str(&c, it->choices[i]);
                sb_add(&c, cd, cd_keep);
            } else {
                sb_str(&c, it->choices[i]);
            }
            q->cands[i].context = c.p ? c.p : upc_strdup("");
            q->cands[i].continuation = scored_text(it->continuation, o);
        }
        free(pf.p);
        return;
    }

    /* construct_context(add_answer=False), then tokenize_example rstrips
     * this example's part (strip_data), not the preamble. */
    sbuf own = {0};
    if (pf.n > 0)
        sb_str(&own, ed);
    sb_str(&own, pre);
    sb_str(&own, it->context);
    sb_str(&own, cd);
    sbuf ctx = {0};
    sb_add(&ctx, pf.p ? pf.p : "", pf.n);
    sb_add(&ctx, own.p, rstrip_len(own.p, own.n));
    free(own.p);
    free(pf.p);

    switch (d->type) {
    case ICL_LANGUAGE_MODELING:
        q->n = 1;
        q->cands = upc_calloc(1, sizeof *q->cands);
        q->cands[0].context = ctx.p;
        q->cands[0].continuation = scored_text(it->continuation, o);
        break;
    case ICL_MULTIPLE_CHOICE:
        q->n = it->n_choices;
        q->cands = upc_calloc(q->n, sizeof *q->cands);
        for (size_t i = 0; i < q->n; i++) {
            q->cands[i].context = i == 0 ? ctx.p : dup_n(ctx.p, ctx.n);
            q->cands[i].continuation = scored_text(it->choices[i], o);
        }
        break;
    case ICL_GENERATION:
        q->n = 1;
        q->cands = upc_calloc(1, sizeof *q->cands);
        q->cands[0].context = ctx.p;
        q->cands[0].continuation = upc_strdup("");
        /* set([answer] + aliases): duplicates dropped; kept in file order. */
        q->answers = upc_calloc(it->n_aliases + 1, sizeof *q->answers);
        q->answers[q->n_answers++] = upc_strdup(it->answer);
        for (size_t i = 0; i < it->n_aliases; i++) {
            bool dup = false;
            for (size_t j = 0; j < q->n_answers && !dup; j++)
                dup = strcmp(q->answers[j], it->aliases[i]) == 0;
            if (!dup)
                q->answers[q->n_answers++] = upc_strdup(it->aliases[i]);
        }
        break;
    case ICL_SCHEMA:
        break;
    }
}

void icl_query_free(icl_query *q)
{
    for (size_t i = 0; i < q->n; i++) {
        free(q->cands[i].context);
        free(q->cands[i].continuation);
    }
    free(q->cands);
    free_strings(q->answers, q->n_answers);
    free(q->fewshot);
    memset(q, 0, sizeof *q);
}

/* ---- answer normalisation (metrics/nlp.py normalize_answer) ---- */

/* Python's str.lower() for the scripts covered; others unchanged. */
static unsigned lower_cp(unsigned c)
{
    if (c >= 'A' && c <= 'Z')
        return c + 32;
    if ((c >= 0xc0 && c <= 0xde && c != 0xd7))
        return c + 32;
    if (c >= 0x100 && c <= 0x17f && c != 0x130 && c != 0x138 && c != 0x149) {
        /* Latin Extended-A: pairs, even = upper, except the 0x139..0x148 and
         * 0x179..0x17e runs where odd = upper. */
        bool odd_upper = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e);
        if (c == 0x178)
            return 0xff;
        if (c == 0x17f)
            return c;
        return odd_upper ? (c & 1 ? c + 1 : c) : (c & 1 ? c : c + 1);
    }
    if (c == 0x386)
        return 0x3ac;
    if (c >= 0x388 && c <= 0x38a)
        return c + 37;
    if (c == 0x38c)
        return 0x3cc;
    if (c == 0x38e || c == 0x38f)
        return c + 63;
    if ((c >= 0x391 && c <= 0x3a1) || (c >= 0x3a3 && c <= 0x3ab))
        return c + 32;
    if (c >= 0x400 && c <= 0x40f)
        return c + 80;
    if (c >= 0x410 && c <= 0x42f)
        return c + 32;
    return c;
}

static bool is_punct(unsigned c)
{
    /* string.punctuation plus ‘ ’ ´ ` */
    return (c < 0x80 && c > 0x20 && c != 0x7f && !(c >= '0' && c <= '9') && !(c >= 'a' && c <= 'z') &&
            !(c >= 'A' && c <= 'Z')) ||
           c == 0x2018 || c == 0x2019 || c == 0xb4;
}

/* Python's \w for these purposes: ASCII alphanumerics and '_', and any
 * non-ASCII code point that is not whitespace. */
static bool is_word(unsigned c)
{
    if (c < 0x80)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    return !is_py_space(c);
}

char *icl_normalize_answer(const char *s)
{
    /* Decode to code points, applying replace_underscore, lower, handle_punc. */
    size_t len = strlen(s), n = 0;
    unsigned *cp = upc_malloc((len + 1) * sizeof *cp);
    for (size_t i = 0; i < len;) {
        size_t l;
        unsigned c = decode_utf8((const unsigned char *)s + i, &l);
        i += l;
        if (c == '_')
            c = ' ';
        c = lower_cp(c);
        if (is_punct(c))
            c = ' ';
        cp[n++] = c;
    }
    /* remove_articles: re.sub(r'\b(a|an|the)\b', ' ') */
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && is_word(cp[i - 1]))
            continue;
        static const char *const art[] = {"the", "an", "a"};
        for (int a = 0; a < 3; a++) {
            size_t al = strlen(art[a]), j = 0;
            while (j < al && i + j < n && cp[i + j] == (unsigned char)art[a][j])
                j++;
            if (j == al && (i + al == n || !is_word(cp[i + al]))) {
                cp[i] = ' ';
                for (size_t t = 1; t < al; t++)
                    cp[i + t] = 0;   /* deleted */
                i += al - 1;
                break;
            }
        }
    }
    /* white_space_fix: ' '.join(text.split()), then strip() */
    char *out = upc_malloc(4 * n + 1);
    size_t o = 0;
    bool pending = false;
    for (size_t i = 0; i < n; i++) {
        if (cp[i] == 0)
            continue;
        if (is_py_space(cp[i])) {
            pending = o > 0;
            continue;
        }
        if (pending)
            out[o++] = ' ';
        pending = false;
        o += encode_utf8(cp[i], out + o);
    }
    out[o] = 0;
    free(cp);
    return out;
}

bool icl_answer_matches(const char *generated, char *const *answers, size_t n)
{
    char *g = icl_normalize_answer(generated);
    bool ok = false;
    for (size_t i = 0; i < n && !ok; i++) {
        char *a = icl_normalize_answer(answers[i]);
        ok = strncmp(g, a, strlen(a)) == 0;
        free(a);
    }
    free(g);
    return ok;
}

char *icl_cut_generation(const char *generated, char *const *stop, size_t n_stop)
{
    size_t cut = strlen(generated);
    for (size_t i = 0; i < n_stop; i++) {
        if (!stop[i][0])
            return upc_strdup("");   /* an empty alternative matches at 0 */
        const char *p = strstr(generated, stop[i]);
        if (p && (size_t)(p - generated) < cut)
            cut = (size_t)(p - generated);
    }
    return dup_n(generated, cut);
}
