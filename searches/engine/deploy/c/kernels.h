/* nasweb int8 kernels (template).
 *
 * The exporter copies the kernels a model needs into its header, with every "nnk_" prefix
 * replaced by the model's name, so two models can live in one program.  Arithmetic follows
 * the TFLite int8 specification and LiteRT 2.3.0's kernels: double rounding for convolutions
 * and Add, single rounding for dense (FULLY_CONNECTED); searches/engine/deploy/reference.py
 * computes the same numbers in Python and the verification compares them byte for byte.
 *
 * Conventions
 *   - activations are int8 in HWC order; conv weights OHWI, depthwise HWC, dense [out][in];
 *   - the bias already holds -zp_in * sum(w), so a valid tap adds w*x and a padded tap
 *     (real value 0, stored as the input zero point) adds w*zp_in;
 *   - signed right shifts are arithmetic, as on GCC and Clang for every target nasweb uses.
 *
 * On cores with the DSP extension (Cortex-M4/M7/M33) dot products use SXTB16 + SMLAD, two
 * 16-bit multiply-accumulates per instruction; integer sums are exact, so the results are
 * identical to the plain C loops.  Define NNK_NO_DSP to force the plain loops.
 */

#if defined(__ARM_FEATURE_DSP) && !defined(NNK_NO_DSP)
#define NNK_DSP 1
#include <arm_acle.h>
#else
#define NNK_DSP 0
#endif

/* Kernels are inlined into each call, where the layer's shape is constant: loops get constant
 * trip counts and strides become immediate offsets.  NNK_UNROLL asks GCC to unroll a short
 * loop (a kernel row) completely when its trip count is such a constant. */
#if defined(__GNUC__)
#define NNK_INLINE static inline __attribute__((always_inline))
#else
#define NNK_INLINE static inline
#endif
/* Each layer is its own function, never inlined into the model's run function: the compiler
 * then allocates registers for one kernel at a time, so a layer's code (and its instruction
 * count) depends on its own shape only, not on the layers around it.  GCC gets noipa, not
 * just noinline: with noinline alone, arm-none-eabi-gcc 12.2 at -O1/-O2 dropped the call to
 * a layer whose output a later Add reads through its pointer array (its interprocedural
 * side-effect analysis), so the run function must see each layer as an opaque call. */
#if defined(__GNUC__) && !defined(__clang__)
#define NNK_LAYER static __attribute__((noipa))
#elif defined(__GNUC__)
#define NNK_LAYER static __attribute__((noinline))
#else
#define NNK_LAYER static
#endif
/* ARMv6-M (Cortex-M0/M0+) has eight low registers: a 2 x 2 block of four accumulators and
 * four pointers spills there, so its 1x1 convolution keeps one pixel per pass. */
#if defined(__ARM_ARCH_6M__)
#define NNK_FEW_REGS 1
#else
#define NNK_FEW_REGS 0
#endif
#if defined(__GNUC__) && !defined(__clang__)
#define NNK_UNROLL _Pragma("GCC unroll 7")
#else
#define NNK_UNROLL
#endif
/* NNK_OPAQUE(v) hides a constant's value from the optimiser (an empty asm that may change it):
 * a loop bounded by it keeps one loop body, however few its trips, instead of being unrolled
 * or peeled into code that differs from one constant to the next. */
#if defined(__GNUC__)
#define NNK_OPAQUE(v) __asm__("" : "+r"(v))
#else
#define NNK_OPAQUE(v) ((void)0)
#endif

/* @kernel requant */
/* acc * M0 * 2^(shift-31), TFLite double rounding, for any shift: a positive shift saturates
 * first.  The rounding high multiply trunc((ab + (ab >= 0 ? 2^30 : 1 - 2^30)) / 2^31) equals
 * floor((ab + 2^30) / 2^31) for every ab; the rounding right shift (half away from zero)
 * adds one when the remainder beats half of the divisor, or equals it for a negative value. */
static int32_t nnk_requant_any(int32_t acc, int32_t mult, int32_t shift)
{
    int32_t high, right = -shift, mask;
    if (shift > 0) {
        int64_t x = (int64_t)acc * ((int64_t)1 << shift);
        acc = x > INT32_MAX ? INT32_MAX : (x < INT32_MIN ? INT32_MIN : (int32_t)x);
        right = 0;
    }
    high = (int32_t)(((int64_t)acc * mult + ((int64_t)1 << 30)) >> 31);
    mask = (int32_t)(((uint32_t)1 << right) - 1u);
    return (high >> right) + ((high & mask) > (mask >> 1) - (high >> 31) ? 1 : 0);
}

/* The same number in fewer instructions for the usual right shift r = -shift >= 2.  Both
 * roundings fold into one: floor((floor((p + 2^30) / 2^31) + 2^(r-1) - [high < 0]) / 2^r)
 * = floor((p + 2^30 - n 2^31 + 2^(30+r)) / 2^(31+r)) with p = acc * M0; n = [acc < 0] may
 * stand for [high < 0] (they differ only where high = 0, which rounds to 0 either way).
 * With t = p + 2^30 - n 2^31 that is ((hi32(t) >> (r-2)) + 1) >> 1: one multiply-accumulate
 * into 64 bits, two shifts and an add.  Always inlined: a call
 * costs about as much as the arithmetic, once per output. */
NNK_INLINE int32_t nnk_requant(int32_t acc, int32_t mult, int32_t shift)
{
    int64_t t;
    int32_t hi;
    if (shift > -2) {
        if (shift > 0) return nnk_requant_any(acc, mult, shift);
        /* r = 0 or 1 (an Add's input multipliers are 1/2 or just under it): with t = p + 2^30,
         * r = 0 is floor(t / 2^31); r = 1 rounds floor((high + 1 - n) / 2), n = [high < 0],
         * which folds into floor((t + (1 - n) 2^31) / 2^32), n = [acc < 0] standing for it
         * as below. */
        t = (int64_t)acc * mult + 0x40000000;
        if (shift == 0) return (int32_t)(t >> 31);
        return (int32_t)((t + (acc < 0 ? 0 : (int64_t)0x80000000)) >> 32);
    }
    /* +-2^30 by the sign of acc (two's complement, as everywhere in this file) */
    t = (int64_t)acc * mult + (int32_t)(((uint32_t)acc & 0x80000000u) | 0x40000000u);
    hi = (int32_t)(t >> 32);
    return ((hi >> (-shift - 2)) + 1) >> 1; /* floor((hi + 2^(r-2)) / 2^(r-1)) */
}

NNK_INLINE int8_t nnk_saturate(int32_t v, int32_t lo, int32_t hi)
{
#if NNK_DSP
    /* lo >= -128 and hi <= 127: SSAT does the int8 clamp, the tests fold for constant bounds */
    v = __ssat(v, 8);
    if (lo > -128 && v < lo) v = lo;
    if (hi < 127 && v > hi) v = hi;
    return (int8_t)v;
#else
    return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
#endif
}

/* One output value: requantise, add the output zero point, clamp to the activation range. */
NNK_INLINE int8_t nnk_out(int32_t acc, int32_t mult, int32_t shift, int32_t zp, int32_t lo, int32_t hi)
{
    return nnk_saturate(nnk_requant(acc, mult, shift) + zp, lo, hi);
}

#if NNK_DSP
NNK_INLINE uint32_t nnk_load4(const int8_t *p)
{
    uint32_t v;
    __builtin_memcpy(&v, p, 4); /* one unaligned LDR on v7E-M / v8-M */
    return v;
}

/* Bytes 1 and 3 of v sign-extended into two halfwords (SXTB16 with ROR #8). */
NNK_INLINE uint32_t nnk_sxtb16_hi(uint32_t v)
{
#if defined(__GNUC__)
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v)); /* GCC 12 does not fold the rotate */
    return r;
#else
    return __sxtb16((v >> 8) | (v << 24));
#endif
}
#endif

/* sum(a[i] * b[i]) for i < n. */
NNK_INLINE int32_t nnk_dot(const int8_t *a, const int8_t *b, int32_t n)
{
    int32_t acc = 0;
#if NNK_DSP
    for (; n >= 4; n -= 4, a += 4, b += 4) {
        uint32_t a0 = nnk_load4(a), b0 = nnk_load4(b);
        acc = __smlad(__sxtb16(a0), __sxtb16(b0), acc);
        acc = __smlad(nnk_sxtb16_hi(a0), nnk_sxtb16_hi(b0), acc);
    }
#endif
    while (n-- > 0) acc += (int32_t)*a++ * *b++;
    return acc;
}

/* Two dot products sharing the input: s0 += x.w0, s1 += x.w1 (input unpacked once). */
NNK_INLINE void nnk_dot2(const int8_t *x, const int8_t *w0, const int8_t *w1, int32_t n, int32_t *s0, int32_t *s1)
{
    int32_t a0 = *s0, a1 = *s1;
#if NNK_DSP
    for (; n >= 4; n -= 4, x += 4, w0 += 4, w1 += 4) {
        uint32_t xv = nnk_load4(x), v0 = nnk_load4(w0), v1 = nnk_load4(w1);
        uint32_t x02 = __sxtb16(xv), x13 = nnk_sxtb16_hi(xv);
        a0 = __smlad(x02, __sxtb16(v0), a0);
        a1 = __smlad(x02, __sxtb16(v1), a1);
        a0 = __smlad(x13, nnk_sxtb16_hi(v0), a0);
        a1 = __smlad(x13, nnk_sxtb16_hi(v1), a1);
    }
#endif
    for (; n > 0; --n) {
        int32_t v = *x++;
        a0 += v * *w0++;
        a1 += v * *w1++;
    }
    *s0 = a0;
    *s1 = a1;
}
/* @end */

/* @kernel dot22 */
#if NNK_DSP
/* Four bytes of each of x0, x1, w0, w1 into a, b, c, d (see nnk_dot22). */
NNK_INLINE void nnk_mac22(const int8_t *x0, const int8_t *x1, const int8_t *w0, const int8_t *w1, int32_t *s)
{
    uint32_t p = nnk_load4(x0), q = nnk_load4(x1), u = nnk_load4(w0), v = nnk_load4(w1);
    uint32_t p02 = __sxtb16(p), q02 = __sxtb16(q), u02 = __sxtb16(u), v02 = __sxtb16(v);
    s[0] = __smlad(p02, u02, s[0]);
    s[1] = __smlad(p02, v02, s[1]);
    s[2] = __smlad(q02, u02, s[2]);
    s[3] = __smlad(q02, v02, s[3]);
    p = nnk_sxtb16_hi(p);
    q = nnk_sxtb16_hi(q);
    u = nnk_sxtb16_hi(u);
    v = nnk_sxtb16_hi(v);
    s[0] = __smlad(p, u, s[0]);
    s[1] = __smlad(p, v, s[1]);
    s[2] = __smlad(q, u, s[2]);
    s[3] = __smlad(q, v, s[3]);
}
#endif

/* Two inputs times two weight rows: s[0] += x0.w0, s[1] += x0.w1, s[2] += x1.w0,
 * s[3] += x1.w1.  Every loaded and unpacked value serves two multiply-accumulates; the
 * callers pass x1 - x0 and w1 - w0 as layer constants, so one pointer each suffices. */
NNK_INLINE void nnk_dot22(const int8_t *x0, const int8_t *x1, const int8_t *w0, const int8_t *w1, int32_t n,
                          int32_t *s)
{
    int32_t t[4];
    t[0] = s[0];
    t[1] = s[1];
    t[2] = s[2];
    t[3] = s[3];
#if NNK_DSP
    {
        const int8_t *end = x0 + (n & ~3);
        for (; x0 != end; x0 += 4, x1 += 4, w0 += 4, w1 += 4) nnk_mac22(x0, x1, w0, w1, t);
        n &= 3;
    }
#endif
    for (; n > 0; --n) {
        int32_t p = *x0++, q = *x1++, u = *w0++, v = *w1++;
        t[0] += p * u;
        t[1] += p * v;
        t[2] += q * u;
        t[3] += q * v;
    }
    s[0] = t[0];
    s[1] = t[1];
    s[2] = t[2];
    s[3] = t[3];
}
/* @end */

/* @kernel conv2d */
/* s0 += sum(w0[i]), s1 += sum(w1[i]) for i < n. */
NNK_INLINE void nnk_wsum2(const int8_t *w0, const int8_t *w1, int32_t n, int32_t *s0, int32_t *s1)
{
    int32_t a = *s0, b = *s1;
#if NNK_DSP
    const uint32_t ones = 0x00010001u;
    for (; n >= 4; n -= 4, w0 += 4, w1 += 4) {
        uint32_t u = nnk_load4(w0), v = nnk_load4(w1);
        a = __smlad(__sxtb16(u), ones, a);
        b = __smlad(__sxtb16(v), ones, b);
        a = __smlad(nnk_sxtb16_hi(u), ones, a);
        b = __smlad(nnk_sxtb16_hi(v), ones, b);
    }
#endif
    for (; n > 0; --n) {
        a += *w0++;
        b += *w1++;
    }
    *s0 = a;
    *s1 = b;
}

/* Sums of two filters' weights over the taps outside rows [ky_lo, ky_hi) x columns
 * [kx_lo, kx_hi): those taps read padding, whose stored value is the input zero point. */
NNK_INLINE void nnk_padsum2(const int8_t *w0, const int8_t *w1, int32_t k, int32_t ic, int32_t ky_lo, int32_t ky_hi,
                        int32_t kx_lo, int32_t kx_hi, int32_t *s0, int32_t *s1)
{
    int32_t ky, row = k * ic;
    for (ky = 0; ky < k; ++ky, w0 += row, w1 += row) {
        if (ky < ky_lo || ky >= ky_hi) {
            nnk_wsum2(w0, w1, row, s0, s1);
        } else {
            nnk_wsum2(w0, w1, kx_lo * ic, s0, s1);
            nnk_wsum2(w0 + kx_hi * ic, w1 + kx_hi * ic, (k - kx_hi) * ic, s0, s1);
        }
    }
}

/* Two output channels (weights w0 and w0 + dw; dw = 0 for a lone last channel) of one
 * pixel, or of two pixels step bytes apart when pair is set: s[0], s[1] for the first pixel,
 * s[2], s[3] for the second.  rows kernel rows of run valid bytes, line bytes apart in the
 * input and row bytes apart in the filter. */
NNK_INLINE void nnk_conv_block(const int8_t *x, int32_t line, int32_t step, const int8_t *w0, int32_t dw, int32_t row,
                               int32_t rows, int32_t run, int32_t pair, int32_t *s)
{
    if (pair) {
        for (; rows > 0; --rows, x += line, w0 += row) nnk_dot22(x, x + step, w0, w0 + dw, run, s);
    } else {
        for (; rows > 0; --rows, x += line, w0 += row) nnk_dot2(x, w0, w0 + dw, run, &s[0], &s[1]);
    }
}

/* k x k convolution, TF 'same' or 'valid' padding given as pad_top/pad_left.  Two output
 * pixels (when both have the same valid taps, as all interior ones do) times two output
 * channels per pass; taps on padding are skipped and their weight sums times the input zero
 * point added instead, so interior pixels pay nothing for padding. */
NNK_INLINE void nnk_conv2d(const int8_t *in, int32_t ih, int32_t iw, int32_t ic,
                           const int8_t *w, const int32_t *bias, const int32_t *mult, const int8_t *shift,
                           int8_t *out, int32_t oh, int32_t ow, int32_t oc,
                           int32_t k, int32_t stride, int32_t pad_top, int32_t pad_left,
                           int32_t in_zp, int32_t out_zp, int32_t act_min, int32_t act_max)
{
    int32_t oy, ox, o, filt = k * k * ic, row = k * ic, line = iw * ic, step = stride * ic;
    for (oy = 0; oy < oh; ++oy) {
        int32_t iy0 = oy * stride - pad_top;
        int32_t ky_lo = iy0 < 0 ? -iy0 : 0, ky_hi = iy0 + k > ih ? ih - iy0 : k;
        if (ky_hi < ky_lo) ky_hi = ky_lo;
        for (ox = 0; ox < ow;) {
            int32_t ix0 = ox * stride - pad_left, ix1 = ix0 + stride;
            int32_t kx_lo = ix0 < 0 ? -ix0 : 0, kx_hi = ix0 + k > iw ? iw - ix0 : k;
            int32_t pair, padded, run, rows = ky_hi - ky_lo;
            const int8_t *x, *wv;
            if (kx_hi < kx_lo) kx_hi = kx_lo;
            pair = !NNK_FEW_REGS && ox + 1 < ow && kx_lo == (ix1 < 0 ? -ix1 : 0) && kx_hi == (ix1 + k > iw ? iw - ix1 : k);
            padded = ky_lo > 0 || ky_hi < k || kx_lo > 0 || kx_hi < k;
            run = (kx_hi - kx_lo) * ic;
            /* first valid input byte and its filter offset (unused when no tap is valid) */
            x = in + ((iy0 + ky_lo) * iw + ix0 + kx_lo) * ic;
            wv = w + ky_lo * row + kx_lo * ic;
            for (o = 0; o < oc; o += 2, wv += 2 * filt) {
                int32_t two = o + 1 < oc, s[4];
                s[0] = s[2] = bias[o];
                s[1] = s[3] = bias[o + two];
                if (padded) {
                    int32_t c0 = 0, c1 = 0;
                    nnk_padsum2(w + o * filt, w + (o + two) * filt, k, ic, ky_lo, ky_hi, kx_lo, kx_hi, &c0, &c1);
                    s[0] += in_zp * c0;
                    s[2] += in_zp * c0;
                    s[1] += in_zp * c1;
                    s[3] += in_zp * c1;
                }
                if (two) {
                    nnk_conv_block(x, line, step, wv, filt, row, rows, run, pair, s);
                } else {
                    nnk_conv_block(x, line, step, wv, 0, row, rows, run, pair, s);
                }
                out[o] = nnk_out(s[0], mult[o], shift[o], out_zp, act_min, act_max);
                if (two) out[o + 1] = nnk_out(s[1], mult[o + 1], shift[o + 1], out_zp, act_min, act_max);
                if (pair) {
                    out[oc + o] = nnk_out(s[2], mult[o], shift[o], out_zp, act_min, act_max);
                    if (two) out[oc + o + 1] = nnk_out(s[3], mult[o + 1], shift[o + 1], out_zp, act_min, act_max);
                }
            }
            out += pair ? 2 * oc : oc;
            ox += pair ? 2 : 1;
        }
    }
}
/* @end */

/* @kernel conv1x1 */
/* Pointwise convolution: a dense layer applied to every pixel, two pixels times two output
 * channels per pass. */
NNK_INLINE void nnk_conv1x1(const int8_t *in, int32_t pixels, int32_t ic,
                        const int8_t *w, const int32_t *bias, const int32_t *mult, const int8_t *shift,
                        int8_t *out, int32_t oc, int32_t out_zp, int32_t act_min, int32_t act_max)
{
    int32_t p = 0, o;
#if !NNK_FEW_REGS
    for (; p + 1 < pixels; p += 2, in += 2 * ic, out += 2 * oc) {
        const int8_t *wo = w;
        for (o = 0; o + 1 < oc; o += 2, wo += 2 * ic) {
            int32_t s[4];
            s[0] = s[2] = bias[o];
            s[1] = s[3] = bias[o + 1];
            nnk_dot22(in, in + ic, wo, wo + ic, ic, s);
            out[o] = nnk_out(s[0], mult[o], shift[o], out_zp, act_min, act_max);
            out[o + 1] = nnk_out(s[1], mult[o + 1], shift[o + 1], out_zp, act_min, act_max);
            out[oc + o] = nnk_out(s[2], mult[o], shift[o], out_zp, act_min, act_max);
            out[oc + o + 1] = nnk_out(s[3], mult[o + 1], shift[o + 1], out_zp, act_min, act_max);
        }
        if (o < oc) {
            int32_t s0 = bias[o], s1 = bias[o];
            nnk_dot2(wo, in, in + ic, ic, &s0, &s1);
            out[o] = nnk_out(s0, mult[o], shift[o], out_zp, act_min, act_max);
            out[oc + o] = nnk_out(s1, mult[o], shift[o], out_zp, act_min, act_max);
        }
    }
#endif
    for (; p < pixels; ++p, in += ic, out += oc) {
        const int8_t *wo = w;
        for (o = 0; o + 1 < oc; o += 2, wo += 2 * ic) {
            int32_t s0 = bias[o], s1 = bias[o + 1];
            nnk_dot2(in, wo, wo + ic, ic, &s0, &s1);
            out[o] = nnk_out(s0, mult[o], shift[o], out_zp, act_min, act_max);
            out[o + 1] = nnk_out(s1, mult[o + 1], shift[o + 1], out_zp, act_min, act_max);
        }
        if (o < oc) out[o] = nnk_out(bias[o] + nnk_dot(in, wo, ic), mult[o], shift[o], out_zp, act_min, act_max);
    }
}
/* @end */

/* @kernel dwconv2d */
#if NNK_DSP
/* Four channels of one tap: SXTB16 splits each word into channels (0,2) and (1,3). */
NNK_INLINE void nnk_mac4(uint32_t xv, uint32_t wv, int32_t *a)
{
    uint32_t x02 = __sxtb16(xv), x13 = nnk_sxtb16_hi(xv), w02 = __sxtb16(wv), w13 = nnk_sxtb16_hi(wv);
    a[0] = __smlabb(x02, w02, a[0]);
    a[2] = __smlatt(x02, w02, a[2]);
    a[1] = __smlabb(x13, w13, a[1]);
    a[3] = __smlatt(x13, w13, a[3]);
}
#endif

/* One channel of a depthwise border pixel: taps in rows [ky_lo, ky_hi) x columns
 * [kx_lo, kx_hi) multiply the input from x (the first valid tap's byte, next row line bytes
 * on), the others read padding, whose stored value is the input zero point.  Taps are c bytes
 * apart in both input and filter, so every channel count runs the same loops. */
NNK_INLINE int32_t nnk_dw_border1(const int8_t *x, int32_t line, const int8_t *w, int32_t k, int32_t c,
                                  int32_t ky_lo, int32_t ky_hi, int32_t kx_lo, int32_t kx_hi, int32_t in_zp)
{
    int32_t acc = 0, pad = 0, ky, kx;
    for (ky = 0; ky < k; ++ky, w += k * c) {
        if (ky < ky_lo || ky >= ky_hi) {
            for (kx = 0; kx < k; ++kx) pad += w[kx * c];
            continue;
        }
        for (kx = 0; kx < kx_lo; ++kx) pad += w[kx * c];
        for (; kx < kx_hi; ++kx) acc += x[(kx - kx_lo) * c] * w[kx * c];
        for (; kx < k; ++kx) pad += w[kx * c];
        x += line;
    }
    return acc + in_zp * pad;
}

#if NNK_DSP
/* The same for four channels at once, accumulated into a[0..3]; zp4 is the zero point in
 * each byte. */
NNK_INLINE void nnk_dw_border4(const int8_t *x, int32_t line, const int8_t *w, int32_t k, int32_t c,
                               int32_t ky_lo, int32_t ky_hi, int32_t kx_lo, int32_t kx_hi, uint32_t zp4, int32_t *a)
{
    int32_t ky, kx;
    for (ky = 0; ky < k; ++ky, w += k * c) {
        if (ky < ky_lo || ky >= ky_hi) {
            for (kx = 0; kx < k; ++kx) nnk_mac4(zp4, nnk_load4(w + kx * c), a);
            continue;
        }
        for (kx = 0; kx < kx_lo; ++kx) nnk_mac4(zp4, nnk_load4(w + kx * c), a);
        for (; kx < kx_hi; ++kx) nnk_mac4(nnk_load4(x + (kx - kx_lo) * c), nnk_load4(w + kx * c), a);
        for (; kx < k; ++kx) nnk_mac4(zp4, nnk_load4(w + kx * c), a);
        x += line;
    }
}
#endif

/* Depthwise k x k convolution (one filter per channel), weights [ky][kx][c].  Interior
 * pixels run without bounds checks; a border pixel splits each kernel row into the taps on
 * padding (which read the input zero point) and the valid ones, as conv2d does. */
NNK_INLINE void nnk_dwconv2d(const int8_t *in, int32_t ih, int32_t iw, int32_t c,
                             const int8_t *w, const int32_t *bias, const int32_t *mult, const int8_t *shift,
                             int8_t *out, int32_t oh, int32_t ow,
                             int32_t k, int32_t stride, int32_t pad_top, int32_t pad_left,
                             int32_t in_zp, int32_t out_zp, int32_t act_min, int32_t act_max)
{
    int32_t oy, ox, ch, ky, kx, line = iw * c, quads = c & ~3, channels = c;
#if NNK_DSP
    const uint32_t zp4 = (uint32_t)(uint8_t)in_zp * 0x01010101u;
#endif
    /* The channel loops run the same code for every channel count: a loop of two or three
     * trips is not unrolled into straight-line code of its own (the latency model counts
     * loop trips).  One trip (a single pass of four channels, a lone channel) needs no loop. */
    if (quads > 4) NNK_OPAQUE(quads);
#if NNK_DSP
    if ((c & 3) > 1) NNK_OPAQUE(channels);
#else
    if (c > 1) NNK_OPAQUE(channels);
#endif
    for (oy = 0; oy < oh; ++oy) {
        int32_t iy0 = oy * stride - pad_top;
        int32_t ky_lo = iy0 < 0 ? -iy0 : 0, ky_hi = iy0 + k > ih ? ih - iy0 : k;
        if (ky_hi < ky_lo) ky_hi = ky_lo;
        for (ox = 0; ox < ow; ++ox, out += c) {
            int32_t ix0 = ox * stride - pad_left;
            if (iy0 >= 0 && ix0 >= 0 && iy0 + k <= ih && ix0 + k <= iw) {
                /* interior: every tap valid, constant offsets from one origin */
                const int8_t *origin = in + iy0 * line + ix0 * c;
                ch = 0;
#if NNK_DSP
                for (; ch < quads; ch += 4) {
                    int32_t a[4];
                    const int8_t *xp = origin + ch, *wt = w + ch;
                    a[0] = bias[ch];
                    a[1] = bias[ch + 1];
                    a[2] = bias[ch + 2];
                    a[3] = bias[ch + 3];
                    for (ky = 0; ky < k; ++ky, xp += line, wt += k * c) {
                        NNK_UNROLL
                        for (kx = 0; kx < k; ++kx) nnk_mac4(nnk_load4(xp + kx * c), nnk_load4(wt + kx * c), a);
                    }
                    out[ch] = nnk_out(a[0], mult[ch], shift[ch], out_zp, act_min, act_max);
                    out[ch + 1] = nnk_out(a[1], mult[ch + 1], shift[ch + 1], out_zp, act_min, act_max);
                    out[ch + 2] = nnk_out(a[2], mult[ch + 2], shift[ch + 2], out_zp, act_min, act_max);
                    out[ch + 3] = nnk_out(a[3], mult[ch + 3], shift[ch + 3], out_zp, act_min, act_max);
                }
#endif
                for (; ch < channels; ++ch) {
                    int32_t acc = bias[ch];
                    const int8_t *xp = origin + ch, *wt = w + ch;
                    for (ky = 0; ky < k; ++ky, xp += line, wt += k * c) {
                        NNK_UNROLL
                        for (kx = 0; kx < k; ++kx) acc += xp[kx * c] * wt[kx * c];
                    }
                    out[ch] = nnk_out(acc, mult[ch], shift[ch], out_zp, act_min, act_max);
                }
            } else {
                int32_t kx_lo = ix0 < 0 ? -ix0 : 0, kx_hi = ix0 + k > iw ? iw - ix0 : k;
                const int8_t *first;
                if (kx_hi < kx_lo) kx_hi = kx_lo;
                /* first valid input byte (unused when no tap is valid) */
                first = in + ((iy0 + ky_lo) * iw + ix0 + kx_lo) * c;
                ch = 0;
#if NNK_DSP
                for (; ch < quads; ch += 4) {
                    int32_t a[4];
                    a[0] = bias[ch];
                    a[1] = bias[ch + 1];
                    a[2] = bias[ch + 2];
                    a[3] = bias[ch + 3];
                    nnk_dw_border4(first + ch, line, w + ch, k, c, ky_lo, ky_hi, kx_lo, kx_hi, zp4, a);
                    out[ch] = nnk_out(a[0], mult[ch], shift[ch], out_zp, act_min, act_max);
                    out[ch + 1] = nnk_out(a[1], mult[ch + 1], shift[ch + 1], out_zp, act_min, act_max);
                    out[ch + 2] = nnk_out(a[2], mult[ch + 2], shift[ch + 2], out_zp, act_min, act_max);
                    out[ch + 3] = nnk_out(a[3], mult[ch + 3], shift[ch + 3], out_zp, act_min, act_max);
                }
#endif
                for (; ch < channels; ++ch) {
                    int32_t acc = bias[ch] + nnk_dw_border1(first + ch, line, w + ch, k, c, ky_lo, ky_hi, kx_lo, kx_hi, in_zp);
                    out[ch] = nnk_out(acc, mult[ch], shift[ch], out_zp, act_min, act_max);
                }
            }
        }
    }
}
/* @end */

/* @kernel dense */
/* acc * M0 * 2^(shift-31) rounded once, half up, as LiteRT's FULLY_CONNECTED does:
 * (acc * M0 + 2^(30-shift)) >> (31-shift) in 64 bits, saturated to int32. */
static int32_t nnk_requant_single_any(int32_t acc, int32_t mult, int32_t shift)
{
    int32_t total = 31 - shift;
    int64_t r = ((int64_t)acc * mult + ((int64_t)1 << (total - 1))) >> total;
    return r > INT32_MAX ? INT32_MAX : (r < INT32_MIN ? INT32_MIN : (int32_t)r);
}

/* The same for the usual right shift r = -shift >= 2, where 2^(30+r) is a multiple of 2^32:
 * floor((p + 2^(30+r)) / 2^(31+r)) = ((hi32(p) >> (r-2)) + 1) >> 1, within int32. */
NNK_INLINE int32_t nnk_requant_single(int32_t acc, int32_t mult, int32_t shift)
{
    if (shift > -2) return nnk_requant_single_any(acc, mult, shift);
    return (((int32_t)(((int64_t)acc * mult) >> 32) >> (-shift - 2)) + 1) >> 1;
}

/* s[r] += x . w[r n + i] for four weight rows r of length n: every input word is loaded and
 * unpacked once for four rows. */
NNK_INLINE void nnk_dot4(const int8_t *x, const int8_t *w, int32_t n, int32_t *s)
{
    int32_t a = s[0], b = s[1], c = s[2], d = s[3], i = 0;
#if NNK_DSP
    for (; i + 4 <= n; i += 4) {
        uint32_t xv = nnk_load4(x + i), lo = __sxtb16(xv), hi = nnk_sxtb16_hi(xv), wv;
        wv = nnk_load4(w + i);
        a = __smlad(lo, __sxtb16(wv), a);
        a = __smlad(hi, nnk_sxtb16_hi(wv), a);
        wv = nnk_load4(w + n + i);
        b = __smlad(lo, __sxtb16(wv), b);
        b = __smlad(hi, nnk_sxtb16_hi(wv), b);
        wv = nnk_load4(w + 2 * n + i);
        c = __smlad(lo, __sxtb16(wv), c);
        c = __smlad(hi, nnk_sxtb16_hi(wv), c);
        wv = nnk_load4(w + 3 * n + i);
        d = __smlad(lo, __sxtb16(wv), d);
        d = __smlad(hi, nnk_sxtb16_hi(wv), d);
    }
#endif
    for (; i < n; ++i) {
        int32_t v = x[i];
        a += v * w[i];
        b += v * w[n + i];
        c += v * w[2 * n + i];
        d += v * w[3 * n + i];
    }
    s[0] = a;
    s[1] = b;
    s[2] = c;
    s[3] = d;
}

/* Fully connected: out[o] = requant_single(bias[o] + sum(w[o][i] * in[i])), four rows a pass
 * (two on ARMv6-M, where four accumulators and four row pointers spill the eight low
 * registers: GCC then spilled differently from one layer size to the next). */
NNK_INLINE void nnk_dense(const int8_t *in, int32_t n_in,
                          const int8_t *w, const int32_t *bias, const int32_t *mult, const int8_t *shift,
                          int8_t *out, int32_t n_out, int32_t out_zp, int32_t act_min, int32_t act_max)
{
    int32_t o = 0, r, full = n_out & ~3;
#if NNK_FEW_REGS
    (void)r;
    (void)full;
    for (; o + 1 < n_out; o += 2, w += 2 * n_in) {
        int32_t s0 = bias[o], s1 = bias[o + 1];
        nnk_dot2(in, w, w + n_in, n_in, &s0, &s1);
        out[o] = nnk_saturate(nnk_requant_single(s0, mult[o], shift[o]) + out_zp, act_min, act_max);
        out[o + 1] = nnk_saturate(nnk_requant_single(s1, mult[o + 1], shift[o + 1]) + out_zp, act_min, act_max);
    }
#else
    for (; o < full; o += 4, w += 4 * n_in) {
        int32_t s[4];
        for (r = 0; r < 4; ++r) s[r] = bias[o + r];
        nnk_dot4(in, w, n_in, s);
        for (r = 0; r < 4; ++r)
            out[o + r] = nnk_saturate(nnk_requant_single(s[r], mult[o + r], shift[o + r]) + out_zp, act_min, act_max);
    }
#endif
    for (; o < n_out; ++o, w += n_in) {
        int32_t acc = bias[o] + nnk_dot(in, w, n_in);
        out[o] = nnk_saturate(nnk_requant_single(acc, mult[o], shift[o]) + out_zp, act_min, act_max);
    }
}
/* @end */

/* @kernel maxpool */
/* Max over kh x kw windows with the same stride (floor); scale and zero point unchanged. */
NNK_INLINE void nnk_maxpool(const int8_t *in, int32_t iw, int32_t c, int8_t *out,
                        int32_t oh, int32_t ow, int32_t kh, int32_t kw)
{
    int32_t oy, ox, ch, y, x;
    for (oy = 0; oy < oh; ++oy)
        for (ox = 0; ox < ow; ++ox)
            for (ch = 0; ch < c; ++ch) {
                int32_t m = -128;
                for (y = oy * kh; y < (oy + 1) * kh; ++y)
                    for (x = ox * kw; x < (ox + 1) * kw; ++x)
                        if (in[(y * iw + x) * c + ch] > m) m = in[(y * iw + x) * c + ch];
                *out++ = (int8_t)m;
            }
}
/* @end */

/* @kernel avgpool */
/* Average over kh x kw windows, rounding half away from zero as TFLite does. */
NNK_INLINE void nnk_avgpool(const int8_t *in, int32_t iw, int32_t c, int8_t *out,
                        int32_t oh, int32_t ow, int32_t kh, int32_t kw)
{
    int32_t oy, ox, ch, y, x, count = kh * kw;
    for (oy = 0; oy < oh; ++oy)
        for (ox = 0; ox < ow; ++ox)
            for (ch = 0; ch < c; ++ch) {
                int32_t s = 0;
                for (y = oy * kh; y < (oy + 1) * kh; ++y)
                    for (x = ox * kw; x < (ox + 1) * kw; ++x) s += in[(y * iw + x) * c + ch];
                s = s > 0 ? (s + count / 2) / count : (s - count / 2) / count;
                *out++ = nnk_saturate(s, -128, 127);
            }
}
/* @end */

/* @kernel add */
/* Element-wise sum of n tensors rescaled to a common scale (TFLite's int8 Add, 2^20 headroom).
 * The header calls it with n = 2 per link of an Add's chain; out may be ins[0] (the partial
 * sum, kept in the output buffer): element i is read before it is written. */
NNK_INLINE void nnk_add(const int8_t *const *ins, const int32_t *zps, const int32_t *mults, const int32_t *shifts,
                    int32_t n, int8_t *out, int32_t size, int32_t out_zp, int32_t out_mult, int32_t out_shift)
{
    int32_t i, j;
    for (i = 0; i < size; ++i) {
        int32_t total = 0;
        for (j = 0; j < n; ++j) total += nnk_requant(((int32_t)ins[j][i] - zps[j]) * ((int32_t)1 << 20), mults[j], shifts[j]);
        out[i] = nnk_saturate(nnk_requant(total, out_mult, out_shift) + out_zp, -128, 127);
    }
}
/* @end */
