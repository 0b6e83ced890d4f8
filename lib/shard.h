/* shard.h: the shard directory (formats/shards.md): per split an index
 * (msgpack), shard files of independent zstd frames, each frame one chunk of
 * the split's token stream (documents joined by EOS), and a document table
 * so the token stream can be rebuilt exactly. */
#ifndef UPCYC_SHARD_H
#define UPCYC_SHARD_H

#include <stdbool.h>
#include <zstd.h>
#include "tokstream.h"

#define SHARDS_FORMAT "upcyc.shards"
#define SHARDS_VERSION 1
#define SHARD_INDEX_NAME "index.mpk"
#define SHARD_DOCS_NAME "docs.zst"
#define SHARD_DOCREC_BYTES 32   /* id, bytes, tokens, position: 4 x u64 LE */

/* One chunk: a zstd frame in a shard file. */
typedef struct {
    uint32_t file;      /* index into shard_index.files */
    uint64_t offset;    /* byte offset of the frame in that file */
    uint64_t csize;     /* compressed size of the frame */
    uint64_t tokens;    /* tokens in the chunk */
    uint64_t xxh64;     /* xxh64 (seed 0) of the decompressed bytes */
    uint64_t start;     /* position of the chunk's first token in the split (derived) */
} shard_chunk;

/* One row of the document table. */
typedef struct {
    uint64_t id;        /* document id from the token stream */
    uint64_t bytes;     /* byte length of its source text */
    uint64_t tokens;    /* tokens, not counting the EOS that follows it */
    uint64_t position;  /* its place in the input stream, from 0 (both splits) */
} shard_docrec;

/* A split directory opened for reading. Shard files are opened once and read
 * with pread, so several threads may read chunks of one index at once. */
typedef struct {
    char *dir;
    char split[32];             /* "train" or "val" */
    tokstream_header h;         /* the input stream's header, as it was */
    uint32_t width;             /* bytes per stored token: 2 or 4 */
    uint64_t chunk_tokens;      /* tokens per chunk (all but the last) */
    uint64_t seed;
    double val_fraction;
    int64_t level;
    uint64_t shard_bytes;       /* roll size the writer used */
    uint64_t ndocs, ntokens;    /* ntokens includes one EOS per document */
    size_t nfiles;
    char **files;               /* names, relative to dir */
    uint64_t *file_bytes;
    int *fds;
    size_t nchunks;
    shard_chunk *chunks;
    uint64_t docs_csize, docs_xxh64;
} shard_index;

/* True when dir holds an index (is a split directory). */
bool shard_is_split_dir(const char *dir);
/* Open a split directory: fails with EX_NOINPUT when the index or a shard
 * file is missing, EX_DATAERR (naming the file) when the index is bad or a
 * shard file's size differs from the index (truncated or grown). */
void shard_index_open(shard_index *ix, const char *dir);
void shard_index_close(shard_index *ix);
/* Full path of one of the split's files (static buffer per thread). */
const char *shard_path(const shard_index *ix, const char *name);

/* Per-thread decoding state. */
typedef struct {
    ZSTD_DCtx *dctx;
    void *cbuf;
    size_t ccap;
    void *raw;
    size_t rcap;
} shard_decoder;

void shard_decoder_init(shard_decoder *d);
void shard_decoder_free(shard_decoder *d);
/* Read and decompress chunk c (zstd checksum checked). *raw receives the
 * chunk's stored little-endian bytes (tokens * width), valid until the next
 * call. On error returns false with "FILE: frame N (byte OFF): what" in err. */
bool shard_read_chunk_raw(const shard_index *ix, shard_decoder *d, size_t c,
                          const unsigned char **raw, char *err, size_t errlen);
/* The same, decompressed into dst (room for tokens * width bytes). */
bool shard_read_chunk_into(const shard_index *ix, shard_decoder *d, size_t c,
                           void *dst, char *err, size_t errlen);
/* The same, widened to uint32 into out (room for chunks[c].tokens). */
bool shard_read_chunk(const shard_index *ix, shard_decoder *d, size_t c,
                      uint32_t *out, char *err, size_t errlen);
/* Widen n stored tokens of width w to uint32. */
void shard_widen(const unsigned char *raw, uint32_t w, size_t n, uint32_t *out);

/* The document table, read whole; fails with EX_DATAERR naming the file. */
shard_docrec *shard_read_docs(const shard_index *ix);

/* The split rule: a document goes to val when a hash of its id with the seed,
 * as a fraction in [0, 1), is below val_fraction. */
bool shard_is_val(uint64_t id, uint64_t seed, double val_fraction);

/* Writing one split directory (which must exist and be empty). Every write
 * error fails the tool with EX_IOERR naming the file. */
typedef struct {
    uint64_t chunk_tokens;
    uint64_t shard_bytes;
    int level;
    uint64_t seed;
    double val_fraction;
} shard_options;

typedef struct {
    char *dir;
    char split[32];
    tokstream_header h;
    uint32_t width;
    shard_options opt;
    ZSTD_CCtx *cctx;
    unsigned char *buf;         /* the chunk being filled, stored width */
    size_t nbuf;                /* tokens in buf */
    void *cbuf;
    size_t ccap;
    int fd;                     /* current shard file, -1 when none */
    size_t nfiles, files_cap;
    uint64_t *file_bytes;
    size_t nchunks, chunks_cap;
    shard_chunk *chunks;
    unsigned char *docs;        /* document table rows */
    size_t ndocs, docs_cap;
    uint64_t ntokens;
} shard_writer;

void shard_writer_open(shard_writer *w, const char *dir, const char *split,
                       const tokstream_header *h, const shard_options *opt);
/* Append a document and its EOS. */
void shard_writer_add(shard_writer *w, const tokstream_doc *doc, uint64_t position);
/* Flush the last chunk, write the document table and the index, fsync all. */
void shard_writer_finish(shard_writer *w);

#endif
