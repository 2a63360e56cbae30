/* bitpress MCU kernel library: int8 (W8A8) kernels in scalar, DSP (SMLAD) and Helium (MVE) schedules,
 * and float32 kernels for layers compiled with allow_float.  Every function is inlined into the
 * per-layer function model.c defines, so the shapes are compile-time constants there.
 * Integer semantics follow bitpress.passes.quantize.ops exactly (bit-exact with the interpreter). */
#ifndef BP_KERNELS_H
#define BP_KERNELS_H
#include <stdint.h>
#include <string.h>
#include <math.h>
#if defined(__ARM_FEATURE_DSP) || defined(__ARM_FEATURE_SAT)
#include <arm_acle.h>
#endif
#if defined(__ARM_FEATURE_MVE)
#include <arm_mve.h>
#endif

#define BP_INLINE static inline __attribute__((always_inline))

BP_INLINE uint32_t bp_ld32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }
BP_INLINE void bp_st32(void *p, uint32_t v) { memcpy(p, &v, 4); }
BP_INLINE uint64_t bp_ld64(const void *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* y = clamp(((acc * m + 2^(r-1)) >> r) + zp, -128, 127)   (int64 product, arithmetic shift).
 * For r > 32 the rounding term only touches the high word, so with p = hi * 2^32 + lo (0 <= lo < 2^32)
 * floor((p + 2^(r-1)) / 2^r) = floor((hi + 2^(r-33)) / 2^(r-32)) exactly: one SMULL, an add and a shift. */
BP_INLINE int8_t bp_requant(int32_t acc, int32_t m, int32_t r, int32_t zp) {
    int64_t p = (int64_t)acc * m;
    int32_t y;
    if (r > 32) {
        int32_t hi = (int32_t)(p >> 32);
        y = (hi + (1 << (r - 33))) >> (r - 32);
    } else {
        int64_t q = (p + ((int64_t)1 << (r - 1))) >> r;
        q = q < -(1 << 30) ? -(1 << 30) : (q > (1 << 30) ? (1 << 30) : q);
        y = (int32_t)q;
    }
    y += zp;
#if defined(__ARM_FEATURE_SAT)
    return (int8_t)__ssat(y, 8); /* |y| < 2^31: no overflow before the clamp */
#else
    return (int8_t)(y < -128 ? -128 : (y > 127 ? 127 : y));
#endif
}

/* round half to even in float32, as rintf in the default rounding mode: adding 1.5 * 2^23 leaves no
 * fraction bits, so the FPU rounds to nearest even; values >= 2^22 in magnitude are integers already */
BP_INLINE float bp_rint(float v) {
    if (fabsf(v) < 0x1p22f) {
        volatile float t = v + 0x1.8p23f; /* volatile: keep the rounding add (no fast-math folding) */
        return t - 0x1.8p23f;
    }
    return v;
}

/* q = clamp(round_half_even(x / s) + zp, -128, 127) in float32, as torch computes it */
BP_INLINE void bp_quantize_f32_s8(const float *x, int8_t *y, int n, float s, float zp) {
    for (int i = 0; i < n; i++) {
        float q = bp_rint(x[i] / s) + zp;
        q = q < -128.0f ? -128.0f : (q > 127.0f ? 127.0f : q);
        y[i] = (int8_t)q;
    }
}

/* x = (q - zp) * s */
BP_INLINE void bp_dequantize_s8_f32(const int8_t *x, float *y, int n, float s, int32_t zp) {
    for (int i = n - 1; i >= 0; i--) y[i] = (float)((int32_t)x[i] - zp) * s; /* backwards: in place when y aliases x */
}

/* y = T[x]   (any int8 -> int8 function, e.g. requantize(f(dequantize(x)))) */
BP_INLINE void bp_lut_s8(const int8_t *x, int8_t *y, int n, const int8_t *t) {
    for (int i = 0; i < n; i++) y[i] = t[(uint8_t)x[i]];
}

/* max pooling over NCHW int8; out-of-bounds taps are skipped (torch pads with -inf) */
BP_INLINE void bp_maxpool_s8(const int8_t *x, int8_t *y, int NC, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph,
                             int pw, int dh, int dw) {
    for (int c = 0; c < NC; c++, x += H * W)
        for (int oy = 0; oy < OH; oy++)
            for (int ox = 0; ox < OW; ox++) {
                int m = -128;
                for (int i = 0; i < kh; i++) {
                    int iy = oy * sh - ph + i * dh;
                    if (iy < 0 || iy >= H) continue;
                    for (int j = 0; j < kw; j++) {
                        int ix = ox * sw - pw + j * dw;
                        if (ix < 0 || ix >= W) continue;
                        int v = x[iy * W + ix];
                        m = v > m ? v : m;
                    }
                }
                *y++ = (int8_t)m;
            }
}

/* im2col of one output pixel: patch[c*kh*kw + i*kw + j] = x[c, iy, ix], padding with the input zero point.
 * A window fully inside the image (most pixels) is copied without bounds checks. */
#define BP_IM2COL(NAME, T)                                                                                                            \
    BP_INLINE void NAME(const int8_t *x, T *patch, int C, int H, int W, int oy, int ox, int kh, int kw, int sh, int sw, int ph, int pw,   \
                        int dh, int dw, int8_t pad) {                                                                                   \
        const int y0 = oy * sh - ph, x0 = ox * sw - pw;                                                                                \
        if (y0 >= 0 && y0 + (kh - 1) * dh < H && x0 >= 0 && x0 + (kw - 1) * dw < W) {                                                  \
            const int8_t *base = x + y0 * W + x0;                                                                                       \
            for (int c = 0; c < C; c++, base += H * W)                                                                                  \
                for (int i = 0; i < kh; i++) {                                                                                          \
                    const int8_t *row = base + i * dh * W;                                                                              \
                    for (int j = 0; j < kw; j++) *patch++ = row[j * dw];                                                                \
                }                                                                                                                       \
            return;                                                                                                                     \
        }                                                                                                                               \
        for (int c = 0; c < C; c++, x += H * W)                                                                                         \
            for (int i = 0; i < kh; i++) {                                                                                              \
                int iy = y0 + i * dh;                                                                                                   \
                if (iy < 0 || iy >= H) {                                                                                                \
                    for (int j = 0; j < kw; j++) *patch++ = pad;                                                                        \
                    continue;                                                                                                           \
                }                                                                                                                       \
                const int8_t *row = x + iy * W;                                                                                         \
                for (int j = 0; j < kw; j++) {                                                                                          \
                    int ix = x0 + j * dw;                                                                                               \
                    *patch++ = (ix < 0 || ix >= W) ? pad : row[ix];                                                                     \
                }                                                                                                                       \
            }                                                                                                                           \
    }
BP_IM2COL(bp_im2col_s8, int8_t)
BP_IM2COL(bp_im2col_s16, int16_t) /* sign-extended in natural order, for the dsp-2x2 schedule */

/* ---- int8 GEMV: y[n * ys] = requant(sum_k x[k] w[n, k] + bias[n]); bias already holds -x_zp * sum_k w[n, k] ---- */

/* schedule "scalar": row-major weights, one output at a time */
BP_INLINE void bp_gemv_s8_scalar(const int8_t *x, int K, const int8_t *w, int N, const int32_t *bias, const int32_t *mult,
                                 const int32_t *shift, int32_t yzp, int8_t *y, int ys) {
    for (int n = 0; n < N; n++, w += K) {
        int32_t acc = bias[n];
        for (int k = 0; k < K; k++) acc += (int32_t)x[k] * w[k];
        y[n * ys] = bp_requant(acc, mult[n], shift[n], yzp);
    }
}

#if defined(__ARM_FEATURE_DSP)
BP_INLINE uint32_t bp_sxtb16_ror8(uint32_t v) {
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}

/* x int8 -> int16 in SXTB16 order: per 4 values [x0 x2 x1 x3]; the K % 4 tail stays in order */
BP_INLINE void bp_expand_s8_dsp(const int8_t *x, int K, int16_t *xs) {
    int k = 0;
    for (; k + 4 <= K; k += 4) {
        uint32_t v = bp_ld32(x + k);
        bp_st32(xs + k, __sxtb16(v));
        bp_st32(xs + k + 2, bp_sxtb16_ror8(v));
    }
    for (; k < K; k++) xs[k] = x[k];
}

/* schedule "dsp-4row": weights in blocks of 4 rows, 4-byte chunks interleaved (see schedules/mcu.py);
 * per 4 k and 4 rows: 2 x loads, 4 w loads, 8 SXTB16, 8 SMLAD (two 16-bit MACs each) */
BP_INLINE void bp_gemv_s8_dsp4(const int16_t *xs, int K, const int8_t *w, int N, const int32_t *bias, const int32_t *mult,
                               const int32_t *shift, int32_t yzp, int8_t *y, int ys) {
    const int K4 = K & ~3, T = K - K4;
    int n = 0;
    for (; n + 4 <= N; n += 4) {
        int32_t a0 = bias[n], a1 = bias[n + 1], a2 = bias[n + 2], a3 = bias[n + 3];
        const int16_t *xp = xs;
        const int8_t *wp = w;
        int cnt = K4 >> 2;
        if (cnt) { /* 3 LDRD, 8 SXTB16, 8 SMLAD, SUBS, BNE = 21 instructions per 16 MACs (xs and 4-row blocks are word aligned) */
            uint32_t xa, xb, w0, w1, w2, w3, t;
            __asm__ volatile("1:\n\t"
                             "ldrd %[xa], %[xb], [%[xp]], #8\n\t"
                             "ldrd %[w0], %[w1], [%[wp]], #8\n\t"
                             "ldrd %[w2], %[w3], [%[wp]], #8\n\t"
                             "sxtb16 %[t], %[w0]\n\t"
                             "smlad %[a0], %[t], %[xa], %[a0]\n\t"
                             "sxtb16 %[w0], %[w0], ror #8\n\t"
                             "smlad %[a0], %[w0], %[xb], %[a0]\n\t"
                             "sxtb16 %[t], %[w1]\n\t"
                             "smlad %[a1], %[t], %[xa], %[a1]\n\t"
                             "sxtb16 %[w1], %[w1], ror #8\n\t"
                             "smlad %[a1], %[w1], %[xb], %[a1]\n\t"
                             "sxtb16 %[t], %[w2]\n\t"
                             "smlad %[a2], %[t], %[xa], %[a2]\n\t"
                             "sxtb16 %[w2], %[w2], ror #8\n\t"
                             "smlad %[a2], %[w2], %[xb], %[a2]\n\t"
                             "sxtb16 %[t], %[w3]\n\t"
                             "smlad %[a3], %[t], %[xa], %[a3]\n\t"
                             "sxtb16 %[w3], %[w3], ror #8\n\t"
                             "smlad %[a3], %[w3], %[xb], %[a3]\n\t"
                             "subs %[cnt], %[cnt], #1\n\t"
                             "bne 1b\n"
                             : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [xp] "+r"(xp), [wp] "+r"(wp), [cnt] "+r"(cnt),
                               [xa] "=&r"(xa), [xb] "=&r"(xb), [w0] "=&r"(w0), [w1] "=&r"(w1), [w2] "=&r"(w2), [w3] "=&r"(w3), [t] "=&r"(t)
                             :
                             : "cc", "memory");
        }
        for (int t = 0; t < T; t++) {
            int32_t xv = xs[K4 + t];
            a0 += xv * wp[t];
            a1 += xv * wp[T + t];
            a2 += xv * wp[2 * T + t];
            a3 += xv * wp[3 * T + t];
        }
        w += 4 * K;
        y[n * ys] = bp_requant(a0, mult[n], shift[n], yzp);
        y[(n + 1) * ys] = bp_requant(a1, mult[n + 1], shift[n + 1], yzp);
        y[(n + 2) * ys] = bp_requant(a2, mult[n + 2], shift[n + 2], yzp);
        y[(n + 3) * ys] = bp_requant(a3, mult[n + 3], shift[n + 3], yzp);
    }
    for (; n < N; n++, w += K) { /* leftover rows are stored row-major */
        int32_t acc = bias[n];
        int k = 0;
        for (; k < K4; k += 4) {
            uint32_t wv = bp_ld32(w + k);
            acc = __smlad(__sxtb16(wv), bp_ld32(xs + k), acc);
            acc = __smlad(bp_sxtb16_ror8(wv), bp_ld32(xs + k + 2), acc);
        }
        for (; k < K; k++) acc += (int32_t)xs[k] * w[k];
        y[n * ys] = bp_requant(acc, mult[n], shift[n], yzp);
    }
}

/* conv schedule "dsp-2x2": two output pixels share every weight word (two rows at a time; weights in
 * 2-row blocks with 4-byte chunks interleaved, bytes [w0 w2 w1 w3] in each chunk so that SXTB16 yields
 * (w0, w1) and (w2, w3) against activations sign-extended to int16 in natural order).  Per 4 k: 4 x loads, 2 w loads, 4 SXTB16, 8 SMLAD = 16 MACs.
 * With xb == xa and yb == ya it computes one pixel (an odd last pixel writes the same bytes twice). */
BP_INLINE void bp_gemm_s8_dsp2x2(const int16_t *xa, const int16_t *xb, int K, const int8_t *w, int N, const int32_t *bias,
                                 const int32_t *mult, const int32_t *shift, int32_t yzp, int8_t *ya, int8_t *yb, int ys) {
    const int K4 = K & ~3, T = K - K4;
    int n = 0;
    for (; n + 2 <= N; n += 2) {
        int32_t a00 = bias[n], a01 = bias[n], a10 = bias[n + 1], a11 = bias[n + 1];
        const int16_t *pa = xa, *pb = xb;
        const int8_t *wp = w;
        for (int c = K4 >> 2; c > 0; c--) {
            uint32_t w0 = bp_ld32(wp), w1 = bp_ld32(wp + 4);
            uint32_t pa0 = bp_ld32(pa), pa1 = bp_ld32(pa + 2), pb0 = bp_ld32(pb), pb1 = bp_ld32(pb + 2);
            wp += 8;
            pa += 4;
            pb += 4;
            uint32_t lo = __sxtb16(w0), hi = bp_sxtb16_ror8(w0);
            a00 = __smlad(lo, pa0, a00);
            a00 = __smlad(hi, pa1, a00);
            a01 = __smlad(lo, pb0, a01);
            a01 = __smlad(hi, pb1, a01);
            lo = __sxtb16(w1);
            hi = bp_sxtb16_ror8(w1);
            a10 = __smlad(lo, pa0, a10);
            a10 = __smlad(hi, pa1, a10);
            a11 = __smlad(lo, pb0, a11);
            a11 = __smlad(hi, pb1, a11);
        }
        for (int t = 0; t < T; t++) {
            int32_t w0 = wp[t], w1 = wp[T + t];
            a00 += xa[K4 + t] * w0;
            a01 += xb[K4 + t] * w0;
            a10 += xa[K4 + t] * w1;
            a11 += xb[K4 + t] * w1;
        }
        w += 2 * K;
        ya[n * ys] = bp_requant(a00, mult[n], shift[n], yzp);
        yb[n * ys] = bp_requant(a01, mult[n], shift[n], yzp);
        ya[(n + 1) * ys] = bp_requant(a10, mult[n + 1], shift[n + 1], yzp);
        yb[(n + 1) * ys] = bp_requant(a11, mult[n + 1], shift[n + 1], yzp);
    }
    if (n < N) { /* an odd last row, stored row-major */
        int32_t a0 = bias[n], a1 = bias[n];
        int k = 0;
        for (; k < K4; k += 4) {
            uint32_t wv = bp_ld32(w + k), lo = __sxtb16(wv), hi = bp_sxtb16_ror8(wv);
            a0 = __smlad(hi, bp_ld32(xa + k + 2), __smlad(lo, bp_ld32(xa + k), a0));
            a1 = __smlad(hi, bp_ld32(xb + k + 2), __smlad(lo, bp_ld32(xb + k), a1));
        }
        for (; k < K; k++) {
            a0 += xa[k] * w[k];
            a1 += xb[k] * w[k];
        }
        ya[n * ys] = bp_requant(a0, mult[n], shift[n], yzp);
        yb[n * ys] = bp_requant(a1, mult[n], shift[n], yzp);
    }
}

/* The dsp-2x2 kernel with its inner loop in assembly, for even K: pixel B's activations sit OFF bytes after
 * pixel A's (one scratch buffer), so 14 registers hold 4 accumulators, 6 operands, a temporary and 3 counters.
 * Per 4 k and 2 rows x 2 pixels: 3 LDRD, 4 SXTB16, 8 SMLAD, SUBS, BNE = 17 instructions for 16 MACs.
 * The model instantiates it once per offset: BP_DEFINE_GEMM_DSP2X2(576) -> bp_gemm_s8_dsp2x2_576(). */
#define BP_DEFINE_GEMM_DSP2X2(OFF)                                                                                                       \
    BP_INLINE void bp_gemm_s8_dsp2x2_##OFF(const int16_t *xa, int K, const int8_t *w, int N, const int32_t *bias, const int32_t *mult,    \
                                          const int32_t *shift, int32_t yzp, int8_t *ya, int8_t *yb, int ys) {                            \
        const int16_t *xb = xa + (OFF) / 2;                                                                                              \
        const int K4 = K & ~3, T = K - K4;                                                                                               \
        int n = 0;                                                                                                                       \
        for (; n + 2 <= N; n += 2) {                                                                                                     \
            int32_t a00 = bias[n], a01 = bias[n], a10 = bias[n + 1], a11 = bias[n + 1];                                                  \
            const int16_t *px = xa;                                                                                                      \
            const int8_t *wp = w;                                                                                                        \
            int cnt = K4 >> 2;                                                                                                           \
            if (cnt) {                                                                                                                   \
                uint32_t w0, w1, x0, x1, y0, y1, t;                                                                                      \
                __asm__ volatile("1:\n\t"                                                                                                \
                                 "ldrd %[y0], %[y1], [%[px], #" #OFF "]\n\t"                                                             \
                                 "ldrd %[x0], %[x1], [%[px]], #8\n\t"                                                                    \
                                 "ldrd %[w0], %[w1], [%[wp]], #8\n\t"                                                                    \
                                 "sxtb16 %[t], %[w0]\n\t"                                                                                \
                                 "smlad %[a00], %[t], %[x0], %[a00]\n\t"                                                                 \
                                 "smlad %[a01], %[t], %[y0], %[a01]\n\t"                                                                 \
                                 "sxtb16 %[w0], %[w0], ror #8\n\t"                                                                       \
                                 "smlad %[a00], %[w0], %[x1], %[a00]\n\t"                                                                \
                                 "smlad %[a01], %[w0], %[y1], %[a01]\n\t"                                                                \
                                 "sxtb16 %[t], %[w1]\n\t"                                                                                \
                                 "smlad %[a10], %[t], %[x0], %[a10]\n\t"                                                                 \
                                 "smlad %[a11], %[t], %[y0], %[a11]\n\t"                                                                 \
                                 "sxtb16 %[w1], %[w1], ror #8\n\t"                                                                       \
                                 "smlad %[a10], %[w1], %[x1], %[a10]\n\t"                                                                \
                                 "smlad %[a11], %[w1], %[y1], %[a11]\n\t"                                                                \
                                 "subs %[cnt], %[cnt], #1\n\t"                                                                           \
                                 "bne 1b\n"                                                                                              \
                                 : [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11), [px] "+r"(px), [wp] "+r"(wp),    \
                                   [cnt] "+r"(cnt), [w0] "=&r"(w0), [w1] "=&r"(w1), [x0] "=&r"(x0), [x1] "=&r"(x1), [y0] "=&r"(y0),      \
                                   [y1] "=&r"(y1), [t] "=&r"(t)                                                                          \
                                 :                                                                                                       \
                                 : "cc", "memory");                                                                                      \
            }                                                                                                                            \
            for (int t2 = 0; t2 < T; t2++) {                                                                                             \
                int32_t v0 = wp[t2], v1 = wp[T + t2];                                                                                    \
                a00 += xa[K4 + t2] * v0;                                                                                                 \
                a01 += xb[K4 + t2] * v0;                                                                                                 \
                a10 += xa[K4 + t2] * v1;                                                                                                 \
                a11 += xb[K4 + t2] * v1;                                                                                                 \
            }                                                                                                                            \
            w += 2 * K;                                                                                                                  \
            ya[n * ys] = bp_requant(a00, mult[n], shift[n], yzp);                                                                        \
            yb[n * ys] = bp_requant(a01, mult[n], shift[n], yzp);                                                                        \
            ya[(n + 1) * ys] = bp_requant(a10, mult[n + 1], shift[n + 1], yzp);                                                          \
            yb[(n + 1) * ys] = bp_requant(a11, mult[n + 1], shift[n + 1], yzp);                                                          \
        }                                                                                                                                \
        if (n < N) bp_gemm_s8_dsp2x2(xa, xb, K, w, N - n, bias + n, mult + n, shift + n, yzp, ya + n * ys, yb + n * ys, ys);             \
    }
#endif

#if defined(__ARM_FEATURE_MVE)
/* schedule "mve-4row": row-major weights, 4 rows share each 16-byte x load; VMLADAVA = 16 int8 MACs */
/* four rows at once, exactly as bp_requant for shifts r > 32: VMULH gives hi = (acc * m) >> 32, then
 * (hi + 2^(r-33)) >> (r-32) with VSHL by a negative count (arithmetic, truncating), clamp, byte scatter */
BP_INLINE void bp_requant4_mve(int32_t a0, int32_t a1, int32_t a2, int32_t a3, const int32_t *mult, const int32_t *shift, int32_t yzp,
                               int8_t *y, int ys) {
    int32x4_t acc = vsetq_lane_s32(a3, vsetq_lane_s32(a2, vsetq_lane_s32(a1, vdupq_n_s32(a0), 1), 2), 3);
    int32x4_t r = vldrwq_s32(shift);
    int32x4_t hi = vmulhq_s32(acc, vldrwq_s32(mult));
    int32x4_t rnd = vshlq_s32(vdupq_n_s32(1), vsubq_n_s32(r, 33));
    int32x4_t v = vshlq_s32(vaddq_s32(hi, rnd), vsubq_s32(vdupq_n_s32(32), r));
    v = vminq_s32(vmaxq_s32(vaddq_n_s32(v, yzp), vdupq_n_s32(-128)), vdupq_n_s32(127));
    vstrbq_scatter_offset_s32(y, vmulq_n_u32(vidupq_n_u32(0, 1), (uint32_t)ys), v);
}

/* im2col for the MVE schedule: an interior window with unit dilation copies each kernel row (kw <= 16 bytes)
 * with one tail-predicated load/store pair instead of kw byte moves */
BP_INLINE void bp_im2col_s8_mve(const int8_t *x, int8_t *patch, int C, int H, int W, int oy, int ox, int kh, int kw, int sh, int sw, int ph,
                                int pw, int dh, int dw, int8_t pad) {
    const int y0 = oy * sh - ph, x0 = ox * sw - pw;
    if (dw == 1 && kw <= 16 && y0 >= 0 && y0 + (kh - 1) * dh < H && x0 >= 0 && x0 + kw - 1 < W) {
        const mve_pred16_t p = vctp8q(kw);
        const int8_t *base = x + y0 * W + x0;
        for (int c = 0; c < C; c++, base += H * W)
            for (int i = 0; i < kh; i++, patch += kw) vstrbq_p_s8(patch, vldrbq_z_s8(base + i * dh * W, p), p);
        return;
    }
    bp_im2col_s8(x, patch, C, H, W, oy, ox, kh, kw, sh, sw, ph, pw, dh, dw, pad);
}

/* `vreq`: every shift of the layer is > 32 (checked at compile time), so the vector requantization applies */
BP_INLINE void bp_gemv_s8_mve4(const int8_t *x, int K, const int8_t *w, int N, const int32_t *bias, const int32_t *mult,
                               const int32_t *shift, int32_t yzp, int8_t *y, int ys, int vreq) {
    const int K16 = K & ~15;
    const mve_pred16_t pt = vctp8q(K - K16);
    int n = 0;
    for (; n + 4 <= N; n += 4, w += 4 * K) {
        const int8_t *w0 = w, *w1 = w + K, *w2 = w + 2 * K, *w3 = w + 3 * K;
        int32_t a0 = bias[n], a1 = bias[n + 1], a2 = bias[n + 2], a3 = bias[n + 3];
        for (int k = 0; k < K16; k += 16) {
            int8x16_t xv = vldrbq_s8(x + k);
            a0 = vmladavaq_s8(a0, xv, vldrbq_s8(w0 + k));
            a1 = vmladavaq_s8(a1, xv, vldrbq_s8(w1 + k));
            a2 = vmladavaq_s8(a2, xv, vldrbq_s8(w2 + k));
            a3 = vmladavaq_s8(a3, xv, vldrbq_s8(w3 + k));
        }
        if (K16 < K) {
            int8x16_t xv = vldrbq_z_s8(x + K16, pt);
            a0 = vmladavaq_s8(a0, xv, vldrbq_z_s8(w0 + K16, pt));
            a1 = vmladavaq_s8(a1, xv, vldrbq_z_s8(w1 + K16, pt));
            a2 = vmladavaq_s8(a2, xv, vldrbq_z_s8(w2 + K16, pt));
            a3 = vmladavaq_s8(a3, xv, vldrbq_z_s8(w3 + K16, pt));
        }
        if (vreq) {
            bp_requant4_mve(a0, a1, a2, a3, mult + n, shift + n, yzp, y + n * ys, ys);
            continue;
        }
        y[n * ys] = bp_requant(a0, mult[n], shift[n], yzp);
        y[(n + 1) * ys] = bp_requant(a1, mult[n + 1], shift[n + 1], yzp);
        y[(n + 2) * ys] = bp_requant(a2, mult[n + 2], shift[n + 2], yzp);
        y[(n + 3) * ys] = bp_requant(a3, mult[n + 3], shift[n + 3], yzp);
    }
    for (; n < N; n++, w += K) {
        int32_t acc = bias[n];
        for (int k = 0; k < K16; k += 16) acc = vmladavaq_s8(acc, vldrbq_s8(x + k), vldrbq_s8(w + k));
        if (K16 < K) acc = vmladavaq_s8(acc, vldrbq_z_s8(x + K16, pt), vldrbq_z_s8(w + K16, pt));
        y[n * ys] = bp_requant(acc, mult[n], shift[n], yzp);
    }
}
#endif

/* ---- float32 kernels (allow_float) ---- */

/* y[b, n] = sum_k x[b, k] w[n, k] + bias[n] */
BP_INLINE void bp_linear_f32(const float *x, float *y, int B, int N, int K, const float *w, const float *bias) {
    for (int b = 0; b < B; b++, x += K, y += N)
        for (int n = 0; n < N; n++) {
            const float *wr = w + n * K;
            float acc = 0.0f;
            for (int k = 0; k < K; k++) acc += x[k] * wr[k];
            y[n] = acc + (bias ? bias[n] : 0.0f);
        }
}

/* direct NCHW convolution, groups = 1 */
BP_INLINE void bp_conv2d_f32(const float *x, float *y, int NB, int C, int H, int W, int O, int OH, int OW, int kh, int kw, int sh, int sw,
                             int ph, int pw, int dh, int dw, const float *w, const float *bias) {
    for (int b = 0; b < NB; b++, x += C * H * W)
        for (int o = 0; o < O; o++)
            for (int oy = 0; oy < OH; oy++)
                for (int ox = 0; ox < OW; ox++) {
                    float acc = 0.0f;
                    const float *wo = w + o * C * kh * kw;
                    for (int c = 0; c < C; c++)
                        for (int i = 0; i < kh; i++) {
                            int iy = oy * sh - ph + i * dh;
                            if (iy < 0 || iy >= H) continue;
                            for (int j = 0; j < kw; j++) {
                                int ix = ox * sw - pw + j * dw;
                                if (ix < 0 || ix >= W) continue;
                                acc += x[(c * H + iy) * W + ix] * wo[(c * kh + i) * kw + j];
                            }
                        }
                    *y++ = acc + (bias ? bias[o] : 0.0f);
                }
}

BP_INLINE void bp_maxpool_f32(const float *x, float *y, int NC, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph,
                              int pw, int dh, int dw) {
    for (int c = 0; c < NC; c++, x += H * W)
        for (int oy = 0; oy < OH; oy++)
            for (int ox = 0; ox < OW; ox++) {
                float m = -INFINITY;
                for (int i = 0; i < kh; i++) {
                    int iy = oy * sh - ph + i * dh;
                    if (iy < 0 || iy >= H) continue;
                    for (int j = 0; j < kw; j++) {
                        int ix = ox * sw - pw + j * dw;
                        if (ix < 0 || ix >= W) continue;
                        float v = x[iy * W + ix];
                        m = (v > m || v != v) ? v : m;
                    }
                }
                *y++ = m;
            }
}

/* torch's CPU order: sum the window row by row, then divide */
BP_INLINE void bp_avgpool_f32(const float *x, float *y, int NC, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph,
                              int pw, int include_pad, int divisor) {
    for (int c = 0; c < NC; c++, x += H * W)
        for (int oy = 0; oy < OH; oy++)
            for (int ox = 0; ox < OW; ox++) {
                int y0 = oy * sh - ph, x0 = ox * sw - pw;
                int y1 = y0 + kh < H + ph ? y0 + kh : H + ph, x1 = x0 + kw < W + pw ? x0 + kw : W + pw;
                int pool = (y1 - y0) * (x1 - x0);
                y0 = y0 < 0 ? 0 : y0;
                x0 = x0 < 0 ? 0 : x0;
                y1 = y1 > H ? H : y1;
                x1 = x1 > W ? W : x1;
                float s = 0.0f;
                for (int iy = y0; iy < y1; iy++)
                    for (int ix = x0; ix < x1; ix++) s += x[iy * W + ix];
                int d = divisor ? divisor : (include_pad ? pool : (y1 - y0) * (x1 - x0));
                *y++ = s / (float)d;
            }
}

BP_INLINE void bp_layer_norm_f32(const float *x, float *y, int R, int D, const float *g, const float *b, float eps) {
    for (int r = 0; r < R; r++, x += D, y += D) {
        float mean = 0.0f, var = 0.0f;
        for (int i = 0; i < D; i++) mean += x[i];
        mean /= (float)D;
        for (int i = 0; i < D; i++) var += (x[i] - mean) * (x[i] - mean);
        var /= (float)D;
        float inv = 1.0f / sqrtf(var + eps);
        for (int i = 0; i < D; i++) y[i] = (x[i] - mean) * inv * (g ? g[i] : 1.0f) + (b ? b[i] : 0.0f);
    }
}

/* softmax over the last axis of a [R, D] view (the codegen moves other axes there with strides) */
BP_INLINE void bp_softmax_f32(const float *x, float *y, int outer, int D, int inner) {
    for (int o = 0; o < outer; o++)
        for (int in = 0; in < inner; in++) {
            const float *xp = x + o * D * inner + in;
            float *yp = y + o * D * inner + in;
            float m = -INFINITY, s = 0.0f;
            for (int i = 0; i < D; i++) m = xp[i * inner] > m ? xp[i * inner] : m;
            for (int i = 0; i < D; i++) {
                float e = expf(xp[i * inner] - m);
                yp[i * inner] = e;
                s += e;
            }
            for (int i = 0; i < D; i++) yp[i * inner] /= s;
        }
}

/* batched C[b] = A[b] @ B[b] with per-operand batch strides (0 broadcasts) */
BP_INLINE void bp_matmul_f32(const float *a, const float *bm, float *c, int nb, int sa, int sb, int M, int K, int N) {
    for (int b = 0; b < nb; b++, c += M * N)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                const float *ap = a + b * sa + i * K, *bp = bm + b * sb + j;
                float acc = 0.0f;
                for (int k = 0; k < K; k++) acc += ap[k] * bp[k * N];
                c[i * N + j] = acc;
            }
}

/* weight-only quantized linear: W[n, k] = (q - z) * s per group, q packed little-endian `bits` per code */
BP_INLINE int32_t bp_code(const uint8_t *p, int idx, int bits, int is_signed) {
    int per = 8 / bits;
    int v = (p[idx / per] >> ((idx % per) * bits)) & ((1 << bits) - 1);
    return (is_signed && v >= (1 << (bits - 1))) ? v - (1 << bits) : v;
}

BP_INLINE void bp_qlinear_f32(const float *x, float *y, int B, int N, int K, const uint8_t *q, int bits, int is_signed, const __fp16 *s,
                              int ns, const uint8_t *z, int gs, const float *bias) {
    int G = (K + gs - 1) / gs;
    for (int b = 0; b < B; b++, x += K, y += N)
        for (int n = 0; n < N; n++) {
            int sr = ns == 1 ? 0 : n;
            float acc = 0.0f;
            for (int g = 0; g < G; g++) {
                float sc = (float)s[sr * G + g];
                int32_t zp = z ? bp_code(z, sr * G + g, bits == 8 ? 8 : bits, 0) : 0;
                int k1 = (g + 1) * gs < K ? (g + 1) * gs : K;
                for (int k = g * gs; k < k1; k++) acc += x[k] * ((float)(bp_code(q, n * K + k, bits, is_signed) - zp) * sc);
            }
            y[n] = acc + (bias ? bias[n] : 0.0f);
        }
}

/* binary linear: W = sum_b s_b (2 B_b - 1) per group, signs bit-packed (bit 1 = +1) over [bases, N, K] */
BP_INLINE void bp_binary_linear_f32(const float *x, float *y, int B, int N, int K, const uint8_t *signs, const float *scales, int bases,
                                    int gs, int act_sign, const float *bias) {
    int G = gs <= 0 ? 1 : (K + gs - 1) / gs;
    for (int b = 0; b < B; b++, x += K, y += N) {
        float beta = 0.0f;
        if (act_sign) {
            for (int k = 0; k < K; k++) beta += fabsf(x[k]);
            beta /= (float)K;
        }
        for (int n = 0; n < N; n++) {
            float acc = 0.0f;
            for (int h = 0; h < bases; h++) {
                const float *sc = scales + (h * N + n) * G;
                for (int g = 0; g < G; g++) {
                    int k0 = gs <= 0 ? 0 : g * gs, k1 = gs <= 0 ? K : ((g + 1) * gs < K ? (g + 1) * gs : K);
                    float part = 0.0f;
                    for (int k = k0; k < k1; k++) {
                        int idx = (h * N + n) * K + k;
                        float xv = act_sign ? (x[k] >= 0.0f ? beta : -beta) : x[k];
                        part += ((signs[idx >> 3] >> (idx & 7)) & 1) ? xv : -xv;
                    }
                    acc += sc[g] * part;
                }
            }
            y[n] = acc + (bias ? bias[n] : 0.0f);
        }
    }
}
#endif
