/* kernels_cpu_kvcache.c: the paged KV cache on the CPU: writing a step's
 * keys and values into their slots, and attention of each query row over
 * its sequence's cached positions (exact softmax in two passes over the
 * positions, parallel over rows and heads). */
#include "kernels_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void cpu_kv_cache_write(const upc_kernels *K, const float *k, const float *v, const int32_t *slots,
                        int rows, int Hkv, int hd, float *kcache, float *vcache)
{
    CPU_REQUIRE(rows >= 0 && Hkv > 0 && hd > 0, "kv_cache_write", "bad size");
    size_t w = (size_t)Hkv * hd;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        memcpy(kcache + (size_t)slots[r] * w, k + (size_t)r * w, w * sizeof(float));
        memcpy(vcache + (size_t)slots[r] * w, v + (size_t)r * w, w * sizeof(float));
    }
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
#pragma omp parallel
    {
        float *s = upc_malloc(((size_t)longest + 1) * sizeof(float));
        float *acc = upc_malloc((size_t)hd * sizeof(float));
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int r = 0; r < rows; r++)
            for (int h = 0; h < Hq; h++) {
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
}
