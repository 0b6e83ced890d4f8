/* shard_docs.h: a shard split read back document by document, in its own
 * order (the document table's), each checked against the EOS that follows
 * it and, optionally, every chunk against its xxh64 in the index. What
 * `shard cat` and `shard verify` use, and `evaluate build` for held-out
 * text. Problems fail the tool (EX_DATAERR naming file, frame and offset). */
#ifndef UPCYC_SHARD_DOCS_H
#define UPCYC_SHARD_DOCS_H

#include "shard.h"
#include "tokstream.h"

#include <stdbool.h>

typedef struct {
    shard_index ix;
    shard_docrec *docs;
    size_t doc;                 /* next document */
    shard_decoder d;
    uint32_t *chunk;
    size_t next_chunk, cur_chunk, chunk_n, chunk_off;
    bool check_hash;            /* verify: xxh64 of every chunk */
} shard_doc_reader;

void shard_docs_open(shard_doc_reader *s, const char *dir, bool check_hash);
void shard_docs_close(shard_doc_reader *s);
bool shard_docs_more(const shard_doc_reader *s);
/* The next document's tokens into d (grown as needed). */
void shard_docs_read(shard_doc_reader *s, tokstream_doc *d);

#endif
