/* The MoE gate of a few tokens (engine/moe.py, MoE.route) in one call:
 *
 *   s = sqrt(softplus(x . gate^T))          fp32, softplus(v) = v for v > 20, else log1p(e^v)
 *   ids = tid2eid[token] (hash layers)  or  the top-k of s + bias (largest first; on equal
 *                                          values the lower expert first)
 *   w = s[ids] / sum(s[ids]) * route_scale  (the sum left to right)
 *
 * x is fp32 or bf16 (widened exactly), gate fp32 [E, D] (bf16 values upcast at load). */
#include <stdint.h>

#include "common.h"

static inline float softplus(float v) { return v > 20.0f ? v : log1pf(expf(v)); }

/* x [T, D], gate fp32 [E, D], bias fp32 [E] or NULL, tid2eid int64 [V, k] or NULL with the
 * tokens' ids int64 [T] -> idx int64 [T, k], w fp32 [T, k]. Returns 0, or the number of rows
 * whose hash row or expert ids were out of range (nothing is written for them). */
int64_t dsv4_route(const void *x, int64_t bf16, const float *gate, const float *bias,
                   const int64_t *tid2eid, int64_t vocab, const int64_t *tokens, int64_t T,
                   int64_t D, int64_t E, int64_t k, float route_scale, int64_t *idx, float *w) {
    int64_t bad = 0;
    float s[E], key[E], xf[D];
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < D; i++)
            xf[i] = bf16 ? bf16_to_f32(((const uint16_t *)x)[t * D + i]) : ((const float *)x)[t * D + i];
        for (int64_t e = 0; e < E; e++) {
            float acc[16] = {0};
            const float *g = gate + e * D;
            int64_t i = 0;
            for (; i + 16 <= D; i += 16)
                for (int l = 0; l < 16; l++) acc[l] += xf[i + l] * g[i + l];
            float sum = 0.0f;
            for (int l = 0; l < 16; l++) sum += acc[l];
            for (; i < D; i++) sum += xf[i] * g[i];
            s[e] = sqrtf(softplus(sum));
        }
        int64_t *out = idx + t * k;
        if (tid2eid) {
            if (tokens[t] < 0 || tokens[t] >= vocab) { bad++; continue; }
            int ok = 1;
            for (int64_t j = 0; j < k; j++) {
                out[j] = tid2eid[tokens[t] * k + j];
                ok &= out[j] >= 0 && out[j] < E;
            }
            if (!ok) { bad++; continue; }
        } else {
            unsigned char taken[E];
            for (int64_t e = 0; e < E; e++) {
                key[e] = s[e] + bias[e];
                taken[e] = 0;
            }
            for (int64_t j = 0; j < k; j++) {  /* k passes of a max: k and E are small */
                int64_t best = -1;
                for (int64_t e = 0; e < E; e++)
                    if (!taken[e] && (best < 0 || key[e] > key[best])) best = e;
                out[j] = best;
                taken[best] = 1;
            }
        }
        float total = 0.0f;
        for (int64_t j = 0; j < k; j++) total += s[out[j]];
        for (int64_t j = 0; j < k; j++) w[t * k + j] = s[out[j]] / total * route_scale;
    }
    return bad;
}
