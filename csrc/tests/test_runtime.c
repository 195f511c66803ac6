/* test_runtime.c -- C tests of the runtime area (filled in by the area's implementation). */
#include "test.h"

void test_runtime(void) {}
