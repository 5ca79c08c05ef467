/* Routed experts of the MoE layer (kernels/moe.py, SPEC §4.7) over packed FP4 weights.
 *
 * The FP4 weights are decoded on the fly, never materialized: a weight row is read 16 bytes
 * (one block of 32 values sharing an e8m0 scale) at a time, each nibble looks up its e2m1
 * value in a 16-entry table already multiplied by the block's power-of-two scale. Every
 * weight is thus the exact value the reference's dequantization gives, and the products
 * accumulate in fp32: only the summation order differs from the torch reference.
 *
 * Pair layout: a byte holds elements 2j (low nibble) and 2j+1 (high nibble). Instead of
 * interleaving the decoded values, activation rows are stored de-interleaved per block of
 * 32 (the 16 even elements, then the 16 odd ones), so the low nibbles of a block multiply
 * the first half and the high nibbles the second.
 *
 * The (token, slot) pairs are grouped by expert (a counting sort) and go through each
 * expert GROUP at a time. Two GEMM shapes, both with fp32 FMAs:
 *  - narrow (decode, and the few pairs left over): the dot products run along K, one
 *    decoded weight row against up to TILE activation rows (or one activation row against
 *    ROWS weight rows) held in registers;
 *  - wide (16 or more pairs of one expert, AVX-512): WIDE_ROWS weight rows are decoded once
 *    into an L1 buffer and multiplied with 16 pairs per vector (activations transposed), so
 *    the decode is shared by the whole group and no horizontal sums are needed.
 * Both keep 16 independent accumulators: fewer leave the FMA units waiting on latency.
 * (bf16 dot products on AVX512-BF16 measured no faster than fp32 FMAs, so neither has one.)
 *
 * AMX (prefill): an expert with AMX_MIN or more pairs (8: from there the tiles measured
 * faster, at 4 even; decode stays on the FMA GEMMs) runs its GEMMs on AMX tiles (amx.h)
 * when the operands are bf16 values: bf16 activations, or any after the FP8 round trip of
 * quant_sim (e4m3 times a power of two), against FP4 weights (e2m1 times a power of two).
 * The products are then exact in fp32 and the tiles sum in fp32: the same results up to the
 * summation order. The group's inputs are gathered as bf16 A rows, the weights decoded
 * straight into packed B tiles (a byte of FP4 is one K pair of the tile layout), and the
 * outputs come back row-major [pairs, N] for the same elementwise steps as the FMA path.
 * fp32 activations without quant_sim are not bf16 values and keep the FMA paths.
 *
 * The elementwise steps (SwiGLU, the FP8 round trips, the output adds) run 16 lanes at a
 * time in both paths, silu with the shared exp of common.h (exp_f32 / exp16).
 */
#include "amx.h"
#include "common.h"

#include <stdlib.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define TILE 8       /* activation rows sharing one decoded weight row (narrow GEMM) */
#define ROWS 8       /* weight rows sharing one activation row (narrow GEMM, decode) */
#define ROW_CHUNK 32 /* weight rows kept hot while the tiles of the group pass (narrow) */
#define GROUP 64     /* pairs of one expert processed together (bounds the buffers) */
#define WIDE 16      /* pairs per vector in the wide GEMM (one zmm of fp32) */
#define WIDE_ROWS 8  /* weight rows decoded together for the wide GEMM */

static const float FP4_VALUES[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                     -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

/* The 256 ue8m0 values 2^(b-127) (b = 0 is the fp32 subnormal 2^-127, 0xFF is NaN). */
static void e8m0_table(float *table) {
    for (int b = 1; b < 255; b++) table[b] = f32_from_bits((uint32_t)b << 23);
    table[0] = f32_from_bits(0x00400000u);
    table[255] = f32_from_bits(0x7fc00000u);
}

/* src fp32 [n] (n a multiple of 32) -> dst in pair layout. */
static void to_pair_layout(const float *src, float *dst, int64_t n) {
    for (int64_t b = 0; b < n; b += 32)
        for (int j = 0; j < 16; j++) {
            dst[b + j] = src[b + 2 * j];
            dst[b + 16 + j] = src[b + 2 * j + 1];
        }
}

/* One FP4 weight matrix [R, K]: 16 bytes per block of 32, one ue8m0 scale byte per block. */
typedef struct {
    const uint8_t *w, *s;
    int64_t nb; /* blocks per row: K / 32 */
} fp4_mat;

static inline const uint8_t *row_bytes(fp4_mat m, int64_t r) { return m.w + r * m.nb * 16; }
static inline const uint8_t *row_scales(fp4_mat m, int64_t r) { return m.s + r * m.nb; }

/* Work buffers of one call (see moe_fp4); the group buffers have `ld` = cap columns. */
typedef struct {
    const float *scales; /* [256] e8m0 values */
    float *wbuf;         /* [WIDE_ROWS, K] decoded weight rows (wide GEMM) */
    float *xt;           /* [pairs, K] transposed activations, WIDE pairs per row of K */
    const float *xin;    /* [T, D] every token's GEMM input, in pair layout */
    float *gu;           /* w1|w3 outputs of a group [2I, ld] */
    float *act;          /* w2 inputs of a group [ld, I], in pair layout */
    float *tmp;          /* [I] one pair's SwiGLU outputs */
    float *out;          /* w2 outputs of a group [D, ld] */
    int64_t ld;
} workspace;

#ifdef __AVX512F__
/* The 16 e2m1 values times the block's scale (exact: a power of two): a lookup table. */
static inline __m512 scaled_table(const float *scales, uint8_t s) {
    return _mm512_mul_ps(_mm512_loadu_ps(FP4_VALUES), _mm512_set1_ps(scales[s]));
}

/* The 32 weights of block b of a row: we the even elements, wo the odd ones.
 * permutexvar reads only the low 4 bits of each index: the low nibble as it is. */
static inline void decode_block(const uint8_t *w, const uint8_t *s, int64_t b,
                                const float *scales, __m512 *we, __m512 *wo) {
    __m512 ts = scaled_table(scales, s[b]);
    __m512i by = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(w + 16 * b)));
    *we = _mm512_permutexvar_ps(by, ts);
    *wo = _mm512_permutexvar_ps(_mm512_srli_epi32(by, 4), ts);
}

/* out[m] = row · x_m for TILE = 8 activation rows in pair layout: one decode, eight uses
 * (16 accumulators, the even and odd halves of each row, all in registers). */
static inline void dots_tile(const uint8_t *w, const uint8_t *s, int64_t nb,
                             const float *const *xs, const float *scales, float *out) {
    __m512 e0 = _mm512_setzero_ps(), e1 = e0, e2 = e0, e3 = e0, e4 = e0, e5 = e0, e6 = e0, e7 = e0;
    __m512 o0 = e0, o1 = e0, o2 = e0, o3 = e0, o4 = e0, o5 = e0, o6 = e0, o7 = e0;
    for (int64_t b = 0; b < nb; b++) {
        __m512 we, wo;
        decode_block(w, s, b, scales, &we, &wo);
        const int64_t k = 32 * b;
#define ACC(i)                                                                                 \
    e##i = _mm512_fmadd_ps(we, _mm512_loadu_ps(xs[i] + k), e##i);                              \
    o##i = _mm512_fmadd_ps(wo, _mm512_loadu_ps(xs[i] + k + 16), o##i)
        ACC(0); ACC(1); ACC(2); ACC(3); ACC(4); ACC(5); ACC(6); ACC(7);
#undef ACC
    }
    _mm_storeu_ps(out, sum4_ps(_mm512_add_ps(e0, o0), _mm512_add_ps(e1, o1),
                               _mm512_add_ps(e2, o2), _mm512_add_ps(e3, o3)));
    _mm_storeu_ps(out + 4, sum4_ps(_mm512_add_ps(e4, o4), _mm512_add_ps(e5, o5),
                                   _mm512_add_ps(e6, o6), _mm512_add_ps(e7, o7)));
}

/* out[i] = W[r + i] · x for ROWS = 8 weight rows and one activation row (decode): each x
 * block is loaded once for the eight rows; 16 accumulators (even and odd halves) keep
 * enough independent FMA chains in flight. */
static inline void dots_rows(fp4_mat W, int64_t r, const float *x, const float *scales,
                             float *out) {
    const uint8_t *w0 = row_bytes(W, r), *s0 = row_scales(W, r);
    const int64_t wstep = W.nb * 16, sstep = W.nb;
    /* Decode reads each expert once, from memory, in short rows (w2's are I/2 bytes): ask for
     * the rows of the call after next, so that their requests overlap with this work. */
    const char *ahead = (const char *)w0 + 2 * ROWS * wstep, *sahead = (const char *)s0 + 2 * ROWS * sstep;
    for (int64_t i = 0; i < ROWS * wstep; i += 64) _mm_prefetch(ahead + i, _MM_HINT_T0);
    for (int64_t i = 0; i < ROWS * sstep; i += 64) _mm_prefetch(sahead + i, _MM_HINT_T0);
    __m512 e0 = _mm512_setzero_ps(), e1 = e0, e2 = e0, e3 = e0, e4 = e0, e5 = e0, e6 = e0, e7 = e0;
    __m512 o0 = e0, o1 = e0, o2 = e0, o3 = e0, o4 = e0, o5 = e0, o6 = e0, o7 = e0;
    for (int64_t b = 0; b < W.nb; b++) {
        __m512 xe = _mm512_loadu_ps(x + 32 * b), xo = _mm512_loadu_ps(x + 32 * b + 16);
        __m512 we, wo;
#define ROW(i)                                                                                 \
    decode_block(w0 + i * wstep, s0 + i * sstep, b, scales, &we, &wo);                         \
    e##i = _mm512_fmadd_ps(we, xe, e##i);                                                      \
    o##i = _mm512_fmadd_ps(wo, xo, o##i)
        ROW(0); ROW(1); ROW(2); ROW(3); ROW(4); ROW(5); ROW(6); ROW(7);
#undef ROW
    }
    _mm_storeu_ps(out, sum4_ps(_mm512_add_ps(e0, o0), _mm512_add_ps(e1, o1),
                               _mm512_add_ps(e2, o2), _mm512_add_ps(e3, o3)));
    _mm_storeu_ps(out + 4, sum4_ps(_mm512_add_ps(e4, o4), _mm512_add_ps(e5, o5),
                                   _mm512_add_ps(e6, o6), _mm512_add_ps(e7, o7)));
}
#else
/* Portable versions: the same products, summed in 16 lanes per dot product. */
static inline void decode_block(const uint8_t *w, const uint8_t *s, int64_t b,
                                const float *scales, float *we, float *wo) {
    float sc = scales[s[b]];
    for (int j = 0; j < 16; j++) {
        uint8_t byte = w[16 * b + j];
        we[j] = FP4_VALUES[byte & 15] * sc;
        wo[j] = FP4_VALUES[byte >> 4] * sc;
    }
}

static inline float lane_sum(const float *acc) {
    float sum = 0.0f;
    for (int j = 0; j < 16; j++) sum += acc[j];
    return sum;
}

static void dots_tile(const uint8_t *w, const uint8_t *s, int64_t nb, const float *const *xs,
                      const float *scales, float *out) {
    float acc[TILE][16] = {{0.0f}}, we[16], wo[16];
    for (int64_t b = 0; b < nb; b++) {
        decode_block(w, s, b, scales, we, wo);
        for (int m = 0; m < TILE; m++) {
            const float *x = xs[m] + 32 * b;
#pragma omp simd
            for (int j = 0; j < 16; j++) acc[m][j] += we[j] * x[j] + wo[j] * x[16 + j];
        }
    }
    for (int m = 0; m < TILE; m++) out[m] = lane_sum(acc[m]);
}

static void dots_rows(fp4_mat W, int64_t r, const float *x, const float *scales, float *out) {
    float acc[16], we[16], wo[16];
    for (int i = 0; i < ROWS; i++) {
        const uint8_t *w = row_bytes(W, r + i), *s = row_scales(W, r + i);
        for (int j = 0; j < 16; j++) acc[j] = 0.0f;
        for (int64_t b = 0; b < W.nb; b++) {
            decode_block(w, s, b, scales, we, wo);
#pragma omp simd
            for (int j = 0; j < 16; j++) acc[j] += we[j] * x[32 * b + j] + wo[j] * x[32 * b + 16 + j];
        }
        out[i] = lane_sum(acc);
    }
}
#endif

/* Narrow GEMM: out[r·ld + m] = W[r] · x_m for the pairs m in [m0, m1) (xs[m] in pair
 * layout). Full tiles share each decoded row; a tail of 4 or more is padded to a tile
 * (repeating its last row), a shorter one goes ROWS weight rows at a time. */
static void narrow_gemm(fp4_mat W, int64_t R, const float *const *xs, int64_t m0, int64_t m1,
                        const workspace *ws, float *out, int64_t ld) {
    float dots[TILE];
    const float *tile[TILE];
    for (int64_t r0 = 0; r0 < R; r0 += ROW_CHUNK) {
        const int64_t r1 = r0 + ROW_CHUNK < R ? r0 + ROW_CHUNK : R;
        int64_t m = m0;
        for (; m1 - m >= TILE / 2; m += TILE) {
            const int64_t mt = m1 - m < TILE ? m1 - m : TILE;
            for (int i = 0; i < TILE; i++) tile[i] = xs[m + (i < mt ? i : mt - 1)];
            for (int64_t r = r0; r < r1; r++) {
                dots_tile(row_bytes(W, r), row_scales(W, r), W.nb, tile, ws->scales, dots);
                for (int i = 0; i < mt; i++) out[r * ld + m + i] = dots[i];
            }
        }
        for (; m < m1; m++)
            for (int64_t r = r0; r < r1; r += ROWS) {
                dots_rows(W, r, xs[m], ws->scales, dots);
                for (int i = 0; i < ROWS; i++) out[(r + i) * ld + m] = dots[i];
            }
    }
}

#ifdef __AVX512F__
/* Rows r..r+WIDE_ROWS of W decoded into wbuf [WIDE_ROWS, K] (pair layout, exact fp32). */
static void decode_rows(fp4_mat W, int64_t r, const workspace *ws) {
    for (int i = 0; i < WIDE_ROWS; i++) {
        const uint8_t *w = row_bytes(W, r + i), *s = row_scales(W, r + i);
        for (int64_t b = 0; b < W.nb; b++) {
            __m512 we, wo;
            decode_block(w, s, b, ws->scales, &we, &wo);
            _mm512_storeu_ps(ws->wbuf + (i * W.nb + b) * 32, we);
            _mm512_storeu_ps(ws->wbuf + (i * W.nb + b) * 32 + 16, wo);
        }
    }
}

/* Activation rows xs[0 .. WIDE) (pair layout [K]) transposed into xt [K, WIDE]. */
static void transpose_tile(const float *const *xs, int64_t K, float *xt) {
    for (int m = 0; m < WIDE; m++)
        for (int64_t k = 0; k < K; k++) xt[k * WIDE + m] = xs[m][k];
}

/* The WIDE_ROWS decoded rows times two transposed tiles xa, xb [K, WIDE]:
 * out[i·ld + 0..WIDE) from xa and out[i·ld + WIDE..2·WIDE) from xb. Each broadcast weight
 * feeds two FMAs; 16 accumulators keep the FMA units busy. */
static void wide_tile2(const float *w, const float *xa, const float *xb, int64_t K, float *out,
                       int64_t ld) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    __m512 b0 = a0, b1 = a0, b2 = a0, b3 = a0, b4 = a0, b5 = a0, b6 = a0, b7 = a0;
    for (int64_t k = 0; k < K; k++) {
        __m512 x = _mm512_loadu_ps(xa + k * WIDE), y = _mm512_loadu_ps(xb + k * WIDE);
#define ACC(i)                                                                                 \
    {                                                                                          \
        __m512 c = _mm512_set1_ps(w[i * K + k]);                                               \
        a##i = _mm512_fmadd_ps(c, x, a##i);                                                    \
        b##i = _mm512_fmadd_ps(c, y, b##i);                                                    \
    }
        ACC(0) ACC(1) ACC(2) ACC(3) ACC(4) ACC(5) ACC(6) ACC(7)
#undef ACC
    }
#define STORE(i)                                                                               \
    _mm512_storeu_ps(out + i * ld, a##i);                                                      \
    _mm512_storeu_ps(out + i * ld + WIDE, b##i)
    STORE(0); STORE(1); STORE(2); STORE(3); STORE(4); STORE(5); STORE(6); STORE(7);
#undef STORE
}

/* The same for one tile: the even and odd steps of K go to separate accumulators. */
static void wide_tile1(const float *w, const float *xa, int64_t K, float *out, int64_t ld) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    __m512 b0 = a0, b1 = a0, b2 = a0, b3 = a0, b4 = a0, b5 = a0, b6 = a0, b7 = a0;
    for (int64_t k = 0; k < K; k += 2) {
        __m512 x = _mm512_loadu_ps(xa + k * WIDE), y = _mm512_loadu_ps(xa + (k + 1) * WIDE);
#define ACC(i)                                                                                 \
    a##i = _mm512_fmadd_ps(_mm512_set1_ps(w[i * K + k]), x, a##i);                             \
    b##i = _mm512_fmadd_ps(_mm512_set1_ps(w[i * K + k + 1]), y, b##i)
        ACC(0); ACC(1); ACC(2); ACC(3); ACC(4); ACC(5); ACC(6); ACC(7);
#undef ACC
    }
#define STORE(i) _mm512_storeu_ps(out + i * ld, _mm512_add_ps(a##i, b##i))
    STORE(0); STORE(1); STORE(2); STORE(3); STORE(4); STORE(5); STORE(6); STORE(7);
#undef STORE
}

/* Wide GEMM for the pairs [0, n) (n a multiple of WIDE; xs in pair layout):
 * out[r·ld + m] = W[r] · x_m, each group of WIDE_ROWS rows decoded once for all n pairs. */
static void wide_gemm(fp4_mat W, int64_t R, const float *const *xs, int64_t n,
                      const workspace *ws, float *out, int64_t ld) {
    const int64_t K = 32 * W.nb;
    for (int64_t m = 0; m < n; m += WIDE) transpose_tile(xs + m, K, ws->xt + m * K);
    for (int64_t r = 0; r < R; r += WIDE_ROWS) {
        decode_rows(W, r, ws);
        int64_t m = 0;
        for (; m + 2 * WIDE <= n; m += 2 * WIDE)
            wide_tile2(ws->wbuf, ws->xt + m * K, ws->xt + (m + WIDE) * K, K, out + r * ld + m, ld);
        if (m < n) wide_tile1(ws->wbuf, ws->xt + m * K, K, out + r * ld + m, ld);
    }
}
#endif

/* out[r·ld + m] = W[r] · x_m for the FP4 weight W [R, K] (R a multiple of 32) and n
 * activation rows xs[m] in pair layout. */
static void fp4_gemm(fp4_mat W, int64_t R, const float *const *xs, int64_t n,
                     const workspace *ws, float *out, int64_t ld) {
    int64_t wide = 0;
#ifdef __AVX512F__
    wide = n / WIDE * WIDE;
    if (wide) wide_gemm(W, R, xs, wide, ws, out, ld);
#endif
    if (wide < n) narrow_gemm(W, R, xs, wide, n, ws, out, ld);
}

/* The value the reference holds after a cast of fp32 v to the act dtype and back. */
static inline float round_act(float v, int bf16) { return bf16 ? round_bf16(v) : v; }

/* fp8_block_round_trip (common.h) of one block of 128, the same operations on 16 lanes. */
static void fp8_round_trip_128(float *x) {
#ifdef __AVX512F__
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    __m512 amax = _mm512_setzero_ps();
    for (int i = 0; i < 128; i += 16)  /* max_ps(a, amax) keeps amax when a is NaN, as the scalar */
        amax = _mm512_max_ps(_mm512_and_ps(_mm512_loadu_ps(x + i), absmask), amax);
    float a = _mm512_reduce_max_ps(amax);
    if (a < DSV4_FP8_AMAX_FLOOR) a = DSV4_FP8_AMAX_FLOOR;
    const float s = pow2_ceil_f32(a * (float)(1.0 / 448.0));
    /* Dividing by a power of two is multiplying by its reciprocal (the same real number,
     * rounded once) when that is a normal fp32: here for the scale below 2^127, and always for
     * the grid step sp (2^-9 .. 32, or inf for NaN v; the bits 0x7f000000 - bits(sp) then make
     * -inf, and NaN stays NaN). */
    const __m512 vs = _mm512_set1_ps(s), lim = _mm512_set1_ps(DSV4_FP8_MAX);
    const __m512 inv_s = _mm512_set1_ps(1.0f / s);
    const __m512i one_bits = _mm512_set1_epi32(0x7f000000);
    const __m512 expmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7f800000));
    for (int i = 0; i < 128; i += 16) {
        __m512 xi = _mm512_loadu_ps(x + i);
        __m512 v = s <= 0x1p126f ? _mm512_mul_ps(xi, inv_s) : _mm512_div_ps(xi, vs);
        /* max/min return their second operand when one is NaN: NaN stays, as in the scalar */
        v = _mm512_min_ps(lim, _mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), lim), v));
        __m512 sp = _mm512_mul_ps(_mm512_and_ps(v, expmask), _mm512_set1_ps(0.125f));
        sp = _mm512_max_ps(sp, _mm512_set1_ps(0x1p-9f));
        __m512 inv_sp = _mm512_castsi512_ps(_mm512_sub_epi32(one_bits, _mm512_castps_si512(sp)));
        __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(v, inv_sp),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_mul_ps(q, sp), vs));
    }
#else
    fp8_block_round_trip(x, 128);
#endif
}

#ifdef __AVX512F__
/* The gather indices 0, s, .., 15·s. */
static inline __m512i lane_offsets(int64_t s) {
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return _mm512_mullo_epi32(lanes, _mm512_set1_epi32((int)s));
}
#endif

/* `_swiglu` of one pair: w1|w3 outputs g_i = gu[i·si], u_i = gu[(I + i)·si], routing weight w
 * -> tmp [I], the values w2's input holds (cast to the act dtype, then `_linear_input`'s FP8
 * round trip with quant_sim). si: 1 (row-major outputs, AMX) or the group's ld (FMA GEMMs;
 * gathered with 32-bit indices: si < 2^27). */
static void swiglu_pair(const float *gu, int64_t si, int64_t I, float w, float limit,
                        int quant_sim, int bf16, float *tmp) {
    int64_t i = 0;
#ifdef __AVX512F__
    const __m512i idx = lane_offsets(si);
    const __m512 lim = _mm512_set1_ps(limit), one = _mm512_set1_ps(1.0f), vw = _mm512_set1_ps(w);
    for (; i + 16 <= I; i += 16) {
        const float *gp = gu + i * si, *up = gu + (I + i) * si;
        __m512 g = si == 1 ? _mm512_loadu_ps(gp) : _mm512_i32gather_ps(idx, gp, 4);
        __m512 u = si == 1 ? _mm512_loadu_ps(up) : _mm512_i32gather_ps(idx, up, 4);
        if (quant_sim && bf16) { /* REF's FP4 GEMM writes its output in the act dtype */
            g = round_bf16x16(g);
            u = round_bf16x16(u);
        }
        if (limit > 0.0f) { /* max/min return their second operand for NaN: NaN kept */
            u = _mm512_min_ps(lim, _mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), lim), u));
            g = _mm512_min_ps(lim, g);
        }
        __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
        __m512 a = _mm512_mul_ps(_mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u), vw);
        _mm512_storeu_ps(tmp + i, bf16 ? round_bf16x16(a) : a);
    }
#endif
    for (; i < I; i++) {
        float g = gu[i * si], u = gu[(I + i) * si];
        if (quant_sim) {
            g = round_act(g, bf16);
            u = round_act(u, bf16);
        }
        if (limit > 0.0f) { /* comparisons keep NaN, as torch's clamp does */
            u = u < -limit ? -limit : (u > limit ? limit : u);
            g = g > limit ? limit : g;
        }
        float silu = g / (1.0f + exp_f32(-g)); /* torch's CPU silu: x / (1 + exp(-x)) */
        tmp[i] = round_act(silu * u * w, bf16);
    }
    if (quant_sim)
        for (int64_t b = 0; b < I; b += 128) fp8_round_trip_128(tmp + b);
}

/* y_t += w2's output of one pair, o[d·sd] for d < D, rounded to bf16 first when `round`
 * (quant_sim: REF's FP4 GEMM writes its output in the act dtype). sd: 1 (AMX) or the
 * group's ld (< 2^27). */
static void add_pair(const float *o, int64_t sd, int64_t D, int round, float *yt) {
    int64_t d = 0;
#ifdef __AVX512F__
    const __m512i idx = lane_offsets(sd);
    for (; d + 16 <= D; d += 16) {
        __m512 v = sd == 1 ? _mm512_loadu_ps(o + d) : _mm512_i32gather_ps(idx, o + d * sd, 4);
        if (round) v = round_bf16x16(v);
        _mm512_storeu_ps(yt + d, _mm512_add_ps(_mm512_loadu_ps(yt + d), v));
    }
#endif
    for (; d < D; d++) yt[d] += round ? round_bf16(o[d * sd]) : o[d * sd];
}

/* Counting sort of the (token, slot) pairs by expert, stable (token order within an
 * expert): expert e's pairs are order[start[e] .. start[e+1]). Returns the number of ids
 * outside [0, E), which are left out. start: [E+1] zeroed, fill: [E] zeroed. */
static int64_t sort_pairs(const int64_t *ids, int64_t P, int64_t E, int64_t *start,
                          int64_t *fill, int64_t *order) {
    int64_t bad = 0;
    for (int64_t p = 0; p < P; p++) {
        if (ids[p] >= 0 && ids[p] < E) start[ids[p] + 1]++;
        else bad++;
    }
    for (int64_t e = 0; e < E; e++) start[e + 1] += start[e];
    for (int64_t p = 0; p < P; p++)
        if (ids[p] >= 0 && ids[p] < E) order[start[ids[p]] + fill[ids[p]]++] = p;
    return bad;
}

/* Every token's GEMM input: x [T, D] (bf16 bits or fp32) through `_linear_input`'s FP8 round
 * trip (quant_sim), into xin (fp32, pair layout) and / or xb (bf16: exact, the round trip's
 * values are bf16 values); NULL for the one not wanted. scratch: [D]. */
static void gemm_inputs(const void *x, int bf16, int sim, int64_t T, int64_t D, float *scratch,
                        float *xin, uint16_t *xb) {
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < D; i++)
            scratch[i] = bf16 ? bf16_to_f32(((const uint16_t *)x)[t * D + i])
                              : ((const float *)x)[t * D + i];
        if (sim)
            for (int64_t b = 0; b < D; b += 128) fp8_round_trip_128(scratch + b);
        if (xin) to_pair_layout(scratch, xin + t * D, D);
        if (xb)
            for (int64_t i = 0; i < D; i++) xb[t * D + i] = f32_to_bf16(scratch[i]);
    }
}

/* The n <= ws->ld pairs (tok, wts) of one expert through w1|w3, SwiGLU and w2 with the FMA
 * GEMMs, into y. */
static void fma_group(fp4_mat W1, fp4_mat W3, fp4_mat W2, const int64_t *tok, const float *wts,
                      int64_t n, float limit, int sim, int bf16, const workspace *ws, float *y) {
    const int64_t D = 32 * W1.nb, I = 32 * W2.nb, ld = ws->ld;
    const float *xs[GROUP];
    for (int64_t m = 0; m < n; m++) xs[m] = ws->xin + tok[m] * D;
    fp4_gemm(W1, I, xs, n, ws, ws->gu, ld);
    fp4_gemm(W3, I, xs, n, ws, ws->gu + I * ld, ld);
    for (int64_t m = 0; m < n; m++) {
        swiglu_pair(ws->gu + m, ld, I, wts[m], limit, sim, bf16, ws->tmp);
        to_pair_layout(ws->tmp, ws->act + m * I, I);
        xs[m] = ws->act + m * I;
    }
    fp4_gemm(W2, D, xs, n, ws, ws->out, ld);
    for (int64_t m = 0; m < n; m++) add_pair(ws->out + m, ld, D, sim && bf16, y + tok[m] * D);
}

/* ---- the AMX path (see the top): one expert's group of pairs on tiles ---- */
#define AMX_MIN 8                 /* pairs of one expert from which its GEMMs run on tiles */
#define AMX_GROUP 256             /* most pairs of one expert per pass (bounds the buffers) */
#define AMX_CHUNK_BYTES (1 << 18) /* packed weight tiles shared by every block of 32 rows */

/* Weight rows packed at a time for K: a multiple of 32 whose tiles fit AMX_CHUNK_BYTES. */
static int64_t amx_chunk_rows(int64_t K, int64_t R) {
    int64_t rows = AMX_CHUNK_BYTES / (2 * K) / 32 * 32;
    rows = rows < 32 ? 32 : rows;
    return rows < R ? rows : R;
}

#ifdef DSV4_AMX
/* Whether Linux lends this process the tiles (asked once). */
static int amx_granted(void) {
    static int state = -1;
    if (state < 0) state = amx_request();
    return state;
}

/* The 16 FP4 values times 2^(s-127) as bf16, for each scale byte s: tab [256, 16]. Exact (at
 * most two significant bits; the fp32 product of decode_block, whose inf and NaN stay). */
static void bf16_tables(const float *scales, uint16_t *tab) {
    for (int s = 0; s < 256; s++)
        for (int j = 0; j < 16; j++)
            tab[s * 16 + j] = (uint16_t)(bits_of_f32(FP4_VALUES[j] * scales[s]) >> 16);
}

/* The B tiles of the 16 weight rows r.. of W, one per FP4 block (= K step of 32). Column c of
 * a tile is block b of row c as 16 words, word j the pair (2j, 2j + 1) = byte j: its two
 * nibbles, one per 16-bit half, index the block's bf16 table (vpermw reads 5 bits of each
 * half, so the table is repeated in both 256-bit halves). */
static void pack_fp4_tile(fp4_mat W, int64_t r, const uint16_t *tabs, uint16_t *bt) {
    for (int64_t b = 0; b < W.nb; b++) {
        __m512i col[16];
        for (int c = 0; c < 16; c++) {
            const uint16_t *tab = tabs + 16 * row_scales(W, r + c)[b];
            __m512i t = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)tab));
            const uint8_t *bytes = row_bytes(W, r + c) + 16 * b;
            __m512i w = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)bytes));
            col[c] = _mm512_permutexvar_epi16(_mm512_or_si512(w, _mm512_slli_epi32(w, 12)), t);
        }
        amx_pack_step(col, bt + b * AMX_TILE_BF16);
    }
}

/* c fp32 [M, R] = a bf16 [M, K] . W^T for the R weight rows of Wa (rows [0, Ra)) over Wb
 * (rows [Ra, R)); M a multiple of 16, Ra and R multiples of 32. bt: room for the packed
 * tiles of amx_chunk_rows(K, R) rows. */
static void amx_fp4_gemm(fp4_mat Wa, fp4_mat Wb, int64_t Ra, int64_t R, const uint16_t *a,
                         int64_t M, const uint16_t *tabs, uint16_t *bt, float *c) {
    const int64_t K = 32 * Wa.nb, chunk = amx_chunk_rows(K, R);
    for (int64_t r0 = 0; r0 < R; r0 += chunk) {
        const int64_t r1 = r0 + chunk < R ? r0 + chunk : R;
        for (int64_t r = r0; r < r1; r += 16) /* a tile of 16 rows: K / 32 packed B tiles */
            pack_fp4_tile(r < Ra ? Wa : Wb, r < Ra ? r : r - Ra, tabs, bt + (r - r0) * K);
        amx_gemm_tiles(a, K, M, bt, (r1 - r0) / 16, Wa.nb, c + r0, R);
    }
}

/* Buffers of the AMX path (see moe_fp4). */
typedef struct {
    const uint16_t *xb; /* [T, D] bf16 GEMM inputs of every token */
    uint16_t *a1, *a2;  /* A rows of a group: w1|w3 inputs [M, D], w2 inputs [M, I] */
    uint16_t *bt;       /* packed B tiles of a chunk of weight rows */
    float *c;           /* GEMM outputs [M, max(2I, D)] */
    float *tmp;         /* [I] */
    uint16_t tabs[256 * 16]; /* bf16_tables */
} amx_work;

/* The n pairs (tok, wts) of one expert through w1|w3, SwiGLU and w2 on tiles, into y. */
static void amx_group(fp4_mat W1, fp4_mat W3, fp4_mat W2, const int64_t *tok, const float *wts,
                      int64_t n, float limit, int sim, int bf16, const amx_work *aw,
                      float *y) {
    const int64_t D = 32 * W1.nb, I = 32 * W2.nb, M = (n + 15) / 16 * 16;
    for (int64_t m = 0; m < n; m++)
        memcpy(aw->a1 + m * D, aw->xb + tok[m] * D, (size_t)D * 2);
    memset(aw->a1 + n * D, 0, (size_t)((M - n) * D) * 2);
    amx_fp4_gemm(W1, W3, I, 2 * I, aw->a1, M, aw->tabs, aw->bt, aw->c);
    for (int64_t m = 0; m < n; m++) { /* exact in bf16: bf16 values, or FP8 round trips */
        swiglu_pair(aw->c + m * 2 * I, 1, I, wts[m], limit, sim, bf16, aw->tmp);
        for (int64_t i = 0; i < I; i += 16)
            _mm256_storeu_si256((__m256i *)(aw->a2 + m * I + i),
                                f32x16_to_bf16(_mm512_loadu_ps(aw->tmp + i)));
    }
    memset(aw->a2 + n * I, 0, (size_t)((M - n) * I) * 2);
    amx_fp4_gemm(W2, W2, D, D, aw->a2, M, aw->tabs, aw->bt, aw->c);
    for (int64_t m = 0; m < n; m++) add_pair(aw->c + m * D, 1, D, sim && bf16, y + tok[m] * D);
}
#endif

static int amx_usable(void) {
#ifdef DSV4_AMX
    return amx_granted();
#else
    return 0;
#endif
}

enum { IMPL_BEST = 0, IMPL_NO_AMX = 1 }; /* moe_fp4's impl */

/* Bit 0: the AVX-512 FMA GEMMs are built in; bit 1: so is the AMX path, and Linux lends the
 * tiles. */
int64_t moe_fp4_impls(void) {
    int64_t f = 0;
#ifdef __AVX512F__
    f |= 1;
#endif
    f |= amx_usable() ? 2 : 0;
    return f;
}

/* Pairs per pass of an AMX expert group of n pairs: as even passes of AMX_GROUP at most. */
static int64_t amx_pass_pairs(int64_t n) {
    const int64_t passes = (n + AMX_GROUP - 1) / AMX_GROUP;
    return (n + passes - 1) / passes;
}

/* Pairs per pass of the expert groups: FMA groups of GROUP at most (*cap_f), AMX groups
 * (n >= AMX_MIN, when `amx`) of AMX_GROUP at most, rounded up to 16 (*cap_a). */
static void group_caps(const int64_t *start, int64_t E, int amx, int64_t *cap_f, int64_t *cap_a) {
    *cap_f = *cap_a = 0;
    for (int64_t e = 0; e < E; e++) {
        const int64_t n = start[e + 1] - start[e];
        if (amx && n >= AMX_MIN) {
            const int64_t per = amx_pass_pairs(n);
            *cap_a = per > *cap_a ? per : *cap_a;
        } else {
            *cap_f = n > *cap_f ? n : *cap_f;
        }
    }
    *cap_f = *cap_f < GROUP ? *cap_f : GROUP;
    *cap_a = (*cap_a + 15) / 16 * 16;
}

/* y fp32 [T, D] = the routed experts of x act [T, D] (bf16 bits when x_bf16, else fp32),
 * ids int64 [T, k], weights fp32 [T, k]; w1/w3 [E, I, D/2] with scales [E, I, D/32], w2
 * [E, D, I/2] with scales [E, D, I/32] (packed FP4, e8m0 bytes). D and I multiples of 32
 * (of 128 with quant_sim). impl: 0 the fastest path this machine has, 1 no AMX (tests run
 * both). Returns the number of ids outside [0, E) (those pairs are skipped; the caller
 * raises), or -1 when out of memory. */
int64_t moe_fp4(const void *x, int64_t x_bf16, const int64_t *ids, const float *weights,
                int64_t T, int64_t k, int64_t D, int64_t I, int64_t E, const uint8_t *w1,
                const uint8_t *w1_s, const uint8_t *w3, const uint8_t *w3_s, const uint8_t *w2,
                const uint8_t *w2_s, float limit, int64_t quant_sim, float *y, int64_t impl) {
    const int64_t P = T * k, KMAX = D > I ? D : I;
    const int bf16 = (int)x_bf16, sim = (int)quant_sim;
    if (T > 0) memset(y, 0, (size_t)(T * D) * sizeof(float));
    int64_t *idx = calloc((size_t)(2 * E + 1 + P), sizeof(int64_t));
    if (!idx) return -1;
    int64_t *start = idx, *fill = start + E + 1, *order = fill + E;
    const int64_t bad = sort_pairs(ids, P, E, start, fill, order);
    /* the AMX path needs bf16-valued GEMM inputs */
    const int amx = impl == IMPL_BEST && (bf16 || sim) && P > 0 && amx_usable();
    int64_t cap, cap_a; /* pairs per pass: the buffers' rows */
    group_caps(start, E, amx, &cap, &cap_a);
    const int wide = cap >= WIDE, own_xb = cap_a && !(bf16 && !sim);
    const int64_t bt_w13 = amx_chunk_rows(D, 2 * I) * D, bt_w2 = amx_chunk_rows(I, D) * I;
    /* the buffers in one allocation, each 64-byte aligned, sizes in floats; at decode (one
     * pair per expert) they are a few KiB */
    const size_t sizes[] = {
        (size_t)D,                               /* scratch: one input row */
        (size_t)(cap ? T * D : 0),               /* xin: every token's FMA GEMM input */
        (size_t)(cap * 2 * I),                   /* gu: w1|w3 outputs of a group [2I, cap] */
        (size_t)(cap * I),                       /* act: w2 inputs of a group [cap, I] */
        (size_t)I,                               /* tmp: one pair's SwiGLU outputs */
        (size_t)(cap * D),                       /* out: w2 outputs of a group [D, cap] */
        (size_t)(wide ? WIDE_ROWS * KMAX : 0),   /* wbuf: decoded rows (wide GEMM) */
        (size_t)(wide ? cap * KMAX : 0),         /* xt: transposed activations (wide GEMM) */
        (size_t)(own_xb ? (T * D + 1) / 2 : 0),  /* xb: bf16 inputs (AMX) */
        (size_t)(cap_a * D / 2),                 /* a1 (AMX) */
        (size_t)(cap_a * I / 2),                 /* a2 (AMX) */
        (size_t)(cap_a * (2 * I > D ? 2 * I : D)), /* c (AMX) */
        (size_t)(cap_a ? (bt_w13 > bt_w2 ? bt_w13 : bt_w2) / 2 : 0), /* bt (AMX) */
    };
    enum { NBUF = sizeof sizes / sizeof sizes[0] };
    size_t total = 0, offs[NBUF];
    for (int i = 0; i < NBUF; i++) {
        offs[i] = total;
        total += (sizes[i] + 15) / 16 * 16;
    }
    float *mem = aligned_alloc(64, total * sizeof(float));
    if (!mem) {
        free(idx);
        return -1;
    }
    float *buf[NBUF];
    for (int i = 0; i < NBUF; i++) buf[i] = mem + offs[i];
    float *scratch = buf[0], *xin = buf[1], *tmp = buf[4];
    uint16_t *xb = (uint16_t *)buf[8];
    float scales[256];
    e8m0_table(scales);
    const workspace ws = {scales, buf[6], buf[7], xin, buf[2], buf[3], tmp, buf[5], cap};

    if (cap || own_xb)
        gemm_inputs(x, bf16, sim, T, D, scratch, cap ? xin : NULL, own_xb ? xb : NULL);
#ifdef DSV4_AMX
    amx_work aw = {own_xb ? xb : (const uint16_t *)x, (uint16_t *)buf[9],
                   (uint16_t *)buf[10], (uint16_t *)buf[12], buf[11], tmp, {0}};
    if (cap_a) {
        bf16_tables(scales, aw.tabs);
        amx_configure();
    }
#endif
    int64_t tok[AMX_GROUP];
    float wts[AMX_GROUP];
    for (int64_t e = 0; e < E; e++) {
        const fp4_mat W1 = {w1 + e * I * D / 2, w1_s + e * I * D / 32, D / 32};
        const fp4_mat W3 = {w3 + e * I * D / 2, w3_s + e * I * D / 32, D / 32};
        const fp4_mat W2 = {w2 + e * D * I / 2, w2_s + e * D * I / 32, I / 32};
#ifdef DSV4_AMX
        if (cap_a && start[e + 1] - start[e] >= AMX_MIN) {
            const int64_t per = amx_pass_pairs(start[e + 1] - start[e]);
            for (int64_t g0 = start[e]; g0 < start[e + 1]; g0 += per) {
                const int64_t n = start[e + 1] - g0 < per ? start[e + 1] - g0 : per;
                for (int64_t m = 0; m < n; m++) {
                    tok[m] = order[g0 + m] / k;
                    wts[m] = weights[order[g0 + m]];
                }
                amx_group(W1, W3, W2, tok, wts, n, limit, sim, bf16, &aw, y);
            }
            continue;
        }
#endif
        for (int64_t g0 = start[e]; g0 < start[e + 1]; g0 += cap) {
            const int64_t n = start[e + 1] - g0 < cap ? start[e + 1] - g0 : cap;
            for (int64_t m = 0; m < n; m++) {
                tok[m] = order[g0 + m] / k;
                wts[m] = weights[order[g0 + m]];
            }
            fma_group(W1, W3, W2, tok, wts, n, limit, sim, bf16, &ws, y);
        }
    }
#ifdef DSV4_AMX
    if (cap_a) _tile_release();
#endif
    free(mem);
    free(idx);
    return bad;
}
