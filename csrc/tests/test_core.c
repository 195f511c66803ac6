/* test_core.c -- status/error plumbing, allocation, size overflow, finiteness and half conversions. */
#include "test.h"

void test_core(void) {
    CHECK(strcmp(uq_status_name(UQ_ERR_SHAPE), "UQ_ERR_SHAPE") == 0, "status name");
    uq_clear_error();
    CHECK(uq_last_error()[0] == '\0', "cleared");
    CHECK(uq_set_error(UQ_ERR_ARG, "n=%d", 3) == UQ_ERR_ARG, "set_error returns status");
    CHECK(strcmp(uq_last_error(), "n=3") == 0, "message '%s'", uq_last_error());

    void *p = NULL;
    CHECK_STATUS(uq_alloc(100, &p), UQ_OK);
    CHECK(p != NULL && ((uintptr_t)p % 64) == 0, "aligned");
    uq_free(p);
    uq_free(NULL);
    CHECK_STATUS(uq_alloc(SIZE_MAX, &p), UQ_ERR_NOMEM);
    CHECK(p == NULL, "NULL on failure");

    size_t sz = 0;
    CHECK_STATUS(uq_size_mul(1000, 1000, 4, &sz), UQ_OK);
    CHECK(sz == 4000000, "size %zu", sz);
    CHECK_STATUS(uq_size_mul(INT64_MAX, 4, 8, &sz), UQ_ERR_RANGE);
    CHECK_STATUS(uq_size_mul(-1, 4, 8, &sz), UQ_ERR_RANGE);

    float f[3] = {1.0f, NAN, 2.0f};
    CHECK_STATUS(uq_check_finite_f32(f, 3, "W"), UQ_ERR_NUMERIC);
    CHECK(strstr(uq_last_error(), "W") && strstr(uq_last_error(), "index 1"), "msg '%s'", uq_last_error());
    CHECK_STATUS(uq_check_finite_f32(f, 1, "W"), UQ_OK);

    /* half: every finite f16 value round-trips through f32 exactly */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t in = (uint16_t)h, back = 0;
        float v;
        uq_convert_f16_to_f32(&in, 1, &v);
        uq_convert_f32_to_f16(&v, 1, &back);
        if (isnan(v)) { if ((back & 0x7c00) != 0x7c00 || !(back & 0x3ff)) bad++; }
        else if (back != in) bad++;
    }
    CHECK(bad == 0, "%d f16 values do not round-trip", bad);
    float v = 1.0f + 1.0f / 2048.0f; /* exactly halfway between two f16 values: ties to even -> 1.0 */
    uint16_t h16;
    uq_convert_f32_to_f16(&v, 1, &h16);
    CHECK(h16 == 0x3c00, "tie to even 0x%04x", h16);
    v = 1e6f;
    uq_convert_f32_to_f16(&v, 1, &h16);
    CHECK(h16 == 0x7c00, "overflow to inf 0x%04x", h16);
    uint16_t b16;
    v = 3.140625f;
    uq_convert_f32_to_bf16(&v, 1, &b16);
    float w;
    uq_convert_bf16_to_f32(&b16, 1, &w);
    CHECK(w == 3.140625f, "bf16 exact %g", w);
}
