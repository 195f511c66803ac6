/*
 * q8w.c -- int8 weights (UQ_W_Q8): round-to-nearest quantizer, the linear kernels (ref, AVX2, AVX-512) and the
 * embedding row gather.
 *
 * Format: codes int8 (rows, cols) row-major, w = q * scale with one scale per row and group of `group` columns
 * (kept as float16 bits in memory, converted exactly in the kernels: uniql.h "scales in memory"); with nseg_in > 1 column segments each segment has its own groups (scale_cols = nseg_in * gps), like
 * int4. A kept column prefix keeps the codes and the scales of the groups it touches: exact truncation.
 *
 * Numerics (every path, bit-identical): per output row and token, tot = 0; per kept segment s in order, per
 * kept group in order, the group's kept columns are taken in pieces of 16 (a short last piece is padded with
 * zero codes and zero activations): acc[l] = fma((float)q[c], x[c], acc[l]) for column c = piece start + l;
 * gs = uq_k_reduce16(acc); tot = fma(gs, scale, tot); y = tot (+ bias). Activations are always fp32 (the
 * int4 W4A8 switch does not apply: int8 weights are the precision policy's accurate class).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>


#include "kernels.h"
#include "q8w.h"

#define Q8_LANES 16
#define Q8_TB 4 /* tokens per pass over a row */

uq_status uq_q8_quantize_rtn(const float *W, int64_t rows, int64_t cols, int64_t ldw, int64_t group,
                             int8_t *codes, float *scales) {
    if (!W || !codes || !scales) return uq_set_error(UQ_ERR_ARG, "q8_quantize_rtn: NULL argument");
    if (rows < 1 || cols < 1 || ldw < cols || group < 1)
        return uq_set_error(UQ_ERR_ARG, "q8_quantize_rtn: rows %lld, cols %lld, ldw %lld, group %lld invalid",
                            (long long)rows, (long long)cols, (long long)ldw, (long long)group);
    const int64_t ng = UQ_Q8_NGROUPS(cols, group);
    for (int64_t r = 0; r < rows; r++) {
        const float *w = W + r * ldw;
        for (int64_t k = 0; k < ng; k++) {
            int64_t c0 = k * group, c1 = c0 + group < cols ? c0 + group : cols;
            double amax = 0.0;
            for (int64_t c = c0; c < c1; c++) {
                if (!isfinite(w[c]))
                    return uq_set_error(UQ_ERR_NUMERIC, "q8_quantize_rtn: non-finite weight at (%lld, %lld)",
                                        (long long)r, (long long)c);
                double a = fabs((double)w[c]);
                if (a > amax) amax = a;
            }
            float s = (float)(amax / 127.0);
            scales[r * ng + k] = s;
            for (int64_t c = c0; c < c1; c++) {
                double q = s > 0.0f ? rint((double)w[c] / (double)s) : 0.0;
                codes[r * cols + c] = (int8_t)(q > 127.0 ? 127 : q < -127.0 ? -127 : q);
            }
        }
    }
    return UQ_OK;
}

/* One row against nt <= Q8_TB tokens: the operation sequence of the header, written per lane. */
typedef void (*q8_row_fn)(const int8_t *w, const uint16_t *s, int64_t nseg_in, int64_t seg_in, int64_t keep_in,
                          int64_t group, int64_t gps, const float *x, int64_t ldx, int nt, float *tot);

/* A piece of n <= 16 columns, zero padded (the same padding on every path). */
static inline void pad_piece(const int8_t *w, const float *x, int64_t ldx, int nt, int64_t n, int8_t wq[16],
                             float xp[Q8_TB][16]) {
    memset(wq, 0, 16);
    memcpy(wq, w, (size_t)n);
    for (int t = 0; t < nt; t++) {
        memset(xp[t], 0, sizeof xp[t]);
        memcpy(xp[t], x + t * ldx, (size_t)n * sizeof(float));
    }
}

static void row_ref(const int8_t *w, const uint16_t *s, int64_t nseg_in, int64_t seg_in, int64_t keep_in,
                    int64_t group, int64_t gps, const float *x, int64_t ldx, int nt, float *tot) {
    for (int t = 0; t < nt; t++) tot[t] = 0.0f;
    for (int64_t sg = 0; sg < nseg_in; sg++) {
        const int8_t *ws = w + sg * seg_in;
        const float *xs = x + sg * keep_in;
        for (int64_t k = 0; k * group < keep_in; k++) {
            int64_t c0 = k * group, n = keep_in - c0 < group ? keep_in - c0 : group;
            float acc[Q8_TB][16];
            memset(acc, 0, sizeof acc);
            for (int64_t j = 0; j < n; j += 16) {
                int8_t wq[16];
                float xp[Q8_TB][16];
                pad_piece(ws + c0 + j, xs + c0 + j, ldx, nt, n - j < 16 ? n - j : 16, wq, xp);
                for (int t = 0; t < nt; t++)
                    for (int l = 0; l < 16; l++) acc[t][l] = fmaf((float)wq[l], xp[t][l], acc[t][l]);
            }
            const float sc = uq_h2f(s[sg * gps + k]);
            for (int t = 0; t < nt; t++) tot[t] = fmaf(uq_k_reduce16(acc[t]), sc, tot[t]);
        }
    }
}

#ifdef UQ_K_X86
#include <immintrin.h>

#define Q8_T2 __attribute__((target("avx2,fma,f16c")))
#define Q8_T5 __attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c")))

static Q8_T2 void row_avx2(const int8_t *w, const uint16_t *s, int64_t nseg_in, int64_t seg_in, int64_t keep_in,
                           int64_t group, int64_t gps, const float *x, int64_t ldx, int nt, float *tot) {
    for (int t = 0; t < nt; t++) tot[t] = 0.0f;
    for (int64_t sg = 0; sg < nseg_in; sg++) {
        const int8_t *ws = w + sg * seg_in;
        const float *xs = x + sg * keep_in;
        for (int64_t k = 0; k * group < keep_in; k++) {
            int64_t c0 = k * group, n = keep_in - c0 < group ? keep_in - c0 : group;
            __m256 lo[Q8_TB], hi[Q8_TB];
            for (int t = 0; t < Q8_TB; t++) lo[t] = hi[t] = _mm256_setzero_ps();
            for (int64_t j = 0; j < n; j += 16) {
                const int8_t *wp = ws + c0 + j;
                const float *xb = xs + c0 + j;
                int64_t lx = ldx;
                int8_t wq[16];
                float xp[Q8_TB][16];
                if (n - j < 16) {
                    pad_piece(wp, xb, ldx, nt, n - j, wq, xp);
                    wp = wq;
                    xb = xp[0];
                    lx = 16;
                }
                __m128i b = _mm_loadu_si128((const __m128i *)wp);
                __m256 wl = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
                __m256 wh = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
                for (int t = 0; t < nt; t++) {
                    lo[t] = _mm256_fmadd_ps(wl, _mm256_loadu_ps(xb + t * lx), lo[t]);
                    hi[t] = _mm256_fmadd_ps(wh, _mm256_loadu_ps(xb + t * lx + 8), hi[t]);
                }
            }
            const float sc = _cvtsh_ss(s[sg * gps + k]); /* F16C: exact, = uq_h2f */
            for (int t = 0; t < nt; t++) {
                float a[8];
                _mm256_storeu_ps(a, _mm256_add_ps(lo[t], hi[t]));
                tot[t] = fmaf(uq_k_reduce8(a), sc, tot[t]);
            }
        }
    }
}

static Q8_T5 void row_avx512(const int8_t *w, const uint16_t *s, int64_t nseg_in, int64_t seg_in, int64_t keep_in,
                             int64_t group, int64_t gps, const float *x, int64_t ldx, int nt, float *tot) {
    for (int t = 0; t < nt; t++) tot[t] = 0.0f;
    for (int64_t sg = 0; sg < nseg_in; sg++) {
        const int8_t *ws = w + sg * seg_in;
        const float *xs = x + sg * keep_in;
        for (int64_t k = 0; k * group < keep_in; k++) {
            int64_t c0 = k * group, n = keep_in - c0 < group ? keep_in - c0 : group;
            __m512 acc[Q8_TB];
            for (int t = 0; t < Q8_TB; t++) acc[t] = _mm512_setzero_ps();
            int64_t j = 0;
            for (; j + 16 <= n; j += 16) {
                __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(ws + c0 + j))));
                for (int t = 0; t < nt; t++)
                    acc[t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xs + t * ldx + c0 + j), acc[t]);
            }
            if (j < n) { /* masked tail = zero padding */
                __mmask16 m = (__mmask16)((1u << (n - j)) - 1u);
                __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, ws + c0 + j)));
                for (int t = 0; t < nt; t++)
                    acc[t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, xs + t * ldx + c0 + j), acc[t]);
            }
            const float sc = _cvtsh_ss(s[sg * gps + k]); /* F16C: exact, = uq_h2f */
            for (int t = 0; t < nt; t++) {
                float a[8];
                _mm256_storeu_ps(a, _mm256_add_ps(_mm512_castps512_ps256(acc[t]),
                                                  _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[t]), 1))));
                tot[t] = fmaf(uq_k_reduce8(a), sc, tot[t]);
            }
        }
    }
}
#endif

static q8_row_fn pick(void) {
#ifdef UQ_K_X86
    const char *p = uq_k_path()->name;
    if (!strcmp(p, "avx512")) return row_avx512;
    if (!strcmp(p, "avx2")) return row_avx2;
#endif
    return row_ref;
}

uq_status uq_q8w_check(const uq_linear *L, int64_t nseg_in, const char *where) {
    if (!L->packed || !L->scales) return uq_set_error(UQ_ERR_ARG, "%s: int8 codes/scales pointer is NULL", where);
    if (L->group < 1) return uq_set_error(UQ_ERR_ARG, "%s: int8 group %lld must be >= 1", where, (long long)L->group);
    int64_t seg = L->cols / nseg_in, gps = (seg + L->group - 1) / L->group;
    if (L->scale_cols != nseg_in * gps)
        return uq_set_error(UQ_ERR_SHAPE,
                            "%s: int8 scales have %lld columns, expected %lld (%lld segment(s) of %lld columns, "
                            "group %lld)", where, (long long)L->scale_cols, (long long)(nseg_in * gps),
                            (long long)nseg_in, (long long)seg, (long long)L->group);
    return UQ_OK;
}

typedef struct {
    const uq_linear *L;
    q8_row_fn row;
    const float *x, *b;
    float *y;
    int64_t T, nseg_in, seg_in, seg_out, keep_out, keep_in, nout, nin, g, gps;
} q8w_job;

#define Q8W_ROWS_PER_TASK 16

static void q8w_task(void *arg, int64_t task, int worker) {
    const q8w_job *j = arg;
    (void)worker;
    const uq_linear *L = j->L;
    const int8_t *codes = (const int8_t *)L->packed;
    const int64_t o1 = (task + 1) * Q8W_ROWS_PER_TASK < j->nout ? (task + 1) * Q8W_ROWS_PER_TASK : j->nout;
    for (int64_t o = task * Q8W_ROWS_PER_TASK; o < o1; o++) {
        const int64_t r = (o / j->keep_out) * j->seg_out + o % j->keep_out;
        float tot[Q8_TB];
        for (int64_t t0 = 0; t0 < j->T; t0 += Q8_TB) {
            int nt = (int)(j->T - t0 < Q8_TB ? j->T - t0 : Q8_TB);
            j->row(codes + r * L->cols, L->scales + r * L->scale_cols, j->nseg_in, j->seg_in, j->keep_in, j->g, j->gps,
                   j->x + t0 * j->nin, j->nin, nt, tot);
            for (int t = 0; t < nt; t++) j->y[(t0 + t) * j->nout + o] = j->b ? tot[t] + j->b[r] : tot[t];
        }
    }
}

uq_status uq_q8w_linear(const uq_linear *L, const float *x, int64_t T, int64_t nseg_out, int64_t keep_out,
                        int64_t nseg_in, int64_t keep_in, float *y, int nth) {
    const int64_t seg_in = L->cols / nseg_in, nout = nseg_out * keep_out;
    q8w_job j = {.L = L, .row = pick(), .x = x, .b = L->bias, .y = y, .T = T, .nseg_in = nseg_in, .seg_in = seg_in,
                 .seg_out = L->rows / nseg_out, .keep_out = keep_out, .keep_in = keep_in, .nout = nout,
                 .nin = nseg_in * keep_in, .g = L->group, .gps = (seg_in + L->group - 1) / L->group};
    uq_pool_run((nout + Q8W_ROWS_PER_TASK - 1) / Q8W_ROWS_PER_TASK, nth, q8w_task, &j);
    return UQ_OK;
}

void uq_q8w_embed_row(const uq_linear *E, int64_t row, float *out) {
    const int8_t *q = (const int8_t *)E->packed + row * E->cols;
    const uint16_t *s = E->scales + row * E->scale_cols;
    for (int64_t c0 = 0; c0 < E->cols; c0 += E->group) {
        const int64_t c1 = c0 + E->group < E->cols ? c0 + E->group : E->cols;
        const float sc = uq_h2f(s[c0 / E->group]);
        for (int64_t c = c0; c < c1; c++) out[c] = (float)q[c] * sc;
    }
}
