/* shard: split a token stream into train/val shard directories of zstd
 * frames, and read them back (cat), summarize (stat) and check (verify). */
#include "shard.h"
#include "shard_docs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "usage: shard [options] OUTDIR [STREAM|-]\n"
    "       shard cat [-o FILE] DIR\n"
    "       shard stat DIR\n"
    "       shard verify DIR\n"
    "\n"
    "Split a token stream (stdin by default) into OUTDIR/train and OUTDIR/val:\n"
    "per split an index, zstd-compressed shard files of fixed-size chunks of\n"
    "the documents joined by EOS, and a document table. DIR is such an OUTDIR\n"
    "or one of its split directories.\n"
    "\n"
    "options:\n"
    "  --val-fraction F   share of documents for val, chosen by a hash of the\n"
    "                     document id and the seed (default 0.01)\n"
    "  --seed N           seed of that hash (default 0)\n"
    "  --chunk-tokens N   tokens per chunk, one zstd frame each (default 65536)\n"
    "  --shard-size N     start a new shard file past N bytes (default 256M)\n"
    "  --level N          zstd compression level, 1 to 19 (default 3)\n"
    "  --force            replace OUTDIR if it is a shard directory\n"
    "  -o FILE            (cat) write the token stream to FILE, atomically\n"
    "  -h, --help         show this help\n"
    "  --version          show the version\n"
    "\n"
    "commands:\n"
    "  cat     write the token stream back; for an OUTDIR both splits merged\n"
    "          in the original order, byte for byte the input\n"
    "  stat    one msgpack summary record on stdout, a human one on stderr\n"
    "  verify  decompress and check everything; exit 0 or 65 naming the\n"
    "          file, frame and byte offset of the first fault\n";

/* ---------- writing ---------- */

static bool is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* An existing directory --force may replace: a shard directory or empty. */
static bool replaceable(const char *dir)
{
    char *t = upc_path_join(dir, "train"), *v = upc_path_join(dir, "val");
    bool ok = shard_is_split_dir(t) || shard_is_split_dir(v);
    free(t);
    free(v);
    if (ok)
        return true;
    DIR *d = opendir(dir);
    if (!d)
        return false;
    bool empty = true;
    for (struct dirent *e; empty && (e = readdir(d));)
        empty = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
    closedir(d);
    return empty;
}

static int cmd_write(int argc, char **argv)
{
    shard_options opt = {.chunk_tokens = 65536, .shard_bytes = 256u << 20, .level = 3,
                         .seed = 0, .val_fraction = 0.01};
    bool force = false;
    const char *pos[2] = {NULL, NULL};
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (strcmp(a, "--force") == 0)
            force = true;
        else if (strcmp(a, "--val-fraction") == 0 && more)
            opt.val_fraction = upc_parse_double(a, argv[++i], 0, 1);
        else if (strcmp(a, "--seed") == 0 && more)
            opt.seed = (uint64_t)upc_parse_int(a, argv[++i], 0, INT64_MAX);
        else if (strcmp(a, "--chunk-tokens") == 0 && more)
            opt.chunk_tokens = (uint64_t)upc_parse_int(a, argv[++i], 16, 1 << 26);
        else if (strcmp(a, "--shard-size") == 0 && more)
            opt.shard_bytes = (uint64_t)upc_parse_int(a, argv[++i], 1, INT64_MAX);
        else if (strcmp(a, "--level") == 0 && more)
            opt.level = (int)upc_parse_int(a, argv[++i], 1, 19);
        else if (strcmp(a, "--") == 0) {
            while (++i < argc) {
                if (npos == 2)
                    upc_usage_fail("unexpected argument '%s'", argv[i]);
                pos[npos++] = argv[i];
            }
        } else if (a[0] == '-' && a[1]) {
            upc_usage_fail("unknown option or missing value: '%s'", a);
        } else {
            if (npos == 2)
                upc_usage_fail("unexpected argument '%s'", a);
            pos[npos++] = a;
        }
    }
    if (npos == 0)
        upc_usage_fail("missing OUTDIR");

    char outdir[PATH_MAX];
    snprintf(outdir, sizeof outdir, "%s", pos[0]);
    for (size_t n = strlen(outdir); n > 1 && outdir[n - 1] == '/'; n--)
        outdir[n - 1] = 0;
    struct stat st;
    bool exists = lstat(outdir, &st) == 0;
    if (exists && !force)
        upc_fail(EX_CANTCREAT, "%s: already exists (--force replaces it)", outdir);
    if (exists && (!S_ISDIR(st.st_mode) || !replaceable(outdir)))
        upc_fail(EX_CANTCREAT, "%s: exists and is not a shard directory; not replacing it", outdir);

    tokstream_reader in;
    tokstream_reader_open(&in, pos[1]);

    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", outdir, (long)getpid());
    if (mkdir(tmp, 0777) != 0)
        upc_fail(EX_CANTCREAT, "%s: cannot create: %s", tmp, strerror(errno));
    upc_tmp_register(tmp);
    char *tdir = upc_path_join(tmp, "train"), *vdir = upc_path_join(tmp, "val");
    upc_mkdirs(tdir);
    upc_mkdirs(vdir);

    shard_writer tw, vw;
    shard_writer_open(&tw, tdir, "train", &in.h, &opt);
    shard_writer_open(&vw, vdir, "val", &in.h, &opt);
    tokstream_doc doc = {0};
    uint64_t position = 0;
    while (tokstream_read(&in, &doc)) {
        shard_writer *w = shard_is_val(doc.id, opt.seed, opt.val_fraction) ? &vw : &tw;
        shard_writer_add(w, &doc, position++);
    }
    tokstream_reader_close(&in);
    tokstream_doc_free(&doc);
    shard_writer_finish(&tw);
    shard_writer_finish(&vw);
    upc_fsync_dir(tmp);

    upc_publish_dir(tmp, outdir);
    free(tdir);
    free(vdir);
    return 0;
}

/* ---------- reading splits document by document (lib/shard_docs.h) ---------- */

/* The split whose next document came first in the original stream (splits
 * are merged back by position), or -1 when every split is done. */
static int next_in_order(const shard_doc_reader *sr, int n)
{
    int pick = -1;
    for (int i = 0; i < n; i++)
        if (shard_docs_more(&sr[i]) && (pick < 0 || sr[i].docs[sr[i].doc].position < sr[pick].docs[sr[pick].doc].position))
            pick = i;
    return pick;
}

/* DIR as one split or an OUTDIR of two; returns the number of splits. */
static int open_splits(const char *dir, shard_doc_reader sr[2], bool check_hash)
{
    if (shard_is_split_dir(dir)) {
        shard_docs_open(&sr[0], dir, check_hash);
        return 1;
    }
    char *t = upc_path_join(dir, "train"), *v = upc_path_join(dir, "val");
    if (!is_dir(dir))
        upc_fail(EX_NOINPUT, "%s: no such directory", dir);
    if (!is_dir(t) && !is_dir(v))
        upc_fail(EX_NOINPUT, "%s: not a shard directory (no %s, train/ or val/)", dir, SHARD_INDEX_NAME);
    shard_docs_open(&sr[0], t, check_hash);
    shard_docs_open(&sr[1], v, check_hash);
    const tokstream_header *a = &sr[0].ix.h, *b = &sr[1].ix.h;
    if (a->vocab_size != b->vocab_size || a->eos_id != b->eos_id || a->token_width != b->token_width ||
        strcmp(a->tokenizer, b->tokenizer) != 0)
        upc_fail(EX_DATAERR, "%s: the train and val token headers differ", dir);
    if (strcmp(sr[0].ix.split, "train") || strcmp(sr[1].ix.split, "val"))
        upc_fail(EX_DATAERR, "%s: the split indexes are not named train and val", dir);
    free(t);
    free(v);
    return 2;
}

static const char *one_dir_arg(int argc, char **argv, const char **out)
{
    const char *dir = NULL;
    for (int i = 2; i < argc; i++) {
        if (out && strcmp(argv[i], "-o") == 0 && i + 1 < argc)
            *out = argv[++i];
        else if (argv[i][0] == '-' && argv[i][1])
            upc_usage_fail("unknown option or missing value: '%s'", argv[i]);
        else if (dir)
            upc_usage_fail("unexpected argument '%s'", argv[i]);
        else
            dir = argv[i];
    }
    if (!dir)
        upc_usage_fail("missing DIR");
    return dir;
}

static int cmd_cat(int argc, char **argv)
{
    const char *out = NULL;
    const char *dir = one_dir_arg(argc, argv, &out);
    shard_doc_reader sr[2];
    int n = open_splits(dir, sr, false);
    mpk_writer w;
    mpk_writer_open(&w, out);
    tokstream_write_header(&w, &sr[0].ix.h);
    tokstream_doc d = {0};
    for (;;) {
        int pick = next_in_order(sr, n);
        if (pick < 0)
            break;
        shard_docs_read(&sr[pick], &d);
        tokstream_write_doc(&w, &sr[pick].ix.h, d.id, d.bytes, d.tokens, d.n);
    }
    mpk_writer_commit(&w);
    tokstream_doc_free(&d);
    for (int i = 0; i < n; i++)
        shard_docs_close(&sr[i]);
    return 0;
}

/* ---------- stat ---------- */

typedef struct {
    uint64_t docs, tokens, chunks, files, cbytes, rbytes;
} split_stat;

static void stat_of(const shard_index *ix, split_stat *s)
{
    memset(s, 0, sizeof *s);
    s->docs = ix->ndocs;
    s->tokens = ix->ntokens;
    s->chunks = ix->nchunks;
    s->files = ix->nfiles;
    for (size_t i = 0; i < ix->nfiles; i++)
        s->cbytes += ix->file_bytes[i];
    s->rbytes = ix->ntokens * ix->width;
}

static double ratio(const split_stat *s)
{
    return s->cbytes ? (double)s->rbytes / (double)s->cbytes : 0.0;
}

static void pack_stat(msgpack_packer *pk, const split_stat *s)
{
    msgpack_pack_map(pk, 7);
    mpk_pack_key_uint(pk, "documents", s->docs);
    mpk_pack_key_uint(pk, "tokens", s->tokens);
    mpk_pack_key_uint(pk, "chunks", s->chunks);
    mpk_pack_key_uint(pk, "shard_files", s->files);
    mpk_pack_key_uint(pk, "compressed_bytes", s->cbytes);
    mpk_pack_key_uint(pk, "raw_token_bytes", s->rbytes);
    mpk_pack_key_double(pk, "compression_ratio", ratio(s));
}

static void human_stat(const char *name, const split_stat *s)
{
    fprintf(stderr, "%-6s %10llu docs %14llu tokens %8llu chunks %5llu files %14llu bytes (x%.2f)\n", name,
            (unsigned long long)s->docs, (unsigned long long)s->tokens, (unsigned long long)s->chunks,
            (unsigned long long)s->files, (unsigned long long)s->cbytes, ratio(s));
}

static int cmd_stat(int argc, char **argv)
{
    const char *dir = one_dir_arg(argc, argv, NULL);
    shard_index ix[2];
    int n;
    if (shard_is_split_dir(dir)) {
        shard_index_open(&ix[0], dir);
        n = 1;
    } else {
        shard_doc_reader sr[2];
        n = open_splits(dir, sr, false);
        for (int i = 0; i < n; i++) {
            ix[i] = sr[i].ix;
            memset(&sr[i].ix, 0, sizeof sr[i].ix);
            shard_docs_close(&sr[i]);
        }
    }
    split_stat st[2], total = {0};
    for (int i = 0; i < n; i++) {
        stat_of(&ix[i], &st[i]);
        total.docs += st[i].docs;
        total.tokens += st[i].tokens;
        total.chunks += st[i].chunks;
        total.files += st[i].files;
        total.cbytes += st[i].cbytes;
        total.rbytes += st[i].rbytes;
    }
    mpk_writer w;
    mpk_writer_open(&w, "-");
    msgpack_pack_map(&w.pk, 9);
    mpk_pack_key_str(&w.pk, "format", "upcyc.shards.stat");
    mpk_pack_key_uint(&w.pk, "version", SHARDS_VERSION);
    mpk_pack_key_str(&w.pk, "dir", dir);
    mpk_pack_key_uint(&w.pk, "vocab_size", ix[0].h.vocab_size);
    mpk_pack_key_uint(&w.pk, "token_width", ix[0].width);
    mpk_pack_key_uint(&w.pk, "chunk_tokens", ix[0].chunk_tokens);
    mpk_pack_key_str(&w.pk, "tokenizer", ix[0].h.tokenizer);
    mpk_pack_cstr(&w.pk, "splits");
    msgpack_pack_map(&w.pk, n);
    for (int i = 0; i < n; i++) {
        mpk_pack_cstr(&w.pk, ix[i].split);
        pack_stat(&w.pk, &st[i]);
    }
    mpk_pack_cstr(&w.pk, "total");
    pack_stat(&w.pk, &total);
    mpk_writer_commit(&w);
    for (int i = 0; i < n; i++)
        human_stat(ix[i].split, &st[i]);
    human_stat("total", &total);
    for (int i = 0; i < n; i++)
        shard_index_close(&ix[i]);
    return 0;
}

/* ---------- verify ---------- */

static int cmd_verify(int argc, char **argv)
{
    const char *dir = one_dir_arg(argc, argv, NULL);
    shard_doc_reader sr[2];
    int n = open_splits(dir, sr, true);
    tokstream_doc d = {0};
    uint64_t next_position = 0, docs = 0, tokens = 0, chunks = 0;
    for (;;) {
        int pick = next_in_order(sr, n);
        if (pick < 0)
            break;
        shard_doc_reader *s = &sr[pick];
        const shard_docrec *r = &s->docs[s->doc];
        if (n == 2 && r->position != next_position)
            upc_fail(EX_DATAERR, "%s/%s: document %zu: position %llu, expected %llu (positions of both splits must "
                     "count 0, 1, 2, ...)", s->ix.dir, SHARD_DOCS_NAME, s->doc, (unsigned long long)r->position,
                     (unsigned long long)next_position);
        if (shard_is_val(r->id, s->ix.seed, s->ix.val_fraction) != (strcmp(s->ix.split, "val") == 0))
            upc_fail(EX_DATAERR, "%s/%s: document %zu (id %llu) belongs to the other split", s->ix.dir,
                     SHARD_DOCS_NAME, s->doc, (unsigned long long)r->id);
        next_position++;
        shard_docs_read(s, &d);
    }
    for (int i = 0; i < n; i++) {
        /* Every token belongs to a document, so the last chunk ends exactly. */
        shard_doc_reader *s = &sr[i];
        if (s->next_chunk != s->ix.nchunks || s->chunk_off != s->chunk_n)
            upc_fail(EX_DATAERR, "%s: tokens after the last document", s->ix.dir);
        docs += s->ix.ndocs;
        tokens += s->ix.ntokens;
        chunks += s->ix.nchunks;
    }
    fprintf(stderr, "shard: %s: ok: %d split%s, %llu documents, %llu tokens, %llu chunks\n", dir, n,
            n == 1 ? "" : "s", (unsigned long long)docs, (unsigned long long)tokens, (unsigned long long)chunks);
    tokstream_doc_free(&d);
    for (int i = 0; i < n; i++)
        shard_docs_close(&sr[i]);
    return 0;
}

int main(int argc, char **argv)
{
    upc_init(argv[0]);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (upc_is_help(argv[i])) {
            fputs(usage, stdout);
            return 0;
        }
        if (upc_is_version(argv[i])) {
            upc_print_version();
            return 0;
        }
    }
    if (argc > 1 && strcmp(argv[1], "cat") == 0)
        return cmd_cat(argc, argv);
    if (argc > 1 && strcmp(argv[1], "stat") == 0)
        return cmd_stat(argc, argv);
    if (argc > 1 && strcmp(argv[1], "verify") == 0)
        return cmd_verify(argc, argv);
    return cmd_write(argc, argv);
}
