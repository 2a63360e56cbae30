/* NEON micro-kernels that the aarch64 backend's TVM-scheduled int8 kernels are tensorized into
 * (bitpress/schedules/neon.py), in the style of the Cortex-M ones (bp_ukernels.h): the reduction of one
 * register tile, acc[r][p] += sum_k x[p][k] * w(r, k), for R output rows x P pixels; TVM generates the
 * loops, im2col and requantization around them and calls them by name (they are inlined).
 *
 * x: P rows of k int8 values, pixel p at x + p * k (read in place; the K tail through a zero-filled copy).
 * w: the tile's weights, per 4-byte group g of K (K zero-padded to 4): R rows x 4 bytes,
 *    w(r, 4 g + i) at w[(g * R + r) * 4 + i], so one 16-byte load holds 4 rows of one group.
 * With the dot-product extension (Armv8.2-A +dotprod, e.g. -march=armv8.2-a+dotprod, -mcpu=cortex-a76 or
 * neoverse-n1) each group is one SDOT by element per 4 rows and pixel (vdotq_laneq_s32: 4 rows x 4 MACs,
 * x's group broadcast from its lane); the int32x4 accumulators hold 4 rows each, so there is no horizontal
 * reduction.  With the int8 matrix multiply extension (Armv8.6-A +i8mm) convolutions take bp_uk_neon_mm_8x4
 * instead (SMMLA on 2 x 2 blocks, weights in 8-byte groups).  Without the extension a kernel needs, the same
 * layout runs on SMULL/SADALP (Armv8.0 NEON: cortex-a53, a72), or plain C (no NEON). */
#ifndef BP_UKERNELS_NEON_H
#define BP_UKERNELS_NEON_H
#include <stdint.h>
#include <string.h>
#if defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#define BP_UKN static inline __attribute__((always_inline))

#if defined(__ARM_FEATURE_DOTPROD)
/* the 4 groups of one 16-byte x vector: group L of every pixel against R / 4 weight vectors */
#define BP_NEON_GROUP(L)                                                                                                                 \
    for (int rb = 0; rb < R / 4; rb++) {                                                                                                 \
        int8x16_t wv = vld1q_s8(wg + (L) * R * 4 + rb * 16);                                                                             \
        for (int p = 0; p < P; p++) v[rb][p] = vdotq_laneq_s32(v[rb][p], wv, xv[p], L);                                                  \
    }

BP_UKN void bp_neon_sdot_tile(int32_t *acc, const int8_t *x, const int8_t *w, int32_t k, const int R, const int P) {
    int32x4_t v[4][4]; /* [R / 4][P]: R <= 16, P <= 4 */
    int8x16_t xv[4];
    for (int rb = 0; rb < R / 4; rb++)
        for (int p = 0; p < P; p++) v[rb][p] = vdupq_n_s32(0);
    int32_t j = 0;
    for (; j + 16 <= k; j += 16) {
        for (int p = 0; p < P; p++) xv[p] = vld1q_s8(x + p * k + j);
        const int8_t *wg = w + j * R; /* group j / 4 starts (j / 4) * R * 4 bytes in */
        BP_NEON_GROUP(0) BP_NEON_GROUP(1) BP_NEON_GROUP(2) BP_NEON_GROUP(3)
    }
    if (j < k) { /* the K tail: x through zero-filled copies (the padded weights are zero past K) */
        int8_t t[4][16];
        memset(t, 0, sizeof t);
        for (int p = 0; p < P; p++) {
            memcpy(t[p], x + p * k + j, (size_t)(k - j));
            xv[p] = vld1q_s8(t[p]);
        }
        const int8_t *wg = w + j * R;
        int32_t groups = (k - j + 3) / 4; /* the weight groups that exist (K is padded to 4 only) */
        BP_NEON_GROUP(0)
        if (groups > 1) BP_NEON_GROUP(1)
        if (groups > 2) BP_NEON_GROUP(2)
        if (groups > 3) BP_NEON_GROUP(3)
    }
    for (int rb = 0; rb < R / 4; rb++)
        for (int p = 0; p < P; p++) {
            int32_t s[4];
            vst1q_s32(s, v[rb][p]);
            for (int i = 0; i < 4; i++) acc[(rb * 4 + i) * P + p] += s[i];
        }
}
#define BP_NEON_TILE(acc, x, w, k, R, P) bp_neon_sdot_tile(acc, x, w, k, R, P)
#elif defined(__ARM_NEON)
/* Armv8.0 NEON (no dot product, e.g. cortex-a53/a72): group L of x broadcast to all 4 lanes, then per 4 rows
 * SMULL + SMULL2 (8 int16 products each, exact) and SADALP (pairwise into int32 accumulators holding
 * (r, r, r + 1, r + 1) partial sums); one ADDP per 4 rows at the end.  5 instructions per 16 MACs. */
#define BP_NEON_WIDEN_GROUP(L)                                                                                                           \
    for (int p = 0; p < P; p++) xb[p] = vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(xv[p]), L));                          \
    for (int rb = 0; rb < R / 4; rb++) {                                                                                                 \
        int8x16_t wv = vld1q_s8(wg + (L) * R * 4 + rb * 16);                                                                             \
        for (int p = 0; p < P; p++) {                                                                                                    \
            lo[rb][p] = vpadalq_s16(lo[rb][p], vmull_s8(vget_low_s8(wv), vget_low_s8(xb[p])));                                           \
            hi[rb][p] = vpadalq_s16(hi[rb][p], vmull_high_s8(wv, xb[p]));                                                                \
        }                                                                                                                                \
    }

BP_UKN void bp_neon_widen_tile(int32_t *acc, const int8_t *x, const int8_t *w, int32_t k, const int R, const int P) {
    int32x4_t lo[4][4], hi[4][4]; /* [R / 4][P]: rows (r, r, r + 1, r + 1) and (r + 2, r + 2, r + 3, r + 3) */
    int8x16_t xv[4], xb[4];
    for (int rb = 0; rb < R / 4; rb++)
        for (int p = 0; p < P; p++) lo[rb][p] = hi[rb][p] = vdupq_n_s32(0);
    int32_t j = 0;
    for (; j + 16 <= k; j += 16) {
        for (int p = 0; p < P; p++) xv[p] = vld1q_s8(x + p * k + j);
        const int8_t *wg = w + j * R;
        BP_NEON_WIDEN_GROUP(0) BP_NEON_WIDEN_GROUP(1) BP_NEON_WIDEN_GROUP(2) BP_NEON_WIDEN_GROUP(3)
    }
    if (j < k) {
        int8_t t[4][16];
        memset(t, 0, sizeof t);
        for (int p = 0; p < P; p++) {
            memcpy(t[p], x + p * k + j, (size_t)(k - j));
            xv[p] = vld1q_s8(t[p]);
        }
        const int8_t *wg = w + j * R;
        int32_t groups = (k - j + 3) / 4;
        BP_NEON_WIDEN_GROUP(0)
        if (groups > 1) { BP_NEON_WIDEN_GROUP(1) }
        if (groups > 2) { BP_NEON_WIDEN_GROUP(2) }
        if (groups > 3) { BP_NEON_WIDEN_GROUP(3) }
    }
    for (int rb = 0; rb < R / 4; rb++)
        for (int p = 0; p < P; p++) {
            int32_t s[4];
            vst1q_s32(s, vpaddq_s32(lo[rb][p], hi[rb][p]));
            for (int i = 0; i < 4; i++) acc[(rb * 4 + i) * P + p] += s[i];
        }
}
#define BP_NEON_TILE(acc, x, w, k, R, P) bp_neon_widen_tile(acc, x, w, k, R, P)
#else
#define BP_NEON_TILE(acc, x, w, k, R, P) bp_neon_c_tile(acc, x, w, k, R, P, 4)
#endif

/* the same tile in plain C, weights in G-byte groups (G = 4: the SDOT layout, G = 8: the SMMLA layout): builds
 * without NEON (+nosimd), or the SMMLA layout on a CPU without i8mm */
BP_UKN void bp_neon_c_tile(int32_t *acc, const int8_t *x, const int8_t *w, int32_t k, const int R, const int P, const int G) {
    for (int32_t g = 0; g < (k + G - 1) / G; g++)
        for (int r = 0; r < R; r++)
            for (int i = 0; i < G && G * g + i < k; i++) {
                int32_t wv = w[(g * R + r) * G + i];
                for (int p = 0; p < P; p++) acc[r * P + p] += wv * x[p * k + G * g + i];
            }
}

#if defined(__ARM_FEATURE_MATMUL_INT8)
/* neon-mm-8x4 (convolutions on CPUs with the int8 matrix multiply extension, Armv8.6-A +i8mm): 8 channels x 4
 * pixels as 4 x 2 blocks of 2 rows x 2 pixels.  Weights in 8-byte groups: per group, rows (2i, 2i + 1) are one
 * 16-byte vector, SMMLA's B operand; A is two pixels' 8 bytes.  SMMLA adds the 2 x 2 products of 8-term dot
 * products (pixel-major: lanes (p, r), (p, r + 1), (p + 1, r), (p + 1, r + 1)).  Per 8 values of K: 4 x loads,
 * 4 weight loads, 8 SMMLA = 256 MACs. */
BP_UKN void bp_neon_mm_tile(int32_t *acc, const int8_t *x, const int8_t *w, int32_t k, const int R, const int P) {
    int32x4_t v[2][8]; /* [P / 2][R / 2]: P <= 4, R <= 16 */
    for (int pp = 0; pp < P / 2; pp++)
        for (int rp = 0; rp < R / 2; rp++) v[pp][rp] = vdupq_n_s32(0);
    int32_t j = 0;
    for (; j < k; j += 8) {
        int8x16_t xv[2];
        if (j + 8 <= k) {
            for (int pp = 0; pp < P / 2; pp++) xv[pp] = vcombine_s8(vld1_s8(x + 2 * pp * k + j), vld1_s8(x + (2 * pp + 1) * k + j));
        } else { /* the K tail through zero-filled copies (the padded weights are zero past K) */
            int8_t t[4][8];
            memset(t, 0, sizeof t);
            for (int p = 0; p < P; p++) memcpy(t[p], x + p * k + j, (size_t)(k - j));
            for (int pp = 0; pp < P / 2; pp++) xv[pp] = vcombine_s8(vld1_s8(t[2 * pp]), vld1_s8(t[2 * pp + 1]));
        }
        const int8_t *wg = w + j * R; /* group j / 8 starts (j / 8) * R * 8 bytes in */
        for (int rp = 0; rp < R / 2; rp++) {
            int8x16_t wv = vld1q_s8(wg + rp * 16);
            for (int pp = 0; pp < P / 2; pp++) v[pp][rp] = vmmlaq_s32(v[pp][rp], xv[pp], wv);
        }
    }
    for (int pp = 0; pp < P / 2; pp++)
        for (int rp = 0; rp < R / 2; rp++) {
            int32_t s[4];
            vst1q_s32(s, v[pp][rp]);
            acc[(2 * rp) * P + 2 * pp] += s[0];
            acc[(2 * rp + 1) * P + 2 * pp] += s[1];
            acc[(2 * rp) * P + 2 * pp + 1] += s[2];
            acc[(2 * rp + 1) * P + 2 * pp + 1] += s[3];
        }
}
#define BP_NEON_MM_TILE(acc, x, w, k, R, P) bp_neon_mm_tile(acc, x, w, k, R, P)
#else
#define BP_NEON_MM_TILE(acc, x, w, k, R, P) bp_neon_c_tile(acc, x, w, k, R, P, 8)
#endif

/* neon-16x1 (linear layers): 16 rows x 1 row of x; 4 accumulators, 16 SDOT per 16 values of K */
BP_UKN int32_t bp_uk_neon_16x1(void *acc, void *x, void *w, int32_t k) {
    BP_NEON_TILE((int32_t *)acc, (const int8_t *)x, (const int8_t *)w, k, 16, 1);
    return 0;
}

/* neon-8x4 (convolutions over im2col patches): 8 channels x 4 pixels; 8 accumulators, 32 SDOT per 16 values of K */
BP_UKN int32_t bp_uk_neon_8x4(void *acc, void *x, void *w, int32_t k) {
    BP_NEON_TILE((int32_t *)acc, (const int8_t *)x, (const int8_t *)w, k, 8, 4);
    return 0;
}
/* neon-mm-8x4: 8 channels x 4 pixels on SMMLA (weights in 8-byte groups) */
BP_UKN int32_t bp_uk_neon_mm_8x4(void *acc, void *x, void *w, int32_t k) {
    BP_NEON_MM_TILE((int32_t *)acc, (const int8_t *)x, (const int8_t *)w, k, 8, 4);
    return 0;
}
#endif
