/* test_stats.c -- C tests of the stats area (filled in by the area's implementation). */
#include "test.h"

void test_stats(void) {}
