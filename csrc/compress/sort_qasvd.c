/*
 * sort_qasvd.c -- quantization-aware (whitened) SVD of attention V/O, GQA (docs/design.md §3.2).
 *
 *   G^{1/2}, G^{-1/2}   eigenvalues of G floored at eig_floor            (uq_linalg_sqrtm)
 *   per KV group g:     G^{1/2} V_g = U S W^T                              (uq_linalg_svd, thin, S descending)
 *                       V_g' = G^{-1/2} U S      O_h' = W^T O_h            (every Q head h of group g)
 *   split-sigma:        V_g' = G^{-1/2} U S^{1/2}, O_h' = S^{1/2} W^T O_h  (ablation)
 *   joint-O:            S W^T [O_h ...] = U2 S2 [W2_h^T ...]; V_g' = G^{-1/2} U U2 S2, O_h' = W2_h^T
 *   V bias:             bo' = bo + sum_h bv_g(h) O_h (original O_h), bv' = 0
 *
 * with V_g = (v_proj rows of group g)^T (n x d) and O_h = (o_proj columns of head h)^T (d x n). Since
 * G^{-1/2} G^{1/2} = I exactly (both from the same floored eigenvalues), V_g' O_h' = V_g O_h at full rank.
 * Weights are widened to float64 one group at a time (workspace O(n^2 + heads_per_group * n * d)); the
 * matrix products are CBLAS dgemm (as compress/cov.c does); all LAPACK work goes through linalg/.
 */
#include "../linalg/blas.h"
#include "uniql.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const void *wv, *bv, *wo, *bo;
    void *wv_out, *bv_out, *wo_out, *bo_out;
    int f64; /* element type of every weight / bias array: 1 double, 0 float */
} qa_io;

static inline double qa_ld(const void *p, int f64, int64_t i) {
    return f64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}
static inline void qa_st(void *p, int f64, int64_t i, double v) {
    if (f64) ((double *)p)[i] = v;
    else ((float *)p)[i] = (float)v;
}

static uq_status qa_finite(const char *fn, const char *name, const void *p, int f64, int64_t count) {
    if (!f64) return uq_check_finite_f32((const float *)p, count, name);
    const double *x = (const double *)p;
    for (int64_t i = 0; i < count; i++)
        if (!isfinite(x[i]))
            return uq_set_error(UQ_ERR_NUMERIC, "%s: %s contains %s at flat index %lld", fn, name,
                                isnan(x[i]) ? "NaN" : "Inf", (long long)i);
    return UQ_OK;
}

static void qa_scale_rows(double *M, int64_t rows, int64_t cols, const double *f) {
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) M[i * cols + j] *= f[i];
}

static uq_status qasvd(const char *fn, const double *G, int64_t n, const qa_io *io, int64_t n_heads, int64_t n_kv,
                       int64_t d, int32_t flags, double eig_floor, double *sv) {
    if (!G || !io->wv || !io->wo || !io->wv_out || !io->wo_out)
        return uq_set_error(UQ_ERR_ARG, "%s: %s is NULL", fn,
                            !G ? "G" : !io->wv ? "wv" : !io->wo ? "wo" : !io->wv_out ? "wv_out" : "wo_out");
    if ((io->bv || io->bo) && !io->bo_out)
        return uq_set_error(UQ_ERR_ARG, "%s: bo_out is NULL but a %s bias is given (the V bias folds into o_proj's)",
                            fn, io->bv ? "v" : "o");
    if (n < 1 || n_heads < 1 || n_kv < 1 || d < 1)
        return uq_set_error(UQ_ERR_ARG, "%s: n, n_heads, n_kv and d must be >= 1, got %lld, %lld, %lld, %lld", fn,
                            (long long)n, (long long)n_heads, (long long)n_kv, (long long)d);
    if (n_heads % n_kv != 0)
        return uq_set_error(UQ_ERR_SHAPE, "%s: n_heads (%lld) must be a multiple of n_kv (%lld)", fn,
                            (long long)n_heads, (long long)n_kv);
    if (d > n)
        return uq_set_error(UQ_ERR_UNSUPPORTED, "%s: head dim d = %lld larger than the hidden size n = %lld", fn,
                            (long long)d, (long long)n);
    if (flags & ~(UQ_QASVD_SPLIT_SIGMA | UQ_QASVD_JOINT_O))
        return uq_set_error(UQ_ERR_ARG, "%s: unknown flags 0x%x", fn, (unsigned)flags);
    if (!(eig_floor > 0.0) || !isfinite(eig_floor))
        return uq_set_error(UQ_ERR_ARG, "%s: eig_floor must be finite and > 0, got %g", fn, eig_floor);
    const int64_t hpg = n_heads / n_kv, nv = n_kv * d, no = n_heads * d;
    if (n > INT32_MAX || hpg * n > INT32_MAX)
        return uq_set_error(UQ_ERR_ARG, "%s: sizes exceed the BLAS integer range", fn);
    size_t bytes;
    uq_status st = uq_size_mul(n, n, 2 * sizeof(double), &bytes);
    if (st == UQ_OK) st = uq_size_mul(n, no, sizeof(double), &bytes);
    if (st == UQ_OK) st = uq_size_mul(n, nv, sizeof(double), &bytes);
    if (st != UQ_OK) return st;
    const int f64 = io->f64;
    if ((st = qa_finite(fn, "wv", io->wv, f64, nv * n)) != UQ_OK) return st;
    if ((st = qa_finite(fn, "wo", io->wo, f64, n * no)) != UQ_OK) return st;
    if (io->bv && (st = qa_finite(fn, "bv", io->bv, f64, nv)) != UQ_OK) return st;
    if (io->bo && (st = qa_finite(fn, "bo", io->bo, f64, n)) != UQ_OK) return st;

    const int split = (flags & UQ_QASVD_SPLIT_SIGMA) != 0, joint = (flags & UQ_QASVD_JOINT_O) != 0;
    const int64_t wide = hpg * n; /* columns of the concatenated [O_h ...] of a group */
    double *Gh = NULL, *Gih = NULL, *Vt = NULL, *A = NULL, *U = NULL, *S = NULL, *Wt = NULL, *Ocat = NULL,
           *T = NULL, *U2 = NULL, *S2 = NULL, *W2t = NULL, *Ueff = NULL, *P = NULL, *bacc = NULL, *f = NULL;
#define QA_ALLOC(ptr, count)                                                                             \
    if ((st = uq_alloc((size_t)(count) * sizeof(double), (void **)&(ptr))) != UQ_OK) goto exit
    QA_ALLOC(Gh, n * n);
    QA_ALLOC(Gih, n * n);
    QA_ALLOC(Vt, d * n);
    QA_ALLOC(A, n * d);
    QA_ALLOC(U, n * d);
    QA_ALLOC(S, d);
    QA_ALLOC(Wt, d * d);
    QA_ALLOC(Ocat, d * wide);
    QA_ALLOC(T, d * wide);
    QA_ALLOC(P, d * n);
    QA_ALLOC(bacc, n);
    QA_ALLOC(f, d);
    if (joint) {
        QA_ALLOC(U2, d * d);
        QA_ALLOC(S2, d);
        QA_ALLOC(W2t, d * wide);
        QA_ALLOC(Ueff, n * d);
    }
#undef QA_ALLOC

    if ((st = uq_linalg_sqrtm(G, n, eig_floor, Gh, Gih)) != UQ_OK) {
        char detail[512]; /* copied: the message buffer is reused */
        snprintf(detail, sizeof detail, "%s", uq_last_error());
        uq_set_error(st, "%s: G (second moment of the attention input): %s", fn, detail);
        goto exit;
    }
    for (int64_t j = 0; j < n; j++) bacc[j] = io->bo ? qa_ld(io->bo, f64, j) : 0.0;

    for (int64_t g = 0; g < n_kv; g++) {
        /* Vt = V_g^T (d x n): rows g*d.. of v_proj; Ocat[k][hh*n + j] = O_h[k][j] = wo[j][h*d + k] */
        for (int64_t i = 0; i < d * n; i++) Vt[i] = qa_ld(io->wv, f64, g * d * n + i);
        for (int64_t hh = 0; hh < hpg; hh++) {
            int64_t h = g * hpg + hh;
            for (int64_t j = 0; j < n; j++)
                for (int64_t k = 0; k < d; k++) Ocat[k * wide + hh * n + j] = qa_ld(io->wo, f64, j * no + h * d + k);
        }
        if (io->bv) /* bias fold with the ORIGINAL O_h: bacc += sum_h bv_g O_h */
            for (int64_t k = 0; k < d; k++) {
                double b = qa_ld(io->bv, f64, g * d + k);
                if (b == 0.0) continue;
                for (int64_t hh = 0; hh < hpg; hh++) {
                    const double *row = Ocat + k * wide + hh * n;
                    for (int64_t j = 0; j < n; j++) bacc[j] += b * row[j];
                }
            }
        /* A = G^{1/2} V_g (n x d) = Gh Vt^T ; A = U S Wt */
        uq_blas_dgemm(0, 1, n, d, n, 1.0, Gh, n, Vt, n, 0.0, A, d);
        if ((st = uq_linalg_svd(A, n, d, U, S, Wt)) != UQ_OK) goto exit;
        /* T = Wt [O_h ...] (d x wide) */
        uq_blas_dgemm(0, 0, d, wide, d, 1.0, Wt, d, Ocat, wide, 0.0, T, wide);
        const double *sig = S, *Ue = U;
        double *On = T;
        if (joint) { /* S T = U2 S2 W2t ; U_eff = U U2 */
            qa_scale_rows(T, d, wide, S);
            if ((st = uq_linalg_svd(T, d, wide, U2, S2, W2t)) != UQ_OK) goto exit;
            uq_blas_dgemm(0, 0, n, d, d, 1.0, U, d, U2, d, 0.0, Ueff, d);
            sig = S2;
            Ue = Ueff;
            On = W2t;
        }
        for (int64_t k = 0; k < d; k++) f[k] = split ? sqrt(sig[k]) : sig[k];
        if (split) qa_scale_rows(On, d, wide, f);
        /* P = f Ue^T G^{-1/2} (d x n) = (V_g')^T : the new v_proj rows of group g */
        uq_blas_dgemm(1, 0, d, n, n, 1.0, Ue, d, Gih, n, 0.0, P, n);
        qa_scale_rows(P, d, n, f);
        if (sv) memcpy(sv + g * d, sig, (size_t)d * sizeof(double));
        for (int64_t i = 0; i < d * n; i++) qa_st(io->wv_out, f64, g * d * n + i, P[i]);
        for (int64_t hh = 0; hh < hpg; hh++) {
            int64_t h = g * hpg + hh;
            for (int64_t j = 0; j < n; j++)
                for (int64_t k = 0; k < d; k++) qa_st(io->wo_out, f64, j * no + h * d + k, On[k * wide + hh * n + j]);
        }
    }
    if (io->bo_out)
        for (int64_t j = 0; j < n; j++) qa_st(io->bo_out, f64, j, bacc[j]);
    if (io->bv_out)
        for (int64_t i = 0; i < nv; i++) qa_st(io->bv_out, f64, i, 0.0);
exit:
    uq_free(Gh);
    uq_free(Gih);
    uq_free(Vt);
    uq_free(A);
    uq_free(U);
    uq_free(S);
    uq_free(Wt);
    uq_free(Ocat);
    uq_free(T);
    uq_free(U2);
    uq_free(S2);
    uq_free(W2t);
    uq_free(Ueff);
    uq_free(P);
    uq_free(bacc);
    uq_free(f);
    return st;
}

uq_status uq_qasvd_vo_f32(const double *G, int64_t n, const float *wv, const float *bv, const float *wo,
                          const float *bo, int64_t n_heads, int64_t n_kv, int64_t d, int32_t flags,
                          double eig_floor, float *wv_out, float *bv_out, float *wo_out, float *bo_out,
                          double *sv) {
    qa_io io = {wv, bv, wo, bo, wv_out, bv_out, wo_out, bo_out, 0};
    return qasvd("uq_qasvd_vo_f32", G, n, &io, n_heads, n_kv, d, flags, eig_floor, sv);
}

uq_status uq_qasvd_vo_f64(const double *G, int64_t n, const double *wv, const double *bv, const double *wo,
                          const double *bo, int64_t n_heads, int64_t n_kv, int64_t d, int32_t flags,
                          double eig_floor, double *wv_out, double *bv_out, double *wo_out, double *bo_out,
                          double *sv) {
    qa_io io = {wv, bv, wo, bo, wv_out, bv_out, wo_out, bo_out, 1};
    return qasvd("uq_qasvd_vo_f64", G, n, &io, n_heads, n_kv, d, flags, eig_floor, sv);
}
