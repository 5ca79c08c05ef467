/* Lightning-indexer scoring and top-k selection in one pass (kernels/indexer.py):
 *
 *   score[t, j] = act( sum_h act( w[t, h] * relu(act(q[t, h] . k[j])) ) )
 *
 * with act() the activation dtype's rounding (bf16, or none for fp32), the head sum in fp32 in
 * head order, as the reference's reduction runs; entries j < (pos[t] + 1) / ratio are
 * visible, and each query keeps the `kout` best by (score, lower index first) in a min-heap of
 * the reference's sort keys, so nothing of size [M, N] is ever written.
 *
 * Keys are widened and transposed a tile at a time ([D][TILE] fp32), and each q.k dot
 * product is computed for 16 keys at once (one broadcast-FMA per dim), so there is no
 * horizontal reduction per score. */
#include <stdint.h>
#include <stdlib.h>

#include "common.h"

#define TILE 64

static inline float act_round(float v, int64_t bf16) { return bf16 ? round_bf16(v) : v; }

static inline float load_act(const void *p, int64_t i, int64_t bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* The reference's int64 sort key: the score's order-preserving integer (-0 = +0; one NaN,
 * above +inf) in the high word, 2^32-1-j in the low word (lower index wins a tie). */
static inline int64_t sort_key(float s, int64_t j) {
    s = s + 0.0f;
    if (s != s) s = f32_from_bits(0x7fc00000u);
    int32_t b = (int32_t)bits_of_f32(s);
    int64_t hi = b < 0 ? (int64_t)(b ^ 0x7fffffff) : (int64_t)b;
    return (int64_t)((uint64_t)hi << 32) | (int64_t)(0xffffffffu - (uint32_t)j);
}

/* push a key into a min-heap of at most cap distinct keys, dropping the smallest when full */
static void heap_push(int64_t *h, int64_t *n, int64_t cap, int64_t key) {
    int64_t i;
    if (*n < cap) {
        for (i = (*n)++; i > 0 && h[(i - 1) / 2] > key; i = (i - 1) / 2) h[i] = h[(i - 1) / 2];
        h[i] = key;
        return;
    }
    if (key <= h[0]) return;
    for (i = 0;;) {  /* the new key replaces the root and sinks */
        int64_t m = 2 * i + 1;
        if (m >= cap) break;
        if (m + 1 < cap && h[m + 1] < h[m]) m++;
        if (h[m] >= key) break;
        h[i] = h[m];
        i = m;
    }
    h[i] = key;
}

static int cmp_desc(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? 1 : (x > y ? -1 : 0);
}

/* scores of keys j0..j0+len-1 (len <= TILE) for one query row: q fp32 [H, D], w fp32 [H],
 * kt fp32 [D][TILE] -> out[len] */
static void tile_scores(const float *q, const float *w, const float *kt, int64_t H, int64_t D,
                        int64_t len, int64_t bf16, float *out) {
    float total[TILE] = {0};
    for (int64_t h = 0; h < H; h++) {
        float dot[TILE] = {0};
        const float *qh = q + h * D;
        for (int64_t d = 0; d < D; d++) {
            float qd = qh[d];
            const float *row = kt + d * TILE;
#pragma omp simd
            for (int64_t j = 0; j < TILE; j++) dot[j] += qd * row[j];
        }
        float wh = w[h];
        for (int64_t j = 0; j < len; j++) {
            float s = act_round(dot[j], bf16);
            s = s > 0.0f ? s : 0.0f;
            total[j] += act_round(s * wh, bf16);
        }
    }
    for (int64_t j = 0; j < len; j++) out[j] = act_round(total[j], bf16);
}

/* q act [M, H, D], k act [N, D], w act [M, H], pos int64 [M] -> out int32 [M, kout]: the
 * visible entries of each query, best first, then -1. Returns 0, or -1 when out of memory. */
int dsv4_index_topk(const void *q, const void *k, const void *w, const int64_t *pos, int64_t M,
                    int64_t H, int64_t N, int64_t D, int64_t ratio, int64_t kout, int32_t *out,
                    int64_t bf16) {
    if (M <= 0 || kout <= 0) return 0;
    float *qf = malloc((size_t)(M * H * D) * sizeof(float));
    float *wf = malloc((size_t)(M * H) * sizeof(float));
    float *kt = malloc((size_t)(D * TILE) * sizeof(float));
    int64_t *heaps = malloc((size_t)(M * kout) * sizeof(int64_t));
    int64_t *fill = calloc((size_t)M, sizeof(int64_t));
    if (!qf || !wf || !kt || !heaps || !fill) {
        free(qf); free(wf); free(kt); free(heaps); free(fill);
        return -1;
    }
    for (int64_t i = 0; i < M * H * D; i++) qf[i] = load_act(q, i, bf16);
    for (int64_t i = 0; i < M * H; i++) wf[i] = load_act(w, i, bf16);
    int64_t reach = 0;
    for (int64_t t = 0; t < M; t++) {
        int64_t lim = (pos[t] + 1) / ratio;
        if (lim > reach) reach = lim;
    }
    if (reach > N) reach = N;
    float scores[TILE];
    for (int64_t j0 = 0; j0 < reach; j0 += TILE) {
        int64_t len = reach - j0 < TILE ? reach - j0 : TILE;
        for (int64_t d = 0; d < D; d++)
            for (int64_t j = 0; j < TILE; j++)
                kt[d * TILE + j] = j < len ? load_act(k, (j0 + j) * D + d, bf16) : 0.0f;
        for (int64_t t = 0; t < M; t++) {
            int64_t lim = (pos[t] + 1) / ratio;
            if (lim > N) lim = N;
            if (lim <= j0) continue;
            int64_t n = lim - j0 < len ? lim - j0 : len;
            tile_scores(qf + t * H * D, wf + t * H, kt, H, D, n, bf16, scores);
            for (int64_t j = 0; j < n; j++)
                heap_push(heaps + t * kout, fill + t, kout, sort_key(scores[j], j0 + j));
        }
    }
    for (int64_t t = 0; t < M; t++) {
        int64_t *h = heaps + t * kout;
        qsort(h, (size_t)fill[t], sizeof(int64_t), cmp_desc);
        for (int64_t i = 0; i < kout; i++)
            out[t * kout + i] = i < fill[t] ? (int32_t)(0xffffffffu - (uint32_t)(h[i] & 0xffffffff))
                                            : -1;
    }
    free(qf); free(wf); free(kt); free(heaps); free(fill);
    return 0;
}
