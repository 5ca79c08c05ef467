/* Few-row GEMMs for decode, `y = x . W^T` with fp32 accumulation, reading each weight row once:
 *
 *  - dsv4_bf16_gemm: W bf16 [N, K] (the fp32 head of bf16 weights: REF upcasts W and multiplies
 *    in fp32, so each product x*w is the fp32 one and only the summation order differs);
 *  - dsv4_fp8_gemm: W FP8 e4m3 [N, K] with fp32 block scales [ceil(N/128), K/128], optionally
 *    after REF's FP8 activation quantization of x (blocks of 128). The products of a K block
 *    are summed and then scaled: the scale is a power of two, so each term equals the product
 *    of the exact dequantized weight.
 *
 * Rows of x are handled in groups of up to ROWS so that one decoded weight vector feeds every
 * row of the group from registers. */
#include <stdint.h>
#include <stdlib.h>

#include "common.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define ROWS 4
#define FP8_BLOCK 128

#ifdef __AVX512F__
/* 16 bf16 -> 16 fp32 (a shift of the bits). */
static inline __m512 load_bf16x16(const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* 16 e4m3 bytes -> their values / 256 as fp32: the byte's bits moved into an fp16
 * (sign to bit 15, exponent and mantissa shifted left by 7) are the value times 2^-8
 * (subnormals included), and the fp16 -> fp32 conversion is exact. */
static inline __m512 load_e4m3x16_div256(const uint8_t *p) {
    __m128i b = _mm_loadu_si128((const __m128i *)p);
    __m256i w = _mm256_cvtepu8_epi16(b);
    __m256i mag = _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x7f)), 7);
    __m256i sign = _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x80)), 8);
    return _mm512_cvtph_ps(_mm256_or_si256(mag, sign));
}
#endif

static float e4m3_div256_scalar(uint8_t b) {
    /* value / 256: exponent field e (bias 7), mantissa m; e = 0 is subnormal */
    int e = (b >> 3) & 0xf, m = b & 7;
    float v = e ? ldexpf(1.0f + m / 8.0f, e - 7) : ldexpf(m / 8.0f, -6);
    return ((b & 0x80) ? -v : v) * 0x1p-8f;
}

/* y[r, n] = sum_k x[r, k] * bf16(w[n, k]) for r < rows (rows <= ROWS); x fp32 [rows, K]. */
static void bf16_rows(const float *x, int64_t rows, const uint16_t *w, int64_t n0, int64_t n1,
                      int64_t K, float *y, int64_t ldy) {
    for (int64_t n = n0; n < n1; n++) {
        const uint16_t *wr = w + n * K;
        float acc[ROWS] = {0};
        int64_t k = 0;
#ifdef __AVX512F__
        __m512 va[ROWS];
        for (int r = 0; r < ROWS; r++) va[r] = _mm512_setzero_ps();
        for (; k + 16 <= K; k += 16) {
            __m512 wv = load_bf16x16(wr + k);
            for (int r = 0; r < rows; r++)
                va[r] = _mm512_fmadd_ps(_mm512_loadu_ps(x + r * K + k), wv, va[r]);
        }
        for (int r = 0; r < rows; r++) acc[r] = _mm512_reduce_add_ps(va[r]);
#endif
        for (; k < K; k++) {
            float wv = bf16_to_f32(wr[k]);
            for (int r = 0; r < rows; r++) acc[r] += x[r * K + k] * wv;
        }
        for (int r = 0; r < rows; r++) y[r * ldy + n] = acc[r];
    }
}

/* x fp32 [M, K] . W^T for W bf16 [N, K] -> y fp32 [M, N]. */
void dsv4_bf16_gemm(const float *x, const uint16_t *w, float *y, int64_t M, int64_t N,
                    int64_t K) {
    for (int64_t r = 0; r < M; r += ROWS) {
        int64_t rows = M - r < ROWS ? M - r : ROWS;
        bf16_rows(x + r * K, rows, w, 0, N, K, y + r * N, N);
    }
}

#define NR 4 /* weight rows per step: independent accumulator chains */

/* y[r, n0 + j] = sum_k xs[r, k] * e4m3(w[(n0 + j), k]) / 256 for j < nr, r < rows: the
 * activation xs already carries the block scales (times 256). */
static void fp8_rows(const float *xs, int64_t rows, const uint8_t *w, int64_t n0, int64_t nr,
                     int64_t K, float *y, int64_t ldy) {
    const uint8_t *wr[NR];
    for (int j = 0; j < NR; j++) wr[j] = w + (n0 + (j < nr ? j : 0)) * K;
    int64_t k = 0;
#ifdef __AVX512F__
    __m512 acc[NR][ROWS];
    for (int j = 0; j < NR; j++)
        for (int r = 0; r < ROWS; r++) acc[j][r] = _mm512_setzero_ps();
    for (; k + 16 <= K; k += 16) {
        __m512 wv[NR];
        for (int j = 0; j < NR; j++) wv[j] = load_e4m3x16_div256(wr[j] + k);
        for (int r = 0; r < rows; r++) {
            __m512 xv = _mm512_loadu_ps(xs + r * K + k);
            for (int j = 0; j < NR; j++) acc[j][r] = _mm512_fmadd_ps(xv, wv[j], acc[j][r]);
        }
    }
    float sum[NR][ROWS];
    for (int j = 0; j < NR; j++)
        for (int r = 0; r < rows; r++) sum[j][r] = _mm512_reduce_add_ps(acc[j][r]);
#else
    float sum[NR][ROWS] = {{0}};
#endif
    for (; k < K; k++)
        for (int j = 0; j < NR; j++) {
            float wv = e4m3_div256_scalar(wr[j][k]);
            for (int r = 0; r < rows; r++) sum[j][r] += xs[r * K + k] * wv;
        }
    for (int j = 0; j < nr; j++)
        for (int r = 0; r < rows; r++) y[r * ldy + n0 + j] = sum[j][r];
}

/* x [M, K] (fp32) . W^T for W e4m3 [N, K] with fp32 block scales s [ceil(N/128), ceil(K/128)]
 * -> y fp32 [M, N]. quant: x first goes through REF's FP8 activation quantization (blocks of
 * 128 along K; K must then be a multiple of 128). work: fp32 [M + min(M, ROWS), K] scratch.
 *
 * The 128 weight rows of a block row share their K-block scales, so the scales go into the
 * activation (a power of two: each product is the same as with the dequantized weight) and the
 * weight is only decoded. */
void dsv4_fp8_gemm(const float *x, const uint8_t *w, const float *s, float *y, float *work,
                   int64_t M, int64_t N, int64_t K, int64_t quant) {
    const float *xa = x;
    float *xs = work + M * K;
    if (quant) {
        memcpy(work, x, (size_t)(M * K) * sizeof(float));
        for (int64_t i = 0; i < M * K; i += FP8_BLOCK) fp8_block_round_trip(work + i, FP8_BLOCK);
        xa = work;
    }
    int64_t kb = (K + FP8_BLOCK - 1) / FP8_BLOCK;
    for (int64_t r0 = 0; r0 < M; r0 += ROWS) {
        int64_t rows = M - r0 < ROWS ? M - r0 : ROWS;
        for (int64_t nb = 0; nb * FP8_BLOCK < N; nb++) {
            const float *sn = s + nb * kb;
            for (int64_t r = 0; r < rows; r++)
                for (int64_t k = 0; k < K; k++)
                    xs[r * K + k] = xa[(r0 + r) * K + k] * (sn[k / FP8_BLOCK] * 256.0f);
            int64_t n1 = (nb + 1) * FP8_BLOCK < N ? (nb + 1) * FP8_BLOCK : N;
            for (int64_t n = nb * FP8_BLOCK; n < n1; n += NR)
                fp8_rows(xs, rows, w, n, n1 - n < NR ? n1 - n : NR, K, y + r0 * N, N);
        }
    }
}
