/* tokenize-harness.c: time bpe_encode on a text file, for bench/tokenize.
 * Usage: tokenize-harness TOKENIZER TEXT THREADS RUNS
 * The text is cut into ~64 KB chunks at line ends (documents), encoded by
 * THREADS threads with a scratch each; prints one line per run and the
 * median: "median_mb_s X tokens N". */
#include "bench.h"
#include "bpe.h"
#include "util.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv)
{
    upc_init("tokenize-harness");
    if (argc != 5)
        upc_fail(EX_USAGE, "usage: tokenize-harness TOKENIZER TEXT THREADS RUNS");
    char err[512];
    bpe_tokenizer *t = bpe_load(argv[1], err, sizeof err);
    if (!t)
        upc_fail(EX_DATAERR, "%s", err);
    upc_mapped m;
    upc_map_file(&m, argv[2]);
    int threads = (int)upc_parse_int("THREADS", argv[3], 1, 256);
    int runs = (int)upc_parse_int("RUNS", argv[4], 1, 100);

    size_t n_chunks = 0, cap = 0, *starts = NULL;
    for (size_t pos = 0; pos < m.len;) {
        upc_grow((void **)&starts, &cap, n_chunks + 2, sizeof *starts);
        starts[n_chunks++] = pos;
        size_t end = pos + 65536 < m.len ? pos + 65536 : m.len;
        const char *nl = end < m.len ? memchr(m.data + end, '\n', m.len - end) : NULL;
        pos = nl ? (size_t)(nl - m.data) + 1 : m.len;
    }
    starts[n_chunks] = m.len;

    double *mbs = upc_calloc((size_t)runs, sizeof *mbs);
    size_t total_tokens = 0;
    for (int r = 0; r < runs; r++) {
        size_t tokens = 0;
        double t0 = upc_now();
#pragma omp parallel num_threads(threads) reduction(+ : tokens)
        {
            bpe_scratch *s = bpe_scratch_new(t);
            uint32_t *ids = NULL;
            size_t n, idcap = 0;
#pragma omp for schedule(dynamic, 4)
            for (size_t c = 0; c < n_chunks; c++) {
                n = 0;
                bpe_encode(t, s, m.data + starts[c], starts[c + 1] - starts[c], false, &ids, &n, &idcap);
                tokens += n;
            }
            free(ids);
            bpe_scratch_free(s);
        }
        double dt = upc_now() - t0;
        mbs[r] = (double)m.len / 1e6 / dt;
        total_tokens = tokens;
        fprintf(stderr, "run %d: %.3f s, %.2f MB/s, %zu tokens\n", r + 1, dt, mbs[r], tokens);
    }
    qsort(mbs, (size_t)runs, sizeof *mbs, cmp_double);
    printf("median_mb_s %.2f tokens %zu\n", mbs[runs / 2], total_tokens);
    free(mbs);
    free(starts);
    upc_unmap(&m);
    bpe_free(t);
    return 0;
}
