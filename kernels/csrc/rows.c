/* Row-wise steps of the attention path, each one C call for all rows (and heads) of a chunk:
 *
 *  - dsv4_rms_norm: REF's RMSNorm with weight (fp32 statistics, y = w * (x * rsqrt(mean(x^2)
 *    + eps)) in fp32, cast once to the act dtype);
 *  - dsv4_head_norm_rope: per-head RMS scaling without weight computed in the act dtype, as
 *    REF's `q * rsqrt(q.square().mean(-1) + eps)` on a bf16 tensor rounds every step, then
 *    RoPE; either part can be switched off;
 *  - RoPE (in both): interleaved pairs (2i, 2i+1) of the last rd dims rotated in fp32 by
 *    cos/sin rows ([rows, rd/2], fp32), `inverse` rotating by the conjugate, cast to the act
 *    dtype.
 *
 * Activations are fp32 (`bf16` = 0) or bf16 bit patterns (`bf16` = 1). Built with
 * -ffp-contract=off: each product and sum rounds as in the torch references. */
#include <stdint.h>

#include "common.h"

static inline float load_act(const void *p, int64_t i, int64_t bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store_act(void *p, int64_t i, float v, int64_t bf16) {
    if (bf16)
        ((uint16_t *)p)[i] = f32_to_bf16(v);
    else
        ((float *)p)[i] = v;
}

/* the act dtype's rounding of an fp32 result */
static inline float act_round(float v, int64_t bf16) { return bf16 ? round_bf16(v) : v; }

#ifdef __AVX512F__
/* n act values (n a multiple of 16) -> fp32 */
static inline void widen_row(const void *x, int64_t base, int64_t n, int64_t bf16, float *v) {
    for (int64_t i = 0; i < n; i += 16)
        _mm512_storeu_ps(v + i, bf16 ? load_bf16x16((const uint16_t *)x + base + i)
                                     : _mm512_loadu_ps((const float *)x + base + i));
}

static inline __m512 act_round16(__m512 v, int64_t bf16) { return bf16 ? round_bf16x16(v) : v; }

static inline void store_row(void *y, int64_t base, int64_t n, int64_t bf16, const float *v) {
    for (int64_t i = 0; i < n; i += 16) {
        __m512 t = _mm512_loadu_ps(v + i);
        if (bf16)
            _mm256_storeu_si256((__m256i *)((uint16_t *)y + base + i), f32x16_to_bf16(t));
        else
            _mm512_storeu_ps((float *)y + base + i, t);
    }
}

/* RoPE of rd dims (rd a multiple of 16) at p, pairs interleaved: even lanes a*c + b*(-s),
 * odd lanes b*c + a*s, the products and sums of the scalar formula. */
static inline void rope_vec(float *p, int64_t rd, const float *c, const float *s, float sign,
                            int64_t bf16) {
    const __m512i dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    const __m512 alt = _mm512_set_ps(1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1);
    for (int64_t i = 0; i < rd; i += 16) {
        __m512 v = _mm512_loadu_ps(p + i);
        __m512 cd = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(c + i / 2)));
        __m512 sd = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(s + i / 2)));
        sd = _mm512_mul_ps(sd, _mm512_mul_ps(alt, _mm512_set1_ps(sign)));
        __m512 swapped = _mm512_permute_ps(v, 0xb1);
        __m512 r = _mm512_add_ps(_mm512_mul_ps(v, cd), _mm512_mul_ps(swapped, sd));
        _mm512_storeu_ps(p + i, act_round16(r, bf16));
    }
}
#endif

void dsv4_rms_norm(const void *x, const float *w, void *y, int64_t rows, int64_t n, float eps,
                   int64_t bf16) {
    float buf[n];
#ifdef __AVX512F__
    if (n % 16 == 0) {
        for (int64_t r = 0; r < rows; r++) {
            widen_row(x, r * n, n, bf16, buf);
            __m512 acc = _mm512_setzero_ps();
            for (int64_t i = 0; i < n; i += 16) {
                __m512 v = _mm512_loadu_ps(buf + i);
                acc = _mm512_add_ps(acc, _mm512_mul_ps(v, v));
            }
            __m512 rs = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(acc) / (float)n + eps));
            for (int64_t i = 0; i < n; i += 16)
                _mm512_storeu_ps(buf + i, _mm512_mul_ps(_mm512_loadu_ps(w + i),
                                                        _mm512_mul_ps(_mm512_loadu_ps(buf + i), rs)));
            store_row(y, r * n, n, bf16, buf);
        }
        return;
    }
#endif
    for (int64_t r = 0; r < rows; r++) {
        float ss = 0.0f;
        for (int64_t i = 0; i < n; i++) {
            buf[i] = load_act(x, r * n + i, bf16);
            ss += buf[i] * buf[i];
        }
        float rs = 1.0f / sqrtf(ss / (float)n + eps);
        for (int64_t i = 0; i < n; i++) store_act(y, r * n + i, w[i] * (buf[i] * rs), bf16);
    }
}

/* one head row v[dim] (fp32 values of the act dtype) rotated in place on its last rd dims */
static inline void rope_row(float *v, int64_t dim, int64_t rd, const float *c, const float *s,
                            float sign, int64_t bf16) {
    float *p = v + dim - rd;
    for (int64_t i = 0; i < rd / 2; i++) {
        float a = p[2 * i], b = p[2 * i + 1], si = sign * s[i];
        float ac = a * c[i], bs = b * si, as = a * si, bc = b * c[i];
        p[2 * i] = act_round(ac - bs, bf16);
        p[2 * i + 1] = act_round(as + bc, bf16);
    }
}

/* x act [rows, heads, dim] -> y act: optional per-head RMS scaling (norm), then RoPE on the
 * last rd dims (rd = 0: none) with cos/sin fp32 [rows, rd/2]. y may be x. */
void dsv4_head_norm_rope(const void *x, void *y, const float *cos, const float *sin,
                         int64_t rows, int64_t heads, int64_t dim, int64_t rd, int64_t norm,
                         float eps, int64_t inverse, int64_t bf16) {
    float v[dim];
    float sign = inverse ? -1.0f : 1.0f;
#ifdef __AVX512F__
    if (dim % 16 == 0 && rd % 16 == 0) {
        for (int64_t r = 0; r < rows; r++)
            for (int64_t h = 0; h < heads; h++) {
                int64_t base = (r * heads + h) * dim;
                widen_row(x, base, dim, bf16, v);
                if (norm) {  /* as the scalar loop: every step in the act dtype */
                    __m512 acc = _mm512_setzero_ps();
                    for (int64_t i = 0; i < dim; i += 16) {
                        __m512 t = _mm512_loadu_ps(v + i);
                        acc = _mm512_add_ps(acc, act_round16(_mm512_mul_ps(t, t), bf16));
                    }
                    float m = act_round(_mm512_reduce_add_ps(acc) / (float)dim, bf16);
                    __m512 rs = _mm512_set1_ps(act_round(1.0f / sqrtf(act_round(m + eps, bf16)), bf16));
                    for (int64_t i = 0; i < dim; i += 16)
                        _mm512_storeu_ps(v + i, act_round16(_mm512_mul_ps(_mm512_loadu_ps(v + i), rs), bf16));
                }
                if (rd) rope_vec(v + dim - rd, rd, cos + r * (rd / 2), sin + r * (rd / 2), sign, bf16);
                store_row(y, base, dim, bf16, v);
            }
        return;
    }
#endif
    for (int64_t r = 0; r < rows; r++)
        for (int64_t h = 0; h < heads; h++) {
            int64_t base = (r * heads + h) * dim;
            for (int64_t i = 0; i < dim; i++) v[i] = load_act(x, base + i, bf16);
            if (norm) {  /* square, mean, + eps, rsqrt, product: each rounded to the act dtype */
                float ss = 0.0f;
                for (int64_t i = 0; i < dim; i++) ss += act_round(v[i] * v[i], bf16);
                float m = act_round(ss / (float)dim, bf16);
                float rs = act_round(1.0f / sqrtf(act_round(m + eps, bf16)), bf16);
                for (int64_t i = 0; i < dim; i++) v[i] = act_round(v[i] * rs, bf16);
            }
            if (rd) rope_row(v, dim, rd, cos + r * (rd / 2), sin + r * (rd / 2), sign, bf16);
            for (int64_t i = 0; i < dim; i++) store_act(y, base + i, v[i], bf16);
        }
}

/* y act [n] = act(a[i] + b[i]) for a fp32 [n] and b act [n]: `(a + b.float()).to(act)`, as
 * the MoE adds the shared expert's output to the routed sum (one rounding, to nearest even). */
void dsv4_add_act(const float *a, const void *b, void *y, int64_t n, int64_t bf16) {
    for (int64_t i = 0; i < n; i++) store_act(y, i, a[i] + load_act(b, i, bf16), bf16);
}
