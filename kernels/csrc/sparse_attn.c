/* Sparse attention with an attention sink, one query row at a time (kernels/sparse_attn.py,
 * sparse_attn_ref): for each query and head, fp32 scores (q . kv[i]) * scale over the listed
 * rows, the row max over the valid ones (0 when none is), p = exp(s - max),
 * denom = sum p + exp(sink[h] - max), out = sum(p rounded to the act dtype) * kv[i] / denom.
 *
 * Two passes per query, as the reference: all scores into a small buffer, then the max,
 * then exp / round / P.V, so that p is taken against the final max (an online softmax would
 * round p against running maxima and give other bits). Only the summation order of the dot
 * products and of the denominator differs from torch. Repeated indices count once per entry.
 *
 * Three paths, the same numerics: bf16 with D % 32 == 0 on AMX tiles (x86-64 Linux, when the
 * kernel lends them); otherwise AVX-512 FMA loops over fp32 rows; otherwise portable loops
 * that gcc vectorizes. The fp32-row paths read an fp32 kv directly, or a bf16 kv converted
 * once per call (when the queries together list more entries than kv has rows) or gathered
 * per query. bf16 tensors are uint16 bit patterns. */
#include <stdint.h>
#include <stdlib.h>

#include "common.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* exp(x) in fp32, within ~1 ulp (torch's CPU exp is within 1 ulp too; the two may differ
 * in the last bit). Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, degree-7 Taylor
 * polynomial, and 2^k applied in two halves so that results down to the subnormals come out
 * right. Written lane-wise so that gcc vectorizes the loops that call it. */
static inline float exp_lanes(float x) {
    const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
    float xc = x < -104.0f ? -104.0f : (x > 89.0f ? 89.0f : x);
    float k = rintf(xc * 1.44269504088896341f);
    float r = fmaf(k, -ln2_hi, xc);
    r = fmaf(k, -ln2_lo, r);
    float p = 1.0f / 5040;
    p = fmaf(p, r, 1.0f / 720);
    p = fmaf(p, r, 1.0f / 120);
    p = fmaf(p, r, 1.0f / 24);
    p = fmaf(p, r, 1.0f / 6);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    int32_t ki = (int32_t)k, k1 = ki / 2, k2 = ki - k1; /* each within the normal range */
    float s1 = f32_from_bits((uint32_t)(k1 + 127) << 23);
    float s2 = f32_from_bits((uint32_t)(k2 + 127) << 23);
    float y = p * s1 * s2;
    return x < -104.0f ? 0.0f : (x != x ? x : y);
}

/* ---- scores: s[h * ks + j] = (q[h] . rows[j]) * scale, for j < nv ---- */

static void scores_scalar(const float *q, const float *const *rows, int64_t nv, int64_t h,
                          int64_t d, float scale, float *s, int64_t ks) {
    for (int64_t j = 0; j < nv; j++)
        for (int64_t hh = 0; hh < h; hh++) {
            const float *a = q + hh * d, *b = rows[j];
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t i = 0; i < d; i++) acc += a[i] * b[i];
            s[hh * ks + j] = acc * scale;
        }
}

#ifdef __AVX512F__
/* Sums of 8 vectors, 4 per 128-bit lane: a transpose-and-add tree. Lanes 0-3 of the result
 * hold the sums of a[0..3], lanes 8-11 those of a[4..7]. */
static inline __m512 reduce8(__m512 a0, __m512 a1, __m512 a2, __m512 a3, __m512 a4, __m512 a5,
                             __m512 a6, __m512 a7) {
    __m512 x0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    __m512 x1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    __m512 x2 = _mm512_add_ps(_mm512_unpacklo_ps(a4, a5), _mm512_unpackhi_ps(a4, a5));
    __m512 x3 = _mm512_add_ps(_mm512_unpacklo_ps(a6, a7), _mm512_unpackhi_ps(a6, a7));
    __m512d u0 = _mm512_castps_pd(x0), u1 = _mm512_castps_pd(x1);
    __m512d u2 = _mm512_castps_pd(x2), u3 = _mm512_castps_pd(x3);
    /* y0, y1: four 128-bit partial sums of a0..a3 and of a4..a7 */
    __m512 y0 = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(u0, u1)),
                              _mm512_castpd_ps(_mm512_unpackhi_pd(u0, u1)));
    __m512 y1 = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(u2, u3)),
                              _mm512_castpd_ps(_mm512_unpackhi_pd(u2, u3)));
    __m512 z = _mm512_add_ps(_mm512_shuffle_f32x4(y0, y1, 0x88),
                             _mm512_shuffle_f32x4(y0, y1, 0xdd));
    return _mm512_add_ps(z, _mm512_shuffle_f32x4(z, z, 0xb1));
}

/* Blocks of 3 rows x 8 heads: 24 accumulators fed by 11 loads per 24 FMAs (loads, not FMAs,
 * bound these loops on our machines). A short block reuses its last row / head and drops
 * those results. */
static void scores_avx512(const float *q, const float *const *rows, int64_t nv, int64_t h,
                          int64_t d, float scale, float *s, int64_t ks) {
    enum { R = 3, HB = 8 };
    const int64_t dv = d & ~(int64_t)15;
    const __mmask16 tail = (__mmask16)((1u << (d & 15)) - 1u);
    for (int64_t h0 = 0; h0 < h; h0 += HB) {
        const float *qp[HB];
        const int nh = h - h0 < HB ? (int)(h - h0) : HB;
        for (int k = 0; k < HB; k++) qp[k] = q + (h0 + (k < nh ? k : nh - 1)) * d;
        for (int64_t j0 = 0; j0 < nv; j0 += R) {
            const int nr = nv - j0 < R ? (int)(nv - j0) : R;
            const float *rp[R];
            for (int r = 0; r < R; r++) rp[r] = rows[j0 + (r < nr ? r : nr - 1)];
            __m512 acc[R * HB];
            for (int k = 0; k < R * HB; k++) acc[k] = _mm512_setzero_ps();
            for (int64_t i = 0; i <= d - 1; i += 16) {
                const __mmask16 m = i < dv ? 0xffff : tail;
                __m512 rv[R];
                for (int r = 0; r < R; r++) rv[r] = _mm512_maskz_loadu_ps(m, rp[r] + i);
                for (int k = 0; k < HB; k++) {
                    __m512 qv = _mm512_maskz_loadu_ps(m, qp[k] + i);
                    __asm__("" : "+v"(qv)); /* one load, not one folded into each FMA */
                    for (int r = 0; r < R; r++)
                        acc[r * HB + k] = _mm512_fmadd_ps(rv[r], qv, acc[r * HB + k]);
                }
            }
            /* all R x HB stores: a reused row / head stores its own value again */
#pragma GCC unroll 3
            for (int r = 0; r < R; r++) {
                float v[16];
                _mm512_storeu_ps(v, reduce8(acc[r * HB], acc[r * HB + 1], acc[r * HB + 2],
                                            acc[r * HB + 3], acc[r * HB + 4], acc[r * HB + 5],
                                            acc[r * HB + 6], acc[r * HB + 7]));
                float *sr = s + j0 + (r < nr ? r : nr - 1);
                for (int k = 0; k < HB; k++)
                    sr[(h0 + (k < nh ? k : nh - 1)) * ks] = v[(k & 3) + 8 * (k >> 2)] * scale;
            }
        }
    }
}
#endif

/* ---- P.V: o[h] = sum_j p[h * ks + j] * rows[j], for j < nv ---- */

static void pv_scalar(const float *p, int64_t ks, const float *const *rows, int64_t nv,
                      int64_t h, int64_t d, float *o) {
    for (int64_t i = 0; i < h * d; i++) o[i] = 0.0f;
    for (int64_t hh = 0; hh < h; hh++) {
        float *oh = o + hh * d;
        for (int64_t j = 0; j < nv; j++) {
            const float w = p[hh * ks + j], *r = rows[j];
#pragma omp simd
            for (int64_t i = 0; i < d; i++) oh[i] += w * r[i];
        }
    }
}

#ifdef __AVX512F__
/* The first `left` of 16 lanes. */
static inline __mmask16 col_mask(int64_t left) {
    return left >= 16 ? 0xffff : (left <= 0 ? 0 : (__mmask16)((1u << left) - 1u));
}

/* Blocks of 8 heads x 48 columns: 24 accumulators fed by 3 row loads and 8 broadcasts per
 * 24 FMAs; masked loads and stores cover a D that is not a multiple of 48. */
static void pv_avx512(const float *p, int64_t ks, const float *const *rows, int64_t nv,
                      int64_t h, int64_t d, float *o) {
    enum { V = 3, HB = 8 };
    for (int64_t h0 = 0; h0 < h; h0 += HB) {
        const float *pp[HB];
        const int nh = h - h0 < HB ? (int)(h - h0) : HB;
        for (int k = 0; k < HB; k++) pp[k] = p + (h0 + (k < nh ? k : nh - 1)) * ks;
        for (int64_t c = 0; c < d; c += 16 * V) {
            const __mmask16 m0 = col_mask(d - c), m1 = col_mask(d - c - 16);
            const __mmask16 m2 = col_mask(d - c - 32);
            /* named accumulators: gcc spills some of an array's across this loop */
#define PV_DECL(k) __m512 a##k##0 = _mm512_setzero_ps(), a##k##1 = a##k##0, a##k##2 = a##k##0;
#define PV_FMA(k)                                                                             \
    w = _mm512_set1_ps(pp[k][j]);                                                             \
    a##k##0 = _mm512_fmadd_ps(w, r0, a##k##0);                                                \
    a##k##1 = _mm512_fmadd_ps(w, r1, a##k##1);                                                \
    a##k##2 = _mm512_fmadd_ps(w, r2, a##k##2);
#define PV_STORE(k) /* a reused head stores its own values again */                           \
    {                                                                                         \
        float *ok = o + (h0 + (k < nh ? k : nh - 1)) * d + c;                                 \
        _mm512_mask_storeu_ps(ok, m0, a##k##0);                                               \
        _mm512_mask_storeu_ps(ok + 16, m1, a##k##1);                                          \
        _mm512_mask_storeu_ps(ok + 32, m2, a##k##2);                                          \
    }
            PV_DECL(0) PV_DECL(1) PV_DECL(2) PV_DECL(3)
            PV_DECL(4) PV_DECL(5) PV_DECL(6) PV_DECL(7)
            for (int64_t j = 0; j < nv; j++) {
                const float *r = rows[j] + c;
                __m512 r0 = _mm512_maskz_loadu_ps(m0, r), r1 = _mm512_maskz_loadu_ps(m1, r + 16);
                __m512 r2 = _mm512_maskz_loadu_ps(m2, r + 32), w;
                PV_FMA(0) PV_FMA(1) PV_FMA(2) PV_FMA(3)
                PV_FMA(4) PV_FMA(5) PV_FMA(6) PV_FMA(7)
            }
            PV_STORE(0) PV_STORE(1) PV_STORE(2) PV_STORE(3)
            PV_STORE(4) PV_STORE(5) PV_STORE(6) PV_STORE(7)
#undef PV_DECL
#undef PV_FMA
#undef PV_STORE
        }
    }
}
#endif

typedef void (*scores_fn)(const float *, const float *const *, int64_t, int64_t, int64_t, float,
                          float *, int64_t);
typedef void (*pv_fn)(const float *, int64_t, const float *const *, int64_t, int64_t, int64_t,
                      float *);

/* ---- the softmax and the output, shared by both paths ---- */

/* s [nv] scores -> p: into p16 as bf16 bits when given, else into s (rounded to bf16 when
 * bf16); returns the denominator. */
static float sink_softmax(float *s, int64_t nv, float sink, int bf16, uint16_t *p16) {
    float top = -INFINITY;
#pragma omp simd reduction(max : top)
    for (int64_t j = 0; j < nv; j++) top = s[j] > top ? s[j] : top;
    if (!(top > -INFINITY && top < INFINITY)) top = 0.0f; /* all-skip rows (as torch.isfinite) */
    float sum = 0.0f; /* the denominator takes p before the cast */
    if (p16) {
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < nv; j++) {
            float e = exp_lanes(s[j] - top);
            sum += e;
            p16[j] = f32_to_bf16(e);
        }
    } else {
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < nv; j++) {
            float e = exp_lanes(s[j] - top);
            sum += e;
            s[j] = bf16 ? round_bf16(e) : e;
        }
    }
    return sum + exp_lanes(sink - top);
}

/* y [D] act = o / dn, cast as `(out / denom).to(dtype)` does. */
static void write_out(const float *o, float dn, int64_t d, void *y, int bf16) {
    if (bf16) {
        uint16_t *u = (uint16_t *)y;
#pragma omp simd
        for (int64_t i = 0; i < d; i++) u[i] = f32_to_bf16(o[i] / dn);
    } else {
        float *f = (float *)y;
#pragma omp simd
        for (int64_t i = 0; i < d; i++) f[i] = o[i] / dn;
    }
}

static void to_f32(const void *src, int bf16, int64_t n, float *dst) {
    if (bf16) {
        const uint16_t *u = (const uint16_t *)src;
#pragma omp simd
        for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32(u[i]);
    } else {
        memcpy(dst, src, (size_t)n * sizeof(float));
    }
}

/* ---- scratch memory ----
 * Per-query buffers come from one block kept per thread between calls (grown, never shrunk):
 * freshly malloc'd blocks of this size are new pages every call, which costs a decode step
 * more than its arithmetic. Per-call buffers (a converted kv) are malloc'd and freed. */

static __thread char *arena_base;
static __thread size_t arena_size;

static size_t rup64(size_t n) { return (n + 63) & ~(size_t)63; }

/* The thread's block with room for `n` bytes, or NULL. */
static char *arena(size_t n) {
    if (n > arena_size) {
        free(arena_base);
        arena_base = aligned_alloc(64, rup64(n));
        arena_size = arena_base ? n : 0;
    }
    return arena_base;
}

/* The next n bytes at *cur (64-byte aligned). */
static void *carve(char **cur, size_t n) {
    void *p = *cur;
    *cur += rup64(n);
    return p;
}

/* ---- the fp32-rows path: any act dtype, D, H ---- */

typedef struct {
    scores_fn scores;
    pv_fn pv;
    float *qf;          /* [H, D] the query in fp32 */
    float *s;           /* [H, K] scores, then p */
    float *o;           /* [H, D] P.V accumulator */
    float *dn;          /* [H] denominators */
    float *gather;      /* [K, D] this query's rows in fp32 (bf16 decode) */
    const float **rows; /* [K] the valid entries' fp32 rows */
} f32_scratch;

/* One query: q [H, D] act, idx [K], kvf the fp32 rows (NULL: gather them from kv bf16). */
static void attend_f32(const void *q, const uint16_t *kv16, const float *kvf, const float *sink,
                       const int32_t *idx, void *out, int64_t h, int64_t d, int64_t k,
                       float scale, int bf16, const f32_scratch *w) {
    int64_t nv = 0;
    for (int64_t j = 0; j < k; j++) {
        if (idx[j] < 0) continue;
        if (kvf) {
            w->rows[nv] = kvf + (int64_t)idx[j] * d;
        } else {
            to_f32(kv16 + (int64_t)idx[j] * d, 1, d, w->gather + nv * d);
            w->rows[nv] = w->gather + nv * d;
        }
        nv++;
    }
    const float *qf = (const float *)q;
    if (bf16) {
        to_f32(q, 1, h * d, w->qf);
        qf = w->qf;
    }
    w->scores(qf, w->rows, nv, h, d, scale, w->s, k);
    for (int64_t hh = 0; hh < h; hh++)
        w->dn[hh] = sink_softmax(w->s + hh * k, nv, sink[hh], bf16, NULL);
    w->pv(w->s, k, w->rows, nv, h, d, w->o);
    for (int64_t hh = 0; hh < h; hh++)
        write_out(w->o + hh * d, w->dn[hh], d, (char *)out + hh * d * (bf16 ? 2 : 4), bf16);
}

static int64_t run_f32(const void *q, const void *kv, const float *sink, const int32_t *idx,
                       void *out, int64_t b, int64_t m, int64_t h, int64_t d, int64_t n,
                       int64_t k, float scale, int bf16, int64_t listed, scores_fn scores,
                       pv_fn pv) {
    /* convert all of kv once when the queries list more entries than it has rows */
    const int whole = bf16 && listed > b * n;
    const size_t es = bf16 ? 2 : 4, hd = (size_t)(h * d) * 4;
    const size_t gather = bf16 && !whole ? (size_t)(k * d) * 4 : 0;
    char *cur = arena(2 * rup64(hd) + rup64((size_t)(h * k) * 4) + rup64((size_t)h * 4) +
                      rup64(gather) + rup64((size_t)k * sizeof(float *)));
    float *kvall = whole ? aligned_alloc(64, rup64((size_t)(n * d) * 4)) : NULL;
    if (!cur || (whole && !kvall)) {
        free(kvall);
        return -1;
    }
    f32_scratch w = {scores, pv, carve(&cur, hd), carve(&cur, (size_t)(h * k) * 4),
                     carve(&cur, hd), carve(&cur, (size_t)h * 4), carve(&cur, gather),
                     carve(&cur, (size_t)k * sizeof(float *))};
    for (int64_t bi = 0; bi < b; bi++) {
        const char *kvb = (const char *)kv + (size_t)(bi * n * d) * es;
        const float *kvf = bf16 ? NULL : (const float *)kvb;
        if (whole) {
            to_f32(kvb, 1, n * d, kvall);
            kvf = kvall;
        }
        for (int64_t mi = 0; mi < m; mi++) {
            size_t row = (size_t)(bi * m + mi);
            attend_f32((const char *)q + row * h * d * es, (const uint16_t *)kvb, kvf, sink,
                       idx + row * k, (char *)out + row * h * d * es, h, d, k, scale, bf16, &w);
        }
    }
    free(kvall);
    return 0;
}

/* ---- the AMX path: bf16, D a multiple of 32 ----
 *
 * Tiles multiply bf16 pairs exactly and accumulate in fp32 (like the FMA path, with another
 * summation order; bf16 inputs below 2^-126 count as zero, which moves no result we keep).
 * The valid rows are laid out as pairs interleaved element by element, (row 2p, row 2p+1),
 * in tiles of 16 pairs x 16 columns: that is the B operand of P.V (pairs along j) and, against
 * a query operand holding head n in the even lanes of columns 0-7 and in the odd lanes of
 * columns 8-15, the A operand of the scores: C[p][n] = row 2p . q_n, C[p][8 + n] =
 * row 2p+1 . q_n, i.e. scores [j][8 heads]. A tile whose 32 rows are consecutive rows of kv
 * (the window, HCA's entries) is read from kv laid out in pairs once per call (both parities)
 * when the queries list more rows than kv has; other tiles are built per query. Heads go
 * 16 at a time through P.V (8 at a time through the scores), padded with zero heads. */
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BW__) && \
    defined(__linux__) && defined(__x86_64__)
#define SA_AMX 1
#include <sys/syscall.h>
#include <unistd.h>

/* Linux lends the tile registers only to a process that asks (once). */
static int amx_ready(void) {
    static int state; /* 0 not asked, 1 granted, -1 refused */
    int st = __atomic_load_n(&state, __ATOMIC_RELAXED);
    if (!st) {
        long rc = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */);
        st = rc == 0 ? 1 : -1;
        __atomic_store_n(&state, st, __ATOMIC_RELAXED);
    }
    return st > 0;
}

typedef struct {
    uint8_t palette, start_row, zero[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* All eight tiles 16 rows x 64 bytes. */
static void amx_begin(void) {
    tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) c.colsb[t] = 64, c.rows[t] = 16;
    _tile_loadconfig(&c);
}

/* qb [D][32] bf16, the scores' B operand for heads q[0..nh-1] ([nh][D], nh <= 8): row x holds
 * q_n[x] at lane 2n and at lane 16 + 2n + 1, zeros elsewhere (and for heads past nh). */
static void build_qb(const uint16_t *q, int64_t nh, int64_t d, uint16_t *qb) {
    const __m512i heads = _mm512_set_epi64(7 * d, 6 * d, 5 * d, 4 * d, 3 * d, 2 * d, d, 0);
    const __mmask8 have = (__mmask8)((1u << nh) - 1u);
    __m512i perm[4];
    for (int r = 0; r < 4; r++) {
        uint16_t ix[32];
        for (int m = 0; m < 32; m++) ix[m] = (uint16_t)(((m & 15) >> 1) * 4 + r);
        perm[r] = _mm512_loadu_si512(ix);
    }
    const __mmask32 lanes = 0xAAAA5555u;
    for (int64_t x = 0; x < d; x += 4) {
        /* lane n: q_n[x..x+3] */
        __m512i g = _mm512_mask_i64gather_epi64(_mm512_setzero_si512(), have, heads,
                                                (const void *)(q + x), 2);
        for (int r = 0; r < 4; r++)
            _mm512_storeu_si512(qb + (x + r) * 32,
                                _mm512_maskz_permutexvar_epi16(lanes, perm[r], g));
    }
}

/* Pairs of rows stored chunk-major, v[c][p][32]: for each 16 columns c, pair p = (row 2p,
 * row 2p+1) interleaved element by element; cs = the pair count of the storage (x 32), so
 * that any 16 consecutive pairs of a chunk are one contiguous 1 KB tile. */
typedef struct {
    const uint16_t *base; /* chunk 0 of the tile's first pair */
    int64_t cs;           /* elements between chunks */
} pair_tile;

/* v: np pairs from rows[2p], rows[2p + 1] (NULL: a zero row) into storage with chunk stride
 * cs (elements). */
static void build_pairs(const uint16_t *const *rows, int64_t np, int64_t d, uint16_t *v,
                        int64_t cs) {
    uint16_t ilo[32], ihi[32];
    for (int m = 0; m < 32; m++) {
        ilo[m] = (uint16_t)((m & 1) * 32 + (m >> 1));
        ihi[m] = (uint16_t)(ilo[m] + 16);
    }
    const __m512i lo = _mm512_loadu_si512(ilo), hi = _mm512_loadu_si512(ihi);
    for (int64_t p = 0; p < np; p++) {
        const uint16_t *a = rows[2 * p], *b = rows[2 * p + 1];
        uint16_t *o = v + p * 32;
        for (int64_t c = 0; c < d; c += 32, o += 2 * cs) {
            __m512i va = a ? _mm512_loadu_si512(a + c) : _mm512_setzero_si512();
            __m512i vb = b ? _mm512_loadu_si512(b + c) : _mm512_setzero_si512();
            _mm512_storeu_si512(o, _mm512_permutex2var_epi16(va, lo, vb));
            _mm512_storeu_si512(o + cs, _mm512_permutex2var_epi16(va, hi, vb));
        }
    }
}

/* st [32 nt][8] fp32 = row j . q_n (unscaled) for the nt pair tiles vt. Tiles: 0-2
 * accumulators, 3-5 row operands, 6-7 query operands, so that a load never waits on the
 * product that last read its tile. */
static void amx_scores(const pair_tile *vt, int64_t nt, int64_t d, const uint16_t *qb,
                       float *st) {
    for (int64_t t0 = 0; t0 < nt; t0 += 3) {
        const int nb = nt - t0 < 3 ? (int)(nt - t0) : 3;
        const pair_tile a0 = vt[t0], a1 = vt[t0 + (nb > 1)], a2 = vt[t0 + (nb > 2) * 2];
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        for (int64_t c = 0; c < d / 16; c += 2) { /* two chunks per step: B in 6, then 7 */
            _tile_loadd(6, qb + c * 512, 64);
            _tile_loadd(3, a0.base + c * a0.cs, 64);
            _tile_dpbf16ps(0, 3, 6);
            if (nb > 1) {
                _tile_loadd(4, a1.base + c * a1.cs, 64);
                _tile_dpbf16ps(1, 4, 6);
            }
            if (nb > 2) {
                _tile_loadd(5, a2.base + c * a2.cs, 64);
                _tile_dpbf16ps(2, 5, 6);
            }
            _tile_loadd(7, qb + (c + 1) * 512, 64);
            _tile_loadd(3, a0.base + (c + 1) * a0.cs, 64);
            _tile_dpbf16ps(0, 3, 7);
            if (nb > 1) {
                _tile_loadd(4, a1.base + (c + 1) * a1.cs, 64);
                _tile_dpbf16ps(1, 4, 7);
            }
            if (nb > 2) {
                _tile_loadd(5, a2.base + (c + 1) * a2.cs, 64);
                _tile_dpbf16ps(2, 5, 7);
            }
        }
        float *o = st + t0 * 256;
        _tile_stored(0, o, 64);
        if (nb > 1) _tile_stored(1, o + 256, 64);
        if (nb > 2) _tile_stored(2, o + 512, 64);
    }
}

/* o [16][D] fp32 = p [16][kp] bf16 (pairs along j) times the rows in the nt pair tiles vt.
 * Tiles: 0-2 accumulators (48 columns), 3-5 row operands, 6-7 probability operands. */
static void amx_pv(const uint16_t *p, int64_t kp, const pair_tile *vt, int64_t nt, int64_t d,
                   float *o) {
    const int64_t os = 4 * d;
    for (int64_t c0 = 0; c0 < d / 16; c0 += 3) {
        const int nc = d / 16 - c0 < 3 ? (int)(d / 16 - c0) : 3;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        for (int64_t t = 0; t < nt; t++) {
            const uint16_t *b = vt[t].base + c0 * vt[t].cs;
            const int64_t cs = vt[t].cs;
            if (t & 1)
                _tile_loadd(7, p + t * 32, kp * 2);
            else
                _tile_loadd(6, p + t * 32, kp * 2);
            _tile_loadd(3, b, 64);
            if (t & 1)
                _tile_dpbf16ps(0, 7, 3);
            else
                _tile_dpbf16ps(0, 6, 3);
            if (nc > 1) {
                _tile_loadd(4, b + cs, 64);
                if (t & 1)
                    _tile_dpbf16ps(1, 7, 4);
                else
                    _tile_dpbf16ps(1, 6, 4);
            }
            if (nc > 2) {
                _tile_loadd(5, b + 2 * cs, 64);
                if (t & 1)
                    _tile_dpbf16ps(2, 7, 5);
                else
                    _tile_dpbf16ps(2, 6, 5);
            }
        }
        _tile_stored(0, o + c0 * 16, os);
        if (nc > 1) _tile_stored(1, o + c0 * 16 + 16, os);
        if (nc > 2) _tile_stored(2, o + c0 * 16 + 32, os);
    }
}

/* kv [N][D] as pairs of both parities: even pair e = (row 2e, row 2e+1), odd pair e =
 * (row 2e+1, row 2e+2) (a zero row past the end), ne pairs each. */
typedef struct {
    uint16_t *even, *odd;
    int64_t ne;
} kv_pairs;

static void build_kv_pairs(const uint16_t *kv, int64_t n, int64_t d, const uint16_t **rows,
                           kv_pairs *kp2) {
    for (int par = 0; par < 2; par++) {
        for (int64_t r = 0; r < 2 * kp2->ne; r++) rows[r] = r + par < n ? kv + (r + par) * d : NULL;
        build_pairs(rows, kp2->ne, d, par ? kp2->odd : kp2->even, kp2->ne * 32);
    }
}

typedef struct {
    const uint16_t **rows; /* [kp] the valid rows, NULL past nv */
    pair_tile *vt;         /* [kp / 32] where each tile of 16 pairs is */
    uint16_t *v;           /* [D / 16][kp / 2][32] pair tiles built for this query */
    uint16_t *qb;          /* [D][32] the scores' B operand for 8 heads */
    float *st;             /* [kp][8] scores */
    float *s;              /* [8][kp] scaled scores, a head per row */
    uint16_t *p;           /* [16][kp] probabilities of 16 heads */
    float *o;              /* [16][D] */
} amx_scratch;

/* Point vt at each tile of 32 valid rows: into the whole-kv pairs when the 32 are
 * consecutive rows of kv (kvp != NULL), else at a tile built here. Returns the tile count. */
static int64_t pair_tiles(const uint16_t *kv, int64_t nv, int64_t d, int64_t kp,
                          const kv_pairs *kvp, const amx_scratch *w) {
    const int64_t nt = (nv + 31) / 32;
    for (int64_t j = nv; j < nt * 32; j++) w->rows[j] = NULL;
    for (int64_t t = 0; t < nt; t++) {
        const uint16_t *const *r = w->rows + 32 * t;
        int run = kvp != NULL && r[31] != NULL;
        for (int i = 1; run && i < 32; i++) run = r[i] == r[0] + i * d;
        if (run) {
            int64_t first = (r[0] - kv) / d;
            w->vt[t].base = (first & 1 ? kvp->odd : kvp->even) + (first >> 1) * 32;
            w->vt[t].cs = kvp->ne * 32;
        } else {
            w->vt[t].base = w->v + t * 512;
            w->vt[t].cs = kp / 2 * 32;
            build_pairs(r, 16, d, w->v + t * 512, kp / 2 * 32);
        }
    }
    return nt;
}

static void attend_amx(const uint16_t *q, const uint16_t *kv, const kv_pairs *kvp,
                       const float *sink, const int32_t *idx, uint16_t *out, int64_t h,
                       int64_t d, int64_t k, int64_t kp, float scale, const amx_scratch *w) {
    int64_t nv = 0;
    for (int64_t j = 0; j < k; j++)
        if (idx[j] >= 0) w->rows[nv++] = kv + (int64_t)idx[j] * d;
    const int64_t nt = pair_tiles(kv, nv, d, kp, kvp, w);
    for (int64_t h0 = 0; h0 < h; h0 += 16) {
        const int nh = h - h0 < 16 ? (int)(h - h0) : 16;
        float dn[16];
        for (int g = 0; 8 * g < nh; g++) {
            const int n8 = nh - 8 * g < 8 ? nh - 8 * g : 8;
            build_qb(q + (h0 + 8 * g) * d, n8, d, w->qb);
            amx_scores(w->vt, nt, d, w->qb, w->st);
            for (int64_t j = 0; j < nv; j++) /* [j][8] -> [8][j], times scale as the ref */
                for (int n = 0; n < n8; n++) w->s[n * kp + j] = w->st[j * 8 + n] * scale;
            for (int n = 0; n < n8; n++) {
                uint16_t *pn = w->p + (8 * g + n) * kp;
                dn[8 * g + n] = sink_softmax(w->s + n * kp, nv, sink[h0 + 8 * g + n], 1, pn);
                memset(pn + nv, 0, (size_t)(nt * 32 - nv) * 2);
            }
        }
        memset(w->p + nh * kp, 0, (size_t)((16 - nh) * kp) * 2); /* heads past H */
        amx_pv(w->p, kp, w->vt, nt, d, w->o);
        for (int n = 0; n < nh; n++) write_out(w->o + n * d, dn[n], d, out + (h0 + n) * d, 1);
    }
}

static int64_t run_amx(const uint16_t *q, const uint16_t *kv, const float *sink,
                       const int32_t *idx, uint16_t *out, int64_t b, int64_t m, int64_t h,
                       int64_t d, int64_t n, int64_t k, float scale, int64_t listed) {
    const int64_t kp = (k + 31) / 32 * 32 + 32; /* whole tiles, and never empty */
    const size_t sizes[8] = {
        (size_t)kp * sizeof(uint16_t *), (size_t)kp / 32 * sizeof(pair_tile), /* rows, vt */
        (size_t)(kp * d) * 2, (size_t)d * 64,                                 /* v, qb */
        (size_t)kp * 32,      (size_t)kp * 32, (size_t)kp * 32,               /* st, s, p */
        (size_t)d * 64};                                                      /* o */
    size_t total = 0;
    for (int i = 0; i < 8; i++) total += rup64(sizes[i]);
    char *cur = arena(total);
    /* kv in pairs once per call, when the queries list more rows than kv has */
    const int whole = listed > b * n;
    const size_t half = (size_t)((n + 1) / 2 * 2 * d) * 2;
    kv_pairs kvp = {whole ? aligned_alloc(64, rup64(half)) : NULL,
                    whole ? aligned_alloc(64, rup64(half)) : NULL, (n + 1) / 2};
    const uint16_t **all = whole ? malloc((size_t)(n + 2) * sizeof(uint16_t *)) : NULL;
    if (!cur || (whole && (!kvp.even || !kvp.odd || !all))) {
        free(kvp.even), free(kvp.odd), free(all);
        return -1;
    }
    amx_scratch w;
    w.rows = carve(&cur, sizes[0]), w.vt = carve(&cur, sizes[1]), w.v = carve(&cur, sizes[2]);
    w.qb = carve(&cur, sizes[3]), w.st = carve(&cur, sizes[4]), w.s = carve(&cur, sizes[5]);
    w.p = carve(&cur, sizes[6]), w.o = carve(&cur, sizes[7]);
    amx_begin();
    for (int64_t bi = 0; bi < b; bi++) {
        const uint16_t *kvb = kv + (size_t)(bi * n * d);
        if (whole) build_kv_pairs(kvb, n, d, all, &kvp);
        for (int64_t mi = 0; mi < m; mi++) {
            size_t row = (size_t)(bi * m + mi);
            attend_amx(q + row * h * d, kvb, whole ? &kvp : NULL, sink, idx + row * k,
                       out + row * h * d, h, d, k, kp, scale, &w);
        }
    }
    _tile_release();
    free(kvp.even), free(kvp.odd), free(all);
    return 0;
}
#endif

/* ---- entry points ---- */

enum { IMPL_BEST = 0, IMPL_NO_AMX = 1, IMPL_PORTABLE = 2 };

/* Bit 0: the AVX-512 FMA loops are built in; bit 1: so is the AMX path, and Linux lends the
 * tiles. */
int64_t sparse_attn_impls(void) {
    int64_t f = 0;
#ifdef __AVX512F__
    f |= 1;
#endif
#ifdef SA_AMX
    f |= amx_ready() ? 2 : 0;
#endif
    return f;
}

/* q act [B,M,H,D], kv act [B,N,D], sink fp32 [H], idx int32 [B,M,K] (< 0 = skip), out act
 * [B,M,H,D]; act = bf16 when bf16 != 0, else fp32. impl: 0 the fastest this machine has,
 * 1 not AMX, 2 the portable loops only (tests run each). Returns 0, the number of indices
 * >= N (nothing is computed then), or -1 when scratch memory cannot be had. */
int64_t sparse_attn_fwd(const void *q, const void *kv, const float *sink, const int32_t *idx,
                        void *out, int64_t b, int64_t m, int64_t h, int64_t d, int64_t n,
                        int64_t k, float scale, int64_t bf16, int64_t impl) {
    (void)impl; /* every value means the portable loops when nothing else is built in */
    int64_t bad = 0, listed = 0;
    for (int64_t i = 0; i < b * m * k; i++) {
        bad += idx[i] >= n;
        listed += idx[i] >= 0;
    }
    if (bad) return bad;
#ifdef SA_AMX
    if (impl == IMPL_BEST && bf16 && d % 32 == 0 && amx_ready())
        return run_amx(q, kv, sink, idx, out, b, m, h, d, n, k, scale, listed);
#endif
#ifdef __AVX512F__
    if (impl != IMPL_PORTABLE)
        return run_f32(q, kv, sink, idx, out, b, m, h, d, n, k, scale, (int)bf16, listed,
                       scores_avx512, pv_avx512);
#endif
    return run_f32(q, kv, sink, idx, out, b, m, h, d, n, k, scale, (int)bf16, listed,
                   scores_scalar, pv_scalar);
}
