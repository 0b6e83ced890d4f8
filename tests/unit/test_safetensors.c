/* test_safetensors: the safetensors reader and writer (lib/safetensors.h).
 *
 *   test_safetensors FIXTURE_DIR SCRATCH_DIR   all checks; exit 1 on a failure
 *   test_safetensors write-big DIR MB [SHARD_MB]  write an MB-sized checkpoint
 *                                  (for the full-disk and unwritable tests)
 *
 * Bad-input cases run in a child process, since the library fails the tool:
 * the child must exit with the expected code and print one line naming the
 * file and the tensor. */
#include "safetensors.h"
#include "test_harness.h"
#include "util.h"

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *scratch;

static char *spath(const char *name)
{
    size_t n = strlen(scratch) + strlen(name) + 2;
    char *p = upc_malloc(n);
    snprintf(p, n, "%s/%s", scratch, name);
    return p;
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0)
        upc_fail(EX_IOERR, "%s: cannot write test file", path);
}

/* A safetensors file from a header text and n data bytes (value i & 0xff);
 * a header length field of 0 means the header's true length. */
static void write_st(const char *path, const char *header, uint64_t header_len_field, size_t ndata)
{
    size_t hn = strlen(header);
    if (header_len_field == 0)
        header_len_field = hn;
    unsigned char *buf = upc_malloc(8 + hn + ndata);
    memcpy(buf, &header_len_field, 8);
    memcpy(buf + 8, header, hn);
    for (size_t i = 0; i < ndata; i++)
        buf[8 + hn + i] = (unsigned char)i;
    write_bytes(path, buf, 8 + hn + ndata);
    free(buf);
}

static void open_it(const void *path)
{
    st_close(st_open(path));
}

/* ------------------------------------------------------------ conversions */

/* f16 reference: the value from its fields with ldexp. */
static double ref_f16(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double s = (h & 0x8000) ? -1 : 1;
    if (e == 31)
        return m ? NAN : s * INFINITY;
    if (e == 0)
        return s * ldexp(m, -24);
    return s * ldexp(1024 + m, e - 25);
}

/* bf16 reference: pick the nearer of the two neighbouring bf16 values in
 * double arithmetic, ties to the even one. */
static uint16_t ref_bf16(float x)
{
    union { float f; uint32_t u; } v = { .f = x };
    if (isnan(x))
        return 0x7fc0;
    uint16_t lo = (uint16_t)(v.u >> 16), hi = (uint16_t)(lo + 1);   /* hi: next larger magnitude */
    union { uint32_t u; float f; } a = { .u = (uint32_t)lo << 16 }, b = { .u = (uint32_t)hi << 16 };
    double ax = fabs((double)x), da = fabs((double)a.f);
    /* Past the largest bf16 the next value would be 2^128 (rounds to inf). */
    double db = (hi & 0x7fff) == 0x7f80 ? 0x1p128 : fabs((double)b.f);
    if (isinf(x) || ax == da)
        return lo;
    if (ax - da < db - ax)
        return lo;
    if (ax - da > db - ax)
        return hi;
    return (lo & 1) ? hi : lo;
}

static void test_conversions(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_f16_to_f32((uint16_t)h);
        double r = ref_f16((uint16_t)h);
        if (isnan(r) ? !isnan(f) : (double)f != r)
            bad++;
        /* f16 -> f32 -> f16 is the identity on every non-NaN value. */
        if (!isnan(r) && st_f32_to_f16(f) != h)
            bad++;
    }
    CHECK(bad == 0);
    CHECK(st_f32_to_f16(65520.0f) == 0x7c00);      /* rounds up past the max */
    CHECK(st_f32_to_f16(65519.0f) == 0x7bff);
    CHECK(st_f32_to_f16(0x1p-25f) == 0);            /* tie to even: 0 */
    CHECK(st_f32_to_f16(0x1.8p-24f) == 2);          /* tie 1.5 ulp -> 2 */
    CHECK(st_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00);  /* tie to even */
    CHECK(st_f32_to_f16(1.0f + 0x3p-11f) == 0x3c02);

    /* bf16: random bit patterns (and their neighbourhoods of ties) against
     * the reference rounding. */
    uint64_t seed = 42;
    bad = 0;
    for (int i = 0; i < 1000000; i++) {
        uint32_t u = (uint32_t)upc_splitmix64(&seed);
        if (i % 4 == 1)
            u = (u & 0xffff0000u) | 0x8000u;           /* an exact tie */
        union { uint32_t u; float f; } v = { .u = u };
        uint16_t got = st_f32_to_bf16(v.f), want = ref_bf16(v.f);
        if (isnan(v.f) ? !isnan(st_bf16_to_f32(got)) : got != want)
            bad++;
    }
    CHECK(bad == 0);
    CHECK(st_f32_to_bf16(1.0f) == 0x3f80);
    union { uint32_t u; float f; } t1 = { .u = 0x3f808000u }, t2 = { .u = 0x3f818000u }, big = { .u = 0x7f7fffffu };
    CHECK(st_f32_to_bf16(t1.f) == 0x3f80);          /* tie, even stays */
    CHECK(st_f32_to_bf16(t2.f) == 0x3f82);          /* tie, odd rounds up */
    CHECK(st_f32_to_bf16(big.f) == 0x7f80);         /* rounds to infinity */
    CHECK(isnan(st_bf16_to_f32(st_f32_to_bf16(NAN))));
    CHECK(st_bf16_to_f32(0xc000) == -2.0f);
}

/* ------------------------------------------------------------ fixtures */

static void get_i32_tensor(const void *r)
{
    float x[3];
    st_get_f32(r, "d.i32", x, 3);
}

static void get_wrong_count(const void *r)
{
    float x[5];
    st_get_f32(r, "a.f32", x, 5);
}

static void get_missing(const void *r)
{
    float x[1];
    st_get_f32(r, "nope", x, 1);
}

static void test_fixture(const char *fixtures)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tiny.safetensors", fixtures);
    st_reader *r = st_open(path);
    CHECK(st_count(r) == 6);
    CHECK(st_file_count(r) == 1);
    CHECK(st_meta(r, "format") && strcmp(st_meta(r, "format"), "pt") == 0);
    CHECK(st_meta(r, "source") && strcmp(st_meta(r, "source"), "make_fixtures.py") == 0);
    CHECK(st_meta(r, "absent") == NULL);
    /* Listed in data order, whatever the header order. */
    CHECK(strcmp(st_at(r, 0)->name, "a.f32") == 0);
    CHECK(strcmp(st_at(r, 5)->name, "d.i32") == 0);
    CHECK(st_total_bytes(r) == 24 + 8 + 8 + 4 + 12);

    float a[6];
    st_get_f32(r, "a.f32", a, 6);
    CHECK(a[0] == 1.0f && a[1] == -2.5f && a[2] == 3.25f && a[3] == 0.0f && a[4] == 0.001f && a[5] == -7.0f);
    const st_tensor *ta = st_find(r, "a.f32");
    CHECK(ta && ta->dtype == ST_F32 && ta->ndim == 2 && ta->shape[0] == 2 && ta->shape[1] == 3 && ta->numel == 6);
    CHECK(ta && (ta->offset - 8) % 8 == 0);

    float b[4];
    st_get_f32(r, "b.bf16", b, 4);
    CHECK(b[0] == 1.0f && b[1] == -2.0f && b[2] == 0.333984375f && isinf(b[3]) && b[3] > 0);
    float c[4];
    st_get_f32(r, "c.f16", c, 4);
    CHECK(c[0] == 1.0f && c[1] == -0.5f && c[2] == 65504.0f && c[3] == 0x1p-24f);
    /* A chunk from the middle. */
    float mid[2];
    st_tensor_f32(r, st_find(r, "a.f32"), 2, 2, mid);
    CHECK(mid[0] == 3.25f && mid[1] == 0.0f);

    const st_tensor *e = st_find(r, "e.empty");
    CHECK(e && e->numel == 0 && e->nbytes == 0 && e->ndim == 2 && e->shape[1] == 5);
    float s;
    st_get_f32(r, "s.scalar", &s, 1);
    CHECK(s == 42.0f);
    CHECK(st_find(r, "s.scalar")->ndim == 0);

    /* Other dtypes are listed and readable raw, refused as float. */
    const st_tensor *d = st_find(r, "d.i32");
    CHECK(d && d->dtype == ST_I32 && d->nbytes == 12);
    int32_t di[3];
    memcpy(di, d->data, 12);
    CHECK(di[0] == 1 && di[1] == -2 && di[2] == 3);
    EXPECT_FAIL(get_i32_tensor, r, EX_DATAERR, "tiny.safetensors", "'d.i32'", "I32");
    EXPECT_FAIL(get_wrong_count, r, EX_DATAERR, "'a.f32'", "6 elements");
    EXPECT_FAIL(get_missing, r, EX_DATAERR, "'nope'", "not in the checkpoint");
    st_close(r);

    /* The sharded fixture, through the directory and through the index. */
    for (int via = 0; via < 2; via++) {
        snprintf(path, sizeof path, via ? "%s/sharded/model.safetensors.index.json" : "%s/sharded", fixtures);
        r = st_open(path);
        CHECK(st_count(r) == 3);
        CHECK(st_file_count(r) == 2);
        float emb[4], norm[2], head[2];
        st_get_f32(r, "model.embed_tokens.weight", emb, 4);
        st_get_f32(r, "model.norm.weight", norm, 2);
        st_get_f32(r, "lm_head.weight", head, 2);
        CHECK(emb[0] == 0.5f && emb[3] == 2.0f && norm[0] == 1.0f && norm[1] == 2.0f && head[1] == -4.0f);
        CHECK(st_find(r, "lm_head.weight")->shard == 1);
        st_close(r);
    }
}

/* ------------------------------------------------------------ bad input */

static void test_bad_files(void)
{
    char *p = spath("bad.safetensors");
    const char *tiny_hdr = "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";

    char *missing = spath("no-such.safetensors");
    EXPECT_FAIL(open_it, missing, EX_NOINPUT, "no-such.safetensors", "cannot open");
    free(missing);
    EXPECT_FAIL(open_it, scratch, EX_NOINPUT, "no model.safetensors");

    write_bytes(p, "\x01\x00\x00", 3);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "too short");

    write_st(p, tiny_hdr, 1000, 8);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "header length 1000 is larger than the file");

    write_st(p, "{\"t\": nope}", 0, 0);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "not valid JSON");

    write_st(p, "[1,2]", 0, 0);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "not a JSON object");

    write_st(p, "\"str\"", 0, 0);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "not a JSON object");

    write_st(p, "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 0, 8);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "'t'", "end is before begin");

    write_st(p, "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", 0, 8);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "'t'", "past the end");

    write_st(p, "{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 0, 8);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "'t'", "hold 8 bytes", "needs 12");

    write_st(p, "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"u\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 0, 8);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "'u'", "overlap tensor 't'");

    write_st(p, "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 0, 8);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "'t'", "hole of 4");

    write_st(p, tiny_hdr, 0, 12);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "4 bytes after the last tensor");

    write_st(p, "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                "\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 0, 8);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "duplicate");

    write_st(p, "{\"t\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "'t'", "dtype 'F33'");

    write_st(p, "{\"t\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 0, 1);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "'t'", "9 dimensions");

    write_st(p, "{\"t\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 0, 8);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "'t'", "shape[0]");

    write_st(p, "{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", 0, 8);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "'t'", "data_offsets");

    write_st(p, "{\"t\":[1]}", 0, 0);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "'t'", "expected an object");

    write_st(p, "{\"__metadata__\":{\"n\":1}}", 0, 0);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "__metadata__ 'n'");

    /* Shape product overflowing 64 bits. */
    write_st(p, "{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 0, 8);
    EXPECT_FAIL(open_it, p, EX_DATAERR, p, "'t'", "too large");

    /* Good ones: a header padded with spaces, and an empty file body. */
    const char *padded = "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}     ";
    write_st(p, padded, 0, 8);
    st_reader *r = st_open(p);
    CHECK(st_count(r) == 1 && st_find(r, "t")->offset == 8 + strlen(padded));
    st_close(r);
    write_st(p, "{}", 0, 0);
    r = st_open(p);
    CHECK(st_count(r) == 0);
    st_close(r);
    free(p);
}

static void test_bad_index(void)
{
    char *dir = spath("badidx");
    upc_mkdirs(dir);
    char path[4096], idx[4096];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    snprintf(path, sizeof path, "%s/s1.safetensors", dir);
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8);

    const char *t1 = "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\"}}";
    write_bytes(idx, t1, strlen(t1));
    EXPECT_FAIL(open_it, dir, EX_NOINPUT, "s2.safetensors", "cannot open");

    const char *t2 = "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s1.safetensors\"}}";
    write_bytes(idx, t2, strlen(t2));
    EXPECT_FAIL(open_it, dir, EX_DATAERR, "'b'", "does not hold it");

    const char *t3 = "{\"weight_map\": {\"z\": \"s1.safetensors\"}}";
    write_bytes(idx, t3, strlen(t3));
    EXPECT_FAIL(open_it, dir, EX_DATAERR, "s1.safetensors", "'a'", "does not list it");

    const char *t4 = "{\"weight_map\": {\"a\": \"../s1.safetensors\"}}";
    write_bytes(idx, t4, strlen(t4));
    EXPECT_FAIL(open_it, dir, EX_DATAERR, "'a'", "not a plain file name");

    const char *t5 = "{\"weight_map\": [1]}";
    write_bytes(idx, t5, strlen(t5));
    EXPECT_FAIL(open_it, dir, EX_DATAERR, "model.safetensors.index.json", "weight_map");

    write_bytes(idx, "{\"weight_map\": {", 16);
    EXPECT_FAIL(open_it, dir, EX_DATAERR, "model.safetensors.index.json", "not valid JSON");

    const char *t6 = "{\"weight_map\": {\"a\": \"s1.safetensors\", \"a\": \"s1.safetensors\"}}";
    write_bytes(idx, t6, strlen(t6));
    EXPECT_FAIL(open_it, dir, EX_DATAERR, "model.safetensors.index.json", "duplicate");

    const char *ok = "{\"metadata\": {\"total_size\": 8}, \"weight_map\": {\"a\": \"s1.safetensors\"}}";
    write_bytes(idx, ok, strlen(ok));
    st_reader *r = st_open(dir);
    CHECK(st_count(r) == 1 && st_file_count(r) == 1);
    st_close(r);
    free(dir);
}

/* ------------------------------------------------------------ round trips */

static float val(uint64_t i, int k)
{
    /* Values with bits below bf16 precision, of all signs and scales. */
    return (float)((double)((i * 2654435761u + (uint64_t)k * 40503u) % 100003) / 977.0 - 51.0) *
           (float)ldexp(1.0, (int)(i % 17) - 8);
}

typedef struct {
    const char *name;
    int ndim;
    uint64_t shape[4];
} spec;

static const spec SPECS[] = {
    {"model.embed_tokens.weight", 2, {37, 16}},
    {"scalar", 0, {0}},
    {"empty", 2, {0, 3}},
    {"cube", 3, {3, 5, 7}},
    {"big", 1, {70000}},          /* more than one conversion chunk */
    {"lm_head.weight", 2, {37, 16}},
};
#define NSPECS (sizeof SPECS / sizeof *SPECS)

static uint64_t numel_of(const spec *s)
{
    uint64_t n = 1;
    for (int i = 0; i < s->ndim; i++)
        n *= s->shape[i];
    return n;
}

/* Write SPECS with values val(i, k) as dtype, sending the data in uneven chunks. */
static void write_specs(st_writer *w, st_dtype dt)
{
    st_writer_meta(w, "note", "round trip");
    for (size_t k = 0; k < NSPECS; k++)
        st_writer_add(w, SPECS[k].name, dt, SPECS[k].ndim, SPECS[k].shape);
    st_writer_begin_data(w);
    for (size_t k = 0; k < NSPECS; k++) {
        uint64_t n = numel_of(&SPECS[k]);
        CHECK(n == 0 || strcmp(st_writer_current(w), SPECS[k].name) == 0);
        float *x = upc_malloc(n * sizeof *x);
        for (uint64_t i = 0; i < n; i++)
            x[i] = val(i, (int)k);
        size_t at = 0, step = 1;
        while (at < n) {
            size_t m = n - at < step ? n - at : step;
            st_writer_write_f32(w, x + at, m);
            at += m;
            step = step * 3 + 1;
        }
        free(x);
    }
    CHECK(st_writer_current(w) == NULL);
}

/* Every SPECS tensor is there as dtype dt, holding val() rounded as `rounded`. */
static int check_specs(const st_reader *r, st_dtype dt, st_dtype rounded)
{
    int bad = 0;
    for (size_t k = 0; k < NSPECS; k++) {
        const st_tensor *t = st_find(r, SPECS[k].name);
        if (!t || t->dtype != dt || t->ndim != SPECS[k].ndim) {
            bad++;
            continue;
        }
        for (int d = 0; d < t->ndim; d++)
            bad += t->shape[d] != SPECS[k].shape[d];
        uint64_t n = numel_of(&SPECS[k]);
        float *x = upc_malloc(n * sizeof *x);
        st_get_f32(r, SPECS[k].name, x, n);
        for (uint64_t i = 0; i < n; i++) {
            float want = val(i, (int)k);
            if (rounded == ST_BF16)
                want = st_bf16_to_f32(ref_bf16(want));
            else if (rounded == ST_F16)
                want = (float)ref_f16(st_f32_to_f16(want));
            bad += memcmp(&x[i], &want, 4) != 0;
        }
        free(x);
    }
    return bad;
}

static void test_roundtrip(void)
{
    st_dtype dts[] = {ST_F32, ST_BF16, ST_F16};
    for (int i = 0; i < 3; i++) {
        char *p = spath("rt.safetensors");
        st_writer *w = st_writer_file(p);
        write_specs(w, dts[i]);
        st_writer_commit(w);
        st_reader *r = st_open(p);
        CHECK(st_count(r) == NSPECS);
        CHECK(check_specs(r, dts[i], dts[i]) == 0);
        CHECK(strcmp(st_meta(r, "format"), "pt") == 0 && strcmp(st_meta(r, "note"), "round trip") == 0);
        CHECK((st_at(r, 0)->offset) % 8 == 0);     /* header padded: data 8-aligned */
        /* Data in declaration order. */
        CHECK(strcmp(st_at(r, 0)->name, "model.embed_tokens.weight") == 0);
        st_close(r);
        free(p);
    }

    /* Same inputs, same bytes. */
    char *p1 = spath("det1.safetensors"), *p2 = spath("det2.safetensors");
    st_writer *w = st_writer_file(p1);
    write_specs(w, ST_BF16);
    st_writer_commit(w);
    w = st_writer_file(p2);
    write_specs(w, ST_BF16);
    st_writer_commit(w);
    size_t n1, n2;
    char *b1 = upc_read_file(p1, &n1), *b2 = upc_read_file(p2, &n2);
    CHECK(n1 == n2 && memcmp(b1, b2, n1) == 0);
    free(b1);
    free(b2);
    free(p1);
    free(p2);
}

static bool exists(const char *dir, const char *name)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat st;
    return stat(p, &st) == 0;
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.' || (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."));
    closedir(d);
    return n;
}

static void test_sharded(void)
{
    char *dir = spath("sharded");
    upc_mkdirs(dir);
    /* F32 sizes: 2368, 4, 0, 420, 280000, 2368 bytes. A 3000-byte limit:
     * [embed, scalar, empty, cube] [big, alone: over the limit] [lm_head]. */
    st_writer *w = st_writer_dir(dir, "model", 3000);
    write_specs(w, ST_F32);
    st_writer_commit(w);
    CHECK(exists(dir, "model-00001-of-00003.safetensors"));
    CHECK(exists(dir, "model-00002-of-00003.safetensors"));
    CHECK(exists(dir, "model-00003-of-00003.safetensors"));
    CHECK(exists(dir, "model.safetensors.index.json"));
    CHECK(!exists(dir, "model.safetensors"));
    CHECK(count_entries(dir) == 4);                 /* no temp left behind */

    char idx[4096];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    json_t *j = json_load_file(idx, 0, NULL);
    CHECK(j && json_integer_value(json_object_get(json_object_get(j, "metadata"), "total_size")) ==
                   2368 + 4 + 0 + 420 + 280000 + 2368);
    json_t *wm = json_object_get(j, "weight_map");
    CHECK(json_object_size(wm) == NSPECS);
    CHECK(strcmp(json_string_value(json_object_get(wm, "cube")), "model-00001-of-00003.safetensors") == 0);
    CHECK(strcmp(json_string_value(json_object_get(wm, "big")), "model-00002-of-00003.safetensors") == 0);
    CHECK(strcmp(json_string_value(json_object_get(wm, "lm_head.weight")), "model-00003-of-00003.safetensors") == 0);
    json_decref(j);

    st_reader *r = st_open(dir);
    CHECK(st_file_count(r) == 3 && st_count(r) == NSPECS);
    CHECK(check_specs(r, ST_F32, ST_F32) == 0);

    /* Copy through st_writer_write_tensor into one BF16 file: converted. */
    char *dir2 = spath("single");
    upc_mkdirs(dir2);
    w = st_writer_dir(dir2, "model", 0);
    for (size_t i = 0; i < st_count(r); i++) {
        const st_tensor *t = st_at(r, i);
        st_writer_add(w, t->name, ST_BF16, t->ndim, t->shape);
    }
    st_writer_begin_data(w);
    for (size_t i = 0; i < st_count(r); i++)
        st_writer_write_tensor(w, r, st_at(r, i));
    st_writer_commit(w);
    st_reader *r2 = st_open(dir2);
    CHECK(st_file_count(r2) == 1 && check_specs(r2, ST_BF16, ST_BF16) == 0);

    /* ... and back to F32 sharded in the first directory (bf16 values are
     * exact in F32), replacing the old shards; then raw-copied unsharded. */
    w = st_writer_dir(dir, "model", 282800);   /* [embed .. big] [lm_head] */
    for (size_t i = 0; i < st_count(r2); i++)
        st_writer_add(w, st_at(r2, i)->name, ST_F32, st_at(r2, i)->ndim, st_at(r2, i)->shape);
    st_writer_begin_data(w);
    for (size_t i = 0; i < st_count(r2); i++)
        st_writer_write_tensor(w, r2, st_at(r2, i));
    st_close(r);
    st_writer_commit(w);
    CHECK(exists(dir, "model-00001-of-00002.safetensors") && exists(dir, "model-00002-of-00002.safetensors"));
    CHECK(!exists(dir, "model-00003-of-00003.safetensors") && !exists(dir, "model-00001-of-00003.safetensors"));
    CHECK(count_entries(dir) == 3);
    r = st_open(dir);
    int bad = 0;
    for (size_t i = 0; i < st_count(r2); i++) {
        const st_tensor *a = st_at(r2, i), *b = st_find(r, a->name);
        float *x = upc_malloc((a->numel ? a->numel : 1) * 4), *y = upc_malloc((a->numel ? a->numel : 1) * 4);
        st_get_f32(r2, a->name, x, a->numel);
        st_get_f32(r, a->name, y, a->numel);
        bad += !b || b->dtype != ST_F32 || memcmp(x, y, a->numel * 4) != 0;
        free(x);
        free(y);
    }
    CHECK(bad == 0);
    st_close(r2);

    w = st_writer_dir(dir, "model", 0);
    for (size_t i = 0; i < st_count(r); i++)
        st_writer_add(w, st_at(r, i)->name, ST_F32, st_at(r, i)->ndim, st_at(r, i)->shape);
    st_writer_begin_data(w);
    for (size_t i = 0; i < st_count(r); i++)
        st_writer_write_raw(w, st_at(r, i)->data, st_at(r, i)->nbytes);
    st_close(r);
    st_writer_commit(w);
    CHECK(exists(dir, "model.safetensors") && count_entries(dir) == 1);
    r = st_open(dir);
    CHECK(st_file_count(r) == 1 && check_specs(r, ST_F32, ST_BF16) == 0);
    st_close(r);
    free(dir);
    free(dir2);
}

/* ------------------------------------------------------------ writer misuse */

static void overrun(const void *dir)
{
    st_writer *w = st_writer_dir(dir, "model", 0);
    uint64_t shape[1] = {2};
    st_writer_add(w, "x", ST_F32, 1, shape);
    st_writer_begin_data(w);
    float v[3] = {1, 2, 3};
    st_writer_write_f32(w, v, 3);
}

static void short_commit(const void *dir)
{
    st_writer *w = st_writer_dir(dir, "model", 0);
    uint64_t shape[1] = {4};
    st_writer_add(w, "x", ST_BF16, 1, shape);
    st_writer_begin_data(w);
    float v[3] = {1, 2, 3};
    st_writer_write_f32(w, v, 3);
    st_writer_commit(w);
}

static void duplicate_decl(const void *dir)
{
    st_writer *w = st_writer_dir(dir, "model", 0);
    uint64_t shape[1] = {4};
    st_writer_add(w, "x", ST_F32, 1, shape);
    st_writer_add(w, "x", ST_F32, 1, shape);
    st_writer_begin_data(w);
}

static void add_after_begin(const void *dir)
{
    st_writer *w = st_writer_dir(dir, "model", 0);
    uint64_t shape[1] = {4};
    st_writer_begin_data(w);
    st_writer_add(w, "x", ST_F32, 1, shape);
}

static void test_writer_misuse(void)
{
    char *dir = spath("misuse");
    upc_mkdirs(dir);
    EXPECT_FAIL(overrun, dir, EX_SOFTWARE, "'x'", "overruns");
    EXPECT_FAIL(short_commit, dir, EX_SOFTWARE, "'x'", "6 of 8 bytes");
    EXPECT_FAIL(duplicate_decl, dir, EX_SOFTWARE, "'x'", "declared twice");
    EXPECT_FAIL(add_after_begin, dir, EX_SOFTWARE, "'x'", "after st_writer_begin_data");
    /* Failures leave nothing behind. */
    CHECK(count_entries(dir) == 0);
    char *nodir = spath("misuse/absent");
    EXPECT_FAIL(overrun, nodir, EX_CANTCREAT, "absent", "not a directory");
    free(nodir);

    /* Abort removes the temp files. */
    st_writer *w = st_writer_dir(dir, "model", 0);
    uint64_t shape[1] = {4};
    st_writer_add(w, "x", ST_F32, 1, shape);
    st_writer_begin_data(w);
    float v[2] = {1, 2};
    st_writer_write_f32(w, v, 2);
    st_writer_abort(w);
    CHECK(count_entries(dir) == 0);
    free(dir);
}

/* Memory while writing does not grow with the data: write 256 MB. */
static long max_rss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static void test_streaming_memory(void)
{
    char *dir = spath("stream");
    upc_mkdirs(dir);
    enum { CHUNK = 1 << 18, TENSORS = 16, PER = 4 };   /* 16 tensors of 4 x 1 MB floats */
    float *x = upc_malloc(CHUNK * sizeof *x);
    for (int i = 0; i < CHUNK; i++)
        x[i] = (float)i;
    long before = max_rss_kb();
    st_writer *w = st_writer_dir(dir, "model", 20u << 20);
    for (int t = 0; t < TENSORS; t++) {
        char name[32];
        snprintf(name, sizeof name, "t%d", t);
        uint64_t shape[2] = {PER, CHUNK};
        st_writer_add(w, name, t % 2 ? ST_BF16 : ST_F32, 2, shape);
    }
    st_writer_begin_data(w);
    for (int t = 0; t < TENSORS; t++)
        for (int k = 0; k < PER; k++)
            st_writer_write_f32(w, x, CHUNK);
    st_writer_commit(w);
    long grew = max_rss_kb() - before;
    printf("# writing %d MB of tensors grew the peak RSS by %ld kB\n", TENSORS * PER * CHUNK * 4 >> 20, grew);
    CHECK(grew < 16 * 1024);
    st_reader *r = st_open(dir);
    CHECK(st_count(r) == TENSORS && st_file_count(r) == 3);
    float y[4];
    st_tensor_f32(r, st_find(r, "t14"), (uint64_t)3 * CHUNK + 1000, 4, y);
    CHECK(y[0] == 1000.0f && y[3] == 1003.0f);
    st_close(r);
    free(x);
    upc_rm_rf(dir);
    free(dir);
}

/* write-big DIR MB [SHARD_MB]: an MB-sized checkpoint of F32 ramps. */
static int write_big(const char *dir, long mb, long shard_mb)
{
    enum { CHUNK = 1 << 18 };
    float *x = upc_malloc(CHUNK * sizeof *x);
    for (int i = 0; i < CHUNK; i++)
        x[i] = (float)i;
    st_writer *w = st_writer_dir(dir, "model", (uint64_t)shard_mb << 20);
    for (long t = 0; t < mb; t++) {
        char name[32];
        snprintf(name, sizeof name, "t%ld", t);
        uint64_t shape[1] = {CHUNK};
        st_writer_add(w, name, ST_F32, 1, shape);
    }
    st_writer_begin_data(w);
    for (long t = 0; t < mb; t++)
        st_writer_write_f32(w, x, CHUNK);
    st_writer_commit(w);
    free(x);
    return 0;
}

int main(int argc, char **argv)
{
    upc_init("test_safetensors");
    if (argc >= 4 && strcmp(argv[1], "write-big") == 0)
        return write_big(argv[2], atol(argv[3]), argc > 4 ? atol(argv[4]) : 0);
    if (argc != 3) {
        fprintf(stderr, "usage: test_safetensors FIXTURE_DIR SCRATCH_DIR | write-big DIR MB [SHARD_MB]\n");
        return EX_USAGE;
    }
    scratch = argv[2];
    test_conversions();
    test_fixture(argv[1]);
    test_bad_files();
    test_bad_index();
    test_roundtrip();
    test_sharded();
    test_writer_misuse();
    test_streaming_memory();
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
