/* mpk.c: msgpack stream reading and writing with precise error locations. */
#include "mpk.h"

#include <errno.h>
#include <msgpack/unpack_define.h> /* MSGPACK_EMBED_STACK_SIZE: the nesting limit */
#include <string.h>

#define READ_CHUNK (1 << 16)

void mpk_reader_open(mpk_reader *r, const char *path)
{
    memset(r, 0, sizeof *r);
    r->fp = upc_open_in(path);
    r->name = (!path || strcmp(path, "-") == 0) ? "stdin" : path;
    if (!msgpack_unpacker_init(&r->up, READ_CHUNK))
        upc_fail(EX_OSERR, "out of memory");
    msgpack_unpacked_init(&r->result);
}

void mpk_reader_fail(const mpk_reader *r, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    upc_fail(EX_DATAERR, "%s: record %llu (byte %llu): %s", r->name,
             (unsigned long long)r->record, (unsigned long long)r->offset, msg);
}

bool mpk_read(mpk_reader *r, msgpack_object *obj)
{
    r->offset = r->consumed;
    for (;;) {
        size_t size = 0;
        msgpack_unpack_return ret = msgpack_unpacker_next_with_size(&r->up, &r->result, &size);
        if (ret == MSGPACK_UNPACK_SUCCESS) {
            r->consumed += size;
            r->record = r->records_read++;
            *obj = r->result.data;
            return true;
        }
        if (ret == MSGPACK_UNPACK_PARSE_ERROR) {
            r->record = r->records_read;
            mpk_reader_fail(r, "invalid msgpack");
        }
        /* msgpack-c says NOMEM when a record nests containers deeper than its
         * fixed parse stack, or when a container header declares more
         * elements than can be allocated; it does not say which. Both are
         * the record's doing (a real shortage on a sane record is the
         * unlikely case), so report bad data naming both. */
        if (ret == MSGPACK_UNPACK_NOMEM_ERROR) {
            r->record = r->records_read;
            mpk_reader_fail(r, "nested deeper than %d levels, or a container too large for memory",
                            MSGPACK_EMBED_STACK_SIZE);
        }
        /* CONTINUE: the record needs more bytes. */
        if (r->eof) {
            r->record = r->records_read;
            if (msgpack_unpacker_message_size(&r->up) > 0)
                mpk_reader_fail(r, "truncated: the stream ends inside a record");
            return false;
        }
        if (!msgpack_unpacker_reserve_buffer(&r->up, READ_CHUNK))
            upc_fail(EX_OSERR, "out of memory");
        size_t got = fread(msgpack_unpacker_buffer(&r->up), 1,
                           msgpack_unpacker_buffer_capacity(&r->up), r->fp);
        if (got == 0) {
            if (ferror(r->fp))
                upc_fail(EX_IOERR, "%s: read failed: %s", r->name, strerror(errno));
            r->eof = true;
        }
        msgpack_unpacker_buffer_consumed(&r->up, got);
    }
}

void mpk_reader_close(mpk_reader *r)
{
    msgpack_unpacked_destroy(&r->result);
    msgpack_unpacker_destroy(&r->up);
    if (r->fp && r->fp != stdin)
        fclose(r->fp);
    r->fp = NULL;
}

static int sbuffer_write(void *data, const char *buf, size_t len)
{
    return msgpack_sbuffer_write((msgpack_sbuffer *)data, buf, len);
}

void mpk_writer_open(mpk_writer *w, const char *path)
{
    memset(w, 0, sizeof *w);
    upc_out_open(&w->out, path);
    if (!w->out.path)
        upc_refuse_tty(stdout, "msgpack");
    msgpack_sbuffer_init(&w->buf);
    msgpack_packer_init(&w->pk, &w->buf, sbuffer_write);
}

void mpk_writer_flush(mpk_writer *w, bool force)
{
    if (w->buf.size >= (1 << 20) || (force && w->buf.size)) {
        upc_out_write(&w->out, w->buf.data, w->buf.size);
        msgpack_sbuffer_clear(&w->buf);
    }
}

void mpk_writer_emit(mpk_writer *w)
{
    mpk_writer_flush(w, true);
    if (fflush(w->out.fp) != 0)
        upc_fail(EX_IOERR, "%s: write failed: %s", upc_out_name(&w->out), strerror(errno));
}

void mpk_writer_commit(mpk_writer *w)
{
    mpk_writer_flush(w, true);
    upc_out_commit(&w->out);
    msgpack_sbuffer_destroy(&w->buf);
}

bool mpk_str_eq(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n && memcmp(o->via.str.ptr, s, n) == 0;
}

const msgpack_object *mpk_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++)
        if (mpk_str_eq(&map->via.map.ptr[i].key, key))
            return &map->via.map.ptr[i].val;
    return NULL;
}

bool mpk_get_uint(const msgpack_object *map, const char *key, uint64_t *out)
{
    const msgpack_object *o = mpk_get(map, key);
    if (!o || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return false;
    *out = o->via.u64;
    return true;
}

bool mpk_get_int(const msgpack_object *map, const char *key, int64_t *out)
{
    const msgpack_object *o = mpk_get(map, key);
    if (!o)
        return false;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
        *out = (int64_t)o->via.u64;
        return true;
    }
    return false;
}

bool mpk_get_double(const msgpack_object *map, const char *key, double *out)
{
    const msgpack_object *o = mpk_get(map, key);
    if (!o)
        return false;
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: *out = o->via.f64; return true;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)o->via.u64; return true;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)o->via.i64; return true;
    default: return false;
    }
}

bool mpk_get_str(const msgpack_object *map, const char *key, const char **s, uint32_t *n)
{
    const msgpack_object *o = mpk_get(map, key);
    if (!o || o->type != MSGPACK_OBJECT_STR)
        return false;
    *s = o->via.str.ptr;
    *n = o->via.str.size;
    return true;
}

bool mpk_get_bin(const msgpack_object *map, const char *key, const char **p, uint32_t *n)
{
    const msgpack_object *o = mpk_get(map, key);
    if (!o || o->type != MSGPACK_OBJECT_BIN)
        return false;
    *p = o->via.bin.ptr;
    *n = o->via.bin.size;
    return true;
}

void mpk_pack_cstr(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

void mpk_pack_key_uint(msgpack_packer *pk, const char *key, uint64_t v)
{
    mpk_pack_cstr(pk, key);
    msgpack_pack_uint64(pk, v);
}

void mpk_pack_key_int(msgpack_packer *pk, const char *key, int64_t v)
{
    mpk_pack_cstr(pk, key);
    msgpack_pack_int64(pk, v);
}

void mpk_pack_key_double(msgpack_packer *pk, const char *key, double v)
{
    mpk_pack_cstr(pk, key);
    msgpack_pack_double(pk, v);
}

void mpk_pack_key_str(msgpack_packer *pk, const char *key, const char *v)
{
    mpk_pack_cstr(pk, key);
    mpk_pack_cstr(pk, v);
}
