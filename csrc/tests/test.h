/* test.h -- the tiny assertion framework of the C test runner (counts checks, never aborts). */
#ifndef UQ_TEST_H
#define UQ_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "uniql.h"

extern int uq_test_passed, uq_test_failed;

#define CHECK(cond, ...)                                                                               \
    do {                                                                                               \
        if (cond) {                                                                                    \
            uq_test_passed++;                                                                          \
        } else {                                                                                       \
            uq_test_failed++;                                                                          \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                            \
            fprintf(stderr, __VA_ARGS__);                                                              \
            fprintf(stderr, " [last error: %s]\n", uq_last_error());                                    \
        }                                                                                              \
    } while (0)

/* Checks a status equals the expected one and, on failure paths, that a message was set. */
#define CHECK_STATUS(expr, want)                                                                       \
    do {                                                                                               \
        uq_clear_error();                                                                              \
        uq_status st_ = (expr);                                                                        \
        CHECK(st_ == (want), "got %s, want %s", uq_status_name(st_), uq_status_name(want));             \
        if ((want) != UQ_OK) CHECK(uq_last_error()[0] != '\0', "no error message for %s", #expr);       \
    } while (0)

/* Deterministic uniform(-1, 1) generator (xorshift64*). */
static inline double uq_test_rand(unsigned long long *s) {
    *s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
    return (double)((*s * 2685821657736338717ULL) >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

/* a[0..n) = uniform(-scale, scale) from uq_test_rand. */
static inline void uq_test_fill(float *a, int64_t n, unsigned long long *s, double scale) {
    for (int64_t i = 0; i < n; i++) a[i] = (float)(uq_test_rand(s) * scale);
}

/* The float value of float16 bits h (the runtime keeps int4 / int8 scales as float16 bits). */
static inline float uq_test_h2f(uint16_t h) {
    float f;
    (void)uq_convert_f16_to_f32(&h, 1, &f);
    return f;
}
/* The float16 bits of the float16 value nearest to f. */
static inline uint16_t uq_test_f2h(float f) {
    uint16_t h;
    (void)uq_convert_f32_to_f16(&f, 1, &h);
    return h;
}

/* W (rows, cols) quantized with the documented formula into packed + per-segment scales (float16 bits, as the
 * runtime keeps them: s = fl16(max|w| / 7.5), codes from that s). */
static inline void uq_test_q4_quant_seg(const float *W, int64_t rows, int64_t cols, int64_t nseg, int64_t group, uint8_t *packed,
                                        uint16_t *scales) {
    int64_t seg = cols / nseg, gps = (seg + group - 1) / group, rb = UQ_Q4_ROW_BYTES(cols);
    memset(packed, 0x88, (size_t)(rows * rb));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t s = 0; s < nseg; s++)
            for (int64_t g = 0; g < gps; g++) {
                int64_t c0 = s * seg + g * group, c1 = c0 + group < (s + 1) * seg ? c0 + group : (s + 1) * seg;
                float mx = 0;
                for (int64_t c = c0; c < c1; c++) mx = fabsf(W[r * cols + c]) > mx ? fabsf(W[r * cols + c]) : mx;
                const uint16_t sh = uq_test_f2h(mx / 7.5f);
                const float sc = uq_test_h2f(sh);
                scales[r * nseg * gps + s * gps + g] = sh;
                for (int64_t c = c0; c < c1; c++) {
                    int q = sc == 0 ? 8 : (int)rintf(W[r * cols + c] / sc) + 8;
                    q = q < 0 ? 0 : q > 15 ? 15 : q;
                    uint8_t *b = packed + r * rb + c / 2;
                    *b = (c & 1) ? (uint8_t)((*b & 0x0F) | (q << 4)) : (uint8_t)((*b & 0xF0) | q);
                }
            }
}

/* *r16 = the R16 descriptor of the row-major int4 weight rm repacked into caller buffers pr / sr (sizes from
 * uq_q4_r16_size) for segments (nso, nsi): same shape, group, scale columns and bias. Status of the repack. */
static inline uq_status uq_test_r16_of(const uq_linear *rm, int64_t nso, int64_t nsi, uint8_t *pr, uint16_t *sr,
                                       uq_linear *r16) {
    uq_status st = uq_q4_repack_r16(rm, nso, nsi, pr, sr);
    if (st != UQ_OK) return st;
    *r16 = *rm;
    r16->layout = UQ_Q4_R16;
    r16->packed = pr;
    r16->scales = sr;
    r16->nseg_out = nso;
    r16->nseg_in = nsi;
    return UQ_OK;
}

void test_core(void);
void test_stats(void);
void test_quant(void);
void test_io(void);
void test_runtime(void);
void test_compress(void);
void test_ssm(void);
void test_r16(void);
void test_batch(void);
void test_q8w(void);
void test_pool(void);
void test_kv16(void);

#endif
