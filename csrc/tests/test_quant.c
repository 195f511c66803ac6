/* test_quant.c -- C tests of int4 quantization (compress/q4.c): hand-computed codes and bytes, ldw, odd
 * column counts and short last groups, pack/unpack, the s/2 error bound, GPTQ == RTN for H = I, GPTQ beats
 * RTN on a correlated Hessian, dead columns, and statuses/messages for bad arguments. */
#include "test.h"

#define TOL_SCALE_REL 1e-5 /* |w - w_hat| <= (s/2)(1 + TOL_SCALE_REL): float32 roundings of s and of 7s */

static void test_rtn_hand(void) {
    /* row 0: amax 3.75 -> s = 0.5; w/s = 2, -4, 7.5, 0 -> rint = 2, -4, 8 (half even), 0 -> codes 10, 4, 15, 8
     * row 1: zeros -> s = 0, codes 8.  ldw = 6 with NaN padding that must never be read. */
    const float W[12] = {1, -2, 3.75f, 0, NAN, NAN, 0, 0, 0, 0, NAN, NAN};
    uint8_t packed[4];
    float scales[2];
    CHECK_STATUS(uq_q4_quantize_rtn(W, 2, 4, 6, 4, packed, scales), UQ_OK);
    CHECK(scales[0] == 0.5f && scales[1] == 0.0f, "scales %g %g", scales[0], scales[1]);
    CHECK(packed[0] == 0x4A && packed[1] == 0x8F && packed[2] == 0x88 && packed[3] == 0x88,
          "packed %02x %02x %02x %02x", packed[0], packed[1], packed[2], packed[3]);
    float D[8];
    CHECK_STATUS(uq_q4_dequantize(packed, scales, 2, 4, 4, D), UQ_OK);
    CHECK(D[0] == 1 && D[1] == -2 && D[2] == 3.5f && D[3] == 0 && D[4] == 0, "dequantized %g %g %g %g", D[0], D[1],
          D[2], D[3]);

    /* 3 columns (odd: pad nibble 8), group 2 (last group of 1): [-1, 0.5 | 2] -> s = 1/7.5, 2/7.5 */
    const float V[3] = {-1, 0.5f, 2};
    uint8_t p2[2];
    float s2[2];
    CHECK_STATUS(uq_q4_quantize_rtn(V, 1, 3, 3, 2, p2, s2), UQ_OK);
    /* float32 s = 0.13333334 rounds 1/7.5 up, so -1/s = -7.4999996 -> -7 -> code 1 (not 0);
     * 0.5/s = 3.7499998 -> 4 -> 12; 2/s2 = 7.4999996 -> 7 -> 15 */
    CHECK(s2[0] == (float)(1 / 7.5) && s2[1] == (float)(2 / 7.5), "scales %g %g", s2[0], s2[1]);
    CHECK(p2[0] == (1 | 12 << 4) && p2[1] == (15 | 8 << 4), "packed %02x %02x", p2[0], p2[1]);
}

static void test_pack(void) {
    enum { R = 3, C = 7 };
    uint8_t codes[R * C], packed[R * 4], back[R * C];
    for (int i = 0; i < R * C; i++) codes[i] = (uint8_t)((i * 7 + 3) % 16);
    CHECK_STATUS(uq_q4_pack(codes, R, C, packed), UQ_OK);
    CHECK(packed[0] == (codes[0] | codes[1] << 4) && packed[3] == (codes[6] | 8 << 4), "pack layout");
    CHECK(packed[4] == (codes[7] | codes[8] << 4), "row stride of packed is (cols+1)/2");
    CHECK_STATUS(uq_q4_unpack(packed, R, C, back), UQ_OK);
    CHECK(memcmp(codes, back, sizeof codes) == 0, "unpack(pack(codes)) != codes");
    codes[5] = 16;
    CHECK_STATUS(uq_q4_pack(codes, R, C, packed), UQ_ERR_RANGE);
    CHECK(strstr(uq_last_error(), "row 0, column 5") != NULL, "message does not locate the code: %s", uq_last_error());
    CHECK_STATUS(uq_q4_unpack(packed, 0, C, back), UQ_ERR_ARG);
    CHECK_STATUS(uq_q4_pack(NULL, R, C, packed), UQ_ERR_ARG);
}

/* Random W (rows, cols) with ldw; error bound s/2 for every element and group size edge cases. */
static void test_rtn_bound(void) {
    static const int64_t groups[] = {1, 4, 5, 6, 32};
    enum { R = 5, C = 21, LDW = 24 };
    float W[R * LDW], D[R * C], S[R * C];
    uint8_t P[R * 11];
    unsigned long long s = 99;
    for (int i = 0; i < R * LDW; i++) W[i] = (float)(uq_test_rand(&s) * 3.0);
    for (size_t gi = 0; gi < sizeof groups / sizeof groups[0]; gi++) {
        int64_t g = groups[gi], ng = (C + g - 1) / g;
        CHECK_STATUS(uq_q4_quantize_rtn(W, R, C, LDW, g, P, S), UQ_OK);
        CHECK_STATUS(uq_q4_dequantize(P, S, R, C, g, D), UQ_OK);
        int bad = 0;
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) {
                double sc = S[r * ng + c / g];
                if (fabs((double)W[r * LDW + c] - D[r * C + c]) > 0.5 * sc * (1 + TOL_SCALE_REL)) bad++;
            }
        CHECK(bad == 0, "group %lld: %d elements beyond s/2", (long long)g, bad);
    }
}

static double output_error(const float *W, const float *D, const double *H, int R, int C) {
    double e = 0; /* trace((W - D) H (W - D)^T) */
    for (int r = 0; r < R; r++)
        for (int i = 0; i < C; i++)
            for (int j = 0; j < C; j++)
                e += (W[r * C + i] - D[r * C + i]) * H[i * C + j] * (W[r * C + j] - D[r * C + j]);
    return e;
}

/* H = X^T X of T correlated inputs over C columns (x_t = 0.3 z_t + a shared factor f_t); X: T * C scratch. */
static void correlated_hessian(double *X, int T, int C, unsigned long long *s, double *H) {
    for (int t = 0; t < T; t++) {
        double f = uq_test_rand(s);
        for (int c = 0; c < C; c++) X[t * C + c] = 0.3 * uq_test_rand(s) + f;
    }
    memset(H, 0, (size_t)C * (size_t)C * sizeof(double));
    CHECK_STATUS(uq_cov_accumulate_f64(H, C, X, T, C), UQ_OK);
}

static void test_gptq(void) {
    enum { R = 6, C = 24, T = 200, G = 8 };
    float W[R * C], D1[R * C], D2[R * C], S1[R * 3], S2[R * 3];
    uint8_t P1[R * C / 2], P2[R * C / 2];
    double H[C * C], I[C * C];
    unsigned long long s = 17;
    for (int i = 0; i < R * C; i++) W[i] = (float)uq_test_rand(&s);
    static double X[T * C];
    correlated_hessian(X, T, C, &s, H);
    for (int i = 0; i < C * C; i++) I[i] = (i % (C + 1) == 0);

    /* H = I: U is diagonal, no error feedback -> exactly RTN (damping does not matter) */
    CHECK_STATUS(uq_q4_quantize_rtn(W, R, C, C, G, P1, S1), UQ_OK);
    CHECK_STATUS(uq_q4_quantize_gptq(W, R, C, C, I, G, 0.01, 0, P2, S2), UQ_OK);
    CHECK(memcmp(P1, P2, sizeof P1) == 0 && memcmp(S1, S2, sizeof S1) == 0, "GPTQ with H = I differs from RTN");

    /* correlated H: GPTQ output error below RTN's; block size does not change the result */
    CHECK_STATUS(uq_q4_quantize_gptq(W, R, C, C, H, G, 0.01, 0, P2, S2), UQ_OK);
    CHECK_STATUS(uq_q4_dequantize(P1, S1, R, C, G, D1), UQ_OK);
    CHECK_STATUS(uq_q4_dequantize(P2, S2, R, C, G, D2), UQ_OK);
    double e_rtn = output_error(W, D1, H, R, C), e_gptq = output_error(W, D2, H, R, C);
    CHECK(e_gptq < 0.7 * e_rtn, "GPTQ output error %g not below RTN %g", e_gptq, e_rtn);
    uint8_t P3[R * C / 2];
    float S3[R * 3];
    static const int64_t blocks[] = {1, 3, 5, 16, 100};
    for (size_t b = 0; b < sizeof blocks / sizeof blocks[0]; b++) {
        CHECK_STATUS(uq_q4_quantize_gptq(W, R, C, C, H, G, 0.01, blocks[b], P3, S3), UQ_OK);
        int diff = 0;
        for (int i = 0; i < R * C / 2; i++) diff += P3[i] != P2[i];
        CHECK(diff == 0, "block %lld changes %d packed bytes", (long long)blocks[b], diff);
    }

    /* dead column 3: H row/col zero -> code 8 in every row */
    for (int i = 0; i < C; i++) H[3 * C + i] = H[i * C + 3] = 0.0;
    CHECK_STATUS(uq_q4_quantize_gptq(W, R, C, C, H, G, 0.01, 0, P2, S2), UQ_OK);
    CHECK_STATUS(uq_q4_dequantize(P2, S2, R, C, G, D2), UQ_OK);
    int nonzero = 0;
    for (int r = 0; r < R; r++) nonzero += D2[r * C + 3] != 0.0f;
    CHECK(nonzero == 0, "dead column not zero in %d rows", nonzero);

    /* ldw > cols with NaN padding */
    enum { LDW = C + 3 };
    float Wp[R * LDW];
    for (int r = 0; r < R; r++) {
        memcpy(Wp + r * LDW, W + r * C, C * sizeof(float));
        Wp[r * LDW + C] = Wp[r * LDW + C + 1] = Wp[r * LDW + C + 2] = NAN;
    }
    CHECK_STATUS(uq_q4_quantize_gptq(Wp, R, C, LDW, H, G, 0.01, 0, P3, S3), UQ_OK);
    CHECK(memcmp(P2, P3, sizeof P3) == 0, "ldw changes the GPTQ result");

    /* bad arguments */
    CHECK_STATUS(uq_q4_quantize_gptq(W, R, C, C, H, 0, 0.01, 0, P2, S2), UQ_ERR_ARG);
    CHECK(strstr(uq_last_error(), "group") != NULL, "message does not name group: %s", uq_last_error());
    CHECK_STATUS(uq_q4_quantize_gptq(W, R, C, C - 1, H, G, 0.01, 0, P2, S2), UQ_ERR_ARG);
    CHECK(strstr(uq_last_error(), "ldw") != NULL, "message does not name ldw: %s", uq_last_error());
    CHECK_STATUS(uq_q4_quantize_gptq(W, R, C, C, H, G, -1.0, 0, P2, S2), UQ_ERR_ARG);
    CHECK_STATUS(uq_q4_quantize_gptq(W, R, C, C, H, G, 0.01, -2, P2, S2), UQ_ERR_ARG);
    CHECK_STATUS(uq_q4_quantize_gptq(W, R, C, C, NULL, G, 0.01, 0, P2, S2), UQ_ERR_ARG);
    for (int i = 0; i < C * C; i++) I[i] = -(double)(i % (C + 1) == 0); /* -I: not SPD even after damping */
    CHECK_STATUS(uq_q4_quantize_gptq(W, R, C, C, I, G, 0.01, 0, P2, S2), UQ_ERR_NUMERIC);
    CHECK(strstr(uq_last_error(), "positive definite") != NULL, "message: %s", uq_last_error());
    H[5] = NAN;
    CHECK_STATUS(uq_q4_quantize_gptq(W, R, C, C, H, G, 0.01, 0, P2, S2), UQ_ERR_NUMERIC);
    CHECK(strstr(uq_last_error(), "H contains NaN") != NULL, "message: %s", uq_last_error());
    W[7] = INFINITY;
    CHECK_STATUS(uq_q4_quantize_rtn(W, R, C, C, G, P1, S1), UQ_ERR_NUMERIC);
    CHECK(strstr(uq_last_error(), "W contains Inf at row 0, column 7") != NULL, "message: %s", uq_last_error());
    CHECK_STATUS(uq_q4_quantize_rtn(W, 0, C, C, G, P1, S1), UQ_ERR_ARG);
    CHECK_STATUS(uq_q4_dequantize(P1, S1, R, C, 0, D1), UQ_ERR_ARG);
}

/* Asymmetric int4 (UQ_Q4_ASYM): with H = I (no error feedback) the documented formula in float64 -- lo / hi with 0
 * inside, s = (float)((hi - lo) / 15), z = clamp(rint(-lo / s), 0, 15), q = clamp(rint(w / s) + z, 0, 15) -- and
 * dequantization (q - z) * s; with a correlated H the output error is below RTN-asym's and below symmetric GPTQ's on
 * one-signed (skewed) weights; MSE search never increases a group's rounding error; statuses. */
static void test_gptq_asym(void) {
    enum { R = 5, C = 40, T = 300, G = 8, NG = 5 };
    float W[R * C], S[R * NG], S2[R * NG], D[R * C], D2[R * C];
    uint8_t P[R * C / 2], P2[R * C / 2], Z[R * NG], Z2[R * NG];
    double H[C * C], I[C * C];
    unsigned long long s = 23;
    for (int i = 0; i < R * C; i++) W[i] = (float)(uq_test_rand(&s) + 0.6); /* mostly positive: skewed groups */
    for (int c = 0; c < G; c++) W[c] = 0.0f;                                 /* row 0, group 0: all zeros */
    for (int c = G; c < 2 * G; c++) W[c] = -1.0f - 0.1f * (float)c;          /* row 0, group 1: all negative */
    for (int i = 0; i < C * C; i++) I[i] = (i % (C + 1) == 0);
    CHECK_STATUS(uq_q4_quantize_gptq_z(W, R, C, C, I, G, 0.01, 0, UQ_Q4_ASYM, P, S, Z), UQ_OK);
    CHECK_STATUS(uq_q4_dequantize_z(P, S, Z, R, C, G, D), UQ_OK);
    int ok = 1;
    for (int r = 0; r < R; r++)
        for (int g = 0; g < NG; g++) {
            double lo = 0, hi = 0;
            for (int c = g * G; c < (g + 1) * G; c++) {
                lo = fmin(lo, W[r * C + c]);
                hi = fmax(hi, W[r * C + c]);
            }
            const float sw = hi > lo ? (float)((hi - lo) / 15.0) : 0.0f;
            const double zr = sw > 0 ? rint(-lo / sw) : 8.0;
            const int zw = zr < 0 ? 0 : zr > 15 ? 15 : (int)zr;
            ok &= S[r * NG + g] == sw && Z[r * NG + g] == zw;
            for (int c = g * G; c < (g + 1) * G; c++) {
                double q = sw > 0 ? rint((double)W[r * C + c] / sw) + zw : zw;
                q = q < 0 ? 0 : q > 15 ? 15 : q;
                const int code = (P[(r * C + c) / 2] >> ((c & 1) * 4)) & 15;
                ok &= code == (int)q && D[r * C + c] == (float)(((double)code - zw) * sw);
                ok &= fabs(W[r * C + c] - D[r * C + c]) <= 0.5 * sw * (1 + 1e-6) + 1e-30;
            }
        }
    CHECK(ok, "asymmetric GPTQ with H = I follows the documented formula (within half a step)");
    CHECK(S[0] == 0.0f && Z[0] == 8 && D[0] == 0.0f, "zero group: scale 0, zero point 8, value 0");
    CHECK(Z[1] == 15, "an all-negative group has zero point 15 (got %u)", (unsigned)Z[1]);
    /* MSE search: per group never worse than the plain range (H = I: the rounding error itself) */
    CHECK_STATUS(uq_q4_quantize_gptq_z(W, R, C, C, I, G, 0.01, 0, UQ_Q4_ASYM | UQ_Q4_MSE_SCALE, P2, S2, Z2), UQ_OK);
    CHECK_STATUS(uq_q4_dequantize_z(P2, S2, Z2, R, C, G, D2), UQ_OK);
    ok = memcmp(Z, Z2, sizeof Z) == 0;
    for (int r = 0; r < R; r++)
        for (int g = 0; g < NG; g++) {
            double e1 = 0, e2 = 0;
            for (int c = g * G; c < (g + 1) * G; c++) {
                e1 += pow(W[r * C + c] - D[r * C + c], 2);
                e2 += pow(W[r * C + c] - D2[r * C + c], 2);
            }
            ok &= e2 <= e1 * (1 + 1e-12);
        }
    CHECK(ok, "asymmetric MSE scales keep z and never increase a group's rounding error");
    /* correlated H: error feedback helps; asymmetric beats symmetric GPTQ on skewed weights */
    static double X[T * C];
    correlated_hessian(X, T, C, &s, H);
    CHECK_STATUS(uq_q4_quantize_gptq_z(W, R, C, C, H, G, 0.01, 0, UQ_Q4_ASYM, P2, S2, Z2), UQ_OK);
    CHECK_STATUS(uq_q4_dequantize_z(P2, S2, Z2, R, C, G, D2), UQ_OK);
    const double e_rtn = output_error(W, D, H, R, C), e_asym = output_error(W, D2, H, R, C);
    CHECK(e_asym < e_rtn, "asymmetric GPTQ output error %g not below asymmetric RTN %g", e_asym, e_rtn);
    CHECK_STATUS(uq_q4_quantize_gptq_z(W, R, C, C, H, G, 0.01, 0, 0, P2, S2, Z2), UQ_OK);
    int all8 = 1;
    for (int i = 0; i < R * NG; i++) all8 &= Z2[i] == 8;
    CHECK(all8, "symmetric GPTQ reports zero points 8");
    CHECK_STATUS(uq_q4_dequantize_z(P2, S2, NULL, R, C, G, D), UQ_OK);
    const double e_sym = output_error(W, D, H, R, C);
    CHECK(e_asym < e_sym, "asymmetric GPTQ error %g not below symmetric %g on skewed weights", e_asym, e_sym);
    /* statuses */
    CHECK_STATUS(uq_q4_quantize_gptq_z(W, R, C, C, H, G, 0.01, 0, UQ_Q4_ASYM, P2, S2, NULL), UQ_ERR_ARG);
    CHECK_STATUS(uq_q4_quantize_gptq_ex(W, R, C, C, H, G, 0.01, 0, UQ_Q4_ASYM, P2, S2), UQ_ERR_ARG);
    CHECK(strstr(uq_last_error(), "zero points") != NULL, "message: %s", uq_last_error());
    Z[7] = 16;
    CHECK_STATUS(uq_q4_dequantize_z(P, S, Z, R, C, G, D), UQ_ERR_RANGE);
    CHECK(strstr(uq_last_error(), "zero point 16 at row 1, group 2") != NULL, "message: %s", uq_last_error());
}

/* Float64 reference of the scale re-fit of one row: normal equations of min_s (w - A s)^T Hd (w - A s) over the
 * groups with a nonzero code, solved by Gaussian elimination with partial pivoting; other groups keep s_old. */
static void refit_reference(const float *w, const uint8_t *packed, const double *Hd, int C, int G, const float *s_old,
                            double *s_ref) {
    enum { MAXG = 16 };
    const int ng = (C + G - 1) / G;
    double M[MAXG][MAXG + 1];
    int act[MAXG], na = 0;
    double q[64];
    for (int c = 0; c < C; c++) q[c] = (double)((packed[c / 2] >> ((c & 1) * 4)) & 15) - 8.0;
    for (int g = 0; g < ng; g++) {
        s_ref[g] = s_old[g];
        int any = 0;
        for (int c = g * G; c < C && c < (g + 1) * G; c++) any |= q[c] != 0.0;
        if (any) act[na++] = g;
    }
    for (int i = 0; i < na; i++) {
        for (int j = 0; j < na; j++) {
            double v = 0;
            for (int c = act[i] * G; c < C && c < (act[i] + 1) * G; c++)
                for (int d = act[j] * G; d < C && d < (act[j] + 1) * G; d++) v += q[c] * Hd[c * C + d] * q[d];
            M[i][j] = v;
        }
        double v = 0;
        for (int c = act[i] * G; c < C && c < (act[i] + 1) * G; c++)
            for (int d = 0; d < C; d++) v += q[c] * Hd[c * C + d] * (double)w[d];
        M[i][na] = v;
    }
    for (int k = 0; k < na; k++) {
        int p = k;
        for (int i = k + 1; i < na; i++) p = fabs(M[i][k]) > fabs(M[p][k]) ? i : p;
        for (int j = 0; j <= na; j++) {
            double t = M[k][j];
            M[k][j] = M[p][j];
            M[p][j] = t;
        }
        for (int i = k + 1; i < na; i++) {
            double f = M[i][k] / M[k][k];
            for (int j = k; j <= na; j++) M[i][j] -= f * M[k][j];
        }
    }
    for (int k = na - 1; k >= 0; k--) {
        double v = M[k][na];
        for (int j = k + 1; j < na; j++) v -= M[k][j] * s_ref[act[j]];
        s_ref[act[k]] = v / M[k][k];
    }
}

/* Scale re-fit (uq_q4_refit_scales, uq_q4_quantize_gptq_refit) and UQ_Q4_FIXED_SCALES: the re-fitted scales equal the
 * float64 normal-equation solution (a short last group, an all-zero group keeping its scale), err is the damped
 * Hessian-weighted error, which never exceeds GPTQ's and falls with more passes; fixed scales reproduce GPTQ's own
 * codes; statuses. */
static void test_refit(void) {
    enum { R = 5, C = 37, T = 300, G = 8, NG = 5, RB = (C + 1) / 2 };
    static double X[T * C];
    float W[R * C], S[R * NG], S1[R * NG], S3[R * NG], D[R * C];
    uint8_t P[R * RB], P1[R * RB], P3[R * RB];
    double H[C * C], Hd[C * C], err[R], err1[R], err3[R], e0[R];
    unsigned long long s = 31;
    for (int i = 0; i < R * C; i++) W[i] = (float)uq_test_rand(&s);
    for (int c = 0; c < G; c++) W[c] = 0.0f; /* row 0, group 0: zeros */
    correlated_hessian(X, T, C, &s, H);
    for (int i = 0; i < C; i++) /* the full symmetric H (the functions read its lower triangle) */
        for (int j = i + 1; j < C; j++) H[i * C + j] = H[j * C + i];
    double mean = 0;
    for (int i = 0; i < C; i++) mean += H[i * C + i] / C;
    for (int i = 0; i < C * C; i++) Hd[i] = H[i] + (i % (C + 1) == 0 ? 0.01 * mean : 0.0);
    const int fl = UQ_Q4_MSE_SCALE | UQ_Q4_ACT_ORDER;
    CHECK_STATUS(uq_q4_quantize_gptq_ex(W, R, C, C, H, G, 0.01, 0, fl, P, S), UQ_OK);
    CHECK_STATUS(uq_q4_dequantize(P, S, R, C, G, D), UQ_OK);
    for (int r = 0; r < R; r++) e0[r] = output_error(W + r * C, D + r * C, Hd, 1, C);
    memcpy(S1, S, sizeof S);
    CHECK_STATUS(uq_q4_refit_scales(W, R, C, C, H, G, 0.01, P, S1, err), UQ_OK);
    CHECK_STATUS(uq_q4_dequantize(P, S1, R, C, G, D), UQ_OK);
    int ok = 1, better = 0;
    for (int r = 0; r < R; r++) {
        double ref[NG];
        refit_reference(W + r * C, P + r * RB, Hd, C, G, S + r * NG, ref);
        const double e = output_error(W + r * C, D + r * C, Hd, 1, C);
        for (int g = 0; g < NG; g++) ok &= fabs(S1[r * NG + g] - ref[g]) <= 1e-6 * fabs(ref[g]);
        ok &= fabs(err[r] - e) <= 1e-6 * e && e <= e0[r]; /* e, e0: float32 dequantization */
        better += e < 0.999 * e0[r];
    }
    CHECK(ok, "re-fitted scales equal the float64 normal equations; err is the damped Hessian-weighted error");
    CHECK(better >= 4, "the re-fit lowers the error of most rows (%d of %d)", better, R);
    CHECK(S[0] == 0.0f && S1[0] == 0.0f, "an all-zero group keeps its scale (%g)", (double)S1[0]);
    /* GPTQ + re-fit: one pass = GPTQ then the re-fit; three passes never worse per row */
    CHECK_STATUS(uq_q4_quantize_gptq_refit(W, R, C, C, H, G, 0.01, 0, fl, 1, P1, S1, err1), UQ_OK);
    ok = memcmp(P1, P, sizeof P) == 0;
    for (int r = 0; r < R; r++) ok &= err1[r] == err[r];
    CHECK(ok, "one pass is GPTQ followed by uq_q4_refit_scales");
    CHECK_STATUS(uq_q4_quantize_gptq_refit(W, R, C, C, H, G, 0.01, 0, fl, 3, P3, S3, err3), UQ_OK);
    CHECK_STATUS(uq_q4_dequantize(P3, S3, R, C, G, D), UQ_OK);
    ok = 1;
    double t1 = 0, t3 = 0;
    for (int r = 0; r < R; r++) {
        ok &= err3[r] <= err1[r] && fabs(err3[r] - output_error(W + r * C, D + r * C, Hd, 1, C)) <= 1e-6 * err3[r];
        t1 += err1[r];
        t3 += err3[r];
    }
    CHECK(ok, "three passes: per row never above one pass, err consistent with the output");
    CHECK(t3 < t1, "three passes lower the total error (%g vs %g)", t3, t1);
    /* UQ_Q4_FIXED_SCALES with GPTQ's own scales reproduces its codes (natural order and activation order) */
    for (int a = 0; a < 2; a++) {
        const int f0 = a ? UQ_Q4_ACT_ORDER : 0;
        CHECK_STATUS(uq_q4_quantize_gptq_ex(W, R, C, C, H, G, 0.01, 0, f0, P1, S1), UQ_OK);
        memcpy(S3, S1, sizeof S1);
        CHECK_STATUS(uq_q4_quantize_gptq_ex(W, R, C, C, H, G, 0.01, 0, f0 | UQ_Q4_FIXED_SCALES, P3, S3), UQ_OK);
        CHECK(memcmp(P1, P3, sizeof P1) == 0 && memcmp(S1, S3, sizeof S1) == 0,
              "fixed scales reproduce GPTQ's codes (act order %d)", a);
    }
    /* statuses */
    CHECK_STATUS(uq_q4_quantize_gptq_refit(W, R, C, C, H, G, 0.01, 0, fl, 0, P1, S1, NULL), UQ_ERR_ARG);
    CHECK_STATUS(uq_q4_quantize_gptq_refit(W, R, C, C, H, G, 0.01, 0, fl, 65, P1, S1, NULL), UQ_ERR_ARG);
    CHECK_STATUS(uq_q4_quantize_gptq_refit(W, R, C, C, H, G, 0.01, 0, UQ_Q4_ASYM, 1, P1, S1, NULL), UQ_ERR_ARG);
    CHECK_STATUS(uq_q4_quantize_gptq_refit(W, R, C, C, NULL, G, 0.01, 0, fl, 1, P1, S1, NULL), UQ_ERR_ARG);
    CHECK_STATUS(uq_q4_refit_scales(W, R, C, C, H, G, -1.0, P, S1, NULL), UQ_ERR_ARG);
    CHECK_STATUS(uq_q4_refit_scales(W, R, C, C, H, 0, 0.01, P, S1, NULL), UQ_ERR_ARG);
    S1[3] = NAN;
    CHECK_STATUS(uq_q4_refit_scales(W, R, C, C, H, G, 0.01, P, S1, NULL), UQ_ERR_NUMERIC);
    CHECK(strstr(uq_last_error(), "scale nan at row 0, group 3") != NULL, "message: %s", uq_last_error());
    S3[0] = -1.0f;
    CHECK_STATUS(uq_q4_quantize_gptq_ex(W, R, C, C, H, G, 0.01, 0, UQ_Q4_FIXED_SCALES, P3, S3), UQ_ERR_NUMERIC);
    CHECK_STATUS(uq_q4_quantize_gptq_z(W, R, C, C, H, G, 0.01, 0, UQ_Q4_FIXED_SCALES | UQ_Q4_ASYM, P3, S3, P1),
                 UQ_ERR_ARG);
    H[5] = NAN;
    H[5 * C] = NAN;
    CHECK_STATUS(uq_q4_refit_scales(W, R, C, C, H, G, 0.01, P, S, NULL), UQ_ERR_NUMERIC);
}

void test_quant(void) {
    test_rtn_hand();
    test_pack();
    test_rtn_bound();
    test_gptq();
    test_gptq_asym();
    test_refit();
}
