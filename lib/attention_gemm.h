/* attention_gemm.h: causal GQA attention (the attention_fwd/attention_bwd
 * contract of kernels.h) as strided-batched GEMMs around the two row
 * kernels attn_softmax_fwd/bwd:
 *
 *   forward   S = Q K^T / sqrt(hd) for every (batch, query head); the causal
 *             softmax of each row in place (lse saved); out = P V
 *   backward  P again (S, then the softmax); dP = dout V^T; dS = P (dP - D)
 *             scaled; dQ = dS K; dK = sum over the KV head's query heads of
 *             dS^T Q; dV = the same sum of P^T dout
 *
 * The score matrices live in memory, [B][Hq][T][T], which the fused
 * kernels avoid, and the masked half is multiplied too; in exchange every
 * FLOP runs in the table's GEMMs, which on a bf16 table are tensor-core
 * GEMMs (P and dS are rounded to bf16 as operands, as FlashAttention's
 * are). The model uses it with bf16 tables (model.h). */
#ifndef UPCYC_ATTENTION_GEMM_H
#define UPCYC_ATTENTION_GEMM_H

#include "kernels.h"

#include <stddef.h>

/* Floats of scratch the two functions need for a B x T batch with Hq query
 * heads: two score matrices per head, and a row of lse. */
size_t attention_gemm_scratch_floats(int B, int T, int Hq);

void attention_gemm_fwd(const upc_kernels *K, const float *q, const float *k, const float *v, float *out,
                        float *lse, float *scratch, int B, int T, int Hq, int Hkv, int hd);
void attention_gemm_bwd(const upc_kernels *K, const float *q, const float *k, const float *v, const float *dout,
                        float *dq, float *dk, float *dv, float *scratch, int B, int T, int Hq, int Hkv, int hd);

#endif
