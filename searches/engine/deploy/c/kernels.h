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

/* @kernel requant */
/* acc * M0 * 2^(shift-31), TFLite double rounding; a positive shift saturates first.
 * The rounding high multiply trunc((ab + (ab >= 0 ? 2^30 : 1 - 2^30)) / 2^31) equals
 * floor((ab + 2^30) / 2^31) for every ab: one multiply-add and a shift, then the rounding
 * right shift (half away from zero) in 32 bits. */
static int32_t nnk_requant(int32_t acc, int32_t mult, int32_t shift)
{
    int32_t high, right, mask, rem, threshold;
    if (shift > 0) {
        int64_t x = (int64_t)acc * ((int64_t)1 << shift);
        acc = x > INT32_MAX ? INT32_MAX : (x < INT32_MIN ? INT32_MIN : (int32_t)x);
        right = 0;
    } else {
        right = -shift;
    }
    high = (int32_t)(((int64_t)acc * mult + ((int64_t)1 << 30)) >> 31);
    mask = (int32_t)(((uint32_t)1 << right) - 1u);
    rem = high & mask;
    threshold = (mask >> 1) + (high < 0 ? 1 : 0);
    return (high >> right) + (rem > threshold ? 1 : 0);
}

static int8_t nnk_saturate(int32_t v, int32_t lo, int32_t hi)
{
    return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}

#if NNK_DSP
static uint32_t nnk_load4(const int8_t *p)
{
    uint32_t v;
    __builtin_memcpy(&v, p, 4); /* one unaligned LDR on v7E-M / v8-M */
    return v;
}

/* Bytes 1 and 3 of v sign-extended into two halfwords (SXTB16 with ROR #8). */
static uint32_t nnk_sxtb16_hi(uint32_t v)
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
static int32_t nnk_dot(const int8_t *a, const int8_t *b, int32_t n)
{
    int32_t acc = 0;
#if NNK_DSP
    while (n >= 8) {
        uint32_t a0 = nnk_load4(a), b0 = nnk_load4(b);
        uint32_t a1 = nnk_load4(a + 4), b1 = nnk_load4(b + 4);
        acc = __smlad(__sxtb16(a0), __sxtb16(b0), acc);
        acc = __smlad(nnk_sxtb16_hi(a0), nnk_sxtb16_hi(b0), acc);
        acc = __smlad(__sxtb16(a1), __sxtb16(b1), acc);
        acc = __smlad(nnk_sxtb16_hi(a1), nnk_sxtb16_hi(b1), acc);
        a += 8;
        b += 8;
        n -= 8;
    }
    if (n >= 4) {
        uint32_t a0 = nnk_load4(a), b0 = nnk_load4(b);
        acc = __smlad(__sxtb16(a0), __sxtb16(b0), acc);
        acc = __smlad(nnk_sxtb16_hi(a0), nnk_sxtb16_hi(b0), acc);
        a += 4;
        b += 4;
        n -= 4;
    }
#endif
    while (n-- > 0) acc += (int32_t)*a++ * *b++;
    return acc;
}

/* @end */

/* @kernel dot2 */
/* Two dot products sharing the input: s0 += x.w0, s1 += x.w1 (input unpacked once). */
static inline void nnk_dot2(const int8_t *x, const int8_t *w0, const int8_t *w1, int32_t n, int32_t *s0, int32_t *s1)
{
    int32_t a0 = *s0, a1 = *s1;
#if NNK_DSP
    while (n >= 4) {
        uint32_t xv = nnk_load4(x), v0 = nnk_load4(w0), v1 = nnk_load4(w1);
        uint32_t x02 = __sxtb16(xv), x13 = nnk_sxtb16_hi(xv);
        a0 = __smlad(x02, __sxtb16(v0), a0);
        a0 = __smlad(x13, nnk_sxtb16_hi(v0), a0);
        a1 = __smlad(x02, __sxtb16(v1), a1);
        a1 = __smlad(x13, nnk_sxtb16_hi(v1), a1);
        x += 4;
        w0 += 4;
        w1 += 4;
        n -= 4;
    }
#endif
    while (n-- > 0) {
        int32_t v = *x++;
        a0 += v * *w0++;
        a1 += v * *w1++;
    }
    *s0 = a0;
    *s1 = a1;
}
/* @end */

/* @kernel conv2d */
/* Sum of n weights (for taps that fall on padding). */
static inline int32_t nnk_sum(const int8_t *w, int32_t n)
{
    int32_t s = 0;
    while (n-- > 0) s += *w++;
    return s;
}

/* k x k convolution, TF 'same' or 'valid' padding given as pad_top/pad_left. */
static void nnk_conv2d(const int8_t *in, int32_t ih, int32_t iw, int32_t ic,
                       const int8_t *w, const int32_t *bias, const int32_t *mult, const int8_t *shift,
                       int8_t *out, int32_t oh, int32_t ow, int32_t oc,
                       int32_t k, int32_t stride, int32_t pad_top, int32_t pad_left,
                       int32_t in_zp, int32_t out_zp, int32_t act_min, int32_t act_max)
{
    int32_t oy, ox, o, ky;
    for (oy = 0; oy < oh; ++oy) {
        int32_t iy0 = oy * stride - pad_top;
        for (ox = 0; ox < ow; ++ox) {
            int32_t ix0 = ox * stride - pad_left;
            /* taps [kx_lo, kx_hi) of a kernel row lie inside the image, contiguous in HWC */
            int32_t kx_lo = ix0 < 0 ? -ix0 : 0;
            int32_t kx_hi = ix0 + k > iw ? iw - ix0 : k;
            int32_t run = (kx_hi - kx_lo) * ic;
            int32_t row = k * ic;
            const int8_t *wo = w;
            for (o = 0; o < oc; o += 2, wo += 2 * k * row) {
                /* two output channels per pass share every input load (the last may be single) */
                int32_t pair = o + 1 < oc;
                const int8_t *wp = pair ? wo + k * row : wo;
                int32_t acc0 = bias[o], acc1 = pair ? bias[o + 1] : 0;
                for (ky = 0; ky < k; ++ky) {
                    int32_t iy = iy0 + ky;
                    const int8_t *r0 = wo + ky * row, *r1 = wp + ky * row;
                    if (iy < 0 || iy >= ih || run <= 0) {
                        acc0 += in_zp * nnk_sum(r0, row);
                        acc1 += in_zp * nnk_sum(r1, row);
                        continue;
                    }
                    if (kx_lo > 0) {
                        acc0 += in_zp * nnk_sum(r0, kx_lo * ic);
                        acc1 += in_zp * nnk_sum(r1, kx_lo * ic);
                    }
                    nnk_dot2(in + (iy * iw + ix0 + kx_lo) * ic, r0 + kx_lo * ic, r1 + kx_lo * ic, run, &acc0, &acc1);
                    if (kx_hi < k) {
                        acc0 += in_zp * nnk_sum(r0 + kx_hi * ic, (k - kx_hi) * ic);
                        acc1 += in_zp * nnk_sum(r1 + kx_hi * ic, (k - kx_hi) * ic);
                    }
                }
                *out++ = nnk_saturate(nnk_requant(acc0, mult[o], shift[o]) + out_zp, act_min, act_max);
                if (pair) *out++ = nnk_saturate(nnk_requant(acc1, mult[o + 1], shift[o + 1]) + out_zp, act_min, act_max);
            }
        }
    }
}
/* @end */

/* @kernel conv1x1 */
/* Pointwise convolution: a dense layer applied to every pixel. */
static void nnk_conv1x1(const int8_t *in, int32_t pixels, int32_t ic,
                        const int8_t *w, const int32_t *bias, const int32_t *mult, const int8_t *shift,
                        int8_t *out, int32_t oc, int32_t out_zp, int32_t act_min, int32_t act_max)
{
    int32_t p, o;
    for (p = 0; p < pixels; ++p, in += ic) {
        const int8_t *wo = w;
        for (o = 0; o + 1 < oc; o += 2, wo += 2 * ic) {
            int32_t acc0 = bias[o], acc1 = bias[o + 1];
            nnk_dot2(in, wo, wo + ic, ic, &acc0, &acc1);
            *out++ = nnk_saturate(nnk_requant(acc0, mult[o], shift[o]) + out_zp, act_min, act_max);
            *out++ = nnk_saturate(nnk_requant(acc1, mult[o + 1], shift[o + 1]) + out_zp, act_min, act_max);
        }
        if (o < oc) {
            int32_t acc = bias[o] + nnk_dot(in, wo, ic);
            *out++ = nnk_saturate(nnk_requant(acc, mult[o], shift[o]) + out_zp, act_min, act_max);
        }
    }
}
/* @end */

/* @kernel dwconv2d */
/* Depthwise k x k convolution (one filter per channel), weights [ky][kx][c]. */
static void nnk_dwconv2d(const int8_t *in, int32_t ih, int32_t iw, int32_t c,
                         const int8_t *w, const int32_t *bias, const int32_t *mult, const int8_t *shift,
                         int8_t *out, int32_t oh, int32_t ow,
                         int32_t k, int32_t stride, int32_t pad_top, int32_t pad_left,
                         int32_t in_zp, int32_t out_zp, int32_t act_min, int32_t act_max)
{
    int32_t oy, ox, ch, ky, kx;
    for (oy = 0; oy < oh; ++oy) {
        int32_t iy0 = oy * stride - pad_top;
        for (ox = 0; ox < ow; ++ox) {
            int32_t ix0 = ox * stride - pad_left;
#if NNK_DSP
            int32_t inside = iy0 >= 0 && ix0 >= 0 && iy0 + k <= ih && ix0 + k <= iw;
#endif
            ch = 0;
#if NNK_DSP
            /* four channels at a time: SXTB16 splits a word into channels (0,2) and (1,3) */
            for (; ch < (c & ~3); ch += 4) {
                int32_t a0 = bias[ch], a1 = bias[ch + 1], a2 = bias[ch + 2], a3 = bias[ch + 3];
                if (inside) {
                    /* interior pixel: every tap is valid, no bounds checks */
                    const int8_t *wt = w + ch, *row = in + (iy0 * iw + ix0) * c + ch;
                    for (ky = 0; ky < k; ++ky, row += iw * c) {
                        const int8_t *xp = row;
                        for (kx = 0; kx < k; ++kx, xp += c, wt += c) {
                            uint32_t xv = nnk_load4(xp), wv = nnk_load4(wt);
                            uint32_t x02 = __sxtb16(xv), x13 = nnk_sxtb16_hi(xv);
                            uint32_t w02 = __sxtb16(wv), w13 = nnk_sxtb16_hi(wv);
                            a0 = __smlabb(x02, w02, a0);
                            a2 = __smlatt(x02, w02, a2);
                            a1 = __smlabb(x13, w13, a1);
                            a3 = __smlatt(x13, w13, a3);
                        }
                    }
                } else {
                    for (ky = 0; ky < k; ++ky) {
                        int32_t iy = iy0 + ky;
                        for (kx = 0; kx < k; ++kx) {
                            int32_t ix = ix0 + kx;
                            const int8_t *wt = w + (ky * k + kx) * c + ch;
                            if (iy < 0 || iy >= ih || ix < 0 || ix >= iw) {
                                a0 += in_zp * wt[0];
                                a1 += in_zp * wt[1];
                                a2 += in_zp * wt[2];
                                a3 += in_zp * wt[3];
                            } else {
                                uint32_t xv = nnk_load4(in + (iy * iw + ix) * c + ch), wv = nnk_load4(wt);
                                uint32_t x02 = __sxtb16(xv), x13 = nnk_sxtb16_hi(xv);
                                uint32_t w02 = __sxtb16(wv), w13 = nnk_sxtb16_hi(wv);
                                a0 = __smlabb(x02, w02, a0);
                                a2 = __smlatt(x02, w02, a2);
                                a1 = __smlabb(x13, w13, a1);
                                a3 = __smlatt(x13, w13, a3);
                            }
                        }
                    }
                }
                out[ch] = nnk_saturate(nnk_requant(a0, mult[ch], shift[ch]) + out_zp, act_min, act_max);
                out[ch + 1] = nnk_saturate(nnk_requant(a1, mult[ch + 1], shift[ch + 1]) + out_zp, act_min, act_max);
                out[ch + 2] = nnk_saturate(nnk_requant(a2, mult[ch + 2], shift[ch + 2]) + out_zp, act_min, act_max);
                out[ch + 3] = nnk_saturate(nnk_requant(a3, mult[ch + 3], shift[ch + 3]) + out_zp, act_min, act_max);
            }
#endif
            for (; ch < c; ++ch) {
                int32_t acc = bias[ch];
                for (ky = 0; ky < k; ++ky) {
                    int32_t iy = iy0 + ky;
                    for (kx = 0; kx < k; ++kx) {
                        int32_t ix = ix0 + kx;
                        int32_t x = (iy < 0 || iy >= ih || ix < 0 || ix >= iw) ? in_zp : in[(iy * iw + ix) * c + ch];
                        acc += x * w[(ky * k + kx) * c + ch];
                    }
                }
                out[ch] = nnk_saturate(nnk_requant(acc, mult[ch], shift[ch]) + out_zp, act_min, act_max);
            }
            out += c;
        }
    }
}
/* @end */

/* @kernel dense */
/* acc * M0 * 2^(shift-31) rounded once, half up, as LiteRT's FULLY_CONNECTED does:
 * (acc * M0 + 2^(30-shift)) >> (31-shift) in 64 bits, saturated to int32. */
static int32_t nnk_requant_single(int32_t acc, int32_t mult, int32_t shift)
{
    int32_t total = 31 - shift;
    int64_t r = ((int64_t)acc * mult + ((int64_t)1 << (total - 1))) >> total;
    return r > INT32_MAX ? INT32_MAX : (r < INT32_MIN ? INT32_MIN : (int32_t)r);
}

/* Fully connected: out[o] = requant_single(bias[o] + sum(w[o][i] * in[i])). */
static void nnk_dense(const int8_t *in, int32_t n_in,
                      const int8_t *w, const int32_t *bias, const int32_t *mult, const int8_t *shift,
                      int8_t *out, int32_t n_out, int32_t out_zp, int32_t act_min, int32_t act_max)
{
    int32_t o;
    for (o = 0; o < n_out; ++o, w += n_in) {
        int32_t acc = bias[o] + nnk_dot(in, w, n_in);
        out[o] = nnk_saturate(nnk_requant_single(acc, mult[o], shift[o]) + out_zp, act_min, act_max);
    }
}
/* @end */

/* @kernel maxpool */
/* Max over kh x kw windows with the same stride (floor); scale and zero point unchanged. */
static void nnk_maxpool(const int8_t *in, int32_t iw, int32_t c, int8_t *out,
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
static void nnk_avgpool(const int8_t *in, int32_t iw, int32_t c, int8_t *out,
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
/* Element-wise sum of n tensors rescaled to a common scale (TFLite's int8 Add, 2^20 headroom). */
static void nnk_add(const int8_t *const *ins, const int32_t *zps, const int32_t *mults, const int32_t *shifts,
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
