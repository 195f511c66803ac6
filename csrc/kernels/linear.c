/*
 * linear.c -- y = x W_sel^T + b_sel for fp32 and int4 weights with row/column segment selection.
 *
 * Output element o of a token: stored row R(o) = (o / keep_out) * seg_out + o % keep_out,
 *   y[t][o] = sum_{s < nseg_in} dot(W[R(o)][s*seg_in : s*seg_in + keep_in], x[t][s*keep_in : (s+1)*keep_in])
 *             (+ b[R(o)]),
 * the segment sums added in order starting from 0. fp32: dot = uq_k_dot. int4: per group of a segment,
 * the codes (q - 8) are unpacked into floats (chunks of at most 256) and dotted with uq_k_dot, chunk dots
 * are summed into a group dot which is multiplied once by the group's scale and added to the total.
 * Each element's operation sequence depends only on its own row and token: OpenMP over output rows keeps
 * results bit-identical at any thread count, T, keep of other rows, or stored size beyond the prefix.
 */
#include <string.h>

#include "kernels.h"

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
    } else {
        return uq_set_error(UQ_ERR_ARG, "linear: unknown weight kind %d", (int)L->kind);
    }
    return UQ_OK;
}

static void linear_f32(const uq_linear *L, const float *x, int64_t T, int64_t nseg_out, int64_t keep_out,
                       int64_t nseg_in, int64_t keep_in, float *y) {
    const int64_t seg_out = L->rows / nseg_out, seg_in = L->cols / nseg_in, cols = L->cols;
    const int64_t nout = nseg_out * keep_out, nin = nseg_in * keep_in, nblk = (nout + 3) / 4;
    const float *W = L->w, *b = L->bias;
#pragma omp parallel for schedule(static) if (nout * nin * T >= UQ_PAR_MIN_WORK)
    for (int64_t blk = 0; blk < nblk; blk++) {
        int64_t o0 = blk * 4, nr = nout - o0 < 4 ? nout - o0 : 4;
        const float *w[4];
        int64_t row[4];
        for (int i = 0; i < 4; i++) {
            int64_t o = o0 + (i < nr ? i : nr - 1); /* a short block repeats its last row (result discarded) */
            row[i] = (o / keep_out) * seg_out + o % keep_out;
            w[i] = W + row[i] * cols;
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
                      int64_t nseg_in, int64_t keep_in, float *y) {
    const int64_t seg_out = L->rows / nseg_out, seg_in = L->cols / nseg_in, g = L->group;
    const int64_t gps = (seg_in + g - 1) / g, rowbytes = UQ_Q4_ROW_BYTES(L->cols);
    const int64_t nout = nseg_out * keep_out, nin = nseg_in * keep_in;
    const float *b = L->bias;
#pragma omp parallel for schedule(static) if (nout * nin * T >= UQ_PAR_MIN_WORK)
    for (int64_t o = 0; o < nout; o++) {
        float buf[UQ_Q4_CHUNK];
        int64_t row = (o / keep_out) * seg_out + o % keep_out;
        const uint8_t *prow = L->packed + row * rowbytes;
        const float *srow = L->scales + row * L->scale_cols;
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
                    float sc = srow[s * gps + g0 / g];
                    for (int i = 0; i < 4; i++) tot[i] += gacc[i] * sc;
                }
            }
            for (int i = 0; i < nt; i++) y[(t0 + i) * nout + o] = b ? tot[i] + b[row] : tot[i];
        }
    }
}

uq_status uq_linear_forward(const uq_linear *L, const float *x, int64_t T, int64_t nseg_out, int64_t keep_out,
                            int64_t nseg_in, int64_t keep_in, float *y) {
    uq_status st = check_call(L, x, T, nseg_out, keep_out, nseg_in, keep_in, y);
    if (st != UQ_OK) return st;
    if (L->kind == UQ_W_F32)
        linear_f32(L, x, T, nseg_out, keep_out, nseg_in, keep_in, y);
    else
        linear_q4(L, x, T, nseg_out, keep_out, nseg_in, keep_in, y);
    return UQ_OK;
}

uq_status uq_linear_forward_ref(const uq_linear *L, const float *x, int64_t T, int64_t nseg_out,
                                int64_t keep_out, int64_t nseg_in, int64_t keep_in, float *y) {
    uq_status st = check_call(L, x, T, nseg_out, keep_out, nseg_in, keep_in, y);
    if (st != UQ_OK) return st;
    const int64_t seg_out = L->rows / nseg_out, seg_in = L->cols / nseg_in;
    const int64_t nout = nseg_out * keep_out, nin = nseg_in * keep_in;
    const int64_t gps = L->kind == UQ_W_Q4 ? (seg_in + L->group - 1) / L->group : 0;
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
                    } else {
                        uint8_t byte = L->packed[row * UQ_Q4_ROW_BYTES(L->cols) + col / 2];
                        int q = (col & 1) ? byte >> 4 : byte & 15;
                        w = (double)(q - UQ_Q4_OFFSET) * L->scales[row * L->scale_cols + s * gps + c / L->group];
                    }
                    acc += w * x[t * nin + s * keep_in + c];
                }
            y[t * nout + o] = (float)acc;
        }
    return UQ_OK;
}
