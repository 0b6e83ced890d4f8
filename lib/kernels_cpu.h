/* kernels_cpu.h: the CPU backend's pieces, one file per concern
 * (kernels_cpu_*.c), gathered into one table by kernels_cpu.c. Internal to
 * the backend: the model uses lib/kernels.h. */
#ifndef UPCYC_KERNELS_CPU_H
#define UPCYC_KERNELS_CPU_H

#include "kernels.h"
#include "util.h"

/* Fail the tool when a kernel is called with arguments no model should pass. */
#define CPU_REQUIRE(cond, kernel, what)                                          \
    do {                                                                         \
        if (!(cond))                                                             \
            upc_fail(EX_SOFTWARE, "kernels(cpu): %s: %s", (kernel), (what));     \
    } while (0)

/* Work (elements touched) below which a loop runs on the calling thread:
 * waking the OpenMP team costs more than it saves there, and decoding a
 * token runs dozens of such small kernels. */
#define CPU_PARALLEL_MIN ((size_t)1 << 15)

/* kernels_cpu_expf.c: x[i] = expf(x[i]), vectorised; an element's result
 * depends only on its value (not its position or n). */
void cpu_expf_inplace(float *x, size_t n);
/* Elements an exponential loop stages at a time (on the stack). */
enum { CPU_EXP_CHUNK = 256 };

/* kernels_cpu_gemm.c */
void cpu_bf16_weights(const upc_kernels *K, const float *w, size_t n);
void cpu_gemm(const upc_kernels *K, int trans_a, int trans_b, int m, int n, int k,
              float alpha, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc);
void cpu_gemm_strided_batched(const upc_kernels *K, int trans_a, int trans_b,
                              int m, int n, int k, float alpha,
                              const float *A, int lda, long long stride_a,
                              const float *B, int ldb, long long stride_b,
                              float beta, float *C, int ldc, long long stride_c,
                              int batch);
void cpu_grouped_gemm_fwd(const upc_kernels *K, int E, const int32_t *offs, int n,
                          int k, const float *X, const float *W, float beta, float *Y);
void cpu_grouped_gemm_dx(const upc_kernels *K, int E, const int32_t *offs, int n,
                         int k, const float *dY, const float *W, float beta, float *dX);
void cpu_grouped_gemm_dw(const upc_kernels *K, int E, const int32_t *offs, int n,
                         int k, const float *dY, const float *X, float beta, float *dW);

/* kernels_cpu_layers.c: embedding, RMSNorm, RoPE, SwiGLU */
void cpu_embedding_fwd(const upc_kernels *K, const int32_t *ids, int rows,
                       const float *table, int V, int d, float *out);
void cpu_embedding_bwd(const upc_kernels *K, const int32_t *ids, int rows,
                       const float *dout, int V, int d, float *dtable);
void cpu_rmsnorm_fwd(const upc_kernels *K, const float *x, const float *w, float *y,
                     float *rstd, int rows, int d, float eps);
void cpu_rmsnorm_bwd(const upc_kernels *K, const float *dy, const float *x,
                     const float *w, const float *rstd, float *dx, float *dw,
                     int rows, int d);
void cpu_rope_fwd(const upc_kernels *K, const float *x, float *y, int B, int T, int H,
                  int hd, int pos0, const int32_t *pos, float theta);
void cpu_rope_bwd(const upc_kernels *K, const float *dy, float *dx, int B, int T,
                  int H, int hd, int pos0, const int32_t *pos, float theta);
void cpu_swiglu_fwd(const upc_kernels *K, const float *gate, const float *up,
                    float *out, size_t n);
void cpu_jitter_scale(const upc_kernels *K, float *x, size_t n, float eps, uint64_t key);
void cpu_swiglu_bwd(const upc_kernels *K, const float *gate, const float *up,
                    const float *dout, float *dgate, float *dup, size_t n);

/* kernels_cpu_kvcache.c */
void cpu_kv_cache_write(const upc_kernels *K, const float *k, const float *v, const int32_t *slots,
                        int rows, int Hkv, int hd, float *kcache, float *vcache);
void cpu_paged_attention(const upc_kernels *K, const float *q, const float *kcache,
                         const float *vcache, const int32_t *block_table, int max_blocks,
                         int block_size, const int32_t *row_seq, const int32_t *row_pos, int rows,
                         int Hq, int Hkv, int hd, float *out);
/* kernels_cpu_attention.c */
enum { CPU_ATTENTION_ROWS = 128 };   /* query rows per SGEMM block */
/* One query head's causal attention as SGEMM blocks: query rows i < rows
 * (stride qs) at positions pos0 + i attend keys and values 0..pos0 + i
 * (stride ks); out rows (stride qs) and, when lse is not NULL, the
 * logsumexp of each row's scaled scores. S: scratch of CPU_ATTENTION_ROWS
 * * (pos0 + rows) floats. Shared by attention_fwd and the prefill runs of
 * paged_attention. */
void cpu_attention_causal_head(const float *q, size_t qs, const float *k, const float *v, size_t ks, int pos0,
                               int rows, int hd, float scale, float *out, float *lse, float *S);
void cpu_attention_fwd(const upc_kernels *K, const float *q, const float *k,
                       const float *v, float *out, float *lse, int B, int T,
                       int Hq, int Hkv, int hd);
void cpu_attention_bwd(const upc_kernels *K, const float *q, const float *k,
                       const float *v, const float *out, const float *lse,
                       const float *dout, float *dq, float *dk, float *dv,
                       int B, int T, int Hq, int Hkv, int hd);
void cpu_attn_softmax_fwd(const upc_kernels *K, float *S, float *lse, int n, int T);
void cpu_attn_softmax_bwd(const upc_kernels *K, const float *P, float *dP, int n, int T, float scale);

/* kernels_cpu_loss.c */
void cpu_cross_entropy_fwd(const upc_kernels *K, const float *logits,
                           const int32_t *targets, float *loss, float *lse,
                           int rows, int V);
void cpu_cross_entropy_bwd(const upc_kernels *K, const float *logits,
                           const int32_t *targets, const float *lse,
                           float *dlogits, int rows, int V, float scale);

/* kernels_cpu_moe.c */
void cpu_router_fwd(const upc_kernels *K, const float *logits, float *probs,
                    int32_t *topk_idx, float *topk_w, int N, int E, int kk, int renorm);
void cpu_router_bwd(const upc_kernels *K, const float *probs, const int32_t *topk_idx,
                    const float *topk_w, const float *dtopk_w, float *dlogits,
                    int N, int E, int kk, int renorm);
void cpu_moe_dispatch(const upc_kernels *K, const int32_t *topk_idx, int N, int kk,
                      int E, int32_t *counts, int32_t *offs, int32_t *perm,
                      int32_t *pos);
void cpu_moe_gather(const upc_kernels *K, const float *X, const int32_t *perm, int N,
                    int kk, int d, float *Xs);
void cpu_moe_gather_bwd(const upc_kernels *K, const float *dXs, const int32_t *pos,
                        int N, int kk, int d, float *dX);
void cpu_moe_combine(const upc_kernels *K, const float *Ys, const int32_t *pos,
                     const float *w, int N, int kk, int d, float beta, float *out);
void cpu_moe_combine_bwd(const upc_kernels *K, const float *dout, const float *Ys,
                         const int32_t *pos, const float *w, int N, int kk, int d,
                         float *dYs, float *dw);
void cpu_moe_capacity_drop(const upc_kernels *K, const int32_t *topk_idx,
                           const int32_t *pos, const int32_t *offs, int N, int kk, int E,
                           int capacity, float *x, int32_t *dropped);
void cpu_moe_lb_loss_fwd(const upc_kernels *K, const float *probs,
                         const int32_t *topk_idx, int N, int E, int kk, float alpha,
                         float *loss);
void cpu_moe_lb_loss_bwd(const upc_kernels *K, const float *probs,
                         const int32_t *topk_idx, int N, int E, int kk, float alpha,
                         float scale, float *dlogits);
void cpu_moe_z_loss_fwd(const upc_kernels *K, const float *logits, int N, int E,
                        float coef, float *loss);
void cpu_moe_z_loss_bwd(const upc_kernels *K, const float *logits, int N, int E,
                        float coef, float scale, float *dlogits);

/* kernels_cpu_optim.c: optimizers, reductions, elementwise */
void cpu_adamw_step(const upc_kernels *K, float *param, const float *grad, float *m,
                    float *v, size_t n, upc_optim_params hp);
void cpu_lion_step(const upc_kernels *K, float *param, const float *grad, float *m,
                   size_t n, upc_optim_params hp);
void cpu_sum(const upc_kernels *K, const float *x, size_t n, float *out);
void cpu_sumsq(const upc_kernels *K, const float *x, size_t n, float *out);
void cpu_scale(const upc_kernels *K, float *x, size_t n, float a);
void cpu_axpy(const upc_kernels *K, float *y, const float *x, size_t n, float a);
void cpu_fill(const upc_kernels *K, float *x, size_t n, float value);
void cpu_add(const upc_kernels *K, float *out, const float *a, const float *b, size_t n);

#endif
