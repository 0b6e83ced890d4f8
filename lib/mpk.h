/* mpk.h: msgpack streams: a reader that reports where bad input is (record
 * number, byte offset), a writer over an atomic output, and map accessors. */
#ifndef UPCYC_MPK_H
#define UPCYC_MPK_H

#include <msgpack.h>
#include <stdbool.h>
#include "util.h"

typedef struct {
    FILE *fp;
    const char *name;        /* file name for messages ("stdin") */
    msgpack_unpacker up;
    msgpack_unpacked result;
    uint64_t record;         /* index of the record last returned, from 0 */
    uint64_t offset;         /* byte offset where that record starts */
    uint64_t consumed;       /* bytes parsed so far */
    uint64_t records_read;
    bool eof;
} mpk_reader;

/* Open path ("-" or NULL for stdin). */
void mpk_reader_open(mpk_reader *r, const char *path);
/* Next record into *obj (valid until the next call). Returns false at a clean
 * end of stream; fails with EX_DATAERR on invalid or truncated msgpack. */
bool mpk_read(mpk_reader *r, msgpack_object *obj);
void mpk_reader_close(mpk_reader *r);
/* Fail with EX_DATAERR: "name: record N (byte OFF): message". */
void mpk_reader_fail(const mpk_reader *r, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));

typedef struct {
    upc_out out;
    msgpack_packer pk;
    msgpack_sbuffer buf;     /* records are packed here, flushed in blocks */
} mpk_writer;

void mpk_writer_open(mpk_writer *w, const char *path);
/* Call after each record: flushes the buffer when it is large. */
void mpk_writer_flush(mpk_writer *w, bool force);
/* Write every packed record out now (stdio buffer included), so a reader
 * of a live stream (train's records) sees each one as it happens. */
void mpk_writer_emit(mpk_writer *w);
void mpk_writer_commit(mpk_writer *w);

/* Map accessors: NULL / false when the key is absent or of another type. */
const msgpack_object *mpk_get(const msgpack_object *map, const char *key);
bool mpk_get_uint(const msgpack_object *map, const char *key, uint64_t *out);
bool mpk_get_int(const msgpack_object *map, const char *key, int64_t *out);
bool mpk_get_double(const msgpack_object *map, const char *key, double *out);
/* String as pointer+length (not NUL-terminated). */
bool mpk_get_str(const msgpack_object *map, const char *key, const char **s, uint32_t *n);
bool mpk_get_bin(const msgpack_object *map, const char *key, const char **p, uint32_t *n);
bool mpk_str_eq(const msgpack_object *o, const char *s);

/* Packing shorthands. */
void mpk_pack_cstr(msgpack_packer *pk, const char *s);
void mpk_pack_key_uint(msgpack_packer *pk, const char *key, uint64_t v);
void mpk_pack_key_int(msgpack_packer *pk, const char *key, int64_t v);
void mpk_pack_key_double(msgpack_packer *pk, const char *key, double v);
void mpk_pack_key_str(msgpack_packer *pk, const char *key, const char *v);

#endif
