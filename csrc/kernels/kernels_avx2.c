/*
 * kernels_avx2.c -- the "avx2" kernel path (AVX2 + FMA + F16C, selected at run time; every function carries
 * its own target attribute, the file is compiled without -march flags).
 *
 *   fp32 / fp16 dot:  acc[l] = fma(w[c], x[c], acc[l]) for the columns c = l (mod 8) of each 8-column chunk of
 *                     each kept segment (tails zero), result = uq_k_reduce8(acc) (+ bias).
 *   int4, fp32 act:   the same dot on fl((float)(q - 8) * scale) with 16-column pieces as [8 even | 8 odd].
 *   int4, int8 act:   isum = sum over 64-column blocks of vpmaddubsw(u8 codes, s8 xq) widened by vpmaddwd,
 *                     - 8 * sum(xq) (exact), then tot = tot + (float)isum * (ws * xs) (bit-identical to ref).
 * The fp32 GEMM kernel (T > 4) takes 4 rows x 2 tokens of accumulators at a time over packed panels.
 *   int4 R16, fp32 act: per (row, token, group) gs = fma chain of (float)(q - 8) * x[c] in column order,
 *                     tot = fma(gs, scale, tot) (bit-identical to ref); T >= 3 converts each block's group once
 *                     into an fp32 panel and runs 16 rows x 3..6 tokens of accumulators over it.
 */
#include <string.h>

#include "kernels.h"

#ifdef UQ_K_X86
#include <immintrin.h>

#define UQ_T2 __attribute__((target("avx2,fma,f16c")))
#define UQ_T2I __attribute__((target("avx2,fma,f16c"), always_inline)) inline

static UQ_T2I __m256 load8f(const float *p, int64_t n) {
    if (n >= 8) return _mm256_loadu_ps(p);
    float t[8] = {0};
    memcpy(t, p, (size_t)n * sizeof(float));
    return _mm256_loadu_ps(t);
}

static UQ_T2I __m256 load8h(const uint16_t *p, int64_t n) {
    if (n >= 8) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    uint16_t t[8] = {0};
    memcpy(t, p, (size_t)n * sizeof(uint16_t));
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)t));
}

static UQ_T2I float hsum8(__m256 a) {
    float t[8];
    _mm256_storeu_ps(t, a);
    return uq_k_reduce8(t);
}

UQ_T2 static float dot_f32_avx2(const float *a, const float *b, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) acc = _mm256_fmadd_ps(load8f(a + i, n - i), load8f(b + i, n - i), acc);
    return hsum8(acc);
}

UQ_T2 static void axpy_f32_avx2(float a, const float *x, float *y, int64_t n) {
    __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = __builtin_fmaf(a, x[i], y[i]);
}

/* ------------------------------------------------------------------------------ attention ---- */

/* Lane sums of 8 accumulators at once: out[j] = uq_k_reduce8(lanes of a[j]) = ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)),
 * computed by transposing the 8 x 8 lanes and adding whole vectors in that order (bit-identical). */
static UQ_T2I __m256 reduce8x8(const __m256 *a) {
    const __m256 t0 = _mm256_unpacklo_ps(a[0], a[1]), t1 = _mm256_unpackhi_ps(a[0], a[1]);
    const __m256 t2 = _mm256_unpacklo_ps(a[2], a[3]), t3 = _mm256_unpackhi_ps(a[2], a[3]);
    const __m256 t4 = _mm256_unpacklo_ps(a[4], a[5]), t5 = _mm256_unpackhi_ps(a[4], a[5]);
    const __m256 t6 = _mm256_unpacklo_ps(a[6], a[7]), t7 = _mm256_unpackhi_ps(a[6], a[7]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    /* b[l][j] = lane l of accumulator j */
    const __m256 b0 = _mm256_permute2f128_ps(u0, u4, 0x20), b4 = _mm256_permute2f128_ps(u0, u4, 0x31);
    const __m256 b1 = _mm256_permute2f128_ps(u1, u5, 0x20), b5 = _mm256_permute2f128_ps(u1, u5, 0x31);
    const __m256 b2 = _mm256_permute2f128_ps(u2, u6, 0x20), b6 = _mm256_permute2f128_ps(u2, u6, 0x31);
    const __m256 b3 = _mm256_permute2f128_ps(u3, u7, 0x20), b7 = _mm256_permute2f128_ps(u3, u7, 0x31);
    return _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(b0, b4), _mm256_add_ps(b2, b6)),
                         _mm256_add_ps(_mm256_add_ps(b1, b5), _mm256_add_ps(b3, b7)));
}

/* n (<= 8) cache elements at K + off as floats: fp32, or fp16 converted exactly (vcvtph2ps); lanes >= n zero. */
static UQ_T2I __m256 load8k(const void *K, int f16, int64_t off, int64_t n) {
    return f16 ? load8h((const uint16_t *)K + off, n) : load8f((const float *)K + off, n);
}

/* Software prefetch distance of the attention helpers in a decode call (uq_k_attn_cold_rows), in keys: the K / V rows
 * of a decode step come from memory after the weights' stream (see UQ_K_ATTN_PF512). Hints only. */
#define UQ_K_ATTN_PF2 16

/* Scores of HN (1..4) query heads q + j * r against keys s0 .. s0 + KN - 1 (KN = 8 / HP, HP = 1, 2 or 4 >= HN
 * head slots; a key past n - 1 repeats the last one, its score not stored): HP x KN = 8 accumulators of 8 lanes, each
 * key row loaded and converted once for the HN heads. Per (head, key) the FMA chain of dot_f32_avx2 and, by one
 * reduce8x8 of the 8 accumulators (slot j * KN + k), its uq_k_reduce8 tree: bit-identical to dot_f32_avx2 * scale. */
static UQ_T2I void scores_block_avx2(const float *q, const void *K, int f16, int64_t rc, int64_t n, int64_t r,
                                     float scale, int64_t s0, float *sc, int64_t ldsc, const int HN, const int HP) {
    const int KN = 8 / HP;
    __m256 a[8];
    int64_t off[8];
    #pragma GCC unroll 8
    for (int k = 0; k < KN; k++) off[k] = (s0 + k < n ? s0 + k : n - 1) * rc;
    if (uq_k_attn_cold_rows) /* decode: the rows UQ_K_ATTN_PF2 keys ahead (and V's: uq_k_attn_pf_v) */
        uq_k_attn_prefetch_rows(K, uq_k_attn_pf_v, f16 ? 2 : 4, rc, r, s0 + UQ_K_ATTN_PF2, KN, n);
    #pragma GCC unroll 8
    for (int k = 0; k < 8; k++) a[k] = _mm256_setzero_ps();
    for (int64_t i = 0; i < r; i += 8) {
        __m256 kv[8];
        #pragma GCC unroll 8
        for (int k = 0; k < KN; k++) kv[k] = load8k(K, f16, off[k] + i, r - i);
        #pragma GCC unroll 4
        for (int j = 0; j < HN; j++) {
            const __m256 qv = load8f(q + j * r + i, r - i);
            #pragma GCC unroll 8
            for (int k = 0; k < KN; k++) a[j * KN + k] = _mm256_fmadd_ps(qv, kv[k], a[j * KN + k]);
        }
    }
    float o[8];
    _mm256_storeu_ps(o, _mm256_mul_ps(reduce8x8(a), _mm256_set1_ps(scale)));
    if (n - s0 >= KN) { /* a whole block: fixed-size copies (inlined; the variable size called memmove per head) */
        #pragma GCC unroll 4
        for (int j = 0; j < HN; j++) memcpy(sc + j * ldsc + s0, o + j * KN, (size_t)KN * sizeof(float));
    } else {
        #pragma GCC unroll 4
        for (int j = 0; j < HN; j++) memcpy(sc + j * ldsc + s0, o + j * KN, (size_t)(n - s0) * sizeof(float));
    }
}

/* sc[j * ldsc + s] = dot_f32_avx2(q + j * r, K + s * rc, r) * scale for nq <= 4 heads (K fp32 or fp16: the same FMA
 * sequence on the converted rows). */
static UQ_T2I void attn_scores_avx2(const float *q, int64_t nq, const void *K, int f16, int64_t rc, int64_t n,
                                    int64_t r, float scale, float *sc, int64_t ldsc) {
    for (int64_t s0 = 0; s0 < n;) {
        switch (nq) {
        case 1: scores_block_avx2(q, K, f16, rc, n, r, scale, s0, sc, ldsc, 1, 1); s0 += 8; break;
        case 2: scores_block_avx2(q, K, f16, rc, n, r, scale, s0, sc, ldsc, 2, 2); s0 += 4; break;
        case 3: scores_block_avx2(q, K, f16, rc, n, r, scale, s0, sc, ldsc, 3, 4); s0 += 2; break;
        default: scores_block_avx2(q, K, f16, rc, n, r, scale, s0, sc, ldsc, 4, 4); s0 += 2; break;
        }
    }
}

UQ_T2 static void attn_scores_f32_avx2(const float *q, int64_t nq, const float *K, int64_t rc, int64_t n, int64_t r,
                                       float scale, float *sc, int64_t ldsc) {
    attn_scores_avx2(q, nq, K, 0, rc, n, r, scale, sc, ldsc);
}

UQ_T2 static void attn_scores_f16_avx2(const float *q, int64_t nq, const uint16_t *K, int64_t rc, int64_t n, int64_t r,
                                       float scale, float *sc, int64_t ldsc) {
    attn_scores_avx2(q, nq, K, 1, rc, n, r, scale, sc, ldsc);
}

/* Columns [c0, c0 + 8 NV) of out_j = sum over s in order of p_j[s] * V[s] for HN (1..4) heads: HN x NV accumulators
 * in registers, each V row chunk loaded and converted once for the HN heads. */
static UQ_T2I void accum_pass_avx2(const float *p, int64_t ldp, const void *V, int f16, int64_t rc, int64_t n,
                                   int64_t r, float *out, int64_t c0, const int HN, const int NV) {
    __m256 y[4][3];
    #pragma GCC unroll 4
    for (int j = 0; j < HN; j++)
        #pragma GCC unroll 3
        for (int v = 0; v < NV; v++) y[j][v] = _mm256_setzero_ps();
    const int64_t es = f16 ? 2 : 4, pfd = uq_k_attn_cold_rows ? UQ_K_ATTN_PF2 : n;
    for (int64_t s = 0; s < n; s++) {
        if (s + pfd < n)
            for (int64_t b = 0; b < 8 * NV * es; b += 64)
                _mm_prefetch((const char *)V + ((s + pfd) * rc + c0) * es + b, _MM_HINT_T0);
        __m256 vv[3];
        #pragma GCC unroll 3
        for (int v = 0; v < NV; v++) vv[v] = load8k(V, f16, s * rc + c0 + 8 * v, 8);
        #pragma GCC unroll 4
        for (int j = 0; j < HN; j++) {
            const __m256 pv = _mm256_broadcast_ss(p + j * ldp + s);
            #pragma GCC unroll 3
            for (int v = 0; v < NV; v++) y[j][v] = _mm256_fmadd_ps(pv, vv[v], y[j][v]);
        }
    }
    #pragma GCC unroll 4
    for (int j = 0; j < HN; j++)
        #pragma GCC unroll 3
        for (int v = 0; v < NV; v++) _mm256_storeu_ps(out + j * r + c0 + 8 * v, y[j][v]);
}

/* out_j = sum over s in order of axpy_f32_avx2(p_j[s], V + s * rc) for HN (1..4) heads (p rows j * ldp, out rows
 * j * r): passes of 24 columns for HN <= 3 (9 accumulators: enough independent FMA chains to hide their latency; 16
 * columns x 3 heads, 6 chains, ran at ~1.5 FMAs per cycle), else 16, then 8, in registers for all HN heads, each V
 * row chunk loaded and converted once for them (per element the fma chain of repeated axpy_f32_avx2 calls; the r % 8
 * tail elements with fmaf, as axpy_f32_avx2 does); V fp32 or fp16 (converted exactly). */
static UQ_T2I void accum_heads_avx2(const float *p, int64_t ldp, const void *V, int f16, int64_t rc, int64_t n,
                                    int64_t r, float *out, const int HN) {
    const int64_t r8 = r / 8 * 8;
    int64_t c0 = 0;
    if (HN <= 3)
        for (; c0 + 24 <= r8; c0 += 24) accum_pass_avx2(p, ldp, V, f16, rc, n, r, out, c0, HN, 3);
    for (; c0 + 16 <= r8; c0 += 16) accum_pass_avx2(p, ldp, V, f16, rc, n, r, out, c0, HN, 2);
    if (c0 < r8) accum_pass_avx2(p, ldp, V, f16, rc, n, r, out, c0, HN, 1);
    for (int64_t i = r8; i < r; i++)
        for (int j = 0; j < HN; j++) {
            float y = 0.0f;
            for (int64_t s = 0; s < n; s++) {
                const float v = f16 ? _cvtsh_ss(((const uint16_t *)V)[s * rc + i]) : ((const float *)V)[s * rc + i];
                y = __builtin_fmaf(p[j * ldp + s], v, y);
            }
            out[j * r + i] = y;
        }
}

static UQ_T2I void attn_accum_avx2(const float *p, int64_t ldp, int64_t nq, const void *V, int f16, int64_t rc,
                                   int64_t n, int64_t r, float *out) {
    switch (nq) {
    case 1: accum_heads_avx2(p, ldp, V, f16, rc, n, r, out, 1); break;
    case 2: accum_heads_avx2(p, ldp, V, f16, rc, n, r, out, 2); break;
    case 3: accum_heads_avx2(p, ldp, V, f16, rc, n, r, out, 3); break;
    default: accum_heads_avx2(p, ldp, V, f16, rc, n, r, out, 4); break;
    }
}

UQ_T2 static void attn_accum_f32_avx2(const float *p, int64_t ldp, int64_t nq, const float *V, int64_t rc, int64_t n,
                                      int64_t r, float *out) {
    attn_accum_avx2(p, ldp, nq, V, 0, rc, n, r, out);
}

UQ_T2 static void attn_accum_f16_avx2(const float *p, int64_t ldp, int64_t nq, const uint16_t *V, int64_t rc,
                                      int64_t n, int64_t r, float *out) {
    attn_accum_avx2(p, ldp, nq, V, 1, rc, n, r, out);
}

/* float32 <-> float16, round to nearest even (vcvtps2ph / vcvtph2ps; the tails through a zero-padded vector). */
UQ_T2 void uq_k_f32_to_f16_avx2(const float *x, int64_t n, uint16_t *y) {
    for (int64_t i = 0; i < n; i += 8) {
        const __m128i h = _mm256_cvtps_ph(load8f(x + i, n - i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        if (n - i >= 8) {
            _mm_storeu_si128((__m128i *)(y + i), h);
        } else {
            uint16_t t[8];
            _mm_storeu_si128((__m128i *)t, h);
            memcpy(y + i, t, (size_t)(n - i) * sizeof(uint16_t));
        }
    }
}

UQ_T2 void uq_k_f16_to_f32_avx2(const uint16_t *x, int64_t n, float *y) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    for (; i < n; i++) y[i] = _cvtsh_ss(x[i]); /* the same exact conversion (short tails: no memcpy round trip) */
}

/* uq_k_exp on 8 lanes: the same operations per lane (max(-87, x) and min(88, .) keep a NaN x, as the scalar
 * clamp does). */
static UQ_T2I __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-87.0f), x));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693359375f), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* uq_k_softmax_inplace, 8 scores at a time (bit-identical: max is exact, exp the same per lane, the float64 sum
 * lanes l = s mod 8 are the two 4-double accumulators' lanes). */
UQ_T2 float uq_k_softmax_avx2(float *sc, int64_t n) {
    int64_t s = 0;
    __m256 mv = _mm256_set1_ps(-INFINITY);
    for (; s + 8 <= n; s += 8) mv = _mm256_max_ps(_mm256_loadu_ps(sc + s), mv); /* a NaN score never wins */
    float lanes[8], m = -INFINITY;
    _mm256_storeu_ps(lanes, mv);
    for (int i = 0; i < 8; i++)
        if (lanes[i] > m) m = lanes[i];
    for (; s < n; s++)
        if (sc[s] > m) m = sc[s];
    const __m256 mb = _mm256_set1_ps(m);
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    for (s = 0; s + 8 <= n; s += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + s), mb));
        _mm256_storeu_ps(sc + s, e);
        a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double l[8];
    _mm256_storeu_pd(l, a0);
    _mm256_storeu_pd(l + 4, a1);
    for (int i = 0; s + i < n; i++) {
        sc[s + i] = uq_k_exp(sc[s + i] - m);
        l[i] += sc[s + i];
    }
    return (float)(1.0 / (((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))));
}

/* g = g / (1 + uq_k_exp(-g)) * u, 8 at a time (the scalar operations per lane: IEEE division and product). */
UQ_T2 void uq_k_silu_mul_avx2(float *g, const float *u, int64_t n) {
    int64_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= n; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 d = _mm256_add_ps(one, exp8(_mm256_xor_ps(gv, sign)));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(gv, d), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) g[i] = g[i] / (1.0f + uq_k_exp(-g[i])) * u[i];
}

/* ---------------------------------------------------------------------------- fp32 / fp16 ---- */

static UQ_T2I void gemv_f_t(const float *const *wf, const uint16_t *const *wh, int half, const float *x,
                            int64_t ldx, const uq_k_chunk *ch, int64_t nch, float *acc, const int MR, const int TT) {
    __m256 a[4][4];
    #pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < TT; t++) a[r][t] = _mm256_setzero_ps();
    for (int64_t k = 0; k < nch; k++) {
        __m256 xv[4];
        #pragma GCC unroll 8
        for (int t = 0; t < TT; t++) xv[t] = load8f(x + t * ldx + ch[k].xcol, ch[k].n);
        #pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            __m256 wv = half ? load8h(wh[r] + ch[k].wcol, ch[k].n) : load8f(wf[r] + ch[k].wcol, ch[k].n);
            #pragma GCC unroll 8
            for (int t = 0; t < TT; t++) a[r][t] = _mm256_fmadd_ps(wv, xv[t], a[r][t]);
        }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < TT; t++) _mm256_storeu_ps(acc + (r * TT + t) * 8, a[r][t]);
}

/* rows in groups of 4 (register budget of 16 ymm): same per-element sequence whatever the grouping */
UQ_T2 static void gemv_f(const float *const *wf, const uint16_t *const *wh, int mr, const float *x, int64_t ldx,
                         int T, const uq_k_chunk *ch, int64_t nch, float *acc) {
    const int half = wh != NULL;
    for (int r0 = 0; r0 < mr; r0 += 4) {
        const float *pf[4] = {0};
        const uint16_t *ph[4] = {0};
        int n = mr - r0 < 4 ? mr - r0 : 4;
        #pragma GCC unroll 8
        for (int i = 0; i < 4; i++) {
            if (half)
                ph[i] = wh[r0 + (i < n ? i : n - 1)];
            else
                pf[i] = wf[r0 + (i < n ? i : n - 1)];
        }
        float tmp[4 * 4 * 8];
        switch (T) {
        case 1: gemv_f_t(pf, ph, half, x, ldx, ch, nch, tmp, 4, 1); break;
        case 2: gemv_f_t(pf, ph, half, x, ldx, ch, nch, tmp, 4, 2); break;
        case 3:
            gemv_f_t(pf, ph, half, x, ldx, ch, nch, tmp, 2, 3);
            gemv_f_t(pf + 2, ph + 2, half, x, ldx, ch, nch, tmp + 2 * 3 * 8, 2, 3);
            break;
        default:
            gemv_f_t(pf, ph, half, x, ldx, ch, nch, tmp, 2, 4);
            gemv_f_t(pf + 2, ph + 2, half, x, ldx, ch, nch, tmp + 2 * 4 * 8, 2, 4);
            break;
        }
        memcpy(acc + r0 * T * 8, tmp, (size_t)(n * T * 8) * sizeof(float));
    }
}

UQ_T2 static void gemv_f32_avx2(const float *const *w, int mr, const float *x, int64_t ldx, int T, const uq_k_chunk *ch,
                           int64_t nch, float *acc) {
    gemv_f(w, NULL, mr, x, ldx, T, ch, nch, acc);
}

UQ_T2 static void gemv_f16_avx2(const uint16_t *const *w, int mr, const float *x, int64_t ldx, int T,
                           const uq_k_chunk *ch, int64_t nch, float *acc) {
    gemv_f(NULL, w, mr, x, ldx, T, ch, nch, acc);
}

/* --------------------------------------------------------------------------- int4, fp32 act ---- */

/* 16 int4 columns from byte p (n valid columns): lo = even, hi = odd columns, fl((q - 8) * scale). */
static UQ_T2I void q4_piece(const uint8_t *p, int64_t n, __m256 sc, __m256 *lo, __m256 *hi) {
    int64_t nb = (n + 1) / 2;
    uint64_t b = 0;
    memcpy(&b, p, (size_t)(nb < 8 ? nb : 8));
    __m256i v = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)b));
    const __m256i m4 = _mm256_set1_epi32(15), o8 = _mm256_set1_epi32(UQ_Q4_OFFSET);
    *lo = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v, m4), o8)), sc);
    *hi = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(v, 4), o8)), sc);
}

static UQ_T2I void gemv_q4rm_f32_tile(const uint8_t *const *w, const float *const *s, const float *xp, int64_t ldxp,
                             const uq_k_chunk *ch, int64_t nch, float *acc, const int MR, const int TT) {
    __m256 a[4][4];
    #pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < TT; t++) a[r][t] = _mm256_setzero_ps();
    for (int64_t k = 0; k < nch; k++) {
        #pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            __m256 lo, hi;
            q4_piece(w[r] + ch[k].wcol / 2, ch[k].n, _mm256_set1_ps(s[r][ch[k].scol]), &lo, &hi);
            #pragma GCC unroll 8
            for (int t = 0; t < TT; t++) {
                a[r][t] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xp + t * ldxp + k * 16), a[r][t]);
                a[r][t] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xp + t * ldxp + k * 16 + 8), a[r][t]);
            }
        }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < TT; t++) _mm256_storeu_ps(acc + (r * TT + t) * 8, a[r][t]);
}

UQ_T2 static void gemv_q4rm_f32_avx2(const uint8_t *const *w, const float *const *s, int mr, const float *xp, int64_t ldxp,
                          int T, const uq_k_chunk *ch, int64_t nch, float *acc) {
    for (int r0 = 0; r0 < mr; r0 += 2) {
        int n = mr - r0 < 2 ? mr - r0 : 2;
        const uint8_t *pw[2] = {w[r0], w[r0 + n - 1]};
        const float *ps[2] = {s[r0], s[r0 + n - 1]};
        float tmp[2 * 4 * 8];
        switch (T) {
        case 1: gemv_q4rm_f32_tile(pw, ps, xp, ldxp, ch, nch, tmp, 2, 1); break;
        case 2: gemv_q4rm_f32_tile(pw, ps, xp, ldxp, ch, nch, tmp, 2, 2); break;
        case 3: gemv_q4rm_f32_tile(pw, ps, xp, ldxp, ch, nch, tmp, 2, 3); break;
        default: gemv_q4rm_f32_tile(pw, ps, xp, ldxp, ch, nch, tmp, 2, 4); break;
        }
        memcpy(acc + r0 * T * 8, tmp, (size_t)(n * T * 8) * sizeof(float));
    }
}

UQ_T2 static void pack_f16_avx2(const uint16_t *w, const uq_k_chunk *ch, int64_t nch, float *dst) {
    for (int64_t k = 0; k < nch; k++) _mm256_storeu_ps(dst + k * 8, load8h(w + ch[k].wcol, ch[k].n));
}

UQ_T2 static void pack_q4_avx2(const uint8_t *w, const float *s, const uq_k_chunk *ch, int64_t nch, float *dst) {
    for (int64_t k = 0; k < nch; k++) {
        __m256 lo, hi;
        q4_piece(w + ch[k].wcol / 2, ch[k].n, _mm256_set1_ps(s[ch[k].scol]), &lo, &hi);
        _mm256_storeu_ps(dst + k * 16, lo);
        _mm256_storeu_ps(dst + k * 16 + 8, hi);
    }
}

static UQ_T2I void gemm_f32_4rows_tile(const float *const *w4, const float *xp, int64_t ldx, int64_t nvec, float *acc,
                          int nr, int t0, const int NT) {
    __m256 c[4][2];
    #pragma GCC unroll 8
    for (int r = 0; r < 4; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < NT; t++) c[r][t] = _mm256_loadu_ps(acc + (r * nr + t0 + t) * 8);
    for (int64_t v = 0; v < nvec; v++) {
        __m256 w0 = _mm256_loadu_ps(w4[0] + v * 8), w1 = _mm256_loadu_ps(w4[1] + v * 8);
        __m256 w2 = _mm256_loadu_ps(w4[2] + v * 8), w3 = _mm256_loadu_ps(w4[3] + v * 8);
        #pragma GCC unroll 8
        for (int t = 0; t < NT; t++) {
            __m256 xv = _mm256_loadu_ps(xp + (t0 + t) * ldx + v * 8);
            c[0][t] = _mm256_fmadd_ps(w0, xv, c[0][t]);
            c[1][t] = _mm256_fmadd_ps(w1, xv, c[1][t]);
            c[2][t] = _mm256_fmadd_ps(w2, xv, c[2][t]);
            c[3][t] = _mm256_fmadd_ps(w3, xv, c[3][t]);
        }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < 4; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < NT; t++) _mm256_storeu_ps(acc + (r * nr + t0 + t) * 8, c[r][t]);
}

UQ_T2 static void gemm_f32_4rows_avx2(const float *const *w4, const float *xp, int64_t ldx, int nr, int64_t nvec,
                        float *acc) {
    int t0 = 0;
    for (; t0 + 2 <= nr; t0 += 2) gemm_f32_4rows_tile(w4, xp, ldx, nvec, acc, nr, t0, 2);
    if (t0 < nr) gemm_f32_4rows_tile(w4, xp, ldx, nvec, acc, nr, t0, 1);
}

/* ---------------------------------------------------------------------------- int4 x int8 ---- */

/* Row-major int4 x int8, 4 rows x 1 token: per group, the int32 sums of the 4 rows stay in 4 vectors (int16 pair sums of
 * up to 2 64-column blocks are added before one vpmaddwd widens them: |sum| <= 4 * 2 * 15 * 127 = 15240), are reduced
 * together by vphaddd (exact: integer sums in any order) and the epilogue tot = tot + (float)isum * (s * xs) runs on
 * the 4 rows in one vector (the scalar operations per lane, so bit-identical to q8_gemv). */
static UQ_T2I __m128i q4rm_q8_group4(const uint8_t *const *w, const int8_t *q, int64_t wcol, int64_t n) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256i a[4];
    #pragma GCC unroll 4
    for (int r = 0; r < 4; r++) a[r] = _mm256_setzero_si256();
    for (int64_t c0 = 0; c0 < n; c0 += 128) {
        const int two = n - c0 > 64;
        const __m256i xe0 = _mm256_loadu_si256((const __m256i *)(q + c0));
        const __m256i xo0 = _mm256_loadu_si256((const __m256i *)(q + c0 + 32));
        __m256i xe1 = _mm256_setzero_si256(), xo1 = _mm256_setzero_si256();
        if (two) {
            xe1 = _mm256_loadu_si256((const __m256i *)(q + c0 + 64));
            xo1 = _mm256_loadu_si256((const __m256i *)(q + c0 + 96));
        }
        const int64_t nb0 = (n - c0 + 1) / 2, nb1 = (n - c0 - 64 + 1) / 2;
        #pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            const uint8_t *p = w[r] + wcol / 2 + c0 / 2;
            __m256i v0, v1 = _mm256_setzero_si256();
            if (nb0 >= 32) {
                v0 = _mm256_loadu_si256((const __m256i *)p);
            } else {
                uint8_t tb[32] = {0};
                memcpy(tb, p, (size_t)nb0);
                v0 = _mm256_loadu_si256((const __m256i *)tb);
            }
            __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(v0, m4), xe0),
                                         _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v0, 4), m4), xo0));
            if (two) {
                if (nb1 >= 32) {
                    v1 = _mm256_loadu_si256((const __m256i *)(p + 32));
                } else {
                    uint8_t tb[32] = {0};
                    memcpy(tb, p + 32, (size_t)nb1);
                    v1 = _mm256_loadu_si256((const __m256i *)tb);
                }
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(v1, m4), xe1));
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v1, 4), m4), xo1));
            }
            a[r] = _mm256_add_epi32(a[r], _mm256_madd_epi16(s, ones));
        }
    }
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)); /* rows 0..3 */
}

UQ_T2 static void gemv_q4rm_q8_avx2(const uint8_t *const *w, const float *const *s, int mr, const int8_t *xq, int64_t ldq,
                          const float *xs, const int32_t *xsum, int64_t ldg, int64_t T, const uq_k_chunk *ch,
                          int64_t nch, float *tot) {
    const uint8_t *wp[4];
    const float *sp[4];
    uq_k_tile_rows(w, s, mr, 4, wp, sp);
    for (int64_t t = 0; t < T; t++) {
        __m128 ft = _mm_setzero_ps();
        for (int64_t k = 0; k < nch; k++) {
            const int64_t gi = t * ldg + k, sc = ch[k].scol;
            const __m128i is = _mm_sub_epi32(q4rm_q8_group4(wp, xq + t * ldq + ch[k].xq, ch[k].wcol, ch[k].n),
                                             _mm_set1_epi32(UQ_Q4_OFFSET * xsum[gi]));
            const __m128 p = _mm_mul_ps(_mm_setr_ps(sp[0][sc], sp[1][sc], sp[2][sc], sp[3][sc]), _mm_set1_ps(xs[gi]));
            ft = _mm_add_ps(ft, _mm_mul_ps(_mm_cvtepi32_ps(is), p));
        }
        float o[4];
        _mm_storeu_ps(o, ft);
        for (int r = 0; r < mr; r++) tot[r * T + t] = o[r];
    }
}


/* ------------------------------------------------------------------- int4, R16 layout ---- */

/* 8 float16 scales (the R16 layout keeps them as half bits) as floats: vcvtph2ps is exact (= uq_h2f). */
static UQ_T2I __m256 r16_scales8(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* Column m (< 4) of 8 rows from the code bytes lo (low nibbles: columns 0..3, or high nibbles: 4..7) as the
 * exact float q - 8: vpshufb moves byte m of each dword to byte 0 (zeros above), bits(0x4B000000 | q) =
 * 2^23 + q, minus 2^23 + 8. */
static UQ_T2I __m256 r16_col(__m256i lo, int m) {
    const __m256i sel = _mm256_set1_epi32((int)(0x80808000u | (unsigned)m));
    const __m256i off = _mm256_setr_epi32(0, 4, 8, 12, 0, 4, 8, 12);
    const __m256i q = _mm256_shuffle_epi8(lo, _mm256_add_epi32(sel, off));
    return _mm256_sub_ps(_mm256_castsi256_ps(_mm256_or_si256(q, _mm256_set1_epi32(0x4B000000))),
                         _mm256_set1_ps(8388616.0f));
}

/* NB blocks (two 8-row halves each) x NT tokens, fp32 activations. */
static UQ_T2I void r16_f32_tile(const uint8_t *const *wb, const uint16_t *const *sb, const float *x, int64_t ldx,
                          const uq_k_chunk *g, int64_t ng, float *out, int64_t ldo, const int NB, const int NT) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    float tot[2 * 2 * 4 * 8];
    #pragma GCC unroll 16
    for (int i = 0; i < NB * 2 * NT; i++) _mm256_storeu_ps(tot + 8 * i, _mm256_setzero_ps());
    for (int64_t k = 0; k < ng; k++) {
        __m256 gs[2][2][4];
        #pragma GCC unroll 2
        for (int i = 0; i < NB; i++)
            #pragma GCC unroll 2
            for (int h = 0; h < 2; h++)
                #pragma GCC unroll 4
                for (int t = 0; t < NT; t++) gs[i][h][t] = _mm256_setzero_ps();
        const int64_t n = g[k].n, w0 = g[k].wcol * 64;
        const float *xk = x + g[k].xcol;
        for (int64_t c = 0; c < n; c += 8) {
            const int nm = n - c < 8 ? (int)(n - c) : 8;
            #pragma GCC unroll 2
            for (int i = 0; i < NB; i++)
                #pragma GCC unroll 2
                for (int h = 0; h < 2; h++) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)(wb[i] + w0 + c * 8 + 32 * h));
                    const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                    if (nm == 8) {
                        #pragma GCC unroll 8
                        for (int m = 0; m < 8; m++) {
                            const __m256 w = r16_col(m < 4 ? lo : hi, m & 3);
                            #pragma GCC unroll 4
                            for (int t = 0; t < NT; t++)
                                gs[i][h][t] = _mm256_fmadd_ps(w, _mm256_set1_ps(xk[t * ldx + c + m]), gs[i][h][t]);
                        }
                    } else { /* a kept prefix that cuts a chunk */
                        for (int m = 0; m < nm; m++) {
                            const __m256 w = r16_col(m < 4 ? lo : hi, m & 3);
                            #pragma GCC unroll 4
                            for (int t = 0; t < NT; t++)
                                gs[i][h][t] = _mm256_fmadd_ps(w, _mm256_set1_ps(xk[t * ldx + c + m]), gs[i][h][t]);
                        }
                    }
                }
        }
        #pragma GCC unroll 2
        for (int i = 0; i < NB; i++)
            #pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                const __m256 sv = r16_scales8(sb[i] + g[k].scol * 16 + 8 * h);
                #pragma GCC unroll 4
                for (int t = 0; t < NT; t++) {
                    float *p = tot + 8 * ((i * 2 + h) * NT + t);
                    _mm256_storeu_ps(p, _mm256_fmadd_ps(gs[i][h][t], sv, _mm256_loadu_ps(p)));
                }
            }
    }
    #pragma GCC unroll 2
    for (int i = 0; i < NB; i++)
        #pragma GCC unroll 2
        for (int h = 0; h < 2; h++)
            #pragma GCC unroll 4
            for (int t = 0; t < NT; t++)
                _mm256_storeu_ps(out + t * ldo + 16 * i + 8 * h, _mm256_loadu_ps(tot + 8 * ((i * 2 + h) * NT + t)));
}

/* Decode prefetch distance in chunks (64 bytes of each block) ahead along the prefetch plan (uq_k_r16_pf): 4 KiB, the
 * next 4 KiB page, where the hardware prefetchers stop (28672 x 4096 from DRAM, 1 thread, AMD EPYC with AVX-512: 1024
 * -> 4096 bytes = 2.03 -> 1.58 ms; 2048: 1.82, 6144: 1.54, 8192: 1.66). */
#define UQ_R16_PF_CHUNKS 64

static UQ_T2I void r16_q8_tile_zero(__m256i a[2][2][4], const int NB, const int NH, const int NT) {
    #pragma GCC unroll 2
    for (int i = 0; i < NB; i++)
        #pragma GCC unroll 2
        for (int h = 0; h < NH; h++)
            #pragma GCC unroll 4
            for (int t = 0; t < NT; t++) a[i][h][t] = _mm256_setzero_si256();
}

/* NB blocks x NT tokens, int8 activations: vpmaddubsw on the low / high nibbles (columns 0..3 / 4..7 of a chunk)
 * (decode, NT = 1: software prefetch UQ_R16_PF_CHUNKS chunks ahead along the plan co / nct, past the last chunk into
 * the next blocks wn, and their scales sn (NULL: not given) when it moves into them, as the avx512 decode tile; co NULL:
 * that many chunks ahead in the block's own bytes)
 * against 4 broadcast activation bytes each. A chunk's pair sums, added in int16, are bounded by
 * 4 * 15 * 127 = 7620, so up to 4 chunks (30480) accumulate in int16 before one vpmaddwd widens them: 2.25
 * multiply instructions per 64 multiply-adds instead of 3 (the sums are exact, so the order does not matter). */
static UQ_T2I void r16_q8_tile(const uint8_t *const *wb, const uint16_t *const *sb, const int8_t *xq, int64_t ldq,
                          const float *xs, const int32_t *xsum, int64_t ldg, const uq_k_chunk *g, int64_t ng,
                          float *out, int64_t ldo, const int64_t *co, int64_t nct, const uint8_t *const *wn,
                          const uint16_t *const *sn, const int NB, const int NT) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    float tot[2 * 2 * 4 * 8];
    #pragma GCC unroll 16
    for (int i = 0; i < NB * 2 * NT; i++) _mm256_storeu_ps(tot + 8 * i, _mm256_setzero_ps());
    /* decode: the prefetch cursor, chunk cp of the plan in the blocks pp (first these, then wn); pf: 1 while it runs */
    const uint8_t *pp[2] = {wb[0], wb[NB > 1 ? 1 : 0]};
    int64_t cp = UQ_R16_PF_CHUNKS;
    int pf = NT == 1 && co != NULL, next = 0;
    while (pf && cp >= nct) { /* a plan shorter than the distance */
        cp -= nct;
        pf = !next && wn;
        next = 1;
        #pragma GCC unroll 2
        for (int i = 0; i < NB; i++) pp[i] = pf ? wn[i] : pp[i];
        if (pf && sn)
            for (int i = 0; i < NB; i++) uq_k_r16_prefetch_scales(sn[i], g, ng);
    }
    for (int64_t k = 0; k < ng; k++) {
        const int64_t nc = (g[k].n + 7) / 8, w0 = g[k].wcol * 64;
        const int8_t *xk = xq + g[k].xq;
        /* NT > 1: one 8-row half at a time (int16 + int32 accumulators of 4 tokens fit the 16 ymm registers) */
        for (int hh = 0; hh < (NT > 1 ? 2 : 1); hh++) {
            const int H0 = NT > 1 ? hh : 0, NH = NT > 1 ? 1 : 2;
            __m256i a[2][2][4];
            r16_q8_tile_zero(a, NB, NH, NT);
            for (int64_t j0 = 0; j0 < nc; j0 += 4) {
                const int64_t j1 = nc - j0 < 4 ? nc : j0 + 4;
                __m256i p16[2][2][4];
                r16_q8_tile_zero(p16, NB, NH, NT);
                /* full windows of 4 chunks unrolled (the 1-chunk loop's overhead and register copies cost ~1/4) */
                #pragma GCC unroll 4
                for (int64_t jj = 0; jj < 4; jj++) {
                    const int64_t j = j0 + jj;
                    if (j >= j1) break;
                    if (NT == 1 && pf) { /* decode streams 2 blocks per core: help the prefetchers */
                        const int64_t o = co[cp];
                        #pragma GCC unroll 2
                        for (int i = 0; i < NB; i++) _mm_prefetch((const char *)(pp[i] + o), _MM_HINT_T0);
                        if (++cp == nct) { /* the end of these blocks: on into the next ones */
                            cp = 0;
                            pf = !next && wn;
                            next = 1;
                            if (pf) {
                                #pragma GCC unroll 2
                                for (int i = 0; i < NB; i++) pp[i] = wn[i];
                                if (sn)
                                    for (int i = 0; i < NB; i++) uq_k_r16_prefetch_scales(sn[i], g, ng);
                            }
                        }
                    } else if (NT == 1 && !co) { /* no plan: ahead in the block's own bytes */
                        #pragma GCC unroll 2
                        for (int i = 0; i < NB; i++)
                            _mm_prefetch((const char *)(wb[i] + w0 + (j + UQ_R16_PF_CHUNKS) * 64), _MM_HINT_T0);
                    }
                    #pragma GCC unroll 2
                    for (int i = 0; i < NB; i++)
                        #pragma GCC unroll 2
                        for (int h = 0; h < NH; h++) {
                            const __m256i v =
                                _mm256_loadu_si256((const __m256i *)(wb[i] + w0 + j * 64 + 32 * (H0 + h)));
                            const __m256i lo = _mm256_and_si256(v, m4);
                            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                            #pragma GCC unroll 4
                            for (int t = 0; t < NT; t++) {
                                int32_t qa, qb;
                                memcpy(&qa, xk + t * ldq + 8 * j, 4);
                                memcpy(&qb, xk + t * ldq + 8 * j + 4, 4);
                                const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(qa)),
                                                                   _mm256_maddubs_epi16(hi, _mm256_set1_epi32(qb)));
                                p16[i][h][t] = _mm256_add_epi16(p16[i][h][t], p);
                            }
                        }
                }
                #pragma GCC unroll 2
                for (int i = 0; i < NB; i++)
                    #pragma GCC unroll 2
                    for (int h = 0; h < NH; h++)
                        #pragma GCC unroll 4
                        for (int t = 0; t < NT; t++)
                            a[i][h][t] = _mm256_add_epi32(a[i][h][t], _mm256_madd_epi16(p16[i][h][t], ones));
            }
            #pragma GCC unroll 2
            for (int i = 0; i < NB; i++)
                #pragma GCC unroll 2
                for (int h = 0; h < NH; h++) {
                    const __m256 sv = r16_scales8(sb[i] + g[k].scol * 16 + 8 * (H0 + h));
                    #pragma GCC unroll 4
                    for (int t = 0; t < NT; t++) {
                        const int64_t gi = t * ldg + k;
                        const __m256i is = _mm256_sub_epi32(a[i][h][t], _mm256_set1_epi32(UQ_Q4_OFFSET * xsum[gi]));
                        const __m256 pr = _mm256_mul_ps(sv, _mm256_set1_ps(xs[gi]));
                        float *f = tot + 8 * ((i * 2 + H0 + h) * NT + t);
                        _mm256_storeu_ps(f, _mm256_add_ps(_mm256_loadu_ps(f), _mm256_mul_ps(_mm256_cvtepi32_ps(is), pr)));
                    }
                }
        }
    }
    #pragma GCC unroll 2
    for (int i = 0; i < NB; i++)
        #pragma GCC unroll 2
        for (int h = 0; h < 2; h++)
            #pragma GCC unroll 4
            for (int t = 0; t < NT; t++)
                _mm256_storeu_ps(out + t * ldo + 16 * i + 8 * h, _mm256_loadu_ps(tot + 8 * ((i * 2 + h) * NT + t)));
}

/* Prefill, one block x NT (2..4) tokens: both 8-row halves in one pass, so each broadcast of 4 activation bytes
 * feeds 2 vpmaddubsw (one per half) and each unpacked chunk NT tokens: ~10 instructions per 128 multiply-adds
 * against 12 for the half-at-a-time tile. The int16 window sums (4 chunks, bounded as in r16_q8_tile) are widened
 * into int32 group sums kept in L1 (the 8 int16 accumulators, 4 unpacked vectors and 2 broadcasts fill the 16 ymm
 * registers). The sums are exact and the epilogue is r16_q8_tile's, so the results are bit-identical. */
static UQ_T2I void r16_q8_tile2h(const uint8_t *wb, const uint16_t *sb, const int8_t *xq, int64_t ldq,
                                 const float *xs, const int32_t *xsum, int64_t ldg, const uq_k_chunk *g, int64_t ng,
                                 float *out, int64_t ldo, const int NT) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 tot[2][4];
    __m256i acc[2][4]; /* int32 group sums (spilled to the stack by design) */
    #pragma GCC unroll 2
    for (int h = 0; h < 2; h++)
        #pragma GCC unroll 4
        for (int t = 0; t < NT; t++) tot[h][t] = _mm256_setzero_ps();
    for (int64_t k = 0; k < ng; k++) {
        const int64_t nc = (g[k].n + 7) / 8;
        const uint8_t *w0 = wb + g[k].wcol * 64;
        const int8_t *xk = xq + g[k].xq;
        #pragma GCC unroll 2
        for (int h = 0; h < 2; h++)
            #pragma GCC unroll 4
            for (int t = 0; t < NT; t++) acc[h][t] = _mm256_setzero_si256();
        for (int64_t j0 = 0; j0 < nc; j0 += 4) {
            const int64_t j1 = nc - j0 < 4 ? nc : j0 + 4;
            __m256i p16[2][4];
            #pragma GCC unroll 2
            for (int h = 0; h < 2; h++)
                #pragma GCC unroll 4
                for (int t = 0; t < NT; t++) p16[h][t] = _mm256_setzero_si256();
            #pragma GCC unroll 4
            for (int64_t jj = 0; jj < 4; jj++) {
                const int64_t j = j0 + jj;
                if (j >= j1) break;
                const __m256i v0 = _mm256_loadu_si256((const __m256i *)(w0 + j * 64));
                const __m256i v1 = _mm256_loadu_si256((const __m256i *)(w0 + j * 64 + 32));
                const __m256i lo0 = _mm256_and_si256(v0, m4), hi0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), m4);
                const __m256i lo1 = _mm256_and_si256(v1, m4), hi1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), m4);
                #pragma GCC unroll 4
                for (int t = 0; t < NT; t++) {
                    int32_t qa, qb;
                    memcpy(&qa, xk + t * ldq + 8 * j, 4);
                    memcpy(&qb, xk + t * ldq + 8 * j + 4, 4);
                    const __m256i ba = _mm256_set1_epi32(qa), bq = _mm256_set1_epi32(qb);
                    p16[0][t] = _mm256_add_epi16(p16[0][t], _mm256_add_epi16(_mm256_maddubs_epi16(lo0, ba),
                                                                             _mm256_maddubs_epi16(hi0, bq)));
                    p16[1][t] = _mm256_add_epi16(p16[1][t], _mm256_add_epi16(_mm256_maddubs_epi16(lo1, ba),
                                                                             _mm256_maddubs_epi16(hi1, bq)));
                }
            }
            #pragma GCC unroll 2
            for (int h = 0; h < 2; h++)
                #pragma GCC unroll 4
                for (int t = 0; t < NT; t++) acc[h][t] = _mm256_add_epi32(acc[h][t], _mm256_madd_epi16(p16[h][t], ones));
        }
        #pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m256 sv = r16_scales8(sb + g[k].scol * 16 + 8 * h);
            #pragma GCC unroll 4
            for (int t = 0; t < NT; t++) {
                const int64_t gi = t * ldg + k;
                const __m256i is = _mm256_sub_epi32(acc[h][t], _mm256_set1_epi32(UQ_Q4_OFFSET * xsum[gi]));
                const __m256 pr = _mm256_mul_ps(sv, _mm256_set1_ps(xs[gi]));
                tot[h][t] = _mm256_add_ps(tot[h][t], _mm256_mul_ps(_mm256_cvtepi32_ps(is), pr));
            }
        }
    }
    #pragma GCC unroll 2
    for (int h = 0; h < 2; h++)
        #pragma GCC unroll 4
        for (int t = 0; t < NT; t++) _mm256_storeu_ps(out + t * ldo + 8 * h, tot[h][t]);
}

/* Prefill, one 8-row half h of a block x NT (4..8) tokens: each 32-byte half chunk is loaded and unpacked once
 * (lo / hi nibbles) for NT tokens, and each token's int16 window sum is one register (NT + 6 of the 16 ymm registers:
 * nothing spills). A window's first chunk starts its sums from its products instead of adding them to zero; the
 * widened window sums go to int32 group sums (kept in L1) that start at -8 * sum(xq) instead of subtracting it at
 * the end. Per token and chunk of 16 rows this runs 4 vpmaddubsw + 3.5 vpaddw + 0.75 unpacking + 1 widening
 * instructions against ~10.5 for r16_q8_tile2h (1-2% faster on this Zen 5, cache-hot: the tile is bound by the
 * vector ALUs, whose work per multiply-add hardly changes). The sums are exact integers (the window bound of
 * r16_q8_tile; |8 * sum(xq)| <= 8 * 127 * group) and the float epilogue is r16_q8_tile's: bit-identical. */
static UQ_T2I void r16_q8_tile1h(const uint8_t *wb, const uint16_t *sb, int h, const int8_t *xq, int64_t ldq,
                                 const float *xs, const int32_t *xsum, int64_t ldg, const uq_k_chunk *g, int64_t ng,
                                 float *out, int64_t ldo, const int NT) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 tot[8];
    __m256i acc[8]; /* int32 group sums (in L1 by design) */
    #pragma GCC unroll 8
    for (int t = 0; t < NT; t++) tot[t] = _mm256_setzero_ps();
    for (int64_t k = 0; k < ng; k++) {
        const int64_t nc = (g[k].n + 7) / 8;
        const uint8_t *w0 = wb + g[k].wcol * 64 + 32 * h;
        const int8_t *xk = xq + g[k].xq;
        #pragma GCC unroll 8
        for (int t = 0; t < NT; t++) acc[t] = _mm256_set1_epi32(-UQ_Q4_OFFSET * xsum[t * ldg + k]);
        for (int64_t j0 = 0; j0 < nc; j0 += 4) {
            const int64_t j1 = nc - j0 < 4 ? nc : j0 + 4;
            __m256i p16[8];
            {   /* the window's first chunk */
                const __m256i v = _mm256_loadu_si256((const __m256i *)(w0 + j0 * 64));
                const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                #pragma GCC unroll 8
                for (int t = 0; t < NT; t++) {
                    int32_t qa, qb;
                    memcpy(&qa, xk + t * ldq + 8 * j0, 4);
                    memcpy(&qb, xk + t * ldq + 8 * j0 + 4, 4);
                    p16[t] = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(qa)),
                                              _mm256_maddubs_epi16(hi, _mm256_set1_epi32(qb)));
                }
            }
            #pragma GCC unroll 3
            for (int64_t jj = 1; jj < 4; jj++) {
                const int64_t j = j0 + jj;
                if (j >= j1) break;
                const __m256i v = _mm256_loadu_si256((const __m256i *)(w0 + j * 64));
                const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                #pragma GCC unroll 8
                for (int t = 0; t < NT; t++) {
                    int32_t qa, qb;
                    memcpy(&qa, xk + t * ldq + 8 * j, 4);
                    memcpy(&qb, xk + t * ldq + 8 * j + 4, 4);
                    p16[t] = _mm256_add_epi16(p16[t], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(qa)));
                    p16[t] = _mm256_add_epi16(p16[t], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(qb)));
                }
            }
            #pragma GCC unroll 8
            for (int t = 0; t < NT; t++) acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(p16[t], ones));
        }
        const __m256 sv = r16_scales8(sb + g[k].scol * 16 + 8 * h);
        #pragma GCC unroll 8
        for (int t = 0; t < NT; t++) {
            const int64_t gi = t * ldg + k;
            const __m256 pr = _mm256_mul_ps(sv, _mm256_set1_ps(xs[gi]));
            tot[t] = _mm256_add_ps(tot[t], _mm256_mul_ps(_mm256_cvtepi32_ps(acc[t]), pr));
        }
    }
    #pragma GCC unroll 8
    for (int t = 0; t < NT; t++) _mm256_storeu_ps(out + t * ldo + 8 * h, tot[t]);
}

/* Prefill (T >= R16_PANEL_T): per group and block, the codes of up to R16_PC columns are converted once into an
 * fp32 panel p[c * 16 + l] = q[l][c] - 8 (exact), and a 16-row x NT-token micro-kernel (2 x NT accumulators,
 * broadcast x[t][c], columns in order) reuses it from L1 for every token of the call: the same FMA chain per
 * (row, token, group) as r16_f32_tile. A group longer than R16_PC columns continues its chains across pieces through
 * gsb (exact: the partial sums are stored, not rounded again). */
#define R16_PANEL_T 3   /* fewest tokens that take the panel path (measured: T = 2 is faster without) */
#define R16_PC 128      /* panel columns (8 KiB) */
#define R16_TS 64       /* tokens per pass (rows of gsb) */

/* Columns [0, n) of one block's group from its chunks at w (n <= R16_PC; a cut chunk converts its nm columns). */
static UQ_T2I void r16_panel(const uint8_t *w, int64_t n, float *p) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t c = 0; c < n; c += 8) {
        const int nm = n - c < 8 ? (int)(n - c) : 8;
        #pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(w + c * 8 + 32 * h));
            const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            if (nm == 8) {
                #pragma GCC unroll 8
                for (int m = 0; m < 8; m++) _mm256_storeu_ps(p + (c + m) * 16 + 8 * h, r16_col(m < 4 ? lo : hi, m & 3));
            } else {
                for (int m = 0; m < nm; m++) _mm256_storeu_ps(p + (c + m) * 16 + 8 * h, r16_col(m < 4 ? lo : hi, m & 3));
            }
        }
    }
}

/* NT tokens x 16 rows over panel columns [0, n): gs continues from gsb (first: from 0); last: tot = fma(gs, s,
 * tot) into out, else gs back to gsb (gsb[t * 16 + l]). */
static UQ_T2I void r16_mk(const float *p, int64_t n, const float *x, int64_t ldx, float *gsb, int first, int last,
                          const uint16_t *s, float *out, int64_t ldo, const int NT) {
    __m256 a0[6], a1[6];
    #pragma GCC unroll 6
    for (int t = 0; t < NT; t++) {
        a0[t] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(gsb + 16 * t);
        a1[t] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(gsb + 16 * t + 8);
    }
    #pragma GCC unroll 2
    for (int64_t c = 0; c < n; c++) {
        const __m256 w0 = _mm256_loadu_ps(p + 16 * c), w1 = _mm256_loadu_ps(p + 16 * c + 8);
        #pragma GCC unroll 6
        for (int t = 0; t < NT; t++) {
            const __m256 xb = _mm256_broadcast_ss(x + t * ldx + c);
            a0[t] = _mm256_fmadd_ps(w0, xb, a0[t]);
            a1[t] = _mm256_fmadd_ps(w1, xb, a1[t]);
        }
    }
    if (last) {
        const __m256 s0 = r16_scales8(s), s1 = r16_scales8(s + 8);
        #pragma GCC unroll 6
        for (int t = 0; t < NT; t++) {
            _mm256_storeu_ps(out + t * ldo, _mm256_fmadd_ps(a0[t], s0, _mm256_loadu_ps(out + t * ldo)));
            _mm256_storeu_ps(out + t * ldo + 8, _mm256_fmadd_ps(a1[t], s1, _mm256_loadu_ps(out + t * ldo + 8)));
        }
    } else {
        #pragma GCC unroll 6
        for (int t = 0; t < NT; t++) {
            _mm256_storeu_ps(gsb + 16 * t, a0[t]);
            _mm256_storeu_ps(gsb + 16 * t + 8, a1[t]);
        }
    }
}

/* R16_PANEL_T <= T <= R16_TS tokens: groups outer (a group's activations stay in cache across the nb blocks),
 * token tiles of 3..6 (T split evenly into ceil(T / 6) tiles). */
UQ_T2 static void r16_f32_panel_avx2(const uint8_t *const *wb, const uint16_t *const *sb, int nb, const float *x,
                                int64_t ldx, int64_t T, const uq_k_chunk *g, int64_t ng, float *out, int64_t ldo) {
    float p[R16_PC * 16], gsb[R16_TS * 16];
    const int64_t ntile = (T + 5) / 6;
    for (int64_t t = 0; t < T; t++) memset(out + t * ldo, 0, (size_t)(16 * nb) * sizeof(float));
    for (int64_t k = 0; k < ng; k++) {
        const int64_t n = g[k].n, w0 = g[k].wcol * 64;
        for (int i = 0; i < nb; i++) {
            const uint16_t *s = sb[i] + g[k].scol * 16;
            for (int64_t c0 = 0; c0 < n; c0 += R16_PC) {
                const int64_t pn = n - c0 < R16_PC ? n - c0 : R16_PC;
                const int first = c0 == 0, last = c0 + pn == n;
                r16_panel(wb[i] + w0 + c0 * 8, pn, p);
                const float *xk = x + g[k].xcol + c0;
                for (int64_t j = 0, t0 = 0; j < ntile; j++) {
                    const int nt = (int)(T / ntile + (j < T % ntile));
                    const float *xt = xk + t0 * ldx;
                    float *o = out + t0 * ldo + 16 * i, *gt = gsb + 16 * t0;
                    switch (nt) {
                    case 6: r16_mk(p, pn, xt, ldx, gt, first, last, s, o, ldo, 6); break;
                    case 5: r16_mk(p, pn, xt, ldx, gt, first, last, s, o, ldo, 5); break;
                    case 4: r16_mk(p, pn, xt, ldx, gt, first, last, s, o, ldo, 4); break;
                    default: r16_mk(p, pn, xt, ldx, gt, first, last, s, o, ldo, 3); break; /* T >= 3: nt >= 3 */
                    }
                    t0 += nt;
                }
            }
        }
    }
}

UQ_T2 static void r16_f32_avx2(const uint8_t *const *wb, const uint16_t *const *sb, int nb, const float *x, int64_t ldx,
                          int64_t T, const uq_k_chunk *g, int64_t ng, float *out, int64_t ldo) {
    if (T >= R16_PANEL_T) { /* passes of <= R16_TS tokens, split evenly (each >= R16_TS / 2) */
        const int64_t npass = (T + R16_TS - 1) / R16_TS;
        for (int64_t j = 0, t0 = 0; j < npass; j++) {
            const int64_t tn = T / npass + (j < T % npass);
            r16_f32_panel_avx2(wb, sb, nb, x + t0 * ldx, ldx, tn, g, ng, out + t0 * ldo, ldo);
            t0 += tn;
        }
        return;
    }
    for (int64_t t0 = 0; t0 < T; t0 += 4) {
        const int nt = (int)(T - t0 < 4 ? T - t0 : 4);
        const float *xt = x + t0 * ldx;
        float *o = out + t0 * ldo;
        int i0 = 0;
        if (nt == 1)
            for (; i0 + 2 <= nb; i0 += 2) r16_f32_tile(wb + i0, sb + i0, xt, ldx, g, ng, o + 16 * i0, ldo, 2, 1);
        for (; i0 < nb; i0++) {
            switch (nt) {
            case 1: r16_f32_tile(wb + i0, sb + i0, xt, ldx, g, ng, o + 16 * i0, ldo, 1, 1); break;
            case 2: r16_f32_tile(wb + i0, sb + i0, xt, ldx, g, ng, o + 16 * i0, ldo, 1, 2); break;
            case 3: r16_f32_tile(wb + i0, sb + i0, xt, ldx, g, ng, o + 16 * i0, ldo, 1, 3); break;
            default: r16_f32_tile(wb + i0, sb + i0, xt, ldx, g, ng, o + 16 * i0, ldo, 1, 4); break;
            }
        }
    }
}

/* Prefill tokens [0, T) in tiles of 4..8 tokens (T >= 5 split evenly into ceil(T / 8) tiles: 4 only for the
 * second of T = 9), each block's two halves with r16_q8_tile1h. */
static UQ_T2I void r16_q8_prefill(const uint8_t *const *wb, const uint16_t *const *sb, int nb, const int8_t *xq,
                                  int64_t ldq, const float *xs, const int32_t *xsum, int64_t ldg, int64_t T,
                                  const uq_k_chunk *g, int64_t ng, float *out, int64_t ldo) {
    const int64_t ntile = (T + 7) / 8;
    for (int64_t j = 0, t0 = 0; j < ntile; j++) {
        const int nt = (int)(T / ntile + (j < T % ntile));
        const int8_t *xt = xq + t0 * ldq;
        const float *st = xs + t0 * ldg;
        const int32_t *sm = xsum + t0 * ldg;
        float *o = out + t0 * ldo;
        for (int i = 0; i < nb; i++)
            for (int h = 0; h < 2; h++) {
                switch (nt) {
                case 8: r16_q8_tile1h(wb[i], sb[i], h, xt, ldq, st, sm, ldg, g, ng, o + 16 * i, ldo, 8); break;
                case 7: r16_q8_tile1h(wb[i], sb[i], h, xt, ldq, st, sm, ldg, g, ng, o + 16 * i, ldo, 7); break;
                case 6: r16_q8_tile1h(wb[i], sb[i], h, xt, ldq, st, sm, ldg, g, ng, o + 16 * i, ldo, 6); break;
                case 5: r16_q8_tile1h(wb[i], sb[i], h, xt, ldq, st, sm, ldg, g, ng, o + 16 * i, ldo, 5); break;
                default: r16_q8_tile1h(wb[i], sb[i], h, xt, ldq, st, sm, ldg, g, ng, o + 16 * i, ldo, 4); break;
                }
            }
        t0 += nt;
    }
}

UQ_T2 static void r16_q8_avx2(const uint8_t *const *wb, const uint16_t *const *sb, int nb, const int8_t *xq, int64_t ldq,
                         const float *xs, const int32_t *xsum, int64_t ldg, int64_t T, const uq_k_chunk *g,
                         int64_t ng, float *out, int64_t ldo, const uq_k_r16_pf *pf) {
    if (T >= 5) { /* prefill */
        r16_q8_prefill(wb, sb, nb, xq, ldq, xs, xsum, ldg, T, g, ng, out, ldo);
        return;
    }
    /* decode: the plan only for T == 1 (a last lone token of a larger T runs without one) */
    const int64_t *co = T == 1 && pf ? pf->co : NULL, nct = co ? pf->nct : 0;
    for (int64_t t0 = 0; t0 < T; t0 += 4) {
        const int nt = (int)(T - t0 < 4 ? T - t0 : 4);
        const int8_t *xt = xq + t0 * ldq;
        const float *st = xs + t0 * ldg;
        const int32_t *sm = xsum + t0 * ldg;
        float *o = out + t0 * ldo;
        int i0 = 0;
        if (nt == 1)
            for (; i0 + 2 <= nb; i0 += 2) { /* the next tile: the next 2 blocks of this call, else the plan's */
                const uint8_t *wn[2] = {wb[i0 + 2 < nb ? i0 + 2 : nb - 1], wb[i0 + 3 < nb ? i0 + 3 : nb - 1]};
                const uint16_t *sx[2] = {sb[i0 + 2 < nb ? i0 + 2 : nb - 1], sb[i0 + 3 < nb ? i0 + 3 : nb - 1]};
                const uint8_t *const *next = i0 + 2 < nb ? wn : co ? pf->wn : NULL;
                const uint16_t *const *nexts = i0 + 2 < nb ? sx : co ? pf->sn : NULL;
                r16_q8_tile(wb + i0, sb + i0, xt, ldq, st, sm, ldg, g, ng, o + 16 * i0, ldo, co, nct, next, nexts, 2, 1);
            }
        for (; i0 < nb; i0++) {
            switch (nt) {
            case 1: r16_q8_tile(wb + i0, sb + i0, xt, ldq, st, sm, ldg, g, ng, o + 16 * i0, ldo, co, nct, co ? pf->wn : NULL, co ? pf->sn : NULL, 1, 1); break;
            case 2: r16_q8_tile2h(wb[i0], sb[i0], xt, ldq, st, sm, ldg, g, ng, o + 16 * i0, ldo, 2); break;
            case 3: r16_q8_tile2h(wb[i0], sb[i0], xt, ldq, st, sm, ldg, g, ng, o + 16 * i0, ldo, 3); break;
            default: r16_q8_tile2h(wb[i0], sb[i0], xt, ldq, st, sm, ldg, g, ng, o + 16 * i0, ldo, 4); break;
            }
        }
    }
}

/* uq_k_q8_quant, cw = 0, with the same arithmetic: amax by vmaxps (NaN in the first operand yields the second,
 * so NaN is ignored as in the scalar loop), v = x * (127 / amax), NaN -> 0, clamp to +-127, round half to even
 * (vcvtps2dq under the default rounding mode = the scalar magic-number rint for |v| <= 127). */
UQ_T2 void uq_k_q8_quant0_avx2(const float *x, const uq_k_chunk *ch, int64_t nch, int8_t *xqrow, float *xs,
                               int32_t *xsum) {
    const __m256 sgn = _mm256_set1_ps(-0.0f), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    for (int64_t k = 0; k < nch; k++) {
        const float *xg = x + ch[k].xcol;
        const int64_t n = ch[k].n;
        int8_t *dst = xqrow + ch[k].xq;
        __m256 am = _mm256_setzero_ps();
        for (int64_t i = 0; i < n; i += 8) am = _mm256_max_ps(_mm256_andnot_ps(sgn, load8f(xg + i, n - i)), am);
        float t[8];
        _mm256_storeu_ps(t, am);
        float amax = 0.0f;
        for (int l = 0; l < 8; l++) amax = t[l] > amax ? t[l] : amax;
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        xs[k] = amax / 127.0f;
        const __m256 iv = _mm256_set1_ps(inv);
        __m256i sum = _mm256_setzero_si256();
        for (int64_t i = 0; i < n; i += 8) { /* zero padding: 0 * inv = 0 */
            __m256 v = _mm256_mul_ps(load8f(xg + i, n - i), iv);
            v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));
            v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
            const __m256i q = _mm256_cvtps_epi32(v);
            sum = _mm256_add_epi32(sum, q);
            const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
            _mm_storel_epi64((__m128i *)(dst + i), _mm_packs_epi16(q16, q16));
        }
        int32_t ls[8];
        _mm256_storeu_si256((__m256i *)ls, sum);
        xsum[k] = ls[0] + ls[1] + ls[2] + ls[3] + ls[4] + ls[5] + ls[6] + ls[7];
    }
}

const uq_kpath uq_kpath_avx2 = {
    .name = "avx2",
    .V = 8,
    .cw = 64,
    .dot = dot_f32_avx2,
    .axpy = axpy_f32_avx2,
    .gemv_f32 = gemv_f32_avx2,
    .gemv_f16 = gemv_f16_avx2,
    .gemv_q4 = gemv_q4rm_f32_avx2,
    .pack_f16 = pack_f16_avx2,
    .pack_q4 = pack_q4_avx2,
    .gemm = gemm_f32_4rows_avx2,
    .q8_gemv = gemv_q4rm_q8_avx2,
    .q8_gemm = NULL,
    .q8_gemm_work = NULL,
    .r16_f32 = r16_f32_avx2,
    .r16_q8 = r16_q8_avx2,
    .r16_decode_nb = 2,
    .q8_quant0 = uq_k_q8_quant0_avx2,
    .attn_scores = attn_scores_f32_avx2,
    .attn_accum = attn_accum_f32_avx2,
    .attn_scores_f16 = attn_scores_f16_avx2,
    .attn_accum_f16 = attn_accum_f16_avx2,
    .f32_to_f16 = uq_k_f32_to_f16_avx2,
    .f16_to_f32 = uq_k_f16_to_f32_avx2,
    .softmax = uq_k_softmax_avx2,
    .silu_mul = uq_k_silu_mul_avx2,
};

#endif
