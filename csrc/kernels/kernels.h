/*
 * kernels.h -- internal kernels of the transformer runtime (not part of the public API).
 *
 * Arguments are validated by the callers in csrc/runtime/; these functions cannot fail and return void.
 * Every kernel computes each output element with a fixed sequence of float operations that depends only
 * on that element's inputs (never on T, thread count or neighbouring sizes): see "Determinism" in uniql.h.
 */
#ifndef UQ_KERNELS_H
#define UQ_KERNELS_H

#include <stdint.h>

#include "uniql.h"

/* Dot product of n floats with 8 lane accumulators (lane l sums indices = l mod 8, in increasing order),
 * reduced as ((a0+a4)+(a1+a5))+((a2+a6)+(a3+a7)). The one definition of "a dot product" in the runtime. */
float uq_k_dot(const float *a, const float *b, int64_t n);

/* y (T, n) = x / sqrt(mean(x^2) + eps) * w, mean accumulated in float64; y may equal x. */
void uq_k_rmsnorm(const float *x, int64_t T, int64_t n, const float *w, double eps, float *y);

/* In-place RoPE on x (T, nheads * r), pair-interleaved heads: rows (2j, 2j+1) of head h are pair j,
 * rotated by angle table index f = map[(h / heads_per_map) * map_stride + j] (j when map is NULL):
 *   x0' = x0 cos - x1 sin ;  x1' = x1 cos + x0 sin,  cos/sin = tab[(pos0 + t) * half + f].
 * r even, r/2 <= map_stride. */
void uq_k_rope(float *x, int64_t T, int64_t nheads, int64_t heads_per_map, int64_t r, const int32_t *map,
               int64_t map_stride, const float *cos_tab, const float *sin_tab, int64_t half, int64_t pos0);

/* Causal GQA attention of T queries at positions pos0..pos0+T-1 over a cache that already holds
 * positions 0..pos0+T-1. q (T, n_heads * r); kc, vc (n_kv, max_seq, rc) with r <= rc (first r dims used);
 * out (T, n_heads * r). Query head h reads kv head h / (n_heads / n_kv). scores: (nthreads, max_seq)
 * scratch; at most nthreads OpenMP threads are used. Softmax in float with float64 normaliser. */
void uq_k_attention(const float *q, int64_t T, int64_t n_heads, int64_t n_kv, int64_t r, const float *kc,
                    const float *vc, int64_t max_seq, int64_t rc, int64_t pos0, float scale, float *out,
                    float *scores, int nthreads);

/* g[i] = silu(g[i]) * u[i] = g / (1 + exp(-g)) * u, n elements. */
void uq_k_silu_mul(float *g, const float *u, int64_t n);

/* X (T, cols) = rows ids of the embedding E (fp32 copy or int4 dequantized (q - 8) * scale). */
void uq_k_embed(const uq_linear *E, const int32_t *ids, int64_t T, float *X);

/* y[i] += x[i], n elements. */
void uq_k_add(float *y, const float *x, int64_t n);

#endif
