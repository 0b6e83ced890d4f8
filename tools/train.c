/* train: pretrain a dense model from a config, continue pretraining a
 * checkpoint, or train an upcycled MoE checkpoint; save, resume exactly. */
#include "backend.h"
#include "bpe.h"
#include "dist.h"
#include "lm_score.h"
#include "loader.h"
#include "lr_schedule.h"
#include "model.h"
#include "model_config.h"
#include "mpk.h"
#include "optim.h"
#include "safetensors.h"
#include "train_state.h"
#include "util.h"

#include <errno.h>
#include <glob.h>
#include <signal.h>
#include <limits.h>
#include <stdarg.h>
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char usage[] =
    "usage: train (--init CONFIG | --from CKPT | --resume) --data SHARDS --out DIR\n"
    "             (--steps N | --tokens N) [options]\n"
    "\n"
    "Train a Llama or Mixtral model on a shard split (shard(1)): from a seeded\n"
    "init (--init config.json), from a checkpoint (--from: continued pretraining,\n"
    "or an upcycled MoE), or resuming the checkpoint in DIR exactly where it\n"
    "stopped (--resume). DIR is a checkpoint directory (config.json,\n"
    "model.safetensors, tokenizer.json, optimizer.safetensors,\n"
    "trainer_state.json), replaced atomically at every save. stdout: a msgpack\n"
    "stream of train_start, train_step, eval and train_end records; stderr: a\n"
    "progress line when it is a terminal. SIGINT, SIGTERM or SIGHUP: finish the\n"
    "step, save, exit 128 + the signal number (130, 143, 129).\n"
    "\n"
    "model and data:\n"
    "  --init CONFIG        a config.json (e.g. configs/tiny.json); weights drawn with --seed\n"
    "  --from CKPT          start from the checkpoint directory CKPT\n"
    "  --resume             continue the run saved in DIR (options default to its own)\n"
    "  --data DIR           training split, e.g. shards/train (required)\n"
    "  --val DIR            validation split, e.g. shards/val\n"
    "  --out DIR            the checkpoint directory to write (required)\n"
    "  --tokenizer FILE     tokenizer.json to store in DIR (default: CKPT's)\n"
    "  --force              replace an existing DIR (without --resume)\n"
    "\n"
    "length and batch:\n"
    "  --steps N            optimizer steps in the whole run\n"
    "  --tokens N           or a token budget: ceil(N / (batch * seq-len)) steps\n"
    "  --batch B            sequences per step, over all processes (default 8)\n"
    "  --micro-batch M      sequences per forward/backward, divides B/N (default B/N)\n"
    "  --seq-len T          tokens per sequence (default 256)\n"
    "\n"
    "optimization:\n"
    "  --optimizer NAME     adamw (default) or lion\n"
    "  --lr X               peak learning rate (default 3e-4)\n"
    "  --beta1 X --beta2 X  moment decay (adamw 0.9 0.95, lion 0.9 0.99)\n"
    "  --eps X              adamw epsilon (default 1e-8)\n"
    "  --weight-decay X     decoupled, not on norms (adamw 0.1, lion 1.0)\n"
    "  --clip X             global gradient-norm clipping, 0 = off (default 1.0)\n"
    "  --schedule NAME      cosine (default), linear or constant\n"
    "  --warmup N           linear warmup steps (default 0)\n"
    "  --min-lr-ratio X     floor of the decay as a fraction of --lr (default 0.1)\n"
    "  --decay-steps N      step where the decay reaches the floor (default: the\n"
    "                       run's length; a resumed run extended past it stays there)\n"
    "  --seed N             init and data-order seed (default 0)\n"
    "\n"
    "evaluation, saving, output:\n"
    "  --eval-every N       validate every N steps (default 0: only at the end)\n"
    "  --eval-tokens N      tokens per validation, 0 = the whole split (default 0)\n"
    "  --save-every N       save every N steps (default 0: only at the end)\n"
    "  --threads N          CPU threads (default: OpenMP's choice)\n"
    "  --device NAME        cpu (default), cuda (when built with it) or auto\n"
    "  --precision P        fp32 (default) or bf16: GEMM operands rounded to bf16,\n"
    "                       fp32 accumulation, weights and optimizer state (on a\n"
    "                       CPU emulated, slower; on a GPU tensor cores)\n"
    "  -h, --help           show this help\n"
    "  --version            show the version\n"
    "\n"
    "multi-process (data-parallel) training:\n"
    "  mpirun -np N train ... (or srun --mpi=pmix) trains one model in N processes:\n"
    "  each takes B/N of every step's B windows (N must divide B), the gradients\n"
    "  are summed over processes, and every process takes the same step, so the\n"
    "  run is the one-process run with the same options and --micro-batch, up to\n"
    "  float summation order. Process 0 alone writes the records and checkpoints\n"
    "  and validates. A resume may change N. Give --threads so that N x threads\n"
    "  fits the cores. A signal to any process stops all after the same step;\n"
    "  to stop mpirun's job, send SIGUSR1 to mpirun (exit 138), not SIGTERM.\n"
    "\n"
    "Counts take suffixes K, M, G (x1000). Paths are stored resolved. See train(1).\n";

/* ---- options ---------------------------------------------------------------
 * One table drives parsing, the settings stored in trainer_state.json and the
 * check on --resume that the run is the same run. */

typedef struct {
    const char *init, *from, *data, *val, *out, *tokenizer, *optimizer, *schedule, *device, *precision;
    long long steps, tokens, batch, micro_batch, seq_len, warmup, decay_steps, seed, eval_every, eval_tokens, save_every,
        threads;
    double lr, beta1, beta2, eps, weight_decay, clip, min_lr_ratio;
    bool resume, force;
} options;

typedef enum { OPT_STR, OPT_INT, OPT_DBL } opt_type;

typedef struct {
    const char *name;
    opt_type type;
    size_t off;
    double lo, hi;
    bool setting;     /* stored in trainer_state.json */
    bool may_change;  /* a resumed run may give another value */
    bool newer;       /* added after runs were first saved: one saved without it used the default */
} opt_spec;

#define S(f) OPT_STR, offsetof(options, f), 0, 0
#define I(f, lo, hi) OPT_INT, offsetof(options, f), lo, hi
#define D(f, lo, hi) OPT_DBL, offsetof(options, f), lo, hi
static const opt_spec specs[] = {
    {"--init", S(init), true, true, false},
    {"--from", S(from), true, true, false},
    {"--data", S(data), true, false, false},
    {"--val", S(val), true, true, false},
    {"--out", S(out), false, false, false},
    {"--tokenizer", S(tokenizer), false, false, false},
    {"--optimizer", S(optimizer), true, false, false},
    {"--schedule", S(schedule), true, false, false},
    {"--device", S(device), false, false, false},
    {"--precision", S(precision), true, true, true},
    {"--steps", I(steps, 1, 1e15), true, true, false},
    {"--tokens", I(tokens, 1, 1e18), true, true, false},
    {"--batch", I(batch, 1, 1 << 20), true, false, false},
    {"--micro-batch", I(micro_batch, 1, 1 << 20), true, true, false},
    {"--seq-len", I(seq_len, 1, 1 << 24), true, false, false},
    {"--warmup", I(warmup, 0, 1e15), true, false, false},
    {"--decay-steps", I(decay_steps, 1, 1e15), true, false, false},
    {"--seed", I(seed, 0, 9.2e18), true, false, false},
    {"--eval-every", I(eval_every, 0, 1e15), true, true, false},
    {"--eval-tokens", I(eval_tokens, 0, 1e18), true, true, false},
    {"--save-every", I(save_every, 0, 1e15), true, true, false},
    {"--threads", I(threads, 1, 4096), false, false, false},
    {"--lr", D(lr, 0, 1e30), true, false, false},
    {"--beta1", D(beta1, 0, 1), true, false, false},
    {"--beta2", D(beta2, 0, 1), true, false, false},
    {"--eps", D(eps, 0, 1), true, false, false},
    {"--weight-decay", D(weight_decay, 0, 1e6), true, false, false},
    {"--clip", D(clip, 0, 1e30), true, false, false},
    {"--min-lr-ratio", D(min_lr_ratio, 0, 1), true, false, false},
};
#undef S
#undef I
#undef D
#define NSPECS (sizeof specs / sizeof *specs)

static void *field(options *o, const opt_spec *s)
{
    return (char *)o + s->off;
}

/* realpath results, freed at exit */
static char *resolved[NSPECS * 4];
static size_t n_resolved;

/* The settings that name files or directories (resolved when parsed). */
static bool is_path_setting(const opt_spec *s)
{
    static const char *const paths[] = {"--init", "--from", "--data", "--val"};
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++)
        if (strcmp(s->name, paths[i]) == 0)
            return true;
    return false;
}

static void parse_args(int argc, char **argv, options *o, bool *given)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (upc_is_help(a)) {
            fputs(usage, stdout);
            exit(0);
        } else if (upc_is_version(a)) {
            upc_print_version();
            exit(0);
        } else if (strcmp(a, "--resume") == 0) {
            o->resume = true;
            continue;
        } else if (strcmp(a, "--force") == 0) {
            o->force = true;
            continue;
        }
        size_t k = 0;
        while (k < NSPECS && strcmp(a, specs[k].name) != 0)
            k++;
        if (k == NSPECS || i + 1 >= argc)
            upc_usage_fail(k == NSPECS ? "unknown option or argument '%s'" : "%s needs a value", a);
        const opt_spec *s = &specs[k];
        const char *v = argv[++i];
        if (is_path_setting(s)) {
            /* a path: stored resolved, so a resume from another directory
             * reads the same files and compares like with like */
            if (n_resolved == sizeof resolved / sizeof *resolved)
                upc_usage_fail("%s: too many paths on the command line", a);
            char *full = realpath(v, NULL);
            if (!full)
                upc_fail(EX_NOINPUT, "%s %s: %s", a, v, strerror(errno));
            *(const char **)field(o, s) = full;
            resolved[n_resolved++] = full;
        } else if (s->type == OPT_STR)
            *(const char **)field(o, s) = v;
        else if (s->type == OPT_INT)
            *(long long *)field(o, s) = upc_parse_count(a, v, (long long)s->lo, (long long)s->hi);
        else
            *(double *)field(o, s) = upc_parse_double(a, v, s->lo, s->hi);
        given[k] = true;
    }
}

static bool was_given(const bool *given, const char *name)
{
    for (size_t k = 0; k < NSPECS; k++)
        if (strcmp(specs[k].name, name) == 0)
            return given[k];
    return false;
}

static json_t *settings_to_json(options *o, const bool *given)
{
    json_t *j = json_object();
    for (size_t k = 0; k < NSPECS; k++) {
        const opt_spec *s = &specs[k];
        if (!s->setting)
            continue;
        json_t *v = NULL;
        if (s->type == OPT_STR) {
            const char *str = *(const char **)field(o, s);
            v = str ? json_string(str) : json_null();
        } else if (s->type == OPT_INT) {
            v = json_integer(*(long long *)field(o, s));
        } else {
            v = json_real(*(double *)field(o, s));
        }
        /* --steps/--tokens: only the one given means anything */
        if ((strcmp(s->name, "--steps") == 0 || strcmp(s->name, "--tokens") == 0) && !given[k]) {
            json_decref(v);
            v = json_null();
        }
        json_object_set_new(j, s->name + 2, v);
    }
    json_object_set_new(j, "world_size", json_integer(dist_world()));
    return j;
}

/* On --resume: stored settings fill what the command line left out; a
 * given value that differs from the stored one is refused unless the
 * option may change (the length, evaluation and saving cadence). */
static void merge_resumed_settings(options *o, bool *given, json_t *stored, const char *path)
{
    bool new_length = was_given(given, "--steps") || was_given(given, "--tokens");
    for (size_t k = 0; k < NSPECS; k++) {
        const opt_spec *s = &specs[k];
        if (!s->setting)
            continue;
        bool length = strcmp(s->name, "--steps") == 0 || strcmp(s->name, "--tokens") == 0;
        if (length && new_length)
            continue;   /* a new length replaces the old, whichever unit */
        json_t *v = json_object_get(stored, s->name + 2);
        if (!v && s->newer)
            continue;   /* the default, which is what that run used */
        if (!v)
            upc_fail(EX_DATAERR, "%s: settings.%s missing", path, s->name + 2);
        bool is_null = json_is_null(v);
        if (given[k]) {
            bool same;
            if (s->type == OPT_STR)
                same = !is_null && json_is_string(v) && strcmp(json_string_value(v), *(const char **)field(o, s)) == 0;
            else if (s->type == OPT_INT)
                same = json_is_integer(v) && json_integer_value(v) == *(long long *)field(o, s);
            else
                same = json_is_number(v) && json_number_value(v) == *(double *)field(o, s);
            if (!same && !s->may_change) {
                char *was = json_dumps(v, JSON_ENCODE_ANY);
                upc_usage_fail("--resume: %s differs from the run being resumed (%s); start a new run to change it",
                               s->name, was);
            }
            continue;
        }
        if (is_null)
            continue;
        bool ok = s->type == OPT_STR ? json_is_string(v) : s->type == OPT_INT ? json_is_integer(v) : json_is_number(v);
        if (!ok)
            upc_fail(EX_DATAERR, "%s: settings.%s has the wrong type", path, s->name + 2);
        if (s->type == OPT_STR)
            *(const char **)field(o, s) = json_string_value(v);
        else if (s->type == OPT_INT)
            *(long long *)field(o, s) = json_integer_value(v);
        else
            *(double *)field(o, s) = json_number_value(v);
        given[k] = true;
    }
}

/* ---- the run ----------------------------------------------------------- */

typedef struct {
    options o;
    model_config cfg;
    model *m;
    optim *opt;
    lr_schedule sched;
    loader *train, *val;
    mpk_writer rec;
    char *tokenizer_json;         /* file contents to store, or NULL */
    size_t tokenizer_len;
    long long total_steps;
    double flops_per_token;
    train_state st;               /* step, tokens, elapsed: the run so far */
    int32_t *ids, *targets;       /* host [micro][T] */
    int64_t *load;                /* [L][E] expert assignments this step */
    int64_t *dropped;             /* [L] assignments past capacity this step */
    bool tty;
    bool saved;                   /* the checkpoint in --out is this run's or its parent's */
    int rank, world;              /* this process in the data-parallel job (dist.h) */
    bool root;                    /* rank 0: writes records and checkpoints, validates */
} run;

/* A warning that every process would give alike: process 0 gives it. */
static void warn_once(const run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn_once(const run *r, const char *fmt, ...)
{
    if (!r->root)
        return;
    va_list ap;
    va_start(ap, fmt);
    upc_vwarn(fmt, ap);
    va_end(ap);
}

/* A failure every process reached together (the same data after the same
 * collectives): process 0 says why, every process leaves the job properly
 * and exits with code, so nothing is aborted and the message is said once. */
static void fail_together(const run *r, int code, const char *fmt, ...) __attribute__((noreturn, format(printf, 3, 4)));
static void fail_together(const run *r, int code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dist_finalize();
    if (r->root)
        upc_fail(code, "%s", msg);
    exit(code);
}


static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Load the tokenizer to store, and check it against the data it will train
 * on: a stream made with another tokenizer would train on wrong ids. */
static void check_tokenizer(run *r, const char *path, const shard_index *ix)
{
    if (!path || !exists(path))
        return;
    char err[512];
    bpe_tokenizer *t = bpe_load(path, err, sizeof err);
    if (!t)
        upc_fail(EX_DATAERR, "%s: %s", path, err);
    char digest[32];
    bpe_digest(t, digest);
    if (ix->h.tokenizer[0] && strcmp(digest, ix->h.tokenizer) != 0)
        upc_fail(EX_DATAERR, "%s: tokenizer %s differs from the one that made %s (%s)", path, digest, ix->dir,
                 ix->h.tokenizer);
    if ((int64_t)bpe_vocab_size(t) > r->cfg.vocab_size)
        upc_fail(EX_DATAERR, "%s: %zu tokens do not fit the model's vocab_size %lld", path, bpe_vocab_size(t),
                 (long long)r->cfg.vocab_size);
    /* A new model's config names the tokenizer's EOS as its eos and bos token
     * (as GPT-2's does): every document of upcyc's data starts after one. */
    int64_t eos = bpe_eos_id(t);
    if (r->o.init && !r->o.resume && eos >= 0) {
        r->cfg.bos_token_id = eos;
        r->cfg.eos_token_ids[0] = eos;
        r->cfg.n_eos = 1;
    }
    bpe_free(t);
    r->tokenizer_json = upc_read_file(path, &r->tokenizer_len);
}

static void check_data(const run *r, const loader *L, const char *what)
{
    const shard_index *ix = loader_index(L);
    if ((int64_t)ix->h.vocab_size > r->cfg.vocab_size)
        upc_fail(EX_DATAERR, "%s: %s vocabulary of %llu tokens exceeds the model's vocab_size %lld", ix->dir, what,
                 (unsigned long long)ix->h.vocab_size, (long long)r->cfg.vocab_size);
}

static loader *open_split(const run *r, const char *dir, bool pad_tail, size_t batch)
{
    loader_config lc = {
        .batch = batch,
        .seq = (size_t)r->o.seq_len,
        .seed = (uint64_t)r->o.seed,
        .world = 1,
        .pad_tail = pad_tail,
    };
    return loader_open(dir, &lc);
}

static void build_model(run *r, const bool *given)
{
    options *o = &r->o;
    const char *src = o->resume ? o->out : o->from ? o->from : o->init;
    mc_load(&r->cfg, src);
    const char *why = mc_unsupported(&r->cfg);
    if (why)
        upc_fail(EX_DATAERR, "%s: %s", src, why);
    if (r->cfg.max_position_embeddings > 0 && o->seq_len > r->cfg.max_position_embeddings)
        upc_usage_fail("--seq-len %lld exceeds the model's max_position_embeddings %lld", o->seq_len,
                       (long long)r->cfg.max_position_embeddings);
    r->m = model_create(upc_backend_precision(upc_backend(o->device), o->precision), &r->cfg);
    if (o->init && !o->resume) {
        model_init_weights(r->m, (uint64_t)o->seed);
    } else {
        st_reader *sr = st_open(src);
        model_load_weights(r->m, sr);
        st_close(sr);
    }

    optim_kind kind = OPTIM_ADAMW;
    if (!optim_kind_parse(o->optimizer, &kind))
        upc_usage_fail("--optimizer: expected adamw or lion, got '%s'", o->optimizer);
    optim_config oc;
    optim_config_default(&oc, kind);
    if (was_given(given, "--beta1"))
        oc.beta1 = o->beta1;
    if (was_given(given, "--beta2"))
        oc.beta2 = o->beta2;
    if (was_given(given, "--eps"))
        oc.eps = o->eps;
    if (was_given(given, "--weight-decay"))
        oc.weight_decay = o->weight_decay;
    /* store the values in effect, so a resume compares like with like */
    o->beta1 = oc.beta1;
    o->beta2 = oc.beta2;
    o->eps = oc.eps;
    o->weight_decay = oc.weight_decay;
    r->opt = optim_create(r->m, &oc);
    if (o->resume) {
        st_reader *sr = st_open_named(o->out, "optimizer");
        optim_load(r->opt, r->m, sr);
        st_close(sr);
        if (r->opt->step != r->st.step)
            upc_fail(EX_DATAERR, "%s: optimizer state is at step %lld, trainer state at %lld", o->out, r->opt->step,
                     r->st.step);
    }
}

/* A run killed during a save (kill -9, power loss) leaves OUT.tmp.PID
 * behind; remove those whose process is gone. */
static void remove_stale_saves(const char *out)
{
    char pattern[PATH_MAX + 16];
    snprintf(pattern, sizeof pattern, "%s.tmp.*", out);
    glob_t g;
    if (glob(pattern, GLOB_NOSORT, NULL, &g) != 0)
        return;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        char *end;
        long pid = strtol(g.gl_pathv[i] + strlen(out) + 5, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        if (upc_rm_rf(g.gl_pathv[i]) == 0)
            upc_warn("%s: removed the unfinished save of an interrupted run", g.gl_pathv[i]);
    }
    globfree(&g);
}

static void save_checkpoint(run *r)
{
    if (!r->root)
        return;
    const char *out = r->o.out;
    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out, (long)getpid());
    upc_rm_rf(tmp);
    if (mkdir(tmp, 0777) != 0)
        upc_fail(EX_CANTCREAT, "%s: cannot create: %s", tmp, strerror(errno));
    upc_tmp_register(tmp);
    char *p = upc_path_join(tmp, "config.json");
    mc_save(&r->cfg, p);
    free(p);
    model_save_weights(r->m, tmp, ST_F32, 5ULL << 30);
    p = upc_path_join(tmp, "optimizer.safetensors");
    optim_save(r->opt, r->m, p);
    free(p);
    if (r->tokenizer_json) {
        p = upc_path_join(tmp, "tokenizer.json");
        upc_out f;
        upc_out_open(&f, p);
        upc_out_write(&f, r->tokenizer_json, r->tokenizer_len);
        upc_out_commit(&f);
        free(p);
    }
    free(r->st.cursor);
    r->st.cursor_len = loader_cursor_save(r->train, &r->st.cursor);
    loader_cursor c = loader_tell(r->train);
    r->st.cursor_epoch = c.epoch;
    r->st.cursor_step = c.step;
    p = upc_path_join(tmp, TRAIN_STATE_NAME);
    train_state_save(&r->st, p);
    free(p);
    upc_fsync_dir(tmp);
    upc_publish_dir(tmp, out);
    r->saved = true;
}

static void pack_eval(run *r, double ce, long long n_targets, double wall)
{
    msgpack_packer *pk = &r->rec.pk;
    msgpack_pack_map(pk, 7);
    mpk_pack_key_str(pk, "event", "eval");
    mpk_pack_key_int(pk, "step", r->st.step);
    mpk_pack_key_int(pk, "tokens", r->st.tokens);
    mpk_pack_key_double(pk, "loss", ce);
    mpk_pack_key_double(pk, "ppl", exp(ce));
    mpk_pack_key_int(pk, "eval_tokens", n_targets);
    mpk_pack_key_double(pk, "wall_s", wall);
    mpk_writer_emit(&r->rec);
}

/* Mean cross-entropy over the first --eval-tokens target tokens of the
 * validation split (all of it with 0), the same tokens every time. */
static void evaluate(run *r)
{
    if (!r->val)   /* opened by process 0 only */
        return;
    double t0 = upc_now();
    long long n;
    double ce = lm_heldout_loss(r->m, r->val, (size_t)r->o.micro_batch, (size_t)r->o.seq_len,
                                (uint64_t)r->o.eval_tokens, &n);
    pack_eval(r, ce, n, upc_now() - t0);
    if (r->tty)
        fprintf(stderr, "\r\033[Ktrain: step %lld  val loss %.4f  ppl %.2f  (%lld tokens)\n", r->st.step, ce, exp(ce),
                n);
}

static void fmt_duration(char *buf, size_t n, double s)
{
    if (!isfinite(s) || s < 0)
        snprintf(buf, n, "?");
    else if (s < 60)
        snprintf(buf, n, "%.0fs", s);
    else if (s < 3600)
        snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else
        snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
}

static void pack_start(run *r)
{
    mc_params p = mc_param_count(&r->cfg);
    msgpack_packer *pk = &r->rec.pk;
    msgpack_pack_map(pk, 14);
    mpk_pack_key_str(pk, "event", "train_start");
    mpk_pack_key_str(pk, "out", r->o.out);
    mpk_pack_key_str(pk, "mode", r->o.resume ? "resume" : r->o.from ? "from" : "init");
    mpk_pack_key_int(pk, "params", p.total);
    mpk_pack_key_int(pk, "active_params", p.active);
    mpk_pack_key_double(pk, "flops_per_token", r->flops_per_token);
    mpk_pack_key_int(pk, "start_step", r->st.step);
    mpk_pack_key_int(pk, "steps", r->total_steps);
    mpk_pack_key_int(pk, "batch", r->o.batch);
    mpk_pack_key_int(pk, "seq_len", r->o.seq_len);
    mpk_pack_key_int(pk, "threads", r->st.threads);
    mpk_pack_key_int(pk, "world_size", r->world);
    mpk_pack_key_str(pk, "device", r->m->K->name);
    mpk_pack_key_str(pk, "precision", r->m->K->precision);
    mpk_writer_emit(&r->rec);
}

static void pack_step(run *r, const model_loss *l, double gnorm, double lr, double wall, long long step_tokens)
{
    msgpack_packer *pk = &r->rec.pk;
    bool moe = r->m->n_moe_layers > 0, capacity = moe && r->m->capacity_factor > 0;
    msgpack_pack_map(pk, 12 + moe + capacity);
    mpk_pack_key_str(pk, "event", "train_step");
    mpk_pack_key_int(pk, "step", r->st.step);
    mpk_pack_key_int(pk, "tokens", r->st.tokens);
    mpk_pack_key_double(pk, "loss", l->total);
    mpk_pack_key_double(pk, "ce", l->ce);
    mpk_pack_key_double(pk, "lb_loss", l->lb);
    mpk_pack_key_double(pk, "z_loss", l->z);
    mpk_pack_key_double(pk, "grad_norm", gnorm);
    mpk_pack_key_double(pk, "lr", lr);
    mpk_pack_key_double(pk, "tokens_per_s", (double)step_tokens / wall);
    mpk_pack_key_double(pk, "gflops", r->flops_per_token * (double)step_tokens / wall / 1e9);
    mpk_pack_key_double(pk, "wall_s", wall);
    if (moe) {
        mpk_pack_cstr(pk, "expert_load");
        msgpack_pack_array(pk, (size_t)r->m->n_moe_layers);
        for (int li = 0; li < r->m->L; li++) {
            if (!r->m->layers[li].moe)
                continue;
            msgpack_pack_array(pk, (size_t)r->m->E);
            for (int e = 0; e < r->m->E; e++)
                msgpack_pack_int64(pk, r->load[(size_t)li * r->m->E + e]);
        }
    }
    if (capacity) {
        mpk_pack_cstr(pk, "dropped");
        msgpack_pack_array(pk, (size_t)r->m->n_moe_layers);
        for (int li = 0; li < r->m->L; li++)
            if (r->m->layers[li].moe)
                msgpack_pack_int64(pk, r->dropped[li]);
    }
    mpk_writer_emit(&r->rec);
}

static void pack_end(run *r, int signo)
{
    msgpack_packer *pk = &r->rec.pk;
    msgpack_pack_map(pk, 6);
    mpk_pack_key_str(pk, "event", "train_end");
    mpk_pack_key_int(pk, "step", r->st.step);
    mpk_pack_key_int(pk, "tokens", r->st.tokens);
    mpk_pack_key_double(pk, "elapsed_s", r->st.elapsed_s);
    mpk_pack_cstr(pk, "interrupted");
    if (signo)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    mpk_pack_key_str(pk, "checkpoint", r->o.out);
    mpk_writer_emit(&r->rec);
}

static volatile sig_atomic_t stop_signal;

/* SIGUSR1 stops the run like SIGTERM: mpirun forwards it to every rank,
 * while a SIGTERM to mpirun itself kills the ranks within a second. */
static void on_stop_request(int sig)
{
    if (!stop_signal)
        stop_signal = sig;
}

/* --batch is the global batch: each of the N processes takes B/N windows of
 * it, in micro-batches of M (default B/N). A resumed run may change N (the
 * data order does not depend on it) but keeps M, which decides what the MoE
 * balance losses and capacities are computed over. */
static void split_batch(run *r, bool micro_given, const json_t *stored)
{
    options *o = &r->o;
    long long n = r->world;
    if (!micro_given)
        o->micro_batch = o->batch / n ? o->batch / n : 1;
    json_t *was = stored ? json_object_get(stored, "world_size") : NULL;
    long long saved_on = json_is_integer(was) ? json_integer_value(was) : 1;
    if (o->resume && saved_on != n)
        warn_once(r, "resuming on %lld processes, the run was saved on %lld: the losses will differ in the last bits",
                  n, saved_on);
    if (n == 1) {
        if (o->batch % o->micro_batch)
            upc_usage_fail("--micro-batch %lld does not divide --batch %lld", o->micro_batch, o->batch);
        return;
    }
    if (o->batch % n)
        fail_together(r, EX_USAGE, "--batch %lld does not split over %lld processes: give a multiple of %lld (see %s --help)",
                      o->batch, n, n, upc_progname);
    if ((o->batch / n) % o->micro_batch)
        fail_together(r, EX_USAGE,
                      "--micro-batch %lld does not divide the %lld windows per process (--batch %lld over %lld)%s (see %s --help)",
                      o->micro_batch, o->batch / n, o->batch, n,
                      o->resume ? "; a resume keeps the run's micro-batch unless given" : "", upc_progname);
}

static void dist_sum_f32(float *buf, size_t n)
{
    dist_allreduce_sum(buf, n, DIST_F32);
}

static void dist_sum_i64(int64_t *buf, size_t n)
{
    dist_allreduce_sum(buf, n, DIST_I64);
}

/* What the processes share after their micro-batches: the gradients (summed),
 * the loss parts, target tokens and expert counts (summed, for the records),
 * and, agreed by maximum, a stop signal any of them received. Every process
 * then holds the same gradients and takes the same step. */
static int share_step(run *r, model_loss *sum, long long *step_tokens)
{
    model *m = r->m;
    /* on the device where the backend can (NCCL), else through host memory */
    upc_collectives c = {.rank = dist_rank(), .world = dist_world(), .sum_f32 = dist_sum_f32,
                         .sum_i64 = dist_sum_i64, .broadcast = dist_broadcast};
    upc_backend_allreduce_sum(m->K, m->grads, m->n_floats, &c);
    double parts[5] = {sum->total, sum->ce, sum->lb, sum->z, (double)*step_tokens};
    dist_allreduce_sum(parts, 5, DIST_F64);
    *sum = (model_loss){.total = parts[0], .ce = parts[1], .lb = parts[2], .z = parts[3]};
    *step_tokens = (long long)parts[4];
    if (r->load) {
        dist_allreduce_sum(r->load, (size_t)m->L * m->E, DIST_I64);
        dist_allreduce_sum(r->dropped, (size_t)m->L, DIST_I64);
    }
    double sig = stop_signal;
    dist_allreduce_max(&sig, 1);
    return (int)sig;
}

/* The gradient norm, the same on every process: they hold the same summed
 * gradients, and a process whose norm differs (an all-reduce that gave the
 * ranks different bits) would drift from the others, so that is refused. */
static double agreed_grad_norm(run *r, long long step)
{
    double gnorm = optim_grad_norm(r->opt, r->m);
    if (r->world == 1)
        return gnorm;
    double span[2] = {isfinite(gnorm) ? gnorm : INFINITY, isfinite(gnorm) ? -gnorm : INFINITY};
    dist_allreduce_max(span, 2);
    if (span[0] != -span[1] && isfinite(span[0]) && isfinite(span[1]))
        upc_fail(EX_SOFTWARE, "step %lld: the processes disagree on the gradient norm (%.17g .. %.17g)", step,
                 -span[1], span[0]);
    return isfinite(span[0]) && isfinite(span[1]) ? gnorm : NAN;
}

/* The router jitter noise of micro-batch `index` (over all processes) of
 * step `step`: a function of the seed and both, so a resumed run and a run
 * on another number of processes draw the same noise for the same tokens. */
static uint64_t jitter_key(const run *r, long long step, size_t index)
{
    uint64_t words[3] = {(uint64_t)r->o.seed, (uint64_t)step, (uint64_t)index};
    return upc_hash64(words, sizeof words, 0x6a6974746572ULL /* "jitter" */);
}

/* One optimizer step over a batch of --batch windows: this process's share
 * of them (windows rank*B/N .. (rank+1)*B/N - 1) in micro-batches, then the
 * shared gradients. Returns the stop signal the processes agreed on, or 0. */
static int train_step(run *r, long long step)
{
    model *m = r->m;
    double t0 = upc_now();
    const loader_batch *b = loader_next(r->train);
    size_t mb = (size_t)r->o.micro_batch, T = (size_t)r->o.seq_len;
    size_t share = (size_t)r->o.batch / (size_t)r->world, first = (size_t)r->rank * share;
    size_t accum = share / mb, parts = accum * (size_t)r->world;
    model_loss sum = {0};
    long long step_tokens = 0;
    if (r->load) {
        memset(r->load, 0, (size_t)m->L * m->E * sizeof *r->load);
        memset(r->dropped, 0, (size_t)m->L * sizeof *r->dropped);
    }
    model_zero_grads(m);
    for (size_t a = 0; a < accum; a++) {
        step_tokens += (long long)loader_batch_windows(b, T, first + a * mb, mb, r->ids, r->targets);
        model_loss l;
        model_jitter_next(m, jitter_key(r, step, (size_t)r->rank * accum + a));
        model_forward(m, r->ids, r->targets, (int)mb, (int)T, &l);
        /* full windows: every micro-batch of every process has mb*T targets,
         * so the mean over the global batch's tokens is the mean of the
         * micro-batch means */
        model_backward(m, 1.0f / (float)parts);
        sum.total += l.total / (double)parts;
        sum.ce += l.ce / (double)parts;
        sum.lb += l.lb / (double)parts;
        sum.z += l.z / (double)parts;
        if (r->load) {
            for (size_t i = 0; i < (size_t)m->L * m->E; i++)
                r->load[i] += m->expert_counts[i];
            for (int li = 0; li < m->L; li++)
                r->dropped[li] += m->capacity_factor > 0 ? m->dropped_counts[li] : 0;
        }
    }
    int signo = share_step(r, &sum, &step_tokens);
    double gnorm = agreed_grad_norm(r, step);
    if (!isfinite(sum.total) || !isfinite(gnorm))
        fail_together(r, EX_SOFTWARE,
                      "step %lld: the loss is %g and the gradient norm %g (diverged; lower --lr or add --warmup); %s%s",
                      step, sum.total, gnorm, r->saved ? r->o.out : "nothing was saved",
                      r->saved ? " keeps the last save" : "");
    double lr = lr_at(&r->sched, step);
    double scale = r->o.clip > 0 && gnorm > r->o.clip ? r->o.clip / gnorm : 1.0;
    optim_step(r->opt, m, lr, scale);
    double wall = upc_now() - t0;
    r->st.step = step;
    r->st.tokens += step_tokens;
    r->st.elapsed_s += wall;
    pack_step(r, &sum, gnorm, lr, wall, step_tokens);
    if (r->tty) {
        double rate = (double)r->st.tokens / r->st.elapsed_s;
        char eta[32];
        fmt_duration(eta, sizeof eta, (double)(r->total_steps - step) * r->st.elapsed_s / (double)step);
        fprintf(stderr, "\r\033[Ktrain: step %lld/%lld  loss %.4f  lr %.3g  %.4g tok/s  ETA %s", step,
                r->total_steps, sum.total, lr, rate, eta);
    }
    return signo;
}


int main(int argc, char **argv)
{
    kernels_cpu_prepare_process(argv);
    upc_init("train");
    run R = {0};
    options *o = &R.o;
    *o = (options){
        .optimizer = "adamw",
        .schedule = "cosine",
        .device = "cpu",
        .precision = "fp32",
        .batch = 8,
        .seq_len = 256,
        .lr = 3e-4,
        .clip = 1.0,
        .min_lr_ratio = 0.1,
    };
    bool given[NSPECS] = {0};
    parse_args(argc, argv, o, given);
    dist_init(&argc, &argv);
    R.rank = dist_rank();
    R.world = dist_world();
    R.root = dist_is_root();
    json_t *stored = NULL;

    if (!o->out)
        upc_usage_fail("missing --out DIR");
    size_t n = strlen(o->out);
    while (n > 1 && o->out[n - 1] == '/')
        ((char *)o->out)[--n] = 0;
    /* a device that is not there, or a precision no backend has, fails
     * here, before any output */
    upc_backend_precision(upc_backend(o->device), o->precision);
    char *state_path = upc_path_join(o->out, TRAIN_STATE_NAME);
    if (o->resume) {
        if (!exists(state_path))
            upc_fail(EX_NOINPUT, "%s: no %s to resume from (was the run saved?)", o->out, TRAIN_STATE_NAME);
        train_state_load(&R.st, state_path);
        /* the stored strings stay in `stored` for the whole run */
        stored = R.st.settings;
        R.st.settings = NULL;
        merge_resumed_settings(o, given, stored, state_path);
    } else {
        if ((o->init != NULL) + (o->from != NULL) != 1)
            upc_usage_fail("give one of --init CONFIG, --from CKPT or --resume");
        struct stat st;
        if (stat(o->out, &st) == 0 && !o->force)
            upc_fail(EX_CANTCREAT, "%s: already exists (--resume continues it, --force replaces it)", o->out);
        if (stat(o->out, &st) == 0 && !S_ISDIR(st.st_mode))
            upc_fail(EX_CANTCREAT, "%s: exists and is not a directory; not replacing it", o->out);
    }
    if (!o->data)
        upc_usage_fail("missing --data DIR");
    if (R.root)
        remove_stale_saves(o->out);
    if ((o->steps > 0) + (o->tokens > 0) != 1)
        upc_usage_fail("give one of --steps N or --tokens N");
    split_batch(&R, was_given(given, "--micro-batch"), stored);
    lr_shape shape;
    if (!lr_shape_parse(o->schedule, &shape))
        upc_usage_fail("--schedule: expected cosine, linear or constant, got '%s'", o->schedule);
    if (o->threads > 0)
        omp_set_num_threads((int)o->threads);
    int threads = omp_get_max_threads();
    if (o->resume && R.st.threads && R.st.threads != threads)
        warn_once(&R, "resuming on %d threads, the run was saved on %d: the losses will differ in the last bits",
                 threads, R.st.threads);
    json_t *saved_precision = stored ? json_object_get(stored, "precision") : NULL;
    const char *was_precision = json_is_string(saved_precision) ? json_string_value(saved_precision) : "fp32";
    if (o->resume && strcmp(was_precision, o->precision) != 0)
        warn_once(&R, "resuming with --precision %s, the run was saved with %s: it continues, but not as the saved run "
                  "would have", o->precision, was_precision);
    R.st.threads = threads;

    /* Refuse a terminal for the records before any work; discard them there. */
    R.tty = R.root && isatty(STDERR_FILENO);
    if (!R.root) {
        mpk_writer_open(&R.rec, "/dev/null");   /* process 0 writes the records */
    } else if (isatty(STDOUT_FILENO) && dist_joined()) {
        /* mpirun hands its ranks a pseudo-terminal whatever its own stdout
         * is: write through it (as a device, which is not refused) */
        mpk_writer_open(&R.rec, "/dev/stdout");
    } else if (isatty(STDOUT_FILENO)) {
        upc_warn("stdout is a terminal: records are not written (redirect them to a file or | records json)");
        mpk_writer_open(&R.rec, "/dev/null");
    } else {
        mpk_writer_open(&R.rec, "-");
    }

    R.train = open_split(&R, o->data, false, (size_t)o->batch);
    long long per_step = o->batch * o->seq_len;
    R.total_steps = o->steps > 0 ? o->steps : (o->tokens + per_step - 1) / per_step;
    if (o->resume && R.st.step > R.total_steps)
        upc_usage_fail("--resume: the run is already at step %lld, past the %lld steps asked for", R.st.step,
                       R.total_steps);
    if (o->decay_steps == 0)
        o->decay_steps = R.total_steps;
    if (o->warmup > o->decay_steps)
        upc_usage_fail("--warmup %lld is longer than the decay (%lld steps)", o->warmup, o->decay_steps);
    build_model(&R, given);
    check_data(&R, R.train, "training");
    const char *tok = o->tokenizer;
    char *tok_default = NULL;
    if (!tok) {
        const char *ckpt = o->resume ? o->out : o->from;
        tok = tok_default = ckpt ? upc_path_join(ckpt, "tokenizer.json") : NULL;
    } else if (!exists(tok)) {
        upc_fail(EX_NOINPUT, "%s: %s", tok, strerror(errno));
    }
    check_tokenizer(&R, tok, loader_index(R.train));
    if (!R.tokenizer_json)
        warn_once(&R, "no tokenizer to store in %s (--tokenizer FILE adds one)", o->out);
    R.saved = o->resume;
    if (o->val && R.root) {
        R.val = open_split(&R, o->val, true, (size_t)o->micro_batch);
        check_data(&R, R.val, "validation");
    }
    R.sched = (lr_schedule){shape, o->lr, o->min_lr_ratio, o->warmup, o->decay_steps};
    R.flops_per_token = mc_train_flops_per_token(&R.cfg, o->seq_len);
    R.ids = upc_malloc((size_t)(o->micro_batch * o->seq_len) * sizeof *R.ids);
    R.targets = upc_malloc((size_t)(o->micro_batch * o->seq_len) * sizeof *R.targets);
    if (R.m->n_moe_layers) {
        R.load = upc_calloc((size_t)R.m->L * R.m->E, sizeof *R.load);
        R.dropped = upc_calloc((size_t)R.m->L, sizeof *R.dropped);
    }
    if (o->resume)
        loader_cursor_load(R.train, R.st.cursor, R.st.cursor_len);
    R.st.settings = settings_to_json(o, given);

    upc_defer_signals(&stop_signal);
    signal(SIGUSR1, on_stop_request);
    pack_start(&R);
    int signo = 0;
    for (long long step = R.st.step + 1; step <= R.total_steps; step++) {
        signo = train_step(&R, step);
        if (signo)
            break;
        bool last = step == R.total_steps;
        if (o->eval_every > 0 && step % o->eval_every == 0 && !last)
            evaluate(&R);
        if (o->save_every > 0 && step % o->save_every == 0 && !last)
            save_checkpoint(&R);
    }
    if (R.tty)
        fputc('\n', stderr);
    if (!signo)
        evaluate(&R);
    save_checkpoint(&R);
    pack_end(&R, signo);
    mpk_writer_commit(&R.rec);
    if (signo)
        warn_once(&R, "stopped by signal %d after step %lld; saved to %s (continue with --resume)", signo, R.st.step,
                  o->out);
    else if (R.root)
        fprintf(stderr, "train: %lld steps, %lld tokens in %.1f s; saved to %s\n", R.st.step, R.st.tokens,
                R.st.elapsed_s, o->out);

    free(tok_default);
    free(state_path);
    free(R.ids);
    free(R.targets);
    free(R.load);
    free(R.dropped);
    free(R.tokenizer_json);
    if (R.val)
        loader_close(R.val);
    loader_close(R.train);
    optim_free(R.opt);
    model_free(R.m);
    mc_free(&R.cfg);
    train_state_free(&R.st);
    json_decref(stored);
    for (size_t i = 0; i < n_resolved; i++)
        free(resolved[i]);
    dist_finalize();
    return signo ? 128 + signo : 0;
}
