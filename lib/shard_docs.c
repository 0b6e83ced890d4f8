/* shard_docs.c: reading a split document by document (shard_docs.h). */
#include "shard_docs.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

void shard_docs_open(shard_doc_reader *s, const char *dir, bool check_hash)
{
    memset(s, 0, sizeof *s);
    shard_index_open(&s->ix, dir);
    s->docs = shard_read_docs(&s->ix);
    shard_decoder_init(&s->d);
    s->chunk = upc_malloc(s->ix.chunk_tokens * sizeof *s->chunk);
    s->check_hash = check_hash;
}

void shard_docs_close(shard_doc_reader *s)
{
    shard_decoder_free(&s->d);
    free(s->chunk);
    free(s->docs);
    shard_index_close(&s->ix);
}

static const char *chunk_file(const shard_doc_reader *s, size_t c)
{
    return shard_path(&s->ix, s->ix.files[s->ix.chunks[c].file]);
}

static void load_chunk(shard_doc_reader *s)
{
    char err[768];
    const unsigned char *raw;
    size_t c = s->next_chunk;
    if (c >= s->ix.nchunks)
        upc_fail(EX_DATAERR, "%s: the chunks end before the documents do", s->ix.dir);
    const shard_chunk *ch = &s->ix.chunks[c];
    if (!shard_read_chunk_raw(&s->ix, &s->d, c, &raw, err, sizeof err))
        upc_fail(EX_DATAERR, "%s", err);
    if (s->check_hash && XXH64(raw, ch->tokens * s->ix.width, 0) != ch->xxh64)
        upc_fail(EX_DATAERR, "%s: frame %zu (byte %llu): xxh64 of the tokens differs from the index",
                 chunk_file(s, c), c, (unsigned long long)ch->offset);
    shard_widen(raw, s->ix.width, ch->tokens, s->chunk);
    for (size_t i = 0; i < ch->tokens; i++)
        if (s->chunk[i] >= s->ix.h.vocab_size)
            upc_fail(EX_DATAERR, "%s: frame %zu (byte %llu): token %zu has id %u, outside the vocabulary of %llu",
                     chunk_file(s, c), c, (unsigned long long)ch->offset, i, s->chunk[i],
                     (unsigned long long)s->ix.h.vocab_size);
    s->cur_chunk = c;
    s->next_chunk++;
    s->chunk_n = ch->tokens;
    s->chunk_off = 0;
}

/* The next document's tokens into d; checks the EOS after it. */
void shard_docs_read(shard_doc_reader *s, tokstream_doc *d)
{
    const shard_docrec *r = &s->docs[s->doc++];
    d->id = r->id;
    d->bytes = r->bytes;
    upc_grow((void **)&d->tokens, &d->cap, r->tokens, sizeof *d->tokens);
    d->n = r->tokens;
    size_t got = 0;
    for (;;) {
        if (s->chunk_off == s->chunk_n)
            load_chunk(s);
        if (got == d->n)
            break;
        size_t m = s->chunk_n - s->chunk_off;
        if (m > d->n - got)
            m = d->n - got;
        memcpy(d->tokens + got, s->chunk + s->chunk_off, m * sizeof *d->tokens);
        s->chunk_off += m;
        got += m;
    }
    uint32_t t = s->chunk[s->chunk_off++];
    if (t != s->ix.h.eos_id) {
        const shard_chunk *ch = &s->ix.chunks[s->cur_chunk];
        upc_fail(EX_DATAERR, "%s: frame %zu (byte %llu): token %zu: expected EOS (%llu) after document %zu, found %u",
                 chunk_file(s, s->cur_chunk), s->cur_chunk, (unsigned long long)ch->offset, s->chunk_off - 1,
                 (unsigned long long)s->ix.h.eos_id, s->doc - 1, t);
    }
}

bool shard_docs_more(const shard_doc_reader *s)
{
    return s->doc < s->ix.ndocs;
}

