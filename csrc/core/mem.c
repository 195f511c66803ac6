/*
 * mem.c -- aligned allocation, overflow-checked sizes, finiteness checks and half-precision conversion.
 *
 * f16/bf16 -> f32 is exact; f32 -> f16/bf16 rounds to nearest even (NaN stays NaN, overflow gives Inf).
 */
#include "uniql.h"
#include "half.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define UQ_ALIGN 64

uq_status uq_alloc(size_t bytes, void **out) {
    if (!out) return uq_set_error(UQ_ERR_ARG, "uq_alloc: out is NULL");
    *out = NULL;
    size_t rounded = bytes == 0 ? UQ_ALIGN : bytes;
    if (rounded > SIZE_MAX - (UQ_ALIGN - 1))
        return uq_set_error(UQ_ERR_NOMEM, "cannot allocate %zu bytes", bytes);
    rounded = (rounded + UQ_ALIGN - 1) / UQ_ALIGN * UQ_ALIGN;
    void *p = aligned_alloc(UQ_ALIGN, rounded);
    if (!p) return uq_set_error(UQ_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
    *out = p;
    return UQ_OK;
}

uq_status uq_calloc(size_t bytes, void **out) {
    uq_status st = uq_alloc(bytes, out);
    if (st == UQ_OK) memset(*out, 0, bytes == 0 ? UQ_ALIGN : bytes);
    return st;
}

void uq_free(void *p) { free(p); }

uq_status uq_size_mul(int64_t a, int64_t b, size_t elem, size_t *out) {
    if (!out) return uq_set_error(UQ_ERR_ARG, "uq_size_mul: out is NULL");
    if (a < 0 || b < 0) return uq_set_error(UQ_ERR_RANGE, "negative dimension (%lld x %lld)", (long long)a, (long long)b);
    size_t r = (size_t)a;
    if (b != 0 && r > SIZE_MAX / (size_t)b) goto overflow;
    r *= (size_t)b;
    if (elem != 0 && r > SIZE_MAX / elem) goto overflow;
    *out = r * elem;
    return UQ_OK;
overflow:
    return uq_set_error(UQ_ERR_RANGE, "size %lld x %lld x %zu overflows", (long long)a, (long long)b, elem);
}

uq_status uq_check_finite_f32(const float *x, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return uq_set_error(UQ_ERR_NUMERIC, "%s contains %s at flat index %lld", what ? what : "input",
                                isnan(x[i]) ? "NaN" : "Inf", (long long)i);
    return UQ_OK;
}

uq_status uq_check_finite_f64(const double *x, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return uq_set_error(UQ_ERR_NUMERIC, "%s contains %s at flat index %lld", what ? what : "input",
                                isnan(x[i]) ? "NaN" : "Inf", (long long)i);
    return UQ_OK;
}

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static uint16_t float_to_half(float f) {
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* Inf or NaN */
        return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to Inf */
        return (uint16_t)(sign | 0x7c00u);
    if (absx < 0x38800000u) { /* subnormal or zero in half */
        /* value / 2^-24, rounded to nearest even, through float arithmetic (exact in this range) */
        float a = bits_f32(absx) * 16777216.0f;
        float r = rintf(a);
        return (uint16_t)(sign | (uint32_t)r);
    }
    uint32_t mant_odd = (absx >> 13) & 1u;
    absx += 0xfffu + mant_odd; /* round to nearest even on the 13 dropped bits */
    return (uint16_t)(sign | ((absx - 0x38000000u) >> 13));
}

uq_status uq_convert_f16_to_f32(const uint16_t *src, int64_t n, float *dst) {
    if ((!src || !dst) && n > 0) return uq_set_error(UQ_ERR_ARG, "NULL buffer");
    for (int64_t i = 0; i < n; i++) dst[i] = uq_h2f(src[i]);
    return UQ_OK;
}

uq_status uq_convert_bf16_to_f32(const uint16_t *src, int64_t n, float *dst) {
    if ((!src || !dst) && n > 0) return uq_set_error(UQ_ERR_ARG, "NULL buffer");
    for (int64_t i = 0; i < n; i++) dst[i] = bits_f32((uint32_t)src[i] << 16);
    return UQ_OK;
}

uq_status uq_convert_f32_to_f16(const float *src, int64_t n, uint16_t *dst) {
    if ((!src || !dst) && n > 0) return uq_set_error(UQ_ERR_ARG, "NULL buffer");
    for (int64_t i = 0; i < n; i++) dst[i] = float_to_half(src[i]);
    return UQ_OK;
}

uq_status uq_convert_f32_to_bf16(const float *src, int64_t n, uint16_t *dst) {
    if ((!src || !dst) && n > 0) return uq_set_error(UQ_ERR_ARG, "NULL buffer");
    for (int64_t i = 0; i < n; i++) {
        uint32_t x = f32_bits(src[i]);
        if ((x & 0x7fffffffu) > 0x7f800000u) { dst[i] = (uint16_t)((x >> 16) | 0x40u); continue; }
        x += 0x7fffu + ((x >> 16) & 1u);
        dst[i] = (uint16_t)(x >> 16);
    }
    return UQ_OK;
}
