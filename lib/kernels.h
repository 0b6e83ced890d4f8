/* kernels.h: every operation the model needs, on "device memory", behind a
 * table of function pointers so the model never knows which backend runs.
 *
 *   const upc_kernels *K = kernels_cpu();       (later: kernels_cuda())
 *   float *x = K->alloc(K, n * sizeof(float));
 *   K->rmsnorm_fwd(K, x, w, y, rstd, rows, d, 1e-5f);
 *
 * Conventions (every backend keeps them):
 * - Buffers are device pointers from K->alloc: float* for values, int32_t* for
 *   token ids, expert indices and offsets. Scalars passed by value live on the
 *   host; scalar *results* (losses, sums) are written to a device float.
 * - Row-major throughout. Shapes are given as [dim0][dim1]...; "rows" is the
 *   flattened batch (B*T tokens).
 * - Activation gradients (dx, dq, dlogits, ...) are OVERWRITTEN unless a
 *   comment says "+="; weight gradients (dw, dtable, grouped dW) ACCUMULATE
 *   (+=), so micro-batches add up and the model zeroes gradients once a step.
 * - Inputs and outputs must not overlap unless a comment allows it.
 * - Determinism: same inputs and thread count give the same bits (no float
 *   atomics, fixed reduction order). The CPU backend is fp32 with fp32 or
 *   wider accumulation; it is the reference the other backends are checked
 *   against.
 * - Bad arguments (negative sizes, k > E, ids out of range) are programming
 *   errors: the backend fails the tool with EX_SOFTWARE naming the kernel. */
#ifndef UPCYC_KERNELS_H
#define UPCYC_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct upc_kernels upc_kernels;

/* AdamW / Lion hyperparameters for one call. bias_correction1/2 are
 * 1 - beta1^t and 1 - beta2^t for the 1-based step t (upc_adamw_params_at
 * fills them); Lion ignores eps and the bias corrections. weight_decay is
 * decoupled (p -= lr*wd*p); pass 0 for tensors that must not decay (norms,
 * biases). Every gradient element is multiplied by grad_scale first (global
 * norm clipping, loss scaling): pass 1 for none. */
typedef struct {
    float lr, beta1, beta2, eps, weight_decay, grad_scale;
    float bias_correction1, bias_correction2;
} upc_optim_params;

/* Fill bias_correction1/2 for step t >= 1 (computed in double). */
void upc_optim_params_at(upc_optim_params *p, long long step);

struct upc_kernels {
    const char *name;           /* "cpu", "cuda" */
    void *ctx;                  /* backend state (handles, streams) */
    /* "fp32", or "bf16": the table's GEMMs (gemm, gemm_strided_batched and
     * the grouped GEMMs) round both operands to bfloat16 (upc_round_bf16)
     * and accumulate in fp32, as tensor cores do; every other kernel, the
     * weights and the optimizer state stay fp32, except CUDA's bf16
     * attention_fwd and attention_bwd, which run on tensor cores too (bf16
     * operands; attention_gemm.h's rounding is their reference). backend.h
     * gives either table of a backend. */
    const char *precision;

    /* ---- memory ---------------------------------------------------------
     * alloc: zero-filled, 64-byte aligned, NULL when out of memory (the
     * caller names what it was allocating). free(NULL) does nothing.
     * upload: host -> device; download: device -> host; copy: device ->
     * device; memset: bytes to value. sync waits for queued work. */
    void *(*alloc)(const upc_kernels *K, size_t bytes);
    void (*free)(const upc_kernels *K, void *p);
    void (*upload)(const upc_kernels *K, void *dst, const void *host_src, size_t bytes);
    void (*download)(const upc_kernels *K, void *host_dst, const void *src, size_t bytes);
    void (*copy)(const upc_kernels *K, void *dst, const void *src, size_t bytes);
    void (*memset)(const upc_kernels *K, void *dst, int value, size_t bytes);
    void (*sync)(const upc_kernels *K);

    /* ---- GEMM -----------------------------------------------------------
     * C[m][n] = alpha * op(A)[m][k] * op(B)[k][n] + beta * C, row-major.
     * op(A) = A (A is [m][lda>=k]) or, with trans_a, A^T (A is [k][lda>=m]);
     * likewise B ([k][ldb>=n] or, with trans_b, [n][ldb>=k]); C is
     * [m][ldc>=n]. beta == 0 overwrites C (whatever it held, NaN included).
     * A linear layer with an HF weight W[out][in]: Y = X W^T is
     * gemm(0, 1, rows, out, in, 1, X, in, W, in, 0, Y, out). */
    void (*gemm)(const upc_kernels *K, int trans_a, int trans_b, int m, int n, int k,
                 float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc);
    /* batch independent GEMMs; matrix i starts at A + i*stride_a etc.
     * (strides in elements). */
    void (*gemm_strided_batched)(const upc_kernels *K, int trans_a, int trans_b,
                                 int m, int n, int k, float alpha,
                                 const float *A, int lda, long long stride_a,
                                 const float *B, int ldb, long long stride_b,
                                 float beta, float *C, int ldc, long long stride_c,
                                 int batch);

    /* ---- bf16 weights ---------------------------------------------------
     * bf16_weights(w, n): the bf16 GEMMs (grouped ones included) may take
     * operands that lie inside w[0..n) from a copy of w rounded now, instead
     * of rounding them again on every call: weights used by many GEMMs are
     * rounded once per change, and decode reads half the bytes on a GPU.
     * The products are of the same rounded values either way (on the CPU the
     * same bits; cuBLAS may pick another algorithm for another alignment or
     * leading dimension, so on a GPU the fp32 sums' order may differ). The
     * caller registers again after anything writes w (model_params_changed
     * does this for a model). One range per backend: a new call replaces
     * the last; n == 0 forgets the range if it starts at w (another range is
     * kept). Tables of precision fp32 ignore it. Fails (EX_OSERR) when the copy does not fit in memory. */
    void (*bf16_weights)(const upc_kernels *K, const float *w, size_t n);

    /* ---- grouped GEMM (dropless MoE experts) ----------------------------
     * Rows sorted by expert: group g owns rows [offs[g], offs[g+1]) of the
     * row operands (offs: E+1 device int32, offs[0] = 0, non-decreasing, from
     * moe_dispatch). Expert weights W: [E][n][k] contiguous (HF layout of
     * each expert's linear, out = n, in = k).
     *   fwd: Y[r][n]  = X[r][k] W_g^T       + beta * Y
     *   dx:  dX[r][k] = dY[r][n] W_g        + beta * dX
     *   dw:  dW_g[n][k] = dY_g^T X_g        + beta * dW_g  (every group,
     *        empty ones included, so beta = 0 zeroes an unused expert) */
    void (*grouped_gemm_fwd)(const upc_kernels *K, int E, const int32_t *offs,
                             int n, int k, const float *X, const float *W,
                             float beta, float *Y);
    void (*grouped_gemm_dx)(const upc_kernels *K, int E, const int32_t *offs,
                            int n, int k, const float *dY, const float *W,
                            float beta, float *dX);
    void (*grouped_gemm_dw)(const upc_kernels *K, int E, const int32_t *offs,
                            int n, int k, const float *dY, const float *X,
                            float beta, float *dW);

    /* ---- embedding ------------------------------------------------------
     * out[i][:] = table[ids[i]][:] for i < rows; table [V][d], ids in [0,V).
     * bwd: dtable[ids[i]] += dout[i], summed in token order. */
    void (*embedding_fwd)(const upc_kernels *K, const int32_t *ids, int rows,
                          const float *table, int V, int d, float *out);
    void (*embedding_bwd)(const upc_kernels *K, const int32_t *ids, int rows,
                          const float *dout, int V, int d, float *dtable);

    /* ---- RMSNorm (HF LlamaRMSNorm, fp32) ---------------------------------
     * y = x * rsqrt(mean(x^2) + eps) * w; x, y [rows][d], w [d], rstd [rows]
     * saved for bwd (may be NULL in fwd when no bwd follows). y may equal x.
     * bwd: dx overwritten, dw += . */
    void (*rmsnorm_fwd)(const upc_kernels *K, const float *x, const float *w,
                        float *y, float *rstd, int rows, int d, float eps);
    void (*rmsnorm_bwd)(const upc_kernels *K, const float *dy, const float *x,
                        const float *w, const float *rstd, float *dx, float *dw,
                        int rows, int d);

    /* ---- RoPE (HF rotate-half: pairs (i, i + hd/2), inv_freq theta^(-2i/hd))
     * x, y [B][T][H][hd], hd even; y may equal x. The position of (b, t) is
     * pos[b*T + t] when pos (device int32 [B][T]) is given, else pos0 + t.
     * bwd applies the inverse rotation to dy (dx may equal dy). */
    void (*rope_fwd)(const upc_kernels *K, const float *x, float *y, int B, int T,
                     int H, int hd, int pos0, const int32_t *pos, float theta);
    void (*rope_bwd)(const upc_kernels *K, const float *dy, float *dx, int B, int T,
                     int H, int hd, int pos0, const int32_t *pos, float theta);

    /* ---- causal self-attention with GQA ---------------------------------
     * q, out [B][T][Hq][hd]; k, v [B][T][Hkv][hd]; Hq % Hkv == 0, query head
     * h reads kv head h / (Hq/Hkv). Query t attends keys 0..t, scores scaled
     * by 1/sqrt(hd). lse [B][Hq][T] (natural-log logsumexp of the scaled
     * scores) is saved for bwd. bwd overwrites dq, dk, dv. */
    void (*attention_fwd)(const upc_kernels *K, const float *q, const float *k,
                          const float *v, float *out, float *lse, int B, int T,
                          int Hq, int Hkv, int hd);
    void (*attention_bwd)(const upc_kernels *K, const float *q, const float *k,
                          const float *v, const float *out, const float *lse,
                          const float *dout, float *dq, float *dk, float *dv,
                          int B, int T, int Hq, int Hkv, int hd);
    /* The causal softmax of score matrices, for attention through GEMMs
     * (lib/attention_gemm.h). S [n][T][T]: matrix r, query row i.
     * attn_softmax_fwd, in place: S[r][i][j] = exp(S[r][i][j] - lse[r][i])
     * for j <= i and 0 for j > i, lse[r][i] = logsumexp over j <= i.
     * attn_softmax_bwd, dP in place: dS = scale * P (dP - sum_j P dP) per
     * row (0 above the diagonal). */
    void (*attn_softmax_fwd)(const upc_kernels *K, float *S, float *lse, int n, int T);
    void (*attn_softmax_bwd)(const upc_kernels *K, const float *P, float *dP, int n, int T, float scale);

    /* ---- paged KV cache (inference) ----------------------------------------
     * The cache is a pool of slots, [n_slots][Hkv][hd] for keys and for
     * values; slot = block * block_size + offset. A sequence's position p
     * lives in slot block_table[seq * max_blocks + p / block_size] *
     * block_size + p % block_size.
     * kv_cache_write: row r of k, v [rows][Hkv][hd] goes to slot slots[r].
     * paged_attention: row r (a query of sequence row_seq[r] at position
     * row_pos[r]) attends that sequence's positions 0..row_pos[r] in the
     * cache (causal GQA as attention_fwd, scores scaled by 1/sqrt(hd));
     * q, out [rows][Hq][hd]. Keys of the row's own position must already be
     * written. */
    void (*kv_cache_write)(const upc_kernels *K, const float *k, const float *v,
                           const int32_t *slots, int rows, int Hkv, int hd, float *kcache,
                           float *vcache);
    void (*paged_attention)(const upc_kernels *K, const float *q, const float *kcache,
                            const float *vcache, const int32_t *block_table, int max_blocks,
                            int block_size, const int32_t *row_seq, const int32_t *row_pos,
                            int rows, int Hq, int Hkv, int hd, float *out);

    /* ---- SwiGLU: out = silu(gate) * up, elementwise over n ---------------
     * bwd writes dgate and dup. */
    void (*swiglu_fwd)(const upc_kernels *K, const float *gate, const float *up,
                       float *out, size_t n);
    void (*swiglu_bwd)(const upc_kernels *K, const float *gate, const float *up,
                       const float *dout, float *dgate, float *dup, size_t n);

    /* ---- router jitter: x[i] *= upc_jitter_factor(key, i, eps) ------------
     * (kernels_math.h). The backward of a jitter is the same call on the
     * gradient. */
    void (*jitter_scale)(const upc_kernels *K, float *x, size_t n, float eps, uint64_t key);

    /* ---- softmax cross-entropy over the vocabulary -----------------------
     * logits [rows][V], targets [rows] in [0,V) or -1 (ignored: loss 0).
     * fwd: loss[r] = logsumexp(logits[r]) - logits[r][target]; lse [rows]
     * saved (may be NULL). bwd: dlogits[r] = (softmax(logits[r]) -
     * onehot(target)) * scale, zero rows for ignored targets; lse may be NULL
     * (recomputed); dlogits may equal logits (in place). */
    void (*cross_entropy_fwd)(const upc_kernels *K, const float *logits,
                              const int32_t *targets, float *loss, float *lse,
                              int rows, int V);
    void (*cross_entropy_bwd)(const upc_kernels *K, const float *logits,
                              const int32_t *targets, const float *lse,
                              float *dlogits, int rows, int V, float scale);

    /* ---- MoE router -----------------------------------------------------
     * logits [N][E] -> probs [N][E] (softmax, saved), topk_idx [N][kk] (int32,
     * by descending prob, ties to the lower expert index), topk_w [N][kk]:
     * renorm != 0: probs of the chosen experts divided by their sum (equal to
     * a softmax over the chosen logits; an upcycled model then reproduces its
     * dense parent at step 0); renorm == 0: the raw softmax probs.
     * bwd: d(topk_w) -> dlogits (overwritten; the aux-loss bwds add to it). */
    void (*router_fwd)(const upc_kernels *K, const float *logits, float *probs,
                       int32_t *topk_idx, float *topk_w, int N, int E, int kk,
                       int renorm);
    void (*router_bwd)(const upc_kernels *K, const float *probs,
                       const int32_t *topk_idx, const float *topk_w,
                       const float *dtopk_w, float *dlogits, int N, int E, int kk,
                       int renorm);

    /* ---- MoE dispatch (dropless) ----------------------------------------
     * Assignment a = n*kk + j (token n, slot j) goes to expert topk_idx[a].
     * dispatch: counts [E], offs [E+1] (offs[e] = sum of counts before e),
     * perm [N*kk]: the assignments sorted by (expert, token, slot) (row s of
     * the expert-sorted buffers holds assignment perm[s]); pos [N*kk]: its
     * inverse (pos[perm[s]] = s).
     * gather: Xs[s] = X[perm[s] / kk]; Xs [N*kk][d].
     * gather_bwd: dX[n] = sum over j of dXs[pos[n*kk + j]] (overwritten).
     * combine: out[n] = beta*out[n] + sum_j w[n][j] * Ys[pos[n*kk + j]].
     * combine_bwd: dYs[pos[n*kk+j]] = w[n][j] * dout[n]; dw[n][j] =
     * dout[n] . Ys[pos[n*kk+j]] (both overwritten). */
    void (*moe_dispatch)(const upc_kernels *K, const int32_t *topk_idx, int N,
                         int kk, int E, int32_t *counts, int32_t *offs,
                         int32_t *perm, int32_t *pos);
    void (*moe_gather)(const upc_kernels *K, const float *X, const int32_t *perm,
                       int N, int kk, int d, float *Xs);
    void (*moe_gather_bwd)(const upc_kernels *K, const float *dXs,
                           const int32_t *pos, int N, int kk, int d, float *dX);
    void (*moe_combine)(const upc_kernels *K, const float *Ys, const int32_t *pos,
                        const float *w, int N, int kk, int d, float beta,
                        float *out);
    void (*moe_combine_bwd)(const upc_kernels *K, const float *dout,
                            const float *Ys, const int32_t *pos, const float *w,
                            int N, int kk, int d, float *dYs, float *dw);

    /* ---- MoE capacity (capacity-factor routing) ------------------------
     * Each expert keeps its first `capacity` assignments in (token, slot)
     * order, the rows moe_dispatch put first in its group: a is kept when
     * pos[a] - offs[topk_idx[a]] < capacity. Zeroes x[a] for every dropped
     * a (x [N*kk]: a copy of the combine weights in the forward, their
     * gradient in the backward) and, when dropped is not NULL, writes how
     * many assignments were dropped to *dropped (device int32). Expert
     * indices must be in [0, E). */
    void (*moe_capacity_drop)(const upc_kernels *K, const int32_t *topk_idx,
                              const int32_t *pos, const int32_t *offs, int N, int kk, int E,
                              int capacity, float *x, int32_t *dropped);

    /* ---- MoE auxiliary losses (scalars into *loss, a device float) ------
     * Load balancing (Switch): alpha * E * sum_i f_i * P_i, f_i = the share
     * of the N*kk assignments that went to expert i (no gradient), P_i =
     * mean over tokens of probs[n][i]. (HF Mixtral's f_i is count/N, k times
     * larger: pass alpha*kk to match it.) bwd: dlogits += scale * dloss/dlogits
     * through the softmax (probs saved by router_fwd).
     * z-loss: coef * mean over tokens of logsumexp(logits[n])^2; bwd likewise
     * adds into dlogits. */
    void (*moe_lb_loss_fwd)(const upc_kernels *K, const float *probs,
                            const int32_t *topk_idx, int N, int E, int kk,
                            float alpha, float *loss);
    void (*moe_lb_loss_bwd)(const upc_kernels *K, const float *probs,
                            const int32_t *topk_idx, int N, int E, int kk,
                            float alpha, float scale, float *dlogits);
    void (*moe_z_loss_fwd)(const upc_kernels *K, const float *logits, int N, int E,
                           float coef, float *loss);
    void (*moe_z_loss_bwd)(const upc_kernels *K, const float *logits, int N, int E,
                           float coef, float scale, float *dlogits);

    /* ---- optimizers over flat buffers (n elements) ----------------------
     * AdamW (PyTorch semantics): p -= lr*wd*p; m = b1 m + (1-b1) g;
     * v = b2 v + (1-b2) g^2; p -= lr * (m/bc1) / (sqrt(v/bc2) + eps).
     * Lion: c = b1 m + (1-b1) g; p -= lr*wd*p + lr*sign(c);
     * m = b2 m + (1-b2) g. (g = grad * grad_scale.) */
    void (*adamw_step)(const upc_kernels *K, float *param, const float *grad,
                       float *m, float *v, size_t n, upc_optim_params hp);
    void (*lion_step)(const upc_kernels *K, float *param, const float *grad,
                      float *m, size_t n, upc_optim_params hp);

    /* ---- reductions and elementwise -------------------------------------
     * sum, sumsq: *out (device float) = sum of x[i] / x[i]^2, accumulated in
     * a fixed order (the CPU backend in double). scale: x *= a. axpy:
     * y += a*x. fill: x = value. add: out = a + b (out may equal a or b). */
    void (*sum)(const upc_kernels *K, const float *x, size_t n, float *out);
    void (*sumsq)(const upc_kernels *K, const float *x, size_t n, float *out);
    void (*scale)(const upc_kernels *K, float *x, size_t n, float a);
    void (*axpy)(const upc_kernels *K, float *y, const float *x, size_t n, float a);
    void (*fill)(const upc_kernels *K, float *x, size_t n, float value);
    void (*add)(const upc_kernels *K, float *out, const float *a, const float *b,
                size_t n);
};

/* Whether table K's GEMMs take bf16 operands (its precision): the GEMM
 * entry points of both backends ask it of the K they are called with, so a
 * bf16 table is the fp32 table with another precision. */
static inline bool upc_kernels_bf16(const upc_kernels *K)
{
    return strcmp(K->precision, "bf16") == 0;
}

/* Where x[0..span) starts inside w[0..n), in floats, or SIZE_MAX when it
 * does not lie wholly inside (the backends' lookup of registered bf16
 * weights). */
static inline size_t upc_float_offset_within(const float *w, size_t n, const float *x, size_t span)
{
    uintptr_t p = (uintptr_t)x, b = (uintptr_t)w;
    if (!w || p < b || (p - b) % sizeof(float) != 0)
        return SIZE_MAX;
    size_t at = (p - b) / sizeof(float);
    return at < n && span <= n - at ? at : SIZE_MAX;
}

/* The CPU backend: OpenBLAS SGEMM, OpenMP elsewhere, fp32. Never NULL. */
const upc_kernels *kernels_cpu(void);
/* The same with bf16 GEMMs (precision "bf16" above), emulated: operands
 * rounded to bf16, then SGEMM. Never NULL. */
const upc_kernels *kernels_cpu_bf16(void);

/* Call first thing in main() of a tool that runs the CPU backend: unless
 * the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT, it re-executes the
 * program with OMP_WAIT_POLICY=PASSIVE and GOMP_SPINCOUNT=10000: idle
 * OpenMP threads spin about 0.1 ms, then sleep. Decoding runs dozens of
 * short kernels per token, and waking sleeping threads for each (a futex
 * round trip, slow in a VM) halved batch-1 decode (bench/serve: 0.43 ->
 * 0.8 of the bandwidth roofline); spinning for long, libgomp's default,
 * takes cores from other processes and, with OpenBLAS's pthreads build,
 * from its workers (hence the OpenMP build of OpenBLAS, see Makefile). */
void kernels_cpu_prepare_process(char **argv);

#endif
