/* records: turn any upcyc msgpack stream (token streams, metrics, any
 * sequence of msgpack values) into JSON Lines for jq or TSV for gnuplot, and
 * JSON Lines back into msgpack, byte for byte. The mapping is specified in
 * formats/records.md. JSON is read and written here rather than with jansson
 * because an exact inverse needs what jansson drops: integers up to 2^64-1,
 * duplicate keys in their order, and the digits of a number as written (a
 * float32 is read with strtof from them). */
#include "tokstream.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: records json [--tokens] [--strict] [-o FILE] [STREAM|-]\n"
    "       records pack [-o FILE] [JSONL|-]\n"
    "       records tsv [--event NAME] [--fields A,B,...] [-o FILE] [STREAM|-]\n"
    "\n"
    "Convert a msgpack stream (a token stream, metrics, any sequence of\n"
    "msgpack values; stdin by default) to JSON Lines or TSV, and JSON Lines\n"
    "back to msgpack. 'records json FILE | records pack' gives FILE back byte\n"
    "for byte when FILE is in canonical msgpack form (see upcyc-records(5)).\n"
    "\n"
    "commands:\n"
    "  json   one JSON value per line; bin, ext, float32, NaN, infinities,\n"
    "         strings that are not UTF-8 and maps whose keys are not distinct\n"
    "         strings become objects with a $ key, such as {\"$bin\":\"<base64>\"}\n"
    "  pack   JSON Lines (as json writes them) to msgpack; blank lines skipped\n"
    "  tsv    a header line, then a line per map record: columns from --fields\n"
    "         or the keys of the first (matching) record, nested maps as a.b,\n"
    "         arrays as JSON, missing values empty, tab newline CR \\ escaped\n"
    "\n"
    "options:\n"
    "  -o, --output FILE  write to FILE, atomically (default stdout)\n"
    "  --tokens           (json) show the tokens bin of token stream documents\n"
    "                     as an array of ids (pack cannot reverse this)\n"
    "  --strict           (json) fail on a record not in canonical form rather\n"
    "                     than warn once at the end\n"
    "  --event NAME       (tsv) only records whose \"event\" is the string NAME\n"
    "  --fields A,B,...   (tsv) these columns, in this order\n"
    "  -h, --help         show this help\n"
    "  --version          show the version\n";

/* ---------- byte buffers, base64, UTF-8 ---------- */

typedef struct {
    char *p;
    size_t n, cap;
} strbuf;

static void sb_reserve(strbuf *b, size_t more)
{
    upc_grow((void **)&b->p, &b->cap, b->n + more, 1);
}

static void sb_put(strbuf *b, const void *s, size_t n)
{
    if (!n)
        return;     /* s may be NULL (an empty msgpack str) */
    sb_reserve(b, n);
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void sb_putc(strbuf *b, char c)
{
    sb_reserve(b, 1);
    b->p[b->n++] = c;
}

static void sb_puts(strbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void sb_base64(strbuf *b, const void *data, size_t n)
{
    const unsigned char *p = data;
    sb_reserve(b, (n + 2) / 3 * 4);
    char *o = b->p + b->n;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[v >> 12 & 63];
        *o++ = b64_alphabet[v >> 6 & 63];
        *o++ = b64_alphabet[v & 63];
    }
    if (n - i) {
        uint32_t v = (uint32_t)p[i] << 16 | (n - i == 2 ? (uint32_t)p[i + 1] << 8 : 0);
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[v >> 12 & 63];
        *o++ = n - i == 2 ? b64_alphabet[v >> 6 & 63] : '=';
        *o++ = '=';
    }
    b->n = (size_t)(o - b->p);
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Standard base64 with padding, as sb_base64 writes it. */
static bool base64_decode(const char *s, size_t n, strbuf *out)
{
    if (n % 4)
        return false;
    for (size_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int j = 0; j < 4; j++) {
            unsigned char c = (unsigned char)s[i + j];
            if (c == '=' && i + 4 == n && j >= 2) {
                v[j] = 0;
                pad++;
            } else if (pad || (v[j] = b64_value(c)) < 0) {
                return false;
            }
        }
        uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        sb_putc(out, (char)(x >> 16));
        if (pad < 2)
            sb_putc(out, (char)(x >> 8 & 255));
        if (pad < 1)
            sb_putc(out, (char)(x & 255));
    }
    return true;
}

/* Length of the well-formed UTF-8 sequence at s (no overlongs, surrogates or
 * code points past U+10FFFF), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    uint32_t cp, min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; min = 0x80; }
    else if ((c & 0xf0) == 0xe0) { len = 3; cp = c & 0x0f; min = 0x800; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if (n < len)
        return 0;
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static bool utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0, k; i < n; i += k)
        if (!(k = utf8_seq(s + i, n - i)))
            return false;
    return true;
}

/* ---------- msgpack to JSON ---------- */

static void sb_json_str(strbuf *b, const char *s, size_t n)
{
    sb_putc(b, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        sb_put(b, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': sb_puts(b, "\\\""); break;
        case '\\': sb_puts(b, "\\\\"); break;
        case '\n': sb_puts(b, "\\n"); break;
        case '\t': sb_puts(b, "\\t"); break;
        case '\r': sb_puts(b, "\\r"); break;
        case '\b': sb_puts(b, "\\b"); break;
        case '\f': sb_puts(b, "\\f"); break;
        default: {
            char u[8];
            snprintf(u, sizeof u, "\\u%04x", c);
            sb_puts(b, u);
        }
        }
    }
    sb_put(b, s + run, n - run);
    sb_putc(b, '"');
}

/* ".0" marks an integral value as a float, so pack writes a float back. */
static void sb_mark_float(strbuf *b, const char *t)
{
    sb_puts(b, t);
    if (!strpbrk(t, ".e"))
        sb_puts(b, ".0");
}

/* The shortest decimal that reads back as the same double. For a normal
 * double %.15g already is the shortest when some decimal of 15 digits or
 * fewer reads back; subnormals have fewer digits, so they try them all. */
static void sb_double(strbuf *b, double v)
{
    char t[40];
    for (int prec = fabs(v) < DBL_MIN ? 1 : 15; prec <= 17; prec++) {
        snprintf(t, sizeof t, "%.*g", prec, v);
        if (strtod(t, NULL) == v)
            break;
    }
    sb_mark_float(b, t);
}

static void sb_float32(strbuf *b, float v)
{
    char t[40];
    for (int prec = fabsf(v) < FLT_MIN ? 1 : 6; prec <= 9; prec++) {
        snprintf(t, sizeof t, "%.*g", prec, (double)v);
        if (strtof(t, NULL) == v)
            break;
    }
    sb_mark_float(b, t);
}

/* "inf", "-inf", "nan" (the default quiet NaN) or "nan:" and the bits. */
static void nonfinite_spelling(char *t, size_t n, double v, bool single)
{
    if (isinf(v)) {
        snprintf(t, n, "%s", v < 0 ? "-inf" : "inf");
    } else if (single) {
        float f = (float)v;
        uint32_t bits;
        memcpy(&bits, &f, sizeof bits);
        if (bits == 0x7fc00000u)
            snprintf(t, n, "nan");
        else
            snprintf(t, n, "nan:%08x", bits);
    } else {
        uint64_t bits;
        memcpy(&bits, &v, sizeof bits);
        if (bits == 0x7ff8000000000000ull)
            snprintf(t, n, "nan");
        else
            snprintf(t, n, "nan:%016llx", (unsigned long long)bits);
    }
}

typedef struct {
    const char *p;
    uint32_t n;
} keyref;

static int keyref_cmp(const void *a, const void *b)
{
    const keyref *x = a, *y = b;
    if (x->n != y->n)
        return x->n < y->n ? -1 : 1;
    return memcmp(x->p, y->p, x->n);
}

/* A map is written as a plain JSON object when its keys are distinct UTF-8
 * strings and the first does not start with '$' (that would read as a tag). */
static bool plain_keys(const msgpack_object *m)
{
    uint32_t n = m->via.map.size;
    const msgpack_object_kv *kv = m->via.map.ptr;
    for (uint32_t i = 0; i < n; i++)
        if (kv[i].key.type != MSGPACK_OBJECT_STR ||
            !utf8_valid(kv[i].key.via.str.ptr, kv[i].key.via.str.size))
            return false;
    if (n && kv[0].key.via.str.size && kv[0].key.via.str.ptr[0] == '$')
        return false;
    if (n < 2)
        return true;
    keyref *keys = upc_malloc(n * sizeof *keys);
    for (uint32_t i = 0; i < n; i++)
        keys[i] = (keyref){kv[i].key.via.str.ptr, kv[i].key.via.str.size};
    qsort(keys, n, sizeof *keys, keyref_cmp);
    bool distinct = true;
    for (uint32_t i = 1; i < n && distinct; i++)
        distinct = keyref_cmp(&keys[i - 1], &keys[i]) != 0;
    free(keys);
    return distinct;
}

static void sb_json(strbuf *b, const msgpack_object *o)
{
    char t[64];
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: sb_puts(b, "null"); break;
    case MSGPACK_OBJECT_BOOLEAN: sb_puts(b, o->via.boolean ? "true" : "false"); break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        snprintf(t, sizeof t, "%llu", (unsigned long long)o->via.u64);
        sb_puts(b, t);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        snprintf(t, sizeof t, "%lld", (long long)o->via.i64);
        sb_puts(b, t);
        break;
    case MSGPACK_OBJECT_FLOAT32:
        sb_puts(b, "{\"$float32\":");
        if (isfinite(o->via.f64)) {
            sb_float32(b, (float)o->via.f64);
        } else {
            nonfinite_spelling(t, sizeof t, o->via.f64, true);
            sb_json_str(b, t, strlen(t));
        }
        sb_putc(b, '}');
        break;
    case MSGPACK_OBJECT_FLOAT64:
        if (isfinite(o->via.f64)) {
            sb_double(b, o->via.f64);
        } else {
            nonfinite_spelling(t, sizeof t, o->via.f64, false);
            sb_puts(b, "{\"$float\":");
            sb_json_str(b, t, strlen(t));
            sb_putc(b, '}');
        }
        break;
    case MSGPACK_OBJECT_STR:
        if (utf8_valid(o->via.str.ptr, o->via.str.size)) {
            sb_json_str(b, o->via.str.ptr, o->via.str.size);
        } else {
            sb_puts(b, "{\"$str\":\"");
            sb_base64(b, o->via.str.ptr, o->via.str.size);
            sb_puts(b, "\"}");
        }
        break;
    case MSGPACK_OBJECT_BIN:
        sb_puts(b, "{\"$bin\":\"");
        sb_base64(b, o->via.bin.ptr, o->via.bin.size);
        sb_puts(b, "\"}");
        break;
    case MSGPACK_OBJECT_EXT:
        snprintf(t, sizeof t, "{\"$ext\":%d,\"$data\":\"", (int)o->via.ext.type);
        sb_puts(b, t);
        sb_base64(b, o->via.ext.ptr, o->via.ext.size);
        sb_puts(b, "\"}");
        break;
    case MSGPACK_OBJECT_ARRAY:
        sb_putc(b, '[');
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (i)
                sb_putc(b, ',');
            sb_json(b, &o->via.array.ptr[i]);
        }
        sb_putc(b, ']');
        break;
    case MSGPACK_OBJECT_MAP: {
        bool plain = plain_keys(o);
        sb_puts(b, plain ? "{" : "{\"$map\":[");
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (i)
                sb_putc(b, ',');
            if (!plain)
                sb_putc(b, '[');
            sb_json(b, &kv->key);
            sb_putc(b, plain ? ':' : ',');
            sb_json(b, &kv->val);
            if (!plain)
                sb_putc(b, ']');
        }
        sb_puts(b, plain ? "}" : "]}");
        break;
    }
    }
}

/* --tokens: a document's "tokens" bin as the array of its ids. */
static void sb_json_tokens(strbuf *b, const mpk_reader *r, const msgpack_object *bin, uint32_t width)
{
    uint32_t nb = bin->via.bin.size;
    const unsigned char *p = (const unsigned char *)bin->via.bin.ptr;
    if (nb % width)
        mpk_reader_fail(r, "tokens bin of %u bytes is not a multiple of the token width %u", nb, width);
    sb_putc(b, '[');
    for (uint32_t i = 0; i < nb; i += width) {
        uint32_t t = width == 2 ? (uint32_t)p[i] | (uint32_t)p[i + 1] << 8
                                : (uint32_t)p[i] | (uint32_t)p[i + 1] << 8 |
                                  (uint32_t)p[i + 2] << 16 | (uint32_t)p[i + 3] << 24;
        char num[16];
        snprintf(num, sizeof num, i ? ",%u" : "%u", t);
        sb_puts(b, num);
    }
    sb_putc(b, ']');
}

static void sb_json_record(strbuf *b, const mpk_reader *r, const msgpack_object *o, uint32_t token_width)
{
    if (!token_width || o->type != MSGPACK_OBJECT_MAP || !plain_keys(o)) {
        sb_json(b, o);
        return;
    }
    sb_putc(b, '{');
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[i];
        if (i)
            sb_putc(b, ',');
        sb_json(b, &kv->key);
        sb_putc(b, ':');
        if (kv->val.type == MSGPACK_OBJECT_BIN && mpk_str_eq(&kv->key, "tokens"))
            sb_json_tokens(b, r, &kv->val, token_width);
        else
            sb_json(b, &kv->val);
    }
    sb_putc(b, '}');
}

/* Canonical-form check: the reader's input goes through this tee, which
 * keeps the bytes of the record being read, so they can be compared with
 * what msgpack_pack_object (and so records pack) writes for its value. */
typedef struct {
    FILE *src;
    strbuf hist;       /* input bytes from offset base on */
    uint64_t base;
} tee_input;

static ssize_t tee_read(void *cookie, char *buf, size_t size)
{
    tee_input *t = cookie;
    size_t n = fread(buf, 1, size, t->src);
    if (n == 0 && ferror(t->src))
        return -1;
    sb_put(&t->hist, buf, n);
    return (ssize_t)n;
}

static int tee_close(void *cookie)
{
    tee_input *t = cookie;
    return t->src != stdin ? fclose(t->src) : 0;
}

static int sbuffer_write(void *data, const char *buf, size_t len)
{
    return msgpack_sbuffer_write((msgpack_sbuffer *)data, buf, len);
}

typedef struct {
    bool tokens, strict;
    const char *event, *fields, *output;
} options;

static int cmd_json(const char *in, const options *opt)
{
    mpk_reader r;
    mpk_reader_open(&r, in);
    tee_input tee = {.src = r.fp};
    bool check = !opt->tokens;
    if (check) {
        cookie_io_functions_t io = {.read = tee_read, .close = tee_close};
        r.fp = fopencookie(&tee, "rb", io);
        if (!r.fp)
            upc_fail(EX_OSERR, "%s: cannot set up reading: %s", r.name, strerror(errno));
    }
    upc_out out;
    upc_out_open(&out, opt->output);
    msgpack_sbuffer canon;
    msgpack_sbuffer_init(&canon);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &canon, sbuffer_write);

    strbuf b = {0};
    uint32_t token_width = 0;
    uint64_t odd = 0, odd_record = 0, odd_offset = 0;
    msgpack_object o;
    while (mpk_read(&r, &o)) {
        if (check) {
            size_t size = (size_t)(r.consumed - r.offset);
            msgpack_sbuffer_clear(&canon);
            msgpack_pack_object(&pk, o);
            if (canon.size != size || memcmp(canon.data, tee.hist.p + (r.offset - tee.base), size) != 0) {
                if (opt->strict)
                    mpk_reader_fail(&r, "not in canonical msgpack form, so records pack would not give "
                                        "these bytes back (see upcyc-records(5))");
                if (!odd++) {
                    odd_record = r.record;
                    odd_offset = r.offset;
                }
            }
            /* Drop the bytes read, now and then, not each record. */
            size_t done = (size_t)(r.consumed - tee.base);
            if (done >= (1u << 20) && done >= tee.hist.n / 2) {
                memmove(tee.hist.p, tee.hist.p + done, tee.hist.n - done);
                tee.hist.n -= done;
                tee.base = r.consumed;
            }
        }
        if (opt->tokens && r.record == 0) {
            tokstream_header h;
            const char *why;
            if (!tokstream_header_parse(&o, &h, &why))
                mpk_reader_fail(&r, "--tokens needs a token stream: %s", why);
            token_width = h.token_width;
            sb_json(&b, &o);
        } else {
            sb_json_record(&b, &r, &o, token_width);
        }
        sb_putc(&b, '\n');
        if (b.n >= (1u << 16)) {
            upc_out_write(&out, b.p, b.n);
            b.n = 0;
        }
    }
    if (opt->tokens && r.records_read == 0)
        upc_fail(EX_DATAERR, "%s: empty input, expected a token stream header", r.name);
    upc_out_write(&out, b.p, b.n);
    upc_out_commit(&out);
    if (odd)
        upc_warn("%s: %llu record%s not in canonical msgpack form (the first: record %llu, byte %llu); "
                 "records pack will give the same values back, not the same bytes",
                 r.name, (unsigned long long)odd, odd == 1 ? "" : "s",
                 (unsigned long long)odd_record, (unsigned long long)odd_offset);
    mpk_reader_close(&r);
    msgpack_sbuffer_destroy(&canon);
    free(tee.hist.p);
    free(b.p);
    return 0;
}

/* ---------- msgpack to TSV ---------- */

static void sb_tsv_escape(strbuf *b, const char *s, size_t n)
{
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c != '\t' && c != '\n' && c != '\r' && c != '\\')
            continue;
        sb_put(b, s + run, i - run);
        run = i + 1;
        sb_puts(b, c == '\t' ? "\\t" : c == '\n' ? "\\n" : c == '\r' ? "\\r" : "\\\\");
    }
    sb_put(b, s + run, n - run);
}

/* Maps that TSV flattens into a.b columns: non-empty, every key a string. */
static bool flattens(const msgpack_object *o)
{
    if (o->type != MSGPACK_OBJECT_MAP || o->via.map.size == 0)
        return false;
    for (uint32_t i = 0; i < o->via.map.size; i++)
        if (o->via.map.ptr[i].key.type != MSGPACK_OBJECT_STR)
            return false;
    return true;
}

typedef struct {
    char **name;
    size_t n, cap;
} columns;

static void columns_add(columns *c, const char *s, size_t n)
{
    upc_grow((void **)&c->name, &c->cap, c->n + 1, sizeof *c->name);
    char *p = upc_malloc(n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    c->name[c->n++] = p;
}

/* Column names of a record: its string keys in order, nested maps flattened. */
static void columns_from(columns *c, const msgpack_object *map, strbuf *prefix)
{
    size_t keep = prefix->n;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR)
            continue;
        prefix->n = keep;
        sb_put(prefix, kv->key.via.str.ptr, kv->key.via.str.size);
        if (flattens(&kv->val)) {
            sb_putc(prefix, '.');
            columns_from(c, &kv->val, prefix);
        } else {
            columns_add(c, prefix->p, prefix->n);
        }
    }
    prefix->n = keep;
}

/* The value a column name stands for; keys may themselves hold dots. */
static const msgpack_object *resolve(const msgpack_object *map, const char *path, size_t n)
{
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR)
            continue;
        const char *k = kv->key.via.str.ptr;
        size_t kn = kv->key.via.str.size;
        if (kn == n && memcmp(k, path, n) == 0)
            return &kv->val;
        if (kn < n && path[kn] == '.' && memcmp(k, path, kn) == 0 && flattens(&kv->val)) {
            const msgpack_object *v = resolve(&kv->val, path + kn + 1, n - kn - 1);
            if (v)
                return v;
        }
    }
    return NULL;
}

static void sb_tsv_cell(strbuf *b, strbuf *scratch, const msgpack_object *v)
{
    switch (v->type) {
    case MSGPACK_OBJECT_NIL:
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        if (isnan(v->via.f64))
            sb_puts(b, "nan");
        else if (isinf(v->via.f64))
            sb_puts(b, v->via.f64 < 0 ? "-inf" : "inf");
        else if (v->type == MSGPACK_OBJECT_FLOAT32)
            sb_float32(b, (float)v->via.f64);
        else
            sb_double(b, v->via.f64);
        break;
    case MSGPACK_OBJECT_STR:
        sb_tsv_escape(b, v->via.str.ptr, v->via.str.size);
        break;
    case MSGPACK_OBJECT_BOOLEAN:
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        sb_json(b, v);
        break;
    default:
        /* Arrays, maps left whole, bin, ext: their JSON text. */
        scratch->n = 0;
        sb_json(scratch, v);
        sb_tsv_escape(b, scratch->p, scratch->n);
    }
}

static void write_header(strbuf *b, const columns *c)
{
    for (size_t i = 0; i < c->n; i++) {
        if (i)
            sb_putc(b, '\t');
        sb_tsv_escape(b, c->name[i], strlen(c->name[i]));
    }
    sb_putc(b, '\n');
}

static int cmd_tsv(const char *in, const options *opt)
{
    mpk_reader r;
    mpk_reader_open(&r, in);
    upc_out out;
    upc_out_open(&out, opt->output);
    columns cols = {0};
    strbuf b = {0}, scratch = {0};
    bool have_cols = false;
    if (opt->fields) {
        for (const char *s = opt->fields;;) {
            const char *comma = strchr(s, ',');
            size_t n = comma ? (size_t)(comma - s) : strlen(s);
            columns_add(&cols, s, n);
            if (!comma)
                break;
            s = comma + 1;
        }
        have_cols = true;
        write_header(&b, &cols);
    }
    size_t event_len = opt->event ? strlen(opt->event) : 0;
    msgpack_object o;
    while (mpk_read(&r, &o)) {
        if (o.type != MSGPACK_OBJECT_MAP)
            mpk_reader_fail(&r, "expected a map (tsv writes a line per map record)");
        if (opt->event) {
            const char *ev;
            uint32_t n;
            if (!mpk_get_str(&o, "event", &ev, &n) || n != event_len || memcmp(ev, opt->event, n) != 0)
                continue;
        }
        if (!have_cols) {
            columns_from(&cols, &o, &scratch);
            have_cols = true;
            write_header(&b, &cols);
        }
        for (size_t i = 0; i < cols.n; i++) {
            if (i)
                sb_putc(&b, '\t');
            const msgpack_object *v = resolve(&o, cols.name[i], strlen(cols.name[i]));
            if (v)
                sb_tsv_cell(&b, &scratch, v);
        }
        sb_putc(&b, '\n');
        if (b.n >= (1u << 16)) {
            upc_out_write(&out, b.p, b.n);
            b.n = 0;
        }
    }
    upc_out_write(&out, b.p, b.n);
    upc_out_commit(&out);
    if (!have_cols)
        upc_warn("%s: no %s, so no columns: the output is empty", r.name,
                 opt->event ? "record with that event" : "map records");
    mpk_reader_close(&r);
    for (size_t i = 0; i < cols.n; i++)
        free(cols.name[i]);
    free(cols.name);
    free(b.p);
    free(scratch.p);
    return 0;
}

/* ---------- JSON Lines to msgpack ---------- */

enum { J_NULL, J_TRUE, J_FALSE, J_NUM, J_STR, J_ARR, J_OBJ };
#define J_NONE ((size_t)-1)
#define JSON_MAX_DEPTH 1000
/* msgpack-c's reader (MSGPACK_EMBED_STACK_SIZE) takes at most this many
 * nested arrays and maps; pack writes nothing json could not read back. */
#define MSGPACK_MAX_DEPTH 32

typedef struct {
    uint8_t kind;
    bool is_float;      /* J_NUM with a fraction or exponent */
    uint32_t n;         /* J_ARR: elements; J_OBJ: pairs (keys and values alternate) */
    size_t off, len;    /* J_NUM: span in the line; J_STR: span in strs */
    size_t first, next; /* children, siblings */
    size_t col;         /* byte offset in the line, for messages */
} jnode;

typedef struct {
    const char *name;
    const char *line;
    size_t len, pos;
    unsigned long long lineno;
    jnode *nodes;
    size_t nn, ncap;
    strbuf strs;        /* decoded strings */
    strbuf scratch;     /* numbers as C strings, base64 decoding */
    int depth;
} jparser;

static void jfail(const jparser *p, size_t col, const char *fmt, ...) __attribute__((noreturn, format(printf, 3, 4)));
static void jfail(const jparser *p, size_t col, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    upc_fail(EX_DATAERR, "%s: line %llu, column %zu: %s", p->name, p->lineno, col + 1, msg);
}

static size_t jnew(jparser *p, int kind, size_t col)
{
    upc_grow((void **)&p->nodes, &p->ncap, p->nn + 1, sizeof *p->nodes);
    p->nodes[p->nn] = (jnode){.kind = (uint8_t)kind, .first = J_NONE, .next = J_NONE, .col = col};
    return p->nn++;
}

static void jskip_ws(jparser *p)
{
    while (p->pos < p->len && (p->line[p->pos] == ' ' || p->line[p->pos] == '\t' ||
                               p->line[p->pos] == '\r' || p->line[p->pos] == '\n'))
        p->pos++;
}

static const char *jdescribe(const jparser *p, char *t, size_t n)
{
    if (p->pos >= p->len)
        return "the end of the line";
    unsigned char c = (unsigned char)p->line[p->pos];
    if (c > 0x20 && c < 0x7f)
        snprintf(t, n, "'%c'", c);
    else
        snprintf(t, n, "byte 0x%02x", c);
    return t;
}

static void jexpect(jparser *p, char c, const char *what)
{
    jskip_ws(p);
    if (p->pos >= p->len || p->line[p->pos] != c) {
        char t[32];
        jfail(p, p->pos, "expected %s, found %s", what, jdescribe(p, t, sizeof t));
    }
    p->pos++;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static uint32_t jhex4(jparser *p, size_t at)
{
    uint32_t v = 0;
    for (size_t i = at; i < at + 4; i++) {
        int d = i < p->len ? hex_digit(p->line[i]) : -1;
        if (d < 0)
            jfail(p, at - 2, "expected 4 hex digits after \\u");
        v = v << 4 | (uint32_t)d;
    }
    return v;
}

static void sb_utf8(strbuf *b, uint32_t cp)
{
    if (cp < 0x80) {
        sb_putc(b, (char)cp);
    } else if (cp < 0x800) {
        sb_putc(b, (char)(0xc0 | cp >> 6));
        sb_putc(b, (char)(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
        sb_putc(b, (char)(0xe0 | cp >> 12));
        sb_putc(b, (char)(0x80 | (cp >> 6 & 0x3f)));
        sb_putc(b, (char)(0x80 | (cp & 0x3f)));
    } else {
        sb_putc(b, (char)(0xf0 | cp >> 18));
        sb_putc(b, (char)(0x80 | (cp >> 12 & 0x3f)));
        sb_putc(b, (char)(0x80 | (cp >> 6 & 0x3f)));
        sb_putc(b, (char)(0x80 | (cp & 0x3f)));
    }
}

static size_t jstring(jparser *p)
{
    size_t node = jnew(p, J_STR, p->pos);
    size_t start = p->strs.n;
    p->pos++;
    for (;;) {
        size_t run = p->pos;
        while (p->pos < p->len) {
            unsigned char c = (unsigned char)p->line[p->pos];
            if (c == '"' || c == '\\' || c < 0x20)
                break;
            if (c < 0x80) {
                p->pos++;
                continue;
            }
            size_t k = utf8_seq((const unsigned char *)p->line + p->pos, p->len - p->pos);
            if (!k)
                jfail(p, p->pos, "invalid UTF-8 in a string (bytes that are not UTF-8 go in {\"$str\": base64})");
            p->pos += k;
        }
        sb_put(&p->strs, p->line + run, p->pos - run);
        if (p->pos >= p->len)
            jfail(p, p->nodes[node].col, "unterminated string");
        char c = p->line[p->pos];
        if (c == '"') {
            p->pos++;
            break;
        }
        if (c != '\\')
            jfail(p, p->pos, "control character 0x%02x in a string (write it as \\u%04x)", c, c);
        if (p->pos + 1 >= p->len)
            jfail(p, p->pos, "unterminated string");
        char e = p->line[p->pos + 1];
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e && simple) {
            static const char out[] = "\"\\/\b\f\n\r\t";
            sb_putc(&p->strs, out[simple - "\"\\/bfnrt"]);
            p->pos += 2;
        } else if (e == 'u') {
            size_t at = p->pos;
            uint32_t cp = jhex4(p, at + 2);
            p->pos += 6;
            if (cp >= 0xdc00 && cp <= 0xdfff)
                jfail(p, at, "unpaired surrogate \\u%04x", cp);
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (p->pos + 1 >= p->len || p->line[p->pos] != '\\' || p->line[p->pos + 1] != 'u')
                    jfail(p, at, "unpaired surrogate \\u%04x", cp);
                uint32_t lo = jhex4(p, p->pos + 2);
                if (lo < 0xdc00 || lo > 0xdfff)
                    jfail(p, at, "unpaired surrogate \\u%04x", cp);
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                p->pos += 6;
            }
            sb_utf8(&p->strs, cp);
        } else {
            jfail(p, p->pos, "unknown escape in a string");
        }
    }
    p->nodes[node].off = start;
    p->nodes[node].len = p->strs.n - start;
    return node;
}

static size_t jnumber(jparser *p)
{
    const char *s = p->line;
    size_t i = p->pos, n = p->len;
    bool is_float = false;
    if (i < n && s[i] == '-')
        i++;
    if (i < n && s[i] == '0') {
        i++;
    } else if (i < n && s[i] >= '1' && s[i] <= '9') {
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    } else {
        jfail(p, i, "expected a digit in a number");
    }
    if (i < n && s[i] == '.') {
        is_float = true;
        i++;
        if (!(i < n && s[i] >= '0' && s[i] <= '9'))
            jfail(p, i, "expected a digit after the decimal point");
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        is_float = true;
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        if (!(i < n && s[i] >= '0' && s[i] <= '9'))
            jfail(p, i, "expected a digit in the exponent");
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    size_t node = jnew(p, J_NUM, p->pos);
    p->nodes[node].off = p->pos;
    p->nodes[node].len = i - p->pos;
    p->nodes[node].is_float = is_float;
    p->pos = i;
    return node;
}

static size_t jvalue(jparser *p);

/* Parse the members of an array or object, linking them as children. */
static size_t jcontainer(jparser *p, bool object)
{
    size_t node = jnew(p, object ? J_OBJ : J_ARR, p->pos);
    if (++p->depth > JSON_MAX_DEPTH)
        jfail(p, p->pos, "nested deeper than %d arrays and objects", JSON_MAX_DEPTH);
    p->pos++;
    jskip_ws(p);
    char close = object ? '}' : ']';
    size_t last = J_NONE;
    uint32_t count = 0;
    if (p->pos < p->len && p->line[p->pos] == close) {
        p->pos++;
    } else {
        for (;;) {
            size_t child[2];
            int parts = 0;
            if (object) {
                jskip_ws(p);
                if (p->pos >= p->len || p->line[p->pos] != '"') {
                    char t[32];
                    jfail(p, p->pos, "expected a string key, found %s", jdescribe(p, t, sizeof t));
                }
                child[parts++] = jstring(p);
                jexpect(p, ':', "':' after the key");
            }
            child[parts++] = jvalue(p);
            for (int k = 0; k < parts; k++) {
                if (last == J_NONE)
                    p->nodes[node].first = child[k];
                else
                    p->nodes[last].next = child[k];
                last = child[k];
            }
            if (count == UINT32_MAX)
                jfail(p, p->nodes[node].col, "more than 2^32-1 members");
            count++;
            jskip_ws(p);
            if (p->pos < p->len && p->line[p->pos] == ',') {
                p->pos++;
                continue;
            }
            jexpect(p, close, object ? "',' or '}'" : "',' or ']'");
            break;
        }
    }
    p->nodes[node].n = count;
    p->depth--;
    return node;
}

static size_t jliteral(jparser *p, const char *word, int kind)
{
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->line + p->pos, word, n) != 0) {
        char t[32];
        jfail(p, p->pos, "expected a value, found %s", jdescribe(p, t, sizeof t));
    }
    size_t node = jnew(p, kind, p->pos);
    p->pos += n;
    return node;
}

static size_t jvalue(jparser *p)
{
    jskip_ws(p);
    char t[32];
    if (p->pos >= p->len)
        jfail(p, p->pos, "expected a value, found the end of the line");
    char c = p->line[p->pos];
    switch (c) {
    case '{': return jcontainer(p, true);
    case '[': return jcontainer(p, false);
    case '"': return jstring(p);
    case 't': return jliteral(p, "true", J_TRUE);
    case 'f': return jliteral(p, "false", J_FALSE);
    case 'n': return jliteral(p, "null", J_NULL);
    default:
        if (c == '-' || (c >= '0' && c <= '9'))
            return jnumber(p);
        jfail(p, p->pos, "expected a value, found %s", jdescribe(p, t, sizeof t));
    }
}

/* A J_NUM's digits as a C string (in scratch). */
static const char *jnum_text(jparser *p, const jnode *nd)
{
    p->scratch.n = 0;
    sb_put(&p->scratch, p->line + nd->off, nd->len);
    sb_putc(&p->scratch, 0);
    return p->scratch.p;
}

static void emit_number(jparser *p, msgpack_packer *pk, const jnode *nd)
{
    const char *t = jnum_text(p, nd);
    errno = 0;
    if (nd->is_float) {
        double d = strtod(t, NULL);
        if (isinf(d))
            jfail(p, nd->col, "number too large for a float64 (write infinity as {\"$float\":\"inf\"})");
        msgpack_pack_double(pk, d);
    } else if (t[0] == '-') {
        long long v = strtoll(t, NULL, 10);
        if (errno == ERANGE)
            jfail(p, nd->col, "integer below -9223372036854775808, the msgpack minimum");
        msgpack_pack_int64(pk, v);
    } else {
        unsigned long long v = strtoull(t, NULL, 10);
        if (errno == ERANGE)
            jfail(p, nd->col, "integer above 18446744073709551615, the msgpack maximum");
        msgpack_pack_uint64(pk, v);
    }
}

static const jnode *jchild(const jparser *p, size_t i)
{
    return i == J_NONE ? NULL : &p->nodes[i];
}

static bool jstr_is(const jparser *p, const jnode *nd, const char *s)
{
    size_t n = strlen(s);
    return nd->kind == J_STR && nd->len == n && memcmp(p->strs.p + nd->off, s, n) == 0;
}

/* Decode the base64 string node nd into scratch, or fail naming the tag. */
static void jbase64(jparser *p, const jnode *nd, const char *tag)
{
    if (nd->kind != J_STR)
        jfail(p, nd->col, "expected a base64 string as the value of \"%s\"", tag);
    p->scratch.n = 0;
    if (!base64_decode(p->strs.p + nd->off, nd->len, &p->scratch))
        jfail(p, nd->col, "invalid base64 in \"%s\" (standard alphabet, padded with '=')", tag);
}

/* "inf", "-inf", "nan" or "nan:" + the bits in hex (8 or 16 digits). */
static bool parse_nonfinite(const char *s, size_t n, bool single, uint64_t *bits)
{
    uint64_t inf = single ? 0x7f800000u : 0x7ff0000000000000ull;
    uint64_t sign = single ? 0x80000000u : 0x8000000000000000ull;
    size_t digits = single ? 8 : 16;
    if (n == 3 && memcmp(s, "inf", 3) == 0)
        return *bits = inf, true;
    if (n == 4 && memcmp(s, "-inf", 4) == 0)
        return *bits = inf | sign, true;
    if (n == 3 && memcmp(s, "nan", 3) == 0)
        return *bits = single ? 0x7fc00000u : 0x7ff8000000000000ull, true;
    if (n != 4 + digits || memcmp(s, "nan:", 4) != 0)
        return false;
    uint64_t v = 0;
    for (size_t i = 4; i < n; i++) {
        int d = hex_digit(s[i]);
        if (d < 0)
            return false;
        v = v << 4 | (uint64_t)d;
    }
    /* A NaN: exponent all ones and a mantissa that is not zero. */
    if ((v & inf) != inf || (v & ~(inf | sign)) == 0)
        return false;
    *bits = v;
    return true;
}

static void emit(jparser *p, msgpack_packer *pk, size_t i, int depth);

static void emit_float_tag(jparser *p, msgpack_packer *pk, const jnode *v, bool single)
{
    const char *tag = single ? "$float32" : "$float";
    if (v->kind == J_STR) {
        uint64_t bits;
        if (!parse_nonfinite(p->strs.p + v->off, v->len, single, &bits))
            jfail(p, v->col, "expected \"inf\", \"-inf\", \"nan\" or \"nan:\" and %d hex digits of a NaN as the value of \"%s\"",
                  single ? 8 : 16, tag);
        if (single) {
            uint32_t b32 = (uint32_t)bits;
            float f;
            memcpy(&f, &b32, sizeof f);
            msgpack_pack_float(pk, f);
        } else {
            double d;
            memcpy(&d, &bits, sizeof d);
            msgpack_pack_double(pk, d);
        }
    } else if (v->kind == J_NUM && single) {
        float f = strtof(jnum_text(p, v), NULL);
        if (isinf(f))
            jfail(p, v->col, "number too large for a float32 (write infinity as {\"$float32\":\"inf\"})");
        msgpack_pack_float(pk, f);
    } else {
        jfail(p, v->col, single ? "expected a number or a string as the value of \"$float32\""
                                : "expected a string as the value of \"$float\" (a finite float is a plain number)");
    }
}

/* An object whose first key starts with '$' stands for a msgpack value JSON
 * has no plain form for (formats/records.md, "Tags"). */
static void emit_tag(jparser *p, msgpack_packer *pk, const jnode *obj, int depth)
{
    const jnode *key = jchild(p, obj->first), *val = jchild(p, key->next);
    const char *k = p->strs.p + key->off;
    int klen = key->len > 40 ? 40 : (int)key->len;
    bool one = obj->n == 1;
    if (jstr_is(p, key, "$bin") && one) {
        jbase64(p, val, "$bin");
        msgpack_pack_bin(pk, p->scratch.n);
        msgpack_pack_bin_body(pk, p->scratch.p, p->scratch.n);
    } else if (jstr_is(p, key, "$str") && one) {
        jbase64(p, val, "$str");
        msgpack_pack_str(pk, p->scratch.n);
        msgpack_pack_str_body(pk, p->scratch.p, p->scratch.n);
    } else if (jstr_is(p, key, "$float") && one) {
        emit_float_tag(p, pk, val, false);
    } else if (jstr_is(p, key, "$float32") && one) {
        emit_float_tag(p, pk, val, true);
    } else if ((jstr_is(p, key, "$ext") || jstr_is(p, key, "$data")) && obj->n == 2) {
        const jnode *key2 = jchild(p, val->next), *val2 = jchild(p, key2->next);
        const jnode *type = jstr_is(p, key, "$ext") ? val : val2, *data = type == val ? val2 : val;
        if (!(jstr_is(p, key2, "$ext") || jstr_is(p, key2, "$data")) ||
            jstr_is(p, key, "$ext") == jstr_is(p, key2, "$ext"))
            jfail(p, obj->col, "expected {\"$ext\": type, \"$data\": base64}");
        long long t = 0;
        if (type->kind == J_NUM && !type->is_float) {
            errno = 0;
            t = strtoll(jnum_text(p, type), NULL, 10);
        }
        if (type->kind != J_NUM || type->is_float || errno || t < -128 || t > 127)
            jfail(p, type->col, "expected an integer in [-128, 127] as the value of \"$ext\"");
        jbase64(p, data, "$data");
        msgpack_pack_ext(pk, p->scratch.n, (int8_t)t);
        msgpack_pack_ext_body(pk, p->scratch.p, p->scratch.n);
    } else if (jstr_is(p, key, "$map") && one) {
        if (val->kind != J_ARR)
            jfail(p, val->col, "expected an array of [key, value] pairs as the value of \"$map\"");
        if (depth >= MSGPACK_MAX_DEPTH)
            jfail(p, obj->col, "nested deeper than %d msgpack arrays and maps", MSGPACK_MAX_DEPTH);
        for (const jnode *pair = jchild(p, val->first); pair; pair = jchild(p, pair->next))
            if (pair->kind != J_ARR || pair->n != 2)
                jfail(p, pair->col, "expected a [key, value] pair in \"$map\"");
        msgpack_pack_map(pk, val->n);
        for (const jnode *pair = jchild(p, val->first); pair; pair = jchild(p, pair->next)) {
            size_t kidx = pair->first;
            emit(p, pk, kidx, depth + 1);
            emit(p, pk, p->nodes[kidx].next, depth + 1);
        }
    } else if (jstr_is(p, key, "$bin") || jstr_is(p, key, "$str") || jstr_is(p, key, "$float") ||
               jstr_is(p, key, "$float32") || jstr_is(p, key, "$map")) {
        jfail(p, obj->col, "the \"%.*s\" tag takes exactly one key", klen, k);
    } else {
        jfail(p, key->col, "unknown tag \"%.*s\": an object whose first key starts with '$' is a tag "
                           "($bin $str $ext $float $float32 $map); write such a map as {\"$map\":[[key,value],...]}",
              klen, k);
    }
}

static void emit(jparser *p, msgpack_packer *pk, size_t i, int depth)
{
    const jnode *nd = &p->nodes[i];
    switch (nd->kind) {
    case J_NULL: msgpack_pack_nil(pk); break;
    case J_TRUE: msgpack_pack_true(pk); break;
    case J_FALSE: msgpack_pack_false(pk); break;
    case J_NUM: emit_number(p, pk, nd); break;
    case J_STR:
        msgpack_pack_str(pk, nd->len);
        msgpack_pack_str_body(pk, p->strs.p + nd->off, nd->len);
        break;
    case J_ARR:
    case J_OBJ: {
        const jnode *first = jchild(p, nd->first);
        if (nd->kind == J_OBJ && first && first->len && p->strs.p[first->off] == '$') {
            emit_tag(p, pk, nd, depth);
            break;
        }
        if (depth >= MSGPACK_MAX_DEPTH)
            jfail(p, nd->col, "nested deeper than %d msgpack arrays and maps", MSGPACK_MAX_DEPTH);
        if (nd->kind == J_ARR)
            msgpack_pack_array(pk, nd->n);
        else
            msgpack_pack_map(pk, nd->n);
        for (size_t c = nd->first; c != J_NONE; c = p->nodes[c].next)
            emit(p, pk, c, depth + 1);
        break;
    }
    }
}

static int cmd_pack(const char *in, const options *opt)
{
    FILE *fp = upc_open_in(in);
    mpk_writer w;
    mpk_writer_open(&w, opt->output);
    jparser p = {.name = (!in || strcmp(in, "-") == 0) ? "stdin" : in};
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    while ((got = getline(&line, &cap, fp)) != -1) {
        p.lineno++;
        p.line = line;
        p.len = (size_t)got;
        if (p.len && line[p.len - 1] == '\n')
            p.len--;
        p.pos = 0;
        jskip_ws(&p);
        if (p.pos == p.len)
            continue;
        p.nn = 0;
        p.strs.n = 0;
        p.depth = 0;
        size_t root = jvalue(&p);
        jskip_ws(&p);
        if (p.pos < p.len) {
            char t[32];
            jfail(&p, p.pos, "expected the end of the line after the value, found %s",
                  jdescribe(&p, t, sizeof t));
        }
        emit(&p, &w.pk, root, 0);
        mpk_writer_flush(&w, false);
    }
    if (ferror(fp))
        upc_fail(EX_IOERR, "%s: read failed: %s", p.name, strerror(errno));
    mpk_writer_commit(&w);
    if (fp != stdin)
        fclose(fp);
    free(line);
    free(p.nodes);
    free(p.strs.p);
    free(p.scratch.p);
    return 0;
}

/* ---------- options ---------- */

/* "--name VALUE", "--name=VALUE" or, with a short form, "-x VALUE". */
static bool value_option(int argc, char **argv, int *i, const char *name, const char *short_name, const char **val)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) == 0 && a[n] == '=') {
        *val = a + n + 1;
        return true;
    }
    if (strcmp(a, name) != 0 && !(short_name && strcmp(a, short_name) == 0))
        return false;
    if (*i + 1 >= argc)
        upc_usage_fail("option '%s' needs a value", a);
    *val = argv[++*i];
    return true;
}

int main(int argc, char **argv)
{
    upc_init(argv[0]);
    upc_handle_help_version(argc, argv, usage);
    if (argc < 2)
        upc_usage_fail("expected a command: json, pack or tsv");
    const char *cmd = argv[1];
    bool is_json = strcmp(cmd, "json") == 0, is_pack = strcmp(cmd, "pack") == 0,
         is_tsv = strcmp(cmd, "tsv") == 0;
    if (!is_json && !is_pack && !is_tsv)
        upc_usage_fail("unknown command '%s'; expected json, pack or tsv", cmd);

    options opt = {0};
    const char *input = NULL;
    bool only_files = false;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (only_files || a[0] != '-' || strcmp(a, "-") == 0) {
            if (input)
                upc_usage_fail("one input at most; unexpected '%s'", a);
            input = a;
        } else if (strcmp(a, "--") == 0) {
            only_files = true;
        } else if (upc_is_help(a)) {
            fputs(usage, stdout);
            return 0;
        } else if (upc_is_version(a)) {
            upc_print_version();
            return 0;
        } else if (value_option(argc, argv, &i, "--output", "-o", &opt.output)) {
            if (!*opt.output)
                upc_usage_fail("--output needs a file name");
        } else if (is_json && strcmp(a, "--tokens") == 0) {
            opt.tokens = true;
        } else if (is_json && strcmp(a, "--strict") == 0) {
            opt.strict = true;
        } else if (is_tsv && value_option(argc, argv, &i, "--event", NULL, &opt.event)) {
        } else if (is_tsv && value_option(argc, argv, &i, "--fields", NULL, &opt.fields)) {
            size_t n = strlen(opt.fields);
            if (!n || opt.fields[0] == ',' || opt.fields[n - 1] == ',' || strstr(opt.fields, ",,"))
                upc_usage_fail("--fields: expected column names separated by commas, got '%s'", opt.fields);
        } else {
            upc_usage_fail("unknown option '%.200s' for records %s", a, cmd);
        }
    }
    if (is_json)
        return cmd_json(input, &opt);
    if (is_tsv)
        return cmd_tsv(input, &opt);
    return cmd_pack(input, &opt);
}
