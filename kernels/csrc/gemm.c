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

#define ROWS 4
#define FP8_BLOCK 128

#define NR 4 /* weight rows per step: independent accumulator chains */
/* Decode reads each weight once, from memory: ask for the bytes this far ahead of the ones
 * being multiplied, enough to keep the memory system busy (the hardware prefetcher alone
 * left short FP8 rows at ~3 GB/s). Prefetches never fault, past the end included. */
#define PREFETCH_BYTES 8192
static inline void prefetch_ahead(const void *p) {
    __builtin_prefetch((const char *)p + PREFETCH_BYTES);
}

/* The weight rows of step s over [n0, n1) cut into NR stretches of len = ceil((n1-n0)/NR)
 * rows: row s of each stretch (the last stretch may be short). Returns how many exist. The
 * memory then serves NR streams at once: one thread reads the head ~1.3x faster so than as
 * one stream of adjacent rows, and each row's sum is the same either way. */
static inline int64_t spread_rows(int64_t n0, int64_t n1, int64_t len, int64_t s, int64_t *nj) {
    int64_t nr = 0;
    for (int j = 0; j < NR; j++)
        if (n0 + j * len + s < n1) nj[nr++] = n0 + j * len + s;
    return nr;
}

/* y[r, n] = sum_k x[r, k] * bf16(w[n, k]) for r < rows (rows <= ROWS), n0 <= n < n1;
 * x fp32 [rows, K]. NR weight rows at a time (spread_rows) keep NR x rows chains in flight. */
static void bf16_rows(const float *x, int64_t rows, const uint16_t *w, int64_t n0, int64_t n1,
                      int64_t K, float *y, int64_t ldy) {
    const int64_t len = (n1 - n0 + NR - 1) / NR;
    for (int64_t s = 0; s < len; s++) {
        int64_t nj[NR], nr = spread_rows(n0, n1, len, s, nj);
        const uint16_t *wr[NR];
        for (int j = 0; j < NR; j++) wr[j] = w + nj[j < nr ? j : 0] * K;
        float acc[NR][ROWS] = {{0}};
        int64_t k = 0;
#ifdef __AVX512F__
        __m512 va[NR][ROWS];
        for (int j = 0; j < NR; j++)
            for (int r = 0; r < ROWS; r++) va[j][r] = _mm512_setzero_ps();
        for (; k + 16 <= K; k += 16) {
            for (int j = 0; j < NR; j++) prefetch_ahead(wr[j] + k);
            __m512 wv[NR];
            for (int j = 0; j < NR; j++) wv[j] = load_bf16x16(wr[j] + k);
            for (int r = 0; r < rows; r++) {
                __m512 xv = _mm512_loadu_ps(x + r * K + k);
                for (int j = 0; j < NR; j++) va[j][r] = _mm512_fmadd_ps(xv, wv[j], va[j][r]);
            }
        }
        for (int j = 0; j < NR; j++)
            for (int r = 0; r < rows; r++) acc[j][r] = _mm512_reduce_add_ps(va[j][r]);
#endif
        for (; k < K; k++)
            for (int j = 0; j < NR; j++) {
                float wv = bf16_to_f32(wr[j][k]);
                for (int r = 0; r < rows; r++) acc[j][r] += x[r * K + k] * wv;
            }
        for (int j = 0; j < nr; j++)
            for (int r = 0; r < rows; r++) y[r * ldy + nj[j]] = acc[j][r];
    }
}

/* Operands in the caller's dtypes: x fp32 or bf16 (x_bf16) is widened into `xf`; results
 * are written as fp32, or rounded to bf16 (y_bf16) from the fp32 sums. */
static float *widen(const void *x, int64_t x_bf16, int64_t count, float *xf) {
    if (!x_bf16) return memcpy(xf, x, (size_t)count * sizeof(float));
    for (int64_t i = 0; i < count; i++) xf[i] = bf16_to_f32(((const uint16_t *)x)[i]);
    return xf;
}

static void store_bf16(const float *acc, void *y, int64_t count) {
    for (int64_t i = 0; i < count; i++) ((uint16_t *)y)[i] = f32_to_bf16(acc[i]);
}

/* x [M, K] . W^T for W bf16 [N, K] -> y [M, N]. Returns 0, or -1 when out of memory. */
int dsv4_bf16_gemm(const void *x, int64_t x_bf16, const uint16_t *w, void *y, int64_t y_bf16,
                   int64_t M, int64_t N, int64_t K) {
    float *xf = malloc((size_t)(M * K) * sizeof(float));
    float *acc = y_bf16 ? malloc((size_t)(M * N) * sizeof(float)) : y;
    if (!xf || !acc) {
        free(xf);
        if (y_bf16) free(acc);
        return -1;
    }
    widen(x, x_bf16, M * K, xf);
    for (int64_t r = 0; r < M; r += ROWS) {
        int64_t rows = M - r < ROWS ? M - r : ROWS;
        bf16_rows(xf + r * K, rows, w, 0, N, K, acc + r * N, N);
    }
    if (y_bf16) {
        store_bf16(acc, y, M * N);
        free(acc);
    }
    free(xf);
    return 0;
}

/* y[r, nj[j]] = sum_k xs[r, k] * e4m3(w[nj[j], k]) / 256 for j < nr, r < rows: the
 * activation xs already carries the block scales (times 256). */
static void fp8_rows(const float *xs, int64_t rows, const uint8_t *w, const int64_t *nj, int64_t nr,
                     int64_t K, float *y, int64_t ldy) {
    const uint8_t *wr[NR];
    for (int j = 0; j < NR; j++) wr[j] = w + nj[j < nr ? j : 0] * K;
    int64_t k = 0;
#ifdef __AVX512F__
    __m512 acc[NR][ROWS];
    for (int j = 0; j < NR; j++)
        for (int r = 0; r < ROWS; r++) acc[j][r] = _mm512_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        __m512 lo[NR], hi[NR];
        for (int j = 0; j < NR; j++) {
            prefetch_ahead(wr[j] + k);
            load_e4m3x32_div256(wr[j] + k, lo + j, hi + j);
        }
        for (int r = 0; r < rows; r++) {
            __m512 xl = _mm512_loadu_ps(xs + r * K + k), xh = _mm512_loadu_ps(xs + r * K + k + 16);
            for (int j = 0; j < NR; j++) {
                acc[j][r] = _mm512_fmadd_ps(xl, lo[j], acc[j][r]);
                acc[j][r] = _mm512_fmadd_ps(xh, hi[j], acc[j][r]);
            }
        }
    }
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
        for (int r = 0; r < rows; r++) y[r * ldy + nj[j]] = sum[j][r];
}

#if defined(__AVX512BF16__) && defined(__AVX512VBMI__)
#define FP8_DP 1
/* The bf16 dot-product path (vdpbf16ps: 32 products summed into 16 fp32 lanes per step).
 * An e4m3 weight / 256 is exact in bf16, and so is the activation when it is bf16 or FP8-
 * quantized, times power-of-two scales: the products are the same fp32 products as the FMA
 * path's, and each is added with fp32 rounding, in another order. (The instruction flushes
 * fp32 subnormals; products of these operands are ~2^-40 and up, nowhere near 2^-126.)
 * It decodes 64 weights in 6 instructions where the fp32 path spends ~20, which is what kept
 * that path from reading FP8 rows at the memory's rate. */

/* bf16 bits of e4m3 magnitude m (7 bits) / 256, split into their high and low bytes. */
static uint8_t e4m3_bf16_hi[128], e4m3_bf16_lo[128];

__attribute__((constructor)) static void e4m3_bf16_tables(void) {
    for (int m = 0; m < 128; m++) {
        uint16_t b = f32_to_bf16(e4m3_div256_scalar((uint8_t)m));
        e4m3_bf16_hi[m] = (uint8_t)(b >> 8);
        e4m3_bf16_lo[m] = (uint8_t)b;
    }
}

/* 64 e4m3 bytes -> 64 bf16 (values / 256) in two vectors: w0 holds elements 16l+0..7 and w1
 * elements 16l+8..15 of each 128-bit lane l (the order of the byte unpacks). `xbf16_permute`
 * puts x in the same order. */
static inline void decode_e4m3x64(const uint8_t *p, const __m512i tab[4], __m512i *w0,
                                  __m512i *w1) {
    __m512i v = _mm512_loadu_si512(p);
    __m512i mag = _mm512_and_si512(v, _mm512_set1_epi8(0x7f));
    __m512i hi = _mm512_permutex2var_epi8(tab[0], mag, tab[1]);
    __m512i lo = _mm512_permutex2var_epi8(tab[2], mag, tab[3]);
    hi = _mm512_ternarylogic_epi32(hi, v, _mm512_set1_epi8((char)0x80), 0xf8); /* hi | v & s */
    *w0 = _mm512_unpacklo_epi8(lo, hi);
    *w1 = _mm512_unpackhi_epi8(lo, hi);
}

/* x fp32 [K] (bf16-exact values) -> bf16 [K] in decode_e4m3x64's order, 64 at a time. */
static void xbf16_permute(const float *x, int64_t K, uint16_t *xb) {
    for (int64_t k0 = 0; k0 < K; k0 += 64)
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 4; l++)
                for (int i = 0; i < 8; i++) *xb++ = f32_to_bf16(x[k0 + 16 * l + 8 * h + i]);
}

/* fp8_rows for x given by xbf16_permute (K a multiple of 64). */
static void fp8_rows_dp(const uint16_t *xb, int64_t rows, const uint8_t *w, const int64_t *nj,
                        int64_t nr, int64_t K, float *y, int64_t ldy) {
    const __m512i tab[4] = {_mm512_loadu_si512(e4m3_bf16_hi), _mm512_loadu_si512(e4m3_bf16_hi + 64),
                            _mm512_loadu_si512(e4m3_bf16_lo), _mm512_loadu_si512(e4m3_bf16_lo + 64)};
    const uint8_t *wr[NR];
    for (int j = 0; j < NR; j++) wr[j] = w + nj[j < nr ? j : 0] * K;
    __m512 acc[NR][ROWS];
    for (int j = 0; j < NR; j++)
        for (int r = 0; r < ROWS; r++) acc[j][r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 64) {
        __m512i w0[NR], w1[NR];
        for (int j = 0; j < NR; j++) {
            prefetch_ahead(wr[j] + k);
            decode_e4m3x64(wr[j] + k, tab, w0 + j, w1 + j);
        }
        for (int r = 0; r < rows; r++) {
            __m512bh x0 = (__m512bh)_mm512_loadu_si512(xb + r * K + k);
            __m512bh x1 = (__m512bh)_mm512_loadu_si512(xb + r * K + k + 32);
            for (int j = 0; j < NR; j++) {
                acc[j][r] = _mm512_dpbf16_ps(acc[j][r], x0, (__m512bh)w0[j]);
                acc[j][r] = _mm512_dpbf16_ps(acc[j][r], x1, (__m512bh)w1[j]);
            }
        }
    }
    for (int r = 0; r < rows; r++) {
        float sum[4];
        _mm_storeu_ps(sum, sum4_ps(acc[0][r], acc[1][r], acc[2][r], acc[3][r]));
        for (int j = 0; j < nr; j++) y[r * ldy + nj[j]] = sum[j];
    }
}

/* xb [K] (xbf16_permute of x) times each K block's scale (a power of two, times 256 for the
 * table's values / 256) -> bf16 [K], exact: the permutation keeps each element in its block
 * of 64, so in its K block. */
static void scale_xbf16(const uint16_t *xb, int64_t K, const float *sn, uint16_t *out) {
    for (int64_t k = 0; k < K; k += 32) {
        const __m512 sc = _mm512_set1_ps(sn[k / FP8_BLOCK] * 256.0f);
        __m512 lo = load_bf16x16(xb + k), hi = load_bf16x16(xb + k + 16);
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_mul_ps(hi, sc), _mm512_mul_ps(lo, sc));
        _mm512_storeu_si512(out + k, (__m512i)v);
    }
}
#endif

/* x [M, K] . W^T for W e4m3 [N, K] with fp32 block scales s [ceil(N/128), ceil(K/128)]
 * -> y [M, N]. quant: x first goes through REF's FP8 activation quantization (blocks of 128
 * along K; K must then be a multiple of 128). Returns 0, or -1 when out of memory.
 *
 * The 128 weight rows of a block row share their K-block scales, so the scales go into the
 * activation (a power of two: each product is the same as with the dequantized weight) and the
 * weight is only decoded. */
int dsv4_fp8_gemm(const void *x, int64_t x_bf16, const uint8_t *w, const float *s, void *y,
                  int64_t y_bf16, int64_t M, int64_t N, int64_t K, int64_t quant) {
    int64_t rows_max = M < ROWS ? M : ROWS;
    /* xa: x as fp32 [M, K]; xs: a row group scaled [rows_max, K]; then two bf16 copies */
    float *xa = malloc((size_t)((M + 2 * rows_max) * K) * sizeof(float));
    float *acc = y_bf16 ? malloc((size_t)(M * N) * sizeof(float)) : y;
    if (!xa || !acc) {
        free(xa);
        if (y_bf16) free(acc);
        return -1;
    }
    float *xs = xa + M * K;
    widen(x, x_bf16, M * K, xa);
    if (quant)
        for (int64_t i = 0; i < M * K; i += FP8_BLOCK) fp8_block_round_trip(xa + i, FP8_BLOCK);
    int64_t kb = (K + FP8_BLOCK - 1) / FP8_BLOCK;
#ifdef FP8_DP
    /* bf16 operands are exact when x is bf16 or FP8-quantized (see fp8_rows_dp); xb0 holds
     * the row group permuted once, xb its copy scaled for each block row */
    int dp = (quant || x_bf16) && K % 64 == 0;
    uint16_t *xb0 = (uint16_t *)(xs + rows_max * K), *xb = xb0 + rows_max * K;
#endif
    for (int64_t r0 = 0; r0 < M; r0 += ROWS) {
        int64_t rows = M - r0 < ROWS ? M - r0 : ROWS;
#ifdef FP8_DP
        if (dp)
            for (int64_t r = 0; r < rows; r++) xbf16_permute(xa + (r0 + r) * K, K, xb0 + r * K);
#endif
        for (int64_t nb = 0; nb * FP8_BLOCK < N; nb++) {
            const float *sn = s + nb * kb;
            int64_t n1 = (nb + 1) * FP8_BLOCK < N ? (nb + 1) * FP8_BLOCK : N, nj[NR];
            int64_t len = (n1 - nb * FP8_BLOCK + NR - 1) / NR; /* see spread_rows */
#ifdef FP8_DP
            if (dp) {
                for (int64_t r = 0; r < rows; r++) scale_xbf16(xb0 + r * K, K, sn, xb + r * K);
                for (int64_t st = 0; st < len; st++) {
                    int64_t nr = spread_rows(nb * FP8_BLOCK, n1, len, st, nj);
                    fp8_rows_dp(xb, rows, w, nj, nr, K, acc + r0 * N, N);
                }
                continue;
            }
#endif
            for (int64_t r = 0; r < rows; r++)
                for (int64_t k = 0; k < K; k++)
                    xs[r * K + k] = xa[(r0 + r) * K + k] * (sn[k / FP8_BLOCK] * 256.0f);
            for (int64_t st = 0; st < len; st++) {
                int64_t nr = spread_rows(nb * FP8_BLOCK, n1, len, st, nj);
                fp8_rows(xs, rows, w, nj, nr, K, acc + r0 * N, N);
            }
        }
    }
    if (y_bf16) {
        store_bf16(acc, y, M * N);
        free(acc);
    }
    free(xa);
    return 0;
}

/* REF's shared expert on a few rows: g = w1(x), u = w3(x) (FP8 GEMMs whose outputs are
 * rounded to the act dtype), u = clamp(u, +-limit), g = min(g, limit) (limit > 0), then
 * h = act(silu(g) * u) in fp32, and y = w2(h) in the act dtype. quant: REF's FP8 activation
 * quantization before each GEMM. x and y act [M, D]; w1, w3 e4m3 [I, D], w2 [D, I] with
 * their fp32 block scales. Returns 0, or -1 when out of memory. */
int dsv4_fp8_swiglu(const void *x, int64_t bf16, const uint8_t *w1, const float *s1,
                    const uint8_t *w3, const float *s3, const uint8_t *w2, const float *s2,
                    void *y, int64_t M, int64_t D, int64_t I, float limit, int64_t quant) {
    float *g = malloc((size_t)(3 * M * I) * sizeof(float));
    if (!g) return -1;
    float *u = g + M * I, *h = u + M * I;
    int rc = dsv4_fp8_gemm(x, bf16, w1, s1, g, 0, M, I, D, quant);
    rc |= dsv4_fp8_gemm(x, bf16, w3, s3, u, 0, M, I, D, quant);
    for (int64_t i = 0; !rc && i < M * I; i++) {
        float gi = bf16 ? round_bf16(g[i]) : g[i], ui = bf16 ? round_bf16(u[i]) : u[i];
        if (limit > 0) {
            ui = ui < -limit ? -limit : (ui > limit ? limit : ui);
            gi = gi > limit ? limit : gi;
        }
        float a = gi / (1.0f + expf(-gi)) * ui;
        h[i] = bf16 ? round_bf16(a) : a;
    }
    if (!rc) rc = dsv4_fp8_gemm(h, 0, w2, s2, y, bf16, M, D, I, quant);
    free(g);
    return rc;
}
