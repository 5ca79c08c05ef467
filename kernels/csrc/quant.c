/* REF's activation quantization round trips (kernels/quant.py), bit for bit, and the indexer's
 * Hadamard rotation fused with the FP4 one (engine/sparse_indexer.py):
 *
 *  - quant_fp8_round_trip: per block, s = pow2_ceil(max(amax, 1e-4) * fp32(1/448)),
 *    x <- e4m3(clamp(x/s, +-448)) * s (act_quant_values / act_quant_dequant);
 *  - quant_fp4_round_trip: s = pow2_ceil(max(amax, 6*2^-126) / 6), x <- e2m1(clamp(x/s, +-6)) * s
 *    (fp4_act_quant_dequant);
 *  - quant_hadamard_fp4: per row of n (a power of two), the Walsh-Hadamard sums, times
 *    n^-1/2, cast to the activation dtype, then optionally the FP4 round trip of that value.
 *
 * Activations are fp32 or bf16 (uint16 bit patterns); outputs are written contiguously.
 *
 * The quantization steps are the references' IEEE operations, rearranged only where that is
 * exact: s and the grid spacings are powers of two, so x/s equals x*(1/s) (1/s is exact, a
 * subnormal 2^-127 included) and the grid rounding rint(v/sp)*sp is a product by 1/sp, taken
 * from the bits. Only the Hadamard sums run in another order than the reference's matmul
 * (butterflies: each output is still a sum of +-x_j in fp32). */
#include <stdint.h>

#include "common.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define MAX_BLOCK 4096 /* quantization blocks and Hadamard rows, held in a stack buffer */

/* 1/p for p = 2^k with a normal reciprocal (exponent field 1..253): from the bits. */
static inline float recip_pow2(float p) { return f32_from_bits(0x7f000000u - bits_of_f32(p)); }

#define INLINE static inline __attribute__((always_inline))

/* Element i of an activation row (bf16 bits or fp32) as fp32, and its store. */
INLINE float load_act(const void *x, int64_t i, int bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)x)[i]) : ((const float *)x)[i];
}
INLINE void store_act(void *y, int64_t i, float v, int bf16) {
    if (bf16)
        ((uint16_t *)y)[i] = f32_to_bf16(v);
    else
        ((float *)y)[i] = v;
}

/* The round trip of one element given its block's scale s and 1/s (exact: s is a power of
 * two): v = clamp(x/s, +-lim); the grid spacing at v is 2^floor(log2|v|) times sp_mul (an
 * eighth for e4m3, a half for e2m1), at least min_sp (the subnormal / lowest spacing); v is
 * rounded half to even on it (v / sp exact), times s. The clamps are one-sided selects so
 * that they compile to min / max (a NaN stays NaN, as in torch's clamp). */
INLINE float elem_round_trip(float x, float s, float inv_s, float lim, float sp_mul,
                             float min_sp) {
    float v = x * inv_s;
    v = v < -lim ? -lim : v;
    v = v > lim ? lim : v;
    float sp = floor_pow2_f32(v) * sp_mul;
    sp = sp < min_sp ? min_sp : sp;
    return rintf(v * recip_pow2(sp)) * sp * s;
}

#ifdef __AVX512F__
INLINE __m512 load16(const void *x, int64_t i, int bf16) {
    return bf16 ? load_bf16x16((const uint16_t *)x + i) : _mm512_loadu_ps((const float *)x + i);
}

/* Stores 16 fp32 as fp32, or as bf16 rounded to nearest even (f32_to_bf16, NaN included). */
INLINE void store16(void *y, int64_t i, __m512 v, int bf16) {
    if (!bf16) {
        _mm512_storeu_ps((float *)y + i, v);
        return;
    }
    __m512i u = _mm512_castps_si512(v), one = _mm512_set1_epi32(1);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd));
    r = _mm512_srli_epi32(r, 16);
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    _mm256_storeu_si256((__m256i *)((uint16_t *)y + i), _mm512_cvtepi32_epi16(r));
}

/* The max of m's 16 lanes, in every lane. */
INLINE __m512 lanes_max(__m512 m) {
    m = _mm512_max_ps(m, _mm512_shuffle_f32x4(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm512_max_ps(m, _mm512_shuffle_f32x4(m, m, _MM_SHUFFLE(2, 3, 0, 1)));
    m = _mm512_max_ps(m, _mm512_permute_ps(m, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm512_max_ps(m, _mm512_permute_ps(m, _MM_SHUFFLE(2, 3, 0, 1)));
}

/* block_round_trip for n a multiple of 16, all in vectors: the block's scale is computed in
 * every lane (pow2_ceil_f32 and the reciprocal from the bits), so consecutive blocks do not
 * wait on a scalar chain. */
INLINE void block_round_trip16(const void *x, void *y, int64_t n, int x_bf16, int y_bf16,
                               int fp4) {
    __m512 m = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) /* max(|x|, m): a NaN x keeps m (skipped) */
        m = _mm512_max_ps(_mm512_abs_ps(load16(x, i, x_bf16)), m);
    const float lim = fp4 ? DSV4_FP4_MAX : DSV4_FP8_MAX;
    __m512 amax = _mm512_max_ps(lanes_max(m), _mm512_set1_ps(fp4 ? DSV4_FP4_MAX * 0x1p-126f
                                                                  : DSV4_FP8_AMAX_FLOOR));
    /* REF: amax / 6 for FP4, amax * fp32(1/448) for FP8 */
    __m512 t = fp4 ? _mm512_div_ps(amax, _mm512_set1_ps(DSV4_FP4_MAX))
                   : _mm512_mul_ps(amax, _mm512_set1_ps((float)(1.0 / 448.0)));
    __m512i b = _mm512_add_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(0x7fffff));
    b = _mm512_and_si512(b, _mm512_set1_epi32(~0x7fffff));
    b = _mm512_min_epi32(_mm512_max_epi32(b, _mm512_set1_epi32(0x00800000)),
                         _mm512_set1_epi32(0x7f000000));
    const __m512 vs = _mm512_castsi512_ps(b);
    __m512i ib = _mm512_sub_epi32(_mm512_set1_epi32(0x7f000000), b); /* 1/s, exact */
    ib = _mm512_mask_mov_epi32(ib, _mm512_cmpeq_epi32_mask(ib, _mm512_setzero_si512()),
                               _mm512_set1_epi32(0x00400000)); /* 1/2^127: subnormal */
    const __m512 vinv = _mm512_castsi512_ps(ib);
    const __m512 hi = _mm512_set1_ps(lim), lo = _mm512_set1_ps(-lim);
    const __m512 vmul = _mm512_set1_ps(fp4 ? 0.5f : 0.125f);
    const __m512 vmin = _mm512_set1_ps(fp4 ? 0.5f : 0x1p-9f);
    const __m512i expo = _mm512_set1_epi32(0x7f800000), recip = _mm512_set1_epi32(0x7f000000);
    for (int64_t i = 0; i < n; i += 16) { /* elem_round_trip, 16 lanes */
        __m512 v = _mm512_mul_ps(load16(x, i, x_bf16), vinv);
        v = _mm512_min_ps(hi, _mm512_max_ps(lo, v)); /* NaN (second operand) passes through */
        __m512 sp = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), expo));
        sp = _mm512_max_ps(_mm512_mul_ps(sp, vmul), vmin);
        __m512 isp = _mm512_castsi512_ps(_mm512_sub_epi32(recip, _mm512_castps_si512(sp)));
        __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(v, isp),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512 out = _mm512_mul_ps(_mm512_mul_ps(q, sp), vs);
        /* out is a bf16 value: a grid value (<= 4 significant bits) times a power of two, at
         * least 2^-31 (FP8) or a multiple of 2^-127 (FP4, which bf16's subnormals hold), or a
         * quiet NaN. So its high half is its rounding to bf16. */
        if (y_bf16) {
            __m512i hi16 = _mm512_srli_epi32(_mm512_castps_si512(out), 16);
            _mm256_storeu_si256((__m256i *)((uint16_t *)y + i), _mm512_cvtepi32_epi16(hi16));
        } else {
            _mm512_storeu_ps((float *)y + i, out);
        }
    }
}
#endif

/* One block through REF's FP8 (fp4 = 0) or FP4 round trip, x -> y (may alias when the dtypes
 * are the same). NaNs are skipped in the block's max (as by common.h's block helpers). */
INLINE void block_round_trip(const void *x, void *y, int64_t n, int x_bf16, int y_bf16,
                             int fp4) {
#ifdef __AVX512F__
    if (n % 16 == 0) {
        block_round_trip16(x, y, n, x_bf16, y_bf16, fp4);
        return;
    }
#endif
    float amax = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float a = fabsf(load_act(x, i, x_bf16));
        amax = a > amax ? a : amax;
    }
    const float lim = fp4 ? DSV4_FP4_MAX : DSV4_FP8_MAX;
    const float amax_floor = fp4 ? DSV4_FP4_MAX * 0x1p-126f : DSV4_FP8_AMAX_FLOOR;
    const float min_sp = fp4 ? 0.5f : 0x1p-9f, sp_mul = fp4 ? 0.5f : 0.125f;
    if (amax < amax_floor) amax = amax_floor;
    /* REF: amax * fp32(1/448) for FP8, amax / 6 for FP4 */
    const float s = pow2_ceil_f32(fp4 ? amax / DSV4_FP4_MAX : amax * (float)(1.0 / 448.0));
    const float inv_s = 1.0f / s;
#pragma omp simd
    for (int64_t i = 0; i < n; i++)
        store_act(y, i, elem_round_trip(load_act(x, i, x_bf16), s, inv_s, lim, sp_mul, min_sp),
                  y_bf16);
}

/* rows x n activations (row stride ldx elements) through the round trip in `block`-blocks
 * into y [rows, n]. */
INLINE void round_trip(const void *x, void *y, int64_t rows, int64_t n, int64_t ldx,
                       int64_t block, int x_bf16, int y_bf16, int fp4) {
    const int64_t xs = x_bf16 ? 2 : 4, ys = y_bf16 ? 2 : 4;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < n; b += block)
            block_round_trip((const char *)x + (r * ldx + b) * xs, (char *)y + (r * n + b) * ys,
                             block, x_bf16, y_bf16, fp4);
}

/* The dtype pairs as separate loops (constant flags: each vectorizes on its own). */
#define DTYPE_CASES(FP4)                                                      \
    if (x_bf16 && y_bf16)                                                     \
        round_trip(x, y, rows, n, ldx, block, 1, 1, FP4);                     \
    else if (x_bf16)                                                          \
        round_trip(x, y, rows, n, ldx, block, 1, 0, FP4);                     \
    else if (y_bf16)                                                          \
        round_trip(x, y, rows, n, ldx, block, 0, 1, FP4);                     \
    else                                                                      \
        round_trip(x, y, rows, n, ldx, block, 0, 0, FP4);

/* x [rows, n] (row stride ldx; bf16 when x_bf16, else fp32) -> y [rows, n] (bf16 when
 * y_bf16, else fp32): REF's FP8 round trip per block of `block` (n a multiple of it). */
void quant_fp8_round_trip(const void *x, void *y, int64_t rows, int64_t n, int64_t ldx,
                          int64_t block, int64_t x_bf16, int64_t y_bf16) {
    DTYPE_CASES(0)
}

/* The same with REF's FP4 round trip. */
void quant_fp4_round_trip(const void *x, void *y, int64_t rows, int64_t n, int64_t ldx,
                          int64_t block, int64_t x_bf16, int64_t y_bf16) {
    DTYPE_CASES(1)
}

/* In-place unnormalized Walsh-Hadamard transform of x[n], n a power of two:
 * x <- H_n x with Sylvester's H (H_2n = [[H, H], [H, -H]]), stride by stride. */
static void fwht(float *restrict x, int64_t n) {
    for (int64_t h = 1; h < n; h *= 2) {
        for (int64_t i = 0; i < n; i += 2 * h) {
            float *restrict a = x + i, *restrict b = x + i + h;
#pragma omp simd
            for (int64_t j = 0; j < h; j++) {
                float u = a[j], v = b[j];
                a[j] = u + v;
                b[j] = u - v;
            }
        }
    }
}

#ifdef __AVX512F__
/* The butterflies of strides 1, 2, 4, 8 inside a 16-lane vector: lane i pairs with lane i^h,
 * y_i = x_(i^h) + sign_i * x_i with sign_i = -1 where bit h of i is set (an fma: sign * x is
 * exact, so this is the butterfly's one rounded add or subtract). */
INLINE __m512 fwht16(__m512 v) {
    const __m512 s1 = _mm512_setr_ps(1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1);
    const __m512 s2 = _mm512_setr_ps(1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1);
    const __m512 s4 = _mm512_setr_ps(1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1);
    const __m512 s8 = _mm512_setr_ps(1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1);
    v = _mm512_fmadd_ps(s1, v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
    v = _mm512_fmadd_ps(s2, v, _mm512_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = _mm512_fmadd_ps(s4, v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm512_fmadd_ps(s8, v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
}

/* round_bf16 on 16 lanes (ties to even; a NaN stays NaN). */
INLINE __m512 round_bf16_16(__m512 v) {
    __m512i u = _mm512_castps_si512(v);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd));
    r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), u,
                             _mm512_set1_epi32(0x00400000));
    return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32((int)0xffff0000u)));
}

/* hadamard_row for n a multiple of 16, in vectors. */
INLINE void hadamard_row16(const void *x, void *y, int64_t n, float scale, int64_t block,
                           int bf16, int fp4) {
    float buf[MAX_BLOCK];
    for (int64_t i = 0; i < n; i += 16) _mm512_storeu_ps(buf + i, fwht16(load16(x, i, bf16)));
    for (int64_t h = 16; h < n; h *= 2)
        for (int64_t i = 0; i < n; i += 2 * h)
            for (int64_t j = i; j < i + h; j += 16) {
                __m512 u = _mm512_loadu_ps(buf + j), v = _mm512_loadu_ps(buf + j + h);
                _mm512_storeu_ps(buf + j, _mm512_add_ps(u, v));
                _mm512_storeu_ps(buf + j + h, _mm512_sub_ps(u, v));
            }
    const __m512 vscale = _mm512_set1_ps(scale);
    for (int64_t i = 0; i < n; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(buf + i), vscale);
        if (!fp4)
            store16(y, i, v, bf16);
        else /* the rotation's output is act: the FP4 step sees the bf16 value */
            _mm512_storeu_ps(buf + i, bf16 ? round_bf16_16(v) : v);
    }
    const int64_t ys = bf16 ? 2 : 4;
    if (fp4)
        for (int64_t b = 0; b < n; b += block)
            block_round_trip(buf + b, (char *)y + b * ys, block, 0, bf16, 1);
}
#endif

/* One row of n activations: act(H x * scale) (engine/sparse_indexer.rotate), then with fp4
 * the FP4 round trip of that act value in `block`-blocks (quant.fp4_act_quant_dequant). */
INLINE void hadamard_row(const void *x, void *y, int64_t n, float scale, int64_t block,
                         int bf16, int fp4) {
#ifdef __AVX512F__
    if (n % 16 == 0) {
        hadamard_row16(x, y, n, scale, block, bf16, fp4);
        return;
    }
#endif
    float buf[MAX_BLOCK];
    for (int64_t i = 0; i < n; i++) buf[i] = load_act(x, i, bf16);
    fwht(buf, n);
    const int64_t ys = bf16 ? 2 : 4;
    if (!fp4) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) store_act(y, i, buf[i] * scale, bf16);
        return;
    }
    if (bf16) { /* the rotation's output is act: the FP4 step sees the bf16 value */
#pragma omp simd
        for (int64_t i = 0; i < n; i++) buf[i] = round_bf16(buf[i] * scale);
    } else {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) buf[i] *= scale;
    }
    for (int64_t b = 0; b < n; b += block)
        block_round_trip(buf + b, (char *)y + b * ys, block, 0, bf16, 1);
}

/* x [rows, n] (contiguous, n a power of two <= MAX_BLOCK; bf16 when bf16, else fp32) -> y
 * [rows, n] in the same dtype: hadamard_row per row. */
void quant_hadamard_fp4(const void *x, void *y, int64_t rows, int64_t n, float scale,
                        int64_t block, int64_t bf16, int64_t fp4) {
    const int64_t es = bf16 ? 2 : 4;
    for (int64_t r = 0; r < rows; r++) {
        const void *xr = (const char *)x + r * n * es;
        void *yr = (char *)y + r * n * es;
        if (bf16 && fp4)
            hadamard_row(xr, yr, n, scale, block, 1, 1);
        else if (bf16)
            hadamard_row(xr, yr, n, scale, block, 1, 0);
        else if (fp4)
            hadamard_row(xr, yr, n, scale, block, 0, 1);
        else
            hadamard_row(xr, yr, n, scale, block, 0, 0);
    }
}
