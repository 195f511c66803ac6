/*
 * ops.c -- element-wise and attention kernels of the runtime (every layer kind):
 *   RMSNorm     y = x / sqrt(mean(x^2) + eps) * w                      (mean in float64)
 *   RoPE        pair-interleaved rotation by the angle of the pair's frequency index (fused index map)
 *   attention   softmax(q k^T * scale + causal mask) v, GQA, over r dims of the KV cache (prefix, or rotary + pass)
 *   SiLU * mul  z = g * sigmoid(g) * u
 *   embedding   row gather, fp32, fp16 (exact conversion) or int4 dequantized as (q - 8) * scale
 * Attention dot products and the probability-weighted sum of V use the current kernel path's dot/axpy
 * (uq_k_path(): FMA lanes on the vector paths, uq_k_dot and mul+add on ref); the KV cache is float32 or float16
 * (converted exactly to float32 on the way in: the same results as a float32 cache holding the rounded values).
 */
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "q8w.h"

void uq_k_rmsnorm(const float *restrict x, int64_t T, int64_t n, const float *restrict w, double eps,
                  float *restrict y) {
    int64_t t = 0;
    /* 4 tokens at a time: four independent float64 sums, each in column order as below (the same bits), so the
     * additions' latency no longer serialises a prefill's norms */
    for (; t + 4 <= T; t += 4) {
        const float *x0 = x + t * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;
        double ss[4] = {0.0, 0.0, 0.0, 0.0};
        for (int64_t i = 0; i < n; i++) {
            ss[0] += (double)x0[i] * x0[i];
            ss[1] += (double)x1[i] * x1[i];
            ss[2] += (double)x2[i] * x2[i];
            ss[3] += (double)x3[i] * x3[i];
        }
        for (int64_t k = 0; k < 4; k++) {
            const float *xt = x + (t + k) * n;
            float *yt = y + (t + k) * n;
            float inv = (float)(1.0 / sqrt(ss[k] / (double)n + eps));
            for (int64_t i = 0; i < n; i++) yt[i] = w[i] * (xt[i] * inv);
        }
    }
    for (; t < T; t++) {
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

float uq_k_softmax_inplace(float *sc, int64_t n) {
    float m = -INFINITY;
    for (int64_t s = 0; s < n; s++)
        if (sc[s] > m) m = sc[s];
    double l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t s = 0; s < n; s++) {
        sc[s] = uq_k_exp(sc[s] - m);
        l[s & 7] += sc[s];
    }
    return (float)(1.0 / (((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))));
}

_Thread_local int uq_k_attn_cold_rows = 0;
_Thread_local const void *uq_k_attn_pf_v = NULL;

/* One uq_k_attention / uq_k_attention_f16 call, shared by its pool tasks (one task per work item). */
typedef struct {
    const uq_kpath *P;
    const float *q;
    const void *kc, *vc; /* float, or uint16_t float16 (f16) */
    float *out, *scores;
    int64_t n_heads, group, g, r, r_rot, k_off, max_seq, rc, pos0, wstride;
    float scale;
    int split, f16, cold; /* cold: a one-token (decode) call, whose K / V rows come from memory */
    float (*softmax)(float *sc, int64_t n);
} attn_job;

/* Row s of a cache block X (rows of rc elements) as floats: X itself (fp32), else its first n elements converted
 * into tmp (exact). */
static const float *cache_row(const attn_job *a, const void *X, int64_t s, int64_t n, float *tmp) {
    if (!a->f16) return (const float *)X + s * a->rc;
    const uint16_t *h = (const uint16_t *)X + s * a->rc;
    if (a->P->f16_to_f32)
        a->P->f16_to_f32(h, n, tmp);
    else
        (void)uq_convert_f16_to_f32(h, n, tmp);
    return tmp;
}

/* sc[0..n) = the softmax probabilities e[s] * inv (the float products the axpy loops take), in place. */
static void probabilities(const attn_job *a, float *sc, int64_t n) {
    const float inv = a->softmax(sc, n);
    for (int64_t s = 0; s < n; s++) sc[s] *= inv;
}

/* on a 64-byte line, as the attention helpers (kernels_avx512.c): code placement alone moved a prefill by ~2% */
__attribute__((aligned(64))) static void attn_task(void *arg, int64_t i, int worker) {
    const attn_job *a = arg;
    const uq_kpath *P = a->P;
    const int64_t g = a->g, n_heads = a->n_heads, r = a->r, r_rot = a->r_rot, rc = a->rc;
    const int64_t max_seq = a->max_seq, es = a->f16 ? 2 : 4;
    const float scale = a->scale;
    float *sc = a->scores + (int64_t)worker * a->wstride;
    float *kt = sc + a->group * max_seq, *vt = kt + rc; /* converted rows (fp16 without the path's helpers) */
    const int64_t t = i * g / n_heads, h0 = (i * g) % n_heads, kv = h0 / a->group, n = a->pos0 + t + 1;
    const void *K = (const char *)a->kc + kv * max_seq * rc * es, *V = (const char *)a->vc + kv * max_seq * rc * es;
    const float *qh = a->q + (t * n_heads + h0) * r;
    float *oh = a->out + (t * n_heads + h0) * r;
    const int helpers = a->f16 ? P->attn_scores_f16 && P->attn_accum_f16 : P->attn_scores && P->attn_accum;
    uq_k_attn_cold_rows = a->cold; /* this worker thread's helpers read it (another model's call sets its own) */
    if (a->cold) uq_k_attn_pf_v = NULL; /* read only in decode calls */
    float inv[64];
    if (helpers && !a->split) { /* the path's helpers, up to UQ_K_ATTN_HEADS heads per pass over K / V */
        for (int64_t j0 = 0; j0 < g; j0 += UQ_K_ATTN_HEADS) {
            const int64_t nq = g - j0 < UQ_K_ATTN_HEADS ? g - j0 : UQ_K_ATTN_HEADS;
            /* decode: the first scores pass over K also prefetches V for the accumulations (later passes find it in
             * cache) */
            if (a->cold) uq_k_attn_pf_v = j0 == 0 ? V : NULL;
            if (a->f16)
                P->attn_scores_f16(qh + j0 * r, nq, K, rc, n, r, scale, sc, max_seq);
            else
                P->attn_scores(qh + j0 * r, nq, K, rc, n, r, scale, sc, max_seq);
            for (int64_t j = 0; j < nq; j++) probabilities(a, sc + j * max_seq, n);
            if (a->f16)
                P->attn_accum_f16(sc, max_seq, nq, V, rc, n, r, oh + j0 * r);
            else
                P->attn_accum(sc, max_seq, nq, V, rc, n, r, oh + j0 * r);
        }
        return;
    }
    /* the dot / axpy loops (all heads per cache row); partial RoPE (split): the rotary and the pass rows are two dot
     * products */
    for (int64_t s = 0; s < n; s++) {
        const float *k = cache_row(a, K, s, a->split ? rc : r, kt);
        for (int64_t j = 0; j < g; j++) {
            const float *qj = qh + j * r;
            sc[j * max_seq + s] = a->split
                                      ? (P->dot(qj, k, r_rot) + P->dot(qj + r_rot, k + a->k_off, r - r_rot)) * scale
                                      : P->dot(qj, k, r) * scale;
        }
    }
    if (helpers) { /* split with the path's accumulation */
        for (int64_t j0 = 0; j0 < g; j0 += UQ_K_ATTN_HEADS) {
            const int64_t nq = g - j0 < UQ_K_ATTN_HEADS ? g - j0 : UQ_K_ATTN_HEADS;
            for (int64_t j = j0; j < j0 + nq; j++) probabilities(a, sc + j * max_seq, n);
            if (a->f16)
                P->attn_accum_f16(sc + j0 * max_seq, max_seq, nq, V, rc, n, r, oh + j0 * r);
            else
                P->attn_accum(sc + j0 * max_seq, max_seq, nq, V, rc, n, r, oh + j0 * r);
        }
        return;
    }
    for (int64_t j = 0; j < g; j++) inv[j] = a->softmax(sc + j * max_seq, n);
    memset(oh, 0, (size_t)(g * r) * sizeof(float));
    for (int64_t s = 0; s < n; s++) {
        const float *v = cache_row(a, V, s, r, vt);
        for (int64_t j = 0; j < g; j++) P->axpy(sc[j * max_seq + s] * inv[j], v, oh + j * r, r);
    }
}

static void attention(const float *q, int64_t T, int64_t n_heads, int64_t n_kv, int64_t r, int64_t r_rot,
                      int64_t k_off, const void *kc, const void *vc, int f16, int64_t max_seq, int64_t rc, int64_t pos0,
                      float scale, float *out, float *scores, int nthreads) {
    const int64_t group = n_heads / n_kv;
    /* one thread for small work: (T * n_heads) * (pos0 + T) * r multiply-adds, roughly */
    const int par = T * n_heads * (pos0 + T) * r >= 65536;
    /* Work items: (token, kv head) when that still splits evenly over the threads -- the group's query heads then
     * run on one thread back to back over the same K / V rows (the path's attention helpers: one head at a time,
     * the rows still in L2; the dot / axpy loops: all heads per row, in L1) -- else (token, query head). Each
     * head's operations are the same either way: scores s = 0.. in order, softmax, out += p_s v_s in order.
     * partial RoPE (split): the rotary and the pass rows are two dot products, whether the pass rows follow the
     * rotary ones in the cache row (k_off = r_rot) or not (a pruned head): a model built from truncated arrays and
     * a full model set to the same keeps then compute the same scores. A float16 cache is read through the
     * path's fp16 helpers (the same FMA sequences on the exactly converted elements), else through rows converted
     * into the thread's scratch: the results are those of the float32 kernel on the converted cache. */
    const int64_t wk = T * n_kv, nth = par ? nthreads : 1;
    const int64_t g = group > 1 && group <= 64 && (wk % nth == 0 || wk >= 4 * nth) ? group : 1;
    const uq_kpath *P = uq_k_path();
    attn_job a = {.P = P, .softmax = P->softmax ? P->softmax : uq_k_softmax_inplace, .q = q, .kc = kc, .vc = vc,
                  .out = out, .scores = scores, .n_heads = n_heads, .group = group, .g = g, .r = r, .r_rot = r_rot,
                  .k_off = k_off, .max_seq = max_seq, .rc = rc, .pos0 = pos0,
                  .wstride = group * max_seq + (f16 ? 2 * rc : 0), .scale = scale, .split = r_rot > 0 && r_rot < r,
                  .f16 = f16, .cold = T == 1};
    uq_pool_run(T * n_heads / g, (int)nth, attn_task, &a);
}

void uq_k_attention(const float *restrict q, int64_t T, int64_t n_heads, int64_t n_kv, int64_t r, int64_t r_rot,
                    int64_t k_off, const float *restrict kc, const float *restrict vc, int64_t max_seq, int64_t rc,
                    int64_t pos0, float scale, float *restrict out, float *restrict scores, int nthreads) {
    attention(q, T, n_heads, n_kv, r, r_rot, k_off, kc, vc, 0, max_seq, rc, pos0, scale, out, scores, nthreads);
}

void uq_k_attention_f16(const float *restrict q, int64_t T, int64_t n_heads, int64_t n_kv, int64_t r, int64_t r_rot,
                        int64_t k_off, const uint16_t *restrict kc, const uint16_t *restrict vc, int64_t max_seq,
                        int64_t rc, int64_t pos0, float scale, float *restrict out, float *restrict scores,
                        int nthreads) {
    attention(q, T, n_heads, n_kv, r, r_rot, k_off, kc, vc, 1, max_seq, rc, pos0, scale, out, scores, nthreads);
}

void uq_k_f32_to_f16(const float *restrict x, int64_t n, uint16_t *restrict y) {
    const uq_kpath *P = uq_k_path();
    if (P->f32_to_f16)
        P->f32_to_f16(x, n, y);
    else
        (void)uq_convert_f32_to_f16(x, n, y);
}

typedef struct {
    float *g;
    const float *u;
    int64_t n;
    void (*fn)(float *g, const float *u, int64_t n);
} silu_job;

static void silu_mul_ref(float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + uq_k_exp(-g[i])) * u[i];
}

#define UQ_SILU_TASK 8192

static void silu_task(void *arg, int64_t task, int worker) {
    const silu_job *j = arg;
    (void)worker;
    const int64_t i0 = task * UQ_SILU_TASK, i1 = i0 + UQ_SILU_TASK < j->n ? i0 + UQ_SILU_TASK : j->n;
    j->fn(j->g + i0, j->u + i0, i1 - i0);
}

void uq_k_silu_mul(float *restrict g, const float *restrict u, int64_t n) {
    const uq_kpath *P = uq_k_path();
    silu_job j = {.g = g, .u = u, .n = n, .fn = P->silu_mul ? P->silu_mul : silu_mul_ref};
    uq_pool_run((n + UQ_SILU_TASK - 1) / UQ_SILU_TASK, n >= 65536 ? uq_k_threads() : 1, silu_task, &j);
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
        } else if (E->kind == UQ_W_Q8) {
            uq_q8w_embed_row(E, row, xt);
        } else {
            const uint8_t *p = E->packed + row * UQ_Q4_ROW_BYTES(cols);
            const uint16_t *s = E->scales + row * E->scale_cols;
            for (int64_t c = 0; c < cols; c++) {
                int q = (c & 1) ? p[c >> 1] >> 4 : p[c >> 1] & 15;
                xt[c] = (float)(q - UQ_Q4_OFFSET) * uq_h2f(s[c / E->group]);
            }
        }
    }
}

void uq_k_add(float *restrict y, const float *restrict x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}
