/* safetensors.h: Hugging Face safetensors files (formats/checkpoint.md):
 * a memory-mapped reader over one file or a sharded checkpoint (index json +
 * shards), and a streaming writer that never holds more than one chunk of
 * one tensor in memory, shards at a size limit and renames into place.
 *
 * Every problem with an input fails the tool (upc_fail) with one line naming
 * the file and, where there is one, the tensor: EX_NOINPUT for a missing
 * file, EX_DATAERR for bad contents, EX_IOERR/EX_CANTCREAT when writing. */
#ifndef UPCYC_SAFETENSORS_H
#define UPCYC_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

/* Element types of the spec. Only F32, BF16 and F16 convert to float; the
 * others are listed (and copied raw) but refused by the f32 readers. */
typedef enum {
    ST_F32, ST_BF16, ST_F16,
    ST_F64, ST_F8_E4M3, ST_F8_E5M2, ST_F8_E8M0, ST_C64,
    ST_BOOL, ST_U8, ST_I8, ST_U16, ST_I16, ST_U32, ST_I32, ST_U64, ST_I64,
    ST_DTYPE_COUNT
} st_dtype;

/* "F32", "BF16", ...; and back (false for a name the spec does not have). */
const char *st_dtype_name(st_dtype t);
bool st_dtype_parse(const char *name, st_dtype *out);
size_t st_dtype_size(st_dtype t);
static inline bool st_dtype_is_float(st_dtype t)
{
    return t == ST_F32 || t == ST_BF16 || t == ST_F16;
}

/* One tensor in a (possibly sharded) checkpoint. The bytes are the mapped
 * file itself: little-endian, row-major, NOT necessarily aligned to the
 * element size (the spec does not require it), so read them with memcpy or
 * the converters below. */
typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;                      /* 0 for a scalar */
    uint64_t shape[ST_MAX_DIMS];
    uint64_t numel;                /* product of shape (1 for a scalar) */
    uint64_t nbytes;               /* numel * dtype size */
    uint64_t offset;               /* byte offset of the data in its file */
    const unsigned char *data;     /* nbytes mapped bytes */
    int shard;                     /* index into the reader's files */
} st_tensor;

typedef struct st_reader st_reader;

/* Open a checkpoint: a .safetensors file; a *.safetensors.index.json; or a
 * directory, where model.safetensors.index.json is used if present, else
 * model.safetensors. Every file is validated completely on open. */
st_reader *st_open(const char *path);
/* The same for another base name in a directory: "optimizer" opens
 * DIR/optimizer.safetensors.index.json or DIR/optimizer.safetensors. */
st_reader *st_open_named(const char *dir, const char *base);
void st_close(st_reader *r);

/* Tensors in storage order (shard by shard, by offset within each). */
size_t st_count(const st_reader *r);
const st_tensor *st_at(const st_reader *r, size_t i);
/* NULL when absent. */
const st_tensor *st_find(const st_reader *r, const char *name);
/* Like st_find, but fails (EX_DATAERR) naming the checkpoint and tensor. */
const st_tensor *st_need(const st_reader *r, const char *name);

/* The files behind the reader (one, or the shards in index order), the
 * path given to st_open, and the __metadata__ of the first file. */
size_t st_file_count(const st_reader *r);
const char *st_file_path(const st_reader *r, size_t i);
const char *st_path(const st_reader *r);
const char *st_meta(const st_reader *r, const char *key);   /* NULL if absent */
uint64_t st_total_bytes(const st_reader *r);                /* sum of nbytes */

/* Copy tensor `name` into dst as float, converting BF16/F16. Fails naming
 * the tensor when it is absent, n differs from its element count, or its
 * dtype is not a float type. */
void st_get_f32(const st_reader *r, const char *name, float *dst, size_t n);
/* Elements [first, first+n) of t as float: for converting a large tensor in
 * chunks. Fails on a non-float dtype or a range past the end. */
void st_tensor_f32(const st_reader *r, const st_tensor *t, uint64_t first, size_t n, float *dst);

/* Conversions (little-endian host). f32->bf16 rounds to nearest even and
 * keeps NaN a (quiet) NaN. */
static inline float st_bf16_to_f32(uint16_t h)
{
    union { uint32_t u; float f; } v = { .u = (uint32_t)h << 16 };
    return v.f;
}
static inline uint16_t st_f32_to_bf16(float f)
{
    union { float f; uint32_t u; } v = { .f = f };
    if ((v.u & 0x7fffffffu) > 0x7f800000u)          /* NaN: keep sign, force quiet */
        return (uint16_t)((v.u >> 16) | 0x0040u);
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
float st_f16_to_f32(uint16_t h);
uint16_t st_f32_to_f16(float f);     /* round to nearest even, overflow to inf */

/* Writing. Declare every tensor (st_writer_add) with its output dtype and
 * shape, call st_writer_begin_data, then send each tensor's data in the
 * declared order, whole or in chunks (st_writer_write_*), then commit. The
 * writer checks the running byte count against the declared sizes. Memory
 * is one conversion buffer, whatever the size of the tensors. Output dtypes:
 * F32, BF16 and F16 (and any dtype through st_writer_write_raw). */
typedef struct st_writer st_writer;

/* One file at path (no sharding). */
st_writer *st_writer_file(const char *path);
/* A checkpoint in dir: base.safetensors when everything fits in
 * max_shard_bytes (0 = no limit), else base-0000i-of-0000N.safetensors and
 * base.safetensors.index.json (HF naming). A tensor larger than the limit
 * gets a shard of its own. dir must exist. */
st_writer *st_writer_dir(const char *dir, const char *base, uint64_t max_shard_bytes);
/* __metadata__ entries; {"format": "pt"} is always present (transformers
 * refuses files without it). Before begin_data. */
void st_writer_meta(st_writer *w, const char *key, const char *value);
void st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const uint64_t *shape);
/* Plans the shards, writes the headers' space; no more add after this. */
void st_writer_begin_data(st_writer *w);
/* n floats of the current tensor, converted to its declared dtype. */
void st_writer_write_f32(st_writer *w, const float *src, size_t n);
/* n bytes already in the current tensor's dtype. */
void st_writer_write_raw(st_writer *w, const void *bytes, size_t n);
/* The whole of a reader's tensor as the current tensor: copied raw when the
 * dtypes match, else converted through float in chunks. Shapes must match
 * in element count. Tensors with no elements need no write at all (the
 * writer passes them by itself); writing one is a no-op. */
void st_writer_write_tensor(st_writer *w, const st_reader *r, const st_tensor *t);
/* Name of the tensor the next write goes to (NULL when all are written). */
const char *st_writer_current(const st_writer *w);
/* Fails unless every declared tensor was written completely; fsyncs, renames
 * every file into place (shards first, the index last), removes a stale
 * single file / index / shards of the same base, frees w. */
void st_writer_commit(st_writer *w);
/* Throw away everything written so far and free w. */
void st_writer_abort(st_writer *w);

#endif
