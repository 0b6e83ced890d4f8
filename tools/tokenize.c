/* tokenize: learn a byte-level BPE tokenizer, encode text into the token
 * stream, decode it back, convert tokenizer files. See tokenize(1). */
#include <getopt.h>
#include <omp.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bpe.h"
#include "bpe_train.h"
#include "textsplit.h"
#include "tokstream.h"
#include "util.h"

static const char usage[] =
    "usage: tokenize train -o TOKENIZER.json [options] FILE...\n"
    "       tokenize encode --tokenizer PATH [options] [FILE...]\n"
    "       tokenize decode --tokenizer PATH [options] [STREAM]\n"
    "       tokenize convert --tokenizer PATH -o TOKENIZER.json\n"
    "\n"
    "Learn a byte-level BPE tokenizer, turn text into an upcyc token stream\n"
    "(msgpack, see upcyc-tokens(5)) and back.\n"
    "\n"
    "train options:\n"
    "  --vocab-size N       vocabulary size, specials included (default 32768)\n"
    "  --pattern P          pre-tokenization: gpt2, cl100k, o200k or a PCRE2\n"
    "                       regex (default cl100k)\n"
    "  --special TOKEN      a special token (repeatable; default <|endoftext|>)\n"
    "  --min-frequency N    stop merging below this pair count (default 2)\n"
    "  --split MODE         documents: file, line, paragraph, separator=TEXT\n"
    "                       (default file)\n"
    "  -o, --output PATH    where to write the HF tokenizer.json (required)\n"
    "\n"
    "encode options:\n"
    "  --tokenizer PATH     tokenizer.json, GPT-2 vocab.json (merges.txt beside),\n"
    "                       a tiktoken rank file, or a directory with tokenizer.json\n"
    "  --split MODE         as for train (default file)\n"
    "  --threads N          encoding threads (default: all cores)\n"
    "  --allow-special      special token strings in the text become their ids\n"
    "  --eos TOKEN          the end-of-document special (default: the tokenizer's\n"
    "                       <|endoftext|>, <|end_of_text|>, </s> or <eos>)\n"
    "  -o, --output PATH    write the stream here (default stdout)\n"
    "\n"
    "decode options:\n"
    "  --tokenizer PATH     must be the tokenizer that made the stream\n"
    "  --join TEXT          printed after each document (C escapes; default none)\n"
    "  -o, --output PATH    write the text here (default stdout)\n"
    "\n"
    "common: -v, --verbose (summary on stderr), -h, --help, --version\n"
    "Input \"-\" or no FILE reads stdin. Exit codes: 0 ok, 64 usage, 65 bad data,\n"
    "66 missing input, 73 cannot create output, 74 I/O error.\n";

typedef struct {
    const char *tokenizer;
    const char *output;
    const char *pattern;
    const char *specials[64];
    size_t n_special;
    const char *eos;
    const char *join;
    split_spec split;
    long long vocab_size;
    long long min_frequency;
    int threads;
    bool allow_special;
    bool verbose;
} options;


static bpe_tokenizer *load_tokenizer(const char *path)
{
    char err[512];
    if (!path)
        upc_usage_fail("--tokenizer PATH is required");
    if (access(path, F_OK) != 0)
        upc_fail(EX_NOINPUT, "%s: no such tokenizer file", path);
    bpe_tokenizer *t = bpe_load(path, err, sizeof err);
    if (!t)
        upc_fail(EX_DATAERR, "%s", err);
    return t;
}

/* Map each input file in turn, call doc for each of its documents, then
 * end_of_file (if any) before the file is unmapped. */
static void for_each_document(int nfiles, char **files, const split_spec *split,
                              void (*doc)(void *ctx, const char *text, size_t n),
                              void (*end_of_file)(void *ctx), void *ctx, size_t *docs, size_t *bytes)
{
    for (int i = 0; i < nfiles; i++) {
        upc_mapped m;
        upc_map_file(&m, files[i]);
        split_iter it;
        const char *text;
        size_t n;
        split_begin(&it, m.data, m.len);
        while (split_next(split, &it, &text, &n)) {
            doc(ctx, text, n);
            if (docs)
                (*docs)++;
        }
        if (end_of_file)
            end_of_file(ctx);
        if (bytes)
            *bytes += m.len;
        upc_unmap(&m);
    }
}

/* ---- train ---------------------------------------------------------------- */

static void feed_trainer(void *tr, const char *text, size_t n)
{
    bpe_trainer_feed(tr, text, n);
}

static int cmd_train(options *o, int nfiles, char **files)
{
    char err[512];
    if (!o->output)
        upc_usage_fail("%s: -o TOKENIZER.json is required", "train");
    if (nfiles == 0)
        upc_usage_fail("%s: give the text files to learn from", "train");
    const char *pattern = bpe_pattern_named(o->pattern);
    if (!pattern)
        pattern = o->pattern;
    if (o->n_special == 0)
        o->specials[o->n_special++] = "<|endoftext|>";
    bpe_train_opts to = {
        .vocab_size = (size_t)o->vocab_size,
        .pattern = pattern,
        .n_special = o->n_special,
        .special = o->specials,
        .min_frequency = (uint64_t)o->min_frequency,
        .verbose = o->verbose,
    };
    bpe_trainer *tr = bpe_trainer_new(&to, err, sizeof err);
    if (!tr)
        upc_fail(EX_USAGE, "%s", err);
    double t0 = upc_now();
    size_t bytes = 0, docs = 0;
    for_each_document(nfiles, files, &o->split, feed_trainer, NULL, tr, &docs, &bytes);
    bpe_tokenizer *t = bpe_trainer_finish(tr, err, sizeof err);
    if (!t)
        upc_fail(EX_DATAERR, "%s", err);
    bpe_save_hf_json(t, o->output);
    if (o->verbose) {
        char digest[32];
        bpe_digest(t, digest);
        upc_warn("learned %zu tokens from %zu documents (%.1f MB) in %.1f s -> %s (%s)",
                 bpe_vocab_size(t), docs, (double)bytes / 1e6, upc_now() - t0, o->output, digest);
    }
    bpe_free(t);
    return 0;
}

/* ---- encode --------------------------------------------------------------- */

/* Documents are encoded in batches: split on one thread, encoded in parallel,
 * written in input order, so the output never depends on the thread count.
 * A large document is cut into segments at places where the named
 * pre-tokenization patterns cannot join text across the cut, so one big
 * file still keeps every core busy. */
typedef struct {
    const char *text;
    size_t len;
    bool last;        /* the last segment of its document */
    uint32_t *ids;
    size_t n, cap;
} segment_job;

typedef struct {
    const bpe_tokenizer *t;
    bpe_scratch **scratch;   /* one per thread */
    bool allow_special;
    bool can_cut;            /* the pattern is one whose safe cuts we know */
    mpk_writer *w;
    tokstream_header *h;
    segment_job *jobs;
    size_t njobs, cap, batch_bytes;
    uint32_t *doc_ids;       /* a document's ids, joined from its segments */
    size_t doc_n, doc_cap, doc_bytes;
    uint64_t next_id, docs, bytes, tokens;
} encoder;

#define SEGMENT_BYTES (1u << 20)

/* A safe cut: "<printable ASCII>\n|<ASCII letter>". In the gpt2, cl100k and
 * o200k patterns no match contains a newline followed by a letter, the
 * newline after a non-space is matched the same with or without the text
 * that follows, and a match starting at the letter sees no text before it. */
static bool safe_cut(const char *p)
{
    unsigned char before = (unsigned char)p[-2], next = (unsigned char)p[0];
    return p[-1] == '\n' && before > 0x20 && before < 0x7f &&
           ((next | 32) >= 'a' && (next | 32) <= 'z');
}

static void flush_batch(encoder *e)
{
    #pragma omp parallel for schedule(dynamic, 1)
    for (size_t i = 0; i < e->njobs; i++) {
        segment_job *j = &e->jobs[i];
        j->n = 0;
        bpe_encode(e->t, e->scratch[omp_get_thread_num()], j->text, j->len, e->allow_special,
                   &j->ids, &j->n, &j->cap);
    }
    for (size_t i = 0; i < e->njobs; i++) {
        segment_job *j = &e->jobs[i];
        const uint32_t *ids = j->ids;
        size_t n = j->n, bytes = j->len;
        bool whole = j->last && e->doc_n == 0 && e->doc_bytes == 0;
        if (!whole) {   /* a cut document: join its segments' ids */
            upc_grow((void **)&e->doc_ids, &e->doc_cap, e->doc_n + n, sizeof *e->doc_ids);
            if (n)
                memcpy(e->doc_ids + e->doc_n, ids, n * sizeof *ids);
            e->doc_n += n;
            e->doc_bytes += bytes;
            if (!j->last)
                continue;
            ids = e->doc_ids;
            n = e->doc_n;
            bytes = e->doc_bytes;
            e->doc_n = e->doc_bytes = 0;
        }
        tokstream_write_doc(e->w, e->h, e->next_id++, bytes, ids, n);
        e->docs++;
        e->bytes += bytes;
        e->tokens += n;
    }
    e->njobs = 0;
    e->batch_bytes = 0;
}

static void add_segment(encoder *e, const char *text, size_t len, bool last)
{
    if (e->njobs == e->cap) {
        size_t old = e->cap;
        upc_grow((void **)&e->jobs, &e->cap, e->njobs + 1, sizeof *e->jobs);
        memset(e->jobs + old, 0, (e->cap - old) * sizeof *e->jobs);
    }
    /* Reuse the slot's id buffer from earlier batches. */
    segment_job *j = &e->jobs[e->njobs++];
    j->text = text;
    j->len = len;
    j->last = last;
    e->batch_bytes += len;
    if (e->batch_bytes >= (8u << 20) || e->njobs >= 65536)
        flush_batch(e);
}

static void add_doc(encoder *e, const char *text, size_t len)
{
    /* Special tokens could straddle a cut, so cut only when they are text. */
    while (e->can_cut && !e->allow_special && len > 2 * SEGMENT_BYTES) {
        size_t cut = SEGMENT_BYTES;
        while (cut < len - 1 && !safe_cut(text + cut))
            cut++;
        if (cut >= len - 1)
            break;
        add_segment(e, text, cut, false);
        text += cut;
        len -= cut;
    }
    add_segment(e, text, len, true);
}

static void add_doc_cb(void *e, const char *text, size_t n)
{
    add_doc(e, text, n);
}

static void flush_batch_cb(void *e)
{
    flush_batch(e);
}

static int cmd_encode(options *o, int nfiles, char **files)
{
    bpe_tokenizer *t = load_tokenizer(o->tokenizer);
    tokstream_header h = {0};
    h.vocab_size = bpe_vocab_size(t);
    int64_t eos = o->eos ? bpe_special_id(t, o->eos) : bpe_eos_id(t);
    if (eos < 0) {
        if (o->eos)
            upc_fail(EX_USAGE, "%s: --eos %s is not a special token of this tokenizer", o->tokenizer, o->eos);
        upc_fail(EX_USAGE, "%s: the tokenizer has no end-of-text special token; name one with --eos", o->tokenizer);
    }
    h.eos_id = (uint64_t)eos;
    h.token_width = tokstream_width_for(h.vocab_size);
    bpe_digest(t, h.tokenizer);

    int threads = o->threads > 0 ? o->threads : omp_get_num_procs();
    omp_set_num_threads(threads);
    encoder e = {.t = t, .allow_special = o->allow_special, .h = &h};
    const char *named[] = {"gpt2", "cl100k", "o200k"};
    for (size_t i = 0; i < 3; i++)
        if (bpe_pattern_named(named[i]) && strcmp(bpe_pattern(t), bpe_pattern_named(named[i])) == 0)
            e.can_cut = true;
    e.scratch = upc_calloc((size_t)threads, sizeof *e.scratch);
    for (int i = 0; i < threads; i++)
        e.scratch[i] = bpe_scratch_new(t);

    mpk_writer w;
    mpk_writer_open(&w, o->output);
    e.w = &w;
    tokstream_write_header(&w, &h);

    double t0 = upc_now();
    static char *stdin_only[] = {"-"};
    if (nfiles == 0) {
        nfiles = 1;
        files = stdin_only;
    }
    /* The batch points into each file's mapping: flush before unmapping. */
    for_each_document(nfiles, files, &o->split, add_doc_cb, flush_batch_cb, &e, NULL, NULL);
    mpk_writer_commit(&w);
    double dt = upc_now() - t0;
    if (o->verbose || isatty(STDERR_FILENO))
        upc_warn("encoded %llu documents, %.2f MB -> %llu tokens (%.2f bytes/token) in %.2f s, %.1f MB/s on %d threads",
                 (unsigned long long)e.docs, (double)e.bytes / 1e6, (unsigned long long)e.tokens,
                 e.tokens ? (double)e.bytes / (double)e.tokens : 0.0, dt,
                 dt > 0 ? (double)e.bytes / 1e6 / dt : 0.0, threads);

    for (size_t i = 0; i < e.cap; i++)
        free(e.jobs[i].ids);
    free(e.jobs);
    free(e.doc_ids);
    for (int i = 0; i < threads; i++)
        bpe_scratch_free(e.scratch[i]);
    free(e.scratch);
    bpe_free(t);
    return 0;
}

/* ---- decode --------------------------------------------------------------- */

/* Interpret C escapes (\n \t \r \\ \0 \xHH) in a --join argument. */
static size_t unescape(const char *s, char *out)
{
    size_t n = 0;
    for (; *s; s++) {
        if (*s != '\\' || !s[1]) {
            out[n++] = *s;
            continue;
        }
        s++;
        switch (*s) {
        case 'n': out[n++] = '\n'; break;
        case 't': out[n++] = '\t'; break;
        case 'r': out[n++] = '\r'; break;
        case '0': out[n++] = '\0'; break;
        case 'x': {
            unsigned v = 0;
            int k = 0;
            while (k < 2 && s[1] && strchr("0123456789abcdefABCDEF", s[1])) {
                char c = *++s;
                v = v * 16 + (unsigned)(c <= '9' ? c - '0' : (c | 32) - 'a' + 10);
                k++;
            }
            out[n++] = (char)v;
            break;
        }
        default: out[n++] = *s;
        }
    }
    return n;
}

static int cmd_decode(options *o, int nfiles, char **files)
{
    if (nfiles > 1)
        upc_usage_fail("%s: decode reads one stream", "decode");
    bpe_tokenizer *t = load_tokenizer(o->tokenizer);
    tokstream_reader r;
    tokstream_reader_open(&r, nfiles ? files[0] : "-");
    char digest[32];
    bpe_digest(t, digest);
    if (r.h.tokenizer[0] && strcmp(r.h.tokenizer, digest) != 0)
        upc_fail(EX_DATAERR, "%s: tokenizer mismatch: the stream was made with %s, %s is %s",
                 r.mr.name, r.h.tokenizer, o->tokenizer, digest);
    if (r.h.vocab_size != bpe_vocab_size(t))
        upc_fail(EX_DATAERR, "%s: vocabulary of %llu tokens, %s has %zu", r.mr.name,
                 (unsigned long long)r.h.vocab_size, o->tokenizer, bpe_vocab_size(t));

    char *join = upc_malloc(strlen(o->join ? o->join : "") + 1);
    size_t join_len = unescape(o->join ? o->join : "", join);
    upc_out out;
    upc_out_open(&out, o->output);
    tokstream_doc d = {0};
    char *text = NULL;
    size_t cap = 0;
    while (tokstream_read(&r, &d)) {
        size_t len = 0, bad;
        if (!bpe_decode(t, d.tokens, d.n, &text, &len, &cap, &bad))
            mpk_reader_fail(&r.mr, "token %zu (id %u) is not in the tokenizer", bad, d.tokens[bad]);
        upc_out_write(&out, text, len);
        upc_out_write(&out, join, join_len);
    }
    upc_out_commit(&out);
    free(text);
    free(join);
    tokstream_doc_free(&d);
    tokstream_reader_close(&r);
    bpe_free(t);
    return 0;
}

/* ---- convert -------------------------------------------------------------- */

static int cmd_convert(options *o, int nfiles, char **files)
{
    (void)files;
    if (nfiles)
        upc_usage_fail("%s: convert takes no file arguments", "convert");
    if (!o->output)
        upc_usage_fail("%s: -o TOKENIZER.json is required", "convert");
    bpe_tokenizer *t = load_tokenizer(o->tokenizer);
    bpe_save_hf_json(t, o->output);
    bpe_free(t);
    return 0;
}

/* ---- main ----------------------------------------------------------------- */

enum { OPT_VOCAB = 256, OPT_PATTERN, OPT_SPECIAL, OPT_MINFREQ, OPT_SPLIT, OPT_TOKENIZER,
       OPT_THREADS, OPT_ALLOW_SPECIAL, OPT_EOS, OPT_JOIN, OPT_VERSION };

int main(int argc, char **argv)
{
    upc_init(argv[0]);
    upc_handle_help_version(argc, argv, usage);
    if (argc < 2)
        upc_usage_fail("missing command (train, encode, decode, convert)");
    const char *cmd = argv[1];
    int (*run)(options *, int, char **) =
        strcmp(cmd, "train") == 0 ? cmd_train :
        strcmp(cmd, "encode") == 0 ? cmd_encode :
        strcmp(cmd, "decode") == 0 ? cmd_decode :
        strcmp(cmd, "convert") == 0 ? cmd_convert : NULL;
    if (!run)
        upc_usage_fail("unknown command '%s' (train, encode, decode, convert)", cmd);

    options o = {.pattern = "cl100k", .vocab_size = 32768, .min_frequency = 2};
    split_parse("file", &o.split);
    static const struct option longopts[] = {
        {"vocab-size", required_argument, 0, OPT_VOCAB},
        {"pattern", required_argument, 0, OPT_PATTERN},
        {"special", required_argument, 0, OPT_SPECIAL},
        {"min-frequency", required_argument, 0, OPT_MINFREQ},
        {"split", required_argument, 0, OPT_SPLIT},
        {"tokenizer", required_argument, 0, OPT_TOKENIZER},
        {"threads", required_argument, 0, OPT_THREADS},
        {"allow-special", no_argument, 0, OPT_ALLOW_SPECIAL},
        {"eos", required_argument, 0, OPT_EOS},
        {"join", required_argument, 0, OPT_JOIN},
        {"output", required_argument, 0, 'o'},
        {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, OPT_VERSION},
        {0, 0, 0, 0},
    };
    opterr = 0;
    int c;
    optind = 2;
    while ((c = getopt_long(argc, argv, "o:vh", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_VOCAB: o.vocab_size = upc_parse_int("--vocab-size", optarg, 257, 1LL << 31); break;
        case OPT_PATTERN: o.pattern = optarg; break;
        case OPT_SPECIAL:
            if (o.n_special == sizeof o.specials / sizeof *o.specials)
                upc_usage_fail("%s: too many --special tokens", cmd);
            o.specials[o.n_special++] = optarg;
            break;
        case OPT_MINFREQ: o.min_frequency = upc_parse_int("--min-frequency", optarg, 1, 1LL << 62); break;
        case OPT_SPLIT:
            if (!split_parse(optarg, &o.split))
                upc_usage_fail("--split: expected file, line, paragraph or separator=TEXT, got '%s'", optarg);
            break;
        case OPT_TOKENIZER: o.tokenizer = optarg; break;
        case OPT_THREADS: o.threads = (int)upc_parse_int("--threads", optarg, 1, 1024); break;
        case OPT_ALLOW_SPECIAL: o.allow_special = true; break;
        case OPT_EOS: o.eos = optarg; break;
        case OPT_JOIN: o.join = optarg; break;
        case 'o': o.output = optarg; break;
        case 'v': o.verbose = true; break;
        case 'h': fputs(usage, stdout); return 0;
        case OPT_VERSION: upc_print_version(); return 0;
        default:
            upc_usage_fail("unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    return run(&o, argc - optind, argv + optind);
}
