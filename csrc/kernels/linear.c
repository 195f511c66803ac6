/*
 * linear.c -- y = x W_sel^T + b_sel for fp32, fp16 and int4 weights with row/column segment selection,
 * and the drivers that run it on the kernel path chosen in dispatch.c.
 *
 * Output element o of a token: stored row R(o) = (o / keep_out) * seg_out + o % keep_out,
 *   y[t][o] = sum_{s < nseg_in} dot(W[R(o)][s*seg_in : s*seg_in + keep_in], x[t][s*keep_in : (s+1)*keep_in])
 *             (+ b[R(o)]).
 * ref path (this file, the _ref twins): fp32/fp16 dot = uq_k_dot per segment, segment sums added in order
 * from 0; int4: per group of a segment, the codes (q - 8) are unpacked into floats (chunks of at most 256)
 * and dotted with uq_k_dot, chunk dots are summed into a group dot which is multiplied once by the group's
 * scale and added to the total. Vector paths (kernels_avx2.c, kernels_avx512.c) and int8 activations: see
 * uniql.h "kernels" for their exact operation sequences. Drivers: T <= 4 runs GEMV kernels that stream
 * the weights once; larger T packs panels of rows (fp32 / converted fp16 / dequantized int4, or int4 codes
 * widened to u8 for the int8 GEMM) and runs register-blocked GEMM kernels with the same per-element
 * operation sequence. Each element's sequence depends only on its own row and token: OpenMP over output
 * rows keeps results bit-identical at any thread count, T, keep of other rows, or stored size beyond the
 * prefix. Row blocks are handed out dynamically (a descheduled thread on a shared machine does not stall
 * the others); which thread computes a block never changes its operations.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels.h"
#include "q8w.h"

#define UQ_Q4_CHUNK 256
/* Below this many multiply-adds a call runs on one thread (fork/join would cost more than it saves). */
#define UQ_PAR_MIN_WORK 65536

float uq_k_dot(const float *a, const float *b, int64_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[i + l] * b[i + l];
    for (int l = 0; i + l < n; l++) acc[l] += a[i + l] * b[i + l];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* Four rows against one x with exactly uq_k_dot's per-row operation sequence (shares the x loads). */
static inline void dot_4rows(const float *w0, const float *w1, const float *w2, const float *w3, const float *x,
                             int64_t n, float out[4]) {
    float a0[8] = {0}, a1[8] = {0}, a2[8] = {0}, a3[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) {
            float xv = x[i + l];
            a0[l] += w0[i + l] * xv;
            a1[l] += w1[i + l] * xv;
            a2[l] += w2[i + l] * xv;
            a3[l] += w3[i + l] * xv;
        }
    for (int l = 0; i + l < n; l++) {
        float xv = x[i + l];
        a0[l] += w0[i + l] * xv;
        a1[l] += w1[i + l] * xv;
        a2[l] += w2[i + l] * xv;
        a3[l] += w3[i + l] * xv;
    }
    out[0] = ((a0[0] + a0[4]) + (a0[1] + a0[5])) + ((a0[2] + a0[6]) + (a0[3] + a0[7]));
    out[1] = ((a1[0] + a1[4]) + (a1[1] + a1[5])) + ((a1[2] + a1[6]) + (a1[3] + a1[7]));
    out[2] = ((a2[0] + a2[4]) + (a2[1] + a2[5])) + ((a2[2] + a2[6]) + (a2[3] + a2[7]));
    out[3] = ((a3[0] + a3[4]) + (a3[1] + a3[5])) + ((a3[2] + a3[6]) + (a3[3] + a3[7]));
}

/* One w against four x with exactly uq_k_dot's per-token operation sequence (shares the w loads). */
static inline void dot_4tok(const float *w, const float *x0, const float *x1, const float *x2, const float *x3,
                            int64_t n, float out[4]) {
    dot_4rows(x0, x1, x2, x3, w, n, out); /* a*b == b*a exactly: same sequence as uq_k_dot(w, x_i) */
}

/* dst[0..n) = q - 8 of columns c0 .. c0+n-1 of a packed row segment starting at byte seg (even column). */
static inline void q4_unpack(const uint8_t *seg, int64_t c0, int64_t n, float *dst) {
    int64_t i = 0, c = c0;
    if (n > 0 && (c & 1)) {
        dst[i++] = (float)((int)(seg[c >> 1] >> 4) - UQ_Q4_OFFSET);
        c++;
    }
    const uint8_t *b = seg + (c >> 1);
    int64_t npair = (n - i) / 2;
    for (int64_t j = 0; j < npair; j++) {
        dst[i + 2 * j] = (float)((int)(b[j] & 15) - UQ_Q4_OFFSET);
        dst[i + 2 * j + 1] = (float)((int)(b[j] >> 4) - UQ_Q4_OFFSET);
    }
    i += 2 * npair;
    if (i < n) dst[i] = (float)((int)(b[npair] & 15) - UQ_Q4_OFFSET);
}

static uq_status check_call(const uq_linear *L, const float *x, int64_t T, int64_t nseg_out, int64_t keep_out,
                            int64_t nseg_in, int64_t keep_in, const float *y) {
    if (!L || !x || !y) return uq_set_error(UQ_ERR_ARG, "linear: NULL argument");
    if (T < 1) return uq_set_error(UQ_ERR_ARG, "linear: T must be >= 1, got %lld", (long long)T);
    if (L->rows < 1 || L->cols < 1)
        return uq_set_error(UQ_ERR_SHAPE, "linear: weight shape (%lld, %lld) must be positive", (long long)L->rows,
                            (long long)L->cols);
    if (nseg_out < 1 || L->rows % nseg_out)
        return uq_set_error(UQ_ERR_SHAPE, "linear: %lld output segments do not divide %lld rows", (long long)nseg_out,
                            (long long)L->rows);
    if (nseg_in < 1 || L->cols % nseg_in)
        return uq_set_error(UQ_ERR_SHAPE, "linear: %lld input segments do not divide %lld columns", (long long)nseg_in,
                            (long long)L->cols);
    int64_t seg_out = L->rows / nseg_out, seg_in = L->cols / nseg_in;
    if (keep_out < 1 || keep_out > seg_out)
        return uq_set_error(UQ_ERR_SHAPE, "linear: keep_out %lld outside [1, %lld]", (long long)keep_out,
                            (long long)seg_out);
    if (keep_in < 1 || keep_in > seg_in)
        return uq_set_error(UQ_ERR_SHAPE, "linear: keep_in %lld outside [1, %lld]", (long long)keep_in,
                            (long long)seg_in);
    if (L->kind == UQ_W_F32) {
        if (!L->w) return uq_set_error(UQ_ERR_ARG, "linear: fp32 weight pointer is NULL");
    } else if (L->kind == UQ_W_F16) {
        if (!L->w16) return uq_set_error(UQ_ERR_ARG, "linear: fp16 weight pointer is NULL");
    } else if (L->kind == UQ_W_Q4) {
        if (!L->packed || !L->scales) return uq_set_error(UQ_ERR_ARG, "linear: int4 packed/scales pointer is NULL");
        if (L->group < 1) return uq_set_error(UQ_ERR_ARG, "linear: int4 group %lld must be >= 1", (long long)L->group);
        if (nseg_in > 1 && (seg_in & 1))
            return uq_set_error(UQ_ERR_SHAPE, "linear: int4 input segments must have even width, got %lld",
                                (long long)seg_in);
        int64_t gps = (seg_in + L->group - 1) / L->group;
        if (L->scale_cols != nseg_in * gps)
            return uq_set_error(UQ_ERR_SHAPE,
                                "linear: int4 scales have %lld columns, expected %lld (%lld segments x %lld groups)",
                                (long long)L->scale_cols, (long long)(nseg_in * gps), (long long)nseg_in,
                                (long long)gps);
        if (L->layout == UQ_Q4_R16) {
            if (L->nseg_out != nseg_out || L->nseg_in != nseg_in || L->group % UQ_Q4_R16_COLS)
                return uq_set_error(UQ_ERR_SHAPE,
                                    "linear: R16 int4 weight built for segments (%lld, %lld) (group %lld), called with "
                                    "(%lld, %lld)", (long long)L->nseg_out, (long long)L->nseg_in, (long long)L->group,
                                    (long long)nseg_out, (long long)nseg_in);
        } else if (L->layout != UQ_Q4_ROWMAJOR) {
            return uq_set_error(UQ_ERR_ARG, "linear: unknown int4 layout %d", (int)L->layout);
        }
    } else if (L->kind == UQ_W_Q8) {
        return uq_q8w_check(L, nseg_in, "linear");
    } else {
        return uq_set_error(UQ_ERR_ARG, "linear: unknown weight kind %d", (int)L->kind);
    }
    return UQ_OK;
}

/* ref path, fp32 and fp16 weights (fp16 rows are converted exactly into cvt, 4 * cols floats per thread). */
static void linear_f32(const uq_linear *L, const float *x, int64_t T, int64_t nseg_out, int64_t keep_out,
                       int64_t nseg_in, int64_t keep_in, float *y, float *cvt, int nth) {
    const int64_t seg_out = L->rows / nseg_out, seg_in = L->cols / nseg_in, cols = L->cols;
    const int64_t nout = nseg_out * keep_out, nin = nseg_in * keep_in, nblk = (nout + 3) / 4;
    const float *W = L->w, *b = L->bias;
#pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t blk = 0; blk < nblk; blk++) {
        int64_t o0 = blk * 4, nr = nout - o0 < 4 ? nout - o0 : 4;
        const float *w[4];
        int64_t row[4];
        for (int i = 0; i < 4; i++) {
            int64_t o = o0 + (i < nr ? i : nr - 1); /* a short block repeats its last row (result discarded) */
            row[i] = (o / keep_out) * seg_out + o % keep_out;
            if (L->kind == UQ_W_F16) {
#ifdef _OPENMP
                float *c = cvt + ((int64_t)omp_get_thread_num() * 4 + i) * cols;
#else
                float *c = cvt + (int64_t)i * cols;
#endif
                (void)uq_convert_f16_to_f32(L->w16 + row[i] * cols, cols, c);
                w[i] = c;
            } else {
                w[i] = W + row[i] * cols;
            }
        }
        for (int64_t t = 0; t < T; t++) {
            const float *xt = x + t * nin;
            float tot[4] = {0, 0, 0, 0}, d[4];
            for (int64_t s = 0; s < nseg_in; s++) {
                int64_t off = s * seg_in;
                dot_4rows(w[0] + off, w[1] + off, w[2] + off, w[3] + off, xt + s * keep_in, keep_in, d);
                for (int i = 0; i < 4; i++) tot[i] += d[i];
            }
            float *yt = y + t * nout + o0;
            for (int i = 0; i < nr; i++) yt[i] = b ? tot[i] + b[row[i]] : tot[i];
        }
    }
}

static void linear_q4(const uq_linear *L, const float *x, int64_t T, int64_t nseg_out, int64_t keep_out,
                      int64_t nseg_in, int64_t keep_in, float *y, int nth) {
    const int64_t seg_out = L->rows / nseg_out, seg_in = L->cols / nseg_in, g = L->group;
    const int64_t gps = (seg_in + g - 1) / g, rowbytes = UQ_Q4_ROW_BYTES(L->cols);
    const int64_t nout = nseg_out * keep_out, nin = nseg_in * keep_in;
    const float *b = L->bias;
#pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t o = 0; o < nout; o++) {
        float buf[UQ_Q4_CHUNK];
        int64_t row = (o / keep_out) * seg_out + o % keep_out;
        const uint8_t *prow = L->packed + row * rowbytes;
        const uint16_t *srow = L->scales + row * L->scale_cols;
        for (int64_t t0 = 0; t0 < T; t0 += 4) {
            int64_t nt = T - t0 < 4 ? T - t0 : 4;
            const float *xt[4];
            for (int i = 0; i < 4; i++) xt[i] = x + (t0 + (i < nt ? i : nt - 1)) * nin;
            float tot[4] = {0, 0, 0, 0};
            for (int64_t s = 0; s < nseg_in; s++) {
                const uint8_t *pseg = prow + (s * seg_in) / 2; /* seg_in even when nseg_in > 1 */
                for (int64_t g0 = 0; g0 < keep_in; g0 += g) {
                    int64_t gend = g0 + g < keep_in ? g0 + g : keep_in;
                    float gacc[4] = {0, 0, 0, 0}, d[4];
                    for (int64_t c0 = g0; c0 < gend; c0 += UQ_Q4_CHUNK) {
                        int64_t n = gend - c0 < UQ_Q4_CHUNK ? gend - c0 : UQ_Q4_CHUNK;
                        q4_unpack(pseg, c0, n, buf);
                        int64_t xo = s * keep_in + c0;
                        if (nt == 1) {
                            d[0] = uq_k_dot(buf, xt[0] + xo, n);
                        } else {
                            dot_4tok(buf, xt[0] + xo, xt[1] + xo, xt[2] + xo, xt[3] + xo, n, d);
                        }
                        for (int i = 0; i < 4; i++) gacc[i] += d[i];
                    }
                    float sc = uq_h2f(srow[s * gps + g0 / g]);
                    for (int i = 0; i < 4; i++) tot[i] += gacc[i] * sc;
                }
            }
            for (int i = 0; i < nt; i++) y[(t0 + i) * nout + o] = b ? tot[i] + b[row] : tot[i];
        }
    }
}

/* ------------------------------------------------------------------------- shared helpers ---- */

static int par_threads(int64_t work) { return work >= UQ_PAR_MIN_WORK ? uq_k_threads() : 1; }

static inline int q4_code(const uint8_t *row, int64_t col) {
    uint8_t b = row[col >> 1];
    return (col & 1) ? b >> 4 : b & 15;
}

/* Chunks of width cw over the selection (each segment's kept columns from its start). int4 (group > 0):
 * scol = scale column when the chunk lies in one group (always when group % cw == 0), else -1. */
static uq_status build_chunks(int64_t nseg_in, int64_t seg_in, int64_t keep_in, int64_t cw, int64_t group,
                              uq_k_chunk **out, int64_t *nch) {
    const int64_t per = (keep_in + cw - 1) / cw, gps = group > 0 ? (seg_in + group - 1) / group : 0;
    uq_k_chunk *ch;
    uq_status st = uq_alloc((size_t)(nseg_in * per) * sizeof *ch, (void **)&ch);
    if (st != UQ_OK) return st;
    int64_t k = 0;
    for (int64_t s = 0; s < nseg_in; s++)
        for (int64_t c0 = 0; c0 < keep_in; c0 += cw, k++) {
            ch[k].wcol = s * seg_in + c0;
            ch[k].xcol = s * keep_in + c0;
            ch[k].n = keep_in - c0 < cw ? keep_in - c0 : cw;
            ch[k].xq = 0;
            ch[k].scol = -1;
            if (group > 0 && c0 / group == (c0 + ch[k].n - 1) / group) ch[k].scol = s * gps + c0 / group;
        }
    *out = ch;
    *nch = k;
    return UQ_OK;
}

/* One chunk per group of every kept segment, with the byte offset of its quantized activations (blocks of
 * cw columns, or 4 when cw == 0). *ldq = bytes per token (multiple of 64). */
static uq_status build_groups(int64_t nseg_in, int64_t seg_in, int64_t keep_in, int64_t group, int cw,
                              uq_k_chunk **out, int64_t *nch, int64_t *ldq) {
    const int64_t per = (keep_in + group - 1) / group, gps = (seg_in + group - 1) / group, blk = cw ? cw : 4;
    uq_k_chunk *ch;
    uq_status st = uq_alloc((size_t)(nseg_in * per) * sizeof *ch, (void **)&ch);
    if (st != UQ_OK) return st;
    int64_t k = 0, off = 0;
    for (int64_t s = 0; s < nseg_in; s++)
        for (int64_t g0 = 0; g0 < keep_in; g0 += group, k++) {
            ch[k].wcol = s * seg_in + g0;
            ch[k].xcol = s * keep_in + g0;
            ch[k].n = keep_in - g0 < group ? keep_in - g0 : group;
            ch[k].scol = s * gps + g0 / group;
            ch[k].xq = off;
            off += (ch[k].n + blk - 1) / blk * blk;
        }
    *out = ch;
    *nch = k;
    *ldq = (off + 63) / 64 * 64;
    return UQ_OK;
}

/* ------------------------------------------------------------- int8 activations (all paths) ---- */

void uq_k_q8_quant(const float *x, const uq_k_chunk *ch, int64_t nch, int cw, int8_t *xqrow, float *xs,
                   int32_t *xsum) {
    const float magic = 12582912.0f; /* 1.5 * 2^23: (v + magic) - magic = rint(v) for |v| < 2^22 */
    for (int64_t k = 0; k < nch; k++) {
        const float *xg = x + ch[k].xcol;
        const int64_t n = ch[k].n, blk = cw ? cw : 4;
        int8_t *dst = xqrow + ch[k].xq;
        memset(dst, 0, (size_t)((n + blk - 1) / blk * blk));
        float amax = 0.0f;
        for (int64_t i = 0; i < n; i++) {
            float a = fabsf(xg[i]);
            amax = a > amax ? a : amax; /* NaN never wins */
        }
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        xs[k] = amax / 127.0f;
        int32_t sum = 0;
        for (int64_t i = 0; i < n; i++) {
            float v = xg[i] * inv;
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v == v ? v : 0.0f;
            int q = (int)((v + magic) - magic);
            sum += q;
            int64_t j = cw ? i & (cw - 1) : 0; /* cw is a power of two */
            dst[cw ? (i - j) + ((j & 1) ? cw / 2 + j / 2 : j / 2) : i] = (int8_t)q;
        }
        xsum[k] = sum;
    }
}

/* Reference int8-activation kernel (natural xq order): tot (mr, T). */
static void q8_gemv_ref(const uint8_t *const *w, const float *const *s, int mr, const int8_t *xq, int64_t ldq,
                        const float *xs, const int32_t *xsum, int64_t ldg, int64_t T, const uq_k_chunk *ch,
                        int64_t nch, float *tot) {
    (void)xsum;
    for (int r = 0; r < mr; r++)
        for (int64_t t = 0; t < T; t++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < nch; k++) {
                const int8_t *q = xq + t * ldq + ch[k].xq;
                int32_t isum = 0;
                for (int64_t i = 0; i < ch[k].n; i++) isum += (q4_code(w[r], ch[k].wcol + i) - UQ_Q4_OFFSET) * q[i];
                acc = acc + (float)isum * (s[r][ch[k].scol] * xs[t * ldg + k]);
            }
            tot[r * T + t] = acc;
        }
}

static float ref_dot(const float *a, const float *b, int64_t n) { return uq_k_dot(a, b, n); }

static void ref_axpy(float a, const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

const uq_kpath uq_kpath_ref = {
    .name = "ref", .V = 8, .cw = 0, .dot = ref_dot, .axpy = ref_axpy, .q8_gemv = q8_gemv_ref,
    .r16_f32 = uq_k_r16_f32_ref, .r16_q8 = uq_k_r16_q8_ref,
};

/* ------------------------------------------------------------------- int4, R16 layout ---- */

#define UQ_R16_TB 64 /* tokens per kernel call (bounds the per-thread output scratch) */

/* One weight of a linear_r16 call (shared by the call's pool tasks). */
typedef struct {
    const uq_linear *L;
    const float *b;
    float *y;
    int64_t nout, keep_out, seg_out, kb, rb, bbytes, sstride, nbt, ntask, task0;
} r16_weight;

/* One linear_r16 call: n weights on the same activations, tasks [task0, task0 + ntask) of weight i; co set (decode
 * with a prefetch plan): task t of a weight takes its kept blocks t, t + ntask, t + 2 ntask, ... (strided), else the
 * range [t * nbt / ntask, (t + 1) * nbt / ntask). */
typedef struct {
    const uq_kpath *P;
    const float *x, *xs;
    const int8_t *xq;
    const int32_t *xsum;
    const uq_k_chunk *gr;
    float *scratch;
    const r16_weight *w;
    const int64_t *co; /* decode prefetch plan (uq_k_r16_pf.co, nct chunks), NULL for none */
    int n;
    int64_t T, TB, nin, ng, ldq, ldo, nct, ntask, pf_step;
    int q8;
} r16_job;

static void r16_quant_task(void *arg, int64_t t, int worker) {
    const r16_job *j = arg;
    (void)worker;
    int8_t *xq = (int8_t *)j->xq + t * j->ldq;
    float *xs = (float *)j->xs + t * j->ng;
    int32_t *xsum = (int32_t *)j->xsum + t * j->ng;
    if (j->P->q8_quant0)
        j->P->q8_quant0(j->x + t * j->nin, j->gr, j->ng, xq, xs, xsum);
    else
        uq_k_q8_quant(j->x + t * j->nin, j->gr, j->ng, 0, xq, xs, xsum);
}

/* The row blocks of task gtask of a linear_r16 job: block pointers wb / sb, the weight's index into j->w (*wi) and the
 * blocks' indices among its kept blocks kb[] (any of them may be NULL); returns their count (<= UQ_K_R16_NB). */
static int64_t r16_task_blocks(const r16_job *j, int64_t gtask, const uint8_t **wb, const uint16_t **sb, int *wi,
                               int64_t *kb) {
    int k = 0;
    while (k + 1 < j->n && gtask >= j->w[k + 1].task0) k++;
    const r16_weight *W = &j->w[k];
    const int64_t task = gtask - W->task0, b0 = task * W->nbt / W->ntask;
    const int64_t nb = j->co ? (W->nbt - task + W->ntask - 1) / W->ntask : (task + 1) * W->nbt / W->ntask - b0;
    for (int64_t i = 0; i < nb; i++) {
        const int64_t b = j->co ? task + i * W->ntask : b0 + i, blk = (b / W->kb) * W->rb + b % W->kb;
        if (wb) wb[i] = W->L->packed + blk * W->bbytes;
        if (sb) sb[i] = W->L->scales + blk * W->sstride;
        if (kb) kb[i] = b;
    }
    if (wi) *wi = k;
    return nb;
}

static void r16_task(void *arg, int64_t gtask, int worker) {
    const r16_job *j = arg;
    int wi;
    int64_t kb[UQ_K_R16_NB];
    const uint8_t *wb[UQ_K_R16_NB], *wn[UQ_K_R16_NB];
    const uint16_t *sb[UQ_K_R16_NB], *sn[UQ_K_R16_NB];
    const int64_t nb = r16_task_blocks(j, gtask, wb, sb, &wi, kb);
    const r16_weight *W = &j->w[wi];
    /* decode: the kernel prefetches from the end of these blocks into the first ones (and their scales) of the task
     * this thread will probably run next (tasks are claimed in order, about one in pf_step per thread): with strided
     * tasks, on one thread the blocks right after these, so each of the tile's streams runs on through the weight */
    uq_k_r16_pf pf = {.co = j->co, .nct = j->nct, .wn = NULL, .sn = NULL};
    if (j->co && gtask + j->pf_step < j->ntask) {
        const int64_t nn = r16_task_blocks(j, gtask + j->pf_step, wn, sn, NULL, NULL);
        for (int64_t i = nn; i < UQ_K_R16_NB; i++) {
            wn[i] = wn[nn - 1];
            sn[i] = sn[nn - 1];
        }
        pf.wn = wn;
        pf.sn = sn;
    }
    float *out = j->scratch + (size_t)worker * (size_t)(j->TB * j->ldo);
    for (int64_t t0 = 0; t0 < j->T; t0 += j->TB) {
        const int64_t tn = j->T - t0 < j->TB ? j->T - t0 : j->TB;
        if (j->q8)
            j->P->r16_q8(wb, sb, (int)nb, j->xq + t0 * j->ldq, j->ldq, j->xs + t0 * j->ng, j->xsum + t0 * j->ng, j->ng,
                         tn, j->gr, j->ng, out, j->ldo, j->co ? &pf : NULL);
        else
            j->P->r16_f32(wb, sb, (int)nb, j->x + t0 * j->nin, j->nin, tn, j->gr, j->ng, out, j->ldo);
        for (int64_t i = 0; i < nb; i++) {
            const int64_t so = kb[i] / W->kb, r0 = 16 * (kb[i] % W->kb);
            const int64_t nr = W->keep_out - r0 < 16 ? W->keep_out - r0 : 16;
            for (int64_t t = 0; t < tn; t++) {
                const float *src = out + t * j->ldo + 16 * i;
                float *dst = W->y + (t0 + t) * W->nout + so * W->keep_out + r0;
                if (W->b) {
                    const float *bb = W->b + so * W->seg_out + r0;
                    for (int64_t l = 0; l < nr; l++) dst[l] = src[l] + bb[l];
                } else if (nr == 16) { /* a whole block: a fixed-size copy, inlined (a memmove call per token and block
                                        * was ~2% of a prefill) */
                    memcpy(dst, src, 16 * sizeof(float));
                } else {
                    memcpy(dst, src, (size_t)nr * sizeof(float));
                }
            }
        }
    }
}

#define UQ_R16_MULTI 4 /* most weights in one linear_r16 call */

/* y_i = x W_i_sel^T (+ b_i) on n <= UQ_R16_MULTI R16 weights that share cols, group and the input selection: one
 * task per range of <= UQ_K_R16_NB kept row blocks of one weight (a block of a segment whose keep_out is not a
 * multiple of 16 is computed whole, its extra rows dropped), each task streaming its blocks' kept chunk runs once
 * per UQ_R16_TB tokens; all weights' tasks in one pool job. fp32 activations are read in place; int8 activations
 * are quantized once per token and group in natural column order (groups padded to 8 with zeros). */
static uq_status linear_r16(const uq_kpath *P, int n, const uq_linear *const *Ls, const float *x, int64_t T,
                            const int64_t *nseg_outs, const int64_t *keep_outs, int64_t nseg_in, int64_t keep_in,
                            float *const *ys, int q8) {
    const uq_linear *L0 = Ls[0];
    const int64_t seg_in = L0->cols / nseg_in, g = L0->group;
    const int64_t gps = (seg_in + g - 1) / g, cc = (seg_in + 7) / 8;
    const int64_t nin = nseg_in * keep_in;
    const int64_t per = (keep_in + g - 1) / g, ng = nseg_in * per;
    uq_k_chunk *gr = NULL;
    int8_t *xq = NULL;
    float *xs = NULL, *scratch = NULL;
    int32_t *xsum = NULL;
    int64_t *co = NULL, ldq = 0, work = 0, nct = 0;
    uq_status st = uq_alloc((size_t)ng * sizeof *gr, (void **)&gr);
    if (st != UQ_OK) return st;
    {
        int64_t k = 0, off = 0;
        for (int64_t si = 0; si < nseg_in; si++)
            for (int64_t g0 = 0; g0 < keep_in; g0 += g, k++) {
                gr[k].wcol = si * cc + g0 / 8;
                gr[k].xcol = si * keep_in + g0;
                gr[k].n = keep_in - g0 < g ? keep_in - g0 : g;
                gr[k].scol = si * gps + g0 / g;
                gr[k].xq = off;
                off += (gr[k].n + 7) / 8 * 8;
            }
        ldq = (off + 63) / 64 * 64;
    }
    for (int i = 0; i < n; i++) work += nseg_outs[i] * keep_outs[i] * nin * T;
    const int nth = par_threads(work);
    /* tasks: per weight a multiple of the thread count, of equal size (+-1), at most 4 blocks each for decode (T < 8:
     * small linears of a pruned model still split evenly, e.g. 40 blocks = 10 x 4 on 2 threads, not 5 x 8) and
     * UQ_K_R16_NB for prefill (each task re-reads the activations). One-token int8 decode (the prefetch plan below):
     * the kernel's tile of P->r16_decode_nb blocks per task, strided (task t: kept blocks t, t + ntask, ...), so the
     * tile's streams continue in the next task's blocks (on one thread: the next 16 rows of each) instead of jumping
     * to new blocks every tile: the hardware prefetchers and DRAM see a few long streams (8B-shaped stack, 1 thread,
     * in-process A/B against contiguous ranges: 1.03-1.06x faster decode on avx512, ~1.03x on avx2) */
    const int plan = q8 && T == 1;
    const int64_t per_task = plan ? (P->r16_decode_nb > 0 ? P->r16_decode_nb : 4) : T < 8 ? 4 : UQ_K_R16_NB;
    r16_weight w[UQ_R16_MULTI];
    int64_t ntask_all = 0;
    for (int i = 0; i < n; i++) {
        const uq_linear *L = Ls[i];
        const int64_t seg_out = L->rows / nseg_outs[i], kb = (keep_outs[i] + 15) / 16, nbt = nseg_outs[i] * kb;
        int64_t ntask = (int64_t)nth * ((nbt + (int64_t)nth * per_task - 1) / ((int64_t)nth * per_task));
        if (ntask > nbt) ntask = nbt;
        w[i] = (r16_weight){.L = L, .b = L->bias, .y = ys[i], .nout = nseg_outs[i] * keep_outs[i],
                            .keep_out = keep_outs[i], .seg_out = seg_out, .kb = kb, .rb = (seg_out + 15) / 16,
                            .bbytes = nseg_in * cc * 64, .sstride = L->scale_cols * 16, .nbt = nbt, .ntask = ntask,
                            .task0 = ntask_all};
        ntask_all += ntask;
    }
    const int64_t TB = T < UQ_R16_TB ? T : UQ_R16_TB, ldo = 16 * UQ_K_R16_NB;
    if ((st = uq_alloc((size_t)nth * (size_t)(TB * ldo) * sizeof(float), (void **)&scratch)) != UQ_OK) goto done;
    if (q8 && ((st = uq_calloc((size_t)(T * ldq), (void **)&xq)) != UQ_OK ||
               (st = uq_alloc((size_t)(T * ng) * sizeof(float), (void **)&xs)) != UQ_OK ||
               (st = uq_alloc((size_t)(T * ng) * sizeof(int32_t), (void **)&xsum)) != UQ_OK))
        goto done;
    if (plan) { /* the decode prefetch plan: every kept chunk's byte offset in a block, in reading order */
        for (int64_t k = 0; k < ng; k++) nct += (gr[k].n + 7) / 8;
        if ((st = uq_alloc((size_t)nct * sizeof(int64_t), (void **)&co)) != UQ_OK) goto done;
        for (int64_t k = 0, c = 0; k < ng; k++)
            for (int64_t i = 0; i < (gr[k].n + 7) / 8; i++) co[c++] = (gr[k].wcol + i) * 64;
    }
    {
        r16_job j = {.P = P, .x = x, .xs = xs, .xq = xq, .xsum = xsum, .gr = gr, .scratch = scratch, .w = w, .n = n,
                     .T = T, .TB = TB, .nin = nin, .ng = ng, .ldq = ldq, .ldo = ldo, .q8 = q8, .co = co, .nct = nct,
                     .ntask = ntask_all, .pf_step = nth};
        if (q8) uq_pool_run(T, T >= 8 ? nth : 1, r16_quant_task, &j);
        uq_pool_run(ntask_all, nth, r16_task, &j);
    }
done:
    uq_free(gr);
    uq_free(xq);
    uq_free(xs);
    uq_free(xsum);
    uq_free(scratch);
    uq_free(co);
    return st;
}

#define UQ_Q8_GEMM_MIN_T 16 /* below this many tokens the int8 GEMV beats repacking the weights */
#define UQ_Q8_MB 32         /* rows per int8 GEMM block */

/* One linear_q8 call, shared by its pool tasks. */
typedef struct {
    const uq_kpath *Q;
    const uq_linear *L;
    const float *x, *b;
    const uq_k_chunk *ch;
    int8_t *xq;
    float *xs, *tot, *y, *sbuf; /* sbuf: per worker MB rows of float scales (converted from float16) */
    int32_t *xsum;
    void *work;
    size_t wb;
    int64_t T, nin, nout, keep_out, seg_out, rowbytes, ng, ldq, MB;
    int gemm, g16;
} q8_job;

static void q8_quant_task(void *arg, int64_t t, int worker) {
    const q8_job *j = arg;
    (void)worker;
    (j->Q->q8_quant ? j->Q->q8_quant : uq_k_q8_quant)(j->x + t * j->nin, j->ch, j->ng, j->Q->cw, j->xq + t * j->ldq,
                                                      j->xs + t * j->ng, j->xsum + t * j->ng);
}

/* R(o) without the integer division when one output segment is kept whole (o < keep_out = seg_out: an lm_head's
 * ~50k rows paid two divisions each, a third of its W4A8 GEMV time on AVX2). */
static inline int64_t q8_row(int64_t o, int64_t keep_out, int64_t seg_out) {
    return o < keep_out ? o : (o / keep_out) * seg_out + o % keep_out;
}

static void q8_task(void *arg, int64_t blk, int id) {
    const q8_job *j = arg;
    const uq_kpath *Q = j->Q;
    const uq_linear *L = j->L;
    const int64_t MB = j->MB, nout = j->nout, keep_out = j->keep_out, seg_out = j->seg_out, T = j->T;
    const float *b = j->b;
    float *y = j->y;
    int64_t o0 = blk * MB, nr = nout - o0 < MB ? nout - o0 : MB;
    const uint8_t *wr[UQ_Q8_MB];
    const float *sr[UQ_Q8_MB];
    float *sf = j->sbuf + (size_t)id * (size_t)(MB * L->scale_cols);
    const int64_t r0 = q8_row(o0, keep_out, seg_out);
    /* consecutive stored rows (always with one output segment): their scales in one exact conversion (vcvtph2ps =
     * uq_h2f), not one call per row (per-row calls were a third of a SmolLM2 lm_head's W4A8 GEMV on AVX2) */
    const int contig = q8_row(o0 + nr - 1, keep_out, seg_out) == r0 + nr - 1 && Q->f16_to_f32;
    if (contig) Q->f16_to_f32(L->scales + r0 * L->scale_cols, nr * L->scale_cols, sf);
    for (int64_t i = 0; i < MB; i++) {
        int64_t o = o0 + (i < nr ? i : nr - 1), row = q8_row(o, keep_out, seg_out);
        wr[i] = L->packed + row * j->rowbytes;
        if (!contig && i < nr) uq_k_h2f_row(L->scales + row * L->scale_cols, L->scale_cols, sf + i * L->scale_cols);
        sr[i] = sf + (i < nr ? i : nr - 1) * L->scale_cols;
    }
    float *tt = j->tot + (int64_t)id * MB * T;
    if (j->gemm) {
        Q->q8_gemm(wr, sr, (int)nr, j->xq, j->ldq, j->xs, j->xsum, j->ng, T, j->ch, j->ng, y + o0, nout,
                   (char *)j->work + (size_t)id * j->wb);
        if (b)
            for (int64_t t = 0; t < T; t++)
                for (int64_t i = 0; i < nr; i++) {
                    int64_t o = o0 + i;
                    y[t * nout + o] = y[t * nout + o] + b[(o / keep_out) * seg_out + o % keep_out];
                }
        return;
    }
    if (j->g16) {
        const uint8_t *wn[16];
        int64_t n1 = nout - (o0 + MB) < MB ? nout - (o0 + MB) : MB;
        for (int64_t i = 0; i < 16 && n1 > 0; i++) {
            int64_t o = o0 + MB + (i < n1 ? i : n1 - 1);
            wn[i] = L->packed + ((o / keep_out) * seg_out + o % keep_out) * j->rowbytes;
        }
        Q->q8_gemv_16rows(wr, sr, (int)nr, j->xq, j->xs, j->xsum, j->ch, j->ng, tt, n1 > 0 ? wn : NULL);
    } else {
        Q->q8_gemv(wr, sr, (int)nr, j->xq, j->ldq, j->xs, j->xsum, j->ng, T, j->ch, j->ng, tt);
    }
    for (int64_t i = 0; i < nr; i++) {
        int64_t o = o0 + i, row = q8_row(o, keep_out, seg_out);
        for (int64_t t = 0; t < T; t++) y[t * nout + o] = b ? tt[i * T + t] + b[row] : tt[i * T + t];
    }
}

/* Dynamic blocks of 4 row blocks, as schedule(dynamic, 4) handed them out. */
#define UQ_Q8_BLOCKS_PER_TASK 4

static void q8_task4(void *arg, int64_t task, int id) {
    const q8_job *j = arg;
    const int64_t nblk = (j->nout + j->MB - 1) / j->MB;
    for (int64_t blk = task * UQ_Q8_BLOCKS_PER_TASK; blk < nblk && blk < (task + 1) * UQ_Q8_BLOCKS_PER_TASK; blk++)
        q8_task(arg, blk, id);
}

static uq_status linear_q8(const uq_kpath *P, const uq_linear *L, const float *x, int64_t T, int64_t nseg_out,
                           int64_t keep_out, int64_t nseg_in, int64_t keep_in, float *y) {
    const int64_t seg_out = L->rows / nseg_out, seg_in = L->cols / nseg_in, g = L->group;
    const int64_t nout = nseg_out * keep_out, nin = nseg_in * keep_in, rowbytes = UQ_Q4_ROW_BYTES(L->cols);
    /* the vector kernels read whole bytes from each group's first column: every group must start even */
    int vec = P != &uq_kpath_ref && (nseg_in == 1 || !(seg_in & 1)) && (g % 2 == 0 || g >= keep_in);
    const uq_kpath *Q = vec ? P : &uq_kpath_ref;
    uq_k_chunk *ch = NULL;
    int64_t ng, ldq;
    int8_t *xq = NULL;
    float *xs = NULL, *tot = NULL, *sbuf = NULL;
    int32_t *xsum = NULL;
    void *work = NULL;
    uq_status st = build_groups(nseg_in, seg_in, keep_in, g, Q->cw, &ch, &ng, &ldq);
    if (st != UQ_OK) return st;
    const int nth = par_threads(nout * nin * T);
    const int gemm = Q->q8_gemm && T >= UQ_Q8_GEMM_MIN_T, g16 = !gemm && T == 1 && Q->q8_gemv_16rows;
    const int64_t MB = gemm ? UQ_Q8_MB : g16 ? 16 : 4, nblk = (nout + MB - 1) / MB;
    size_t wb = gemm ? (Q->q8_gemm_work(ch, ng) + 63) / 64 * 64 : 0;
    if ((st = uq_alloc((size_t)(T * ldq), (void **)&xq)) != UQ_OK ||
        (st = uq_alloc((size_t)(T * ng) * sizeof(float), (void **)&xs)) != UQ_OK ||
        (st = uq_alloc((size_t)(T * ng) * sizeof(int32_t), (void **)&xsum)) != UQ_OK ||
        (st = uq_alloc((size_t)nth * (size_t)(MB * T) * sizeof(float), (void **)&tot)) != UQ_OK ||
        (st = uq_alloc((size_t)nth * wb + 64, &work)) != UQ_OK ||
        (st = uq_alloc((size_t)(nth * MB * L->scale_cols) * sizeof(float), (void **)&sbuf)) != UQ_OK)
        goto done;
    {
        q8_job j = {.Q = Q, .L = L, .x = x, .b = L->bias, .ch = ch, .xq = xq, .xs = xs, .tot = tot, .y = y,
                    .xsum = xsum, .work = work, .wb = wb, .T = T, .nin = nin, .nout = nout, .keep_out = keep_out,
                    .seg_out = seg_out, .rowbytes = rowbytes, .ng = ng, .ldq = ldq, .MB = MB, .gemm = gemm,
                    .g16 = g16, .sbuf = sbuf};
        uq_pool_run(T, T >= 8 ? nth : 1, q8_quant_task, &j);
        uq_pool_run((nblk + UQ_Q8_BLOCKS_PER_TASK - 1) / UQ_Q8_BLOCKS_PER_TASK, nth, q8_task4, &j);
    }
done:
    uq_free(ch);
    uq_free(xq);
    uq_free(xs);
    uq_free(xsum);
    uq_free(tot);
    uq_free(work);
    uq_free(sbuf);
    return st;
}

/* ---------------------------------------------------------------- vector paths (fp32 act) ---- */

#define UQ_GEMM_MB 16 /* rows per packed panel (4 row tiles) */
#define UQ_GEMM_TB (8 * UQ_K_NR)
#define UQ_GEMM_KC 32 /* vectors per K block (x tile of UQ_K_NR tokens + 4 rows stay in L1) */

/* Column of element e of an m*V-wide piece: vector e / V, lane e % V -> column m * lane + vector. */
static inline int64_t piece_col(int64_t e, int V, int m) { return (e % V) * m + e / V; }

/* Generic int4 packing (chunks spanning groups): pieces of 2V columns of fl((q - 8) * scale). */
static void pack_q4_generic(const uint8_t *w, const float *s, const uq_k_chunk *ch, int64_t nch, int V,
                            int64_t keep_in, int64_t group, int64_t gps, float *dst) {
    for (int64_t k = 0; k < nch; k++, dst += 2 * V) {
        int64_t seg = ch[k].xcol / keep_in, c0 = ch[k].xcol % keep_in;
        for (int i = 0; i < 2 * V; i++) {
            int64_t j = piece_col(i, V, 2);
            dst[i] = j < ch[k].n ? (float)(q4_code(w, ch[k].wcol + j) - UQ_Q4_OFFSET) *
                                       s[seg * gps + (c0 + j) / group]
                                 : 0.0f;
        }
    }
}

/* One linear_vec call, shared by its pool tasks (the loop bodies below use these names). */
typedef struct {
    const uq_kpath *P;
    const uq_linear *L;
    const float *x, *xg, *b;
    float *y, *xp, *work, *sbuf; /* sbuf: int4, per worker UQ_GEMM_MB rows of float scales (from float16) */
    const uq_k_chunk *ch;
    int64_t nch, cw, seg_out, cols, nout, nin, rowbytes, g, gps, keep_out, keep_in, nvec, ldp, ldx, T, MR;
    size_t per;
    int V, m, wide, q4, direct, all_scol;
} vec_job;

/* token t of x packed into xp (natural order for fp32 / fp16, [V even | V odd] pieces for int4) */
static void vec_pack_task(void *arg, int64_t t, int worker) {
    const vec_job *jb = arg;
    const uq_k_chunk *ch = jb->ch;
    const int64_t cw = jb->cw, nin = jb->nin, ldp = jb->ldp;
    const int V = jb->V, m = jb->m;
    (void)worker;
    for (int64_t k = 0; k < jb->nch; k++) {
        const float *src = jb->x + t * nin + ch[k].xcol;
        float *dst = jb->xp + t * ldp + k * cw;
        const int64_t n = ch[k].n;
        if (m == 1) {
            memcpy(dst, src, (size_t)n * sizeof(float));
            for (int64_t i = n; i < cw; i++) dst[i] = 0.0f;
        } else {
            for (int j = 0; j < m; j++)
                for (int i = 0; i < V; i++) dst[j * V + i] = m * i + j < n ? src[m * i + j] : 0.0f;
        }
    }
}

/* GEMV: 8 row blocks of MR rows per task (T <= 4) */
static void vec_gemv_task(void *arg, int64_t task, int worker) {
    const vec_job *jb = arg;
    const uq_kpath *P = jb->P;
    const uq_linear *L = jb->L;
    const float *xg = jb->xg, *b = jb->b;
    float *y = jb->y;
    const uq_k_chunk *ch = jb->ch;
    const int64_t nch = jb->nch, seg_out = jb->seg_out, cols = jb->cols, nout = jb->nout, rowbytes = jb->rowbytes;
    const int64_t keep_out = jb->keep_out, ldx = jb->ldx, T = jb->T;
    const int V = jb->V, wide = jb->wide, q4 = jb->q4;
    const int MR = (int)jb->MR;
    const int64_t nblk = (nout + MR - 1) / MR;
    for (int64_t blk = task * 8; blk < nblk && blk < task * 8 + 8; blk++) {
        float acc[8 * 4 * 16];
        int64_t o0 = blk * MR, nr = nout - o0 < MR ? nout - o0 : MR, row[8];
        const float *wf[8];
        const uint16_t *wh[8];
        const uint8_t *wq[8];
        const float *sq[8];
        float *sf = q4 ? jb->sbuf + (size_t)worker * (size_t)(UQ_GEMM_MB * L->scale_cols) : NULL;
        for (int i = 0; i < nr; i++) {
            int64_t o = o0 + i;
            row[i] = (o / keep_out) * seg_out + o % keep_out;
            if (L->kind == UQ_W_F32) wf[i] = L->w + row[i] * cols;
            if (L->kind == UQ_W_F16) wh[i] = L->w16 + row[i] * cols;
            if (q4) {
                wq[i] = L->packed + row[i] * rowbytes;
                uq_k_h2f_row(L->scales + row[i] * L->scale_cols, L->scale_cols, sf + i * L->scale_cols);
                sq[i] = sf + i * L->scale_cols;
            }
        }
        if (L->kind == UQ_W_F32)
            P->gemv_f32(wf, (int)nr, xg, ldx, (int)T, ch, nch, acc);
        else if (L->kind == UQ_W_F16)
            P->gemv_f16(wh, (int)nr, xg, ldx, (int)T, ch, nch, acc);
        else
            (wide ? P->gemv_q4w : P->gemv_q4)(wq, sq, (int)nr, xg, ldx, (int)T, ch, nch, acc);
        for (int i = 0; i < nr; i++)
            for (int64_t t = 0; t < T; t++) {
                const float *a = acc + (i * T + t) * V;
                float d = V == 16 ? uq_k_reduce16(a) : uq_k_reduce8(a);
                y[t * nout + o0 + i] = b ? d + b[row[i]] : d;
            }
    }
}

/* GEMM: one panel of UQ_GEMM_MB rows per task, packed into the worker's scratch */
static void vec_gemm_task(void *arg, int64_t blk, int worker) {
    const vec_job *jb = arg;
    const uq_kpath *P = jb->P;
    const uq_linear *L = jb->L;
    const float *xg = jb->xg, *b = jb->b;
    float *y = jb->y;
    const uq_k_chunk *ch = jb->ch;
    const int64_t nch = jb->nch, seg_out = jb->seg_out, cols = jb->cols, nout = jb->nout, rowbytes = jb->rowbytes;
    const int64_t g = jb->g, gps = jb->gps, keep_out = jb->keep_out, keep_in = jb->keep_in;
    const int64_t nvec = jb->nvec, ldp = jb->ldp, ldx = jb->ldx, T = jb->T;
    const int V = jb->V, wide = jb->wide, direct = jb->direct, all_scol = jb->all_scol;
    const int64_t MB = UQ_GEMM_MB, TB = UQ_GEMM_TB, ntt = TB / UQ_K_NR;
    const size_t per = jb->per;
    float *wp = jb->work + (size_t)worker * per, *accb = wp + (direct ? 0 : MB * ldp);
    int64_t o0 = blk * MB, nr = nout - o0 < MB ? nout - o0 : MB, row[UQ_GEMM_MB];
    const float *wrow[UQ_GEMM_MB];
    for (int64_t i = 0; i < MB; i++) {
        if (direct) { /* rows past nr repeat the last row (results discarded) */
            int64_t o = o0 + (i < nr ? i : nr - 1);
            row[i] = (o / keep_out) * seg_out + o % keep_out;
            wrow[i] = L->w + row[i] * cols;
            continue;
        }
        float *dst = wp + i * ldp;
        wrow[i] = dst;
        if (i >= nr) {
            memset(dst, 0, (size_t)ldp * sizeof(float));
            continue;
        }
        int64_t o = o0 + i;
        row[i] = (o / keep_out) * seg_out + o % keep_out;
        if (L->kind == UQ_W_F32) {
            for (int64_t k = 0; k < nch; k++) {
                memcpy(dst + k * V, L->w + row[i] * cols + ch[k].wcol, (size_t)ch[k].n * sizeof(float));
                for (int64_t j = ch[k].n; j < V; j++) dst[k * V + j] = 0.0f;
            }
        } else if (L->kind == UQ_W_F16) {
            P->pack_f16(L->w16 + row[i] * cols, ch, nch, dst);
        } else {
            float *sf = jb->sbuf + (size_t)worker * (size_t)(UQ_GEMM_MB * L->scale_cols);
            uq_k_h2f_row(L->scales + row[i] * L->scale_cols, L->scale_cols, sf);
            if (all_scol)
                (wide ? P->pack_q4w : P->pack_q4)(L->packed + row[i] * rowbytes, sf, ch, nch, dst);
            else
                pack_q4_generic(L->packed + row[i] * rowbytes, sf, ch, nch, V, keep_in, g, gps, dst);
        }
    }
    for (int64_t t0 = 0; t0 < T; t0 += TB) {
        int64_t tb = T - t0 < TB ? T - t0 : TB;
        memset(accb, 0, (size_t)(MB * TB * V) * sizeof(float));
        for (int64_t kv = 0; kv < nvec; kv += UQ_GEMM_KC) {
            int64_t nv = nvec - kv < UQ_GEMM_KC ? nvec - kv : UQ_GEMM_KC;
            for (int64_t tt = 0; tt * UQ_K_NR < tb; tt++) {
                int nrr = (int)(tb - tt * UQ_K_NR < UQ_K_NR ? tb - tt * UQ_K_NR : UQ_K_NR);
                for (int64_t rt = 0; rt * 4 < nr; rt++) {
                    const float *w4[4];
                    for (int i = 0; i < 4; i++) w4[i] = wrow[rt * 4 + i] + kv * V;
                    P->gemm(w4, xg + (t0 + tt * UQ_K_NR) * ldx + kv * V, ldx, nrr, nv,
                            accb + ((rt * ntt + tt) * 4 * UQ_K_NR) * V);
                }
            }
        }
        for (int64_t tt = 0; tt * UQ_K_NR < tb; tt++) {
            int64_t nrr = tb - tt * UQ_K_NR < UQ_K_NR ? tb - tt * UQ_K_NR : UQ_K_NR;
            for (int64_t t = 0; t < nrr; t++) /* token-major: contiguous stores along the rows */
                for (int64_t i = 0; i < nr; i++) {
                    const float *a = accb + (((i / 4) * ntt + tt) * 4 * UQ_K_NR + (i % 4) * nrr + t) * V;
                    float d = V == 16 ? uq_k_reduce16(a) : uq_k_reduce8(a);
                    y[(t0 + tt * UQ_K_NR + t) * nout + o0 + i] = b ? d + b[row[i]] : d;
                }
        }
    }
}

static uq_status linear_vec(const uq_kpath *P, const uq_linear *L, const float *x, int64_t T, int64_t nseg_out,
                            int64_t keep_out, int64_t nseg_in, int64_t keep_in, float *y) {
    const int V = P->V, q4 = L->kind == UQ_W_Q4;
    const int wide = q4 && P->gemv_q4w && L->group % (8 * V) == 0, m = q4 ? (wide ? 8 : 2) : 1;
    const int64_t cw = (int64_t)m * V, seg_out = L->rows / nseg_out, seg_in = L->cols / nseg_in, cols = L->cols;
    const int64_t nout = nseg_out * keep_out, nin = nseg_in * keep_in, rowbytes = UQ_Q4_ROW_BYTES(cols);
    const int64_t g = q4 ? L->group : 0, gps = q4 ? (seg_in + g - 1) / g : 0;
    const float *b = L->bias;
    uq_k_chunk *ch;
    int64_t nch;
    uq_status st = build_chunks(nseg_in, seg_in, keep_in, cw, g, &ch, &nch);
    if (st != UQ_OK) return st;
    int all_scol = 1;
    for (int64_t k = 0; k < nch; k++) all_scol &= ch[k].scol >= 0;
    const int64_t nvec = nch * (cw / V), ldp = nvec * V;
    const int gemv = T <= 4 && (!q4 || all_scol), nth = par_threads(nout * nin * T);
    /* fp32 rows read in place by the GEMM when the selection is contiguous and has no partial chunks */
    const int direct = L->kind == UQ_W_F32 && keep_in % V == 0 && (nseg_in == 1 || keep_in == seg_in);
    float *xp = NULL, *work = NULL, *sbuf = NULL;
    const float *xg = x;
    int64_t ldx = nin;
    vec_job J = {.P = P, .L = L, .x = x, .y = y, .b = b, .ch = ch, .nch = nch, .V = V, .m = m, .wide = wide, .q4 = q4,
                 .direct = direct, .all_scol = all_scol, .cw = cw, .seg_out = seg_out, .cols = cols, .nout = nout,
                 .nin = nin, .rowbytes = rowbytes, .g = g, .gps = gps, .keep_out = keep_out, .keep_in = keep_in,
                 .nvec = nvec, .ldp = ldp, .T = T};
    if (q4 || (!gemv && !direct)) { /* packed x: natural order (fp32/fp16) or [V even | V odd] pieces (int4) */
        if ((st = uq_alloc((size_t)(T * ldp) * sizeof(float), (void **)&xp)) != UQ_OK) goto done;
        J.xp = xp;
        uq_pool_run(T, T >= 8 ? nth : 1, vec_pack_task, &J);
        xg = xp;
        ldx = ldp;
    }
    J.xg = xg;
    J.ldx = ldx;
    if (q4) { /* the kernels take float scale rows: each task converts its rows' float16 scales (exact) */
        if ((st = uq_alloc((size_t)(nth * UQ_GEMM_MB * L->scale_cols) * sizeof(float), (void **)&sbuf)) != UQ_OK)
            goto done;
        J.sbuf = sbuf;
    }
    if (gemv) {
        const int MR = T <= 2 ? 8 : 4;
        const int64_t nblk = (nout + MR - 1) / MR;
        J.MR = MR;
        uq_pool_run((nblk + 7) / 8, nth, vec_gemv_task, &J);
        goto done;
    }
    {
        const int64_t MB = UQ_GEMM_MB, TB = UQ_GEMM_TB, nblk = (nout + MB - 1) / MB;
        const size_t per = (size_t)((direct ? 0 : MB * ldp) + MB * TB * V); /* floats: panel + accumulators */
        if ((st = uq_alloc((size_t)nth * per * sizeof(float), (void **)&work)) != UQ_OK) goto done;
        J.work = work;
        J.per = per;
        uq_pool_run(nblk, nth, vec_gemm_task, &J);
    }
done:
    uq_free(ch);
    uq_free(xp);
    uq_free(work);
    uq_free(sbuf);
    return st;
}

uq_status uq_linear_forward(const uq_linear *L, const float *x, int64_t T, int64_t nseg_out, int64_t keep_out,
                            int64_t nseg_in, int64_t keep_in, float *y) {
    uq_status st = check_call(L, x, T, nseg_out, keep_out, nseg_in, keep_in, y);
    if (st != UQ_OK) return st;
    if ((st = uq_kernels_init()) != UQ_OK) return st;
    const uq_kpath *P = uq_k_path();
    if (L->kind == UQ_W_Q8)
        return uq_q8w_linear(L, x, T, nseg_out, keep_out, nseg_in, keep_in, y,
                             par_threads(nseg_out * keep_out * nseg_in * keep_in * T));
    if (L->kind == UQ_W_Q4 && L->layout == UQ_Q4_R16)
        return linear_r16(P->r16_f32 ? P : &uq_kpath_ref, 1, &L, x, T, &nseg_out, &keep_out, nseg_in, keep_in, &y,
                          uq_k_q4_int8());
    if (L->kind == UQ_W_Q4 && uq_k_q4_int8()) return linear_q8(P, L, x, T, nseg_out, keep_out, nseg_in, keep_in, y);
    if (P != &uq_kpath_ref) return linear_vec(P, L, x, T, nseg_out, keep_out, nseg_in, keep_in, y);
    const int nth = par_threads(nseg_out * keep_out * nseg_in * keep_in * T);
    if (L->kind == UQ_W_Q4) {
        linear_q4(L, x, T, nseg_out, keep_out, nseg_in, keep_in, y, nth);
        return UQ_OK;
    }
    float *cvt = NULL;
    if (L->kind == UQ_W_F16 && (st = uq_alloc((size_t)(nth * 4 * L->cols) * sizeof(float), (void **)&cvt)) != UQ_OK)
        return st;
    linear_f32(L, x, T, nseg_out, keep_out, nseg_in, keep_in, y, cvt, nth);
    uq_free(cvt);
    return UQ_OK;
}

uq_status uq_linear_forward_multi(int n, const uq_linear *const *L, const float *x, int64_t T,
                                  const int64_t *nseg_out, const int64_t *keep_out, int64_t nseg_in, int64_t keep_in,
                                  float *const *y) {
    if (n < 1 || n > UQ_R16_MULTI || !L || !nseg_out || !keep_out || !y)
        return uq_set_error(UQ_ERR_ARG, "linear_forward_multi: %d weights (1..%d) or a NULL argument", n, UQ_R16_MULTI);
    int fused = 1;
    for (int i = 0; i < n; i++) {
        uq_status st = check_call(L[i], x, T, nseg_out[i], keep_out[i], nseg_in, keep_in, y[i]);
        if (st != UQ_OK) return st;
        fused &= L[i]->kind == UQ_W_Q4 && L[i]->layout == UQ_Q4_R16 && L[i]->cols == L[0]->cols &&
                 L[i]->group == L[0]->group;
    }
    uq_status st = uq_kernels_init();
    if (st != UQ_OK) return st;
    if (fused) {
        const uq_kpath *P = uq_k_path();
        return linear_r16(P->r16_f32 ? P : &uq_kpath_ref, n, L, x, T, nseg_out, keep_out, nseg_in, keep_in, y,
                          uq_k_q4_int8());
    }
    for (int i = 0; i < n; i++)
        if ((st = uq_linear_forward(L[i], x, T, nseg_out[i], keep_out[i], nseg_in, keep_in, y[i])) != UQ_OK) return st;
    return UQ_OK;
}

uq_status uq_linear_forward_ref(const uq_linear *L, const float *x, int64_t T, int64_t nseg_out,
                                int64_t keep_out, int64_t nseg_in, int64_t keep_in, float *y) {
    uq_status st = check_call(L, x, T, nseg_out, keep_out, nseg_in, keep_in, y);
    if (st != UQ_OK) return st;
    const int64_t seg_out = L->rows / nseg_out, seg_in = L->cols / nseg_in;
    const int64_t nout = nseg_out * keep_out, nin = nseg_in * keep_in;
    const int64_t gps = L->kind == UQ_W_Q4 || L->kind == UQ_W_Q8 ? (seg_in + L->group - 1) / L->group : 0;
    for (int64_t t = 0; t < T; t++)
        for (int64_t o = 0; o < nout; o++) {
            int64_t row = (o / keep_out) * seg_out + o % keep_out;
            double acc = L->bias ? (double)L->bias[row] : 0.0;
            for (int64_t s = 0; s < nseg_in; s++)
                for (int64_t c = 0; c < keep_in; c++) {
                    int64_t col = s * seg_in + c;
                    double w;
                    if (L->kind == UQ_W_F32) {
                        w = L->w[row * L->cols + col];
                    } else if (L->kind == UQ_W_F16) {
                        float h;
                        (void)uq_convert_f16_to_f32(L->w16 + row * L->cols + col, 1, &h);
                        w = h;
                    } else if (L->kind == UQ_W_Q8) {
                        w = (double)((const int8_t *)L->packed)[row * L->cols + col] *
                            uq_h2f(L->scales[row * L->scale_cols + s * gps + c / L->group]);
                    } else if (L->layout == UQ_Q4_R16) {
                        w = (double)(uq_k_r16_code(L, row, col) - UQ_Q4_OFFSET) *
                            uq_k_r16_scale(L, row, s * gps + c / L->group);
                    } else {
                        uint8_t byte = L->packed[row * UQ_Q4_ROW_BYTES(L->cols) + col / 2];
                        int q = (col & 1) ? byte >> 4 : byte & 15;
                        w = (double)(q - UQ_Q4_OFFSET) *
                            uq_h2f(L->scales[row * L->scale_cols + s * gps + c / L->group]);
                    }
                    acc += w * x[t * nin + s * keep_in + c];
                }
            y[t * nout + o] = (float)acc;
        }
    return UQ_OK;
}

/* ------------------------------------------------------------------------ validation ---- */

uq_status uq_linear_check(const uq_linear *L, const char *name, int64_t layer, int64_t rows, int64_t cols,
                              int64_t nseg_in) {
    char where[64];
    if (layer >= 0)
        snprintf(where, sizeof where, "layer %lld %s", (long long)layer, name);
    else
        snprintf(where, sizeof where, "%s", name);
    if (L->rows != rows || L->cols != cols)
        return uq_set_error(UQ_ERR_SHAPE, "%s: weight shape (%lld, %lld), expected (%lld, %lld)", where,
                            (long long)L->rows, (long long)L->cols, (long long)rows, (long long)cols);
    if (L->kind == UQ_W_F32) {
        if (!L->w) return uq_set_error(UQ_ERR_ARG, "%s: fp32 weight pointer is NULL", where);
    } else if (L->kind == UQ_W_F16) {
        if (!L->w16) return uq_set_error(UQ_ERR_ARG, "%s: fp16 weight pointer is NULL", where);
    } else if (L->kind == UQ_W_Q4) {
        if (!L->packed || !L->scales) return uq_set_error(UQ_ERR_ARG, "%s: int4 packed/scales pointer is NULL", where);
        if (L->group < 1) return uq_set_error(UQ_ERR_ARG, "%s: int4 group %lld must be >= 1", where, (long long)L->group);
        int64_t seg = cols / nseg_in, gps = (seg + L->group - 1) / L->group;
        if (nseg_in > 1 && (seg & 1))
            return uq_set_error(UQ_ERR_SHAPE, "%s: int4 head segments must have even width, got %lld", where,
                                (long long)seg);
        if (L->scale_cols != nseg_in * gps)
            return uq_set_error(UQ_ERR_SHAPE,
                                "%s: int4 scales have %lld columns, expected %lld (%lld segment(s) of %lld columns, "
                                "group %lld: groups must not straddle heads)",
                                where, (long long)L->scale_cols, (long long)(nseg_in * gps), (long long)nseg_in,
                                (long long)seg, (long long)L->group);
        if (L->layout == UQ_Q4_R16 && (L->nseg_in != nseg_in || L->nseg_out < 1 || rows % L->nseg_out ||
                                       L->group % UQ_Q4_R16_COLS))
            return uq_set_error(UQ_ERR_SHAPE, "%s: R16 int4 layout built for segments (%lld, %lld), group %lld; the "
                                "model needs %lld input segment(s)", where, (long long)L->nseg_out,
                                (long long)L->nseg_in, (long long)L->group, (long long)nseg_in);
        if (L->layout != UQ_Q4_ROWMAJOR && L->layout != UQ_Q4_R16)
            return uq_set_error(UQ_ERR_ARG, "%s: unknown int4 layout %d", where, (int)L->layout);
    } else if (L->kind == UQ_W_Q8) {
        return uq_q8w_check(L, nseg_in, where);
    } else {
        return uq_set_error(UQ_ERR_ARG, "%s: unknown weight kind %d", where, (int)L->kind);
    }
    return UQ_OK;
}
