/* test_compress.c -- C tests of the compress area: keep sizes, argsort, ridge / Q/K / SSM scores and
 * permutations, QA-SVD of V/O (exactness at full rank, bias fold, in-place), layer-wise allocation.
 * The float64 NumPy references of every formula live in tests/test_sorting.py; these tests check the
 * invariants and hand-computed cases under the sanitizers. */
#include "test.h"

#define TOL_EXACT 1e-12   /* closed forms computed the same way */
#define TOL_QASVD64 1e-10 /* relative, float64 change of basis */
#define TOL_QASVD32 1e-5  /* relative, float32 weights */

static void test_keep_size(void) {
    int64_t k = -1;
    CHECK_STATUS(uq_keep_size(14336, 0.85, 128, &k), UQ_OK);
    CHECK(k == 12160, "14336 @ 0.85 -> %lld", (long long)k);
    CHECK_STATUS(uq_keep_size(128, 0.85, 16, &k), UQ_OK);
    CHECK(k == 112, "128 @ 0.85 -> %lld", (long long)k);
    CHECK_STATUS(uq_keep_size(64, 0.85, 2, &k), UQ_OK);
    CHECK(k == 54, "64 @ 0.85 / 2 -> %lld", (long long)k);
    CHECK_STATUS(uq_keep_size(80, 0.5, 16, &k), UQ_OK); /* 2.5 -> 2 (half to even) */
    CHECK(k == 32, "80 @ 0.5 -> %lld", (long long)k);
    CHECK_STATUS(uq_keep_size(80, 0.7, 16, &k), UQ_OK); /* 3.5 -> 4 */
    CHECK(k == 64, "80 @ 0.7 -> %lld", (long long)k);
    CHECK_STATUS(uq_keep_size(128, 0.0, 16, &k), UQ_OK); /* at least one granule */
    CHECK(k == 16, "128 @ 0 -> %lld", (long long)k);
    CHECK_STATUS(uq_keep_size(100, 1.0, 16, &k), UQ_OK); /* full not a multiple: rho 1 -> full */
    CHECK(k == 100, "100 @ 1 -> %lld", (long long)k);
    CHECK_STATUS(uq_keep_size(100, 0.99, 16, &k), UQ_OK);
    CHECK(k == 96, "100 @ 0.99 -> %lld", (long long)k);
    CHECK_STATUS(uq_keep_size(100, 0.5, 0, &k), UQ_ERR_ARG);
    CHECK_STATUS(uq_keep_size(100, 0.5, 101, &k), UQ_ERR_ARG);
    CHECK_STATUS(uq_keep_size(100, 1.5, 16, &k), UQ_ERR_ARG);
    CHECK_STATUS(uq_keep_size(100, NAN, 16, &k), UQ_ERR_ARG);
    CHECK_STATUS(uq_keep_size(0, 0.5, 1, &k), UQ_ERR_ARG);

    int64_t g = -1;
    CHECK_STATUS(uq_keep_granularity(14336, UQ_GRAN_MLP, 1, &g), UQ_OK);
    CHECK(g == 128, "gran 14336 -> %lld", (long long)g);
    CHECK_STATUS(uq_keep_granularity(64, UQ_GRAN_HEAD, 2, &g), UQ_OK);
    CHECK(g == 8, "gran 64 -> %lld", (long long)g);
    CHECK_STATUS(uq_keep_granularity(100, UQ_GRAN_MLP, 1, &g), UQ_OK); /* 12 -> 8 */
    CHECK(g == 8, "gran 100 -> %lld", (long long)g);
    CHECK_STATUS(uq_keep_granularity(8, UQ_GRAN_HEAD, 2, &g), UQ_OK); /* 1 -> min 2 */
    CHECK(g == 2, "gran 8 -> %lld", (long long)g);
    CHECK_STATUS(uq_keep_granularity(4, UQ_GRAN_HEAD, 1, &g), UQ_OK); /* 0 -> min 1 */
    CHECK(g == 1, "gran 4 -> %lld", (long long)g);
    CHECK_STATUS(uq_keep_granularity(4, UQ_GRAN_HEAD, 8, &g), UQ_ERR_ARG);
}

static void test_argsort(void) {
    const double s[7] = {0.5, 2.0, 0.5, -0.0, 2.0, 0.0, -1.0};
    const int64_t want[7] = {1, 4, 0, 2, 3, 5, 6};
    int64_t p[7];
    CHECK_STATUS(uq_argsort_desc(s, 7, p), UQ_OK);
    int ok = 1;
    for (int i = 0; i < 7; i++) ok &= p[i] == want[i];
    CHECK(ok, "stable descending order wrong: %lld %lld %lld %lld", (long long)p[0], (long long)p[1], (long long)p[2],
          (long long)p[3]);
    /* larger: sorted output, a permutation */
    enum { N = 1001 };
    double *x = malloc(N * sizeof *x);
    int64_t *q = malloc(N * sizeof *q);
    char *seen = calloc(N, 1);
    unsigned long long seed = 7;
    for (int i = 0; i < N; i++) x[i] = floor(uq_test_rand(&seed) * 20.0); /* many ties */
    CHECK_STATUS(uq_argsort_desc(x, N, q), UQ_OK);
    int sorted = 1, perm = 1;
    for (int i = 0; i < N; i++) {
        if (q[i] < 0 || q[i] >= N || seen[q[i]]) perm = 0;
        else seen[q[i]] = 1;
        if (i && perm && (x[q[i]] > x[q[i - 1]] || (x[q[i]] == x[q[i - 1]] && q[i] < q[i - 1]))) sorted = 0;
    }
    CHECK(perm && sorted, "argsort of %d elements with ties is not a stable descending permutation", N);
    x[17] = NAN;
    CHECK_STATUS(uq_argsort_desc(x, N, q), UQ_ERR_NUMERIC);
    CHECK(strstr(uq_last_error(), "index 17") != NULL, "message: %s", uq_last_error());
    free(x); free(q); free(seen);
}

static void test_ridge(void) {
    /* 2x2: (G + lI)^{-1} = [[c+l, -b], [-b, a+l]] / det */
    const double a = 3.0, b = 1.0, c = 2.0, lam = 0.5;
    const double G[4] = {a, b, b, c};
    double s[2];
    CHECK_STATUS(uq_sort_ridge_scores(G, 2, lam, s), UQ_OK);
    double det = (a + lam) * (c + lam) - b * b;
    double w0 = 1.0 - lam * (c + lam) / det, w1 = 1.0 - lam * (a + lam) / det;
    CHECK(fabs(s[0] - w0) < TOL_EXACT && fabs(s[1] - w1) < TOL_EXACT, "ridge 2x2: %g %g vs %g %g", s[0], s[1], w0, w1);
    CHECK_STATUS(uq_sort_ridge_scores(G, 2, 0.0, s), UQ_ERR_ARG);
    CHECK_STATUS(uq_sort_ridge_scores(G, 2, -1.0, s), UQ_ERR_ARG);
    const double Gbad[4] = {-5.0, 0.0, 0.0, 1.0}; /* not PSD: G + I not SPD */
    CHECK_STATUS(uq_sort_ridge_scores(Gbad, 2, 1.0, s), UQ_ERR_NUMERIC);
    CHECK(strstr(uq_last_error(), "PSD") != NULL, "message: %s", uq_last_error());

    /* SSM head channels: diagonal G -> s = g/(g+l), per-head order */
    const double Gd[16] = {1, 0, 0, 0, 0, 4, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0.25};
    double hs[4];
    int64_t hp[4];
    CHECK_STATUS(uq_sort_ssm_head_channels(Gd, 2, 2, 1.0, hs, hp), UQ_OK);
    CHECK(fabs(hs[1] - 0.8) < TOL_EXACT && fabs(hs[3] - 0.2) < TOL_EXACT, "ssm ridge %g %g", hs[1], hs[3]);
    CHECK(hp[0] == 1 && hp[1] == 0 && hp[2] == 0 && hp[3] == 1, "ssm head perms %lld %lld %lld %lld", (long long)hp[0],
          (long long)hp[1], (long long)hp[2], (long long)hp[3]);
}

static void test_qk(void) {
    enum { H = 4, KV = 2, D = 8 };
    double cq[H * D], ck[KV * D], sc[KV * D];
    unsigned long long seed = 11;
    for (int i = 0; i < H * D; i++) cq[i] = uq_test_rand(&seed) + 1.5;
    for (int i = 0; i < KV * D; i++) ck[i] = uq_test_rand(&seed) + 1.5;
    int32_t fr[KV * D / 2];
    int64_t rp[KV * D];
    CHECK_STATUS(uq_sort_qk(cq, ck, H, KV, D, UQ_ROPE_FULL, sc, fr, rp), UQ_OK);
    int ok = 1;
    for (int g = 0; g < KV; g++) {
        for (int i = 0; i < D; i++) {
            double q = cq[(2 * g) * D + i] + cq[(2 * g + 1) * D + i];
            ok &= fabs(sc[g * D + i] - sqrt(q * ck[g * D + i])) < TOL_EXACT;
        }
        for (int j = 0; j < D / 2; j++) {
            ok &= rp[g * D + 2 * j] == fr[g * D / 2 + j] && rp[g * D + 2 * j + 1] == fr[g * D / 2 + j] + D / 2;
            if (j) {
                int a = fr[g * D / 2 + j - 1], b = fr[g * D / 2 + j];
                ok &= sc[g * D + a] + sc[g * D + a + D / 2] >= sc[g * D + b] + sc[g * D + b + D / 2];
            }
        }
    }
    CHECK(ok, "full-RoPE Q/K scores, pair order or interleaved layout wrong");

    int32_t fp[KV * D / 4];
    CHECK_STATUS(uq_sort_qk(cq, ck, H, KV, D, UQ_ROPE_PARTIAL, NULL, fp, rp), UQ_OK);
    ok = 1;
    for (int g = 0; g < KV; g++) {
        for (int j = 0; j < D / 4; j++)
            ok &= rp[g * D + 2 * j] == fp[g * D / 4 + j] && rp[g * D + 2 * j + 1] == fp[g * D / 4 + j] + D / 4;
        for (int k = D / 2; k < D; k++) {
            ok &= rp[g * D + k] >= D / 2;
            if (k > D / 2) ok &= sc[g * D + rp[g * D + k - 1]] >= sc[g * D + rp[g * D + k]];
        }
    }
    CHECK(ok, "partial-RoPE layout wrong");
    CHECK_STATUS(uq_sort_qk(cq, ck, H, KV, D, UQ_ROPE_NONE, NULL, NULL, rp), UQ_OK);
    ok = 1;
    for (int g = 0; g < KV; g++)
        for (int k = 1; k < D; k++) ok &= sc[g * D + rp[g * D + k - 1]] >= sc[g * D + rp[g * D + k]];
    CHECK(ok, "no-RoPE order wrong");

    CHECK_STATUS(uq_sort_qk(cq, ck, H, KV, 7, UQ_ROPE_FULL, NULL, fr, rp), UQ_ERR_SHAPE);
    CHECK(strstr(uq_last_error(), "even") != NULL, "message: %s", uq_last_error());
    CHECK_STATUS(uq_sort_qk(cq, ck, H, KV, 6, UQ_ROPE_PARTIAL, NULL, fr, rp), UQ_ERR_SHAPE);
    CHECK_STATUS(uq_sort_qk(cq, ck, 3, KV, D, UQ_ROPE_FULL, NULL, fr, rp), UQ_ERR_SHAPE);
    CHECK_STATUS(uq_sort_qk(cq, ck, H, KV, D, (uq_rope_mode)7, NULL, fr, rp), UQ_ERR_ARG);
    ck[3] = -1.0;
    CHECK_STATUS(uq_sort_qk(cq, ck, H, KV, D, UQ_ROPE_FULL, NULL, fr, rp), UQ_ERR_ARG);
    ck[3] = NAN;
    CHECK_STATUS(uq_sort_qk(cq, ck, H, KV, D, UQ_ROPE_FULL, NULL, fr, rp), UQ_ERR_NUMERIC);

    int64_t rows[8];
    CHECK_STATUS(uq_sort_qk_keep_rows(UQ_ROPE_PARTIAL, 16, 8, rows), UQ_OK);
    CHECK(rows[0] == 0 && rows[3] == 3 && rows[4] == 8 && rows[7] == 11, "partial keep rows %lld %lld",
          (long long)rows[4], (long long)rows[7]);
    CHECK_STATUS(uq_sort_qk_keep_rows(UQ_ROPE_FULL, 16, 6, rows), UQ_OK);
    CHECK(rows[5] == 5, "full keep rows");
    CHECK_STATUS(uq_sort_qk_keep_rows(UQ_ROPE_FULL, 16, 5, rows), UQ_ERR_RANGE);
    CHECK_STATUS(uq_sort_qk_keep_rows(UQ_ROPE_PARTIAL, 16, 6, rows), UQ_ERR_RANGE);
    CHECK_STATUS(uq_sort_qk_keep_rows(UQ_ROPE_NONE, 16, 17, rows), UQ_ERR_RANGE);
}

static void test_ssm_state(void) {
    /* H = 2 heads in G = 1 group, N = 3: s_m = (sqrt dB0 + sqrt dB1) sqrt C */
    const double dB[6] = {1, 4, 0, 9, 0, 16}, C[3] = {4, 1, 1};
    double s[3];
    int64_t p[3];
    CHECK_STATUS(uq_sort_ssm_state(dB, C, 2, 1, 3, s, p), UQ_OK);
    CHECK(fabs(s[0] - 8.0) < TOL_EXACT && fabs(s[1] - 2.0) < TOL_EXACT && fabs(s[2] - 4.0) < TOL_EXACT,
          "ssm state scores %g %g %g", s[0], s[1], s[2]);
    CHECK(p[0] == 0 && p[1] == 2 && p[2] == 1, "ssm state perm");
    CHECK_STATUS(uq_sort_ssm_state(dB, C, 3, 2, 1, s, p), UQ_ERR_SHAPE);
}

static void test_alloc(void) {
    enum { L = 6 };
    const double imp[L] = {0.02, 0.05, 0.01, 0.08, 0.04, 0.03};
    double kr[L];
    CHECK_STATUS(uq_alloc_keep_ratios(imp, L, 0.8, 0.1, 0.85, kr), UQ_OK);
    double mean = 0.0;
    int mono = 1;
    for (int l = 0; l < L; l++) {
        mean += (1.0 - kr[l]) / L;
        for (int m = 0; m < L; m++)
            if (imp[l] < imp[m]) mono &= kr[l] <= kr[m];
    }
    CHECK(fabs(mean - 0.2) < TOL_EXACT, "mean pruning %g != 0.2", mean);
    CHECK(mono, "keep ratio not monotone in importance");
    const double imp2[3] = {0.0, 1.0, 1.0}; /* all the pruning lands on layer 0 -> clamped */
    CHECK_STATUS(uq_alloc_keep_ratios(imp2, 3, 0.5, 0.1, 0.85, kr), UQ_OK);
    CHECK(fabs(kr[0] - 0.15) < TOL_EXACT, "clamp: keep %g", kr[0]);
    CHECK_STATUS(uq_alloc_keep_ratios(imp, L, 1.2, 0.1, 0.85, kr), UQ_ERR_ARG);
    CHECK_STATUS(uq_alloc_keep_ratios(imp, L, 0.8, 0.0, 0.85, kr), UQ_ERR_ARG);

    const float x[6] = {1, 2, 3, 1, 0, 0}, y[6] = {2, 4, 6, -1, 0, 0};
    double s;
    CHECK_STATUS(uq_alloc_block_importance(x, y, 1, 2, 3, &s), UQ_OK); /* cos 1 and -1 -> mean 0 -> 1 */
    CHECK(fabs(s - 1.0) < TOL_EXACT, "importance %g", s);
}

/* ---------------------------------------------------------------------------------- QA-SVD ---- */

/* out (n) = x V O + bv O + bo of a GQA attention whose weights are one-hot on a single position (so the
 * output is the value path of the head sum): y_j = sum_h sum_k (x.wv[g(h)*d+k] + bv) wo[j][h*d+k] + bo_j */
static void vo_apply(const double *x, const double *wv, const double *bv, const double *wo, const double *bo,
                     int64_t n, int64_t nh, int64_t nkv, int64_t d, double *out) {
    for (int64_t j = 0; j < n; j++) out[j] = bo ? bo[j] : 0.0;
    for (int64_t h = 0; h < nh; h++) {
        int64_t g = h / (nh / nkv);
        for (int64_t k = 0; k < d; k++) {
            double v = bv ? bv[g * d + k] : 0.0;
            for (int64_t i = 0; i < n; i++) v += x[i] * wv[(g * d + k) * n + i];
            for (int64_t j = 0; j < n; j++) out[j] += v * wo[j * nh * d + h * d + k];
        }
    }
}

static void test_qasvd(void) {
    enum { N = 12, NH = 4, NKV = 2, D = 4, T = 40 };
    unsigned long long seed = 99;
    double G[N * N] = {0}, X[T * N];
    for (int i = 0; i < T * N; i++) X[i] = uq_test_rand(&seed);
    CHECK_STATUS(uq_cov_accumulate_f64(G, N, X, T, N), UQ_OK);
    double wv[NKV * D * N], bv[NKV * D], wo[N * NH * D], bo[N];
    for (int i = 0; i < NKV * D * N; i++) wv[i] = uq_test_rand(&seed);
    for (int i = 0; i < N * NH * D; i++) wo[i] = uq_test_rand(&seed);
    for (int i = 0; i < NKV * D; i++) bv[i] = uq_test_rand(&seed);
    for (int i = 0; i < N; i++) bo[i] = uq_test_rand(&seed);
    double wv2[NKV * D * N], bv2[NKV * D], wo2[N * NH * D], bo2[N], sv[NKV * D];
    for (int32_t flags = 0; flags < 4; flags++) {
        CHECK_STATUS(uq_qasvd_vo_f64(G, N, wv, bv, wo, bo, NH, NKV, D, flags, 1e-6, wv2, bv2, wo2, bo2, sv), UQ_OK);
        double worst = 0.0, y0[N], y1[N];
        for (int trial = 0; trial < 5; trial++) {
            double x[N];
            for (int i = 0; i < N; i++) x[i] = uq_test_rand(&seed);
            vo_apply(x, wv, bv, wo, bo, N, NH, NKV, D, y0);
            vo_apply(x, wv2, NULL, wo2, bo2, N, NH, NKV, D, y1);
            double e = 0.0, r = 0.0;
            for (int j = 0; j < N; j++) { e += (y0[j] - y1[j]) * (y0[j] - y1[j]); r += y0[j] * y0[j]; }
            worst = fmax(worst, sqrt(e / r));
        }
        CHECK(worst < TOL_QASVD64, "flags %d: full-rank V/O not exact, rel err %g", flags, worst);
        int desc = 1, zero = 1;
        for (int g = 0; g < NKV; g++)
            for (int k = 1; k < D; k++) desc &= sv[g * D + k - 1] >= sv[g * D + k];
        for (int i = 0; i < NKV * D; i++) zero &= bv2[i] == 0.0;
        CHECK(desc && zero, "flags %d: singular values not descending or v bias not zeroed", flags);
    }
    /* float32, in place: same result as out of place */
    float wvf[NKV * D * N], bvf[NKV * D], wof[N * NH * D], bof[N];
    float wvo[NKV * D * N], wofo[N * NH * D], bofo[N];
    for (int i = 0; i < NKV * D * N; i++) wvf[i] = (float)wv[i];
    for (int i = 0; i < N * NH * D; i++) wof[i] = (float)wo[i];
    for (int i = 0; i < NKV * D; i++) bvf[i] = (float)bv[i];
    for (int i = 0; i < N; i++) bof[i] = (float)bo[i];
    CHECK_STATUS(uq_qasvd_vo_f32(G, N, wvf, bvf, wof, bof, NH, NKV, D, 0, 1e-6, wvo, NULL, wofo, bofo, NULL), UQ_OK);
    CHECK_STATUS(uq_qasvd_vo_f32(G, N, wvf, bvf, wof, bof, NH, NKV, D, 0, 1e-6, wvf, bvf, wof, bof, NULL), UQ_OK);
    CHECK(!memcmp(wvf, wvo, sizeof wvf) && !memcmp(wof, wofo, sizeof wof) && !memcmp(bof, bofo, sizeof bof),
          "in-place QA-SVD differs from out-of-place");
    double wvd[NKV * D * N], wod[N * NH * D], bod[N], y0[N], y1[N], x[N];
    for (int i = 0; i < NKV * D * N; i++) wvd[i] = wvf[i];
    for (int i = 0; i < N * NH * D; i++) wod[i] = wof[i];
    for (int i = 0; i < N; i++) { bod[i] = bof[i]; x[i] = uq_test_rand(&seed); }
    vo_apply(x, wv, bv, wo, bo, N, NH, NKV, D, y0);
    vo_apply(x, wvd, NULL, wod, bod, N, NH, NKV, D, y1);
    double e = 0.0, r = 0.0;
    for (int j = 0; j < N; j++) { e += (y0[j] - y1[j]) * (y0[j] - y1[j]); r += y0[j] * y0[j]; }
    CHECK(sqrt(e / r) < TOL_QASVD32, "float32 QA-SVD rel err %g", sqrt(e / r));

    CHECK_STATUS(uq_qasvd_vo_f64(G, N, wv, bv, wo, bo, NH, 3, D, 0, 1e-6, wv2, bv2, wo2, bo2, sv), UQ_ERR_SHAPE);
    CHECK_STATUS(uq_qasvd_vo_f64(G, N, wv, bv, wo, bo, NH, NKV, D, 0, 1e-6, wv2, bv2, wo2, NULL, sv), UQ_ERR_ARG);
    CHECK_STATUS(uq_qasvd_vo_f64(G, N, wv, bv, wo, bo, NH, NKV, D, 8, 1e-6, wv2, bv2, wo2, bo2, sv), UQ_ERR_ARG);
    CHECK_STATUS(uq_qasvd_vo_f64(G, N, wv, bv, wo, bo, NH, NKV, D, 0, 0.0, wv2, bv2, wo2, bo2, sv), UQ_ERR_ARG);
    wv[5] = NAN;
    CHECK_STATUS(uq_qasvd_vo_f64(G, N, wv, bv, wo, bo, NH, NKV, D, 0, 1e-6, wv2, bv2, wo2, bo2, sv), UQ_ERR_NUMERIC);
    CHECK(strstr(uq_last_error(), "wv") != NULL, "message: %s", uq_last_error());
}

/* Residual rotation: Q Q^T = I (float64 rows of Q from the identity), axis 1 == transpose of axis 0, bad input. */
static void test_rotation(void) {
    enum { N = 48 }; /* 16 x 3: Hadamard 16 (x) a random 3 x 3 block */
    int64_t m = 0;
    CHECK_STATUS(uq_rotation_size(N, &m), UQ_OK);
    CHECK(m == 3, "m of 48 = %lld", (long long)m);
    double signs[N], R[9];
    CHECK_STATUS(uq_rotation_init(N, 11, signs, R), UQ_OK);
    static float Q[N * N], A[5 * N], B[N * 5];
    for (int i = 0; i < N * N; i++) Q[i] = (i / N == i % N) ? 1.0f : 0.0f;
    CHECK_STATUS(uq_rotate(Q, N, N, 0, NULL, signs, R, N), UQ_OK);
    double worst = 0.0;
    for (int a = 0; a < N; a++)
        for (int b = 0; b < N; b++) {
            double d = 0.0;
            for (int k = 0; k < N; k++) d += (double)Q[a * N + k] * Q[b * N + k];
            d -= a == b ? 1.0 : 0.0;
            worst = fabs(d) > worst ? fabs(d) : worst;
        }
    CHECK(worst < 1e-6, "Q Q^T - I max %g", worst);
    for (int i = 0; i < 5 * N; i++) A[i] = (float)sin(0.37 * i);
    for (int r = 0; r < 5; r++)
        for (int c = 0; c < N; c++) B[c * 5 + r] = A[r * N + c];
    CHECK_STATUS(uq_rotate(A, 5, N, 0, NULL, signs, R, N), UQ_OK);
    CHECK_STATUS(uq_rotate(B, N, 5, 1, NULL, signs, R, N), UQ_OK);
    double diff = 0.0;
    for (int r = 0; r < 5; r++)
        for (int c = 0; c < N; c++) diff = fmax(diff, fabs((double)A[r * N + c] - B[c * 5 + r]));
    CHECK(diff == 0.0, "axis 1 differs from axis 0 of the transpose by %g", diff);
    CHECK_STATUS(uq_rotate(A, 5, N - 1, 0, NULL, signs, R, N), UQ_ERR_SHAPE);
    CHECK_STATUS(uq_rotate(B, N, 5, 1, signs == NULL ? NULL : (const float *)A, signs, R, N), UQ_ERR_ARG);
    CHECK_STATUS(uq_rotate(A, 5, N, 2, NULL, signs, R, N), UQ_ERR_ARG);
    CHECK_STATUS(uq_rotation_size(0, &m), UQ_ERR_ARG);
    A[7] = NAN;
    CHECK_STATUS(uq_rotate(A, 5, N, 0, NULL, signs, R, N), UQ_ERR_NUMERIC);
}

void test_compress(void) {
    test_rotation();
    test_keep_size();
    test_argsort();
    test_ridge();
    test_qk();
    test_ssm_state();
    test_alloc();
    test_qasvd();
}
