/* bitpress MCU kernel library, hand-written part: the int8 glue TVM has no better code for (quantize at
 * the float input, lookup tables, max pooling, dequantize at the output) and the float32 kernels for
 * layers compiled with allow_float.  The int8 conv/linear layers are not here: TVM generates them
 * (kernels_tvm.c, tensorized into bp_ukernels.h).  Every function is inlined into the per-layer
 * function model.c defines, so the shapes are compile-time constants there.
 * Integer semantics follow bitpress.formats.quantized exactly (bit-exact with the interpreter). */
#ifndef BP_KERNELS_H
#define BP_KERNELS_H
#include <stdint.h>
#include <string.h>
#include <math.h>

#define BP_INLINE static inline __attribute__((always_inline))

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
