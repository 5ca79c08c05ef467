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

void dsv4_rms_norm(const void *x, const float *w, void *y, int64_t rows, int64_t n, float eps,
                   int64_t bf16) {
    float buf[n];
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
