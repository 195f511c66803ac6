/*
 * lapack_serial.h -- internal: LAPACK calls run with OpenBLAS pinned to one thread.
 *
 * OpenBLAS's threaded LAPACK (dsyevd from n = 32, dpotrf from n = 64, dgesdd from n = 128 on these machines)
 * returns results whose last bits depend on the thread count. uniql.compress promises byte-identical artifacts
 * for the same inputs whatever the thread settings, so every LAPACK routine goes through these wrappers, which
 * set OpenBLAS to one thread for the call and restore the previous count. BLAS level 3 (dgemm, dsyrk) is
 * thread-count independent and keeps its threads. Not for concurrent use from several threads (OpenBLAS's
 * thread count is process-wide).
 */
#ifndef UQ_LAPACK_SERIAL_H
#define UQ_LAPACK_SERIAL_H

#include <cblas.h>
#include <lapacke.h>

static inline int uq_la_pin(void) {
    int old = openblas_get_num_threads();
    if (old != 1) openblas_set_num_threads(1);
    return old;
}

static inline void uq_la_unpin(int old) {
    if (old != 1) openblas_set_num_threads(old);
}

static inline lapack_int uq_la_dsyevd_work(int layout, char jobz, char uplo, lapack_int n, double *a, lapack_int lda,
                                           double *w, double *work, lapack_int lwork, lapack_int *iwork,
                                           lapack_int liwork) {
    int old = uq_la_pin();
    lapack_int r = LAPACKE_dsyevd_work(layout, jobz, uplo, n, a, lda, w, work, lwork, iwork, liwork);
    uq_la_unpin(old);
    return r;
}

static inline lapack_int uq_la_dgesdd_work(int layout, char jobz, lapack_int m, lapack_int n, double *a,
                                           lapack_int lda, double *s, double *u, lapack_int ldu, double *vt,
                                           lapack_int ldvt, double *work, lapack_int lwork, lapack_int *iwork) {
    int old = uq_la_pin();
    lapack_int r = LAPACKE_dgesdd_work(layout, jobz, m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, iwork);
    uq_la_unpin(old);
    return r;
}

static inline lapack_int uq_la_dpotrf_work(int layout, char uplo, lapack_int n, double *a, lapack_int lda) {
    int old = uq_la_pin();
    lapack_int r = LAPACKE_dpotrf_work(layout, uplo, n, a, lda);
    uq_la_unpin(old);
    return r;
}

static inline lapack_int uq_la_dtrtri_work(int layout, char uplo, char diag, lapack_int n, double *a, lapack_int lda) {
    int old = uq_la_pin();
    lapack_int r = LAPACKE_dtrtri_work(layout, uplo, diag, n, a, lda);
    uq_la_unpin(old);
    return r;
}

#endif
