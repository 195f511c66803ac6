/* test_q8w.c -- int8 weights (UQ_W_Q8): the quantizer's documented formula, the linear on every kernel path
 * against a float64 reference of the dequantized weight, bit-identity across paths and under truncation
 * (segments, partial groups, any T), the embedding gather, and the statuses of invalid weights. */
#include "test.h"

static double q8_ref_dot(const int8_t *q, const uint16_t *s, int64_t cols, int64_t nseg, int64_t group, int64_t keep,
                         const float *x) {
    int64_t seg = cols / nseg, gps = (seg + group - 1) / group;
    double acc = 0.0;
    for (int64_t sg = 0; sg < nseg; sg++)
        for (int64_t c = 0; c < keep; c++)
            acc += (double)q[sg * seg + c] * (double)uq_test_h2f(s[sg * gps + c / group]) * (double)x[sg * keep + c];
    return acc;
}

/* W quantized per segment (groups restart at each segment); scales rounded to float16 bits as the runtime keeps
 * them (the artifact's storage). */
static void q8_quant_seg(const float *W, int64_t rows, int64_t cols, int64_t nseg, int64_t group, int8_t *q,
                         uint16_t *s) {
    int64_t seg = cols / nseg, gps = (seg + group - 1) / group;
    for (int64_t sg = 0; sg < nseg; sg++) {
        /* quantize the segment's columns as a (rows, seg) matrix with leading dimension cols */
        int8_t *qs = malloc((size_t)(rows * seg));
        float *ss = malloc((size_t)(rows * gps) * sizeof(float));
        CHECK_STATUS(uq_q8_quantize_rtn(W + sg * seg, rows, seg, cols, group, qs, ss), UQ_OK);
        for (int64_t r = 0; r < rows; r++) {
            memcpy(q + r * cols + sg * seg, qs + r * seg, (size_t)seg);
            for (int64_t k = 0; k < gps; k++) s[r * nseg * gps + sg * gps + k] = uq_test_f2h(ss[r * gps + k]);
        }
        free(qs);
        free(ss);
    }
}

static void test_quantizer(void) {
    unsigned long long seed = 11;
    enum { R = 5, C = 37, G = 8 };
    float W[R * C], s[R * 5];
    int8_t q[R * C];
    uq_test_fill(W, R * C, &seed, 2.0);
    for (int c = 0; c < G; c++) W[c] = 0.0f; /* a zero group: scale 0, codes 0 */
    CHECK_STATUS(uq_q8_quantize_rtn(W, R, C, C, G, q, s), UQ_OK);
    int ok = 1;
    for (int r = 0; r < R; r++)
        for (int g = 0; g < 5; g++) {
            double amax = 0;
            for (int c = g * G; c < C && c < (g + 1) * G; c++) amax = fmax(amax, fabs(W[r * C + c]));
            ok &= s[r * 5 + g] == (float)(amax / 127.0);
            for (int c = g * G; c < C && c < (g + 1) * G; c++) {
                double want = s[r * 5 + g] > 0 ? rint((double)W[r * C + c] / s[r * 5 + g]) : 0.0;
                ok &= q[r * C + c] == (int8_t)want;
                ok &= fabs(W[r * C + c] - q[r * C + c] * (double)s[r * 5 + g]) <= 0.5 * s[r * 5 + g] * (1 + 1e-6);
            }
        }
    CHECK(ok, "int8 RTN follows the documented formula within half a step");
    CHECK(s[0] == 0.0f && q[0] == 0, "zero group: scale 0, code 0");
    W[3] = NAN;
    CHECK_STATUS(uq_q8_quantize_rtn(W, R, C, C, G, q, s), UQ_ERR_NUMERIC);
    CHECK_STATUS(uq_q8_quantize_rtn(W, R, C, C - 1, G, q, s), UQ_ERR_ARG);
    CHECK_STATUS(uq_q8_quantize_rtn(W, R, C, C, 0, q, s), UQ_ERR_ARG);
    CHECK_STATUS(uq_q8_quantize_rtn(NULL, R, C, C, G, q, s), UQ_ERR_ARG);
}

static void test_linear(void) {
    const char *paths[] = {"ref", "avx2", "avx512"};
    unsigned long long seed = 5;
    /* (rows, cols, nseg_in, group): one segment with a short last group; head segments like o_proj */
    const int64_t shapes[][4] = {{37, 150, 1, 32}, {24, 96, 4, 8}, {19, 72, 3, 24}, {8, 40, 1, 40}};
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++) {
        const int64_t R = shapes[sh][0], C = shapes[sh][1], NS = shapes[sh][2], G = shapes[sh][3];
        const int64_t seg = C / NS, gps = (seg + G - 1) / G;
        float *W = malloc((size_t)(R * C) * sizeof(float));
        uint16_t *s = malloc((size_t)(R * NS * gps) * sizeof(uint16_t));
        float *b = malloc((size_t)R * sizeof(float));
        int8_t *q = malloc((size_t)(R * C));
        uq_test_fill(W, R * C, &seed, 1.0);
        uq_test_fill(b, R, &seed, 1.0);
        q8_quant_seg(W, R, C, NS, G, q, s);
        uq_linear L = {.kind = UQ_W_Q8, .rows = R, .cols = C, .packed = (const uint8_t *)q, .scales = s, .group = G,
                       .scale_cols = NS * gps, .bias = b};
        const int64_t keeps[] = {seg, seg - 3 > 0 ? seg - 3 : 1, G / 2 > 0 ? G / 2 : 1, 1};
        for (size_t ki = 0; ki < 4; ki++) {
            const int64_t keep = keeps[ki], keep_out = R - 2 * (int64_t)ki > 0 ? R - 2 * (int64_t)ki : 1;
            for (int64_t T = 1; T <= 9; T += 4) {
                float *x = malloc((size_t)(T * NS * keep) * sizeof(float));
                float *y0 = malloc((size_t)(T * keep_out) * sizeof(float)), *y = malloc((size_t)(T * keep_out) * sizeof(float));
                uq_test_fill(x, T * NS * keep, &seed, 1.0);
                int have0 = 0;
                for (int p = 0; p < 3; p++) {
                    int avail = 0;
                    if (uq_kernels_available(paths[p], &avail) != UQ_OK || !avail) continue;
                    CHECK_STATUS(uq_kernels_set(paths[p]), UQ_OK);
                    CHECK_STATUS(uq_linear_forward(&L, x, T, 1, keep_out, NS, keep, have0 ? y : y0), UQ_OK);
                    if (!have0) {
                        double err = 0, mag = 0;
                        for (int64_t t = 0; t < T; t++)
                            for (int64_t o = 0; o < keep_out; o++) {
                                double r = q8_ref_dot(q + o * C, s + o * NS * gps, C, NS, G, keep, x + t * NS * keep) + b[o];
                                err = fmax(err, fabs(r - y0[t * keep_out + o]));
                                mag = fmax(mag, fabs(r));
                            }
                        CHECK(err <= 1e-5 * (mag + 1), "path %s shape %zu keep %lld T %lld: error %g vs float64",
                              paths[p], sh, (long long)keep, (long long)T, err);
                        have0 = 1;
                    } else {
                        CHECK(!memcmp(y, y0, (size_t)(T * keep_out) * sizeof(float)),
                              "path %s bit-identical to ref (shape %zu keep %lld T %lld)", paths[p], sh,
                              (long long)keep, (long long)T);
                    }
                }
                /* a truncated copy (the kept prefixes only) gives the same bits as the selection */
                const int64_t kg = (keep + G - 1) / G;
                int8_t *qt = malloc((size_t)(keep_out * NS * keep));
                uint16_t *st = malloc((size_t)(keep_out * NS * kg) * sizeof(uint16_t));
                for (int64_t r = 0; r < keep_out; r++)
                    for (int64_t sg = 0; sg < NS; sg++) {
                        memcpy(qt + (r * NS + sg) * keep, q + r * C + sg * seg, (size_t)keep);
                        memcpy(st + (r * NS + sg) * kg, s + r * NS * gps + sg * gps, (size_t)kg * sizeof(uint16_t));
                    }
                uq_linear Lt = {.kind = UQ_W_Q8, .rows = keep_out, .cols = NS * keep, .packed = (const uint8_t *)qt,
                                .scales = st, .group = G, .scale_cols = NS * kg, .bias = b};
                CHECK_STATUS(uq_kernels_set("auto"), UQ_OK);
                CHECK_STATUS(uq_linear_forward(&L, x, T, 1, keep_out, NS, keep, y0), UQ_OK);
                CHECK_STATUS(uq_linear_forward(&Lt, x, T, 1, keep_out, NS, keep, y), UQ_OK);
                CHECK(!memcmp(y, y0, (size_t)(T * keep_out) * sizeof(float)),
                      "truncated int8 weight == selection (shape %zu keep %lld T %lld)", sh, (long long)keep, (long long)T);
                /* the float64 reference entry point agrees too */
                CHECK_STATUS(uq_linear_forward_ref(&L, x, T, 1, keep_out, NS, keep, y), UQ_OK);
                double e = 0;
                for (int64_t i = 0; i < T * keep_out; i++) e = fmax(e, fabs(y[i] - y0[i]));
                CHECK(e <= 1e-4, "uq_linear_forward_ref within 1e-4 (%g)", e);
                free(qt);
                free(st);
                free(x);
                free(y0);
                free(y);
            }
        }
        /* invalid weights */
        uq_linear bad = L;
        bad.scale_cols = NS * gps + 1;
        float x1[256] = {0}, y1[64];
        CHECK_STATUS(uq_linear_forward(&bad, x1, 1, 1, R, NS, seg, y1), UQ_ERR_SHAPE);
        bad = L;
        bad.packed = NULL;
        CHECK_STATUS(uq_linear_forward(&bad, x1, 1, 1, R, NS, seg, y1), UQ_ERR_ARG);
        bad = L;
        bad.group = 0;
        CHECK_STATUS(uq_linear_forward(&bad, x1, 1, 1, R, NS, seg, y1), UQ_ERR_ARG);
        free(W);
        free(s);
        free(b);
        free(q);
    }
    CHECK_STATUS(uq_kernels_set("auto"), UQ_OK);
}

void test_q8w(void) {
    test_quantizer();
    test_linear();
}
