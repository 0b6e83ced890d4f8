/* shard.c: write and read shard directories (formats/shards.md). */
#include "shard.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

bool shard_is_val(uint64_t id, uint64_t seed, double val_fraction)
{
    unsigned char b[8];
    put_u64(b, id);
    double u = (double)(upc_hash64(b, sizeof b, seed) >> 11) * 0x1p-53;
    return u < val_fraction;
}

void shard_widen(const unsigned char *raw, uint32_t w, size_t n, uint32_t *out)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    /* Stored little-endian: a plain copy, or a widening loop the compiler
     * vectorizes. */
    if (w == 4) {
        memcpy(out, raw, n * 4);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t v;
        memcpy(&v, raw + 2 * i, 2);
        out[i] = v;
    }
#else
    if (w == 2) {
        for (size_t i = 0; i < n; i++)
            out[i] = (uint32_t)raw[2 * i] | (uint32_t)raw[2 * i + 1] << 8;
    } else {
        for (size_t i = 0; i < n; i++)
            out[i] = (uint32_t)raw[4 * i] | (uint32_t)raw[4 * i + 1] << 8 |
                     (uint32_t)raw[4 * i + 2] << 16 | (uint32_t)raw[4 * i + 3] << 24;
    }
#endif
}

/* ---- writing ---- */

static void shard_file_name(char *buf, size_t n, size_t i)
{
    snprintf(buf, n, "shard-%05zu.zst", i);
}

/* Write a whole file in dir (fsynced) or fail naming it. */
static void write_whole_file(const char *dir, const char *name, const void *data, size_t n)
{
    char *path = upc_path_join(dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd < 0)
        upc_fail(EX_CANTCREAT, "%s: cannot create: %s", path, strerror(errno));
    upc_write_fd(fd, data, n, path);
    if (fsync(fd) != 0 && errno != EINVAL)
        upc_fail(EX_IOERR, "%s: fsync failed: %s", path, strerror(errno));
    if (close(fd) != 0)
        upc_fail(EX_IOERR, "%s: write failed: %s", path, strerror(errno));
    free(path);
}

static void close_shard_file(shard_writer *w)
{
    if (w->fd < 0)
        return;
    char name[64];
    shard_file_name(name, sizeof name, w->nfiles - 1);
    if (fsync(w->fd) != 0 && errno != EINVAL)
        upc_fail(EX_IOERR, "%s/%s: fsync failed: %s", w->dir, name, strerror(errno));
    if (close(w->fd) != 0)
        upc_fail(EX_IOERR, "%s/%s: write failed: %s", w->dir, name, strerror(errno));
    w->fd = -1;
}

static void open_shard_file(shard_writer *w)
{
    char name[64];
    close_shard_file(w);
    shard_file_name(name, sizeof name, w->nfiles);
    char *path = upc_path_join(w->dir, name);
    w->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (w->fd < 0)
        upc_fail(EX_CANTCREAT, "%s: cannot create: %s", path, strerror(errno));
    free(path);
    upc_grow((void **)&w->file_bytes, &w->files_cap, w->nfiles + 1, sizeof *w->file_bytes);
    w->file_bytes[w->nfiles++] = 0;
}

static ZSTD_CCtx *make_cctx(int level)
{
    ZSTD_CCtx *c = ZSTD_createCCtx();
    if (!c)
        upc_fail(EX_OSERR, "out of memory (zstd context)");
    ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
    ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 1);
    return c;
}

/* Compress src into w->cbuf as one frame; returns its size. */
static size_t compress_frame(shard_writer *w, const void *src, size_t n)
{
    size_t bound = ZSTD_compressBound(n);
    if (bound > w->ccap) {
        free(w->cbuf);
        w->cbuf = upc_malloc(bound);
        w->ccap = bound;
    }
    size_t r = ZSTD_compress2(w->cctx, w->cbuf, w->ccap, src, n);
    if (ZSTD_isError(r))
        upc_fail(EX_SOFTWARE, "%s: zstd compression failed: %s", w->dir, ZSTD_getErrorName(r));
    return r;
}

static void flush_chunk(shard_writer *w)
{
    if (w->nbuf == 0)
        return;
    size_t raw = w->nbuf * w->width;
    size_t csize = compress_frame(w, w->buf, raw);
    if (w->fd < 0 || (w->file_bytes[w->nfiles - 1] > 0 &&
                      w->file_bytes[w->nfiles - 1] + csize > w->opt.shard_bytes))
        open_shard_file(w);
    char name[64];
    shard_file_name(name, sizeof name, w->nfiles - 1);
    char *path = upc_path_join(w->dir, name);
    upc_write_fd(w->fd, w->cbuf, csize, path);
    free(path);
    upc_grow((void **)&w->chunks, &w->chunks_cap, w->nchunks + 1, sizeof *w->chunks);
    shard_chunk *c = &w->chunks[w->nchunks++];
    c->file = (uint32_t)(w->nfiles - 1);
    c->offset = w->file_bytes[w->nfiles - 1];
    c->csize = csize;
    c->tokens = w->nbuf;
    c->xxh64 = XXH64(w->buf, raw, 0);
    c->start = w->ntokens - w->nbuf;
    w->file_bytes[w->nfiles - 1] += csize;
    w->nbuf = 0;
}

void shard_writer_open(shard_writer *w, const char *dir, const char *split,
                       const tokstream_header *h, const shard_options *opt)
{
    memset(w, 0, sizeof *w);
    w->dir = upc_strdup(dir);
    snprintf(w->split, sizeof w->split, "%s", split);
    w->h = *h;
    w->width = tokstream_width_for(h->vocab_size);
    w->opt = *opt;
    w->cctx = make_cctx(opt->level);
    w->buf = upc_malloc(opt->chunk_tokens * w->width);
    w->fd = -1;
}

static inline void push_token(shard_writer *w, uint32_t t)
{
    unsigned char *p = w->buf + w->nbuf * w->width;
    p[0] = (unsigned char)t;
    p[1] = (unsigned char)(t >> 8);
    if (w->width == 4) {
        p[2] = (unsigned char)(t >> 16);
        p[3] = (unsigned char)(t >> 24);
    }
    w->ntokens++;
    if (++w->nbuf == w->opt.chunk_tokens)
        flush_chunk(w);
}

void shard_writer_add(shard_writer *w, const tokstream_doc *doc, uint64_t position)
{
    for (size_t i = 0; i < doc->n; i++)
        push_token(w, doc->tokens[i]);
    push_token(w, (uint32_t)w->h.eos_id);
    upc_grow((void **)&w->docs, &w->docs_cap, (w->ndocs + 1) * SHARD_DOCREC_BYTES, 1);
    unsigned char *r = w->docs + w->ndocs++ * SHARD_DOCREC_BYTES;
    put_u64(r, doc->id);
    put_u64(r + 8, doc->bytes);
    put_u64(r + 16, doc->n);
    put_u64(r + 24, position);
}

static int sbuf_write(void *data, const char *buf, size_t len)
{
    return msgpack_sbuffer_write((msgpack_sbuffer *)data, buf, len);
}

void shard_writer_finish(shard_writer *w)
{
    flush_chunk(w);
    close_shard_file(w);

    size_t draw = w->ndocs * SHARD_DOCREC_BYTES;
    size_t dcsize = compress_frame(w, w->docs, draw);
    write_whole_file(w->dir, SHARD_DOCS_NAME, w->cbuf, dcsize);

    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, sbuf_write);
    msgpack_pack_map(&pk, 16);
    mpk_pack_key_str(&pk, "format", SHARDS_FORMAT);
    mpk_pack_key_uint(&pk, "version", SHARDS_VERSION);
    mpk_pack_key_str(&pk, "split", w->split);
    mpk_pack_cstr(&pk, "tokens_header");
    msgpack_pack_map(&pk, 6);
    tokstream_pack_header_fields(&pk, &w->h);
    mpk_pack_key_uint(&pk, "token_width", w->width);
    mpk_pack_key_uint(&pk, "chunk_tokens", w->opt.chunk_tokens);
    mpk_pack_key_uint(&pk, "seed", w->opt.seed);
    mpk_pack_key_double(&pk, "val_fraction", w->opt.val_fraction);
    mpk_pack_key_int(&pk, "zstd_level", w->opt.level);
    mpk_pack_key_uint(&pk, "shard_bytes", w->opt.shard_bytes);
    mpk_pack_key_uint(&pk, "documents", w->ndocs);
    mpk_pack_key_uint(&pk, "tokens", w->ntokens);
    mpk_pack_cstr(&pk, "files");
    msgpack_pack_array(&pk, w->nfiles);
    for (size_t i = 0; i < w->nfiles; i++) {
        char name[64];
        shard_file_name(name, sizeof name, i);
        msgpack_pack_map(&pk, 2);
        mpk_pack_key_str(&pk, "name", name);
        mpk_pack_key_uint(&pk, "bytes", w->file_bytes[i]);
    }
    mpk_pack_cstr(&pk, "chunks");
    msgpack_pack_array(&pk, w->nchunks);
    for (size_t i = 0; i < w->nchunks; i++) {
        const shard_chunk *c = &w->chunks[i];
        msgpack_pack_array(&pk, 5);
        msgpack_pack_uint32(&pk, c->file);
        msgpack_pack_uint64(&pk, c->offset);
        msgpack_pack_uint64(&pk, c->csize);
        msgpack_pack_uint64(&pk, c->tokens);
        msgpack_pack_uint64(&pk, c->xxh64);
    }
    mpk_pack_cstr(&pk, "docs");
    msgpack_pack_map(&pk, 4);
    mpk_pack_key_str(&pk, "name", SHARD_DOCS_NAME);
    mpk_pack_key_uint(&pk, "bytes", dcsize);
    mpk_pack_key_uint(&pk, "documents", w->ndocs);
    mpk_pack_key_uint(&pk, "xxh64", XXH64(w->docs, draw, 0));
    mpk_pack_key_str(&pk, "chunk_fields", "file offset bytes tokens xxh64");
    write_whole_file(w->dir, SHARD_INDEX_NAME, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    upc_fsync_dir(w->dir);

    ZSTD_freeCCtx(w->cctx);
    free(w->buf);
    free(w->cbuf);
    free(w->file_bytes);
    free(w->chunks);
    free(w->docs);
    free(w->dir);
    memset(w, 0, sizeof *w);
    w->fd = -1;
}

/* ---- reading ---- */

const char *shard_path(const shard_index *ix, const char *name)
{
    static _Thread_local char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s/%s", ix->dir, name);
    return buf;
}

bool shard_is_split_dir(const char *dir)
{
    char *p = upc_path_join(dir, SHARD_INDEX_NAME);
    struct stat st;
    bool ok = stat(p, &st) == 0 && S_ISREG(st.st_mode);
    free(p);
    return ok;
}

#define INDEX_FAIL(...) do { \
        char m_[512]; snprintf(m_, sizeof m_, __VA_ARGS__); \
        upc_fail(EX_DATAERR, "%s: %s", path, m_); } while (0)

static bool get_name(const msgpack_object *o, const char *key, char *buf, size_t n)
{
    const char *s;
    uint32_t len;
    if (!mpk_get_str(o, key, &s, &len) || len == 0 || len >= n || memchr(s, '/', len) || memchr(s, 0, len))
        return false;
    memcpy(buf, s, len);
    buf[len] = 0;
    return strcmp(buf, "..") != 0 && strcmp(buf, ".") != 0;
}

void shard_index_open(shard_index *ix, const char *dir)
{
    memset(ix, 0, sizeof *ix);
    ix->dir = upc_strdup(dir);
    char *path = upc_path_join(dir, SHARD_INDEX_NAME);
    struct stat st;
    if (stat(path, &st) != 0)
        upc_fail(EX_NOINPUT, "%s: missing index (%s): is this a shard split directory?", path, strerror(errno));
    size_t len;
    char *data = upc_read_file(path, &len);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    msgpack_unpack_return ret = msgpack_unpack_next(&up, data, len, &off);
    if (ret == MSGPACK_UNPACK_CONTINUE)
        INDEX_FAIL("truncated index (byte %zu of %zu)", len, len);
    if (ret != MSGPACK_UNPACK_SUCCESS)
        INDEX_FAIL("invalid msgpack in the index");
    if (off != len)
        INDEX_FAIL("byte %zu: trailing data after the index map", off);
    const msgpack_object *o = &up.data;
    const char *s;
    uint32_t n;
    uint64_t v;
    const char *why;
    if (o->type != MSGPACK_OBJECT_MAP)
        INDEX_FAIL("expected an index map");
    if (!mpk_get_str(o, "format", &s, &n) || n != strlen(SHARDS_FORMAT) || memcmp(s, SHARDS_FORMAT, n))
        INDEX_FAIL("expected format \"%s\"", SHARDS_FORMAT);
    if (!mpk_get_uint(o, "version", &v))
        INDEX_FAIL("index has no version");
    if (v != SHARDS_VERSION)
        INDEX_FAIL("unsupported version %llu (this build reads version %d)", (unsigned long long)v, SHARDS_VERSION);
    if (!get_name(o, "split", ix->split, sizeof ix->split))
        INDEX_FAIL("index has no split name");
    const msgpack_object *th = mpk_get(o, "tokens_header");
    if (!th || !tokstream_header_parse(th, &ix->h, &why))
        INDEX_FAIL("tokens_header: %s", th ? why : "missing");
    if (!mpk_get_uint(o, "token_width", &v) || v != tokstream_width_for(ix->h.vocab_size))
        INDEX_FAIL("token_width must be %u for vocab_size %llu", tokstream_width_for(ix->h.vocab_size),
                   (unsigned long long)ix->h.vocab_size);
    ix->width = (uint32_t)v;
    if (!mpk_get_uint(o, "chunk_tokens", &ix->chunk_tokens) || ix->chunk_tokens == 0)
        INDEX_FAIL("chunk_tokens must be a positive integer");
    if (!mpk_get_uint(o, "seed", &ix->seed) || !mpk_get_double(o, "val_fraction", &ix->val_fraction) ||
        !mpk_get_int(o, "zstd_level", &ix->level) || !mpk_get_uint(o, "shard_bytes", &ix->shard_bytes))
        INDEX_FAIL("missing seed, val_fraction, zstd_level or shard_bytes");
    if (!mpk_get_uint(o, "documents", &ix->ndocs) || !mpk_get_uint(o, "tokens", &ix->ntokens))
        INDEX_FAIL("missing documents or tokens count");
    if (ix->ntokens < ix->ndocs)
        INDEX_FAIL("tokens (%llu) fewer than documents (%llu), each has an EOS",
                   (unsigned long long)ix->ntokens, (unsigned long long)ix->ndocs);

    const msgpack_object *files = mpk_get(o, "files");
    if (!files || files->type != MSGPACK_OBJECT_ARRAY)
        INDEX_FAIL("expected a files array");
    ix->nfiles = files->via.array.size;
    ix->files = upc_calloc(ix->nfiles, sizeof *ix->files);
    ix->file_bytes = upc_calloc(ix->nfiles, sizeof *ix->file_bytes);
    ix->fds = upc_calloc(ix->nfiles, sizeof *ix->fds);
    for (size_t i = 0; i < ix->nfiles; i++)
        ix->fds[i] = -1;
    for (size_t i = 0; i < ix->nfiles; i++) {
        const msgpack_object *f = &files->via.array.ptr[i];
        char name[256];
        if (!get_name(f, "name", name, sizeof name) || !mpk_get_uint(f, "bytes", &ix->file_bytes[i]))
            INDEX_FAIL("files[%zu]: expected a map with a plain file name and bytes", i);
        ix->files[i] = upc_strdup(name);
    }

    const msgpack_object *chunks = mpk_get(o, "chunks");
    if (!chunks || chunks->type != MSGPACK_OBJECT_ARRAY)
        INDEX_FAIL("expected a chunks array");
    ix->nchunks = chunks->via.array.size;
    ix->chunks = upc_calloc(ix->nchunks, sizeof *ix->chunks);
    uint64_t start = 0, expect_off = 0;
    uint32_t cur_file = 0;
    for (size_t i = 0; i < ix->nchunks; i++) {
        const msgpack_object *a = &chunks->via.array.ptr[i];
        uint64_t f[5];
        if (a->type != MSGPACK_OBJECT_ARRAY || a->via.array.size != 5)
            INDEX_FAIL("chunk %zu: expected [file, offset, bytes, tokens, xxh64]", i);
        for (int k = 0; k < 5; k++) {
            if (a->via.array.ptr[k].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                INDEX_FAIL("chunk %zu: expected [file, offset, bytes, tokens, xxh64] of integers", i);
            f[k] = a->via.array.ptr[k].via.u64;
        }
        shard_chunk *c = &ix->chunks[i];
        c->file = (uint32_t)f[0];
        c->offset = f[1];
        c->csize = f[2];
        c->tokens = f[3];
        c->xxh64 = f[4];
        c->start = start;
        if (f[0] >= ix->nfiles)
            INDEX_FAIL("chunk %zu: file %llu does not exist (%zu files)", i, (unsigned long long)f[0], ix->nfiles);
        if (c->file != cur_file) {
            if (c->file != cur_file + 1 || expect_off != ix->file_bytes[cur_file])
                INDEX_FAIL("chunk %zu: frames must fill files in order, without gaps", i);
            cur_file = c->file;
            expect_off = 0;
        }
        if (c->offset != expect_off || c->csize == 0)
            INDEX_FAIL("chunk %zu: offset %llu, expected %llu (frames are contiguous)", i,
                       (unsigned long long)c->offset, (unsigned long long)expect_off);
        if (c->tokens == 0 || c->tokens > ix->chunk_tokens || (i + 1 < ix->nchunks && c->tokens != ix->chunk_tokens))
            INDEX_FAIL("chunk %zu: %llu tokens, expected %llu (only the last chunk may be shorter)", i,
                       (unsigned long long)c->tokens, (unsigned long long)ix->chunk_tokens);
        expect_off += c->csize;
        start += c->tokens;
    }
    if (ix->nchunks && (cur_file + 1 != ix->nfiles || expect_off != ix->file_bytes[cur_file]))
        INDEX_FAIL("the chunks do not fill the files exactly");
    if (!ix->nchunks && ix->nfiles)
        INDEX_FAIL("files listed but no chunks");
    if (start != ix->ntokens)
        INDEX_FAIL("chunks hold %llu tokens, index says %llu", (unsigned long long)start,
                   (unsigned long long)ix->ntokens);

    const msgpack_object *docs = mpk_get(o, "docs");
    char dname[256];
    if (!docs || !get_name(docs, "name", dname, sizeof dname) || strcmp(dname, SHARD_DOCS_NAME) ||
        !mpk_get_uint(docs, "bytes", &ix->docs_csize) || !mpk_get_uint(docs, "xxh64", &ix->docs_xxh64) ||
        !mpk_get_uint(docs, "documents", &v) || v != ix->ndocs)
        INDEX_FAIL("docs: expected {name \"%s\", bytes, documents (= %llu), xxh64}", SHARD_DOCS_NAME,
                   (unsigned long long)ix->ndocs);
    msgpack_unpacked_destroy(&up);
    free(data);
    free(path);

    /* Open the shard files now, so a missing or cut file is found up front. */
    for (size_t i = 0; i < ix->nfiles; i++) {
        const char *p = shard_path(ix, ix->files[i]);
        ix->fds[i] = open(p, O_RDONLY);
        if (ix->fds[i] < 0)
            upc_fail(EX_NOINPUT, "%s: cannot open shard file: %s", p, strerror(errno));
        if (fstat(ix->fds[i], &st) != 0)
            upc_fail(EX_IOERR, "%s: cannot stat: %s", p, strerror(errno));
        if ((uint64_t)st.st_size != ix->file_bytes[i]) {
            /* Name the first frame that does not fit (truncated) or say it grew. */
            for (size_t c = 0; c < ix->nchunks; c++)
                if (ix->chunks[c].file == i && ix->chunks[c].offset + ix->chunks[c].csize > (uint64_t)st.st_size)
                    upc_fail(EX_DATAERR, "%s: frame %zu (byte %llu): truncated: file has %lld bytes, index says %llu",
                             p, c, (unsigned long long)ix->chunks[c].offset, (long long)st.st_size,
                             (unsigned long long)ix->file_bytes[i]);
            upc_fail(EX_DATAERR, "%s: file has %lld bytes, index says %llu", p, (long long)st.st_size,
                     (unsigned long long)ix->file_bytes[i]);
        }
    }
}

void shard_index_close(shard_index *ix)
{
    for (size_t i = 0; i < ix->nfiles; i++) {
        if (ix->fds && ix->fds[i] >= 0)
            close(ix->fds[i]);
        free(ix->files[i]);
    }
    free(ix->files);
    free(ix->file_bytes);
    free(ix->fds);
    free(ix->chunks);
    free(ix->dir);
    memset(ix, 0, sizeof *ix);
}

void shard_decoder_init(shard_decoder *d)
{
    memset(d, 0, sizeof *d);
    d->dctx = ZSTD_createDCtx();
    if (!d->dctx)
        upc_fail(EX_OSERR, "out of memory (zstd context)");
}

void shard_decoder_free(shard_decoder *d)
{
    ZSTD_freeDCtx(d->dctx);
    free(d->cbuf);
    free(d->raw);
    memset(d, 0, sizeof *d);
}

static void reserve(void **p, size_t *cap, size_t n)
{
    if (n > *cap) {
        free(*p);
        *p = upc_malloc(n);
        *cap = n;
    }
}

/* Read n bytes at off from fd fully; returns bytes read or -1. */
static ssize_t pread_full(int fd, void *buf, size_t n, uint64_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

bool shard_read_chunk_raw(const shard_index *ix, shard_decoder *d, size_t c,
                          const unsigned char **raw, char *err, size_t errlen)
{
    reserve(&d->raw, &d->rcap, ix->chunks[c].tokens * ix->width);
    if (!shard_read_chunk_into(ix, d, c, d->raw, err, errlen))
        return false;
    *raw = d->raw;
    return true;
}

bool shard_read_chunk_into(const shard_index *ix, shard_decoder *d, size_t c,
                           void *dst, char *err, size_t errlen)
{
    const shard_chunk *ch = &ix->chunks[c];
    const char *file = shard_path(ix, ix->files[ch->file]);
#define CHUNK_FAIL(...) do { \
        char m_[256]; snprintf(m_, sizeof m_, __VA_ARGS__); \
        snprintf(err, errlen, "%s: frame %zu (byte %llu): %s", file, c, (unsigned long long)ch->offset, m_); \
        return false; } while (0)
    size_t rawn = ch->tokens * ix->width;
    reserve(&d->cbuf, &d->ccap, ch->csize);
    ssize_t got = pread_full(ix->fds[ch->file], d->cbuf, ch->csize, ch->offset);
    if (got < 0)
        CHUNK_FAIL("read failed: %s", strerror(errno));
    if ((uint64_t)got != ch->csize)
        CHUNK_FAIL("truncated: %zd of %llu bytes", got, (unsigned long long)ch->csize);
    unsigned long long content = ZSTD_getFrameContentSize(d->cbuf, ch->csize);
    if (content == ZSTD_CONTENTSIZE_ERROR)
        CHUNK_FAIL("not a zstd frame");
    if (content != rawn)
        CHUNK_FAIL("frame holds %llu bytes, index says %zu", content, rawn);
    size_t fsize = ZSTD_findFrameCompressedSize(d->cbuf, ch->csize);
    if (ZSTD_isError(fsize) || fsize != ch->csize)
        CHUNK_FAIL("frame size does not match the index (%s)",
                   ZSTD_isError(fsize) ? ZSTD_getErrorName(fsize) : "different size");
    size_t r = ZSTD_decompressDCtx(d->dctx, dst, rawn, d->cbuf, ch->csize);
    if (ZSTD_isError(r))
        CHUNK_FAIL("zstd: %s", ZSTD_getErrorName(r));
    if (r != rawn)
        CHUNK_FAIL("decompressed %zu bytes, expected %zu", r, rawn);
#undef CHUNK_FAIL
    return true;
}

bool shard_read_chunk(const shard_index *ix, shard_decoder *d, size_t c,
                      uint32_t *out, char *err, size_t errlen)
{
    const unsigned char *raw;
    if (!shard_read_chunk_raw(ix, d, c, &raw, err, errlen))
        return false;
    shard_widen(raw, ix->width, ix->chunks[c].tokens, out);
    return true;
}

shard_docrec *shard_read_docs(const shard_index *ix)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", ix->dir, SHARD_DOCS_NAME);
    size_t len;
    struct stat st;
    if (stat(path, &st) != 0)
        upc_fail(EX_NOINPUT, "%s: missing document table: %s", path, strerror(errno));
    char *data = upc_read_file(path, &len);
    if (len != ix->docs_csize)
        upc_fail(EX_DATAERR, "%s: frame 0 (byte 0): file has %zu bytes, index says %llu", path, len,
                 (unsigned long long)ix->docs_csize);
    size_t rawn = ix->ndocs * SHARD_DOCREC_BYTES;
    unsigned long long content = ZSTD_getFrameContentSize(data, len);
    if (content != rawn)
        upc_fail(EX_DATAERR, "%s: frame 0 (byte 0): expected a zstd frame of %zu bytes", path, rawn);
    unsigned char *raw = upc_malloc(rawn);
    size_t r = ZSTD_decompress(raw, rawn, data, len);
    if (ZSTD_isError(r) || r != rawn)
        upc_fail(EX_DATAERR, "%s: frame 0 (byte 0): %s", path,
                 ZSTD_isError(r) ? ZSTD_getErrorName(r) : "short frame");
    if (XXH64(raw, rawn, 0) != ix->docs_xxh64)
        upc_fail(EX_DATAERR, "%s: frame 0 (byte 0): xxh64 differs from the index", path);
    shard_docrec *docs = upc_calloc(ix->ndocs, sizeof *docs);
    uint64_t sum = 0;
    for (size_t i = 0; i < ix->ndocs; i++) {
        const unsigned char *p = raw + i * SHARD_DOCREC_BYTES;
        docs[i].id = get_u64(p);
        docs[i].bytes = get_u64(p + 8);
        docs[i].tokens = get_u64(p + 16);
        docs[i].position = get_u64(p + 24);
        sum += docs[i].tokens + 1;
        if (docs[i].tokens > ix->ntokens || sum > ix->ntokens ||
            (i && docs[i].position <= docs[i - 1].position))
            upc_fail(EX_DATAERR, "%s: document %zu: token counts or positions do not agree with the index", path, i);
    }
    if (sum != ix->ntokens)
        upc_fail(EX_DATAERR, "%s: documents hold %llu tokens with their EOS, index says %llu", path,
                 (unsigned long long)sum, (unsigned long long)ix->ntokens);
    free(raw);
    free(data);
    return docs;
}
