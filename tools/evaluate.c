/* evaluate: held-out cross-entropy and in-context-learning tasks for one or
 * more checkpoints; `evaluate build` makes tasks from held-out text. */
#include "backend.h"
#include "bpe.h"
#include "icl.h"
#include "lm_score.h"
#include "loader.h"
#include "model.h"
#include "model_config.h"
#include "mpk.h"
#include "shard_docs.h"
#include "task_builder.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char usage[] =
    "usage: evaluate [options] CKPT...\n"
    "       evaluate build --data SPLIT --tokenizer FILE --out DIR [options]\n"
    "\n"
    "Score checkpoints: mean cross-entropy, perplexity and bits per byte on a\n"
    "held-out shard split (--data), and LLM Foundry in-context-learning tasks\n"
    "(--suite icl_tasks.yaml) aggregated as its Eval Gauntlet (--gauntlet).\n"
    "stdout: a msgpack stream of lm, task and summary records; stderr: a table.\n"
    "`evaluate build` makes a LAMBADA-style and a HellaSwag-style task, and the\n"
    "suite and gauntlet files that use them, from a held-out split's text.\n"
    "\n"
    "options:\n"
    "  --data DIR           held-out split, e.g. shards/val\n"
    "  --tokens N           score about N tokens of --data, rounded up to whole\n"
    "                       batches (default: all)\n"
    "  --suite FILE         LLM Foundry icl_tasks YAML\n"
    "  --gauntlet FILE      LLM Foundry eval_gauntlet YAML (needs --suite)\n"
    "  --limit N            score at most N items per task (default: all)\n"
    "  --per-item           also an item record per scored item (log-likelihoods,\n"
    "                       prediction, generated text)\n"
    "  --seq-len T          context window (default: max_position_embeddings,\n"
    "                       at most 2048)\n"
    "  --batch B            sequences scored at once (default 8)\n"
    "  --seed N             few-shot example seed (default: each task's\n"
    "                       fewshot_random_seed, Foundry's 1234)\n"
    "  --threads N          CPU threads (default: OpenMP's choice)\n"
    "  --device NAME        cpu (default), cuda (when built with it) or auto\n"
    "  --precision P        fp32 (default) or bf16: GEMM operands rounded to bf16\n"
    "  -h, --help           show this help\n"
    "  --version            show the version\n"
    "\n"
    "build options:\n"
    "  --data DIR           the held-out split whose documents become items\n"
    "  --tokenizer FILE     the tokenizer that made it (to decode the text)\n"
    "  --out DIR            where the task files go (replaced atomically)\n"
    "  --max-items N        items per task (default 500)\n"
    "  --seed N             item and distractor seed (default 1234)\n"
    "  --force              replace an existing DIR\n"
    "\n"
    "Counts take suffixes K, M, G (x1000). See evaluate(1).\n";

typedef struct {
    const char *data, *suite, *gauntlet, *tokenizer, *out, *device, *precision;
    long long tokens, limit, seq_len, batch, seed, threads, max_items;
    bool force, per_item;
    const char **ckpts;
    int n_ckpts;
} options;


static void parse_args(int argc, char **argv, int first, options *o)
{
    o->ckpts = upc_calloc((size_t)argc, sizeof *o->ckpts);
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (upc_is_help(a)) {
            fputs(usage, stdout);
            exit(0);
        } else if (upc_is_version(a)) {
            upc_print_version();
            exit(0);
        } else if (strcmp(a, "--force") == 0) {
            o->force = true;
        } else if (strcmp(a, "--per-item") == 0) {
            o->per_item = true;
        } else if (strcmp(a, "--data") == 0 && more) {
            o->data = argv[++i];
        } else if (strcmp(a, "--suite") == 0 && more) {
            o->suite = argv[++i];
        } else if (strcmp(a, "--gauntlet") == 0 && more) {
            o->gauntlet = argv[++i];
        } else if (strcmp(a, "--tokenizer") == 0 && more) {
            o->tokenizer = argv[++i];
        } else if (strcmp(a, "--out") == 0 && more) {
            o->out = argv[++i];
        } else if (strcmp(a, "--tokens") == 0 && more) {
            o->tokens = upc_parse_count(a, argv[++i], 1, 1e18);
        } else if (strcmp(a, "--limit") == 0 && more) {
            o->limit = upc_parse_count(a, argv[++i], 1, 1e15);
        } else if (strcmp(a, "--max-items") == 0 && more) {
            o->max_items = upc_parse_count(a, argv[++i], 1, 1e9);
        } else if (strcmp(a, "--seq-len") == 0 && more) {
            o->seq_len = upc_parse_int(a, argv[++i], 2, 1 << 24);
        } else if (strcmp(a, "--batch") == 0 && more) {
            o->batch = upc_parse_int(a, argv[++i], 1, 1 << 16);
        } else if (strcmp(a, "--seed") == 0 && more) {
            o->seed = upc_parse_int(a, argv[++i], 0, INT64_MAX);
        } else if (strcmp(a, "--threads") == 0 && more) {
            o->threads = upc_parse_int(a, argv[++i], 1, 4096);
        } else if (strcmp(a, "--device") == 0 && more) {
            o->device = argv[++i];
        } else if (strcmp(a, "--precision") == 0 && more) {
            o->precision = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            upc_usage_fail("unknown option or missing value: '%s'", a);
        } else {
            o->ckpts[o->n_ckpts++] = a;
        }
    }
}

/* ---- evaluate build ----------------------------------------------------- */

static int build(const options *o)
{
    if (!o->data || !o->tokenizer || !o->out)
        upc_usage_fail("build needs --data SPLIT, --tokenizer FILE and --out DIR");
    if (o->n_ckpts)
        upc_usage_fail("build takes no checkpoint ('%s')", o->ckpts[0]);
    if (o->suite || o->gauntlet || o->tokens || o->limit || o->per_item || o->seq_len || o->batch != 8 || o->threads ||
        strcmp(o->device, "cpu") != 0 || strcmp(o->precision, "fp32") != 0)
        upc_usage_fail("build takes --data, --tokenizer, --out, --max-items, --seed and --force only");
    struct stat st;
    if (lstat(o->out, &st) == 0 && !o->force)
        upc_fail(EX_CANTCREAT, "%s: already exists (--force replaces it)", o->out);
    if (lstat(o->out, &st) == 0 && !S_ISDIR(st.st_mode))
        upc_fail(EX_CANTCREAT, "%s: exists and is not a directory; not replacing it", o->out);
    char err[512];
    bpe_tokenizer *t = bpe_load(o->tokenizer, err, sizeof err);
    if (!t)
        upc_fail(EX_DATAERR, "%s: %s", o->tokenizer, err);
    shard_doc_reader r;
    shard_docs_open(&r, o->data, false);
    char digest[32];
    bpe_digest(t, digest);
    if (r.ix.h.tokenizer[0] && strcmp(digest, r.ix.h.tokenizer) != 0)
        upc_fail(EX_DATAERR, "%s: tokenizer %s differs from the one that made %s (%s)", o->tokenizer, digest, o->data,
                 r.ix.h.tokenizer);

    size_t n = 0, cap = 0;
    tb_doc *docs = NULL;
    tokstream_doc d = {0};
    while (shard_docs_more(&r)) {
        shard_docs_read(&r, &d);
        char *text = NULL;
        size_t len = 0, tcap = 0, bad;
        if (!bpe_decode(t, d.tokens, d.n, &text, &len, &tcap, &bad))
            upc_fail(EX_DATAERR, "%s: document %llu: token %zu is outside the tokenizer", o->data,
                     (unsigned long long)d.id, bad);
        upc_grow((void **)&docs, &cap, n + 1, sizeof *docs);
        docs[n++] = (tb_doc){text ? text : upc_strdup(""), len};
    }
    tokstream_doc_free(&d);
    shard_docs_close(&r);

    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", o->out, (long)getpid());
    if (mkdir(tmp, 0777) != 0)
        upc_fail(EX_CANTCREAT, "%s: cannot create: %s", tmp, strerror(errno));
    upc_tmp_register(tmp);
    tb_options to;
    tb_options_default(&to);
    if (o->seed >= 0)
        to.seed = (uint64_t)o->seed;
    if (o->max_items)
        to.max_items = (size_t)o->max_items;
    tb_stats stats;
    tb_build(docs, n, &to, tmp, &stats);
    upc_fsync_dir(tmp);
    upc_publish_dir(tmp, o->out);
    fprintf(stderr, "evaluate build: %zu documents -> %s: %zu lambada items, %zu hellaswag items (%zu documents skipped)\n",
            n, o->out, stats.lambada, stats.hellaswag, stats.skipped);
    for (size_t i = 0; i < n; i++)
        free((char *)docs[i].text);
    free(docs);
    bpe_free(t);
    return 0;
}

/* ---- scoring ------------------------------------------------------------- */

typedef struct {
    const char *label;
    int num_fewshot;
    double acc;
} task_result;

typedef struct {
    const options *o;
    const char *path;
    model_config cfg;
    model *m;
    lm_scorer *scorer;            /* made on first use: the engine's KV pool is not free */
    bpe_tokenizer *tok;
    bpe_scratch *scratch;
    int max_len;
    int32_t lead;                 /* the token every scored sequence starts with */
    mpk_writer *rec;
    task_result *results;
    size_t n_results, results_cap;
    double lm_loss, lm_bpb;
    bool have_lm;
} evaluator;

static void load_model(evaluator *ev, const char *path)
{
    mc_load(&ev->cfg, path);
    const char *why = mc_unsupported(&ev->cfg);
    if (why)
        upc_fail(EX_DATAERR, "%s: %s", path, why);
    ev->m = model_create(upc_backend_precision(upc_backend(ev->o->device), ev->o->precision), &ev->cfg);
    st_reader *r = st_open(path);
    model_load_weights(ev->m, r);
    st_close(r);
    long long T = ev->o->seq_len;
    if (!T)
        T = ev->cfg.max_position_embeddings > 0 && ev->cfg.max_position_embeddings < 2048
                ? ev->cfg.max_position_embeddings
                : 2048;
    if (ev->cfg.max_position_embeddings > 0 && T > ev->cfg.max_position_embeddings)
        upc_usage_fail("--seq-len %lld exceeds %s's max_position_embeddings %lld", T, path,
                       (long long)ev->cfg.max_position_embeddings);
    ev->max_len = (int)T;
    char *tp = upc_path_join(path, "tokenizer.json");
    struct stat st;
    if (stat(tp, &st) == 0) {
        char err[512];
        ev->tok = bpe_load(tp, err, sizeof err);
        if (!ev->tok)
            upc_fail(EX_DATAERR, "%s: %s", tp, err);
        if ((int64_t)bpe_vocab_size(ev->tok) > ev->cfg.vocab_size)
            upc_fail(EX_DATAERR, "%s: %zu tokens do not fit the model's vocab_size %lld", tp, bpe_vocab_size(ev->tok),
                     (long long)ev->cfg.vocab_size);
        ev->scratch = bpe_scratch_new(ev->tok);
        ev->lead = ev->cfg.bos_token_id >= 0 ? (int32_t)ev->cfg.bos_token_id : (int32_t)bpe_eos_id(ev->tok);
    }
    free(tp);
}

static lm_scorer *scorer(evaluator *ev)
{
    if (!ev->scorer)
        ev->scorer = lm_scorer_create(ev->m, ev->max_len, (int)ev->o->batch);
    return ev->scorer;
}

static void free_model(evaluator *ev)
{
    if (ev->scratch)
        bpe_scratch_free(ev->scratch);
    if (ev->tok)
        bpe_free(ev->tok);
    lm_scorer_free(ev->scorer);
    model_free(ev->m);
    mc_free(&ev->cfg);
    for (size_t i = 0; i < ev->n_results; i++)
        free((char *)ev->results[i].label);
    free(ev->results);
    ev->results = NULL;
    ev->n_results = ev->results_cap = 0;
    ev->scratch = NULL;
    ev->tok = NULL;
}

/* Held-out cross-entropy over the split, as train scores validation. */
static void eval_lm(evaluator *ev)
{
    const options *o = ev->o;
    double t0 = upc_now();
    loader_config lc = {.batch = (size_t)o->batch, .seq = (size_t)ev->max_len, .seed = 0, .world = 1,
                        .pad_tail = true};
    loader *L = loader_open(o->data, &lc);
    const shard_index *ix = loader_index(L);
    if ((int64_t)ix->h.vocab_size > ev->cfg.vocab_size)
        upc_fail(EX_DATAERR, "%s: vocabulary of %llu tokens exceeds %s's vocab_size %lld", o->data,
                 (unsigned long long)ix->h.vocab_size, ev->path, (long long)ev->cfg.vocab_size);
    if (ev->tok) {
        char digest[32];
        bpe_digest(ev->tok, digest);
        if (ix->h.tokenizer[0] && strcmp(digest, ix->h.tokenizer) != 0)
            upc_fail(EX_DATAERR, "%s: its tokenizer %s differs from the one that made %s (%s)", ev->path, digest,
                     o->data, ix->h.tokenizer);
    }
    shard_docrec *docs = shard_read_docs(ix);
    uint64_t bytes = 0;
    for (uint64_t i = 0; i < ix->ndocs; i++)
        bytes += docs[i].bytes;
    free(docs);
    uint64_t split_tokens = ix->ntokens;   /* ix goes with the loader */
    long long n;
    double loss = lm_heldout_loss(ev->m, L, (size_t)o->batch, (size_t)ev->max_len, (uint64_t)o->tokens, &n);
    loader_close(L);
    /* bits per byte: nats per token over bytes per token of the split (its
     * documents' source bytes over its tokens, EOS included) */
    double bpb = loss / log(2.0) / ((double)bytes / (double)split_tokens);
    ev->lm_loss = loss;
    ev->lm_bpb = bpb;
    ev->have_lm = true;
    msgpack_packer *pk = &ev->rec->pk;
    msgpack_pack_map(pk, 8);
    mpk_pack_key_str(pk, "event", "lm");
    mpk_pack_key_str(pk, "model", ev->path);
    mpk_pack_key_str(pk, "data", o->data);
    mpk_pack_key_int(pk, "tokens", n);
    mpk_pack_key_double(pk, "loss", loss);
    mpk_pack_key_double(pk, "ppl", exp(loss));
    mpk_pack_key_double(pk, "bpb", bpb);
    mpk_pack_key_double(pk, "wall_s", upc_now() - t0);
    mpk_writer_emit(ev->rec);
}

/* ids of text appended to a growing buffer */
static void encode(evaluator *ev, const char *text, uint32_t **buf, size_t *n, size_t *cap)
{
    bpe_encode(ev->tok, ev->scratch, text, strlen(text), false, buf, n, cap);
}

/* A candidate's context, appended to buf: as LLM Foundry, the prompt and
 * few-shot examples and the rest of the context are encoded apart and
 * their ids joined. */
static void encode_context(evaluator *ev, const icl_query *q, size_t c, uint32_t **buf, size_t *n, size_t *cap)
{
    const char *ctxt = q->cands[c].context;
    size_t pre = q->preamble_len <= strlen(ctxt) ? q->preamble_len : 0;
    bpe_encode(ev->tok, ev->scratch, ctxt, pre, false, buf, n, cap);
    encode(ev, ctxt + pre, buf, n, cap);
}

/* ids[0..n) behind the lead token every scored sequence starts with. */
static int32_t *with_lead(const evaluator *ev, const uint32_t *ids, size_t n)
{
    int32_t *out = upc_malloc((n + 1) * sizeof *out);
    out[0] = ev->lead;
    for (size_t i = 0; i < n; i++)
        out[i + 1] = (int32_t)ids[i];
    return out;
}

/* The sequences of one query: [lead] context continuation, per candidate. */
static void query_seqs(evaluator *ev, const icl_query *q, lm_seq *seqs, int32_t **store)
{
    uint32_t *buf = NULL;
    size_t cap = 0;
    for (size_t c = 0; c < q->n; c++) {
        /* the continuation is encoded apart too */
        size_t n = 0;
        encode_context(ev, q, c, &buf, &n, &cap);
        size_t ctx = n;
        encode(ev, q->cands[c].continuation, &buf, &n, &cap);
        if (n == ctx)
            upc_fail(EX_DATAERR, "a candidate continuation encodes to no tokens: \"%.60s\"", q->cands[c].continuation);
        int32_t *ids = with_lead(ev, buf, n);
        store[c] = ids;
        seqs[c] = (lm_seq){ids, (int)n + 1, (int)ctx + 1};
    }
    free(buf);
}

typedef struct {
    evaluator *ev;
    char *const *stop;            /* generation ends at any of these texts */
    size_t n_stop;
} stop_ctx;

static bool stop_at_delimiter(void *p, const int32_t *out, size_t count)
{
    stop_ctx *s = p;
    char *text = NULL;
    size_t len = 0, cap = 0, bad;
    bpe_decode(s->ev->tok, (const uint32_t *)out, count, &text, &len, &cap, &bad);
    bool stop = false;
    for (size_t i = 0; i < s->n_stop && text && !stop; i++)
        stop = memmem(text, len, s->stop[i], strlen(s->stop[i])) != NULL;
    free(text);
    return stop;
}

/* Greedy generation after the context; correct when it matches an answer. */
static bool generate_item(evaluator *ev, const icl_query *q, char *const *stop, size_t n_stop, char **generated)
{
    uint32_t *buf = NULL;
    size_t n = 0, cap = 0;
    encode_context(ev, q, 0, &buf, &n, &cap);
    size_t longest = 0;
    for (size_t a = 0; a < q->n_answers; a++) {
        size_t m = 0, c2 = 0;
        uint32_t *ab = NULL;
        encode(ev, q->answers[a], &ab, &m, &c2);
        longest = m > longest ? m : longest;
        free(ab);
    }
    int32_t *ids = with_lead(ev, buf, n);
    int max_new = (int)longest + 4;
    int32_t *out = upc_malloc((size_t)max_new * sizeof *out);
    stop_ctx sc = {ev, stop, n_stop};
    size_t got = lm_greedy(scorer(ev), ids, (int)n + 1, max_new, stop_at_delimiter, &sc, out);
    char *text = NULL;
    size_t len = 0, tcap = 0, bad;
    bpe_decode(ev->tok, (const uint32_t *)out, got, &text, &len, &tcap, &bad);
    /* bpe_decode gives bytes and a length: terminate them for the string functions */
    upc_grow((void **)&text, &tcap, len + 1, 1);
    text[len] = 0;
    char *cut = icl_cut_generation(text, stop, n_stop);
    bool ok = icl_answer_matches(cut, q->answers, q->n_answers);
    *generated = cut;
    free(text);
    free(out);
    free(ids);
    free(buf);
    return ok;
}

/* --per-item: one record per scored item, for error analysis and for
 * checking the scores against an independent forward. */
static void pack_item(evaluator *ev, const icl_task_spec *spec, int fewshot, size_t item, const icl_query *q,
                      int pred, bool correct, const lm_seq_score *sc, const char *generated)
{
    if (!ev->o->per_item)
        return;
    msgpack_packer *pk = &ev->rec->pk;
    msgpack_pack_map(pk, 11);
    mpk_pack_key_str(pk, "event", "item");
    mpk_pack_key_str(pk, "model", ev->path);
    mpk_pack_key_str(pk, "label", spec->label);
    mpk_pack_key_int(pk, "num_fewshot", fewshot);
    mpk_pack_key_uint(pk, "item", item);
    mpk_pack_key_int(pk, "gold", q->gold);
    mpk_pack_key_int(pk, "pred", pred);
    mpk_pack_cstr(pk, "correct");
    if (correct)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    size_t n = sc ? q->n : 0;
    mpk_pack_cstr(pk, "logprob");
    msgpack_pack_array(pk, n);
    for (size_t c = 0; c < n; c++)
        msgpack_pack_double(pk, sc[c].logprob);
    mpk_pack_cstr(pk, "tokens");
    msgpack_pack_array(pk, n);
    for (size_t c = 0; c < n; c++)
        msgpack_pack_int64(pk, sc[c].n_tokens);
    mpk_pack_key_str(pk, "generated", generated ? generated : "");
    mpk_writer_flush(ev->rec, false);
}

static int argmax(const double *v, size_t n)
{
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return (int)best;
}

static void eval_task(evaluator *ev, const icl_task_spec *spec, int fewshot)
{
    const options *o = ev->o;
    double t0 = upc_now();
    lm_scorer_stats before = lm_scorer_get_stats(scorer(ev));
    icl_dataset ds;
    icl_dataset_load(&ds, spec->dataset_uri, spec->type);
    size_t items = o->limit > 0 && (size_t)o->limit < ds.n ? (size_t)o->limit : ds.n;
    icl_prompt_opts po = {
        .prompt_string = spec->prompt_string,
        .continuation_delimiter = spec->continuation_delimiter,
        .example_delimiter = spec->example_delimiter,
        .prelimiter = spec->prelimiter,
        .num_fewshot = fewshot,
        .seed = o->seed >= 0 ? (uint64_t)o->seed : spec->fewshot_random_seed,
    };
    double correct = 0, correct_sum = 0, correct_norm = 0;
    size_t skipped = 0;
    if (spec->type == ICL_GENERATION) {
        /* stop at the task's early_stopping_criteria, else at its example delimiter */
        char *fallback[1] = {(char *)(spec->example_delimiter ? spec->example_delimiter : ICL_DEFAULT_EXAMPLE_DELIMITER)};
        char *const *stop = spec->n_early_stopping ? spec->early_stopping : fallback;
        size_t n_stop = spec->n_early_stopping ? spec->n_early_stopping : 1;
        for (size_t i = 0; i < items; i++) {
            icl_query q;
            icl_build_query(&ds, i, &po, &q);
            char *generated;
            bool ok = generate_item(ev, &q, stop, n_stop, &generated);
            correct += ok;
            pack_item(ev, spec, fewshot, i, &q, -1, ok, NULL, generated);
            free(generated);
            icl_query_free(&q);
        }
        correct_sum = correct_norm = correct;
    } else {
        /* every candidate of every item in one scoring call (shared prefixes run once).
         * An item with a continuation longer than the window is skipped
         * (LLM Foundry refuses it; here the rest of the task still counts). */
        icl_query *qs = upc_calloc(items, sizeof *qs);
        size_t *index = upc_calloc(items, sizeof *index);
        lm_seq *seqs = NULL;
        int32_t **store = NULL;
        size_t total = 0, cap = 0, kept = 0;
        for (size_t i = 0; i < items; i++) {
            icl_query *q = &qs[kept];
            icl_build_query(&ds, i, &po, q);
            upc_grow((void **)&seqs, &cap, total + q->n, sizeof *seqs);
            store = upc_realloc(store, cap * sizeof *store);
            query_seqs(ev, q, seqs + total, store + total);
            bool fits = true;
            for (size_t c = 0; c < q->n; c++)
                fits &= seqs[total + c].len - seqs[total + c].start <= ev->max_len;
            if (!fits) {
                for (size_t c = 0; c < q->n; c++)
                    free(store[total + c]);
                icl_query_free(q);
                skipped++;
                continue;
            }
            index[kept++] = i;
            total += q->n;
        }
        if (skipped)
            upc_warn("%s: %s: %zu of %zu items skipped: a continuation longer than the %d-token window", ev->path,
                     spec->label, skipped, items, ev->max_len);
        lm_seq_score *sc = upc_calloc(total ? total : 1, sizeof *sc);
        lm_score_seqs(scorer(ev), seqs, total, sc);
        size_t at = 0;
        for (size_t k = 0; k < kept; k++) {
            const icl_query *q = &qs[k];
            size_t i = index[k];
            if (spec->type == ICL_LANGUAGE_MODELING) {
                correct += sc[at].greedy;
                pack_item(ev, spec, fewshot, i, q, sc[at].greedy ? 0 : -1, sc[at].greedy, sc + at, NULL);
            } else {
                double mean[q->n], sum[q->n], norm[q->n];
                for (size_t c = 0; c < q->n; c++) {
                    sum[c] = sc[at + c].logprob;
                    mean[c] = sum[c] / sc[at + c].n_tokens;
                    size_t bytes = strlen(q->cands[c].continuation);
                    norm[c] = sum[c] / (double)(bytes ? bytes : 1);
                }
                correct += argmax(mean, q->n) == q->gold;
                pack_item(ev, spec, fewshot, i, q, argmax(mean, q->n), argmax(mean, q->n) == q->gold, sc + at, NULL);
                correct_sum += argmax(sum, q->n) == q->gold;
                correct_norm += argmax(norm, q->n) == q->gold;
            }
            at += q->n;
        }
        if (spec->type == ICL_LANGUAGE_MODELING)
            correct_sum = correct_norm = correct;
        for (size_t i = 0; i < total; i++)
            free(store[i]);
        for (size_t k = 0; k < kept; k++)
            icl_query_free(&qs[k]);
        free(index);
        free(sc);
        free(store);
        free(seqs);
        free(qs);
    }
    size_t scored = items - skipped;
    double acc = scored ? correct / (double)scored : NAN;
    upc_grow((void **)&ev->results, &ev->results_cap, ev->n_results + 1, sizeof *ev->results);
    ev->results[ev->n_results++] = (task_result){upc_strdup(spec->label), fewshot, acc};
    msgpack_packer *pk = &ev->rec->pk;
    lm_scorer_stats after = lm_scorer_get_stats(scorer(ev));
    msgpack_pack_map(pk, 13);
    mpk_pack_key_str(pk, "event", "task");
    mpk_pack_key_str(pk, "model", ev->path);
    mpk_pack_key_str(pk, "label", spec->label);
    mpk_pack_key_str(pk, "type", icl_type_name(spec->type));
    mpk_pack_key_int(pk, "num_fewshot", fewshot);
    mpk_pack_key_int(pk, "items", (int64_t)scored);
    mpk_pack_key_int(pk, "skipped", (int64_t)skipped);
    mpk_pack_key_double(pk, "acc", acc);
    mpk_pack_key_double(pk, "acc_sum", scored ? correct_sum / (double)scored : NAN);
    mpk_pack_key_double(pk, "acc_norm", scored ? correct_norm / (double)scored : NAN);
    mpk_pack_key_int(pk, "tokens_run", after.tokens_run - before.tokens_run);
    mpk_pack_key_int(pk, "tokens_shared", after.tokens_shared - before.tokens_shared);
    mpk_pack_key_double(pk, "wall_s", upc_now() - t0);
    mpk_writer_emit(ev->rec);
    fprintf(stderr, "evaluate: %s: %s/%d-shot acc %.4f over %zu items (%.1f s)\n", ev->path, spec->label, fewshot, acc,
            scored, upc_now() - t0);
    icl_dataset_free(&ds);
}

static double lookup_acc(void *ctx, const char *label, int num_fewshot, bool *found)
{
    const evaluator *ev = ctx;
    for (size_t i = 0; i < ev->n_results; i++)
        if (ev->results[i].num_fewshot == num_fewshot && strcmp(ev->results[i].label, label) == 0) {
            *found = true;
            return ev->results[i].acc;
        }
    *found = false;
    return 0;
}

static void summary(evaluator *ev, const gauntlet *g)
{
    mc_params p = mc_param_count(&ev->cfg);
    double *cats = g ? upc_calloc(g->n ? g->n : 1, sizeof *cats) : NULL;
    double core = NAN;
    if (g)
        gauntlet_score(g, lookup_acc, ev, cats, &core);
    msgpack_packer *pk = &ev->rec->pk;
    msgpack_pack_map(pk, 7 + 2 * ev->have_lm + 2 * (g != NULL));
    mpk_pack_key_str(pk, "event", "summary");
    mpk_pack_key_str(pk, "model", ev->path);
    mpk_pack_key_int(pk, "params", p.total);
    mpk_pack_key_int(pk, "active_params", p.active);
    mpk_pack_key_str(pk, "device", ev->m->K->name);
    mpk_pack_key_str(pk, "precision", ev->m->K->precision);
    mpk_pack_key_int(pk, "tasks", (int64_t)ev->n_results);
    if (ev->have_lm) {
        mpk_pack_key_double(pk, "lm_loss", ev->lm_loss);
        mpk_pack_key_double(pk, "lm_bpb", ev->lm_bpb);
    }
    if (g) {
        mpk_pack_key_double(pk, "core_average", core);
        mpk_pack_cstr(pk, "categories");
        msgpack_pack_map(pk, g->n);
        for (size_t i = 0; i < g->n; i++)
            mpk_pack_key_double(pk, g->cats[i].name, cats[i]);
    }
    mpk_writer_emit(ev->rec);
    fprintf(stderr, "evaluate: %-28s params %.4gM (active %.4gM)", ev->path, p.total / 1e6, p.active / 1e6);
    if (ev->have_lm)
        fprintf(stderr, "  loss %.4f  bpb %.4f", ev->lm_loss, ev->lm_bpb);
    for (size_t i = 0; i < ev->n_results; i++)
        fprintf(stderr, "  %s/%d %.3f", ev->results[i].label, ev->results[i].num_fewshot, ev->results[i].acc);
    if (g)
        fprintf(stderr, "  core %.4f", core);
    fputc('\n', stderr);
    free(cats);
}

int main(int argc, char **argv)
{
    kernels_cpu_prepare_process(argv);
    upc_init("evaluate");
    options o = {.batch = 8, .seed = -1, .device = "cpu", .precision = "fp32"};
    bool is_build = argc > 1 && strcmp(argv[1], "build") == 0;
    parse_args(argc, argv, is_build ? 2 : 1, &o);
    if (o.threads > 0)
        omp_set_num_threads((int)o.threads);
    if (is_build) {
        int rc = build(&o);
        free(o.ckpts);
        return rc;
    }
    if (o.n_ckpts == 0)
        upc_usage_fail("missing CKPT (a checkpoint directory)");
    if (!o.data && !o.suite)
        upc_usage_fail("nothing to do: give --data SPLIT, --suite FILE or both");
    if (o.gauntlet && !o.suite)
        upc_usage_fail("--gauntlet needs --suite");
    if (o.tokenizer || o.out || o.max_items || o.force)
        upc_usage_fail("--tokenizer, --out, --max-items and --force belong to `evaluate build`");
    /* a device that is not there, or a precision no backend has, fails
     * here, before any output */
    upc_backend_precision(upc_backend(o.device), o.precision);
    icl_suite suite = {0};
    gauntlet g = {0};
    if (o.suite)
        icl_suite_load(&suite, o.suite);
    if (o.gauntlet)
        gauntlet_load(&g, o.gauntlet);
    for (int i = 0; i < o.n_ckpts; i++) {
        struct stat st;
        if (stat(o.ckpts[i], &st) != 0 || !S_ISDIR(st.st_mode))
            upc_fail(EX_NOINPUT, "%s: not a checkpoint directory", o.ckpts[i]);
    }
    mpk_writer rec;
    mpk_writer_open(&rec, "-");
    for (int i = 0; i < o.n_ckpts; i++) {
        evaluator ev = {.o = &o, .path = o.ckpts[i], .rec = &rec};
        load_model(&ev, o.ckpts[i]);
        if (o.suite && !ev.tok)
            upc_fail(EX_NOINPUT, "%s: no tokenizer.json, needed for the tasks", o.ckpts[i]);
        if (o.data)
            eval_lm(&ev);
        for (size_t t = 0; t < suite.n; t++)
            for (size_t k = 0; k < suite.tasks[t].n_fewshot; k++)
                eval_task(&ev, &suite.tasks[t], suite.tasks[t].num_fewshot[k]);
        summary(&ev, o.gauntlet ? &g : NULL);
        free_model(&ev);
    }
    mpk_writer_commit(&rec);
    if (o.suite)
        icl_suite_free(&suite);
    if (o.gauntlet)
        gauntlet_free(&g);
    free(o.ckpts);
    return 0;
}
