/*
 * kernels_avx512.c -- the "avx512" kernel path (AVX-512 F/BW/VL + VNNI, selected at run time; every function
 * carries its own target attribute, the file is compiled without -march flags).
 *
 *   fp32 / fp16 dot:  acc[l] = fma(w[c], x[c], acc[l]) for the columns c = l (mod 16) of each 16-column chunk
 *                     of each kept segment (tail lanes masked), result = uq_k_reduce16(acc) (+ bias).
 *   int4, fp32 act:   the same dot on fl((q - 8) * scale) (a 16-entry table (i - 8) * scale looked up with
 *                     vpermps), columns taken in pieces: groups multiple of 128: 128-column pieces, vector j
 *                     (j = 0..7) = columns 8i + j (i = lane); other groups: 32-column pieces [16 even | 16 odd].
 *   int4, int8 act:   isum = vpdpbusd(u8 codes, s8 xq) - 8 * sum(xq) per group (exact), then the scalar
 *                     epilogue tot = tot + (float)isum * (ws * xs) (bit-identical to the ref path).
 * GEMM kernels (T > 4) run the same per-element sequences on packed panels: 4 rows x 6 tokens of 16-lane
 * FMA accumulators (fp32 act) and 32 rows x 8 tokens of int32 vpdpbusd accumulators on u8 panels laid out
 * [k/4][16 rows][4] (int8 act).
 */
#include <string.h>

#include "kernels.h"

#ifdef UQ_K_X86
#include <immintrin.h>

#define UQ_T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define UQ_T512I __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"), always_inline)) inline

/* acc += u8(w) . s8(x) in place (inline asm: GCC 12 copies the accumulators of the builtin every iteration) */
static UQ_T512I __m512i dpbusd(__m512i acc, __m512i w, __m512i x) {
    __asm__("vpdpbusd %[x], %[w], %[a]" : [a] "+v"(acc) : [w] "v"(w), [x] "v"(x));
    return acc;
}

static UQ_T512I __mmask16 tail16(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }

static UQ_T512I __mmask64 tail64(int64_t n) { return n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1); }

UQ_T512 static float dot_f32_avx512(const float *a, const float *b, int64_t n) {
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    if (i < n) {
        __mmask16 m = tail16(n - i);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
    }
    float t[16];
    _mm512_storeu_ps(t, acc);
    return uq_k_reduce16(t);
}

/* sc[s] = dot_f32_avx512(q, K + s * rc, r) * scale, 8 keys at a time: each key's 16 lanes folded to 8 (a[i] + a[i + 8],
 * uq_k_reduce16's first step), then one transposed reduce8 for the 8 keys (bit-identical to dot_f32_avx512). */
/* uq_k_reduce16 of 8 keys' lane accumulators a[0..7], in registers: lanes folded (a[i] + a[i + 8]), then per key
 * s_i = f_i + f_{i+4} and (s_0 + s_2) + (s_1 + s_3) = uq_k_reduce8's tree, computed for 8 keys by 128-bit lane
 * permutes and in-lane shuffles (vertical adds only, so each key's sums are the scalar tree's). Key j in lane j. */
static UQ_T512I __m256 reduce16x8_avx512(const __m512 *a) {
    __m256 f[8], S[4];
    for (int j = 0; j < 8; j++)
        f[j] = _mm256_add_ps(_mm512_castps512_ps256(a[j]),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a[j]), 1)));
    for (int p = 0; p < 4; p++) /* S[p]: keys 2p (low 128 bits) and 2p + 1 (high), s_0..s_3 each */
        S[p] = _mm256_add_ps(_mm256_permute2f128_ps(f[2 * p], f[2 * p + 1], 0x20),
                             _mm256_permute2f128_ps(f[2 * p], f[2 * p + 1], 0x31));
    /* V01 low: k0 (s0+s2, s1+s3), k2 (...); high: k1, k3. V23: k4, k6 / k5, k7 */
    const __m256 V01 = _mm256_add_ps(_mm256_shuffle_ps(S[0], S[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                     _mm256_shuffle_ps(S[0], S[1], _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 V23 = _mm256_add_ps(_mm256_shuffle_ps(S[2], S[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                     _mm256_shuffle_ps(S[2], S[3], _MM_SHUFFLE(3, 2, 3, 2)));
    /* R low: k0, k2, k4, k6; high: k1, k3, k5, k7 */
    const __m256 R = _mm256_add_ps(_mm256_shuffle_ps(V01, V23, _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm256_shuffle_ps(V01, V23, _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm256_permutevar8x32_ps(R, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* Attention helpers' software prefetch distance in a decode call (uq_k_attn_cold_rows), in keys (cache rows) ahead of
 * the ones being read: the first r elements of row s + UQ_K_ATTN_PF512 while the scores read row s, and that row's
 * columns of the pass while the accumulation reads row s. In a decode step the K / V rows come from memory after the
 * weights' stream has gone through the caches, and the hardware prefetchers alone left the helpers waiting on them:
 * 8B-shaped stack (2 layers, 1 thread, 512-token prompt, builds alternating in 6 / 3 rounds) 4.38 -> 4.16 ms per token
 * at rate 35%, 6.51 -> 6.31 ms at rate 0 (8, 16 and 24 keys ahead within noise of each other). Not in prefill, whose
 * rows are in cache: there the prefetches only cost (SmolLM2's 512-token prefill 6% slower). Hints only. */
#define UQ_K_ATTN_PF512 16

/* 16 cache elements at K + off as floats: fp32, or fp16 converted exactly (vcvtph2ps); lanes outside m zero. A mask of
 * the low 8 lanes (a head dim that is 8 mod 16) is an unmasked 8-element load, zero-extended: the same values, but
 * AMD Zen 5 ran the masked loads of a 40-dim head's tail so slowly (they wait on the score stores, perf: half of the
 * scores' time) that SmolLM2's decode at rate 35% took 1.3x as long. */
static UQ_T512I __m512 load16k(const void *K, int f16, int64_t off, __mmask16 m) {
    if (m == 0xFFFF)
        return f16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)K + off)))
                   : _mm512_loadu_ps((const float *)K + off);
    if (m == 0x00FF)
        return f16 ? _mm512_cvtph_ps(_mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)((const uint16_t *)K + off))))
                   : _mm512_zextps256_ps512(_mm256_loadu_ps((const float *)K + off));
    return f16 ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)K + off))
               : _mm512_maskz_loadu_ps(m, (const float *)K + off);
}

/* Scores of HN (1..4) query heads q + j * r against keys s0 .. s0 + KN - 1 (KN = 8 for one head, else 4; a key past
 * n - 1 repeats the last one, its score not stored): HN x KN 16-lane accumulators (slot j * KN + k), each key row
 * loaded and converted once for the HN heads. Per (head, key) the FMA chain of dot_f32_avx512 and, through
 * reduce16x8_avx512 over each 8 slots, its uq_k_reduce16 tree: bit-identical to dot_f32_avx512 * scale. */
static UQ_T512I void scores_block_avx512(const float *q, const void *K, int f16, int64_t rc, int64_t n, int64_t r,
                                         float scale, int64_t s0, float *sc, int64_t ldsc, const int HN, const int cold,
                                         const char *Vp) {
    const int KN = HN == 1 ? 8 : 4, NS = HN * KN > 8 ? 16 : 8; /* NS: slots, whole reduce16x8 groups */
    const __mmask16 mt = tail16(r % 16);
    __m512 a[16];
    int64_t off[8];
    #pragma GCC unroll 8
    for (int k = 0; k < KN; k++) off[k] = (s0 + k < n ? s0 + k : n - 1) * rc;
    if (cold) /* decode: K rows ahead, and V's (Vp: uq_k_attn_pf_v) */
        uq_k_attn_prefetch_rows(K, Vp, f16 ? 2 : 4, rc, r, s0 + UQ_K_ATTN_PF512, KN, n);
    #pragma GCC unroll 16
    for (int k = 0; k < NS; k++) a[k] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= r; i += 16) {
        __m512 kv[8];
        #pragma GCC unroll 8
        for (int k = 0; k < KN; k++) kv[k] = load16k(K, f16, off[k] + i, 0xFFFF);
        #pragma GCC unroll 4
        for (int j = 0; j < HN; j++) {
            const __m512 qv = _mm512_loadu_ps(q + j * r + i);
            #pragma GCC unroll 8
            for (int k = 0; k < KN; k++) a[j * KN + k] = _mm512_fmadd_ps(qv, kv[k], a[j * KN + k]);
        }
    }
    if (i < r) {
        __m512 kv[8];
        #pragma GCC unroll 8
        for (int k = 0; k < KN; k++) kv[k] = load16k(K, f16, off[k] + i, mt);
        #pragma GCC unroll 4
        for (int j = 0; j < HN; j++) {
            const __m512 qv = load16k(q + j * r, 0, i, mt);
            #pragma GCC unroll 8
            for (int k = 0; k < KN; k++) a[j * KN + k] = _mm512_fmadd_ps(qv, kv[k], a[j * KN + k]);
        }
    }
    float o[16];
    const __m256 scv = _mm256_set1_ps(scale);
    _mm256_storeu_ps(o, _mm256_mul_ps(reduce16x8_avx512(a), scv));
    if (NS == 16) _mm256_storeu_ps(o + 8, _mm256_mul_ps(reduce16x8_avx512(a + 8), scv));
    const int64_t ns = n - s0 < KN ? n - s0 : KN;
    #pragma GCC unroll 4
    for (int j = 0; j < HN; j++) memcpy(sc + j * ldsc + s0, o + j * KN, (size_t)ns * sizeof(float));
}

/* sc[j * ldsc + s] = dot_f32_avx512(q + j * r, K + s * rc, r) * scale for nq <= 4 heads; K fp32 or fp16 (the same FMA
 * sequence on the converted rows). */
static UQ_T512I void attn_scores_blocks_avx512(const float *q, int64_t nq, const void *K, int f16, int64_t rc,
                                               int64_t n, int64_t r, float scale, float *sc, int64_t ldsc,
                                               const int cold, const char *Vp) {
    for (int64_t s0 = 0; s0 < n;) {
        switch (nq) {
        case 1: scores_block_avx512(q, K, f16, rc, n, r, scale, s0, sc, ldsc, 1, cold, Vp); s0 += 8; break;
        case 2: scores_block_avx512(q, K, f16, rc, n, r, scale, s0, sc, ldsc, 2, cold, Vp); s0 += 4; break;
        case 3: scores_block_avx512(q, K, f16, rc, n, r, scale, s0, sc, ldsc, 3, cold, Vp); s0 += 4; break;
        default: scores_block_avx512(q, K, f16, rc, n, r, scale, s0, sc, ldsc, 4, cold, Vp); s0 += 4; break;
        }
    }
}

/* decode (uq_k_attn_cold_rows) and prefill run separate copies of the loop: prefill's carries no prefetch code */
static UQ_T512I void attn_scores_avx512(const float *q, int64_t nq, const void *K, int f16, int64_t rc, int64_t n,
                                        int64_t r, float scale, float *sc, int64_t ldsc) {
    if (uq_k_attn_cold_rows)
        attn_scores_blocks_avx512(q, nq, K, f16, rc, n, r, scale, sc, ldsc, 1, uq_k_attn_pf_v);
    else
        attn_scores_blocks_avx512(q, nq, K, f16, rc, n, r, scale, sc, ldsc, 0, NULL);
}

UQ_T512 static void attn_scores_f32_avx512(const float *q, int64_t nq, const float *K, int64_t rc, int64_t n,
                                           int64_t r, float scale, float *sc, int64_t ldsc) {
    attn_scores_avx512(q, nq, K, 0, rc, n, r, scale, sc, ldsc);
}

UQ_T512 static void attn_scores_f16_avx512(const float *q, int64_t nq, const uint16_t *K, int64_t rc, int64_t n,
                                           int64_t r, float scale, float *sc, int64_t ldsc) {
    attn_scores_avx512(q, nq, K, 1, rc, n, r, scale, sc, ldsc);
}

/* out_j = sum over s in order of p_j[s] * (V + s * rc) for HN (1..4) heads (p rows j * ldp, out rows j * r): 64
 * columns per pass in registers for all HN heads, each V row chunk loaded and converted once for them; per element
 * y = fma(p_j[s], v, y) from 0, the chain of repeated axpys (the tail lanes masked). V fp32 or fp16 (exact). */
static UQ_T512I void accum_heads_avx512(const float *p, int64_t ldp, const void *V, int f16, int64_t rc, int64_t n,
                                        int64_t r, float *out, const int HN) {
    for (int64_t c0 = 0; c0 < r; c0 += 64) {
        const int64_t w = r - c0 < 64 ? r - c0 : 64;
        const int nv = (int)((w + 15) / 16);
        __mmask16 m[4];
        #pragma GCC unroll 4
        for (int c = 0; c < 4; c++) m[c] = c < nv ? tail16(w - 16 * c) : 0;
        __m512 y[4][4];
        #pragma GCC unroll 4
        for (int j = 0; j < HN; j++)
            #pragma GCC unroll 4
            for (int c = 0; c < 4; c++) y[j][c] = _mm512_setzero_ps();
        const int64_t es = f16 ? 2 : 4, pfd = uq_k_attn_cold_rows ? UQ_K_ATTN_PF512 : n;
        for (int64_t s = 0; s < n; s++) {
            if (s + pfd < n)
                for (int64_t b = 0; b < w * es; b += 64)
                    _mm_prefetch((const char *)V + ((s + pfd) * rc + c0) * es + b, _MM_HINT_T0);
            __m512 v[4];
            #pragma GCC unroll 4
            for (int c = 0; c < 4; c++) v[c] = c < nv ? load16k(V, f16, s * rc + c0 + 16 * c, m[c]) : _mm512_setzero_ps();
            #pragma GCC unroll 4
            for (int j = 0; j < HN; j++) {
                const __m512 pv = _mm512_set1_ps(p[j * ldp + s]);
                #pragma GCC unroll 4
                for (int c = 0; c < 4; c++)
                    if (c < nv) y[j][c] = _mm512_fmadd_ps(pv, v[c], y[j][c]);
            }
        }
        #pragma GCC unroll 4
        for (int j = 0; j < HN; j++)
            #pragma GCC unroll 4
            for (int c = 0; c < 4; c++)
                if (c < nv) _mm512_mask_storeu_ps(out + j * r + c0 + 16 * c, m[c], y[j][c]);
    }
}

static UQ_T512I void attn_accum_avx512(const float *p, int64_t ldp, int64_t nq, const void *V, int f16, int64_t rc,
                                       int64_t n, int64_t r, float *out) {
    switch (nq) {
    case 1: accum_heads_avx512(p, ldp, V, f16, rc, n, r, out, 1); break;
    case 2: accum_heads_avx512(p, ldp, V, f16, rc, n, r, out, 2); break;
    case 3: accum_heads_avx512(p, ldp, V, f16, rc, n, r, out, 3); break;
    default: accum_heads_avx512(p, ldp, V, f16, rc, n, r, out, 4); break;
    }
}

/* The accumulation helpers start on a 64-byte line (as attn_task): their hot loop's placement otherwise moves with
 * unrelated code changes (SmolLM2's 512-token prefill, where they are ~7% of the time, ran 2-3% slower with this one
 * starting 32 bytes into a line). */
UQ_T512 __attribute__((aligned(64))) static void attn_accum_f32_avx512(const float *p, int64_t ldp, int64_t nq, const float *V, int64_t rc,
                                          int64_t n, int64_t r, float *out) {
    attn_accum_avx512(p, ldp, nq, V, 0, rc, n, r, out);
}

UQ_T512 __attribute__((aligned(64))) static void attn_accum_f16_avx512(const float *p, int64_t ldp, int64_t nq, const uint16_t *V, int64_t rc,
                                          int64_t n, int64_t r, float *out) {
    attn_accum_avx512(p, ldp, nq, V, 1, rc, n, r, out);
}

UQ_T512 static void axpy_f32_avx512(float a, const float *x, float *y, int64_t n) {
    __m512 av = _mm512_set1_ps(a);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 m = tail16(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

/* ------------------------------------------------------------------------------ fp32 GEMV ---- */

static UQ_T512I void gemv_f32_tile(const float *const *w, const float *x, int64_t ldx, const uq_k_chunk *ch,
                                int64_t nch, float *acc, const int MR, const int TT) {
    __m512 a[8][4];
    #pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < TT; t++) a[r][t] = _mm512_setzero_ps();
    for (int64_t k = 0; k < nch; k++) {
        const __mmask16 m = tail16(ch[k].n);
        __m512 xv[4];
        #pragma GCC unroll 8
        for (int t = 0; t < TT; t++) xv[t] = _mm512_maskz_loadu_ps(m, x + t * ldx + ch[k].xcol);
        #pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            __m512 wv = _mm512_maskz_loadu_ps(m, w[r] + ch[k].wcol);
            #pragma GCC unroll 8
            for (int t = 0; t < TT; t++) a[r][t] = _mm512_fmadd_ps(wv, xv[t], a[r][t]);
        }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < TT; t++) _mm512_storeu_ps(acc + (r * TT + t) * 16, a[r][t]);
}

UQ_T512 static void gemv_f32_avx512(const float *const *w, int mr, const float *x, int64_t ldx, int T, const uq_k_chunk *ch,
                             int64_t nch, float *acc) {
    const float *wp[8];
    int MR = T <= 2 ? 8 : 4;
    #pragma GCC unroll 8
    for (int i = 0; i < 8; i++) wp[i] = w[i < mr ? i : mr - 1];
    float tmp[8 * 4 * 16];
    switch (T * 10 + MR) {
    case 18: gemv_f32_tile(wp, x, ldx, ch, nch, tmp, 8, 1); break;
    case 28: gemv_f32_tile(wp, x, ldx, ch, nch, tmp, 8, 2); break;
    case 34: gemv_f32_tile(wp, x, ldx, ch, nch, tmp, 4, 3); break;
    default: gemv_f32_tile(wp, x, ldx, ch, nch, tmp, 4, 4); break;
    }
    memcpy(acc, tmp, (size_t)(mr * T * 16) * sizeof(float));
}

/* ------------------------------------------------------------------------------ fp16 GEMV ---- */

static UQ_T512I __m512 load_h16(const uint16_t *p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

static UQ_T512I void gemv_f16_tile(const uint16_t *const *w, const float *x, int64_t ldx, const uq_k_chunk *ch,
                                int64_t nch, float *acc, const int MR, const int TT) {
    __m512 a[8][4];
    #pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < TT; t++) a[r][t] = _mm512_setzero_ps();
    for (int64_t k = 0; k < nch; k++) {
        const __mmask16 m = tail16(ch[k].n);
        __m512 xv[4];
        #pragma GCC unroll 8
        for (int t = 0; t < TT; t++) xv[t] = _mm512_maskz_loadu_ps(m, x + t * ldx + ch[k].xcol);
        #pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            __m512 wv = load_h16(w[r] + ch[k].wcol, m);
            #pragma GCC unroll 8
            for (int t = 0; t < TT; t++) a[r][t] = _mm512_fmadd_ps(wv, xv[t], a[r][t]);
        }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < TT; t++) _mm512_storeu_ps(acc + (r * TT + t) * 16, a[r][t]);
}

UQ_T512 static void gemv_f16_avx512(const uint16_t *const *w, int mr, const float *x, int64_t ldx, int T,
                             const uq_k_chunk *ch, int64_t nch, float *acc) {
    const uint16_t *wp[8];
    int MR = T <= 2 ? 8 : 4;
    #pragma GCC unroll 8
    for (int i = 0; i < 8; i++) wp[i] = w[i < mr ? i : mr - 1];
    float tmp[8 * 4 * 16];
    switch (T * 10 + MR) {
    case 18: gemv_f16_tile(wp, x, ldx, ch, nch, tmp, 8, 1); break;
    case 28: gemv_f16_tile(wp, x, ldx, ch, nch, tmp, 8, 2); break;
    case 34: gemv_f16_tile(wp, x, ldx, ch, nch, tmp, 4, 3); break;
    default: gemv_f16_tile(wp, x, ldx, ch, nch, tmp, 4, 4); break;
    }
    memcpy(acc, tmp, (size_t)(mr * T * 16) * sizeof(float));
}

/* --------------------------------------------------------------------- int4 GEMV, fp32 act ---- */

/* 32 int4 columns from byte p (n valid columns) as dequantized floats: lo = even, hi = odd columns. */
static UQ_T512I void q4_piece(const uint8_t *p, int64_t n, __m512 tab, __m512 *lo, __m512 *hi) {
    __mmask16 m = tail16((n + 1) / 2);
    __m512i v = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, p));
    *lo = _mm512_permutexvar_ps(v, tab);
    *hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tab);
}

static UQ_T512I __m512 q4_base(void) {
    return _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
}

static UQ_T512I void gemv_q4rm_f32_tile(const uint8_t *const *w, const float *const *s, const float *xp, int64_t ldxp,
                               const uq_k_chunk *ch, int64_t nch, float *acc, const int MR, const int TT) {
    const __m512 base = q4_base();
    __m512 a[8][4];
    #pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < TT; t++) a[r][t] = _mm512_setzero_ps();
    for (int64_t k = 0; k < nch; k++) {
        __m512 xe[4], xo[4];
        #pragma GCC unroll 8
        for (int t = 0; t < TT; t++) {
            xe[t] = _mm512_loadu_ps(xp + t * ldxp + k * 32);
            xo[t] = _mm512_loadu_ps(xp + t * ldxp + k * 32 + 16);
        }
        #pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            __m512 tab = _mm512_mul_ps(base, _mm512_set1_ps(s[r][ch[k].scol])), lo, hi;
            q4_piece(w[r] + ch[k].wcol / 2, ch[k].n, tab, &lo, &hi);
            #pragma GCC unroll 8
            for (int t = 0; t < TT; t++) {
                a[r][t] = _mm512_fmadd_ps(lo, xe[t], a[r][t]);
                a[r][t] = _mm512_fmadd_ps(hi, xo[t], a[r][t]);
            }
        }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < TT; t++) _mm512_storeu_ps(acc + (r * TT + t) * 16, a[r][t]);
}

UQ_T512 static void gemv_q4rm_f32_avx512(const uint8_t *const *w, const float *const *s, int mr, const float *xp, int64_t ldxp,
                            int T, const uq_k_chunk *ch, int64_t nch, float *acc) {
    const uint8_t *wp[8];
    const float *sp[8];
    int MR = T <= 2 ? 8 : 4;
    uq_k_tile_rows(w, s, mr, 8, wp, sp);
    float tmp[8 * 4 * 16];
    switch (T * 10 + MR) {
    case 18: gemv_q4rm_f32_tile(wp, sp, xp, ldxp, ch, nch, tmp, 8, 1); break;
    case 28: gemv_q4rm_f32_tile(wp, sp, xp, ldxp, ch, nch, tmp, 8, 2); break;
    case 34: gemv_q4rm_f32_tile(wp, sp, xp, ldxp, ch, nch, tmp, 4, 3); break;
    default: gemv_q4rm_f32_tile(wp, sp, xp, ldxp, ch, nch, tmp, 4, 4); break;
    }
    memcpy(acc, tmp, (size_t)(mr * T * 16) * sizeof(float));
}

/* Wide int4 pieces (groups that are multiples of 128): 64 bytes = 16 dwords of 8 nibbles; nibble j of dword i
 * is column 8i + j. Vector j of a piece holds columns 8i + j (i = 0..15), looked up in the scale table by
 * vpermps on the dword shifted right by 4j (vpermps reads index bits 0..3 only). */
static UQ_T512I void gemv_q4rm_f32_wide_tile(const uint8_t *const *w, const float *const *s, const float *xp, int64_t ldxp,
                                const uq_k_chunk *ch, int64_t nch, float *acc, const int MR, const int TT) {
    const __m512 base = q4_base();
    __m512 a[8][4];
    #pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < TT; t++) a[r][t] = _mm512_setzero_ps();
    for (int64_t k = 0; k < nch; k++) {
        const __mmask64 m = tail64((ch[k].n + 1) / 2);
        const float *xk = xp + k * 128;
        #pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            __m512 tab = _mm512_mul_ps(base, _mm512_set1_ps(s[r][ch[k].scol]));
            __m512i v = _mm512_maskz_loadu_epi8(m, w[r] + ch[k].wcol / 2);
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                __m512 wj = _mm512_permutexvar_ps(j ? _mm512_srli_epi32(v, 4 * j) : v, tab);
                #pragma GCC unroll 8
                for (int t = 0; t < TT; t++) a[r][t] = _mm512_fmadd_ps(wj, _mm512_loadu_ps(xk + t * ldxp + j * 16), a[r][t]);
            }
        }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < TT; t++) _mm512_storeu_ps(acc + (r * TT + t) * 16, a[r][t]);
}

UQ_T512 static void gemv_q4rm_f32_wide_avx512(const uint8_t *const *w, const float *const *s, int mr, const float *xp, int64_t ldxp,
                             int T, const uq_k_chunk *ch, int64_t nch, float *acc) {
    const uint8_t *wp[8];
    const float *sp[8];
    int MR = T <= 2 ? 8 : 4;
    uq_k_tile_rows(w, s, mr, 8, wp, sp);
    float tmp[8 * 4 * 16];
    switch (T * 10 + MR) {
    case 18: gemv_q4rm_f32_wide_tile(wp, sp, xp, ldxp, ch, nch, tmp, 8, 1); break;
    case 28: gemv_q4rm_f32_wide_tile(wp, sp, xp, ldxp, ch, nch, tmp, 8, 2); break;
    case 34: gemv_q4rm_f32_wide_tile(wp, sp, xp, ldxp, ch, nch, tmp, 4, 3); break;
    default: gemv_q4rm_f32_wide_tile(wp, sp, xp, ldxp, ch, nch, tmp, 4, 4); break;
    }
    memcpy(acc, tmp, (size_t)(mr * T * 16) * sizeof(float));
}

UQ_T512 static void pack_q4w_avx512(const uint8_t *w, const float *s, const uq_k_chunk *ch, int64_t nch, float *dst) {
    const __m512 base = q4_base();
    for (int64_t k = 0; k < nch; k++) {
        __m512 tab = _mm512_mul_ps(base, _mm512_set1_ps(s[ch[k].scol]));
        __m512i v = _mm512_maskz_loadu_epi8(tail64((ch[k].n + 1) / 2), w + ch[k].wcol / 2);
        #pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            _mm512_storeu_ps(dst + k * 128 + j * 16, _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4 * j), tab));
    }
}

/* ------------------------------------------------------------------------------- packing ---- */

UQ_T512 static void pack_f16_avx512(const uint16_t *w, const uq_k_chunk *ch, int64_t nch, float *dst) {
    for (int64_t k = 0; k < nch; k++) _mm512_storeu_ps(dst + k * 16, load_h16(w + ch[k].wcol, tail16(ch[k].n)));
}

UQ_T512 static void pack_q4_avx512(const uint8_t *w, const float *s, const uq_k_chunk *ch, int64_t nch, float *dst) {
    const __m512 base = q4_base();
    for (int64_t k = 0; k < nch; k++) {
        __m512 lo, hi, tab = _mm512_mul_ps(base, _mm512_set1_ps(s[ch[k].scol]));
        q4_piece(w + ch[k].wcol / 2, ch[k].n, tab, &lo, &hi);
        _mm512_storeu_ps(dst + k * 32, lo);
        _mm512_storeu_ps(dst + k * 32 + 16, hi);
    }
}

/* ------------------------------------------------------------------------------ fp32 GEMM ---- */

static UQ_T512I void gemm_f32_4rows_tile(const float *const *w4, const float *xp, int64_t ldx, int64_t nvec, float *acc,
                            const int NR) {
    __m512 c[4][UQ_K_NR];
    #pragma GCC unroll 8
    for (int r = 0; r < 4; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < NR; t++) c[r][t] = _mm512_loadu_ps(acc + (r * NR + t) * 16);
    for (int64_t v = 0; v < nvec; v++) {
        __m512 w0 = _mm512_loadu_ps(w4[0] + v * 16), w1 = _mm512_loadu_ps(w4[1] + v * 16);
        __m512 w2 = _mm512_loadu_ps(w4[2] + v * 16), w3 = _mm512_loadu_ps(w4[3] + v * 16);
        #pragma GCC unroll 8
        for (int t = 0; t < NR; t++) {
            __m512 xv = _mm512_loadu_ps(xp + t * ldx + v * 16);
            c[0][t] = _mm512_fmadd_ps(w0, xv, c[0][t]);
            c[1][t] = _mm512_fmadd_ps(w1, xv, c[1][t]);
            c[2][t] = _mm512_fmadd_ps(w2, xv, c[2][t]);
            c[3][t] = _mm512_fmadd_ps(w3, xv, c[3][t]);
        }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < 4; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < NR; t++) _mm512_storeu_ps(acc + (r * NR + t) * 16, c[r][t]);
}

UQ_T512 static void gemm_f32_4rows_avx512(const float *const *w4, const float *xp, int64_t ldx, int nr, int64_t nvec,
                            float *acc) {
    switch (nr) {
    case 1: gemm_f32_4rows_tile(w4, xp, ldx, nvec, acc, 1); break;
    case 2: gemm_f32_4rows_tile(w4, xp, ldx, nvec, acc, 2); break;
    case 3: gemm_f32_4rows_tile(w4, xp, ldx, nvec, acc, 3); break;
    case 4: gemm_f32_4rows_tile(w4, xp, ldx, nvec, acc, 4); break;
    case 5: gemm_f32_4rows_tile(w4, xp, ldx, nvec, acc, 5); break;
    default: gemm_f32_4rows_tile(w4, xp, ldx, nvec, acc, 6); break;
    }
}

/* ------------------------------------------------------------------ int4 x int8 (VNNI) ---- */

/* Low / high nibbles of 64 bytes as u8 (even / odd columns of a 128-column block). */
static UQ_T512I void nib64(const uint8_t *p, int64_t nbytes, __m512i *lo, __m512i *hi) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512i v = _mm512_maskz_loadu_epi8(tail64(nbytes), p);
    *lo = _mm512_and_si512(v, m4);
    *hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
}

/* Sums of the 16 int32 lanes of a0..a3 as 4 int32 (exact: integer adds in any order). */
static UQ_T512I __m128i hsum4(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
    __m512i s01 = _mm512_add_epi32(_mm512_shuffle_i64x2(a0, a1, 0x44), _mm512_shuffle_i64x2(a0, a1, 0xEE));
    __m512i s23 = _mm512_add_epi32(_mm512_shuffle_i64x2(a2, a3, 0x44), _mm512_shuffle_i64x2(a2, a3, 0xEE));
    __m512i u = _mm512_add_epi32(_mm512_shuffle_i64x2(s01, s23, 0x88), _mm512_shuffle_i64x2(s01, s23, 0xDD));
    u = _mm512_add_epi32(u, _mm512_shuffle_epi32(u, (_MM_PERM_ENUM)0x4E));
    u = _mm512_add_epi32(u, _mm512_shuffle_epi32(u, (_MM_PERM_ENUM)0xB1));
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castsi512_si128(_mm512_permutexvar_epi32(idx, u));
}

/* 4 rows (missing rows repeat the last one) x NT tokens; per group the 4 row sums of a token come out of
 * one hsum4 and the epilogue runs in scalar floats with exactly the reference operations. */
static UQ_T512I void gemv_q4rm_q8_tile(const uint8_t *const *w, const float *const *s, const int8_t *xq, int64_t ldq,
                               const float *xs, const int32_t *xsum, int64_t ldg, int64_t t0, const uq_k_chunk *ch,
                               int64_t nch, float *out, const int NT) {
    float f0[4] = {0}, f1[4] = {0}, f2[4] = {0}, f3[4] = {0};
    for (int64_t k = 0; k < nch; k++) {
        __m512i a[4][4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) a[r][t] = _mm512_setzero_si512();
        for (int64_t c0 = 0; c0 < ch[k].n; c0 += 128) {
            const int64_t nb = (ch[k].n - c0 + 1) / 2;
            __m512i xe[4], xo[4];
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) {
                const int8_t *q = xq + (t0 + t) * ldq + ch[k].xq + c0;
                xe[t] = _mm512_loadu_si512(q);
                xo[t] = _mm512_loadu_si512(q + 64);
            }
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
                __m512i lo, hi;
                nib64(w[r] + ch[k].wcol / 2 + c0 / 2, nb, &lo, &hi);
#pragma GCC unroll 4
                for (int t = 0; t < NT; t++) a[r][t] = dpbusd(dpbusd(a[r][t], lo, xe[t]), hi, xo[t]);
            }
        }
        const int64_t sc = ch[k].scol;
        const float w0 = s[0][sc], w1 = s[1][sc], w2 = s[2][sc], w3 = s[3][sc];
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            const int64_t gi = (t0 + t) * ldg + k;
            int32_t is[4];
            _mm_storeu_si128((__m128i *)is, hsum4(a[0][t], a[1][t], a[2][t], a[3][t]));
            const int32_t off = UQ_Q4_OFFSET * xsum[gi];
            const float x = xs[gi];
            float *f = t == 0 ? f0 : t == 1 ? f1 : t == 2 ? f2 : f3;
            f[0] = f[0] + (float)(is[0] - off) * (w0 * x);
            f[1] = f[1] + (float)(is[1] - off) * (w1 * x);
            f[2] = f[2] + (float)(is[2] - off) * (w2 * x);
            f[3] = f[3] + (float)(is[3] - off) * (w3 * x);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++) {
        const float *f = t == 0 ? f0 : t == 1 ? f1 : t == 2 ? f2 : f3;
        for (int r = 0; r < 4; r++) out[r * 4 + t] = f[r];
    }
}

/* Software prefetch distance of the int8 GEMV: bytes ahead in each of the 16 row streams (DRAM latency x
 * per-core bandwidth ~ 2 KiB in flight over 16 streams). */
#define UQ_PF_BYTES 512

/* Row sums of 16 vectors: out lane r = sum of the 16 int32 lanes of a[r] (exact). */
static UQ_T512I __m512i hsum16(const __m512i *a) {
    __m512i s[8], u[4];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        s[i] = _mm512_add_epi32(_mm512_shuffle_i64x2(a[2 * i], a[2 * i + 1], 0x44),
                                _mm512_shuffle_i64x2(a[2 * i], a[2 * i + 1], 0xEE));
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) /* u[i] 128-bit lane L = 4 partial sums of row 4i + L */
        u[i] = _mm512_add_epi32(_mm512_shuffle_i64x2(s[2 * i], s[2 * i + 1], 0x88),
                                _mm512_shuffle_i64x2(s[2 * i], s[2 * i + 1], 0xDD));
    __m512i w01 = _mm512_add_epi32(_mm512_unpacklo_epi32(u[0], u[1]), _mm512_unpackhi_epi32(u[0], u[1]));
    __m512i w23 = _mm512_add_epi32(_mm512_unpacklo_epi32(u[2], u[3]), _mm512_unpackhi_epi32(u[2], u[3]));
    __m512i r = _mm512_add_epi32(_mm512_unpacklo_epi64(w01, w23), _mm512_unpackhi_epi64(w01, w23));
    /* lane 4L + j of r = row 4j + L */
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_epi32(idx, r);
}

/* One token, 16 rows (missing rows repeat the last one): one hsum16 per group and the scalar epilogue run as
 * 16 float lanes (the same operations per row). Scales are transposed 64 groups at a time. */
UQ_T512 static void gemv_q4rm_q8_16rows_avx512(const uint8_t *const *w, const float *const *s, int mr, const int8_t *xq,
                              const float *xs, const int32_t *xsum, const uq_k_chunk *ch, int64_t nch, float *tot,
                              const uint8_t *const *wn) {
    const uint8_t *wp[16], *pf[16];
    const float *sp[16];
    for (int i = 0; i < 16; i++) {
        wp[i] = w[i < mr ? i : mr - 1];
        sp[i] = s[i < mr ? i : mr - 1];
        pf[i] = wn ? wn[i] : wp[i]; /* rows of the next block: their first lines are prefetched at the end */
    }
    float sT[64 * 16];
    __m512 f = _mm512_setzero_ps();
    for (int64_t kb = 0; kb < nch; kb += 64) {
        const int64_t nk = nch - kb < 64 ? nch - kb : 64;
        for (int r = 0; r < 16; r++)
            for (int64_t k = 0; k < nk; k++) sT[k * 16 + r] = sp[r][ch[kb + k].scol];
        for (int64_t k = kb; k < kb + nk; k++) {
            __m512i a[16];
#pragma GCC unroll 16
            for (int r = 0; r < 16; r++) a[r] = _mm512_setzero_si512();
            for (int64_t c0 = 0; c0 < ch[k].n; c0 += 128) {
                const int64_t nb = (ch[k].n - c0 + 1) / 2;
                const __m512i xe = _mm512_loadu_si512(xq + ch[k].xq + c0), xo = _mm512_loadu_si512(xq + ch[k].xq + c0 + 64);
#pragma GCC unroll 16
                for (int r = 0; r < 16; r++) {
                    __m512i lo, hi;
                    _mm_prefetch((const char *)(wp[r] + ch[k].wcol / 2 + c0 / 2 + UQ_PF_BYTES), _MM_HINT_T0);
                    nib64(wp[r] + ch[k].wcol / 2 + c0 / 2, nb, &lo, &hi);
                    a[r] = dpbusd(dpbusd(a[r], lo, xe), hi, xo);
                }
            }
            __m512i is = _mm512_sub_epi32(hsum16(a), _mm512_set1_epi32(UQ_Q4_OFFSET * xsum[k]));
            __m512 p = _mm512_mul_ps(_mm512_loadu_ps(sT + (k - kb) * 16), _mm512_set1_ps(xs[k]));
            f = _mm512_add_ps(f, _mm512_mul_ps(_mm512_cvtepi32_ps(is), p));
        }
    }
    float o[16];
    _mm512_storeu_ps(o, f);
    for (int r = 0; r < mr; r++) tot[r] = o[r];
    if (wn && nch)
        for (int r = 0; r < 16; r++)
            for (int64_t b = 0; b < UQ_PF_BYTES; b += 64)
                _mm_prefetch((const char *)(pf[r] + ch[0].wcol / 2 + b), _MM_HINT_T0);
}

UQ_T512 static void gemv_q4rm_q8_avx512(const uint8_t *const *w, const float *const *s, int mr, const int8_t *xq, int64_t ldq,
                            const float *xs, const int32_t *xsum, int64_t ldg, int64_t T, const uq_k_chunk *ch,
                            int64_t nch, float *tot) {
    const uint8_t *wp[4];
    const float *sp[4];
    uq_k_tile_rows(w, s, mr, 4, wp, sp);
    for (int64_t t0 = 0; t0 < T; t0 += 4) {
        const int nt = (int)(T - t0 < 4 ? T - t0 : 4);
        float ft[16];
        switch (nt) {
        case 1: gemv_q4rm_q8_tile(wp, sp, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 1); break;
        case 2: gemv_q4rm_q8_tile(wp, sp, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 2); break;
        case 3: gemv_q4rm_q8_tile(wp, sp, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 3); break;
        default: gemv_q4rm_q8_tile(wp, sp, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 4); break;
        }
        for (int t = 0; t < nt; t++)
            for (int r = 0; r < mr; r++) tot[r * T + t0 + t] = ft[r * 4 + t];
    }
}

/* uq_k_q8_quant for cw = 128 with the same arithmetic: amax by max (NaN ignored), v = x * (127 / amax), NaN -> 0,
 * clamp to +-127, round half to even (vcvtps2dq), even / odd columns of each 128-block split. */
UQ_T512 static void q8_quant_avx512(const float *x, const uq_k_chunk *ch, int64_t nch, int cw, int8_t *xqrow, float *xs,
                             int32_t *xsum) {
    (void)cw;
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    for (int64_t k = 0; k < nch; k++) {
        const float *xg = x + ch[k].xcol;
        const int64_t n = ch[k].n;
        int8_t *dst = xqrow + ch[k].xq;
        __m512 am = _mm512_setzero_ps();
        for (int64_t i = 0; i < n; i += 16) {
            __m512 v = _mm512_maskz_loadu_ps(tail16(n - i), xg + i);
            am = _mm512_max_ps(_mm512_abs_ps(v), am); /* NaN in the first operand yields the second */
        }
        float amax = _mm512_reduce_max_ps(am);
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        xs[k] = amax / 127.0f;
        const __m512 iv = _mm512_set1_ps(inv);
        __m512i sum = _mm512_setzero_si512();
        for (int64_t b = 0; b < n; b += 128) {
            for (int p = 0; p < 4; p++) {
                int64_t c = b + 32 * p;
                __m512i q2[2];
                for (int h = 0; h < 2; h++) {
                    int64_t cc = c + 16 * h;
                    __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(cc < n ? tail16(n - cc) : 0, xg + cc), iv);
                    v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);
                    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
                    q2[h] = _mm512_cvtps_epi32(v);
                    sum = _mm512_add_epi32(sum, q2[h]);
                }
                __m512i e = _mm512_permutex2var_epi32(q2[0], ie, q2[1]);
                __m512i o = _mm512_permutex2var_epi32(q2[0], io, q2[1]);
                _mm_storeu_si128((__m128i *)(dst + b + 16 * p), _mm512_cvtepi32_epi8(e));
                _mm_storeu_si128((__m128i *)(dst + b + 64 + 16 * p), _mm512_cvtepi32_epi8(o));
            }
        }
        xsum[k] = _mm512_reduce_add_epi32(sum);
    }
}

/* Work of gemm_q4rm_q8_avx512: two 16-row u8 panels (blocks of 128 columns, 2048 bytes per block) + scales. */
static int64_t q8_blocks(const uq_k_chunk *ch, int64_t nch) {
    return nch ? (ch[nch - 1].xq + (ch[nch - 1].n + 127) / 128 * 128) / 128 : 0;
}

static size_t q8_gemm_work(const uq_k_chunk *ch, int64_t nch) {
    return (size_t)(2 * q8_blocks(ch, nch) * 2048) + (size_t)(2 * nch * 16) * sizeof(float) + 64;
}

static UQ_T512I void gemm_q4rm_q8_tile(const uint8_t *p0, const uint8_t *p1, const float *sv0, const float *sv1,
                             const int8_t *xq, int64_t ldq, const float *xs, const int32_t *xsum, int64_t ldg,
                             int64_t t0, const uq_k_chunk *ch, int64_t nch, float *ft, const int NT, const int NTILE) {
    /* ft (2, 8, 16): running float totals, kept in memory (the 16 int32 accumulators use the registers) */
#pragma GCC unroll 8
    for (int i = 0; i < NTILE; i++)
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++) _mm512_storeu_ps(ft + (i * 8 + t) * 16, _mm512_setzero_ps());
    for (int64_t k = 0; k < nch; k++) {
        __m512i a0[8], a1[8];
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++) a0[t] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++) a1[t] = _mm512_setzero_si512();
        const int64_t nq = (ch[k].n + 127) / 128 * 32, boff = ch[k].xq / 128 * 2048;
        const uint8_t *b0 = p0 + boff, *b1 = p1 + boff;
        const int8_t *xb = xq + t0 * ldq + ch[k].xq;
        if (NTILE == 2) {
            for (int64_t q = 0; q < nq; q++) {
                const __m512i w0 = _mm512_loadu_si512(b0 + q * 64), w1 = _mm512_loadu_si512(b1 + q * 64);
#pragma GCC unroll 8
                for (int t = 0; t < NT; t++) {
                    const __m512i xb4 = _mm512_set1_epi32(*(const int32_t *)(const void *)(xb + t * ldq + q * 4));
                    a0[t] = dpbusd(a0[t], w0, xb4);
                    a1[t] = dpbusd(a1[t], w1, xb4);
                }
            }
        } else {
            for (int64_t q = 0; q < nq; q++) {
                const __m512i w0 = _mm512_loadu_si512(b0 + q * 64);
#pragma GCC unroll 8
                for (int t = 0; t < NT; t++) {
                    const __m512i xb4 = _mm512_set1_epi32(*(const int32_t *)(const void *)(xb + t * ldq + q * 4));
                    a0[t] = dpbusd(a0[t], w0, xb4);
                }
            }
        }
        const __m512 s0 = _mm512_loadu_ps(sv0 + k * 16), s1 = _mm512_loadu_ps(sv1 + k * 16);
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++) {
            const int64_t gi = (t0 + t) * ldg + k;
            const __m512i off = _mm512_set1_epi32(UQ_Q4_OFFSET * xsum[gi]);
            const __m512 xsv = _mm512_set1_ps(xs[gi]);
            float *f0 = ft + t * 16, *f1 = ft + (8 + t) * 16;
            __m512 m0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(a0[t], off)), _mm512_mul_ps(s0, xsv));
            _mm512_storeu_ps(f0, _mm512_add_ps(_mm512_loadu_ps(f0), m0));
            if (NTILE == 2) {
                __m512 m1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(a1[t], off)), _mm512_mul_ps(s1, xsv));
                _mm512_storeu_ps(f1, _mm512_add_ps(_mm512_loadu_ps(f1), m1));
            }
        }
    }
}

UQ_T512 static void gemm_q4rm_q8_avx512(const uint8_t *const *w, const float *const *s, int nrows, const int8_t *xq, int64_t ldq,
                            const float *xs, const int32_t *xsum, int64_t ldg, int64_t T, const uq_k_chunk *ch,
                            int64_t nch, float *y, int64_t ldy, void *work) {
    const int64_t nbk = q8_blocks(ch, nch);
    uint8_t *pan = (uint8_t *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    float *sv = (float *)(pan + 2 * nbk * 2048);
    const int ntile = nrows > 16 ? 2 : 1;
    /* repack: row r -> panel r / 16, lane r % 16; block of 128 columns = 32 k4 steps x 16 rows x 4 bytes */
    for (int r = 0; r < 16 * ntile; r++) {
        uint8_t *pb = pan + (r / 16) * nbk * 2048 + (r % 16) * 4;
        float *sr = sv + (r / 16) * nch * 16 + (r % 16);
        for (int64_t k = 0; k < nch; k++) {
            sr[k * 16] = r < nrows ? s[r][ch[k].scol] : 0.0f;
            for (int64_t c0 = 0; c0 < ch[k].n; c0 += 128) {
                uint8_t tmp[128];
                uint8_t *dst = pb + (ch[k].xq + c0) / 128 * 2048;
                if (r < nrows) {
                    __m512i lo, hi;
                    nib64(w[r] + ch[k].wcol / 2 + c0 / 2, (ch[k].n - c0 + 1) / 2, &lo, &hi);
                    _mm512_storeu_si512(tmp, lo);
                    _mm512_storeu_si512(tmp + 64, hi);
                } else {
                    memset(tmp, 0, sizeof tmp);
                }
                for (int q = 0; q < 32; q++) memcpy(dst + q * 64, tmp + q * 4, 4);
            }
        }
    }
    const uint8_t *p0 = pan, *p1 = pan + nbk * 2048;
    const float *s0 = sv, *s1 = sv + nch * 16;
    for (int64_t t0 = 0; t0 < T; t0 += 8) {
        const int nt = (int)(T - t0 < 8 ? T - t0 : 8);
        float ft[2 * 8 * 16];
        if (ntile == 2) {
            switch (nt) {
            case 8: gemm_q4rm_q8_tile(p0, p1, s0, s1, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 8, 2); break;
            case 7: gemm_q4rm_q8_tile(p0, p1, s0, s1, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 7, 2); break;
            case 6: gemm_q4rm_q8_tile(p0, p1, s0, s1, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 6, 2); break;
            case 5: gemm_q4rm_q8_tile(p0, p1, s0, s1, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 5, 2); break;
            case 4: gemm_q4rm_q8_tile(p0, p1, s0, s1, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 4, 2); break;
            case 3: gemm_q4rm_q8_tile(p0, p1, s0, s1, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 3, 2); break;
            case 2: gemm_q4rm_q8_tile(p0, p1, s0, s1, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 2, 2); break;
            default: gemm_q4rm_q8_tile(p0, p1, s0, s1, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 1, 2); break;
            }
        } else {
            switch (nt) {
            case 8: gemm_q4rm_q8_tile(p0, p1, s0, s1, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 8, 1); break;
            case 7: gemm_q4rm_q8_tile(p0, p1, s0, s1, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 7, 1); break;
            case 6: gemm_q4rm_q8_tile(p0, p1, s0, s1, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 6, 1); break;
            case 5: gemm_q4rm_q8_tile(p0, p1, s0, s1, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 5, 1); break;
            case 4: gemm_q4rm_q8_tile(p0, p1, s0, s1, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 4, 1); break;
            case 3: gemm_q4rm_q8_tile(p0, p1, s0, s1, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 3, 1); break;
            case 2: gemm_q4rm_q8_tile(p0, p1, s0, s1, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 2, 1); break;
            default: gemm_q4rm_q8_tile(p0, p1, s0, s1, xq, ldq, xs, xsum, ldg, t0, ch, nch, ft, 1, 1); break;
            }
        }
        for (int i = 0; i < ntile; i++) {
            const int nr = nrows - 16 * i < 16 ? nrows - 16 * i : 16;
            for (int t = 0; t < nt; t++)
                _mm512_mask_storeu_ps(y + (t0 + t) * ldy + 16 * i, tail16(nr), _mm512_loadu_ps(ft + (i * 8 + t) * 16));
        }
    }
}


/* ------------------------------------------------------------------- int4, R16 layout ---- */

/* Right shift that brings column m of a chunk into bits 0..3 of each row's dword: byte m % 4, high nibble
 * for m >= 4 (vpermps reads index bits 0..3 only, so no mask is needed). */
#define R16_SH(m) (8 * ((m) & 3) + 4 * ((m) >> 2))

/* NB blocks x NT tokens, fp32 activations: gs per (block, token) in 16 row lanes, column by column with a
 * broadcast x; the group total goes through memory (tot) once per group. */
/* 16 float16 scales (the R16 layout keeps them as half bits) as floats: vcvtph2ps is exact (= uq_h2f). */
static UQ_T512I __m512 r16_scales16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

static UQ_T512I void r16_f32_tile(const uint8_t *const *wb, const uint16_t *const *sb, const float *x, int64_t ldx,
                            const uq_k_chunk *g, int64_t ng, float *out, int64_t ldo, const int NB, const int NT) {
    const __m512 tab = q4_base();
    float tot[8 * 4 * 16];
#pragma GCC unroll 8
    for (int i = 0; i < NB * NT; i++) _mm512_storeu_ps(tot + 16 * i, _mm512_setzero_ps());
    for (int64_t k = 0; k < ng; k++) {
        __m512 gs[8][4];
#pragma GCC unroll 8
        for (int i = 0; i < NB; i++)
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) gs[i][t] = _mm512_setzero_ps();
        const int64_t n = g[k].n, w0 = g[k].wcol * 64;
        const float *xk = x + g[k].xcol;
        int64_t c = 0;
        for (; c + 8 <= n; c += 8) {
            __m512i v[8];
#pragma GCC unroll 8
            for (int i = 0; i < NB; i++) v[i] = _mm512_loadu_si512(wb[i] + w0 + c * 8);
#pragma GCC unroll 8
            for (int m = 0; m < 8; m++) {
                __m512 xb[4];
#pragma GCC unroll 4
                for (int t = 0; t < NT; t++) xb[t] = _mm512_set1_ps(xk[t * ldx + c + m]);
#pragma GCC unroll 8
                for (int i = 0; i < NB; i++) {
                    const __m512 w = _mm512_permutexvar_ps(m ? _mm512_srli_epi32(v[i], R16_SH(m)) : v[i], tab);
#pragma GCC unroll 4
                    for (int t = 0; t < NT; t++) gs[i][t] = _mm512_fmadd_ps(w, xb[t], gs[i][t]);
                }
            }
        }
        if (c < n) { /* a kept prefix that cuts a chunk */
            __m512i v[8];
#pragma GCC unroll 8
            for (int i = 0; i < NB; i++) v[i] = _mm512_loadu_si512(wb[i] + w0 + c * 8);
            for (int m = 0; m < n - c; m++) {
                const __m128i sh = _mm_cvtsi32_si128(R16_SH(m));
#pragma GCC unroll 8
                for (int i = 0; i < NB; i++) {
                    const __m512 w = _mm512_permutexvar_ps(_mm512_srl_epi32(v[i], sh), tab);
#pragma GCC unroll 4
                    for (int t = 0; t < NT; t++) gs[i][t] = _mm512_fmadd_ps(w, _mm512_set1_ps(xk[t * ldx + c + m]), gs[i][t]);
                }
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < NB; i++) {
            const __m512 sv = r16_scales16(sb[i] + g[k].scol * 16);
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) {
                float *p = tot + 16 * (i * NT + t);
                _mm512_storeu_ps(p, _mm512_fmadd_ps(gs[i][t], sv, _mm512_loadu_ps(p)));
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NB; i++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) _mm512_storeu_ps(out + t * ldo + 16 * i, _mm512_loadu_ps(tot + 16 * (i * NT + t)));
}

/* NB blocks x NT tokens, int8 activations: one int32 accumulator per (block, token) and group (vpdpbusd on the
 * low / high nibbles = columns 0..3 / 4..7 of a chunk against 4 broadcast activation bytes each). */
static UQ_T512I void r16_q8_tile(const uint8_t *const *wb, const uint16_t *const *sb, const int8_t *xq, int64_t ldq,
                            const float *xs, const int32_t *xsum, int64_t ldg, const uq_k_chunk *g, int64_t ng,
                            float *out, int64_t ldo, const int NB, const int NT) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    float tot[8 * 8 * 16];
#pragma GCC unroll 16
    for (int i = 0; i < NB * NT; i++) _mm512_storeu_ps(tot + 16 * i, _mm512_setzero_ps());
    for (int64_t k = 0; k < ng; k++) {
        __m512i a[8][8];
#pragma GCC unroll 8
        for (int i = 0; i < NB; i++)
#pragma GCC unroll 8
            for (int t = 0; t < NT; t++) a[i][t] = _mm512_setzero_si512();
        const int64_t nc = (g[k].n + 7) / 8, w0 = g[k].wcol * 64;
        const int8_t *xk = xq + g[k].xq;
        for (int64_t j = 0; j < nc; j++) {
            __m512i lo[8], hi[8];
#pragma GCC unroll 8
            for (int i = 0; i < NB; i++) {
                const __m512i v = _mm512_loadu_si512(wb[i] + w0 + j * 64);
                lo[i] = _mm512_and_si512(v, m4);
                hi[i] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            }
#pragma GCC unroll 8
            for (int t = 0; t < NT; t++) {
                int32_t qa, qb;
                memcpy(&qa, xk + t * ldq + 8 * j, 4);
                memcpy(&qb, xk + t * ldq + 8 * j + 4, 4);
                const __m512i xa = _mm512_set1_epi32(qa), xb = _mm512_set1_epi32(qb);
#pragma GCC unroll 8
                for (int i = 0; i < NB; i++) a[i][t] = dpbusd(dpbusd(a[i][t], lo[i], xa), hi[i], xb);
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < NB; i++) {
            const __m512 sv = r16_scales16(sb[i] + g[k].scol * 16);
#pragma GCC unroll 8
            for (int t = 0; t < NT; t++) {
                const int64_t gi = t * ldg + k;
                const __m512i is = _mm512_sub_epi32(a[i][t], _mm512_set1_epi32(UQ_Q4_OFFSET * xsum[gi]));
                const __m512 p = _mm512_mul_ps(sv, _mm512_set1_ps(xs[gi]));
                float *f = tot + 16 * (i * NT + t);
                _mm512_storeu_ps(f, _mm512_add_ps(_mm512_loadu_ps(f), _mm512_mul_ps(_mm512_cvtepi32_ps(is), p)));
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NB; i++)
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++) _mm512_storeu_ps(out + t * ldo + 16 * i, _mm512_loadu_ps(tot + 16 * (i * NT + t)));
}

/* Decode prefetch distance of the R16 int8 kernel, in chunks (64 bytes of each block) ahead of the one being read: 2 KiB.
 * On a 2-core Zen 5 guest, the 8B-shaped stack's W4A8 decode (2 threads, 4 alternating pairs) took 0.71-0.91x the time
 * of no prefetch (1024 and 4096 bytes: in between). */
#define UQ_R16_PF512_CHUNKS 32

/* Decode (one token) on NB blocks: the sums and epilogue of r16_q8_tile with NT = 1, plus software prefetch along the
 * prefetch plan (uq_k_r16_pf): chunk c + UQ_R16_PF512_CHUNKS of the kept chunks in reading order while the tile reads
 * chunk c (a pruned weight's skipped chunks are not fetched), and past its last chunk the first ones of the next
 * blocks wn[0..NB) (the next tile of this call or the blocks the thread streams next; NULL: none), so one tile's end
 * and the next one's start stream without a cold start; when the prefetch moves into wn, the lines of their scales
 * sn[0..NB) the groups read (sn NULL: not given). co NULL (no plan): UQ_R16_PF512_CHUNKS chunks ahead in the block's
 * own bytes. */
static UQ_T512I void r16_q8_decode_tile(const uint8_t *const *wb, const uint16_t *const *sb, const int8_t *xq,
                                        const float *xs, const int32_t *xsum, const uq_k_chunk *g, int64_t ng,
                                        float *out, const int64_t *co, int64_t nct, const uint8_t *const *wn,
                                        const uint16_t *const *sn, const int NB) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    float tot[8 * 16];
#pragma GCC unroll 8
    for (int i = 0; i < NB; i++) _mm512_storeu_ps(tot + 16 * i, _mm512_setzero_ps());
    /* the prefetch cursor: chunk cp of the plan in the blocks pp (first these, then wn); pf: 1 while it runs */
    const uint8_t *pp[8];
    int64_t cp = UQ_R16_PF512_CHUNKS;
    int pf = co != NULL, next = 0;
#pragma GCC unroll 8
    for (int i = 0; i < NB; i++) pp[i] = wb[i];
    while (pf && cp >= nct) { /* a plan shorter than the distance */
        cp -= nct;
        pf = !next && wn;
        next = 1;
#pragma GCC unroll 8
        for (int i = 0; i < NB; i++) pp[i] = pf ? wn[i] : pp[i];
        if (pf && sn)
            for (int i = 0; i < NB; i++) uq_k_r16_prefetch_scales(sn[i], g, ng);
    }
    for (int64_t k = 0; k < ng; k++) {
        __m512i a[8];
#pragma GCC unroll 8
        for (int i = 0; i < NB; i++) a[i] = _mm512_setzero_si512();
        const int64_t nc = (g[k].n + 7) / 8, w0 = g[k].wcol * 64;
        const int8_t *xk = xq + g[k].xq;
        for (int64_t j = 0; j < nc; j++) {
            if (pf) {
                const int64_t o = co[cp];
#pragma GCC unroll 8
                for (int i = 0; i < NB; i++) _mm_prefetch((const char *)(pp[i] + o), _MM_HINT_T0);
                if (++cp == nct) { /* the end of these blocks: on into the next ones */
                    cp = 0;
                    pf = !next && wn;
                    next = 1;
                    if (pf) {
#pragma GCC unroll 8
                        for (int i = 0; i < NB; i++) pp[i] = wn[i];
                        if (sn)
                            for (int i = 0; i < NB; i++) uq_k_r16_prefetch_scales(sn[i], g, ng);
                    }
                }
            } else if (!co) {
#pragma GCC unroll 8
                for (int i = 0; i < NB; i++)
                    _mm_prefetch((const char *)(wb[i] + w0 + (j + UQ_R16_PF512_CHUNKS) * 64), _MM_HINT_T0);
            }
            int32_t qa, qb;
            memcpy(&qa, xk + 8 * j, 4);
            memcpy(&qb, xk + 8 * j + 4, 4);
            const __m512i xa = _mm512_set1_epi32(qa), xb = _mm512_set1_epi32(qb);
#pragma GCC unroll 8
            for (int i = 0; i < NB; i++) {
                const __m512i v = _mm512_loadu_si512(wb[i] + w0 + j * 64);
                a[i] = dpbusd(dpbusd(a[i], _mm512_and_si512(v, m4), xa), _mm512_and_si512(_mm512_srli_epi16(v, 4), m4), xb);
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < NB; i++) {
            const __m512 sv = r16_scales16(sb[i] + g[k].scol * 16);
            const __m512i is = _mm512_sub_epi32(a[i], _mm512_set1_epi32(UQ_Q4_OFFSET * xsum[k]));
            const __m512 p = _mm512_mul_ps(sv, _mm512_set1_ps(xs[k]));
            float *f = tot + 16 * i;
            _mm512_storeu_ps(f, _mm512_add_ps(_mm512_loadu_ps(f), _mm512_mul_ps(_mm512_cvtepi32_ps(is), p)));
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NB; i++) _mm512_storeu_ps(out + 16 * i, _mm512_loadu_ps(tot + 16 * i));
}

/* Blocks in groups of NB (a short group repeats its last block into the unused output lanes of out). */
static int r16_nb(int left, int most) { return left > most / 2 ? most : left > most / 4 ? most / 2 : left > most / 8 ? most / 4 : most / 8 > 0 ? most / 8 : 1; }

UQ_T512 static void r16_f32_avx512(const uint8_t *const *wb, const uint16_t *const *sb, int nb, const float *x, int64_t ldx,
                            int64_t T, const uq_k_chunk *g, int64_t ng, float *out, int64_t ldo) {
    for (int64_t t0 = 0; t0 < T; t0 += 4) {
        const int nt = (int)(T - t0 < 4 ? T - t0 : 4), most = nt == 1 ? 8 : 4;
        for (int i0 = 0; i0 < nb;) {
            const int NB = r16_nb(nb - i0, most);
            const uint8_t *w[8];
            const uint16_t *s[8];
            for (int i = 0; i < NB; i++) {
                w[i] = wb[i0 + i < nb ? i0 + i : nb - 1];
                s[i] = sb[i0 + i < nb ? i0 + i : nb - 1];
            }
            const float *xt = x + t0 * ldx;
            float *o = out + t0 * ldo + 16 * i0;
            switch (nt * 10 + NB) {
            case 18: r16_f32_tile(w, s, xt, ldx, g, ng, o, ldo, 8, 1); break;
            case 14: r16_f32_tile(w, s, xt, ldx, g, ng, o, ldo, 4, 1); break;
            case 12: r16_f32_tile(w, s, xt, ldx, g, ng, o, ldo, 2, 1); break;
            case 11: r16_f32_tile(w, s, xt, ldx, g, ng, o, ldo, 1, 1); break;
            case 24: r16_f32_tile(w, s, xt, ldx, g, ng, o, ldo, 4, 2); break;
            case 22: r16_f32_tile(w, s, xt, ldx, g, ng, o, ldo, 2, 2); break;
            case 21: r16_f32_tile(w, s, xt, ldx, g, ng, o, ldo, 1, 2); break;
            case 34: r16_f32_tile(w, s, xt, ldx, g, ng, o, ldo, 4, 3); break;
            case 32: r16_f32_tile(w, s, xt, ldx, g, ng, o, ldo, 2, 3); break;
            case 31: r16_f32_tile(w, s, xt, ldx, g, ng, o, ldo, 1, 3); break;
            case 44: r16_f32_tile(w, s, xt, ldx, g, ng, o, ldo, 4, 4); break;
            case 42: r16_f32_tile(w, s, xt, ldx, g, ng, o, ldo, 2, 4); break;
            default: r16_f32_tile(w, s, xt, ldx, g, ng, o, ldo, 1, 4); break;
            }
            i0 += NB;
        }
    }
}


/* Prefill (T >= 8) of int8 activations on two blocks: each group's chunks are unpacked once into a u8 panel
 * (lo / hi nibbles of both blocks, 256 bytes per chunk) reused by every 8-token tile, so the inner loop is loads
 * and vpdpbusd only (as the row-major GEMM's repacked panels); the same integer sums and epilogue per element. */
static UQ_T512I void r16_q8_prefill_tile_2blocks(const uint8_t *pan, int64_t nc, const uint16_t *s0, const uint16_t *s1, const int8_t *xk,
                                int64_t ldq, const float *xs, const int32_t *xsum, int64_t ldg, int64_t k,
                                float *tot, const int NT) {
    __m512i a0[8], a1[8];
#pragma GCC unroll 8
    for (int t = 0; t < NT; t++) a0[t] = a1[t] = _mm512_setzero_si512();
    for (int64_t j = 0; j < nc; j++) {
        const uint8_t *pj = pan + j * 256;
        const __m512i l0 = _mm512_load_si512(pj), h0 = _mm512_load_si512(pj + 64);
        const __m512i l1 = _mm512_load_si512(pj + 128), h1 = _mm512_load_si512(pj + 192);
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++) {
            int32_t qa, qb;
            memcpy(&qa, xk + t * ldq + 8 * j, 4);
            memcpy(&qb, xk + t * ldq + 8 * j + 4, 4);
            const __m512i xa = _mm512_set1_epi32(qa), xb = _mm512_set1_epi32(qb);
            a0[t] = dpbusd(dpbusd(a0[t], l0, xa), h0, xb);
            a1[t] = dpbusd(dpbusd(a1[t], l1, xa), h1, xb);
        }
    }
    const __m512 sv0 = r16_scales16(s0), sv1 = r16_scales16(s1);
#pragma GCC unroll 8
    for (int t = 0; t < NT; t++) {
        const int64_t gi = t * ldg + k;
        const __m512i off = _mm512_set1_epi32(UQ_Q4_OFFSET * xsum[gi]);
        const __m512 xv = _mm512_set1_ps(xs[gi]);
        float *f0 = tot + t * 32, *f1 = f0 + 16;
        _mm512_storeu_ps(f0, _mm512_add_ps(_mm512_loadu_ps(f0), _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(a0[t], off)),
                                                                               _mm512_mul_ps(sv0, xv))));
        _mm512_storeu_ps(f1, _mm512_add_ps(_mm512_loadu_ps(f1), _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(a1[t], off)),
                                                                               _mm512_mul_ps(sv1, xv))));
    }
}

/* T tokens (<= 64) on blocks w0, w1; out[t * ldo + 0..31]. */
UQ_T512 static void r16_q8_prefill_2blocks_avx512(const uint8_t *w0, const uint8_t *w1, const uint16_t *s0, const uint16_t *s1,
                               const int8_t *xq, int64_t ldq, const float *xs, const int32_t *xsum, int64_t ldg,
                               int64_t T, const uq_k_chunk *g, int64_t ng, float *out, int64_t ldo) {
    _Static_assert(4 * UQ_Q4_R16_ROWS * UQ_Q4_R16_COLS / 2 == 256, "a panel chunk: 2 blocks x lo / hi nibbles");
    _Alignas(64) uint8_t pan[64 * 256]; /* the chunks of one group (<= 512 columns) */
    float tot[64 * 32];
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int64_t i = 0; i < T * 32; i++) tot[i] = 0.0f;
    for (int64_t k = 0; k < ng; k++) {
        const int64_t nc = (g[k].n + 7) / 8; /* <= 64: the caller checks */
        for (int64_t j = 0; j < nc; j++) {
            const int64_t off = (g[k].wcol + j) * 64;
            const __m512i v0 = _mm512_loadu_si512(w0 + off), v1 = _mm512_loadu_si512(w1 + off);
            _mm512_store_si512(pan + j * 256, _mm512_and_si512(v0, m4));
            _mm512_store_si512(pan + j * 256 + 64, _mm512_and_si512(_mm512_srli_epi16(v0, 4), m4));
            _mm512_store_si512(pan + j * 256 + 128, _mm512_and_si512(v1, m4));
            _mm512_store_si512(pan + j * 256 + 192, _mm512_and_si512(_mm512_srli_epi16(v1, 4), m4));
        }
        const int8_t *xk = xq + g[k].xq;
        for (int64_t t0 = 0; t0 < T;) {
            const int64_t left = T - t0;
            const int nt = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
            const int8_t *xt = xk + t0 * ldq;
            const float *st = xs + t0 * ldg;
            const int32_t *sm = xsum + t0 * ldg;
            float *ft = tot + t0 * 32;
            switch (nt) {
            case 8: r16_q8_prefill_tile_2blocks(pan, nc, s0 + g[k].scol * 16, s1 + g[k].scol * 16, xt, ldq, st, sm, ldg, k, ft, 8); break;
            case 4: r16_q8_prefill_tile_2blocks(pan, nc, s0 + g[k].scol * 16, s1 + g[k].scol * 16, xt, ldq, st, sm, ldg, k, ft, 4); break;
            case 2: r16_q8_prefill_tile_2blocks(pan, nc, s0 + g[k].scol * 16, s1 + g[k].scol * 16, xt, ldq, st, sm, ldg, k, ft, 2); break;
            default: r16_q8_prefill_tile_2blocks(pan, nc, s0 + g[k].scol * 16, s1 + g[k].scol * 16, xt, ldq, st, sm, ldg, k, ft, 1); break;
            }
            t0 += nt;
        }
    }
    for (int64_t t = 0; t < T; t++) memcpy(out + t * ldo, tot + t * 32, 32 * sizeof(float));
}

/* Decode (T == 1): tiles of up to 8 blocks, each prefetching into the next. A function of its own, not inlined into
 * r16_q8_avx512, so that its prefetch code leaves the prefill paths' code as it was. */
UQ_T512 __attribute__((noinline)) static void r16_q8_decode_avx512(const uint8_t *const *wb, const uint16_t *const *sb,
                                                                   int nb, const int8_t *xq, const float *xs,
                                                                   const int32_t *xsum, const uq_k_chunk *g, int64_t ng,
                                                                   float *out, const uq_k_r16_pf *pf) {
    const int64_t *co = pf ? pf->co : NULL, nct = pf && pf->co ? pf->nct : 0;
    for (int i0 = 0; i0 < nb;) {
        const int NB = r16_nb(nb - i0, 8);
        const uint8_t *w[8], *wn[8], *const *next = pf ? pf->wn : NULL;
        const uint16_t *s[8], *sx[8], *const *nexts = pf ? pf->sn : NULL;
        for (int i = 0; i < NB; i++) {
            w[i] = wb[i0 + i < nb ? i0 + i : nb - 1];
            s[i] = sb[i0 + i < nb ? i0 + i : nb - 1];
        }
        if (i0 + NB < nb) { /* the next tile of this call */
            for (int i = 0; i < 8; i++) {
                wn[i] = wb[i0 + NB + i < nb ? i0 + NB + i : nb - 1];
                sx[i] = sb[i0 + NB + i < nb ? i0 + NB + i : nb - 1];
            }
            next = wn;
            nexts = sx;
        }
        switch (NB) {
        case 8: r16_q8_decode_tile(w, s, xq, xs, xsum, g, ng, out + 16 * i0, co, nct, next, nexts, 8); break;
        case 4: r16_q8_decode_tile(w, s, xq, xs, xsum, g, ng, out + 16 * i0, co, nct, next, nexts, 4); break;
        case 2: r16_q8_decode_tile(w, s, xq, xs, xsum, g, ng, out + 16 * i0, co, nct, next, nexts, 2); break;
        default: r16_q8_decode_tile(w, s, xq, xs, xsum, g, ng, out + 16 * i0, co, nct, next, nexts, 1); break;
        }
        i0 += NB;
    }
}

UQ_T512 static void r16_q8_avx512(const uint8_t *const *wb, const uint16_t *const *sb, int nb, const int8_t *xq, int64_t ldq,
                           const float *xs, const int32_t *xsum, int64_t ldg, int64_t T, const uq_k_chunk *g,
                           int64_t ng, float *out, int64_t ldo, const uq_k_r16_pf *pf) {
    if (T == 1 && pf && pf->co) { /* decode with a prefetch plan: the AVX2 tile (see .r16_decode_nb below) */
        uq_kpath_avx2.r16_q8(wb, sb, nb, xq, ldq, xs, xsum, ldg, T, g, ng, out, ldo, pf);
        return;
    }
    if (T == 1) {
        r16_q8_decode_avx512(wb, sb, nb, xq, xs, xsum, g, ng, out, pf);
        return;
    }
    int panel = T >= 8 && T <= 64;
    for (int64_t k = 0; k < ng; k++) panel &= g[k].n <= 512;
    if (panel) {
        for (int i0 = 0; i0 < nb; i0 += 2) {
            const int i1 = i0 + 1 < nb ? i0 + 1 : i0; /* an odd last block is paired with itself */
            r16_q8_prefill_2blocks_avx512(wb[i0], wb[i1], sb[i0], sb[i1], xq, ldq, xs, xsum, ldg, T, g, ng, out + 16 * i0, ldo);
        }
        return;
    }
    for (int64_t t0 = 0; t0 < T;) {
        const int64_t left = T - t0;
        const int nt = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1, most = nt == 1 ? 8 : 2;
        for (int i0 = 0; i0 < nb;) {
            const int NB = r16_nb(nb - i0, most);
            const uint8_t *w[8];
            const uint16_t *s[8];
            for (int i = 0; i < NB; i++) {
                w[i] = wb[i0 + i < nb ? i0 + i : nb - 1];
                s[i] = sb[i0 + i < nb ? i0 + i : nb - 1];
            }
            const int8_t *xt = xq + t0 * ldq;
            const float *st = xs + t0 * ldg;
            const int32_t *sm = xsum + t0 * ldg;
            float *o = out + t0 * ldo + 16 * i0;
            switch (nt * 10 + NB) {
            case 18: r16_q8_decode_tile(w, s, xt, st, sm, g, ng, o, NULL, 0, NULL, NULL, 8); break;
            case 14: r16_q8_decode_tile(w, s, xt, st, sm, g, ng, o, NULL, 0, NULL, NULL, 4); break;
            case 12: r16_q8_decode_tile(w, s, xt, st, sm, g, ng, o, NULL, 0, NULL, NULL, 2); break;
            case 11: r16_q8_decode_tile(w, s, xt, st, sm, g, ng, o, NULL, 0, NULL, NULL, 1); break;
            case 22: r16_q8_tile(w, s, xt, ldq, st, sm, ldg, g, ng, o, ldo, 2, 2); break;
            case 21: r16_q8_tile(w, s, xt, ldq, st, sm, ldg, g, ng, o, ldo, 1, 2); break;
            case 42: r16_q8_tile(w, s, xt, ldq, st, sm, ldg, g, ng, o, ldo, 2, 4); break;
            case 41: r16_q8_tile(w, s, xt, ldq, st, sm, ldg, g, ng, o, ldo, 1, 4); break;
            case 82: r16_q8_tile(w, s, xt, ldq, st, sm, ldg, g, ng, o, ldo, 2, 8); break;
            default: r16_q8_tile(w, s, xt, ldq, st, sm, ldg, g, ng, o, ldo, 1, 8); break;
            }
            i0 += NB;
        }
        t0 += nt;
    }
}

const uq_kpath uq_kpath_avx512 = {
    .name = "avx512",
    .V = 16,
    .cw = 128,
    .dot = dot_f32_avx512,
    .axpy = axpy_f32_avx512,
    .gemv_f32 = gemv_f32_avx512,
    .gemv_f16 = gemv_f16_avx512,
    .gemv_q4 = gemv_q4rm_f32_avx512,
    .pack_f16 = pack_f16_avx512,
    .pack_q4 = pack_q4_avx512,
    .gemv_q4w = gemv_q4rm_f32_wide_avx512,
    .pack_q4w = pack_q4w_avx512,
    .gemm = gemm_f32_4rows_avx512,
    .q8_quant = q8_quant_avx512,
    .q8_gemv = gemv_q4rm_q8_avx512,
    .q8_gemv_16rows = gemv_q4rm_q8_16rows_avx512,
    .q8_gemm = gemm_q4rm_q8_avx512,
    .q8_gemm_work = q8_gemm_work,
    .r16_f32 = r16_f32_avx512,
    .r16_q8 = r16_q8_avx512,
    /* one-token decode with a prefetch plan runs the AVX2 tile (2 blocks, 4 KiB ahead, 32-byte loads in 4-chunk int16
     * windows): on the Zen 5 guest it streamed more of the read bandwidth than the 4-block AVX-512 tile (in-process A/B,
     * 1 thread, 16-token decodes after a 512-token prompt: 8B-shaped stack 1.05x at rate 0 in 12 of 12 rounds, 1.01x at
     * 35%; SmolLM2 1.03x); the same results (every path's r16_q8 equals the ref kernel bit for bit) */
    .r16_decode_nb = 2,
    .q8_quant0 = uq_k_q8_quant0_avx2,
    .attn_scores = attn_scores_f32_avx512,
    .attn_accum = attn_accum_f32_avx512,
    .attn_scores_f16 = attn_scores_f16_avx512,
    .attn_accum_f16 = attn_accum_f16_avx512,
    .f32_to_f16 = uq_k_f32_to_f16_avx2,
    .f16_to_f32 = uq_k_f16_to_f32_avx2,
    .softmax = uq_k_softmax_avx2,
    .silu_mul = uq_k_silu_mul_avx2,
};

#endif
