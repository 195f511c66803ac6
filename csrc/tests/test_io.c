/* test_io.c -- C tests of the io area (filled in by the area's implementation). */
#include "test.h"

void test_io(void) {}
