/*
 * linalg.c -- float64 dense linear algebra on row-major matrices, the only LAPACKE caller of libuniql:
 *
 *   eigh          A = V diag(w) V^T                       (dsyevd, w ascending)
 *   svd           A = U diag(S) Vt, thin                  (dgesdd, S descending)
 *   cholesky      A = L L^T                               (dpotrf)
 *   spd_inv_diag  d_i = [(A + shift I)^{-1}]_ii = ||L^{-1} e_i||^2   (dpotrf + dtrtri, no explicit inverse)
 *   sqrtm         A^{±1/2} = V diag(max(w, floor)^{±1/2}) V^T        (dsyevd + dsyrk)
 *
 * LAPACK is called in column-major order on buffers we own (no LAPACKE row-major transposition copies):
 * a row-major symmetric matrix is its own column-major image, a column-major 'L' triangle is the row-major
 * upper triangle, and the row-major thin SVD of A is read off the column-major SVD of A^T by swapping the
 * roles of U and Vt. The `_work` variants are used with integer workspace sizes computed or queried here and
 * checked against lapack_int. BLAS/LAPACK may run threads: never call these inside an OpenMP region.
 */
#include "uniql.h"

#include <cblas.h>
#include <lapacke.h>

#include "lapack_serial.h"
#include <math.h>
#include <string.h>

#define LA_INT_MAX ((int64_t)(sizeof(lapack_int) == 4 ? INT32_MAX : INT64_MAX))
#define LA_TILE 64

uq_status uq_linalg_sym_from_lower(const double *A, int64_t n, double *B) {
    if (!A || !B) return uq_set_error(UQ_ERR_ARG, "uq_linalg_sym_from_lower: %s is NULL", A ? "B" : "A");
    if (n <= 0) return uq_set_error(UQ_ERR_ARG, "uq_linalg_sym_from_lower: n must be positive, got %lld", (long long)n);
    /* tiles (I, J) with J <= I: copy lower part, write its transpose into the upper part */
    for (int64_t i0 = 0; i0 < n; i0 += LA_TILE) {
        int64_t i1 = i0 + LA_TILE < n ? i0 + LA_TILE : n;
        for (int64_t j0 = 0; j0 <= i0; j0 += LA_TILE) {
            for (int64_t i = i0; i < i1; i++) {
                int64_t j1 = j0 + LA_TILE < i + 1 ? j0 + LA_TILE : i + 1;
                for (int64_t j = j0; j < j1; j++) {
                    double v = A[i * n + j];
                    B[i * n + j] = v;
                    B[j * n + i] = v;
                }
            }
        }
    }
    return UQ_OK;
}

/* Checks pointer/size arguments shared by the square routines and that n*n fits. */
static uq_status la_check_square(const char *fn, const double *A, int64_t n) {
    if (!A) return uq_set_error(UQ_ERR_ARG, "%s: A is NULL", fn);
    if (n <= 0) return uq_set_error(UQ_ERR_ARG, "%s: n must be positive, got %lld", fn, (long long)n);
    if (n > LA_INT_MAX)
        return uq_set_error(UQ_ERR_ARG, "%s: n = %lld exceeds LAPACK's integer range", fn, (long long)n);
    size_t bytes;
    uq_status st = uq_size_mul(n, n, sizeof(double), &bytes);
    if (st != UQ_OK) return st;
    return UQ_OK;
}

static uq_status la_check_finite(const char *fn, const char *name, const double *x, int64_t count) {
    for (int64_t i = 0; i < count; i++)
        if (!isfinite(x[i]))
            return uq_set_error(UQ_ERR_NUMERIC, "%s: %s contains %s at flat index %lld", fn, name,
                                isnan(x[i]) ? "NaN" : "Inf", (long long)i);
    return UQ_OK;
}

static void la_transpose_inplace(double *A, int64_t n) {
    for (int64_t i0 = 0; i0 < n; i0 += LA_TILE)
        for (int64_t j0 = i0; j0 < n; j0 += LA_TILE) {
            int64_t i1 = i0 + LA_TILE < n ? i0 + LA_TILE : n, j1 = j0 + LA_TILE < n ? j0 + LA_TILE : n;
            for (int64_t i = i0; i < i1; i++)
                for (int64_t j = (j0 == i0 ? i + 1 : j0); j < j1; j++) {
                    double t = A[i * n + j];
                    A[i * n + j] = A[j * n + i];
                    A[j * n + i] = t;
                }
        }
}

/* Eigendecomposition of the symmetric matrix already copied (full) into V; V is overwritten by the
 * eigenvectors as columns (row-major). */
static uq_status la_eigh_inplace(const char *fn, double *V, int64_t n, double *w) {
    /* dsyevd, jobz = 'V': lwork >= 1 + 6n + 2n^2, liwork >= 3 + 5n (LAPACK documentation) */
    int64_t lwork = 1 + 6 * n + 2 * n * n, liwork = 3 + 5 * n;
    if (lwork > LA_INT_MAX)
        return uq_set_error(UQ_ERR_ARG, "%s: n = %lld needs a LAPACK workspace of %lld doubles, beyond lapack_int",
                            fn, (long long)n, (long long)lwork);
    double *work = NULL;
    lapack_int *iwork = NULL;
    uq_status st = uq_alloc((size_t)lwork * sizeof(double), (void **)&work);
    if (st == UQ_OK) st = uq_alloc((size_t)liwork * sizeof(lapack_int), (void **)&iwork);
    if (st != UQ_OK) goto exit;
    lapack_int info = uq_la_dsyevd_work(LAPACK_COL_MAJOR, 'V', 'L', (lapack_int)n, V, (lapack_int)n, w, work,
                                          (lapack_int)lwork, iwork, (lapack_int)liwork);
    if (info < 0) {
        st = uq_set_error(UQ_ERR_INTERNAL, "%s: dsyevd rejected argument %d", fn, (int)-info);
    } else if (info > 0) {
        st = uq_set_error(UQ_ERR_NUMERIC, "%s: dsyevd did not converge (info %d)", fn, (int)info);
    } else {
        la_transpose_inplace(V, n); /* column-major eigenvector columns -> row-major columns */
    }
exit:
    uq_free(work);
    uq_free(iwork);
    return st;
}

uq_status uq_linalg_eigh(const double *A, int64_t n, double *w, double *V) {
    static const char fn[] = "uq_linalg_eigh";
    uq_status st = la_check_square(fn, A, n);
    if (st != UQ_OK) return st;
    if (!w || !V) return uq_set_error(UQ_ERR_ARG, "%s: %s is NULL", fn, w ? "V" : "w");
    if ((st = la_check_finite(fn, "A", A, n * n)) != UQ_OK) return st;
    if ((st = uq_linalg_sym_from_lower(A, n, V)) != UQ_OK) return st;
    return la_eigh_inplace(fn, V, n, w);
}

uq_status uq_linalg_svd(const double *A, int64_t m, int64_t n, double *U, double *S, double *Vt) {
    static const char fn[] = "uq_linalg_svd";
    if (!A || !U || !S || !Vt)
        return uq_set_error(UQ_ERR_ARG, "%s: %s is NULL", fn, !A ? "A" : !U ? "U" : !S ? "S" : "Vt");
    if (m <= 0 || n <= 0)
        return uq_set_error(UQ_ERR_ARG, "%s: m and n must be positive, got (%lld, %lld)", fn, (long long)m, (long long)n);
    if (m > LA_INT_MAX || n > LA_INT_MAX)
        return uq_set_error(UQ_ERR_ARG, "%s: (%lld, %lld) exceeds LAPACK's integer range", fn, (long long)m, (long long)n);
    size_t bytes;
    uq_status st = uq_size_mul(m, n, sizeof(double), &bytes);
    if (st != UQ_OK) return st;
    if ((st = la_check_finite(fn, "A", A, m * n)) != UQ_OK) return st;
    int64_t k = m < n ? m : n;
    double *a = NULL, *work = NULL;
    lapack_int *iwork = NULL;
    if ((st = uq_alloc(bytes, (void **)&a)) != UQ_OK) goto exit;
    memcpy(a, A, bytes);
    if ((st = uq_alloc((size_t)(8 * k) * sizeof(lapack_int), (void **)&iwork)) != UQ_OK) goto exit;
    /* Row-major A (m,n) is column-major A^T (n,m) = U' S V'^T; then A = V' S U'^T:
     * our U (m,k) row-major = column-major V'^T (k,m) (ldvt = k); our Vt (k,n) row-major = column-major U'
     * (n,k) (ldu = n). */
    double query = 0.0;
    lapack_int info = uq_la_dgesdd_work(LAPACK_COL_MAJOR, 'S', (lapack_int)n, (lapack_int)m, a, (lapack_int)n, S,
                                          Vt, (lapack_int)n, U, (lapack_int)k, &query, -1, iwork);
    if (info != 0) {
        st = uq_set_error(UQ_ERR_INTERNAL, "%s: dgesdd workspace query failed (info %d)", fn, (int)info);
        goto exit;
    }
    double lw = ceil(query);
    if (!(lw >= 1.0) || lw > (double)LA_INT_MAX) {
        st = uq_set_error(UQ_ERR_ARG, "%s: dgesdd workspace of %.0f doubles is out of lapack_int range", fn, query);
        goto exit;
    }
    lapack_int lwork = (lapack_int)lw;
    if ((st = uq_alloc((size_t)lwork * sizeof(double), (void **)&work)) != UQ_OK) goto exit;
    info = uq_la_dgesdd_work(LAPACK_COL_MAJOR, 'S', (lapack_int)n, (lapack_int)m, a, (lapack_int)n, S, Vt,
                               (lapack_int)n, U, (lapack_int)k, work, lwork, iwork);
    if (info < 0)
        st = uq_set_error(UQ_ERR_INTERNAL, "%s: dgesdd rejected argument %d", fn, (int)-info);
    else if (info > 0)
        st = uq_set_error(UQ_ERR_NUMERIC, "%s: dgesdd did not converge (info %d)", fn, (int)info);
exit:
    uq_free(a);
    uq_free(work);
    uq_free(iwork);
    return st;
}

/* In-place Cholesky of the full symmetric matrix in B: column-major uplo 'U' computes B = U'^T U' in the
 * column-major upper triangle, which is the row-major lower triangle: it holds L = U'^T with B = L L^T. */
static uq_status la_potrf_lower(const char *fn, const char *what, double *B, int64_t n) {
    lapack_int info = uq_la_dpotrf_work(LAPACK_COL_MAJOR, 'U', (lapack_int)n, B, (lapack_int)n);
    if (info < 0) return uq_set_error(UQ_ERR_INTERNAL, "%s: dpotrf rejected argument %d", fn, (int)-info);
    if (info > 0)
        return uq_set_error(UQ_ERR_NUMERIC,
                            "%s: %s is not positive definite (leading minor of order %d is not positive)", fn, what,
                            (int)info);
    return UQ_OK;
}

uq_status uq_linalg_cholesky(const double *A, int64_t n, double *L) {
    static const char fn[] = "uq_linalg_cholesky";
    uq_status st = la_check_square(fn, A, n);
    if (st != UQ_OK) return st;
    if (!L) return uq_set_error(UQ_ERR_ARG, "%s: L is NULL", fn);
    if ((st = la_check_finite(fn, "A", A, n * n)) != UQ_OK) return st;
    if ((st = uq_linalg_sym_from_lower(A, n, L)) != UQ_OK) return st;
    if ((st = la_potrf_lower(fn, "A", L, n)) != UQ_OK) return st;
    for (int64_t i = 0; i < n; i++) memset(L + i * n + i + 1, 0, (size_t)(n - i - 1) * sizeof(double));
    return UQ_OK;
}

uq_status uq_linalg_spd_inv_diag(const double *A, int64_t n, double shift, double *d) {
    static const char fn[] = "uq_linalg_spd_inv_diag";
    uq_status st = la_check_square(fn, A, n);
    if (st != UQ_OK) return st;
    if (!d) return uq_set_error(UQ_ERR_ARG, "%s: d is NULL", fn);
    if (!isfinite(shift)) return uq_set_error(UQ_ERR_ARG, "%s: shift must be finite, got %g", fn, shift);
    if ((st = la_check_finite(fn, "A", A, n * n)) != UQ_OK) return st;
    double *B = NULL;
    if ((st = uq_alloc((size_t)n * (size_t)n * sizeof(double), (void **)&B)) != UQ_OK) return st;
    uq_linalg_sym_from_lower(A, n, B);
    for (int64_t i = 0; i < n; i++) B[i * n + i] += shift;
    /* column-major 'L': B = L L^T with L in the column-major lower triangle; dtrtri gives L^{-1} there, and
     * column i of L^{-1} (entries k >= i) is contiguous: B[i*n + k]. diag(A^{-1}) = diag(L^{-T} L^{-1}). */
    lapack_int info = uq_la_dpotrf_work(LAPACK_COL_MAJOR, 'L', (lapack_int)n, B, (lapack_int)n);
    if (info > 0) {
        st = uq_set_error(UQ_ERR_NUMERIC,
                          "%s: A + shift*I (shift %g) is not positive definite (leading minor of order %d is not "
                          "positive)", fn, shift, (int)info);
        goto exit;
    }
    if (info == 0) info = uq_la_dtrtri_work(LAPACK_COL_MAJOR, 'L', 'N', (lapack_int)n, B, (lapack_int)n);
    if (info != 0) {
        st = uq_set_error(info < 0 ? UQ_ERR_INTERNAL : UQ_ERR_NUMERIC, "%s: dtrtri failed (info %d)", fn, (int)info);
        goto exit;
    }
    for (int64_t i = 0; i < n; i++) {
        const double *col = B + i * n;
        double s = 0.0;
        for (int64_t k = i; k < n; k++) s += col[k] * col[k];
        d[i] = s;
    }
exit:
    uq_free(B);
    return st;
}

/* out = V diag(f) V^T computed as (V diag(sqrt f)) (V diag(sqrt f))^T with dsyrk, then symmetrised. */
static void la_sym_product(const double *V, const double *f, int64_t n, double *tmp, double *out) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) tmp[i * n + j] = V[i * n + j] * f[j];
    cblas_dsyrk(CblasRowMajor, CblasLower, CblasNoTrans, (int)n, (int)n, 1.0, tmp, (int)n, 0.0, out, (int)n);
    uq_linalg_sym_from_lower(out, n, out);
}

uq_status uq_linalg_sqrtm(const double *A, int64_t n, double floor, double *S, double *Sinv) {
    static const char fn[] = "uq_linalg_sqrtm";
    uq_status st = la_check_square(fn, A, n);
    if (st != UQ_OK) return st;
    if (!S && !Sinv) return uq_set_error(UQ_ERR_ARG, "%s: S and Sinv are both NULL", fn);
    if (!(floor > 0.0) || !isfinite(floor))
        return uq_set_error(UQ_ERR_ARG, "%s: floor must be finite and > 0, got %g", fn, floor);
    if ((st = la_check_finite(fn, "A", A, n * n)) != UQ_OK) return st;
    size_t nn = (size_t)n * (size_t)n;
    double *V = NULL, *tmp = NULL, *w = NULL, *f = NULL;
    if ((st = uq_alloc(nn * sizeof(double), (void **)&V)) != UQ_OK) goto exit;
    if ((st = uq_alloc(nn * sizeof(double), (void **)&tmp)) != UQ_OK) goto exit;
    if ((st = uq_alloc(2 * (size_t)n * sizeof(double), (void **)&w)) != UQ_OK) goto exit;
    f = w + n;
    uq_linalg_sym_from_lower(A, n, V);
    if ((st = la_eigh_inplace(fn, V, n, w)) != UQ_OK) goto exit;
    for (int64_t i = 0; i < n; i++) w[i] = w[i] > floor ? w[i] : floor;
    if (S) {
        for (int64_t i = 0; i < n; i++) f[i] = pow(w[i], 0.25); /* (w^{1/4})^2 = w^{1/2} */
        la_sym_product(V, f, n, tmp, S);
    }
    if (Sinv) {
        for (int64_t i = 0; i < n; i++) f[i] = pow(w[i], -0.25);
        la_sym_product(V, f, n, tmp, Sinv);
    }
exit:
    uq_free(V);
    uq_free(tmp);
    uq_free(w);
    return st;
}
