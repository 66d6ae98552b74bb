"""Fixed-point arithmetic of the TFLite int8 kernels, vectorised over int64 arrays.

LiteRT 2.3.0 requantises CONV_2D, DEPTHWISE_CONV_2D and ADD with double rounding
(:func:`requantize`) and FULLY_CONNECTED with single rounding (:func:`requantize_single`);
nasweb's kernels do the same per op (docs/export.md).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from searches.engine.deploy.int8 import INT32_MAX, INT32_MIN, IntArray, QuantizationError

# ---- fixed-point arithmetic (vectorised, int64) --------------------------------------


def quantize_multiplier(m: float) -> tuple[int, int]:
    """``m`` as (M0, shift) with m = M0·2^(shift-31), M0 ∈ [2^30, 2^31); tiny m → (0, 0)."""
    if m < 0 or not math.isfinite(m):
        raise QuantizationError(f"multiplier {m!r} is not a finite non-negative number")
    if m == 0:
        return 0, 0
    f, e = math.frexp(m)
    # std::round (half away from zero), as TFLite's QuantizeMultiplier; f·2^31 + 0.5 is exact.
    m0 = math.floor(f * (1 << 31) + 0.5)
    if m0 == 1 << 31:
        m0 //= 2
        e += 1
    if e < -31:
        return 0, 0
    if e > 30:
        raise QuantizationError(f"multiplier {m:.3g} is too large for a 31-bit left shift")
    return m0, e


def requantize(acc: IntArray, multiplier: Any, shift: Any) -> IntArray:
    """TFLite's MultiplyByQuantizedMultiplier (double rounding), element-wise, in int64.

    A positive shift first multiplies by 2^shift with int32 saturation (well defined, and
    the C kernel does the same).  The rounding high multiply
    trunc((ab + (ab >= 0 ? 2^30 : 1 - 2^30)) / 2^31) equals floor((ab + 2^30) / 2^31) for
    every integer ab, which is an add and an arithmetic shift.
    """
    acc = np.asarray(acc, dtype=np.int64)
    m = np.asarray(multiplier, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    if np.any(s > 0):
        acc = np.clip(acc << np.maximum(s, 0), INT32_MIN, INT32_MAX)
    right = np.maximum(-s, 0)
    # M0 < 2^31, so the INT32_MIN·INT32_MIN saturation case cannot occur.
    high = acc * m
    high += 1 << 30
    high >>= 31
    # Rounding right shift, half away from zero: floor((high + 2^(r-1) - [high < 0]) / 2^r)
    # for r > 0; the same as gemmlowp's remainder/threshold form, in fewer passes.
    negative = (high < 0) & (right > 0)
    high += (np.int64(1) << right) >> 1
    high -= negative
    high >>= right
    return high


def requantize_single(acc: IntArray, multiplier: Any, shift: Any) -> IntArray:
    """TFLite's single-rounding MultiplyByQuantizedMultiplier (its FULLY_CONNECTED), in int64.

    One rounding: (acc·M0 + 2^(30-shift)) >> (31-shift), half rounded up; |acc·M0| < 2^62,
    so nothing overflows int64.  The result saturates to int32 (LiteRT only asserts it fits).
    """
    acc = np.asarray(acc, dtype=np.int64)
    m = np.asarray(multiplier, dtype=np.int64)
    total = 31 - np.asarray(shift, dtype=np.int64)
    out = (acc * m + (np.int64(1) << (total - 1))) >> total
    return np.clip(out, INT32_MIN, INT32_MAX)


def rounded_average(total: IntArray, count: int) -> IntArray:
    """TFLite's integer average: (sum ± count/2) / count, truncating."""
    half = count // 2
    return np.where(total > 0, (total + half) // count, -((-total + half) // count))
