/* Manifold-constrained hyper-connections (kernels/mhc.py) on the CPU: hc_pre, hc_post and the
 * split + Sinkhorn, each one call for all S tokens.
 *
 * Numerics follow the torch references step for step. Elementwise steps keep their order and
 * rounding: every product and sum is rounded on its own (fp contraction is off for this file,
 * so `a*b + c` never becomes an fma), sums over the hc streams run left to right from 0 like
 * torch's reductions, the Sinkhorn divisors are `sum + eps` (true division), softmax
 * multiplies by `1 / sum` as torch's CPU kernel does, and sigmoid is 1 / (1 + expf(-x)).
 * Only the two long reductions (the mixes GEMV and the sum of squares of the RMS factor)
 * use another summation order, with fma (fp32 accumulation). expf is libm's, as torch's
 * scalar path; torch's vectorized path (Sleef) can differ from it by one ulp.
 *
 * Activations are bf16 (uint16 bit patterns) or fp32; `bf16` selects.
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "common.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#define VL 16
#elif defined(__AVX__)
#include <immintrin.h>
#define VL 8
#else
#define VL 4
#endif
#if defined(__ARM_NEON) && VL == 4
#include <arm_neon.h>
#endif

typedef float vf __attribute__((vector_size(VL * 4)));
typedef uint32_t vu __attribute__((vector_size(VL * 4)));
typedef uint16_t vh __attribute__((vector_size(VL * 2)));

#define INLINE static inline __attribute__((always_inline))

/* a*b + c, fused where the target has it (only for the long dot products). */
INLINE vf vfma(vf a, vf b, vf c) {
#if defined(__AVX512F__)
    return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__AVX__) && defined(__FMA__)
    return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#elif defined(__ARM_NEON) && VL == 4
    return (vf)vfmaq_f32((float32x4_t)c, (float32x4_t)a, (float32x4_t)b);
#else
    return a * b + c;
#endif
}

INLINE vf load_f32(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
INLINE void store_f32(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* VL activations at element i of `base` as fp32 (bf16 widens exactly). */
INLINE vf load_act(const void *base, int64_t i, int bf16) {
    if (!bf16) return load_f32((const float *)base + i);
    vh raw;
    memcpy(&raw, (const uint16_t *)base + i, sizeof raw);
    return (vf)(__builtin_convertvector(raw, vu) << 16);
}

/* Store VL fp32 values as activations: bf16 rounds to nearest even like common.h's f32_to_bf16
 * (NaN stays a quiet NaN). */
INLINE void store_act(void *base, int64_t i, vf v, int bf16) {
    if (!bf16) { store_f32((float *)base + i, v); return; }
    vu u = (vu)v;
    vu rne = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    vu nan = (vu)((u & 0x7fffffffu) > 0x7f800000u);
    vu bits = (nan & ((u >> 16) | 0x40u)) | (~nan & rne);
    vh out = __builtin_convertvector(bits, vh);
    memcpy((uint16_t *)base + i, &out, sizeof out);
}

INLINE float load_act1(const void *base, int64_t i, int bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)base)[i]) : ((const float *)base)[i];
}

INLINE void store_act1(void *base, int64_t i, float v, int bf16) {
    if (bf16) ((uint16_t *)base)[i] = f32_to_bf16(v);
    else ((float *)base)[i] = v;
}

INLINE float hsum(vf v) {
    float s = 0.0f;
    for (int i = 0; i < VL; i++) s += v[i];
    return s;
}

/* ---- the mixes GEMM: mixes[t][o] = flat(h[t]) · fn[o] --------------------------------------- */

#define MAX_R 4   /* token rows per tile */
#define MAX_O 8   /* fn rows per tile */
#define KCHUNK 1024 /* flattened-stream elements converted to fp32 at a time (16 KiB for 4 rows) */

/* part[r][o] = x[r] · w[o] over n elements, for compile-time R x O (registers: R*O accumulators).
 * 4 x 6 for token blocks (24 accumulators + 5 operands in 32 zmm), 1 x 8 for a single token. */
INLINE void dot_tile(const int R, const int O, const float *const *x, const float *const *w,
                     int64_t n, float part[MAX_R][MAX_O]) {
    vf acc[MAX_R][MAX_O];
    for (int r = 0; r < R; r++)
        for (int o = 0; o < O; o++) acc[r][o] = (vf){0};
    int64_t k = 0;
    for (; k + VL <= n; k += VL) {
        vf xv[MAX_R];
        for (int r = 0; r < R; r++) xv[r] = load_f32(x[r] + k);
        for (int o = 0; o < O; o++) {
            vf wv = load_f32(w[o] + k);
            for (int r = 0; r < R; r++) acc[r][o] = vfma(xv[r], wv, acc[r][o]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int o = 0; o < O; o++) {
            float s = hsum(acc[r][o]);
            for (int64_t i = k; i < n; i++) s += x[r][i] * w[o][i];
            part[r][o] = s;
        }
}

/* x[0..n) as fp32 (converted into buf when bf16, else the row itself); returns Σ x². */
INLINE float stage_chunk(const void *h, int64_t at, int64_t n, int bf16, float *buf,
                         const float **x) {
    vf sq = (vf){0};
    int64_t i = 0;
    const float *src = bf16 ? buf : (const float *)h + at;
    for (; i + VL <= n; i += VL) {
        vf v = load_act(h, at + i, bf16);
        if (bf16) store_f32(buf + i, v);
        sq = vfma(v, v, sq);
    }
    float s = hsum(sq);
    for (; i < n; i++) {
        float v = load_act1(h, at + i, bf16);
        if (bf16) buf[i] = v;
        s += v * v;
    }
    *x = src;
    return s;
}

/* mix[r][o] (row stride nmix) and the sums of squares ss[r] of tokens t0..t0+rows-1
 * (rows <= MAX_R). Short blocks repeat their last row so the tiles stay full. */
INLINE void mixes_block(const void *h, int bf16, int64_t t0, int rows, int64_t K,
                        const float *fn, int64_t nmix, float *mix, float *ss) {
    float buf[MAX_R][KCHUNK];
    const float *x[MAX_R], *w[MAX_O];
    float part[MAX_R][MAX_O];
    const int R = rows == 1 ? 1 : MAX_R, O = rows == 1 ? 8 : 6;
    for (int r = 0; r < rows; r++) {
        ss[r] = 0.0f;
        for (int64_t o = 0; o < nmix; o++) mix[r * nmix + o] = 0.0f;
    }
    for (int64_t k0 = 0; k0 < K; k0 += KCHUNK) {
        int64_t n = K - k0 < KCHUNK ? K - k0 : KCHUNK;
        for (int r = 0; r < R; r++) {
            int64_t t = t0 + (r < rows ? r : rows - 1);
            float s = stage_chunk(h, t * K + k0, n, bf16, buf[r], &x[r]);
            if (r < rows) ss[r] += s;
        }
        for (int64_t o0 = 0; o0 < nmix; o0 += O) {
            for (int o = 0; o < O; o++)
                w[o] = fn + (o0 + o < nmix ? o0 + o : nmix - 1) * K + k0;
            if (R == 1) dot_tile(1, 8, x, w, n, part);
            else dot_tile(MAX_R, 6, x, w, n, part);
            for (int r = 0; r < rows; r++)
                for (int o = 0; o < O && o0 + o < nmix; o++) mix[r * nmix + o0 + o] += part[r][o];
        }
    }
}

/* ---- split + Sinkhorn, G tokens at a time --------------------------------------------------- */

/* Tokens per Sinkhorn group: the rounds run across tokens, one lane per token (a 4 x 4 comb is
 * 624 divisions, so a lone decode token takes the 4-lane variant: wide divisions cost more). */
#define G 16
#define G_SMALL 4

INLINE float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

/* pre/post/comb of n <= G tokens from their mixes (row stride nmix); REF's operation order:
 * pre = σ(m·s0 + b) + eps, post = 2σ(m·s1 + b), comb = softmax(m·s2 + b) + eps, column
 * normalization, then iters - 1 rounds of row then column normalization (divisor sum + eps). */
INLINE void split_lanes(const int L, const float *mix, int n, const float *scale, const float *base,
                        int64_t hc, int64_t iters, float eps, float *pre, float *post,
                        float *comb) {
    const int64_t nmix = (2 + hc) * hc, hh = hc * hc;
    float c[hh][L], e[hc], s[L];
    for (int t = 0; t < L; t++) {
        if (t >= n) { /* idle lanes: any finite matrix */
            for (int64_t i = 0; i < hh; i++) c[i][t] = 1.0f;
            continue;
        }
        const float *m = mix + t * nmix, *lg = m + 2 * hc, *bl = base + 2 * hc;
        for (int64_t j = 0; j < hc; j++) {
            pre[t * hc + j] = sigmoid(m[j] * scale[0] + base[j]) + eps;
            post[t * hc + j] = 2.0f * sigmoid(m[hc + j] * scale[1] + base[hc + j]);
        }
        for (int64_t j = 0; j < hc; j++) {
            float mx = -INFINITY, sum = 0.0f;
            for (int64_t k = 0; k < hc; k++) {
                e[k] = lg[j * hc + k] * scale[2] + bl[j * hc + k];
                mx = e[k] > mx ? e[k] : mx;
            }
            for (int64_t k = 0; k < hc; k++) {
                e[k] = expf(e[k] - mx);
                sum += e[k];
            }
            float inv = 1.0f / sum;
            for (int64_t k = 0; k < hc; k++) c[j * hc + k][t] = e[k] * inv + eps;
        }
    }
    for (int64_t it = 0; it < iters; it++) {
        if (it > 0) /* the first round normalizes the columns only */
            for (int64_t j = 0; j < hc; j++) { /* row j: divisor Σ_k c[j][k] + eps */
                for (int t = 0; t < L; t++) s[t] = c[j * hc][t];
                for (int64_t k = 1; k < hc; k++)
                    for (int t = 0; t < L; t++) s[t] += c[j * hc + k][t];
                for (int t = 0; t < L; t++) s[t] += eps;
                for (int64_t k = 0; k < hc; k++)
                    for (int t = 0; t < L; t++) c[j * hc + k][t] /= s[t];
            }
        for (int64_t k = 0; k < hc; k++) { /* column k: divisor Σ_j c[j][k] + eps */
            for (int t = 0; t < L; t++) s[t] = c[k][t];
            for (int64_t j = 1; j < hc; j++)
                for (int t = 0; t < L; t++) s[t] += c[j * hc + k][t];
            for (int t = 0; t < L; t++) s[t] += eps;
            for (int64_t j = 0; j < hc; j++)
                for (int t = 0; t < L; t++) c[j * hc + k][t] /= s[t];
        }
    }
    for (int t = 0; t < n; t++)
        for (int64_t i = 0; i < hh; i++) comb[t * hh + i] = c[i][t];
}

/* Not specialized for a constant hc: gcc's fully unrolled hc = 4 copy runs 2x slower. */
__attribute__((noinline, noclone))
static void split_group(const float *mix, int n, const float *scale, const float *base,
                        int64_t hc, int64_t iters, float eps, float *pre, float *post,
                        float *comb) {
    if (n <= G_SMALL) split_lanes(G_SMALL, mix, n, scale, base, hc, iters, eps, pre, post, comb);
    else split_lanes(G, mix, n, scale, base, hc, iters, eps, pre, post, comb);
}

/* mixes fp32 [S, (2+hc)*hc] -> pre, post fp32 [S, hc], comb fp32 [S, hc, hc]. */
void mhc_split(const float *mixes, const float *scale, const float *base, float *pre,
               float *post, float *comb, int64_t S, int64_t hc, int64_t iters, float eps) {
    const int64_t nmix = (2 + hc) * hc;
    for (int64_t t0 = 0; t0 < S; t0 += G) {
        int n = S - t0 < G ? (int)(S - t0) : G;
        split_group(mixes + t0 * nmix, n, scale, base, hc, iters, eps, pre + t0 * hc,
                    post + t0 * hc, comb + t0 * hc * hc);
    }
}

/* ---- hc_pre --------------------------------------------------------------------------------- */

/* y[d] = Σ_j pre[j]·h[j][d] of one token (fp32, left to right from 0), cast once. */
INLINE void weigh_streams(const void *h, int64_t at, const float *pre, int64_t hc, int64_t D,
                          void *y, int64_t yat, int bf16) {
    int64_t d = 0;
    for (; d + VL <= D; d += VL) {
        vf acc = (vf){0};
        for (int64_t j = 0; j < hc; j++) acc = acc + pre[j] * load_act(h, at + j * D + d, bf16);
        store_act(y, yat + d, acc, bf16);
    }
    for (; d < D; d++) {
        float acc = 0.0f;
        for (int64_t j = 0; j < hc; j++) acc = acc + pre[j] * load_act1(h, at + j * D + d, bf16);
        store_act1(y, yat + d, acc, bf16);
    }
}

INLINE void pre_impl(const void *h, const float *fn, const float *scale, const float *base,
                     void *y, float *post, float *comb, int64_t S, int64_t hc, int64_t D,
                     int64_t iters, float norm_eps, float hc_eps, int bf16) {
    const int64_t K = hc * D, nmix = (2 + hc) * hc;
    float mix[G * nmix], ss[G], pre[G * hc];
    for (int64_t t0 = 0; t0 < S; t0 += G) {
        int n = S - t0 < G ? (int)(S - t0) : G;
        for (int r0 = 0; r0 < n; r0 += MAX_R) {
            int rows = n - r0 < MAX_R ? n - r0 : MAX_R;
            mixes_block(h, bf16, t0 + r0, rows, K, fn, nmix, mix + r0 * nmix, ss + r0);
        }
        for (int t = 0; t < n; t++) { /* REF: linear first, then × rsqrt(mean(x²) + eps) */
            float rs = 1.0f / sqrtf(ss[t] / (float)K + norm_eps);
            for (int64_t o = 0; o < nmix; o++) mix[t * nmix + o] *= rs;
        }
        split_group(mix, n, scale, base, hc, iters, hc_eps, pre, post + t0 * hc,
                    comb + t0 * hc * hc);
        for (int t = 0; t < n; t++)
            weigh_streams(h, (t0 + t) * K, pre + t * hc, hc, D, y, (t0 + t) * D, bf16);
    }
}

/* h act [S, hc, D], fn fp32 [(2+hc)*hc, hc*D], scale fp32 [3], base fp32 [(2+hc)*hc]
 * -> y act [S, D], post fp32 [S, hc], comb fp32 [S, hc, hc]. */
void mhc_pre(const void *h, const float *fn, const float *scale, const float *base, void *y,
             float *post, float *comb, int64_t S, int64_t hc, int64_t D, int64_t iters,
             float norm_eps, float hc_eps, int64_t bf16) {
    if (bf16) pre_impl(h, fn, scale, base, y, post, comb, S, hc, D, iters, norm_eps, hc_eps, 1);
    else pre_impl(h, fn, scale, base, y, post, comb, S, hc, D, iters, norm_eps, hc_eps, 0);
}

/* ---- hc_post -------------------------------------------------------------------------------- */

/* One token at a time. The stream vectors at column d are loaded once for all hc outputs
 * (up to HELD of them; in registers in the hc = 4 copy, the hc of both models). */
#define HC_FIXED 4
#define HELD 8

INLINE void post_impl(const void *out, const void *h, const float *post, const float *comb,
                      void *y, int64_t S, const int64_t hc, int64_t D, int bf16) {
    for (int64_t t = 0; t < S; t++) {
        const float *c = comb + t * hc * hc, *p = post + t * hc;
        const int64_t hrow = t * hc * D, orow = t * D;
        int64_t d = 0;
        for (; d + VL <= D; d += VL) {
            vf hv[HELD];
            for (int64_t j = 0; j < hc && j < HELD; j++) hv[j] = load_act(h, hrow + j * D + d, bf16);
            vf o = load_act(out, orow + d, bf16);
            for (int64_t k = 0; k < hc; k++) {
                vf mixed = (vf){0};
                for (int64_t j = 0; j < hc; j++)
                    mixed = mixed + c[j * hc + k] *
                                        (j < HELD ? hv[j] : load_act(h, hrow + j * D + d, bf16));
                store_act(y, hrow + k * D + d, p[k] * o + mixed, bf16);
            }
        }
        for (; d < D; d++) {
            float o = load_act1(out, orow + d, bf16);
            for (int64_t k = 0; k < hc; k++) {
                float mixed = 0.0f;
                for (int64_t j = 0; j < hc; j++)
                    mixed = mixed + c[j * hc + k] * load_act1(h, hrow + j * D + d, bf16);
                store_act1(y, hrow + k * D + d, p[k] * o + mixed, bf16);
            }
        }
    }
}

/* out act [S, D], h act [S, hc, D], post fp32 [S, hc], comb fp32 [S, hc, hc] -> y act
 * [S, hc, D]: y[k] = post[k]·out + Σ_j comb[j][k]·h[j] (fp32, sum from 0 over j in order). */
void mhc_post(const void *out, const void *h, const float *post, const float *comb, void *y,
              int64_t S, int64_t hc, int64_t D, int64_t bf16) {
    if (hc == HC_FIXED) {
        if (bf16) post_impl(out, h, post, comb, y, S, HC_FIXED, D, 1);
        else post_impl(out, h, post, comb, y, S, HC_FIXED, D, 0);
    } else if (bf16) post_impl(out, h, post, comb, y, S, hc, D, 1);
    else post_impl(out, h, post, comb, y, S, hc, D, 0);
}

/* ---- hc_head -------------------------------------------------------------------------------- */

/* The head's mix (engine.model.HeadMix): mixes as hc_pre's (linear, then × rsqrt(mean(x²) +
 * eps)), pre = sigmoid(mixes·scale + base) + hc_eps without Sinkhorn, y = Σ_j pre[j]·h[j].
 * h act [S, hc, D], fn fp32 [hc, hc*D], scale fp32 [1], base fp32 [hc] -> y act [S, D]. */
INLINE void head_impl(const void *h, const float *fn, const float *scale, const float *base,
                      void *y, int64_t S, int64_t hc, int64_t D, float norm_eps, float hc_eps,
                      int bf16) {
    const int64_t K = hc * D;
    float mix[MAX_R * hc], ss[MAX_R], pre[hc];
    for (int64_t t0 = 0; t0 < S; t0 += MAX_R) {
        int rows = S - t0 < MAX_R ? (int)(S - t0) : MAX_R;
        mixes_block(h, bf16, t0, rows, K, fn, hc, mix, ss);
        for (int t = 0; t < rows; t++) {
            float rs = 1.0f / sqrtf(ss[t] / (float)K + norm_eps);
            for (int64_t j = 0; j < hc; j++) {
                float m = mix[t * hc + j] * rs * scale[0] + base[j];
                pre[j] = sigmoid(m) + hc_eps;
            }
            weigh_streams(h, (t0 + t) * K, pre, hc, D, y, (t0 + t) * D, bf16);
        }
    }
}

void mhc_head(const void *h, const float *fn, const float *scale, const float *base, void *y,
              int64_t S, int64_t hc, int64_t D, float norm_eps, float hc_eps, int64_t bf16) {
    if (bf16) head_impl(h, fn, scale, base, y, S, hc, D, norm_eps, hc_eps, 1);
    else head_impl(h, fn, scale, base, y, S, hc, D, norm_eps, hc_eps, 0);
}
