/* gen_tokens: a seeded generator of token streams for the shard tests and
 * benchmark, independent of the tokenizer. It can also write the bad streams
 * the tests need (wrong format, wrong version, a token id out of range). */
#include "tokstream.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: gen_tokens [options] > STREAM\n"
    "  --docs N        documents (default 100)\n"
    "  --tokens N      stop once N tokens are written (overrides --docs)\n"
    "  --vocab N       vocab_size (default 1000)\n"
    "  --eos N         eos_id (default vocab-1)\n"
    "  --width 2|4     token_width (default: 2 when vocab <= 65536)\n"
    "  --max-len N     document length uniform in [0, N] (default 300)\n"
    "  --seed N        generator seed (default 1)\n"
    "  --zipf S        Zipf ids with exponent S (default: uniform)\n"
    "  --sequential    ids 0, 1, 2, ... across the stream (each once; no EOS inside)\n"
    "  --id-stride K   document ids 0, K, 2K, ... (default 1)\n"
    "  --format NAME   header format (to make a bad stream)\n"
    "  --version N     header version (to make a bad stream)\n"
    "  --bad-token     the last document holds id vocab_size\n";

int main(int argc, char **argv)
{
    upc_init(argv[0]);
    uint64_t docs = 100, total = 0, vocab = 1000, max_len = 300, seed = 1, stride = 1, version = 1;
    int64_t eos = -1, width = 0;
    double zipf = 0;
    bool sequential = false, bad_token = false;
    const char *format = TOKSTREAM_FORMAT;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (upc_is_help(a)) { fputs(usage, stdout); return 0; }
        else if (!strcmp(a, "--docs") && more) docs = (uint64_t)upc_parse_int(a, argv[++i], 0, INT64_MAX);
        else if (!strcmp(a, "--tokens") && more) total = (uint64_t)upc_parse_int(a, argv[++i], 1, INT64_MAX);
        else if (!strcmp(a, "--vocab") && more) vocab = (uint64_t)upc_parse_int(a, argv[++i], 2, UINT32_MAX);
        else if (!strcmp(a, "--eos") && more) eos = upc_parse_int(a, argv[++i], 0, UINT32_MAX);
        else if (!strcmp(a, "--width") && more) width = upc_parse_int(a, argv[++i], 2, 4);
        else if (!strcmp(a, "--max-len") && more) max_len = (uint64_t)upc_parse_int(a, argv[++i], 0, 1 << 24);
        else if (!strcmp(a, "--seed") && more) seed = (uint64_t)upc_parse_int(a, argv[++i], 0, INT64_MAX);
        else if (!strcmp(a, "--zipf") && more) zipf = upc_parse_double(a, argv[++i], 0, 10);
        else if (!strcmp(a, "--sequential")) sequential = true;
        else if (!strcmp(a, "--id-stride") && more) stride = (uint64_t)upc_parse_int(a, argv[++i], 1, 1 << 20);
        else if (!strcmp(a, "--format") && more) format = argv[++i];
        else if (!strcmp(a, "--version") && more) version = (uint64_t)upc_parse_int(a, argv[++i], 0, 1000);
        else if (!strcmp(a, "--bad-token")) bad_token = true;
        else upc_fail(EX_USAGE, "unknown option or missing value: '%s'", a);
    }
    tokstream_header h = {.vocab_size = vocab, .eos_id = eos < 0 ? vocab - 1 : (uint64_t)eos};
    h.token_width = width ? (uint32_t)width : tokstream_width_for(vocab);
    snprintf(h.tokenizer, sizeof h.tokenizer, "xxh64:%016llx", (unsigned long long)(vocab * 2654435761u + seed));

    /* Zipf: cumulative weights over ranks, sampled by binary search. */
    double *cdf = NULL;
    if (zipf > 0) {
        cdf = upc_malloc(vocab * sizeof *cdf);
        double acc = 0;
        for (uint64_t r = 0; r < vocab; r++)
            cdf[r] = acc += pow((double)(r + 1), -zipf);
        for (uint64_t r = 0; r < vocab; r++)
            cdf[r] /= acc;
    }

    mpk_writer w;
    mpk_writer_open(&w, "-");
    msgpack_pack_map(&w.pk, 6);
    mpk_pack_key_str(&w.pk, "format", format);
    mpk_pack_key_uint(&w.pk, "version", version);
    mpk_pack_key_uint(&w.pk, "vocab_size", h.vocab_size);
    mpk_pack_key_uint(&w.pk, "eos_id", h.eos_id);
    mpk_pack_key_uint(&w.pk, "token_width", h.token_width);
    mpk_pack_key_str(&w.pk, "tokenizer", h.tokenizer);

    uint64_t state = seed, written = 0, next_seq = 0;
    uint32_t *tok = upc_malloc((max_len + 1) * sizeof *tok);
    for (uint64_t d = 0; total ? written < total : d < docs; d++) {
        uint64_t n = upc_splitmix64(&state) % (max_len + 1);
        for (uint64_t i = 0; i < n; i++) {
            uint64_t x = upc_splitmix64(&state);
            uint32_t t;
            if (sequential) {
                if (next_seq == h.eos_id)
                    next_seq++;
                if (next_seq >= vocab)
                    upc_fail(EX_USAGE, "--sequential: the vocabulary of %llu is used up", (unsigned long long)vocab);
                t = (uint32_t)next_seq++;
            } else if (cdf) {
                double u = (double)(x >> 11) * 0x1p-53;
                uint64_t lo = 0, hi = vocab - 1;
                while (lo < hi) {
                    uint64_t mid = (lo + hi) / 2;
                    if (cdf[mid] < u) lo = mid + 1; else hi = mid;
                }
                t = (uint32_t)lo;
            } else {
                t = (uint32_t)(x % vocab);
            }
            tok[i] = t;
        }
        bool last = total ? written + n + 1 >= total : d + 1 == docs;
        if (bad_token && last) {
            if (n == 0)
                n = 1;
            tok[n - 1] = (uint32_t)vocab;
        }
        tokstream_write_doc(&w, &h, d * stride, upc_splitmix64(&state) % (4 * n + 1), tok, n);
        written += n + 1;
    }
    mpk_writer_commit(&w);
    free(tok);
    free(cdf);
    return 0;
}
