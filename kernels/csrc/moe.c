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
 * (bf16 dot products, exact for bf16-valued operands, measured no faster than fp32 FMAs on
 * the AVX512-BF16 machine this was tuned on, so there is no bf16 path.)
 */
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

/* Work buffers of one call (see moe_fp4). */
typedef struct {
    const float *scales; /* [256] e8m0 values */
    float *wbuf;         /* [WIDE_ROWS, K] decoded weight rows (wide GEMM) */
    float *xt;           /* [pairs, K] transposed activations, WIDE pairs per row of K */
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

/* Four 16-lane partial sums -> their four totals. */
static inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
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
    _mm_storeu_ps(out, reduce4(_mm512_add_ps(e0, o0), _mm512_add_ps(e1, o1),
                               _mm512_add_ps(e2, o2), _mm512_add_ps(e3, o3)));
    _mm_storeu_ps(out + 4, reduce4(_mm512_add_ps(e4, o4), _mm512_add_ps(e5, o5),
                                   _mm512_add_ps(e6, o6), _mm512_add_ps(e7, o7)));
}

/* out[i] = W[r + i] · x for ROWS = 8 weight rows and one activation row (decode): each x
 * block is loaded once for the eight rows; 16 accumulators (even and odd halves) keep
 * enough independent FMA chains in flight. */
static inline void dots_rows(fp4_mat W, int64_t r, const float *x, const float *scales,
                             float *out) {
    const uint8_t *w0 = row_bytes(W, r), *s0 = row_scales(W, r);
    const int64_t wstep = W.nb * 16, sstep = W.nb;
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
    _mm_storeu_ps(out, reduce4(_mm512_add_ps(e0, o0), _mm512_add_ps(e1, o1),
                               _mm512_add_ps(e2, o2), _mm512_add_ps(e3, o3)));
    _mm_storeu_ps(out + 4, reduce4(_mm512_add_ps(e4, o4), _mm512_add_ps(e5, o5),
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
    const __m512 vs = _mm512_set1_ps(s), lim = _mm512_set1_ps(DSV4_FP8_MAX);
    const __m512 expmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7f800000));
    for (int i = 0; i < 128; i += 16) {
        __m512 v = _mm512_div_ps(_mm512_loadu_ps(x + i), vs);
        /* max/min return their second operand when one is NaN: NaN stays, as in the scalar */
        v = _mm512_min_ps(lim, _mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), lim), v));
        __m512 sp = _mm512_mul_ps(_mm512_and_ps(v, expmask), _mm512_set1_ps(0.125f));
        sp = _mm512_max_ps(sp, _mm512_set1_ps(0x1p-9f));
        __m512 q = _mm512_roundscale_ps(_mm512_div_ps(v, sp), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_mul_ps(q, sp), vs));
    }
#else
    fp8_block_round_trip(x, 128);
#endif
}

/* `_linear_input`: fp32 row [n] -> its FP8 round trip in blocks of 128 (quant_sim; exact in
 * the act dtype, so the cast back changes nothing) or itself; written in pair layout. */
static void linear_input(float *row, int64_t n, int quant_sim, float *dst) {
    if (quant_sim)
        for (int64_t b = 0; b < n; b += 128) fp8_round_trip_128(row + b);
    to_pair_layout(row, dst, n);
}

/* `_swiglu` of a group, then the act-dtype cast and `_linear_input` of w2's input:
 * gu [2I, ld] (w1 outputs, then w3 outputs; pair m in column m) and the routing weights
 * wts [n] -> act [n, I], each row in pair layout. Runs along the pairs, so that gu is read
 * in order (tmp: [n, I] scratch). */
static void swiglu_group(const float *gu, int64_t ld, int64_t n, int64_t I, const float *wts,
                         float limit, int quant_sim, int bf16, float *tmp, float *act) {
    for (int64_t i = 0; i < I; i++) {
        const float *gi = gu + i * ld, *ui = gu + (I + i) * ld;
        for (int64_t m = 0; m < n; m++) {
            float g = gi[m], u = ui[m];
            if (quant_sim) { /* REF's FP4 GEMM writes its output in the act dtype */
                g = round_act(g, bf16);
                u = round_act(u, bf16);
            }
            if (limit > 0.0f) { /* comparisons keep NaN, as torch's clamp does */
                u = u < -limit ? -limit : (u > limit ? limit : u);
                g = g > limit ? limit : g;
            }
            float silu = g / (1.0f + expf(-g)); /* torch's CPU silu: x / (1 + exp(-x)) */
            tmp[m * I + i] = round_act(silu * u * wts[m], bf16);
        }
    }
    for (int64_t m = 0; m < n; m++) linear_input(tmp + m * I, I, quant_sim, act + m * I);
}

/* y[tok[m]] += w2's output of pair m (out [D, ld], pair m in column m), rounded to the
 * act dtype as REF's FP4 GEMM writes it (quant_sim). Blocks of 16 outputs: out is read in
 * order. */
static void add_outputs(const float *out, int64_t ld, int64_t n, const int64_t *tok, int64_t D,
                        int quant_sim, int bf16, float *y) {
    for (int64_t d0 = 0; d0 < D; d0 += 16)
        for (int64_t m = 0; m < n; m++) {
            float *yt = y + tok[m] * D;
            for (int64_t d = d0; d < d0 + 16; d++) {
                float o = out[d * ld + m];
                yt[d] += quant_sim ? round_act(o, bf16) : o;
            }
        }
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

/* y fp32 [T, D] = the routed experts of x act [T, D] (bf16 bits when x_bf16, else fp32),
 * ids int64 [T, k], weights fp32 [T, k]; w1/w3 [E, I, D/2] with scales [E, I, D/32], w2
 * [E, D, I/2] with scales [E, D, I/32] (packed FP4, e8m0 bytes). D and I multiples of 32
 * (of 128 with quant_sim). Returns the number of ids outside [0, E) (those pairs are
 * skipped; the caller raises), or -1 when out of memory. */
int64_t moe_fp4(const void *x, int64_t x_bf16, const int64_t *ids, const float *weights,
                int64_t T, int64_t k, int64_t D, int64_t I, int64_t E, const uint8_t *w1,
                const uint8_t *w1_s, const uint8_t *w3, const uint8_t *w3_s, const uint8_t *w2,
                const uint8_t *w2_s, float limit, int64_t quant_sim, float *y) {
    const int64_t P = T * k, KMAX = D > I ? D : I;
    const int bf16 = (int)x_bf16, sim = (int)quant_sim;
    if (T > 0) memset(y, 0, (size_t)(T * D) * sizeof(float));
    int64_t *idx = calloc((size_t)(2 * E + 1 + P), sizeof(int64_t));
    if (!idx) return -1;
    int64_t *start = idx, *fill = start + E + 1, *order = fill + E;
    const int64_t bad = sort_pairs(ids, P, E, start, fill, order);
    int64_t cap = 0; /* pairs per group: the buffers' leading dimension */
    for (int64_t e = 0; e < E; e++)
        cap = start[e + 1] - start[e] > cap ? start[e + 1] - start[e] : cap;
    cap = cap < GROUP ? cap : GROUP;
    const int wide = cap >= WIDE;
    /* the fp32 buffers in one allocation, each 64-byte aligned; at decode (one pair per
     * expert) they are a few KiB */
    const size_t sizes[] = {
        (size_t)(T * D + D),                 /* xin: every token's GEMM input; scratch row */
        (size_t)(cap * 2 * I),               /* gu: w1|w3 outputs of a group [2I, cap] */
        (size_t)(cap * I),                   /* act: w2 inputs of a group [cap, I] */
        (size_t)(cap * I),                   /* tmp: SwiGLU outputs before the round trip */
        (size_t)(cap * D),                   /* out: w2 outputs of a group [D, cap] */
        (size_t)(wide ? WIDE_ROWS * KMAX : 0), /* wbuf: decoded rows (wide GEMM) */
        (size_t)(wide ? cap * KMAX : 0),     /* xt: transposed activations (wide GEMM) */
    };
    float *buf[7];
    size_t total = 0, offs[7];
    for (int i = 0; i < 7; i++) {
        offs[i] = total;
        total += (sizes[i] + 15) / 16 * 16;
    }
    float *mem = aligned_alloc(64, total * sizeof(float));
    if (!mem) {
        free(idx);
        return -1;
    }
    for (int i = 0; i < 7; i++) buf[i] = mem + offs[i];
    float *xin = buf[0], *gu = buf[1], *act = buf[2], *tmp = buf[3], *out = buf[4];
    float scales[256];
    e8m0_table(scales);
    const workspace ws = {scales, buf[5], buf[6]};

    float *scratch = xin + T * D;
    for (int64_t t = 0; t < T && cap; t++) {
        for (int64_t i = 0; i < D; i++)
            scratch[i] = bf16 ? bf16_to_f32(((const uint16_t *)x)[t * D + i])
                              : ((const float *)x)[t * D + i];
        linear_input(scratch, D, sim, xin + t * D);
    }
    const float *xs[GROUP];
    int64_t tok[GROUP];
    float wts[GROUP];
    for (int64_t e = 0; e < E; e++) {
        const fp4_mat W1 = {w1 + e * I * D / 2, w1_s + e * I * D / 32, D / 32};
        const fp4_mat W3 = {w3 + e * I * D / 2, w3_s + e * I * D / 32, D / 32};
        const fp4_mat W2 = {w2 + e * D * I / 2, w2_s + e * D * I / 32, I / 32};
        for (int64_t g0 = start[e]; g0 < start[e + 1]; g0 += cap) {
            const int64_t n = start[e + 1] - g0 < cap ? start[e + 1] - g0 : cap;
            for (int64_t m = 0; m < n; m++) {
                tok[m] = order[g0 + m] / k;
                wts[m] = weights[order[g0 + m]];
                xs[m] = xin + tok[m] * D;
            }
            fp4_gemm(W1, I, xs, n, &ws, gu, cap);
            fp4_gemm(W3, I, xs, n, &ws, gu + I * cap, cap);
            swiglu_group(gu, cap, n, I, wts, limit, sim, bf16, tmp, act);
            for (int64_t m = 0; m < n; m++) xs[m] = act + m * I;
            fp4_gemm(W2, D, xs, n, &ws, out, cap);
            add_outputs(out, cap, n, tok, D, sim, bf16, y);
        }
    }
    free(mem);
    free(idx);
    return bad;
}
