/* safetensors.c: reading (mmap, full validation) and streaming writing of
 * safetensors files and sharded checkpoints. */
#include "safetensors.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

/* The reference implementation's limit; real headers are a few MB. */
#define MAX_HEADER_BYTES 100000000ULL
/* Elements converted per step when streaming float data. */
#define CHUNK_ELEMS 65536

/* ---------------------------------------------------------------- dtypes */

static const struct { const char *name; size_t size; } DTYPES[ST_DTYPE_COUNT] = {
    [ST_F32] = {"F32", 4},      [ST_BF16] = {"BF16", 2},     [ST_F16] = {"F16", 2},
    [ST_F64] = {"F64", 8},      [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
    [ST_F8_E8M0] = {"F8_E8M0", 1}, [ST_C64] = {"C64", 8},
    [ST_BOOL] = {"BOOL", 1},    [ST_U8] = {"U8", 1},         [ST_I8] = {"I8", 1},
    [ST_U16] = {"U16", 2},      [ST_I16] = {"I16", 2},       [ST_U32] = {"U32", 4},
    [ST_I32] = {"I32", 4},      [ST_U64] = {"U64", 8},       [ST_I64] = {"I64", 8},
};

const char *st_dtype_name(st_dtype t)
{
    return (unsigned)t < ST_DTYPE_COUNT ? DTYPES[t].name : "?";
}

size_t st_dtype_size(st_dtype t)
{
    return (unsigned)t < ST_DTYPE_COUNT ? DTYPES[t].size : 0;
}

bool st_dtype_parse(const char *name, st_dtype *out)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (strcmp(DTYPES[i].name, name) == 0) {
            *out = (st_dtype)i;
            return true;
        }
    return false;
}

float st_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);          /* inf, NaN */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);  /* normal: rebias 15 -> 127 */
    } else if (man == 0) {
        bits = sign;                                       /* zero */
    } else {                                               /* subnormal: normalise */
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400u));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    union { uint32_t u; float f; } v = { .u = bits };
    return v.f;
}

uint16_t st_f32_to_f16(float f)
{
    union { float f; uint32_t u; } v = { .f = f };
    uint32_t sign = (v.u >> 16) & 0x8000u, a = v.u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));   /* quiet NaN */
    if (a >= 0x477ff000u)                       /* rounds to >= 65520: inf */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) {                      /* below 2^-14: subnormal or zero */
        if (a < 0x33000000u)                    /* below half the smallest subnormal */
            return (uint16_t)sign;
        uint32_t e = a >> 23, man = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;               /* 14..24 */
        uint32_t r = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u)))
            r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = a - 0x38000000u;               /* rebias exponent 127 -> 15 (<<23) */
    r = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;  /* round to nearest even */
    return (uint16_t)(sign | r);
}

/* ---------------------------------------------------------------- reader */

typedef struct {
    char *path;
    upc_mapped m;
    uint64_t data_start;          /* 8 + header length */
} mapped_file;

struct st_reader {
    char *path;
    mapped_file *files;
    size_t nfiles;
    st_tensor *tensors;
    size_t ntensors, cap;
    st_tensor **by_name;          /* tensors sorted by name, for lookup */
    char **meta;                  /* key, value, key, value, ... */
    size_t nmeta;
    uint64_t total;
};

static void map_file(mapped_file *f, const char *path)
{
    memset(f, 0, sizeof *f);
    f->path = upc_strdup(path);
    upc_map_regular(&f->m, path, "a .safetensors file");
}

/* The file's bytes. */
static const unsigned char *file_bytes(const mapped_file *f)
{
    return (const unsigned char *)f->m.data;
}

static int cmp_offset(const void *a, const void *b)
{
    const st_tensor *x = a, *y = b;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Non-negative JSON integer, or false. */
static bool get_u64(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static void parse_tensor(st_reader *r, const mapped_file *f, int shard, const char *name, json_t *v)
{
    const char *p = f->path;
    if (!json_is_object(v))
        upc_fail(EX_DATAERR, "%s: tensor '%s': expected an object with dtype, shape, data_offsets", p, name);
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
           *jo = json_object_get(v, "data_offsets");
    st_tensor t = {0};
    t.shard = shard;
    if (!json_is_string(jd))
        upc_fail(EX_DATAERR, "%s: tensor '%s': dtype: expected a string", p, name);
    if (!st_dtype_parse(json_string_value(jd), &t.dtype))
        upc_fail(EX_DATAERR, "%s: tensor '%s': dtype '%s' is not one upcyc knows (F32, BF16, F16, F64, I64, ...)",
                 p, name, json_string_value(jd));
    if (!json_is_array(js))
        upc_fail(EX_DATAERR, "%s: tensor '%s': shape: expected an array of integers", p, name);
    if (json_array_size(js) > ST_MAX_DIMS)
        upc_fail(EX_DATAERR, "%s: tensor '%s': shape has %zu dimensions, at most %d supported",
                 p, name, json_array_size(js), ST_MAX_DIMS);
    t.ndim = (int)json_array_size(js);
    t.numel = 1;
    bool overflow = false;
    for (int i = 0; i < t.ndim; i++) {
        if (!get_u64(json_array_get(js, (size_t)i), &t.shape[i]))
            upc_fail(EX_DATAERR, "%s: tensor '%s': shape[%d]: expected a non-negative integer", p, name, i);
        if (t.shape[i] && t.numel > UINT64_MAX / t.shape[i])
            overflow = true;
        t.numel *= t.shape[i];
    }
    size_t es = st_dtype_size(t.dtype);
    if (overflow || t.numel > UINT64_MAX / es)
        upc_fail(EX_DATAERR, "%s: tensor '%s': shape is too large", p, name);
    t.nbytes = t.numel * es;
    uint64_t begin, end;
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !get_u64(json_array_get(jo, 0), &begin) ||
        !get_u64(json_array_get(jo, 1), &end))
        upc_fail(EX_DATAERR, "%s: tensor '%s': data_offsets: expected [begin, end], non-negative integers", p, name);
    uint64_t data_len = f->m.len - f->data_start;
    if (end < begin)
        upc_fail(EX_DATAERR, "%s: tensor '%s': data_offsets [%llu, %llu]: end is before begin", p, name,
                 (unsigned long long)begin, (unsigned long long)end);
    if (end > data_len)
        upc_fail(EX_DATAERR, "%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the data (%llu bytes)",
                 p, name, (unsigned long long)begin, (unsigned long long)end, (unsigned long long)data_len);
    if (end - begin != t.nbytes) {
        char shape[256];
        size_t at = 0;
        shape[at++] = '[';
        for (int i = 0; i < t.ndim && at < sizeof shape - 24; i++)
            at += (size_t)snprintf(shape + at, sizeof shape - at, i ? ", %llu" : "%llu",
                                   (unsigned long long)t.shape[i]);
        snprintf(shape + at, sizeof shape - at, "]");
        upc_fail(EX_DATAERR, "%s: tensor '%s': data_offsets hold %llu bytes, but %s shape %s needs %llu",
                 p, name, (unsigned long long)(end - begin), st_dtype_name(t.dtype), shape,
                 (unsigned long long)t.nbytes);
    }
    t.offset = f->data_start + begin;
    t.data = file_bytes(f) + t.offset;
    t.name = upc_strdup(name);
    upc_grow((void **)&r->tensors, &r->cap, r->ntensors + 1, sizeof *r->tensors);
    r->tensors[r->ntensors++] = t;
}

/* Parse and check one file's header; append its tensors (shard index given). */
static void load_file(st_reader *r, const char *path, int shard)
{
    r->files = upc_realloc(r->files, (r->nfiles + 1) * sizeof *r->files);
    mapped_file *f = &r->files[r->nfiles++];
    map_file(f, path);
    if (f->m.len < 8)
        upc_fail(EX_DATAERR, "%s: %zu bytes, too short for the 8-byte header length", path, f->m.len);
    uint64_t n;
    memcpy(&n, file_bytes(f), 8);
    if (n > f->m.len - 8)
        upc_fail(EX_DATAERR, "%s: header length %llu is larger than the file (%zu bytes)", path,
                 (unsigned long long)n, f->m.len);
    if (n > MAX_HEADER_BYTES)
        upc_fail(EX_DATAERR, "%s: header length %llu exceeds the limit of %llu bytes", path,
                 (unsigned long long)n, MAX_HEADER_BYTES);
    f->data_start = 8 + n;
    const char *hdr = (const char *)file_bytes(f) + 8;
    if (n == 0 || hdr[0] != '{')
        upc_fail(EX_DATAERR, "%s: byte 8: header is not a JSON object (expected '{')", path);
    json_error_t err;
    json_t *root = json_loadb(hdr, (size_t)n, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        upc_fail(EX_DATAERR, "%s: byte %llu: header is not valid JSON: %s", path,
                 (unsigned long long)(8 + (err.position > 0 ? err.position : 0)), err.text);
    if (!json_is_object(root))
        upc_fail(EX_DATAERR, "%s: byte 8: header is not a JSON object", path);

    size_t first = r->ntensors;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(v))
                upc_fail(EX_DATAERR, "%s: __metadata__: expected an object of strings", path);
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv) {
                if (!json_is_string(mv))
                    upc_fail(EX_DATAERR, "%s: __metadata__ '%s': expected a string value", path, mk);
                if (shard == 0) {
                    r->meta = upc_realloc(r->meta, (r->nmeta + 1) * 2 * sizeof *r->meta);
                    r->meta[2 * r->nmeta] = upc_strdup(mk);
                    r->meta[2 * r->nmeta + 1] = upc_strdup(json_string_value(mv));
                    r->nmeta++;
                }
            }
            continue;
        }
        parse_tensor(r, f, shard, key, v);
    }
    json_decref(root);

    /* The spec: the byte buffer is fully indexed, no overlaps, no holes. */
    st_tensor *t = r->tensors + first;
    size_t count = r->ntensors - first;
    if (count)
        qsort(t, count, sizeof *t, cmp_offset);
    uint64_t at = f->data_start;
    for (size_t i = 0; i < count; i++) {
        if (t[i].offset < at)
            upc_fail(EX_DATAERR, "%s: tensor '%s': bytes [%llu, %llu) overlap tensor '%s'", path, t[i].name,
                     (unsigned long long)(t[i].offset - f->data_start),
                     (unsigned long long)(t[i].offset - f->data_start + t[i].nbytes), t[i - 1].name);
        if (t[i].offset > at)
            upc_fail(EX_DATAERR, "%s: tensor '%s': hole of %llu unindexed bytes before it (data offset %llu)",
                     path, t[i].name, (unsigned long long)(t[i].offset - at),
                     (unsigned long long)(at - f->data_start));
        at = t[i].offset + t[i].nbytes;
    }
    if (at != f->m.len)
        upc_fail(EX_DATAERR, "%s: %llu bytes after the last tensor are not indexed by the header", path,
                 (unsigned long long)(f->m.len - at));
}

static int cmp_name_ptr(const void *a, const void *b)
{
    return strcmp((*(st_tensor *const *)a)->name, (*(st_tensor *const *)b)->name);
}

static void build_name_index(st_reader *r)
{
    r->by_name = upc_malloc((r->ntensors ? r->ntensors : 1) * sizeof *r->by_name);
    for (size_t i = 0; i < r->ntensors; i++)
        r->by_name[i] = &r->tensors[i];
    if (r->ntensors)
        qsort(r->by_name, r->ntensors, sizeof *r->by_name, cmp_name_ptr);
    r->total = 0;
    for (size_t i = 0; i < r->ntensors; i++) {
        r->total += r->tensors[i].nbytes;
        if (i && strcmp(r->by_name[i]->name, r->by_name[i - 1]->name) == 0)
            upc_fail(EX_DATAERR, "%s: tensor '%s' appears twice (in %s and %s)", r->path, r->by_name[i]->name,
                     r->files[r->by_name[i - 1]->shard].path, r->files[r->by_name[i]->shard].path);
    }
}

static st_reader *new_reader(const char *path)
{
    st_reader *r = upc_calloc(1, sizeof *r);
    r->path = upc_strdup(path);
    return r;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* An index: {"metadata": {...}, "weight_map": {tensor: shard file}}. */
static st_reader *open_index(const char *index_path)
{
    st_reader *r = new_reader(index_path);
    char *dir = upc_strdup(index_path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    else
        strcpy(dir, ".");
    size_t len;
    char *text = upc_read_file(index_path, &len);
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    free(text);
    if (!root)
        upc_fail(EX_DATAERR, "%s: line %d: not valid JSON: %s", index_path, err.line, err.text);
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(root) || !json_is_object(wm))
        upc_fail(EX_DATAERR, "%s: expected an object with a \"weight_map\" object", index_path);
    if (json_object_size(wm) == 0)
        upc_fail(EX_DATAERR, "%s: weight_map is empty", index_path);

    /* Shard files in name order (model-00001-of-..., model-00002-...). */
    char **shards = NULL;
    size_t nshards = 0;
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v) {
        if (!json_is_string(v))
            upc_fail(EX_DATAERR, "%s: weight_map '%s': expected a file name string", index_path, key);
        const char *file = json_string_value(v);
        if (!*file || strchr(file, '/') || strcmp(file, "..") == 0 || strcmp(file, ".") == 0)
            upc_fail(EX_DATAERR, "%s: weight_map '%s': '%s' is not a plain file name in the checkpoint directory",
                     index_path, key, file);
        size_t i = 0;
        while (i < nshards && strcmp(shards[i], file) != 0)
            i++;
        if (i == nshards) {
            shards = upc_realloc(shards, (nshards + 1) * sizeof *shards);
            shards[nshards++] = upc_strdup(file);
        }
    }
    qsort(shards, nshards, sizeof *shards, cmp_cstr);
    for (size_t i = 0; i < nshards; i++) {
        char *p = upc_path_join(dir, shards[i]);
        size_t first = r->ntensors;
        load_file(r, p, (int)i);
        /* Each shard holds exactly the tensors the index assigns it. */
        size_t expected = 0;
        json_object_foreach(wm, key, v)
            if (strcmp(json_string_value(v), shards[i]) == 0)
                expected++;
        for (size_t k = first; k < r->ntensors; k++) {
            json_t *m = json_object_get(wm, r->tensors[k].name);
            if (!m || strcmp(json_string_value(m), shards[i]) != 0)
                upc_fail(EX_DATAERR, "%s: tensor '%s' is in this shard but the index %s", p, r->tensors[k].name,
                         m ? "puts it in another shard" : "does not list it");
        }
        if (r->ntensors - first != expected) {
            json_object_foreach(wm, key, v) {
                if (strcmp(json_string_value(v), shards[i]) != 0)
                    continue;
                bool found = false;
                for (size_t k = first; k < r->ntensors && !found; k++)
                    found = strcmp(r->tensors[k].name, key) == 0;
                if (!found)
                    upc_fail(EX_DATAERR, "%s: tensor '%s': the index puts it in %s, which does not hold it",
                             index_path, key, shards[i]);
            }
        }
        free(p);
        free(shards[i]);
    }
    free(shards);
    free(dir);
    json_decref(root);
    build_name_index(r);
    return r;
}

st_reader *st_open_named(const char *dir, const char *base)
{
    size_t n = strlen(base) + 32;
    char *name = upc_malloc(n);
    snprintf(name, n, "%s.safetensors.index.json", base);
    char *p = upc_path_join(dir, name);
    struct stat st;
    st_reader *r;
    if (stat(p, &st) == 0) {
        r = open_index(p);
    } else {
        free(p);
        snprintf(name, n, "%s.safetensors", base);
        p = upc_path_join(dir, name);
        if (stat(p, &st) != 0)
            upc_fail(EX_NOINPUT, "%s: no %s.safetensors or %s.safetensors.index.json in this directory", dir,
                     base, base);
        r = new_reader(p);
        load_file(r, p, 0);
        build_name_index(r);
    }
    free(p);
    free(name);
    return r;
}

st_reader *st_open(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        upc_fail(EX_NOINPUT, "%s: cannot open: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return st_open_named(path, "model");
    if (ends_with(path, ".index.json"))
        return open_index(path);
    st_reader *r = new_reader(path);
    load_file(r, path, 0);
    build_name_index(r);
    return r;
}

void st_close(st_reader *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nfiles; i++) {
        upc_unmap(&r->files[i].m);
        free(r->files[i].path);
    }
    for (size_t i = 0; i < r->ntensors; i++)
        free((char *)r->tensors[i].name);
    for (size_t i = 0; i < 2 * r->nmeta; i++)
        free(r->meta[i]);
    free(r->meta);
    free(r->files);
    free(r->tensors);
    free(r->by_name);
    free(r->path);
    free(r);
}

size_t st_count(const st_reader *r) { return r->ntensors; }
const st_tensor *st_at(const st_reader *r, size_t i) { return i < r->ntensors ? &r->tensors[i] : NULL; }
size_t st_file_count(const st_reader *r) { return r->nfiles; }
const char *st_file_path(const st_reader *r, size_t i) { return i < r->nfiles ? r->files[i].path : NULL; }
const char *st_path(const st_reader *r) { return r->path; }
uint64_t st_total_bytes(const st_reader *r) { return r->total; }

const char *st_meta(const st_reader *r, const char *key)
{
    for (size_t i = 0; i < r->nmeta; i++)
        if (strcmp(r->meta[2 * i], key) == 0)
            return r->meta[2 * i + 1];
    return NULL;
}

const st_tensor *st_find(const st_reader *r, const char *name)
{
    size_t lo = 0, hi = r->ntensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(r->by_name[mid]->name, name);
        if (c == 0)
            return r->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const st_tensor *st_need(const st_reader *r, const char *name)
{
    const st_tensor *t = st_find(r, name);
    if (!t)
        upc_fail(EX_DATAERR, "%s: tensor '%s': not in the checkpoint", r->path, name);
    return t;
}

static void convert_to_f32(st_dtype dt, const unsigned char *src, size_t n, float *dst)
{
    if (dt == ST_F32) {
        memcpy(dst, src, n * 4);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        dst[i] = dt == ST_BF16 ? st_bf16_to_f32(h) : st_f16_to_f32(h);
    }
}

void st_tensor_f32(const st_reader *r, const st_tensor *t, uint64_t first, size_t n, float *dst)
{
    const char *file = r->files[t->shard].path;
    if (!st_dtype_is_float(t->dtype))
        upc_fail(EX_DATAERR, "%s: tensor '%s': dtype %s is not supported here (expected F32, BF16 or F16)", file,
                 t->name, st_dtype_name(t->dtype));
    if (first > t->numel || n > t->numel - first)
        upc_fail(EX_SOFTWARE, "%s: tensor '%s': elements [%llu, %llu) requested, it has %llu", file, t->name,
                 (unsigned long long)first, (unsigned long long)(first + n), (unsigned long long)t->numel);
    convert_to_f32(t->dtype, t->data + first * st_dtype_size(t->dtype), n, dst);
}

void st_get_f32(const st_reader *r, const char *name, float *dst, size_t n)
{
    const st_tensor *t = st_need(r, name);
    if (n != t->numel)
        upc_fail(EX_DATAERR, "%s: tensor '%s': has %llu elements, expected %zu", r->files[t->shard].path, name,
                 (unsigned long long)t->numel, n);
    st_tensor_f32(r, t, 0, n, dst);
}

/* ---------------------------------------------------------------- writer */

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    uint64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;
    size_t shard;
} wtensor;

typedef struct {
    char *final;                  /* path it gets on commit */
    char *tmp;                    /* path while being written */
    size_t first, count;          /* its tensors */
    uint64_t data_bytes;
} wshard;

struct st_writer {
    char *dir;                    /* NULL for st_writer_file */
    char *base;
    char *file;                   /* st_writer_file's path */
    char *tmpdir;                 /* dir mode: DIR/.BASE.tmp.PID holding the temp files */
    uint64_t max_shard;
    wtensor *t;
    size_t nt, tcap;
    char **meta;
    size_t nmeta;
    wshard *s;
    size_t ns;
    bool begun;
    size_t cur;                   /* tensor being written */
    uint64_t cur_written;         /* its bytes written so far */
    int fd;                       /* the open shard, -1 between shards */
    size_t fd_shard;
    unsigned char *out;           /* output buffer */
    size_t out_len;
    unsigned char *conv;          /* conversion buffer, CHUNK_ELEMS * 4 bytes */
    float *fconv;                 /* float buffer for st_writer_write_tensor */
};

#define OUT_BUF (1 << 20)

static st_writer *writer_new(void)
{
    st_writer *w = upc_calloc(1, sizeof *w);
    w->fd = -1;
    w->out = upc_malloc(OUT_BUF);
    w->conv = upc_malloc(CHUNK_ELEMS * 4);
    w->fconv = upc_malloc(CHUNK_ELEMS * sizeof(float));
    st_writer_meta(w, "format", "pt");
    return w;
}

st_writer *st_writer_file(const char *path)
{
    st_writer *w = writer_new();
    w->file = upc_strdup(path);
    return w;
}

st_writer *st_writer_dir(const char *dir, const char *base, uint64_t max_shard_bytes)
{
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        upc_fail(EX_CANTCREAT, "%s: not a directory, cannot write a checkpoint there", dir);
    st_writer *w = writer_new();
    w->dir = upc_strdup(dir);
    w->base = upc_strdup(base);
    w->max_shard = max_shard_bytes;
    return w;
}

void st_writer_meta(st_writer *w, const char *key, const char *value)
{
    if (w->begun)
        upc_fail(EX_SOFTWARE, "st_writer_meta after st_writer_begin_data");
    for (size_t i = 0; i < w->nmeta; i++)
        if (strcmp(w->meta[2 * i], key) == 0) {
            free(w->meta[2 * i + 1]);
            w->meta[2 * i + 1] = upc_strdup(value);
            return;
        }
    w->meta = upc_realloc(w->meta, (w->nmeta + 1) * 2 * sizeof *w->meta);
    w->meta[2 * w->nmeta] = upc_strdup(key);
    w->meta[2 * w->nmeta + 1] = upc_strdup(value);
    w->nmeta++;
}

void st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const uint64_t *shape)
{
    if (w->begun)
        upc_fail(EX_SOFTWARE, "tensor '%s': st_writer_add after st_writer_begin_data", name);
    if ((unsigned)dtype >= ST_DTYPE_COUNT || ndim < 0 || ndim > ST_MAX_DIMS)
        upc_fail(EX_SOFTWARE, "tensor '%s': bad dtype or %d dimensions", name, ndim);
    json_t *valid = json_string(name);      /* NULL unless valid UTF-8 */
    if (!valid || strcmp(name, "__metadata__") == 0 || !*name)
        upc_fail(EX_SOFTWARE, "tensor name '%s' is reserved, empty or not UTF-8", name);
    json_decref(valid);
    upc_grow((void **)&w->t, &w->tcap, w->nt + 1, sizeof *w->t);
    wtensor *t = &w->t[w->nt++];
    memset(t, 0, sizeof *t);
    t->name = upc_strdup(name);
    t->dtype = dtype;
    t->ndim = ndim;
    t->nbytes = st_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        if (shape[i] && t->nbytes > UINT64_MAX / shape[i])
            upc_fail(EX_SOFTWARE, "tensor '%s': shape too large", name);
        t->nbytes *= shape[i];
    }
}

static char *shard_name(const char *base, size_t i, size_t n)
{
    size_t len = strlen(base) + 48;
    char *p = upc_malloc(len);
    if (n == 1)
        snprintf(p, len, "%s.safetensors", base);
    else
        snprintf(p, len, "%s-%05zu-of-%05zu.safetensors", base, i + 1, n);
    return p;
}

void st_writer_begin_data(st_writer *w)
{
    if (w->begun)
        upc_fail(EX_SOFTWARE, "st_writer_begin_data called twice");
    w->begun = true;
    /* Names must be unique: a JSON object cannot hold two. */
    char **names = upc_malloc((w->nt ? w->nt : 1) * sizeof *names);
    for (size_t i = 0; i < w->nt; i++)
        names[i] = w->t[i].name;
    if (w->nt)
        qsort(names, w->nt, sizeof *names, cmp_cstr);
    for (size_t i = 1; i < w->nt; i++)
        if (strcmp(names[i], names[i - 1]) == 0)
            upc_fail(EX_SOFTWARE, "tensor '%s' declared twice", names[i]);
    free(names);

    /* Plan shards greedily in declaration order, as transformers does. */
    size_t ns = 0;
    uint64_t in_shard = 0;
    for (size_t i = 0; i < w->nt; i++) {
        if (ns == 0 || (w->max_shard && in_shard > 0 && in_shard + w->t[i].nbytes > w->max_shard)) {
            ns++;
            in_shard = 0;
        }
        w->t[i].shard = ns - 1;
        in_shard += w->t[i].nbytes;
    }
    if (ns == 0)
        ns = 1;                   /* an empty checkpoint is still one file */
    w->s = upc_calloc(ns, sizeof *w->s);
    w->ns = ns;
    for (size_t i = 0; i < w->nt; i++) {
        wshard *s = &w->s[w->t[i].shard];
        if (s->count == 0)
            s->first = i;
        s->count++;
        s->data_bytes += w->t[i].nbytes;
    }
    if (w->file) {
        w->s[0].final = upc_strdup(w->file);
        size_t n = strlen(w->file) + 32;
        w->s[0].tmp = upc_malloc(n);
        snprintf(w->s[0].tmp, n, "%s.tmp.%ld", w->file, (long)getpid());
        upc_tmp_register(w->s[0].tmp);
    } else {
        size_t n = strlen(w->dir) + strlen(w->base) + 48;
        w->tmpdir = upc_malloc(n);
        snprintf(w->tmpdir, n, "%s/.%s.safetensors.tmp.%ld", w->dir, w->base, (long)getpid());
        upc_rm_rf(w->tmpdir);
        if (mkdir(w->tmpdir, 0777) != 0)
            upc_fail(EX_CANTCREAT, "%s: cannot create: %s", w->tmpdir, strerror(errno));
        upc_tmp_register(w->tmpdir);
        for (size_t i = 0; i < ns; i++) {
            char *name = shard_name(w->base, i, ns);
            w->s[i].final = upc_path_join(w->dir, name);
            w->s[i].tmp = upc_path_join(w->tmpdir, name);
            free(name);
        }
    }
    w->cur = 0;
    w->cur_written = 0;
}

static void flush_out(st_writer *w)
{
    if (w->out_len)
        upc_write_fd(w->fd, w->out, w->out_len, w->s[w->fd_shard].final);
    w->out_len = 0;
}

static void put_bytes(st_writer *w, const void *p, size_t n)
{
    if (n >= OUT_BUF) {
        flush_out(w);
        upc_write_fd(w->fd, p, n, w->s[w->fd_shard].final);
        return;
    }
    if (w->out_len + n > OUT_BUF)
        flush_out(w);
    memcpy(w->out + w->out_len, p, n);
    w->out_len += n;
}

/* The header of shard si: __metadata__ first, then tensors in data order. */
static void start_shard(st_writer *w, size_t si)
{
    wshard *s = &w->s[si];
    w->fd = open(s->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (w->fd < 0)
        upc_fail(EX_CANTCREAT, "%s: cannot create: %s", s->final, strerror(errno));
    w->fd_shard = si;
    json_t *root = json_object(), *meta = json_object();
    for (size_t i = 0; i < w->nmeta; i++)
        json_object_set_new(meta, w->meta[2 * i], json_string(w->meta[2 * i + 1]));
    json_object_set_new(root, "__metadata__", meta);
    uint64_t off = 0;
    for (size_t i = s->first; i < s->first + s->count; i++) {
        const wtensor *t = &w->t[i];
        json_t *jt = json_object(), *shape = json_array(), *offs = json_array();
        json_object_set_new(jt, "dtype", json_string(st_dtype_name(t->dtype)));
        for (int d = 0; d < t->ndim; d++)
            json_array_append_new(shape, json_integer((json_int_t)t->shape[d]));
        json_object_set_new(jt, "shape", shape);
        json_array_append_new(offs, json_integer((json_int_t)off));
        json_array_append_new(offs, json_integer((json_int_t)(off + t->nbytes)));
        json_object_set_new(jt, "data_offsets", offs);
        json_object_set_new(root, t->name, jt);
        off += t->nbytes;
    }
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!text)
        upc_fail(EX_SOFTWARE, "%s: cannot encode the header (tensor names must be UTF-8)", s->final);
    /* Pad with spaces so the data starts 8-byte aligned. */
    uint64_t n = strlen(text), padded = (8 + n + 7) / 8 * 8 - 8;
    put_bytes(w, &padded, 8);
    put_bytes(w, text, n);
    for (uint64_t i = n; i < padded; i++)
        put_bytes(w, " ", 1);
    free(text);
}

static void finish_shard(st_writer *w)
{
    const char *name = w->s[w->fd_shard].final;
    flush_out(w);
    if (fsync(w->fd) != 0 && errno != EINVAL)
        upc_fail(EX_IOERR, "%s: fsync failed: %s", name, strerror(errno));
    if (close(w->fd) != 0)
        upc_fail(EX_IOERR, "%s: write failed: %s", name, strerror(errno));
    w->fd = -1;
}

/* Open shards as needed and skip past empty tensors; the current tensor is
 * then w->cur with room left (or all are written). */
static void settle(st_writer *w)
{
    while (w->cur < w->nt && w->cur_written == w->t[w->cur].nbytes) {
        if (w->fd < 0)            /* a zero-byte tensor still opens its shard */
            start_shard(w, w->t[w->cur].shard);
        w->cur++;
        w->cur_written = 0;
        if (w->cur == w->nt || w->t[w->cur].shard != w->fd_shard)
            finish_shard(w);
    }
    if (w->cur < w->nt && w->fd < 0)
        start_shard(w, w->t[w->cur].shard);
}

const char *st_writer_current(const st_writer *w)
{
    for (size_t i = w->cur; i < w->nt; i++)
        if (i > w->cur || w->cur_written < w->t[i].nbytes)
            return w->t[i].name;
    return NULL;
}

static void need_room(st_writer *w, uint64_t nbytes)
{
    if (!w->begun)
        upc_fail(EX_SOFTWARE, "st_writer_write before st_writer_begin_data");
    if (nbytes == 0)
        return;
    settle(w);
    if (w->cur >= w->nt)
        upc_fail(EX_SOFTWARE, "%s: %llu bytes written after the last declared tensor",
                 w->file ? w->file : w->dir, (unsigned long long)nbytes);
    const wtensor *t = &w->t[w->cur];
    if (nbytes > t->nbytes - w->cur_written)
        upc_fail(EX_SOFTWARE, "tensor '%s': write of %llu bytes overruns its declared size (%llu of %llu written)",
                 t->name, (unsigned long long)nbytes, (unsigned long long)w->cur_written,
                 (unsigned long long)t->nbytes);
}

void st_writer_write_raw(st_writer *w, const void *bytes, size_t n)
{
    need_room(w, n);
    if (n == 0)
        return;
    put_bytes(w, bytes, n);
    w->cur_written += n;
    settle(w);
}

void st_writer_write_f32(st_writer *w, const float *src, size_t n)
{
    if (!w->begun)
        upc_fail(EX_SOFTWARE, "st_writer_write before st_writer_begin_data");
    while (n) {
        settle(w);
        if (w->cur < w->nt && !st_dtype_is_float(w->t[w->cur].dtype))
            upc_fail(EX_SOFTWARE, "tensor '%s': cannot write floats as %s", w->t[w->cur].name,
                     st_dtype_name(w->t[w->cur].dtype));
        size_t k = n < CHUNK_ELEMS ? n : CHUNK_ELEMS;
        st_dtype dt = w->cur < w->nt ? w->t[w->cur].dtype : ST_F32;
        need_room(w, (uint64_t)k * st_dtype_size(dt));
        if (dt == ST_F32) {
            put_bytes(w, src, k * 4);
        } else {
            for (size_t i = 0; i < k; i++) {
                uint16_t h = dt == ST_BF16 ? st_f32_to_bf16(src[i]) : st_f32_to_f16(src[i]);
                memcpy(w->conv + 2 * i, &h, 2);
            }
            put_bytes(w, w->conv, k * 2);
        }
        w->cur_written += (uint64_t)k * st_dtype_size(dt);
        src += k;
        n -= k;
    }
    settle(w);
}

void st_writer_write_tensor(st_writer *w, const st_reader *r, const st_tensor *t)
{
    if (!w->begun)
        upc_fail(EX_SOFTWARE, "st_writer_write before st_writer_begin_data");
    if (t->nbytes == 0)
        return;                   /* empty tensors need no data: settle() passes them */
    settle(w);
    if (w->cur >= w->nt)
        upc_fail(EX_SOFTWARE, "tensor '%s': written after the last declared tensor", t->name);
    const wtensor *o = &w->t[w->cur];
    uint64_t numel = o->nbytes / st_dtype_size(o->dtype);
    if (w->cur_written != 0 || numel != t->numel)
        upc_fail(EX_SOFTWARE, "tensor '%s' (%llu elements) written as '%s' (%llu elements)", t->name,
                 (unsigned long long)t->numel, o->name, (unsigned long long)numel);
    if (o->dtype == t->dtype) {
        st_writer_write_raw(w, t->data, t->nbytes);
        return;
    }
    if (!st_dtype_is_float(o->dtype) || !st_dtype_is_float(t->dtype))
        upc_fail(EX_DATAERR, "%s: tensor '%s': cannot convert %s to %s", r->files[t->shard].path, t->name,
                 st_dtype_name(t->dtype), st_dtype_name(o->dtype));
    for (uint64_t at = 0; at < t->numel; at += CHUNK_ELEMS) {
        size_t k = t->numel - at < CHUNK_ELEMS ? (size_t)(t->numel - at) : CHUNK_ELEMS;
        st_tensor_f32(r, t, at, k, w->fconv);
        st_writer_write_f32(w, w->fconv, k);
    }
}

/* Remove files of the same base that the new checkpoint replaces. */
static void remove_stale(st_writer *w)
{
    size_t n = strlen(w->dir) + 2 * strlen(w->base) + 64;
    char *p = upc_malloc(n);
    if (w->ns == 1) {
        snprintf(p, n, "%s/%s.safetensors.index.json", w->dir, w->base);
        unlink(p);
    } else {
        snprintf(p, n, "%s/%s.safetensors", w->dir, w->base);
        unlink(p);
    }
    snprintf(p, n, "%s/%s-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].safetensors", w->dir, w->base);
    glob_t g;
    if (glob(p, 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++) {
            bool keep = false;
            for (size_t k = 0; k < w->ns && !keep; k++)
                keep = w->ns > 1 && strcmp(g.gl_pathv[i], w->s[k].final) == 0;
            if (!keep)
                unlink(g.gl_pathv[i]);
        }
        globfree(&g);
    }
    free(p);
}

static void write_index(st_writer *w, char **tmp_out, char **final_out)
{
    json_t *root = json_object(), *meta = json_object(), *wm = json_object();
    uint64_t total = 0;
    for (size_t i = 0; i < w->nt; i++) {
        total += w->t[i].nbytes;
        const char *slash = strrchr(w->s[w->t[i].shard].final, '/');
        json_object_set_new(wm, w->t[i].name, json_string(slash + 1));
    }
    json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
    json_object_set_new(root, "metadata", meta);
    json_object_set_new(root, "weight_map", wm);
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    size_t n = strlen(w->base) + 32;
    char *name = upc_malloc(n);
    snprintf(name, n, "%s.safetensors.index.json", w->base);
    *tmp_out = upc_path_join(w->tmpdir, name);
    *final_out = upc_path_join(w->dir, name);
    free(name);
    int fd = open(*tmp_out, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd < 0)
        upc_fail(EX_CANTCREAT, "%s: cannot create: %s", *final_out, strerror(errno));
    upc_write_fd(fd, text, strlen(text), *final_out);
    upc_write_fd(fd, "\n", 1, *final_out);
    if (fsync(fd) != 0 && errno != EINVAL)
        upc_fail(EX_IOERR, "%s: fsync failed: %s", *final_out, strerror(errno));
    if (close(fd) != 0)
        upc_fail(EX_IOERR, "%s: write failed: %s", *final_out, strerror(errno));
    free(text);
}

static void writer_free(st_writer *w)
{
    for (size_t i = 0; i < w->nt; i++)
        free(w->t[i].name);
    for (size_t i = 0; i < 2 * w->nmeta; i++)
        free(w->meta[i]);
    for (size_t i = 0; i < w->ns; i++) {
        free(w->s[i].final);
        free(w->s[i].tmp);
    }
    free(w->t);
    free(w->meta);
    free(w->s);
    free(w->dir);
    free(w->base);
    free(w->file);
    free(w->tmpdir);
    free(w->out);
    free(w->conv);
    free(w->fconv);
    free(w);
}

static void rename_into_place(const char *tmp, const char *final)
{
    if (rename(tmp, final) != 0)
        upc_fail(EX_IOERR, "%s: cannot rename into place: %s", final, strerror(errno));
}

void st_writer_commit(st_writer *w)
{
    if (!w->begun)
        st_writer_begin_data(w);
    settle(w);
    if (w->cur < w->nt)
        upc_fail(EX_SOFTWARE, "tensor '%s': %llu of %llu bytes written at commit", w->t[w->cur].name,
                 (unsigned long long)w->cur_written, (unsigned long long)w->t[w->cur].nbytes);
    if (w->nt == 0) {             /* no tensor opened the file: header only */
        start_shard(w, 0);
        finish_shard(w);
    }
    if (w->file) {
        rename_into_place(w->s[0].tmp, w->s[0].final);
        upc_tmp_unregister(w->s[0].tmp);
        char *dir = upc_strdup(w->file), *slash = strrchr(dir, '/');
        if (slash) {
            *slash = 0;
            upc_fsync_dir(*dir ? dir : "/");
        } else {
            upc_fsync_dir(".");
        }
        free(dir);
    } else {
        char *itmp = NULL, *ifinal = NULL;
        if (w->ns > 1)
            write_index(w, &itmp, &ifinal);
        for (size_t i = 0; i < w->ns; i++)
            rename_into_place(w->s[i].tmp, w->s[i].final);
        if (itmp)
            rename_into_place(itmp, ifinal);   /* last: the index makes the shards visible */
        remove_stale(w);
        rmdir(w->tmpdir);
        upc_tmp_unregister(w->tmpdir);
        upc_fsync_dir(w->dir);
        free(itmp);
        free(ifinal);
    }
    writer_free(w);
}

void st_writer_abort(st_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    if (w->file && w->s) {
        unlink(w->s[0].tmp);
        upc_tmp_unregister(w->s[0].tmp);
    }
    if (w->tmpdir) {
        upc_rm_rf(w->tmpdir);
        upc_tmp_unregister(w->tmpdir);
    }
    writer_free(w);
}
