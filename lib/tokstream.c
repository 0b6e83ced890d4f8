/* tokstream.c: read and write the token stream. */
#include "tokstream.h"

#include <string.h>

uint32_t tokstream_width_for(uint64_t vocab_size)
{
    return vocab_size <= 65536 ? 2 : 4;
}

bool tokstream_header_parse(const msgpack_object *o, tokstream_header *h, const char **why)
{
    const char *s;
    uint32_t n;
    uint64_t v;
    memset(h, 0, sizeof *h);
    if (o->type != MSGPACK_OBJECT_MAP)
        return *why = "expected a header map", false;
    if (!mpk_get_str(o, "format", &s, &n) || n != strlen(TOKSTREAM_FORMAT) || memcmp(s, TOKSTREAM_FORMAT, n))
        return *why = "expected format \"" TOKSTREAM_FORMAT "\" in the header", false;
    if (!mpk_get_uint(o, "version", &v))
        return *why = "header has no version", false;
    if (v != TOKSTREAM_VERSION)
        return *why = "unsupported version (this build reads version 1)", false;
    if (!mpk_get_uint(o, "vocab_size", &h->vocab_size) || h->vocab_size == 0 || h->vocab_size > UINT32_MAX)
        return *why = "header vocab_size must be an integer in [1, 2^32)", false;
    if (!mpk_get_uint(o, "eos_id", &h->eos_id) || h->eos_id >= h->vocab_size)
        return *why = "header eos_id must be an integer below vocab_size", false;
    if (!mpk_get_uint(o, "token_width", &v) || (v != 2 && v != 4) || (v == 2 && h->vocab_size > 65536))
        return *why = "header token_width must be 2 (vocab_size <= 65536) or 4", false;
    h->token_width = (uint32_t)v;
    if (mpk_get_str(o, "tokenizer", &s, &n)) {
        if (n >= sizeof h->tokenizer)
            return *why = "header tokenizer digest too long", false;
        memcpy(h->tokenizer, s, n);
    }
    return true;
}

void tokstream_reader_open(tokstream_reader *r, const char *path)
{
    msgpack_object o;
    const char *why;
    mpk_reader_open(&r->mr, path);
    if (!mpk_read(&r->mr, &o))
        upc_fail(EX_DATAERR, "%s: empty input, expected a token stream header", r->mr.name);
    if (!tokstream_header_parse(&o, &r->h, &why))
        mpk_reader_fail(&r->mr, "%s", why);
}

bool tokstream_read(tokstream_reader *r, tokstream_doc *d)
{
    msgpack_object o;
    const char *p;
    uint32_t nb;
    if (!mpk_read(&r->mr, &o))
        return false;
    if (o.type != MSGPACK_OBJECT_MAP)
        mpk_reader_fail(&r->mr, "expected a document map");
    if (!mpk_get_uint(&o, "id", &d->id))
        mpk_reader_fail(&r->mr, "document has no integer id");
    if (!mpk_get_uint(&o, "bytes", &d->bytes))
        mpk_reader_fail(&r->mr, "document has no integer bytes");
    if (!mpk_get_bin(&o, "tokens", &p, &nb))
        mpk_reader_fail(&r->mr, "document has no tokens bin");
    uint32_t w = r->h.token_width;
    if (nb % w)
        mpk_reader_fail(&r->mr, "tokens bin of %u bytes is not a multiple of the token width %u", nb, w);
    size_t n = nb / w;
    upc_grow((void **)&d->tokens, &d->cap, n, sizeof *d->tokens);
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++) {
        uint32_t t = w == 2 ? (uint32_t)b[2 * i] | (uint32_t)b[2 * i + 1] << 8
                            : (uint32_t)b[4 * i] | (uint32_t)b[4 * i + 1] << 8 |
                              (uint32_t)b[4 * i + 2] << 16 | (uint32_t)b[4 * i + 3] << 24;
        if (t >= r->h.vocab_size)
            mpk_reader_fail(&r->mr, "document %llu: token %zu has id %u, outside the vocabulary of %llu",
                            (unsigned long long)d->id, i, t, (unsigned long long)r->h.vocab_size);
        d->tokens[i] = t;
    }
    d->n = n;
    return true;
}

void tokstream_reader_close(tokstream_reader *r)
{
    mpk_reader_close(&r->mr);
}

void tokstream_doc_free(tokstream_doc *d)
{
    free(d->tokens);
    memset(d, 0, sizeof *d);
}

void tokstream_pack_header_fields(msgpack_packer *pk, const tokstream_header *h)
{
    mpk_pack_key_str(pk, "format", TOKSTREAM_FORMAT);
    mpk_pack_key_uint(pk, "version", TOKSTREAM_VERSION);
    mpk_pack_key_uint(pk, "vocab_size", h->vocab_size);
    mpk_pack_key_uint(pk, "eos_id", h->eos_id);
    mpk_pack_key_uint(pk, "token_width", h->token_width);
    mpk_pack_key_str(pk, "tokenizer", h->tokenizer);
}

void tokstream_write_header(mpk_writer *w, const tokstream_header *h)
{
    msgpack_pack_map(&w->pk, 6);
    tokstream_pack_header_fields(&w->pk, h);
    mpk_writer_flush(w, false);
}

void tokstream_write_doc(mpk_writer *w, const tokstream_header *h, uint64_t id,
                         uint64_t bytes, const uint32_t *tokens, size_t n)
{
    uint32_t wd = h->token_width;
    msgpack_pack_map(&w->pk, 3);
    mpk_pack_key_uint(&w->pk, "id", id);
    mpk_pack_key_uint(&w->pk, "bytes", bytes);
    mpk_pack_cstr(&w->pk, "tokens");
    msgpack_pack_bin(&w->pk, n * wd);
    unsigned char tmp[4096];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t t = tokens[i];
        tmp[k++] = (unsigned char)t;
        tmp[k++] = (unsigned char)(t >> 8);
        if (wd == 4) {
            tmp[k++] = (unsigned char)(t >> 16);
            tmp[k++] = (unsigned char)(t >> 24);
        }
        if (k + 4 > sizeof tmp) {
            msgpack_pack_bin_body(&w->pk, tmp, k);
            k = 0;
        }
    }
    if (k)
        msgpack_pack_bin_body(&w->pk, tmp, k);
    mpk_writer_flush(w, false);
}
