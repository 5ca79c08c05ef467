/* bf16 GEMMs on AMX tiles with fp32 accumulation: y[M, N] = x[M, K] . W[N, K]^T, where x is
 * bf16 and W is bf16 or FP8 e4m3 with fp32 block scales (128 x 128). Every product of two bf16
 * values is exact in fp32 and the tile unit accumulates in fp32, so this is REF's fp32 GEMM of
 * bf16-valued operands (its head; its FP8 GEMMs, whose e4m3 x power-of-two values are bf16
 * values too) up to the summation order.
 *
 * x is the tiles' A operand (16 rows of 32 K values load straight from x). The weight is the
 * B operand: 16 rows at a time are decoded to bf16 (FP8) and transposed into the pair layout,
 * a chunk of NCHUNK rows whose tiles then serve every block of x rows, so the weight is read
 * once and each packed tile is reused M / 16 times. Result tiles are y[m, n] itself.
 *
 * Linux hands out AMX state only on request: `dsv4_amx_init` asks for it and says whether the
 * tiles can be used; without AMX (another CPU, another OS, an old compiler) it returns 0 and
 * the caller keeps its other path. */
#include <stdint.h>
#include <stdlib.h>

#include "amx.h"
#include "common.h"

#ifdef DSV4_AMX
#include <sys/mman.h>
#endif

#define BLK 32 /* x rows per block: 2 A tiles against 2 B tiles (4 result tiles) */
#define FP8_BLOCK 128
#define NCHUNK 256 /* weight rows whose packed tiles are reused by every block of x rows */

int dsv4_amx_init(void) {
#ifdef DSV4_AMX
    return amx_request();
#else
    return 0;
#endif
}

#ifdef DSV4_AMX
/* A large output (the head's logits for a prompt: 0.5 MB per row) is written once, page by
 * page: on fresh memory each 4 KiB page faults in on its first store, which costs more than
 * the GEMM. Transparent huge pages cut the faults 512-fold where the system allows them. */
static void advise_huge(void *p, size_t bytes) {
    const uintptr_t huge = 2u << 20;
    uintptr_t lo = ((uintptr_t)p + huge - 1) & ~(huge - 1), hi = ((uintptr_t)p + bytes) & ~(huge - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
}

/* 16 weight rows n0.. as bf16 [16][K] into `rows` (zero rows past N); FP8 rows decoded and
 * scaled (an e4m3 value times a power-of-two scale is exact in bf16). */
static void weight_rows(const void *w, int64_t fp8, const float *scale, int64_t n0, int64_t N,
                        int64_t K, uint16_t *rows) {
    int64_t kb = (K + FP8_BLOCK - 1) / FP8_BLOCK;
    for (int64_t r = 0; r < 16; r++) {
        uint16_t *dst = rows + r * K;
        if (n0 + r >= N) {
            memset(dst, 0, (size_t)K * 2);
        } else if (!fp8) {
            memcpy(dst, (const uint16_t *)w + (n0 + r) * K, (size_t)K * 2);
        } else {
            const uint8_t *src = (const uint8_t *)w + (n0 + r) * K;
            const float *s = scale + ((n0 + r) / FP8_BLOCK) * kb;
            for (int64_t k = 0; k < K; k += 16) {
                __m512 v = _mm512_mul_ps(load_e4m3x16_div256(src + k),
                                         _mm512_set1_ps(s[k / FP8_BLOCK] * 256.0f));
                __m512i b = _mm512_srli_epi32(_mm512_castps_si512(v), 16);
                _mm256_storeu_si256((__m256i *)(dst + k), _mm512_cvtepi32_epi16(b));
            }
        }
    }
}

/* a 16 x 16 fp32 tile c[m][n] into y[m0.., n0..] (fp32 or bf16), within M and N */
static void store_tile(const float *c, void *y, int64_t y_bf16, int64_t m0, int64_t n0,
                       int64_t M, int64_t N) {
    int64_t mm = M - m0 < 16 ? M - m0 : 16, nn = N - n0 < 16 ? N - n0 : 16;
    if (mm <= 0 || nn <= 0) return;
    __mmask16 cols = (__mmask16)((1u << nn) - 1);
    for (int64_t m = 0; m < mm; m++) {
        int64_t row = (m0 + m) * N + n0;
        __m512 v = _mm512_load_ps(c + m * 16);
        if (y_bf16)
            _mm256_mask_storeu_epi16((uint16_t *)y + row, cols, f32x16_to_bf16(v));
        else
            _mm512_mask_storeu_ps((float *)y + row, cols, v);
    }
}

/* C tile t of the block at (m0, n0) out to y: straight when whole and fp32, else via c */
static void out_tile(int t, float *c, void *y, int64_t y_bf16, int64_t m0, int64_t n0,
                     int64_t M, int64_t N) {
    if (!y_bf16 && m0 + 16 <= M && n0 + 16 <= N) {
        switch (t) {  /* tile numbers must be constants */
        case 0: _tile_stored(0, (float *)y + m0 * N + n0, N * 4); break;
        case 1: _tile_stored(1, (float *)y + m0 * N + n0, N * 4); break;
        case 2: _tile_stored(2, (float *)y + m0 * N + n0, N * 4); break;
        default: _tile_stored(3, (float *)y + m0 * N + n0, N * 4); break;
        }
        return;
    }
    switch (t) {
    case 0: _tile_stored(0, c, 64); break;
    case 1: _tile_stored(1, c, 64); break;
    case 2: _tile_stored(2, c, 64); break;
    default: _tile_stored(3, c, 64); break;
    }
    store_tile(c, y, y_bf16, m0, n0, M, N);
}
#endif

/* x bf16 [M, K] . W^T -> y [M, N] (fp32, or bf16 rounded from the fp32 sums: y_bf16). W is
 * bf16 [N, K] (fp8 = 0) or e4m3 [N, K] with fp32 scales [ceil(N/128), ceil(K/128)] (fp8 = 1).
 * K must be a multiple of 32. Returns 0; -1 when out of memory; -2 when AMX is not built in
 * or K does not fit (call `dsv4_amx_init` first). */
int dsv4_amx_gemm(const uint16_t *x, const void *w, int64_t fp8, const float *scale, void *y,
                  int64_t y_bf16, int64_t M, int64_t N, int64_t K) {
#ifdef DSV4_AMX
    if (K % AMX_KSTEP || K <= 0) return -2;
    int64_t Mp = (M + BLK - 1) / BLK * BLK, steps = K / AMX_KSTEP, nchunk = NCHUNK;
    uint16_t *xp = aligned_alloc(64, (size_t)(Mp * K) * 2);
    uint16_t *rows = aligned_alloc(64, (size_t)(16 * K) * 2);
    uint16_t *bt = aligned_alloc(64, (size_t)(nchunk / 16 * steps) * 1024);
    float *c = aligned_alloc(64, 256 * sizeof(float));
    if (!xp || !rows || !bt || !c) {
        free(xp); free(rows); free(bt); free(c);
        return -1;
    }
    advise_huge(y, (size_t)(M * N) * (y_bf16 ? 2 : 4));
    memcpy(xp, x, (size_t)(M * K) * 2);
    memset(xp + M * K, 0, (size_t)((Mp - M) * K) * 2);
    amx_configure();
    for (int64_t c0 = 0; c0 < N; c0 += nchunk) {
        int64_t c1 = c0 + nchunk < N ? c0 + nchunk : N, tiles = (c1 - c0 + 15) / 16;
        for (int64_t t = 0; t < tiles; t++) {
            weight_rows(w, fp8, scale, c0 + 16 * t, N, K, rows);
            amx_pack_rows(rows, K, bt + t * steps * AMX_TILE_BF16);
        }
        if (tiles % 2) memset(bt + tiles * steps * AMX_TILE_BF16, 0, (size_t)steps * 1024);
        for (int64_t m0 = 0; m0 < Mp; m0 += BLK) {
            for (int64_t t = 0; t < tiles; t += 2) {
                const uint16_t *b0 = bt + t * steps * AMX_TILE_BF16;
                amx_block(xp + m0 * K, K, b0, b0 + steps * AMX_TILE_BF16, steps);
                int64_t n0 = c0 + 16 * t;
                out_tile(0, c, y, y_bf16, m0, n0, M, N);
                out_tile(1, c, y, y_bf16, m0, n0 + 16, M, N);
                out_tile(2, c, y, y_bf16, m0 + 16, n0, M, N);
                out_tile(3, c, y, y_bf16, m0 + 16, n0 + 16, M, N);
            }
        }
    }
    _tile_release();
    free(xp); free(rows); free(bt); free(c);
    return 0;
#else
    (void)x; (void)w; (void)fp8; (void)scale; (void)y; (void)y_bf16; (void)M; (void)N; (void)K;
    return -2;
#endif
}
