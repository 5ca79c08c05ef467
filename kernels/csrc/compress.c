/* The compressor's gated pooling (engine/compressor.py, Compressor._pool) in one call: for each
 * of n consecutive windows of r rows, per channel, a softmax over the window's slots of the
 * gate scores and the score-weighted sum of the kv rows, in fp32:
 *
 *   p_s = e_s * (1 / sum_s e_s),  e_s = exp(score_s - max_s score_s),  pooled = sum_s kv_s * p_s
 *
 * (torch's CPU softmax multiplies by the reciprocal; the sums run over the slots in order).
 * Ratio 128 (overlap = 0): the window's r rows, d channels. Ratio 4 (overlap = 1): each row
 * holds 2d channels; the slots are the previous window's first d (a window before the
 * sequence's first has kv 0 and score -inf) then the window's own last d. */
#include <stdint.h>
#include <stdlib.h>

#include "common.h"

/* the slot's row and column offset within the window starting at row `base` */
static inline int64_t slot_row(int64_t base, int64_t s, int64_t r, int64_t overlap) {
    return !overlap ? base + s : (s < r ? base - r + s : base + s - r);
}

/* kv, score fp32 [rows, width]: window i starts at row lo + i*r; out fp32 [n, d]. Channels
 * run in the inner loops (rows are contiguous), slots in the outer ones, in order. */
int dsv4_compress_pool(const float *kv, const float *score, int64_t width, int64_t lo,
                       int64_t n, int64_t r, int64_t d, int64_t overlap, float *out) {
    int64_t slots = overlap ? 2 * r : r;
    float *e = malloc((size_t)(slots + 2) * (size_t)d * sizeof(float));
    if (!e) return -1;
    float *m = e + slots * d, *sum = m + d;
    for (int64_t i = 0; i < n; i++) {
        int64_t base = lo + i * r;
        float *acc = out + i * d;
        for (int64_t c = 0; c < d; c++) m[c] = -INFINITY, sum[c] = 0.0f, acc[c] = 0.0f;
        for (int64_t s = 0; s < slots; s++) {
            int64_t row = slot_row(base, s, r, overlap), col = overlap && s >= r ? d : 0;
            if (row < 0) continue;  /* before the first window: score -inf */
            const float *sc = score + row * width + col;
            for (int64_t c = 0; c < d; c++) m[c] = sc[c] > m[c] ? sc[c] : m[c];
        }
        for (int64_t s = 0; s < slots; s++) {
            int64_t row = slot_row(base, s, r, overlap), col = overlap && s >= r ? d : 0;
            float *es = e + s * d;
            if (row < 0) {  /* exp(-inf - m) = 0 */
                for (int64_t c = 0; c < d; c++) es[c] = 0.0f;
                continue;
            }
            const float *sc = score + row * width + col;
            int64_t c = 0;
#ifdef __AVX512F__
            for (; c + 16 <= d; c += 16)
                _mm512_storeu_ps(es + c, exp16(_mm512_sub_ps(_mm512_loadu_ps(sc + c),
                                                             _mm512_loadu_ps(m + c))));
#endif
            for (; c < d; c++) es[c] = exp_f32(sc[c] - m[c]);
            for (c = 0; c < d; c++) sum[c] += es[c];
        }
        for (int64_t c = 0; c < d; c++) sum[c] = 1.0f / sum[c];
        for (int64_t s = 0; s < slots; s++) {
            int64_t row = slot_row(base, s, r, overlap), col = overlap && s >= r ? d : 0;
            const float *es = e + s * d;
            if (row < 0) {  /* kv 0 times p 0 */
                for (int64_t c = 0; c < d; c++) acc[c] += 0.0f * (es[c] * sum[c]);
                continue;
            }
            const float *v = kv + row * width + col;
            for (int64_t c = 0; c < d; c++) acc[c] += v[c] * (es[c] * sum[c]);
        }
    }
    free(e);
    return 0;
}
