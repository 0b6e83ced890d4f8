/* serve-bench: an inference engine under load: latency against throughput
 * for a checkpoint or a named shape with random weights; and `generate`,
 * which streams text from a checkpoint. */
#include "backend.h"
#include "bpe.h"
#include "engine.h"
#include "loadgen.h"
#include "model.h"
#include "model_config.h"
#include "mpk.h"
#include "sampling.h"
#include "serve_metrics.h"
#include "shapes.h"
#include "util.h"

#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char usage[] =
    "usage: serve-bench (--model CKPT | --shape NAME) [options]\n"
    "       serve-bench generate --model CKPT [--prompt TEXT] [options]\n"
    "\n"
    "Serve requests with upcyc's inference engine (paged KV cache, chunked\n"
    "prefill, continuous batching) and measure, as vLLM defines them, TTFT,\n"
    "TPOT, ITL and end-to-end latency and request/output/total throughput at\n"
    "each point of a sweep: open loop over request rates (Poisson or gamma\n"
    "arrivals) or closed loop over concurrency levels. stdout: a msgpack stream\n"
    "(a memory record, a sweep_point record per point, request records with\n"
    "--per-request); stderr: a table. `generate` prints a checkpoint's\n"
    "continuation of a prompt as it is produced.\n"
    "\n"
    "model:\n"
    "  --model CKPT         a checkpoint directory\n"
    "  --shape NAME         random weights of a named shape: tiny, 436m, 1.4b,\n"
    "                       llama3-8b, each also NAME-moeExK (e.g. 436m-moe8x2),\n"
    "                       or a config.json\n"
    "workload:\n"
    "  --prompt-len SPEC    prompt tokens: N, uniform:A:B or normal:MEAN:STD\n"
    "                       (default 3500, the paper's)\n"
    "  --output-len SPEC    output tokens, likewise (default 300)\n"
    "  --scale F            divide both lengths by F (default 1; e.g. 50 on a laptop)\n"
    "  --rates LIST         open loop: request rates in requests/s, comma list;\n"
    "                       inf = all at once (default, when no --concurrency)\n"
    "  --burstiness K       gamma arrivals of shape K (default 1: Poisson)\n"
    "  --concurrency LIST   closed loop: requests kept in flight, comma list\n"
    "  --requests N         measured requests per point (default 32)\n"
    "  --warmup N           requests served before each point, not measured (default 2)\n"
    "  --seed N             prompts, arrivals, weights and sampling (default 0)\n"
    "  --temperature X      0 = greedy (default), else sampled\n"
    "  --top-p X            nucleus sampling mass (default 1)\n"
    "engine:\n"
    "  --kv-memory SIZE     KV cache budget, suffixes K, M, G (default 1G)\n"
    "  --block-size N       tokens per KV block (default 16)\n"
    "  --max-seqs N         sequences in flight at most (default 64)\n"
    "  --max-batch-tokens N tokens per engine step (default 512)\n"
    "  --per-request        also a request record per request\n"
    "  --threads N          CPU threads (default: OpenMP's choice)\n"
    "  --device NAME        cpu (default), cuda (when built with it) or auto\n"
    "  --precision P        fp32 (default) or bf16: GEMM operands rounded to bf16\n"
    "generate:\n"
    "  --prompt TEXT        the prompt (default: read stdin)\n"
    "  --max-tokens N       tokens to generate (default 64)\n"
    "  -h, --help           show this help\n"
    "  --version            show the version\n";

typedef struct {
    const char *model, *shape, *prompt_len, *output_len, *rates, *concurrency, *prompt, *device, *precision;
    double scale, burstiness, temperature, top_p;
    long long requests, warmup, seed, block_size, max_seqs, max_batch_tokens, threads, max_tokens;
    unsigned long long kv_memory;
    bool per_request;
} options;


/* "a,b,c" -> doubles (inf allowed for rates); fails naming the option. */
static double *parse_list(const char *opt, const char *s, size_t *n, bool allow_inf)
{
    double *v = NULL;
    size_t cap = 0;
    *n = 0;
    char *copy = upc_strdup(s), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        upc_grow((void **)&v, &cap, *n + 1, sizeof *v);
        if (allow_inf && strcmp(tok, "inf") == 0)
            v[(*n)++] = INFINITY;
        else
            v[(*n)++] = upc_parse_double(opt, tok, 1e-9, 1e9);
    }
    free(copy);
    if (!*n)
        upc_usage_fail("%s: an empty list", opt);
    return v;
}

static void parse_args(int argc, char **argv, int first, options *o)
{
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (upc_is_help(a)) {
            fputs(usage, stdout);
            exit(0);
        } else if (upc_is_version(a)) {
            upc_print_version();
            exit(0);
        } else if (strcmp(a, "--per-request") == 0) {
            o->per_request = true;
        } else if (!more || a[0] != '-') {
            upc_usage_fail(a[0] == '-' ? "%s needs a value" : "unexpected argument '%s'", a);
        } else if (strcmp(a, "--model") == 0) {
            o->model = argv[++i];
        } else if (strcmp(a, "--shape") == 0) {
            o->shape = argv[++i];
        } else if (strcmp(a, "--prompt-len") == 0) {
            o->prompt_len = argv[++i];
        } else if (strcmp(a, "--output-len") == 0) {
            o->output_len = argv[++i];
        } else if (strcmp(a, "--rates") == 0) {
            o->rates = argv[++i];
        } else if (strcmp(a, "--concurrency") == 0) {
            o->concurrency = argv[++i];
        } else if (strcmp(a, "--prompt") == 0) {
            o->prompt = argv[++i];
        } else if (strcmp(a, "--scale") == 0) {
            o->scale = upc_parse_double(a, argv[++i], 1e-6, 1e9);
        } else if (strcmp(a, "--burstiness") == 0) {
            o->burstiness = upc_parse_double(a, argv[++i], 1e-3, 1e3);
        } else if (strcmp(a, "--temperature") == 0) {
            o->temperature = upc_parse_double(a, argv[++i], 0, 100);
        } else if (strcmp(a, "--top-p") == 0) {
            o->top_p = upc_parse_double(a, argv[++i], 1e-6, 1);
        } else if (strcmp(a, "--requests") == 0) {
            o->requests = upc_parse_int(a, argv[++i], 1, 1 << 24);
        } else if (strcmp(a, "--warmup") == 0) {
            o->warmup = upc_parse_int(a, argv[++i], 0, 1 << 20);
        } else if (strcmp(a, "--seed") == 0) {
            o->seed = upc_parse_int(a, argv[++i], 0, INT64_MAX);
        } else if (strcmp(a, "--block-size") == 0) {
            o->block_size = upc_parse_int(a, argv[++i], 1, 1 << 16);
        } else if (strcmp(a, "--max-seqs") == 0) {
            o->max_seqs = upc_parse_int(a, argv[++i], 1, 1 << 16);
        } else if (strcmp(a, "--max-batch-tokens") == 0) {
            o->max_batch_tokens = upc_parse_int(a, argv[++i], 1, 1 << 20);
        } else if (strcmp(a, "--threads") == 0) {
            o->threads = upc_parse_int(a, argv[++i], 1, 4096);
        } else if (strcmp(a, "--device") == 0) {
            o->device = argv[++i];
        } else if (strcmp(a, "--precision") == 0) {
            o->precision = argv[++i];
        } else if (strcmp(a, "--max-tokens") == 0) {
            o->max_tokens = upc_parse_int(a, argv[++i], 1, 1 << 20);
        } else if (strcmp(a, "--kv-memory") == 0) {
            o->kv_memory = (unsigned long long)upc_parse_int(a, argv[++i], 1, 1LL << 50);
        } else {
            upc_usage_fail("unknown option '%s'", a);
        }
    }
}

/* ---- the model ------------------------------------------------------------ */

typedef struct {
    model_config cfg;
    model *m;
    const char *label;
    uint64_t weight_bytes;
} loaded;

static void load(loaded *L, const options *o)
{
    if ((o->model != NULL) == (o->shape != NULL))
        upc_usage_fail("give one of --model CKPT or --shape NAME");
    struct stat st;
    if (o->model) {
        mc_load(&L->cfg, o->model);
        L->label = o->model;
    } else if (shape_config(o->shape, &L->cfg)) {
        L->label = o->shape;
    } else if (stat(o->shape, &st) == 0) {
        mc_load(&L->cfg, o->shape);
        L->label = o->shape;
    } else {
        upc_usage_fail("--shape %s: not a shape (%s) nor a config file", o->shape, shape_names());
    }
    const char *why = mc_unsupported(&L->cfg);
    if (why)
        upc_fail(EX_DATAERR, "%s: %s", L->label, why);
    L->weight_bytes = (uint64_t)mc_param_count(&L->cfg).total * sizeof(float);
}

/* The weights: the checkpoint's, or random ones drawn with --seed. */
static void load_weights(loaded *L, const options *o)
{
    L->m = model_create(upc_backend_precision(upc_backend(o->device), o->precision), &L->cfg);
    if (L->m->round_weights)   /* and their bf16 copy, what the GEMMs read */
        L->weight_bytes += L->m->n_floats * sizeof(uint16_t);
    if (o->model) {
        st_reader *r = st_open(o->model);
        model_load_weights(L->m, r);
        st_close(r);
    } else {
        model_init_weights(L->m, (uint64_t)o->seed);
    }
}

static engine *make_engine(const loaded *L, const options *o)
{
    engine_config c;
    engine_config_default(&c);
    c.block_size = (int)o->block_size;
    c.kv_bytes = o->kv_memory;
    c.max_seqs = (int)o->max_seqs;
    c.max_rows = (int)o->max_batch_tokens;
    return engine_create(L->m, &c);
}

/* ---- serving one sweep point ----------------------------------------------- */

typedef enum { WAITING, PREFILL, DECODE, DONE } req_state;

typedef struct {
    const request *r;
    req_state state;
    int seq;                      /* engine sequence, -1 before admission */
    size_t prefilled, produced;
    int32_t last;                 /* the token to feed next in decode */
    uint64_t rng;
    request_timing t;
} live;

typedef struct {
    engine *e;
    const loaded *L;
    const options *o;
    sampling samp;
    float *logits;
    void *scratch;
    double touched_sum;           /* distinct experts per MoE layer per step, summed */
    size_t touched_steps;
    double touched_decode_sum;    /* the same over steps that only decode */
    size_t touched_decode_steps;
} server;

/* Serve reqs[0..n): open loop by their arrival times (closed == 0), or
 * closed loop keeping `closed` requests in flight (arrivals ignored: the
 * next request arrives when one finishes). Times relative to the start. */
static void serve(server *S, const request *reqs, size_t n, int closed, live *lv)
{
    engine *e = S->e;
    int V = S->L->m->V, max_rows = (int)S->o->max_batch_tokens;
    size_t admitted = 0, finished = 0, arrived = 0;
    size_t committed = 0;         /* KV blocks promised to admitted, unfinished requests */
    size_t total_blocks = engine_capacity_tokens(e) / (size_t)S->o->block_size;
    for (size_t i = 0; i < n; i++) {
        lv[i] = (live){.r = &reqs[i], .state = WAITING, .seq = -1, .rng = (uint64_t)S->o->seed * 1000003 + i};
        lv[i].t.prompt_len = reqs[i].prompt_len;
        lv[i].t.output_len = reqs[i].output_len;
        lv[i].t.token_s = upc_malloc(reqs[i].output_len * sizeof(double));
    }
    int *rows_seq = upc_malloc((size_t)max_rows * sizeof *rows_seq);
    int32_t *rows_id = upc_malloc((size_t)max_rows * sizeof *rows_id);
    bool *rows_want = upc_malloc((size_t)max_rows * sizeof *rows_want);
    size_t *rows_req = upc_malloc((size_t)max_rows * sizeof *rows_req);
    double t0 = upc_now();
    if (closed)
        for (size_t i = 0; i < n && i < (size_t)closed; i++)
            lv[i].t.arrival_s = 0, arrived++;
    while (finished < n) {
        double t = upc_now() - t0;
        if (!closed)
            while (arrived < n && reqs[arrived].arrival_s <= t)
                lv[arrived].t.arrival_s = reqs[arrived].arrival_s, arrived++;
        /* admit in arrival order while a sequence slot and the whole
         * request's KV (prompt + output) fit: no request is ever preempted */
        while (admitted < arrived) {
            live *q = &lv[admitted];
            size_t need = engine_blocks_for(e, (int)(q->r->prompt_len + q->r->output_len));
            if (committed + need > total_blocks)
                break;
            int s = engine_open(e);
            if (s < 0)
                break;
            q->seq = s;
            q->state = PREFILL;
            committed += need;
            admitted++;
        }
        /* rows: every decoding request's next token, then prefill chunks */
        int nr = 0;
        for (size_t i = 0; i < admitted && nr < max_rows; i++)
            if (lv[i].state == DECODE) {
                rows_seq[nr] = lv[i].seq, rows_id[nr] = lv[i].last, rows_want[nr] = true, rows_req[nr] = i;
                nr++;
            }
        int decode_rows = nr;
        for (size_t i = 0; i < admitted && nr < max_rows; i++) {
            live *q = &lv[i];
            if (q->state != PREFILL)
                continue;
            while (q->prefilled < q->r->prompt_len && nr < max_rows) {
                rows_seq[nr] = q->seq, rows_id[nr] = (int32_t)q->r->prompt[q->prefilled++];
                rows_want[nr] = q->prefilled == q->r->prompt_len, rows_req[nr] = i;
                nr++;
            }
        }
        if (!nr) {
            /* idle until the next arrival */
            if (!closed && arrived < n) {
                double wait = reqs[arrived].arrival_s - (upc_now() - t0);
                if (wait > 0)
                    nanosleep(&(struct timespec){(time_t)wait, (long)((wait - (time_t)wait) * 1e9)}, NULL);
                continue;
            }
            upc_fail(EX_SOFTWARE, "serve-bench: nothing to run with %zu requests unfinished", n - finished);
        }
        int got = engine_step(e, rows_seq, rows_id, nr, rows_want, S->logits);
        if (S->L->m->n_moe_layers) {
            const int32_t *tch = engine_experts_touched(e);
            double sum = 0;
            for (int l = 0; l < S->L->m->L; l++)
                if (S->L->m->layers[l].moe)
                    sum += tch[l];
            S->touched_sum += sum;
            S->touched_steps += (size_t)S->L->m->n_moe_layers;
            if (decode_rows == nr) {
                S->touched_decode_sum += sum;
                S->touched_decode_steps += (size_t)S->L->m->n_moe_layers;
            }
        }
        double tt = upc_now() - t0;
        int k = 0;
        for (int r = 0; r < nr && k < got; r++) {
            if (!rows_want[r])
                continue;
            live *q = &lv[rows_req[r]];
            q->last = sample_token(S->logits + (size_t)k++ * V, V, &S->samp, &q->rng, S->scratch);
            q->t.token_s[q->produced++] = tt;
            if (q->produced == 1)
                q->t.first_token_s = tt;
            q->state = DECODE;
            if (q->produced == q->r->output_len) {
                q->state = DONE;
                q->t.finish_s = tt;
                q->t.n_tokens = q->produced;
                engine_close(e, q->seq);
                committed -= engine_blocks_for(e, (int)(q->r->prompt_len + q->r->output_len));
                finished++;
                if (closed && arrived < n)
                    lv[arrived].t.arrival_s = tt, arrived++;
            }
        }
    }
    free(rows_seq), free(rows_id), free(rows_want), free(rows_req);
}

/* ---- generate ---------------------------------------------------------------- */

static int generate(const options *o)
{
    if (!o->model)
        upc_usage_fail("generate needs --model CKPT");
    loaded L = {0};
    load(&L, o);
    load_weights(&L, o);
    char *tp = upc_path_join(o->model, "tokenizer.json"), err[512];
    bpe_tokenizer *tok = bpe_load(tp, err, sizeof err);
    if (!tok)
        upc_fail(EX_NOINPUT, "%s: %s", tp, err);
    size_t plen = 0;
    char *text = o->prompt ? upc_strdup(o->prompt) : upc_read_file("-", &plen);
    uint32_t *ids = NULL;
    size_t n = 0, cap = 0;
    int64_t lead = L.cfg.bos_token_id >= 0 ? L.cfg.bos_token_id : bpe_eos_id(tok);
    if (lead >= 0) {
        upc_grow((void **)&ids, &cap, 1, sizeof *ids);
        ids[n++] = (uint32_t)lead;
    }
    bpe_scratch *bs = bpe_scratch_new(tok);
    bpe_encode(tok, bs, text, strlen(text), false, &ids, &n, &cap);
    if (n == 0)
        upc_usage_fail("an empty prompt (and no bos or eos token to start from)");
    engine *e = make_engine(&L, o);
    int max_new = (int)o->max_tokens;
    if (!engine_can_append(e, 0, (int)n + max_new) && (int)n + max_new > L.cfg.max_position_embeddings)
        upc_usage_fail("a prompt of %zu tokens and %d new ones pass the model's context of %lld", n, max_new,
                       (long long)L.cfg.max_position_embeddings);
    int s = engine_open(e);
    if (!engine_can_append(e, s, (int)n + max_new))
        upc_usage_fail("%zu + %d tokens do not fit the KV cache of %zu tokens (raise --kv-memory)", n, max_new,
                       engine_capacity_tokens(e));
    sampling samp = {o->temperature, o->top_p};
    float *logits = upc_malloc((size_t)L.m->V * sizeof *logits);
    void *scratch = upc_malloc(sampling_scratch_bytes(L.m->V));
    uint64_t rng = (uint64_t)o->seed;
    int64_t eos = bpe_eos_id(tok);
    fputs(text, stdout);
    for (size_t p = 0; p < n; p += (size_t)o->max_batch_tokens) {
        int rows = n - p < (size_t)o->max_batch_tokens ? (int)(n - p) : (int)o->max_batch_tokens;
        int *seqs = upc_malloc((size_t)rows * sizeof *seqs);
        bool *want = upc_calloc((size_t)rows, sizeof *want);
        for (int r = 0; r < rows; r++)
            seqs[r] = s;
        want[rows - 1] = p + (size_t)rows == n;
        engine_step(e, seqs, (const int32_t *)ids + p, rows, want, logits);
        free(seqs);
        free(want);
    }
    char *piece = NULL;
    size_t plen2 = 0, pcap = 0, bad;
    for (int i = 0; i < max_new; i++) {
        int32_t t = sample_token(logits, L.m->V, &samp, &rng, scratch);
        if (t == eos)
            break;
        plen2 = 0;
        bpe_decode(tok, (const uint32_t *)&t, 1, &piece, &plen2, &pcap, &bad);
        fwrite(piece, 1, plen2, stdout);
        fflush(stdout);
        bool w = true;
        if (i + 1 < max_new)
            engine_step(e, &s, &t, 1, &w, logits);
    }
    fputc('\n', stdout);
    if (fflush(stdout) != 0 || ferror(stdout))
        upc_fail(EX_IOERR, "stdout: write failed: %s", strerror(errno));
    free(piece), free(logits), free(scratch), free(text), free(ids), free(tp);
    bpe_scratch_free(bs);
    bpe_free(tok);
    engine_free(e);
    model_free(L.m);
    mc_free(&L.cfg);
    return 0;
}

/* ---- the sweep ------------------------------------------------------------------ */

static len_spec scaled(const char *opt, const char *spec, double scale)
{
    len_spec l;
    char err[200];
    if (!len_spec_parse(spec, &l, err, sizeof err))
        upc_usage_fail("%s %s: %s", opt, spec, err);
    /* whole token counts, at least one; a uniform range stays a range */
    l.a = fmax(1.0, round(l.a / scale));
    if (l.kind == LEN_UNIFORM)
        l.b = fmax(l.a, round(l.b / scale));
    else if (l.kind == LEN_NORMAL)
        l.b /= scale;
    return l;
}

/* Requests the engine can hold at once: sequence slots, and KV blocks for
 * a request of the mean length rounded up to whole blocks. */
static double max_concurrent(const engine *e, int max_seqs, int block_size, double mean_len)
{
    double blocks = (double)engine_capacity_tokens(e) / block_size, per_request = ceil(mean_len / block_size);
    double by_kv = floor(blocks / per_request);
    return by_kv < max_seqs ? by_kv : max_seqs;
}

static void pack_memory(mpk_writer *w, const loaded *L, const engine *e, int max_seqs, int block_size,
                        double mean_len)
{
    msgpack_packer *pk = &w->pk;
    mc_params p = mc_param_count(&L->cfg);
    msgpack_pack_map(pk, 12);
    mpk_pack_key_str(pk, "event", "memory");
    mpk_pack_key_str(pk, "label", L->label);
    mpk_pack_key_str(pk, "device", upc_backend_describe(L->m->K));
    mpk_pack_key_str(pk, "precision", L->m->K->precision);
    mpk_pack_key_int(pk, "params", p.total);
    mpk_pack_key_int(pk, "active_params", p.active);
    mpk_pack_key_uint(pk, "weight_bytes", L->weight_bytes);
    mpk_pack_key_uint(pk, "kv_bytes", engine_kv_bytes(e));
    mpk_pack_key_uint(pk, "kv_bytes_per_token", engine_kv_bytes_per_token(L->m));
    mpk_pack_key_uint(pk, "kv_capacity_tokens", engine_capacity_tokens(e));
    mpk_pack_key_double(pk, "request_tokens_mean", mean_len);
    mpk_pack_key_double(pk, "max_concurrent_requests", max_concurrent(e, max_seqs, block_size, mean_len));
    mpk_writer_emit(w);
}

int main(int argc, char **argv)
{
    kernels_cpu_prepare_process(argv);
    upc_init("serve-bench");
    options o = {.device = "cpu", .precision = "fp32", .prompt_len = "3500", .output_len = "300", .scale = 1, .burstiness = 1, .top_p = 1,
                 .requests = 32, .warmup = 2, .block_size = 16, .max_seqs = 64, .max_batch_tokens = 512,
                 .max_tokens = 64, .kv_memory = 1ULL << 30};
    bool gen = argc > 1 && strcmp(argv[1], "generate") == 0;
    parse_args(argc, argv, gen ? 2 : 1, &o);
    if (o.threads)
        omp_set_num_threads((int)o.threads);
    /* a device that is not there, or a precision no backend has, fails
     * here, before the weights */
    upc_backend_precision(upc_backend(o.device), o.precision);
    if (gen) {
        if (o.rates || o.concurrency || o.per_request || o.requests != 32 || o.warmup != 2 || o.scale != 1 ||
            o.burstiness != 1 || strcmp(o.prompt_len, "3500") || strcmp(o.output_len, "300"))
            upc_usage_fail("generate takes --model, --prompt, --max-tokens, sampling and engine options only");
        return generate(&o);
    }
    if (o.prompt || o.max_tokens != 64)
        upc_usage_fail("--prompt and --max-tokens belong to `serve-bench generate`");
    size_t n_rates = 0, n_conc = 0;
    double *rates = o.rates ? parse_list("--rates", o.rates, &n_rates, true) : NULL;
    double *conc = o.concurrency ? parse_list("--concurrency", o.concurrency, &n_conc, false) : NULL;
    for (size_t i = 0; i < n_conc; i++)
        if (conc[i] < 1 || conc[i] != floor(conc[i]) || conc[i] > 1e6)
            upc_usage_fail("--concurrency: %g is not a whole number of requests >= 1", conc[i]);
    if (!rates && !conc)
        rates = parse_list("--rates", "inf", &n_rates, true);
    workload_spec ws = {
        .n_requests = (size_t)o.requests,
        .burstiness = o.burstiness,
        .prompt = scaled("--prompt-len", o.prompt_len, o.scale),
        .output = scaled("--output-len", o.output_len, o.scale),
        .seed = (uint64_t)o.seed,
    };

    loaded L = {0};
    load(&L, &o);
    ws.vocab = (uint32_t)L.cfg.vocab_size;
    /* what fits: the longest request of the workload (every point serves the
     * same requests; the warm-up its own), checked before any work */
    ws.rate = INFINITY;
    char err[256];
    if (!workload_spec_check(&ws, err, sizeof err))
        upc_usage_fail("%s", err);
    workload_spec wu = ws;
    wu.n_requests = (size_t)o.warmup;
    wu.seed = ws.seed + 7919;
    size_t longest = 0;
    double mean_len = 0;
    for (int pass = 0; pass < 2; pass++) {
        const workload_spec *spec = pass ? &wu : &ws;
        if (!spec->n_requests)
            continue;
        request *probe = workload_make(spec);
        for (size_t i = 0; i < spec->n_requests; i++) {
            size_t len = probe[i].prompt_len + probe[i].output_len;
            longest = len > longest ? len : longest;
            if (!pass)
                mean_len += (double)len / (double)spec->n_requests;
        }
        workload_free(probe, spec->n_requests);
    }
    if ((int64_t)longest > L.cfg.max_position_embeddings && L.cfg.max_position_embeddings > 0)
        upc_usage_fail("requests of up to %zu tokens (prompt + output) pass %s's context of %lld; raise --scale",
                       longest, L.label, (long long)L.cfg.max_position_embeddings);
    /* the KV pool the engine will make, from the config alone (before the weights are drawn) */
    size_t head_dim = (size_t)L.cfg.head_dim, per_token = 2 * (size_t)L.cfg.num_hidden_layers *
                                                          (size_t)L.cfg.num_key_value_heads * head_dim * sizeof(float);
    size_t blocks = o.kv_memory / (per_token * (size_t)o.block_size), need = (longest + o.block_size - 1) / o.block_size;
    if (need > blocks)
        upc_usage_fail("a request of %zu tokens does not fit the KV cache: %llu bytes hold %zu tokens at %zu bytes "
                       "per token; raise --kv-memory or --scale",
                       longest, o.kv_memory, blocks * (size_t)o.block_size, per_token);
    load_weights(&L, &o);
    engine *e = make_engine(&L, &o);

    mpk_writer w;
    mpk_writer_open(&w, "-");
    pack_memory(&w, &L, e, (int)o.max_seqs, (int)o.block_size, mean_len);
    server S = {.e = e, .L = &L, .o = &o, .samp = {o.temperature, o.top_p}};
    S.logits = upc_malloc((size_t)o.max_batch_tokens * L.m->V * sizeof(float));
    S.scratch = upc_malloc(sampling_scratch_bytes(L.m->V));
    size_t points = n_rates + n_conc;
    serve_summary *sums = upc_calloc(points, sizeof *sums);
    char **labels = upc_calloc(points, sizeof *labels);
    for (size_t pt = 0; pt < points; pt++) {
        bool open_loop = pt < n_rates;
        int closed = open_loop ? 0 : (int)conc[pt - n_rates];
        if (o.warmup) {
            request *rq = workload_make(&wu);
            live *lv = upc_calloc(wu.n_requests, sizeof *lv);
            serve(&S, rq, wu.n_requests, 0, lv);
            for (size_t i = 0; i < wu.n_requests; i++)
                free(lv[i].t.token_s);
            free(lv);
            workload_free(rq, wu.n_requests);
        }
        workload_spec pw = ws;
        pw.rate = open_loop ? rates[pt] : INFINITY;
        request *rq = workload_make(&pw);
        live *lv = upc_calloc(pw.n_requests, sizeof *lv);
        S.touched_sum = S.touched_decode_sum = 0;
        S.touched_steps = S.touched_decode_steps = 0;
        serve(&S, rq, pw.n_requests, closed, lv);
        request_timing *tm = upc_malloc(pw.n_requests * sizeof *tm);
        for (size_t i = 0; i < pw.n_requests; i++)
            tm[i] = lv[i].t;
        serve_summarize(tm, pw.n_requests, 0.0, &sums[pt]);
        char point[300];
        if (!open_loop)
            snprintf(point, sizeof point, "%s c=%d", L.label, closed);
        else if (isinf(rates[pt]))
            snprintf(point, sizeof point, "%s max", L.label);
        else
            snprintf(point, sizeof point, "%s %g/s", L.label, rates[pt]);
        labels[pt] = upc_strdup(point);
        if (o.per_request)
            for (size_t i = 0; i < pw.n_requests; i++)
                serve_pack_request(&w.pk, &tm[i], i, point);
        serve_pack_summary(&w.pk, &sums[pt], L.label, open_loop ? rates[pt] : INFINITY, closed);
        if (S.touched_steps) {
            /* MoE decode reads only the experts the step's tokens chose */
            double touched = S.touched_sum / (double)S.touched_steps;
            double decode = S.touched_decode_steps ? S.touched_decode_sum / (double)S.touched_decode_steps : NAN;
            msgpack_pack_map(&w.pk, 6);
            mpk_pack_key_str(&w.pk, "event", "moe_routing");
            mpk_pack_key_str(&w.pk, "label", L.label);
            mpk_pack_key_uint(&w.pk, "point", pt);
            mpk_pack_key_double(&w.pk, "experts_touched_mean", touched);
            mpk_pack_key_double(&w.pk, "experts_touched_decode_mean", decode);
            mpk_pack_key_int(&w.pk, "experts", L.cfg.num_local_experts);
            fprintf(stderr, "serve-bench: %s: %.2f of %lld experts per MoE layer per step (%.2f in decode-only steps)\n",
                    point, touched, (long long)L.cfg.num_local_experts, decode);
        }
        mpk_writer_emit(&w);
        for (size_t i = 0; i < pw.n_requests; i++)
            free(lv[i].t.token_s);
        free(lv);
        free(tm);
        workload_free(rq, pw.n_requests);
    }
    mpk_writer_commit(&w);
    serve_print_table(stderr, sums, points, (const char *const *)labels);
    for (size_t pt = 0; pt < points; pt++)
        free(labels[pt]);
    free(labels), free(sums), free(rates), free(conc), free(S.logits), free(S.scratch);
    engine_free(e);
    model_free(L.m);
    mc_free(&L.cfg);
    return 0;
}
