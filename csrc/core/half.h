/*
 * half.h -- the float value of IEEE binary16 bits, exactly (every half is a float), inline: the one definition behind
 * uq_convert_f16_to_f32 (mem.c) and the kernels' reference paths (the scalar twin of F16C vcvtph2ps, for the int4 /
 * int8 group scales and the float16 KV cache the runtime keeps).
 */
#ifndef UQ_HALF_H
#define UQ_HALF_H

#include <stdint.h>

static inline float uq_h2f(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    union { uint32_t u; float f; } v;
    if (e == 0) { /* zero or subnormal: man * 2^-24, exact in float */
        v.f = (float)man * 5.9604644775390625e-08f;
        v.u |= sign;
        return v.f;
    }
    v.u = e == 31 ? sign | 0x7f800000u | (man << 13) : sign | ((e + 112u) << 23) | (man << 13);
    return v.f;
}

#endif
