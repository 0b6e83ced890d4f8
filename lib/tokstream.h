/* tokstream.h: the token stream (formats/token-stream.md): a msgpack header
 * map, then one map per document with its token ids as little-endian bin. */
#ifndef UPCYC_TOKSTREAM_H
#define UPCYC_TOKSTREAM_H

#include "mpk.h"

#define TOKSTREAM_FORMAT "upcyc.tokens"
#define TOKSTREAM_VERSION 1

typedef struct {
    uint64_t vocab_size;      /* every token id is < vocab_size */
    uint64_t eos_id;          /* end-of-document token, < vocab_size */
    uint32_t token_width;     /* bytes per token id in documents: 2 or 4 */
    char tokenizer[80];       /* tokenizer digest, "xxh64:<16 hex>" */
} tokstream_header;

typedef struct {
    uint64_t id;              /* document id, unique within a stream */
    uint64_t bytes;           /* byte length of the source text */
    uint32_t *tokens;         /* owned by the reader / caller */
    size_t n, cap;
} tokstream_doc;

/* Token width for a vocabulary: 2 bytes when every id fits, else 4. */
uint32_t tokstream_width_for(uint64_t vocab_size);

/* Reading: fails with EX_DATAERR naming the record and byte offset on a
 * missing or wrong header, wrong version, bad field, or out-of-range id. */
typedef struct {
    mpk_reader mr;
    tokstream_header h;
} tokstream_reader;

void tokstream_reader_open(tokstream_reader *r, const char *path);
/* Parse the header map (shared with the shard index, which embeds it). */
bool tokstream_header_parse(const msgpack_object *o, tokstream_header *h, const char **why);
bool tokstream_read(tokstream_reader *r, tokstream_doc *d);
void tokstream_reader_close(tokstream_reader *r);
void tokstream_doc_free(tokstream_doc *d);

/* Writing. */
void tokstream_pack_header_fields(msgpack_packer *pk, const tokstream_header *h);
void tokstream_write_header(mpk_writer *w, const tokstream_header *h);
void tokstream_write_doc(mpk_writer *w, const tokstream_header *h, uint64_t id,
                         uint64_t bytes, const uint32_t *tokens, size_t n);

#endif
