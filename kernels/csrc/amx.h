/* The AMX core shared by the kernels that run bf16 GEMMs on tiles (amx.c, moe.c).
 *
 * TDPBF16PS multiplies an A tile (16 rows of 32 bf16 K values, loaded straight from row-major
 * bf16 rows) by a B tile in the pair layout (16 rows of 16 32-bit words: row r, column c holds
 * the K values 2r and 2r+1 of output column c) and adds the products into an fp32 C tile.
 * Products of two bf16 values are exact in fp32, so a GEMM of bf16-valued operands on tiles is
 * REF's fp32 GEMM up to the summation order. (The tile unit reads subnormal inputs as zero and
 * flushes subnormal sums, magnitudes below 2^-126 that no real weight, activation or product
 * comes near: e.g. an FP4 block with the e8m0 scale 2^-127.)
 *
 * Tiles: 0..3 accumulate a 2 x 2 block of C tiles (32 A rows by 32 output columns), 4 and 5
 * hold A tiles, 6 and 7 B tiles. Everything here exists only when the compiler targets AMX on
 * Linux (DSV4_AMX); elsewhere the including kernels keep their other paths. */
#ifndef DSV4_AMX_H
#define DSV4_AMX_H

#include <stdint.h>
#include <string.h>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512F__) && defined(__linux__)
#define DSV4_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AMX_KSTEP 32      /* bf16 values of K per tile row (64 bytes) */
#define AMX_TILE_BF16 512 /* bf16 values of one packed B tile (1 KiB) */

/* Linux lends the tile state only on request (once per process is enough); 1 when granted. */
static inline int amx_request(void) {
    const long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

/* Every tile 16 rows of 64 bytes (palette 1). Call before the tile loops; _tile_release()
 * after them. */
static inline void amx_configure(void) {
    struct {
        uint8_t palette, start_row, reserved[14];
        uint16_t colsb[16];
        uint8_t rows[16];
    } c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) {
        c.colsb[t] = 64;
        c.rows[t] = 16;
    }
    _tile_loadconfig(&c);
}

/* 16 x 16 32-bit words: r[i] holds row i; afterwards r[i] holds column i. */
static inline void amx_transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* r[4i + j], lane L: column 4L + j, rows 4i..4i+3 */
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int j = 0; j < 4; j++) {
        __m512i u0 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x88);
        __m512i u1 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xdd);
        __m512i v0 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x88);
        __m512i v1 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xdd);
        t[j] = _mm512_shuffle_i32x4(u0, v0, 0x88);
        t[4 + j] = _mm512_shuffle_i32x4(u1, v1, 0x88);
        t[8 + j] = _mm512_shuffle_i32x4(u0, v0, 0xdd);
        t[12 + j] = _mm512_shuffle_i32x4(u1, v1, 0xdd);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

/* One packed B tile (64-byte aligned dst) from the 32 K values of one step of 16 output
 * columns: r[c] holds column c's values as 16 pairs (word j: K values 2j, 2j + 1). */
static inline void amx_pack_step(__m512i r[16], uint16_t *dst) {
    amx_transpose16(r);
    for (int i = 0; i < 16; i++) _mm512_store_si512(dst + i * 32, r[i]);
}

/* The B tiles of 16 output columns given as bf16 rows [16][K] (K a multiple of 32): tile s
 * of bt (512 bf16 each) holds K step s. */
static inline void amx_pack_rows(const uint16_t *rows, int64_t K, uint16_t *bt) {
    for (int64_t s = 0; s < K / AMX_KSTEP; s++) {
        __m512i r[16];
        for (int c = 0; c < 16; c++) r[c] = _mm512_loadu_si512(rows + c * K + s * AMX_KSTEP);
        amx_pack_step(r, bt + s * AMX_TILE_BF16);
    }
}

/* C tiles 0..3 = the 32 A rows a[0..32) (row-major bf16, lda values apart) times the two
 * packed B tile columns b0, b1 (steps tiles each): tile 0 rows 0..15 x b0, 1 rows 0..15 x b1,
 * 2 rows 16..31 x b0, 3 rows 16..31 x b1. The caller stores them. */
static inline void amx_block(const uint16_t *a, int64_t lda, const uint16_t *b0,
                             const uint16_t *b1, int64_t steps) {
    const uint16_t *a1 = a + 16 * lda;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t s = 0; s < steps; s++) {
        _tile_loadd(4, a + s * AMX_KSTEP, lda * 2);
        _tile_loadd(5, a1 + s * AMX_KSTEP, lda * 2);
        _tile_loadd(6, b0 + s * AMX_TILE_BF16, 64);
        _tile_loadd(7, b1 + s * AMX_TILE_BF16, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
}

/* C tiles 0, 1 = the 16 A rows a[0..16) times b0, b1: amx_block for a last block of 16. */
static inline void amx_block16(const uint16_t *a, int64_t lda, const uint16_t *b0,
                               const uint16_t *b1, int64_t steps) {
    _tile_zero(0);
    _tile_zero(1);
    for (int64_t s = 0; s < steps; s++) {
        _tile_loadd(4, a + s * AMX_KSTEP, lda * 2);
        _tile_loadd(6, b0 + s * AMX_TILE_BF16, 64);
        _tile_loadd(7, b1 + s * AMX_TILE_BF16, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
    }
}

/* out fp32 [M, 16·tiles] (ldo floats apart) = a [M, K] . B for M a multiple of 16 and an even
 * number of packed B tile columns bt (tile column t at bt + t·steps·512 bf16). Every block
 * of 32 rows passes over all the B tiles, so they should fit the L2 cache. */
static inline void amx_gemm_tiles(const uint16_t *a, int64_t lda, int64_t M, const uint16_t *bt,
                                  int64_t tiles, int64_t steps, float *out, int64_t ldo) {
    const int64_t tstride = steps * AMX_TILE_BF16;
    for (int64_t m0 = 0; m0 < M; m0 += 32)
        for (int64_t t = 0; t < tiles; t += 2) {
            const uint16_t *b0 = bt + t * tstride;
            float *o = out + m0 * ldo + 16 * t;
            if (m0 + 32 > M) { /* the last 16 rows */
                amx_block16(a + m0 * lda, lda, b0, b0 + tstride, steps);
                _tile_stored(0, o, ldo * 4);
                _tile_stored(1, o + 16, ldo * 4);
                continue;
            }
            amx_block(a + m0 * lda, lda, b0, b0 + tstride, steps);
            _tile_stored(0, o, ldo * 4);
            _tile_stored(1, o + 16, ldo * 4);
            _tile_stored(2, o + 16 * ldo, ldo * 4);
            _tile_stored(3, o + 16 * ldo + 16, ldo * 4);
        }
}
#endif

#endif
