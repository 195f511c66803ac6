/*
 * blas.h -- internal: the BLAS / LAPACK / OpenBLAS calls the rest of the library needs, as plain C functions
 * (blas.c). Only csrc/linalg/ includes cblas.h and lapacke.h, so the numerical library is swapped or pinned in
 * one place. Matrices are row-major unless a name says "cm" (column-major); sizes are int64_t and must fit int.
 */
#ifndef UQ_BLAS_H
#define UQ_BLAS_H

#include <stdint.h>

/* C (m, n) = alpha op(A) op(B) + beta C, float64; op = transpose when ta / tb is nonzero. */
void uq_blas_dgemm(int ta, int tb, int64_t m, int64_t n, int64_t k, double alpha, const double *A, int64_t lda,
                   const double *B, int64_t ldb, double beta, double *C, int64_t ldc);
/* Lower triangle of G (n, n) += X^T X, X (k, n) with leading dimension ldx, float64. */
void uq_blas_dsyrk_lower_xtx(int64_t n, int64_t k, const double *X, int64_t ldx, double *G);
/* float32 y (R) = W (R, C) x, and y (T, R) = x (T, C) W^T (the OpenBLAS baseline of the kernel benchmarks). */
void uq_blas_sgemv(int64_t R, int64_t C, const float *W, const float *x, float *y);
void uq_blas_sgemm_xwt(int64_t T, int64_t R, int64_t C, const float *x, const float *W, float *y);
/* OpenBLAS's process-wide thread count: the current one, and setting it (n >= 1). */
int uq_blas_get_threads(void);
void uq_blas_set_threads(int n);
/* In place on a column-major n x n buffer, OpenBLAS pinned to one thread (lapack_serial.h: thread-count
 * independent results): the upper Cholesky factor (dpotrf 'U'), and the inverse of an upper triangular factor
 * (dtrtri 'U', 'N'). Return LAPACK's info (0 = success, > 0 = the order of the failing minor / zero pivot). */
int64_t uq_la_potrf_upper_cm(int64_t n, double *A);
int64_t uq_la_trtri_upper_cm(int64_t n, double *A);

#endif
