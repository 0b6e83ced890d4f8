/* loader.c: shuffled, rank-split, resumable windows over a shard split, with
 * chunks decompressed ahead on background threads. */
#include "loader.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* What one epoch looks like for this rank. */
typedef struct {
    uint64_t epoch;
    size_t *mine;          /* this rank's chunks, in reading order */
    size_t nmine;
    uint64_t *mine_start;  /* position of each in the rank stream */
    uint64_t len;          /* tokens in this rank's stream */
    uint64_t steps;        /* steps this epoch, all ranks */
    size_t need;           /* leading chunks of mine that are read */
} epoch_plan;

typedef struct {
    unsigned char *raw;    /* the chunk as stored: n tokens of ix.width bytes */
    size_t n;
    uint64_t epoch;
    size_t k;              /* index into the plan's mine[] */
    uint64_t seq;          /* which chunk of the stream this slot holds */
    bool ready;            /* decompressed and not yet released */
    bool failed;
    char err[512];
} ring_slot;

struct loader {
    shard_index ix;
    loader_config cfg;
    loader_batch batch;

    /* ring shared with the decompression threads: chunk number q of this
     * rank's stream goes to slot q % ring, and is claimed only once chunk
     * q - ring has been released, so chunks arrive in order whatever the
     * threads' timing. */
    pthread_t *threads;
    size_t nthreads;
    bool running;
    pthread_mutex_t mu;
    pthread_cond_t not_full, not_empty;
    ring_slot *ring;
    uint64_t claimed;      /* chunks handed to threads so far */
    uint64_t consumed;     /* chunks released by the consumer so far */
    bool stop;
    epoch_plan prod_plan;  /* the producers' position: epoch plan and k */
    size_t prod_k;

    /* consumer */
    epoch_plan plan;
    uint64_t step;
    size_t next_k;         /* next chunk of plan.mine to take from the ring */
    ring_slot *slot;       /* held slot, or NULL */
    size_t slot_off;
    uint64_t skip;         /* tokens to skip in the first slot after a seek */
    uint32_t last;
    bool have_last;
};

static void plan_free(epoch_plan *p)
{
    free(p->mine);
    free(p->mine_start);
    memset(p, 0, sizeof *p);
}

static uint64_t windows_for(const loader_config *c, uint64_t len)
{
    if (c->pad_tail)
        return len >= 2 ? (len - 1 + c->seq - 1) / c->seq : 0;
    return len >= c->seq + 1 ? (len - 1) / c->seq : 0;
}

/* Shuffle with (seed, epoch), deal to ranks, count steps. */
static void plan_epoch(const shard_index *ix, const loader_config *c, uint64_t epoch, epoch_plan *p)
{
    plan_free(p);
    p->epoch = epoch;
    size_t n = ix->nchunks;
    size_t *perm = upc_malloc(n * sizeof *perm);
    for (size_t i = 0; i < n; i++)
        perm[i] = i;
    uint64_t key[2] = {c->seed, epoch};
    uint64_t state = upc_hash64(key, sizeof key, 0x75706379632d6c64ULL);
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(upc_splitmix64(&state) % i);
        size_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
    uint64_t *lens = upc_calloc(c->world, sizeof *lens);
    p->mine = upc_malloc((n / c->world + 1) * sizeof *p->mine);
    p->mine_start = upc_malloc((n / c->world + 1) * sizeof *p->mine_start);
    for (size_t i = 0; i < n; i++) {
        uint32_t r = (uint32_t)(i % c->world);
        if (r == c->rank) {
            p->mine_start[p->nmine] = lens[r];
            p->mine[p->nmine++] = perm[i];
        }
        lens[r] += ix->chunks[perm[i]].tokens;
    }
    p->len = lens[c->rank];
    uint64_t steps = c->pad_tail ? 0 : UINT64_MAX;
    for (uint32_t r = 0; r < c->world; r++) {
        uint64_t w = windows_for(c, lens[r]);
        uint64_t s = c->pad_tail ? (w + c->batch - 1) / c->batch : w / c->batch;
        steps = c->pad_tail ? (s > steps ? s : steps) : (s < steps ? s : steps);
    }
    p->steps = steps;
    /* Tokens this rank reads: all of them when padding, else up to the last
     * target of the last full step. */
    uint64_t used = c->pad_tail ? p->len : (steps ? steps * c->batch * c->seq + 1 : 0);
    p->need = 0;
    while (p->need < p->nmine && p->mine_start[p->need] < used)
        p->need++;
    free(lens);
    free(perm);
}

static void *producer(void *arg)
{
    loader *L = arg;
    shard_decoder d;
    shard_decoder_init(&d);
    pthread_mutex_lock(&L->mu);
    for (;;) {
        while (!L->stop && L->claimed - L->consumed >= L->cfg.ring)
            pthread_cond_wait(&L->not_full, &L->mu);
        if (L->stop)
            break;
        epoch_plan *p = &L->prod_plan;
        while (L->prod_k >= p->need) {
            plan_epoch(&L->ix, &L->cfg, p->epoch + 1, p);
            L->prod_k = 0;
        }
        uint64_t q = L->claimed++;
        ring_slot *s = &L->ring[q % L->cfg.ring];
        size_t k = L->prod_k++, c = p->mine[k];
        s->epoch = p->epoch;
        s->k = k;
        s->seq = q;
        s->n = L->ix.chunks[c].tokens;
        pthread_mutex_unlock(&L->mu);

        bool ok = shard_read_chunk_into(&L->ix, &d, c, s->raw, s->err, sizeof s->err);

        pthread_mutex_lock(&L->mu);
        s->failed = !ok;
        s->ready = true;
        pthread_cond_broadcast(&L->not_empty);
        /* After an error, publish it and wait to be stopped. */
        while (!ok && !L->stop)
            pthread_cond_wait(&L->not_full, &L->mu);
    }
    pthread_mutex_unlock(&L->mu);
    shard_decoder_free(&d);
    return NULL;
}

static void start_producer(loader *L, uint64_t epoch, size_t k)
{
    L->claimed = L->consumed = 0;
    for (size_t i = 0; i < L->cfg.ring; i++)
        L->ring[i].ready = false;
    L->stop = false;
    plan_epoch(&L->ix, &L->cfg, epoch, &L->prod_plan);
    L->prod_k = k;
    for (size_t i = 0; i < L->nthreads; i++)
        if (pthread_create(&L->threads[i], NULL, producer, L) != 0)
            upc_fail(EX_OSERR, "cannot start a loader thread");
    L->running = true;
}

static void stop_producer(loader *L)
{
    if (!L->running)
        return;
    pthread_mutex_lock(&L->mu);
    L->stop = true;
    pthread_cond_broadcast(&L->not_full);
    pthread_mutex_unlock(&L->mu);
    for (size_t i = 0; i < L->nthreads; i++)
        pthread_join(L->threads[i], NULL);
    L->running = false;
    L->slot = NULL;
}

static ring_slot *acquire(loader *L)
{
    pthread_mutex_lock(&L->mu);
    ring_slot *s = &L->ring[L->consumed % L->cfg.ring];
    while (!(s->ready && s->seq == L->consumed))
        pthread_cond_wait(&L->not_empty, &L->mu);
    pthread_mutex_unlock(&L->mu);
    if (s->failed)
        upc_fail(EX_DATAERR, "%s", s->err);
    if (s->epoch != L->plan.epoch || s->k != L->next_k)
        upc_fail(EX_SOFTWARE, "loader: chunk %zu of epoch %llu arrived, expected %zu of %llu", s->k,
                 (unsigned long long)s->epoch, L->next_k, (unsigned long long)L->plan.epoch);
    return s;
}

static void release(loader *L)
{
    if (!L->slot)
        return;
    pthread_mutex_lock(&L->mu);
    L->slot->ready = false;
    L->consumed++;
    pthread_cond_broadcast(&L->not_full);
    pthread_mutex_unlock(&L->mu);
    L->slot = NULL;
}

/* Copy up to n tokens of this epoch's rank stream; fewer only at its end. */
static size_t take(loader *L, uint32_t *dst, size_t n)
{
    size_t got = 0;
    while (got < n) {
        if (!L->slot || L->slot_off == L->slot->n) {
            release(L);
            if (L->next_k >= L->plan.need)
                break;
            L->slot = acquire(L);
            L->next_k++;
            L->slot_off = L->skip;
            L->skip = 0;
        }
        size_t m = L->slot->n - L->slot_off;
        if (m > n - got)
            m = n - got;
        /* Widen while copying: one pass over the tokens, on this thread. */
        shard_widen(L->slot->raw + L->slot_off * L->ix.width, L->ix.width, m, dst + got);
        L->slot_off += m;
        got += m;
    }
    return got;
}

/* Position the consumer at (epoch, step) and restart the producer there. */
static void position(loader *L, uint64_t epoch, uint64_t step)
{
    stop_producer(L);
    plan_epoch(&L->ix, &L->cfg, epoch, &L->plan);
    uint64_t pos = step * L->cfg.batch * L->cfg.seq;
    size_t k = 0;
    while (k + 1 < L->plan.need && L->plan.mine_start[k + 1] <= pos)
        k++;
    L->step = step;
    L->next_k = k;
    L->skip = L->plan.need ? pos - L->plan.mine_start[k] : 0;
    if (pos >= L->plan.len) {
        /* Past this rank's data (padding steps): nothing left to read. */
        k = L->next_k = L->plan.need;
        L->skip = 0;
    }
    L->have_last = false;
    L->slot = NULL;
    start_producer(L, epoch, k);
}

loader *loader_open(const char *dir, const loader_config *cfg)
{
    if (cfg->batch == 0 || cfg->seq == 0 || cfg->world == 0 || cfg->rank >= cfg->world)
        upc_fail(EX_USAGE, "loader: need batch > 0, seq > 0 and rank < world (got %zu, %zu, %u/%u)",
                 cfg->batch, cfg->seq, cfg->rank, cfg->world);
    loader *L = upc_calloc(1, sizeof *L);
    shard_index_open(&L->ix, dir);
    L->cfg = *cfg;
    if (L->cfg.ring == 0)
        L->cfg.ring = 8;
    if (L->cfg.ring < 2)
        L->cfg.ring = 2;
    L->nthreads = L->cfg.threads ? L->cfg.threads : 2;
    if (L->nthreads > L->cfg.ring)
        L->nthreads = L->cfg.ring;
    L->threads = upc_calloc(L->nthreads, sizeof *L->threads);
    pthread_mutex_init(&L->mu, NULL);
    pthread_cond_init(&L->not_full, NULL);
    pthread_cond_init(&L->not_empty, NULL);
    L->ring = upc_calloc(L->cfg.ring, sizeof *L->ring);
    for (size_t i = 0; i < L->cfg.ring; i++)
        L->ring[i].raw = upc_malloc(L->ix.chunk_tokens * L->ix.width);
    size_t w = cfg->seq + 1;
    L->batch.tokens = upc_malloc(cfg->batch * w * sizeof *L->batch.tokens);
    L->batch.valid = upc_malloc(cfg->batch * sizeof *L->batch.valid);
    if (loader_steps(L, 0) == 0)
        upc_fail(EX_DATAERR, "%s: %llu tokens in %zu chunks are too few for %zu windows of %zu tokens on %u ranks",
                 dir, (unsigned long long)L->ix.ntokens, L->ix.nchunks, cfg->batch, cfg->seq + 1, cfg->world);
    position(L, 0, 0);
    return L;
}

void loader_close(loader *L)
{
    if (!L)
        return;
    stop_producer(L);
    for (size_t i = 0; i < L->cfg.ring; i++)
        free(L->ring[i].raw);
    free(L->ring);
    free(L->threads);
    plan_free(&L->prod_plan);
    plan_free(&L->plan);
    pthread_mutex_destroy(&L->mu);
    pthread_cond_destroy(&L->not_full);
    pthread_cond_destroy(&L->not_empty);
    free(L->batch.tokens);
    free(L->batch.valid);
    shard_index_close(&L->ix);
    free(L);
}

size_t loader_batch_windows(const loader_batch *b, size_t T, size_t first, size_t n, int32_t *ids,
                            int32_t *targets)
{
    size_t count = 0;
    for (size_t w = 0; w < n; w++) {
        const uint32_t *tok = b->tokens + (first + w) * (T + 1);
        uint32_t valid = b->valid[first + w];
        for (size_t t = 0; t < T; t++) {
            ids[w * T + t] = (int32_t)tok[t];
            bool target = t + 1 < valid;
            targets[w * T + t] = target ? (int32_t)tok[t + 1] : -1;
            count += target;
        }
    }
    return count;
}

const shard_index *loader_index(const loader *L)
{
    return &L->ix;
}

uint64_t loader_steps(const loader *L, uint64_t epoch)
{
    epoch_plan p = {0};
    plan_epoch(&L->ix, &L->cfg, epoch, &p);
    uint64_t s = p.steps;
    plan_free(&p);
    return s;
}

const loader_batch *loader_next(loader *L)
{
    /* Move past finished (or, in tiny splits, empty) epochs. */
    for (int guard = 0; L->step >= L->plan.steps; guard++) {
        if (guard == 1000)
            upc_fail(EX_DATAERR, "%s: no steps in 1000 epochs", L->ix.dir);
        while (L->next_k < L->plan.need) {   /* chunks read ahead but unused */
            release(L);
            L->slot = acquire(L);
            L->next_k++;
        }
        release(L);
        plan_epoch(&L->ix, &L->cfg, L->plan.epoch + 1, &L->plan);
        L->step = 0;
        L->next_k = 0;
        L->skip = 0;
        L->have_last = false;
    }
    size_t T = L->cfg.seq, w = T + 1;
    uint32_t eos = (uint32_t)L->ix.h.eos_id;
    for (size_t b = 0; b < L->cfg.batch; b++) {
        uint32_t *win = L->batch.tokens + b * w;
        size_t have = 0;
        if (L->have_last) {
            win[0] = L->last;
            have = 1;
        }
        have += take(L, win + have, w - have);
        if (have > 0) {
            L->last = win[have - 1];
            L->have_last = true;
        }
        /* A lone carried token predicts nothing: the window is padding. */
        size_t valid = have >= 2 ? have : 0;
        for (size_t i = valid; i < w; i++)
            win[i] = eos;
        L->batch.valid[b] = (uint32_t)valid;
    }
    L->batch.epoch = L->plan.epoch;
    L->batch.step = L->step++;
    return &L->batch;
}

loader_cursor loader_tell(const loader *L)
{
    loader_cursor c = {L->plan.epoch, L->step};
    return c;
}

void loader_seek(loader *L, loader_cursor c)
{
    uint64_t steps = loader_steps(L, c.epoch);
    if (c.step > steps)
        upc_fail(EX_DATAERR, "loader: cursor step %llu is past the %llu steps of epoch %llu",
                 (unsigned long long)c.step, (unsigned long long)steps, (unsigned long long)c.epoch);
    position(L, c.epoch, c.step);
}

static int sbuf_write(void *data, const char *buf, size_t len)
{
    return msgpack_sbuffer_write((msgpack_sbuffer *)data, buf, len);
}

size_t loader_cursor_save(const loader *L, unsigned char **out)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, sbuf_write);
    loader_cursor c = loader_tell(L);
    msgpack_pack_map(&pk, 13);
    mpk_pack_key_str(&pk, "format", LOADER_CURSOR_FORMAT);
    mpk_pack_key_uint(&pk, "version", LOADER_CURSOR_VERSION);
    mpk_pack_key_uint(&pk, "epoch", c.epoch);
    mpk_pack_key_uint(&pk, "step", c.step);
    mpk_pack_key_uint(&pk, "seed", L->cfg.seed);
    mpk_pack_key_uint(&pk, "batch", L->cfg.batch);
    mpk_pack_key_uint(&pk, "seq", L->cfg.seq);
    mpk_pack_key_uint(&pk, "rank", L->cfg.rank);
    mpk_pack_key_uint(&pk, "world", L->cfg.world);
    mpk_pack_key_uint(&pk, "pad_tail", L->cfg.pad_tail);
    mpk_pack_key_uint(&pk, "chunks", L->ix.nchunks);
    mpk_pack_key_uint(&pk, "tokens", L->ix.ntokens);
    mpk_pack_key_str(&pk, "tokenizer", L->ix.h.tokenizer);
    *out = upc_malloc(sb.size);
    memcpy(*out, sb.data, sb.size);
    size_t n = sb.size;
    msgpack_sbuffer_destroy(&sb);
    return n;
}

void loader_cursor_load(loader *L, const void *buf, size_t n)
{
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    if (msgpack_unpack_next(&up, buf, n, &off) != MSGPACK_UNPACK_SUCCESS || off != n)
        upc_fail(EX_DATAERR, "loader cursor: invalid msgpack");
    const msgpack_object *o = &up.data;
    const char *s;
    uint32_t sl;
    uint64_t v[11];
    static const char *keys[11] = {"version", "epoch", "step", "seed", "batch", "seq",
                                   "rank", "world", "pad_tail", "chunks", "tokens"};
    if (!mpk_get_str(o, "format", &s, &sl) || sl != strlen(LOADER_CURSOR_FORMAT) ||
        memcmp(s, LOADER_CURSOR_FORMAT, sl))
        upc_fail(EX_DATAERR, "loader cursor: expected format \"%s\"", LOADER_CURSOR_FORMAT);
    for (int i = 0; i < 11; i++)
        if (!mpk_get_uint(o, keys[i], &v[i]))
            upc_fail(EX_DATAERR, "loader cursor: missing %s", keys[i]);
    if (v[0] != LOADER_CURSOR_VERSION)
        upc_fail(EX_DATAERR, "loader cursor: unsupported version %llu", (unsigned long long)v[0]);
    uint64_t want[11] = {v[0], v[1], v[2], L->cfg.seed, L->cfg.batch, L->cfg.seq, L->cfg.rank,
                         L->cfg.world, L->cfg.pad_tail, L->ix.nchunks, L->ix.ntokens};
    for (int i = 3; i < 11; i++)
        if (v[i] != want[i])
            upc_fail(EX_DATAERR, "loader cursor: made with %s %llu, this loader has %llu", keys[i],
                     (unsigned long long)v[i], (unsigned long long)want[i]);
    msgpack_unpacked_destroy(&up);
    loader_cursor c = {v[1], v[2]};
    loader_seek(L, c);
}
