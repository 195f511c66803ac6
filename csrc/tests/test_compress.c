/* test_compress.c -- C tests of the compress (sorting scores, QA-SVD, allocation) area. */
#include "test.h"

void test_compress(void) {}
