/*
 * cov.c -- second-moment statistics of layer inputs: G += X^T X (float64 accumulation).
 *
 *   G[i][j] += sum_t X[t][i] * X[t][j]      X: (T, n) tokens x features, G: (n, n) symmetric
 *
 * The update of the lower triangle is one dsyrk (uq_blas_dsyrk_lower_xtx) per chunk (float64 throughout: a float32 X is widened
 * UQ_COV_CHUNK_ROWS rows at a time into an internal buffer of bounded size), after which the lower triangle
 * is mirrored onto the upper one, so that the caller always holds the full symmetric matrix. Normalisation
 * (per token, per sequence) is the caller's bookkeeping. X is checked for NaN/Inf before G is touched.
 */
#include "../linalg/blas.h"
#include "uniql.h"

#include <math.h>
#include <string.h>

static uq_status cov_check_args(const void *G, int64_t n, const void *X, int64_t T, int64_t ldx) {
    if (!G) return uq_set_error(UQ_ERR_ARG, "uq_cov_accumulate: G is NULL");
    if (n <= 0) return uq_set_error(UQ_ERR_ARG, "uq_cov_accumulate: n must be positive, got %lld", (long long)n);
    if (T < 0) return uq_set_error(UQ_ERR_ARG, "uq_cov_accumulate: T must be >= 0, got %lld", (long long)T);
    if (ldx < n)
        return uq_set_error(UQ_ERR_ARG, "uq_cov_accumulate: ldx (%lld) must be >= n (%lld)", (long long)ldx,
                            (long long)n);
    if (T > 0 && !X) return uq_set_error(UQ_ERR_ARG, "uq_cov_accumulate: X is NULL");
    if (n > INT32_MAX || T > INT32_MAX || ldx > INT32_MAX)
        return uq_set_error(UQ_ERR_ARG, "uq_cov_accumulate: sizes exceed the BLAS integer range (n=%lld, T=%lld)",
                            (long long)n, (long long)T);
    size_t bytes;
    return uq_size_mul(n, n, sizeof(double), &bytes);
}

#define COV_CHECK_ROWS(TYPE)                                                                             \
    for (int64_t t = 0; t < T; t++) {                                                                  \
        const TYPE *row = X + t * ldx;                                                                 \
        for (int64_t j = 0; j < n; j++)                                                                \
            if (!isfinite(row[j]))                                                                     \
                return uq_set_error(UQ_ERR_NUMERIC, "uq_cov_accumulate: X contains %s at row %lld, column %lld", \
                                    isnan(row[j]) ? "NaN" : "Inf", (long long)t, (long long)j);        \
    }

uq_status uq_cov_accumulate_f64(double *G, int64_t n, const double *X, int64_t T, int64_t ldx) {
    uq_status st = cov_check_args(G, n, X, T, ldx);
    if (st != UQ_OK || T == 0) return st;
    COV_CHECK_ROWS(double)
    uq_blas_dsyrk_lower_xtx(n, T, X, ldx, G);
    return uq_linalg_sym_from_lower(G, n, G);
}

uq_status uq_cov_accumulate_f32(double *G, int64_t n, const float *X, int64_t T, int64_t ldx) {
    uq_status st = cov_check_args(G, n, X, T, ldx);
    if (st != UQ_OK || T == 0) return st;
    COV_CHECK_ROWS(float)
    int64_t chunk = T < UQ_COV_CHUNK_ROWS ? T : UQ_COV_CHUNK_ROWS;
    size_t bytes;
    if ((st = uq_size_mul(chunk, n, sizeof(double), &bytes)) != UQ_OK) return st;
    double *buf;
    if ((st = uq_alloc(bytes, (void **)&buf)) != UQ_OK) return st;
    for (int64_t t0 = 0; t0 < T; t0 += chunk) {
        int64_t rows = T - t0 < chunk ? T - t0 : chunk;
        for (int64_t t = 0; t < rows; t++) {
            const float *src = X + (t0 + t) * ldx;
            double *dst = buf + t * n;
            for (int64_t j = 0; j < n; j++) dst[j] = (double)src[j];
        }
        uq_blas_dsyrk_lower_xtx(n, rows, buf, n, G);
    }
    uq_free(buf);
    return uq_linalg_sym_from_lower(G, n, G);
}

uq_status uq_cov_merge(double *dst, const double *src, int64_t n) {
    if (!dst || !src) return uq_set_error(UQ_ERR_ARG, "uq_cov_merge: %s is NULL", dst ? "src" : "dst");
    if (n <= 0) return uq_set_error(UQ_ERR_ARG, "uq_cov_merge: n must be positive, got %lld", (long long)n);
    size_t bytes;
    uq_status st = uq_size_mul(n, n, sizeof(double), &bytes);
    if (st != UQ_OK) return st;
    size_t count = bytes / sizeof(double);
    for (size_t i = 0; i < count; i++) dst[i] += src[i];
    return UQ_OK;
}
