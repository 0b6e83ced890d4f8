/* task_builder.c: LAMBADA- and HellaSwag-style tasks from held-out documents
 * (rules in task_builder.h). */
#include "task_builder.h"

#include "util.h"

#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define HS_MIN_SIDE_WORDS 4

void tb_options_default(tb_options *o)
{
    o->seed = 1234;
    o->max_items = 500;
    o->min_context_words = 8;
    o->choices = 4;
}

/* ---- UTF-8 ---- */

/* Strict UTF-8 (RFC 3629): no overlong forms, surrogates or values above
 * U+10FFFF. */
static bool valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned lo = 0x80, hi = 0xBF;   /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF)
            len = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else
            return false;
        if (n - i < len || s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
        i += len;
    }
    return true;
}

/* Decode the code point starting at s[i] of valid UTF-8; *len gets its size. */
static uint32_t decode_at(const unsigned char *s, size_t i, size_t *len)
{
    unsigned c = s[i];
    if (c < 0x80) {
        *len = 1;
        return c;
    }
    size_t l = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    uint32_t cp = c & (0x7F >> l);
    for (size_t k = 1; k < l; k++)
        cp = cp << 6 | (s[i + k] & 0x3F);
    *len = l;
    return cp;
}

/* Start of the code point that ends just before s[i] (i > 0). */
static size_t prev_start(const unsigned char *s, size_t i)
{
    i--;
    while (i > 0 && (s[i] & 0xC0) == 0x80)
        i--;
    return i;
}

static bool is_space_byte(unsigned c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* Letters and digits. Non-ASCII letters are approximated without tables:
 * everything from U+00C0 on counts except the blocks of punctuation, symbols
 * and emoji (and the Latin-1 signs × and ÷), which is enough to find where a
 * word ends without depending on the C library's locale. */
static bool is_word_cp(uint32_t cp)
{
    if (cp < 0x80)
        return (cp >= '0' && cp <= '9') || (cp >= 'A' && cp <= 'Z') || (cp >= 'a' && cp <= 'z');
    if (cp < 0xC0)
        return cp == 0xAA || cp == 0xB5 || cp == 0xBA;   /* ª µ º */
    if (cp == 0xD7 || cp == 0xF7)
        return false;
    if (cp >= 0x2000 && cp <= 0x2BFF)   /* punctuation, currency, arrows, math, shapes, dingbats */
        return false;
    if (cp >= 0x2E00 && cp <= 0x2E7F)   /* supplemental punctuation */
        return false;
    if (cp >= 0x3000 && cp <= 0x303F)   /* CJK symbols and punctuation */
        return false;
    if ((cp >= 0xFE10 && cp <= 0xFE1F) || (cp >= 0xFE30 && cp <= 0xFE6F) || cp == 0xFEFF)
        return false;
    if ((cp >= 0xFF00 && cp <= 0xFF0F) || (cp >= 0xFF1A && cp <= 0xFF20) ||
        (cp >= 0xFF3B && cp <= 0xFF40) || (cp >= 0xFF5B && cp <= 0xFF65))
        return false;                   /* fullwidth punctuation */
    if (cp >= 0x1F000 && cp <= 0x1FAFF) /* emoji and pictographs */
        return false;
    return true;
}

/* ---- seeded randomness ---- */

enum { TAG_SPLIT = 1, TAG_ORDER_LAMBADA, TAG_ORDER_HELLASWAG, TAG_DISTRACT, TAG_SHUFFLE };

/* A generator state for (seed, tag, index): independent of the order in which
 * documents are visited. */
static uint64_t stream(uint64_t seed, uint64_t tag, uint64_t index)
{
    uint64_t s = seed ^ (tag * 0xD6E8FEB86659FD93ULL);
    s = upc_splitmix64(&s) ^ index;
    upc_splitmix64(&s);
    return s;
}

/* Uniform in [0, n) (n > 0) by multiply-high: same value on every platform. */
static size_t below(uint64_t *rng, size_t n)
{
    return (size_t)(((unsigned __int128)upc_splitmix64(rng) * n) >> 64);
}

/* ---- per-document analysis ---- */

typedef struct {
    size_t begin, end;          /* trimmed text [begin, end) */
    bool lambada;               /* eligible as a LAMBADA item */
    size_t ctx_end;             /* LAMBADA context [begin, ctx_end) */
    size_t word_begin, word_end;
    bool hellaswag;             /* long enough for a HellaSwag cut */
    size_t cut_end;             /* HellaSwag query [begin, cut_end) */
    size_t ending_begin;        /* HellaSwag ending [ending_begin, end) */
} doc_info;

static size_t count_words(const unsigned char *s, size_t b, size_t e)
{
    size_t n = 0;
    bool in = false;
    for (size_t i = b; i < e; i++) {
        bool sp = is_space_byte(s[i]);
        if (!sp && !in)
            n++;
        in = !sp;
    }
    return n;
}

static void analyse_lambada(const unsigned char *s, doc_info *d, size_t min_context_words)
{
    size_t p = d->end, len;
    /* Drop trailing punctuation, symbols and whitespace. */
    while (p > d->begin) {
        size_t q = prev_start(s, p);
        if (is_word_cp(decode_at(s, q, &len)))
            break;
        p = q;
    }
    size_t we = p;
    while (p > d->begin) {
        size_t q = prev_start(s, p);
        if (!is_word_cp(decode_at(s, q, &len)))
            break;
        p = q;
    }
    size_t ws = p;
    if (ws == we || ws == d->begin || !is_space_byte(s[ws - 1]))
        return;
    size_t ce = ws;
    while (ce > d->begin && is_space_byte(s[ce - 1]))
        ce--;
    if (ce == d->begin || count_words(s, d->begin, ce) < min_context_words)
        return;
    d->lambada = true;
    d->ctx_end = ce;
    d->word_begin = ws;
    d->word_end = we;
}

static void analyse_hellaswag(const unsigned char *s, doc_info *d, uint64_t seed, size_t index)
{
    size_t nw = count_words(s, d->begin, d->end);
    if (nw < 2 * HS_MIN_SIDE_WORDS)
        return;
    size_t lo = (4 * nw + 9) / 10, hi = 7 * nw / 10;   /* ceil(0.4 n), floor(0.7 n) */
    if (lo < HS_MIN_SIDE_WORDS)
        lo = HS_MIN_SIDE_WORDS;
    if (hi > nw - HS_MIN_SIDE_WORDS)
        hi = nw - HS_MIN_SIDE_WORDS;
    if (hi < lo)
        hi = lo;
    uint64_t rng = stream(seed, TAG_SPLIT, index);
    size_t k = lo + below(&rng, hi - lo + 1);
    /* Find the end of word k and the start of word k + 1. */
    size_t w = 0, i = d->begin;
    bool in = false;
    for (; i < d->end; i++) {
        bool sp = is_space_byte(s[i]);
        if (!sp && !in) {
            if (w == k) {
                d->ending_begin = i;
                break;
            }
            w++;
        }
        if (sp && in && w == k)
            d->cut_end = i;
        in = !sp;
    }
    d->hellaswag = true;
}

/* ---- output ---- */

typedef struct {
    char *buf;
    size_t len, cap;
} strbuf;

static void sb_add(strbuf *b, const void *p, size_t n)
{
    upc_grow((void **)&b->buf, &b->cap, b->len + n + 1, 1);
    memcpy(b->buf + b->len, p, n);
    b->len += n;
    b->buf[b->len] = 0;
}

/* A JSON string of " " + s[0, n) (valid UTF-8), or of s itself. */
static json_t *json_text(const unsigned char *s, size_t n, bool space, strbuf *tmp)
{
    tmp->len = 0;
    if (space)
        sb_add(tmp, " ", 1);
    sb_add(tmp, s, n);
    json_t *j = json_stringn(tmp->buf, tmp->len);
    if (!j)
        upc_fail(EX_SOFTWARE, "task builder: could not make a JSON string");
    return j;
}

static void append_json_line(strbuf *out, json_t *obj)
{
    char *line = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!line)
        upc_fail(EX_SOFTWARE, "task builder: could not encode JSON");
    sb_add(out, line, strlen(line));
    sb_add(out, "\n", 1);
    free(line);
    json_decref(obj);
}

static void set_new(json_t *obj, const char *key, json_t *val)
{
    if (!val || json_object_set_new(obj, key, val) != 0)
        upc_fail(EX_SOFTWARE, "task builder: could not build JSON object");
}

/* Eligible document indices in a seeded order (Fisher-Yates). */
static size_t *seeded_order(const doc_info *info, size_t n, bool lambada, uint64_t seed, size_t *count)
{
    size_t *idx = upc_malloc(n * sizeof *idx), m = 0;
    for (size_t i = 0; i < n; i++)
        if (lambada ? info[i].lambada : info[i].hellaswag)
            idx[m++] = i;
    uint64_t rng = stream(seed, lambada ? TAG_ORDER_LAMBADA : TAG_ORDER_HELLASWAG, 0);
    for (size_t i = m; i > 1; i--) {
        size_t j = below(&rng, i);
        size_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
    *count = m;
    return idx;
}

static size_t build_lambada(const tb_doc *docs, const doc_info *info, size_t n, const tb_options *o,
                            strbuf *out)
{
    size_t m, items = 0;
    size_t *order = seeded_order(info, n, true, o->seed, &m);
    strbuf tmp = {0};
    for (size_t k = 0; k < m && (o->max_items == 0 || items < o->max_items); k++) {
        const doc_info *d = &info[order[k]];
        const unsigned char *s = (const unsigned char *)docs[order[k]].text;
        json_t *obj = json_object();
        set_new(obj, "context", json_text(s + d->begin, d->ctx_end - d->begin, false, &tmp));
        set_new(obj, "continuation", json_text(s + d->word_begin, d->word_end - d->word_begin, true, &tmp));
        append_json_line(out, obj);
        items++;
    }
    free(tmp.buf);
    free(order);
    return items;
}

static size_t ending_len(const doc_info *d)
{
    return d->end - d->ending_begin;
}

/* Order document indices by ending length, then index (a total order, so
 * qsort's result does not depend on its algorithm). */
static int cmp_ending_len(const void *a, const void *b, void *arg)
{
    const doc_info *info = arg;
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    size_t lx = ending_len(&info[x]), ly = ending_len(&info[y]);
    if (lx != ly)
        return lx < ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

static bool same_ending(const tb_doc *docs, const doc_info *info, size_t a, size_t b)
{
    size_t la = ending_len(&info[a]);
    return la == ending_len(&info[b]) &&
           memcmp(docs[a].text + info[a].ending_begin, docs[b].text + info[b].ending_begin, la) == 0;
}

static size_t build_hellaswag(const tb_doc *docs, const doc_info *info, size_t n, const tb_options *o,
                              strbuf *out)
{
    size_t m, items = 0;
    size_t *order = seeded_order(info, n, false, o->seed, &m);
    /* by_len: the same documents sorted by ending length; pos: where each is. */
    size_t *by_len = upc_malloc((m ? m : 1) * sizeof *by_len);
    memcpy(by_len, order, m * sizeof *by_len);
    qsort_r(by_len, m, sizeof *by_len, cmp_ending_len, (void *)info);
    size_t *pos = upc_malloc((n ? n : 1) * sizeof *pos);
    for (size_t i = 0; i < m; i++)
        pos[by_len[i]] = i;

    size_t want = (size_t)o->choices - 1, window = 3 * want;
    size_t *cand = upc_malloc(window * sizeof *cand);
    size_t *choice = upc_malloc((size_t)o->choices * sizeof *choice);
    strbuf tmp = {0};
    for (size_t k = 0; k < m && (o->max_items == 0 || items < o->max_items); k++) {
        size_t doc = order[k], p = pos[doc], gl = ending_len(&info[doc]);
        /* Walk outwards from the gold ending's place in length order. */
        size_t nc = 0, left = p, right = p + 1;
        while (nc < window && (left > 0 || right < m)) {
            size_t c;
            if (left == 0)
                c = by_len[right++];
            else if (right >= m)
                c = by_len[--left];
            else {
                size_t dl = gl - ending_len(&info[by_len[left - 1]]);
                size_t dr = ending_len(&info[by_len[right]]) - gl;
                c = dl <= dr ? by_len[--left] : by_len[right++];
            }
            bool usable = c != doc && !same_ending(docs, info, c, doc);
            for (size_t j = 0; usable && j < nc; j++)
                usable = !same_ending(docs, info, c, cand[j]);
            if (usable)
                cand[nc++] = c;
        }
        if (nc < want)
            continue;
        uint64_t rng = stream(o->seed, TAG_DISTRACT, doc);
        choice[0] = doc;
        for (size_t j = 0; j < want; j++) {   /* partial Fisher-Yates over cand */
            size_t r = j + below(&rng, nc - j);
            size_t t = cand[j];
            cand[j] = cand[r];
            cand[r] = t;
            choice[j + 1] = cand[j];
        }
        rng = stream(o->seed, TAG_SHUFFLE, doc);
        for (size_t i = (size_t)o->choices; i > 1; i--) {
            size_t j = below(&rng, i);
            size_t t = choice[i - 1];
            choice[i - 1] = choice[j];
            choice[j] = t;
        }
        size_t gold = 0;
        json_t *arr = json_array();
        for (size_t i = 0; i < (size_t)o->choices; i++) {
            const doc_info *c = &info[choice[i]];
            if (choice[i] == doc)
                gold = i;
            if (json_array_append_new(arr, json_text((const unsigned char *)docs[choice[i]].text + c->ending_begin,
                                                     ending_len(c), true, &tmp)) != 0)
                upc_fail(EX_SOFTWARE, "task builder: could not build JSON array");
        }
        const doc_info *d = &info[doc];
        json_t *obj = json_object();
        set_new(obj, "query", json_text((const unsigned char *)docs[doc].text + d->begin, d->cut_end - d->begin,
                                        false, &tmp));
        set_new(obj, "choices", arr);
        set_new(obj, "gold", json_integer((json_int_t)gold));
        append_json_line(out, obj);
        items++;
    }
    free(tmp.buf);
    free(choice);
    free(cand);
    free(pos);
    free(by_len);
    free(order);
    return items;
}

static void yaml_files(const tb_options *o, strbuf *tasks, strbuf *gauntlet)
{
    char text[2048];
    int n = snprintf(text, sizeof text,
                     "# Made by upcyc's task builder (seed %llu) from held-out documents: not the\n"
                     "# published LAMBADA and HellaSwag, so scores compare across upcyc models only.\n"
                     "icl_tasks:\n"
                     "-\n"
                     "  label: lambada_heldout\n"
                     "  dataset_uri: lambada.jsonl\n"
                     "  num_fewshot: [0, 3]\n"
                     "  icl_task_type: language_modeling\n"
                     "  prompt_string: \"\"\n"
                     "  example_delimiter: \"\\n\"\n"
                     "  continuation_delimiter: \" \"\n"
                     "-\n"
                     "  label: hellaswag_heldout\n"
                     "  dataset_uri: hellaswag.jsonl\n"
                     "  num_fewshot: [0]\n"
                     "  icl_task_type: multiple_choice\n"
                     "  prompt_string: \"\"\n"
                     "  example_delimiter: \"\\n\"\n"
                     "  continuation_delimiter: \" \"\n",
                     (unsigned long long)o->seed);
    sb_add(tasks, text, (size_t)n);
    n = snprintf(text, sizeof text,
                 "# Eval Gauntlet over the tasks in icl_tasks.yaml (upcyc's task builder).\n"
                 "eval_gauntlet:\n"
                 "  weighting: EQUAL\n"
                 "  subtract_random_baseline: true\n"
                 "  rescale_accuracy: true\n"
                 "  averages:\n"
                 "    core_average:\n"
                 "    - language_understanding\n"
                 "  categories:\n"
                 "  - name: language_understanding\n"
                 "    benchmarks:\n"
                 "    - name: lambada_heldout\n"
                 "      num_fewshot: 0\n"
                 "      random_baseline: 0\n"
                 "    - name: hellaswag_heldout\n"
                 "      num_fewshot: 0\n"
                 "      random_baseline: %.17g\n",
                 1.0 / o->choices);
    sb_add(gauntlet, text, (size_t)n);
}

void tb_build(const tb_doc *docs, size_t n, const tb_options *o, const char *out_dir, tb_stats *st)
{
    if (o->choices < 2)
        upc_fail(EX_USAGE, "task builder: choices must be at least 2, got %d", o->choices);
    struct stat sb;
    if (stat(out_dir, &sb) != 0)
        upc_fail(EX_CANTCREAT, "%s: cannot write tasks there: %s", out_dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        upc_fail(EX_CANTCREAT, "%s: not a directory, expected the directory for the task files", out_dir);

    tb_stats s = {0};
    doc_info *info = upc_calloc(n ? n : 1, sizeof *info);
    for (size_t i = 0; i < n; i++) {
        const unsigned char *t = (const unsigned char *)docs[i].text;
        doc_info *d = &info[i];
        if (!valid_utf8(t, docs[i].len)) {
            s.invalid_utf8++;
            s.skipped++;
            continue;
        }
        d->begin = 0;
        d->end = docs[i].len;
        while (d->begin < d->end && is_space_byte(t[d->begin]))
            d->begin++;
        while (d->end > d->begin && is_space_byte(t[d->end - 1]))
            d->end--;
        analyse_lambada(t, d, o->min_context_words);
        analyse_hellaswag(t, d, o->seed, i);
        s.lambada_eligible += d->lambada;
        s.hellaswag_eligible += d->hellaswag;
        if (!d->lambada && !d->hellaswag)
            s.skipped++;
    }

    strbuf text[4] = {{0}};
    const char *names[4] = {"lambada.jsonl", "hellaswag.jsonl", "icl_tasks.yaml", "eval_gauntlet.yaml"};
    s.lambada = build_lambada(docs, info, n, o, &text[0]);
    s.hellaswag = build_hellaswag(docs, info, n, o, &text[1]);
    yaml_files(o, &text[2], &text[3]);
    free(info);

    /* Write all four under temporary names and flush them before renaming
     * any, so a full disk leaves no new file at all. */
    upc_out out[4];
    for (int f = 0; f < 4; f++) {
        char *path = upc_path_join(out_dir, names[f]);
        upc_out_open(&out[f], path);
        free(path);
        upc_out_write(&out[f], text[f].buf, text[f].len);
    }
    for (int f = 0; f < 4; f++)
        if (fflush(out[f].fp) != 0 || ferror(out[f].fp))
            upc_fail(EX_IOERR, "%s: write failed: %s", upc_out_name(&out[f]), strerror(errno));
    for (int f = 0; f < 4; f++) {
        upc_out_commit(&out[f]);
        free(text[f].buf);
    }
    upc_fsync_dir(out_dir);
    if (st)
        *st = s;
}
