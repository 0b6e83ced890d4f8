/* test_loader: checks of lib/loader against a shard split directory.
 *   test_loader check DIR   coverage, lockstep, determinism, cursors (TAP-ish)
 *   test_loader read DIR    read one epoch (world 1), for corrupt-input tests
 *   test_loader cursor DIR  load a cursor made with another seed (must fail) */
#include "loader.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

static int failures, checks;

static void check(bool ok, const char *what)
{
    checks++;
    printf("%s %d - %s\n", ok ? "ok" : "not ok", checks, what);
    if (!ok)
        failures++;
}

/* Token counts of the whole split, read directly from the chunks. */
static uint64_t *split_counts(const shard_index *ix)
{
    uint64_t *cnt = upc_calloc(ix->h.vocab_size, sizeof *cnt);
    shard_decoder d;
    shard_decoder_init(&d);
    uint32_t *buf = upc_malloc(ix->chunk_tokens * sizeof *buf);
    char err[512];
    for (size_t c = 0; c < ix->nchunks; c++) {
        if (!shard_read_chunk(ix, &d, c, buf, err, sizeof err))
            upc_fail(EX_DATAERR, "%s", err);
        for (size_t i = 0; i < ix->chunks[c].tokens; i++)
            cnt[buf[i]]++;
    }
    free(buf);
    shard_decoder_free(&d);
    return cnt;
}

/* Read one epoch on every rank; add each token seen to cnt (the first token
 * of a rank's stream once, every other token as a target). Returns false if
 * a rule is broken (continuity, lockstep, full windows in drop mode). */
static bool epoch_counts(const char *dir, loader_config cfg, uint64_t epoch, uint64_t *cnt, uint64_t *seen)
{
    bool ok = true;
    uint64_t steps0 = 0;
    *seen = 0;
    for (uint32_t r = 0; r < cfg.world; r++) {
        cfg.rank = r;
        loader *L = loader_open(dir, &cfg);
        loader_cursor c = {epoch, 0};
        loader_seek(L, c);
        uint64_t steps = loader_steps(L, epoch);
        if (r == 0)
            steps0 = steps;
        ok &= steps == steps0;
        bool first = true;
        uint32_t prev_last = 0;
        size_t w = cfg.seq + 1;
        for (uint64_t s = 0; s < steps; s++) {
            const loader_batch *b = loader_next(L);
            ok &= b->epoch == epoch && b->step == s;
            for (size_t k = 0; k < cfg.batch; k++) {
                const uint32_t *win = b->tokens + k * w;
                uint32_t v = b->valid[k];
                if (!cfg.pad_tail)
                    ok &= v == w;
                if (v == 0)
                    continue;
                if (!first)
                    ok &= win[0] == prev_last;
                for (uint32_t i = first ? 0 : 1; i < v; i++) {
                    cnt[win[i]]++;
                    (*seen)++;
                }
                first = false;
                prev_last = win[v - 1];
            }
        }
        /* The next batch starts the next epoch. */
        ok &= loader_next(L)->epoch == epoch + 1;
        loader_close(L);
    }
    return ok;
}

/* A digest of `steps` batches from the loader's current position. */
static uint64_t digest(loader *L, const loader_config *cfg, uint64_t steps)
{
    uint64_t h = 0;
    size_t w = cfg->seq + 1;
    for (uint64_t s = 0; s < steps; s++) {
        const loader_batch *b = loader_next(L);
        uint64_t pos[2] = {b->epoch, b->step};
        h = XXH64(pos, sizeof pos, h);
        h = XXH64(b->tokens, cfg->batch * w * sizeof *b->tokens, h);
        h = XXH64(b->valid, cfg->batch * sizeof *b->valid, h);
    }
    return h;
}

static int cmd_check(const char *dir)
{
    shard_index ix;
    shard_index_open(&ix, dir);
    uint64_t V = ix.h.vocab_size;
    uint64_t *want = split_counts(&ix);
    uint64_t *got = upc_calloc(V, sizeof *got);
    printf("# %s: %llu tokens in %zu chunks of %llu\n", dir, (unsigned long long)ix.ntokens, ix.nchunks,
           (unsigned long long)ix.chunk_tokens);

    /* Window shapes: shorter than a chunk, longer than a chunk. */
    size_t shapes[][2] = {{4, 37}, {3, 5 * ix.chunk_tokens / 2 + 3}, {1, 1}};
    uint64_t seen;
    char what[256];
    for (size_t sh = 0; sh < sizeof shapes / sizeof *shapes; sh++) {
        for (uint32_t world = 1; world <= 3; world++) {
            for (uint64_t epoch = 0; epoch < 2; epoch++) {
                loader_config cfg = {.batch = shapes[sh][0], .seq = shapes[sh][1], .seed = 7,
                                     .world = world, .pad_tail = true, .ring = 3};
                memset(got, 0, V * sizeof *got);
                bool rules = epoch_counts(dir, cfg, epoch, got, &seen);
                snprintf(what, sizeof what, "pad: B=%zu T=%zu world=%u epoch %llu: continuity and lockstep",
                         cfg.batch, cfg.seq, world, (unsigned long long)epoch);
                check(rules, what);
                snprintf(what, sizeof what, "pad: B=%zu T=%zu world=%u epoch %llu: every token exactly once",
                         cfg.batch, cfg.seq, world, (unsigned long long)epoch);
                check(memcmp(got, want, V * sizeof *got) == 0 && seen == ix.ntokens, what);
            }
        }
    }

    /* Drop mode: only full windows, no token twice, little left out. */
    for (uint32_t world = 1; world <= 3; world++) {
        loader_config cfg = {.batch = 4, .seq = 37, .seed = 9, .world = world};
        memset(got, 0, V * sizeof *got);
        bool rules = epoch_counts(dir, cfg, 1, got, &seen);
        bool never_more = true;
        for (uint64_t i = 0; i < V; i++)
            never_more &= got[i] <= want[i];
        snprintf(what, sizeof what, "drop: world=%u: full windows, continuity, lockstep", world);
        check(rules, what);
        snprintf(what, sizeof what, "drop: world=%u: no token twice, fewer than world*(chunk+B*T) left out", world);
        check(never_more && ix.ntokens - seen < world * (ix.chunk_tokens + cfg.batch * cfg.seq), what);
    }

    /* world=1 against world=2: the same tokens in all. */
    {
        loader_config c1 = {.batch = 2, .seq = 64, .seed = 3, .world = 1, .pad_tail = true};
        loader_config c2 = c1;
        c2.world = 2;
        uint64_t *g2 = upc_calloc(V, sizeof *g2);
        memset(got, 0, V * sizeof *got);
        epoch_counts(dir, c1, 0, got, &seen);
        epoch_counts(dir, c2, 0, g2, &seen);
        check(memcmp(got, g2, V * sizeof *got) == 0, "world=1 and world=2 see the same tokens");
        free(g2);
    }

    /* Determinism by seed; different seeds differ. */
    loader_config cfg = {.batch = 3, .seq = 50, .seed = 11, .world = 2, .rank = 1, .pad_tail = true};
    uint64_t steps0 = 0;
    {
        loader *a = loader_open(dir, &cfg), *b = loader_open(dir, &cfg);
        steps0 = loader_steps(a, 0);
        uint64_t n = steps0 * 3 / 2 + 1;
        check(digest(a, &cfg, n) == digest(b, &cfg, n), "same seed, same batches (1.5 epochs)");
        loader_close(a);
        loader_close(b);
        loader_config other = cfg;
        other.seed = 12;
        a = loader_open(dir, &cfg);
        b = loader_open(dir, &other);
        check(ix.nchunks < 3 || digest(a, &cfg, steps0) != digest(b, &other, steps0), "different seeds differ");
        loader_close(a);
        loader_close(b);
    }

    /* Save a cursor mid-epoch (and across an epoch end) and resume. */
    uint64_t at[] = {steps0 / 2, steps0 - 1, steps0, steps0 + 1};
    for (size_t i = 0; i < sizeof at / sizeof *at; i++) {
        loader *a = loader_open(dir, &cfg);
        digest(a, &cfg, at[i]);
        unsigned char *buf;
        size_t n = loader_cursor_save(a, &buf);
        uint64_t cont = digest(a, &cfg, steps0 + 2);
        loader *b = loader_open(dir, &cfg);
        digest(b, &cfg, 1);                 /* somewhere else first */
        loader_cursor_load(b, buf, n);
        snprintf(what, sizeof what, "cursor saved after %llu steps: identical continuation",
                 (unsigned long long)at[i]);
        check(digest(b, &cfg, steps0 + 2) == cont, what);
        /* The same by seek on a loader that already ran past it. */
        loader_cursor_load(a, buf, n);
        snprintf(what, sizeof what, "cursor after %llu steps: seeking back repeats it", (unsigned long long)at[i]);
        check(digest(a, &cfg, steps0 + 2) == cont, what);
        free(buf);
        loader_close(a);
        loader_close(b);
    }

    free(want);
    free(got);
    shard_index_close(&ix);
    printf("# %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    upc_init("test_loader");
    if (argc != 3)
        upc_fail(EX_USAGE, "usage: test_loader check|read|cursor SPLITDIR");
    const char *dir = argv[2];
    if (strcmp(argv[1], "check") == 0)
        return cmd_check(dir);
    if (strcmp(argv[1], "read") == 0) {
        loader_config cfg = {.batch = 2, .seq = 16, .seed = 1, .world = 1, .pad_tail = true};
        loader *L = loader_open(dir, &cfg);
        uint64_t steps = loader_steps(L, 0), n = 0;
        for (uint64_t s = 0; s < steps; s++) {
            const loader_batch *b = loader_next(L);
            for (size_t k = 0; k < cfg.batch; k++)
                n += b->valid[k];
        }
        printf("read %llu steps, %llu window tokens\n", (unsigned long long)steps, (unsigned long long)n);
        loader_close(L);
        return 0;
    }
    if (strcmp(argv[1], "cursor") == 0) {
        loader_config cfg = {.batch = 2, .seq = 16, .seed = 1, .world = 1};
        loader *L = loader_open(dir, &cfg);
        unsigned char *buf;
        size_t n = loader_cursor_save(L, &buf);
        loader_close(L);
        cfg.seed = 2;
        L = loader_open(dir, &cfg);
        loader_cursor_load(L, buf, n);
        free(buf);
        loader_close(L);
        return 0;
    }
    upc_fail(EX_USAGE, "unknown command '%s'", argv[1]);
}
