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

void test_core(void);
void test_stats(void);
void test_quant(void);
void test_io(void);
void test_runtime(void);
void test_compress(void);
void test_ssm(void);
void test_r16(void);

#endif
