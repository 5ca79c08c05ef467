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

/* e^x of fp32 x, evaluated in double and rounded once to fp32: k = rint(x / ln 2),
 * r = x - k ln 2 (ln 2 in two parts, the first with 32 bits: k·LN2_HI and the difference are
 * exact), a degree-11 Taylor polynomial of e^r (|r| <= ln 2 / 2: truncation 7e-15), times 2^k.
 * Within ~1e-14 of e^x before the rounding, so the correctly rounded fp32 but for rare ties at
 * that distance: glibc's expf (0.502 ulp) differs from it in ~1e-4 of the inputs, torch's
 * vector exp in a few %. The vector version (exp16) runs the same double operations in the
 * same order: the same bits for every fp32 input (checked for all in [-110, 95]). x is clamped
 * to [-150, 100] first (e^x is 0 or inf in fp32 beyond), NaN stays NaN. */
#define EXP_LOG2E 0x1.71547652b82fep0
#define EXP_LN2_HI 0x1.62e42feep-1
#define EXP_LN2_LO 0x1.a39ef35793c76p-33
#define EXP_TAYLOR(r, MUL, ADD)                                                                \
    ADD(MUL(ADD(MUL(ADD(MUL(ADD(MUL(ADD(MUL(ADD(MUL(ADD(MUL(ADD(MUL(ADD(MUL(ADD(MUL(ADD(MUL(  \
        C(1.0 / 39916800.0), r), C(1.0 / 3628800.0)), r), C(1.0 / 362880.0)), r),               \
        C(1.0 / 40320.0)), r), C(1.0 / 5040.0)), r), C(1.0 / 720.0)), r), C(1.0 / 120.0)), r),  \
        C(1.0 / 24.0)), r), C(1.0 / 6.0)), r), C(0.5)), r), C(1.0)), r), C(1.0))

static inline float exp_f32(float x) {
    if (x != x) return x;
    double v = x < -150.0f ? -150.0 : (x > 100.0f ? 100.0 : (double)x);
    double k = rint(v * EXP_LOG2E), r = (v - k * EXP_LN2_HI) - k * EXP_LN2_LO;
#define C(c) (c)
#define MUL(a, b) ((a) * (b))
#define ADD(a, b) ((a) + (b))
    double p = EXP_TAYLOR(r, MUL, ADD);
#undef C
#undef MUL
#undef ADD
    return (float)ldexp(p, (int)k);
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

/* Four 16-lane partial sums -> their four totals. */
static inline __m128 sum4_ps(__m512 a, __m512 b, __m512 c, __m512 d) {
    /* quads [a0+a2, a1+a3, b0+b2, b1+b3], the same for c, d */
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
    /* quad q: four partial sums of input q */
    __m512 q = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
    q = _mm512_add_ps(q, _mm512_permute_ps(q, 0x4E));
    q = _mm512_add_ps(q, _mm512_permute_ps(q, 0xB1)); /* every lane of quad q: total q */
    const __m512i firsts = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(firsts, q));
}

/* the fp32 values of f32x16_to_bf16 */
static inline __m512 round_bf16x16(__m512 v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(f32x16_to_bf16(v)), 16));
}

static inline __m512d exp8_f64(__m512d v) {
    /* max/min return their second operand for NaN: NaN kept */
    v = _mm512_min_pd(_mm512_set1_pd(100.0), _mm512_max_pd(_mm512_set1_pd(-150.0), v));
    __m512d k = _mm512_roundscale_pd(_mm512_mul_pd(v, _mm512_set1_pd(EXP_LOG2E)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_sub_pd(_mm512_sub_pd(v, _mm512_mul_pd(k, _mm512_set1_pd(EXP_LN2_HI))),
                              _mm512_mul_pd(k, _mm512_set1_pd(EXP_LN2_LO)));
#define C(c) _mm512_set1_pd(c)
    __m512d p = EXP_TAYLOR(r, _mm512_mul_pd, _mm512_add_pd);
#undef C
    return _mm512_scalef_pd(p, k);
}

static inline __m512 exp16(__m512 x) {
    __m512d lo = exp8_f64(_mm512_cvtps_pd(_mm512_castps512_ps256(x)));
    __m256 upper = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1));
    __m512d hi = exp8_f64(_mm512_cvtps_pd(upper));
    __m512d l = _mm512_castps_pd(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)));
    return _mm512_castpd_ps(_mm512_insertf64x4(l, _mm256_castps_pd(_mm512_cvtpd_ps(hi)), 1));
}
#endif

#endif
