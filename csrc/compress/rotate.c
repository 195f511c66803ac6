/*
 * rotate.c -- an orthogonal rotation of the residual stream, applied offline to the weights before sorting and
 * quantization (so that int4 groups see no outlier channels of the residual stream).
 *
 *   n = p * m with p the largest power of two dividing n (hidden 576 = 64 * 9, 4096 = 4096 * 1);
 *   Q = diag(s) (H_p (x) R_m) / sqrt(p),  s_i = +-1 random, H_p the Sylvester Hadamard matrix, R_m a random
 *   orthogonal m x m matrix (Gram-Schmidt of Gaussian columns, orthogonalized twice); Q Q^T = I.
 *
 * Applying Q to a row vector v (v <- v Q) costs n (m + log2 p) flops: u = v .* s viewed as a (p, m) matrix U
 * (element (a, b) at a*m + b), then U <- H_p U R_m / sqrt(p) (R_m on every row, a fast Walsh-Hadamard
 * transform down every column). Everything runs in float64 and is rounded to float32 once.
 *
 * A network stays the same function when its residual stream x becomes x Q: every linear that reads the stream
 * (after an RMSNorm, whose scale is folded into it first: rms(x Q) = rms(x)) takes W <- W diag(g) Q, every linear
 * that writes it W <- Q^T W and b <- b Q, the embedding E <- E Q and the output head W <- W diag(g_final) Q.
 * uq_rotate does the first kind (axis 0, each row v <- (v .* scale) Q) and the second (axis 1, each column c
 * <- Q^T c, i.e. the column as a row vector times Q).
 */
#include "uniql.h"

#include <math.h>
#include <string.h>

static uint64_t rot_next(uint64_t *x) { /* splitmix64 */
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double rot_uniform(uint64_t *x) { /* (0, 1) */
    return ((double)(rot_next(x) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static double rot_gauss(uint64_t *x) { /* Box-Muller, one of the pair */
    double u = rot_uniform(x), v = rot_uniform(x);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

uq_status uq_rotation_size(int64_t n, int64_t *m) {
    if (!m) return uq_set_error(UQ_ERR_ARG, "uq_rotation_size: m is NULL");
    if (n < 1) return uq_set_error(UQ_ERR_ARG, "uq_rotation_size: n must be positive, got %lld", (long long)n);
    int64_t p = 1;
    while (n % (2 * p) == 0) p *= 2;
    *m = n / p;
    return UQ_OK;
}

uq_status uq_rotation_init(int64_t n, uint64_t seed, double *signs, double *R) {
    static const char fn[] = "uq_rotation_init";
    int64_t m = 0;
    uq_status st = uq_rotation_size(n, &m);
    if (st != UQ_OK) return st;
    if (!signs || !R) return uq_set_error(UQ_ERR_ARG, "%s: %s is NULL", fn, !signs ? "signs" : "R");
    uint64_t x = seed ^ 0x5851f42d4c957f2dULL;
    for (int64_t i = 0; i < n; i++) signs[i] = (rot_next(&x) >> 63) ? -1.0 : 1.0;
    /* R: columns q_j by Gram-Schmidt (twice) of Gaussian vectors; stored row-major R[b * m + j] */
    for (int64_t i = 0; i < m * m; i++) R[i] = rot_gauss(&x);
    for (int64_t j = 0; j < m; j++) {
        for (int pass = 0; pass < 2; pass++)
            for (int64_t k = 0; k < j; k++) {
                double d = 0.0;
                for (int64_t b = 0; b < m; b++) d += R[b * m + j] * R[b * m + k];
                for (int64_t b = 0; b < m; b++) R[b * m + j] -= d * R[b * m + k];
            }
        double nrm = 0.0;
        for (int64_t b = 0; b < m; b++) nrm += R[b * m + j] * R[b * m + j];
        nrm = sqrt(nrm);
        if (!(nrm > 1e-8)) return uq_set_error(UQ_ERR_NUMERIC, "%s: degenerate random matrix (n %lld)", fn, (long long)n);
        for (int64_t b = 0; b < m; b++) R[b * m + j] /= nrm;
    }
    if (m == 1) R[0] = 1.0; /* the signs already randomize; uq_rotate skips a 1 x 1 block */
    return UQ_OK;
}

/* v (n) <- v Q in place; t: m doubles of scratch */
static void rot_apply(double *v, int64_t n, int64_t m, const double *signs, const double *R, double *t) {
    int64_t p = n / m;
    for (int64_t i = 0; i < n; i++) v[i] *= signs[i];
    if (m > 1)
        for (int64_t a = 0; a < p; a++) { /* row a of U times R */
            double *u = v + a * m;
            for (int64_t j = 0; j < m; j++) {
                double acc = 0.0;
                for (int64_t b = 0; b < m; b++) acc += u[b] * R[b * m + j];
                t[j] = acc;
            }
            memcpy(u, t, (size_t)m * sizeof(double));
        }
    for (int64_t h = 1; h < p; h *= 2) /* H_p down each column (stride m) */
        for (int64_t a0 = 0; a0 < p; a0 += 2 * h)
            for (int64_t a = a0; a < a0 + h; a++) {
                double *x = v + a * m, *y = v + (a + h) * m;
                for (int64_t b = 0; b < m; b++) {
                    double s = x[b], d = y[b];
                    x[b] = s + d;
                    y[b] = s - d;
                }
            }
    double f = 1.0 / sqrt((double)p);
    for (int64_t i = 0; i < n; i++) v[i] *= f;
}

uq_status uq_rotate(float *W, int64_t rows, int64_t cols, int axis, const float *scale, const double *signs,
                    const double *R, int64_t n) {
    static const char fn[] = "uq_rotate";
    if (!W || !signs || !R) return uq_set_error(UQ_ERR_ARG, "%s: %s is NULL", fn, !W ? "W" : !signs ? "signs" : "R");
    if (rows < 1 || cols < 1)
        return uq_set_error(UQ_ERR_ARG, "%s: rows and cols must be positive, got (%lld, %lld)", fn, (long long)rows,
                            (long long)cols);
    if (axis != 0 && axis != 1) return uq_set_error(UQ_ERR_ARG, "%s: axis must be 0 or 1, got %d", fn, axis);
    int64_t len = axis == 0 ? cols : rows, count = axis == 0 ? rows : cols;
    if (len != n)
        return uq_set_error(UQ_ERR_SHAPE, "%s: the rotated axis has %lld entries, the rotation is of size %lld", fn,
                            (long long)len, (long long)n);
    if (scale && axis != 0) return uq_set_error(UQ_ERR_ARG, "%s: scale applies to axis 0 only", fn);
    int64_t m = 0;
    uq_status st = uq_rotation_size(n, &m);
    if (st != UQ_OK) return st;
    size_t vb;
    if ((st = uq_size_mul(rows, cols, sizeof(float), &vb)) != UQ_OK) return st;
    for (int64_t i = 0; i < rows * cols; i++)
        if (!isfinite(W[i]))
            return uq_set_error(UQ_ERR_NUMERIC, "%s: W contains %s at row %lld, column %lld", fn,
                                isnan(W[i]) ? "NaN" : "Inf", (long long)(i / cols), (long long)(i % cols));
    if (scale)
        for (int64_t i = 0; i < n; i++)
            if (!isfinite(scale[i]))
                return uq_set_error(UQ_ERR_NUMERIC, "%s: scale contains a non-finite value at %lld", fn, (long long)i);
    double *v = NULL;
    if ((st = uq_alloc((size_t)(n + m) * sizeof(double), (void **)&v)) != UQ_OK) return st;
    double *t = v + n;
    for (int64_t k = 0; k < count; k++) {
        if (axis == 0) {
            float *w = W + k * cols;
            for (int64_t i = 0; i < n; i++) v[i] = scale ? (double)w[i] * (double)scale[i] : (double)w[i];
            rot_apply(v, n, m, signs, R, t);
            for (int64_t i = 0; i < n; i++) w[i] = (float)v[i];
        } else {
            for (int64_t i = 0; i < n; i++) v[i] = (double)W[i * cols + k];
            rot_apply(v, n, m, signs, R, t);
            for (int64_t i = 0; i < n; i++) W[i * cols + k] = (float)v[i];
        }
    }
    uq_free(v);
    return UQ_OK;
}
