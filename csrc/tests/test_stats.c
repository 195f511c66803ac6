/* test_stats.c -- C tests of second-moment accumulation (compress/cov.c) and float64 linear algebra
 * (linalg/linalg.c): statuses and messages, leading dimensions, hand-computed values and residuals. */
#include "test.h"

#define TOL_EXACT 1e-12 /* hand-computed results of tiny problems */
#define TOL_RESID 1e-10 /* relative residuals of small random problems (n <= 12) */

static double max_abs_diff(const double *a, const double *b, int64_t n) {
    double m = 0.0;
    for (int64_t i = 0; i < n; i++) m = fabs(a[i] - b[i]) > m ? fabs(a[i] - b[i]) : m;
    return m;
}

/* G += X^T X for T tokens with row stride ldx, f32 and f64 paths vs a naive triple loop. */
static void test_cov(void) {
    enum { N = 5, T = 600, LDX = 7 }; /* T > UQ_COV_CHUNK_ROWS: several float32 chunks */
    static float X32[T * LDX];
    static double X64[T * LDX];
    double G32[N * N] = {0}, G64[N * N] = {0}, ref[N * N] = {0};
    unsigned long long s = 42;
    for (int i = 0; i < T * LDX; i++) {
        X32[i] = (float)uq_test_rand(&s);
        X64[i] = (double)X32[i];
    }
    for (int t = 0; t < T; t++)
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) ref[i * N + j] += X64[t * LDX + i] * X64[t * LDX + j];
    CHECK_STATUS(uq_cov_accumulate_f32(G32, N, X32, T, LDX), UQ_OK);
    CHECK_STATUS(uq_cov_accumulate_f64(G64, N, X64, T, LDX), UQ_OK);
    CHECK(max_abs_diff(G32, ref, N * N) < 1e-10, "f32 cov differs from naive: %g", max_abs_diff(G32, ref, N * N));
    CHECK(max_abs_diff(G64, ref, N * N) < 1e-10, "f64 cov differs from naive: %g", max_abs_diff(G64, ref, N * N));
    CHECK(G64[1 * N + 3] == G64[3 * N + 1], "cov not exactly symmetric");

    /* accumulate in two calls == one call; T = 0 is a no-op */
    double G2[N * N] = {0};
    CHECK_STATUS(uq_cov_accumulate_f64(G2, N, X64, 100, LDX), UQ_OK);
    CHECK_STATUS(uq_cov_accumulate_f64(G2, N, X64 + 100 * LDX, T - 100, LDX), UQ_OK);
    CHECK_STATUS(uq_cov_accumulate_f64(G2, N, NULL, 0, LDX), UQ_OK);
    CHECK(max_abs_diff(G2, ref, N * N) < 1e-10, "split accumulation differs: %g", max_abs_diff(G2, ref, N * N));

    /* hand-computed: X = [[1, 2], [3, -1]] -> X^T X = [[10, -1], [-1, 5]] */
    const double x[4] = {1, 2, 3, -1};
    double g[4] = {0};
    CHECK_STATUS(uq_cov_accumulate_f64(g, 2, x, 2, 2), UQ_OK);
    CHECK(g[0] == 10 && g[1] == -1 && g[2] == -1 && g[3] == 5, "G = [%g %g; %g %g]", g[0], g[1], g[2], g[3]);

    /* merge */
    double m[4] = {1, 1, 1, 1};
    CHECK_STATUS(uq_cov_merge(m, g, 2), UQ_OK);
    CHECK(m[0] == 11 && m[1] == 0 && m[3] == 6, "merge gave [%g %g; %g %g]", m[0], m[1], m[2], m[3]);

    /* bad inputs: G is left unchanged on NaN */
    double before[N * N];
    memcpy(before, G64, sizeof before);
    X64[3 * LDX + 2] = NAN;
    CHECK_STATUS(uq_cov_accumulate_f64(G64, N, X64, T, LDX), UQ_ERR_NUMERIC);
    CHECK(strstr(uq_last_error(), "row 3, column 2") != NULL, "message does not locate the NaN: %s", uq_last_error());
    CHECK(memcmp(before, G64, sizeof before) == 0, "G modified by a failing call");
    X32[5 * LDX + 1] = INFINITY;
    CHECK_STATUS(uq_cov_accumulate_f32(G32, N, X32, T, LDX), UQ_ERR_NUMERIC);
    /* padding beyond n in each row is never read (NaN placed there above at column 2 < N, so use column 6) */
    X64[3 * LDX + 2] = 0.5;
    X64[4 * LDX + 6] = NAN;
    CHECK_STATUS(uq_cov_accumulate_f64(G64, N, X64, T, LDX), UQ_OK);
    CHECK_STATUS(uq_cov_accumulate_f64(G64, N, X64, T, N - 1), UQ_ERR_ARG);
    CHECK(strstr(uq_last_error(), "ldx") != NULL, "message does not name ldx: %s", uq_last_error());
    CHECK_STATUS(uq_cov_accumulate_f64(G64, 0, X64, T, LDX), UQ_ERR_ARG);
    CHECK_STATUS(uq_cov_accumulate_f64(NULL, N, X64, T, LDX), UQ_ERR_ARG);
    CHECK_STATUS(uq_cov_accumulate_f32(G32, N, NULL, 3, LDX), UQ_ERR_ARG);
    CHECK_STATUS(uq_cov_accumulate_f32(G32, N, X32, -1, LDX), UQ_ERR_ARG);
    CHECK_STATUS(uq_cov_merge(NULL, g, 2), UQ_ERR_ARG);
}

static void random_spd(double *A, int n, unsigned long long *s) {
    double B[144];
    for (int i = 0; i < n * n; i++) B[i] = uq_test_rand(s);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double acc = i == j ? 0.5 : 0.0;
            for (int k = 0; k < n; k++) acc += B[i * n + k] * B[j * n + k];
            A[i * n + j] = acc;
        }
}

static void test_eigh(void) {
    double A[4] = {2, 1, 1, 2}, w[2], V[4];
    CHECK_STATUS(uq_linalg_eigh(A, 2, w, V), UQ_OK);
    CHECK(fabs(w[0] - 1) < TOL_EXACT && fabs(w[1] - 3) < TOL_EXACT, "eigenvalues %g %g, want 1 3", w[0], w[1]);
    /* eigenvector of 3 is (1,1)/sqrt2 up to sign: column 1 */
    CHECK(fabs(fabs(V[1]) - sqrt(0.5)) < TOL_EXACT && fabs(V[1] - V[3]) < TOL_EXACT, "V column 1 = (%g, %g)", V[1], V[3]);

    enum { N = 9 };
    unsigned long long s = 7;
    double M[N * N], W[N], E[N * N];
    random_spd(M, N, &s);
    for (int i = 0; i < N; i++) M[i * N + i] -= 3.0; /* indefinite */
    CHECK_STATUS(uq_linalg_eigh(M, N, W, E), UQ_OK);
    double res = 0, orth = 0, norm = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double av = 0, vv = 0;
            for (int k = 0; k < N; k++) {
                av += M[i * N + k] * E[k * N + j];
                vv += E[k * N + i] * E[k * N + j];
            }
            res = fmax(res, fabs(av - E[i * N + j] * W[j]));
            orth = fmax(orth, fabs(vv - (i == j)));
            norm = fmax(norm, fabs(M[i * N + j]));
        }
    CHECK(res / norm < TOL_RESID, "eigh residual %g", res / norm);
    CHECK(orth < TOL_RESID, "eigh orthogonality %g", orth);
    for (int i = 1; i < N; i++) CHECK(W[i - 1] <= W[i], "eigenvalues not ascending at %d", i);

    /* only the lower triangle is read: garbage above the diagonal changes nothing */
    double Mg[N * N], W2[N], E2[N * N];
    memcpy(Mg, M, sizeof Mg);
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++) Mg[i * N + j] = 1e3;
    CHECK_STATUS(uq_linalg_eigh(Mg, N, W2, E2), UQ_OK);
    CHECK(max_abs_diff(W, W2, N) < TOL_RESID, "upper triangle was read");

    CHECK_STATUS(uq_linalg_eigh(A, 0, w, V), UQ_ERR_ARG);
    CHECK_STATUS(uq_linalg_eigh(A, 2, NULL, V), UQ_ERR_ARG);
    A[2] = NAN;
    CHECK_STATUS(uq_linalg_eigh(A, 2, w, V), UQ_ERR_NUMERIC);
    CHECK(strstr(uq_last_error(), "NaN") != NULL, "message does not say NaN: %s", uq_last_error());
}

static void check_svd(int m, int n, unsigned long long *s) {
    double A[12 * 12], U[144], S[12], Vt[144];
    int k = m < n ? m : n;
    for (int i = 0; i < m * n; i++) A[i] = uq_test_rand(s);
    CHECK_STATUS(uq_linalg_svd(A, m, n, U, S, Vt), UQ_OK);
    double res = 0, ou = 0, ov = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double acc = 0;
            for (int l = 0; l < k; l++) acc += U[i * k + l] * S[l] * Vt[l * n + j];
            res = fmax(res, fabs(acc - A[i * n + j]));
        }
    for (int a = 0; a < k; a++)
        for (int b = 0; b < k; b++) {
            double uu = 0, vv = 0;
            for (int i = 0; i < m; i++) uu += U[i * k + a] * U[i * k + b];
            for (int j = 0; j < n; j++) vv += Vt[a * n + j] * Vt[b * n + j];
            ou = fmax(ou, fabs(uu - (a == b)));
            ov = fmax(ov, fabs(vv - (a == b)));
        }
    CHECK(res < TOL_RESID && ou < TOL_RESID && ov < TOL_RESID, "svd %dx%d: residual %g, U^TU %g, VV^T %g", m, n, res,
          ou, ov);
    for (int l = 1; l < k; l++) CHECK(S[l - 1] >= S[l] && S[l] >= 0, "svd %dx%d: S not descending", m, n);
}

static void test_svd(void) {
    unsigned long long s = 11;
    check_svd(7, 4, &s);
    check_svd(4, 7, &s);
    check_svd(1, 5, &s);
    check_svd(6, 1, &s);
    check_svd(5, 5, &s);
    /* hand-computed: diag(3, -2) -> S = (3, 2) */
    double A[4] = {3, 0, 0, -2}, U[4], S[2], Vt[4];
    CHECK_STATUS(uq_linalg_svd(A, 2, 2, U, S, Vt), UQ_OK);
    CHECK(fabs(S[0] - 3) < TOL_EXACT && fabs(S[1] - 2) < TOL_EXACT, "S = %g %g", S[0], S[1]);
    CHECK_STATUS(uq_linalg_svd(A, 2, 0, U, S, Vt), UQ_ERR_ARG);
    CHECK_STATUS(uq_linalg_svd(A, 2, 2, U, NULL, Vt), UQ_ERR_ARG);
    A[1] = INFINITY;
    CHECK_STATUS(uq_linalg_svd(A, 2, 2, U, S, Vt), UQ_ERR_NUMERIC);
}

static void test_cholesky(void) {
    double A[4] = {4, 2, 2, 3}, L[4];
    CHECK_STATUS(uq_linalg_cholesky(A, 2, L), UQ_OK);
    CHECK(fabs(L[0] - 2) < TOL_EXACT && L[1] == 0 && fabs(L[2] - 1) < TOL_EXACT && fabs(L[3] - sqrt(2)) < TOL_EXACT,
          "L = [%g %g; %g %g]", L[0], L[1], L[2], L[3]);
    double d[2];
    CHECK_STATUS(uq_linalg_spd_inv_diag(A, 2, 0.0, d), UQ_OK); /* inv = [[3,-2],[-2,4]]/8 */
    CHECK(fabs(d[0] - 0.375) < TOL_EXACT && fabs(d[1] - 0.5) < TOL_EXACT, "diag inv = %g %g", d[0], d[1]);
    CHECK_STATUS(uq_linalg_spd_inv_diag(A, 2, 1.0, d), UQ_OK); /* [[5,2],[2,4]]^-1 = [[4,-2],[-2,5]]/16 */
    CHECK(fabs(d[0] - 0.25) < TOL_EXACT && fabs(d[1] - 0.3125) < TOL_EXACT, "diag inv shift 1 = %g %g", d[0], d[1]);

    /* random SPD: diag of inverse vs solving A x = e_i with the Cholesky factor */
    enum { N = 12 };
    unsigned long long s = 5;
    double M[N * N], Lm[N * N], dm[N];
    random_spd(M, N, &s);
    CHECK_STATUS(uq_linalg_cholesky(M, N, Lm), UQ_OK);
    double res = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0;
            for (int k = 0; k < N; k++) acc += Lm[i * N + k] * Lm[j * N + k];
            res = fmax(res, fabs(acc - M[i * N + j]));
        }
    CHECK(res < TOL_RESID, "cholesky residual %g", res);
    CHECK_STATUS(uq_linalg_spd_inv_diag(M, N, 0.0, dm), UQ_OK);
    for (int i = 0; i < N; i++) { /* forward/back substitution for column i of A^{-1} */
        double y[N], x[N];
        for (int r = 0; r < N; r++) {
            double acc = (r == i);
            for (int k = 0; k < r; k++) acc -= Lm[r * N + k] * y[k];
            y[r] = acc / Lm[r * N + r];
        }
        for (int r = N - 1; r >= 0; r--) {
            double acc = y[r];
            for (int k = r + 1; k < N; k++) acc -= Lm[k * N + r] * x[k];
            x[r] = acc / Lm[r * N + r];
        }
        CHECK(fabs(x[i] - dm[i]) < TOL_RESID * fabs(x[i]), "diag inv %d: %g vs %g", i, dm[i], x[i]);
    }

    /* not SPD: [[1,2],[2,1]] fails at the 2nd leading minor; shift -5 makes A not SPD at the 1st */
    double B[4] = {1, 2, 2, 1};
    CHECK_STATUS(uq_linalg_cholesky(B, 2, L), UQ_ERR_NUMERIC);
    CHECK(strstr(uq_last_error(), "minor of order 2") != NULL, "message does not name the minor: %s", uq_last_error());
    CHECK_STATUS(uq_linalg_spd_inv_diag(A, 2, -5.0, d), UQ_ERR_NUMERIC);
    CHECK(strstr(uq_last_error(), "order 1") != NULL, "message does not name the minor: %s", uq_last_error());
    CHECK_STATUS(uq_linalg_spd_inv_diag(A, 2, NAN, d), UQ_ERR_ARG);
    CHECK_STATUS(uq_linalg_cholesky(A, -1, L), UQ_ERR_ARG);
    /* aliasing L = A is allowed */
    double C[4] = {4, 2, 2, 3};
    CHECK_STATUS(uq_linalg_cholesky(C, 2, C), UQ_OK);
    CHECK(fabs(C[3] - sqrt(2)) < TOL_EXACT && C[1] == 0, "in-place cholesky");
}

static void test_sqrtm(void) {
    double A[4] = {4, 0, 0, 9}, S[4], Si[4];
    CHECK_STATUS(uq_linalg_sqrtm(A, 2, 1e-6, S, Si), UQ_OK);
    CHECK(fabs(S[0] - 2) < TOL_EXACT && fabs(S[3] - 3) < TOL_EXACT && fabs(S[1]) < TOL_EXACT, "sqrt diag(4,9)");
    CHECK(fabs(Si[0] - 0.5) < TOL_EXACT && fabs(Si[3] - 1.0 / 3) < TOL_EXACT, "inverse sqrt diag(4,9)");
    double Z[4] = {0, 0, 0, 4};
    CHECK_STATUS(uq_linalg_sqrtm(Z, 2, 1e-6, S, NULL), UQ_OK); /* floor: sqrt(1e-6) = 1e-3 */
    CHECK(fabs(S[0] - 1e-3) < TOL_EXACT && fabs(S[3] - 2) < TOL_EXACT, "floored sqrt = %g %g", S[0], S[3]);
    enum { N = 8 };
    unsigned long long s = 3;
    double M[N * N], R[N * N], Ri[N * N];
    random_spd(M, N, &s);
    CHECK_STATUS(uq_linalg_sqrtm(M, N, 1e-9, R, Ri), UQ_OK);
    double res = 0, id = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double rr = 0, rri = 0;
            for (int k = 0; k < N; k++) {
                rr += R[i * N + k] * R[k * N + j];
                rri += R[i * N + k] * Ri[k * N + j];
            }
            res = fmax(res, fabs(rr - M[i * N + j]));
            id = fmax(id, fabs(rri - (i == j)));
            CHECK(R[i * N + j] == R[j * N + i], "sqrtm not exactly symmetric");
        }
    CHECK(res < TOL_RESID && id < TOL_RESID, "sqrtm: |S S - A| %g, |S Sinv - I| %g", res, id);
    CHECK_STATUS(uq_linalg_sqrtm(M, N, 0.0, R, Ri), UQ_ERR_ARG);
    CHECK(strstr(uq_last_error(), "floor") != NULL, "message does not name floor: %s", uq_last_error());
    CHECK_STATUS(uq_linalg_sqrtm(M, N, 1e-6, NULL, NULL), UQ_ERR_ARG);
}

void test_stats(void) {
    test_cov();
    test_eigh();
    test_svd();
    test_cholesky();
    test_sqrtm();
}
