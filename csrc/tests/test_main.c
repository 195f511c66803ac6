/* test_main.c -- C test runner of libuniql; its last line is "N passed, N failed". */
#include "test.h"

int uq_test_passed = 0, uq_test_failed = 0;

int main(void) {
    struct { const char *name; void (*fn)(void); } suites[] = {
        {"core", test_core}, {"stats", test_stats}, {"quant", test_quant}, {"io", test_io}, {"runtime", test_runtime}, {"compress", test_compress}, {"ssm", test_ssm}, {"r16", test_r16}, {"batch", test_batch}, {"q8w", test_q8w}, {"pool", test_pool}, {"kv16", test_kv16},
    };
    for (size_t i = 0; i < sizeof suites / sizeof suites[0]; i++) {
        int before = uq_test_failed;
        suites[i].fn();
        fprintf(stderr, "suite %-8s %s\n", suites[i].name, uq_test_failed == before ? "ok" : "FAILED");
    }
    printf("%d passed, %d failed\n", uq_test_passed, uq_test_failed);
    return uq_test_failed ? 1 : 0;
}
