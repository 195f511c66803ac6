/*
 * blas.c -- the BLAS / LAPACK / OpenBLAS calls of the library outside linalg.c (blas.h), so that only
 * csrc/linalg/ includes cblas.h and lapacke.h.
 */
#include <cblas.h>
#include <lapacke.h>

#include "blas.h"
#include "lapack_serial.h"

void uq_blas_dgemm(int ta, int tb, int64_t m, int64_t n, int64_t k, double alpha, const double *A, int64_t lda,
                   const double *B, int64_t ldb, double beta, double *C, int64_t ldc) {
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k,
                alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

void uq_blas_dsyrk_lower_xtx(int64_t n, int64_t k, const double *X, int64_t ldx, double *G) {
    cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, (int)n, (int)k, 1.0, X, (int)ldx, 1.0, G, (int)n);
}

void uq_blas_sgemv(int64_t R, int64_t C, const float *W, const float *x, float *y) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)R, (int)C, 1.0f, W, (int)C, x, 1, 0.0f, y, 1);
}

void uq_blas_sgemm_xwt(int64_t T, int64_t R, int64_t C, const float *x, const float *W, float *y) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)R, (int)C, 1.0f, x, (int)C, W, (int)C, 0.0f, y,
                (int)R);
}

int uq_blas_get_threads(void) { return openblas_get_num_threads(); }

void uq_blas_set_threads(int n) { openblas_set_num_threads(n); }

int64_t uq_la_potrf_upper_cm(int64_t n, double *A) {
    return (int64_t)uq_la_dpotrf_work(LAPACK_COL_MAJOR, 'U', (lapack_int)n, A, (lapack_int)n);
}

int64_t uq_la_trtri_upper_cm(int64_t n, double *A) {
    return (int64_t)uq_la_dtrtri_work(LAPACK_COL_MAJOR, 'U', 'N', (lapack_int)n, A, (lapack_int)n);
}
