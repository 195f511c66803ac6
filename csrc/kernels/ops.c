/*
 * ops.c -- element-wise and attention kernels of the transformer runtime:
 *   RMSNorm     y = x / sqrt(mean(x^2) + eps) * w                      (mean in float64)
 *   RoPE        pair-interleaved rotation by the angle of the pair's frequency index (fused index map)
 *   attention   softmax(q k^T * scale + causal mask) v, GQA, over the KV cache prefix of r dims
 *   SiLU * mul  z = g * sigmoid(g) * u
 *   embedding   row gather, fp32, fp16 (exact conversion) or int4 dequantized as (q - 8) * scale
 * Attention dot products and the probability-weighted sum of V use the current kernel path's dot/axpy
 * (uq_k_path(): FMA lanes on the vector paths, uq_k_dot and mul+add on ref).
 */
#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels.h"

void uq_k_rmsnorm(const float *x, int64_t T, int64_t n, const float *w, double eps, float *y) {
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * n;
        float *yt = y + t * n;
        double ss = 0.0;
        for (int64_t i = 0; i < n; i++) ss += (double)xt[i] * xt[i];
        float inv = (float)(1.0 / sqrt(ss / (double)n + eps));
        for (int64_t i = 0; i < n; i++) yt[i] = w[i] * (xt[i] * inv);
    }
}

void uq_k_rope(float *x, int64_t T, int64_t nheads, int64_t heads_per_map, int64_t stride, int64_t nrot,
               const int32_t *map, int64_t map_stride, const float *cos_tab, const float *sin_tab, int64_t half,
               int64_t pos0) {
    for (int64_t t = 0; t < T; t++) {
        const float *ct = cos_tab + (pos0 + t) * half, *st = sin_tab + (pos0 + t) * half;
        for (int64_t h = 0; h < nheads; h++) {
            float *xh = x + (t * nheads + h) * stride;
            const int32_t *mp = map ? map + (h / heads_per_map) * map_stride : NULL;
            for (int64_t j = 0; j < nrot / 2; j++) {
                int64_t f = mp ? mp[j] : j;
                float c = ct[f], s = st[f], x0 = xh[2 * j], x1 = xh[2 * j + 1];
                xh[2 * j] = x0 * c - x1 * s;
                xh[2 * j + 1] = x1 * c + x0 * s;
            }
        }
    }
}

void uq_k_attention(const float *q, int64_t T, int64_t n_heads, int64_t n_kv, int64_t r, const float *kc,
                    const float *vc, int64_t max_seq, int64_t rc, int64_t pos0, float scale, float *out,
                    float *scores, int nthreads) {
    const int64_t group = n_heads / n_kv, work = T * n_heads;
    const uq_kpath *P = uq_k_path();
    /* one thread for small work: (T * n_heads) * (pos0 + T) * r multiply-adds, roughly */
    int par = work * (pos0 + T) * r >= 65536;
    (void)nthreads;
    (void)par;
#pragma omp parallel num_threads(nthreads) if (par)
    {
#ifdef _OPENMP
        float *sc = scores + (int64_t)omp_get_thread_num() * max_seq;
#else
        float *sc = scores;
#endif
#pragma omp for schedule(static)
        for (int64_t i = 0; i < work; i++) {
            int64_t t = i / n_heads, h = i % n_heads, g = h / group, n = pos0 + t + 1;
            const float *qh = q + i * r;
            const float *K = kc + g * max_seq * rc, *V = vc + g * max_seq * rc;
            float m = -INFINITY;
            for (int64_t s = 0; s < n; s++) {
                sc[s] = P->dot(qh, K + s * rc, r) * scale;
                if (sc[s] > m) m = sc[s];
            }
            double sum = 0.0;
            for (int64_t s = 0; s < n; s++) {
                sc[s] = expf(sc[s] - m);
                sum += sc[s];
            }
            float inv = (float)(1.0 / sum);
            float *oh = out + i * r;
            for (int64_t j = 0; j < r; j++) oh[j] = 0.0f;
            for (int64_t s = 0; s < n; s++) P->axpy(sc[s] * inv, V + s * rc, oh, r);
        }
    }
}

void uq_k_silu_mul(float *g, const float *u, int64_t n) {
#pragma omp parallel for num_threads(uq_k_threads()) schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void uq_k_embed(const uq_linear *E, const int32_t *ids, int64_t T, float *X) {
    const int64_t cols = E->cols;
    for (int64_t t = 0; t < T; t++) {
        int64_t row = ids[t];
        float *xt = X + t * cols;
        if (E->kind == UQ_W_F32) {
            memcpy(xt, E->w + row * cols, (size_t)cols * sizeof(float));
        } else if (E->kind == UQ_W_F16) {
            (void)uq_convert_f16_to_f32(E->w16 + row * cols, cols, xt);
        } else {
            const uint8_t *p = E->packed + row * UQ_Q4_ROW_BYTES(cols);
            const float *s = E->scales + row * E->scale_cols;
            for (int64_t c = 0; c < cols; c++) {
                int q = (c & 1) ? p[c >> 1] >> 4 : p[c >> 1] & 15;
                xt[c] = (float)(q - UQ_Q4_OFFSET) * s[c / E->group];
            }
        }
    }
}

void uq_k_add(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}
