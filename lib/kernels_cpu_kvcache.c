/* kernels_cpu_kvcache.c: the paged KV cache on the CPU: writing a step's
 * keys and values into their slots, and attention of the query rows over
 * their sequences' cached positions. A run of rows of one sequence at
 * consecutive positions (a prefill chunk) gathers that sequence's keys and
 * values and runs as SGEMM blocks, like training attention; other rows
 * (decode tokens) each take an exact two-pass softmax over their
 * positions, parallel over rows and heads. Which path a row takes depends
 * only on the step's rows, never on the block size, so a paged cache gives
 * the bits of a contiguous one. */
#include "kernels_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void cpu_kv_cache_write(const upc_kernels *K, const float *k, const float *v, const int32_t *slots,
                        int rows, int Hkv, int hd, float *kcache, float *vcache)
{
    CPU_REQUIRE(rows >= 0 && Hkv > 0 && hd > 0, "kv_cache_write", "bad size");
    size_t w = (size_t)Hkv * hd;
#pragma omp parallel for schedule(static) if ((size_t)rows * w >= CPU_PARALLEL_MIN)
    for (int r = 0; r < rows; r++) {
        memcpy(kcache + (size_t)slots[r] * w, k + (size_t)r * w, w * sizeof(float));
        memcpy(vcache + (size_t)slots[r] * w, v + (size_t)r * w, w * sizeof(float));
    }
}

enum { RUN_MIN = 8 };   /* rows from which a run goes through SGEMM */

/* Gather positions 0..n-1 of a sequence's keys (or values) into dst [n][w]. */
static void gather_positions(const float *cache, const int32_t *table, int block_size, int n, size_t w, float *dst)
{
#pragma omp parallel for schedule(static) if ((size_t)n * w >= CPU_PARALLEL_MIN)
    for (int p = 0; p < n; p++) {
        size_t slot = (size_t)table[p / block_size] * block_size + (size_t)(p % block_size);
        memcpy(dst + (size_t)p * w, cache + slot * w, w * sizeof(float));
    }
}

/* The rows of a run: [r0, r1) of sequence `table` at positions pos0.. */
static void run_attention(const float *q, const float *kcache, const float *vcache, const int32_t *table,
                          int block_size, int pos0, int r0, int r1, int Hq, int Hkv, int hd, float *out,
                          float *kbuf, float *vbuf, float *S)
{
    const size_t w = (size_t)Hkv * hd, qs = (size_t)Hq * hd;
    const int group = Hq / Hkv, rows = r1 - r0;
    gather_positions(kcache, table, block_size, pos0 + rows, w, kbuf);
    gather_positions(vcache, table, block_size, pos0 + rows, w, vbuf);
    for (int h = 0; h < Hq; h++) {
        size_t head = (size_t)(h / group) * hd;
        cpu_attention_causal_head(q + (size_t)r0 * qs + (size_t)h * hd, qs, kbuf + head, vbuf + head, w, pos0, rows,
                                  hd, 1.0f / sqrtf((float)hd), out + (size_t)r0 * qs + (size_t)h * hd, NULL, S);
    }
}

/* Where the run starting at row r ends: rows of one sequence at
 * consecutive positions. */
static int run_end(const int32_t *row_seq, const int32_t *row_pos, int rows, int r)
{
    int e = r + 1;
    while (e < rows && row_seq[e] == row_seq[r] && row_pos[e] == row_pos[e - 1] + 1)
        e++;
    return e;
}

void cpu_paged_attention(const upc_kernels *K, const float *q, const float *kcache,
                         const float *vcache, const int32_t *block_table, int max_blocks,
                         int block_size, const int32_t *row_seq, const int32_t *row_pos, int rows,
                         int Hq, int Hkv, int hd, float *out)
{
    CPU_REQUIRE(rows >= 0 && Hq > 0 && Hkv > 0 && hd > 0 && Hq % Hkv == 0 && block_size > 0, "paged_attention",
                "bad size");
    const int group = Hq / Hkv;
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t w = (size_t)Hkv * hd;
    int longest = 0;
    for (int r = 0; r < rows; r++) {
        CPU_REQUIRE(row_pos[r] >= 0 && row_pos[r] / block_size < max_blocks, "paged_attention",
                    "position past the block table");
        longest = row_pos[r] + 1 > longest ? row_pos[r] + 1 : longest;
    }
    /* runs through SGEMM; the rest listed for the row-wise loop */
    int32_t *single = upc_malloc(((size_t)rows + 1) * sizeof *single);
    int n_single = 0;
    size_t single_work = 0;   /* cached positions the row-wise loop reads, times heads */
    float *kbuf = NULL, *vbuf = NULL, *S = NULL;
    for (int r = 0; r < rows;) {
        int e = run_end(row_seq, row_pos, rows, r);
        if (e - r < RUN_MIN) {
            while (r < e) {
                single_work += (size_t)(row_pos[r] + 1) * Hq * hd;
                single[n_single++] = r++;
            }
            continue;
        }
        if (!kbuf) {
            kbuf = upc_malloc((size_t)longest * w * sizeof(float));
            vbuf = upc_malloc((size_t)longest * w * sizeof(float));
            S = upc_malloc((size_t)CPU_ATTENTION_ROWS * longest * sizeof(float));
        }
        run_attention(q, kcache, vcache, block_table + (size_t)row_seq[r] * max_blocks, block_size, row_pos[r], r, e,
                      Hq, Hkv, hd, out, kbuf, vbuf, S);
        r = e;
    }
    free(kbuf), free(vbuf), free(S);
#pragma omp parallel if (single_work >= CPU_PARALLEL_MIN)
    {
        float *s = upc_malloc(((size_t)longest + 1) * sizeof(float));
        float *acc = upc_malloc((size_t)hd * sizeof(float));
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int si = 0; si < n_single; si++)
            for (int h = 0; h < Hq; h++) {
                const int r = single[si];
                const int32_t *table = block_table + (size_t)row_seq[r] * max_blocks;
                const float *qr = q + ((size_t)r * Hq + h) * hd;
                const size_t head = (size_t)(h / group) * hd;
                int n = row_pos[r] + 1;
                float m = -INFINITY;
                for (int p = 0; p < n; p++) {
                    size_t slot = (size_t)table[p / block_size] * block_size + (size_t)(p % block_size);
                    const float *kp = kcache + slot * w + head;
                    float d = 0.0f;
                    for (int i = 0; i < hd; i++)
                        d += qr[i] * kp[i];
                    s[p] = d * scale;
                    m = s[p] > m ? s[p] : m;
                }
                double l = 0.0;
                memset(acc, 0, (size_t)hd * sizeof(float));
                for (int p = 0; p < n; p++) {
                    size_t slot = (size_t)table[p / block_size] * block_size + (size_t)(p % block_size);
                    const float *vp = vcache + slot * w + head;
                    float e = expf(s[p] - m);
                    l += e;
                    for (int i = 0; i < hd; i++)
                        acc[i] += e * vp[i];
                }
                float inv = (float)(1.0 / l), *o = out + ((size_t)r * Hq + h) * hd;
                for (int i = 0; i < hd; i++)
                    o[i] = acc[i] * inv;
            }
        free(acc);
        free(s);
    }
    free(single);
}
