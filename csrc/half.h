/*
 * half.h: portable scalar conversions between float32 and the 16-bit
 * storage types (IEEE binary16 and bfloat16), bit-exact with the hardware
 * instructions: round to nearest even, overflow to infinity, subnormals
 * kept, NaN kept a (quiet) NaN.  Used where no conversion instruction is
 * available (the portable kernel, the driver's split-KV merge).
 */
#ifndef FA_HALF_H
#define FA_HALF_H

#include <stdint.h>
#include <string.h>

static inline float fa_bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t fa_f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float fa_half_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) /* inf or NaN (quiet the NaN, keep its payload) */
        return fa_bits_to_f32(sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0));
    if (exp != 0) return fa_bits_to_f32(sign | ((exp + 112) << 23) | (man << 13));
    /* zero or subnormal: man * 2^-24, exact in float32 */
    const float mag = (float)man * 5.9604644775390625e-8f;
    return sign ? -mag : mag;
}

static inline uint16_t fa_f32_to_half(float f)
{
    const uint32_t u = fa_f32_to_bits(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds past 65504: inf */
    if (a < 0x38800000u) {
        /* below the smallest normal half: round a * 2^24 to an integer
         * (nearest even); float arithmetic does exactly that here */
        const float mag = fa_bits_to_f32(a) * 16777216.0f;
        const float r = (mag + 8388608.0f) - 8388608.0f; /* RNE to integer */
        return (uint16_t)(sign | (uint16_t)r);
    }
    /* normal: rebias the exponent, round the mantissa to 10 bits (RNE;
     * a carry into the exponent is the right result) */
    const uint32_t r = a + 0x0fffu + ((a >> 13) & 1u) - (112u << 23);
    return (uint16_t)(sign | (r >> 13));
}

static inline float fa_bf16_to_f32(uint16_t h) { return fa_bits_to_f32((uint32_t)h << 16); }

static inline uint16_t fa_f32_to_bf16(float f)
{
    const uint32_t u = fa_f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#endif /* FA_HALF_H */
