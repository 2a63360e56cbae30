/* Micro-kernels that TVM-scheduled int8 kernels are tensorized into (bitpress/schedules/mcu.py).
 *
 * Most are the reduction of one register tile: acc[r][p] += sum_k x[p][k] * w[r][k] for `rows`
 * output channels x `pixels` pixels, in the weight layout the schedule chose; TVM generates
 * everything around them (loops, activation packing / im2col, requantization).  The requantization
 * epilogues (bp_uk_*_req_*) take a whole tile's accumulators, and the small-K convolution kernels
 * (bp_uk_*_conv_row) a channel group's whole output plane, patches and requantization included.  TVM's
 * C calls them by name with pointers into its buffers, and they are inlined into the generated kernels.
 * Signature as TVM's C declares it: int32_t f(void *acc, void *x, void *w, int32_t k[, int32_t xstride]). */
#ifndef BP_UKERNELS_H
#define BP_UKERNELS_H
#include <stdint.h>
#include <string.h>
#if defined(__ARM_FEATURE_DSP) || defined(__ARM_FEATURE_SAT)
#include <arm_acle.h>
#endif
#if defined(__ARM_FEATURE_MVE)
#include <arm_mve.h>
#endif

#define BP_UK static inline __attribute__((always_inline))

/* clamp(v, -128, 127): the requantization epilogue's saturation, one SSAT where the core has it */
BP_UK int32_t bp_sat8(int32_t v) {
#if defined(__ARM_FEATURE_SAT)
    return __ssat(v, 8);
#else
    return v < -128 ? -128 : (v > 127 ? 127 : v);
#endif
}

/* the high word of a * m (floor of a * m / 2^32): the requantization's multiply, one SMMUL where the core has it */
BP_UK int32_t bp_mulhi(int32_t a, int32_t m) { return (int32_t)(((int64_t)a * m) >> 32); }

#if defined(__ARM_FEATURE_DSP)
/* dsp-4row: 4 rows x 1 pixel.  x: int16 [4 * kc] in natural order; w: kc chunks of 4 rows x 4 bytes, each
 * chunk [w0 w2 w1 w3] so SXTB16 gives (w0, w1) and SXTB16 ROR 8 gives (w2, w3).
 * Per chunk: 3 LDRD, 8 SXTB16, 8 SMLAD, SUBS, BNE = 21 instructions for 16 MACs. */
BP_UK int32_t bp_uk_dsp_4row(void *accp, void *xv, void *wv, int32_t kc) {
    int32_t *acc = (int32_t *)accp;
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    const int16_t *xp = (const int16_t *)xv;
    const int8_t *wp = (const int8_t *)wv;
    int32_t cnt = kc;
    if (cnt) {
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
    acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
    return 0;
}

/* dsp-2x2: 2 rows x 2 pixels; acc [row][pixel].  x: int16 patches of both pixels, pixel B OFF bytes after
 * pixel A (an LDRD immediate, so 14 registers hold 4 accumulators, 7 operands and 3 pointers/counters);
 * w: kc chunks of 2 rows x 4 bytes [w0 w2 w1 w3].  Per chunk: 3 LDRD, 4 SXTB16, 8 SMLAD, SUBS, BNE = 17
 * instructions for 16 MACs.  BP_DEFINE_UK_DSP2X2(OFF) defines bp_uk_dsp_2x2_<OFF> (OFF <= 1020). */
#define BP_DEFINE_UK_DSP2X2(OFF)                                                                                                         \
    BP_UK int32_t bp_uk_dsp_2x2_##OFF(void *accp, void *xv, void *wv, int32_t kc) {                                                      \
        int32_t *acc = (int32_t *)accp;                                                                                                  \
        int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];                                                                  \
        const int16_t *px = (const int16_t *)xv;                                                                                         \
        const int8_t *wp = (const int8_t *)wv;                                                                                           \
        int32_t cnt = kc;                                                                                                                \
        if (cnt) {                                                                                                                       \
            uint32_t w0, w1, x0, x1, y0, y1, t;                                                                                          \
            __asm__ volatile("1:\n\t"                                                                                                    \
                             "ldrd %[y0], %[y1], [%[px], #" #OFF "]\n\t"                                                                 \
                             "ldrd %[x0], %[x1], [%[px]], #8\n\t"                                                                        \
                             "ldrd %[w0], %[w1], [%[wp]], #8\n\t"                                                                        \
                             "sxtb16 %[t], %[w0]\n\t"                                                                                    \
                             "smlad %[a00], %[t], %[x0], %[a00]\n\t"                                                                     \
                             "smlad %[a01], %[t], %[y0], %[a01]\n\t"                                                                     \
                             "sxtb16 %[w0], %[w0], ror #8\n\t"                                                                           \
                             "smlad %[a00], %[w0], %[x1], %[a00]\n\t"                                                                    \
                             "smlad %[a01], %[w0], %[y1], %[a01]\n\t"                                                                    \
                             "sxtb16 %[t], %[w1]\n\t"                                                                                    \
                             "smlad %[a10], %[t], %[x0], %[a10]\n\t"                                                                     \
                             "smlad %[a11], %[t], %[y0], %[a11]\n\t"                                                                     \
                             "sxtb16 %[w1], %[w1], ror #8\n\t"                                                                           \
                             "smlad %[a10], %[w1], %[x1], %[a10]\n\t"                                                                    \
                             "smlad %[a11], %[w1], %[y1], %[a11]\n\t"                                                                    \
                             "subs %[cnt], %[cnt], #1\n\t"                                                                               \
                             "bne 1b\n"                                                                                                  \
                             : [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11), [px] "+r"(px), [wp] "+r"(wp),        \
                               [cnt] "+r"(cnt), [w0] "=&r"(w0), [w1] "=&r"(w1), [x0] "=&r"(x0), [x1] "=&r"(x1), [y0] "=&r"(y0),          \
                               [y1] "=&r"(y1), [t] "=&r"(t)                                                                              \
                             :                                                                                                           \
                             : "cc", "memory");                                                                                          \
        }                                                                                                                                \
        acc[0] = a00, acc[1] = a01, acc[2] = a10, acc[3] = a11;                                                                          \
        return 0;                                                                                                                        \
    }

/* dsp-1xrow: a 3x3 convolution over one input channel (a first layer), one output channel x all OH x OW pixels, the
 * "hi" requantization fused: y[oy * yrow + ox] = sat8((((int64)sum_t x[oy, ox][t] * w[t] * m + bm) >> 32) >> s).
 * x: the padded int16 image (output rows srow values apart, pixels pstep apart, kernel rows rstep apart); w: the
 * channel's row of the dsp-2x2 weight layout (3 chunks of 4 bytes [w0 w2 w1 w3], chunks 8 bytes apart), unpacked
 * once per call into int16 pairs (w0 w1), (w3 w4), (w6 w7), (w2 w5), (w8 0).  Per pixel: 3 LDR (unaligned pairs of x) + 3 LDRSH,
 * 3 SMLAD + 3 halfword MACs, then LDRD bm, SMLAL, LDR s, ASR, SSAT, STRB: 21 instructions for 9 MACs (13 registers
 * in the loop; the 64-bit bias term and the shift are read from a block on the stack).  A window's last column is
 * read as a halfword (LDRSH, bottom-half MACs), so no load reaches past the window. */
BP_UK int32_t bp_uk_dsp_conv_row(void *yv, void *xv, void *wv, void *mv, void *bmv, void *sv, int32_t yrow, int32_t OH, int32_t OW,
                                 int32_t srow, int32_t pstep, int32_t rstep) {
    const int8_t *wb = (const int8_t *)wv;
    int32_t wt[9];
    for (int32_t t = 0; t < 9; t++) /* tap t sits in chunk t / 4 at byte (0, 2, 1, 3)[t % 4] */
        wt[t] = wb[(t >> 2) * 8 + ((t & 1) << 1) + ((t & 3) >> 1)];
#define BP_PAIR(lo, hi) ((uint32_t)(uint16_t)(int16_t)(lo) | (uint32_t)(hi) << 16)
    uint32_t a0 = BP_PAIR(wt[0], wt[1]), a1 = BP_PAIR(wt[3], wt[4]), a2 = BP_PAIR(wt[6], wt[7]);
    uint32_t b01 = BP_PAIR(wt[2], wt[5]), b2 = BP_PAIR(wt[8], 0);
#undef BP_PAIR
    /* per row: bm (64-bit), then the x advance at the row's end, the y advance, the remaining rows */
    int32_t cst[6];
    memcpy(cst, bmv, 8);
    cst[2] = (srow - OW * pstep) * 2, cst[3] = yrow - OW, cst[4] = OH, cst[5] = *(const int32_t *)sv;
    int32_t m = *(const int32_t *)mv;
    const int16_t *x = (const int16_t *)xv;
    int8_t *y = (int8_t *)yv, *yend = y + OW;
    int32_t acc, t0, t1;
    __asm__ volatile("1:\n\t"
                     "ldrsh %[t0], [%[x], #4]\n\t"
                     "ldr %[t1], [%[x], %[r1]]\n\t"
                     "smulbb %[acc], %[t0], %[b01]\n\t"
                     "smlad %[acc], %[t1], %[a1], %[acc]\n\t"
                     "ldrsh %[t0], [%[x], %[r1b]]\n\t"
                     "ldr %[t1], [%[x], %[r2]]\n\t"
                     "smlabt %[acc], %[t0], %[b01], %[acc]\n\t"
                     "smlad %[acc], %[t1], %[a2], %[acc]\n\t"
                     "ldrsh %[t0], [%[x], %[r2b]]\n\t"
                     "ldr %[t1], [%[x]], %[ps]\n\t"
                     "smlabb %[acc], %[t0], %[b2], %[acc]\n\t"
                     "smlad %[acc], %[t1], %[a0], %[acc]\n\t"
                     "ldrd %[t0], %[t1], [%[cst]]\n\t"
                     "smlal %[t0], %[t1], %[acc], %[m]\n\t"
                     "ldr %[t0], [%[cst], #20]\n\t"
                     "asr %[t1], %[t1], %[t0]\n\t"
                     "ssat %[t1], #8, %[t1]\n\t"
                     "strb %[t1], [%[y]], #1\n\t"
                     "cmp %[y], %[yend]\n\t"
                     "bne 1b\n\t"
                     "ldr %[t0], [%[cst], #8]\n\t"
                     "add %[x], %[x], %[t0]\n\t"
                     "ldr %[t0], [%[cst], #12]\n\t"
                     "add %[y], %[y], %[t0]\n\t"
                     "add %[yend], %[y], %[ow]\n\t"
                     "ldr %[t0], [%[cst], #16]\n\t"
                     "subs %[t0], %[t0], #1\n\t"
                     "str %[t0], [%[cst], #16]\n\t"
                     "bne 1b\n"
                     : [x] "+&r"(x), [y] "+&r"(y), [yend] "+&r"(yend), [acc] "=&r"(acc), [t0] "=&r"(t0), [t1] "=&r"(t1)
                     : [a0] "r"(a0), [a1] "r"(a1), [a2] "r"(a2), [b01] "r"(b01), [b2] "r"(b2), [m] "r"(m), [cst] "r"(cst),
                       [r1] "n"(rstep * 2), [r1b] "n"(rstep * 2 + 4), [r2] "n"(rstep * 4), [r2b] "n"(rstep * 4 + 4), [ps] "n"(pstep * 2),
                       [ow] "n"(OW)
                     : "cc", "memory");
    return 0;
}

/* the same tile in C for offsets LDRD cannot reach */
#define BP_DEFINE_UK_DSP2X2_C(OFF)                                                                                                       \
    BP_UK int32_t bp_uk_dsp_2x2_##OFF(void *accp, void *xv, void *wv, int32_t kc) {                                                      \
        int32_t *acc = (int32_t *)accp;                                                                                                  \
        const int16_t *pa = (const int16_t *)xv, *pb = pa + (OFF) / 2;                                                                   \
        const int8_t *wp = (const int8_t *)wv;                                                                                           \
        for (int32_t c = 0; c < kc; c++, pa += 4, pb += 4, wp += 8) {                                                                    \
            uint32_t w0, w1, a0, a1, b0, b1;                                                                                             \
            memcpy(&w0, wp, 4), memcpy(&w1, wp + 4, 4), memcpy(&a0, pa, 4), memcpy(&a1, pa + 2, 4), memcpy(&b0, pb, 4),                  \
                memcpy(&b1, pb + 2, 4);                                                                                                  \
            uint32_t lo = __sxtb16(w0), hi = __sxtb16(__ror(w0, 8));                                                                     \
            acc[0] = __smlad(hi, a1, __smlad(lo, a0, acc[0]));                                                                           \
            acc[1] = __smlad(hi, b1, __smlad(lo, b0, acc[1]));                                                                           \
            lo = __sxtb16(w1), hi = __sxtb16(__ror(w1, 8));                                                                              \
            acc[2] = __smlad(hi, a1, __smlad(lo, a0, acc[2]));                                                                           \
            acc[3] = __smlad(hi, b1, __smlad(lo, b0, acc[3]));                                                                           \
        }                                                                                                                                \
        return 0;                                                                                                                        \
    }
#endif

#if defined(__ARM_FEATURE_MVE)
/* mve-4row: 4 rows x 1 pixel; x: K bytes (read in place; the last piece with a zeroing tail-predicated load);
 * w: ceil(K / 16) pieces of 4 rows x 16 bytes, zero-padded.  Per piece: 5 VLDRB (the first advancing w), 4 VMLADAVA
 * and LE (a low-overhead loop on LR) = 10 instructions for 64 MACs.  Accumulators pinned to even registers (VMLADAVA
 * needs them). */
BP_UK int32_t bp_uk_mve_4row(void *accp, void *xv, void *wv, int32_t K) {
    int32_t *acc = (int32_t *)accp;
    register int32_t a0 __asm__("r0") = acc[0], a1 __asm__("r2") = acc[1], a2 __asm__("r4") = acc[2], a3 __asm__("r6") = acc[3];
    register const int8_t *x __asm__("r1") = (const int8_t *)xv;
    register const int8_t *w __asm__("r3") = (const int8_t *)wv;
    register int32_t n __asm__("lr") = K >> 4;
    if (n)
        __asm__ volatile("dls lr, lr\n"
                         "1:\n\t"
                         "vldrb.8 q0, [%[x]], #16\n\t"
                         "vldrb.8 q1, [%[w]], #64\n\t"
                         "vldrb.8 q2, [%[w], #-48]\n\t"
                         "vmladava.s8 %[a0], q0, q1\n\t"
                         "vldrb.8 q3, [%[w], #-32]\n\t"
                         "vmladava.s8 %[a1], q0, q2\n\t"
                         "vldrb.8 q4, [%[w], #-16]\n\t"
                         "vmladava.s8 %[a2], q0, q3\n\t"
                         "vmladava.s8 %[a3], q0, q4\n\t"
                         "le lr, 1b\n"
                         : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [x] "+r"(x), [w] "+r"(w), [n] "+r"(n)
                         :
                         : "q0", "q1", "q2", "q3", "q4", "cc", "memory");
    if (K & 15) {
        int8x16_t xq = vldrbq_z_s8(x, vctp8q((uint32_t)(K & 15)));
        a0 = vmladavaq_s8(a0, xq, vldrbq_s8(w));
        a1 = vmladavaq_s8(a1, xq, vldrbq_s8(w + 16));
        a2 = vmladavaq_s8(a2, xq, vldrbq_s8(w + 32));
        a3 = vmladavaq_s8(a3, xq, vldrbq_s8(w + 48));
    }
    acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
    return 0;
}

/* mve-4x2: 4 rows x 2 pixels; acc [row][pixel]; x: both pixels' patches, K bytes each, pixel B after pixel A;
 * w: ceil(K / 16) pieces of 4 rows x 16 bytes (one pointer walks the tile), zero-padded to a whole piece.
 * Per piece: 6 VLDRB (the first advancing w), 8 VMLADAVA, SUBS, BNE = 16 instructions for 128 MACs (kc >= 1). */
BP_UK int32_t bp_uk_mve_4x2(void *accp, void *xv, void *wv, int32_t K) {
    int32_t *acc = (int32_t *)accp;
    const int32_t kc = K >> 4;
    if (kc == 0) { /* K < 16 (a first layer): one predicated piece, no registers pinned (they make GCC spill) */
        const int8_t *w = (const int8_t *)wv;
        mve_pred16_t p = vctp8q((uint32_t)K);
        int8x16_t pa = vldrbq_z_s8((const int8_t *)xv, p), pb = vldrbq_z_s8((const int8_t *)xv + K, p), q;
        q = vldrbq_s8(w), acc[0] = vmladavaq_s8(acc[0], pa, q), acc[1] = vmladavaq_s8(acc[1], pb, q);
        q = vldrbq_s8(w + 16), acc[2] = vmladavaq_s8(acc[2], pa, q), acc[3] = vmladavaq_s8(acc[3], pb, q);
        q = vldrbq_s8(w + 32), acc[4] = vmladavaq_s8(acc[4], pa, q), acc[5] = vmladavaq_s8(acc[5], pb, q);
        q = vldrbq_s8(w + 48), acc[6] = vmladavaq_s8(acc[6], pa, q), acc[7] = vmladavaq_s8(acc[7], pb, q);
        return 0;
    }
    /* VMLADAVA accumulates into an even register: pin the 8 accumulators to r0, r2, ..., r12, lr */
    register int32_t a00 __asm__("r0") = acc[0], a01 __asm__("r2") = acc[1], a10 __asm__("r4") = acc[2], a11 __asm__("r6") = acc[3];
    register int32_t a20 __asm__("r8") = acc[4], a21 __asm__("r10") = acc[5], a30 __asm__("r12") = acc[6], a31 __asm__("lr") = acc[7];
    register const int8_t *xa __asm__("r1") = (const int8_t *)xv;
    register const int8_t *xb __asm__("r3") = (const int8_t *)xv + K;
    register const int8_t *w __asm__("r5") = (const int8_t *)wv;
    register int32_t n __asm__("r9") = kc;
    if (kc)
        __asm__ volatile("1:\n\t"
                     "vldrb.8 q0, [%[xa]], #16\n\t"
                     "vldrb.8 q1, [%[xb]], #16\n\t"
                     "vldrb.8 q2, [%[w]], #64\n\t"
                     "vldrb.8 q3, [%[w], #-48]\n\t"
                     "vmladava.s8 %[a00], q0, q2\n\t"
                     "vmladava.s8 %[a01], q1, q2\n\t"
                     "vldrb.8 q4, [%[w], #-32]\n\t"
                     "vmladava.s8 %[a10], q0, q3\n\t"
                     "vmladava.s8 %[a11], q1, q3\n\t"
                     "vldrb.8 q5, [%[w], #-16]\n\t"
                     "vmladava.s8 %[a20], q0, q4\n\t"
                     "vmladava.s8 %[a21], q1, q4\n\t"
                     "vmladava.s8 %[a30], q0, q5\n\t"
                     "vmladava.s8 %[a31], q1, q5\n\t"
                     "subs %[n], #1\n\t"
                     "bne 1b\n"
                     : [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11), [a20] "+r"(a20), [a21] "+r"(a21),
                       [a30] "+r"(a30), [a31] "+r"(a31), [xa] "+r"(xa), [xb] "+r"(xb), [w] "+r"(w), [n] "+r"(n)
                     :
                     : "q0", "q1", "q2", "q3", "q4", "q5", "cc", "memory");
    if (K & 15) { /* the last piece: zeroing tail-predicated loads of x (weights are zero-padded) */
        mve_pred16_t p = vctp8q((uint32_t)(K & 15));
        int8x16_t pa = vldrbq_z_s8(xa, p), pb = vldrbq_z_s8(xb, p), q;
        q = vldrbq_s8(w), a00 = vmladavaq_s8(a00, pa, q), a01 = vmladavaq_s8(a01, pb, q);
        q = vldrbq_s8(w + 16), a10 = vmladavaq_s8(a10, pa, q), a11 = vmladavaq_s8(a11, pb, q);
        q = vldrbq_s8(w + 32), a20 = vmladavaq_s8(a20, pa, q), a21 = vmladavaq_s8(a21, pb, q);
        q = vldrbq_s8(w + 48), a30 = vmladavaq_s8(a30, pa, q), a31 = vmladavaq_s8(a31, pb, q);
    }
    acc[0] = a00, acc[1] = a01, acc[2] = a10, acc[3] = a11, acc[4] = a20, acc[5] = a21, acc[6] = a30, acc[7] = a31;
    return 0;
}

/* the vector (a, b, c, d) from general-purpose registers: two 2-lane VMOVs (`vmov Qd[2], Qd[0], Ra, Rb` puts Ra in
 * lane 0 and Rb in lane 2, as QEMU reads it; GCC 12's vcreateq assumes the opposite order, so it is not used) */
BP_UK int32x4_t bp_q4(int32_t a, int32_t b, int32_t c, int32_t d) {
    int32x4_t v;
    __asm__("vmov %q0[2], %q0[0], %1, %2\n\tvmov %q0[3], %q0[1], %3, %4" : "=&w"(v) : "r"(a), "r"(c), "r"(b), "r"(d));
    return v;
}

/* sat8 of each 32-bit lane into its lowest byte (the byte a VSTRB.32 stores): VQMOVNB.S32, VQMOVNB.S16 in place */
BP_UK int32x4_t bp_sat8q(int32x4_t v) {
    __asm__("vqmovnb.s32 %q0, %q0\n\tvqmovnb.s16 %q0, %q0" : "+w"(v));
    return v;
}

/* mve-4x2 requantization epilogue: y[r * ys + p] = sat8(((mulhi(acc[r][p] + b[r], m[r]) + c[r]) >> s[r]) for the
 * tile's 4 rows x 2 pixels, 4 rows per vector: the [row][pixel] accumulators are read as scalars (inlined after the
 * reduction micro-kernel, GCC forwards them from its registers: 2-lane VMOVs, no round trip through memory), then
 * VADD, VMULH (the exact high word, as bp_mulhi), VADD, VSHL by -s (arithmetic: floor), two saturating narrows
 * and a byte scatter store per pixel.  Bit-exact with the scalar form. */
BP_UK int32_t bp_uk_mve_req_4x2(void *yv, void *accv, void *mv, void *bv, void *cv, void *sv, int32_t ys) {
    int8_t *y = (int8_t *)yv;
    const int32_t *a = (const int32_t *)accv;
    int32x4_t m = vldrwq_s32((const int32_t *)mv), b = vldrwq_s32((const int32_t *)bv), c = vldrwq_s32((const int32_t *)cv);
    int32x4_t ns = vnegq_s32(vldrwq_s32((const int32_t *)sv));
    uint32x4_t off = vmulq_n_u32(vidupq_n_u32(0, 1), (uint32_t)ys);
    int32x4_t v0 = bp_sat8q(vshlq_s32(vaddq_s32(vmulhq_s32(vaddq_s32(bp_q4(a[0], a[2], a[4], a[6]), b), m), c), ns));
    int32x4_t v1 = bp_sat8q(vshlq_s32(vaddq_s32(vmulhq_s32(vaddq_s32(bp_q4(a[1], a[3], a[5], a[7]), b), m), c), ns));
    vstrbq_scatter_offset_s32(y, off, v0);
    vstrbq_scatter_offset_s32(y + 1, off, v1);
    return 0;
}

/* mve-4xrow: a convolution with K <= 16 (a first layer), 4 channels x all OH x OW output pixels (OW even), im2col
 * and requantization fused: y[r * ys + oy * yrow + ox] = sat8(((mulhi(sum_t x[oy, ox][t] * w[r][t] + b[r], m[r]) + c[r]) >> s[r]).
 * x: the padded NHWC image (rows xrow bytes apart, output rows srow = stride * xrow apart, pixels pstep apart);
 * pixel (oy, ox)'s patch is one VLDRB gather from x + oy * srow + ox * pstep at the tap offsets (t / kwc) * rstep +
 * t % kwc for t < K (lanes >= K read the patch's first byte: their weights are zero); w: 4 rows x 16 bytes,
 * zero-padded.  Per 2 pixels: 2 gathers, 8 VMLADAV, 4 two-lane VMOVs (4 channels of a pixel in one vector), then per
 * vector VADD b, VMULH m, VADD c, VQSHL by 24 - s (the clamp: the byte above bit 24 saturates exactly as
 * sat8(v >> s) does, for s <= 24), VSHR #24 and a byte scatter store (channels ys apart): 36 instructions per 2
 * pixels.  The weights (q3-q6), tap offsets (q0) and two pixels (q1, q2) hold the Q registers, so the per-channel
 * constants are read from a block on the stack (q7).  `vmov Qd[2], Qd[0], Ra, Rb` puts Ra in lane 0 and Rb in lane 2
 * (as GCC's vcreateq and QEMU read it).  Bit-exact with the scalar "hi32" form. */
BP_UK int32_t bp_uk_mve_conv_row(void *yv, void *xv, void *wv, void *mv, void *bv, void *cv, void *sv, int32_t ys, int32_t yrow,
                                 int32_t xrow, int32_t OH, int32_t OW, int32_t srow, int32_t pstep, int32_t K, int32_t kwc, int32_t rstep) {
    int32_t blk[26];
    vstrwq_s32(blk, vldrwq_s32((const int32_t *)bv));
    vstrwq_s32(blk + 4, vldrwq_s32((const int32_t *)mv));
    vstrwq_s32(blk + 8, vldrwq_s32((const int32_t *)cv));
    vstrwq_s32(blk + 12, vsubq_s32(vdupq_n_s32(24), vldrwq_s32((const int32_t *)sv)));
    vstrwq_u32((uint32_t *)(blk + 16), vmulq_n_u32(vidupq_n_u32(0u, 1), (uint32_t)ys));
    uint8x16_t lane = vidupq_n_u8(0u, 1), off = lane;
    for (int32_t t = kwc; t < K; t += kwc) /* each kernel row after the first: rstep further, kwc lanes later */
        off = vaddq_m_n_u8(off, off, (uint8_t)(rstep - kwc), vcmpcsq_n_u8(lane, (uint8_t)t));
    vstrbq_u8((uint8_t *)(blk + 20), vdupq_m_n_u8(off, 0, vcmpcsq_n_u8(lane, (uint8_t)K)));
    blk[24] = srow - OW * pstep, blk[25] = yrow - OW;
    (void)xrow;
    register int32_t d0 __asm__("r0"), d1 __asm__("r2"), d2 __asm__("r4"), d3 __asm__("r6"); /* VMLADAV: even registers */
    const int8_t *xa = (const int8_t *)xv, *xb = xa + pstep, *w = (const int8_t *)wv;
    int8_t *y = (int8_t *)yv;
    int32_t rows = OH, pairs = OW >> 1;
    const int32_t p2 = 2 * pstep;
    __asm__ volatile("vldrb.8 q3, [%[w]]\n\t"
                     "vldrb.8 q4, [%[w], #16]\n\t"
                     "vldrb.8 q5, [%[w], #32]\n\t"
                     "vldrb.8 q6, [%[w], #48]\n\t"
                     "vldrb.8 q0, [%[blk], #80]\n"
                     "1:\n\t"
                     "dls lr, %[pairs]\n"
                     "2:\n\t"
                     "vldrb.u8 q1, [%[xa], q0]\n\t"
                     "vldrb.u8 q2, [%[xb], q0]\n\t"
                     "add %[xa], %[xa], %[p2]\n\t"
                     "add %[xb], %[xb], %[p2]\n\t"
                     "vmladav.s8 %[d0], q1, q3\n\t"
                     "vmladav.s8 %[d1], q1, q4\n\t"
                     "vmladav.s8 %[d2], q1, q5\n\t"
                     "vmladav.s8 %[d3], q1, q6\n\t"
                     "vmov q1[2], q1[0], %[d0], %[d2]\n\t"
                     "vmov q1[3], q1[1], %[d1], %[d3]\n\t"
                     "vmladav.s8 %[d0], q2, q3\n\t"
                     "vmladav.s8 %[d1], q2, q4\n\t"
                     "vmladav.s8 %[d2], q2, q5\n\t"
                     "vmladav.s8 %[d3], q2, q6\n\t"
                     "vmov q2[2], q2[0], %[d0], %[d2]\n\t"
                     "vmov q2[3], q2[1], %[d1], %[d3]\n\t"
                     "vldrw.u32 q7, [%[blk]]\n\t"
                     "vadd.i32 q1, q1, q7\n\t"
                     "vadd.i32 q2, q2, q7\n\t"
                     "vldrw.u32 q7, [%[blk], #16]\n\t"
                     "vmulh.s32 q1, q1, q7\n\t"
                     "vmulh.s32 q2, q2, q7\n\t"
                     "vldrw.u32 q7, [%[blk], #32]\n\t"
                     "vadd.i32 q1, q1, q7\n\t"
                     "vadd.i32 q2, q2, q7\n\t"
                     "vldrw.u32 q7, [%[blk], #48]\n\t"
                     "vqshl.s32 q1, q1, q7\n\t"
                     "vqshl.s32 q2, q2, q7\n\t"
                     "vshr.s32 q1, q1, #24\n\t"
                     "vshr.s32 q2, q2, #24\n\t"
                     "vldrw.u32 q7, [%[blk], #64]\n\t"
                     "vstrb.32 q1, [%[y], q7]\n\t"
                     "add %[y], %[y], #1\n\t"
                     "vstrb.32 q2, [%[y], q7]\n\t"
                     "add %[y], %[y], #1\n\t"
                     "le lr, 2b\n\t"
                     "ldr %[d0], [%[blk], #96]\n\t"
                     "add %[xa], %[xa], %[d0]\n\t"
                     "add %[xb], %[xb], %[d0]\n\t"
                     "ldr %[d0], [%[blk], #100]\n\t"
                     "add %[y], %[y], %[d0]\n\t"
                     "subs %[rows], %[rows], #1\n\t"
                     "bne 1b\n"
                     : [d0] "=&r"(d0), [d1] "=&r"(d1), [d2] "=&r"(d2), [d3] "=&r"(d3), [rows] "+r"(rows), [xa] "+r"(xa), [xb] "+r"(xb),
                       [y] "+r"(y)
                     : [w] "r"(w), [blk] "r"(blk), [p2] "r"(p2), [pairs] "r"(pairs)
                     : "q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "lr", "cc", "memory");
    return 0;
}
#endif
#endif
