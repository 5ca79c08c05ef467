/* Scalar helpers shared by the C kernels: bf16 and fp32 bits, REF's power-of-two scales and
 * the FP8 e4m3 / FP4 e2m1 grid roundings, written to give the torch references' values bit
 * for bit (see kernels/quant.py and kernels/formats.py). */
#ifndef DSV4_COMMON_H
#define DSV4_COMMON_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t bits_of_f32(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float bf16_to_f32(uint16_t v) { return f32_from_bits((uint32_t)v << 16); }

/* fp32 -> bf16, round to nearest even (torch's `.to(torch.bfloat16)`); NaN stays NaN. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u = bits_of_f32(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* The value an fp32 takes after a round trip through bf16. */
static inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

/* Smallest power of two >= x for positive fp32 x, clamped to 2^-126..2^127
 * (formats.pow2_ceil: add an all-ones mantissa, clear it). */
static inline float pow2_ceil_f32(float x) {
    int32_t b = (int32_t)((bits_of_f32(x) + 0x7fffffu) & ~0x7fffffu);
    if (b < 0x00800000) b = 0x00800000;
    if (b > 0x7f000000) b = 0x7f000000;
    return f32_from_bits((uint32_t)b);
}

/* 2^floor(log2|v|) for finite v (0 for 0 and subnormals). */
static inline float floor_pow2_f32(float v) { return f32_from_bits(bits_of_f32(v) & 0x7f800000u); }

/* v (already clamped to ±448) rounded to the e4m3 grid, ties to even. */
static inline float e4m3_round(float v) {
    float sp = floor_pow2_f32(v) * 0.125f;
    if (sp < 0x1p-9f) sp = 0x1p-9f;
    return rintf(v / sp) * sp;
}

/* v (already clamped to ±6) rounded to the e2m1 grid, ties to even. */
static inline float e2m1_round(float v) {
    float sp = floor_pow2_f32(v) * 0.5f;
    if (sp < 0.5f) sp = 0.5f;
    return rintf(v / sp) * sp;
}

#define DSV4_FP8_MAX 448.0f
#define DSV4_FP8_AMAX_FLOOR 1e-4f
#define DSV4_FP4_MAX 6.0f

/* REF's FP8 activation quantization of one block, dequantized in place:
 * s = pow2_ceil(max(amax, 1e-4) * (1/448)), x = e4m3(clamp(x/s, ±448)) * s.
 * Returns s. (quant.act_quant_values, bit for bit.) */
static inline float fp8_block_round_trip(float *x, int64_t n) {
    float amax = 0.0f;
    for (int64_t i = 0; i < n; i++) { float a = fabsf(x[i]); amax = a > amax ? a : amax; }
    if (amax < DSV4_FP8_AMAX_FLOOR) amax = DSV4_FP8_AMAX_FLOOR;
    const float inv448 = (float)(1.0 / 448.0);
    float s = pow2_ceil_f32(amax * inv448);
    for (int64_t i = 0; i < n; i++) {
        float v = x[i] / s;
        v = v < -DSV4_FP8_MAX ? -DSV4_FP8_MAX : (v > DSV4_FP8_MAX ? DSV4_FP8_MAX : v);
        x[i] = e4m3_round(v) * s;
    }
    return s;
}

/* REF's FP4 simulation of one block (quant.fp4_act_quant_dequant_ref), in place. */
static inline void fp4_block_round_trip(float *x, int64_t n) {
    float amax = 0.0f;
    for (int64_t i = 0; i < n; i++) { float a = fabsf(x[i]); amax = a > amax ? a : amax; }
    const float floor4 = 6.0f * 0x1p-126f;
    if (amax < floor4) amax = floor4;
    float s = pow2_ceil_f32(amax / DSV4_FP4_MAX);
    for (int64_t i = 0; i < n; i++) {
        float v = x[i] / s;
        v = v < -DSV4_FP4_MAX ? -DSV4_FP4_MAX : (v > DSV4_FP4_MAX ? DSV4_FP4_MAX : v);
        x[i] = e2m1_round(v) * s;
    }
}

/* e4m3 byte -> its value / 256 (exponent bias 7; exponent 0 is subnormal). */
static inline float e4m3_div256_scalar(uint8_t b) {
    int e = (b >> 3) & 0xf, m = b & 7;
    float v = e ? ldexpf(1.0f + m / 8.0f, e - 7) : ldexpf(m / 8.0f, -6);
    return ((b & 0x80) ? -v : v) * 0x1p-8f;
}

#ifdef __AVX512F__
#include <immintrin.h>

/* 16 bf16 -> 16 fp32 (a shift of the bits). */
static inline __m512 load_bf16x16(const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* 16 e4m3 bytes -> their values / 256 as fp32: the byte's bits moved into an fp16 (sign to
 * bit 15, exponent and mantissa shifted left by 7) are the value times 2^-8 (subnormals
 * included), and the fp16 -> fp32 conversion is exact. */
static inline __m512 load_e4m3x16_div256(const uint8_t *p) {
    __m128i b = _mm_loadu_si128((const __m128i *)p);
    __m256i w = _mm256_cvtepu8_epi16(b);
    __m256i mag = _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x7f)), 7);
    __m256i sign = _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x80)), 8);
    return _mm512_cvtph_ps(_mm256_or_si256(mag, sign));
}

/* 32 e4m3 bytes -> their values / 256 as two fp32 vectors (the fp16 trick of
 * load_e4m3x16_div256 on 32 lanes at once). */
static inline void load_e4m3x32_div256(const uint8_t *p, __m512 *lo, __m512 *hi) {
    __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)p));
    __m512i mag = _mm512_slli_epi16(_mm512_and_si512(w, _mm512_set1_epi16(0x7f)), 7);
    __m512i sign = _mm512_slli_epi16(_mm512_and_si512(w, _mm512_set1_epi16(0x80)), 8);
    __m512i h = _mm512_or_si512(mag, sign);
    *lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
    *hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
}

/* 16 fp32 -> 16 bf16 bit patterns, rounded to nearest even (NaN kept, quiet): f32_to_bf16 of
 * each lane. */
static inline __m256i f32x16_to_bf16(__m512 v) {
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
    __m512i mag = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
    __mmask16 nan = _mm512_cmpgt_epu32_mask(mag, _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x400000));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

/* the fp32 values of f32x16_to_bf16 */
static inline __m512 round_bf16x16(__m512 v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(f32x16_to_bf16(v)), 16));
}
#endif

#endif
