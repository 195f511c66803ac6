/* test_ssm.c -- C tests of the Mamba2 / hybrid runtime. */
#include "test.h"

void test_ssm(void) {}
