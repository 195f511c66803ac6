/* test_quant.c -- C tests of the quant area (filled in by the area's implementation). */
#include "test.h"

void test_quant(void) {}
